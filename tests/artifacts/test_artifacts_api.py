"""Artifacts end to end (the README, "Artifacts"): a real server keeps what jobs name, whatever their
outcome, never through a link, within its caps, and serves it whole, in ranges, or as a tar.gz."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ROOT, TOKEN, MakeServer, RedisServer, Server, wait_until

PAYLOAD = bytes(range(256)) * 1200  # 300 KB, every byte value
REPORT = b"<testsuite tests='1'/>\n"


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    base = tmp_path_factory.mktemp("artifacts")
    rs = RedisServer(base / "redis").start()
    server = Server(base / "srv", redis_url=rs.url,
                    env={"REMOTE_CI_JOB_TIMEOUT": "60", "REMOTE_CI_KILL_GRACE": "1",
                         "REMOTE_CI_CANCEL_GRACE": "1", "REMOTE_CI_DRAIN_TIMEOUT": "2",
                         "REMOTE_CI_CONCURRENCY": "4", "REMOTE_CI_MAX_ARTIFACT_MB": "1"})
    server.start(wait_workers=4)
    workspace = server.make_workspace("art")
    (workspace / "payload.bin").write_bytes(PAYLOAD)
    (workspace / "report.xml").write_bytes(REPORT)
    yield server
    server.stop()
    rs.stop()


def run_job(srv: Server, script: str, artifacts: list[str], **fields: Any) -> dict[str, Any]:
    job = srv.submit(script, workspace="art", artifacts=artifacts, **fields)
    return srv.wait_final(job["id"])


def listing(srv: Server, job_id: str) -> dict[str, Any]:
    resp = srv.request("GET", f"/api/jobs/{job_id}/artifacts")
    assert resp.status == 200, resp.body
    return dict(resp.json())


def artifact_lines(srv: Server, job_id: str) -> list[str]:
    return [line for line in srv.log(job_id).decode().splitlines()
            if line.startswith("[remote-ci] artifacts:")]


@pytest.fixture(scope="module")
def built(srv: Server) -> dict[str, Any]:
    """A successful job with two artifacts and every kind of hostile match next to them."""
    script = ("mkdir -p dist/sub reports/unit && cp payload.bin dist/app.bin && "
              "cp report.xml reports/unit/t.xml && "
              "ln -s /etc/passwd dist/passwd.bin && ln -s app.bin dist/inside.bin && "
              "ln -s /etc dist/etc && echo x > dist/gone.bin && rm dist/gone.bin && "
              "mkfifo dist/gone.bin")
    return run_job(srv, script, ["dist/*.bin", "dist/*/passwd", "reports/**/*.xml"])


# --- collecting ----------------------------------------------------------------------------

def test_only_regular_files_inside_the_job_dir_are_kept(srv: Server, built: dict[str, Any]) -> None:
    assert built["status"] == "success" and built["artifacts"] == 2
    assert listing(srv, built["id"])["artifacts"] == [
        {"path": "dist/app.bin", "size": len(PAYLOAD), "sha256": hashlib.sha256(PAYLOAD).hexdigest()},
        {"path": "reports/unit/t.xml", "size": len(REPORT), "sha256": hashlib.sha256(REPORT).hexdigest()}]
    [line] = artifact_lines(srv, built["id"])
    assert "kept 2 files" in line and "skipped 3" in line
    assert all(name in line for name in ("dist/gone.bin", "dist/inside.bin", "dist/passwd.bin"))


def test_a_download_is_byte_exact(srv: Server, built: dict[str, Any]) -> None:
    resp = srv.request("GET", f"/api/jobs/{built['id']}/artifacts/dist/app.bin")
    assert resp.status == 200 and resp.body == PAYLOAD
    assert hashlib.sha256(resp.body).hexdigest() == listing(srv, built["id"])["artifacts"][0]["sha256"]
    assert resp.headers["content-type"] == "application/octet-stream"
    assert resp.headers["content-length"] == str(len(PAYLOAD))
    assert resp.headers["content-disposition"].startswith('attachment; filename="app.bin"')
    assert resp.headers["accept-ranges"] == "bytes"


@pytest.mark.parametrize(("header", "first", "last"), [
    ("bytes=0-99", 0, 99), ("bytes=1000-", 1000, len(PAYLOAD) - 1), ("bytes=-10", len(PAYLOAD) - 10,
                                                                    len(PAYLOAD) - 1),
    ("bytes=5-9, 20-30", 5, 9), ("bytes=100-999999999", 100, len(PAYLOAD) - 1),
])
def test_a_range_gets_206_with_its_bytes(srv: Server, built: dict[str, Any], header: str,
                                        first: int, last: int) -> None:
    resp = srv.request("GET", f"/api/jobs/{built['id']}/artifacts/dist/app.bin",
                       headers={"Range": header})
    assert resp.status == 206
    assert resp.body == PAYLOAD[first:last + 1]
    assert resp.headers["content-range"] == f"bytes {first}-{last}/{len(PAYLOAD)}"
    assert resp.headers["content-length"] == str(last - first + 1)


def test_a_range_past_the_end_gets_416_json(srv: Server, built: dict[str, Any]) -> None:
    resp = srv.request("GET", f"/api/jobs/{built['id']}/artifacts/dist/app.bin",
                       headers={"Range": f"bytes={len(PAYLOAD)}-"})
    assert resp.status == 416 and "Range" in resp.json()["error"]
    assert resp.headers["content-range"] == f"bytes */{len(PAYLOAD)}"


def test_a_stale_if_range_gets_the_whole_file(srv: Server, built: dict[str, Any]) -> None:
    resp = srv.request("GET", f"/api/jobs/{built['id']}/artifacts/dist/app.bin",
                       headers={"Range": "bytes=0-9", "If-Range": '"not-the-etag"'})
    assert resp.status == 200 and resp.body == PAYLOAD


def test_the_tar_gz_holds_the_same_bytes(srv: Server, built: dict[str, Any]) -> None:
    resp = srv.request("GET", f"/api/jobs/{built['id']}/artifacts.tar.gz")
    assert resp.status == 200 and resp.headers["content-type"] == "application/gzip"
    with tarfile.open(fileobj=io.BytesIO(resp.body), mode="r:gz") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]
    assert members == {"dist/app.bin": PAYLOAD, "reports/unit/t.xml": REPORT}


@pytest.mark.parametrize("path", [
    "dist/../dist/app.bin", "..%2f..%2fetc%2fpasswd", "dist%2Fapp.bin", "/etc/passwd",
    "dist/passwd.bin", "dist/app.bin%00", "dist/etc/passwd", "reports",
])
def test_a_path_not_in_the_manifest_is_404(srv: Server, built: dict[str, Any], path: str) -> None:
    resp = srv.request("GET", f"/api/jobs/{built['id']}/artifacts/{path}")
    assert resp.status == 404 and "artifact" in resp.json()["error"]


def test_an_unknown_job_is_404_on_every_artifact_route(srv: Server) -> None:
    for suffix in ("artifacts", "artifacts.tar.gz", "artifacts/a.txt"):
        assert srv.request("GET", f"/api/jobs/nosuchjob/{suffix}").status == 404
        assert srv.request("GET", f"/api/jobs/x/{suffix}", token=None).status == 401


def test_a_job_without_artifacts_has_an_empty_list_and_an_empty_tar(srv: Server) -> None:
    job = srv.wait_final(srv.submit("echo plain", workspace="art")["id"])
    assert "artifacts" not in job
    assert listing(srv, job["id"])["artifacts"] == []
    resp = srv.request("GET", f"/api/jobs/{job['id']}/artifacts.tar.gz")
    with tarfile.open(fileobj=io.BytesIO(resp.body), mode="r:gz") as tar:
        assert tar.getmembers() == []


def test_nothing_is_listed_while_the_job_runs(srv: Server) -> None:
    job = srv.submit("echo x > out.txt; sleep 30", workspace="art", artifacts=["out.txt"])
    srv.wait_status(job["id"], ("running",))
    assert listing(srv, job["id"])["artifacts"] == []
    assert srv.request("POST", f"/api/jobs/{job['id']}/cancel").status == 202
    final = srv.wait_final(job["id"])
    assert final["status"] == "cancelled" and final["artifacts"] == 1  # kept on cancel too


@pytest.mark.parametrize(("script", "fields", "status"), [
    ("echo failing > out.txt; exit 3", {}, "failed"),
    ("echo slow > out.txt; sleep 30", {"timeout": 2}, "timeout"),
])
def test_artifacts_are_kept_whatever_the_outcome(srv: Server, script: str, fields: dict[str, Any],
                                                 status: str) -> None:
    job = run_job(srv, script, ["out.txt"], **fields)
    assert job["status"] == status and job["artifacts"] == 1
    assert srv.request("GET", f"/api/jobs/{job['id']}/artifacts/out.txt").body.endswith(b"\n")


# --- caps ----------------------------------------------------------------------------------

def test_the_byte_cap_is_noted_in_the_log_and_the_listing(srv: Server) -> None:
    job = run_job(srv, "head -c 700000 /dev/zero > a.out; head -c 700000 /dev/zero > b.out",
                  ["*.out"])
    assert job["status"] == "success" and job["artifacts"] == 1
    [line] = artifact_lines(srv, job["id"])
    assert "b.out (700000 bytes) would take the artifacts past REMOTE_CI_MAX_ARTIFACT_MB=1" in line
    assert "REMOTE_CI_MAX_ARTIFACT_MB" in listing(srv, job["id"])["truncated"]


def test_the_count_cap_is_noted_in_the_log(srv: Server) -> None:
    job = run_job(srv, "mkdir o && cd o && touch $(seq -f 'f%04g' 1001)", ["o/*"])
    assert job["artifacts"] == 1000
    [line] = artifact_lines(srv, job["id"])
    assert "more than 1000 files matched; kept the first 1000" in line


# --- submitting ----------------------------------------------------------------------------

@pytest.mark.parametrize("artifacts", [["../secret"], ["/etc/passwd"], "dist/*", [""], []])
def test_bad_patterns_are_refused_at_submit(srv: Server, artifacts: Any) -> None:
    resp = srv.request("POST", "/api/jobs/rsync", {"workspace": "art", "script": "true",
                                                   "artifacts": artifacts})
    assert resp.status == 400 and "'artifacts'" in resp.json()["error"]


def test_an_upload_names_artifacts_as_a_json_string(srv: Server, tmp_path: Path) -> None:
    archive = tmp_path / "src.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("in.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"up\n"))
    done = subprocess.run(
        ["curl", "-sS", "-H", f"Authorization: Bearer {TOKEN}", "-F", f"code=@{archive}",
         "--form-string", "script=cp in.txt out.txt", "--form-string",
         'artifacts=["out.txt"]', f"{srv.url}/api/jobs/upload"],
        capture_output=True, timeout=30, check=True)
    job = srv.wait_final(json.loads(done.stdout)["id"])
    assert job["artifacts"] == 1
    assert srv.request("GET", f"/api/jobs/{job['id']}/artifacts/out.txt").body == b"up\n"


# --- the clients ---------------------------------------------------------------------------

@pytest.mark.parametrize("client", ["py", "sh"])
def test_clients_download_and_unpack_the_artifacts(srv: Server, tmp_path: Path, client: str) -> None:
    command = {"py": [sys.executable, str(ROOT / "remoteci.py"), "submit"],
               "sh": ["bash", str(ROOT / "ci" / "remote-ci.sh")]}[client]
    dest = tmp_path / "got"
    done = subprocess.run(
        [*command, "--server", srv.url, "--workspace", "art", "--script",
         "mkdir -p dist/x && cp payload.bin dist/x/app.bin && cp report.xml r.xml",
         "--artifacts", "dist/**/*.bin", "--artifacts", "*.xml", "--download-artifacts", str(dest)],
        capture_output=True, timeout=60, env={"PATH": os.environ["PATH"], "REMOTE_CI_TOKEN": TOKEN})
    assert done.returncode == 0, done.stderr
    assert (dest / "dist" / "x" / "app.bin").read_bytes() == PAYLOAD
    assert (dest / "r.xml").read_bytes() == REPORT
    assert b"unpacked into" in done.stderr


@pytest.mark.parametrize("client", ["py", "sh"])
def test_a_failed_download_turns_a_green_job_red(srv: Server, tmp_path: Path, client: str) -> None:
    command = {"py": [sys.executable, str(ROOT / "remoteci.py"), "submit"],
               "sh": ["bash", str(ROOT / "ci" / "remote-ci.sh")]}[client]
    blocker = tmp_path / "file"
    blocker.write_text("a file where the download dir should be")
    done = subprocess.run(
        [*command, "--server", srv.url, "--workspace", "art", "--script", "true",
         "--artifacts", "*.bin", "--download-artifacts", str(blocker / "sub")],
        capture_output=True, timeout=60, env={"PATH": os.environ["PATH"], "REMOTE_CI_TOKEN": TOKEN})
    assert done.returncode == 1, done.stderr


def test_large_downloads_share_the_stream_cap_with_log_followers(make_server: MakeServer) -> None:
    import http.client

    srv = make_server(env={"REMOTE_CI_MAX_FOLLOWERS": "1", "REMOTE_CI_HTTP_THREADS": "4"})
    done = srv.submit("mkdir -p out && echo hi > out/a.txt", artifacts=["out/*"])
    srv.wait_final(done["id"])
    quiet = srv.submit("sleep 30")
    follower = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    follower.request("GET", f"/api/jobs/{quiet['id']}/logs?follow=1",
                     headers={"Authorization": f"Bearer {TOKEN}"})
    assert follower.getresponse().status == 200  # holds the only slot
    busy = srv.request("GET", f"/api/jobs/{done['id']}/artifacts.tar.gz")
    assert busy.status == 503 and "REMOTE_CI_MAX_FOLLOWERS=1" in busy.json()["error"]
    assert srv.request("GET", f"/api/jobs/{done['id']}/artifacts/out/a.txt").body == b"hi\n"  # small: no slot
    follower.close()
    wait_until(lambda: srv.request("GET", f"/api/jobs/{done['id']}/artifacts.tar.gz").status == 200,
               10, "the slot to come back")
