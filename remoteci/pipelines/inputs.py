"""At a pipeline job's start: the artifacts of its earlier stages, placed into its code dir.

The code dir holds the snapshot, which may contain links (a `dist -> /etc` of the project's
own): every path is walked from directory fd to directory fd with O_NOFOLLOW, so an artifact
is never written through a link, and a clash with one fails the job naming the path.
"""

from __future__ import annotations

import os
from pathlib import Path

from remoteci.artifacts.manifest import FILES, read_manifest
from remoteci.errors import SourceError

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK = 1024 * 1024


def place_inputs(job_ids: list[str], artifacts_root: Path, code_dir: Path) -> int:
    """Copy the kept files of `job_ids` (earlier stages first, so later ones win) into
    `code_dir` at their own paths; return how many files came."""
    placed = 0
    for job_id in job_ids:
        files = artifacts_root / job_id / FILES
        for artifact in read_manifest(artifacts_root, job_id).files:
            _place(files, artifact.path, code_dir)
            placed += 1
    return placed


def _place(files: Path, rel: str, code_dir: Path) -> None:
    parts = rel.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise SourceError(f"artifact {rel!r} of an earlier stage is not a plain relative path")
    try:
        src = os.open(files / rel, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise SourceError(f"artifact {rel!r} of an earlier stage is gone ({exc.strerror})") from None
    dir_fd = os.open(code_dir, _DIR)
    try:
        for part in parts[:-1]:
            try:
                os.mkdir(part, 0o755, dir_fd=dir_fd)
            except FileExistsError:
                pass
            next_fd = os.open(part, _DIR, dir_fd=dir_fd)
            os.close(dir_fd)
            dir_fd = next_fd
        try:
            os.unlink(parts[-1], dir_fd=dir_fd)  # a file of the snapshot with the same name
        except FileNotFoundError:
            pass
        dst = os.open(parts[-1], os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                      0o644, dir_fd=dir_fd)
        try:
            while chunk := os.read(src, _CHUNK):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(dst, view):]
        finally:
            os.close(dst)
    except OSError as exc:
        raise SourceError(f"cannot place artifact {rel!r} of an earlier stage into the job dir "
                          f"({exc.strerror}: a link or a directory of the code is in its way)") from None
    finally:
        os.close(dir_fd)
        os.close(src)
