"""rsync mode: which workspace a request may use, and the private copy a job runs on."""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import time
from dataclasses import dataclass, field
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


def open_workspace(root: Path, relative: str, host: str | None = None) -> int:
    """At job start: an fd on the workspace submitted, which may have been removed or swapped for
    a link since; the copy reads through this fd, so no later swap can redirect it.

    `relative` was resolved at submission, so it must still resolve to itself: a link swapped in
    while the job was queued may point at another project's tree inside the root, which the
    submitter's token was never allowed to use. `host` is set for a job pinned to this host,
    whose workspace the API never saw. Each component is opened with O_NOFOLLOW from
    the real root's fd, so a link swapped in after the look below is refused too.
    """
    real_root, target = _resolve_below(root, relative)
    if target is None:
        raise SourceError(f"workspace {relative!r} now resolves outside the workspace root")
    if target != os.path.join(real_root, relative) and host:
        raise SourceError(f"workspace {relative!r} on host {host!r} is a link (to "
                          f"{target[len(real_root):].lstrip('/')!r}); a job pinned to a host "
                          "runs only on a directory of that name, so name the directory itself")
    if target != os.path.join(real_root, relative):
        raise SourceError(f"workspace {relative!r} was replaced by a link (to "
                          f"{target[len(real_root):].lstrip('/')!r}) while the job was queued; "
                          "the job runs only on the directory that was submitted")
    if not os.path.isdir(target) and host:  # pinned: the API never looked on its own disk
        raise SourceError(f"workspace {relative!r} not found on host {host!r} (under "
                          f"{real_root}); rsync it to that host, or submit without `host`")
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
    """Copy the workspace open at `source_fd` into the job dir, as `cp -a` would; the workspace
    itself is never changed.

    The walk goes from directory fd to directory fd, and every entry is opened with O_NOFOLLOW
    and checked to be the very entry just looked at (device, inode, type), as the archive
    extraction does: a directory or file swapped for a link while the copy runs is refused, so
    the copy never reads outside the workspace that was checked. A path-based copier (cp -a)
    resolves every intermediate directory again for each file it opens, which a swap can
    redirect. Kept like cp -a: modes, times, extended attributes (ACLs),
    symlinks as links, hard links within the tree, FIFOs; file data is reflinked where the
    filesystem can, else copied in the kernel (copy_file_range).
    """
    dest_fd = os.open(dest, _DIR_FLAGS | os.O_NOFOLLOW)
    try:
        _Copy(time.monotonic() + timeout, timeout, dest_fd).tree(source_fd, dest_fd, "", 0)
        _preserve(source_fd, dest_fd, os.fstat(source_fd))
    except OSError as exc:
        raise SourceError(f"copying the workspace failed: {exc}") from None
    finally:
        os.close(dest_fd)
    if os.fstat(source_fd).st_nlink == 0:
        raise SourceError("the workspace is gone (deleted while the job was starting)")


MAX_DEPTH = 256  # directories deep; each level holds two fds while it is copied
FICLONE = 0x40049409  # ioctl: share the source's blocks (btrfs, XFS with reflink)


class _Changed(OSError):
    """An entry is no longer what was just looked at: a swap under the copy."""


