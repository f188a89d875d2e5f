"""Pipelines end to end (the README, "Pipelines"): stages in order on the shared queue, one code
snapshot, artifacts handed on, failure and cancel ending what has not run, and owners' scoping."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from remoteci.history.db import HistoryDB, parse_history_url
from tests.auth.test_project_tokens import add_token
from tests.helpers import MakeServer, Server, running_server, shared_dir, wait_until
from tests.sources.test_git import git

FINAL = ("success", "failed", "cancelled")


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("pipelines"),
                        {"REMOTE_CI_JOB_TIMEOUT": "60", "REMOTE_CI_KILL_GRACE": "2",
                         "REMOTE_CI_CANCEL_GRACE": "2", "REMOTE_CI_DRAIN_TIMEOUT": "5",
                         "REMOTE_CI_GIT_ALLOW_FILE": "1"}) as server:
        server.make_workspace("proj", {"code.txt": "original\n"})
        yield server


def stage(name: str, *jobs: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "jobs": list(jobs)}


def job(name: str, script: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "script": script, **fields}


def submit(srv: Server, *stages: dict[str, Any], source: dict[str, Any] | None = None,
           **fields: Any) -> dict[str, Any]:
    body = {"name": "ci", "source": source or {"mode": "rsync", "workspace": "proj"},
            "stages": list(stages), **fields}
    resp = srv.request("POST", "/api/pipelines", body)
    assert resp.status == 202, resp.body
    assert resp.headers["location"] == f"/api/pipelines/{resp.json()['id']}"
    return dict(resp.json())


def pipeline(srv: Server, pipeline_id: str) -> dict[str, Any]:
    resp = srv.request("GET", f"/api/pipelines/{pipeline_id}")
    assert resp.status == 200, resp.body
    return dict(resp.json())


def wait_pipeline(srv: Server, pipeline_id: str, timeout: float = 60) -> dict[str, Any]:
    return dict(wait_until(lambda: (p := pipeline(srv, pipeline_id))["status"] in FINAL and p,
                           timeout, f"pipeline {pipeline_id} to end"))


def output(srv: Server, job_id: str) -> bytes:
    """What the job's script printed: its log without the server's own `[remote-ci]` lines."""
    return b"".join(line for line in srv.log(job_id).splitlines(keepends=True)
                    if not line.startswith(b"[remote-ci]"))


def jobs_of(srv: Server, found: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every job of the pipeline by name, once each has ended."""
    out = {}
    for st in found["stages"]:
        for job_id in st["jobs"]:
            one = srv.wait_final(job_id)
            out[one["name"]] = one
    return out


def test_three_stages_run_in_order_with_parallel_jobs(srv: Server) -> None:
    meet = shared_dir()
    # The two build jobs wait for each other: they can only both succeed if they run at once.
    both = (f"touch {meet}/$ME; for i in $(seq 200); do [ -e {meet}/$OTHER ] && exit 0; "
            "sleep 0.1; done; exit 9")
    created = submit(
        srv,
        stage("build", job("build-a", both, env={"ME": "a", "OTHER": "b"}),
              job("build-b", both, env={"ME": "b", "OTHER": "a"})),
        stage("test", job("test", "echo testing")),
        stage("package", job("pkg-1", "echo one"), job("pkg-2", "echo two")))
    assert created["status"] == "running"
    assert [s["name"] for s in created["stages"]] == ["build", "test", "package"]
    assert [s["status"] for s in created["stages"]] == ["running", "waiting", "waiting"]
    assert [len(s["jobs"]) for s in created["stages"]] == [2, 1, 2]
    done = wait_pipeline(srv, created["id"])
    assert done["status"] == "success", done
    assert [s["status"] for s in done["stages"]] == ["success"] * 3
    assert done["finished_at"] is not None
    ran = jobs_of(srv, done)
    assert {name: j["status"] for name, j in ran.items()} == dict.fromkeys(ran, "success")
    assert {j["pipeline"] for j in ran.values()} == {created["id"]}
    assert ran["test"]["stage"] == "test"
    # A stage starts only once every job of the one before has ended.
    assert ran["test"]["started_at"] >= max(ran["build-a"]["finished_at"], ran["build-b"]["finished_at"])
    assert min(ran["pkg-1"]["started_at"], ran["pkg-2"]["started_at"]) >= ran["test"]["finished_at"]
    assert output(srv, ran["pkg-2"]["id"]) == b"two\n"


