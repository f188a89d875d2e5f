"""Workspace containment by resolved path components, and the private copy."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from remoteci.errors import ApiError, SourceError
from remoteci.workspaces import copy_workspace, recheck_workspace, resolve_workspace


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


def test_recheck_catches_a_workspace_swapped_for_a_link(root: Path, tmp_path: Path) -> None:
    relative = resolve_workspace(root, "proj")
    path = recheck_workspace(root, relative)
    assert path == root / "proj"
    os.rename(path, tmp_path / "moved")
    path.symlink_to(tmp_path / "outside")
    with pytest.raises(SourceError, match="outside the workspace root"):
        recheck_workspace(root, relative)


def test_recheck_refuses_a_workspace_swapped_for_a_link_inside_the_root(root: Path) -> None:
    """Another project's tree is inside the root too: the submitted path must resolve to itself."""
    (root / "other").mkdir()
    relative = resolve_workspace(root, "proj/sub")
    os.rmdir(root / "proj" / "sub")
    (root / "proj" / "sub").symlink_to("../other")
    with pytest.raises(SourceError, match=r"'proj/sub' was replaced by a link \(to 'other'\)"):
        recheck_workspace(root, relative)


def test_a_worker_host_finds_the_workspace_below_its_own_root(root: Path, tmp_path: Path) -> None:
    relative = resolve_workspace(root, "to-proj/sub")
    assert relative == "proj/sub"
    other_root = tmp_path / "mounted-elsewhere"
    (other_root / "proj" / "sub").mkdir(parents=True)
    assert recheck_workspace(other_root, relative) == other_root / "proj" / "sub"
    with pytest.raises(SourceError, match="not synced to this worker host"):
        recheck_workspace(tmp_path / "empty-root", relative)


def test_copy_is_private_and_keeps_modes_and_links(root: Path, tmp_path: Path) -> None:
    src = root / "proj"
    (src / "run.sh").write_text("echo hi\n")
    (src / "run.sh").chmod(0o755)
    (src / "link").symlink_to("run.sh")
    (src / ".hidden").write_text("h")
    dest = tmp_path / "job"
    dest.mkdir()
    copy_workspace(src, dest, timeout=30)
    assert (dest / "run.sh").read_text() == "echo hi\n"
    assert os.access(dest / "run.sh", os.X_OK)
    assert os.readlink(dest / "link") == "run.sh"
    assert (dest / ".hidden").exists() and (dest / "sub").is_dir()
    (dest / "run.sh").write_text("changed")
    assert (src / "run.sh").read_text() == "echo hi\n"


def test_copy_of_a_vanished_workspace_is_a_source_error(tmp_path: Path) -> None:
    dest = tmp_path / "job"
    dest.mkdir()
    with pytest.raises(SourceError, match="gone"):
        copy_workspace(tmp_path / "nope", dest, timeout=30)


def test_small_copy_matches_cp_a(tmp_path: Path) -> None:
    """The in-process copy of a small workspace gives what `cp -a` gives."""
    import subprocess

    from remoteci import workspaces

    src = tmp_path / "src"
    (src / "sub" / "deep").mkdir(parents=True)
    (src / "run.sh").write_text("echo hi\n")
    (src / "run.sh").chmod(0o751)
    (src / "sub" / "deep" / "data").write_bytes(b"\0" * 5000)
    (src / "sub" / "link").symlink_to("../run.sh")
    (src / "dangling").symlink_to("nowhere")
    (src / "sub").chmod(0o710)
    for p in [src / "run.sh", src / "sub" / "deep", src / "sub", src]:
        os.utime(p, ns=(1_600_000_000_123_456_789, 1_500_000_000_987_654_321))
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    ours.mkdir(mode=0o700)
    theirs.mkdir(mode=0o700)
    assert workspaces._copy_small(src, ours)
    subprocess.run(["cp", "-a", "--", f"{src}/.", f"{theirs}/"], check=True)

    def snapshot(root: Path) -> dict[str, tuple[int, int, str | bytes]]:
        out = {}
        for path in [root, *sorted(root.rglob("*"))]:
            st = path.lstat()
            body = os.readlink(path) if path.is_symlink() else (
                path.read_bytes() if path.is_file() else b"")
            out[str(path.relative_to(root))] = (st.st_mode, st.st_mtime_ns, body)
        return out

    assert snapshot(ours) == snapshot(theirs)


def test_large_workspace_is_left_to_cp(tmp_path: Path) -> None:
    from remoteci import workspaces

    src = tmp_path / "src"
    src.mkdir()
    for i in range(workspaces.SMALL_ENTRIES + 1):
        (src / f"f{i}").write_text("x")
    dest = tmp_path / "dest"
    dest.mkdir()
    assert not workspaces._copy_small(src, dest)
    assert list(dest.iterdir()) == []
    copy_workspace(src, dest, timeout=30)
    assert len(list(dest.iterdir())) == workspaces.SMALL_ENTRIES + 1
