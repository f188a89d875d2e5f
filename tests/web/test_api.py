"""The HTTP contract of the README for the core routes, against a real `serve` process."""

from __future__ import annotations

import base64
import http.client
import os
import re
import subprocess

import pytest

from remoteci.web import logs
from tests.helpers import TOKEN, MakeServer, Server, wait_until

JOB_FIELDS = ["id", "mode", "status", "name", "script", "source", "timeout", "created_at",
              "started_at", "finished_at", "duration", "exit_code", "error", "worker", "owner",
              "queue_position"]
ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


# --- auth --------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/api/jobs", "/api/stats", "/api/jobs/abc", "/api/jobs/abc/logs"])
def test_missing_token_is_401_with_challenge(server: Server, path: str) -> None:
    resp = server.request("GET", path, token=None)
    assert resp.status == 401
    assert resp.headers["www-authenticate"].startswith("Bearer")
    assert "token" in resp.json()["error"]


def test_wrong_token_is_401(server: Server) -> None:
    resp = server.request("GET", "/api/jobs", token="not-the-token")
    assert resp.status == 401
    assert resp.json()["error"].startswith("wrong")


def test_basic_auth_is_for_pages_only(server: Server) -> None:
    basic = "Basic " + base64.b64encode(f"anyone:{TOKEN}".encode()).decode()
    page = server.request("GET", "/", headers={"Authorization": basic}, token=None)
    assert page.status == 200
    assert page.headers["content-type"].startswith("text/html")
    api = server.request("GET", "/api/jobs", headers={"Authorization": basic}, token=None)
    assert api.status == 401


def test_pages_ask_the_browser_for_basic_auth(server: Server) -> None:
    resp = server.request("GET", "/", token=None)
    assert resp.status == 401
    assert resp.headers["www-authenticate"].startswith("Basic")
    wrong = "Basic " + base64.b64encode(b"x:wrong-token").decode()
    assert server.request("GET", "/", headers={"Authorization": wrong}, token=None).status == 401


def test_second_token_of_a_comma_separated_list_works(make_server: MakeServer) -> None:
    srv = make_server(env={"REMOTE_CI_TOKEN": f"first-token-abc,{TOKEN}"})
    assert srv.request("GET", "/api/stats").status == 200
    assert srv.request("GET", "/api/stats", token="first-token-abc").status == 200


def test_health_needs_no_token(server: Server) -> None:
    resp = server.request("GET", "/api/health", token=None)
    assert resp.status == 200
    isolation = "user" if os.geteuid() == 0 else "none"  # root may switch users
    assert resp.json() == {"status": "ok", "redis": "ok", "isolation": isolation,
                           "uploads": ["gzip", "zstd"]}


# --- submitting --------------------------------------------------------------------------------

def test_submit_rsync_answers_202_with_job_object_and_location(server: Server) -> None:
    server.make_workspace("proj")
    resp = server.request("POST", "/api/jobs/rsync",
                          {"workspace": "proj", "script": "true", "name": "unit tests"})
    assert resp.status == 202
    job = resp.json()
    assert list(job) == JOB_FIELDS
    assert resp.headers["location"] == f"/api/jobs/{job['id']}"
    assert job["mode"] == "rsync" and job["source"] == "proj" and job["name"] == "unit tests"
    assert job["status"] == "queued" and job["timeout"] == 60 and job["queue_position"] >= 1
    assert ISO.fullmatch(job["created_at"])
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,64}", job["id"])


def test_plain_curl_d_without_content_type_is_accepted(server: Server) -> None:
    server.make_workspace("proj")
    out = subprocess.run(
        ["curl", "-sS", "-o", "-", "-w", "\n%{http_code}", "-H", f"Authorization: Bearer {TOKEN}",
         "-d", '{"workspace":"proj","script":"echo via curl"}', f"{server.url}/api/jobs/rsync"],
        capture_output=True, text=True, timeout=30, check=True)
    body, code = out.stdout.rsplit("\n", 1)
    assert code == "202", body
    job_id = __import__("json").loads(body)["id"]
    assert server.wait_final(job_id)["status"] == "success"
    assert server.log(job_id).startswith(b"via curl\n")


