"""Workspace containment by resolved path components, and the private copy."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from remoteci.errors import ApiError, SourceError
from remoteci.sources.workspaces import copy_workspace, open_workspace, resolve_workspace


@pytest.fixture
def root(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    (ws / "proj" / "sub").mkdir(parents=True)
    (tmp_path / "ws-evil").mkdir()
    (tmp_path / "outside").mkdir()
    (ws / "to-outside").symlink_to(tmp_path / "outside")
    (ws / "to-proj").symlink_to(ws / "proj")
    (ws / "file").write_text("x")
    return ws


@pytest.mark.parametrize("requested", ["proj", "proj/sub", "proj/../proj", "to-proj"])
def test_inside_the_root(root: Path, requested: str) -> None:
    assert root / resolve_workspace(root, requested) == (root / requested).resolve()


def test_absolute_path_inside_the_root(root: Path) -> None:
    assert resolve_workspace(root, str(root / "proj")) == "proj"


@pytest.mark.parametrize("requested", ["..", ".", "", "../ws-evil", "to-outside", "/etc", "proj/../.."])
def test_outside_the_root_or_the_root_itself(root: Path, requested: str) -> None:
    with pytest.raises(ApiError) as info:
        resolve_workspace(root, requested)
    assert info.value.status in (400, 403)
    if requested:
        assert info.value.status == 403


def test_common_string_prefix_is_not_containment(root: Path) -> None:
    with pytest.raises(ApiError) as info:
        resolve_workspace(root, str(root.parent / "ws-evil"))
    assert info.value.status == 403


def test_a_root_reached_through_a_link_contains_its_directories(root: Path, tmp_path: Path) -> None:
    (tmp_path / "root-link").symlink_to(root)
    assert resolve_workspace(tmp_path / "root-link", "proj/sub") == "proj/sub"
    with pytest.raises(ApiError):
        resolve_workspace(tmp_path / "root-link", "../ws-evil")


def test_the_filesystem_root_as_workspace_root(tmp_path: Path) -> None:
    assert resolve_workspace(Path("/"), str(tmp_path).lstrip("/")) == str(tmp_path).lstrip("/")
    for requested in ("/", ".", ".."):
        with pytest.raises(ApiError):
            resolve_workspace(Path("/"), requested)


@pytest.mark.parametrize("requested", ["missing", "file"])
def test_missing_or_not_a_directory_is_400(root: Path, requested: str) -> None:
    with pytest.raises(ApiError) as info:
        resolve_workspace(root, requested)
    assert info.value.status == 400


def opened(root: Path, relative: str) -> os.stat_result:
    """What open_workspace opened, as its stat (the fd is closed again)."""
    fd = open_workspace(root, relative)
    try:
        return os.fstat(fd)
    finally:
        os.close(fd)


def same(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def test_recheck_catches_a_workspace_swapped_for_a_link(root: Path, tmp_path: Path) -> None:
    relative = resolve_workspace(root, "proj")
    path = root / "proj"
    assert same(opened(root, relative), path.stat())
    os.rename(path, tmp_path / "moved")
    path.symlink_to(tmp_path / "outside")
    with pytest.raises(SourceError, match="outside the workspace root"):
        opened(root, relative)


def test_recheck_refuses_a_workspace_swapped_for_a_link_inside_the_root(root: Path) -> None:
    """Another project's tree is inside the root too: the submitted path must resolve to itself."""
    (root / "other").mkdir()
    relative = resolve_workspace(root, "proj/sub")
    os.rmdir(root / "proj" / "sub")
    (root / "proj" / "sub").symlink_to("../other")
    with pytest.raises(SourceError, match=r"'proj/sub' was replaced by a link \(to 'other'\)"):
        opened(root, relative)


