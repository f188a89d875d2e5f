"""Slots for long answers (log follows, large downloads), so they never take every waitress thread."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator

from remoteci.errors import ApiError


class StreamSlots:
    """Long responses (log follows, large downloads) hold a waitress thread each, so they are
    capped below the thread count (REMOTE_CI_MAX_FOLLOWERS) and can never starve the API."""

    def __init__(self, limit: int):
        self.limit = limit
        self._free = threading.BoundedSemaphore(limit)

    def hold(self, body: Iterable[bytes], instead: str) -> Iterable[bytes]:
        """`body`, holding a slot until the server closes it; a 503 saying `instead` if none is free."""
        held = self.try_hold(body)
        if held is None:
            raise ApiError(503, f"too many log followers and downloads at once "
                                f"(REMOTE_CI_MAX_FOLLOWERS={self.limit}); {instead}",
                           [("Retry-After", "5")])
        return held

    def try_hold(self, body: Iterable[bytes]) -> Iterable[bytes] | None:
        """`body`, holding a slot until the server closes it; None if none is free."""
        if not self._free.acquire(blocking=False):
            return None
        return ReleasingStream(body, self._free.release)


class ReleasingStream:
    """A streamed body that gives its slot back when the server closes it.

    WSGI servers call close() whatever happened, even when the client left before the first
    chunk, when a generator's own `finally` would never run.
    """

    def __init__(self, body: Iterable[bytes], release: Callable[[], None]):
        self._body = body
        self._release: Callable[[], None] | None = release

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._body)

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            if self._release is not None:
                self._release()
                self._release = None
