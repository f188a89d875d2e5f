"""A pipeline's jobs as the store keeps them until their stage starts: pure, so it is unit-tested.

Every job gets its id at submission (the pipeline object lists them all), but its record and
queue entry are written only when its stage starts (or, never run, as `cancelled` when the
pipeline ends before). A job record therefore always means what it means for any job: a
`queued` job is on the queue. Pre-written records would have needed a new status that every
listing, index, count and page would have had to learn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from remoteci import jobs

if TYPE_CHECKING:  # the executor loads this module's CODE, not the API's validation
    from remoteci.pipelines.spec import PipelineSpec

CODE = "code"  # the snapshot dir's name inside the pipeline's dir


@dataclass(frozen=True)
class Snapshot:
    """The one copy of the code every job of the pipeline starts from."""

    mode: str  # what the jobs show: "git", "rsync" or "upload"
    source: str  # what the jobs show as their source (a redacted URL, a workspace, "upload")
    root: str  # the pipeline's dir, holding CODE (a tree) or `archive`
    archive: str | None = None  # the uploaded archive's path, for upload pipelines
    ref: str | None = None
    commit: str | None = None


def stage_templates(spec: PipelineSpec, pipeline_id: str, owner: str,
                    snapshot: Snapshot) -> list[dict[str, Any]]:
    """[{name, jobs: [{id, record, payload}]}]: what lua.py turns into jobs, field for field.

    Record values are strings (a Redis hash); a payload holds no JSON null and no empty list,
    which Lua's cjson would read back as something else.
    """
    stages: list[dict[str, Any]] = []
    earlier: list[str] = []  # ids of jobs of earlier stages that keep artifacts
    for index, stage in enumerate(spec.stages):
        entries: list[dict[str, Any]] = []
        for job in stage.jobs:
            job_id = jobs.new_job_id()
            common = job.common
            record = {"id": job_id, "mode": snapshot.mode, "script": common.script,
                      "source": snapshot.source, "timeout": str(common.timeout), "owner": owner,
                      "name": job.name, "pipeline": pipeline_id, "stage": stage.name,
                      "stage_index": str(index)}
            if snapshot.ref:
                record["ref"] = snapshot.ref
            if snapshot.commit:
                record["commit"] = snapshot.commit
            payload: dict[str, Any] = {"id": job_id, "script": common.script, "owner": owner,
                                       "timeout": common.timeout, "env": common.env,
                                       "pipeline": pipeline_id, "stage": stage.name}
            if snapshot.archive:
                payload.update({"mode": "upload", "path": snapshot.archive})
            else:  # a tree: copied like a workspace, from the pipeline's own dir
                payload.update({"mode": "rsync", "workspace": CODE, "snapshot_root": snapshot.root})
            if common.artifacts:
                payload["artifacts"] = list(common.artifacts)
            if earlier:
                payload["inputs"] = list(earlier)
            entries.append({"id": job_id, "record": record, "payload": payload})
        earlier += [e["id"] for e, job in zip(entries, stage.jobs, strict=True)
                    if job.common.artifacts]
        stages.append({"name": stage.name, "jobs": entries})
    return stages
