"""The job object: ids, times and typed fields."""

from __future__ import annotations

import re

from remoteci import jobs


def test_new_ids_are_valid_unique_and_time_ordered() -> None:
    ids = [jobs.new_job_id() for _ in range(200)]
    assert len(set(ids)) == 200
    assert all(jobs.is_valid_job_id(i) for i in ids)
    assert [i[:11] for i in ids] == sorted(i[:11] for i in ids)


def test_id_validation() -> None:
    assert jobs.is_valid_job_id("abc_DEF-123")
    assert jobs.is_valid_job_id("a" * 64)
    for bad in ("", "a" * 65, "a.b", "a/b", "a b", "é", "a\n"):
        assert not jobs.is_valid_job_id(bad)


def test_iso_time_is_utc_with_milliseconds() -> None:
    assert jobs.iso_time(0) == "1970-01-01T00:00:00.000Z"
    assert jobs.iso_time(1764291723.1239) == "2025-11-28T01:02:03.123Z"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", jobs.iso_now())


def test_job_object_types_and_order() -> None:
    record = {"id": "x", "mode": "rsync", "status": "failed", "script": "s", "source": "p",
              "timeout": "60", "exit_code": "7", "duration": "1.500", "created_at": "t",
              "payload": "{}", "seq": "4"}
    obj = jobs.job_object(record)
    assert obj["timeout"] == 60 and obj["exit_code"] == 7 and obj["duration"] == 1.5
    assert obj["name"] is None and obj["queue_position"] is None
    assert "payload" not in obj and "seq" not in obj
    assert list(obj)[:3] == ["id", "mode", "status"]


def test_queue_position_only_while_queued() -> None:
    assert jobs.job_object({"status": "queued"}, 3)["queue_position"] == 3
    assert jobs.job_object({"status": "running"}, 3)["queue_position"] is None


def test_job_object_extras_appear_only_when_set_and_empty_strings_are_null() -> None:
    record = {"id": "x", "status": "success", "name": "", "exit_code": "0", "ref": "main",
              "commit": "", "cancel_requested": "1", "artifacts": "2", "webhook_attempts": "0",
              "webhook_status": None}
    obj = jobs.job_object(record)
    assert obj["name"] is None and obj["exit_code"] == 0 and obj["worker"] is None
    assert obj["ref"] == "main" and obj["cancel_requested"] is True and obj["artifacts"] == 2
    assert obj["webhook_attempts"] == 0 and "commit" not in obj and "webhook_status" not in obj
    assert list(obj)[-1] == "queue_position"
    assert jobs.job_object({"status": "running", "cancel_requested": "0"})["cancel_requested"] is False
