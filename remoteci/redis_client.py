"""A small Redis client: hiredis packs commands and parses replies; this module owns the sockets.

Why not redis-py: it costs each server process about 20 MB of memory and 0.2 s of start (its
package imports asyncio, cluster and telemetry modules the server never uses), and about 100 µs
of Python per command, which was a third of the CPU of a `GET /api/jobs/<id>`. The server needs
two dozen commands, Lua scripts and pipelines over plain connections. hiredis, the C parser of
the Redis project, does the protocol; what is left here is a thread-safe pool with bounded waits.

The methods keep redis-py's names and signatures for the subset used, and its replies as made
with decode_responses=True (str, not bytes), so the stores also run on such a redis-py client
(the tests check what the server wrote through one, an independent reader).
"""

from __future__ import annotations

import os
import select
import socket
import struct
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis

Arg = str | bytes | int | float


class RedisError(Exception):
    """Any failure talking to Redis."""


class RedisConnectionError(RedisError):
    """Redis could not be reached, or the connection broke or timed out mid-command."""


class ReplyError(RedisError):
    """Redis answered with an error: a failing script, a wrong type, NOSCRIPT."""


_INCOMPLETE = object()  # what hiredis returns while a reply has not fully arrived


class _Process:
    """This process' id, kept up to date across os.fork(): a pool checks it on every command,
    and os.getpid() is a system call each time."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        os.register_at_fork(after_in_child=self._forked)

    def _forked(self) -> None:
        self.pid = os.getpid()


_process = _Process()


@dataclass(frozen=True)
class Address:
    host: str = "127.0.0.1"
    port: int = 6379
    unix_path: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False

    def __str__(self) -> str:
        return f"unix://{self.unix_path}" if self.unix_path else f"{self.host}:{self.port}"


def parse_url(url: str) -> Address:
    """redis://[[user]:password@]host[:port][/db], rediss://… (TLS), unix://[[user]:password@]/path[?db=N]."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    if "password" in query:
        password = query["password"][0]
    try:
        if parts.scheme == "unix":
            db = int(query.get("db", ["0"])[0])
            return Address(unix_path=unquote(parts.path), db=db, username=username,
                           password=password)
        if parts.scheme in ("redis", "rediss"):
            path = parts.path.strip("/")
            db = int(path) if path else int(query.get("db", ["0"])[0])
            return Address(host=parts.hostname or "127.0.0.1", port=parts.port or 6379, db=db,
                           username=username, password=password, tls=parts.scheme == "rediss")
    except ValueError as exc:  # the URL may hold a password: it is not repeated
        raise ValueError(f"bad redis URL: {exc} (e.g. redis://host:6379/0)") from None
    raise ValueError("bad redis URL: it must start with redis://, rediss:// or unix://")


