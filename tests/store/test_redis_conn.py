"""Reaching Redis: the URL forms, and the client's behaviour against real redis-servers."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import pytest
import redis

from remoteci import jobs
from remoteci.queue import JobStore, NotReplicated, job_key
from remoteci.store.redis_conn import DirectUrl, SentinelUrl, connect, parse
from tests.helpers import RedisServer, wait_until


@pytest.mark.parametrize("url", ["redis://10.0.0.5:6380/2", "redis://localhost",
                                 "rediss://:s%40cret@cache.example:6390/1", "redis://ci:pw@h/0",
                                 "unix:///run/redis/redis.sock?db=3"])
def test_urls_of_one_redis_are_passed_to_redis_py(url: str) -> None:
    assert parse(url) == DirectUrl(url)


def test_a_sentinel_url_names_every_sentinel_the_service_the_db_and_the_login() -> None:
    assert parse("redis+sentinel://ci:p%40ss@s1:26380,s2,[::1]:26381/main/2") == SentinelUrl(
        sentinels=(("s1", 26380), ("s2", 26379), ("::1", 26381)), service="main", db=2,
        username="ci", password="p@ss")
    assert parse("redis+sentinel://:pw@10.0.0.1:26379/main") == SentinelUrl(
        sentinels=(("10.0.0.1", 26379),), service="main", password="pw")
    assert parse("redis+sentinel://h/svc/") == SentinelUrl(sentinels=(("h", 26379),), service="svc")


@pytest.mark.parametrize("url, message", [
    ("http://h:6379", "must start with redis://"),
    ("localhost:6379", "must start with redis://"),
    ("redis://h/x", "database 'x' is not a number"),
    ("unix:///s?db=one", "Invalid value for 'db'"),
    ("redis+sentinel://s1:26379", "service name is missing"),
    ("redis+sentinel://s1:26379/", "service name is missing"),
    ("redis+sentinel://s1:port/main", "port of Sentinel 's1:port' is not a number"),
    ("redis+sentinel://s1:99999/main", "port of Sentinel 's1:99999'"),
    ("redis+sentinel://s1,,s2/main", "Sentinel '' is not host"),
    ("redis+sentinel://s1/main/zero", "database 'zero' is not a number"),
    ("redis+sentinel://s1/main/0/extra", "too many path parts"),
    ("redis+sentinel://s1/main?db=1", "no query"),
    ("redis+sentinel://secret@s1/main", "give the password as"),
])
def test_bad_urls_are_refused_with_the_reason(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        parse(url)
    assert "secret" not in str(info.value)


def test_replies_are_text(store_client: redis.Redis, redis_client: redis.Redis) -> None:
    redis_client.hset("h", mapping={"a": "1", "b": "é"})
    assert store_client.hgetall("h") == {"a": "1", "b": "é"}
    assert store_client.smembers("nothing") == set()


def test_redis_down_is_an_error_at_once_and_up_again_is_used(
        make_redis: Callable[[], RedisServer]) -> None:
    """Outages give 503 and heal by themselves: an error in well under the API's patience
    (no retries with backoff), and the first command after Redis is back succeeds."""
    rs = make_redis()
    client = connect(rs.url)
    assert client.ping() is True
    rs.stop()
    started = time.monotonic()
    with pytest.raises(redis.RedisError):
        client.ping()
    assert time.monotonic() - started < 2  # refused, not retried
    rs.start()
    assert client.ping() is True


def test_a_password_and_a_database_from_the_url_are_used(
        make_redis: Callable[[], RedisServer]) -> None:
    rs = make_redis()
    rs.client().config_set("requirepass", "p@ss")
    client = connect(f"redis://:p%40ss@127.0.0.1:{rs.port}/3")
    client.hset("h", "f", "v")
    reader = redis.Redis(host="127.0.0.1", port=rs.port, db=3, password="p@ss")
    assert reader.hget("h", "f") == b"v"
    with pytest.raises(redis.AuthenticationError):
        connect(f"redis://127.0.0.1:{rs.port}/3").hget("h", "f")
    reader.close()
    client.close()


def test_a_forked_child_never_shares_the_parents_connection(store_client: redis.Redis) -> None:
    parent_connection = store_client.client_id()  # now idle in the pool
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = 0 if store_client.client_id() != parent_connection else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert store_client.client_id() == parent_connection  # still in step


def _enqueue(store: JobStore, job_id: str) -> int:
    record = {"id": job_id, "mode": "rsync", "status": jobs.QUEUED, "script": "true"}
    return store.enqueue(record, {"id": job_id, "mode": "rsync"}, max_queue=100)


def test_min_replicas_answers_only_once_a_replica_has_the_job(
        make_redis: Callable[[], RedisServer]) -> None:
    primary, replica = make_redis(), make_redis()
    store = JobStore(connect(primary.url), 3600, min_replicas=1)
    with pytest.raises(NotReplicated, match=r"only 0 of the 1 Redis replicas"):
        _enqueue(store, "alone")  # no replica: stored on the primary, but not confirmed
    assert primary.client().hget(job_key("alone"), "status") == b"queued"
    replica.client().replicaof("127.0.0.1", primary.port)
    wait_until(lambda: replica.client().info("replication")["master_link_status"] == "up", 20,
               "the replica to finish its first sync")
    assert _enqueue(store, "copied") == 2
    assert wait_until(lambda: replica.client().hget(job_key("copied"), "status"), 5,
                      "the replica to hold the job") == b"queued"
