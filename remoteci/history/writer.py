"""The history writer: copies final job records from Redis to the history database, in batches.

Every host's supervisor forks one; a Redis lease lets one of them at a time copy and trim. A
record leaves the Redis list only after the database took it, and the database upserts by id,
so a writer killed at any moment loses nothing and duplicates nothing. A database outage only
lets the list grow (a job's end never waits for it); the writer retries and catches up.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from redis.exceptions import RedisError

from remoteci import events, jobs
from remoteci.config import Settings
from remoteci.history.db import HistoryDB, HistoryUnavailable
from remoteci.history.store import HistoryQueue, parse_record
from remoteci.queue import JobStore
from remoteci.system.wakeup import SignalWakeup

COMPONENT = "history"
BATCH = 200
LEASE_TTL = 30.0  # seconds; renewed every round, so a dead writer's lease passes on within it
IDLE_WAIT = 1.0  # seconds between looks at an empty list: how far the history trails
RETRY_MAX = 30.0
PRUNE_EVERY = 86400.0


class HistoryWriter:
    def __init__(self, settings: Settings, queue: HistoryQueue, db: HistoryDB, writer_id: str):
        self.settings = settings
        self.queue = queue
        self.db = db
        self.id = writer_id
        self.stopping = False
        self.migrated = False
        self.trouble: str | None = None  # what failed last, so an outage is logged once
        self.wakeup = SignalWakeup()

    def run_forever(self) -> None:
        self.wakeup.install()
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        events.info(COMPONENT, f"history writer {self.id} started ({self.db.url})")
        delay = IDLE_WAIT
        while not self.stopping:
            try:
                busy = self._round()
                self._recovered()
                delay = IDLE_WAIT
                if not busy:
                    self.wakeup.wait(IDLE_WAIT)
            except (RedisError, HistoryUnavailable) as exc:
                self._failed(exc)
                self.wakeup.wait(delay)
                delay = min(delay * 2, RETRY_MAX)
        try:
            self.queue.release_lease(self.id)
        except RedisError:
            pass  # it expires by itself
        self.db.close()
        events.info(COMPONENT, f"history writer {self.id} stopped")

    def _on_stop(self, *_: Any) -> None:
        self.stopping = True

    def _round(self) -> bool:
        """Copy one batch if we hold the lease; True when there may be more right away."""
        if not self.queue.take_lease(self.id, LEASE_TTL):
            self.wakeup.wait(LEASE_TTL / 3)  # another host writes; take over if it stops
            return False
        if not self.migrated:
            for name in self.db.migrate():
                events.info(COMPONENT, f"history database migrated: {name}")
            self.migrated = True
        self._prune_if_due()
        return self.copy_batch() == BATCH

    def copy_batch(self) -> int:
        """Copy the oldest waiting records, then drop them from Redis; return how many."""
        raw = self.queue.oldest(BATCH)
        if not raw:
            return 0
        records = [r for r in map(parse_record, raw) if r is not None]
        if len(records) < len(raw):
            events.error(COMPONENT, f"skipped {len(raw) - len(records)} history entries that "
                                    "are not job records")
        pipelines = [r for r in records if r.get("kind") == "pipeline"]  # see pipelines/lua.py
        self.db.upsert([r for r in records if r.get("kind") != "pipeline"])
        if pipelines:
            self.db.upsert_pipelines(pipelines)
        if not self.queue.done(self.id, len(raw)):
            events.warning(COMPONENT, "lost the lease while copying; another writer goes on")
        return len(raw)

    def _prune_if_due(self) -> None:
        now = time.time()
        if now - self.queue.pruned_at() < PRUNE_EVERY:
            return
        cutoff = jobs.iso_time(now - self.settings.history_days * 86400)
        removed = self.db.prune(cutoff)
        self.queue.set_pruned_at(now)
        events.info(COMPONENT, f"history pruned: {removed} jobs finished before {cutoff} "
                               f"(REMOTE_CI_HISTORY_DAYS={self.settings.history_days})")

    def _failed(self, exc: Exception) -> None:
        text = str(exc)
        if text != self.trouble:
            events.error(COMPONENT, f"cannot copy history ({text}); final records wait in "
                                    "Redis and are retried")
        self.trouble = text

    def _recovered(self) -> None:
        if self.trouble is not None:
            events.info(COMPONENT, "history copying works again")
            self.trouble = None


def history_main(settings: Settings, store: JobStore) -> None:
    """The writer process's body, forked and restarted by the supervisor (worker/auxiliary.py)."""
    writer = HistoryWriter(settings, HistoryQueue(store.r), HistoryDB(settings.history),
                           f"{settings.node_name}:{os.getpid()}")
    writer.run_forever()
