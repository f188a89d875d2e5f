"""The server's Redis client against a real redis-server, read back through redis-py."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable

import pytest
import redis

from remoteci.redis_client import Address, Redis, RedisConnectionError, ReplyError, parse_url
from tests.helpers import RedisServer


def test_urls_of_every_kind_parse() -> None:
    assert parse_url("redis://10.0.0.5:6380/2") == Address(host="10.0.0.5", port=6380, db=2)
    assert parse_url("redis://localhost") == Address(host="localhost")
    assert parse_url("rediss://:s%40cret@cache.example:6390/1") == Address(
        host="cache.example", port=6390, db=1, password="s@cret", tls=True)
    assert parse_url("redis://ci:pw@h/0") == Address(host="h", username="ci", password="pw")
    assert parse_url("unix:///run/redis/redis.sock?db=3") == Address(
        unix_path="/run/redis/redis.sock", db=3)


@pytest.mark.parametrize("url, message", [
    ("http://h:6379", "must start with redis://"),
    ("redis://h/x", "bad redis URL"),
    ("unix:///s?db=one", "bad redis URL"),
])
def test_bad_urls_are_refused_with_the_reason(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_url(url)


def test_commands_write_what_redis_py_reads(store_client: Redis, redis_client: redis.Redis) -> None:
    assert store_client.ping() is True
    assert store_client.set("s", "v", ex=100) is True and redis_client.ttl("s") == 100
    assert store_client.hset("h", mapping={"a": "1", "b": "é"}) == 2
    assert redis_client.hgetall("h") == {b"a": b"1", b"b": "é".encode()}
    assert store_client.hgetall("h") == {"a": "1", "b": "é"}  # replies are str, decoded
    assert store_client.hget("h", "a") == "1" and store_client.hget("h", "nope") is None
    assert store_client.sadd("set", "x", "y") == 2 and store_client.smembers("set") == {"x", "y"}
    redis_client.zadd("z", {"one": 1, "two": 2, "three": 3})
    assert store_client.zrevrangebyscore("z", "+inf", "-inf", start=0, num=2, withscores=True) == [
        ("three", 3.0), ("two", 2.0)]
    assert store_client.zrange("z", 0, 0) == ["one"] and store_client.zcard("z") == 3
    assert store_client.mget(["s", "missing"]) == ["v", None]
    assert store_client.exists("s", "h", "missing") == 2
    assert store_client.delete("s") == 1 and not redis_client.exists("s")


def test_a_reply_that_is_not_utf8_raises_and_the_next_command_is_in_step(
        store_client: Redis, redis_client: redis.Redis) -> None:
    redis_client.set("bad", b"\xff\xfe")
    redis_client.set("good", "ok")
    with pytest.raises(UnicodeDecodeError):
        store_client.mget(["bad", "good"])
    assert store_client.mget(["good"]) == ["ok"]


def test_blmove_waits_its_timeout_then_answers_none(store_client: Redis,
                                                     redis_client: redis.Redis) -> None:
    started = time.monotonic()
    assert store_client.blmove("src", "dst", 0.2, "RIGHT", "LEFT") is None
    assert time.monotonic() - started >= 0.2
    redis_client.lpush("src", "a", "b")
    assert store_client.blmove("src", "dst", 1, "RIGHT", "LEFT") == "a"
    assert redis_client.lrange("dst", 0, -1) == [b"a"]
    redis_client.set("not-a-list", "x")
    with pytest.raises(ReplyError, match="WRONGTYPE"):
        store_client.blmove("not-a-list", "dst", 0.1, "RIGHT", "LEFT")


def test_a_script_survives_a_script_flush_and_its_errors_leave_the_connection_usable(
        store_client: Redis, redis_client: redis.Redis) -> None:
    add = store_client.register_script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
    assert add(keys=["n"], args=[2]) == 2
    redis_client.script_flush()
    assert add(keys=["n"], args=[3]) == 5  # NOSCRIPT: sent again in full
    broken = store_client.register_script("return redis.call('NOSUCHCOMMAND')")
    with pytest.raises(ReplyError):
        broken()
    assert store_client.ping() is True and add(keys=["n"], args=[1]) == 6


def test_pipelines_answer_in_order_and_raise_the_first_error(store_client: Redis,
                                                              redis_client: redis.Redis) -> None:
    pipe = store_client.pipeline(transaction=True)
    pipe.set("k", "1").sadd("m", "a").hgetall("nothing")
    assert pipe.execute() == [True, 1, {}]
    pipe = store_client.pipeline(transaction=False)
    pipe.exists("k")
    pipe.zcard("m")  # a set, not a sorted set: WRONGTYPE
    with pytest.raises(ReplyError, match="WRONGTYPE"):
        pipe.execute()
    assert store_client.pipeline().execute() == []
    assert store_client.exists("k") == 1


def test_a_connection_the_server_closed_is_replaced_before_use(store_client: Redis,
                                                                redis_client: redis.Redis) -> None:
    assert store_client.ping() is True  # one idle pooled connection now
    killed = redis_client.client_kill_filter(_type="normal", skipme=True)
    assert killed >= 1
    assert store_client.ping() is True


def test_redis_down_is_an_error_at_once_and_up_again_is_used(
        make_redis: Callable[[], RedisServer]) -> None:
    rs = make_redis()
    client = Redis.from_url(rs.url, socket_connect_timeout=1, socket_timeout=2)
    assert client.ping() is True
    rs.stop()
    started = time.monotonic()
    with pytest.raises(RedisConnectionError):
        client.ping()
    assert time.monotonic() - started < 2  # refused, not waited for
    rs.start()
    assert client.ping() is True


def test_a_stalled_redis_is_an_error_after_the_timeout_and_a_blmove_waits_longer(
        make_redis: Callable[[], RedisServer]) -> None:
    rs = make_redis()
    client = Redis.from_url(rs.url, socket_connect_timeout=1, socket_timeout=0.3)
    assert client.blmove("src", "dst", 0.6, "RIGHT", "LEFT") is None  # past socket_timeout
    assert rs.proc is not None
    os.kill(rs.proc.pid, signal.SIGSTOP)
    try:
        with pytest.raises(RedisConnectionError, match="did not answer in time"):
            client.ping()
    finally:
        os.kill(rs.proc.pid, signal.SIGCONT)
    assert client.ping() is True  # on a new connection: the stalled one was closed


def test_a_forked_child_never_shares_the_parents_connection(store_client: Redis) -> None:
    parent_connection = store_client.execute_command("CLIENT", "ID")  # now idle in the pool
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = 0 if store_client.execute_command("CLIENT", "ID") != parent_connection else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert store_client.execute_command("CLIENT", "ID") == parent_connection  # still in step


def test_threads_each_get_their_own_replies(store_client: Redis, redis_client: redis.Redis) -> None:
    for n in range(8):
        redis_client.set(f"t{n}", n)
    wrong: list[str] = []

    def reader(n: int) -> None:
        for _ in range(300):
            got = store_client.mget([f"t{n}"])
            if got != [str(n)]:
                wrong.append(f"thread {n} read {got}")

    threads = [threading.Thread(target=reader, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not wrong and not any(t.is_alive() for t in threads)


def test_a_password_and_a_database_from_the_url_are_used(
        make_redis: Callable[[], RedisServer]) -> None:
    rs = make_redis()
    rs.client().config_set("requirepass", "p@ss")
    client = Redis.from_url(f"redis://:p%40ss@127.0.0.1:{rs.port}/3")
    client.hset("h", "f", "v")
    reader = redis.Redis(host="127.0.0.1", port=rs.port, db=3, password="p@ss")
    assert reader.hget("h", "f") == b"v"
    with pytest.raises(ReplyError, match="NOAUTH"):
        Redis.from_url(f"redis://127.0.0.1:{rs.port}/3").hget("h", "f")
    reader.close()
    client.close()
