"""Per-hour activity: what a job's end and an executor's time add, bounded by an 8-day TTL."""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from remoteci import jobs
from remoteci.pages import charts
from remoteci.queue import JobStore
from remoteci.store import activity, histograms
from remoteci.store.activity import HOUR, ActivityStore, Hour
from remoteci.store.redis_conn import Client as Redis
from tests.helpers import MakeServer, wait_until

T0 = 1_796_000_000 // HOUR * HOUR  # the start of an hour


def iso(seconds: float) -> str:
    return jobs.iso_time(seconds)


def test_a_job_that_ran_adds_its_status_buckets_and_busy_time() -> None:
    record = {"created_at": iso(T0 + 100), "started_at": iso(T0 + 103),
              "finished_at": iso(T0 + 3500), "worker": "build-1:4242"}
    added = activity.ended("success", record, now=0)
    hour = T0 // HOUR
    assert added[hour]["jobs:success"] == 1
    assert added[hour]["wait:5.0"] == 1 and added[hour]["duration:3600.0"] == 1
    assert added[hour]["busy:build-1"] == 3397


def test_a_run_across_hours_is_busy_in_each_of_them() -> None:
    record = {"created_at": iso(T0), "started_at": iso(T0 + 3000),
              "finished_at": iso(T0 + 2 * HOUR + 600), "worker": "h:1"}
    added = activity.ended("timeout", record, now=0)
    hour = T0 // HOUR
    assert [added[h].get("busy:h") for h in (hour, hour + 1, hour + 2)] == [600, 3600, 600]
    assert "jobs:timeout" in added[hour + 2] and "jobs:timeout" not in added[hour]


def test_a_job_cancelled_in_the_queue_only_counts_as_cancelled() -> None:
    added = activity.ended("cancelled", {"created_at": iso(T0), "finished_at": iso(T0 + 5)}, 0)
    assert added == {T0 // HOUR: {"jobs:cancelled": 1}}


def test_capacity_is_executors_times_seconds_per_hour() -> None:
    assert activity.capacity("h", 2, T0 + 3590, T0 + 3610) == {
        T0 // HOUR: {"up:h": 20.0}, T0 // HOUR + 1: {"up:h": 20.0}}


def test_percentiles_interpolate_within_buckets() -> None:
    summed = {"duration:1.0": 50.0, "duration:5.0": 50.0}
    assert activity.percentile(histograms.DURATION, "duration", summed, 0.5) == 1.0
    assert activity.percentile(histograms.DURATION, "duration", summed, 0.9) == 1.0 + 4 * 0.8
    assert activity.percentile(histograms.DURATION, "duration", {}, 0.5) is None
    top = {"duration:+Inf": 3.0}
    assert activity.percentile(histograms.DURATION, "duration", top, 0.99) == 7200


def test_busy_share_pairs_busy_and_up_per_host() -> None:
    assert activity.busy_share({"busy:a": 5, "up:a": 10, "up:b": 7, "jobs:success": 1}) == {
        "a": (5, 10), "b": (0, 7)}


def test_hours_are_stored_with_a_ttl_and_read_back_oldest_first(
        store_client: Redis, redis_client: redis.Redis) -> None:
    store = ActivityStore(store_client)
    store.add({T0 // HOUR: {"jobs:success": 1, "busy:h": 2.5}, T0 // HOUR - 1: {"up:h": 7}})
    store.add({T0 // HOUR: {"jobs:success": 1}})
    assert 0 < redis_client.ttl(activity.hour_key(T0 // HOUR)) <= activity.TTL
    hours = store.hours(T0 + 10, 3)
    assert [h.start for h in hours] == [T0 - 2 * HOUR, T0 - HOUR, T0]
    assert [dict(h.fields) for h in hours] == [{}, {"up:h": 7.0},
                                               {"jobs:success": 2.0, "busy:h": 2.5}]


def test_finishing_and_dequeuing_jobs_count_in_the_current_hour(store_client: Redis) -> None:
    store = JobStore(store_client, 3600)
    for job_id in ("a", "b"):
        record = {"id": job_id, "mode": "rsync", "status": "queued", "script": "true",
                  "source": "p", "timeout": "60", "created_at": jobs.iso_now()}
        payload: dict[str, Any] = {"id": job_id, "mode": "rsync", "script": "true", "timeout": 60}
        store.enqueue(record, payload, 100)
    taken = store.take("host-x:1", 1)
    assert taken is not None and taken.claimed
    ran_until = jobs.iso_time(jobs.time.time() + 0.5)  # the run took some time
    assert store.finish("host-x:1", "a", taken.payload, "failed",
                        {"exit_code": "1", "finished_at": ran_until})
    assert store.cancel("b", jobs.iso_now()) == "dequeued"
    assert json.loads(taken.payload)["id"] == "a"
    summed = activity.totals(store.activity.hours(jobs.time.time() + 1, 2))
    assert summed["jobs:failed"] == 1 and summed["jobs:cancelled"] == 1
    assert sum(v for k, v in summed.items() if k.startswith("duration:")) == 1
    assert summed["busy:host-x"] > 0.4


def test_the_charts_body_escapes_host_names() -> None:
    hours = [Hour(T0, {"jobs:success": 2, "busy:<b>x</b>": 5, "up:<b>x</b>": 10})]
    body = charts.body(hours, T0 + 10)
    assert "<b>x" not in body and "&lt;b&gt;x&lt;/b&gt;" in body and "50%" in body


def test_a_host_offers_only_its_job_executors_time(make_server: MakeServer) -> None:
    # The supervisor also runs a history writer (and maybe a webhook deliverer): neither runs
    # jobs, so neither may count in the busy share's denominator.
    started = time.time()
    server = make_server(env={"REMOTE_CI_CONCURRENCY": "1", "REMOTE_CI_NODE_NAME": "onehost"},
                         wait_workers=1)
    client = redis.Redis.from_url(str(server.redis_url))

    def offered() -> float:
        return sum(float(client.hget(key, "up:onehost") or 0)
                   for key in client.scan_iter(f"{activity.PREFIX}*"))

    up = wait_until(offered, 30, "the supervisor to report its executors' time")
    assert 0 < up <= (time.time() - started) * 1.05, "one executor: at most one second a second"