@pytest.mark.parametrize("body, fragment", [
    (b"", "empty"),
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "JSON object"),
    (b'{"script": "true"}', "'workspace' is required"),
    (b'{"workspace": "proj"}', "'script' is required"),
    (b'{"workspace": "proj", "script": ""}', "'script' is required"),
    (b'{"workspace": "proj", "script": 5}', "'script' must be a string"),
    (b'{"workspace": "proj", "script": "true", "timeout": 0}', "'timeout'"),
    (b'{"workspace": "proj", "script": "true", "timeout": 61}', "'timeout'"),
    (b'{"workspace": "proj", "script": "true", "timeout": "soon"}', "'timeout'"),
    (b'{"workspace": "proj", "script": "true", "timeout": true}', "'timeout'"),
    (b'{"workspace": "proj", "script": "true", "env": {"A": 1}}', "env 'A' must be a string"),
    (b'{"workspace": "proj", "script": "true", "env": {"1A": "x"}}', "not a valid variable name"),
    (b'{"workspace": "proj", "script": "true", "env": ["A"]}', "'env' must be an object"),
    (b'{"workspace": "proj", "script": "true", "env": {"REMOTE_CI_JOB_ID": "x"}}', "set by the server"),
    (b'{"workspace": "proj", "script": "true", "name": 3}', "'name' must be a string"),
    (b'{"workspace": "proj", "script": "true", "scirpt": "x"}', "unknown field 'scirpt'"),
    (b'{"workspace": "does-not-exist", "script": "true"}', "does not exist"),
    (b'{"workspace": "proj/README", "script": "true"}', "not a directory"),
])
def test_bad_rsync_submissions_are_400_naming_the_field(server: Server, body: bytes, fragment: str) -> None:
    server.make_workspace("proj")
    resp = server.request("POST", "/api/jobs/rsync", body,
                          headers={"Content-Type": "application/json"})
    assert resp.status == 400, resp.body
    assert fragment in resp.json()["error"]


@pytest.mark.parametrize("workspace", ["..", "../srv", "/etc", "/", ".", "proj/../..", "link-out"])
def test_workspace_outside_the_root_is_403(server: Server, workspace: str) -> None:
    server.make_workspace("proj")
    link = server.workspace_dir / "link-out"
    if not link.is_symlink():
        link.symlink_to("/tmp")
    resp = server.request("POST", "/api/jobs/rsync", {"workspace": workspace, "script": "true"})
    assert resp.status == 403, resp.body
    assert "outside the workspace root" in resp.json()["error"]


def test_sibling_with_a_common_prefix_is_not_inside_the_root(server: Server) -> None:
    evil = server.workspace_dir.parent / (server.workspace_dir.name + "-evil")
    evil.mkdir(exist_ok=True)
    resp = server.request("POST", "/api/jobs/rsync", {"workspace": str(evil), "script": "true"})
    assert resp.status == 403


def test_absolute_workspace_inside_the_root_is_accepted(server: Server) -> None:
    path = server.make_workspace("abs-proj")
    resp = server.request("POST", "/api/jobs/rsync", {"workspace": str(path), "script": "true"})
    assert resp.status == 202
    assert server.wait_final(resp.json()["id"])["status"] == "success"


def test_json_body_over_one_megabyte_is_413(server: Server) -> None:
    body = b'{"workspace": "proj", "script": "' + b"x" * (1024 * 1024 + 10) + b'"}'
    resp = server.request("POST", "/api/jobs/rsync", body)
    assert resp.status == 413
    assert "larger than" in resp.json()["error"]


# --- routing -----------------------------------------------------------------------------------

def test_unknown_route_is_404_json(server: Server) -> None:
    resp = server.request("GET", "/api/nothing-here")
    assert resp.status == 404
    assert "no such route" in resp.json()["error"]


def test_wrong_method_is_405_with_allow(server: Server) -> None:
    resp = server.request("DELETE", "/api/jobs")
    assert resp.status == 405
    assert resp.headers["allow"] == "GET"
    resp = server.request("GET", "/api/jobs/rsync")  # matches GET /api/jobs/<id>: a 404
    assert resp.status == 404
    resp = server.request("GET", "/api/jobs/abc/cancel")
    assert resp.status == 405 and resp.headers["allow"] == "POST"


