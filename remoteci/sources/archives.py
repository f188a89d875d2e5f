"""Checking and unpacking job archives: nothing lands outside the job dir, nothing grows past the caps.

tarfile's `data` filter is the floor, but it decides with realpath() checks made before it writes
through ordinary, symlink-following paths, and it has had bypasses (CVE-2025-4517 and friends).
So tarfile here only parses the stream; the writing is ours: every path is opened component by
component from a directory fd with O_NOFOLLOW, files are created O_EXCL, and the byte and member
caps are checked from the headers before anything is written, then enforced on the bytes written.
"""

from __future__ import annotations

import os
import posixpath
import stat
import struct
import tarfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import IO, Self, TypeVar

from remoteci.errors import ApiError, SourceError
from remoteci.sources import zstd

ARCHIVE_KINDS = ".tar.gz, .tgz, .tar.zst or .tar"
_CHUNK = 64 * 1024
# pax and GNU long-name headers are read whole into memory (and may nest), so each is kept small;
# real ones hold a path, a few times and maybe some xattrs.
_MAX_HEADER_BYTES = 64 * 1024
_META_TYPES = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE,
               tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)
# Errors tarfile, gzip/zlib and the stream layer raise for damaged input.
_T = TypeVar("_T")
_READ_ERRORS = (tarfile.TarError, EOFError, zlib.error, OSError, RecursionError, ValueError)


def sniff_archive(path: Path) -> None:
    """Refuse an upload that is neither gzip, zstd nor tar at submission, so the CI user hears at once."""
    with path.open("rb") as f:
        head = f.read(tarfile.BLOCKSIZE)
    if head[:2] == b"\x1f\x8b" or head[257:262] == b"ustar" or _is_v7_tar_header(head):
        return
    if head.startswith(zstd.MAGIC):
        if zstd.available():
            return
        raise ApiError(400, "this server cannot unpack zstd (it has no zstd program); send the "
                            "archive as .tar.gz")
    raise ApiError(400, f"code must be a {ARCHIVE_KINDS} archive; the uploaded file is neither "
                        "gzip, zstd nor tar")


def _is_v7_tar_header(block: bytes) -> bool:
    """Old (pre-POSIX) tar headers have no magic; their checksum is the only signature."""
    if len(block) < tarfile.BLOCKSIZE:
        return False
    raw = block[148:156].replace(b"\0", b" ").strip()
    if not raw:
        return False
    try:
        stored = int(raw, 8)
    except ValueError:
        return False
    unsigned = sum(block[:148]) + 8 * 0x20 + sum(block[156:512])
    signed = sum(struct.unpack_from("148b", block)) + 8 * 0x20 + sum(struct.unpack_from("356b", block, 156))
    return stored in (unsigned, signed)


@dataclass
class _Extraction:
    """What one extraction has done so far, for the caps and for hard links."""

    dest: Path
    root_fd: int
    max_bytes: int
    max_members: int
    written: int = 0
    members: int = 0
    files: set[str] = field(default_factory=set)
    symlinks: list[str] = field(default_factory=list)


def extract_archive(archive: Path, dest: Path, *, max_bytes: int, max_members: int) -> None:
    """Unpack a possibly hostile archive into the existing dir `dest`, or raise SourceError naming the member.

    On error `dest` may hold a partial tree (never anything outside it); the caller removes the job dir.
    """
    root_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        state = _Extraction(Path(os.path.realpath(dest)), root_fd, max_bytes, max_members)
        with _open_stream(archive) as tar:
            while (member := _read(tar.next)) is not None:
                # stream mode still remembers every header (an attribute the stubs omit); drop them
                tar.members.clear()  # type: ignore[attr-defined]
                _extract_member(tar, member, state)
        _check_symlinks(state)
    finally:
        os.close(root_fd)


@contextmanager
def _open_stream(archive: Path) -> Iterator[tarfile.TarFile]:
    """Open forward-only ("r|*"), so memory stays flat whatever the archive size; a zstd
    archive is read through the zstd program (zstd.py), the rest as tarfile finds them."""
    if not archive.is_file():
        raise SourceError("the uploaded archive is no longer on the server; submit the job again")
    with archive.open("rb") as f:
        is_zstd = f.read(len(zstd.MAGIC)) == zstd.MAGIC
    if not is_zstd:
        with _read(lambda: tarfile.open(archive, mode="r|*", tarinfo=_checked_tarinfo())) as tar:
            yield tar
        return
    with zstd.decompressed(archive) as stream, \
            _read(lambda: tarfile.open(fileobj=stream, mode="r|", tarinfo=_checked_tarinfo())) as tar:
        yield tar


def _read(step: Callable[[], _T]) -> _T:
    """Run one read of the archive stream, turning damage into a SourceError the CI user understands."""
    try:
        return step()
    except SourceError:
        raise
    except _READ_ERRORS as err:
        raise SourceError(f"archive is truncated or corrupt: {err or type(err).__name__}; "
                          f"send a complete {ARCHIVE_KINDS} archive") from None


