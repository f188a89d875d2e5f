"""A schedule's job: checked once, when the schedule is made, by the rules of a submission.

What is kept is everything a tick needs to make the job without asking again: the job as the
API shows it, the source the executor reads (a workspace resolved under the root, a clone URL
without credentials) and, apart from both, a git credential.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from remoteci import jobs
from remoteci.auth.identity import Identity, check_git_host, check_workspace
from remoteci.config import Settings
from remoteci.errors import ApiError
from remoteci.sources.git import redact_url, split_credentials, validate_git_ref, validate_git_url
from remoteci.sources.workspaces import lexical_workspace, locate_workspace, require_directory
from remoteci.web import submissions

MODES = ("git", "rsync")
_JOB_HINT = ('an object such as {"mode": "git", "repo": "https://host/org/repo.git", '
             '"script": "make nightly"} or {"mode": "rsync", "workspace": "project-a", '
             '"script": "make nightly"}')


@dataclass(frozen=True)
class JobSpec:
    shown: dict[str, Any]  # the schedule's `job`, as the API shows it (no credential)
    source: str  # the job object's `source`
    payload: dict[str, Any]  # the mode's part of the queued payload
    record: dict[str, str]  # the mode's part of the job record (a git ref)
    credential: str | None = None  # a git credential (JSON), kept apart and never shown

    def dumps(self) -> tuple[str, str]:
        """The two stored strings: the job as shown, and how to run it."""
        run = {"source": self.source, "payload": self.payload, "record": self.record}
        return _dumps(self.shown), _dumps(run)


def loads(shown: str, run: str, credential: str | None) -> JobSpec:
    how = json.loads(run)
    return JobSpec(json.loads(shown), how["source"], how["payload"], how["record"], credential)


def parse_job(value: Any, settings: Settings, identity: Identity) -> JobSpec:
    """The `job` field: a git or rsync submission with its `mode`; a 400 names what is wrong."""
    if not isinstance(value, dict):
        raise ApiError(400, f"field 'job' is required: {_JOB_HINT}")
    mode = value.get("mode")
    if mode not in MODES:
        raise ApiError(400, f"field 'job.mode' must be one of: {', '.join(MODES)} (upload jobs "
                            "cannot be scheduled: their code is sent with each submission)")
    data = {k: v for k, v in value.items() if k != "mode"}
    submissions.check_known_fields(data, mode)
    common = submissions.parse_common(data, settings.job_timeout, settings.webhook_allow,
                                      settings.webhook_secret is not None)
    shown: dict[str, Any] = {"mode": mode, "script": common.script, "timeout": common.timeout,
                             **({"name": common.name} if common.name else {}),
                             **({"env": common.env} if common.env else {}),
                             **({"artifacts": list(common.artifacts)} if common.artifacts else {}),
                             **({"webhook": common.webhook} if common.webhook else {}),
                             **({"host": common.host} if common.host else {})}
    if mode == "rsync":
        return _rsync(data, settings, identity, shown)
    return _git(data, settings, identity, shown)


def _rsync(data: dict[str, Any], settings: Settings, identity: Identity,
           shown: dict[str, Any]) -> JobSpec:
    workspace = submissions.required_string(
        data, "workspace", "a directory under the workspace root, e.g. \"project-a\"")
    root = settings.workspace_dir
    # Pinned to a host, the workspace lives there, as for a submission: judged by its name
    # only, looked for when each job starts on that host.
    lexical = lexical_workspace(root, workspace)
    relative = lexical if shown.get("host") else locate_workspace(root, workspace)
    check_workspace(identity, workspace, relative, lexical)
    if relative is None:
        raise ApiError(403, f"workspace {workspace!r} is outside the workspace root; "
                            "use a directory inside it")
    if not shown.get("host"):
        require_directory(root, relative, workspace)
    return JobSpec({**shown, "workspace": workspace}, workspace, {"workspace": relative}, {})


def _git(data: dict[str, Any], settings: Settings, identity: Identity,
         shown: dict[str, Any]) -> JobSpec:
    repo = submissions.required_string(data, "repo", "a clone URL such as "
                                       "\"https://host/org/repo.git\"")
    repo = validate_git_url(repo, allow_file=settings.git_allow_file)
    ref = data.get("ref")
    if ref is not None and not isinstance(ref, str):
        raise ApiError(400, "field 'ref' must be a string: a branch, tag or commit sha")
    ref = validate_git_ref(ref)
    check_git_host(identity, repo)
    clean, credential = split_credentials(repo)
    payload: dict[str, Any] = {"repo": clean, "ref": ref,
                               **({"git_credential": True} if credential else {})}
    return JobSpec({**shown, "repo": redact_url(repo), **({"ref": ref} if ref else {})},
                   redact_url(repo), payload, {"ref": ref} if ref else {},
                   credential.to_json() if credential else None)


def job_entry(spec: JobSpec, job_id: str, owner: str, schedule_id: str, created_at: str,
              schedule_name: str | None = None) -> tuple[dict[str, str], dict[str, Any]]:
    """The job record and queued payload a tick (or run-now) enqueues, as a submission's; a job
    without a name of its own is labelled with its schedule's, so lists show where it came from."""
    shown = spec.shown
    job = jobs.NewJob(shown["mode"], shown["script"], spec.source, shown["timeout"], owner,
                      shown.get("name") or schedule_name, shown.get("host"),
                      shown.get("webhook"), shown.get("env", {}), shown.get("artifacts") or ())
    return jobs.queued_entry(job, job_id, created_at, {"schedule": schedule_id, **spec.record},
                             spec.payload)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)