@pytest.mark.parametrize("job_id", ["a.b", "a%20b", "x" * 65, "%2e%2e", "a;b", "caf%C3%A9"])
def test_ids_with_bad_characters_are_404(server: Server, job_id: str) -> None:
    for path in (f"/api/jobs/{job_id}", f"/api/jobs/{job_id}/logs"):
        resp = server.request("GET", path)
        assert resp.status == 404, (path, resp.body)
        assert "error" in resp.json()
    assert server.request("POST", f"/api/jobs/{job_id}/cancel").status == 404


def test_unknown_valid_id_is_404_on_every_job_route(server: Server) -> None:
    for method, path in (("GET", "/api/jobs/nope"), ("GET", "/api/jobs/nope/logs"),
                         ("POST", "/api/jobs/nope/cancel"), ("GET", "/jobs/nope")):
        resp = server.request(method, path)
        assert resp.status == 404, path
        assert "no job with id 'nope'" in resp.json()["error"]


# --- the job and its log -----------------------------------------------------------------------

def test_success_and_failure_are_recorded(server: Server) -> None:
    ok = server.submit("echo fine")
    bad = server.submit("echo broken >&2; exit 7")
    ok_job = server.wait_final(ok["id"])
    bad_job = server.wait_final(bad["id"])
    assert ok_job["status"] == "success" and ok_job["exit_code"] == 0
    assert bad_job["status"] == "failed" and bad_job["exit_code"] == 7
    for job in (ok_job, bad_job):
        assert ISO.fullmatch(job["started_at"]) and ISO.fullmatch(job["finished_at"])
        assert job["duration"] >= 0 and job["worker"] and job["queue_position"] is None
    assert b"broken\n" in server.log(bad["id"])
    assert server.log(bad["id"]).endswith(b"[remote-ci] failed: exit code 7 after "
                                          + server.log(bad["id"]).rsplit(b"after ", 1)[1])


def test_log_offset_and_headers(server: Server) -> None:
    job = server.submit("printf 'line one\\nline two\\n'")
    server.wait_final(job["id"])
    full = server.request("GET", f"/api/jobs/{job['id']}/logs")
    assert full.status == 200
    assert full.headers["content-type"].startswith("text/plain")
    assert full.headers["x-job-status"] == "success"
    assert full.headers["x-log-offset"] == str(len(full.body))
    assert full.body.startswith(b"line one\nline two\n")
    part = server.request("GET", f"/api/jobs/{job['id']}/logs?offset=9")
    assert part.body == full.body[9:]
    assert part.headers["x-log-offset"] == str(len(full.body))
    past = server.request("GET", f"/api/jobs/{job['id']}/logs?offset={len(full.body) + 100}")
    assert past.status == 200 and past.body == b""
    assert past.headers["x-log-offset"] == str(len(full.body) + 100)


@pytest.mark.parametrize("offset", ["-1", "abc", "1.5"])
def test_bad_log_offset_is_400(server: Server, offset: str) -> None:
    job = server.submit("true")
    resp = server.request("GET", f"/api/jobs/{job['id']}/logs?offset={offset}")
    assert resp.status == 400
    assert "offset" in resp.json()["error"]


def test_log_of_a_queued_job_is_empty_with_status(make_server: MakeServer) -> None:
    srv = make_server(env={"REMOTE_CI_CONCURRENCY": "1"}, wait_workers=1)
    blocker = srv.submit("sleep 30")
    srv.wait_status(blocker["id"], ("running",))
    queued = srv.submit("true")
    resp = srv.request("GET", f"/api/jobs/{queued['id']}/logs")
    assert resp.status == 200 and resp.body == b""
    assert resp.headers["x-job-status"] == "queued" and resp.headers["x-log-offset"] == "0"
    assert srv.job(queued["id"])["queue_position"] == 1


