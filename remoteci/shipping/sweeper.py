"""Retention of the API's own data dir on a host that runs `api` without a supervisor.

With workers on other hosts, logs, uploads and artifacts live only in the API's data dir, and
no worker's supervisor can reach it to sweep it: so `api` sweeps it itself, as often and by the
same rule (older than REMOTE_CI_RETENTION_DAYS) as a supervisor sweeps its host.
"""

from __future__ import annotations

import threading
import time

from remoteci import events
from remoteci.config import Settings
from remoteci.system import old_files

COMPONENT = "api"
SWEEP_EVERY = 600.0  # seconds, as the supervisor's sweep


def start(settings: Settings, stopping: threading.Event) -> threading.Thread:
    def loop() -> None:
        while not stopping.is_set():
            try:
                removed = old_files.sweep_data_dirs(settings, time.time())
            except OSError as exc:
                events.warning(COMPONENT, f"sweeping the data dir failed: {exc}")
            else:
                if removed:
                    events.info(COMPONENT, f"housekeeping removed {removed} old files")
            stopping.wait(SWEEP_EVERY)

    thread = threading.Thread(target=loop, name="data-sweep", daemon=True)
    thread.start()
    return thread
