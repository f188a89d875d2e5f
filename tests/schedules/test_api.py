"""The schedules' API against a real `serve`: make, read, list, delete, pause, resume, run now."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import pytest

from remoteci.schedules.cron import next_run
from tests.helpers import Server

NEVER_SOON = "0 0 1 1 *"  # New Year: no test runs long enough to see a tick of it


def git_job(**extra: Any) -> dict[str, Any]:
    return {"mode": "git", "repo": "https://git.example.com/org/repo.git", "ref": "main",
            "script": "make nightly", **extra}


def create(server: Server, body: dict[str, Any], status: int = 201) -> dict[str, Any]:
    resp = server.request("POST", "/api/schedules", body)
    assert resp.status == status, resp.body
    return dict(resp.json())


def rsync_schedule(server: Server, script: str = "echo scheduled", **extra: Any) -> dict[str, Any]:
    server.make_workspace("proj")
    return create(server, {"name": "nightly", "cron": NEVER_SOON,
                           "job": {"mode": "rsync", "workspace": "proj", "script": script},
                           **extra})


def test_create_answers_201_with_the_schedule(server: Server) -> None:
    before = time.time()
    resp = server.request("POST", "/api/schedules", {"name": "nightly", "cron": "30 2 * * *",
                                                     "timezone": "Europe/Berlin", "job": git_job()})
    assert resp.status == 201, resp.body
    schedule = resp.json()
    assert resp.headers["location"] == f"/api/schedules/{schedule['id']}"
    expected = next_run("30 2 * * *", "Europe/Berlin", datetime.fromtimestamp(before, UTC))
    assert expected is not None
    assert schedule == {
        "id": schedule["id"], "name": "nightly", "cron": "30 2 * * *", "timezone": "Europe/Berlin",
        "job": {"mode": "git", "repo": "https://git.example.com/org/repo.git", "ref": "main",
                "script": "make nightly", "timeout": 60},  # the server's REMOTE_CI_JOB_TIMEOUT
        "enabled": True, "next_run_at": expected.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        "last_run_at": None, "last_job_id": None, "owner": "admin",
        "created_at": schedule["created_at"]}
    assert server.request("GET", resp.headers["location"]).json() == schedule


def test_timezone_defaults_to_utc_and_aliases_are_taken(server: Server) -> None:
    schedule = create(server, {"name": "daily", "cron": "@daily", "job": git_job()})
    assert schedule["timezone"] == "UTC" and schedule["cron"] == "@daily"
    assert schedule["next_run_at"].endswith("T00:00:00.000Z")


def test_list_get_and_delete(server: Server) -> None:
    first = rsync_schedule(server)
    second = rsync_schedule(server)
    listed = server.request("GET", "/api/schedules").json()["schedules"]
    ids = [s["id"] for s in listed]
    assert ids.index(second["id"]) < ids.index(first["id"])  # newest first
    resp = server.request("DELETE", f"/api/schedules/{first['id']}")
    assert resp.status == 204 and resp.body == b""
    assert server.request("GET", f"/api/schedules/{first['id']}").status == 404
    assert server.request("DELETE", f"/api/schedules/{first['id']}").status == 404
    ids = [s["id"] for s in server.request("GET", "/api/schedules").json()["schedules"]]
    assert first["id"] not in ids and second["id"] in ids


def test_pause_and_resume(server: Server) -> None:
    schedule = rsync_schedule(server)
    paused = server.request("POST", f"/api/schedules/{schedule['id']}/pause")
    assert paused.status == 200, paused.body
    assert paused.json()["enabled"] is False and paused.json()["next_run_at"] is None
    resumed = server.request("POST", f"/api/schedules/{schedule['id']}/resume").json()
    assert resumed["enabled"] is True and resumed["next_run_at"] == schedule["next_run_at"]
    again = server.request("POST", f"/api/schedules/{schedule['id']}/resume").json()
    assert again == resumed


def test_run_now_makes_one_job_that_names_its_schedule(server: Server) -> None:
    schedule = rsync_schedule(server, script="echo from the schedule")
    resp = server.request("POST", f"/api/schedules/{schedule['id']}/run")
    assert resp.status == 202, resp.body
    job = resp.json()
    assert resp.headers["location"] == f"/api/jobs/{job['id']}"
    assert job["schedule"] == schedule["id"] and job["status"] == "queued"
    assert job["source"] == "proj" and job["mode"] == "rsync" and job["owner"] == "admin"
    assert job["name"] == "nightly"  # the schedule's name, the job having none of its own
    done = server.wait_final(job["id"])
    assert done["status"] == "success" and done["schedule"] == schedule["id"]
    assert server.log(job["id"]).startswith(b"from the schedule\n")
    shown = server.request("GET", f"/api/schedules/{schedule['id']}").json()
    assert shown["last_job_id"] == job["id"] and shown["last_run_at"] is not None
    assert shown["next_run_at"] == schedule["next_run_at"]  # run-now is not a tick


def test_run_now_works_while_paused_and_takes_an_idempotency_key(server: Server) -> None:
    schedule = rsync_schedule(server)
    server.request("POST", f"/api/schedules/{schedule['id']}/pause")
    key = {"Idempotency-Key": f"run-{schedule['id']}"}
    first = server.request("POST", f"/api/schedules/{schedule['id']}/run", headers=key)
    again = server.request("POST", f"/api/schedules/{schedule['id']}/run", headers=key)
    assert first.status == again.status == 202
    assert first.json()["id"] == again.json()["id"]
    server.wait_final(first.json()["id"])
    bad = server.request("POST", f"/api/schedules/{schedule['id']}/run",
                         headers={"Idempotency-Key": "no spaces"})
    assert bad.status == 400 and "Idempotency-Key" in bad.json()["error"]


def test_credentials_in_the_repo_url_are_never_shown(server: Server) -> None:
    schedule = create(server, {"cron": NEVER_SOON, "job": git_job(
        repo="https://ci:s3cret-pass@git.example.com/org/repo.git")})
    assert schedule["job"]["repo"] == "https://***@git.example.com/org/repo.git"  # as a job shows it
    for path in (f"/api/schedules/{schedule['id']}", "/api/schedules"):
        assert b"s3cret" not in server.request("GET", path).body


@pytest.mark.parametrize("body, status, says", [
    ({"cron": "61 * * * *", "job": git_job()}, 400, "field 'cron'"),
    ({"cron": "* * * *", "job": git_job()}, 400, "field 'cron'"),
    ({"cron": "@reboot", "job": git_job()}, 400, "field 'cron'"),
    ({"job": git_job()}, 400, "field 'cron'"),
    ({"cron": "0 * * * *", "timezone": "Mars/Olympus", "job": git_job()}, 400, "field 'timezone'"),
    ({"cron": "0 * * * *", "timezone": 2, "job": git_job()}, 400, "field 'timezone'"),
    ({"cron": "0 * * * *"}, 400, "field 'job'"),
    ({"cron": "0 * * * *", "job": "make test"}, 400, "field 'job'"),
    ({"cron": "0 * * * *", "job": {"mode": "upload", "script": "x"}}, 400, "field 'job.mode'"),
    ({"cron": "0 * * * *", "job": {"script": "x"}}, 400, "field 'job.mode'"),
    ({"cron": "0 * * * *", "job": git_job(repo="ext::sh -c evil")}, 400, "repo"),
    ({"cron": "0 * * * *", "job": git_job(script="")}, 400, "field 'script'"),
    ({"cron": "0 * * * *", "job": git_job(timeout=99999)}, 400, "field 'timeout'"),
    ({"cron": "0 * * * *", "job": git_job(workspace="proj")}, 400, "unknown field 'workspace'"),
    ({"cron": "0 * * * *", "job": git_job(), "when": "now"}, 400, "unknown field 'when'"),
    ({"cron": "0 * * * *", "name": "a\nb", "job": git_job()}, 400, "field 'name'"),
    ({"cron": "0 * * * *", "job": {"mode": "rsync", "script": "x"}}, 400, "field 'workspace'"),
    ({"cron": "0 * * * *", "job": {"mode": "rsync", "workspace": "nope", "script": "x"}}, 400,
     "nope"),
    ({"cron": "0 * * * *", "job": {"mode": "rsync", "workspace": "/etc", "script": "x"}}, 403,
     "outside the workspace root"),
])
def test_bad_input_is_refused_naming_the_field(server: Server, body: dict[str, Any], status: int,
                                               says: str) -> None:
    before = server.request("GET", "/api/schedules").json()["schedules"]
    resp = server.request("POST", "/api/schedules", body)
    assert resp.status == status, resp.body
    assert says in resp.json()["error"]
    assert server.request("GET", "/api/schedules").json()["schedules"] == before


@pytest.mark.parametrize("body", [b"", b"{", b"[1]", b"null"])
def test_a_body_that_is_no_json_object_is_a_400(server: Server, body: bytes) -> None:
    resp = server.request("POST", "/api/schedules", body)
    error = resp.json()["error"]
    assert resp.status == 400 and ("JSON" in error or "empty" in error)


@pytest.mark.parametrize("method, suffix", [("GET", ""), ("DELETE", ""), ("POST", "/pause"),
                                            ("POST", "/resume"), ("POST", "/run")])
def test_unknown_or_impossible_ids_are_404(server: Server, method: str, suffix: str) -> None:
    for schedule_id in ("0000000000000000", "bad.id", "x" * 65):
        resp = server.request(method, f"/api/schedules/{schedule_id}{suffix}")
        assert resp.status == 404 and "no schedule" in resp.json()["error"]


def test_the_api_needs_a_token(server: Server) -> None:
    assert server.request("GET", "/api/schedules", token=None).status == 401
    assert server.request("POST", "/api/schedules", {"cron": "* * * * *"}, token="wrong").status == 401


def test_a_pinned_schedules_jobs_wait_for_their_host(server: Server) -> None:
    schedule = create(server, {"cron": NEVER_SOON, "job": {
        "mode": "rsync", "workspace": "on-build-02", "script": "true", "host": "build-02"}})
    assert schedule["job"]["host"] == "build-02"
    job = server.request("POST", f"/api/schedules/{schedule['id']}/run").json()
    assert job["host"] == "build-02" and job["schedule"] == schedule["id"]
    assert server.job(job["id"])["status"] == "queued"  # no executor of build-02 here
    assert server.request("POST", f"/api/jobs/{job['id']}/cancel").status == 202
