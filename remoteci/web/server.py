"""waitress, configured for this API through its public API and documented settings only.

Nothing here subclasses or reaches into waitress: a later waitress release keeps working as long
as `waitress.create_server` and its documented arguments do. What the server used to get by
patching waitress' internals now comes from the app, from plain settings, or from a proxy in
front (docs/reverse-proxy.md lists each):

- Threads: one fixed pool of REMOTE_CI_HTTP_THREADS. Long answers (log follows, large downloads)
  hold a stream slot each (http.StreamSlots, at most REMOTE_CI_MAX_FOLLOWERS, which config keeps
  below the thread count), so the difference always serves short answers.
- Streamed chunks: waitress 3 sends each write at once (its `send_bytes` is deprecated and 1 by
  default, i.e. flush on every write), so a followed log line reaches the client when written.
- A follower notices its client hung up: `channel_request_lookahead=1` keeps every connection
  read while its request runs, and waitress then sets `waitress.client_disconnected`.
- Request bodies: waitress reads a whole body before it calls the app, into memory up to
  `inbuf_overflow` and past that into an unnamed temp file from Python's `tempfile`. The API
  process points `tempfile` at `<data dir>/spool` (see use_spool_dir): a 500 MB upload never
  lands in a RAM-backed /tmp, and shares the data dir's disk, which is sized for uploads.
- Over `max_request_body_size` (the upload limit plus room for form fields), waitress refuses a
  body from its Content-Length alone, before reading it: 413, in waitress' own plain-text words.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import waitress

from remoteci import events
from remoteci.config import Settings
from remoteci.web.uploads import max_request_bytes

SPOOL_DIR_NAME = "spool"
# Settings that only a subclass of waitress' internals could honour; a proxy does it now.
RETIRED = {"REMOTE_CI_MAX_CONNECTIONS_PER_CLIENT": "limit connections per client address in the "
                                                   "proxy in front (docs/reverse-proxy.md)"}
QUEUE_WARN_SECONDS = 60.0


def idle_check_interval(idle_timeout: int) -> int:
    """How often waitress looks for idle connections: a quarter of the timeout, 1..30 s."""
    return max(1, min(30, idle_timeout // 4))


def use_spool_dir(data_dir: Path) -> Path:
    """Make request bodies that waitress spools to disk go to `<data_dir>/spool` (this process).

    waitress spools through `tempfile.TemporaryFile`, whose directory Python documents as
    `tempfile.tempdir`. The files are unnamed (O_TMPFILE on Linux): nothing is left over after
    a crash, and their space is freed when waitress drops the request.
    """
    spool = data_dir / SPOOL_DIR_NAME
    spool.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(spool, 0o700)
    tempfile.tempdir = str(spool)
    return spool


class QueueWarningLimiter(logging.Filter):
    """Lets through one of waitress' "Task queue depth" warnings a minute.

    waitress warns on every request that finds no idle thread, thousands of lines a second
    under load, where a short queue is normal.
    """

    def __init__(self, every: float = QUEUE_WARN_SECONDS):
        super().__init__()
        self.every = every
        self._last = -every

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        if now - self._last < self.every:
            return False
        self._last = now
        return True


_queue_limiter = QueueWarningLimiter()


def create(settings: Settings, app: Any, sock: socket.socket) -> Any:
    """A waitress server for `app` on a bound socket, not yet running (call .run())."""
    use_spool_dir(settings.data_dir)
    for name, instead in RETIRED.items():
        if os.environ.get(name):
            events.warning("api", f"{name} is no longer enforced by the server; {instead}")
    queue_logger = logging.getLogger("waitress.queue")
    if _queue_limiter not in queue_logger.filters:
        queue_logger.addFilter(_queue_limiter)
    return waitress.create_server(
        app, sockets=[sock],
        # Long answers are capped below this by the app's stream slots (config checks), so
        # they can never take every thread.
        threads=settings.http_threads,
        connection_limit=200, asyncore_use_poll=True,
        # A connection that sends nothing for this long (between requests, or in the middle of a
        # trickled body) is closed; waitress looks every cleanup_interval, so the bound is the sum.
        channel_timeout=settings.http_idle_timeout,
        cleanup_interval=idle_check_interval(settings.http_idle_timeout),
        # Over this, waitress refuses a body from its Content-Length alone, before reading it.
        max_request_body_size=max_request_bytes(settings.max_upload_mb * 1024 * 1024),
        recv_bytes=256 * 1024,  # upload bodies arrive in large reads, not 8 KB ones
        # Keep reading a connection while its request runs: a log follower then notices that
        # its client hung up (waitress.client_disconnected) and gives its slot back.
        channel_request_lookahead=1,
        clear_untrusted_proxy_headers=True, ident="remote-ci",
    )
