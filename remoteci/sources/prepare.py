"""Put a job's code into its scratch dir: a workspace copy, an extracted upload or a git clone."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from remoteci.config import Settings
from remoteci.errors import SourceError
from remoteci.sources.archives import extract_archive
from remoteci.sources.git import Credential, clone_git
from remoteci.sources.workspaces import copy_workspace, open_workspace

# archives (tarfile, zlib) and gitsource are imported by the first job that needs them: the
# executors fork from the supervisor and stay small until an upload or git job arrives.


def prepare_source(payload: dict[str, Any], scratch: Path, settings: Settings,
                   log_fd: int) -> dict[str, str]:
    """Fill `scratch` with the job's code; return fields to record on the job (e.g. `commit`)."""
    mode = payload["mode"]
    if mode == "rsync":
        # A pipeline's job copies the snapshot its pipeline took at submission instead.
        root = Path(payload.get("snapshot_root") or settings.workspace_dir)
        workspace_fd = open_workspace(root, payload["workspace"], payload.get("host"))
        try:
            copy_workspace(workspace_fd, scratch, timeout=payload["timeout"])
        finally:
            os.close(workspace_fd)
        return {}
    if mode == "upload":
        extract_archive(Path(payload["path"]), scratch,
                        max_bytes=settings.max_extract_mb * 1024 * 1024,
                        max_members=settings.max_archive_members)
        return {}
    if mode == "git":
        secret = payload.get("git_credential")  # what the executor took from Redis, if any
        commit = clone_git(payload["repo"], payload.get("ref"), scratch,
                           timeout=min(settings.git_timeout, payload["timeout"]),
                           allow_file=settings.git_allow_file, log_fd=log_fd,
                           credential=Credential.from_json(secret) if isinstance(secret, str) else None)
        os.write(log_fd, f"[remote-ci] commit {commit}\n".encode())
        return {"commit": commit}
    raise SourceError(f"unknown mode {mode!r}")


def discard_source(payload: dict[str, Any]) -> None:
    """An upload's archive is deleted when its job ends, whatever the outcome; a pipeline's
    archive is shared by its jobs and goes when the pipeline ends."""
    if payload["mode"] == "upload" and not payload.get("pipeline"):
        try:
            os.unlink(payload["path"])
        except FileNotFoundError:
            pass