def _checked_tarinfo() -> type[tarfile.TarInfo]:
    """A TarInfo that vets each header before tarfile reads what it announces into memory."""
    global_bytes = 0

    class CheckedTarInfo(tarfile.TarInfo):
        @classmethod
        def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> Self:
            nonlocal global_bytes
            if len(buf) != tarfile.BLOCKSIZE:
                # tarfile would take a short header for the end of the archive
                raise SourceError("archive is truncated or corrupt: it ends without the tar "
                                  f"end-of-archive marker; send a complete {ARCHIVE_KINDS} archive")
            if buf.count(0) == tarfile.BLOCKSIZE:
                return super().frombuf(buf, encoding, errors)  # the end marker: tarfile stops here
            try:
                info = super().frombuf(buf, encoding, errors)
            except tarfile.HeaderError as err:
                # tarfile takes a bad header after the first one for the end of the archive
                raise SourceError(f"archive is truncated or corrupt: {err}") from None
            if info.type == tarfile.GNUTYPE_SPARSE:
                raise _sparse_error(info.name)
            if info.type in _META_TYPES:
                if info.type == tarfile.XGLTYPE:
                    global_bytes += info.size  # global pax headers accumulate for the whole archive
                if info.size > _MAX_HEADER_BYTES or global_bytes > _MAX_HEADER_BYTES:
                    raise SourceError(f"archive has an extended header of {info.size} bytes "
                                      f"(limit {_MAX_HEADER_BYTES}); the archive is not a normal tar")
            return info

        def _proc_gnusparse_10(self, next: tarfile.TarInfo, pax_headers: dict[str, str],
                               tarfile: tarfile.TarFile) -> None:
            # tarfile reads a GNU 1.0 sparse map of any length into a list: refuse it first
            # (tarfile's comments name the _proc_* methods as the way to extend its parsing)
            raise _sparse_error(pax_headers.get("GNU.sparse.name", next.name))

    return CheckedTarInfo


def _sparse_error(name: str) -> SourceError:
    return SourceError(f"archive member {name!r} is a sparse file; create the archive without --sparse")


def _extract_member(tar: tarfile.TarFile, member: tarfile.TarInfo, state: _Extraction) -> None:
    """Check one member against every rule, then create it without following any link."""
    state.members += 1
    if state.members > state.max_members:
        raise SourceError(f"archive has more than {state.max_members} members; send fewer files "
                          "(the server limit is REMOTE_CI_MAX_ARCHIVE_MEMBERS)")
    name = _member_path(member.name, member.name)
    _refuse_special(member)
    if member.issym() or member.islnk():
        _check_link_target(name, member)
    try:
        mode = tarfile.data_filter(member, str(state.dest)).mode
    except tarfile.FilterError as err:
        raise SourceError(f"archive member {member.name!r} is refused: {err}") from None
    if not name:
        return  # "." or "./": the job dir itself
    parent_fd, leaf = _open_parent(state.root_fd, name, member.name)
    try:
        state.files.discard(name)
        if member.isdir():
            _make_dir(parent_fd, leaf, member.name)
        elif member.issym():
            _make_symlink(parent_fd, leaf, name, member, state)
        elif member.islnk():
            _make_hardlink(parent_fd, leaf, name, member, state)
        else:
            _make_file(tar, parent_fd, leaf, member, mode, state)
            state.files.add(name)
    except OSError as err:
        raise SourceError(f"could not write archive member {member.name!r}: {err.strerror}") from None
    finally:
        os.close(parent_fd)


def _member_path(raw: str, member: str) -> str:
    """The normalised relative path of a name, refusing absolute names and `..`."""
    if "\0" in raw:
        raise SourceError(f"archive member {member!r} has a NUL byte in its name")
    if raw.startswith("/"):
        raise SourceError(f"archive member {member!r} has an absolute path; "
                          "archives must hold relative paths")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise SourceError(f"archive member {member!r} is outside the job dir ('..' in its path)")
    return "/".join(parts)


def _check_link_target(name: str, member: tarfile.TarInfo) -> None:
    """Links must stay in the dir as written; chains through other links are checked at the end."""
    target = member.linkname
    base = posixpath.dirname(name) if member.issym() else ""  # hard link targets are archive names
    resolved = posixpath.normpath(posixpath.join(base, target))
    if not target or target.startswith("/") or resolved == ".." or resolved.startswith("../"):
        kind = "symlink" if member.issym() else "hard link"
        raise SourceError(f"archive member {member.name!r} is a {kind} to {target!r}, outside the job dir")


def _refuse_special(member: tarfile.TarInfo) -> None:
    """Device files and FIFOs have no place in source code and could hang or harm the job's host."""
    if member.ischr() or member.isblk():
        raise SourceError(f"archive member {member.name!r} is a device file; "
                          "archives may hold only files, directories and links")
    if member.isfifo():
        raise SourceError(f"archive member {member.name!r} is a FIFO; "
                          "archives may hold only files, directories and links")
    if member.issparse():
        raise _sparse_error(member.name)
    if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
        raise SourceError(f"archive member {member.name!r} has an unsupported type {member.type!r}")


