"""Pure parts: a schedule's body, the stored record, the object shown, the job a tick makes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from remoteci.auth.identity import ADMIN, Identity
from remoteci.config import Settings, load_settings
from remoteci.errors import ApiError
from remoteci.schedules.jobspec import job_entry, loads
from remoteci.schedules.model import new_record, parse_schedule, schedule_object

NOW = 1_796_000_000.25  # 2026-11-30T00:53:20.250Z, 06:23 in India (UTC+5:30)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    (tmp_path / "ws" / "proj").mkdir(parents=True)
    return load_settings({"REMOTE_CI_TOKEN": "test-token-0123456789",
                          "REMOTE_CI_WORKSPACE_DIR": str(tmp_path / "ws"),
                          "REMOTE_CI_DATA_DIR": str(tmp_path / "data"),
                          "REMOTE_CI_JOB_TIMEOUT": "900"})


def test_a_git_schedule_round_trips(settings: Settings) -> None:
    new = parse_schedule({"name": "nightly", "cron": "@hourly", "timezone": "Asia/Kolkata", "job": {
        "mode": "git", "repo": "https://u:pw@git.example.com/r.git", "ref": "v1.2",
        "script": "make", "env": {"A": "1"}, "artifacts": ["dist/*"]}}, settings, ADMIN)
    record = new_record("s1", new, "admin", NOW)
    assert record["next_run_at"] == str(1_796_000_000 - 1_796_000_000 % 3600 + 3600 + 1800)
    shown = schedule_object(record)
    assert shown["next_run_at"] == "2026-11-30T01:30:00.000Z"  # 07:00 IST, a half-hour zone
    assert shown["job"] == {"mode": "git", "repo": "https://***@git.example.com/r.git",
                            "ref": "v1.2", "script": "make", "timeout": 900, "env": {"A": "1"},
                            "artifacts": ["dist/*"]}
    assert "pw" not in json.dumps(shown) and "pw" in record["credential"]
    spec = loads(record["job"], record["run"], record.get("credential"))
    job, payload = job_entry(spec, "j1", "admin", "s1", "2026-11-30T00:00:00.100Z", "nightly")
    assert job["schedule"] == "s1" and job["ref"] == "v1.2" and job["timeout"] == "900"
    assert job["source"] == "https://***@git.example.com/r.git" and job["status"] == "queued"
    assert payload["repo"] == "https://git.example.com/r.git" and payload["git_credential"] is True
    assert payload["env"] == {"A": "1"} and payload["artifacts"] == ["dist/*"]


def test_an_rsync_schedule_keeps_the_resolved_workspace(settings: Settings) -> None:
    new = parse_schedule({"cron": "0 3 * * *", "job": {"mode": "rsync", "workspace": "proj",
                                                       "script": "true", "timeout": 5}},
                         settings, ADMIN)
    record = new_record("s2", new, "admin", NOW)
    assert schedule_object(record)["name"] is None
    assert schedule_object(record)["timezone"] == "UTC"
    spec = loads(record["job"], record["run"], None)
    job, payload = job_entry(spec, "j2", "admin", "s2", "t")
    assert payload["workspace"] == "proj" and job["source"] == "proj" and payload["timeout"] == 5
    assert "webhook" not in job and "name" not in job  # neither the job nor the schedule has one
    named, _ = job_entry(spec, "j3", "admin", "s2", "t", "nightly")
    assert named["name"] == "nightly"  # the schedule's name labels a job without its own


def test_a_project_token_is_held_to_its_git_hosts(settings: Settings) -> None:
    project = Identity("alpha", ("alpha",), ("git.example.com",))
    with pytest.raises(ApiError) as caught:
        parse_schedule({"cron": "0 3 * * *", "job": {
            "mode": "git", "repo": "https://elsewhere.example/r.git", "script": "x"}},
            settings, project)
    assert caught.value.status == 403 and "field 'repo'" in caught.value.message


def test_a_schedule_pinned_to_a_host_pins_its_jobs(settings: Settings) -> None:
    # The workspace lives on that host: not looked for on this one, as for a submission.
    new = parse_schedule({"cron": "0 3 * * *", "job": {"mode": "rsync", "workspace": "elsewhere",
                                                       "script": "true", "host": "build-02"}},
                         settings, ADMIN)
    record = new_record("s3", new, "admin", NOW)
    assert schedule_object(record)["job"]["host"] == "build-02"
    job, payload = job_entry(loads(record["job"], record["run"], None), "j4", "admin", "s3", "t")
    assert job["host"] == payload["host"] == "build-02" and payload["workspace"] == "elsewhere"
    with pytest.raises(ApiError) as caught:
        parse_schedule({"cron": "0 3 * * *", "job": {"mode": "rsync", "workspace": "proj",
                                                     "script": "true", "host": "no:colon"}},
                       settings, ADMIN)
    assert caught.value.status == 400 and "host" in caught.value.message
