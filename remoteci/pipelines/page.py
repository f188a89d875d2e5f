"""The HTML page of one pipeline: its stages as columns, each job with its status and link."""

from __future__ import annotations

from html import escape
from typing import Any

from remoteci.pages.render import CSP, _job_link, _page, _text, _when

__all__ = ["CSP", "pipeline_page"]

REFRESH_SECONDS = 5


def _status(status: str) -> str:
    return f"<span class=\"st st-{escape(status)}\">{escape(status)}</span>"


def pipeline_page(pipeline: dict[str, Any], found: dict[str, dict[str, Any] | None],
                  now: float) -> str:
    columns = []
    for stage in pipeline["stages"]:
        rows = []
        for job_id in stage["jobs"]:
            job = found.get(job_id)
            status = str(job["status"]) if job else "waiting"
            name = _text(job.get("name")) if job else ""
            link = _job_link(job_id) if job else f"<span class=\"id muted\">{_text(job_id)}</span>"
            rows.append(f"<li>{_status(status)} <b>{name}</b><br>{link}</li>")
        columns.append(f"<section class=stage><h3><span>{_text(stage['name'])}</span>"
                       f"{_status(stage['status'])}</h3><ul>{''.join(rows)}</ul></section>")
    facts = [("status", _status(pipeline["status"])), ("source", _text(pipeline.get("source"))),
             ("commit", _text(pipeline.get("commit"))), ("owner", _text(pipeline.get("owner"))),
             ("created", _when(pipeline.get("created_at"), now)),
             ("finished", _when(pipeline.get("finished_at"), now)),
             ("error", _text(pipeline.get("error")))]
    table = "".join(f"<tr><th>{key}</th><td>{value}</td></tr>" for key, value in facts if value)
    title = pipeline.get("name") or pipeline["id"]
    body = (f"<h2>Pipeline {_text(title)} <span class=\"id muted\">{_text(pipeline['id'])}</span>"
            f"</h2><table>{table}</table><div class=stages>{''.join(columns)}</div>")
    active = pipeline["status"] == "running"
    return _page(f"Pipeline {title}", body, refresh=REFRESH_SECONDS if active else None)
