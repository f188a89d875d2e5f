"""sd_notify as systemd sees it: datagrams on NOTIFY_SOCKET from real serve/worker processes."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from remoteci.system.sd_notify import socket_address, watchdog_interval
from tests.helpers import Server


class NotifySocket:
    """The receiving end systemd would hold: an AF_UNIX datagram socket."""

    def __init__(self, address: str):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.messages: list[str] = []

    def wait_for(self, line: str, timeout: float) -> list[str]:
        """Read until a message holding `line` arrives; return that message's lines."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                message = self.sock.recv(4096).decode()
            except TimeoutError:
                break
            self.messages.append(message)
            if line in message.split("\n"):
                return message.split("\n")
        raise AssertionError(f"no {line} within {timeout} s; got {self.messages}")


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[str, NotifySocket]]:
    path = str(tmp_path / "notify.sock")
    receiver = NotifySocket(path)
    yield path, receiver
    receiver.sock.close()


def test_serve_is_ready_only_when_it_answers_and_says_stopping_on_sigterm(
        make_server: Callable[..., Server], notify_socket: tuple[str, NotifySocket]) -> None:
    path, receiver = notify_socket
    srv = make_server(env={"NOTIFY_SOCKET": path})
    ready = receiver.wait_for("READY=1", 10)
    assert any(line.startswith("STATUS=listening on http://") for line in ready)
    assert srv.request("GET", "/api/health", token=None).status == 200
    assert srv.proc is not None
    srv.proc.send_signal(signal.SIGTERM)
    receiver.wait_for("STOPPING=1", 10)
    assert srv.stop() == 0


def test_watchdog_pings_at_half_the_interval(make_server: Callable[..., Server],
                                             notify_socket: tuple[str, NotifySocket]) -> None:
    path, receiver = notify_socket
    make_server(env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"})
    receiver.wait_for("READY=1", 10)
    first = time.monotonic()
    receiver.wait_for("WATCHDOG=1", 2)
    receiver.wait_for("WATCHDOG=1", 2)
    assert time.monotonic() - first < 1.5


def test_worker_notifies_an_abstract_socket_once_executors_run(
        make_server: Callable[..., Server]) -> None:
    name = f"remote-ci-test-{os.getpid()}-{time.monotonic_ns()}"
    receiver = NotifySocket("\0" + name)
    try:
        srv = make_server(command="worker", env={"NOTIFY_SOCKET": "@" + name,
                                                 "REMOTE_CI_CONCURRENCY": "2"})
        ready = receiver.wait_for("READY=1", 15)
        assert "STATUS=2 executors started" in ready
        assert srv.proc is not None
        srv.proc.send_signal(signal.SIGTERM)
        receiver.wait_for("STOPPING=1", 10)
        assert srv.stop() == 0
    finally:
        receiver.sock.close()


def test_notify_socket_addresses() -> None:
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert socket_address("@abstract") == "\0abstract"
    assert socket_address("vsock:2:1234") is None


def test_watchdog_interval_is_half_and_only_for_its_pid() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}, 42) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "42"}, 42) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "7"}, 42) is None
    assert watchdog_interval({}, 42) is None