def test_follow_streams_until_the_job_ends(server: Server) -> None:
    job = server.submit("for i in 1 2 3; do echo tick $i; sleep 0.3; done")
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("GET", f"/api/jobs/{job['id']}/logs?follow=1",
                 headers={"Authorization": f"Bearer {TOKEN}"})
    resp = conn.getresponse()
    assert resp.status == 200
    streamed = resp.read()
    conn.close()
    assert streamed.startswith(b"tick 1\ntick 2\ntick 3\n")
    assert b"[remote-ci] success" in streamed
    assert server.job(job["id"])["status"] == "success"
    assert streamed == server.log(job["id"])


def test_follow_sends_each_line_as_it_comes(server: Server) -> None:
    # Short answers go out in one send once complete; a follow must not wait for its end.
    job = server.submit("echo first; sleep 30")
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=20)
    conn.request("GET", f"/api/jobs/{job['id']}/logs?follow=1",
                 headers={"Authorization": f"Bearer {TOKEN}"})
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.readline() == b"first\n"  # while the job still sleeps
    conn.close()
    server.request("POST", f"/api/jobs/{job['id']}/cancel")


def test_follow_from_an_offset_resumes_without_duplicates(server: Server) -> None:
    job = server.submit("echo first; sleep 0.5; echo second")
    wait_until(lambda: server.log(job["id"]).startswith(b"first\n"), 10, "first line")
    rest = server.request("GET", f"/api/jobs/{job['id']}/logs?follow=1&offset=6").body
    assert rest.startswith(b"second\n")
    assert b"first" not in rest


def test_followers_are_capped_so_the_api_stays_up(make_server: MakeServer) -> None:
    srv = make_server(env={"REMOTE_CI_MAX_FOLLOWERS": "2", "REMOTE_CI_HTTP_THREADS": "4"})
    job = srv.submit("echo started; sleep 30")
    conns = []
    for _ in range(2):
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
        conn.request("GET", f"/api/jobs/{job['id']}/logs?follow=1",
                     headers={"Authorization": f"Bearer {TOKEN}"})
        # Kept: the answer says Connection: close, so http.client hands the socket to the
        # response, and dropping it would hang up (and free the slot).
        follower = conn.getresponse()
        assert follower.status == 200
        conns.append(follower)
    wait_until(lambda: srv.log(job["id"]).startswith(b"started\n"), 10, "the job's first line")
    # A third follower is not refused: it gets what there is now, and when to ask again.
    third = srv.request("GET", f"/api/jobs/{job['id']}/logs?follow=1&offset=2")
    assert third.status == 200
    assert third.body == b"arted\n"
    assert third.headers["x-log-offset"] == "8" and third.headers["x-job-status"] == "running"
    assert third.headers["x-log-poll-after"] == "1"
    assert srv.request("GET", "/api/stats").status == 200  # the API still answers
    for conn in conns:
        conn.close()
    # A follower that hangs up gives its slot back.
    wait_until(lambda: _follow_streams(srv, job["id"]), 10, "a free follower slot")
    srv.request("POST", f"/api/jobs/{job['id']}/cancel")


def _follow_streams(srv: Server, job_id: str) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    conn.request("GET", f"/api/jobs/{job_id}/logs?follow=1", headers={"Authorization": f"Bearer {TOKEN}"})
    resp = conn.getresponse()
    conn.close()
    return resp.status == 200 and resp.getheader("X-Log-Poll-After") is None


def test_follow_of_a_job_far_back_in_the_queue_is_a_poll_answer(make_server: MakeServer) -> None:
    # A job that waits holds no thread: its follower is told when to ask again.
    srv = make_server(env={"REMOTE_CI_CONCURRENCY": "1"}, wait_workers=1)
    blocker = srv.submit("sleep 30")
    srv.wait_status(blocker["id"], ("running",))
    waiting = [srv.submit("true") for _ in range(2)]  # positions 1 (next to run, streams) and 2
    head = srv.request("GET", f"/api/jobs/{waiting[1]['id']}/logs?follow=1", timeout=5)
    assert head.status == 200 and head.headers["x-log-poll-after"] == "1"
    assert head.headers["x-job-status"] == "queued" and head.headers["x-log-offset"] == "0"
    assert head.body == b""
    for job in (*waiting, blocker):
        srv.request("POST", f"/api/jobs/{job['id']}/cancel")


