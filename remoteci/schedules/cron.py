"""Cron expressions and time zones, checked once and evaluated by cronsim: pure functions.

cronsim follows Debian's cron, DST included: a job at a fixed local time that falls into a
spring-forward gap runs at the first minute after the gap, one in a fall-back repeat runs
once (at its first occurrence); a job with a wildcard minute or hour runs in real time, so
through a repeated hour it runs in both.
"""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from remoteci.errors import ApiError

MAX_CRON_CHARS = 200
MAX_TIMEZONE_CHARS = 64
DEFAULT_TIMEZONE = "UTC"

# Vixie cron's nicknames (man 5 crontab); @reboot has no tick, so it is not one of them.
ALIASES = {
    "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_CRON_HINT = ("five fields (minute hour day-of-month month day-of-week, e.g. \"30 2 * * 1-5\") "
              f"or one of {', '.join(ALIASES)}")


def expand(cron: str) -> str:
    """The five fields cronsim evaluates: an alias spelled out."""
    return ALIASES.get(cron.strip().lower(), cron)


def check_cron(value: object) -> str:
    """The expression as the user wrote it (trimmed), once cronsim accepts it; else a 400."""
    if not isinstance(value, str) or not value.strip():
        raise ApiError(400, f"field 'cron' is required: {_CRON_HINT}")
    cron = " ".join(value.split())
    if len(cron) > MAX_CRON_CHARS or not cron.isprintable():
        raise ApiError(400, f"field 'cron' must be printable text of at most {MAX_CRON_CHARS} "
                            f"characters: {_CRON_HINT}")
    if cron.startswith("@") and cron.lower() not in ALIASES:
        raise ApiError(400, f"field 'cron': {cron[:40]!r} is not a known alias; use {_CRON_HINT}")
    fields = expand(cron).split()
    if len(fields) != 5:
        raise ApiError(400, f"field 'cron' has {len(fields)} fields, not 5: {_CRON_HINT}")
    try:
        ticks = CronSim(" ".join(fields), datetime(2000, 1, 1, tzinfo=UTC))
        next(ticks)
    except CronSimError as exc:
        raise ApiError(400, f"field 'cron': {exc} in {cron!r}; {_CRON_HINT}") from None
    except StopIteration:
        raise ApiError(400, f"field 'cron': {cron!r} never matches a date (e.g. February 30); "
                            "use a day that exists") from None
    return cron


def check_timezone(value: object) -> str:
    """An IANA zone name the tz database knows (default UTC); else a 400 naming it."""
    if value is None or value == "":
        return DEFAULT_TIMEZONE
    hint = "an IANA time zone name such as \"UTC\" or \"Europe/Berlin\""
    if not isinstance(value, str) or len(value) > MAX_TIMEZONE_CHARS or not value.isprintable():
        raise ApiError(400, f"field 'timezone' must be {hint}")
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ApiError(400, f"field 'timezone': {value!r} is not a known time zone; "
                            f"use {hint}") from None
    return value


def next_run(cron: str, timezone: str, after: datetime) -> datetime | None:
    """The first tick strictly after `after` (aware), in UTC; None if none within 50 years."""
    local = after.astimezone(ZoneInfo(timezone))
    try:
        return next(CronSim(expand(cron), local)).astimezone(UTC)
    except StopIteration:
        return None
