"""What operators read in the journal: one line per event, Redis lost/back once, no token."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.helpers import TOKEN, RedisServer, Server, wait_until


def test_api_logs_redis_lost_and_back_once_per_outage(make_server: Callable[..., Server],
                                                      tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "own-redis").start()
    try:
        api = make_server(command="api", redis_url=redis.url)
        redis.stop()
        for _ in range(5):
            assert api.request("GET", "/api/stats").status == 503
        redis = RedisServer(tmp_path / "own-redis", port=redis.port).start()
        wait_until(lambda: "redis is reachable again" in api.output(), 15, "the back line")
        output = api.output()
        assert output.count("redis unreachable") == 1, output
        assert api.request("GET", "/api/stats").status == 200
    finally:
        redis.stop()


def test_job_lifecycle_is_one_line_per_event_under_journald(make_server: Callable[..., Server]) -> None:
    srv = make_server(env={"JOURNAL_STREAM": "8:1234"}, wait_workers=1)
    job = srv.submit("echo job-output-must-not-be-logged; exit 4")
    srv.wait_final(job["id"])
    wait_until(lambda: f"job {job['id']} finished" in srv.output(), 10, "the finish line")
    lines = [line for line in srv.output().splitlines() if job["id"] in line]
    # API and executor are separate processes: "accepted" may land after "started".
    assert sorted(line.split(": ", 1)[1].split(" ")[2] for line in lines) == [
        "accepted", "finished", "started"]
    assert all(line.startswith("<6>") for line in lines)
    finished = next(line for line in lines if " finished " in line)
    assert "status=failed" in finished and "exit_code=4" in finished and "duration=" in finished
    assert "job-output-must-not-be-logged" not in srv.output()
    assert TOKEN not in srv.output()