# --- the job's world ---------------------------------------------------------------------------

def test_job_env_is_built_not_inherited(server: Server) -> None:
    job = server.submit("env", env={"MY_VAR": "hello world", "LANG": "en_US.UTF-8"})
    server.wait_final(job["id"])
    lines = server.log(job["id"]).decode().splitlines()
    env = dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("["))
    assert env["CI"] == "true"
    assert env["REMOTE_CI_JOB_ID"] == job["id"]
    assert env["MY_VAR"] == "hello world"
    assert env["LANG"] == "en_US.UTF-8"
    assert "PATH" in env and "HOME" in env
    assert "REMOTE_CI_TOKEN" not in env and "SERVER_ONLY_SECRET" not in env
    assert TOKEN not in "\n".join(lines)
    assert set(env) <= {"CI", "REMOTE_CI_JOB_ID", "MY_VAR", "LANG", "PATH", "HOME", "PWD", "SHLVL", "_",
                        "OLDPWD"}


def test_job_runs_in_a_private_copy_that_is_removed(server: Server) -> None:
    ws = server.make_workspace("copyproj", {"src/app.txt": "original\n", "run.sh": "echo hi\n"})
    os.symlink("src/app.txt", ws / "link")
    job = server.submit("pwd; cat link; echo changed > src/app.txt; rm run.sh; touch new; "
                        "test -t 0 || echo stdin-not-a-tty; read x || echo stdin-empty",
                        workspace="copyproj")
    final = server.wait_final(job["id"])
    assert final["status"] == "success", server.log(job["id"])
    log = server.log(job["id"]).decode().splitlines()
    scratch = server.work_dir / job["id"]
    assert log[0] == str(scratch)
    assert log[1] == "original"
    assert "stdin-not-a-tty" in log and "stdin-empty" in log
    assert (ws / "src/app.txt").read_text() == "original\n"
    assert (ws / "run.sh").exists() and not (ws / "new").exists()
    wait_until(lambda: not scratch.exists(), 10, "the scratch dir to go (just after the final status)")


def test_workspace_deleted_while_queued_ends_error(make_server: MakeServer) -> None:
    srv = make_server(env={"REMOTE_CI_CONCURRENCY": "1"}, wait_workers=1)
    blocker = srv.submit("sleep 30")
    srv.wait_status(blocker["id"], ("running",))
    ws = srv.make_workspace("doomed")
    job = srv.submit("true", workspace="doomed")
    import shutil

    shutil.rmtree(ws)
    srv.request("POST", f"/api/jobs/{blocker['id']}/cancel")
    final = srv.wait_final(job["id"])
    assert final["status"] == "error"
    assert "gone" in final["error"]


def test_shell_is_configurable(make_server: MakeServer) -> None:
    srv = make_server(env={"REMOTE_CI_SHELL": "/bin/sh"})
    job = srv.submit('echo "$0"')
    srv.wait_final(job["id"])
    assert srv.log(job["id"]).startswith(b"/bin/sh\n")


# --- listing and stats -------------------------------------------------------------------------

def test_list_is_newest_first_with_filters_and_limit(make_server: MakeServer) -> None:
    srv = make_server()
    ok = [srv.submit("true") for _ in range(3)]
    bad = srv.submit("exit 3")
    for job in [*ok, bad]:
        srv.wait_final(job["id"])
    listed = srv.request("GET", "/api/jobs").json()["jobs"]
    assert [j["id"] for j in listed] == [bad["id"], *[j["id"] for j in reversed(ok)]]
    assert list(listed[0]) == JOB_FIELDS
    failed = srv.request("GET", "/api/jobs?status=failed").json()["jobs"]
    assert [j["id"] for j in failed] == [bad["id"]]
    two = srv.request("GET", "/api/jobs?status=success&mode=rsync&limit=2").json()["jobs"]
    assert [j["id"] for j in two] == [ok[2]["id"], ok[1]["id"]]
    assert srv.request("GET", "/api/jobs?mode=git").json()["jobs"] == []