def test_a_failure_in_stage_1_of_3_cancels_every_later_job_unrun(srv: Server) -> None:
    ran = shared_dir()
    later = f"touch {ran}/$REMOTE_CI_JOB_ID"
    created = submit(srv, stage("build", job("compile", "echo broken; exit 3")),
                     stage("test", job("unit", later), job("lint", later)),
                     stage("deploy", job("ship", later)))
    done = wait_pipeline(srv, created["id"])
    assert done["status"] == "failed"
    assert "compile" in done["error"] and "failed" in done["error"]
    assert [s["status"] for s in done["stages"]] == ["failed", "cancelled", "cancelled"]
    ended = jobs_of(srv, done)
    assert ended["compile"]["status"] == "failed" and ended["compile"]["exit_code"] == 3
    for name in ("unit", "lint", "ship"):
        assert ended[name]["status"] == "cancelled"
        assert ended[name]["started_at"] is None
        assert ended[name]["error"].startswith("not run")
        assert srv.log(ended[name]["id"]) == b""
    assert list(ran.iterdir()) == []


def test_cancel_mid_stage_stops_running_jobs_and_ends_cancelled(srv: Server) -> None:
    started = shared_dir()
    slow = f"touch {started}/$REMOTE_CI_JOB_ID; sleep 30"
    created = submit(srv, stage("one", job("slow-a", slow), job("slow-b", slow)),
                     stage("two", job("never", "true")))
    wait_until(lambda: len(list(started.iterdir())) == 2, 30, "both jobs of stage one to start")
    resp = srv.request("POST", f"/api/pipelines/{created['id']}/cancel")
    assert resp.status == 202, resp.body
    assert resp.json()["status"] == "cancelled"
    done = wait_pipeline(srv, created["id"])
    assert [s["status"] for s in done["stages"]] == ["cancelled", "cancelled"]
    ended = jobs_of(srv, done)
    assert {n: j["status"] for n, j in ended.items()} == dict.fromkeys(ended, "cancelled")
    assert ended["never"]["started_at"] is None
    again = srv.request("POST", f"/api/pipelines/{created['id']}/cancel")
    assert again.status == 409 and "cancelled" in again.json()["error"]


def test_artifacts_of_earlier_stages_are_in_every_later_job_dir(srv: Server) -> None:
    created = submit(
        srv,
        stage("build", job("make", "mkdir -p dist && echo A > dist/a.txt", artifacts=["dist/**"])),
        stage("test", job("check", "cat dist/a.txt && echo B > dist/b.txt",
                          artifacts=["dist/b.txt"])),
        stage("package", job("zip", "cat dist/a.txt dist/b.txt")))
    done = wait_pipeline(srv, created["id"])
    assert done["status"] == "success", done
    ended = jobs_of(srv, done)
    assert output(srv, ended["check"]["id"]) == b"A\n"
    assert output(srv, ended["zip"]["id"]) == b"A\nB\n"


