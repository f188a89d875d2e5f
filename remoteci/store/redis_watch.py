"""Redis lost/back as two log lines per outage, not one line per failed request."""

from __future__ import annotations

import threading
from collections.abc import Callable

from redis.exceptions import RedisError

from remoteci import events

PROBE_EVERY = 2.0  # seconds between pings while Redis is lost


class RedisWatch:
    """Remembers whether Redis is reachable and logs only the changes.

    With a `ping`, the first failure starts a thread that probes until Redis answers, so "back"
    is logged even when no request comes; without one, the caller reports success with back().
    """

    def __init__(self, component: str, ping: Callable[[], object] | None = None,
                 stop: threading.Event | None = None):
        self.component = component
        self._ping = ping
        self._stop = stop or threading.Event()
        self._lock = threading.Lock()
        self._lost = False

    def lost(self, exc: Exception) -> None:
        with self._lock:
            if self._lost:
                return
            self._lost = True
        events.error(self.component, f"redis unreachable: {exc}")
        if self._ping is not None:
            threading.Thread(target=self._probe, name="redis-probe", daemon=True).start()

    def back(self) -> None:
        with self._lock:
            if not self._lost:
                return
            self._lost = False
        events.info(self.component, "redis is reachable again")

    def _probe(self) -> None:
        assert self._ping is not None
        while not self._stop.wait(PROBE_EVERY):
            try:
                self._ping()
            except RedisError:
                continue
            self.back()
            return
