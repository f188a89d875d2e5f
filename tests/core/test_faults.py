"""A Redis outage, injected for real: the API says 503, executors wait, nothing is dropped."""

from __future__ import annotations

import time
from pathlib import Path

from tests.helpers import MakeServer, RedisServer, wait_until

HEARTBEAT_TTL = 15


def test_a_redis_outage_longer_than_the_heartbeat_loses_nothing(make_server: MakeServer,
                                                                tmp_path: Path) -> None:
    rs = RedisServer(tmp_path / "redis", appendonly=True).start()
    restarted = RedisServer(tmp_path / "redis", appendonly=True, port=rs.port)
    try:
        srv = make_server(redis_url=rs.url, wait_workers=2)
        job = srv.submit("echo before; sleep 1; echo after")
        srv.wait_status(job["id"], ("running",))
        rs.stop()  # SIGTERM: redis writes its AOF and exits
        outage_started = time.monotonic()

        health = wait_until(lambda: (r := srv.request("GET", "/api/health", token=None)).status == 503 and r,
                            10, "health to report the outage")
        assert health.json()["redis"] == "unreachable"
        listing = srv.request("GET", "/api/jobs")
        assert listing.status == 503 and "Redis" in listing.json()["error"]
        log_file = srv.data_dir / "logs" / f"{job['id']}.log"
        wait_until(lambda: b"[remote-ci] success" in log_file.read_bytes(), 20,
                   "the job to end while redis is down")
        # Keep redis down past the heartbeat TTL: every heartbeat expires meanwhile.
        wait_until(lambda: time.monotonic() - outage_started > HEARTBEAT_TTL + 1, HEARTBEAT_TTL + 5,
                   "the outage to outlast the heartbeat TTL")

        restarted.start()
        back = wait_until(lambda: (r := srv.request("GET", "/api/health", token=None)).status == 200 and r,
                          20, "health to recover")
        assert back.json()["redis"] == "ok"
        final = srv.wait_final(job["id"], timeout=30)  # the status write was retried
        assert final["status"] == "success", final
        after = srv.submit("echo recovered")
        assert srv.wait_final(after["id"], timeout=30)["status"] == "success"
        wait_until(lambda: srv.request("GET", "/api/stats").json()["workers"] == 2, 20,
                   "both executors to be counted again")
        assert srv.job(job["id"])["status"] == "success"  # not re-marked as "executor lost"
    finally:
        rs.stop()
        restarted.stop()
