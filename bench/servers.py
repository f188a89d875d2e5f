"""Start and stop the two servers under test: ours on the embedded default, and the celery peer.

Each runs in its own temp dirs on a free loopback port and is stopped by the exact pid we
started (ours) or by the peer's own stop.sh (which kills exactly the pids its run.sh recorded).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The reference design and the harness both servers are measured with live outside this
# repository; BENCH_PEERS_DIR says where.


def peers_dir() -> Path:
    """The folder holding the reference design (`celery_seed/`) and the harness (`bench.py`)."""
    named = os.environ.get("BENCH_PEERS_DIR")
    if not named:
        raise SystemExit("BENCH_PEERS_DIR is not set: name the folder that holds celery_seed/ "
                         "and bench.py (the reference design and the harness)")
    return Path(named).resolve()


CELERY_VENV = Path(os.environ.get("BENCH_CELERY_VENV", "/tmp/venv-celery"))
TOKEN = "bench-token-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_json(url: str, timeout: float = 5.0) -> object:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


@dataclass
class Server:
    """What a scenario needs to know about a running server."""

    name: str
    url: str
    workspace_root: Path
    base: Path
    root_pids: list[int] = field(default_factory=list)  # API + workers; redis is excluded later
    api_pid: int = 0

    def stop(self) -> None:
        raise NotImplementedError


@dataclass
class OurServer(Server):
    proc: subprocess.Popen[bytes] | None = None

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)  # drains, stops executors and redis, exits 0
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def start_ours(workspace_root: Path, extra_env: dict[str, str] | None = None,
               label: str = "ours", repo: Path = REPO) -> OurServer:
    base = Path(tempfile.mkdtemp(prefix=f"rci-bench-{label}-"))
    base.chmod(0o711)  # as root, jobs run as their own users and must pass it to the work dir
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("REMOTE_CI_")}
    env.update({
        "REMOTE_CI_TOKEN": TOKEN, "REMOTE_CI_HOST": "127.0.0.1", "REMOTE_CI_PORT": str(port),
        "REMOTE_CI_DATA_DIR": str(base / "data"), "REMOTE_CI_WORK_DIR": str(base / "work"),
        "REMOTE_CI_WORKSPACE_DIR": str(workspace_root), "REMOTE_CI_DRAIN_TIMEOUT": "5",
        # The growth scenario queues 1,001 jobs as one owner: past the default per-owner cap.
        "REMOTE_CI_MAX_QUEUED_PER_OWNER": "0",
        **(extra_env or {}),
    })
    err = open(base / "server.log", "wb")  # noqa: SIM115 - the child keeps it open
    proc = subprocess.Popen([sys.executable, str(repo / "remoteci.py"), "serve"], cwd=repo,
                            env=env, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
    server = OurServer(label, f"http://127.0.0.1:{port}", workspace_root, base,
                       [proc.pid], proc.pid, proc)
    _wait_ready(server, lambda: proc.poll() is None, base / "server.log")
    return server


def _wait_ready(server: Server, alive: object, logfile: Path, timeout: float = 60.0) -> None:
    """Healthy API and every executor registered, so the first job meets an idle server."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(alive) and not alive():
            raise RuntimeError(f"{server.name} exited at start; see {logfile}")
        try:
            stats = http_json(server.url + "/api/stats")
            if isinstance(stats, dict) and int(stats.get("workers") or 0) >= 2:
                return
        except OSError:
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"{server.name} not ready after {timeout:.0f} s; see {logfile}")


@dataclass
class PeerServer(Server):
    def stop(self) -> None:
        subprocess.run([str(peers_dir() / "celery_seed" / "stop.sh"), str(self.base)], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)


def ensure_celery_venv() -> Path:
    """The peer's venv lives in a cache path, built once from its lock file."""
    if not (CELERY_VENV / "bin" / "celery").exists():
        print(f"[bench] creating {CELERY_VENV} (once)", file=sys.stderr, flush=True)
        subprocess.run([shutil.which("python3") or sys.executable, "-m", "venv", str(CELERY_VENV)],
                       check=True)
        subprocess.run([str(CELERY_VENV / "bin" / "pip"), "install", "-q", "-r",
                        str(peers_dir() / "celery_seed" / "requirements.lock.txt")], check=True)
    return CELERY_VENV


def start_peer(workspace_root: Path, hard_limit: int | None = None,
               soft_limit: int | None = None, label: str = "celery") -> PeerServer:
    venv = ensure_celery_venv()
    base = Path(tempfile.mkdtemp(prefix=f"rci-bench-{label}-"))
    port, redis_port = free_port(), free_port()
    env = dict(os.environ, WORKSPACE_ROOT=str(workspace_root), VENV=str(venv))
    if hard_limit is not None:
        env["CI_TASK_TIME_LIMIT"] = str(hard_limit)
    if soft_limit is not None:
        env["CI_TASK_SOFT_TIME_LIMIT"] = str(soft_limit)
    result = subprocess.run([str(peers_dir() / "celery_seed" / "run.sh"), str(port), str(redis_port), TOKEN,
                             str(base)], env=env, capture_output=True, text=True, timeout=120)
    server = PeerServer(label, f"http://127.0.0.1:{port}", workspace_root, base)
    if result.returncode != 0:
        server.stop()
        raise RuntimeError(f"celery_seed did not start: {result.stderr[-2000:]}")
    pids = {n: int((base / "pids" / f"{n}.pid").read_text()) for n in ("gunicorn", "celery")}
    server.root_pids = list(pids.values())
    server.api_pid = pids["gunicorn"]
    return server


def cleanup(server: Server) -> None:
    server.stop()
    shutil.rmtree(server.base, ignore_errors=True)
