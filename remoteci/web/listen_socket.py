"""The API's listening socket, bound before anything else starts (and before waitress is imported:
`serve` forks its supervisor first, so the executors never carry the web server's modules)."""

from __future__ import annotations

import socket

from remoteci.config import Settings


def bind(settings: Settings) -> socket.socket:
    """Listen first, before anything else starts: a port in use fails at once and cleanly."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((settings.host, settings.port))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {settings.host}:{settings.port}: "
                                 f"{exc.strerror} (set REMOTE_CI_HOST / REMOTE_CI_PORT)") from None
    sock.listen(1024)
    sock.set_inheritable(False)  # never handed to an executor or a job
    return sock
