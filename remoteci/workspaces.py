"""rsync mode: which workspace a request may use, and the private copy a job runs on."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
from pathlib import Path

from remoteci.errors import ApiError, SourceError


def resolve_workspace(root: Path, requested: str) -> str:
    """The real directory a request names, as its path below the real root; refused unless
    strictly inside the root.

    The relative path is what the queue carries, so a worker host with another root (or the
    same share mounted elsewhere) finds the same workspace. Containment is checked on resolved
    paths by components (`/ws-evil` is not inside `/ws`), so `..`, symlinks and absolute paths
    cannot reach outside.
    """
    relative = locate_workspace(root, requested)
    if relative is None:
        raise ApiError(403, f"workspace {requested!r} is outside the workspace root; "
                            "use a directory inside it")
    require_directory(root, relative, requested)
    return relative


def locate_workspace(root: Path, requested: str) -> str | None:
    """The resolved path of `requested` below the real root, or None when it is outside; what
    it names need not exist (so a caller may judge it before saying whether it does)."""
    if not requested or "\x00" in requested:
        raise ApiError(400, "workspace is empty; give a directory name relative to the workspace root")
    real_root, target = _resolve_below(root, requested)  # an absolute `requested` replaces the root
    return None if target is None else target[len(real_root):].lstrip("/")


def lexical_workspace(root: Path, requested: str) -> str | None:
    """The name `requested` gives below the root before any link is followed, or None."""
    joined = os.path.normpath(os.path.join(root, requested))
    for base in {os.path.normpath(root), os.path.realpath(root)}:
        prefix = base.rstrip("/") + "/"
        if joined.startswith(prefix) and joined != base:
            return joined[len(prefix):]
    return None


def require_directory(root: Path, relative: str, requested: str) -> None:
    if not os.path.isdir(os.path.join(os.path.realpath(root), relative)):
        raise ApiError(400, f"workspace {requested!r} does not exist or is not a directory; "
                            "rsync your code into it first")


def open_workspace(root: Path, relative: str) -> int:
    """At job start: an fd on the workspace submitted, which may have been removed or swapped for
    a link since; the copy reads through this fd, so no later swap can redirect it.

    `relative` was resolved at submission, so it must still resolve to itself: a link swapped in
    while the job was queued may point at another project's tree inside the root, which the
    submitter's token was never allowed to use. Each component is opened with O_NOFOLLOW from
    the real root's fd, so a link swapped in after the look below is refused too.
    """
    real_root, target = _resolve_below(root, relative)
    if target is None:
        raise SourceError(f"workspace {relative!r} now resolves outside the workspace root")
    if target != os.path.join(real_root, relative):
        raise SourceError(f"workspace {relative!r} was replaced by a link (to "
                          f"{target[len(real_root):].lstrip('/')!r}) while the job was queued; "
                          "the job runs only on the directory that was submitted")
    if not os.path.isdir(target):
        raise SourceError(f"workspace {relative!r} is gone (deleted while the job was queued, "
                          f"or not synced to this worker host's {real_root})")
    parts = relative.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise SourceError(f"workspace {relative!r} is not a plain path below the root")
    fd = os.open(real_root, _DIR_FLAGS)
    try:
        for part in parts:
            next_fd = os.open(part, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = next_fd
    except OSError as exc:
        os.close(fd)
        raise SourceError(f"workspace {relative!r} changed while the job was starting "
                          f"({exc.strerror}); submit it again") from None
    return fd


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # NONBLOCK: a FIFO


def _resolve_below(root: Path, name: str) -> tuple[str, str | None]:
    """The real root, and the real path of `name` joined to it, or None unless strictly inside.

    Both paths come out of realpath (absolute, normalised, free of links), so containment by
    whole components is a prefix test on root + "/". Plain os.path: pathlib's resolve costs
    several times as much per submission, for the same system calls.
    """
    real_root = os.path.realpath(root)
    target = os.path.realpath(os.path.join(real_root, name))
    inside = target != real_root and target.startswith(real_root.rstrip("/") + "/")
    return real_root, target if inside else None


def copy_workspace(source_fd: int, dest: Path, timeout: float) -> None:
    """Copy the workspace open at `source_fd` into the job dir; the workspace is never changed.

    `cp -a --reflink=auto` keeps modes, times and symlinks (as links, never followed), shares
    blocks on filesystems that can, and is as fast as a plain copy elsewhere; it is given the
    directory as /proc/self/fd/N, so a path swapped for a link after the check is not followed.
    A small workspace is copied in this process with the same result: spawning cp costs more
    than the copy.
    """
    if not _copy_small(source_fd, dest):
        _copy_with_cp(source_fd, dest, timeout)
    if os.fstat(source_fd).st_nlink == 0:
        raise SourceError("the workspace is gone (deleted while the job was starting)")


def _copy_with_cp(source_fd: int, dest: Path, timeout: float) -> None:
    try:
        result = subprocess.run(
            ["cp", "-a", "--reflink=auto", "--", f"/proc/self/fd/{source_fd}/.", f"{dest}/"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            timeout=timeout, check=False, start_new_session=True, pass_fds=(source_fd,),
        )
    except subprocess.TimeoutExpired:
        raise SourceError(f"copying the workspace took longer than {timeout:.0f} s") from None
    if result.returncode != 0:
        message = result.stderr.decode(errors="replace").strip()[-2000:]
        if os.fstat(source_fd).st_nlink == 0:
            raise SourceError("the workspace is gone (deleted while the job was starting)")
        raise SourceError(f"copying the workspace failed: {message}")


# Workspaces up to this size are copied in-process. Spawning `cp` from the executor costs
# ~1.8 ms, most of a tiny job's start latency above the floor; a Python copy of a few files
# takes ~0.2 ms. Past the limit cp wins (reflinks, no per-file interpreter overhead).
SMALL_ENTRIES = 64
SMALL_BYTES = 1024 * 1024


def _copy_small(source_fd: int, dest: Path) -> bool:
    """`cp -a source/. dest/` for a small tree of plain files, dirs and symlinks; False (and
    nothing written) when the tree is larger, holds anything else, or changes under us.

    Everything is opened from its directory's fd with O_NOFOLLOW and checked to be the very
    entry listed (device and inode), so a link swapped in during the copy is never followed.
    """
    entries = _small_tree(source_fd)
    if entries is None:
        return False
    dest_root = os.fspath(dest)
    dirs = {"": os.dup(source_fd)}  # open source dirs by path below the root
    try:
        for rel, st in entries:
            parent, name = os.path.split(rel)
            dst = os.path.join(dest_root, rel)
            if stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(name, dir_fd=dirs[parent]), dst)
                _preserve_link(dst, st)
                continue
            fd = _open_listed(name, dirs[parent], st)
            if stat.S_ISDIR(st.st_mode):
                dirs[rel] = fd
                os.mkdir(dst, 0o700)  # its mode and times once it is filled
            else:
                try:
                    _copy_bytes(fd, dst)
                    _preserve(fd, dst, st)
                finally:
                    os.close(fd)
        # Directories last: filling one changes its mtime, and its mode may forbid writing.
        for rel, st in reversed(entries):
            if stat.S_ISDIR(st.st_mode):
                _preserve(dirs[rel], os.path.join(dest_root, rel), st)
        _preserve(dirs[""], dest_root, os.fstat(source_fd))
    except OSError:
        for child in list(os.scandir(dest)):  # let cp redo it and word any error
            if child.is_dir(follow_symlinks=False):
                shutil.rmtree(child.path, ignore_errors=True)
            else:
                os.unlink(child.path)
        return False
    finally:
        for fd in dirs.values():
            os.close(fd)
    return True


def _open_listed(name: str, dir_fd: int, listed: os.stat_result) -> int:
    """Open an entry the listing saw, refusing anything else that took its name since."""
    flags = _DIR_FLAGS | os.O_NOFOLLOW if stat.S_ISDIR(listed.st_mode) else _FILE_FLAGS
    fd = os.open(name, flags, dir_fd=dir_fd)
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino, stat.S_IFMT(st.st_mode)) != (
            listed.st_dev, listed.st_ino, stat.S_IFMT(listed.st_mode)):
        os.close(fd)
        raise OSError(f"{name!r} changed during the copy")
    return fd


def _copy_bytes(fin: int, dst: str) -> None:
    """shutil.copyfile from an open regular file: the bytes, created 0o666 & ~umask."""
    fout = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    try:
        while os.sendfile(fout, fin, None, SMALL_BYTES):
            pass
    finally:
        os.close(fout)


def _small_tree(source_fd: int) -> list[tuple[str, os.stat_result]] | None:
    """Every entry below the dir open at `source_fd` (parents first), or None past the limits
    or on a special file or a hard link (cp -a keeps those; this path does not try to)."""
    found: list[tuple[str, os.stat_result]] = []
    total = 0
    stack = [("", os.dup(source_fd))]
    try:
        while stack:
            rel, dir_fd = stack.pop()
            try:
                with os.scandir(dir_fd) as it:
                    names = [entry.name for entry in it]
                for name in names:
                    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                    path = os.path.join(rel, name)
                    if stat.S_ISDIR(st.st_mode):
                        stack.append((path, _open_listed(name, dir_fd, st)))
                    elif stat.S_ISREG(st.st_mode):
                        if st.st_nlink > 1:
                            return None
                        total += st.st_size
                    elif not stat.S_ISLNK(st.st_mode):
                        return None
                    found.append((path, st))
                    if len(found) > SMALL_ENTRIES or total > SMALL_BYTES:
                        return None
            finally:
                os.close(dir_fd)
    except OSError:
        return None  # gone, unreadable or changing: cp words the error
    finally:
        for _, dir_fd in stack:
            os.close(dir_fd)
    return found


def _preserve(src_fd: int, dst: str, st: os.stat_result) -> None:
    """What `cp -a` keeps of a file or dir: owner (when we may), times, xattrs (ACLs), mode."""
    try:
        os.chown(dst, st.st_uid, st.st_gid)
    except PermissionError:
        pass  # like cp -a as an ordinary user: the copy belongs to us
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
    for attr in _listxattr(src_fd):
        try:
            os.setxattr(dst, attr, os.getxattr(src_fd, attr))
        except OSError as exc:
            if exc.errno not in _XATTR_SKIPPED:
                raise
    os.chmod(dst, stat.S_IMODE(st.st_mode))


# What shutil.copystat ignores when copying extended attributes.
_XATTR_SKIPPED = (errno.EPERM, errno.ENOTSUP, errno.ENODATA, errno.EINVAL, errno.EACCES)


def _listxattr(fd: int) -> list[str]:
    try:
        return os.listxattr(fd)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.ENODATA, errno.EINVAL):
            return []
        raise


def _preserve_link(dst: str, st: os.stat_result) -> None:
    try:
        os.chown(dst, st.st_uid, st.st_gid, follow_symlinks=False)
    except PermissionError:
        pass
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