@pytest.mark.parametrize("query, fragment", [
    ("limit=0", "limit"), ("limit=501", "limit"), ("limit=x", "limit"),
    ("status=done", "status 'done'"), ("mode=ftp", "mode 'ftp'"),
])
def test_bad_list_queries_are_400(server: Server, query: str, fragment: str) -> None:
    resp = server.request("GET", f"/api/jobs?{query}")
    assert resp.status == 400
    assert fragment in resp.json()["error"]


def test_stats_count_running_queued_and_live_executors(make_server: MakeServer) -> None:
    srv = make_server(env={"REMOTE_CI_CONCURRENCY": "1"}, wait_workers=1)
    running = srv.submit("sleep 30")
    srv.wait_status(running["id"], ("running",))
    srv.submit("true")
    srv.submit("true")
    stats = srv.request("GET", "/api/stats").json()
    assert stats["running"] == 1 and stats["queued"] == 2 and stats["workers"] == 1


def test_pages_escape_job_fields(server: Server) -> None:
    job = server.submit("echo '<script>alert(1)</script>'", name="<b>bold</b>")
    server.wait_final(job["id"])
    index = server.request("GET", "/").body.decode()
    assert "&lt;b&gt;bold&lt;/b&gt;" in index and "<b>bold</b>" not in index
    page = server.request("GET", f"/jobs/{job['id']}").body.decode()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>" not in page


def test_metrics_are_prometheus_text(server: Server) -> None:
    resp = server.request("GET", "/metrics")
    assert resp.status == 200
    assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
    lines = [line for line in resp.body.decode().splitlines() if not line.startswith("#")]
    # Histograms bring float bounds and sums; tests/web/test_metrics.py parses the format strictly.
    sample = r'[a-z_]+(\{[a-z]+="[^"\\]*"(,[a-z]+="[^"\\]*")*\})? -?\d+(\.\d+)?(e[+-]?\d+)?'
    assert all(re.fullmatch(sample, line) for line in lines), lines
    assert server.request("GET", "/metrics", token=None).status == 401


def test_a_retried_submission_with_the_same_idempotency_key_makes_one_job(make_server: MakeServer) -> None:
    srv = make_server()
    srv.make_workspace("proj")
    body = {"workspace": "proj", "script": "echo once"}
    first = srv.request("POST", "/api/jobs/rsync", body, headers={"Idempotency-Key": "ci-run-42.1"})
    again = srv.request("POST", "/api/jobs/rsync", body, headers={"Idempotency-Key": "ci-run-42.1"})
    assert first.status == again.status == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["location"] == f"/api/jobs/{first.json()['id']}"
    other = srv.request("POST", "/api/jobs/rsync", body, headers={"Idempotency-Key": "ci-run-43"})
    assert other.json()["id"] != first.json()["id"]
    assert len(srv.request("GET", "/api/jobs").json()["jobs"]) == 2


@pytest.mark.parametrize("key", ["has space", "x" * 129, "ünï"])
def test_a_malformed_idempotency_key_is_400(server: Server, key: str) -> None:
    server.make_workspace("proj")
    resp = server.request("POST", "/api/jobs/rsync", {"workspace": "proj", "script": "true"},
                          headers={"Idempotency-Key": key.encode().decode("latin-1")})
    assert resp.status == 400
    assert "Idempotency-Key" in resp.json()["error"]


@pytest.mark.parametrize(("status", "position", "concurrency", "streams", "wait"), [
    ("running", None, 2, True, 1), ("queued", 1, 2, True, 1), ("queued", 2, 2, True, 1),
    ("queued", 3, 2, False, 1), ("queued", 25, 2, False, 3), ("queued", 5000, 2, False, 10),
    ("success", None, 2, True, 1),
])
def test_who_streams_and_how_long_pollers_wait(status: str, position: int | None, concurrency: int,
                                               streams: bool, wait: int) -> None:
    assert logs.streams_now(status, position, concurrency) is streams
    assert logs.poll_after(status, position, concurrency) == wait
