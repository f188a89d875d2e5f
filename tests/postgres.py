"""A throwaway PostgreSQL cluster for tests: initdb and pg_ctl from Debian's postgresql package,
listening only on a Unix socket in a temp dir, stopped by pid."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from tests.helpers import free_port, wait_until, work_root


def pg_bin(name: str) -> str | None:
    """Debian keeps the server binaries off PATH, under /usr/lib/postgresql/<version>/bin."""
    on_path = shutil.which(name)
    if on_path:
        return on_path
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else None


class PostgresServer:
    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(dir=work_root(), prefix="pg-"))
        self.data = self.base / "data"
        self.port = free_port()
        # initdb refuses to run as root: the cluster belongs to the postgres user then.
        self.user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
        self.pid: int | None = None

    @property
    def url(self) -> str:
        return self.database_url("postgres")

    def database_url(self, name: str) -> str:
        return f"postgresql://{self.user}@/{name}?host={self.base}&port={self.port}"

    def _run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        prefix = ["runuser", "-u", self.user, "--"] if os.geteuid() == 0 else []
        return subprocess.run([*prefix, *argv], capture_output=True, text=True, timeout=120,
                              check=False, stdin=subprocess.DEVNULL)

    def init(self) -> PostgresServer:
        if os.geteuid() == 0:
            shutil.chown(self.base, self.user, self.user)
        done = self._run(str(pg_bin("initdb")), "-D", str(self.data), "-A", "trust", "-U",
                         self.user, "--no-sync", "-E", "UTF8")
        assert done.returncode == 0, done.stderr
        return self.start()

    def start(self) -> PostgresServer:
        options = f"-k {self.base} -c listen_addresses='' -p {self.port} -c fsync=off"
        done = self._run(str(pg_bin("pg_ctl")), "-D", str(self.data), "-o", options,
                         "-l", str(self.base / "log"), "-w", "-t", "60", "start")
        assert done.returncode == 0, done.stderr + (self.base / "log").read_text()
        self.pid = int((self.data / "postmaster.pid").read_text().split()[0])
        return self

    def stop(self) -> None:
        """Fast shutdown by pid (SIGINT), waited for; the cluster stays on disk for a start."""
        if self.pid is None:
            return
        pid, self.pid = self.pid, None
        try:
            os.kill(pid, signal.SIGINT)
        except ProcessLookupError:
            return
        wait_until(lambda: not Path(f"/proc/{pid}").exists(), 60, "postgres to stop")

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.database_url(name)
