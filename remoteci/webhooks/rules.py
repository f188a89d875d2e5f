"""The webhook rules: which URLs a submission may name, where a delivery may connect, how it is
signed, and when it is retried. Pure functions; the API and the deliverer both use them.

The allowlist (REMOTE_CI_WEBHOOK_ALLOW) is by name, so a token holder cannot make the server
probe addresses the operator did not list. DNS-rebinding stance:
  - an IP pattern (`127.0.0.1:*`, `10.1.2.*:8080`) matches only a URL whose host is that IP
    literal, and the delivery connects to exactly that IP;
  - a name pattern (`ci.example.com`, `*.internal:8080`) matches only host names; the name is
    resolved once per attempt and the delivery connects to the address it got, with no second
    lookup in between. Names that resolve to loopback, link-local (cloud metadata lives there),
    unspecified, multicast or reserved addresses, or to a cloud metadata service elsewhere, are
    refused, also when wrapped in 6to4, Teredo or NAT64: those need an explicit IP pattern.
A pattern without a port allows only the scheme's default port (80 for http, 443 for https).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import re
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any
from urllib.parse import urlsplit

from remoteci import jobs
from remoteci.errors import ApiError
from remoteci.pipelines.objects import pipeline_object

EVENT = "job.finished"
PIPELINE_EVENT = "pipeline.finished"
MAX_URL_CHARS = 2048
MIN_SECRET_CHARS = 16
DEFAULT_PORTS = {"http": 80, "https": 443}
# The delivery's own bookkeeping: shown on the job object, left out of the body it signs.
DELIVERY_FIELDS = ("webhook_status", "webhook_attempts")

_PATTERN_RE = re.compile(r"(?P<host>[a-z0-9.*-]+)(?::(?P<port>\d{1,5}|\*))?")
_LABEL_RE = re.compile(r"[a-z0-9-]{1,63}")
_TLD_RE = re.compile(r"[a-z][a-z0-9-]*")
_FIX = "set REMOTE_CI_WEBHOOK_ALLOW to comma-separated host[:port] patterns, e.g. " \
       "'ci.example.com,*.internal:8080,127.0.0.1:*'"


@dataclass(frozen=True)
class HostPattern:
    host: str  # lower case; `*` matches any run of characters
    port: str  # digits, "*", or "" for the scheme's default port

    @property
    def is_ip(self) -> bool:
        """`127.0.0.1` and `10.0.0.*` are IP patterns; `*` and `*.internal` are name patterns."""
        return _is_ipv4(self.host.replace("*", "0"))

    def matches(self, target: Target) -> bool:
        if self.is_ip != target.is_ip:
            return False  # a name pattern never lets an IP literal through, and vice versa
        if not fnmatchcase(target.host, self.host):
            return False
        if self.port == "*":
            return True
        return target.port == (int(self.port) if self.port else DEFAULT_PORTS[target.scheme])

    def __str__(self) -> str:
        return f"{self.host}:{self.port}" if self.port else self.host


@dataclass(frozen=True)
class Target:
    """Where a webhook URL points: what the allowlist and the connection need."""

    scheme: str
    host: str  # lower case, as written in the URL
    port: int

    @property
    def is_ip(self) -> bool:
        return _is_ipv4(self.host)

    @property
    def origin(self) -> str:
        """scheme://host:port: what the logs show, never the path (it may hold a secret)."""
        return f"{self.scheme}://{self.host}:{self.port}"


def parse_allowlist(raw: str | None) -> tuple[HostPattern, ...]:
    """REMOTE_CI_WEBHOOK_ALLOW; ValueError names the bad pattern and the fix."""
    patterns = []
    for item in (raw or "").split(","):
        item = item.strip().lower()
        if not item:
            continue
        match = _PATTERN_RE.fullmatch(item)
        if match is None or (match["host"].strip("*.") == "" and match["host"] != "*"):
            raise ValueError(f"REMOTE_CI_WEBHOOK_ALLOW: {item!r} is not a host[:port] pattern; "
                             "use letters, digits, '.', '-' and '*' (IPv6 literals are not "
                             "supported), e.g. '*.internal:8080'")
        port = match["port"] or ""
        if port.isdigit() and not 1 <= int(port) <= 65535:
            raise ValueError(f"REMOTE_CI_WEBHOOK_ALLOW: port {port} in {item!r} is not 1..65535")
        patterns.append(HostPattern(match["host"], port))
    return tuple(patterns)


def parse_target(url: str) -> Target:
    """Scheme, host and port of a webhook URL; ValueError says what is wrong with it."""
    if len(url) > MAX_URL_CHARS:
        raise ValueError(f"it is longer than {MAX_URL_CHARS} characters")
    if any(ch.isspace() or not ch.isprintable() for ch in url):
        raise ValueError("it contains spaces or control characters")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise ValueError("only http:// and https:// URLs are accepted")
    if "@" in parts.netloc:
        raise ValueError("user names and passwords in the URL are not accepted; "
                         "verify deliveries by their X-RemoteCI-Signature instead")
    host = (parts.hostname or "").lower()
    try:
        port = parts.port or DEFAULT_PORTS[scheme]
    except ValueError:
        raise ValueError("its port is not a number in 1..65535") from None
    if not (_is_ipv4(host) or _is_host_name(host)):
        raise ValueError(f"host {host!r} is not a host name or an IPv4 address")
    return Target(scheme, host, port)


