"""Sending a job's log to the API while the job writes it: the local file is the source.

A thread of the executor, not a process of its own: it must end before the executor records
the job's end (so no client sees a final status with a short log), and it reads the very file
the job writes, so a thread costs no hand-over and no IPC. The job writes to its file descriptor
as before and never waits for the network: a broken link delays the copy, never the job. The
file is the backlog: nothing is held in memory beyond one append, and nothing is lost while
the file is there (REMOTE_CI_MAX_LOG_MB bounds it: the job is killed past it, and its log
says so).

Each append names its offset (Content-Range); the API takes it only at its log's length and
answers that length, so after a reconnect the shipper goes on from what the API has: in order,
exactly once.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from remoteci import events
from remoteci.shipping import protocol
from remoteci.shipping.api_client import ApiClient, Refused, TooLarge, Unreachable

COMPONENT = "shipper"
POLL = 0.05  # seconds between looks at a quiet log: followers see a line within ~0.1 s
PIECE = protocol.MAX_LOG_APPEND  # bytes per append, the most in memory at once
RETRY_FIRST = 0.1
RETRY_MAX = 1.0  # a returning API gets the copy going again within a second
OUTAGE_NOTE_EVERY = 30.0  # seconds between worker log lines while the API stays unreachable


class LogShipper:
    """Ships one job's log file until told the job is over and every byte has arrived."""

    def __init__(self, client: ApiClient, job_id: str, path: Path):
        self.client = client
        self.job_id = job_id
        self.path = path
        self.sent = 0  # bytes the API has, as it last said
        self.piece = PIECE  # halved when something on the way answers 413
        self.failed: str | None = None  # why shipping stopped for good, if it did
        self._closing = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"ship-{job_id}", daemon=True)

    def start(self) -> LogShipper:
        self._thread.start()
        return self

    def finish(self, timeout: float) -> bool:
        """The job wrote its last byte: wait up to `timeout` for the rest to arrive."""
        self._closing.set()
        return self._done.wait(timeout)

    @property
    def complete(self) -> bool:
        return self._done.is_set() and self.failed is None

    def _run(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            self.failed = f"cannot read the local log: {exc}"
            self._done.set()
            return
        try:
            self._ship(fd)
        except Refused as exc:
            self.failed = str(exc)
            events.error(COMPONENT, f"job {self.job_id}: the API refused its log, which stays "
                                    f"on this host at {self.path}: {exc}")
        finally:
            os.close(fd)
            self.client.close()
            self._done.set()

    def _ship(self, fd: int) -> None:
        delay = RETRY_FIRST
        down_since: float | None = None
        noted = 0.0
        while True:
            closing = self._closing.is_set()  # read before the size: no byte written before
            size = os.fstat(fd).st_size       # the end was announced is missed
            if size <= self.sent:
                if closing:
                    return
                self._closing.wait(POLL)
                continue
            piece = os.pread(fd, min(self.piece, size - self.sent), self.sent)
            try:
                self.sent = self.client.append_log(self.job_id, self.sent, piece)
            except TooLarge:
                if self.piece <= protocol.MIN_PIECE:
                    raise
                self.piece //= 2
                events.warning(COMPONENT, f"job {self.job_id}: the API (or a proxy before it) "
                                          f"refused a log piece as too large; sending pieces of "
                                          f"{self.piece} bytes")
                continue
            except Unreachable as exc:
                now = time.monotonic()
                if down_since is None:
                    down_since = now
                if now - noted >= OUTAGE_NOTE_EVERY:
                    noted = now
                    events.warning(COMPONENT, f"job {self.job_id}: cannot reach the API ({exc}); "
                                              f"{size - self.sent} bytes of log wait on this "
                                              "host and are sent once it answers")
                time.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            if down_since is not None:
                events.info(COMPONENT, f"job {self.job_id}: the API answers again after "
                                       f"{time.monotonic() - down_since:.1f} s; log sent from "
                                       f"offset {self.sent}")
                down_since = None
            delay = RETRY_FIRST
            if self.sent > size:
                raise Refused(f"the API's copy has {self.sent} bytes, more than the "
                              f"{size} written here")

