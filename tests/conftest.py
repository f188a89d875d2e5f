"""Fixtures: real redis-server and real server processes on 127.0.0.1, cleaned up by pid."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.helpers import RedisServer, Server


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
def make_server(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start servers with their own redis-server each; every one is stopped at teardown."""
    started: list[Server] = []
    redises: list[RedisServer] = []

    def make(command: str = "serve", env: dict[str, str] | None = None, redis_url: str | None = "new",
             base: Path | None = None, wait_workers: int | None = None, **kwargs: Any) -> Server:
        if redis_url == "new":
            rs = RedisServer(tmp_path / f"redis-{len(redises)}").start()
            redises.append(rs)
            redis_url = rs.url
        # A short drain by default, so a teardown never waits on a test's long-running job.
        server = Server(base or tmp_path / f"srv-{len(started)}", redis_url=redis_url, command=command,
                        env={"REMOTE_CI_DRAIN_TIMEOUT": "2", **(env or {})}, **kwargs)
        started.append(server)
        return server.start(wait_workers=wait_workers)

    yield make
    for server in started:
        server.shutdown()
    for rs in redises:
        rs.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One `serve` per test module with short limits, on its own redis-server."""
    base = tmp_path_factory.mktemp("server")
    rs = RedisServer(base / "redis").start()
    srv = Server(base / "srv", redis_url=rs.url,
                 env={"REMOTE_CI_JOB_TIMEOUT": "60", "REMOTE_CI_KILL_GRACE": "2",
                      "REMOTE_CI_CANCEL_GRACE": "2", "REMOTE_CI_DRAIN_TIMEOUT": "5"})
    srv.start(wait_workers=2)
    yield srv
    srv.shutdown()
    rs.stop()