def validate_webhook(value: Any, allow: tuple[HostPattern, ...], have_secret: bool) -> str | None:
    """The submission's `webhook` field; ApiError 400 names the field and the fix."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ApiError(400, "field 'webhook' must be a URL string such as "
                            "\"https://ci.example.com/hooks/remote-ci\"")
    if not allow:
        raise ApiError(400, "field 'webhook' is refused: this server has no webhook allowlist; "
                            f"the operator must {_FIX}")
    if not have_secret:
        raise ApiError(400, "field 'webhook' is refused: this server has no signing secret; "
                            "the operator must set REMOTE_CI_WEBHOOK_SECRET (at least "
                            f"{MIN_SECRET_CHARS} characters) so deliveries can be verified")
    try:
        target = parse_target(value)
    except ValueError as exc:
        raise ApiError(400, f"field 'webhook' is not usable: {exc}") from None
    if allowed_by(target, allow) is None:
        listed = ", ".join(str(p) for p in allow)
        raise ApiError(400, f"field 'webhook': {target.host}:{target.port} is not in the "
                            f"server's REMOTE_CI_WEBHOOK_ALLOW ({listed}); use one of those "
                            "hosts or ask the operator to add it")
    return value


def allowed_by(target: Target, allow: tuple[HostPattern, ...]) -> HostPattern | None:
    return next((p for p in allow if p.matches(target)), None)


def refused_address(target: Target, address: str) -> str | None:
    """Why a delivery may not connect to `address` for `target`; None when it may."""
    ip = ipaddress.ip_address(address)
    if target.is_ip:
        return None if ip == ipaddress.ip_address(target.host) else f"{address} is not {target.host}"
    ip, via = _embedded_ipv4(ip)
    kind = "cloud metadata" if ip in _METADATA else next(
        (k for k in ("loopback", "link_local", "unspecified", "multicast", "reserved")
         if getattr(ip, f"is_{k}")), None)
    if kind is None:
        return None
    return (f"{target.host} resolved to {address}, a {kind.replace('_', '-')} address{via}; "
            f"allow it by IP in REMOTE_CI_WEBHOOK_ALLOW to deliver there")


# Metadata services outside the link-local range: AWS's IPv6 one, GCP's IPv6 one, Alibaba's.
_METADATA = frozenset(ipaddress.ip_address(a) for a in ("fd00:ec2::254", "fd20:ce::254",
                                                         "100.100.100.200"))
# NAT64 prefixes (RFC 6052's well-known one and RFC 8215's local-use one) carry an IPv4 address
# in their last 32 bits; a NAT64 gateway connects to it.
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


def _embedded_ipv4(ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
                   ) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, str]:
    """The IPv4 address an IPv6 one reaches through a translator (and how), else itself: the
    rules apply to where the packets end up, not to the wrapping."""
    if isinstance(ip, ipaddress.IPv4Address):
        return ip, ""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped, ""
    if ip.sixtofour is not None:
        return ip.sixtofour, " (through 6to4)"
    if ip.teredo is not None:
        return ip.teredo[1], " (through Teredo)"
    if any(ip in net for net in _NAT64):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF), " (through NAT64)"
    return ip, ""


def sign(body: bytes, secret: str) -> str:
    """The X-RemoteCI-Signature value: HMAC-SHA256 of the exact body bytes."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def delivery_body(record: dict[str, str]) -> bytes:
    """The final job (or pipeline) object, without the delivery's own bookkeeping (it changes
    per attempt)."""
    whole = pipeline_object(record) if is_pipeline(record) else jobs.job_object(record)
    obj = {k: v for k, v in whole.items() if k not in DELIVERY_FIELDS}
    return json.dumps(obj, separators=(",", ":")).encode()


def is_pipeline(record: dict[str, str]) -> bool:
    """A pipeline's hash holds its plan (`spec`, see pipelines/lua.py); a job's never does."""
    return "spec" in record


def delivery_event(record: dict[str, str]) -> str:
    return PIPELINE_EVENT if is_pipeline(record) else EVENT


def delivery_headers(body: bytes, secret: str, delivery_id: str,
                     event: str = EVENT) -> dict[str, str]:
    return {"Content-Type": "application/json", "User-Agent": "remote-ci",
            "X-RemoteCI-Event": event, "X-RemoteCI-Delivery": delivery_id,
            "X-RemoteCI-Signature": sign(body, secret)}


@dataclass(frozen=True)
class Reply:
    """What one attempt got: an HTTP status, or None with why there was none."""

    status: int | None
    detail: str
    retryable: bool


def http_reply(status: int) -> Reply:
    """2xx delivered; 429 and 5xx are worth another try; any other answer is final."""
    return Reply(status, f"HTTP {status}", status == 429 or status >= 500)


@dataclass(frozen=True)
class Decision:
    status: str  # the job's webhook_status
    retry_in: float | None  # seconds until the next attempt, None when this was the last


def decide(reply: Reply, attempts: int, max_attempts: int, first_delay: float) -> Decision:
    """Exponential backoff: first_delay, 2x, 4x, ... (6 attempts at 20 s span ~10 minutes)."""
    if reply.status is not None and 200 <= reply.status < 300:
        return Decision("delivered", None)
    if not reply.retryable:
        return Decision(f"failed: {reply.detail}", None)
    if attempts < max_attempts:
        return Decision("pending", first_delay * 2 ** (attempts - 1))
    return Decision(f"failed: {reply.detail} (gave up after {attempts} attempts)", None)


def _is_ipv4(host: str) -> bool:
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return True


def _is_host_name(host: str) -> bool:
    # The last label must start with a letter: resolvers also read `2130706433`, `127.1` or
    # `0x7f` as addresses, which would slip past the name patterns.
    labels = host.split(".")
    return (len(host) <= 253 and all(_LABEL_RE.fullmatch(label) for label in labels)
            and _TLD_RE.fullmatch(labels[-1]) is not None)
