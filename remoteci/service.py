"""The long-running commands: `serve` (everything), `api` (HTTP only) and `worker` (executors only)."""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType

import waitress

from remoteci import events, proctree
from remoteci.config import Settings
from remoteci.embedded_redis import EmbeddedRedis
from remoteci.http import App
from remoteci.queue import JobStore, connect
from remoteci.supervisor import supervisor_main


def _store_factory(settings: Settings, url: str) -> JobStore:
    return JobStore(connect(url), settings.retention_seconds)


def _prepare_dirs(settings: Settings) -> None:
    for directory in (settings.logs_dir, settings.uploads_dir, settings.work_dir,
                      settings.workspace_dir):
        directory.mkdir(parents=True, exist_ok=True)


def _make_server(settings: Settings, app: App) -> waitress.server.BaseWSGIServer:
    # One thread per request; log followers are capped below the thread count (config checks),
    # so streams can never starve the API. The body limit leaves room for multipart framing.
    return waitress.create_server(  # type: ignore[no-any-return]
        app, host=settings.host, port=settings.port, threads=settings.http_threads,
        connection_limit=200, channel_timeout=120, asyncore_use_poll=True,
        channel_request_lookahead=1,  # lets a log follower notice that its client hung up
        recv_bytes=256 * 1024,  # upload bodies arrive in large reads, not 8 KB ones
        send_bytes=1,  # send each chunk now: a followed log line must not wait for a buffer
        max_request_body_size=(settings.max_upload_mb + 1) * 1024 * 1024,
        clear_untrusted_proxy_headers=True, ident="remote-ci",
    )


def _banner(settings: Settings, server: waitress.server.BaseWSGIServer) -> None:
    port = server.effective_port  # type: ignore[attr-defined]
    url = f"http://{settings.host}:{port}"
    events.info("api", f"listening on {url}")
    events.info("api", "try: curl -H \"Authorization: Bearer $REMOTE_CI_TOKEN\" -d "
                       "'{\"workspace\": \"<dir under " + str(settings.workspace_dir) +
                       ">\", \"script\": \"make test\"}' " + url + "/api/jobs/rsync")


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)  # waitress' run() catches SystemExit and closes its sockets


def run_api(settings: Settings) -> int:
    if settings.redis_url is None:
        events.error("api", "REMOTE_CI_REDIS_URL is required for `api` (only `serve` embeds redis)")
        return 2
    _prepare_dirs(settings)
    app = App(settings, _store_factory(settings, settings.redis_url))
    server = _make_server(settings, app)
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    _banner(settings, server)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
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
    return supervisor_main(settings, lambda: _store_factory(settings, url))


def run_serve(settings: Settings) -> int:
    """API in this process, the supervisor in a forked child, and redis if none is configured."""
    _prepare_dirs(settings)
    embedded: EmbeddedRedis | None = None
    url = settings.redis_url
    if url is None:
        embedded = EmbeddedRedis(settings.redis_dir)
        url = embedded.start()
    try:
        return _serve_with(settings, url)
    finally:
        if embedded is not None:
            embedded.stop()


def _serve_with(settings: Settings, url: str) -> int:
    # Fork before any thread or connection exists in this process.
    supervisor_pid = os.fork()
    if supervisor_pid == 0:
        code = 1
        try:
            proctree.die_with_parent(signal.SIGTERM)
            code = supervisor_main(settings, lambda: _store_factory(settings, url))
        finally:
            os._exit(code)

    app = App(settings, _store_factory(settings, url))
    server = _make_server(settings, app)
    result = {"code": 0}
    stop_requested = threading.Event()

    def on_stop(signum: int, frame: FrameType | None) -> None:
        # Keep the API up while jobs drain, so followers see them end; stop it afterwards.
        if not stop_requested.is_set():
            stop_requested.set()
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
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, _raise_stop)
    threading.Thread(target=watch_supervisor, name="supervisor-watch", daemon=True).start()
    _banner(settings, server)
    server.run()
    events.info("serve", "stopped")
    return result["code"]
