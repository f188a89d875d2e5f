"""Retention on disk: the entries of a dir older than a cutoff go, and no link is followed."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

from remoteci.config import Settings


def listing(directory: Path) -> list[os.DirEntry[str]]:
    """The dir's entries now; none when it does not exist (yet)."""
    try:
        return list(os.scandir(directory))
    except FileNotFoundError:
        return []


def _rmtree(top: Path) -> None:
    shutil.rmtree(top, ignore_errors=True)


def remove_older(entries: Iterable[os.DirEntry[str]], cutoff: float,
                 skip: Callable[[str], bool] = lambda name: False,
                 remove_dir: Callable[[Path], None] = _rmtree) -> int:
    """Delete the entries last changed before `cutoff` (epoch seconds); return how many went."""
    removed = 0
    for entry in entries:
        if skip(entry.name):
            continue
        try:
            if entry.stat(follow_symlinks=False).st_mtime >= cutoff:
                continue
            if entry.is_dir(follow_symlinks=False):
                remove_dir(Path(entry.path))
            else:
                os.unlink(entry.path)
            removed += 1
        except FileNotFoundError:
            continue
    return removed


def sweep_data_dirs(settings: Settings, now: float,
                    remove_dir: Callable[[Path], None] = _rmtree) -> int:
    """Logs, uploads and artifacts older than REMOTE_CI_RETENTION_DAYS: the one rule of every host."""
    cutoff = now - settings.retention_seconds
    return sum(remove_older(listing(directory), cutoff, remove_dir=remove_dir)
               for directory in (settings.logs_dir, settings.uploads_dir, settings.artifacts_dir))
