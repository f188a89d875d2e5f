"""`submit --pipeline FILE`: every job's log prefixed by its name, the exit code of the first
job that failed (0 when all succeed), a signal cancelling the pipeline."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.client.test_client import CLIENTS, finish, run, start
from tests.helpers import Server, running_server, wait_until


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("pipeline-client"),
                        {"REMOTE_CI_JOB_TIMEOUT": "60", "REMOTE_CI_KILL_GRACE": "1",
                         "REMOTE_CI_CANCEL_GRACE": "1", "REMOTE_CI_DRAIN_TIMEOUT": "2"}) as server:
        server.make_workspace("proj", {"data.txt": "from the workspace\n"})
        yield server


@pytest.fixture(params=sorted(CLIENTS))  # both clients take --pipeline
def cli(request: pytest.FixtureRequest) -> list[str]:
    return CLIENTS[request.param]


def pipeline_file(tmp_path: Path, *stages: dict[str, Any], source: bool = True) -> str:
    spec: dict[str, Any] = {"name": "ci", "stages": list(stages)}
    if source:
        spec["source"] = {"mode": "rsync", "workspace": "proj"}
    path = tmp_path / "pipeline.json"
    path.write_text(json.dumps(spec))
    return str(path)


def lines_of(out: bytes, name: str) -> list[str]:
    prefix = f"[{name}] "
    return [line[len(prefix):] for line in out.decode().splitlines() if line.startswith(prefix)]


def test_all_succeed_exit_0_with_every_log_line_prefixed(cli: list[str], srv: Server,
                                                          tmp_path: Path) -> None:
    path = pipeline_file(
        tmp_path,
        {"name": "build", "jobs": [{"name": "one", "script": "echo a1; echo a2"},
                                   {"name": "two", "script": "cat data.txt; printf 'no newline'"}]},
        {"name": "test", "jobs": [{"name": "three", "script": "echo c"}]})
    code, out, err = run(cli, srv, "--pipeline", path)
    assert code == 0, err
    assert lines_of(out, "one")[:2] == ["a1", "a2"]
    assert lines_of(out, "two")[:2] == ["from the workspace", "no newline"]
    assert lines_of(out, "three")[0] == "c"
    assert all(line.startswith(("[one] ", "[two] ", "[three] ")) for line in out.decode().splitlines())
    assert f"{srv.url}/pipelines/" in err


def test_the_first_failed_jobs_code_is_the_exit_code(cli: list[str], srv: Server,
                                                     tmp_path: Path) -> None:
    path = pipeline_file(
        tmp_path,
        {"name": "build", "jobs": [{"name": "ok", "script": "echo fine"},
                                   {"name": "bad", "script": "echo broken; exit 7"}]},
        {"name": "later", "jobs": [{"name": "never", "script": "echo must not run"}]})
    code, out, err = run(cli, srv, "--pipeline", path)
    assert code == 7, err
    assert lines_of(out, "bad")[0] == "broken"
    assert lines_of(out, "never") == []
    assert "first failed: bad" in err


def test_a_timed_out_job_exits_124(cli: list[str], srv: Server, tmp_path: Path) -> None:
    path = pipeline_file(tmp_path, {"name": "s", "jobs": [{"name": "slow", "script": "sleep 30",
                                                           "timeout": 2}]})
    code, _, err = run(cli, srv, "--pipeline", path)
    assert code == 124, err


def test_upload_sends_the_dir_for_a_pipeline_without_source(cli: list[str], srv: Server,
                                                           tmp_path: Path) -> None:
    code_dir = tmp_path / "src"
    code_dir.mkdir()
    (code_dir / "hello.txt").write_text("uploaded\n")
    path = pipeline_file(tmp_path, {"name": "s", "jobs": [{"name": "read", "script": "cat hello.txt"}]},
                         source=False)
    code, out, err = run(cli, srv, "--pipeline", path, "--upload", str(code_dir))
    assert code == 0, err
    assert lines_of(out, "read")[0] == "uploaded"


def test_a_refused_pipeline_exits_2_with_the_servers_words(cli: list[str], srv: Server,
                                                           tmp_path: Path) -> None:
    path = pipeline_file(tmp_path, {"name": "s", "jobs": [{"name": "j"}]})
    code, _, err = run(cli, srv, "--pipeline", path)
    assert code == 2 and "script" in err


@pytest.mark.parametrize(("sig", "expected"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_cancels_the_pipeline(cli: list[str], srv: Server, tmp_path: Path,
                                       sig: int, expected: int) -> None:
    path = pipeline_file(tmp_path, {"name": "s", "jobs": [{"name": "long", "script": "echo up; sleep 30"}]},
                         {"name": "t", "jobs": [{"name": "after", "script": "true"}]})
    before = {p["id"] for p in srv.request("GET", "/api/pipelines?limit=500").json()["pipelines"]}
    proc = start(cli, srv, "--pipeline", path)
    mine = wait_until(lambda: [p for p in srv.request("GET", "/api/pipelines?limit=500").json()[
        "pipelines"] if p["id"] not in before], 20, "the client's pipeline")[0]
    first = mine["stages"][0]["jobs"][0]
    wait_until(lambda: srv.log(first).startswith(b"up"), 20, "the first job to print")
    proc.send_signal(sig)
    code, _, err = finish(proc)
    assert code == expected, err
    found = srv.request("GET", f"/api/pipelines/{mine['id']}").json()
    assert found["status"] == "cancelled", (found, err)
