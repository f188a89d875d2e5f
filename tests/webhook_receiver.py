"""A real HTTP server on 127.0.0.1 that records webhook deliveries and answers as a test scripts it."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.helpers import wait_until


@dataclass(frozen=True)
class Delivery:
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes
    at: float  # time.monotonic() when the request arrived


class Receiver:
    """Per path, the first requests get the scripted (status, delay) answers, later ones 200."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._deliveries: list[Delivery] = []
        self._script: dict[str, list[tuple[int, float]]] = defaultdict(list)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])

    def start(self) -> Receiver:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def answer(self, path: str, *answers: tuple[int, float]) -> None:
        with self._lock:
            self._script[path].extend(answers)

    def received(self, path: str) -> list[Delivery]:
        with self._lock:
            return [d for d in self._deliveries if d.path == path]

    def wait_for(self, path: str, count: int = 1, timeout: float = 15) -> list[Delivery]:
        wait_until(lambda: len(self.received(path)) >= count, timeout,
                   f"{count} deliveries to {path}")
        return self.received(path)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                delivery = Delivery(self.path, {k.lower(): v for k, v in self.headers.items()},
                                    body, time.monotonic())
                with receiver._lock:
                    receiver._deliveries.append(delivery)
                    script = receiver._script[self.path]
                    status, delay = script.pop(0) if script else (200, 0.0)
                time.sleep(delay)
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:
                    pass  # the deliverer gave up waiting, as it should

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler
