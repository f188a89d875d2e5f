"""The Redis schema against a real redis-server: transitions are atomic and conditional."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
import redis

from remoteci import jobs
from remoteci.queue import QUEUE, JobStore, QueueFull, inflight_key, job_key
from remoteci.store.redis_conn import Client as Redis

TTL = 7 * 86400


@pytest.fixture
def store(store_client: Redis) -> JobStore:
    return JobStore(store_client, TTL)


def submit(store: JobStore, job_id: str, mode: str = "rsync", max_queue: int = 100,
           owner: str | None = None) -> str:
    record = {"id": job_id, "mode": mode, "status": "queued", "script": "true", "source": "p",
              "timeout": "60", "created_at": jobs.iso_now(), **({"owner": owner} if owner else {})}
    payload: dict[str, Any] = {"id": job_id, "mode": mode, "script": "true", "timeout": 60}
    store.enqueue(record, payload, max_queue)
    return json.dumps(payload, separators=(",", ":"), sort_keys=True)


def test_enqueue_stores_record_with_retention_ttl(store: JobStore, redis_client: redis.Redis) -> None:
    submit(store, "a")
    ttl = redis_client.ttl(job_key("a"))
    assert TTL - 5 <= ttl <= TTL
    job = store.get("a")
    assert job is not None and job["status"] == "queued" and job["queue_position"] == 1


def test_every_transition_renews_the_ttl(store: JobStore, redis_client: redis.Redis) -> None:
    payload = submit(store, "a")
    redis_client.expire(job_key("a"), 100)
    taken = store.take("ex1", 1)
    assert taken is not None and taken.claimed and taken.payload == payload
    assert redis_client.ttl(job_key("a")) > TTL - 5
    redis_client.expire(job_key("a"), 100)
    assert store.finish("ex1", "a", payload, "success", {"exit_code": "0"})
    assert redis_client.ttl(job_key("a")) > TTL - 5


def test_fifo_and_queue_positions(store: JobStore) -> None:
    payloads = [submit(store, f"j{i}") for i in range(5)]
    assert [store.get(f"j{i}")["queue_position"] for i in range(5)] == [1, 2, 3, 4, 5]  # type: ignore[index]
    taken = [store.take("ex1", 1) for _ in range(5)]
    assert [t.payload for t in taken if t is not None] == payloads
    assert store.take("ex1", 0.1) is None


def test_a_taken_job_lives_in_the_inflight_list_until_finished(store: JobStore,
                                                                redis_client: redis.Redis) -> None:
    payload = submit(store, "a")
    store.take("ex1", 1)
    assert redis_client.lrange(inflight_key("ex1"), 0, -1) == [payload.encode()]
    assert redis_client.llen(QUEUE) == 0
    assert store.get("a")["status"] == "running"  # type: ignore[index]
    store.finish("ex1", "a", payload, "failed", {"exit_code": "3"})
    assert redis_client.llen(inflight_key("ex1")) == 0
    job = store.get("a")
    assert job is not None and job["status"] == "failed" and job["exit_code"] == 3


def test_cancel_of_a_queued_job_removes_it_from_the_queue(store: JobStore,
                                                          redis_client: redis.Redis) -> None:
    submit(store, "a")
    submit(store, "b")
    assert store.cancel("a", jobs.iso_now()) == "dequeued"
    assert store.get("a")["status"] == "cancelled"  # type: ignore[index]
    assert store.get("b")["queue_position"] == 1  # type: ignore[index]
    assert [json.loads(p)["id"] for p in redis_client.lrange(QUEUE, 0, -1)] == ["b"]


def test_a_stale_entry_of_a_cancelled_job_is_not_claimed(
        store: JobStore, redis_client: redis.Redis) -> None:
    payload = submit(store, "a")
    assert store.cancel("a", jobs.iso_now()) == "dequeued"
    assert redis_client.llen(QUEUE) == 0
    redis_client.rpush(QUEUE, payload)  # a copy left behind, as by a requeue racing the cancel
    taken = store.take("ex1", 0.1)  # the claim reads the record, not the entry
    assert taken is not None and not taken.claimed and taken.status == "cancelled"
    assert taken.payload == payload
    assert store.get("a")["status"] == "cancelled"  # type: ignore[index]
    assert redis_client.llen(inflight_key("ex1")) == 0


def test_the_claim_records_when_and_where_the_job_started(store: JobStore) -> None:
    submit(store, "a")
    before = jobs.iso_now()
    taken = store.take("ex1", 1)
    assert taken is not None and taken.started_at is not None
    job = store.get("a")
    assert job is not None and job["started_at"] == taken.started_at and job["worker"] == "ex1"
    assert before[:19] <= taken.started_at[:19] <= jobs.iso_now()[:19]  # redis' clock is ours


def test_an_entry_that_is_not_a_job_is_left_for_the_executor_to_report(
        store: JobStore, redis_client: redis.Redis) -> None:
    for entry in ("not json", '{"id": 7}', '{"id": "../../x"}', "[1]"):
        redis_client.lpush(QUEUE, entry)
        taken = store.take("ex1", 1)
        assert taken is not None and taken.status == "malformed" and taken.payload == entry
        store.drop_inflight("ex1", entry)
    assert store.take("ex1", 0.05) is None


def test_a_script_flushed_from_redis_is_loaded_again_by_the_take(
        store: JobStore, redis_client: redis.Redis) -> None:
    submit(store, "a")
    submit(store, "b")
    assert store.take("ex1", 1) is not None  # loads the claim script
    redis_client.script_flush()
    taken = store.take("ex1", 1)
    assert taken is not None and taken.claimed and json.loads(taken.payload)["id"] == "b"


@pytest.mark.parametrize("epoch_ms", [
    0, 951_782_400_123, 951_868_799_999, 4_107_542_400_000, 1_709_164_800_500,
    1_735_689_599_999, 1_798_000_000_042, 253_402_300_799_999,
])
def test_the_lua_clock_writes_times_as_python_does(redis_client: redis.Redis, epoch_ms: int) -> None:
    # 2000-02-29, its last ms, 2100-03-01 (no leap day), 2024-02-29, a new year's eve, 9999
    from remoteci.queue import _LUA_ISO_TIME

    lua = _LUA_ISO_TIME + "return iso_time(tonumber(ARGV[1]), tonumber(ARGV[2]))"
    seconds, millis = divmod(epoch_ms, 1000)
    written = redis_client.eval(lua, 0, seconds, millis * 1000 + 321)
    expected = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{millis:03d}Z"
    assert written.decode() == expected == jobs.iso_time(seconds + (millis + 0.5) / 1000)


def test_cancel_of_running_and_finished_jobs(store: JobStore) -> None:
    payload = submit(store, "a")
    store.take("ex1", 1)
    assert store.cancel("a", jobs.iso_now()) == "running"
    assert store.cancel_requested("a")
    store.finish("ex1", "a", payload, "cancelled", {})
    assert store.cancel("a", jobs.iso_now()) == "cancelled"
    assert store.cancel("nope", jobs.iso_now()) == "missing"


def test_finish_of_a_job_already_ended_elsewhere_changes_nothing(store: JobStore) -> None:
    payload = submit(store, "a")
    store.take("ex1", 1)
    assert store.reap_executor("ex1", "executor lost: test", jobs.iso_now()) == ["a"]
    assert not store.finish("ex1", "a", payload, "success", {"exit_code": "0"})
    job = store.get("a")
    assert job is not None and job["status"] == "error" and job["error"] == "executor lost: test"


def test_reaping_requeues_a_taken_but_unclaimed_job_at_the_head(store: JobStore,
                                                               redis_client: redis.Redis) -> None:
    first = submit(store, "a")
    submit(store, "b")
    redis_client.lmove(QUEUE, inflight_key("ex1"), "RIGHT", "LEFT")  # an executor died here
    assert store.reap_executor("ex1", "executor lost", jobs.iso_now()) == []
    taken = store.take("ex2", 1)
    assert taken is not None and taken.payload == first


def test_dead_executors_are_those_without_heartbeat(store: JobStore, redis_client: redis.Redis) -> None:
    store.heartbeat("h1:1", {"id": "h1:1", "host": "h1"})
    store.heartbeat("h2:2", {"id": "h2:2", "host": "h2"})
    redis_client.delete("rci:executor:h2:2")
    assert store.dead_executors() == ["h2:2"]
    assert [e["id"] for e in store.live_executors()] == ["h1:1"]
    assert store.stats().workers == 1


def test_queue_bound(store: JobStore) -> None:
    submit(store, "a", max_queue=2)
    submit(store, "b", max_queue=2)
    with pytest.raises(QueueFull):
        submit(store, "c", max_queue=2)
    assert store.get("c") is None


def test_listing_filters_and_skips_expired(store: JobStore, redis_client: redis.Redis) -> None:
    for i in range(6):
        submit(store, f"r{i}", mode="rsync" if i % 2 else "git")
    redis_client.delete(job_key("r5"))
    assert [j["id"] for j in store.list_jobs(None, None, 10)] == ["r4", "r3", "r2", "r1", "r0"]
    assert [j["id"] for j in store.list_jobs(None, "git", 2)] == ["r4", "r2"]
    assert [j["id"] for j in store.list_jobs("queued", "rsync", 10)] == ["r3", "r1"]
    assert store.prune_indexes() == 1
    assert redis_client.zscore("rci:index:all", "r5") is None


def test_a_listing_shows_queue_positions_and_a_record_without_status_is_gone(
        store: JobStore, redis_client: redis.Redis) -> None:
    payload = submit(store, "a")
    submit(store, "b")
    submit(store, "c")
    store.take("ex1", 1)
    store.finish("ex1", "a", payload, "success", {"exit_code": "0"})
    listed = store.list_jobs(None, None, 10)
    assert [(j["id"], j["status"], j["queue_position"]) for j in listed] == [
        ("c", "queued", 2), ("b", "queued", 1), ("a", "success", None)]
    assert all("payload" not in j and "seq" not in j for j in listed)
    redis_client.delete(job_key("b"))
    redis_client.hset(job_key("b"), "webhook_status", "delivered")  # written after it expired
    assert store.get("b") is None
    assert [j["id"] for j in store.list_jobs(None, None, 10)] == ["c", "a"]


def test_an_owner_whose_jobs_all_expired_leaves_the_owner_filter(
        store: JobStore, redis_client: redis.Redis) -> None:
    submit(store, "a1", owner="team-a")
    submit(store, "a2", owner="team-a")
    submit(store, "b1", owner="team-b")
    assert store.owners() == ["team-a", "team-b"]
    redis_client.delete(job_key("a1"), job_key("b1"))
    assert store.prune_indexes() == 2
    assert store.owners() == ["team-a"]  # team-a still has a2
    assert [j["id"] for j in store.list_jobs(None, None, 10, owner="team-a")] == ["a2"]
    submit(store, "b2", owner="team-b")  # a returning owner is listed again at once
    assert store.owners() == ["team-a", "team-b"]


def test_stats_count_queued_running_and_finished(store: JobStore) -> None:
    payload = submit(store, "a")
    submit(store, "b")
    store.take("ex1", 1)
    store.finish("ex1", "a", payload, "success", {})
    stats = store.stats()
    assert (stats.queued, stats.running, stats.finished["success"]) == (1, 0, 1)


def test_the_same_idempotency_key_returns_the_first_job(store: JobStore, redis_client: redis.Redis) -> None:
    from remoteci.queue import AlreadySubmitted

    record = {"id": "a", "mode": "rsync", "status": "queued", "owner": "admin"}
    store.enqueue(record, {"id": "a"}, 100, "key-1")
    with pytest.raises(AlreadySubmitted) as info:
        store.enqueue({**record, "id": "b"}, {"id": "b"}, 100, "key-1")
    assert info.value.job_id == "a"
    assert store.get("b") is None and redis_client.llen(QUEUE) == 1
    store.enqueue({**record, "id": "c", "owner": "project-x"}, {"id": "c"}, 100, "key-1")
    assert store.get("c") is not None  # keys are per owner


def test_each_owner_gets_its_own_stable_uid_until_the_range_is_full(store: JobStore) -> None:
    assert store.job_uid("alpha", 70000, 70002) == 70000
    assert store.job_uid("beta", 70000, 70002) == 70001
    assert store.job_uid("alpha", 70000, 70002) == 70000, "stable"
    assert store.job_uid("gamma", 70000, 70002) == 70002
    assert store.job_uid("delta", 70000, 70002) is None, "full: no uid is ever shared"
    # A new range (the operator moved it) gives owners uids inside it, still one each.
    assert store.job_uid("beta", 80000, 80001) == 80000
    assert store.job_uid("alpha", 80000, 80001) == 80001
    assert store.job_uid("alpha", 70000, 70002) == 70000, "back in the old range: its old uid"


def test_a_take_whose_answer_was_lost_is_found_in_flight(store: JobStore,
                                                         redis_client: redis.Redis) -> None:
    claimed = submit(store, "claimed")
    assert store.take("ex1", 0.1) is not None  # as if its answer never came back
    unclaimed = submit(store, "unclaimed")
    redis_client.lmove(QUEUE, inflight_key("ex1"), "RIGHT", "LEFT")  # moved, never claimed
    found = store.left_in_flight("ex1")
    assert found is not None and found.claimed and found.payload == claimed
    assert [json.loads(p)["id"] for p in redis_client.lrange(QUEUE, 0, -1)] == ["unclaimed"]
    assert store.take("ex2", 0.1).payload == unclaimed  # type: ignore[union-attr]
    assert store.left_in_flight("ex3") is None
