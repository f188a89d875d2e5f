"""Jobs pinned to a host, against a real redis-server: FIFO with the shared queue, per host."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
import redis

from remoteci import jobs
from remoteci.queue import (
    QUEUE,
    QUEUE_HOSTS,
    JobStore,
    QueueFull,
    Taken,
    host_queue_key,
    inflight_key,
    job_key,
)
from remoteci.store.redis_conn import Client as Redis

TTL = 7 * 86400


@pytest.fixture
def store(store_client: Redis) -> JobStore:
    return JobStore(store_client, TTL)


def submit(store: JobStore, job_id: str, host: str | None = None) -> str:
    record = {"id": job_id, "mode": "rsync", "status": "queued", "script": "true", "source": "p",
              "timeout": "60", "created_at": jobs.iso_now(), **({"host": host} if host else {})}
    payload: dict[str, Any] = {"id": job_id, "mode": "rsync", "script": "true", "timeout": 60,
                               **({"host": host} if host else {})}
    store.enqueue(record, payload, 100)
    return json.dumps(payload, separators=(",", ":"), sort_keys=True)


def taken_ids(store: JobStore, executor_id: str) -> list[str]:
    """Every job the executor takes until nothing is left for it."""
    ids = []
    while (taken := store.take(executor_id, 0.05)) is not None:
        ids.append(json.loads(taken.payload)["id"])
    return ids


def test_a_host_takes_its_pinned_jobs_and_the_shared_ones_in_submission_order(
        store: JobStore) -> None:
    for job_id, host in [("s1", None), ("c1", "c"), ("b1", "b"), ("s2", None), ("c2", "c"),
                         ("c3", "c"), ("s3", None)]:
        submit(store, job_id, host)
    assert taken_ids(store, "c:1") == ["s1", "c1", "s2", "c2", "c3", "s3"]
    assert taken_ids(store, "b:1") == ["b1"]


def test_jobs_pinned_elsewhere_are_never_taken(store: JobStore, redis_client: redis.Redis) -> None:
    submit(store, "for-b", "b")
    assert store.take("c:1", 0.05) is None
    assert store.take("ex1", 0.05) is None  # an executor id without a host: the shared queue only
    assert store.get("for-b")["status"] == "queued"  # type: ignore[index]
    assert redis_client.llen(host_queue_key("b")) == 1 and redis_client.llen(QUEUE) == 0


def test_the_claim_of_a_pinned_job_names_the_executor_of_that_host(store: JobStore) -> None:
    submit(store, "a", "c")
    taken = store.take("c:42", 1)
    assert taken is not None and taken.claimed
    assert store.get("a")["worker"] == "c:42"  # type: ignore[index]


def test_a_waiting_take_wakes_for_a_job_pinned_to_its_host(store: JobStore,
                                                          store_client: Redis) -> None:
    got: list[Taken | None] = []
    waiter = threading.Thread(target=lambda: got.append(
        JobStore(store_client, TTL).take("c:1", 20)))
    waiter.start()
    # The take is waiting on the bells (or has not looked yet: then it finds the job at once).
    submit(store, "late", "c")
    waiter.join(30)
    assert not waiter.is_alive()
    assert got[0] is not None and json.loads(got[0].payload)["id"] == "late"


def test_cancelling_a_queued_pinned_job_takes_it_off_its_host_queue(
        store: JobStore, redis_client: redis.Redis) -> None:
    submit(store, "a", "c")
    submit(store, "b", "c")
    assert store.cancel("a", jobs.iso_now()) == "dequeued"
    assert [json.loads(p)["id"] for p in redis_client.lrange(host_queue_key("c"), 0, -1)] == ["b"]
    assert store.get("b")["queue_position"] == 1  # type: ignore[index]
    assert taken_ids(store, "c:1") == ["b"]


def test_an_unclaimed_pinned_job_of_a_dead_executor_goes_back_to_its_host(
        store: JobStore, redis_client: redis.Redis) -> None:
    first = submit(store, "a", "c")
    submit(store, "b", "c")
    redis_client.lmove(host_queue_key("c"), inflight_key("c:1"), "RIGHT", "LEFT")  # died here
    assert store.reap_executor("c:1", "executor lost", jobs.iso_now()) == []
    assert store.take("x:1", 0.05) is None
    taken = store.take("c:2", 1)
    assert taken is not None and taken.payload == first


def test_stats_show_each_host_with_executors_running_and_queued(store: JobStore) -> None:
    store.heartbeat("b:1", {"id": "b:1", "host": "b"})
    store.heartbeat("b:2", {"id": "b:2", "host": "b"})
    submit(store, "run-b", "b")
    assert store.take("b:1", 1) is not None
    submit(store, "wait-b", "b")
    submit(store, "wait-gone", "gone")  # no executor: it waits for host gone
    submit(store, "anyone")
    stats = store.stats()
    assert stats.hosts == {"b": {"executors": 2, "running": 1, "queued": 1},
                           "gone": {"executors": 0, "running": 0, "queued": 1}}
    assert (stats.queued, stats.running, stats.workers) == (3, 1, 2)


def test_the_sweep_forgets_a_host_with_nothing_queued(store: JobStore,
                                                     redis_client: redis.Redis) -> None:
    submit(store, "a", "gone")
    assert store.cancel("a", jobs.iso_now()) == "dequeued"
    assert redis_client.smembers(QUEUE_HOSTS) == {b"gone"}
    store.prune_indexes()
    assert redis_client.smembers(QUEUE_HOSTS) == set() and store.stats().hosts == {}


def test_the_queue_bound_counts_pinned_jobs_too(store: JobStore) -> None:
    record = {"id": "x", "mode": "rsync", "status": "queued", "script": "true", "source": "p",
              "timeout": "60", "created_at": jobs.iso_now(), "host": "c"}
    store.enqueue(record, {"id": "x", "host": "c"}, 2)
    submit(store, "y")
    with pytest.raises(QueueFull):
        store.enqueue({**record, "id": "z"}, {"id": "z", "host": "c"}, 2)


def test_a_requeued_pinned_job_is_counted_for_its_host_again(
        store: JobStore, redis_client: redis.Redis) -> None:
    submit(store, "a", "c")
    redis_client.lmove(host_queue_key("c"), inflight_key("c:1"), "RIGHT", "LEFT")  # died here
    store.forget_idle_hosts()  # the sweep saw c's list empty meanwhile
    assert store.stats().hosts == {}
    assert store.reap_executor("c:1", "executor lost", jobs.iso_now()) == []
    assert store.stats().hosts == {"c": {"executors": 0, "running": 0, "queued": 1}}


def test_the_sweep_drops_expired_jobs_waiting_for_a_host_that_never_came(
        store: JobStore, redis_client: redis.Redis) -> None:
    submit(store, "old", "never")
    submit(store, "new", "never")
    redis_client.delete(job_key("old"))  # as the retention TTL would
    store.prune_indexes()
    assert [json.loads(p)["id"] for p in redis_client.lrange(host_queue_key("never"), 0, -1)] == [
        "new"]
    assert store.stats().hosts == {"never": {"executors": 0, "running": 0, "queued": 1}}
