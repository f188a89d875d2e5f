"""A pipeline's one copy of its code, taken at submission, kept in `<data_dir>/pipelines/<id>/`
until the pipeline ends: a git checkout of the commit its ref named then, a copy of the
workspace as it was then, or the uploaded archive. Every job starts from it, so every job sees
the same code, whatever is pushed or synced meanwhile.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from remoteci.errors import ApiError, SourceError
from remoteci.pipelines.plan import CODE
from remoteci.sources.git import clone_git, redact_url
from remoteci.sources.workspaces import copy_workspace, open_workspace

DIR = "pipelines"
ORPHAN_AGE = 3600.0  # a dir with no pipeline record is a submission's leftover after this long


def pipelines_root(data_dir: Path) -> Path:
    return data_dir / DIR


def pipeline_dir(data_dir: Path, pipeline_id: str) -> Path:
    return pipelines_root(data_dir) / pipeline_id


def make_dir(data_dir: Path, pipeline_id: str) -> Path:
    path = pipeline_dir(data_dir, pipeline_id)
    path.mkdir(mode=0o700, parents=True)
    (path / CODE).mkdir(mode=0o700)
    return path


def take_git(path: Path, repo: str, ref: str | None, *, timeout: float, allow_file: bool) -> str:
    """Check out the commit `ref` names now, as a git job would (a `user:password@` in the URL
    reaches git through its credential helper); return its sha, the pipeline's one commit."""
    try:
        return clone_git(repo, ref, path / CODE, timeout=timeout, allow_file=allow_file)
    except SourceError as exc:
        raise ApiError(400, f"field 'source': cannot fetch {ref or 'the default branch'} of "
                            f"{redact_url(repo)}: {exc}") from None


def take_workspace(path: Path, root: Path, relative: str, timeout: float) -> None:
    """Copy the workspace as it is now."""
    try:
        fd = open_workspace(root, relative)
        try:
            copy_workspace(fd, path / CODE, timeout=timeout)
        finally:
            os.close(fd)
    except SourceError as exc:
        raise ApiError(400, f"field 'source.workspace': cannot copy it: {exc}") from None


def keep_archive(path: Path, archive: Path) -> Path:
    """Move the uploaded archive into the pipeline's dir; return its new path."""
    kept = path / archive.name
    os.replace(archive, kept)
    return kept


def remove(data_dir: Path, pipeline_id: str) -> None:
    shutil.rmtree(pipeline_dir(data_dir, pipeline_id), ignore_errors=True)


def leftovers(data_dir: Path, status_of: dict[str, str | None], now: float | None = None) -> list[str]:
    """Ids of pipeline dirs whose pipeline ended, or that no pipeline record ever came for."""
    now = time.time() if now is None else now
    gone = []
    for pipeline_id, status in status_of.items():
        if status in (None, "success", "failed", "cancelled"):
            if status is None:
                try:
                    age = now - pipeline_dir(data_dir, pipeline_id).stat().st_mtime
                except FileNotFoundError:
                    continue
                if age < ORPHAN_AGE:  # maybe a submission still taking its snapshot
                    continue
            gone.append(pipeline_id)
    return gone


def existing(data_dir: Path) -> list[str]:
    try:
        return sorted(os.listdir(pipelines_root(data_dir)))
    except FileNotFoundError:
        return []
