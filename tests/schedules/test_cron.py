"""Cron expressions and time zones: what is accepted, what the next tick is, DST days."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from remoteci.errors import ApiError
from remoteci.schedules.cron import ALIASES, check_cron, check_timezone, next_run


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def ticks(cron: str, timezone: str, after: datetime, count: int) -> list[datetime]:
    found = []
    for _ in range(count):
        moment = next_run(cron, timezone, after)
        assert moment is not None
        found.append(moment)
        after = moment
    return found


# 2026-12-02 is a Wednesday.
@pytest.mark.parametrize("cron, after, expected", [
    ("* * * * *", utc(2026, 12, 2, 10, 0, 30), utc(2026, 12, 2, 10, 1)),
    ("15 * * * *", utc(2026, 12, 2, 10, 20), utc(2026, 12, 2, 11, 15)),
    ("0 3 * * *", utc(2026, 12, 2, 10, 0), utc(2026, 12, 3, 3, 0)),
    ("5,35 * * * *", utc(2026, 12, 2, 10, 6), utc(2026, 12, 2, 10, 35)),
    ("0 9-17 * * *", utc(2026, 12, 2, 17, 30), utc(2026, 12, 3, 9, 0)),
    ("*/15 * * * *", utc(2026, 12, 2, 10, 16), utc(2026, 12, 2, 10, 30)),
    ("0-30/10 * * * *", utc(2026, 12, 2, 10, 31), utc(2026, 12, 2, 11, 0)),
    ("0 0 1 * *", utc(2026, 12, 2, 0, 0), utc(2027, 1, 1, 0, 0)),
    ("0 0 * FEB *", utc(2026, 12, 2, 0, 0), utc(2027, 2, 1, 0, 0)),
    ("0 0 1 JAN-MAR *", utc(2027, 1, 2, 0, 0), utc(2027, 2, 1, 0, 0)),
    ("0 8 * * MON-FRI", utc(2026, 12, 4, 9, 0), utc(2026, 12, 7, 8, 0)),  # Friday -> Monday
    ("0 8 * * 1-5", utc(2026, 12, 4, 9, 0), utc(2026, 12, 7, 8, 0)),
    ("0 0 * * 0", utc(2026, 12, 2, 0, 0), utc(2026, 12, 6, 0, 0)),  # Sunday
    ("0 0 * * 7", utc(2026, 12, 2, 0, 0), utc(2026, 12, 6, 0, 0)),  # 7 is Sunday too
    ("0 0 13 * 5", utc(2026, 12, 2, 0, 0), utc(2026, 12, 4, 0, 0)),  # day OR weekday, as cron
    ("0 0 29 2 *", utc(2026, 12, 2, 0, 0), utc(2028, 2, 29, 0, 0)),  # the next leap day
])
def test_every_field_form(cron: str, after: datetime, expected: datetime) -> None:
    assert check_cron(cron) == cron
    assert next_run(cron, "UTC", after) == expected


def test_the_next_tick_is_strictly_after_the_given_time() -> None:
    assert next_run("0 * * * *", "UTC", utc(2026, 12, 2, 10, 0)) == utc(2026, 12, 2, 11, 0)


@pytest.mark.parametrize("alias, fields", sorted(ALIASES.items()))
def test_aliases_are_their_five_fields(alias: str, fields: str) -> None:
    after = utc(2026, 12, 2, 10, 20)
    assert check_cron(alias.upper()) == alias.upper()
    assert next_run(alias, "UTC", after) == next_run(fields, "UTC", after)


def test_daily_in_a_zone_runs_at_local_midnight() -> None:
    assert next_run("@daily", "Asia/Tokyo", utc(2026, 12, 2, 10, 0)) == utc(2026, 12, 2, 15, 0)


def test_spaces_are_tidied() -> None:
    assert check_cron("  0   3 * *  * ") == "0 3 * * *"


@pytest.mark.parametrize("cron, says", [
    ("61 * * * *", "Bad minute"),
    ("* 24 * * *", "Bad hour"),
    ("* * 0 * *", "Bad day-of-month"),
    ("* * * 13 *", "Bad month"),
    ("* * * * 8", "Bad day-of-week"),
    ("*/0 * * * *", "Bad minute"),
    ("5-1 * * * *", "Bad minute"),
    ("a b c d e", "Bad minute"),
    ("* * * *", "has 4 fields"),
    ("0 * * * * *", "has 6 fields"),  # seconds are not a cron field here
    ("@reboot", "not a known alias"),
    ("@every 5m", "not a known alias"),
    ("0 0 30 2 *", "day-of-month"),  # February 30 never comes
    ("", "is required"),
    ("   ", "is required"),
    (None, "is required"),
    (5, "is required"),
    ("0 0 * * *\n", None),  # trailing whitespace is whitespace
    ("0\x00 0 * * *", "printable"),
    ("1," * 150 + "2 * * * *", "at most 200"),
])
def test_bad_cron_is_a_400_naming_the_field(cron: object, says: str | None) -> None:
    if says is None:
        assert check_cron(cron) == "0 0 * * *"
        return
    with pytest.raises(ApiError) as caught:
        check_cron(cron)
    assert caught.value.status == 400
    assert "field 'cron'" in caught.value.message and says in caught.value.message


def test_timezone_defaults_to_utc_and_takes_iana_names() -> None:
    assert check_timezone(None) == "UTC"
    assert check_timezone("") == "UTC"
    assert check_timezone("Europe/Berlin") == "Europe/Berlin"
    assert check_timezone("America/Argentina/Buenos_Aires") == "America/Argentina/Buenos_Aires"


@pytest.mark.parametrize("zone", ["Mars/Olympus", "CEST+2", "../../etc/passwd", "/etc/localtime",
                                  "Europe/", "x" * 65, "Europe/Berlin\x00", 3, ["UTC"]])
def test_bad_timezone_is_a_400_naming_the_field(zone: object) -> None:
    with pytest.raises(ApiError) as caught:
        check_timezone(zone)
    assert caught.value.status == 400 and "field 'timezone'" in caught.value.message


# DST, as cronsim documents it (Debian cron's behaviour). Europe/Berlin springs forward on
# 2026-03-29 at 02:00 CET to 03:00 CEST, and falls back on 2026-10-25 at 03:00 CEST to 02:00 CET.

def test_spring_forward_a_fixed_time_in_the_gap_runs_right_after_it() -> None:
    runs = ticks("30 2 * * *", "Europe/Berlin", utc(2026, 3, 28, 12, 0), 3)
    assert runs == [utc(2026, 3, 29, 1, 0),  # 02:30 does not exist: 03:00 CEST
                    utc(2026, 3, 30, 0, 30),  # then 02:30 CEST as usual
                    utc(2026, 3, 31, 0, 30)]


def test_spring_forward_a_fixed_time_outside_the_gap_keeps_its_local_time() -> None:
    runs = ticks("0 4 * * *", "Europe/Berlin", utc(2026, 3, 28, 12, 0), 2)
    assert runs == [utc(2026, 3, 29, 2, 0), utc(2026, 3, 30, 2, 0)]  # 04:00 CEST both days


def test_spring_forward_hourly_skips_the_hour_that_does_not_exist() -> None:
    runs = ticks("0 * * * *", "Europe/Berlin", utc(2026, 3, 28, 23, 30), 3)
    assert runs == [utc(2026, 3, 29, 0, 0), utc(2026, 3, 29, 1, 0), utc(2026, 3, 29, 2, 0)]
    # 01:00 CET, 03:00 CEST, 04:00 CEST: an hour apart in real time, no 02:00


def test_fall_back_a_fixed_time_in_the_repeat_runs_once() -> None:
    runs = ticks("30 2 * * *", "Europe/Berlin", utc(2026, 10, 24, 12, 0), 2)
    assert runs == [utc(2026, 10, 25, 0, 30),  # 02:30 CEST, the first of the two 02:30s
                    utc(2026, 10, 26, 1, 30)]  # then 02:30 CET


def test_fall_back_a_wildcard_schedule_runs_through_both_hours() -> None:
    runs = ticks("*/30 * * * *", "Europe/Berlin", utc(2026, 10, 24, 23, 45), 5)
    assert runs == [utc(2026, 10, 25, 0, 0), utc(2026, 10, 25, 0, 30),  # 02:00, 02:30 CEST
                    utc(2026, 10, 25, 1, 0), utc(2026, 10, 25, 1, 30),  # 02:00, 02:30 CET
                    utc(2026, 10, 25, 2, 0)]  # 03:00 CET


def test_new_york_springs_forward_too() -> None:
    # 2026-03-08: 02:00 EST becomes 03:00 EDT; a 02:15 job runs at 03:00 EDT (07:00 UTC).
    assert next_run("15 2 * * *", "America/New_York", utc(2026, 3, 7, 12, 0)) == utc(2026, 3, 8, 7, 0)


def test_a_schedule_that_never_matches_is_refused() -> None:
    # The 1st or 21st of a month that is also its last Monday: never (cronsim's own example).
    cron = "* * */20 * 1L"
    assert next_run(cron, "UTC", utc(2026, 12, 2)) is None
    with pytest.raises(ApiError) as caught:
        check_cron(cron)
    assert caught.value.status == 400 and "never matches" in caught.value.message
