"""Who is asking, and what they may see and do: admins (REMOTE_CI_TOKEN) and project tokens.

A project token sees only the jobs it submitted; anyone else's job is answered exactly like
an unknown id, so a project cannot even learn which ids exist.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from remoteci.auth import tokens
from remoteci.config import load_project_tokens
from remoteci.errors import ApiError
from remoteci.sources.git import git_host

ADMIN_OWNER = "admin"  # the owner of jobs submitted with a REMOTE_CI_TOKEN token


@dataclass(frozen=True)
class Identity:
    owner: str  # written into the jobs this caller submits
    workspaces: tuple[str, ...] = ()  # patterns; unused for admins, who may use any workspace
    git_hosts: tuple[str, ...] = ()  # hosts its git jobs may clone from; empty: any

    @property
    def is_admin(self) -> bool:
        return self.owner == ADMIN_OWNER


ADMIN = Identity(ADMIN_OWNER)


class Authenticator:
    """Maps a presented token to an Identity; shared by the API's threads, swapped on SIGHUP."""

    def __init__(self, admin_tokens: tuple[str, ...],
                 project: tuple[tokens.ProjectToken, ...] = ()):
        self._admin_tokens = admin_tokens
        self._admin = [t.encode() for t in admin_tokens]
        self._project = project

    @property
    def project_count(self) -> int:
        return len(self._project)

    def identify(self, presented: bytes) -> Identity | None:
        # Every comparison runs, always, with no early exit: the time taken says nothing
        # about whether or which token matched.
        is_admin = False
        for token in self._admin:
            is_admin |= hmac.compare_digest(presented, token)
        project = self._project  # one tuple, read once: a reload cannot mix two files
        found: tokens.ProjectToken | None = None
        if project:  # without project tokens (a setting, no secret) there is nothing to hash for
            digest = tokens.hash_token(presented)
            for candidate in project:
                same = hmac.compare_digest(digest, candidate.digest)
                found = candidate if same else found
        if is_admin:
            return ADMIN
        if found is not None:
            return Identity(found.name, found.workspaces, found.git_hosts)
        return None

    def reload(self, path: Path) -> None:
        """Re-read the tokens file; on ConfigError the tokens in use stay as they were."""
        self._project = load_project_tokens(path, self._admin_tokens)


def may_see(identity: Identity, job: Mapping[str, Any]) -> bool:
    return identity.is_admin or job.get("owner") == identity.owner


def listing_owner(identity: Identity, requested: str | None) -> str | None:
    """The owner a listing is restricted to: always the caller's own for a project token."""
    if requested is not None and requested != ADMIN_OWNER and tokens.check_name(requested):
        raise ApiError(400, f"owner {requested[:80]!r} is not a token name "
                            "(1-64 of A-Z a-z 0-9 _ . -)")
    if identity.is_admin:
        return requested
    if requested is not None and requested != identity.owner:
        raise ApiError(403, f"token {identity.owner!r} lists only its own jobs; "
                            f"drop owner= or use owner={identity.owner}")
    return identity.owner


def check_workspace(identity: Identity, requested: str, relative: str | None,
                    lexical: str | None) -> None:
    """403 unless the resolved workspace (relative to the root) is one the token may use.

    Judged before anyone looks whether the path exists, and worded the same for every path a
    token may not use (missing, existing, a link, outside the root), so the answer tells a
    project nothing about other projects' trees. Where a name of its own resolves elsewhere,
    the target is named: the project's own link.
    """
    if identity.is_admin:
        return
    if relative is not None and tokens.workspace_allowed(identity.workspaces, relative):
        return
    shown = repr(requested)
    if lexical is not None and tokens.workspace_allowed(identity.workspaces, lexical):
        shown += (" (resolves outside the workspace root)" if relative is None
                  else f" (resolves to {relative!r})")
    raise ApiError(403, f"workspace {shown} is not among the workspaces of token "
                        f"{identity.owner!r} ({', '.join(identity.workspaces)}); use a matching "
                        "workspace or ask an operator to widen the token's patterns")


def check_git_host(identity: Identity, repo: str) -> None:
    """403 unless the token may clone from the repository's host (an operator's choice)."""
    host = git_host(repo)
    if identity.is_admin or tokens.git_host_allowed(identity.git_hosts, host):
        return
    raise ApiError(403, f"field 'repo': token {identity.owner!r} may clone only from "
                        f"{', '.join(identity.git_hosts)}, not from {host or 'a local path'}; "
                        "use a repository there or ask an operator to widen the token's git hosts")


def require_admin(identity: Identity, what: str) -> None:
    if not identity.is_admin:
        raise ApiError(403, f"{what} needs an admin token (REMOTE_CI_TOKEN); "
                            f"token {identity.owner!r} is a project token")
