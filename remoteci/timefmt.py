"""Times as people read them: "3 min ago" on the page, the exact UTC time in its tooltip."""

from __future__ import annotations

from datetime import UTC, datetime


def epoch(iso: str | None) -> float | None:
    """Seconds since the epoch of an API time (ISO-8601, Z), or None when unset or unreadable."""
    if not iso:
        return None
    try:
        moment = datetime.fromisoformat(iso)  # C, reads the Z since 3.11; strptime took ~100 µs
    except ValueError:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def exact(seconds: float) -> str:
    """The tooltip: to the second, in UTC, named as such."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def span(seconds: float) -> str:
    """A length of time to the precision that matters at its size: 0.4 s, 12 s, 4 min 05 s."""
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.1f} s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    if whole < 86400:
        return f"{whole // 3600} h {whole % 3600 // 60:02d} min"
    return f"{whole // 86400} d {whole % 86400 // 3600} h"


def ago(seconds: float, now: float) -> str:
    """How long before `now`, in the largest unit that fits: "just now", "3 min ago", "2 d ago"."""
    delta = now - seconds
    if delta < 5:  # or a little in the future: two hosts' clocks may disagree
        return "just now"
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if delta >= size:
            return f"{int(delta // size)} {unit} ago"
    return f"{int(delta)} s ago"
