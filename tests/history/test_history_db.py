"""The history database on real SQLite and a real PostgreSQL: schema, upserts, searches, pruning."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from remoteci.history.db import (
    HistoryDB,
    Search,
    decode_cursor,
    encode_cursor,
    normalise_time,
    parse_history_url,
    search_sql,
)


def record(job_id: str, finished_at: str, **fields: str) -> dict[str, str]:
    return {"id": job_id, "status": "success", "mode": "rsync", "owner": "admin",
            "name": "build", "script": "make", "created_at": finished_at,
            "finished_at": finished_at, "duration": "1.500", "exit_code": "0", **fields}


def at(minute: int) -> str:
    return f"2026-12-01T10:{minute:02d}:00.000Z"


@pytest.fixture
def db(history_url: str) -> HistoryDB:
    database = HistoryDB(parse_history_url(history_url))
    database.migrate()
    return database


# --- pure parts ----------------------------------------------------------------------------------

def test_history_urls_are_sqlite_files_or_postgresql() -> None:
    assert parse_history_url("sqlite:////var/lib/x.db").target == "/var/lib/x.db"
    assert str(parse_history_url("sqlite:///var/lib/x.db")) == "sqlite:///var/lib/x.db"
    pg = parse_history_url("postgresql://ci:s3cret@db.example/history")
    assert pg.dialect == "postgresql" and "s3cret" not in str(pg)
    assert parse_history_url("postgres://h/db").dialect == "postgresql"
    for bad in ("sqlite://relative.db", "sqlite:///", "mysql://h/db", "history.db"):
        with pytest.raises(ValueError):
            parse_history_url(bad)


def test_times_are_normalised_to_the_apis_format() -> None:
    assert normalise_time("2026-12-01") == "2026-12-01T00:00:00.000Z"
    assert normalise_time("2026-12-01T12:00:00+02:00") == "2026-12-01T10:00:00.000Z"
    assert normalise_time("2026-12-01T10:00:00.123456Z") == "2026-12-01T10:00:00.123Z"
    with pytest.raises(ValueError, match="ISO 8601"):
        normalise_time("yesterday")


def test_a_cursor_is_opaque_and_checked() -> None:
    assert decode_cursor(encode_cursor(at(1), "abc")) == (at(1), "abc")
    for bad in ("", "!!!", encode_cursor(at(1), "x")[:-4], "WzEsMl0="):
        with pytest.raises(ValueError):
            decode_cursor(bad)


def test_a_name_prefix_is_a_range_on_the_index() -> None:
    sql, args = search_sql(Search(name="web", limit=10))
    assert "name >= ? AND name < ?" in sql and args == ["web", "wec", 11]


# --- both databases ------------------------------------------------------------------------------

def test_migrating_twice_applies_each_migration_once(db: HistoryDB) -> None:
    assert db.migrate() == []
    db.upsert([record("a", at(1))])
    assert db.get("a") is not None


def test_processes_migrating_a_fresh_database_at_once_apply_each_migration_once(
        history_url: str) -> None:
    """The API and every host's history writer migrate when they start, often together."""
    databases = [HistoryDB(parse_history_url(history_url)) for _ in range(8)]
    start = threading.Barrier(len(databases))

    def migrate(database: HistoryDB) -> list[str]:
        start.wait(timeout=30)
        return database.migrate()

    with ThreadPoolExecutor(len(databases)) as pool:
        applied = list(pool.map(migrate, databases, timeout=120))
    migrators = [names for names in applied if names]
    assert len(migrators) == 1 and migrators[0], applied  # one applied all, the others waited
    assert databases[0].migrate() == []
    for database in databases:
        database.close()


def test_an_upsert_of_the_same_record_is_one_record(db: HistoryDB) -> None:
    db.upsert([record("a", at(1))])
    db.upsert([record("a", at(1), status="failed", exit_code="2")])
    found, after = db.search(Search())
    assert [r["status"] for r in found] == ["failed"] and after is None
    assert db.get("a") == record("a", at(1), status="failed", exit_code="2")
    assert db.get("missing") is None


def test_each_filter_narrows_the_search(db: HistoryDB) -> None:
    db.upsert([record("a", at(1)),
               record("b", at(2), status="failed", mode="git", owner="web", name="web-lint"),
               record("c", at(3), owner="web", name="web-test"),
               record("d", at(4), name="docs")])

    def ids(**filters: str) -> list[str]:
        return [r["id"] for r in db.search(Search(**filters))[0]]  # type: ignore[arg-type]

    assert ids() == ["d", "c", "b", "a"]
    assert ids(status="failed") == ["b"]
    assert ids(mode="git") == ["b"]
    assert ids(owner="web") == ["c", "b"]
    assert ids(name="web-") == ["c", "b"] and ids(name="web-t") == ["c"] and ids(name="x") == []
    assert ids(since=at(2)) == ["d", "c", "b"] and ids(until=at(2)) == ["a"]
    assert ids(since=at(2), until=at(4), owner="web", status="success") == ["c"]


def test_cursor_paging_returns_every_record_once_newest_first(db: HistoryDB) -> None:
    # Pairs finish in the same millisecond: the id breaks the tie, so no page repeats or skips.
    db.upsert([record(f"job{n:02d}", at(n // 2)) for n in range(25)])
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        found, cursor = db.search(Search(limit=10, cursor=cursor))
        seen += [r["id"] for r in found]
        if cursor is None:
            break
    assert seen == [f"job{n:02d}" for n in reversed(range(25))]


def test_pruning_removes_only_what_finished_before_the_cutoff(db: HistoryDB) -> None:
    db.upsert([record("old", at(1)), record("new", at(5))])
    assert db.prune(at(3)) == 1
    assert [r["id"] for r in db.search(Search())[0]] == ["new"]