class _Connection:
    """One socket and its reply parser; any failure closes it, so it never goes out of step."""

    def __init__(self, address: Address, connect_timeout: float, timeout: float):
        self.timeout = timeout
        # Redis holds only text here, all of it written as UTF-8: replies are str, decoded in C.
        # A reply that is not UTF-8 (a foreign writer) raises UnicodeDecodeError, as decoding
        # it in Python did, and the connection is closed like after any failure mid-reply.
        self.reader = hiredis.Reader(replyError=ReplyError, notEnoughData=_INCOMPLETE,
                                     encoding="utf-8")
        self.sock = _connect(address, connect_timeout)
        # A plain socket blocks, with the timeout set in the kernel (SO_RCVTIMEO/SO_SNDTIMEO):
        # each send and recv is then one system call, where Python's own timeout polls before
        # each, and every call lets go of the GIL, which the API's threads then contend for.
        # The ssl module retries a blocking read that the kernel timed out, forever: a TLS
        # socket keeps Python's timeout.
        self._kernel_timeout = not address.tls
        if self._kernel_timeout:
            self.sock.settimeout(None)
        self._set_timeout(timeout)
        self._readable = select.poll()
        self._readable.register(self.sock, select.POLLIN)
        handshake = []
        if address.password is not None:
            auth = [address.username] if address.username else []
            handshake.append(_pack(("AUTH", *auth, address.password)))
        if address.db:
            handshake.append(_pack(("SELECT", address.db)))
        try:
            if handshake:
                _raise_first_error(self.run(handshake, len(handshake)))
        except BaseException:
            self.close()
            raise

    def closed_by_server(self) -> bool:
        """An idle connection in step has nothing to read: anything readable is an EOF (Redis
        restarted, or closed it as idle) or garbage, and either way it is not to be used."""
        return bool(self._readable.poll(0))

    def run(self, packed: list[bytes], count: int, timeout: float | None = None) -> list[Any]:
        """Send the packed commands at once and read `count` replies (errors as ReplyError)."""
        try:
            if timeout is not None:
                self._set_timeout(timeout)
            self.sock.sendall(b"".join(packed) if len(packed) > 1 else packed[0])
            replies: list[Any] = []
            while len(replies) < count:
                reply = self.reader.gets()
                if reply is _INCOMPLETE:
                    data = self.sock.recv(65536)
                    if not data:
                        raise RedisConnectionError("redis closed the connection")
                    self.reader.feed(data)
                else:
                    replies.append(reply)
            if timeout is not None:
                self._set_timeout(self.timeout)
            return replies
        except (TimeoutError, BlockingIOError):  # BlockingIOError: a kernel timeout
            self.close()
            raise RedisConnectionError("redis did not answer in time") from None
        except (OSError, hiredis.ProtocolError) as exc:
            self.close()
            raise RedisConnectionError(f"redis connection failed: {exc}") from None
        except BaseException:
            self.close()  # interrupted mid-reply: the next reply read would be this one's
            raise

    def _set_timeout(self, seconds: float) -> None:
        if not self._kernel_timeout:
            self.sock.settimeout(seconds)
            return
        # A zero timeval means no timeout at all: the shortest one is a microsecond.
        timeval = struct.pack("ll", *divmod(max(1, round(seconds * 1_000_000)), 1_000_000))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def _connect(address: Address, timeout: float) -> socket.socket:
    sock: socket.socket | None = None
    try:
        if address.unix_path:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect(address.unix_path)
            return sock
        sock = socket.create_connection((address.host, address.port), timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if address.tls:
            import ssl  # only for rediss://: 5 MB that plain connections do not pay

            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=address.host)
        return sock
    except OSError as exc:
        if sock is not None:
            sock.close()
        raise RedisConnectionError(f"cannot connect to redis at {address}: {exc}") from None


def _pack(args: Sequence[Arg]) -> bytes:
    # hiredis' stub types the tuple as having one element; it takes any number.
    packed: bytes = hiredis.pack_command(tuple(args))  # type: ignore[arg-type]
    return packed


Convert = Callable[[Any], Any] | None


def _pairs(reply: list[Any]) -> dict[Any, Any]:
    return dict(zip(reply[::2], reply[1::2], strict=True))


def _scored(reply: list[Any]) -> list[tuple[Any, float]]:
    return [(member, float(score)) for member, score in zip(reply[::2], reply[1::2], strict=True)]


def _ok(reply: Any) -> bool | None:
    return None if reply is None else True


