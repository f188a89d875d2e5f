"""One webhook attempt: resolve the host once, check the address, POST to exactly that address.

Connecting to the address that was checked (instead of letting http.client resolve the name a
second time) is what closes the window for DNS rebinding between the check and the connection.
Every socket operation is bounded by the timeout; redirects are not followed.
"""

from __future__ import annotations

import http.client
import socket
import ssl
from urllib.parse import urlsplit

from remoteci.webhooks.rules import Reply, Target, http_reply, refused_address


class _PinnedHTTP(http.client.HTTPConnection):
    """HTTP to a fixed address; the Host header still names the URL's host."""

    def __init__(self, target: Target, address: str, timeout: float):
        super().__init__(target.host, target.port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    """HTTPS to a fixed address; the certificate is checked against the URL's host (SNI too)."""

    def __init__(self, target: Target, address: str, timeout: float):
        self._tls = ssl.create_default_context()
        super().__init__(target.host, target.port, timeout=timeout, context=self._tls)
        self._address = address

    def connect(self) -> None:
        raw = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._tls.wrap_socket(raw, server_hostname=self.host)


def resolve(target: Target) -> str:
    """The one address to connect to; ValueError (final) when any address is not allowed,
    OSError (worth a retry) when the name does not resolve now."""
    infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    addresses = [str(info[4][0]) for info in infos]
    if not addresses:
        raise OSError(f"{target.host} has no address")
    for address in addresses:
        reason = refused_address(target, address)
        if reason is not None:
            raise ValueError(reason)
    return addresses[0]


def post(target: Target, url: str, body: bytes, headers: dict[str, str], timeout: float) -> Reply:
    try:
        address = resolve(target)
    except ValueError as exc:
        return Reply(None, str(exc), retryable=False)
    except OSError as exc:
        return Reply(None, f"cannot resolve {target.host}: {exc}", retryable=True)
    parts = urlsplit(url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    kind = _PinnedHTTPS if target.scheme == "https" else _PinnedHTTP
    conn = kind(target, address, timeout)
    try:
        conn.request("POST", path, body=body, headers=headers)
        return http_reply(conn.getresponse().status)
    except TimeoutError:
        return Reply(None, f"no answer within {timeout:g} s", retryable=True)
    except (OSError, http.client.HTTPException) as exc:
        return Reply(None, f"connection failed: {exc or type(exc).__name__}", retryable=True)
    finally:
        conn.close()
