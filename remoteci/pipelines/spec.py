"""What a pipeline submission says, validated: pure functions, each error naming the field."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from remoteci.errors import ApiError
from remoteci.sources.git import validate_git_ref, validate_git_url
from remoteci.web import strict_json, submissions
from remoteci.webhooks.rules import HostPattern, validate_webhook

T = TypeVar("T")

MAX_STAGES = 20
MAX_JOBS = 50  # in the whole pipeline: each is a queue entry and a log the clients follow
MAX_LABEL_CHARS = 100
PIPELINE_FIELDS = ("name", "source", "stages", "webhook")
STAGE_FIELDS = ("name", "jobs")
JOB_FIELDS = ("name", "script", "timeout", "env", "artifacts")
SOURCE_FIELDS = {"git": ("mode", "repo", "ref"), "rsync": ("mode", "workspace")}
EXAMPLE = ('{"name": "ci", "source": {"mode": "git", "repo": "https://host/org/repo.git", '
           '"ref": "main"}, "stages": [{"name": "build", "jobs": [{"name": "build", '
           '"script": "make", "artifacts": ["dist/**"]}]}]}')


@dataclass(frozen=True)
class GitSource:
    repo: str  # validated, may still hold `user:password@` (split off by the snapshot)
    ref: str | None


@dataclass(frozen=True)
class RsyncSource:
    workspace: str  # as given; resolved against the workspace root by the route


@dataclass(frozen=True)
class JobSpec:
    name: str
    common: submissions.Common


@dataclass(frozen=True)
class StageSpec:
    name: str
    jobs: tuple[JobSpec, ...]


@dataclass(frozen=True)
class PipelineSpec:
    name: str | None
    source: GitSource | RsyncSource | None  # None: the uploaded archive is the code
    stages: tuple[StageSpec, ...]
    webhook: str | None = None


@dataclass(frozen=True)
class Limits:
    """The server's settings a pipeline is checked against."""

    max_timeout: int
    allow_file: bool = False
    webhook_allow: tuple[HostPattern, ...] = ()
    webhook_signed: bool = False