class _Commands:
    """The commands the server uses, with redis-py's signatures and reply types."""

    def _command(self, convert: Convert, *args: Arg) -> Any:
        raise NotImplementedError

    def ping(self) -> Any:
        return self._command(_ok, "PING")

    def set(self, name: str, value: Arg, ex: int | None = None) -> Any:
        return self._command(_ok, "SET", name, value, *(("EX", ex) if ex is not None else ()))

    def delete(self, *names: str) -> Any:
        return self._command(None, "DEL", *names)

    def exists(self, *names: str) -> Any:
        return self._command(None, "EXISTS", *names)

    def mget(self, keys: Sequence[str]) -> Any:
        return self._command(None, "MGET", *keys)

    def hget(self, name: str, key: str) -> Any:
        return self._command(None, "HGET", name, key)

    def hmget(self, name: str, keys: Sequence[str]) -> Any:
        return self._command(None, "HMGET", name, *keys)

    def hgetall(self, name: str) -> Any:
        return self._command(_pairs, "HGETALL", name)

    def hset(self, name: str, key: str | None = None, value: Arg | None = None,
             mapping: Mapping[str, Arg] | None = None) -> Any:
        pairs: list[Arg] = [] if key is None or value is None else [key, value]
        for field, field_value in (mapping or {}).items():
            pairs += [field, field_value]
        return self._command(None, "HSET", name, *pairs)

    def get(self, name: str) -> Any:
        return self._command(None, "GET", name)

    def llen(self, name: str) -> Any:
        return self._command(None, "LLEN", name)

    def lindex(self, name: str, index: int) -> Any:
        return self._command(None, "LINDEX", name, index)

    def lrange(self, name: str, start: int, end: int) -> Any:
        return self._command(None, "LRANGE", name, start, end)

    def lrem(self, name: str, count: int, value: Arg) -> Any:
        return self._command(None, "LREM", name, count, value)

    def sadd(self, name: str, *values: Arg) -> Any:
        return self._command(None, "SADD", name, *values)

    def srem(self, name: str, *values: Arg) -> Any:
        return self._command(None, "SREM", name, *values)

    def smembers(self, name: str) -> Any:
        return self._command(set, "SMEMBERS", name)

    def zcard(self, name: str) -> Any:
        return self._command(None, "ZCARD", name)

    def zrange(self, name: str, start: int, end: int) -> Any:
        return self._command(None, "ZRANGE", name, start, end)

    def zrank(self, name: str, value: Arg) -> Any:
        return self._command(None, "ZRANK", name, value)

    def zrem(self, name: str, *values: Arg) -> Any:
        return self._command(None, "ZREM", name, *values)

    def zrevrangebyscore(self, name: str, max: Arg, min: Arg, start: int | None = None,
                         num: int | None = None, withscores: bool = False) -> Any:
        args: list[Arg] = ["ZREVRANGEBYSCORE", name, max, min]
        if start is not None and num is not None:
            args += ["LIMIT", start, num]
        if withscores:
            args.append("WITHSCORES")
        return self._command(_scored if withscores else None, *args)


