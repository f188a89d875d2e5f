"""The tokens file, workspace patterns and who a token is: pure functions, no server."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import redis

from remoteci.auth import tokens
from remoteci.auth.identity import ADMIN, Authenticator, Identity, listing_owner
from remoteci.config import ConfigError, load_settings
from remoteci.errors import ApiError
from remoteci.queue import JobStore, owner_index
from remoteci.store.redis_conn import Client as Redis

HASH = hashlib.sha256(b"a-project-token").hexdigest()


def test_file_with_comments_blank_lines_and_several_patterns() -> None:
    text = f"# team tokens\n\nweb:{HASH}:web,shared-*\n  api.v2:{'0' * 64}:team-*/api  \n"
    web, api = tokens.parse_text(text, "tokens")
    assert (web.name, web.workspaces, web.digest) == ("web", ("web", "shared-*"),
                                                      bytes.fromhex(HASH))
    assert (api.name, api.workspaces) == ("api.v2", ("team-*/api",))


def test_a_fourth_field_limits_the_git_hosts() -> None:
    web, api = tokens.parse_text(f"web:{HASH}:web:github.com,*.corp.example\napi:{HASH}:api\n", "f")
    assert web.git_hosts == ("github.com", "*.corp.example") and api.git_hosts == ()
    assert tokens.git_host_allowed(web.git_hosts, "git.corp.example")
    assert not tokens.git_host_allowed(web.git_hosts, "gitlab.com")
    assert not tokens.git_host_allowed(web.git_hosts, None)  # a local repository
    assert tokens.git_host_allowed(api.git_hosts, "anything.example")


@pytest.mark.parametrize("line, fragment", [
    ("web", "expected name:sha256-hex:workspace-patterns"),
    (f"web:{HASH}", "expected name:sha256-hex:workspace-patterns"),
    (f"web:{HASH}:a:b:c", "git host pattern 'b:c'"),
    (f"web:{HASH}:a:GitHub.com", "git host pattern"),
    (f"web:{HASH}:a:", "git host pattern"),
    (f"we b:{HASH}:web", "token name must be 1-64"),
    (f"{'n' * 65}:{HASH}:web", "token name must be 1-64"),
    (f"admin:{HASH}:web", "reserved"),
    ("web:not-a-hash:web", "64 lowercase hex digits"),
    (f"web:{HASH.upper()}:web", "64 lowercase hex digits"),
    (f"web:{HASH}:", "relative path"),
    (f"web:{HASH}:/srv/web", "relative path"),
    (f"web:{HASH}:web/../other", "relative path"),
    (f"web:{HASH}:web,,api", "relative path"),
])
def test_bad_line_names_the_file_and_line(line: str, fragment: str) -> None:
    with pytest.raises(tokens.TokensFileError) as caught:
        tokens.parse_text(f"# header\n{line}\n", "/etc/remote-ci/tokens")
    assert str(caught.value).startswith("/etc/remote-ci/tokens line 2: ")
    assert fragment in str(caught.value)


def test_duplicate_names_are_refused() -> None:
    with pytest.raises(tokens.TokensFileError, match="line 2: token name 'web' is already used"):
        tokens.parse_text(f"web:{HASH}:web\nweb:{HASH}:other\n", "f")


@pytest.mark.parametrize("patterns, workspace, allowed", [
    (("project-a",), "project-a", True),
    (("project-a",), "project-a/backend", True),  # a token owns the tree below
    (("project-a",), "project-ab", False),
    (("project-a",), "other/project-a", False),
    (("team-*",), "team-web", True),
    (("team-*",), "team-web/sub", True),
    (("team-*",), "teams", False),
    (("team-*/api",), "team-web/api", True),
    (("team-*/api",), "team-web/x/api", False),  # `*` never crosses a `/`
    (("team-*/api",), "team-web", False),
    (("*",), "anything/at/all", True),
    (("Web",), "web", False),  # case-sensitive, like the filesystem
    (("web", "shared-?"), "shared-1", True),
])
def test_workspace_patterns(patterns: tuple[str, ...], workspace: str, allowed: bool) -> None:
    assert tokens.workspace_allowed(patterns, workspace) is allowed


def test_authenticator_tells_admins_from_projects_and_refuses_the_rest() -> None:
    project = tokens.parse_text(f"web:{HASH}:web\n", "f")
    auth = Authenticator(("admin-token-123",), project)
    assert auth.identify(b"admin-token-123") == ADMIN
    assert auth.identify(b"a-project-token") == Identity("web", ("web",))
    assert auth.identify(b"wrong") is None
    assert auth.identify(HASH.encode()) is None  # the stored hash is no credential


def test_authenticator_without_project_tokens_knows_only_admins_until_a_reload_adds_some(
        tmp_path: Path) -> None:
    auth = Authenticator(("admin-token-123", "admin-token-456"))
    assert auth.identify(b"admin-token-456") == ADMIN
    assert auth.identify(b"a-project-token") is None and auth.identify(b"") is None
    path = tmp_path / "tokens"
    path.write_text(f"web:{HASH}:web\n")
    auth.reload(path)
    assert auth.identify(b"a-project-token") == Identity("web", ("web",))
    assert auth.identify(b"admin-token-123") == ADMIN


def test_project_listing_is_always_its_own() -> None:
    web = Identity("web", ("web",))
    assert listing_owner(web, None) == "web"
    assert listing_owner(ADMIN, None) is None and listing_owner(ADMIN, "web") == "web"
    with pytest.raises(ApiError) as caught:
        listing_owner(web, "api")
    assert caught.value.status == 403
    with pytest.raises(ApiError) as caught:
        listing_owner(ADMIN, "no such/owner")
    assert caught.value.status == 400


def test_settings_load_the_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"web:{HASH}:web\n")
    settings = load_settings({"REMOTE_CI_TOKEN": "admin-token-123",
                              "REMOTE_CI_TOKENS_FILE": str(path)})
    assert settings.tokens_file == path and [t.name for t in settings.project_tokens] == ["web"]


def test_settings_refuse_a_missing_file_and_an_admin_token_reused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="REMOTE_CI_TOKENS_FILE: cannot read"):
        load_settings({"REMOTE_CI_TOKEN": "admin-token-123",
                       "REMOTE_CI_TOKENS_FILE": str(tmp_path / "missing")})
    path = tmp_path / "tokens"
    path.write_text(f"web:{HASH}:web\n")
    with pytest.raises(ConfigError, match="'web' is also in REMOTE_CI_TOKEN"):
        load_settings({"REMOTE_CI_TOKEN": "a-project-token", "REMOTE_CI_TOKENS_FILE": str(path)})


def test_owner_index_is_written_on_enqueue_and_pruned(redis_client: redis.Redis,
                                                     store_client: Redis) -> None:
    store = JobStore(store_client, 3600)
    for n, owner in enumerate(["web", "api", "web"]):
        store.enqueue({"id": f"j{n}", "mode": "rsync", "status": "queued", "script": "true",
                       "source": "s", "timeout": "60", "created_at": "2026-11-28T00:00:00.000Z",
                       "owner": owner}, {"id": f"j{n}"}, 100)
    assert [j["id"] for j in store.list_jobs(None, None, 10, "web")] == ["j2", "j0"]
    assert [j["owner"] for j in store.list_jobs("queued", "rsync", 10, "api")] == ["api"]
    assert store.owners() == ["api", "web"]
    redis_client.delete("rci:job:j0")
    assert store.prune_indexes() == 1
    assert redis_client.zrange(owner_index("web"), 0, -1) == [b"j2"]
