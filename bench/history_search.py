"""`python bench/history_search.py`: search 100,000 history records with each filter, SQLite and
PostgreSQL (a throwaway cluster when Debian's postgresql is installed). Prints a Markdown table:
the p50 and max of 20 first pages (50 jobs) per filter."""

from __future__ import annotations

import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from remoteci import jobs
from remoteci.history.db import HistoryDB, Search, parse_history_url
from tests.postgres import PostgresServer, pg_bin

RECORDS = 100_000
RUNS = 20
DAY = 86400


def records(n: int) -> list[dict[str, str]]:
    rng = random.Random(7)
    now = time.time()
    out = []
    for i in range(n):
        finished = now - rng.uniform(0, 365 * DAY)
        out.append({
            "id": f"{int(finished * 1000):011x}{i:010x}", "status": rng.choice(jobs.FINAL_STATUSES),
            "mode": rng.choice(jobs.MODES), "owner": f"team{rng.randrange(20)}",
            "name": f"{rng.choice(['build', 'test', 'lint', 'deploy', 'nightly'])}-{rng.randrange(100)}",
            "script": "make test", "created_at": jobs.iso_time(finished - 60),
            "finished_at": jobs.iso_time(finished), "duration": f"{rng.uniform(1, 600):.3f}",
            "exit_code": "0"})
    return out


def searches() -> dict[str, Search]:
    month_ago = jobs.iso_time(time.time() - 30 * DAY)
    return {"none": Search(), "status": Search(status="failed"), "mode": Search(mode="git"),
            "owner": Search(owner="team7"), "name prefix": Search(name="nightly-4"),
            "since (30 days)": Search(since=month_ago),
            "until (30 days ago)": Search(until=month_ago),
            "all of them": Search(status="success", mode="rsync", owner="team3", name="build",
                                  since=jobs.iso_time(time.time() - 180 * DAY))}


def measure(db: HistoryDB) -> dict[str, tuple[float, float]]:
    results = {}
    for label, search in searches().items():
        times = []
        for _ in range(RUNS):
            start = time.perf_counter()
            db.search(search)
            times.append((time.perf_counter() - start) * 1000)
        results[label] = (statistics.median(times), max(times))
    return results


def fill(db: HistoryDB) -> None:
    db.migrate()
    batch = records(RECORDS)
    for i in range(0, len(batch), 5000):
        db.upsert(batch[i:i + 5000])


def main() -> int:
    columns: dict[str, dict[str, tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        sqlite = HistoryDB(parse_history_url(f"sqlite://{tmp}/history.sqlite3"))
        fill(sqlite)
        columns["SQLite"] = measure(sqlite)
        sqlite.close()
    if pg_bin("initdb") is not None and os.environ.get("BENCH_NO_PG") != "1":
        pg = PostgresServer().init()
        try:
            db = HistoryDB(parse_history_url(pg.create_database("bench")))
            fill(db)
            columns["PostgreSQL"] = measure(db)
            db.close()
        finally:
            pg.destroy()
    names = list(columns)
    print("| filter (100,000 records, first page of 50) | "
          + " | ".join(f"{n} p50 / max ms" for n in names) + " |")
    print("|---|" + "---|" * len(names))
    for label in searches():
        cells = [f"{columns[n][label][0]:.2f} / {columns[n][label][1]:.2f}" for n in names]
        print(f"| {label} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