def test_a_worker_host_finds_the_workspace_below_its_own_root(root: Path, tmp_path: Path) -> None:
    relative = resolve_workspace(root, "to-proj/sub")
    assert relative == "proj/sub"
    other_root = tmp_path / "mounted-elsewhere"
    (other_root / "proj" / "sub").mkdir(parents=True)
    assert same(opened(other_root, relative), (other_root / "proj" / "sub").stat())
    with pytest.raises(SourceError, match="not synced to this worker host"):
        opened(tmp_path / "empty-root", relative)


def test_copy_is_private_and_keeps_modes_and_links(root: Path, tmp_path: Path) -> None:
    src = root / "proj"
    (src / "run.sh").write_text("echo hi\n")
    (src / "run.sh").chmod(0o755)
    (src / "link").symlink_to("run.sh")
    (src / ".hidden").write_text("h")
    dest = tmp_path / "job"
    dest.mkdir()
    copy(src, dest)
    assert (dest / "run.sh").read_text() == "echo hi\n"
    assert os.access(dest / "run.sh", os.X_OK)
    assert os.readlink(dest / "link") == "run.sh"
    assert (dest / ".hidden").exists() and (dest / "sub").is_dir()
    (dest / "run.sh").write_text("changed")
    assert (src / "run.sh").read_text() == "echo hi\n"


def copy(src: Path, dest: Path) -> None:
    fd = os.open(src, os.O_RDONLY | os.O_DIRECTORY)
    try:
        copy_workspace(fd, dest, timeout=30)
    finally:
        os.close(fd)


@pytest.mark.parametrize("files", [1, 200])
def test_copy_of_a_vanished_workspace_is_a_source_error(tmp_path: Path, files: int) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(files):
        (src / f"f{i}").write_text("x")
    fd = os.open(src, os.O_RDONLY | os.O_DIRECTORY)
    dest = tmp_path / "job"
    dest.mkdir()
    try:
        shutil.rmtree(src)
        with pytest.raises(SourceError, match="gone"):
            copy_workspace(fd, dest, timeout=30)
    finally:
        os.close(fd)


def test_copy_matches_cp_a(tmp_path: Path) -> None:
    """The copy gives what `cp -a` gives: modes, times, links, hard links, FIFOs."""
    import subprocess

    src = tmp_path / "src"
    (src / "sub" / "deep").mkdir(parents=True)
    (src / "run.sh").write_text("echo hi\n")
    (src / "run.sh").chmod(0o751)
    (src / "sub" / "deep" / "data").write_bytes(b"\0" * 5000)
    os.link(src / "sub" / "deep" / "data", src / "hardlink")
    (src / "sub" / "link").symlink_to("../run.sh")
    (src / "dangling").symlink_to("nowhere")
    os.mkfifo(src / "pipe", 0o640)
    (src / "sub").chmod(0o510)  # not writable: the copy fills it before setting its mode
    for p in [src / "run.sh", src / "sub" / "deep", src / "sub", src]:
        os.utime(p, ns=(1_600_000_000_123_456_789, 1_500_000_000_987_654_321))
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    ours.mkdir(mode=0o700)
    theirs.mkdir(mode=0o700)
    copy(src, ours)
    subprocess.run(["cp", "-a", "--", f"{src}/.", f"{theirs}/"], check=True)

    def snapshot(root: Path) -> dict[str, tuple[int, int, int, str | bytes]]:
        out = {}
        for path in [root, *sorted(root.rglob("*"))]:
            st = path.lstat()
            body = os.readlink(path) if path.is_symlink() else (
                path.read_bytes() if path.is_file() else b"")
            out[str(path.relative_to(root))] = (st.st_mode, st.st_mtime_ns, st.st_nlink, body)
        return out

    assert snapshot(ours) == snapshot(theirs)
    assert (ours / "hardlink").stat().st_ino == (ours / "sub" / "deep" / "data").stat().st_ino
    (src / "sub").chmod(0o710)  # let pytest clean up


def test_a_large_workspace_is_copied_whole(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for d in range(20):
        (src / f"d{d}").mkdir(parents=True)
        for i in range(50):
            (src / f"d{d}" / f"f{i}").write_text(f"{d}/{i}")
    dest = tmp_path / "dest"
    dest.mkdir()
    copy(src, dest)
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*")) == sorted(
        str(p.relative_to(src)) for p in src.rglob("*"))
    assert (dest / "d19" / "f49").read_text() == "19/49"


