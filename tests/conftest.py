"""Fixtures: real redis-server and real server processes on 127.0.0.1, cleaned up by pid."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from remoteci.store.redis_conn import Client as Redis
from remoteci.store.redis_conn import connect
from tests.helpers import RedisServer, Server, running_server
from tests.postgres import PostgresServer, pg_bin


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis_server.client()
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def store_client(redis_client: redis.Redis, redis_server: RedisServer) -> Iterator[Redis]:
    """The server's own client, on the flushed redis that `redis_client` (redis-py) reads."""
    client = connect(redis_server.url)
    yield client
    client.close()


@pytest.fixture
def make_redis(tmp_path: Path) -> Iterator[Callable[[], RedisServer]]:
    """Start redis-servers (for a server each, or shared by several); stopped at teardown."""
    started: list[RedisServer] = []

    def make() -> RedisServer:
        started.append(RedisServer(tmp_path / f"redis-{len(started)}").start())
        return started[-1]

    yield make
    for rs in started:
        rs.stop()


@pytest.fixture
def make_server(tmp_path: Path, make_redis: Callable[[], RedisServer]) -> Iterator[Callable[..., Server]]:
    """Start servers, each on a redis-server of its own unless given one; every one is stopped
    at teardown, before the redis-servers (make_redis tears down after us)."""
    started: list[Server] = []

    def make(command: str = "serve", env: dict[str, str] | None = None, redis_url: str | None = "new",
             base: Path | None = None, wait_workers: int | None = None, **kwargs: Any) -> Server:
        if redis_url == "new":
            redis_url = make_redis().url
        # A short drain by default, so a teardown never waits on a test's long-running job.
        server = Server(base or tmp_path / f"srv-{len(started)}", redis_url=redis_url, command=command,
                        env={"REMOTE_CI_DRAIN_TIMEOUT": "2", **(env or {})}, **kwargs)
        started.append(server)
        return server.start(wait_workers=wait_workers)

    yield make
    for server in started:
        server.shutdown()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One `serve` per test module with short limits, on its own redis-server."""
    with running_server(tmp_path_factory.mktemp("server"),
                        {"REMOTE_CI_JOB_TIMEOUT": "60", "REMOTE_CI_KILL_GRACE": "2",
                         "REMOTE_CI_CANCEL_GRACE": "2", "REMOTE_CI_DRAIN_TIMEOUT": "5"}) as srv:
        yield srv


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    if pg_bin("initdb") is None:
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    server = PostgresServer().init()
    yield server
    server.destroy()


@pytest.fixture(params=["sqlite", "postgresql"])
def history_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same tests on both databases: a fresh SQLite file or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite://{tmp_path}/history.sqlite3"
    pg: PostgresServer = request.getfixturevalue("postgres_server")
    return pg.create_database(f"t_{os.urandom(6).hex()}")
