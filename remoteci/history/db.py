"""Durable history: final job records in SQLite (the default) or PostgreSQL, kept for months.

One schema, created and migrated at start from plain SQL files, one folder per dialect
(`remoteci/history/migrations/<dialect>/NNNN_<what>.sql`), with the applied versions in a table.
SQLite is the standard library's; PostgreSQL goes through psycopg 3, imported only when a
`postgresql://` URL asks for it. Every database error becomes HistoryUnavailable, and the
connection is dropped so the next call connects afresh: an outage delays history, never a job.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from remoteci import jobs

MIGRATIONS = Path(__file__).with_name("migrations")
CONNECT_TIMEOUT = 5  # seconds; also SQLite's wait for a lock
_COLUMNS = ("id", "status", "mode", "owner", "name", "created_at", "started_at", "finished_at",
            "duration", "exit_code")
_MIGRATION_LOCK = 7_236_001  # PostgreSQL advisory lock id: one migrating process at a time


class HistoryUnavailable(Exception):
    """The history database could not be reached or refused a statement."""


@dataclass(frozen=True)
class HistoryURL:
    dialect: str  # "sqlite" or "postgresql"
    target: str  # a file path, or the libpq URL as given

    def __str__(self) -> str:  # for log lines: never a password
        return f"sqlite://{self.target}" if self.dialect == "sqlite" else _redacted(self.target)


def parse_history_url(raw: str) -> HistoryURL:
    """`sqlite:///<path>` or `postgresql://…` (`postgres://` too); ValueError with the fix.

    The SQLite path is absolute whether written with three slashes or, as SQLAlchemy writes an
    absolute path, with four.
    """
    url = raw.strip()
    if url.startswith("sqlite:///"):
        path = "/" + url[len("sqlite://"):].lstrip("/")
        if path == "/" or path.endswith("/"):
            raise ValueError(f"{url!r} names no file; write sqlite:///var/lib/remote-ci/history.sqlite3")
        return HistoryURL("sqlite", path)
    if url.startswith(("postgresql://", "postgres://")):
        return HistoryURL("postgresql", url)
    raise ValueError(f"{_redacted(url)!r} is neither sqlite:///<absolute path> nor postgresql://…")


def _redacted(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    return f"{scheme}{sep}***@{host}" if at and userinfo else url


@dataclass(frozen=True)
class Search:
    """A history query; every filter optional. `since` and `until` are on finished_at."""

    status: str | None = None
    mode: str | None = None
    owner: str | None = None
    name: str | None = None  # a prefix
    since: str | None = None  # inclusive, ISO as jobs.iso_time writes it
    until: str | None = None  # exclusive
    limit: int = 50
    cursor: tuple[str, str] | None = None  # (finished_at, id) of the last job of the page before


def encode_cursor(finished_at: str, job_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([finished_at, job_id]).encode()).decode()


def decode_cursor(raw: str) -> tuple[str, str]:
    """ValueError for anything next_cursor did not give out."""
    try:
        value = json.loads(base64.urlsafe_b64decode(raw.encode("ascii")))
    except (ValueError, UnicodeError):
        raise ValueError("cursor is not one that next_cursor gave") from None
    if (not isinstance(value, list) or len(value) != 2
            or not all(isinstance(v, str) for v in value)):
        raise ValueError("cursor is not one that next_cursor gave")
    return value[0], value[1]


def normalise_time(raw: str) -> str:
    """An ISO 8601 time (a date, or a time without zone: UTC) as the API writes times."""
    try:
        moment = datetime.fromisoformat(raw.strip())
    except ValueError:
        raise ValueError(f"{raw!r} is not an ISO 8601 time (e.g. 2026-12-01 or "
                         "2026-12-01T08:00:00Z)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return jobs.iso_time(moment.timestamp())


def row_values(record: dict[str, str]) -> tuple[Any, ...]:
    """The columns of one stored record (all strings), typed, then the record itself."""
    values: list[Any] = [record.get(c) or None for c in _COLUMNS]
    values[_COLUMNS.index("duration")] = _number(record.get("duration"), float)
    values[_COLUMNS.index("exit_code")] = _number(record.get("exit_code"), int)
    return (*values, json.dumps(record, sort_keys=True))


def _number(raw: str | None, kind: type[int] | type[float]) -> int | float | None:
    try:
        return kind(raw) if raw else None
    except ValueError:
        return None


def _prefix_range(prefix: str) -> tuple[str, str | None]:
    """[prefix, next) in code point order: every string that starts with `prefix`."""
    last = ord(prefix[-1])
    return prefix, (prefix[:-1] + chr(last + 1)) if last < 0x10FFFF else None


def search_sql(q: Search) -> tuple[str, list[Any]]:
    """The query of a search, with `?` placeholders; newest first, one row more than a page."""
    where: list[str] = []
    args: list[Any] = []
    for column in ("status", "mode", "owner"):
        value = getattr(q, column)
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    if q.name:
        low, high = _prefix_range(q.name)
        where.append("name >= ?")
        args.append(low)
        if high is not None:
            where.append("name < ?")
            args.append(high)
    if q.since:
        where.append("finished_at >= ?")
        args.append(q.since)
    if q.until:
        where.append("finished_at < ?")
        args.append(q.until)
    if q.cursor:
        where.append("(finished_at < ? OR (finished_at = ? AND id < ?))")
        args += [q.cursor[0], q.cursor[0], q.cursor[1]]
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    return (f"SELECT record FROM jobs{clause} ORDER BY finished_at DESC, id DESC LIMIT ?",
            [*args, q.limit + 1])


# Pipelines (history_writer tells them by `kind`): a row per final pipeline, found by id.
_PIPELINE_COLUMNS = ("id", "status", "owner", "name", "created_at", "finished_at")
_UPSERT_PIPELINE = (f"INSERT INTO pipelines ({', '.join(_PIPELINE_COLUMNS)}, record) "
                    f"VALUES ({', '.join('?' for _ in range(len(_PIPELINE_COLUMNS) + 1))}) "
                    "ON CONFLICT (id) DO UPDATE SET "
                    + ", ".join(f"{c} = excluded.{c}" for c in (*_PIPELINE_COLUMNS[1:], "record")))

_UPSERT = (f"INSERT INTO jobs ({', '.join(_COLUMNS)}, record) "
           f"VALUES ({', '.join('?' for _ in range(len(_COLUMNS) + 1))}) "
           f"ON CONFLICT (id) DO UPDATE SET "
           + ", ".join(f"{c} = excluded.{c}" for c in (*_COLUMNS[1:], "record")))


class HistoryDB:
    """One connection per process, shared by its threads under a lock (history calls are few)."""

    def __init__(self, url: HistoryURL):
        self.url = url
        self._conn: Any = None
        self._lock = threading.Lock()
        self._schema_ready = False

    def ensure_schema(self) -> None:
        """Migrate once per process, before the first read: the API may start before a writer."""
        if not self._schema_ready:
            self.migrate()

    # --- the operations ----------------------------------------------------------------------

    def migrate(self) -> list[str]:
        """Apply the migrations this database lacks, in order; return the names applied."""
        with self._session() as run:
            # The lock comes first: two PostgreSQL sessions creating the table at once can both
            # pass IF NOT EXISTS and one then fails on the table's row type.
            self._begin_exclusive(run)
            run("CREATE TABLE IF NOT EXISTS schema_migrations "
                "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)")
            applied = {row[0] for row in run("SELECT version FROM schema_migrations")}
            done = []
            for version, path in _migration_files(self.url.dialect):
                if version in applied:
                    continue
                for statement in _statements(path.read_text()):
                    run(statement)
                run("INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    [version, path.stem, datetime.now(UTC).isoformat()])
                done.append(path.stem)
            self._commit()
        self._schema_ready = True
        return done

    def upsert(self, records: Sequence[dict[str, str]]) -> None:
        """Store final records; one already there is replaced (a copy twice is a copy once)."""
        with self._session() as run:
            for record in records:
                run(_UPSERT, row_values(record))
            self._commit()

    def upsert_pipelines(self, records: Sequence[dict[str, str]]) -> None:
        """Store final pipeline records, as `upsert` stores jobs."""
        with self._session() as run:
            for record in records:
                run(_UPSERT_PIPELINE, [*(record.get(c) or None for c in _PIPELINE_COLUMNS),
                                       json.dumps(record, sort_keys=True)])
            self._commit()

    def get_pipeline(self, pipeline_id: str) -> dict[str, str] | None:
        with self._session() as run:
            rows = run("SELECT record FROM pipelines WHERE id = ?", [pipeline_id])
            self._commit()
        return json.loads(rows[0][0]) if rows else None

    def search(self, q: Search) -> tuple[list[dict[str, str]], tuple[str, str] | None]:
        """One page of records, newest first, and the cursor of the next page (None: no more)."""
        sql, args = search_sql(q)
        with self._session() as run:
            rows = [json.loads(row[0]) for row in run(sql, args)]
            self._commit()
        if len(rows) <= q.limit:
            return rows, None
        rows = rows[:q.limit]
        return rows, (rows[-1]["finished_at"], rows[-1]["id"])

    def get(self, job_id: str) -> dict[str, str] | None:
        with self._session() as run:
            rows = run("SELECT record FROM jobs WHERE id = ?", [job_id])
            self._commit()
        return json.loads(rows[0][0]) if rows else None

    def prune(self, before: str) -> int:
        """Delete records that finished before `before`; return how many."""
        with self._session() as run:
            count = run("SELECT COUNT(*) FROM jobs WHERE finished_at < ?", [before])[0][0]
            run("DELETE FROM jobs WHERE finished_at < ?", [before])
            run("DELETE FROM pipelines WHERE finished_at < ?", [before])
            self._commit()
        return int(count)

    def close(self) -> None:
        with self._lock:
            self._drop()

    # --- connections -------------------------------------------------------------------------

    @contextmanager
    def _session(self) -> Iterator[Any]:
        """A runner of statements (`?` placeholders) that returns the rows; errors are ours."""
        errors = self._errors()
        with self._lock:
            try:
                if self._conn is None:
                    self._conn = self._connect()
                yield self._run
            except errors as exc:
                self._drop()
                raise HistoryUnavailable(f"history database {self.url}: {exc}") from None

    def _errors(self) -> tuple[type[Exception], ...]:
        import sqlite3

        if self.url.dialect == "sqlite":
            return (sqlite3.Error, OSError)
        import psycopg

        return (psycopg.Error, OSError)

    def _connect(self) -> Any:
        if self.url.dialect == "sqlite":
            import sqlite3

            Path(self.url.target).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            conn = sqlite3.connect(self.url.target, timeout=CONNECT_TIMEOUT,
                                   check_same_thread=False)  # our lock serialises the threads
            conn.execute("PRAGMA journal_mode=WAL")  # readers never wait for the writer
            return conn
        import psycopg

        return psycopg.connect(self.url.target, connect_timeout=CONNECT_TIMEOUT)

    def _run(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        if self.url.dialect == "postgresql":
            sql = sql.replace("?", "%s")
        cursor = self._conn.execute(sql, args)
        return list(cursor.fetchall()) if cursor.description else []

    def _begin_exclusive(self, run: Any) -> None:
        """From here to the commit, no other process migrates."""
        if self.url.dialect == "sqlite":
            self._conn.commit()
            self._conn.execute("BEGIN IMMEDIATE")
        else:
            run(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")

    def _commit(self) -> None:
        self._conn.commit()

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # a broken connection may fail to close; it is gone either way
                pass
            self._conn = None


def _migration_files(dialect: str) -> list[tuple[int, Path]]:
    files = sorted((MIGRATIONS / dialect).glob("*.sql"))
    return [(int(path.name.split("_", 1)[0]), path) for path in files]


def _statements(text: str) -> list[str]:
    """The statements of a migration file: no `;` inside them, comments stripped."""
    lines = [line.split("--", 1)[0] for line in text.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]
