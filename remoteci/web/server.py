"""waitress, configured for this API: thread and body limits, and JSON even for its own errors.

waitress answers some requests itself before the app sees them (a body over the limit, a
malformed request line); its stock answer is plain text. The API promises JSON errors, so its
error task is replaced by one that says the same thing as `{"error": ...}`.

Short answers and long ones want different channel settings. A short answer is best written
in one send() once complete, and its connection need not be read while the app runs. A long
one (a log follow, a large download) must send each chunk as it comes, and must keep reading
its connection so that a hang-up is noticed (waitress' channel lookahead) and a quiet
follower gives its thread back. Doing the latter for every request cost a send() per header
block and per body chunk from the worker thread (about 100 µs of CPU per short answer), so
channels start with the short settings and the app switches a request's channel to the long
ones when it starts a long answer (SEND_NOW in the environ), until that request ends.

Threads follow the same split. REMOTE_CI_HTTP_THREADS is the most there will be: the server
keeps that minus REMOTE_CI_MAX_FOLLOWERS for short answers, and a long answer adds a thread
for its own duration (it holds one). Short answers so always have the same threads free, and
few threads contend for the GIL. GET /api/jobs/<id> under wrk with 16 connections, CPU per
request (and context switches) by threads for short answers: 8: ~685 µs (14), 4: ~570 µs (9),
2: ~520 µs (5). The default is 4 (12 - 8): a multipart upload being read through or a stalled
Redis holds a short-answer thread for seconds, and 2 would leave too little room beside it.

waitress' `send_bytes` (how much output to buffer before sending) is deprecated as an
argument, with 1 as its default, which is what long answers want; it is set on the
adjustments object instead. Should a later waitress drop it, every answer is sent as written:
slower, never wrong.

An upload's body is spooled by waitress straight into the uploads dir (see spool.py).
"""

from __future__ import annotations

import copy
import json
import socket
import threading
import time
from typing import Any

import waitress
from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.task import ErrorTask, ThreadedTaskDispatcher, WSGITask

from remoteci import events
from remoteci.config import Settings
from remoteci.web.spool import SpoolingParser
from remoteci.web.uploads import max_request_bytes

# waitress' words for a malformed request, with what the client should change.
_HINTS = {
    "Invalid header": ": a header name or value holds a character HTTP does not allow (NUL or "
                      "another control character), or a line has no ':'; remove it",
    "Content-Length is invalid": ": it must be one whole number of bytes, with no sign, and "
                                 "sent once",
}


class _JsonErrorTask(ErrorTask):  # type: ignore[misc]
    def execute(self) -> None:
        error = self.request.error
        message = f"{error.reason}: {error.body}{_HINTS.get(error.body, '')}"
        if error.code == 413:
            message += " (REMOTE_CI_MAX_UPLOAD_MB sets the limit)"
        body = json.dumps({"error": message}).encode()
        self.status = f"{error.code} {error.reason}"
        self.response_headers.append(("Content-Type", "application/json"))
        self.response_headers.append(("X-Content-Type-Options", "nosniff"))
        if error.code == 401:
            self.response_headers.append(("WWW-Authenticate", 'Bearer realm="Remote CI"'))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


SEND_NOW = "remoteci.send_now"  # environ: call before a long answer's first write
# A short answer's headers and body are buffered and leave in one send() once the app returns
# (waitress' former default); a chunk this large is sent at once.
SHORT_SEND_BYTES = 18000


QUEUE_WARN_SECONDS = 60.0


class _Dispatcher(ThreadedTaskDispatcher):  # type: ignore[misc]
    """waitress' thread pool, with a thread added for each long answer while it lasts."""

    def __init__(self, short_threads: int):
        super().__init__()
        self._short = short_threads
        self._lent = 0
        self._closed = False
        self._count_lock = threading.Lock()
        self._warned_at = -QUEUE_WARN_SECONDS
        self.set_thread_count(short_threads)

    def lend(self) -> None:
        """A long answer starts holding its thread: start one in its place."""
        self._resize(+1)

    def give_back(self) -> None:
        self._resize(-1)

    def _resize(self, change: int) -> None:
        with self._count_lock:
            self._lent += change
            if not self._closed:  # no thread starts again once the server shuts down
                self.set_thread_count(self._short + self._lent)

    def shutdown(self, cancel_pending: bool = True, timeout: int = 5) -> bool:
        with self._count_lock:
            self._closed = True
        return bool(super().shutdown(cancel_pending, timeout))

    def add_task(self, task: Any) -> None:
        # As waitress' own, but a queue is normal under load with few threads: waitress warns
        # on every task that finds no idle thread (thousands of lines a second); this warns
        # once a minute, and only when the queue is deep.
        with self.lock:
            self.queue.append(task)
            self.queue_cv.notify()
            depth = len(self.queue)
        if depth > 4 * self._short and time.monotonic() - self._warned_at > QUEUE_WARN_SECONDS:
            self._warned_at = time.monotonic()
            events.warning("api", f"{depth} requests wait for an API thread "
                                  "(REMOTE_CI_HTTP_THREADS minus REMOTE_CI_MAX_FOLLOWERS are "
                                  "for short answers)")


