"""The embedded default: a private redis-server on a Unix socket under the data dir, with AOF."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

import redis
from redis.exceptions import RedisError

from remoteci import events
from remoteci.system import proctree

START_TIMEOUT = 20.0
STOP_TIMEOUT = 20.0
SOCKET_PATH_MAX = 107  # sun_path holds 108 bytes including the terminating NUL


def _die_with_parent() -> None:
    proctree.die_with_parent(signal.SIGTERM)


class EmbeddedRedisError(RuntimeError):
    pass


class EmbeddedRedis:
    def __init__(self, directory: Path):
        self.directory = directory
        self.socket = directory / "redis.sock"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self) -> str:
        binary = shutil.which("redis-server")
        if binary is None:
            raise EmbeddedRedisError(
                "redis-server is not on PATH; install it (apt-get install redis-server) "
                "or set REMOTE_CI_REDIS_URL to an existing Redis")
        if len(str(self.socket).encode()) > SOCKET_PATH_MAX:
            raise EmbeddedRedisError(
                f"the socket path {self.socket} is too long for a Unix socket; "
                "use a shorter REMOTE_CI_DATA_DIR")
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.socket.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [binary, "--port", "0", "--unixsocket", str(self.socket), "--unixsocketperm", "600",
             "--dir", str(self.directory), "--appendonly", "yes", "--appendfsync", "everysec",
             "--save", "", "--daemonize", "no", "--logfile", str(self.directory / "redis.log"),
             "--pidfile", str(self.directory / "redis.pid")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C on the terminal reaches us; we stop redis last
            # If we are killed outright, redis still gets SIGTERM (and writes its AOF): a second
            # server must never find an old redis still holding the same files.
            preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + START_TIMEOUT
        client = redis.Redis(unix_socket_path=str(self.socket), socket_timeout=2,
                             socket_connect_timeout=2)
        while True:
            if self.proc.poll() is not None:
                raise EmbeddedRedisError(f"redis-server exited at start; see "
                                         f"{self.directory / 'redis.log'}")
            try:
                client.ping()
                break
            except RedisError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise EmbeddedRedisError("redis-server did not answer within "
                                             f"{START_TIMEOUT:.0f} s") from None
                time.sleep(0.05)
        client.close()
        events.info("redis", f"embedded redis-server pid {self.proc.pid} on {self.socket}")
        return self.url

    def stop(self) -> None:
        """SIGTERM makes redis write and fsync its AOF before it exits."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        events.info("redis", "embedded redis-server stopped")
