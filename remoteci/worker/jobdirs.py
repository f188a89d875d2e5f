"""A job's dirs under the work dir: its code (`<id>/`, where it runs) and its HOME (`<id>.home/`).

With isolation on, both belong to the job's user while it runs and to the server before and
after: the server fills the code dir, gives both to the job, and takes them back once the job's
processes are gone, so artifact collection and removal never act on a tree a job can still
change. Every walk goes from directory fd to directory fd without following links.
"""

from __future__ import annotations

import os
import shutil
import stat
from contextlib import suppress
from pathlib import Path

from remoteci.system.isolation import JobUser

HOME_SUFFIX = ".home"  # job ids have no dot, so `<id>.home` can never be another job's dir
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def code_dir(work_dir: Path, job_id: str) -> Path:
    return work_dir / job_id


def home_dir(work_dir: Path, job_id: str) -> Path:
    return work_dir / f"{job_id}{HOME_SUFFIX}"


def job_id_of(name: str) -> str:
    """The job an entry of the work dir belongs to."""
    return name.removesuffix(HOME_SUFFIX)


def make(path: Path) -> None:
    """A fresh private dir; a leftover of a crash (never a live job's) is removed first."""
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        remove(path)
        path.mkdir(mode=0o700)


def give(top: Path, user: JobUser) -> None:
    """Hand the tree to the job's user, its top last, so no job process enters it half given."""
    for _, dirnames, filenames, dir_fd in os.fwalk(top, topdown=False):
        for name in dirnames + filenames:
            os.chown(name, user.uid, user.gid, dir_fd=dir_fd, follow_symlinks=False)
    os.chmod(top, 0o700)  # a workspace copy brings its own mode; no other uid may enter
    os.chown(top, user.uid, user.gid, follow_symlinks=False)


def take_back(top: Path) -> None:
    """Own the tree again, top first: once a dir is ours and 0700, no job can change its entries.

    Depth-first with one open fd per level, so a deep tree costs fds, not recursion.
    """
    uid, gid = os.geteuid(), os.getegid()
    try:
        parent = os.open(top.parent, _DIR_FLAGS)
    except FileNotFoundError:
        return
    stack: list[tuple[int, list[str]]] = [(parent, [top.name])]
    try:
        while stack:
            dir_fd, names = stack[-1]
            if not names:
                os.close(dir_fd)
                stack.pop()
                continue
            sub = _reclaim(dir_fd, names.pop(), uid, gid)
            if sub is not None:
                stack.append((sub, os.listdir(sub)))
    finally:
        for dir_fd, _ in stack:
            os.close(dir_fd)


def _reclaim(dir_fd: int, name: str, uid: int, gid: int) -> int | None:
    """Own one entry; for a dir, make it 0700 and return an fd on it to walk into."""
    try:
        os.chown(name, uid, gid, dir_fd=dir_fd, follow_symlinks=False)
        mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
        # chmod follows links, but the name was just seen as no link, and its parent is ours
        # and 0700 already: no job process can swap it for one in between.
        if stat.S_ISDIR(mode):
            os.chmod(name, 0o700, dir_fd=dir_fd)
            return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
        if stat.S_ISREG(mode) and mode & 0o600 != 0o600:
            os.chmod(name, stat.S_IMODE(mode) | 0o600, dir_fd=dir_fd)  # artifacts get read
    except FileNotFoundError:
        pass
    return None


def remove(top: Path) -> None:
    """Delete a job dir whoever owns its files; root may anyway, a capability-holder takes it back."""
    if os.geteuid() != 0:
        with suppress(OSError):
            take_back(top)
    shutil.rmtree(top, ignore_errors=True)
