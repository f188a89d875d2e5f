"""The API's routes for remote workers, against a real `api` with no worker (jobs stay
queued): admin only, appends only at the log's length, no path outside the job's own files."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.auth.test_project_tokens import add_token
from tests.helpers import MakeServer, Server


@dataclass
class Api:
    server: Server
    project: str  # a project token allowed every workspace
    job_id: str


@pytest.fixture
def api(make_server: MakeServer, tmp_path: Path) -> Api:
    tokens_file = tmp_path / "tokens"
    project = add_token(tokens_file, "proj", "--workspaces", "*")
    srv = make_server("api", env={"REMOTE_CI_TOKENS_FILE": str(tokens_file)})
    return Api(srv, project, str(srv.submit("true")["id"]))


def append(srv: Server, job_id: str, start: int, data: bytes,
           **kwargs: str) -> tuple[int, str]:
    headers = {"Content-Range": f"bytes {start}-{start + len(data) - 1}/*"}
    resp = srv.request("PATCH", f"/api/worker/jobs/{job_id}/log", data, headers, **kwargs)
    return resp.status, resp.headers.get("x-log-offset", "")


def test_appends_land_only_at_the_logs_length_and_say_it(api: Api) -> None:
    srv, job_id = api.server, api.job_id
    assert append(srv, job_id, 0, b"one\n") == (200, "4")
    assert append(srv, job_id, 0, b"one\n") == (416, "4")  # a retry of what arrived: not twice
    assert append(srv, job_id, 9, b"gap\n") == (416, "4")  # a gap: told where to go on
    assert append(srv, job_id, 4, b"two\n") == (200, "8")
    assert srv.log(job_id) == b"one\ntwo\n"
    resp = srv.request("GET", f"/api/jobs/{job_id}/logs?offset=4")
    assert resp.body == b"two\n" and resp.headers["x-log-offset"] == "8"


def test_a_bad_content_range_is_a_400_naming_it(api: Api) -> None:
    for header in ("", "bytes 0-9/*", "bytes 5-1/*", "items 0-3/*"):
        resp = api.server.request("PATCH", f"/api/worker/jobs/{api.job_id}/log", b"four",
                                  {"Content-Range": header} if header else {})
        assert resp.status == 400, header
        assert "Content-Range" in resp.json()["error"]


def test_worker_routes_refuse_project_tokens(api: Api) -> None:
    srv, job_id = api.server, api.job_id
    status, _ = append(srv, job_id, 0, b"x\n", token=api.project)
    assert status == 403
    for method, path in (("GET", "upload"), ("DELETE", "upload"),
                         ("PUT", "artifacts/a.txt"), ("POST", "artifacts")):
        resp = srv.request(method, f"/api/worker/jobs/{job_id}/{path}", b"{}", token=api.project)
        assert resp.status == 403, (method, path, resp.body)
        assert "admin token" in resp.json()["error"]
    assert srv.log(job_id) == b""


def test_an_unknown_job_is_a_404(api: Api) -> None:
    assert append(api.server, "no-such-job", 0, b"x\n")[0] == 404
    assert not (api.server.data_dir / "logs" / "no-such-job.log").exists()


@pytest.mark.parametrize("path", ["..%2F..%2Fescape", "a/../../escape", "./a", "a//b",
                                  "%2Fetc%2Fpasswd"])
def test_artifact_paths_never_leave_the_jobs_own_dir(api: Api, path: str) -> None:
    resp = api.server.request("PUT", f"/api/worker/jobs/{api.job_id}/artifacts/{path}", b"x")
    assert resp.status in (400, 404), resp.body
    written = [p for p in api.server.base.rglob("*") if p.is_file() and p.read_bytes() == b"x"]
    assert written == []


def test_artifacts_appear_only_with_a_manifest_that_matches_them(api: Api) -> None:
    srv, job_id = api.server, api.job_id
    assert srv.request("PUT", f"/api/worker/jobs/{job_id}/artifacts/dist/a.txt", b"abc").status == 200
    digest = hashlib.sha256(b"abc").hexdigest()
    wrong = {"files": [{"path": "dist/a.txt", "size": 3, "sha256": "0" * 64}], "truncated": None}
    resp = srv.request("POST", f"/api/worker/jobs/{job_id}/artifacts", json.dumps(wrong))
    assert resp.status == 400 and "dist/a.txt" in resp.json()["error"]
    assert srv.request("GET", f"/api/jobs/{job_id}/artifacts").json()["artifacts"] == []
    missing = {"files": [{"path": "b.txt", "size": 3, "sha256": digest}]}
    assert srv.request("POST", f"/api/worker/jobs/{job_id}/artifacts", missing).status == 400
    good = {"files": [{"path": "dist/a.txt", "size": 3, "sha256": digest}], "truncated": None}
    assert srv.request("POST", f"/api/worker/jobs/{job_id}/artifacts", good).status == 200
    listing = srv.request("GET", f"/api/jobs/{job_id}/artifacts").json()["artifacts"]
    assert listing == [{"path": "dist/a.txt", "size": 3, "sha256": digest}]
    assert srv.request("GET", f"/api/jobs/{job_id}/artifacts/dist/a.txt").body == b"abc"


def test_an_upload_is_served_to_workers_with_its_sha256_then_deleted(make_server: MakeServer) -> None:
    srv = make_server("api")
    import gzip
    import io
    import tarfile

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo("x.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"x\n"))
    archive = gzip.compress(raw.getvalue())
    resp = srv.request("POST", "/api/jobs/upload?script=true", archive,
                       {"Content-Type": "application/gzip"})
    assert resp.status == 202, resp.body
    job_id = resp.json()["id"]
    fetched = srv.request("GET", f"/api/worker/jobs/{job_id}/upload")
    assert fetched.status == 200 and fetched.body == archive
    assert fetched.headers["x-content-sha256"] == hashlib.sha256(archive).hexdigest()
    assert srv.request("DELETE", f"/api/worker/jobs/{job_id}/upload").status == 200
    assert srv.request("GET", f"/api/worker/jobs/{job_id}/upload").status == 404
    assert list((srv.data_dir / "uploads").iterdir()) == []


def test_a_large_artifact_arrives_in_pieces_each_at_the_files_length(api: Api) -> None:
    srv, job_id = api.server, api.job_id
    url = f"/api/worker/jobs/{job_id}/artifacts/big.bin"

    def piece(start: int, data: bytes) -> int:
        headers = {"Content-Range": f"bytes {start}-{start + len(data) - 1}/*"}
        return srv.request("PUT", url, data, headers).status

    assert piece(3, b"late") == 416  # nothing there yet
    assert piece(0, b"abc") == 200
    assert piece(5, b"gap") == 416
    assert piece(3, b"def") == 200
    assert piece(0, b"new") == 200  # a piece at 0 starts the file over
    assert piece(3, b"xyz") == 200
    digest = hashlib.sha256(b"newxyz").hexdigest()
    manifest = {"files": [{"path": "big.bin", "size": 6, "sha256": digest}]}
    assert srv.request("POST", f"/api/worker/jobs/{job_id}/artifacts", manifest).status == 200
    assert srv.request("GET", f"/api/jobs/{job_id}/artifacts/big.bin").body == b"newxyz"


def test_a_follow_outlasts_the_jobs_end_until_its_shipped_log_is_whole(api: Api) -> None:
    """A worker records the log's final length with the job's end; should the end come before
    the last bytes (an API unreachable for longer than the worker waits), a follower keeps
    streaming until they arrive, and never ends on a short log."""
    import http.client
    import threading

    import redis

    from remoteci.queue import job_key
    from tests.helpers import TOKEN, wait_until

    srv, job_id = api.server, api.job_id
    assert append(srv, job_id, 0, b"head\n") == (200, "5")
    assert srv.redis_url is not None
    client = redis.Redis.from_url(srv.redis_url)
    client.hset(job_key(job_id), mapping={"status": "success", "log_bytes": "11",
                                          "finished_at": "2099-01-01T00:00:00.000Z"})
    client.close()
    received: list[bytes] = []

    def follow() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
        conn.request("GET", f"/api/jobs/{job_id}/logs?follow=1",
                     headers={"Authorization": f"Bearer {TOKEN}"})
        received.append(conn.getresponse().read())
        conn.close()

    reader = threading.Thread(target=follow)
    reader.start()
    reader.join(1.0)
    assert reader.is_alive()  # final, but 6 bytes short: the follow goes on
    assert append(srv, job_id, 5, b"tail!\n") == (200, "11")
    reader.join(10)
    wait_until(lambda: received, 10, "the follow to end")
    assert received == [b"head\ntail!\n"]
    status, _ = append(srv, job_id, 11, b"more\n")
    assert status == 409  # whole now: an ended job's log takes nothing more
    assert srv.log(job_id) == b"head\ntail!\n"


def test_an_ended_jobs_log_takes_no_appends(api: Api) -> None:
    srv, job_id = api.server, api.job_id
    assert srv.request("POST", f"/api/jobs/{job_id}/cancel").status == 202
    resp = srv.request("PATCH", f"/api/worker/jobs/{job_id}/log", b"late\n",
                       {"Content-Range": "bytes 0-4/*"})
    assert resp.status == 409 and "complete" in resp.json()["error"]
    assert not (srv.data_dir / "logs" / f"{job_id}.log").exists()