class Redis(_Commands):
    """A pool of connections shared by threads; a forked child starts with none of its own."""

    def __init__(self, address: Address, socket_connect_timeout: float = 3.0,
                 socket_timeout: float = 10.0, max_idle: int = 32):
        self.address = address
        self.connect_timeout = socket_connect_timeout
        self.timeout = socket_timeout
        self.max_idle = max_idle
        # A deque's append and pop are atomic: threads share the idle connections without a
        # lock, and a child forked while another thread held one cannot inherit it held.
        self._idle: deque[_Connection] = deque()
        self._pid = _process.pid

    @classmethod
    def from_url(cls, url: str, socket_connect_timeout: float = 3.0,
                 socket_timeout: float = 10.0) -> Redis:
        return cls(parse_url(url), socket_connect_timeout, socket_timeout)

    def execute_command(self, *args: Arg) -> Any:
        return self._command(None, *args)

    def _command(self, convert: Convert, *args: Arg) -> Any:
        return self._one(convert, args)

    def blmove(self, first_list: str, second_list: str, timeout: float,
               src: str = "LEFT", dest: str = "RIGHT") -> Any:
        """Blocks up to `timeout` seconds; the socket waits that long plus the usual timeout."""
        return self._one(None, ("BLMOVE", first_list, second_list, src, dest, timeout),
                         timeout=self.timeout + timeout)

    def blmove_then(self, first_list: str, second_list: str, timeout: float, src: str, dest: str,
                    script: Script, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        """BLMOVE, then `script`, in one write: Redis runs the script as soon as the move is
        done or timed out, so whatever the script does to the moved element costs no second
        round trip. Returns the script's reply."""
        packed = [_pack(("BLMOVE", first_list, second_list, src, dest, timeout)),
                  _pack(("EVALSHA", script.load(), len(keys), *keys, *args))]
        moved, reply = self._execute(packed, 2, timeout=self.timeout + timeout)
        _raise_first_error([moved])
        if isinstance(reply, ReplyError):
            if not str(reply).startswith("NOSCRIPT"):
                raise reply
            return script(keys, args)  # flushed since loaded: the move stands, the script reruns
        return reply

    def _one(self, convert: Convert, args: Sequence[Arg], timeout: float | None = None) -> Any:
        """One command's reply; an error reply is raised, never returned as a value."""
        replies = self._execute([_pack(args)], 1, timeout)
        _raise_first_error(replies)
        return replies[0] if convert is None else convert(replies[0])

    def register_script(self, source: str) -> Script:
        return Script(self, source)

    def pipeline(self, transaction: bool = True) -> Pipeline:
        return Pipeline(self, transaction)

    def close(self) -> None:
        idle, self._idle = self._idle, deque()
        for conn in idle:
            conn.close()

    def _execute(self, packed: list[bytes], count: int, timeout: float | None = None) -> list[Any]:
        conn = self._acquire()
        replies = conn.run(packed, count, timeout)  # closes the connection on any failure
        self._release(conn)
        return replies

    def _acquire(self) -> _Connection:
        if self._pid != _process.pid:
            self._forget_parent_connections()
        while True:
            try:
                conn = self._idle.pop()
            except IndexError:
                return _Connection(self.address, self.connect_timeout, self.timeout)
            if not conn.closed_by_server():
                return conn
            conn.close()

    def _release(self, conn: _Connection) -> None:
        if len(self._idle) < self.max_idle and self._pid == _process.pid:
            self._idle.append(conn)  # racing releases may go a little over max_idle: harmless
        else:
            conn.close()

    def _forget_parent_connections(self) -> None:
        # The parent keeps using these sockets: sharing one would interleave two processes'
        # commands. Closing our copy of the descriptor leaves the parent's connection open.
        inherited, self._idle = self._idle, deque()
        self._pid = _process.pid
        for conn in inherited:
            conn.close()


class Script:
    """A Lua script run by its SHA1, which Redis computes when it first loads the script.

    (Asking Redis, rather than hashing here, keeps hashlib and the OpenSSL library it loads,
    about 4 MB, out of the supervisor and the executors.)
    """

    def __init__(self, client: Redis, source: str):
        self.client = client
        self.source = source
        self.sha: str | None = None

    def load(self) -> str:
        """The SHA1 to call the script by, loading it on first use."""
        if self.sha is None:
            self.sha = self.client.execute_command("SCRIPT", "LOAD", self.source)
        return self.sha

    def __call__(self, keys: Sequence[Arg] = (), args: Sequence[Arg] = ()) -> Any:
        try:
            return self.client.execute_command("EVALSHA", self.load(), len(keys), *keys, *args)
        except ReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):  # else: Redis restarted or was flushed
                raise
        self.sha = None
        return self.client.execute_command("EVALSHA", self.load(), len(keys), *keys, *args)


class Pipeline(_Commands):
    """Commands sent in one write and answered in one read; MULTI/EXEC when `transaction`."""

    def __init__(self, client: Redis, transaction: bool):
        self.client = client
        self.transaction = transaction
        self._packed: list[bytes] = []
        self._converts: list[Convert] = []

    def _command(self, convert: Convert, *args: Arg) -> Pipeline:
        self._packed.append(_pack(args))
        self._converts.append(convert)
        return self

    def execute(self) -> list[Any]:
        packed, converts = self._packed, self._converts
        self._packed, self._converts = [], []
        if not packed:
            return []
        if self.transaction:
            replies = self.client._execute([_pack(("MULTI",)), *packed, _pack(("EXEC",))],
                                           len(packed) + 2)
            _raise_first_error(replies)
            results = replies[-1]
            if results is None:
                raise RedisError("the transaction was aborted")
        else:
            results = self.client._execute(packed, len(packed))
        _raise_first_error(results)
        return [r if convert is None else convert(r) for r, convert in zip(results, converts, strict=True)]


def _raise_first_error(replies: list[Any]) -> None:
    for reply in replies:
        if isinstance(reply, ReplyError):
            raise reply
