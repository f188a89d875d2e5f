"""Plain server-rendered HTML pages; every value is escaped, nothing needs JavaScript to be read.

The one script (the live log tail of a running job) is static, so the Content-Security-Policy
allows it by hash: no per-response nonce, and no injected script can ever run.
"""

from __future__ import annotations

import base64
import codecs
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from remoteci import jobs, timefmt
from remoteci.pages import ansi, charts
from remoteci.queue import Stats
from remoteci.store.activity import Hour

LOG_TAIL_BYTES = 256 * 1024
ACTIVE = (jobs.QUEUED, jobs.RUNNING)

_STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1f2328;background:#f6f8fa}
header{background:#24292f;color:#fff;padding:.7em 1.5em}header a{color:#fff;text-decoration:none}
main{padding:0 1.5em 2em;max-width:80em}h1{font-size:1.3em;margin:0}h2{font-size:1.1em;margin:1.4em 0 .5em}
table{border-collapse:collapse;background:#fff;border:1px solid #d0d7de;width:100%}
td,th{padding:.3em .7em;border-bottom:1px solid #eaeef2;text-align:left;vertical-align:top}
th{background:#f6f8fa;font-weight:600}a{color:#0969da}code,.id{font-family:ui-monospace,monospace}
.tiles{display:flex;gap:.8em;flex-wrap:wrap;margin-top:1em}
.tile{background:#fff;border:1px solid #d0d7de;border-radius:6px;padding:.5em 1em;min-width:6em}
.tile b{display:block;font-size:1.5em}
.st{font-weight:600;border-radius:1em;padding:0 .6em;color:#fff;white-space:nowrap}
.st-queued{background:#6e7781}.st-running{background:#0969da}.st-success{background:#1a7f37}
.st-failed{background:#cf222e}.st-timeout{background:#9a6700}.st-error{background:#8250df}
.st-cancelled{background:#57606a}
pre{background:#0d1117;color:#e6edf3;padding:1em;overflow:auto;white-space:pre-wrap;
word-break:break-all;border-radius:6px;min-height:3em}
form.filters{display:flex;gap:.6em;align-items:center;margin:.5em 0}
.paging{margin:.6em 0;display:flex;gap:1em}.muted{color:#57606a}
button{padding:.3em 1em}form{margin:.6em 0}
button.danger{background:#cf222e;color:#fff;border:0;border-radius:4px}
.stages{display:flex;gap:1em;align-items:flex-start;overflow-x:auto;margin-top:1em}
.stage{background:#fff;border:1px solid #d0d7de;border-radius:6px;padding:.5em .8em;min-width:14em}
.stage h3{font-size:1em;margin:.2em 0 .6em;display:flex;justify-content:space-between;gap:.5em}
.stage ul{list-style:none;margin:0;padding:0}.stage li{padding:.3em 0;border-top:1px solid #eaeef2}
.st-waiting{background:#afb8c1}
"""

# The one script: static, in its own file so it reads as JavaScript.
LIVE_TAIL_JS = (Path(__file__).parent / "live_tail.js").read_text()

_STYLE += charts.STYLE
LOG_STYLE = ansi.stylesheet()


def _hash(source: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode()).digest()).decode() + "'"


# Styles and the script are static, so they are allowed by hash: no style attribute, injected
# <style> or script can take effect, which is why log colours are classes, never inline styles.
CSP = (f"default-src 'none'; style-src {_hash(_STYLE)} {_hash(LOG_STYLE)}; "
       f"script-src {_hash(LIVE_TAIL_JS)}; connect-src 'self'; form-action 'self'; "
       "base-uri 'none'; frame-ancestors 'none'")


@dataclass(frozen=True)
class Listing:
    """One page of the job list, with the filters that produced it."""

    jobs: list[dict[str, Any]]
    status: str | None
    mode: str | None
    before: int | None
    next_before: int | None
    owner: str | None = None
    owners: list[str] | None = None  # known owners, for an admin's filter; None hides owners


def _page(title: str, body: str, refresh: int | None = None, script: bool = False,
          refresh_only_without_js: bool = False, log_style: bool = False) -> str:
    meta = ""
    if refresh is not None:
        meta = f"<meta http-equiv=refresh content={int(refresh)}>"
        if refresh_only_without_js:
            meta = f"<noscript>{meta}</noscript>"
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8>"
            f"<meta name=viewport content=\"width=device-width,initial-scale=1\">{meta}"
            f"<title>{escape(title)}</title><style>{_STYLE}</style>"
            + (f"<style>{LOG_STYLE}</style>" if log_style else "") + "</head><body>"
            f"<header><h1><a href=\"/\">Remote CI</a></h1></header><main>{body}</main>"
            + (f"<script>{LIVE_TAIL_JS}</script>" if script else "") + "</body></html>")


def _text(value: Any) -> str:
    return "" if value is None else escape(str(value))


def _status(status: Any) -> str:
    cls = f" st-{status}" if status in jobs.STATUSES else ""
    return f"<span class=\"st{cls}\">{_text(status)}</span>"


def _job_link(job_id: Any) -> str:
    return f"<a class=id href=\"/jobs/{escape(quote(str(job_id), safe=''))}\">{_text(job_id)}</a>"


def _seconds(value: Any) -> str:
    return "" if value is None else escape(timefmt.span(float(value)))


def _when(iso: Any, now: float) -> str:
    """A time as "3 min ago", with the exact UTC time as its tooltip."""
    moment = timefmt.epoch(iso) if isinstance(iso, str) else None
    if moment is None:
        return _text(iso)
    return (f"<time datetime=\"{escape(iso)}\" title=\"{timefmt.exact(moment)}\">"
            f"{timefmt.ago(moment, now)}</time>")


def _between(start: Any, end: Any, now: float) -> str:
    """The time from `start` to `end`; still going (no end yet) it counts to now, greyed."""
    first = timefmt.epoch(start) if isinstance(start, str) else None
    if first is None:
        return ""
    last = timefmt.epoch(end) if isinstance(end, str) else None
    if last is None:
        return f"<span class=muted title=\"so far\">{escape(timefmt.span(now - first))}</span>"
    return escape(timefmt.span(last - first))


def _query(**params: Any) -> str:
    kept = {k: v for k, v in params.items() if v not in (None, "")}
    return escape("/?" + urlencode(kept)) if kept else "/"


def _tiles(stats: Stats) -> str:
    tiles = [("running", stats.running), ("queued", stats.queued), ("executors", stats.workers),
             *stats.finished.items()]
    return "<div class=tiles>" + "".join(
        f"<div class=tile><b>{int(n)}</b><span class=muted>{escape(label)}</span></div>"
        for label, n in tiles) + "</div>"


def _executors(executors: list[dict[str, Any]], running: Mapping[str, dict[str, Any]],
               now: float) -> str:
    if not executors:
        return "<p class=muted>No live executor. Is a worker running?</p>"
    rows = []
    for e in sorted(executors, key=lambda e: (str(e.get("host")), str(e.get("id")))):
        job = running.get(str(e.get("id")))
        # A job the viewer may not see (another project's) shows as busy, without its id.
        job_cell = (f"{_job_link(job['id'])} {_text(job.get('name'))} "
                    f"<span class=muted>since {_when(job.get('started_at'), now)}</span>"
                    if job else "<span class=muted>busy</span>" if e.get("job")
                    else "<span class=muted>idle</span>")
        rows.append(f"<tr><td>{_text(e.get('host'))}</td><td class=id>{_text(e.get('id'))}</td>"
                    f"<td>{job_cell}</td></tr>")
    return ("<table><tr><th>host</th><th>executor</th><th>current job</th></tr>"
            + "".join(rows) + "</table>")


def _hosts(hosts: Mapping[str, Mapping[str, int]]) -> str:
    """Per worker host: a host jobs are pinned to but with no executor is one they wait for."""
    if not hosts:
        return ""
    rows = "".join(
        f"<tr><td>{_text(name)}</td><td>{int(h['executors'])}</td><td>{int(h['running'])}</td>"
        f"<td>{int(h['queued'])}"
        + (" <span class=muted>waiting: no live executor on this host</span>"
           if h["queued"] and not h["executors"] else "") + "</td></tr>"
        for name, h in hosts.items())
    return ("<h2>Hosts</h2><table><tr><th>host</th><th>executors</th><th>running</th>"
            f"<th>queued for it</th></tr>{rows}</table>")


def _queue(queued: list[dict[str, Any]], total: int, now: float) -> str:
    if not queued:
        return "<p class=muted>The queue is empty.</p>"
    rows = "".join(
        f"<tr><td>{_text(j['queue_position'])}</td><td>{_job_link(j['id'])}</td>"
        f"<td>{_text(j['name'])}</td><td>{_text(j['mode'])}</td><td>{_text(j['source'])}</td>"
        f"<td>{_text(j.get('host')) if j.get('host') else '<span class=muted>any</span>'}</td>"
        f"<td>{_when(j['created_at'], now)}</td>"
        f"<td>{_between(j['created_at'], None, now)}</td></tr>" for j in queued)
    more = (f"<p class=muted>{total - len(queued)} more: "
            f"<a href=\"{_query(status='queued')}\">all queued jobs</a></p>"
            if total > len(queued) else "")
    return ("<table><tr><th>#</th><th>id</th><th>name</th><th>mode</th><th>source</th>"
            f"<th>host</th><th>accepted</th><th>waiting</th></tr>{rows}</table>{more}")


def _select(name: str, options: tuple[str, ...] | list[str], chosen: str | None) -> str:
    items = [f"<option value=\"\">any {escape(name)}</option>"] + [
        f"<option{' selected' if o == chosen else ''}>{escape(o)}</option>" for o in options]
    return f"<select name={escape(name)}>{''.join(items)}</select>"


def _listing(listing: Listing, now: float) -> str:
    show_owner = listing.owners is not None
    owner = listing.owner if show_owner else None  # a project's own name is no filter to show
    form = ("<form class=filters method=get action=\"/\">"
            + _select("status", jobs.STATUSES, listing.status)
            + _select("mode", jobs.MODES, listing.mode)
            + (_select("owner", listing.owners or [], owner) if show_owner else "")
            + "<button>Filter</button>"
            + ("<a href=\"/\">clear</a>" if listing.status or listing.mode or owner else "")
            + "</form>")
    rows = "".join(
        f"<tr><td>{_job_link(j['id'])}</td><td>{_status(j['status'])}</td>"
        f"<td>{_text(j['name'])}</td><td>{_text(j['mode'])}</td><td>{_text(j['source'])}</td>"
        + (f"<td>{_text(j.get('owner'))}</td>" if show_owner else "")
        + f"<td>{_when(j['created_at'], now)}</td>"
        f"<td>{_between(j['created_at'], j['started_at'], now)}</td>"
        f"<td>{_duration(j, now)}</td></tr>"
        for j in listing.jobs) or (f"<tr><td colspan={9 if show_owner else 8} class=muted>"
                                   "No jobs match.</td></tr>")
    links = []
    if listing.before is not None:
        links.append(f"<a href=\"{_query(status=listing.status, mode=listing.mode, owner=owner)}\">"
                     "« newest</a>")
    if listing.next_before is not None:
        older = _query(status=listing.status, mode=listing.mode, owner=owner,
                       before=listing.next_before)
        links.append(f"<a rel=next href=\"{older}\">older »</a>")
    return (form + "<table><tr><th>id</th><th>status</th><th>name</th><th>mode</th>"
            + "<th>source</th>" + ("<th>owner</th>" if show_owner else "")
            + f"<th>accepted</th><th>queue wait</th><th>duration</th></tr>{rows}</table>"
            f"<div class=paging>{''.join(links)}</div>")


def index_page(stats: Stats, executors: list[dict[str, Any]], running: list[dict[str, Any]],
               queued: list[dict[str, Any]], listing: Listing, queued_total: int,
               now: float) -> str:
    by_executor = {str(j["worker"]): j for j in running if j.get("worker")}
    body = (_tiles(stats)
            + "<p><a href=\"/charts\">Charts: the last 24 hours and 7 days</a> · "
              "<a href=\"/schedules\">Schedules</a></p>"
            + "<h2>Executors</h2>" + _executors(executors, by_executor, now)
            + _hosts(stats.hosts)
            + "<h2>Queue</h2>" + _queue(queued, queued_total, now)
            + "<h2>Jobs</h2>" + _listing(listing, now)
            + "<p><a href=\"/history\">History: every job of the last months »</a></p>")
    # A plain reload keeps the overview current with or without JavaScript.
    return _page("Remote CI", body, refresh=15)


def _duration(job: Mapping[str, Any], now: float) -> str:
    if job.get("duration") is not None:
        return _seconds(job["duration"])
    return _between(job.get("started_at"), job.get("finished_at"), now)


_TIMES = ("created_at", "started_at", "finished_at")


def _field(key: str, value: Any, now: float) -> str:
    if key == "status":
        return _status(value)
    if key in _TIMES:
        return _when(value, now)
    if key == "duration":
        return _seconds(value)
    if key == "pipeline":
        return f"<a class=id href=\"/pipelines/{escape(quote(str(value), safe=''))}\">{_text(value)}</a>"
    return _text(value)


def log_view(tail: bytes, start: int, active: bool) -> tuple[ansi.Rendered, int]:
    """The rendered tail of a log and the byte offset the live tail goes on from.

    A tail cut from the middle of a log starts at its next whole line (not inside a character
    or an escape sequence); a growing log stops before a character or sequence still being
    written, which the live tail reads again whole.
    """
    if start:
        newline = tail.find(b"\n")
        skip = newline + 1 if newline >= 0 else 0
        tail, start = tail[skip:], start + skip
    if not active:
        return ansi.render(tail.decode("utf-8", errors="replace")), start + len(tail)
    decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
    text = decoder.decode(tail, final=False)  # one char per undecodable byte: lengths add up
    held = len(decoder.getstate()[0])
    cut = ansi.unfinished_suffix(text)
    if cut:
        held += len(text[-cut:].encode("utf-8", errors="surrogateescape"))
    kept = tail[:len(tail) - held]
    return ansi.render(kept.decode("utf-8", errors="replace")), start + len(kept)


def job_page(job: dict[str, Any], log_tail: bytes, log_start: int, cancel_token: str | None,
             now: float) -> str:
    job_id = str(job["id"])
    quoted = escape(quote(job_id, safe=""))
    fields = "".join(
        f"<tr><th>{escape(k)}</th><td>{_field(k, v, now)}</td></tr>"
        for k, v in job.items() if k != "script" and v is not None)
    wait = _between(job.get("created_at"), job.get("started_at"), now)
    if wait and job.get("status") != jobs.CANCELLED:
        fields += f"<tr><th>queue wait</th><td>{wait}</td></tr>"
    cancel = ""
    if cancel_token is not None:
        cancel = (f"<form method=post action=\"/jobs/{quoted}/cancel\">"
                  f"<input type=hidden name=csrf value=\"{escape(cancel_token)}\">"
                  "<button class=danger>Cancel job</button></form>")
    active = job.get("status") in ACTIVE
    rendered, offset = log_view(log_tail, log_start, active)
    raw = (f"<p><a href=\"/jobs/{quoted}/log\">Raw log</a> · "
           f"<a href=\"/jobs/{quoted}/log?download=1\" download>Download</a></p>")
    note = (f"<p class=muted>Showing the last {len(log_tail) // 1024} KiB of the log; "
            "the raw log has all of it.</p>" if log_start else "")
    live = ("<p class=muted>The log updates live. <a href=\"\">Reload</a></p>" if active else "")
    body = (f"<h2>Job <span class=id>{escape(job_id)}</span> {_status(job.get('status'))}</h2>"
            f"{cancel}<table>{fields}</table>"
            f"<h2>Script</h2><pre>{_text(job.get('script'))}</pre>"
            f"<h2>Log</h2>{live}{raw}{note}"
            f"<pre id=log data-status=\"{_text(job.get('status'))}\" data-offset=\"{offset}\" "
            f"data-sgr=\"{rendered.style.sgr()}\" data-src=\"/jobs/{quoted}/log\">"
            f"{rendered.html}<span id=logline>{rendered.last_line}</span></pre>")
    # Without JavaScript, a running job's page reloads itself instead of tailing.
    return _page(f"Job {job_id}", body, refresh=5 if active else None, script=active,
                 refresh_only_without_js=True, log_style=True)


def charts_page(week: list[Hour], now: float) -> str:
    # Reloads itself now and then, as the overview does, so a wall screen stays current.
    return _page("Remote CI charts", "<h2>Charts</h2>" + charts.body(week, now), refresh=60)


def history_page(found: list[dict[str, Any]], filters: Mapping[str, str | None],
                 next_cursor: str | None, now: float) -> str:
    """Finished jobs from the history database, newest first, with the search's filters."""
    form = ("<form class=filters method=get action=\"/history\">"
            + _select("status", jobs.FINAL_STATUSES, filters.get("status"))
            + _select("mode", jobs.MODES, filters.get("mode"))
            + f"<input name=name placeholder=\"name starts with\" value=\"{_text(filters.get('name'))}\">"
            + f"<input name=since type=date value=\"{_text(filters.get('since'))}\">"
            + "<button>Search</button><a href=\"/history\">clear</a></form>")
    rows = "".join(
        f"<tr><td>{_job_link(j['id'])}</td><td>{_status(j['status'])}</td>"
        f"<td>{_text(j['name'])}</td><td>{_text(j['mode'])}</td><td>{_text(j.get('owner'))}</td>"
        f"<td>{_when(j['finished_at'], now)}</td><td>{_duration(j, now)}</td></tr>"
        for j in found) or "<tr><td colspan=7 class=muted>No jobs match.</td></tr>"
    more = ""
    if next_cursor is not None:
        kept = {k: v for k, v in filters.items() if v}
        more = (f"<div class=paging><a rel=next href=\""
                f"{escape('/history?' + urlencode({**kept, 'cursor': next_cursor}))}\">older »</a></div>")
    table = ("<table><tr><th>id</th><th>status</th><th>name</th><th>mode</th><th>owner</th>"
             f"<th>finished</th><th>duration</th></tr>{rows}</table>")
    return _page("History - Remote CI", "<h2>History</h2>" + form + table + more)
