"""A real headless Chromium renders the pages (Basic auth via the URL) and keeps screenshots."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import ROOT, TOKEN, Server, wait_until

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed "
                                "(Debian: apt-get install -y chromium)")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,900"]


def artifacts_dir() -> Path:
    path = Path(os.environ.get("REMOTE_CI_ARTIFACTS") or ROOT / "test-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


def chromium_command(profile: Path, *args: str) -> list[str]:
    assert CHROMIUM is not None
    return [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args]


def chromium(profile: Path, *args: str) -> str:
    result = subprocess.run(chromium_command(profile, *args), capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def authed_url(server: Server, path: str) -> str:
    return f"http://ci:{TOKEN}@127.0.0.1:{server.port}{path}"


def render(server: Server, path: str, shot_name: str, tmp_path: Path) -> str:
    """Return the DOM after scripts ran, and save a screenshot of the same page."""
    dom = chromium(tmp_path / "profile-dom", "--dump-dom", authed_url(server, path))
    shot = artifacts_dir() / shot_name
    shot.unlink(missing_ok=True)
    chromium(tmp_path / "profile-shot", f"--screenshot={shot}", authed_url(server, path))
    assert shot.stat().st_size > 10_000, "the screenshot looks empty"
    print(f"screenshot: {shot}")
    return dom


def test_chromium_renders_the_overview_and_a_job_page(server: Server, tmp_path: Path) -> None:
    done = server.submit("echo 'building <everything>'; echo '\\033[1mdone\\033[0m'",
                         name="unit tests <fast>")
    server.submit("exit 1", name="lint")
    server.wait_final(done["id"])
    running = server.submit("echo step 1; sleep 30", name="integration")
    server.wait_status(running["id"], ("running",))
    wait_until(lambda: b"step 1" in server.log(running["id"]), 10, "the first log line")
    blocker = server.submit("sleep 30", name="keeps the second executor busy")
    server.wait_status(blocker["id"], ("running",))
    queued = server.submit("true", name="waiting in line")

    index = render(server, "/", "index.png", tmp_path)
    assert "Remote CI" in index and f'href="/jobs/{done["id"]}"' in index
    assert "unit tests &lt;fast&gt;" in index  # text in the DOM, not an element
    queue = index.split("<h2>Queue</h2>", 1)[1].split("<h2>Jobs</h2>")[0]
    assert f'href="/jobs/{queued["id"]}"' in queue

    job = render(server, f"/jobs/{running['id']}", "job-running.png", tmp_path)
    assert "Cancel job" in job and "step 1" in job and 'data-status="running"' in job

    finished = render(server, f"/jobs/{done['id']}", "job-finished.png", tmp_path)
    assert "building &lt;everything&gt;" in finished and "[remote-ci] success" in finished

    for leftover in (running, blocker, queued):
        server.request("POST", f"/api/jobs/{leftover['id']}/cancel")
        server.wait_final(leftover["id"])


def log_polls(server: Server) -> int:
    metrics = server.request("GET", "/metrics").body.decode()
    found = re.search(r'route="/jobs/\{id\}/log",method="GET",code="200"\} (\d+)', metrics)
    return int(found.group(1)) if found else 0


def test_chromium_tails_a_running_log_live(server: Server, tmp_path: Path) -> None:
    # The job prints its second line only when told, after the page's script started polling,
    # so "step 2" can only reach the DOM through the live tail (the job is still running).
    job = server.submit("echo step 1; while [ ! -e go ]; do sleep 0.05; done; echo step 2; sleep 30")
    server.wait_status(job["id"], ("running",))
    wait_until(lambda: b"step 1" in server.log(job["id"]), 10, "the first log line")
    polls_before = log_polls(server)
    # Virtual time runs the page's 1 s poll timer at once; each poll is still a real request.
    browser = subprocess.Popen(
        chromium_command(tmp_path / "profile-tail", "--virtual-time-budget=300000", "--dump-dom",
                         authed_url(server, f"/jobs/{job['id']}")),
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        wait_until(lambda: log_polls(server) > polls_before, 20, "the page to poll its log")
        (server.work_dir / job["id"] / "go").touch()
        dom, _ = browser.communicate(timeout=60)
    finally:
        if browser.poll() is None:
            browser.kill()
            browser.wait()
    log = dom.split('<pre id="log"', 1)[1].split(">", 1)[1].split("</pre>")[0]
    assert "step 1\nstep 2" in re.sub(r"<[^>]*>", "", log)
    server.request("POST", f"/api/jobs/{job['id']}/cancel")
    server.wait_final(job["id"])
