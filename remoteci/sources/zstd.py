"""zstd-compressed uploads, unpacked through the `zstd` program in a pipe.

Python 3.11 has no zstd in the standard library. The `zstd` program (Debian's `zstd` package,
by zstd's own authors) is used rather than the `zstandard` PyPI binding: the clients need the
program anyway to compress on every core (`zstd -T0`), it adds no compiled dependency to the
server's venv, and decompressing in a process of its own keeps its memory out of the executor
and lets it run on another core while tarfile parses. What it writes goes through the same
tar checks as a gzip upload (archives.py); only the decompression differs.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from remoteci.errors import SourceError

MAGIC = b"\x28\xb5\x2f\xfd"  # a zstd frame; skippable frames are not what a client sends
# zstd's own default cap on the window a frame may ask for, said out loud: a hostile frame
# cannot make the decompressor take more memory than this.
MEMORY_LIMIT = "128MB"
_STDERR_BYTES = 2000


def available() -> bool:
    """Whether this host can unpack zstd uploads (GET /api/health says so to the clients)."""
    return shutil.which("zstd") is not None


@contextmanager
def decompressed(archive: Path) -> Iterator[IO[bytes]]:
    """The decompressed bytes of `archive` as a stream; a zstd that fails raises SourceError.

    The caller may stop reading early (tar ends at its end marker, or a member is refused):
    the process is then killed, never left behind, and only a failure zstd reported by itself
    counts as the archive's fault.
    """
    try:
        proc = subprocess.Popen(
            ["zstd", "-d", "-c", "-q", f"--memory={MEMORY_LIMIT}", "--", str(archive)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            close_fds=True)
    except FileNotFoundError:
        raise SourceError("this server has no zstd program to unpack a .tar.zst upload; send a "
                          ".tar.gz instead, or ask the operator to install zstd") from None
    assert proc.stdout is not None and proc.stderr is not None
    failed: str | None = None
    try:
        yield proc.stdout
    finally:
        code = proc.poll()  # before any kill: only an exit of its own says the data was bad
        if code is None:
            proc.kill()
        proc.wait()
        if code is not None and code > 0:
            message = proc.stderr.read(_STDERR_BYTES).decode(errors="replace").strip()
            failed = message.replace("\n", " ") or f"zstd exited with {code}"
        proc.stdout.close()
        proc.stderr.close()
        if failed is not None:
            raise SourceError(f"archive is truncated or corrupt: {failed}; send a complete "
                              ".tar.zst archive")
