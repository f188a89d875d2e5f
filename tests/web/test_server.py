"""waitress through its public API only: no internals, bodies spooled in the data dir, quiet queues."""

from __future__ import annotations

import ast
import logging
import os
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from remoteci.web.server import QueueWarningLimiter, use_spool_dir
from tests.helpers import ROOT, TOKEN, MakeServer, Server, wait_until

PUBLIC = {"waitress.serve", "waitress.create_server"}


def _waitress_uses(tree: ast.AST) -> Iterator[str]:
    """Every name of waitress a module imports or reads (`waitress.x`, `from waitress.y import z`)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.split(".")[0] == "waitress")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "waitress":
            yield from (f"{node.module}.{a.name}" for a in node.names)
        elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
              and node.value.id == "waitress"):
            yield f"waitress.{node.attr}"


def test_no_module_uses_a_waitress_internal() -> None:
    used = {}
    for path in [ROOT / "remoteci.py", *sorted((ROOT / "remoteci").rglob("*.py"))]:
        for name in _waitress_uses(ast.parse(path.read_text(), str(path))):
            used.setdefault(name, []).append(path.relative_to(ROOT).as_posix())
    assert set(used) - {"waitress"} - PUBLIC == set(), used
    assert "waitress.create_server" in used  # the check sees the one real use


def test_the_checker_sees_internals() -> None:
    tree = ast.parse("import waitress.task\nfrom waitress.channel import HTTPChannel\n"
                     "import waitress\nwaitress.adjustments.Adjustments\n")
    assert set(_waitress_uses(tree)) == {"waitress.task", "waitress.channel.HTTPChannel",
                                         "waitress", "waitress.adjustments"}


def test_spooled_bodies_go_to_a_private_dir_in_the_data_dir(tmp_path: Path) -> None:
    before = tempfile.tempdir
    try:
        spool = use_spool_dir(tmp_path / "data")
        assert spool == tmp_path / "data" / "spool"
        assert stat.S_IMODE(spool.stat().st_mode) == 0o700
        with tempfile.TemporaryFile() as f:  # what waitress spools a body past inbuf_overflow to
            assert Path(os.readlink(f"/proc/self/fd/{f.fileno()}")).parent == spool
    finally:
        tempfile.tempdir = before


def test_waitress_queue_warnings_are_let_through_once_a_minute() -> None:
    limiter = QueueWarningLimiter(every=3600)
    record = logging.LogRecord("waitress.queue", logging.WARNING, __file__, 1,
                               "Task queue depth is %d", (3,), None)
    assert [limiter.filter(record) for _ in range(5)] == [True, False, False, False, False]
    assert QueueWarningLimiter(every=0).filter(record) and QueueWarningLimiter(every=0).filter(record)


def _spool_fds(server: Server) -> list[str]:
    """The API process' open files in the spool dir (unnamed: shown as `<dir>/#<inode> (deleted)`)."""
    assert server.proc is not None
    fd_dir = Path(f"/proc/{server.proc.pid}/fd")
    spool = str(server.data_dir / "spool") + "/"
    found = []
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed meanwhile
        if target.startswith(spool):
            found.append(target)
    return found


def test_a_large_body_is_spooled_in_the_data_dir_and_freed_on_hang_up(make_server: MakeServer) -> None:
    spool_server = make_server(env={"REMOTE_CI_MAX_UPLOAD_MB": "4"})
    with socket.create_connection(("127.0.0.1", spool_server.port), timeout=10) as sock:
        sock.sendall(b"POST /api/jobs/upload?script=true HTTP/1.1\r\nHost: x\r\n"
                     b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
                     b"Content-Type: application/gzip\r\nContent-Length: 3000000\r\n\r\n"
                     + b"\0" * 1_000_000)  # past waitress' inbuf_overflow (512 KiB)
        wait_until(lambda: _spool_fds(spool_server), 10, "the body to be spooled in <data>/spool")
    wait_until(lambda: not _spool_fds(spool_server), 10, "the spooled body to be freed")
    uploads = spool_server.data_dir / "uploads"
    assert not uploads.exists() or list(uploads.iterdir()) == []
