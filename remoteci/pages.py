"""Plain server-rendered HTML pages; every value is escaped, nothing needs JavaScript."""

from __future__ import annotations

from html import escape
from typing import Any

from remoteci.queue import Stats

LOG_TAIL_BYTES = 256 * 1024
_STATUS_COLOURS = {"queued": "#777", "running": "#1a6fb3", "success": "#1d7f36",
                   "failed": "#b3261e", "timeout": "#a15c00", "error": "#8e24aa",
                   "cancelled": "#555"}
_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse}td,th{padding:.25em .7em;border-bottom:1px solid #ddd;text-align:left}
.status{font-weight:600}pre{background:#f6f6f6;padding:1em;overflow:auto;white-space:pre-wrap}
"""


def _page(title: str, body: str) -> str:
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8>"
            f"<title>{escape(title)}</title><style>{_STYLE}</style></head>"
            f"<body>{body}</body></html>")


def _status(status: str | None) -> str:
    colour = _STATUS_COLOURS.get(status or "", "#222")
    return f'<span class=status style="color:{colour}">{escape(str(status))}</span>'


def _text(value: Any) -> str:
    return "" if value is None else escape(str(value))


def index_page(stats: Stats, executors: list[dict[str, Any]], recent: list[dict[str, Any]]) -> str:
    rows = "".join(
        f"<tr><td><a href=\"/jobs/{escape(j['id'])}\">{escape(j['id'])}</a></td>"
        f"<td>{_status(j['status'])}</td><td>{_text(j['mode'])}</td><td>{_text(j['name'])}</td>"
        f"<td>{_text(j['source'])}</td><td>{_text(j['created_at'])}</td>"
        f"<td>{_text(j['duration'])}</td></tr>"
        for j in recent)
    workers = "".join(
        f"<tr><td>{_text(e.get('host'))}</td><td>{_text(e.get('id'))}</td>"
        f"<td>{_text(e.get('job') or 'idle')}</td></tr>" for e in executors)
    body = (
        "<h1>Remote CI</h1>"
        f"<p>running <b>{stats.running}</b> · queued <b>{stats.queued}</b> · "
        f"live executors <b>{stats.workers}</b></p>"
        "<h2>Executors</h2><table><tr><th>host</th><th>executor</th><th>job</th></tr>"
        f"{workers}</table>"
        "<h2>Recent jobs</h2><table><tr><th>id</th><th>status</th><th>mode</th><th>name</th>"
        f"<th>source</th><th>created</th><th>duration (s)</th></tr>{rows}</table>"
    )
    return _page("Remote CI", body)


def job_page(job: dict[str, Any], log_tail: bytes, truncated: bool) -> str:
    fields = "".join(f"<tr><th>{escape(k)}</th><td>"
                     f"{_status(v) if k == 'status' else _text(v)}</td></tr>"
                     for k, v in job.items())
    note = "<p>(showing the end of the log)</p>" if truncated else ""
    body = (f"<p><a href=\"/\">← all jobs</a></p><h1>Job {escape(job['id'])}</h1>"
            f"<table>{fields}</table><h2>Log</h2>{note}"
            f"<pre>{escape(log_tail.decode('utf-8', errors='replace'))}</pre>")
    return _page(f"Job {job['id']}", body)
