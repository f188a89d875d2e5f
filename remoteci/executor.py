"""One executor process: take a job, prepare its code, run it, stop its whole tree, record the end."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis.exceptions import RedisError

from remoteci import events, jobs
from remoteci.artifacts.collector import Limits, collect
from remoteci.auth.identity import ADMIN_OWNER
from remoteci.config import Settings
from remoteci.errors import SourceError
from remoteci.pipelines.cleanup import release_if_done
from remoteci.pipelines.inputs import place_inputs
from remoteci.queue import JobStore, Taken
from remoteci.sources.prepare import discard_source, prepare_source
from remoteci.store import histograms
from remoteci.system import isolation, proctree
from remoteci.system.isolation import JobUser
from remoteci.system.wakeup import SignalWakeup
from remoteci.worker import jobdirs

COMPONENT = "executor"
TAKE_TIMEOUT = 1.0  # seconds a blocking pop waits, so a stop request is seen within a second
CANCEL_POLL = 0.25  # seconds between checks for a cancel request while a job runs
HEARTBEAT_EVERY = 5.0
LEFTOVER_GRACE = 2.0  # seconds leftovers of a finished job get between SIGTERM and SIGKILL
DRAIN_KILL_GRACE = 5.0
REMEMBER_ENDED = 16  # job ends kept to resend, should a failover lose one
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class Outcome:
    status: str
    exit_code: int | None = None
    error: str | None = None
    duration: float | None = None


def job_environment(job_id: str, requested: dict[str, str], home: Path) -> dict[str, str]:
    """Built, not inherited: the server's own variables (the token above all) never reach a job.

    HOME is the job's own: tool caches and `~/.ssh/config` lines it writes die with it and never
    reach the server's home or a later job's git clone.
    """
    env = {
        "PATH": os.environ.get("PATH") or DEFAULT_PATH,
        "HOME": str(home),
        "LANG": os.environ.get("LANG") or "C.UTF-8",
        "CI": "true",
    }
    env.update(requested)
    env["REMOTE_CI_JOB_ID"] = job_id
    return env


class Executor:
    """Runs jobs one at a time until told to stop; owns every process its jobs start."""

    def __init__(self, settings: Settings, store: JobStore, executor_id: str):
        self.settings = settings
        self.store = store
        self.id = executor_id
        self.stopping = False
        self.drain_deadline = float("inf")
        self.current_job: str | None = None
        self._beating = True
        self._heartbeat_lock = threading.Lock()
        self.wakeup = SignalWakeup()
        self.isolated = isolation.can_switch_users()
        self.setpriv = shutil.which("setpriv") or "setpriv"
        self._uids: dict[str, int] = {}  # owner -> uid; an owner's uid never changes
        # The ends of our last jobs: a Redis failover may lose the write of one, and the job
        # then comes back to us as claimed and running (see JobStore.left_in_flight).
        self._ended: dict[str, tuple[str, dict[str, str], dict[str, float]]] = {}

    # --- lifecycle -------------------------------------------------------------------------

    def run_forever(self) -> None:
        proctree.become_subreaper()
        self._install_signals()
        self._register()
        threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True).start()
        events.info(COMPONENT, f"executor {self.id} started")
        unsure = False  # a take failed: its job may be in our in-flight list, claimed
        while not self.stopping:
            try:
                taken = (self.store.left_in_flight(self.id) if unsure
                         else self.store.take(self.id, TAKE_TIMEOUT))
                unsure = False
            except RedisError as exc:
                self._redis_trouble(exc)
                unsure = True
                continue
            if taken is not None:
                self._handle(taken)
        with self._heartbeat_lock:
            self._beating = False
            try:
                self.store.unregister_executor(self.id)
            except RedisError:
                pass  # the heartbeat expires by itself
        events.info(COMPONENT, f"executor {self.id} stopped")

    def _install_signals(self) -> None:
        self.wakeup.install()
        signal.signal(signal.SIGCHLD, lambda *_: None)  # only to wake the select below
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    def _on_stop(self, *_: Any) -> None:
        if not self.stopping:
            self.stopping = True
            self.drain_deadline = time.monotonic() + self.settings.drain_timeout

    def _register(self) -> None:
        delay = 0.5
        while not self.stopping:
            try:
                self.store.heartbeat(self.id, self._info())
                return
            except RedisError as exc:
                events.warning(COMPONENT, f"cannot register with redis ({exc}); retrying")
                time.sleep(delay)
                delay = min(delay * 2, 2.0)  # a returning Redis is used within 2 s

    def _info(self) -> dict[str, Any]:
        return {"id": self.id, "host": self.settings.node_name, "pid": os.getpid(),
                "job": self.current_job,
                "isolation": isolation.USER if self.isolated else isolation.NONE}

    def _heartbeat_loop(self) -> None:
        # A thread, so a long copy or extraction never looks like a dead executor.
        healthy = True
        while True:
            time.sleep(HEARTBEAT_EVERY)
            try:
                with self._heartbeat_lock:
                    if not self._beating:
                        return
                    self.store.heartbeat(self.id, self._info())
                if not healthy:
                    events.info(COMPONENT, "redis is reachable again")
                healthy = True
            except RedisError as exc:
                if healthy:
                    events.error(COMPONENT, f"heartbeat failed, redis unreachable: {exc}")
                healthy = False

    def _redis_trouble(self, exc: Exception) -> None:
        del exc  # not logged: the heartbeat thread reports lost/back once per outage
        self.wakeup.wait(1.0)

    # --- one job ---------------------------------------------------------------------------

    def _handle(self, taken: Taken) -> None:
        payload_json = taken.payload
        try:
            payload = json.loads(payload_json)
            job_id = payload["id"]
        except (ValueError, KeyError, TypeError):
            payload = None
        if payload is None or taken.status == "malformed":
            events.error(COMPONENT, f"dropping a malformed queue entry: {payload_json[:200]!r}")
            self._call_redis(lambda: self.store.drop_inflight(self.id, payload_json))
            return
        if not taken.claimed:
            discard_source(payload)
            events.info(COMPONENT, f"job {job_id} was {taken.status} before it started; skipped")
            return
        if job_id in self._ended:  # our end of it was lost with a Redis primary: resend it
            events.warning(COMPONENT, f"job {job_id}: its end was lost in a Redis failover; "
                                      "recording it again, not running it again")
            self._call_redis(lambda: self.store.finish(self.id, job_id, payload_json,
                                                       *self._ended[job_id]))
            return
        started_at = taken.started_at
        self.current_job = job_id
        events.info(COMPONENT, f"job {job_id} started mode={payload['mode']}")
        fields: dict[str, str] = {}
        try:
            outcome = self._run(payload, fields)
        except Exception as exc:  # a bug or a broken host: record it, keep serving
            events.error(COMPONENT, f"job {job_id}: internal error: {exc!r}")
            self._stop_leftovers(pgid=0)
            outcome = Outcome(jobs.ERROR, error=f"the server failed while running the job: {exc}")
        finally:
            self.current_job = None
        fields.update({"finished_at": jobs.iso_now()})
        if outcome.exit_code is not None:
            fields["exit_code"] = str(outcome.exit_code)
        if outcome.duration is not None:
            fields["duration"] = f"{outcome.duration:.3f}"
        if outcome.error:
            fields["error"] = outcome.error
        # The payload carries created_at, so the queue wait costs no extra round trip.
        observed = histograms.finish_observations(payload.get("created_at"), started_at,
                                                  outcome.duration)
        self._ended[job_id] = (outcome.status, fields, observed)
        while len(self._ended) > REMEMBER_ENDED:
            del self._ended[next(iter(self._ended))]  # the oldest
        recorded = self._call_redis(lambda: self.store.finish(self.id, job_id, payload_json,
                                                              outcome.status, fields, observed))
        if payload.get("pipeline"):  # its last job gone, a pipeline's snapshot goes too
            self._call_redis(lambda: release_if_done(self.store.r, self.settings.data_dir,
                                                     payload["pipeline"]))
        owner = payload.get("owner")
        if owner and (payload["mode"] == "upload" or "artifact_bytes" in fields):
            # Its owner's stored bytes: the upload is gone now, the artifacts stay.
            kept = int(fields.get("artifact_bytes", "0"))
            self._call_redis(lambda: self.store.settle_stored(owner, job_id, kept))
        # The job's dirs go after the final status is written: a waiting client need not
        # wait for the removal too (a crash in between leaves them to the sweep).
        jobdirs.remove(jobdirs.code_dir(self.settings.work_dir, job_id))
        jobdirs.remove(jobdirs.home_dir(self.settings.work_dir, job_id))
        duration = f"{outcome.duration:.3f}s" if outcome.duration is not None else "-"
        events.info(COMPONENT, f"job {job_id} finished status={outcome.status} "
                               f"exit_code={outcome.exit_code} duration={duration}"
                               + _RECORD_NOTES[recorded])

    def _call_redis(self, action: Any) -> Any:
        """Retry a status write through a Redis outage: it is delayed, never dropped.

        Only a stop whose drain time is over ends the retries; the job then stays in our
        in-flight list, and the next supervisor to look records it as lost.
        """
        delay = 0.2
        while True:
            try:
                return action()
            except RedisError as exc:
                if self.stopping and time.monotonic() > self.drain_deadline + DRAIN_KILL_GRACE:
                    events.error(COMPONENT, f"giving up on a redis write while stopping: {exc}")
                    return None
                events.warning(COMPONENT, f"redis write failed ({exc}); retrying in {delay:.1f} s")
                time.sleep(delay)
                delay = min(delay * 2, 2.0)  # a returning Redis is used within 2 s

    def _run(self, payload: dict[str, Any], fields: dict[str, str]) -> Outcome:
        job_id = payload["id"]
        scratch = jobdirs.code_dir(self.settings.work_dir, job_id)
        home = jobdirs.home_dir(self.settings.work_dir, job_id)
        jobdirs.make(scratch)
        jobdirs.make(home)
        log_path = self.settings.logs_dir / f"{job_id}.log"
        log_fd = os.open(log_path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        if payload.get("git_credential"):  # taken once: from now on only git's environment has it
            secret = self._call_redis(lambda: self.store.take_git_credential(job_id))
            payload = {**payload, "git_credential": secret}
        try:
            try:
                user = self._job_user(payload)
                extra = prepare_source(payload, scratch, self.settings, log_fd)
                if payload.get("inputs"):  # a pipeline job: what its earlier stages kept
                    placed = place_inputs(payload["inputs"], self.settings.artifacts_dir, scratch)
                    _log_line(log_fd, f"{placed} artifact files of earlier stages placed")
            except SourceError as exc:
                _log_line(log_fd, f"error: {exc}")
                return Outcome(jobs.ERROR, error=str(exc))
            if extra:
                fields.update(extra)
                self._call_redis(lambda: self.store.set_fields(job_id, extra))
            if user is not None:
                jobdirs.give(scratch, user)
                jobdirs.give(home, user)
            outcome = self._execute(payload, scratch, home, log_fd, user)
            if user is not None:  # its processes are gone: nothing of it may change the tree now
                jobdirs.take_back(scratch)
            if payload.get("artifacts"):  # before the scratch dir goes, whatever the outcome
                kept = collect(scratch, payload["artifacts"], self.settings.artifacts_dir / job_id,
                               Limits(self.settings.max_artifact_mb * 1024 * 1024))
                _log_line(log_fd, kept.summary())
                fields["artifacts"] = str(len(kept.manifest.files))
                fields["artifact_bytes"] = str(sum(f.size for f in kept.manifest.files))
            _log_line(log_fd, _summary(outcome))
            return outcome
        finally:
            os.close(log_fd)
            discard_source(payload)

    def _job_user(self, payload: dict[str, Any]) -> JobUser | None:
        """Who the job runs as: None (the server's own user) only without isolation."""
        if not self.isolated:
            return None
        if self.settings.job_user is not None:
            return self.settings.job_user
        owner = payload.get("owner") or ADMIN_OWNER  # jobs queued before owners were carried
        if owner not in self._uids:
            low, high = self.settings.job_uid_range
            uid = self._call_redis(lambda: self.store.job_uid(owner, low, high))
            if uid is None:
                raise SourceError(f"every uid of REMOTE_CI_JOB_UID_RANGE={low}-{high} belongs to "
                                  "another token owner; the operator must widen the range")
            self._uids[owner] = uid
        return JobUser(self._uids[owner], self._uids[owner])

    def _execute(self, payload: dict[str, Any], scratch: Path, home: Path, log_fd: int,
                 user: JobUser | None) -> Outcome:
        job_id = payload["id"]
        argv = [self.settings.shell, "-c", payload["script"]]
        if user is not None:
            argv = isolation.drop_command(user, argv, setpriv=self.setpriv,
                                          as_root=os.geteuid() == 0)
        started = time.monotonic()
        proc = subprocess.Popen(
            argv, cwd=scratch, env=job_environment(job_id, payload.get("env") or {}, home),
            stdin=subprocess.DEVNULL, stdout=log_fd, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True,
        )
        watch = JobWatch(self, payload, proc.pid, log_fd, started)
        wait_status, reason = watch.wait()
        proc.returncode = proctree.exit_code(wait_status)  # reaped by us, not by Popen
        duration = time.monotonic() - started
        self._stop_leftovers(proc.pid)
        code = proc.returncode
        if reason == "timeout":
            soft = self.settings.soft_limit(payload["timeout"])
            return Outcome(jobs.TIMEOUT, code, f"time limit reached: SIGTERM at {soft:g} s, "
                           f"SIGKILL at {payload['timeout']} s", duration)
        if reason == "cancel":
            return Outcome(jobs.CANCELLED, code, "cancelled through the API", duration)
        if reason == "drain":
            return Outcome(jobs.ERROR, code, "server shutting down: killed after "
                           f"REMOTE_CI_DRAIN_TIMEOUT={self.settings.drain_timeout}s", duration)
        if reason == "log":
            return Outcome(jobs.FAILED, code, "killed: its log grew beyond "
                           f"REMOTE_CI_MAX_LOG_MB={self.settings.max_log_mb}", duration)
        return Outcome(jobs.SUCCESS if code == 0 else jobs.FAILED, code, None, duration)

    def kill_tree(self, pgid: int, sig: int) -> None:
        if pgid > 0:
            proctree.signal_group(pgid, sig)
        proctree.signal_all(proctree.descendants(os.getpid()), sig)

    def _stop_leftovers(self, pgid: int) -> None:
        """Whatever the job left running (background jobs, daemons) is stopped with it."""
        _, left = proctree.reap_children()
        if not left:
            return  # no child at all means no descendant at all: we are their subreaper
        self.kill_tree(pgid, signal.SIGTERM)
        deadline = time.monotonic() + LEFTOVER_GRACE
        while left and time.monotonic() < deadline:
            self.wakeup.wait(0.05)
            _, left = proctree.reap_children()
        while left:
            self.kill_tree(pgid, signal.SIGKILL)
            self.wakeup.wait(0.05)
            _, left = proctree.reap_children()


class JobWatch:
    """Waits for a job's shell while enforcing its limits, a cancel request and a drain."""

    def __init__(self, executor: Executor, payload: dict[str, Any], pid: int, log_fd: int,
                 started: float):
        self.ex = executor
        self.job_id = payload["id"]
        self.pid = pid
        self.log_fd = log_fd
        settings = executor.settings
        self.soft_at = started + settings.soft_limit(payload["timeout"])
        self.hard_at = started + payload["timeout"]
        self.max_log = settings.max_log_mb * 1024 * 1024
        self.reason: str | None = None
        self.kill_at = float("inf")
        self.next_poll = started + CANCEL_POLL

    def wait(self) -> tuple[int, str | None]:
        """Return the shell's wait status and why we stopped it (None: it ended by itself)."""
        while True:
            reaped, _ = proctree.reap_children()
            if self.pid in reaped:
                return reaped[self.pid], self.reason
            now = time.monotonic()
            if self.reason is None:
                self._check_limits(now)
            if now >= self.kill_at:
                self.ex.kill_tree(self.pid, signal.SIGKILL)
                self.kill_at = now + 1.0  # again, for anything forked meanwhile
            next_event = min(self.soft_at, self.kill_at, self.next_poll, self.ex.drain_deadline)
            self.ex.wakeup.wait(max(0.0, min(next_event - now, CANCEL_POLL)))

    def _check_limits(self, now: float) -> None:
        if now >= self.soft_at:
            self._stop("timeout", self.hard_at)
        elif now >= self.ex.drain_deadline:
            self._stop("drain", now + DRAIN_KILL_GRACE)
        elif now >= self.next_poll:
            self.next_poll = now + CANCEL_POLL
            if os.fstat(self.log_fd).st_size > self.max_log:
                self._stop("log", now)
            elif self._cancel_requested():
                self._stop("cancel", now + self.ex.settings.cancel_grace)

    def _cancel_requested(self) -> bool:
        try:
            return self.ex.store.cancel_requested(self.job_id)
        except RedisError:
            return False  # an outage must not kill the job; the next poll asks again

    def _stop(self, reason: str, kill_at: float) -> None:
        self.reason = reason
        self.kill_at = kill_at
        self.ex.kill_tree(self.pid, signal.SIGTERM)


_RECORD_NOTES = {True: "", False: " (the record was already final)",
                 None: " (not recorded: redis unreachable while stopping)"}


def _log_line(log_fd: int, text: str) -> None:
    """Append a server line to the job log, on a line of its own."""
    size = os.fstat(log_fd).st_size
    starts_line = size == 0 or os.pread(log_fd, 1, size - 1) == b"\n"
    os.write(log_fd, (b"" if starts_line else b"\n") + f"[remote-ci] {text}\n".encode())


def _summary(outcome: Outcome) -> str:
    took = f" after {outcome.duration:.2f} s" if outcome.duration is not None else ""
    if outcome.status == jobs.SUCCESS:
        return f"success{took}"
    detail = f"; {outcome.error}" if outcome.error else ""
    return f"{outcome.status}: exit code {outcome.exit_code}{took}{detail}"


def executor_main(settings: Settings, store: JobStore) -> None:
    """One executor process's body, forked and restarted by the supervisor."""
    executor_id = f"{settings.node_name}:{os.getpid()}"
    Executor(settings, store, executor_id).run_forever()
