"""How the server reaches Redis: the URL forms it takes, and one redis-py client per process.

A URL names either one Redis (`redis://`, `rediss://`, `unix://`, parsed by redis-py itself) or
a service watched by Redis Sentinel (`redis+sentinel://`), whose primary is asked of the
Sentinels on every new connection, so a failover is followed without a restart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.connection import parse_url as parse_redis_url
from redis.retry import Retry
from redis.sentinel import Sentinel

SENTINEL_SCHEME = "redis+sentinel"
SENTINEL_PORT = 26379
CONNECT_TIMEOUT = 3.0  # a dead Redis is an error in seconds, not a hang
SOCKET_TIMEOUT = 10.0  # longer than any blocking pop the server makes (1 s)
HEALTH_CHECK_EVERY = 10  # seconds idle after which a pooled connection is PINGed before use

Client = redis.Redis


@dataclass(frozen=True)
class DirectUrl:
    """One Redis, as redis-py reads the URL."""

    url: str


@dataclass(frozen=True)
class SentinelUrl:
    """A Sentinel-watched service: where the Sentinels are, and the primary's database and login."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # never in a log line


def parse(url: str) -> DirectUrl | SentinelUrl:
    """Check a REMOTE_CI_REDIS_URL; ValueError names what is wrong (never the password)."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme == SENTINEL_SCHEME:
        return _parse_sentinel(url)
    if scheme not in ("redis", "rediss", "unix"):
        raise ValueError("it must start with redis://, rediss://, unix:// or redis+sentinel://")
    try:
        parse_redis_url(url)  # type: ignore[no-untyped-call]
        path = urlsplit(url).path.strip("/")
    except ValueError as exc:
        raise ValueError(f"{exc} (e.g. redis://host:6379/0)") from None
    if scheme != "unix" and path and not path.isdigit():  # redis-py would quietly use db 0
        raise ValueError(f"the database {path!r} is not a number (e.g. redis://host:6379/0)")
    return DirectUrl(url)


def _parse_sentinel(url: str) -> SentinelUrl:
    example = "e.g. redis+sentinel://:password@s1:26379,s2:26379,s3:26379/mymaster/0"
    rest = url.split("://", 1)[1]
    userinfo, _, rest = rest.rpartition("@")
    hosts, _, path = rest.partition("/")
    if "?" in path or "#" in path:
        raise ValueError(f"a redis+sentinel:// URL takes no query or fragment ({example})")
    sentinels = tuple(_host_port(part, example) for part in hosts.split(","))
    parts = path.split("/") if path else []
    if not parts or not parts[0]:
        raise ValueError(f"the Sentinel service name is missing after the hosts ({example})")
    if len(parts) > 2:
        raise ValueError(f"too many path parts: give /<service>[/<db>] ({example})")
    db = 0
    if len(parts) == 2 and parts[1] != "":
        if not parts[1].isdigit():
            raise ValueError(f"the database {parts[1]!r} is not a number ({example})")
        db = int(parts[1])
    username: str | None = None
    password: str | None = None
    if userinfo:
        user, colon, secret = userinfo.partition(":")
        if not colon:
            raise ValueError(f"give the password as [user]:password@ ({example})")
        username = unquote(user) or None
        password = unquote(secret)
    return SentinelUrl(sentinels, unquote(parts[0]), db, username, password)


def _host_port(part: str, example: str) -> tuple[str, int]:
    # urlsplit parses one host[:port] (IPv6 in brackets included) and checks the port.
    probe = urlsplit(f"//{part}")
    try:
        port = probe.port
    except ValueError:
        raise ValueError(f"the port of Sentinel {part!r} is not a number in 1..65535 "
                         f"({example})") from None
    if not probe.hostname or probe.username is not None or probe.path:
        raise ValueError(f"Sentinel {part!r} is not host[:port] ({example})")
    return probe.hostname, port or SENTINEL_PORT


def connect(url: str) -> Client:
    """A client with bounded waits and its own pool (one per process: a forked child's pool
    starts empty, redis-py checks the pid).

    No automatic retry: the server's writes are Lua scripts that must not run twice (a job
    enqueued twice, a second job moved to an executor's in-flight list), and a connection
    that broke after sending cannot tell whether Redis ran the command. Callers retry where
    a repeat is safe: executors retry their conditional status writes until written, and a
    submission answered 503 is retried by the clients under its Idempotency-Key.
    """
    options = {"socket_connect_timeout": CONNECT_TIMEOUT, "socket_timeout": SOCKET_TIMEOUT,
               "health_check_interval": HEALTH_CHECK_EVERY, "retry": Retry(NoBackoff(), 0),
               "decode_responses": True}  # Redis holds only UTF-8 text here
    target = parse(url)
    if isinstance(target, DirectUrl):
        return redis.Redis.from_url(target.url, **options)  # type: ignore[arg-type]
    # Sentinel.discover_master asks each Sentinel in turn: no retry, so a dead one costs
    # one connect timeout at most. Sentinels take no password here: the URL's is the primary's.
    asking = {"socket_connect_timeout": CONNECT_TIMEOUT, "socket_timeout": CONNECT_TIMEOUT,
              "retry": Retry(NoBackoff(), 0), "decode_responses": True}
    sentinel = Sentinel(list(target.sentinels), sentinel_kwargs=asking)  # type: ignore[no-untyped-call]
    client: Client = sentinel.master_for(  # type: ignore[no-untyped-call]
        target.service, db=target.db, username=target.username, password=target.password,
        **options)
    return client
