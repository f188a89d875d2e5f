"""Durable history against a real `serve`: jobs outlive their Redis record, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis

from remoteci.history.db import HistoryDB, Search, parse_history_url, search_sql
from tests.helpers import ROOT, MakeServer, Server, wait_until
from tests.postgres import PostgresServer


def in_history(url: str, job_ids: list[str]) -> bool:
    db = HistoryDB(parse_history_url(url))
    try:
        db.ensure_schema()
        return all(db.get(job_id) is not None for job_id in job_ids)
    finally:
        db.close()


def expire(server: Server, job_id: str) -> None:
    """The record's TTL runs out, now rather than in seven days."""
    client = redis.Redis.from_url(str(server.redis_url))
    client.pexpire(f"rci:job:{job_id}", 1)
    wait_until(lambda: not client.exists(f"rci:job:{job_id}"), 10, "the record to expire")


def history(server: Server, query: str = "", token: str | None = None) -> dict[str, Any]:
    resp = server.request("GET", f"/api/history{query}", **({"token": token} if token else {}))
    assert resp.status == 200, resp.body
    return dict(resp.json())


def test_a_job_outlives_its_redis_record(make_server: MakeServer, history_url: str) -> None:
    server = make_server(env={"REMOTE_CI_HISTORY_URL": history_url}, wait_workers=2)
    ok = server.submit("echo built")
    failed = server.submit("exit 3", name="nightly-lint")
    ended = [server.wait_final(job["id"]) for job in (ok, failed)]
    # Newest first: they ran side by side, so either may have finished first.
    newest_first = [j["id"] for j in sorted(ended, key=lambda j: (j["finished_at"], j["id"]),
                                            reverse=True)]
    wait_until(lambda: in_history(history_url, [ok["id"], failed["id"]]), 30,
               "the history writer to copy both records")
    expire(server, ok["id"])
    again = server.job(ok["id"])
    assert again["status"] == "success" and again["exit_code"] == 0 and again["log_expired"] is False
    assert server.log(ok["id"]).startswith(b"built\n")
    (server.data_dir / "logs" / f"{ok['id']}.log").unlink()
    assert server.job(ok["id"])["log_expired"] is True
    page = history(server)
    assert [j["id"] for j in page["jobs"]] == newest_first and page["next_cursor"] is None
    assert [j["id"] for j in history(server, "?status=failed")["jobs"]] == [failed["id"]]
    assert [j["id"] for j in history(server, "?name=nightly")["jobs"]] == [failed["id"]]
    assert history(server, "?since=2099-01-01")["jobs"] == []
    first = history(server, "?limit=1")
    rest = history(server, f"?limit=1&cursor={first['next_cursor']}")
    assert [j["id"] for j in first["jobs"] + rest["jobs"]] == newest_first
    assert rest["next_cursor"] is None
    assert all("payload" not in j and "env" not in j for j in page["jobs"])


