"""The long-running commands: `serve` (everything), `api` (HTTP only) and `worker` (executors only)."""

from __future__ import annotations

import contextlib
import gc
import os
import shutil
import signal
import socket
import threading
from types import FrameType
from typing import Any

from remoteci import events
from remoteci.config import ConfigError, Settings
from remoteci.http import App
from remoteci.queue import JobStore
from remoteci.routes import ROUTE_SETS
from remoteci.store.embedded_redis import EmbeddedRedis
from remoteci.store.redis_conn import connect
from remoteci.system import isolation, proctree
from remoteci.system import sd_notify as notify
from remoteci.web import listen_socket as listener
from remoteci.web import server as wsgi_server
from remoteci.worker.supervisor import supervisor_main

# Both sides' modules (redis-py, waitress, the app, the supervisor and executors) are imported
# here, before `serve` forks its supervisor and the supervisor its executors: the forks share
# those pages, so they count once in the memory (PSS) of the whole process tree.


def _store_factory(settings: Settings, url: str) -> JobStore:
    return JobStore(connect(url), settings.retention_seconds, settings.redis_min_replicas)


def _freeze_for_forks() -> None:
    """Keep the garbage collector's hands off every object that exists now: a collection in a
    fork would write to their pages and un-share them."""
    gc.collect()
    gc.freeze()


def _prepare_dirs(settings: Settings) -> None:
    # The data dir (logs, uploads, artifacts, the embedded redis' socket) is the server's alone.
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(PermissionError):  # not ours to change; then jobs are not isolated
        os.chmod(settings.data_dir, 0o700)
    for directory in (settings.logs_dir, settings.uploads_dir, settings.work_dir,
                      settings.workspace_dir):
        directory.mkdir(parents=True, exist_ok=True)


def _prepare_job_isolation(settings: Settings) -> None:
    """On a host that runs jobs: check once that they can run as their own users, or say loudly
    that they cannot."""
    if not isolation.can_switch_users():
        if settings.job_user is not None and settings.job_user.uid != os.geteuid():
            raise ConfigError("REMOTE_CI_JOB_USER is set, but this process may not switch users; "
                              "run the worker as root or grant it CAP_SETUID, CAP_SETGID, "
                              "CAP_KILL and CAP_CHOWN (see systemd/remote-ci-worker.service)")
        events.warning("isolation", "JOBS ARE NOT ISOLATED: they run as this server's own user "
                                    "and can read its token, its Redis and every project's files. "
                                    "Run the worker as root or with CAP_SETUID, CAP_SETGID, "
                                    "CAP_KILL and CAP_CHOWN to run each job as its own user.")
        return
    if shutil.which("setpriv") is None:
        raise ConfigError("setpriv (util-linux) is not on PATH; jobs cannot be started as their "
                          "own users without it (apt-get install util-linux)")
    blocked = isolation.unreachable_ancestor(str(settings.work_dir.parent))
    if blocked is not None:
        raise ConfigError(f"REMOTE_CI_WORK_DIR={settings.work_dir}: jobs run as their own users "
                          f"and cannot pass {blocked} (no search permission for others); choose "
                          "a work dir whose parents all allow o+x, such as /tmp/remote-ci")
    # Jobs pass through the work dir to their own dirs, but may not list or change it.
    os.chmod(settings.work_dir, 0o711)
    who = (f"user {settings.job_user.uid}" if settings.job_user is not None else
           "uids {}-{} (one per token owner)".format(*settings.job_uid_range))
    events.info("isolation", f"jobs run as {who}")


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
    app = App(settings, _store_factory(settings, url), ROUTE_SETS)
    return app, wsgi_server.create(settings, app, sock)


def _supervise(settings: Settings, url: str, notifier: notify.Notifier | None = None) -> int:
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
    _prepare_job_isolation(settings)
    url = settings.redis_url
    _freeze_for_forks()
    return _supervise(settings, url, notify.from_env())


def run_serve(settings: Settings) -> int:
    """API in this process, the supervisor in a forked child, and redis if none is configured."""
    sock = listener.bind(settings)
    _prepare_dirs(settings)
    _prepare_job_isolation(settings)
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
    _freeze_for_forks()
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
