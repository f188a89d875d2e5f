"""Project tokens see and change only their own schedules, as with jobs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.auth.test_project_tokens import add_token
from tests.helpers import TOKEN, MakeServer, Server

NEVER_SOON = "0 0 1 1 *"


@pytest.fixture
def projects(make_server: MakeServer, tmp_path: Path) -> tuple[Server, str, str]:
    tokens_file = tmp_path / "tokens"
    alpha = add_token(tokens_file, "alpha", "--workspaces", "alpha")
    beta = add_token(tokens_file, "beta")
    server = make_server(env={"REMOTE_CI_TOKENS_FILE": str(tokens_file)})
    for name in ("alpha", "beta"):
        server.make_workspace(name)
    return server, alpha, beta


def make(server: Server, token: str, workspace: str) -> dict[str, Any]:
    resp = server.request("POST", "/api/schedules", {
        "cron": NEVER_SOON, "job": {"mode": "rsync", "workspace": workspace, "script": "true"}},
        token=token)
    assert resp.status == 201, resp.body
    return dict(resp.json())


def listed(server: Server, token: str, query: str = "") -> list[str]:
    resp = server.request("GET", f"/api/schedules{query}", token=token)
    assert resp.status == 200, resp.body
    return [s["id"] for s in resp.json()["schedules"]]


def test_a_project_sees_and_changes_only_its_own(projects: tuple[Server, str, str]) -> None:
    server, alpha, beta = projects
    mine = make(server, alpha, "alpha")
    theirs = make(server, beta, "beta")
    assert mine["owner"] == "alpha" and theirs["owner"] == "beta"
    assert listed(server, alpha) == [mine["id"]]
    assert listed(server, beta) == [theirs["id"]]
    assert set(listed(server, TOKEN)) == {mine["id"], theirs["id"]}
    assert listed(server, TOKEN, "?owner=beta") == [theirs["id"]]
    for method, suffix in (("GET", ""), ("POST", "/pause"), ("POST", "/resume"), ("POST", "/run"),
                           ("DELETE", "")):
        resp = server.request(method, f"/api/schedules/{theirs['id']}{suffix}", token=alpha)
        assert resp.status == 404, (method, suffix, resp.body)
    shown = server.request("GET", f"/api/schedules/{theirs['id']}", token=beta).json()
    assert shown["enabled"] is True and shown["last_job_id"] is None  # untouched
    assert server.request("GET", "/api/schedules?owner=beta", token=alpha).status == 403


def test_a_projects_scheduled_job_is_its_own(projects: tuple[Server, str, str]) -> None:
    server, alpha, beta = projects
    mine = make(server, alpha, "alpha")
    job = server.request("POST", f"/api/schedules/{mine['id']}/run", token=alpha).json()
    assert job["owner"] == "alpha" and job["schedule"] == mine["id"]
    assert server.request("GET", f"/api/jobs/{job['id']}", token=beta).status == 404
    assert server.wait_final(job["id"])["status"] == "success"


def test_a_project_schedules_only_its_workspaces(projects: tuple[Server, str, str]) -> None:
    server, alpha, _ = projects
    resp = server.request("POST", "/api/schedules", {
        "cron": NEVER_SOON, "job": {"mode": "rsync", "workspace": "beta", "script": "true"}},
        token=alpha)
    assert resp.status == 403 and "workspace" in resp.json()["error"]
    assert listed(server, alpha) == []
