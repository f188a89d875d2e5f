"""Project tokens: the tokens file format, hashing, and which workspaces a token may use.

The file (REMOTE_CI_TOKENS_FILE) holds one token a line, `name:sha256-hex:globs`, where
`globs` is one or more comma-separated workspace patterns. `#` starts a comment line; blank
lines are ignored. Only hashes are stored, so the file leaks no usable token.

A pattern is matched component by component (split on `/`) with fnmatch rules (case
sensitive, like the filesystem), against the workspace path relative to the root after
symlinks are resolved: a link named `project-a` pointing at `project-b` is `project-b`.
`*` never crosses a `/`: `team-*/web` matches `team-a/web`, never `team-a/x/web`. A
pattern covers everything below what it matches (`project-a` allows `project-a/backend`):
a token owns directory trees, and `*` alone allows every workspace.

An optional fourth field, `name:sha256-hex:globs:git-hosts`, limits the git jobs of the token
to repositories on those hosts (comma-separated, fnmatch patterns such as `github.com` or
`*.corp.example`, matched case-insensitively): the server's deploy keys and ssh agent serve
every token that may reach a host. Without it a token may clone from any host.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path, PurePosixPath

NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
HASH_RE = re.compile(r"[0-9a-f]{64}")
# Jobs submitted with a REMOTE_CI_TOKEN token carry this owner, so no project may take it.
RESERVED_NAMES = frozenset({"admin"})


class TokensFileError(ValueError):
    """The tokens file cannot be used; the message names the file and the line."""


@dataclass(frozen=True)
class ProjectToken:
    name: str
    digest: bytes  # sha256 of the token; the token itself is never kept
    workspaces: tuple[str, ...]  # patterns, see the module docstring
    git_hosts: tuple[str, ...] = ()  # host patterns; empty: any host


def hash_token(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()


def check_name(name: str) -> str | None:
    """Why `name` cannot name a token, or None when it can."""
    if not NAME_RE.fullmatch(name):
        # Not echoed: a pasted secret in the wrong field must not reach a log.
        return "a token name must be 1-64 of A-Z a-z 0-9 _ . -"
    if name in RESERVED_NAMES:
        return f"token name {name!r} is reserved for REMOTE_CI_TOKEN tokens"
    return None


def check_patterns(field: str) -> str | None:
    """Why a workspaces field is unusable, or None when it is fine."""
    for pattern in field.split(","):
        parts = pattern.split("/")
        if not pattern or pattern.startswith("/") or any(p in ("", ".", "..") for p in parts):
            return (f"workspace pattern {pattern[:80]!r} must be a relative path such as "
                    "'project-a' or 'team-*', without empty, '.' or '..' parts")
        if any(ch.isspace() or not ch.isprintable() for ch in pattern):
            return f"workspace pattern {pattern[:80]!r} contains spaces or control characters"
    return None


GIT_HOST_RE = re.compile(r"[a-z0-9*?.\[\]-]{1,255}")


def check_git_hosts(field: str) -> str | None:
    """Why a git-hosts field is unusable, or None when it is fine."""
    for pattern in field.split(","):
        if not GIT_HOST_RE.fullmatch(pattern):
            return (f"git host pattern {pattern[:80]!r} must be a lowercase host name or a glob "
                    "such as 'github.com' or '*.corp.example'")
    return None


def git_host_allowed(patterns: tuple[str, ...], host: str | None) -> bool:
    """Whether a clone from `host` (None: a local repository) is allowed by `patterns`."""
    if not patterns:
        return True
    return host is not None and any(fnmatchcase(host.lower(), p) for p in patterns)


def parse_line(line: str) -> ProjectToken | None:
    """One line of the file: a token, None for a comment or blank line; ValueError otherwise."""
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    fields = text.split(":", 3)
    if len(fields) not in (3, 4):
        raise ValueError("expected name:sha256-hex:workspace-patterns[:git-hosts]")
    name, digest, patterns, *hosts = fields
    problem = check_name(name) or check_patterns(patterns) or (
        check_git_hosts(hosts[0]) if hosts else None)
    if problem:
        raise ValueError(problem)
    if not HASH_RE.fullmatch(digest):
        raise ValueError("the hash must be 64 lowercase hex digits (the token's sha256)")
    return ProjectToken(name, bytes.fromhex(digest), tuple(patterns.split(",")),
                        tuple(hosts[0].split(",")) if hosts else ())


def parse_text(text: str, source: str) -> tuple[ProjectToken, ...]:
    """Every token of a file's text; the first bad line raises, naming `source` and the line."""
    found: list[ProjectToken] = []
    names: set[str] = set()
    for number, line in enumerate(text.splitlines(), 1):
        try:
            token = parse_line(line)
        except ValueError as exc:
            raise TokensFileError(f"{source} line {number}: {exc}") from None
        if token is None:
            continue
        if token.name in names:
            raise TokensFileError(f"{source} line {number}: token name {token.name!r} is "
                                  "already used above; names must be unique")
        names.add(token.name)
        found.append(token)
    return tuple(found)


def load_tokens_file(path: Path) -> tuple[ProjectToken, ...]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TokensFileError(f"cannot read the tokens file {path}: {exc}") from None
    return parse_text(text, str(path))


def format_line(name: str, digest: bytes, patterns: str, git_hosts: str = "") -> str:
    return f"{name}:{digest.hex()}:{patterns}{':' + git_hosts if git_hosts else ''}\n"


def workspace_allowed(patterns: tuple[str, ...], relative: str) -> bool:
    """Whether a resolved workspace path (relative to the root) falls under one of `patterns`."""
    parts = PurePosixPath(relative).parts
    return any(_covers(pattern.split("/"), parts) for pattern in patterns)


def _covers(pattern_parts: list[str], parts: tuple[str, ...]) -> bool:
    if len(parts) < len(pattern_parts):
        return False
    return all(fnmatchcase(part, p) for part, p in zip(parts, pattern_parts, strict=False))