def test_a_cancelled_queued_job_reaches_history_too(make_server: MakeServer, tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/h.sqlite3"
    server = make_server(env={"REMOTE_CI_HISTORY_URL": url, "REMOTE_CI_CONCURRENCY": "1"},
                         wait_workers=1)
    blocker = server.submit("sleep 30", timeout=60)
    queued = server.submit("echo never")
    assert server.request("POST", f"/api/jobs/{queued['id']}/cancel").status == 202
    wait_until(lambda: in_history(url, [queued["id"]]), 30, "the cancelled job in history")
    server.request("POST", f"/api/jobs/{blocker['id']}/cancel")


@pytest.mark.parametrize("query, word", [
    ("?status=running", "final status"), ("?mode=ftp", "mode"), ("?since=yesterday", "since"),
    ("?cursor=nonsense", "cursor"), ("?limit=0", "limit"), ("?name=" + "x" * 201, "prefix"),
    ("?owner=a%20b", "owner"),
])
def test_bad_history_queries_are_400s_naming_the_field(make_server: MakeServer, tmp_path: Path,
                                                        query: str, word: str) -> None:
    server = make_server(env={"REMOTE_CI_HISTORY_URL": f"sqlite://{tmp_path}/h.sqlite3"})
    resp = server.request("GET", f"/api/history{query}")
    assert resp.status == 400 and word in resp.json()["error"], resp.body


def test_project_tokens_find_only_their_own_history(make_server: MakeServer, tmp_path: Path) -> None:
    tokens_file = tmp_path / "tokens"
    alpha, beta = (_add_token(tokens_file, name) for name in ("alpha", "beta"))
    url = f"sqlite://{tmp_path}/h.sqlite3"
    server = make_server(env={"REMOTE_CI_HISTORY_URL": url, "REMOTE_CI_TOKENS_FILE": str(tokens_file)},
                         wait_workers=2)
    ids = {}
    for name, token in (("alpha", alpha), ("beta", beta)):
        server.make_workspace(name)
        resp = server.request("POST", "/api/jobs/rsync", {"workspace": name, "script": "true"},
                              token=token)
        ids[name] = resp.json()["id"]
        server.wait_final(ids[name])
    wait_until(lambda: in_history(url, list(ids.values())), 30, "both jobs in history")
    expire(server, ids["beta"])
    assert [j["id"] for j in history(server, token=alpha)["jobs"]] == [ids["alpha"]]
    assert server.request("GET", "/api/history?owner=beta", token=alpha).status == 403
    hidden = server.request("GET", f"/api/jobs/{ids['beta']}", token=alpha)
    assert hidden.status == 404 and "older than 365 days" in hidden.json()["error"]
    assert server.request("GET", f"/api/jobs/{ids['beta']}", token=beta).status == 200
    assert len(history(server)["jobs"]) == 2  # the admin sees both


def test_a_database_outage_delays_history_and_loses_nothing(
        make_server: MakeServer, postgres_server: PostgresServer) -> None:
    url = postgres_server.create_database(f"t_{os.urandom(6).hex()}")
    server = make_server(env={"REMOTE_CI_HISTORY_URL": url}, wait_workers=2)
    first = server.submit("true")
    server.wait_final(first["id"])
    wait_until(lambda: in_history(url, [first["id"]]), 30, "the first job in history")
    postgres_server.stop()
    try:
        ids = [server.submit(f"echo {n}")["id"] for n in range(5)]
        for job_id in ids:  # the jobs end as ever: history never holds up a job
            assert server.wait_final(job_id)["status"] == "success"
        wait_until(lambda: b"remoteci_history_pending 5" in server.request("GET", "/metrics").body,
                   10, "the metrics to show the records waiting")
        assert server.request("GET", "/api/history").status == 503
    finally:
        postgres_server.start()
    wait_until(lambda: in_history(url, ids), 60, "the writer to catch up after the outage")
    assert len(history(server, "?limit=500")["jobs"]) == 6
    wait_until(lambda: b"remoteci_history_pending 0" in server.request("GET", "/metrics").body,
               10, "nothing left waiting")


def _add_token(tokens_file: Path, name: str) -> str:
    done = subprocess.run([sys.executable, str(ROOT / "remoteci.py"), "token", "add", name],
                          env={"PATH": os.environ["PATH"], "REMOTE_CI_TOKENS_FILE": str(tokens_file)},
                          capture_output=True, text=True, timeout=30, check=True)
    return done.stdout.strip()


def test_history_search_of_many_records_uses_the_indexes(tmp_path: Path) -> None:
    # The plans, not a timing (timings are in bench/): every filter is served by an index.
    db = HistoryDB(parse_history_url(f"sqlite://{tmp_path}/h.sqlite3"))
    db.migrate()
    conn = sqlite3.connect(f"{tmp_path}/h.sqlite3")
    for search in (Search(), Search(status="failed"), Search(mode="git"), Search(owner="web"),
                   Search(name="web"), Search(since="2026-01-01T00:00:00.000Z")):
        sql, args = search_sql(search)
        plan = " ".join(str(row) for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", args))
        assert "USING INDEX" in plan or "USING COVERING INDEX" in plan, (search, plan)


def test_the_history_page_lists_and_links_expired_jobs(make_server: MakeServer, tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/h.sqlite3"
    server = make_server(env={"REMOTE_CI_HISTORY_URL": url}, wait_workers=2)
    job = server.submit("echo from-history", name="<b>nightly</b>")
    server.wait_final(job["id"])
    wait_until(lambda: in_history(url, [job["id"]]), 30, "the job in history")
    expire(server, job["id"])
    assert b'href="/history"' in server.request("GET", "/").body
    page = server.request("GET", "/history?name=%3Cb%3E").body.decode()
    assert f'href="/jobs/{job["id"]}"' in page and "&lt;b&gt;nightly&lt;/b&gt;" in page
    assert "<b>nightly" not in page
    job_page = server.request("GET", f"/jobs/{job['id']}")
    assert job_page.status == 200 and b"from-history" in job_page.body
    assert server.request("GET", "/history?status=running").status == 400
