"""The supervisor: forks and watches executors and the auxiliary processes (worker/auxiliary.py),
ends jobs of dead executors, sweeps old files, drains."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from typing import Any

from redis.exceptions import RedisError

from remoteci import events, jobs
from remoteci.config import Settings
from remoteci.executor import DRAIN_KILL_GRACE, executor_main
from remoteci.pipelines import cleanup as pipeline_cleanup
from remoteci.queue import HEARTBEAT_TTL, JobStore
from remoteci.store import activity
from remoteci.store.redis_watch import RedisWatch
from remoteci.system import old_files, proctree
from remoteci.system.sd_notify import Notifier
from remoteci.system.wakeup import SignalWakeup
from remoteci.worker import jobdirs
from remoteci.worker.auxiliary import Auxiliary, auxiliaries, dead_deliverers, hand_back_deliveries

COMPONENT = "supervisor"
LOST_SCAN_EVERY = 10.0  # seconds between looks for executors whose heartbeat expired (any host)
SWEEP_EVERY = 600.0
RESTART_BACKOFF_MAX = 30.0


class Supervisor:
    def __init__(self, settings: Settings, make_store: Callable[[], JobStore],
                 notifier: Notifier | None = None):
        self.settings = settings
        self.notifier = notifier or Notifier()
        self.redis = RedisWatch(COMPONENT)
        self.make_store = make_store
        self.store = make_store()
        self.executors: dict[int, int] = {}  # pid -> slot
        self.aux: dict[int, Auxiliary] = {}  # pid -> the auxiliary process it runs
        self.failures: dict[int | str, int] = {}  # slot or auxiliary's name -> deaths in a row
        self.suspects: dict[str, float] = {}  # executor id -> when its heartbeat was first missed
        self.stopping = False
        self.wakeup = SignalWakeup()
        self.capacity_since = time.time()  # executor time before this is already counted

    def run(self) -> int:
        proctree.become_subreaper()  # orphans of a dead executor come to us, so we can stop them
        self.wakeup.install()
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)
        for directory in (self.settings.logs_dir, self.settings.work_dir,
                          self.settings.uploads_dir):
            directory.mkdir(parents=True, exist_ok=True)
        events.info(COMPONENT, f"starting {self.settings.concurrency} executors on "
                               f"{self.settings.node_name}")
        self._reap_lost_executors()
        self._reap_lost_deliverers()
        self._sweep()
        for slot in range(self.settings.concurrency):
            self._spawn(slot)
        for aux in auxiliaries(self.settings):
            self._spawn_aux(aux)
        self.notifier.ready(f"{self.settings.concurrency} executors started")
        next_scan = time.monotonic() + LOST_SCAN_EVERY
        next_sweep = time.monotonic() + SWEEP_EVERY
        while not self.stopping:
            self.wakeup.wait(1.0)
            self.notifier.tick()  # from this loop, so a wedged supervisor misses its pings
            self._reap_children()
            now = time.monotonic()
            if now >= next_scan:
                next_scan = now + LOST_SCAN_EVERY
                self._record_capacity()
                self._reap_lost_executors()
                self._reap_lost_deliverers()
            if now >= next_sweep:
                next_sweep = now + SWEEP_EVERY
                self._sweep()
        self.notifier.stopping("draining running jobs")
        return self._drain()

    def _record_capacity(self) -> None:
        """Executor seconds this host offered since the last look: the charts' busy share."""
        until = time.time()
        executors = len(self.executors)
        try:
            self.store.activity.add(activity.capacity(self.settings.node_name, executors,
                                                      self.capacity_since, until))
        except RedisError:
            return  # the time is added at the next look that reaches Redis
        self.capacity_since = until

    def _on_stop(self, *_: Any) -> None:
        self.stopping = True

    def _on_hup(self, *_: Any) -> None:
        events.info(COMPONENT, "SIGHUP: nothing to reload (settings are read once at start; "
                               "restart the service to change them)")

    # --- executors -------------------------------------------------------------------------

    def _spawn(self, slot: int) -> None:
        self.executors[self._fork("executor", lambda: executor_main(self.settings,
                                                                      self.make_store()))] = slot

    def _spawn_aux(self, aux: Auxiliary) -> None:
        self.aux[self._fork(aux.name, lambda: aux.main(self.settings, self.make_store()))] = aux

    def _fork(self, name: str, main: Callable[[], None]) -> int:
        # The child must never run the supervisor's SIGTERM handler: it would only flag the
        # child's copy of the supervisor, the stop would be lost and the drain would wait its
        # full timeout. So SIGTERM stays blocked across the fork and the child switches to the
        # default action before unblocking: until the executor installs its own handler, a
        # stop simply ends it (it holds no job yet).
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                self.wakeup.close()
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
                proctree.die_with_parent(signal.SIGTERM)
                main()
            except BaseException as exc:
                events.error(name, f"crashed: {exc!r}")
                code = 1
            finally:
                os._exit(code)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        return pid

    def _reap_children(self) -> None:
        reaped, _ = proctree.reap_children()
        for pid, status in reaped.items():
            slot = self.executors.pop(pid, None)
            aux = self.aux.pop(pid, None)
            if (slot is None and aux is None) or self.stopping:
                continue  # an orphan of a job, re-parented to us and now gone; or the drain
            executor_id = f"{self.settings.node_name}:{pid}"
            code = proctree.exit_code(status)
            if aux is not None:
                note = f" ({aux.after_death})" if aux.after_death else ""
                events.error(COMPONENT, f"{aux.name} {executor_id} died (exit code {code}); "
                                        f"restarting it{note}")
                if aux.hand_back is not None:
                    self._hand_back(aux.name, aux.hand_back, executor_id)
                self._back_off(aux.name)
                self._spawn_aux(aux)
            elif slot is not None:
                events.error(COMPONENT, f"executor {executor_id} died (exit code {code}); "
                                        "restarting it")
                self._stop_orphans()
                self._end_lost_jobs(executor_id, f"executor lost: it died with exit code {code}")
                self._back_off(slot)
                self._spawn(slot)

    def _back_off(self, key: int | str) -> None:
        """A process that dies at once must not spin: wait longer after each death in a row."""
        self.failures[key] = self.failures.get(key, 0) + 1
        delay = min(RESTART_BACKOFF_MAX, 0.5 * 2 ** (self.failures[key] - 1))
        if self.failures[key] > 1:
            self.wakeup.wait(delay)

    def _stop_orphans(self) -> None:
        """Processes of a dead executor's job were re-parented to us: kill every one of them."""
        executor_trees: set[int] = set(self.executors) | set(self.aux)
        for pid in executor_trees.copy():
            executor_trees.update(proctree.descendants(pid))
        orphans = [p for p in proctree.descendants(os.getpid()) if p not in executor_trees]
        proctree.signal_all(orphans, signal.SIGKILL)

    def _end_lost_jobs(self, executor_id: str, reason: str) -> None:
        try:
            ended = self.store.reap_executor(executor_id, reason, jobs.iso_now())
        except RedisError as exc:
            events.error(COMPONENT, f"cannot record lost jobs of {executor_id} ({exc}); "
                                    "the next scan retries")
            return
        for job_id in ended:
            events.warning(COMPONENT, f"job {job_id} ended error: {reason}")

    def _reap_lost_executors(self) -> None:
        """Executors on any host whose heartbeat stopped: their in-flight jobs end `error`.

        A missing heartbeat alone is not death: after a Redis outage every heartbeat may have
        expired while its executor is fine. So a live executor of ours is never reaped, a dead
        pid of ours at once, and any other only after it stayed missing for a whole heartbeat
        TTL while we could reach Redis.
        """
        try:
            dead = self.store.dead_executors()
        except RedisError as exc:
            self.redis.lost(exc)
            self.suspects.clear()
            return
        self.redis.back()
        now = time.monotonic()
        self.suspects = {e: t for e, t in self.suspects.items() if e in dead}
        for executor_id in dead:
            node, _, pid_text = executor_id.rpartition(":")
            if node == self.settings.node_name and pid_text.isdigit():
                pid = int(pid_text)
                if pid in self.executors:
                    continue  # ours and alive; its heartbeat is only late
                if not _pid_alive(pid):
                    self._end_lost_jobs(executor_id, "executor lost: its process is gone "
                                                     "(a previous run on this host died)")
                    continue
            first_missed = self.suspects.setdefault(executor_id, now)
            if now - first_missed >= HEARTBEAT_TTL:
                del self.suspects[executor_id]
                self._end_lost_jobs(executor_id, "executor lost: its heartbeat stopped "
                                                 "(host or process died)")

    def _hand_back(self, name: str, hand_back: Callable[[JobStore, str], int],
                   process_id: str) -> None:
        try:
            count = hand_back(self.store, process_id)
        except RedisError as exc:
            events.error(COMPONENT, f"cannot hand back the work of {name} {process_id} ({exc}); "
                                    "the next scan retries")
            return
        if count:
            events.warning(COMPONENT, f"{count} items of {name} {process_id} requeued")

    def _reap_lost_deliverers(self) -> None:
        """Deliverers whose heartbeat expired hand their in-flight deliveries back.

        Unlike a job, a delivery may safely happen twice (receivers dedupe by delivery id), so
        a deliverer that only looked dead during a Redis outage costs a duplicate, not a job.
        """
        try:
            dead = dead_deliverers(self.store)
        except RedisError:
            return  # _reap_lost_executors reports the outage
        for deliverer_id in dead:
            node, _, pid_text = deliverer_id.rpartition(":")
            if node == self.settings.node_name and pid_text.isdigit() and (
                    int(pid_text) in self.aux or _pid_alive(int(pid_text))):
                continue  # ours and alive; its heartbeat is only late
            self._hand_back("webhook deliverer", hand_back_deliveries, deliverer_id)

    # --- housekeeping ----------------------------------------------------------------------

    def _sweep(self) -> None:
        """Delete logs, artifacts, scratch dirs and uploads older than the retention; prune indexes."""
        now = time.time()
        cutoff = now - self.settings.retention_seconds
        removed = old_files.sweep_data_dirs(self.settings, now, remove_dir=jobdirs.remove)
        try:
            # A scratch dir takes its workspace's mtime (a copy keeps it), and a job may set it
            # to anything: its age says nothing while the job runs, so running jobs are skipped.
            # The dirs are listed BEFORE the running jobs are read: a job claimed in between
            # then made its dir after the listing, so the sweep never sees it.
            scratch = old_files.listing(self.settings.work_dir)
            running = self.store.running_ids()
            scratch_cutoff = min(cutoff, now - self.settings.job_timeout - 3600)
            removed += old_files.remove_older(
                scratch, scratch_cutoff, skip=lambda name: jobdirs.job_id_of(name) in running,
                remove_dir=jobdirs.remove)
            pruned = self.store.prune_indexes()
            removed += pipeline_cleanup.sweep(self.store.r, self.settings.data_dir)
        except RedisError as exc:
            events.warning(COMPONENT, f"scratch sweep and index pruning skipped, redis "
                                      f"unreachable ({exc})")
            pruned = 0
        if removed or pruned:
            events.info(COMPONENT, f"housekeeping removed {removed} old files, "
                                   f"{pruned} expired index entries")

    # --- shutdown --------------------------------------------------------------------------

    def _drain(self) -> int:
        events.info(COMPONENT, f"stopping: running jobs may finish for up to "
                               f"{self.settings.drain_timeout} s")
        last = [pid for pid, aux in self.aux.items() if aux.stops_last]
        proctree.signal_all([pid for pid in [*self.executors, *self.aux] if pid not in last],
                            signal.SIGTERM)
        deadline = time.monotonic() + self.settings.drain_timeout + DRAIN_KILL_GRACE + 10
        self._await_exits(last, deadline)
        # Jobs the drain ended have queued their webhooks: the deliverer sends them, then stops.
        grace = max((self.aux[pid].stop_grace for pid in last if pid in self.aux), default=0.0)
        proctree.signal_all(last, signal.SIGTERM)
        self._await_exits([], time.monotonic() + grace + 5)
        if self.executors or self.aux:
            events.error(COMPONENT, "executors did not stop in time; killing them")
            proctree.signal_all([*self.executors, *self.aux], signal.SIGKILL)
        proctree.signal_all(proctree.descendants(os.getpid()), signal.SIGKILL)
        while proctree.reap_children()[1]:
            self.wakeup.wait(0.05)
        events.info(COMPONENT, "stopped")
        return 0

    def _await_exits(self, keep: list[int], deadline: float) -> None:
        """Reap children until only `keep` are left or the deadline passes."""
        while (set(self.executors) | set(self.aux)) - set(keep) and time.monotonic() < deadline:
            self.wakeup.wait(0.5)
            reaped, _ = proctree.reap_children()
            for pid in reaped:
                self.executors.pop(pid, None)
                self.aux.pop(pid, None)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def supervisor_main(settings: Settings, make_store: Callable[[], JobStore],
                    notifier: Notifier | None = None) -> int:
    return Supervisor(settings, make_store, notifier).run()
