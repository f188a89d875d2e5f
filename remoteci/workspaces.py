"""rsync mode: which workspace a request may use, and the private copy a job runs on."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from remoteci.errors import ApiError, SourceError


def resolve_workspace(root: Path, requested: str) -> Path:
    """The real directory a request names, refused unless strictly inside the root.

    Containment is checked on resolved paths by components (`/ws-evil` is not inside `/ws`),
    so `..`, symlinks and absolute paths cannot reach outside.
    """
    if not requested or "\x00" in requested:
        raise ApiError(400, "workspace is empty; give a directory name relative to the workspace root")
    real_root = root.resolve()
    target = (real_root / requested).resolve()  # an absolute `requested` replaces the root
    if target == real_root or not target.is_relative_to(real_root):
        raise ApiError(403, f"workspace {requested!r} is outside the workspace root; "
                            "use a directory inside it")
    if not target.is_dir():
        raise ApiError(400, f"workspace {requested!r} does not exist or is not a directory; "
                            "rsync your code into it first")
    return target


def relative_to_root(root: Path, workspace: Path) -> str:
    """What the queue carries: the path below the root, so a worker host with another root
    (or the same share mounted elsewhere) finds the same workspace."""
    return str(workspace.relative_to(root.resolve()))


def recheck_workspace(root: Path, relative: str) -> Path:
    """At job start: the workspace may have been removed or swapped for a link since submit."""
    real_root = root.resolve()
    target = (real_root / relative).resolve()
    if target == real_root or not target.is_relative_to(real_root):
        raise SourceError(f"workspace {relative!r} now resolves outside the workspace root")
    if not target.is_dir():
        raise SourceError(f"workspace {relative!r} is gone (deleted while the job was queued, "
                          f"or not synced to this worker host's {real_root})")
    return target


def copy_workspace(source: Path, dest: Path, timeout: float) -> None:
    """Copy a workspace into the job dir; the workspace itself is never changed.

    `cp -a --reflink=auto` keeps modes, times and symlinks (as links, never followed), shares
    blocks on filesystems that can, and is as fast as a plain copy elsewhere.
    """
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
