"""The webhook deliverer: a process next to the executors that POSTs final jobs to their webhooks.

The supervisor forks one per worker host (when webhooks are configured) and watches it like an
executor. Its threads take deliveries from the shared Redis list into this deliverer's in-flight
list, so a slow receiver holds one thread for at most the timeout, never an executor or another
delivery. A retry waits in a sorted set and is put back on the list when due.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from redis.exceptions import RedisError

from remoteci import events
from remoteci.config import Settings
from remoteci.queue import JobStore
from remoteci.webhooks import send as webhook_send
from remoteci.webhooks.rules import (
    Reply,
    allowed_by,
    decide,
    delivery_body,
    delivery_event,
    delivery_headers,
    parse_target,
)
from remoteci.webhooks.store import WebhookStore

COMPONENT = "webhooks"
THREADS = 4  # deliveries in flight at once per host
TAKE_TIMEOUT = 1.0
TICK = 0.1  # how often due retries are looked for
HEARTBEAT_EVERY = 5.0
STOP_GRACE = 5.0  # on SIGTERM, deliveries already queued (say, by the drain) still go out this long

T = TypeVar("T")


class Deliverer:
    def __init__(self, settings: Settings, store: WebhookStore, deliverer_id: str):
        self.settings = settings
        self.store = store
        self.id = deliverer_id
        self.stopping = False
        self.stop_deadline = float("inf")

    def run_forever(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        self._redis(lambda: self.store.heartbeat(self.id))
        workers = [threading.Thread(target=self._work, name=f"deliver-{n}", daemon=True)
                   for n in range(THREADS)]
        for worker in workers:
            worker.start()
        events.info(COMPONENT, f"deliverer {self.id} started")
        next_beat = time.monotonic() + HEARTBEAT_EVERY
        while any(w.is_alive() for w in workers):
            time.sleep(TICK)
            try:
                if not self.stopping:
                    self.store.promote_due(time.time())
                if time.monotonic() >= next_beat:
                    next_beat = time.monotonic() + HEARTBEAT_EVERY
                    self.store.heartbeat(self.id)
            except RedisError:
                pass  # the executors' heartbeat thread reports the outage; we just try again
        try:
            self.store.hand_back(self.id)  # nothing should be left; if something is, it is not lost
        except RedisError:
            pass  # the heartbeat expires and a supervisor hands the entries back
        events.info(COMPONENT, f"deliverer {self.id} stopped")

    def _on_stop(self, *_: Any) -> None:
        if not self.stopping:
            self.stopping = True
            self.stop_deadline = time.monotonic() + STOP_GRACE

    def _work(self) -> None:
        while time.monotonic() < self.stop_deadline:
            try:
                job_id = self.store.take(self.id, 0.2 if self.stopping else TAKE_TIMEOUT)
            except RedisError:
                time.sleep(1.0)
                continue
            if job_id is not None:
                self._deliver_or_record(job_id)
            elif self.stopping:
                return  # the queue is empty: nothing left that could go out before we stop

    def _deliver_or_record(self, job_id: str) -> None:
        try:
            self._deliver(job_id)
        except Exception as exc:  # a bug must not kill a thread or retry forever: record it
            events.error(COMPONENT, f"job {job_id}: internal error while delivering: {exc!r}")
            status = f"failed: the server failed while delivering: {exc}"
            self._redis(lambda: self.store.settle(self.id, job_id, {"webhook_status": status}, None))

    def _deliver(self, job_id: str) -> None:
        record = self._redis(lambda: self.store.record(job_id))
        if record is None:
            return  # stopping during an outage: the entry stays in-flight and is handed back
        url = record.get("webhook")
        if not url:  # expired meanwhile, or never had one
            self._redis(lambda: self.store.settle(self.id, job_id, {}, None))
            return
        delivery_id = record.get("webhook_delivery") or _new_delivery_id()
        attempts = int(record.get("webhook_attempts") or 0) + 1
        # Counted before the attempt, so a deliverer dying mid-attempt still shows it.
        self._redis(lambda: self.store.update(job_id, {"webhook_delivery": delivery_id,
                                                       "webhook_attempts": str(attempts)}))
        reply = self._attempt(url, delivery_body(record), delivery_id, delivery_event(record))
        decision = decide(reply, attempts, self.settings.webhook_attempts,
                          self.settings.webhook_retry_seconds)
        retry_at = None if decision.retry_in is None else time.time() + decision.retry_in
        self._redis(lambda: self.store.settle(self.id, job_id, {"webhook_status": decision.status},
                                              retry_at))
        where = _origin(url)
        if decision.status == "delivered":
            events.info(COMPONENT, f"job {job_id} webhook delivered to {where} "
                                   f"({reply.detail}, attempt {attempts})")
        elif decision.retry_in is not None:
            events.warning(COMPONENT, f"job {job_id} webhook attempt {attempts} to {where} "
                                      f"failed ({reply.detail}); retrying in "
                                      f"{decision.retry_in:g} s")
        else:
            events.error(COMPONENT, f"job {job_id} webhook to {where} {decision.status}")

    def _attempt(self, url: str, body: bytes, delivery_id: str, event: str) -> Reply:
        try:
            target = parse_target(url)
        except ValueError as exc:
            return Reply(None, f"the URL is not usable: {exc}", retryable=False)
        # Checked again here: the allowlist may have shrunk since the job was accepted.
        if allowed_by(target, self.settings.webhook_allow) is None:
            return Reply(None, f"{target.host}:{target.port} is not in REMOTE_CI_WEBHOOK_ALLOW "
                               f"on {self.settings.node_name}", retryable=False)
        secret = self.settings.webhook_secret or ""
        return webhook_send.post(target, url, body, delivery_headers(body, secret, delivery_id, event),
                                 self.settings.webhook_timeout)

    def _redis(self, action: Callable[[], T]) -> T | None:
        """Retry through a Redis outage; only a stop whose grace is over gives up (None)."""
        delay = 0.2
        while True:
            try:
                return action()
            except RedisError as exc:
                if self.stopping and time.monotonic() > self.stop_deadline:
                    return None
                events.warning(COMPONENT, f"redis write failed ({exc}); retrying in {delay:.1f} s")
                time.sleep(delay)
                delay = min(delay * 2, 5.0)


def _origin(url: str) -> str:
    """What the log names: never the path or query, which may carry a receiver's secret."""
    try:
        return parse_target(url).origin
    except ValueError:
        return "(unusable URL)"


def deliverer_main(settings: Settings, store: JobStore) -> None:
    """The deliverer process's body, forked and restarted by the supervisor (worker/auxiliary.py)."""
    Deliverer(settings, WebhookStore(store.r), f"{settings.node_name}:{os.getpid()}").run_forever()


def _new_delivery_id() -> str:
    return str(uuid.uuid4())
