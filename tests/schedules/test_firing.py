"""Ticks into jobs on a real redis-server, the clock given as an argument: exactly one job per
tick whatever the number of tickers, a crash between the steps, a late ticker, missed ticks."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from remoteci import jobs
from remoteci.auth.identity import ADMIN
from remoteci.config import Settings, load_settings
from remoteci.queue import JobStore
from remoteci.schedules.firing import Ticker, make_job
from remoteci.schedules.model import new_record, parse_schedule
from remoteci.schedules.store import ScheduleStore, tick_claim
from remoteci.store.redis_conn import Client, connect
from tests.helpers import RedisServer

T0 = 1_796_000_000  # 2026-11-30T00:53:20Z; every test's clock starts here


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    (tmp_path / "ws" / "proj").mkdir(parents=True)
    return load_settings({"REMOTE_CI_TOKEN": "test-token-0123456789",
                          "REMOTE_CI_WORKSPACE_DIR": str(tmp_path / "ws"),
                          "REMOTE_CI_DATA_DIR": str(tmp_path / "data"),
                          "REMOTE_CI_MAX_QUEUE": "50"})


@pytest.fixture
def clients(redis_client: Any, redis_server: RedisServer) -> Iterator[list[Client]]:
    """Three clients of the flushed redis: one per 'host'."""
    made = [connect(redis_server.url) for _ in range(3)]
    yield made
    for client in made:
        client.close()


def ticker(settings: Settings, client: Client) -> Ticker:
    return Ticker(settings, JobStore(client, 3600), ScheduleStore(client))


def add_schedule(settings: Settings, client: Client, cron: str = "* * * * *",
                 now: float = T0) -> str:
    new = parse_schedule({"name": "n", "cron": cron, "job": {"mode": "rsync", "workspace": "proj",
                                                             "script": "true"}}, settings, ADMIN)
    schedule_id = jobs.new_job_id()
    assert ScheduleStore(client).create(new_record(schedule_id, new, "admin", now), 0, 100)
    return schedule_id


def scheduled_jobs(client: Client, schedule_id: str) -> list[dict[str, Any]]:
    found = JobStore(client, 3600).list_jobs(None, None, 500)
    return [job for job in found if job.get("schedule") == schedule_id]


def next_run_at(client: Client, schedule_id: str) -> int:
    record = ScheduleStore(client).get(schedule_id)
    assert record is not None
    return int(record["next_run_at"])


def test_nothing_before_the_tick_one_job_at_it(settings: Settings, clients: list[Client]) -> None:
    schedule_id = add_schedule(settings, clients[0])
    tick = next_run_at(clients[0], schedule_id)
    assert tick == T0 - T0 % 60 + 60
    one = ticker(settings, clients[0])
    assert one.fire_due(tick - 0.5) == []
    made = one.fire_due(tick + 0.2)
    assert len(made) == 1
    assert one.fire_due(tick + 0.4) == []
    job = JobStore(clients[0], 3600).get(made[0])
    assert job is not None and job["schedule"] == schedule_id and job["status"] == "queued"
    record = ScheduleStore(clients[0]).get(schedule_id)
    assert record is not None
    assert record["last_job_id"] == made[0] and int(record["next_run_at"]) == tick + 60


def test_many_tickers_at_once_make_one_job_per_tick(settings: Settings,
                                                    clients: list[Client]) -> None:
    schedule_id = add_schedule(settings, clients[0])
    first = next_run_at(clients[0], schedule_id)
    tickers = [ticker(settings, client) for client in clients]
    for n in range(20):
        now = first + 60 * n + 0.1
        barrier = threading.Barrier(len(tickers))

        def run(t: Ticker, now: float = now, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            t.fire_due(now)

        threads = [threading.Thread(target=run, args=(t,)) for t in tickers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert len(scheduled_jobs(clients[0], schedule_id)) == n + 1, f"tick {n}"
    assert next_run_at(clients[0], schedule_id) == first + 60 * 20


def test_a_ticker_that_died_after_the_enqueue_leaves_the_tick_to_the_next_one(
        settings: Settings, clients: list[Client]) -> None:
    schedule_id = add_schedule(settings, clients[0])
    tick = next_run_at(clients[0], schedule_id)
    record = ScheduleStore(clients[0]).get(schedule_id)
    assert record is not None
    # What a ticker does before it dies: the tick's job is enqueued, the schedule not moved on.
    job, existed = make_job(settings, JobStore(clients[0], 3600), record,
                            tick_claim(schedule_id, tick))
    assert not existed and next_run_at(clients[0], schedule_id) == tick
    assert ticker(settings, clients[1]).fire_due(tick + 5) == []  # the job exists: none made
    assert [j["id"] for j in scheduled_jobs(clients[0], schedule_id)] == [job["id"]]
    after = ScheduleStore(clients[0]).get(schedule_id)
    assert after is not None and after["last_job_id"] == job["id"]
    assert int(after["next_run_at"]) == tick + 60


def test_a_late_ticker_neither_makes_a_job_nor_moves_the_schedule(
        settings: Settings, clients: list[Client]) -> None:
    schedule_id = add_schedule(settings, clients[0])
    tick = next_run_at(clients[0], schedule_id)
    late = ticker(settings, clients[1])
    due = late.schedules.due(tick + 1)  # read, and then the ticker stalls
    assert due == [(schedule_id, tick)]
    assert len(ticker(settings, clients[0]).fire_due(tick + 1)) == 1
    # The late one wakes up two minutes on, with the tick it read long done.
    assert late._fire(schedule_id, tick, tick + 125) is None
    assert len(scheduled_jobs(clients[0], schedule_id)) == 1
    assert next_run_at(clients[0], schedule_id) == tick + 60  # not skipped on to tick + 180


def test_missed_ticks_make_one_job_and_the_schedule_moves_past_now(
        settings: Settings, clients: list[Client]) -> None:
    schedule_id = add_schedule(settings, clients[0])
    tick = next_run_at(clients[0], schedule_id)
    now = tick + 5 * 3600 + 30  # five hours of every-minute ticks with everything down
    one, two = ticker(settings, clients[0]), ticker(settings, clients[1])
    made = one.fire_due(now) + two.fire_due(now) + one.fire_due(now + 1)
    assert len(made) == 1 and len(scheduled_jobs(clients[0], schedule_id)) == 1
    assert next_run_at(clients[0], schedule_id) == now - now % 60 + 60


def test_paused_schedules_make_no_job_and_resume_from_now(settings: Settings,
                                                          clients: list[Client]) -> None:
    schedule_id = add_schedule(settings, clients[0], cron="0 * * * *")
    tick = next_run_at(clients[0], schedule_id)
    store = ScheduleStore(clients[0])
    assert store.set_enabled(schedule_id, False, None)
    assert ticker(settings, clients[0]).fire_due(tick + 7200) == []
    assert store.set_enabled(schedule_id, True, tick + 3 * 3600)
    assert ticker(settings, clients[0]).fire_due(tick + 7200) == []
    assert len(ticker(settings, clients[0]).fire_due(tick + 3 * 3600)) == 1


def test_a_deleted_schedule_makes_no_job(settings: Settings, clients: list[Client]) -> None:
    schedule_id = add_schedule(settings, clients[0])
    tick = next_run_at(clients[0], schedule_id)
    assert ScheduleStore(clients[0]).delete(schedule_id)
    assert ticker(settings, clients[0]).fire_due(tick + 1) == []
    assert ScheduleStore(clients[0]).due(tick + 1) == []


def test_schedules_are_kept_until_deleted(settings: Settings, clients: list[Client]) -> None:
    schedule_id = add_schedule(settings, clients[0])
    for key in clients[0].keys("rci:schedule*"):
        assert clients[0].ttl(key) == -1, key  # no expiry
    assert ScheduleStore(clients[0]).delete(schedule_id)
    assert clients[0].keys("rci:schedule*") == []


def test_a_full_queue_leaves_the_tick_due(settings: Settings, clients: list[Client]) -> None:
    schedule_id = add_schedule(settings, clients[0])
    tick = next_run_at(clients[0], schedule_id)
    store = JobStore(clients[0], 3600)
    for n in range(settings.max_queue):
        store.enqueue({"id": f"filler{n}", "mode": "rsync", "status": "queued", "script": "true",
                       "source": "proj", "timeout": "60", "created_at": jobs.iso_now()},
                      {"id": f"filler{n}", "mode": "rsync"}, settings.max_queue)
    refused = ticker(settings, clients[0])
    assert refused.fire_due(tick + 1) == []
    assert next_run_at(clients[0], schedule_id) == tick  # still due
    assert refused.fire_due(tick + 2) == []  # backing off: not asked again at once
    for n in range(settings.max_queue):  # room again: the fillers are cancelled
        assert store.cancel(f"filler{n}", jobs.iso_now()) == "dequeued"
    assert len(ticker(settings, clients[1]).fire_due(tick + 3)) == 1


def test_a_job_no_replica_confirmed_leaves_the_tick_to_the_next_look(
        settings: Settings, clients: list[Client]) -> None:
    schedule_id = add_schedule(settings, clients[0])
    tick = next_run_at(clients[0], schedule_id)
    # REMOTE_CI_REDIS_MIN_REPLICAS=1 on a redis without replicas: WAIT confirms nothing.
    unconfirmed = Ticker(settings, JobStore(clients[0], 3600, min_replicas=1),
                         ScheduleStore(clients[0]))
    assert unconfirmed.fire_due(tick + 1) == []
    stored = scheduled_jobs(clients[0], schedule_id)
    assert len(stored) == 1 and next_run_at(clients[0], schedule_id) == tick  # still due
    assert ticker(settings, clients[1]).fire_due(tick + 2) == []  # finds that job, makes none
    assert len(scheduled_jobs(clients[0], schedule_id)) == 1
    assert next_run_at(clients[0], schedule_id) == tick + 60
