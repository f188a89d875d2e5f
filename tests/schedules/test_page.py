"""The schedules page: next run, last job and its status; pause, resume and run now from it,
with the cancel form's CSRF rules."""

from __future__ import annotations

import re
from html import unescape
from typing import Any

import pytest

from remoteci.pages import csrf
from remoteci.schedules.page import action_name
from tests.helpers import TOKEN, Server
from tests.pages.test_pages import BASIC, page

FORM = {**BASIC, "Content-Type": "application/x-www-form-urlencoded"}
HOSTILE = "<script>alert('x')</script>"


def make(server: Server, name: str = "nightly") -> dict[str, Any]:
    server.make_workspace("proj")
    resp = server.request("POST", "/api/schedules", {
        "name": name, "cron": "0 4 * * *", "timezone": "Europe/Berlin",
        "job": {"mode": "rsync", "workspace": "proj", "script": "echo page"}})
    assert resp.status == 201, resp.body
    return dict(resp.json())


def row(html: str, schedule_id: str) -> str:
    match = re.search(rf'<tr id="schedule-{schedule_id}">.*?</tr>', html)
    assert match, f"schedule {schedule_id} is not on the page"
    return match.group(0)


def form_token(html: str, schedule_id: str, action: str) -> str:
    match = re.search(rf'action="/schedules/{schedule_id}/{action}"><input type=hidden '
                      r'name=csrf value="([^"]+)"', row(html, schedule_id))
    assert match, f"no {action} form for {schedule_id}"
    return unescape(match.group(1))


def post(server: Server, schedule_id: str, action: str, token: str,
         origin: str | None = None) -> Any:
    return server.request("POST", f"/schedules/{schedule_id}/{action}", body=f"csrf={token}",
                          headers={**FORM, "Origin": origin or server.url}, token=None)


def test_the_page_lists_next_run_and_last_job_with_its_status(server: Server) -> None:
    schedule = make(server, name=HOSTILE)
    listed = row(page(server, "/schedules"), schedule["id"])
    assert HOSTILE not in listed and "&lt;script&gt;" in listed
    assert "0 4 * * *" in listed and "Europe/Berlin" in listed and "active" in listed
    assert f'datetime="{schedule["next_run_at"]}"' in listed and "04:00 CE" in listed
    job = server.request("POST", f"/api/schedules/{schedule['id']}/run").json()
    server.wait_final(job["id"])
    listed = row(page(server, "/schedules"), schedule["id"])
    assert f'href="/jobs/{job["id"]}"' in listed and "st-success" in listed
    assert 'href="/schedules"' in page(server, "/")


def test_pause_resume_and_run_now_from_the_page(server: Server) -> None:
    schedule = make(server)
    sid = schedule["id"]
    resp = post(server, sid, "pause", form_token(page(server, "/schedules"), sid, "pause"))
    assert resp.status == 303 and resp.headers["location"] == "/schedules"
    html = page(server, "/schedules")
    assert "paused" in row(html, sid)
    assert server.request("GET", f"/api/schedules/{sid}").json()["enabled"] is False
    resp = post(server, sid, "resume", form_token(html, sid, "resume"))
    assert resp.status == 303
    assert server.request("GET", f"/api/schedules/{sid}").json()["enabled"] is True
    resp = post(server, sid, "run", form_token(page(server, "/schedules"), sid, "run"))
    assert resp.status == 303 and resp.headers["location"].startswith("/jobs/")
    job_id = resp.headers["location"].removeprefix("/jobs/")
    assert server.wait_final(job_id)["schedule"] == sid


@pytest.mark.parametrize("case", ["wrong token", "another schedule's token",
                                  "another action's token", "cross-site origin"])
def test_forged_forms_are_refused_and_change_nothing(server: Server, case: str) -> None:
    victim, other = make(server), make(server)
    html = page(server, "/schedules")
    token = {"wrong token": "9999999999.deadbeef",
             "another schedule's token": form_token(html, other["id"], "pause"),
             "another action's token": form_token(html, victim["id"], "run"),
             "cross-site origin": form_token(html, victim["id"], "pause")}[case]
    origin = "http://evil.example" if case == "cross-site origin" else None
    resp = post(server, victim["id"], "pause", token, origin)
    assert resp.status == 403, resp.body
    assert server.request("GET", f"/api/schedules/{victim['id']}").json() == victim


def test_a_form_for_an_unknown_schedule_is_a_404(server: Server) -> None:
    unknown = "0000000000000000"
    token = csrf.make_token(csrf.derive_key([TOKEN]), action_name("run", unknown))
    resp = post(server, unknown, "run", token)
    assert resp.status == 404 and "no schedule" in resp.json()["error"]


def test_the_page_needs_the_token(server: Server) -> None:
    assert server.request("GET", "/schedules", token=None).status == 401
