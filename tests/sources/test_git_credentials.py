"""A git URL's credential reaches git only, for as long as the clone needs it, and an operator
may limit the hosts a project token's git jobs clone from."""

from __future__ import annotations

from pathlib import Path

import redis

from tests.auth.test_project_tokens import add_token
from tests.helpers import MakeServer, Server, free_port

SECRET = "s3cret-pass@word"


def keys_holding(server: Server, text: str) -> list[str]:
    """Every Redis key whose value (any type) contains `text`."""
    assert server.redis_url is not None
    client = redis.Redis.from_url(server.redis_url)
    found = []
    needle = text.encode()
    try:
        for key in client.scan_iter(count=1000):
            kind = client.type(key)
            values: list[bytes]
            if kind == b"string":
                values = [client.get(key) or b""]
            elif kind == b"hash":
                values = [v for pair in client.hgetall(key).items() for v in pair]
            elif kind == b"list":
                values = client.lrange(key, 0, -1)
            elif kind == b"set":
                values = list(client.smembers(key))
            elif kind == b"zset":
                values = client.zrange(key, 0, -1)
            else:
                values = []
            if any(needle in v for v in values):
                found.append(key.decode())
    finally:
        client.close()
    return found


def test_the_password_is_kept_apart_and_gone_once_the_job_started(make_server: MakeServer) -> None:
    server = make_server(env={"REMOTE_CI_CONCURRENCY": "1"}, wait_workers=1)
    blocker = server.submit("sleep 60")
    server.wait_status(blocker["id"], ("running",))
    url = f"https://ci-user:{SECRET.replace('@', '%40')}@127.0.0.1:{free_port()}/org/repo.git"
    resp = server.request("POST", "/api/jobs/git", {"repo": url, "script": "true"})
    assert resp.status == 202, resp.body
    job = resp.json()
    assert job["source"] == f"https://***@127.0.0.1:{url.rsplit(':', 1)[1]}"
    assert "s3cret" not in resp.body.decode()
    assert keys_holding(server, "s3cret") == [f"rci:gitcred:{job['id']}"]
    server.request("POST", f"/api/jobs/{blocker['id']}/cancel")
    final = server.wait_final(job["id"])
    assert final["status"] == "error" and "s3cret" not in final["error"]
    assert b"s3cret" not in server.log(job["id"])
    assert keys_holding(server, "s3cret") == []


def test_a_cancelled_queued_job_drops_its_credential(make_server: MakeServer) -> None:
    server = make_server(env={"REMOTE_CI_CONCURRENCY": "1"}, wait_workers=1)
    blocker = server.submit("sleep 60")
    server.wait_status(blocker["id"], ("running",))
    resp = server.request("POST", "/api/jobs/git", {
        "repo": f"https://tok:{SECRET.replace('@', '%40')}@git.invalid/org/repo.git", "script": "true"})
    assert resp.status == 202 and keys_holding(server, "s3cret")
    assert server.request("POST", f"/api/jobs/{resp.json()['id']}/cancel").status == 202
    assert keys_holding(server, "s3cret") == []
    server.request("POST", f"/api/jobs/{blocker['id']}/cancel")


def test_an_operator_limits_the_git_hosts_of_a_project_token(make_server: MakeServer,
                                                             tmp_path: Path) -> None:
    tokens_file = tmp_path / "tokens"
    limited = add_token(tokens_file, "limited", "--git-hosts", "git.example.com,*.corp.example")
    free = add_token(tokens_file, "free")
    server = make_server(env={"REMOTE_CI_TOKENS_FILE": str(tokens_file)})

    def submit(token: str, repo: str) -> int:
        resp = server.request("POST", "/api/jobs/git", {"repo": repo, "script": "true"}, token=token)
        if resp.status == 202:
            server.request("POST", f"/api/jobs/{resp.json()['id']}/cancel")
        return resp.status

    assert submit(limited, "https://git.example.com/org/repo.git") == 202
    assert submit(limited, "git@src.corp.example:org/repo.git") == 202
    refused = server.request("POST", "/api/jobs/git", {"repo": "https://github.com/org/r.git",
                                                       "script": "true"}, token=limited)
    assert refused.status == 403
    assert "may clone only from git.example.com, *.corp.example, not from github.com" in \
        refused.json()["error"]
    assert submit(limited, "ssh://git@github.com/org/repo.git") == 403
    assert submit(free, "https://github.com/org/repo.git") == 202