def parse_pipeline_field(raw: str) -> dict[str, Any]:
    """The multipart `pipeline` field: a JSON object, as the JSON body would be."""
    if not raw.strip():
        raise ApiError(400, f"field 'pipeline' is required: the pipeline as JSON, e.g. {EXAMPLE}")
    try:
        data = strict_json.loads(raw.encode())
    except strict_json.JsonError as exc:
        raise ApiError(400, f"field 'pipeline' is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ApiError(400, "field 'pipeline' must be a JSON object")
    return data


def parse_pipeline(data: Mapping[str, Any], limits: Limits, *, uploaded: bool) -> PipelineSpec:
    """The whole pipeline; `uploaded`: the code came as a multipart archive, so no `source`."""
    _known(data, PIPELINE_FIELDS, "the pipeline")
    if uploaded and data.get("source") is not None:
        raise ApiError(400, "field 'source' must be left out when the code is uploaded: the "
                            "archive in field 'code' is the pipeline's code")
    source = None if uploaded else _source(data.get("source"), limits)
    return PipelineSpec(
        name=_label(data.get("name"), "name", required=False),
        source=source,
        stages=_stages(data.get("stages"), limits),
        webhook=validate_webhook(data.get("webhook"), limits.webhook_allow, limits.webhook_signed),
    )


def _source(value: Any, limits: Limits) -> GitSource | RsyncSource:
    if not isinstance(value, dict):
        raise ApiError(400, "field 'source' is required: {\"mode\": \"git\", \"repo\": ..., "
                            "\"ref\": ...} or {\"mode\": \"rsync\", \"workspace\": ...} (or upload "
                            "the code as multipart field 'code' with the pipeline in field 'pipeline')")
    mode = value.get("mode")
    if mode not in SOURCE_FIELDS:
        raise ApiError(400, "field 'source.mode' must be \"git\" or \"rsync\"")
    _known(value, SOURCE_FIELDS[mode], "field 'source'")
    if mode == "rsync":
        return RsyncSource(_at("source", lambda: submissions.required_string(
            value, "workspace", "a directory under the workspace root, e.g. \"project-a\"")))
    repo = _at("source", lambda: submissions.required_string(
        value, "repo", "a clone URL such as \"https://host/org/repo.git\""))
    repo = _at("source", lambda: validate_git_url(repo, allow_file=limits.allow_file))
    return GitSource(repo, _at("source", lambda: validate_git_ref(value.get("ref"))))


def _stages(value: Any, limits: Limits) -> tuple[StageSpec, ...]:
    if not isinstance(value, list) or not value:
        raise ApiError(400, f"field 'stages' must be a non-empty list of stages, e.g. {EXAMPLE}")
    if len(value) > MAX_STAGES:
        raise ApiError(400, f"field 'stages' has {len(value)} stages; at most {MAX_STAGES}")
    stages: list[StageSpec] = []
    stage_names: set[str] = set()
    job_names: set[str] = set()
    for i, raw in enumerate(value):
        where = f"stages[{i}]"
        if not isinstance(raw, dict):
            raise ApiError(400, f"field '{where}' must be an object {{\"name\", \"jobs\"}}")
        _known(raw, STAGE_FIELDS, f"field '{where}'")
        name = _label(raw.get("name"), f"{where}.name", required=True)
        assert name is not None
        if name in stage_names:
            raise ApiError(400, f"field '{where}.name': stage name {name!r} is used twice; "
                                "give every stage its own name")
        stage_names.add(name)
        jobs = raw.get("jobs")
        if not isinstance(jobs, list) or not jobs:
            raise ApiError(400, f"field '{where}.jobs' must be a non-empty list of jobs "
                                "{\"name\", \"script\", ...}")
        specs = tuple(_job(job, f"{where}.jobs[{j}]", limits) for j, job in enumerate(jobs))
        for j, job_spec in enumerate(specs):
            if job_spec.name in job_names:
                raise ApiError(400, f"field '{where}.jobs[{j}].name': job name {job_spec.name!r} is "
                                    "used twice; job names label the logs, so each must be unique")
            job_names.add(job_spec.name)
        stages.append(StageSpec(name, specs))
    total = sum(len(s.jobs) for s in stages)
    if total > MAX_JOBS:
        raise ApiError(400, f"field 'stages' holds {total} jobs; a pipeline has at most {MAX_JOBS}")
    return tuple(stages)


def _job(value: Any, where: str, limits: Limits) -> JobSpec:
    if not isinstance(value, dict):
        raise ApiError(400, f"field '{where}' must be an object {{\"name\", \"script\", "
                            "\"timeout\", \"env\", \"artifacts\"}")
    _known(value, JOB_FIELDS, f"field '{where}'")
    name = _label(value.get("name"), f"{where}.name", required=True)
    assert name is not None
    common = _at(where, lambda: submissions.parse_common(value, limits.max_timeout))
    return JobSpec(name, common)


def _label(value: Any, where: str, *, required: bool) -> str | None:
    if value is None or value == "":
        if required:
            raise ApiError(400, f"field '{where}' is required: a short label such as \"build\"")
        return None
    if not isinstance(value, str) or not value.isprintable() or len(value) > MAX_LABEL_CHARS:
        raise ApiError(400, f"field '{where}' must be printable text of at most "
                            f"{MAX_LABEL_CHARS} characters")
    return value


def _known(data: Mapping[str, Any], allowed: tuple[str, ...], what: str) -> None:
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise ApiError(400, f"unknown field {unknown[0]!r} in {what}; "
                            f"the fields are: {', '.join(allowed)}")


def _at(where: str, check: Callable[[], T]) -> T:
    """Run a shared field check, naming where in the pipeline the field it refuses is."""
    try:
        return check()
    except ApiError as exc:
        raise ApiError(exc.status, f"{where}: {exc.message}", exc.headers) from None
