"""sd_notify over NOTIFY_SOCKET with the standard library: READY, STOPPING, STATUS and watchdog pings.

Without NOTIFY_SOCKET (not started by systemd with Type=notify) every call is a no-op.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field


def socket_address(raw: str) -> str | None:
    """NOTIFY_SOCKET as a connectable address: a path, or '@name' for an abstract socket."""
    if raw.startswith("@"):
        return "\0" + raw[1:]
    if raw.startswith("/"):
        return raw
    return None  # e.g. vsock: addresses, which we do not need


def watchdog_interval(env: Mapping[str, str], pid: int) -> float | None:
    """Seconds between WATCHDOG=1 pings: half of WATCHDOG_USEC, as sd_watchdog_enabled(3) advises."""
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    owner = env.get("WATCHDOG_PID", "")
    if usec <= 0 or (owner and owner != str(pid)):
        return None  # the watchdog belongs to another process (e.g. we are a forked child)
    return usec / 2_000_000


@dataclass
class Notifier:
    """Tells the service manager about our state; never raises, a lost message is no reason to die."""

    address: str | None = None
    interval: float | None = None
    _next_ping: float = field(default=0.0)

    def send(self, *lines: str) -> bool:
        if self.address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto("\n".join(lines).encode(), self.address)
            return True
        except OSError:
            return False

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def stopping(self, status: str) -> None:
        self.send("STOPPING=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def tick(self) -> None:
        """Ping the watchdog if half its interval has passed; call it from a loop that proves life."""
        if self.interval is None:
            return
        now = time.monotonic()
        if now >= self._next_ping:
            self._next_ping = now + self.interval
            self.send("WATCHDOG=1")


def from_env(env: Mapping[str, str] | None = None) -> Notifier:
    env = os.environ if env is None else env
    address = socket_address(env.get("NOTIFY_SOCKET", ""))
    return Notifier(address, watchdog_interval(env, os.getpid()) if address else None)


def start_watchdog(notifier: Notifier, stop: threading.Event) -> None:
    """Ping from a thread, for a process whose main loop belongs to someone else (waitress)."""
    interval = notifier.interval
    if interval is None:
        return

    def loop() -> None:
        while not stop.is_set():
            notifier.tick()
            stop.wait(interval / 2)

    threading.Thread(target=loop, name="watchdog", daemon=True).start()
