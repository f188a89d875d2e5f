"""The systemd units: systemd's own verifier, and the settings the drain and sandbox depend on."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from remoteci.config import Settings
from remoteci.executor import DRAIN_KILL_GRACE
from remoteci.system.isolation import NEEDED_CAPABILITIES
from tests.helpers import ROOT

UNITS = ROOT / "systemd"
NAMES = ("remote-ci-api.service", "remote-ci-worker.service")


def unit(name: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string((UNITS / name).read_text())
    return parser


def env_example() -> dict[str, str]:
    lines = (UNITS / "remote-ci.env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed (Debian: apt-get install systemd)")
def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify insists that ExecStart's binary exists: point it at this test's Python.
    for name in NAMES:
        text = (UNITS / name).read_text().replace("/opt/remote-ci/venv/bin/python", sys.executable)
        (tmp_path / name).write_text(text)
    result = subprocess.run(["systemd-analyze", "verify", *(str(tmp_path / n) for n in NAMES)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


@pytest.mark.parametrize("name", NAMES)
def test_units_are_notify_and_hardened(name: str) -> None:
    service = unit(name)["Service"]
    assert service["Type"] == "notify" and service["NotifyAccess"] == "main"
    assert int(service["WatchdogSec"]) >= 30
    assert service["User"] == "remote-ci"
    for key, expected in (("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"),
                          ("PrivateTmp", "yes"), ("ProtectHome", "yes")):
        assert service[key] == expected, key
    assert service["EnvironmentFile"] == "/etc/remote-ci/remote-ci.env"
    command = "api" if "api" in name else "worker"
    assert service["ExecStart"].split()[-1] == command


def test_worker_may_write_every_directory_of_the_env_file() -> None:
    writable = unit("remote-ci-worker.service")["Service"]["ReadWritePaths"].split()
    env = env_example()
    for variable in ("REMOTE_CI_DATA_DIR", "REMOTE_CI_WORKSPACE_DIR", "REMOTE_CI_WORK_DIR"):
        assert any(env[variable] == d or env[variable].startswith(d + "/") for d in writable), variable


def test_worker_stop_timeout_covers_the_drain() -> None:
    service = unit("remote-ci-worker.service")["Service"]
    # SIGTERM to the supervisor only, so jobs can drain; SIGKILL to all when time is up.
    assert service["KillMode"] == "mixed"
    drain = int(env_example()["REMOTE_CI_DRAIN_TIMEOUT"])
    assert drain == Settings(tokens=("x",)).drain_timeout
    supervisor_waits = drain + DRAIN_KILL_GRACE + 10  # see Supervisor._drain
    assert int(service["TimeoutStopSec"]) > supervisor_waits


def test_env_example_has_a_placeholder_token_not_a_real_one() -> None:
    env = env_example()
    assert env["REMOTE_CI_TOKEN"].startswith("change-me")
    assert env["REMOTE_CI_REDIS_URL"].startswith("unix://")


def test_worker_keeps_exactly_the_capabilities_that_start_stop_and_clean_up_other_uids() -> None:
    service = unit("remote-ci-worker.service")["Service"]
    needed = set(NEEDED_CAPABILITIES)
    assert set(service["AmbientCapabilities"].split()) == needed
    assert set(service["CapabilityBoundingSet"].split()) == needed


def test_api_sees_no_other_process() -> None:
    service = unit("remote-ci-api.service")["Service"]
    assert (service["ProtectProc"], service["ProcSubset"]) == ("invisible", "pid")
    assert service["CapabilityBoundingSet"] == ""
