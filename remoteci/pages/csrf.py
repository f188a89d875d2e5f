"""CSRF protection for the page forms: an expiring HMAC per action, plus a same-origin check.

Browsers resend HTTP Basic credentials on cross-site requests, so an authenticated form post
alone proves nothing. The form carries a token only our own page can show: an HMAC, with a key
derived from the API tokens (no extra secret to configure; rotating the tokens voids old forms),
of the action and an expiry time.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Sequence
from urllib.parse import urlsplit

TOKEN_TTL = 12 * 3600  # a page left open over a working day still has a working button


def derive_key(api_tokens: Sequence[str]) -> bytes:
    material = "\n".join(sorted(api_tokens)).encode()
    return hmac.new(b"remote-ci csrf v1", material, hashlib.sha256).digest()


def _mac(key: bytes, action: str, expires: int) -> str:
    return hmac.new(key, f"{action}\n{expires}".encode(), hashlib.sha256).hexdigest()


def make_token(key: bytes, action: str, now: float | None = None) -> str:
    expires = int(now if now is not None else time.time()) + TOKEN_TTL
    return f"{expires}.{_mac(key, action, expires)}"


def token_ok(key: bytes, action: str, presented: str, now: float | None = None) -> bool:
    expires_text, _, mac = presented.partition(".")
    if not expires_text.isdigit() or len(expires_text) > 12:
        return False
    expires = int(expires_text)
    if expires < (now if now is not None else time.time()):
        return False
    return hmac.compare_digest(mac.encode(), _mac(key, action, expires).encode())


def same_origin(origin: str, referer: str, host: str) -> bool:
    """Origin (or else Referer) must name this host; neither (curl, old clients) is let through,
    since the HMAC token is still required."""
    source = origin or referer
    if not source:
        return True
    if source == "null":
        return False
    return bool(host) and urlsplit(source).netloc.lower() == host.lower()
