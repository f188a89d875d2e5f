"""Upload and git jobs end to end: real curl uploads, a real git repository, a real server."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import TOKEN, MakeServer, Server, running_server, wait_until
from tests.sources.test_git import git


def make_tarball(path: Path, files: dict[str, bytes], gz: bool = True) -> Path:
    with tarfile.open(path, "w:gz" if gz else "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755 if name.endswith(".sh") else 0o644
            tar.addfile(info, io.BytesIO(data))
    return path


def curl(*args: str) -> tuple[int, dict[str, object]]:
    out = subprocess.run(["curl", "-sS", "-o", "-", "-w", "\n%{http_code}",
                          "-H", f"Authorization: Bearer {TOKEN}", *args],
                         capture_output=True, text=True, timeout=60, check=True)
    body, code = out.stdout.rsplit("\n", 1)
    return int(code), json.loads(body)


def uploads_left(srv: Server) -> list[Path]:
    directory = srv.data_dir / "uploads"
    return list(directory.iterdir()) if directory.exists() else []


@pytest.fixture(scope="module")
def upload_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("modes"),
                        {"REMOTE_CI_MAX_UPLOAD_MB": "2", "REMOTE_CI_MAX_EXTRACT_MB": "5",
                         "REMOTE_CI_GIT_ALLOW_FILE": "1", "REMOTE_CI_JOB_TIMEOUT": "60"}) as srv:
        yield srv


# --- upload ------------------------------------------------------------------------------------

def test_curl_multipart_upload_runs_at_the_archive_root(upload_server: Server, tmp_path: Path) -> None:
    archive = make_tarball(tmp_path / "code.tar.gz", {"run.sh": b"echo from-upload $A\n",
                                                      "sub/data.txt": b"payload\n"})
    code, job = curl("-F", f"code=@{archive}", "--form-string", "script=./run.sh; cat sub/data.txt; pwd",
                     "-F", "timeout=30", "-F", 'env={"A": "x1"}', "-F", "name=uploaded",
                     f"{upload_server.url}/api/jobs/upload")
    assert code == 202, job
    assert job["mode"] == "upload" and job["timeout"] == 30 and job["name"] == "uploaded"
    final = upload_server.wait_final(str(job["id"]))
    log = upload_server.log(str(job["id"])).decode().splitlines()
    assert final["status"] == "success", log
    assert log[:3] == ["from-upload x1", "payload", str(upload_server.work_dir / str(job["id"]))]
    assert uploads_left(upload_server) == []


def test_raw_tar_body_with_fields_in_the_query(upload_server: Server, tmp_path: Path) -> None:
    archive = make_tarball(tmp_path / "code.tar", {"hello.txt": b"raw body\n"}, gz=False)
    code, job = curl("--data-binary", f"@{archive}", "-H", "Content-Type: application/x-tar",
                     f"{upload_server.url}/api/jobs/upload?script=cat%20hello.txt&timeout=20")
    assert code == 202, job
    assert upload_server.wait_final(str(job["id"]))["status"] == "success"
    assert upload_server.log(str(job["id"])).startswith(b"raw body\n")


def test_a_chunked_raw_body_is_spooled_and_runs(upload_server: Server, tmp_path: Path) -> None:
    archive = make_tarball(tmp_path / "code.tar.gz", {"hello.txt": b"chunked body\n"})
    code, job = curl("-T", str(archive), "-X", "POST", "-H", "Transfer-Encoding: chunked",
                     "-H", "Content-Type: application/gzip",
                     f"{upload_server.url}/api/jobs/upload?script=cat%20hello.txt")
    assert code == 202, job
    assert upload_server.wait_final(str(job["id"]))["status"] == "success"
    assert upload_server.log(str(job["id"])).startswith(b"chunked body\n")
    assert uploads_left(upload_server) == []


def test_not_an_archive_is_400_and_nothing_is_kept(upload_server: Server, tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"this is not an archive at all" * 100)
    code, body = curl("-F", f"code=@{junk}", "-F", "script=true", f"{upload_server.url}/api/jobs/upload")
    assert code == 400 and ".tar.gz" in str(body["error"])
    assert uploads_left(upload_server) == []


@pytest.mark.parametrize("fields, fragment", [
    ([], "'script' is required"),
    (["-F", "script=true", "-F", "timeout=0"], "'timeout'"),
    (["-F", "script=true", "-F", "workspace=x"], "unknown field 'workspace'"),
])
def test_bad_upload_fields_are_400_and_the_file_is_removed(
        upload_server: Server, tmp_path: Path, fields: list[str], fragment: str) -> None:
    archive = make_tarball(tmp_path / "ok.tar.gz", {"a": b"a"})
    code, body = curl("-F", f"code=@{archive}", *fields, f"{upload_server.url}/api/jobs/upload")
    assert code == 400 and fragment in str(body["error"])
    assert uploads_left(upload_server) == []


def test_upload_over_the_limit_is_413_json(upload_server: Server, tmp_path: Path) -> None:
    # Over the 2 MB limit, within the 2 MiB the server allows for form fields: the app's 413.
    big = tmp_path / "big.tar"
    big.write_bytes(b"\0" * (3 * 1024 * 1024))
    code, body = curl("--data-binary", f"@{big}", "-H", "Content-Type: application/x-tar",
                      f"{upload_server.url}/api/jobs/upload?script=true")
    assert code == 413
    assert "REMOTE_CI_MAX_UPLOAD_MB" in str(body["error"])
    assert uploads_left(upload_server) == []


def test_413_comes_from_content_length_before_the_body_is_sent(upload_server: Server) -> None:
    with socket.create_connection(("127.0.0.1", upload_server.port), timeout=10) as sock:
        sock.sendall(b"POST /api/jobs/upload?script=true HTTP/1.1\r\nHost: x\r\n"
                     b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
                     b"Content-Type: application/gzip\r\nContent-Length: 104857600\r\n\r\n")
        answer = b""
        while chunk := sock.recv(4096):  # no body byte was sent: the answer cannot wait for one
            answer += chunk  # waitress closes the connection after an error answer
    # Past the limit plus the form allowance, waitress refuses it itself, in its own words.
    assert answer.startswith(b"HTTP/1.1 413")
    assert b"exceeds max_body" in answer and b"text/plain" in answer.lower()


def test_hostile_archive_ends_error_naming_the_member(upload_server: Server, tmp_path: Path) -> None:
    archive = make_tarball(tmp_path / "evil.tar.gz", {"ok.txt": b"fine", "../escaped.txt": b"evil"})
    code, job = curl("-F", f"code=@{archive}", "-F", "script=echo should-not-run",
                     f"{upload_server.url}/api/jobs/upload")
    assert code == 202
    final = upload_server.wait_final(str(job["id"]))
    assert final["status"] == "error"
    assert "../escaped.txt" in final["error"]
    assert not (upload_server.work_dir / "escaped.txt").exists()
    assert b"should-not-run" not in upload_server.log(str(job["id"]))
    assert uploads_left(upload_server) == []


def test_gzip_bomb_ends_error_without_filling_the_disk(upload_server: Server, tmp_path: Path) -> None:
    archive = make_tarball(tmp_path / "bomb.tar.gz", {"zeros": b"\0" * (50 * 1024 * 1024)})
    assert archive.stat().st_size < 1024 * 1024
    code, job = curl("-F", f"code=@{archive}", "-F", "script=true", f"{upload_server.url}/api/jobs/upload")
    assert code == 202
    final = upload_server.wait_final(str(job["id"]))
    assert final["status"] == "error" and "expands beyond" in final["error"]
    scratch = upload_server.work_dir / str(job["id"])
    wait_until(lambda: not scratch.exists(), 10, "the scratch dir to go (just after the final status)")


# --- git ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    path = tmp_path_factory.mktemp("origin") / "repo"
    path.mkdir()
    git(path, "init", "--quiet", "--initial-branch=main")
    (path / "which.txt").write_text("first\n")
    git(path, "add", "which.txt")
    git(path, "commit", "--quiet", "-m", "first")
    first = git(path, "rev-parse", "HEAD")
    git(path, "tag", "v1")
    (path / "which.txt").write_text("second\n")
    git(path, "commit", "--quiet", "-am", "second")
    return path, first, git(path, "rev-parse", "HEAD")


@pytest.mark.parametrize("ref, expect", [(None, "second"), ("main", "second"), ("v1", "first"),
                                         ("sha:first", "first")])
def test_git_job_checks_out_the_ref_and_records_the_commit(
        upload_server: Server, repo: tuple[Path, str, str], ref: str | None, expect: str) -> None:
    path, first, second = repo
    if ref == "sha:first":
        ref = first
    body: dict[str, object] = {"repo": f"file://{path}", "script": "cat which.txt"}
    if ref:
        body["ref"] = ref
    resp = upload_server.request("POST", "/api/jobs/git", body)
    assert resp.status == 202, resp.body
    job_id = resp.json()["id"]
    final = upload_server.wait_final(job_id)
    assert final["status"] == "success", upload_server.log(job_id)
    commit = first if expect == "first" else second
    assert final["commit"] == commit
    log = upload_server.log(job_id).decode()
    assert f"[remote-ci] commit {commit}\n{expect}\n" in log


def test_git_bad_ref_ends_error_with_gits_message(upload_server: Server, repo: tuple[Path, str, str]) -> None:
    resp = upload_server.request("POST", "/api/jobs/git", {"repo": f"file://{repo[0]}", "ref": "nope",
                                                           "script": "true"})
    final = upload_server.wait_final(resp.json()["id"])
    assert final["status"] == "error"
    assert "nope" in final["error"]


@pytest.mark.parametrize("url", ["-uhack", "ext::sh -c touch% /tmp/pwned-by-test", "http://h/r.git",
                                 "fd::3", "relative/path", "https://h/r.git\nx"])
def test_hostile_git_urls_are_400(upload_server: Server, url: str) -> None:
    resp = upload_server.request("POST", "/api/jobs/git", {"repo": url, "script": "true"})
    assert resp.status == 400
    assert "'repo'" in resp.json()["error"]
    assert not Path("/tmp/pwned-by-test").exists()


def test_file_urls_need_the_operator_flag(make_server: MakeServer, repo: tuple[Path, str, str]) -> None:
    srv = make_server()
    resp = srv.request("POST", "/api/jobs/git", {"repo": f"file://{repo[0]}", "script": "true"})
    assert resp.status == 400
    assert "REMOTE_CI_GIT_ALLOW_FILE" in resp.json()["error"]


def test_credentials_in_a_git_url_are_never_shown(upload_server: Server) -> None:
    resp = upload_server.request("POST", "/api/jobs/git", {
        "repo": "https://user:hunter2secret@127.0.0.1:9/org/repo.git", "script": "true"})
    assert resp.status == 202
    assert "hunter2secret" not in resp.body.decode()
    final = upload_server.wait_final(resp.json()["id"])
    assert final["status"] == "error"
    assert "hunter2secret" not in json.dumps(final)
    assert b"hunter2secret" not in upload_server.log(final["id"])


def test_cancelling_a_queued_upload_deletes_its_archive(make_server: MakeServer, tmp_path: Path) -> None:
    srv = make_server(env={"REMOTE_CI_CONCURRENCY": "1"}, wait_workers=1)
    blocker = srv.submit("sleep 60")
    srv.wait_status(blocker["id"], ("running",))
    archive = make_tarball(tmp_path / "code.tar.gz", {"a.txt": b"a"})
    code, job = curl("-F", f"code=@{archive}", "-F", "script=true", f"{srv.url}/api/jobs/upload")
    assert code == 202 and len(uploads_left(srv)) == 1
    assert srv.request("POST", f"/api/jobs/{job['id']}/cancel").status == 202
    assert uploads_left(srv) == []


def test_a_retried_upload_keeps_one_archive_and_one_job(upload_server: Server, tmp_path: Path) -> None:
    archive = make_tarball(tmp_path / "code.tar.gz", {"a.txt": b"a"})
    before = {j["id"] for j in upload_server.request("GET", "/api/jobs?limit=500").json()["jobs"]}
    ids = set()
    for _ in range(2):
        code, job = curl("-H", "Idempotency-Key: upload-retry-1", "--data-binary", f"@{archive}",
                         "-H", "Content-Type: application/gzip",
                         f"{upload_server.url}/api/jobs/upload?script=cat%20a.txt")
        assert code == 202
        ids.add(str(job["id"]))
    assert len(ids) == 1
    assert upload_server.wait_final(ids.pop())["status"] == "success"
    after = {j["id"] for j in upload_server.request("GET", "/api/jobs?limit=500").json()["jobs"]}
    assert len(after - before) == 1
    assert uploads_left(upload_server) == []
