"""Archives: good ones unpack faithfully, hostile ones end with an error naming the member."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from remoteci.errors import ApiError, SourceError
from remoteci.sources.archives import extract_archive, sniff_archive

MB = 1024 * 1024


@dataclass
class Dirs:
    """A job dir with a sentinel sibling that no archive may touch."""

    root: Path
    dest: Path
    sentinel: Path

    def sentinel_untouched(self) -> bool:
        return sorted(p.name for p in self.sentinel.iterdir()) == ["keep.txt"] and (
            (self.sentinel / "keep.txt").read_text() == "original"
        )

    def outside_untouched(self) -> bool:
        expected = {"dest", "sentinel", "a.tar.gz", "a.tar"}
        return self.sentinel_untouched() and {p.name for p in self.root.iterdir()} <= expected


@pytest.fixture
def dirs(tmp_path: Path) -> Iterator[Dirs]:
    dest = tmp_path / "dest"
    sentinel = tmp_path / "sentinel"
    dest.mkdir()
    sentinel.mkdir()
    (sentinel / "keep.txt").write_text("original")
    yield Dirs(tmp_path, dest, sentinel)


def reg(name: str, data: bytes = b"x", mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    return info, data


def special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    return info, None


def sym(name: str, target: str) -> tuple[tarfile.TarInfo, bytes | None]:
    return special(name, tarfile.SYMTYPE, target)


def hard(name: str, target: str) -> tuple[tarfile.TarInfo, bytes | None]:
    return special(name, tarfile.LNKTYPE, target)


def directory(name: str) -> tuple[tarfile.TarInfo, bytes | None]:
    return special(name, tarfile.DIRTYPE)


def build(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], *, gz: bool = True,
          **options: object) -> Path:
    with tarfile.open(path, "w:gz" if gz else "w", **options) as tar:  # type: ignore[call-overload]
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def extract(dirs: Dirs, members: list[tuple[tarfile.TarInfo, bytes | None]], *,
            max_bytes: int = 10 * MB, max_members: int = 1000) -> None:
    archive = build(dirs.root / "a.tar.gz", members)
    extract_archive(archive, dirs.dest, max_bytes=max_bytes, max_members=max_members)


def refused(dirs: Dirs, members: list[tuple[tarfile.TarInfo, bytes | None]], *, names: str,
            **caps: int) -> str:
    with pytest.raises(SourceError) as caught:
        extract(dirs, members, **caps)
    message = str(caught.value)
    assert repr(names) in message, message
    assert dirs.outside_untouched()
    return message


def disk_bytes(root: Path) -> int:
    return sum(os.lstat(Path(d) / f).st_size for d, _, files in os.walk(root) for f in files)


# ---- good archives ----

def test_tar_gz_unpacks_nested_dirs_modes_and_inner_links(dirs: Dirs) -> None:
    extract(dirs, [
        directory("src"),
        reg("src/pkg/mod.py", b"print(1)\n"),
        reg("run.sh", b"#!/bin/sh\necho hi\n", mode=0o755),
        sym("link", "src/pkg/mod.py"),
        sym("src/pkg/up", "../../run.sh"),
        hard("copy.sh", "run.sh"),
    ])
    assert (dirs.dest / "src/pkg/mod.py").read_bytes() == b"print(1)\n"
    assert os.stat(dirs.dest / "run.sh").st_mode & 0o777 == 0o755
    assert os.readlink(dirs.dest / "link") == "src/pkg/mod.py"
    assert (dirs.dest / "src/pkg/up").read_bytes().startswith(b"#!/bin/sh")
    assert os.stat(dirs.dest / "copy.sh").st_ino == os.stat(dirs.dest / "run.sh").st_ino


def test_plain_tar_with_dot_prefixed_names(dirs: Dirs) -> None:
    archive = build(dirs.root / "a.tar", [directory("."), reg("./a/b.txt", b"hello")], gz=False)
    extract_archive(archive, dirs.dest, max_bytes=MB, max_members=10)
    assert (dirs.dest / "a/b.txt").read_bytes() == b"hello"


def test_a_later_member_replaces_an_earlier_one(dirs: Dirs) -> None:
    extract(dirs, [reg("f", b"old"), sym("g", "f"), reg("g", b"new")])
    assert (dirs.dest / "f").read_bytes() == b"old"
    assert not (dirs.dest / "g").is_symlink() and (dirs.dest / "g").read_bytes() == b"new"


def test_pax_archive_with_global_header_like_git_archive(dirs: Dirs) -> None:
    archive = build(dirs.root / "a.tar.gz", [reg("é/" + "n" * 150, b"long")],
                    format=tarfile.PAX_FORMAT, pax_headers={"comment": "0" * 40})
    extract_archive(archive, dirs.dest, max_bytes=MB, max_members=10)
    assert (dirs.dest / "é" / ("n" * 150)).read_bytes() == b"long"


def test_archive_made_by_gnu_tar(dirs: Dirs, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "x.sh").write_text("echo\n")
    (src / "d" / "x.sh").chmod(0o750)
    (src / "l").symlink_to("d/x.sh")
    archive = tmp_path / "a.tar.gz"
    subprocess.run(["tar", "--format=posix", "-czf", str(archive), "-C", str(src), "."], check=True)
    extract_archive(archive, dirs.dest, max_bytes=MB, max_members=10)
    assert os.stat(dirs.dest / "d/x.sh").st_mode & 0o777 == 0o750
    assert os.readlink(dirs.dest / "l") == "d/x.sh"


# ---- names and links that leave the dir ----

def test_absolute_name_is_refused(dirs: Dirs) -> None:
    message = refused(dirs, [reg(str(dirs.sentinel / "pwned"))], names=str(dirs.sentinel / "pwned"))
    assert "absolute path" in message


def test_dotdot_name_is_refused(dirs: Dirs) -> None:
    message = refused(dirs, [reg("ok"), reg("../sentinel/pwned")], names="../sentinel/pwned")
    assert "outside the job dir" in message
    assert not (dirs.root / "sentinel/pwned").exists()


def test_symlink_to_etc_is_refused(dirs: Dirs) -> None:
    message = refused(dirs, [sym("etc", "/etc")], names="etc")
    assert "outside the job dir" in message
    assert not os.path.lexists(dirs.dest / "etc")


def test_relative_symlink_leaving_the_dir_is_refused(dirs: Dirs) -> None:
    refused(dirs, [directory("a"), sym("a/out", "../../sentinel")], names="a/out")


@pytest.mark.parametrize("order", ["link-first", "chain-first"])
def test_symlink_chain_leaving_the_dir_is_refused(dirs: Dirs, order: str) -> None:
    # `s -> l/..` is inside on paper, but with `l -> .` it resolves to the dir's parent
    members = [sym("s", "l/.."), sym("l", ".")]
    if order == "link-first":
        members.reverse()
    message = refused(dirs, members, names="s")
    assert "outside" in message
    assert not os.path.lexists(dirs.dest / "s")


def test_member_under_a_symlink_that_leaves_is_refused(dirs: Dirs) -> None:
    refused(dirs, [sym("esc", "../sentinel"), reg("esc/pwned")], names="esc")


def test_member_under_an_inner_symlinked_dir_is_refused(dirs: Dirs) -> None:
    message = refused(dirs, [directory("real"), sym("alias", "real"), reg("alias/f")], names="alias/f")
    assert "symlink" in message
    assert not (dirs.dest / "real/f").exists()


def test_a_symlink_already_in_the_dir_is_never_written_through(dirs: Dirs) -> None:
    (dirs.dest / "out").symlink_to(dirs.sentinel)
    refused(dirs, [reg("out/pwned")], names="out/pwned")
    refused(dirs, [reg("out", b"would land in the sentinel dir")], names="out")


def test_a_file_member_replaces_an_inner_symlink_instead_of_writing_through_it(dirs: Dirs) -> None:
    (dirs.dest / "target").write_text("unchanged")
    (dirs.dest / "out").symlink_to("target")
    extract(dirs, [reg("out", b"new file")])
    assert not (dirs.dest / "out").is_symlink()
    assert (dirs.dest / "out").read_bytes() == b"new file"
    assert (dirs.dest / "target").read_text() == "unchanged"


def test_hard_link_to_etc_passwd_is_refused(dirs: Dirs) -> None:
    message = refused(dirs, [hard("pw", "/etc/passwd")], names="pw")
    assert "hard link" in message


def test_hard_link_out_of_the_dir_is_refused(dirs: Dirs) -> None:
    refused(dirs, [hard("k", "../sentinel/keep.txt")], names="k")
    assert os.stat(dirs.sentinel / "keep.txt").st_nlink == 1


def test_hard_link_to_a_non_member_is_refused(dirs: Dirs) -> None:
    (dirs.dest / "already-there").write_text("not from the archive")
    message = refused(dirs, [hard("h", "already-there")], names="h")
    assert "not a file earlier in the archive" in message


# ---- special files ----

def test_char_device_is_refused(dirs: Dirs) -> None:
    info, _ = special("null", tarfile.CHRTYPE)
    info.devmajor, info.devminor = 1, 3
    message = refused(dirs, [(info, None)], names="null")
    assert "device" in message


def test_fifo_is_refused(dirs: Dirs) -> None:
    message = refused(dirs, [special("pipe", tarfile.FIFOTYPE)], names="pipe")
    assert "FIFO" in message
    assert not os.path.lexists(dirs.dest / "pipe")


@pytest.mark.parametrize("flavour", [["--format=gnu"], ["--format=pax", "--sparse-version=0.1"],
                                     ["--format=pax", "--sparse-version=1.0"]])
def test_sparse_file_is_refused(dirs: Dirs, tmp_path: Path, flavour: list[str]) -> None:
    # tarfile reads a sparse map of any length into memory before we see the member
    src = tmp_path / "src"
    src.mkdir()
    with (src / "holes").open("wb") as f:
        f.write(b"data")
        f.truncate(8 * MB)
    archive = dirs.root / "a.tar.gz"
    subprocess.run(["tar", "--sparse", *flavour, "-czf", str(archive), "-C", str(src), "holes"], check=True)
    with pytest.raises(SourceError, match="'holes' is a sparse file"):
        extract_archive(archive, dirs.dest, max_bytes=100 * MB, max_members=10)


# ---- damaged input ----

def test_truncated_gzip_is_refused(dirs: Dirs) -> None:
    archive = build(dirs.root / "a.tar.gz", [reg("f", os.urandom(200_000))])
    archive.write_bytes(archive.read_bytes()[:100_000])
    with pytest.raises(SourceError, match="truncated or corrupt"):
        extract_archive(archive, dirs.dest, max_bytes=MB, max_members=10)


@pytest.mark.parametrize("cut", [1024 + 512, 1024 + 700])  # at a header boundary, inside a header
def test_tar_cut_between_members_is_refused(dirs: Dirs, cut: int) -> None:
    archive = build(dirs.root / "a.tar", [reg("a", b"1" * 512), reg("b", b"2")], gz=False)
    archive.write_bytes(archive.read_bytes()[:cut])
    with pytest.raises(SourceError, match="truncated or corrupt"):
        extract_archive(archive, dirs.dest, max_bytes=MB, max_members=10)


@pytest.mark.parametrize("content", [b"", b"just some text, not an archive\n" * 40])
def test_not_an_archive_is_refused(dirs: Dirs, content: bytes) -> None:
    archive = dirs.root / "a.tar"
    archive.write_bytes(content)
    with pytest.raises(SourceError, match="truncated or corrupt"):
        extract_archive(archive, dirs.dest, max_bytes=MB, max_members=10)


def test_oversized_extended_header_is_refused(dirs: Dirs) -> None:
    info, data = reg("f")
    info.pax_headers = {"comment": "x" * 100_000}
    archive = build(dirs.root / "a.tar.gz", [(info, data)], format=tarfile.PAX_FORMAT)
    with pytest.raises(SourceError, match="extended header"):
        extract_archive(archive, dirs.dest, max_bytes=MB, max_members=10)


def test_a_missing_archive_says_so(dirs: Dirs) -> None:
    with pytest.raises(SourceError, match="no longer on the server"):
        extract_archive(dirs.root / "gone.tar.gz", dirs.dest, max_bytes=MB, max_members=10)


# ---- caps ----

def test_too_many_members_is_refused(dirs: Dirs) -> None:
    with pytest.raises(SourceError, match="more than 10 members"):
        extract(dirs, [reg(f"f{i}") for i in range(11)], max_members=10)
    assert len(list(dirs.dest.iterdir())) == 10


def test_gzip_bomb_is_refused_before_anything_is_written(dirs: Dirs) -> None:
    archive = dirs.root / "a.tar.gz"
    with tarfile.open(archive, "w:gz", compresslevel=1) as tar, open("/dev/zero", "rb") as zeros:
        info = tarfile.TarInfo("zeros")
        info.size = 200 * MB
        tar.addfile(info, zeros)
    assert archive.stat().st_size < 2 * MB
    with pytest.raises(SourceError, match=r"expands beyond 10 MB \(at member 'zeros'\)"):
        extract_archive(archive, dirs.dest, max_bytes=10 * MB, max_members=10)
    assert disk_bytes(dirs.dest) == 0


def test_many_files_stop_at_the_byte_cap(dirs: Dirs) -> None:
    with pytest.raises(SourceError, match="expands beyond 10 MB"):
        extract(dirs, [reg(f"f{i}", bytes(MB)) for i in range(30)], max_bytes=10 * MB)
    assert disk_bytes(dirs.dest) <= 10 * MB


# ---- sniffing at upload time ----

@pytest.mark.parametrize("gz", [True, False])
def test_sniff_accepts_gzip_and_tar(tmp_path: Path, gz: bool) -> None:
    sniff_archive(build(tmp_path / "a", [reg("f")], gz=gz))


def test_sniff_accepts_old_v7_tar_headers(tmp_path: Path) -> None:
    block = bytearray(tarfile.TarInfo("f").tobuf(tarfile.USTAR_FORMAT)[:512])
    block[257:265] = bytes(8)  # no magic, as before POSIX
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    (tmp_path / "v7.tar").write_bytes(bytes(block) + bytes(1024))
    sniff_archive(tmp_path / "v7.tar")


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 a zip file", b"x" * 1024, bytes(1024)])
def test_sniff_refuses_what_is_not_an_archive(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "upload").write_bytes(content)
    with pytest.raises(ApiError) as caught:
        sniff_archive(tmp_path / "upload")
    assert caught.value.status == 400
    assert ".tar.gz, .tgz, .tar.zst or .tar" in caught.value.message

