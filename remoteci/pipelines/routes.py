"""The pipeline routes: submit (JSON with a git or rsync source, or multipart with an archive),
list, read, cancel, and the HTML page. A project token sees only its own pipelines."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from remoteci import events, jobs
from remoteci.auth.identity import Identity, check_git_host, check_workspace, listing_owner, may_see
from remoteci.config import Settings
from remoteci.errors import ApiError
from remoteci.history.db import HistoryDB, HistoryUnavailable
from remoteci.pipelines import cleanup, snapshot
from remoteci.pipelines.objects import pipeline_object
from remoteci.pipelines.plan import Snapshot, stage_templates
from remoteci.pipelines.spec import (
    GitSource,
    Limits,
    PipelineSpec,
    RsyncSource,
    parse_pipeline,
    parse_pipeline_field,
)
from remoteci.pipelines.store import PipelineStore
from remoteci.queue import AlreadySubmitted, JobStore, OverQuota, QueueFull
from remoteci.sources.git import redact_url
from remoteci.sources.workspaces import lexical_workspace, locate_workspace, require_directory
from remoteci.web import submissions
from remoteci.web.messages import Request, Response, json_response
from remoteci.web.routing import AppParts, Route, path
from remoteci.web.uploads import receive_upload

COMPONENT = "api"
MAX_JSON_BODY = 1024 * 1024  # as a job submission's
LIST_LIMIT_MAX = 500
FORM_FIELDS = ("code", "pipeline")


def routes(parts: AppParts) -> list[Route]:
    """The pipeline routes, registered with the app through remoteci/routes.py."""
    pipelines = PipelineRoutes(parts.settings, parts.store, parts.history)
    return [
        Route("POST", path(r"/api/pipelines"), pipelines.submit, "api"),
        Route("GET", path(r"/api/pipelines"), pipelines.list, "api"),
        Route("GET", path(r"/api/pipelines/(?P<pid>[^/]+)"), pipelines.get, "api"),
        Route("POST", path(r"/api/pipelines/(?P<pid>[^/]+)/cancel"), pipelines.cancel, "api"),
        Route("GET", path(r"/pipelines/(?P<pid>[^/]+)"), pipelines.page, "page"),
    ]


class PipelineRoutes:
    def __init__(self, settings: Settings, store: JobStore, history: HistoryDB | None = None):
        self.settings = settings
        self.store = store
        self.history = history  # answers for a pipeline whose Redis record expired
        self.pipelines = PipelineStore(store.r, settings.retention_seconds, store.min_replicas)
        self.limits = Limits(settings.job_timeout, settings.git_allow_file, settings.webhook_allow,
                             settings.webhook_secret is not None)

    # --- submitting ------------------------------------------------------------------------

    def submit(self, request: Request) -> Response:
        content_type = str(request.environ.get("CONTENT_TYPE") or "")
        if content_type.split(";")[0].strip().lower() != "multipart/form-data":
            data = submissions.parse_json_body(request.body(MAX_JSON_BODY))
            return self._accept(request, parse_pipeline(data, self.limits, uploaded=False), None)
        fields, archive = receive_upload(request.environ, self.settings.uploads_dir,
                                         self.settings.max_upload_mb * 1024 * 1024)
        try:
            unknown = sorted(set(fields) - set(FORM_FIELDS))
            if unknown:
                raise ApiError(400, f"unknown form field {unknown[0]!r}; send the archive as file "
                                    "field 'code' and the pipeline (without 'source') as JSON in "
                                    "field 'pipeline'")
            data = parse_pipeline_field(fields.get("pipeline") or "")
            return self._accept(request, parse_pipeline(data, self.limits, uploaded=True), archive)
        finally:
            archive.unlink(missing_ok=True)  # kept ones were moved into the pipeline's dir

    def _accept(self, request: Request, spec: PipelineSpec, archive: Path | None) -> Response:
        identity = request.identity
        key = submissions.parse_idempotency_key(request.header("Idempotency-Key"))
        relative = self._authorize(identity, spec)
        pipeline_id = jobs.new_job_id()
        path = snapshot.make_dir(self.settings.data_dir, pipeline_id)
        try:
            taken = self._take_snapshot(spec, path, relative, archive)
            fields = {"id": pipeline_id, "owner": identity.owner, "mode": taken.mode,
                      "source": taken.source, "stage": "0"}
            optional = {"name": spec.name, "ref": taken.ref, "commit": taken.commit}
            fields.update({k: v for k, v in optional.items() if v})
            if spec.webhook:
                fields.update({"webhook": spec.webhook, "webhook_status": "pending",
                               "webhook_attempts": "0"})
            stages = stage_templates(spec, pipeline_id, identity.owner, taken)
            self.pipelines.create(pipeline_id, fields, stages, self.settings.max_queue, key,
                                  self.settings.max_queued_per_owner)
        except AlreadySubmitted as earlier:
            # A retry of a submission whose reply was lost: the pipeline it made, not a second.
            snapshot.remove(self.settings.data_dir, pipeline_id)
            return json_response(202, self._visible(earlier.job_id, identity),
                                 [("Location", f"/api/pipelines/{earlier.job_id}"),
                                  ("Idempotent-Replayed", "true")])
        except QueueFull:
            snapshot.remove(self.settings.data_dir, pipeline_id)
            raise ApiError(503, f"the queue is full ({self.settings.max_queue} jobs waiting); "
                                "retry later", [("Retry-After", "30")]) from None
        except OverQuota:
            snapshot.remove(self.settings.data_dir, pipeline_id)
            raise ApiError(429, f"owner {identity.owner!r} may have at most "
                                f"{self.settings.max_queued_per_owner} jobs queued "
                                "(REMOTE_CI_MAX_QUEUED_PER_OWNER), and the pipeline's first stage "
                                "would pass that; retry once some have started",
                           [("Retry-After", "30")]) from None
        except BaseException:
            snapshot.remove(self.settings.data_dir, pipeline_id)
            raise
        events.info(COMPONENT, f"pipeline {pipeline_id} accepted mode={taken.mode} "
                               f"owner={identity.owner} stages={len(spec.stages)} "
                               f"jobs={sum(len(s.jobs) for s in spec.stages)}")
        return json_response(202, self._visible(pipeline_id, identity),
                             [("Location", f"/api/pipelines/{pipeline_id}")])

    def _authorize(self, identity: Identity, spec: PipelineSpec) -> str | None:
        """The token's rights on the source, as for a single job; the workspace's path below
        the root for an rsync source."""
        source = spec.source
        if isinstance(source, GitSource):
            check_git_host(identity, source.repo)
        if not isinstance(source, RsyncSource):
            return None
        root = self.settings.workspace_dir
        relative = locate_workspace(root, source.workspace)
        check_workspace(identity, source.workspace, relative,
                        lexical_workspace(root, source.workspace))
        if relative is None:
            raise ApiError(403, f"field 'source.workspace': {source.workspace!r} is outside the "
                                "workspace root; use a directory inside it")
        require_directory(root, relative, source.workspace)
        return relative

    def _take_snapshot(self, spec: PipelineSpec, path: Path, relative: str | None,
                       archive: Path | None) -> Snapshot:
        source = spec.source
        if isinstance(source, GitSource):
            commit = snapshot.take_git(path, source.repo, source.ref,
                                       timeout=self.settings.git_timeout,
                                       allow_file=self.settings.git_allow_file)
            return Snapshot("git", redact_url(source.repo), str(path), ref=source.ref,
                            commit=commit)
        if isinstance(source, RsyncSource):
            assert relative is not None
            snapshot.take_workspace(path, self.settings.workspace_dir, relative,
                                    self.settings.job_timeout)
            return Snapshot("rsync", source.workspace, str(path))
        assert archive is not None  # no source: the code came as an archive
        kept = snapshot.keep_archive(path, archive)
        return Snapshot("upload", "upload", str(path), archive=str(kept))

    # --- reading and acting ----------------------------------------------------------------

    def list(self, request: Request) -> Response:
        owner = listing_owner(request.identity, request.query("owner") or None)
        limit = list_limit(request.query("limit"))
        return json_response(200, {"pipelines": self.pipelines.list(owner, limit)})

    def get(self, request: Request) -> Response:
        return json_response(200, self._visible(request.params["pid"], request.identity))

    def cancel(self, request: Request) -> Response:
        pipeline_id = request.params["pid"]
        seen = self._visible(pipeline_id, request.identity)
        outcome = self.pipelines.cancel(pipeline_id)
        if outcome == "missing":  # expired: the 404, or what the history says it ended as
            outcome = self._visible(pipeline_id, request.identity)["status"] or seen["status"]
        if outcome != "ok":
            raise ApiError(409, f"pipeline {pipeline_id} already ended with status {outcome!r}; "
                                "only a running pipeline can be cancelled")
        events.info(COMPONENT, f"pipeline {pipeline_id} cancelled")
        cleanup.release_if_done(self.store.r, self.settings.data_dir, pipeline_id)
        return json_response(202, self._visible(pipeline_id, request.identity))

    def page(self, request: Request) -> Response:
        from remoteci.pipelines.page import CSP, pipeline_page

        pipeline = self._visible(request.params["pid"], request.identity)
        ids = [job_id for stage in pipeline["stages"] for job_id in stage["jobs"]]
        found = {job_id: self.store.get(job_id) for job_id in ids}
        data = pipeline_page(pipeline, found, time.time()).encode()
        return Response(200, [("Content-Type", "text/html; charset=utf-8"),
                              ("Content-Length", str(len(data))), ("Cache-Control", "no-store"),
                              ("Content-Security-Policy", CSP), ("Referrer-Policy", "same-origin")],
                        [data])

    def _visible(self, pipeline_id: str, identity: Identity) -> dict[str, Any]:
        """The pipeline, or a 404 worded as for an unknown id when it is another owner's."""
        pipeline = None
        if jobs.is_valid_job_id(pipeline_id):
            pipeline = self.pipelines.get(pipeline_id) or self._from_history(pipeline_id)
        if pipeline is None or not may_see(identity, pipeline):
            kept = self.settings.history_days if self.history else self.settings.retention_days
            raise ApiError(404, f"no pipeline with id {pipeline_id[:80]!r} (unknown, or older "
                                f"than {kept} days)")
        return pipeline

    def _from_history(self, pipeline_id: str) -> dict[str, Any] | None:
        """A pipeline whose Redis record expired, as the history database kept it."""
        if self.history is None:
            return None
        try:
            self.history.ensure_schema()
            record = self.history.get_pipeline(pipeline_id)
        except HistoryUnavailable as exc:
            events.error(COMPONENT, str(exc))
            raise ApiError(503, "the history database is unreachable; retry later",
                           [("Retry-After", "5")]) from None
        return None if record is None else pipeline_object(record)


def list_limit(raw: str | None) -> int:
    """The `limit` query parameter of the listing: 1..500, 50 when not given."""
    if raw is None or raw == "":
        return 50
    if not raw.isdigit() or not 1 <= int(raw) <= LIST_LIMIT_MAX:
        raise ApiError(400, f"query parameter 'limit' must be a whole number, 1..{LIST_LIMIT_MAX}")
    return int(raw)
