"""The long-running commands: `serve` (everything), `api` (HTTP only) and `worker` (executors only)."""

from __future__ import annotations

import os
import signal
import socket
import threading
from types import FrameType
from typing import Any

from remoteci import events, listener, notify, proctree
from remoteci.config import Settings
from remoteci.embedded_redis import EmbeddedRedis
from remoteci.queue import JobStore, connect

# Each side imports its own modules: the web side (remoteci.http, wsgi_server, waitress) in
# _api(), the supervisor side (supervisor, executor, sources) in _supervise(). `serve` forks
# its supervisor before either, so no process holds the other side's modules (every MB counts
# several times: each executor is a fork of the supervisor).


def _store_factory(settings: Settings, url: str) -> JobStore:
    return JobStore(connect(url), settings.retention_seconds)


def _prepare_dirs(settings: Settings) -> None:
    for directory in (settings.logs_dir, settings.uploads_dir, settings.work_dir,
                      settings.workspace_dir):
        directory.mkdir(parents=True, exist_ok=True)


def _banner(settings: Settings, server: Any) -> str:
    port = server.effective_port
    url = f"http://{settings.host}:{port}"
    events.info("api", f"listening on {url}")
    events.info("api", "try: curl -H \"Authorization: Bearer $REMOTE_CI_TOKEN\" -d "
                       "'{\"workspace\": \"<dir under " + str(settings.workspace_dir) +
                       ">\", \"script\": \"make test\"}' " + url + "/api/jobs/rsync")
    return url


def _api(settings: Settings, url: str, sock: socket.socket) -> tuple[Any, Any]:
    """The WSGI app and its (not yet running) waitress server on the bound socket."""
    from remoteci import wsgi_server
    from remoteci.http import App

    app = App(settings, _store_factory(settings, url))
    return app, wsgi_server.create(settings, app, sock)


def _supervise(settings: Settings, url: str, notifier: notify.Notifier | None = None) -> int:
    from remoteci.supervisor import supervisor_main

    return supervisor_main(settings, lambda: _store_factory(settings, url), notifier)


def _announce(notifier: notify.Notifier, app: Any, url: str) -> None:
    # The socket already listens (listener.bind came first), so a client told "ready" is served.
    notifier.ready(f"listening on {url}")
    notify.start_watchdog(notifier, app.stopping)


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)  # waitress' run() catches SystemExit and closes its sockets


def run_api(settings: Settings) -> int:
    if settings.redis_url is None:
        events.error("api", "REMOTE_CI_REDIS_URL is required for `api` (only `serve` embeds redis)")
        return 2
    sock = listener.bind(settings)
    _prepare_dirs(settings)
    app, server = _api(settings, settings.redis_url, sock)
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGHUP, lambda *_: app.reload_tokens())
    notifier = notify.from_env()
    _announce(notifier, app, _banner(settings, server))
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    notifier.stopping("stopping")
    app.stopping.set()
    events.info("api", "stopped")
    return 0


def run_worker(settings: Settings) -> int:
    if settings.redis_url is None:
        events.error("worker", "REMOTE_CI_REDIS_URL is required for `worker` "
                               "(only `serve` embeds redis)")
        return 2
    _prepare_dirs(settings)
    url = settings.redis_url
    return _supervise(settings, url, notify.from_env())


def run_serve(settings: Settings) -> int:
    """API in this process, the supervisor in a forked child, and redis if none is configured."""
    sock = listener.bind(settings)
    _prepare_dirs(settings)
    embedded: EmbeddedRedis | None = None
    url = settings.redis_url
    if url is None:
        embedded = EmbeddedRedis(settings.redis_dir)
        url = embedded.start()
    try:
        return _serve_with(settings, url, sock)
    finally:
        if embedded is not None:
            embedded.stop()


def _serve_with(settings: Settings, url: str, sock: socket.socket) -> int:
    # Fork before any thread or connection exists in this process.
    supervisor_pid = os.fork()
    if supervisor_pid == 0:
        code = 1
        try:
            sock.close()  # the API's socket is not the supervisor's to hold open
            proctree.die_with_parent(signal.SIGTERM)
            code = _supervise(settings, url)
        finally:
            os._exit(code)

    app, server = _api(settings, url, sock)
    result = {"code": 0}
    stop_requested = threading.Event()
    notifier = notify.from_env()  # this process is systemd's main pid; the supervisor stays silent

    def on_stop(signum: int, frame: FrameType | None) -> None:
        # Keep the API up while jobs drain, so followers see them end; stop it afterwards.
        if not stop_requested.is_set():
            stop_requested.set()
            notifier.stopping("draining running jobs")
            events.info("serve", f"signal {signum}: draining, then stopping")
            os.kill(supervisor_pid, signal.SIGTERM)

    def watch_supervisor() -> None:
        _, status = os.waitpid(supervisor_pid, 0)
        if not stop_requested.is_set():
            events.error("serve", f"the supervisor exited unexpectedly (status {status}); "
                                  "stopping so the service manager can restart us")
            result["code"] = 1
        app.stopping.set()
        os.kill(os.getpid(), signal.SIGUSR1)

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, lambda *_: app.reload_tokens())
    signal.signal(signal.SIGUSR1, _raise_stop)
    threading.Thread(target=watch_supervisor, name="supervisor-watch", daemon=True).start()
    _announce(notifier, app, _banner(settings, server))
    server.run()
    events.info("serve", "stopped")
    return result["code"]
