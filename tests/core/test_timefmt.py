"""Readable times: relative to now, exact in UTC, lengths at the precision of their size."""

from __future__ import annotations

from remoteci import timefmt

NOW = timefmt.epoch("2026-12-04T12:30:57.114Z") or 0.0


def test_an_api_time_reads_back_as_its_epoch() -> None:
    assert timefmt.epoch("1970-01-01T00:01:00.000Z") == 60.0
    assert timefmt.epoch("not a time") is None and timefmt.epoch(None) is None and timefmt.epoch("") is None


def test_the_exact_time_is_utc_to_the_second() -> None:
    assert timefmt.exact(NOW) == "2026-12-04 12:30:57 UTC"


def test_relative_times_use_the_largest_unit_that_fits() -> None:
    assert timefmt.ago(NOW, NOW) == "just now"
    assert timefmt.ago(NOW + 3, NOW) == "just now"  # another host's clock runs a little ahead
    assert timefmt.ago(NOW - 42, NOW) == "42 s ago"
    assert timefmt.ago(NOW - 3 * 60 - 59, NOW) == "3 min ago"
    assert timefmt.ago(NOW - 2 * 3600, NOW) == "2 h ago"
    assert timefmt.ago(NOW - 3 * 86400 - 5, NOW) == "3 d ago"


def test_lengths_of_time_keep_the_precision_that_matters() -> None:
    assert timefmt.span(0.42) == "0.4 s"
    assert timefmt.span(-1) == "0.0 s"
    assert timefmt.span(12.7) == "12 s"
    assert timefmt.span(245) == "4 min 05 s"
    assert timefmt.span(3 * 3600 + 7 * 60) == "3 h 07 min"
    assert timefmt.span(2 * 86400 + 5 * 3600) == "2 d 5 h"