@dataclass
class _Copy:
    """One workspace copy: its deadline, and the hard links met so far."""

    deadline: float
    timeout: float
    dest_root: int
    links: dict[tuple[int, int], str] = field(default_factory=dict)  # (dev, ino) -> dest path
    seen: int = 0

    def tree(self, src: int, dst: int, rel: str, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise SourceError(f"the workspace is deeper than {MAX_DEPTH} directories at {rel!r}")
        try:
            with os.scandir(src) as it:  # scandir dups the fd: `src` stays ours
                names = [entry.name for entry in it]
        except OSError as exc:
            raise SourceError(f"copying the workspace failed: cannot list {rel or '.'!r} "
                              f"({exc.strerror})") from None
        for name in names:
            self.seen += 1
            if self.seen % 256 == 0 and time.monotonic() > self.deadline:
                raise SourceError(f"copying the workspace took longer than {self.timeout:.0f} s")
            path = f"{rel}/{name}" if rel else name
            try:
                st = os.stat(name, dir_fd=src, follow_symlinks=False)
            except FileNotFoundError:
                continue  # deleted meanwhile: as if the copy had started a moment later
            try:
                self.entry(src, dst, name, path, st, depth)
            except _Changed:
                raise SourceError(f"workspace entry {path!r} was replaced while the job's copy "
                                  "ran (by a link or another file); submit the job again") from None
            except OSError as exc:
                raise SourceError(f"copying the workspace failed at {path!r}: "
                                  f"{exc.strerror}") from None

    def entry(self, src: int, dst: int, name: str, path: str, st: os.stat_result,
              depth: int) -> None:
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            child = _open_listed(name, src, st)
            try:
                os.mkdir(name, 0o700, dir_fd=dst)
                child_dst = os.open(name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=dst)
                try:
                    self.tree(child, child_dst, path, depth + 1)
                    _preserve(child, child_dst, st)  # last: filling it changes its mtime
                finally:
                    os.close(child_dst)
            finally:
                os.close(child)
        elif stat.S_ISLNK(mode):
            os.symlink(os.readlink(name, dir_fd=src), name, dir_fd=dst)
            _preserve_entry(name, dst, st)
        elif stat.S_ISREG(mode):
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in self.links:
                os.link(self.links[key], path, src_dir_fd=self.dest_root,
                        dst_dir_fd=self.dest_root, follow_symlinks=False)
                return
            fin = _open_listed(name, src, st)
            try:
                fout = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                               | os.O_CLOEXEC, 0o600, dir_fd=dst)
                try:
                    _copy_data(fin, fout)
                    _preserve(fin, fout, st)
                finally:
                    os.close(fout)
            finally:
                os.close(fin)
            if st.st_nlink > 1:
                self.links[key] = path
        elif stat.S_ISFIFO(mode):
            os.mkfifo(name, 0o600, dir_fd=dst)
            _preserve_entry(name, dst, st)
        else:
            raise SourceError(f"workspace entry {path!r} is a device or socket file, which a "
                              "job's copy does not take; remove it from the workspace")


def _open_listed(name: str, dir_fd: int, listed: os.stat_result) -> int:
    """Open an entry just looked at, refusing anything else that took its name since."""
    flags = _DIR_FLAGS | os.O_NOFOLLOW if stat.S_ISDIR(listed.st_mode) else _FILE_FLAGS
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT):
            raise _Changed(exc.errno, exc.strerror) from None
        raise
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino, stat.S_IFMT(st.st_mode)) != (
            listed.st_dev, listed.st_ino, stat.S_IFMT(listed.st_mode)):
        os.close(fd)
        raise _Changed(errno.ESTALE, f"{name!r} changed during the copy")
    return fd


def _copy_data(fin: int, fout: int) -> None:
    """The bytes: shared blocks where the filesystem can, else a copy inside the kernel."""
    try:
        fcntl.ioctl(fout, FICLONE, fin)
        return
    except OSError:
        pass  # not a reflink filesystem, or another one
    try:
        while os.copy_file_range(fin, fout, 1 << 30):
            pass
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
        while os.sendfile(fout, fin, None, 1 << 30):
            pass


def _preserve(src_fd: int, dst_fd: int, st: os.stat_result) -> None:
    """What `cp -a` keeps of a file or dir but its owner: xattrs (ACLs), mode, times.

    Not the owner: the copy is handed to the job's user, and an executor holding CAP_CHOWN but
    not CAP_FOWNER could give a file away and then fail to set its mode.
    """
    for attr in _listxattr(src_fd):
        try:
            os.setxattr(dst_fd, attr, os.getxattr(src_fd, attr))
        except OSError as exc:
            if exc.errno not in _XATTR_SKIPPED:
                raise
    os.fchmod(dst_fd, stat.S_IMODE(st.st_mode))
    os.utime(dst_fd, ns=(st.st_atime_ns, st.st_mtime_ns))


# What shutil.copystat ignores when copying extended attributes.
_XATTR_SKIPPED = (errno.EPERM, errno.ENOTSUP, errno.ENODATA, errno.EINVAL, errno.EACCES)


def _listxattr(fd: int) -> list[str]:
    try:
        return os.listxattr(fd)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.ENODATA, errno.EINVAL):
            return []
        raise


def _preserve_entry(name: str, dir_fd: int, st: os.stat_result) -> None:
    """Mode and times of an entry we cannot open (a link, a FIFO) in its dir (owner: _preserve)."""
    if not stat.S_ISLNK(st.st_mode):  # a link's own mode is not kept by Linux
        os.chmod(name, stat.S_IMODE(st.st_mode), dir_fd=dir_fd)
    os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dir_fd, follow_symlinks=False)
