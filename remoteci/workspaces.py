"""rsync mode: which workspace a request may use, and the private copy a job runs on."""

from __future__ import annotations

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
    if not requested or "\x00" in requested:
        raise ApiError(400, "workspace is empty; give a directory name relative to the workspace root")
    real_root, target = _resolve_below(root, requested)  # an absolute `requested` replaces the root
    if target is None:
        raise ApiError(403, f"workspace {requested!r} is outside the workspace root; "
                            "use a directory inside it")
    if not os.path.isdir(target):
        raise ApiError(400, f"workspace {requested!r} does not exist or is not a directory; "
                            "rsync your code into it first")
    return target[len(real_root):].lstrip("/")


def recheck_workspace(root: Path, relative: str) -> Path:
    """At job start: the workspace may have been removed or swapped for a link since submit.

    `relative` was resolved at submission, so it must still resolve to itself: a link swapped in
    while the job was queued may point at another project's tree inside the root, which the
    submitter's token was never allowed to use.
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
    return Path(target)


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


def copy_workspace(source: Path, dest: Path, timeout: float) -> None:
    """Copy a workspace into the job dir; the workspace itself is never changed.

    `cp -a --reflink=auto` keeps modes, times and symlinks (as links, never followed), shares
    blocks on filesystems that can, and is as fast as a plain copy elsewhere. A small workspace
    is copied in this process with the same result: spawning cp costs more than the copy.
    """
    if _copy_small(source, dest):
        return
    try:
        result = subprocess.run(
            ["cp", "-a", "--reflink=auto", "--", f"{source}/.", f"{dest}/"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            timeout=timeout, check=False, start_new_session=True,
        )
    except subprocess.TimeoutExpired:
        raise SourceError(f"copying the workspace took longer than {timeout:.0f} s") from None
    if result.returncode != 0:
        message = result.stderr.decode(errors="replace").strip()[-2000:]
        if not os.path.isdir(source):
            raise SourceError(f"workspace {source} is gone (deleted while the job was queued)")
        raise SourceError(f"copying the workspace failed: {message}")


# Workspaces up to this size are copied in-process. Spawning `cp` from the executor costs
# ~1.8 ms, most of a tiny job's start latency above the floor; a Python copy of a few files
# takes ~0.2 ms. Past the limit cp wins (reflinks, no per-file interpreter overhead).
SMALL_ENTRIES = 64
SMALL_BYTES = 1024 * 1024


def _copy_small(source: Path, dest: Path) -> bool:
    """`cp -a source/. dest/` for a small tree of plain files, dirs and symlinks; False (and
    nothing written) when the tree is larger, holds anything else, or changes under us."""
    entries = _small_tree(source)
    if entries is None:
        return False
    # Plain strings and os calls: pathlib and shutil.copyfile's checks cost more than the
    # copy of a few small files.
    src_root, dest_root = os.fspath(source), os.fspath(dest)
    try:
        for rel, st in entries:
            src, dst = os.path.join(src_root, rel), os.path.join(dest_root, rel)
            if stat.S_ISDIR(st.st_mode):
                os.mkdir(dst, 0o700)
            elif stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(src), dst)
            else:
                _copy_bytes(src, dst)
            _preserve(src, dst, st)
        # Directory times last: filling a directory changes its mtime.
        for rel, st in reversed(entries):
            if stat.S_ISDIR(st.st_mode):
                _preserve(os.path.join(src_root, rel), os.path.join(dest_root, rel), st)
        _preserve(src_root, dest_root, os.lstat(source))
    except OSError:
        for child in list(os.scandir(dest)):  # let cp redo it and word any error
            if child.is_dir(follow_symlinks=False):
                shutil.rmtree(child.path, ignore_errors=True)
            else:
                os.unlink(child.path)
        return False
    return True


def _copy_bytes(src: str, dst: str) -> None:
    """shutil.copyfile for a file just listed as regular: the bytes, created 0o666 & ~umask."""
    fin = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fout = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
        try:
            while os.sendfile(fout, fin, None, SMALL_BYTES):
                pass
        finally:
            os.close(fout)
    finally:
        os.close(fin)


def _small_tree(source: Path) -> list[tuple[str, os.stat_result]] | None:
    """Every entry below `source` (parents first), or None past the limits or on a special
    file or a hard link (cp -a keeps those; this path does not try to)."""
    found: list[tuple[str, os.stat_result]] = []
    total = 0
    stack = [""]
    try:
        while stack:
            rel = stack.pop()
            with os.scandir(os.path.join(source, rel)) as it:
                for entry in it:
                    st = entry.stat(follow_symlinks=False)
                    path = os.path.join(rel, entry.name)
                    if stat.S_ISDIR(st.st_mode):
                        stack.append(path)
                    elif stat.S_ISREG(st.st_mode):
                        if st.st_nlink > 1:
                            return None
                        total += st.st_size
                    elif not stat.S_ISLNK(st.st_mode):
                        return None
                    found.append((path, st))
                    if len(found) > SMALL_ENTRIES or total > SMALL_BYTES:
                        return None
    except OSError:
        return None  # gone or unreadable: cp words the error
    return found


def _preserve(src: str, dst: str, st: os.stat_result) -> None:
    """What `cp -a` keeps: owner (when we may), mode, times and extended attributes."""
    link = stat.S_ISLNK(st.st_mode)
    try:
        os.chown(dst, st.st_uid, st.st_gid, follow_symlinks=False)
    except PermissionError:
        pass  # like cp -a as an ordinary user: the copy belongs to us
    if not link:
        shutil.copystat(src, dst, follow_symlinks=False)  # mode, times, xattrs (ACLs too)
    else:
        os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