def test_every_job_sees_the_commit_the_ref_named_at_submission(srv: Server, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "--quiet", "--initial-branch=main")
    (repo / "which.txt").write_text("first\n")
    git(repo, "add", "which.txt")
    git(repo, "commit", "--quiet", "-m", "first")
    first = git(repo, "rev-parse", "HEAD")
    go = shared_dir()
    created = submit(srv, stage("one", job("wait", f"while [ ! -e {go}/go ]; do sleep 0.1; done; "
                                                   "cat which.txt")),
                     stage("two", job("read", "cat which.txt")),
                     source={"mode": "git", "repo": f"file://{repo}", "ref": "main"})
    (repo / "which.txt").write_text("second\n")  # the branch moves after the submission
    git(repo, "commit", "--quiet", "-am", "second")
    (go / "go").touch()
    done = wait_pipeline(srv, created["id"])
    assert done["status"] == "success", done
    assert done["commit"] == first and done["mode"] == "git"
    for one in jobs_of(srv, done).values():
        assert one["commit"] == first and one["mode"] == "git"
        assert output(srv, one["id"]) == b"first\n"


def test_every_job_sees_the_workspace_as_it_was_at_submission(srv: Server) -> None:
    workspace = srv.make_workspace("snap", {"code.txt": "original\n"})
    go = shared_dir()
    created = submit(srv, stage("one", job("wait", f"while [ ! -e {go}/go ]; do sleep 0.1; done; "
                                                   "cat code.txt")),
                     stage("two", job("read", "cat code.txt")),
                     source={"mode": "rsync", "workspace": "snap"})
    snapshot = srv.data_dir / "pipelines" / created["id"]
    assert snapshot.is_dir()
    (workspace / "code.txt").write_text("changed\n")
    (go / "go").touch()
    done = wait_pipeline(srv, created["id"])
    assert done["status"] == "success", done
    for one in jobs_of(srv, done).values():
        assert output(srv, one["id"]) == b"original\n"
    wait_until(lambda: not snapshot.exists(), 10, "the snapshot to go with the pipeline")