def test_a_device_file_is_refused_by_name(tmp_path: Path) -> None:
    import socket

    src = tmp_path / "src"
    src.mkdir()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(src / "agent.sock"))
        dest = tmp_path / "dest"
        dest.mkdir()
        with pytest.raises(SourceError, match=r"'agent\.sock' is a device or socket file"):
            copy(src, dest)


# --- links swapped in while the copy runs ------------------------------------------------------

SECRET = b"another project's secret\n"


@pytest.fixture
def secret_dir(tmp_path: Path) -> Path:
    secret = tmp_path / "secret-project"
    secret.mkdir()
    for name in ("run.sh", "data", "f0"):
        (secret / name).write_bytes(SECRET)
    return secret


def copied_secret(dest: Path) -> list[str]:
    """Regular files of the copy that hold the secret (links are copied as links: fine)."""
    return [str(p) for p in dest.rglob("*")
            if not p.is_symlink() and p.is_file() and p.read_bytes() == SECRET]


@pytest.mark.parametrize("files", [3, 200])
def test_a_workspace_swapped_between_the_check_and_the_copy_is_not_followed(
        root: Path, tmp_path: Path, secret_dir: Path, files: int,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from remoteci.config import Settings
    from remoteci.sources import prepare as sources

    for i in range(files):
        (root / "proj" / f"f{i}").write_text("own\n")
    real_copy = sources.copy_workspace

    def swap_then_copy(*args: object, **kwargs: object) -> None:
        os.rename(root / "proj", tmp_path / "proj-moved")
        (root / "proj").symlink_to(secret_dir)
        real_copy(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(sources, "copy_workspace", swap_then_copy)
    dest = tmp_path / "job"
    dest.mkdir()
    settings = Settings(tokens=("t" * 8,), workspace_dir=root)
    sources.prepare_source({"mode": "rsync", "workspace": "proj", "timeout": 30}, dest,
                           settings, log_fd=-1)
    assert copied_secret(dest) == []
    assert (dest / "f0").read_text() == "own\n"  # the directory that was checked


@pytest.mark.parametrize("files", [3, 200])
@pytest.mark.parametrize("swapped", ["run.sh", "sub"])
def test_an_entry_swapped_for_a_link_during_the_copy_is_not_followed(
        tmp_path: Path, secret_dir: Path, swapped: str, files: int,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Swapped between the look at an entry and its open: the copy stops, reading nothing."""
    from remoteci.sources import workspaces

    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "run.sh").write_text("echo own\n")
    (src / "sub" / "data").write_text("own data\n")
    for i in range(files):
        (src / f"f{i}").write_text("own\n")
    real_open = workspaces._open_listed

    def swap_then_open(name: str, *args: object) -> int:
        if name == swapped:
            victim = src / swapped
            os.rename(victim, tmp_path / "moved")
            victim.symlink_to(secret_dir / "run.sh" if swapped == "run.sh" else secret_dir)
        return real_open(name, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(workspaces, "_open_listed", swap_then_open)
    dest = tmp_path / "job"
    dest.mkdir()
    fd = os.open(src, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(SourceError, match=f"'{swapped}' was replaced while the job's copy ran"):
            copy_workspace(fd, dest, timeout=30)
    finally:
        os.close(fd)
    assert copied_secret(dest) == []



def test_a_pinned_job_names_its_host_when_the_workspace_is_missing_or_a_link(root: Path) -> None:
    with pytest.raises(SourceError, match="workspace 'nowhere' not found on host 'c'"):
        open_workspace(root, "nowhere", host="c")
    with pytest.raises(SourceError, match=r"'to-proj' on host 'c' is a link \(to 'proj'\)"):
        open_workspace(root, "to-proj", host="c")
    fd = open_workspace(root, "proj", host="c")
    os.close(fd)
