"""The charts page's body: server-rendered SVG from the per-hour activity, no script at all.

Every number comes from activity.Hour; every text is escaped; colours are classes of the page's
stylesheet (SVG presentation by class, so the strict Content-Security-Policy needs nothing new).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from html import escape

from remoteci import jobs, timefmt
from remoteci.store import activity, histograms
from remoteci.store.activity import Hour

WIDTH, HEIGHT = 960, 170
LEFT, BOTTOM, TOP = 46, 22, 8
QUANTILES = (0.5, 0.9, 0.99)
PENDING = "its executors' time is not reported yet (each host adds it every 10 s)"
STYLE = (
    ".chart{display:block;background:#fff;border:1px solid #d0d7de;border-radius:6px;"
    "width:100%;max-width:960px;height:auto}.chart text{font-size:11px;fill:#57606a}"
    ".grid{stroke:#eaeef2}.c-success{fill:#1a7f37}.c-failed{fill:#cf222e}.c-timeout{fill:#9a6700}"
    ".c-error{fill:#8250df}.c-cancelled{fill:#8c959f}.p50{stroke:#0969da}.p90{stroke:#bf8700}"
    ".p50,.p90{fill:none;stroke-width:2}.dot50{fill:#0969da}.dot90{fill:#bf8700}"
    ".busy{fill:#0969da}.idle{fill:#eaeef2}.legend{display:flex;gap:.6em;margin:.4em 0}"
    ".k50{color:#0969da;font-weight:600}.k90{color:#bf8700;font-weight:600}"
)


def _nice_ceiling(value: float) -> float:
    """A round axis top at or above `value`: 1, 2, 5 times a power of ten."""
    if value <= 0:
        return 1.0
    power = 1.0
    while power * 10 <= value:
        power *= 10
    while power > value:
        power /= 10
    return next(power * m for m in (1, 2, 5, 10) if power * m >= value)


def _number(value: float) -> str:
    return f"{value:g}" if value < 1000 else f"{value / 1000:g}k"


def _frame(label: str, top: float, unit: str, columns: int, tick: Callable[[int], str | None],
           inner: str) -> str:
    """An SVG with a y axis from 0 to `top`, x ticks under the columns `tick` names, and `inner`."""
    plot_w, plot_h = WIDTH - LEFT - 6, HEIGHT - BOTTOM - TOP
    parts = [f'<svg class=chart viewBox="0 0 {WIDTH} {HEIGHT}" role=img '
             f'aria-label="{escape(label)}"><title>{escape(label)}</title>']
    for fraction in (0, 0.5, 1):
        y = TOP + plot_h * (1 - fraction)
        parts.append(f'<line class=grid x1="{LEFT}" x2="{WIDTH - 6}" y1="{y:.1f}" y2="{y:.1f}"/>'
                     f'<text x="{LEFT - 4}" y="{y + 4:.1f}" text-anchor=end>'
                     f"{escape(_number(top * fraction))}{escape(unit)}</text>")
    step = plot_w / columns
    for i in range(columns):
        name = tick(i)
        if name:
            x = LEFT + i * step
            parts.append(f'<line class=grid x1="{x:.1f}" x2="{x:.1f}" y1="{TOP}" '
                         f'y2="{HEIGHT - BOTTOM + 4}"/><text x="{x + 2:.1f}" '
                         f'y="{HEIGHT - 6}">{escape(name)}</text>')
    parts.append(inner)
    parts.append("</svg>")
    return "".join(parts)


def _ticks(hours: Sequence[Hour]) -> Callable[[int], str | None]:
    """Hour marks every 3 h on a day's chart, day marks on a week's (UTC)."""
    daily = len(hours) > 48

    def tick(i: int) -> str | None:
        start = hours[i].start
        if daily:
            return time.strftime("%a %d", time.gmtime(start)) if start % 86400 == 0 else None
        return time.strftime("%H:00", time.gmtime(start)) if start % (3 * 3600) == 0 else None
    return tick


def _hour_label(hour: Hour) -> str:
    return time.strftime("%a %d %b %H:00 UTC", time.gmtime(hour.start))


def jobs_per_hour(hours: Sequence[Hour], label: str) -> str:
    """Stacked bars: jobs ended per hour, one colour per final status; hover names the counts."""
    totals = [sum(h.ended(s) for s in jobs.FINAL_STATUSES) for h in hours]
    top = _nice_ceiling(max(totals, default=0))
    plot_w, plot_h = WIDTH - LEFT - 6, HEIGHT - BOTTOM - TOP
    step = plot_w / len(hours)
    bars = []
    for i, hour in enumerate(hours):
        if not totals[i]:
            continue
        counts = ", ".join(f"{hour.ended(s)} {s}" for s in jobs.FINAL_STATUSES if hour.ended(s))
        x, y = LEFT + i * step + step * 0.1, float(TOP + plot_h)
        bars.append(f"<g><title>{escape(_hour_label(hour))}: {escape(counts)}</title>")
        for status in jobs.FINAL_STATUSES:
            height = plot_h * hour.ended(status) / top
            if height:
                y -= height
                bars.append(f'<rect class=c-{status} x="{x:.1f}" y="{y:.1f}" '
                            f'width="{step * 0.8:.1f}" height="{height:.1f}"/>')
        bars.append("</g>")
    return _frame(label, top, "", len(hours), _ticks(hours), "".join(bars))


def hourly_percentiles(hours: Sequence[Hour], hist: histograms.Histogram, prefix: str,
                       label: str) -> str:
    """p50 and p90 per hour as two lines (gaps where an hour had no job); hover for values."""
    series = {q: [activity.percentile(hist, prefix, h.fields, q) for h in hours] for q in (0.5, 0.9)}
    top = _nice_ceiling(max((v for values in series.values() for v in values if v is not None),
                            default=0))
    plot_w, plot_h = WIDTH - LEFT - 6, HEIGHT - BOTTOM - TOP
    step = plot_w / len(hours)
    inner = []
    for q, values in series.items():
        name = "50" if q == 0.5 else "90"
        points: list[str] = []
        for i, value in enumerate([*values, None]):
            if value is None:
                if len(points) > 1:
                    inner.append(f'<polyline class=p{name} points="{" ".join(points)}"/>')
                points = []
                continue
            x, y = LEFT + (i + 0.5) * step, TOP + plot_h * (1 - value / top)
            points.append(f"{x:.1f},{y:.1f}")
            inner.append(f'<circle class=dot{name} cx="{x:.1f}" cy="{y:.1f}" r="2.5">'
                         f"<title>{escape(_hour_label(hours[i]))}: p{name} "
                         f"{escape(timefmt.span(value))}</title></circle>")
    return _frame(label, top, " s", len(hours), _ticks(hours), "".join(inner))


def _quantile_cells(hist: histograms.Histogram, prefix: str, summed: dict[str, float]) -> str:
    count = int(sum(v for k, v in summed.items() if k.startswith(prefix + ":")))
    cells = []
    for q in QUANTILES:
        value = activity.percentile(hist, prefix, summed, q)
        cells.append("<td>—</td>" if value is None else f"<td>{escape(timefmt.span(value))}</td>")
    return f"<td>{count}</td>" + "".join(cells)


def percentile_table(day: dict[str, float], week: dict[str, float]) -> str:
    rows = []
    for name, hist, prefix in (("queue wait", histograms.QUEUE_WAIT, "wait"),
                               ("run time", histograms.DURATION, "duration")):
        for window, summed in (("24 h", day), ("7 days", week)):
            rows.append(f"<tr><td>{name}</td><td>{window}</td>"
                        f"{_quantile_cells(hist, prefix, summed)}</tr>")
    return ("<table><tr><th>what</th><th>over</th><th>jobs</th><th>p50</th><th>p90</th>"
            "<th>p99</th></tr>" + "".join(rows) + "</table>"
            "<p class=muted>From bucket counts, interpolated within a bucket, as Prometheus' "
            "histogram_quantile does.</p>")


def busy_chart(day: dict[str, float], week: dict[str, float]) -> str:
    """Per host, the share of its executors' time spent on jobs, over 24 h and over 7 days."""
    rows = [(host, window, busy, up)
            for window, summed in (("24 h", day), ("7 days", week))
            for host, (busy, up) in activity.busy_share(summed).items()]
    if not rows:
        return "<p class=muted>No executor has reported yet.</p>"
    pending = (f"<p class=muted>{escape(PENDING)}</p>"
               if any(not up for *_, up in rows) else "")
    rows.sort(key=lambda r: (r[0], r[1] != "24 h"))
    row_h, label_w, bar_w = 24, 220, WIDTH - 220 - 70
    parts = [f'<svg class=chart viewBox="0 0 {WIDTH} {row_h * len(rows) + 8}" role=img '
             'aria-label="executor busy share per host"><title>executor busy share per host'
             "</title>"]
    for i, (host, window, busy, up) in enumerate(rows):
        share = min(1.0, busy / up) if up else 0.0  # jobs' clocks and ours differ a little
        y = 4 + i * row_h
        note = (f"{host}, {window}: {share:.0%} busy ({timefmt.span(busy)} of "
                f"{timefmt.span(up)} executor time)" if up else
                f"{host}, {window}: {PENDING}")
        parts.append(f"<g><title>{escape(note)}</title>"
                     f'<text x="8" y="{y + 15}">{escape(host)} · {window}</text>'
                     f'<rect class=idle x="{label_w}" y="{y + 3}" width="{bar_w}" height="14"/>'
                     f'<rect class=busy x="{label_w}" y="{y + 3}" width="{bar_w * share:.1f}" '
                     f'height="14"/><text x="{label_w + bar_w + 8}" y="{y + 15}">'
                     f"{f'{share:.0%}' if up else '—'}</text></g>")
    parts.append("</svg>")
    return "".join(parts) + pending