class _Task(WSGITask):  # type: ignore[misc]
    """A request's task; it can switch to a long answer for its own duration."""

    _long = False

    def get_environment(self) -> dict[str, Any]:
        environ: dict[str, Any] = super().get_environment()
        environ[SEND_NOW] = self._send_now
        return environ

    def _send_now(self) -> None:
        if self._long:
            return
        self._long = True
        self.channel.server.task_dispatcher.lend()
        # Read by the main loop too (readable/handle_write): either settings object is valid
        # at any moment, and swapping a reference is atomic.
        self.channel.adj = self.channel.stream_adj

    def service(self) -> None:
        try:
            super().service()
        finally:
            if self._long:
                self.channel.adj = self.channel.server.adj  # the next request starts short
                self.channel.server.task_dispatcher.give_back()


# The host itself: a proxy in front (all its clients share its address) or local tools.
UNLIMITED_CLIENTS = frozenset({"127.0.0.1", "::1"})


def _busy_reply(limit: int) -> bytes:
    body = json.dumps({"error": f"this address already holds {limit} connections to the server "
                                "(REMOTE_CI_MAX_CONNECTIONS_PER_CLIENT); reuse or close one"}).encode()
    return (b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\n"
            b"X-Content-Type-Options: nosniff\r\nRetry-After: 5\r\nConnection: close\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


class _Channel(HTTPChannel):  # type: ignore[misc]
    task_class = _Task
    error_task_class = _JsonErrorTask
    stream_adj: Adjustments  # set on the class by create()
    per_client_limit = 0  # set on the class by create(); 0: no cap

    def __init__(self, server: Any, sock: socket.socket, addr: Any, adj: Adjustments,
                 map: Any = None) -> None:
        # One address may not take every connection slot (waitress' connection_limit is for
        # all clients together). Counted from waitress' own table of open channels, on the
        # main loop's thread, where channels are accepted.
        host = addr[0] if isinstance(addr, tuple) else ""
        limit = self.per_client_limit
        if limit and host not in UNLIMITED_CLIENTS and sum(
                1 for ch in list(server.active_channels.values())
                if isinstance(ch.addr, tuple) and ch.addr[0] == host) >= limit:
            try:
                sock.send(_busy_reply(limit))  # a fresh socket's buffer takes it whole
            except OSError:
                pass
            sock.close()
            return  # never registered: waitress forgets this object
        super().__init__(server, sock, addr, adj, map)

    def handle_close(self) -> None:
        # waitress leaves a request still being received (a client that hung up mid-upload)
        # to the garbage collector; its spool file goes now.
        request = self.request
        if request is not None:
            request.close()
        super().handle_close()


def _stream_adjustments(adj: Adjustments) -> Adjustments:
    stream = copy.copy(adj)
    stream.send_bytes = 1  # send each chunk now: a followed log line must not wait for a buffer
    stream.channel_request_lookahead = 1  # keep reading: a follower notices its client hung up
    return stream


def idle_check_interval(idle_timeout: int) -> int:
    """How often waitress looks for idle connections: a quarter of the timeout, 1..30 s."""
    return max(1, min(30, idle_timeout // 4))


def create(settings: Settings, app: Any, sock: socket.socket) -> Any:
    """A waitress server for `app` on a bound socket, not yet running (call .run())."""
    server = waitress.create_server(
        app, sockets=[sock],
        # One thread per request; log followers are capped below the thread count (config
        # checks) and each brings its own, so streams can never starve the API.
        threads=settings.http_threads,  # the most; see _Dispatcher
        _dispatcher=_Dispatcher(settings.http_threads - settings.max_followers),
        connection_limit=200, asyncore_use_poll=True,
        # A connection that sends nothing for this long (between requests, or in the middle of a
        # trickled body) is closed; waitress looks every cleanup_interval, so the bound is the sum.
        channel_timeout=settings.http_idle_timeout,
        cleanup_interval=idle_check_interval(settings.http_idle_timeout),
        # waitress spools bodies to a temp file before calling the app: over this, it refuses
        # them from the Content-Length alone, before reading them.
        max_request_body_size=max_request_bytes(settings.max_upload_mb * 1024 * 1024),
        recv_bytes=256 * 1024,  # upload bodies arrive in large reads, not 8 KB ones
        # channel_request_lookahead stays 0 (a channel is not read while its request runs)
        # and send_bytes is set below; long answers switch to _stream_adjustments.
        clear_untrusted_proxy_headers=True, ident="remote-ci",
    )
    server.adj.send_bytes = SHORT_SEND_BYTES
    # A class per server, since it carries this server's stream settings.
    server.channel_class = type("Channel", (_Channel,), {
        "stream_adj": _stream_adjustments(server.adj),
        "per_client_limit": settings.max_connections_per_client,
        "parser_class": type("Parser", (SpoolingParser,), {"spool_dir": settings.uploads_dir})})
    return server
