"""Real processes for tests: redis-server on a free port, the server itself, an HTTP client."""

from __future__ import annotations

import atexit
import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "test-token-0123456789"
FINAL = ("success", "failed", "timeout", "error", "cancelled")


_work_root: Path | None = None


def work_root() -> Path:
    """Where servers keep job dirs: run as root, the tests isolate jobs as their own users,
    who must be able to pass every parent of their dirs; pytest's temp dirs are 0700."""
    global _work_root
    if _work_root is None:
        _work_root = Path(tempfile.mkdtemp(prefix="remoteci-tests-work-"))
        _work_root.chmod(0o711)
        atexit.register(shutil.rmtree, _work_root, True)
    return _work_root


def shared_dir() -> Path:
    """A dir every job may write to, whatever uid it runs as (a test's own /tmp)."""
    path = Path(tempfile.mkdtemp(dir=work_root()))
    path.chmod(0o1777)
    return path


def read_head(sock: socket.socket, timeout: float = 5) -> bytes:
    """Read from a raw connection until the end of an answer's head (or the connection's)."""
    sock.settimeout(timeout)
    reply = b""
    while b"\r\n\r\n" not in reply:
        chunk = sock.recv(4096)
        if not chunk:
            break
        reply += chunk
    return reply


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> Any:
    """Poll with a deadline; the only way tests wait."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def pids_with_arg(marker: str) -> list[int]:
    """Live processes whose command line contains `marker` (a unique argument of a test)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline and pid_alive(int(entry)):
            found.append(int(entry))
    return found


def process_tree(root: int) -> list[int]:
    """`root` and its live descendants, from /proc parent links."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, []))
    return found


class RedisServer:
    """A private redis-server on 127.0.0.1, stopped by pid."""

    def __init__(self, directory: Path, appendonly: bool = False, port: int | None = None,
                 binds: tuple[str, ...] = ()):
        self.directory = directory
        self.port = port or free_port()
        self.appendonly = appendonly
        self.binds = binds  # addresses besides 127.0.0.1 (a veth's, for a namespaced worker)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            ["redis-server", "--bind", " ".join(("127.0.0.1", *self.binds)),
             "--protected-mode", "no" if self.binds else "yes", "--port", str(self.port), "--save", "",
             "--appendonly", "yes" if self.appendonly else "no", "--dir", str(self.directory),
             "--daemonize", "no", "--logfile", str(self.directory / "redis.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = self.client()
        wait_until(lambda: _pings(client), 10, "redis-server to answer")
        return self

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Server:
    """`python remoteci.py <command>` as a real process, with its own dirs under `base`."""

    base: Path
    redis_url: str | None = None
    command: str = "serve"
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    wrapper: list[str] = field(default_factory=list)  # e.g. setpriv, to run as another user

    def __post_init__(self) -> None:
        self.workspace_dir = self.base / "ws"
        self.data_dir = self.base / "data"
        # Servers started on the same base (a restart) share their work dir.
        self.work_dir = work_root() / hashlib.sha256(str(self.base).encode()).hexdigest()[:16]
        self.stderr_path = self.base / f"{self.command}-{self.port}.log"
        self.workspace_dir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def environment(self) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.base),
            "LANG": "C.UTF-8", "REMOTE_CI_TOKEN": TOKEN, "REMOTE_CI_PORT": str(self.port),
            "REMOTE_CI_WORKSPACE_DIR": str(self.workspace_dir),
            "REMOTE_CI_DATA_DIR": str(self.data_dir), "REMOTE_CI_WORK_DIR": str(self.work_dir),
            "SERVER_ONLY_SECRET": "must-not-leak",
        }
        if self.redis_url:
            env["REMOTE_CI_REDIS_URL"] = self.redis_url
        env.update(self.env)
        return env

    def start(self, wait_workers: int | None = None) -> Server:
        self.stderr_file = open(self.stderr_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [*self.wrapper, sys.executable, str(ROOT / "remoteci.py"), self.command], cwd=self.base,
            env=self.environment(), stdin=subprocess.DEVNULL, stdout=self.stderr_file,
            stderr=subprocess.STDOUT)
        if self.command != "worker":
            wait_until(self._healthy, 20, f"{self.command} to answer /api/health\n{self.output()}")
        if wait_workers:
            wait_until(lambda: self.request("GET", "/api/stats").json()["workers"] >= wait_workers,
                       20, "executors to register")
        return self

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.command} exited with {self.proc.returncode}:\n{self.output()}")
        try:
            return self.request("GET", "/api/health", token=None).status == 200
        except OSError:
            return False

    def shutdown(self, grace: float = 20) -> None:
        """Teardown: SIGTERM, then SIGKILL to whatever of its process tree is still there."""
        if self.proc is None:
            return
        family = process_tree(self.proc.pid)
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        for pid in family:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        if not self.stderr_file.closed:
            self.stderr_file.close()

    def output(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                raise AssertionError(f"{self.command} did not stop within {timeout} s") from None
        self.stderr_file.close()
        return self.proc.returncode

    def request(self, method: str, path: str, body: bytes | str | dict[str, Any] | None = None,
                headers: Mapping[str, str] | None = None, token: str | None = TOKEN,
                timeout: float = 30) -> Response:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        all_headers = dict(headers or {})
        if token is not None:
            all_headers.setdefault("Authorization", f"Bearer {token}")
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        try:
            conn.request(method, path, body=data, headers=all_headers)
            resp = conn.getresponse()
            return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
        finally:
            conn.close()

    def make_workspace(self, name: str = "proj", files: Mapping[str, str] | None = None) -> Path:
        path = self.workspace_dir / name
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        for rel, text in (files or {"README": "hello\n"}).items():
            (path / rel).parent.mkdir(parents=True, exist_ok=True)
            (path / rel).write_text(text)
        return path

    def submit(self, script: str, workspace: str = "proj", **fields: Any) -> dict[str, Any]:
        if not (self.workspace_dir / workspace).exists():
            self.make_workspace(workspace)
        resp = self.request("POST", "/api/jobs/rsync", {"workspace": workspace, "script": script,
                                                       **fields})
        assert resp.status == 202, resp.body
        return dict(resp.json())

    def job(self, job_id: str) -> dict[str, Any]:
        resp = self.request("GET", f"/api/jobs/{job_id}")
        assert resp.status == 200, resp.body
        return dict(resp.json())

    def wait_status(self, job_id: str, statuses: tuple[str, ...], timeout: float = 30) -> dict[str, Any]:
        return dict(wait_until(lambda: (j := self.job(job_id))["status"] in statuses and j,
                               timeout, f"job {job_id} to reach {statuses}"))

    def wait_final(self, job_id: str, timeout: float = 30) -> dict[str, Any]:
        return self.wait_status(job_id, FINAL, timeout)

    def log(self, job_id: str) -> bytes:
        return self.request("GET", f"/api/jobs/{job_id}/logs").body


MakeServer = Callable[..., Server]
MakeRedis = Callable[..., RedisServer]


@contextmanager
def running_server(base: Path, env: dict[str, str], workers: int = 2) -> Iterator[Server]:
    """A `serve` on a redis-server of its own, for a module-scoped fixture; stopped by pid."""
    rs = RedisServer(base / "redis").start()
    srv = Server(base / "srv", redis_url=rs.url, env=env)
    try:
        srv.start(wait_workers=workers)
        yield srv
    finally:
        srv.shutdown()
        rs.stop()