def body(week: Sequence[Hour], now: float) -> str:
    """The whole page body from the last 168 hours, oldest first."""
    day = week[-24:]
    day_sum, week_sum = activity.totals(day), activity.totals(week)
    legend = "<div class=legend>" + "".join(
        f'<span class="st st-{s}">{s}</span>' for s in jobs.FINAL_STATUSES) + "</div>"
    lines = ("<div class=legend><span class=k50>● p50</span><span class=k90>● p90</span>"
             "<span class=muted>per hour, last 24 h</span></div>")
    return (f"<p class=muted>Times in UTC; as of {escape(timefmt.exact(now))}. "
            "Hover a bar or a point for its numbers.</p>"
            "<h2>Jobs per hour, last 24 hours</h2>" + legend
            + jobs_per_hour(day, "jobs ended per hour by status, last 24 hours")
            + "<h2>Jobs per hour, last 7 days</h2>"
            + jobs_per_hour(week, "jobs ended per hour by status, last 7 days")
            + "<h2>Queue wait and run time</h2>" + percentile_table(day_sum, week_sum)
            + "<h3>Queue wait</h3>" + lines
            + hourly_percentiles(day, histograms.QUEUE_WAIT, "wait", "queue wait per hour")
            + "<h3>Run time</h3>" + lines
            + hourly_percentiles(day, histograms.DURATION, "duration", "run time per hour")
            + "<h2>Executor busy share</h2>" + busy_chart(day_sum, week_sum))
