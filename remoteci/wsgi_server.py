"""waitress, configured for this API: thread and body limits, and JSON even for its own errors.

waitress answers some requests itself before the app sees them (a body over the limit, a
malformed request line); its stock answer is plain text. API.md promises JSON errors, so its
error task is replaced by one that says the same thing as `{"error": ...}`.
"""

from __future__ import annotations

import json
import socket
from typing import Any

import waitress
from waitress.channel import HTTPChannel
from waitress.task import ErrorTask

from remoteci.config import Settings
from remoteci.uploads import max_request_bytes


class _JsonErrorTask(ErrorTask):  # type: ignore[misc]
    def execute(self) -> None:
        error = self.request.error
        message = f"{error.reason}: {error.body}"
        if error.code == 413:
            message += " (REMOTE_CI_MAX_UPLOAD_MB sets the limit)"
        body = json.dumps({"error": message}).encode()
        self.status = f"{error.code} {error.reason}"
        self.response_headers.append(("Content-Type", "application/json"))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class _JsonErrorChannel(HTTPChannel):  # type: ignore[misc]
    error_task_class = _JsonErrorTask


def create(settings: Settings, app: Any, sock: socket.socket) -> Any:
    """A waitress server for `app` on a bound socket, not yet running (call .run())."""
    server = waitress.create_server(
        app, sockets=[sock],
        # One thread per request; log followers are capped below the thread count (config
        # checks), so streams can never starve the API.
        threads=settings.http_threads,
        connection_limit=200, channel_timeout=120, asyncore_use_poll=True,
        # waitress spools bodies to a temp file before calling the app: over this, it refuses
        # them from the Content-Length alone, before reading them.
        max_request_body_size=max_request_bytes(settings.max_upload_mb * 1024 * 1024),
        channel_request_lookahead=1,  # lets a log follower notice that its client hung up
        recv_bytes=256 * 1024,  # upload bodies arrive in large reads, not 8 KB ones
        send_bytes=1,  # send each chunk now: a followed log line must not wait for a buffer
        clear_untrusted_proxy_headers=True, ident="remote-ci",
    )
    server.channel_class = _JsonErrorChannel
    return server
