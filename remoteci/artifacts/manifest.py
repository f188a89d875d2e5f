"""Artifacts of a job: the glob patterns a submission names, and the manifest of what was kept.

Shared by the API (validating patterns, reading manifests) and the executor (matching, writing).
Layout under `<data_dir>/artifacts/<job id>/`:
  manifest.json   what was kept: [{"path", "size", "sha256"}] plus any note on caps; written last,
                  atomically, so its presence means collection is complete
  files/<path>    the kept files, at their path relative to the job dir

The manifest lives on disk next to the files, not in Redis: it can hold a thousand entries
(too big for a job hash that every listing reads), and the sweep deletes it with the files in
one rmtree, so the two can never disagree.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from remoteci.errors import ApiError
from remoteci.web import strict_json

MAX_PATTERNS = 50
MAX_PATTERN_CHARS = 512
MANIFEST = "manifest.json"
FILES = "files"
_HINT = 'a list of globs relative to the job dir, e.g. ["dist/*.whl", "reports/**/*.xml"]'


@dataclass(frozen=True)
class Artifact:
    path: str  # relative to the job dir, "/"-separated, UTF-8
    size: int
    sha256: str


@dataclass
class Manifest:
    files: list[Artifact] = field(default_factory=list)
    truncated: str | None = None  # which cap stopped collection, if one did


# --- patterns ----------------------------------------------------------------------------------

def parse_patterns(value: Any) -> tuple[str, ...]:
    """The submission's `artifacts` field: a list (or, from multipart/query, its JSON text).

    Each pattern is relative, has no `..`, no NUL and at most 512 characters; `./` and empty
    components are dropped, so `./dist//x` and `dist/x` are the same pattern.
    """
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        try:
            value = strict_json.loads(value)
        except strict_json.JsonError as exc:
            raise ApiError(400, f"field 'artifacts' must be JSON here: {_HINT} ({exc})") from None
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_PATTERNS:
        raise ApiError(400, f"field 'artifacts' must be {_HINT}, with 1..{MAX_PATTERNS} patterns")
    return tuple(_pattern(item) for item in value)


def _pattern(item: Any) -> str:
    if not isinstance(item, str) or not item:
        raise ApiError(400, f"field 'artifacts' holds {item!r}; every pattern must be a non-empty "
                            "string such as \"dist/*.whl\"")
    shown = repr(item[:80])
    if len(item) > MAX_PATTERN_CHARS:
        raise ApiError(400, f"field 'artifacts': pattern {shown}... is longer than "
                            f"{MAX_PATTERN_CHARS} characters")
    if "\x00" in item:
        raise ApiError(400, f"field 'artifacts': pattern {shown} contains a NUL byte")
    if item.startswith("/"):
        raise ApiError(400, f"field 'artifacts': pattern {shown} is absolute; write it relative "
                            "to the job dir, e.g. \"dist/*.whl\"")
    parts = [p for p in item.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ApiError(400, f"field 'artifacts': pattern {shown} has a '..' component; artifacts "
                            "must be inside the job dir")
    if not parts:
        raise ApiError(400, f"field 'artifacts': pattern {shown} names no file; use e.g. \"**\" "
                            "for everything")
    # `a/**/**/b` means `a/**/b`; collapsing keeps matching linear in the path's depth.
    collapsed = [p for i, p in enumerate(parts) if not (p == "**" and i and parts[i - 1] == "**")]
    return "/".join(collapsed)


def matches(path: Sequence[str], pattern: Sequence[str]) -> bool:
    """Whether a file's path components match a pattern's: `**` spans any number of
    directories, `*`, `?` and `[...]` stay within one name (and, unlike a shell, match a
    leading dot)."""

    @functools.cache
    def at(i: int, j: int) -> bool:
        if j == len(pattern):
            return i == len(path)
        if pattern[j] == "**":
            return at(i, j + 1) or (i < len(path) and at(i + 1, j))
        return i < len(path) and fnmatchcase(path[i], pattern[j]) and at(i + 1, j + 1)

    return at(0, 0)


def may_contain(directory: Sequence[str], pattern: Sequence[str]) -> bool:
    """Whether files below this directory can match: the walk skips the rest (node_modules…)."""
    for j, name in enumerate(directory):
        if j == len(pattern) or pattern[j] == "**":
            return j < len(pattern)
        if not fnmatchcase(name, pattern[j]):
            return False
    return len(directory) < len(pattern)


# --- where things are --------------------------------------------------------------------------

def job_dir(artifacts_root: Path, job_id: str) -> Path:
    return artifacts_root / job_id


def read_manifest(artifacts_root: Path, job_id: str) -> Manifest:
    """The kept files of a job; empty while it runs, for a job that asked for none, or when its
    manifest is unreadable (the files are then as good as gone)."""
    try:
        data = json.loads((job_dir(artifacts_root, job_id) / MANIFEST).read_bytes())
        files = [Artifact(str(f["path"]), int(f["size"]), str(f["sha256"])) for f in data["files"]]
        return Manifest(files, data.get("truncated"))
    except (OSError, ValueError, KeyError, TypeError):
        return Manifest()


def write_manifest(directory: Path, manifest: Manifest) -> None:
    """Atomically: a reader sees no manifest or a whole one."""
    tmp = directory / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps({"files": [asdict(f) for f in manifest.files],
                               "truncated": manifest.truncated}, separators=(",", ":")))
    os.replace(tmp, directory / MANIFEST)
