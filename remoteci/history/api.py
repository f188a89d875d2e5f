"""What the API answers from the history database: searches, and jobs whose record expired."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from remoteci import events, jobs
from remoteci.auth.identity import Identity, listing_owner
from remoteci.errors import ApiError
from remoteci.history.db import (
    HistoryDB,
    HistoryUnavailable,
    Search,
    decode_cursor,
    encode_cursor,
    normalise_time,
)

T = TypeVar("T")
NAME_PREFIX_MAX = 200


def search_from(query: Callable[[str], str | None], identity: Identity, limit: int) -> Search:
    """The filters of GET /api/history, checked; a project token searches its own jobs only."""
    status = query("status") or None
    mode = query("mode") or None
    if status is not None and status not in jobs.FINAL_STATUSES:
        raise ApiError(400, f"status {status!r} is not a final status; use one of: "
                            f"{', '.join(jobs.FINAL_STATUSES)}")
    if mode is not None and mode not in jobs.MODES:
        raise ApiError(400, f"mode {mode!r} is not one of: {', '.join(jobs.MODES)}")
    name = query("name") or None
    if name is not None and len(name) > NAME_PREFIX_MAX:
        raise ApiError(400, f"name is a prefix of at most {NAME_PREFIX_MAX} characters")
    times: dict[str, str | None] = {}
    for field in ("since", "until"):
        raw = query(field)
        try:
            times[field] = normalise_time(raw) if raw else None
        except ValueError as exc:
            raise ApiError(400, f"{field}: {exc}") from None
    raw_cursor = query("cursor")
    try:
        cursor = decode_cursor(raw_cursor) if raw_cursor else None
    except ValueError as exc:
        raise ApiError(400, f"{exc}; start again without it") from None
    return Search(status=status, mode=mode, owner=listing_owner(identity, query("owner") or None),
                  name=name, since=times["since"], until=times["until"], limit=limit,
                  cursor=cursor)


def page(history: HistoryDB, search: Search) -> tuple[list[dict[str, Any]], str | None]:
    """Job objects, newest first, and the opaque cursor of the next page (None: the last)."""
    found, after = _read(history, lambda: history.search(search))
    return [jobs.job_object(record) for record in found], after and encode_cursor(*after)


def expired_job(history: HistoryDB, job_id: str, logs_dir: Path) -> dict[str, Any] | None:
    """A job no longer in Redis, from history, with `log_expired` when its log is gone too."""
    if not jobs.is_valid_job_id(job_id):
        return None
    record = _read(history, lambda: history.get(job_id))
    if record is None:
        return None
    return {**jobs.job_object(record), "log_expired": not (logs_dir / f"{job_id}.log").exists()}


def _read(history: HistoryDB, read: Callable[[], T]) -> T:
    try:
        history.ensure_schema()
        return read()
    except HistoryUnavailable as exc:
        events.error("api", str(exc))
        raise ApiError(503, "the history database is unreachable; retry later",
                       [("Retry-After", "5")]) from None
