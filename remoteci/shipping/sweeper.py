"""Retention of the API's own data dir on a host that runs `api` without a supervisor.

With workers on other hosts, logs, uploads and artifacts live only in the API's data dir, and
no worker's supervisor can reach it to sweep it: so `api` sweeps it itself, as often and by the
same rule (older than REMOTE_CI_RETENTION_DAYS) as a supervisor sweeps its host.
"""

from __future__ import annotations

import os
import shutil
import threading
import time

from remoteci import events
from remoteci.config import Settings

COMPONENT = "api"
SWEEP_EVERY = 600.0  # seconds, as the supervisor's sweep


def sweep_once(settings: Settings, now: float) -> int:
    """Remove entries of the logs, uploads and artifacts dirs older than the retention."""
    cutoff = now - settings.retention_seconds
    removed = 0
    for directory in (settings.logs_dir, settings.uploads_dir, settings.artifacts_dir):
        try:
            entries = list(os.scandir(directory))
        except FileNotFoundError:
            continue
        for entry in entries:
            try:
                if entry.stat(follow_symlinks=False).st_mtime >= cutoff:
                    continue
                if entry.is_dir(follow_symlinks=False):  # a job's artifacts: ours alone
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    os.unlink(entry.path)
                removed += 1
            except FileNotFoundError:
                continue
    return removed


def start(settings: Settings, stopping: threading.Event) -> threading.Thread:
    def loop() -> None:
        while not stopping.is_set():
            try:
                removed = sweep_once(settings, time.time())
            except OSError as exc:
                events.warning(COMPONENT, f"sweeping the data dir failed: {exc}")
            else:
                if removed:
                    events.info(COMPONENT, f"housekeeping removed {removed} old files")
            stopping.wait(SWEEP_EVERY)

    thread = threading.Thread(target=loop, name="data-sweep", daemon=True)
    thread.start()
    return thread
