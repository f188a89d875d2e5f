"""The OpenAPI document: valid, served without a token, and true to the router and the code."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from openapi_spec_validator import validate

from remoteci import jobs
from remoteci.artifacts.manifest import MAX_PATTERN_CHARS, MAX_PATTERNS
from remoteci.config import load_settings
from remoteci.http import LIST_LIMIT_MAX, MAX_JSON_BODY, App
from remoteci.pages.routes import PageRoutes
from remoteci.queue import JobStore
from remoteci.routes import ROUTE_SETS
from remoteci.schedules.page import SchedulePages
from remoteci.sources.git import MAX_REF_CHARS
from remoteci.sources.git import MAX_URL_CHARS as MAX_REPO_CHARS
from remoteci.store.redis_conn import connect
from remoteci.web import openapi, submissions, uploads
from remoteci.webhooks.rules import MAX_URL_CHARS as MAX_WEBHOOK_CHARS
from tests.helpers import ROOT, Server

DOC = openapi.load()
SCHEMAS = DOC["components"]["schemas"]


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    """The real router, built as `serve` builds it (its Redis is never asked anything here)."""
    base = tmp_path_factory.mktemp("openapi-app")
    settings = load_settings({"REMOTE_CI_TOKEN": "test-token-0123456789",
                              "REMOTE_CI_REDIS_URL": "redis://127.0.0.1:1/0",
                              "REMOTE_CI_WORKSPACE_DIR": str(base / "ws"),
                              "REMOTE_CI_DATA_DIR": str(base / "data"),
                              "REMOTE_CI_WORK_DIR": str(base / "work")})
    client = connect(settings.redis_url)
    yield App(settings, JobStore(client, 3600), ROUTE_SETS)
    client.close()


def _api_routes(app: App) -> set[tuple[str, str]]:
    """(method, path template) of every route but the HTML pages, which are for people."""
    return {(route.method, route.label) for route in app.routes
            if not isinstance(getattr(route.handler, "__self__", None), PageRoutes | SchedulePages)
            and not route.label.startswith("/pipelines/")}  # the pipeline page


def _documented() -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in DOC["paths"].items() for method in item}


def test_the_document_is_valid_openapi_3_1() -> None:
    assert DOC["openapi"].startswith("3.1.")
    validate(DOC)
    validate(openapi.for_server(60))


def test_every_route_is_documented_and_nothing_else(app: App) -> None:
    assert _api_routes(app) == _documented()


def test_html_pages_are_the_only_routes_left_out(app: App) -> None:
    left_out = {route.label for route in app.routes} - {path for _, path in _documented()}
    assert left_out == {"/", "/jobs/{id}", "/jobs/{id}/log", "/jobs/{id}/cancel", "/history", "/charts",
                        "/pipelines/{pid}", "/schedules", "/schedules/{schedule}/{action}"}


def test_every_documented_route_is_answered_by_the_live_server(server: Server) -> None:
    for method, template in sorted(_documented()):
        path = template.replace("{id}", "0000000000000000").replace("{path}", "dist/a.whl")
        resp = server.request(method, path, token=None)
        assert resp.status != 405, (method, path, resp.body)
        assert b"no such route" not in resp.body, (method, path, resp.body)


def test_served_without_a_token_with_this_servers_timeout(server: Server) -> None:
    resp = server.request("GET", "/api/openapi.json", token=None)
    assert resp.status == 200 and resp.headers["content-type"] == "application/json"
    served = resp.json()
    assert served["components"]["schemas"]["Timeout"]["maximum"] == 60  # REMOTE_CI_JOB_TIMEOUT
    served["components"]["schemas"]["Timeout"]["maximum"] = 3600
    assert served == DOC


def test_the_job_schema_names_every_field_the_job_object_can_have() -> None:
    # log_expired: on a job answered from history once its Redis record expired; waiting_for:
    # on a queued job pinned to a host with no live executor
    assert set(SCHEMAS["Job"]["properties"]) == {*jobs.SHOWN_FIELDS, "queue_position", "log_expired",
                                                 "waiting_for"}
    assert SCHEMAS["Job"]["properties"]["status"]["enum"] == list(jobs.STATUSES)
    assert SCHEMAS["Job"]["properties"]["mode"]["enum"] == list(jobs.MODES)
    assert SCHEMAS["JobId"]["pattern"] == f"^{jobs.JOB_ID_RE.pattern}$"


def test_submission_fields_and_bounds_are_the_codes() -> None:
    rsync, git = SCHEMAS["RsyncSubmission"], SCHEMAS["GitSubmission"]
    form = SCHEMAS["UploadForm"]
    for schema, mode in ((rsync, "rsync"), (git, "git"), (form, "upload")):
        fields = set(schema["properties"]) - {"code"}
        assert fields == {*submissions.COMMON_FIELDS, *submissions.MODE_FIELDS[mode]}, mode
    props = rsync["properties"]
    assert props["script"]["maxLength"] == submissions.MAX_SCRIPT_BYTES
    assert props["name"]["maxLength"] == submissions.MAX_NAME_CHARS
    assert SCHEMAS["Env"]["maxProperties"] == submissions.MAX_ENV_VARS
    assert SCHEMAS["Env"]["propertyNames"]["pattern"] == f"^{submissions.ENV_NAME_RE.pattern}$"
    assert SCHEMAS["ArtifactPatterns"]["maxItems"] == MAX_PATTERNS
    assert SCHEMAS["ArtifactPatterns"]["items"]["maxLength"] == MAX_PATTERN_CHARS
    assert SCHEMAS["Webhook"]["maxLength"] == MAX_WEBHOOK_CHARS
    assert git["properties"]["repo"]["maxLength"] == MAX_REPO_CHARS
    assert git["properties"]["ref"]["maxLength"] == MAX_REF_CHARS
    key = DOC["components"]["parameters"]["IdempotencyKey"]["schema"]["pattern"]
    assert key == f"^{submissions.IDEMPOTENCY_KEY_RE.pattern}$"
    limit = next(p for p in DOC["paths"]["/api/jobs"]["get"]["parameters"] if p["name"] == "limit")
    assert limit["schema"]["maximum"] == LIST_LIMIT_MAX
    assert "1 MiB" in DOC["paths"]["/api/jobs/rsync"]["post"]["description"]
    assert MAX_JSON_BODY == 2**20


def test_upload_content_types_are_the_ones_the_server_takes() -> None:
    content = DOC["paths"]["/api/jobs/upload"]["post"]["requestBody"]["content"]
    assert set(content) == {"multipart/form-data", *uploads.RAW_TYPES}


def test_every_header_the_api_sends_is_described() -> None:
    """Headers set by the API's answers (a tuple of name and value in their source) each have
    an entry in the document; only Content-Type, Content-Length and the 405's Allow need none."""
    package = ROOT / "remoteci"
    source = "".join((package / name).read_text() for name in ("http.py", "artifacts/routes.py",
                                                               "schedules/routes.py"))
    sent = set(re.findall(r'\("([A-Z][A-Za-z-]*[a-z][A-Za-z-]*)",\s*(?!\()', source))
    assert {"Location", "X-Job-Status", "X-Log-Offset", "Retry-After", "Idempotent-Replayed",
            "WWW-Authenticate", "ETag", "Content-Range"} <= sent
    text = openapi.DOCUMENT.read_text()
    missing = {h for h in sent - {"Content-Type", "Content-Length", "Allow"} if f'"{h}"' not in text}
    assert not missing, f"headers the API sends that the document does not describe: {missing}"


def test_the_readme_links_the_document() -> None:
    readme = (ROOT / "README.md").read_text()
    assert re.search(r"/api/openapi\.json", readme)


def test_the_servers_limits_go_into_a_copy() -> None:
    assert openapi.for_server(5)["components"]["schemas"]["Timeout"]["maximum"] == 5
    assert openapi.load()["components"]["schemas"]["Timeout"]["maximum"] == 3600
