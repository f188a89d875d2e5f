"""The housekeeping sweep never takes a running job's scratch dir, even one claimed mid-sweep;
and a retention shorter than a job may run is refused at start."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from remoteci.config import ConfigError, Settings, load_settings
from remoteci.queue import JobStore
from remoteci.store.redis_conn import Client as Redis
from remoteci.worker.supervisor import Supervisor
from tests.core.test_queue import submit


def test_a_job_claimed_while_the_sweep_runs_keeps_its_scratch_dir(
        store_client: Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(tokens=("t" * 8,), data_dir=tmp_path / "data", work_dir=tmp_path / "work",
                        job_timeout=60)
    settings.work_dir.mkdir()
    store = JobStore(store_client, settings.retention_seconds)
    supervisor = Supervisor(settings, lambda: store)
    submit(store, "claimed-now")
    long_ago = time.time() - 30 * 86400
    real_running_ids = store.running_ids

    def claim_right_after_the_read() -> frozenset[str]:
        running = real_running_ids()
        # An executor on another host claims the job now and copies an old workspace: its
        # scratch dir takes the workspace's old mtime.
        taken = store.take("other-host:1", timeout=1)
        assert taken is not None and taken.claimed
        scratch = settings.work_dir / "claimed-now"
        scratch.mkdir()
        os.utime(scratch, (long_ago, long_ago))
        return running

    monkeypatch.setattr(store, "running_ids", claim_right_after_the_read)
    supervisor._sweep()
    assert (settings.work_dir / "claimed-now").is_dir()


@pytest.mark.parametrize(("days", "timeout"), [("1", str(86400)), ("1", str(2 * 86400))])
def test_a_retention_shorter_than_a_job_may_run_is_refused(days: str, timeout: str) -> None:
    with pytest.raises(ConfigError, match=r"REMOTE_CI_RETENTION_DAYS=1 .* REMOTE_CI_JOB_TIMEOUT"):
        load_settings({"REMOTE_CI_TOKEN": "t" * 8, "REMOTE_CI_RETENTION_DAYS": days,
                       "REMOTE_CI_JOB_TIMEOUT": timeout})


def test_a_retention_longer_than_a_job_may_run_is_fine() -> None:
    settings = load_settings({"REMOTE_CI_TOKEN": "t" * 8, "REMOTE_CI_RETENTION_DAYS": "1",
                              "REMOTE_CI_JOB_TIMEOUT": "3600"})
    assert settings.retention_days == 1
