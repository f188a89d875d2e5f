"""`python bench/schedules.py`: what the schedule tickers cost. On a private redis-server:
1,000 schedules, a tickers' look when none is due (what every worker host does each second),
and the same 1,000 all due at once with two tickers (processes, as two hosts) racing for them:
how long until every tick has its job, and that each has exactly one. Prints a Markdown table."""

from __future__ import annotations

import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from remoteci import jobs
from remoteci.auth.identity import ADMIN
from remoteci.config import Settings, load_settings
from remoteci.queue import JobStore
from remoteci.schedules.firing import Ticker
from remoteci.schedules.model import new_record, parse_schedule
from remoteci.schedules.store import ScheduleStore
from remoteci.store.redis_conn import connect
from tests.helpers import RedisServer

SCHEDULES = 1000
LOOKS = 200


def settings_in(base: Path) -> Settings:
    (base / "ws" / "proj").mkdir(parents=True, exist_ok=True)
    return load_settings({"REMOTE_CI_TOKEN": "bench-token-0123456789",
                          "REMOTE_CI_WORKSPACE_DIR": str(base / "ws"),
                          "REMOTE_CI_DATA_DIR": str(base / "data")})


def fill(settings: Settings, url: str, now: float) -> int:
    """SCHEDULES every-minute schedules made at `now`; their common first tick."""
    client = connect(url)
    store = ScheduleStore(client)
    new = parse_schedule({"cron": "* * * * *", "job": {"mode": "rsync", "workspace": "proj",
                                                       "script": "true"}}, settings, ADMIN)
    for _ in range(SCHEDULES):
        assert store.create(new_record(jobs.new_job_id(), new, "admin", now), 0, SCHEDULES)
    return int(now - now % 60 + 60)


def race(base: str, url: str, now: float, start: float) -> None:
    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)  # a log line per job made: not for the table
    client = connect(url)
    ticker = Ticker(settings_in(Path(base)), JobStore(client, 3600), ScheduleStore(client))
    time.sleep(max(0.0, start - time.time()))  # both tickers go at the same moment
    ticker.fire_due(now)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        rs = RedisServer(base / "redis").start()
        try:
            settings = settings_in(base)
            now = time.time()
            tick = fill(settings, rs.url, now)
            client = connect(rs.url)
            ticker = Ticker(settings, JobStore(client, 3600), ScheduleStore(client))
            idle = []
            for _ in range(LOOKS):
                began = time.perf_counter()
                assert ticker.fire_due(tick - 1) == []
                idle.append((time.perf_counter() - began) * 1000)
            start = time.time() + 1.0
            racers = [multiprocessing.Process(target=race, args=(tmp, rs.url, tick + 1, start))
                      for _ in range(2)]
            for racer in racers:
                racer.start()
            for racer in racers:
                racer.join(300)
            took = time.time() - start
            made = JobStore(client, 3600).list_jobs(None, None, 500)
            total = client.zcard("rci:index:all")
            per_schedule = {job["schedule"] for job in made}
            assert total == SCHEDULES, f"{total} jobs for {SCHEDULES} ticks"
            assert len(per_schedule) == len(made)
        finally:
            rs.stop()
    print(f"| figure ({SCHEDULES} schedules) | value |\n|---|---|")
    print(f"| one look, none due (p50 / max of {LOOKS}) | {statistics.median(idle):.2f} / "
          f"{max(idle):.2f} ms |")
    print(f"| all due at once, two tickers racing: every tick's job made | {took:.2f} s "
          f"({SCHEDULES / took:,.0f} jobs/s) |")
    print(f"| jobs made for {SCHEDULES} ticks | {total} |")


if __name__ == "__main__":
    main()
