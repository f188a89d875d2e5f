"""Making a schedule's jobs: one per due tick (the ticker), or one now (run-now)."""

from __future__ import annotations

import time
from typing import Any

from redis.exceptions import RedisError

from remoteci import events, jobs
from remoteci.config import Settings
from remoteci.queue import AlreadySubmitted, JobStore, NotReplicated, OverQuota, QueueFull, Quotas
from remoteci.schedules.jobspec import job_entry, loads
from remoteci.schedules.model import next_tick
from remoteci.schedules.store import ScheduleStore, tick_claim

COMPONENT = "scheduler"
TICK_EVERY = 1.0  # seconds between looks for due schedules: how late a tick may start
REFUSED_BACKOFF = 30.0  # seconds before a tick the queue refused (full, over quota) is retried


def quotas(settings: Settings) -> Quotas:
    return Quotas(settings.max_queued_per_owner, settings.max_stored_mb_per_owner * 1024 * 1024)


def make_job(settings: Settings, store: JobStore, record: dict[str, str],
             idempotency_key: str | None) -> tuple[dict[str, Any], bool]:
    """Enqueue the schedule's job; (its job object, False), or with a key that already made a
    job, (that job, True). QueueFull and OverQuota pass through to the caller."""
    spec = loads(record["job"], record["run"], record.get("credential"))
    job_id = jobs.new_job_id()
    job_record, payload = job_entry(spec, job_id, record["owner"], record["id"], jobs.iso_now(),
                                    record.get("name"))
    if spec.credential is not None:
        store.put_git_credential(job_id, spec.credential)
    try:
        position = store.enqueue(job_record, payload, settings.max_queue, idempotency_key,
                                 quotas(settings))
    except AlreadySubmitted as earlier:
        store.drop_git_credential(job_id)
        return store.get(earlier.job_id) or {"id": earlier.job_id}, True
    except BaseException:
        if spec.credential is not None:
            store.drop_git_credential(job_id)
        raise
    return jobs.job_object(job_record, position), False


class Ticker:
    """Turns due ticks into jobs; one per worker host, all of them safe to run at once."""

    def __init__(self, settings: Settings, store: JobStore, schedules: ScheduleStore):
        self.settings = settings
        self.store = store
        self.schedules = schedules
        self.refused: dict[str, float] = {}  # schedule id -> monotonic time to retry its tick

    def fire_due(self, now: float) -> list[str]:
        """Make the job of every due tick; the ids of the jobs this call made."""
        made = []
        for schedule_id, tick in self.schedules.due(now):
            if self.refused.get(schedule_id, 0.0) > time.monotonic():
                continue
            job_id = self._fire(schedule_id, tick, now)
            if job_id is not None:
                made.append(job_id)
        return made

    def _fire(self, schedule_id: str, tick: int, now: float) -> str | None:
        record = self.schedules.get(schedule_id)
        if record is None or record.get("enabled") != "1":
            return None  # deleted or paused since the due set was read
        try:
            job, existed = make_job(self.settings, self.store, record,
                                    tick_claim(schedule_id, tick))
        except (QueueFull, OverQuota) as exc:
            self.refused[schedule_id] = time.monotonic() + REFUSED_BACKOFF
            events.warning(COMPONENT, f"schedule {schedule_id}: the queue refused its job "
                                      f"({type(exc).__name__}); retrying in {REFUSED_BACKOFF:.0f} s")
            return None
        except NotReplicated as exc:
            # Stored on the primary only: the tick stays due, and the next look finds the job
            # (or, after a failover that lost it, makes it).
            events.warning(COMPONENT, f"schedule {schedule_id}: its job is not replicated yet "
                                      f"({exc}); the next look settles the tick")
            return None
        self.refused.pop(schedule_id, None)
        # Missed ticks are not made up one by one: the next tick is the first after now.
        following = next_tick(record["cron"], record["timezone"], max(now, tick))
        moved = self.schedules.advance(schedule_id, tick, following, job["id"], jobs.iso_time(now))
        if existed:
            return None  # another ticker made this tick's job
        events.info(COMPONENT, f"schedule {schedule_id} made job {job['id']} for its tick at "
                               f"{jobs.iso_time(tick)}" + ("" if moved else " (moved on meanwhile)"))
        return str(job["id"])

    def run_forever(self) -> None:
        down = False
        while True:
            try:
                self.fire_due(time.time())
                if down:
                    events.info(COMPONENT, "redis reachable again; schedules are ticking")
                down = False
            except RedisError as exc:
                if not down:
                    events.error(COMPONENT, f"redis unreachable ({exc}); due ticks wait for it")
                down = True
            time.sleep(TICK_EVERY)


def ticker_main(settings: Settings, store: JobStore) -> None:
    Ticker(settings, store, ScheduleStore(store.r)).run_forever()