def multipart(fields: dict[str, str], archive: bytes) -> tuple[bytes, str]:
    boundary = "pipeline-test-boundary"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="code"; '
                 f'filename="src.tar.gz"\r\nContent-Type: application/gzip\r\n\r\n'.encode()
                 + archive + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def tar_gz(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_an_uploaded_archive_is_shared_by_every_job_and_removed_at_the_end(srv: Server) -> None:
    spec = {"name": "up", "stages": [stage("one", job("a", "cat code.txt"), job("b", "cat code.txt")),
                                     stage("two", job("c", "cat code.txt"))]}
    body, content_type = multipart({"pipeline": json.dumps(spec)}, tar_gz({"code.txt": "uploaded\n"}))
    resp = srv.request("POST", "/api/pipelines", body, {"Content-Type": content_type})
    assert resp.status == 202, resp.body
    created = resp.json()
    done = wait_pipeline(srv, created["id"])
    assert done["status"] == "success" and done["mode"] == "upload", done
    for one in jobs_of(srv, done).values():
        assert one["mode"] == "upload"
        assert output(srv, one["id"]) == b"uploaded\n"
    snapshot = srv.data_dir / "pipelines" / created["id"]
    wait_until(lambda: not snapshot.exists(), 10, "the archive to go with the pipeline")
    assert not any((srv.data_dir / "uploads").iterdir())


def test_an_upload_pipeline_may_not_name_a_source(srv: Server) -> None:
    spec = {"source": {"mode": "rsync", "workspace": "proj"}, "stages": [stage("s", job("j", "true"))]}
    body, content_type = multipart({"pipeline": json.dumps(spec)}, tar_gz({"a": "b"}))
    resp = srv.request("POST", "/api/pipelines", body, {"Content-Type": content_type})
    assert resp.status == 400 and "'source'" in resp.json()["error"]
    assert not any((srv.data_dir / "uploads").iterdir())


GOOD_STAGES = [{"name": "s", "jobs": [{"name": "j", "script": "true"}]}]


@pytest.mark.parametrize(("body", "field"), [
    ({"stages": GOOD_STAGES}, "'source'"),
    ({"source": {"mode": "svn"}, "stages": GOOD_STAGES}, "source.mode"),
    ({"source": {"mode": "rsync"}, "stages": GOOD_STAGES}, "'workspace'"),
    ({"source": {"mode": "rsync", "workspace": "nope"}, "stages": GOOD_STAGES}, "'nope'"),
    ({"source": {"mode": "git", "repo": "ext::sh"}, "stages": GOOD_STAGES}, "'repo'"),
    ({"source": {"mode": "rsync", "workspace": "proj"}}, "'stages'"),
    ({"source": {"mode": "rsync", "workspace": "proj"}, "stages": []}, "'stages'"),
    ({"source": {"mode": "rsync", "workspace": "proj"}, "stages": [{"name": "s", "jobs": []}]},
     "stages[0].jobs"),
    ({"source": {"mode": "rsync", "workspace": "proj"},
      "stages": [{"name": "s", "jobs": [{"name": "j"}]}]}, "'script'"),
    ({"source": {"mode": "rsync", "workspace": "proj"},
      "stages": [{"name": "s", "jobs": [{"name": "j", "script": "true", "timeout": 0}]}]}, "'timeout'"),
    ({"source": {"mode": "rsync", "workspace": "proj"},
      "stages": [{"name": "s", "jobs": [{"name": "j", "script": "true"},
                                        {"name": "j", "script": "true"}]}]}, "stages[0].jobs[1].name"),
    ({"source": {"mode": "rsync", "workspace": "proj"}, "stages": GOOD_STAGES, "color": "red"},
     "'color'"),
])
def test_bad_pipelines_are_400_naming_the_field(srv: Server, body: dict[str, Any], field: str) -> None:
    resp = srv.request("POST", "/api/pipelines", body)
    assert resp.status == 400, resp.body
    assert field in resp.json()["error"]


def test_unknown_pipeline_is_404(srv: Server) -> None:
    for method, path in (("GET", "/api/pipelines/nope"), ("POST", "/api/pipelines/nope/cancel"),
                         ("GET", "/pipelines/nope"), ("GET", "/api/pipelines/bad%20id")):
        resp = srv.request(method, path)
        assert resp.status == 404, (path, resp.body)
        assert "no pipeline" in resp.json()["error"]


def test_the_page_shows_stages_as_columns_with_job_links(srv: Server) -> None:
    created = submit(srv, stage("first <b>", job("quick", "true")),
                     stage("second", job("later", "true")))
    done = wait_pipeline(srv, created["id"])
    resp = srv.request("GET", f"/pipelines/{created['id']}")
    assert resp.status == 200
    html = resp.body.decode()
    assert html.count("class=stage>") == 2
    assert "first &lt;b&gt;" in html and "first <b>" not in html
    for st in done["stages"]:
        assert f'href="/jobs/{st["jobs"][0]}"' in html
    listed = srv.request("GET", "/api/pipelines?limit=500").json()["pipelines"]
    assert created["id"] in [p["id"] for p in listed]
    job_page = srv.request("GET", f"/jobs/{done['stages'][0]['jobs'][0]}").body.decode()
    assert f'href="/pipelines/{created["id"]}"' in job_page  # a job links back to its pipeline


def test_a_project_token_sees_and_cancels_only_its_own_pipelines(make_server: MakeServer,
                                                                  tmp_path: Path) -> None:
    tokens_file = tmp_path / "tokens"
    alpha = add_token(tokens_file, "alpha", "--workspaces", "alpha")
    beta = add_token(tokens_file, "beta")
    server = make_server(env={"REMOTE_CI_TOKENS_FILE": str(tokens_file)})
    for name in ("alpha", "beta"):
        server.make_workspace(name)
    body = {"source": {"mode": "rsync", "workspace": "alpha"},
            "stages": [stage("s", job("j", "sleep 30"))]}
    forbidden = server.request("POST", "/api/pipelines", body, token=beta)
    assert forbidden.status == 403 and "workspace" in forbidden.json()["error"]
    resp = server.request("POST", "/api/pipelines", body, token=alpha)
    assert resp.status == 202, resp.body
    mine = resp.json()
    assert mine["owner"] == "alpha"
    for method, path in (("GET", f"/api/pipelines/{mine['id']}"),
                         ("POST", f"/api/pipelines/{mine['id']}/cancel"),
                         ("GET", f"/pipelines/{mine['id']}")):
        assert server.request(method, path, token=beta).status == 404
    assert server.request("GET", "/api/pipelines", token=beta).json() == {"pipelines": []}
    assert [p["id"] for p in server.request("GET", "/api/pipelines", token=alpha).json()["pipelines"]] \
        == [mine["id"]]
    assert server.request("GET", "/api/pipelines?owner=alpha", token=beta).status == 403
    job_id = mine["stages"][0]["jobs"][0]
    assert server.request("GET", f"/api/jobs/{job_id}", token=beta).status == 404
    assert server.request("GET", f"/api/jobs/{job_id}", token=alpha).json()["owner"] == "alpha"
    assert server.request("POST", f"/api/pipelines/{mine['id']}/cancel", token=alpha).status == 202


def test_a_retried_submission_with_the_same_idempotency_key_makes_one_pipeline(srv: Server) -> None:
    body = {"source": {"mode": "rsync", "workspace": "proj"}, "stages": [stage("s", job("j", "true"))]}
    first = srv.request("POST", "/api/pipelines", body, {"Idempotency-Key": "retry-1"})
    again = srv.request("POST", "/api/pipelines", body, {"Idempotency-Key": "retry-1"})
    assert first.status == again.status == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    listed = [p["id"] for p in srv.request("GET", "/api/pipelines?limit=500").json()["pipelines"]]
    assert listed.count(first.json()["id"]) == 1
    assert wait_pipeline(srv, first.json()["id"])["status"] == "success"
    # The retry's own snapshot was dropped at once: only pipelines still running keep one.
    wait_until(lambda: not any((srv.data_dir / "pipelines").iterdir()), 10, "no snapshot left")


def test_a_first_stage_past_the_owners_queued_cap_is_429(make_server: MakeServer) -> None:
    server = make_server(env={"REMOTE_CI_MAX_QUEUED_PER_OWNER": "1", "REMOTE_CI_CONCURRENCY": "1"})
    server.make_workspace("proj")
    body = {"source": {"mode": "rsync", "workspace": "proj"},
            "stages": [stage("s", job("a", "true"), job("b", "true"))]}
    resp = server.request("POST", "/api/pipelines", body)
    assert resp.status == 429, resp.body
    assert "REMOTE_CI_MAX_QUEUED_PER_OWNER" in resp.json()["error"]
    assert resp.headers["retry-after"] == "30"
    assert not any((server.data_dir / "pipelines").iterdir())


def test_a_pipeline_outlives_its_redis_record_in_the_history(make_server: MakeServer,
                                                            history_url: str) -> None:
    server = make_server(env={"REMOTE_CI_HISTORY_URL": history_url}, wait_workers=2)
    server.make_workspace("proj")
    created = submit(server, stage("one", job("a", "true")), stage("two", job("b", "exit 5")))
    done = wait_pipeline(server, created["id"])
    db = HistoryDB(parse_history_url(history_url))
    try:
        db.ensure_schema()
        wait_until(lambda: db.get_pipeline(created["id"]) is not None, 30,
                   "the history writer to copy the pipeline")
        assert all(db.get(j) is not None for s in done["stages"] for j in s["jobs"])
    finally:
        db.close()
    client = redis.Redis.from_url(str(server.redis_url))
    client.delete(f"rci:pipeline:{created['id']}")  # its TTL ran out
    again = pipeline(server, created["id"])
    assert {k: again[k] for k in ("id", "status", "stages", "finished_at", "error", "owner")} == \
        {k: done[k] for k in ("id", "status", "stages", "finished_at", "error", "owner")}
    late = server.request("POST", f"/api/pipelines/{created['id']}/cancel")
    assert late.status == 409 and "'failed'" in late.json()["error"]