def _open_parent(root_fd: int, name: str, member: str) -> tuple[int, str]:
    """Open (creating as needed) the directory that will hold `name`, refusing any symlinked step."""
    *dirs, leaf = name.split("/")
    fd = os.dup(root_fd)
    try:
        for i, part in enumerate(dirs):
            try:
                st = os.stat(part, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                os.mkdir(part, 0o755, dir_fd=fd)
            else:
                where = "/".join(dirs[: i + 1])
                if stat.S_ISLNK(st.st_mode):
                    raise SourceError(f"archive member {member!r} is under the symlink {where!r}; "
                                      "files are never written through links")
                if not stat.S_ISDIR(st.st_mode):
                    raise SourceError(f"archive member {member!r} is under {where!r}, "
                                      "which is not a directory")
            next_fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = next_fd
    except BaseException as err:
        os.close(fd)
        if isinstance(err, OSError):
            raise SourceError(f"could not write archive member {member!r}: {err.strerror}") from None
        raise
    return fd, leaf


def _clear(parent_fd: int, leaf: str, member: str, *, keep_dir: bool) -> bool:
    """Make room for a repeated name (in tar the later member wins); True if a directory stays."""
    try:
        st = os.stat(leaf, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    if stat.S_ISDIR(st.st_mode):
        if keep_dir:
            return True
        raise SourceError(f"archive member {member!r} would replace a directory of the same name")
    os.unlink(leaf, dir_fd=parent_fd)
    return False


def _make_dir(parent_fd: int, leaf: str, member: str) -> None:
    if not _clear(parent_fd, leaf, member, keep_dir=True):
        os.mkdir(leaf, 0o755, dir_fd=parent_fd)


def _make_symlink(parent_fd: int, leaf: str, name: str, member: tarfile.TarInfo, state: _Extraction) -> None:
    """The link is made as written; `_check_symlinks` later resolves chains of links."""
    _clear(parent_fd, leaf, member.name, keep_dir=False)
    os.symlink(member.linkname, leaf, dir_fd=parent_fd)
    state.symlinks.append(name)


def _make_hardlink(parent_fd: int, leaf: str, name: str, member: tarfile.TarInfo, state: _Extraction) -> None:
    """Only to a regular file this archive wrote, so a link can never reach a file outside."""
    target = _member_path(member.linkname, member.name)
    if target not in state.files:
        raise SourceError(f"archive member {member.name!r} is a hard link to {member.linkname!r}, "
                          "which is not a file earlier in the archive")
    _clear(parent_fd, leaf, member.name, keep_dir=False)
    source_fd, source_leaf = _open_parent(state.root_fd, target, member.name)
    try:
        os.link(source_leaf, leaf, src_dir_fd=source_fd, dst_dir_fd=parent_fd, follow_symlinks=False)
    finally:
        os.close(source_fd)
    state.files.add(name)


def _make_file(tar: tarfile.TarFile, parent_fd: int, leaf: str, member: tarfile.TarInfo,
               mode: int | None, state: _Extraction) -> None:
    """Copy one regular file, refusing before the first byte if it would pass the size cap."""
    if state.written + member.size > state.max_bytes:
        raise _too_big(state, member.name)
    _clear(parent_fd, leaf, member.name, keep_dir=False)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(leaf, flags, 0o600, dir_fd=parent_fd)
    try:
        source = _read(lambda: tar.extractfile(member))
        assert source is not None  # regular members always have a file object
        _copy(source, fd, member, state)
        os.fchmod(fd, 0o644 if mode is None else mode)
        try:
            os.utime(fd, (member.mtime, member.mtime))  # build tools compare mtimes
        except (OverflowError, ValueError, OSError):
            pass  # a nonsense mtime is not worth failing the job over
    finally:
        os.close(fd)


def _copy(source: IO[bytes], fd: int, member: tarfile.TarInfo, state: _Extraction) -> None:
    """Stream `size` bytes, never past the cap whatever the header claimed."""
    remaining = member.size
    while remaining:
        chunk = _read(partial(source.read, min(_CHUNK, remaining)))
        if not chunk:
            raise SourceError(f"archive is truncated or corrupt: member {member.name!r} ends early")
        if state.written + len(chunk) > state.max_bytes:
            raise _too_big(state, member.name)
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view):]
        remaining -= len(chunk)
        state.written += len(chunk)


def _too_big(state: _Extraction, member: str) -> SourceError:
    return SourceError(f"archive expands beyond {state.max_bytes / 2**20:g} MB (at member {member!r}); "
                       "send a smaller archive (the server limit is REMOTE_CI_MAX_EXTRACT_MB)")


def _check_symlinks(state: _Extraction) -> None:
    """Catch link chains (e.g. `a -> b/..` with `b -> .`) that only leave the dir once all exist."""
    root = str(state.dest)
    for name in state.symlinks:
        resolved = os.path.realpath(state.dest / name)
        if os.path.commonpath([resolved, root]) != root:
            parent_fd, leaf = _open_parent(state.root_fd, name, name)
            try:
                os.unlink(leaf, dir_fd=parent_fd)  # do not leave the escape hatch for the caller
            finally:
                os.close(parent_fd)
            raise SourceError(f"archive member {name!r} is a symlink that leads outside the job dir "
                              "through other links")
