"""In a live headless Chromium: coloured logs render coloured, hostile logs render as text (on
the page and through the live tail), and the charts draw the jobs that ran. Screenshots of each
are kept for a person to look at."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.devtools import LivePage
from tests.helpers import Server, wait_until
from tests.pages.test_browser import CHROMIUM, artifacts_dir, authed_url, chromium_command, log_polls

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed "
                                "(Debian: apt-get install -y chromium)")

LOADED = "location.protocol !== 'about:' && document.readyState === 'complete'"
HOSTILE = (r"printf '<img src=x onerror=alert(1)><script>document.title=1</script>"
           r"\033]0;title\007\033[2J\033[?25l</pre><b id=injected>x</b>\n'")


def color(page: LivePage, selector: str, prop: str = "color") -> str:
    return str(page.evaluate(f"getComputedStyle(document.querySelector({selector!r})).{prop}"))


def open_page(server: Server, path: str, tmp_path: Path, name: str) -> LivePage:
    page = LivePage(chromium_command(tmp_path / f"profile-{name}"), authed_url(server, path))
    page.wait_for(LOADED, 30, f"{path} to load")
    return page


def test_a_coloured_log_renders_coloured_and_a_hostile_one_as_text(server: Server,
                                                                  tmp_path: Path) -> None:
    job = server.submit(
        r"printf '\033[32mPASSED\033[0m \033[1;38;5;208mwarn\033[0m \033[38;2;255;0;0mred\033[0m\n';"
        r"printf 'progress 10%%\rprogress 50%%\rprogress 100%%\n';" + HOSTILE, name="colours")
    assert server.wait_final(job["id"])["status"] == "success"
    with open_page(server, f"/jobs/{job['id']}", tmp_path, "colours") as page:
        assert color(page, "#log .f2") == "rgb(63, 185, 80)"
        assert page.evaluate("document.querySelector('#log .f2').textContent") == "PASSED"
        assert color(page, "#log .f208") == "rgb(255, 135, 0)"
        assert color(page, "#log .f208", "fontWeight") == "700"
        assert color(page, "#log .f196") == "rgb(255, 0, 0)"  # truecolour, nearest of the palette
        text = page.evaluate("document.getElementById('log').textContent")
        assert "progress 100%\n" in text and "10%" not in text and "\x1b" not in text
        assert "<img src=x onerror=alert(1)><script>" in text and "</pre><b id=injected>" in text
        assert page.evaluate("document.querySelector('#log img, #log script, #injected')") is None
        assert page.evaluate("document.title") == f"Job {job['id']}"
        page.screenshot(artifacts_dir() / "job-colours.png")


def test_the_live_tail_joins_an_sgr_split_across_chunks_and_keeps_hostile_text_text(
        server: Server, tmp_path: Path) -> None:
    # The page is rendered with magenta still on (no reset yet): the tail must carry it on.
    job = server.submit(
        "printf '\\033[35mstart\\n'; while [ ! -e go1 ]; do sleep 0.05; done;"
        "printf 'still magenta\\033[0m \\033[3';"
        "while [ ! -e go2 ]; do sleep 0.05; done;"
        "printf '2mgreen\\033[0m \\033[1;38;2;255;0;0mred\\033[0m\\n';" + HOSTILE
        + "; sleep 30", name="live colours")
    server.wait_status(job["id"], ("running",))
    wait_until(lambda: b"start" in server.log(job["id"]), 10, "the first log line")
    with open_page(server, f"/jobs/{job['id']}", tmp_path, "live") as page:
        polls = log_polls(server)
        wait_until(lambda: log_polls(server) > polls, 20, "the page to poll its log")
        (server.work_dir / job["id"] / "go1").touch()
        wait_until(lambda: server.log(job["id"]).endswith(b"\x1b[3"), 10, "half an SGR")
        polls = log_polls(server)
        # The second poll from now began after the half was written: the page has read it.
        wait_until(lambda: log_polls(server) >= polls + 2, 20, "two more polls")
        (server.work_dir / job["id"] / "go2").touch()
        page.wait_for("(document.querySelector('#log .f2') || {}).textContent === 'green'", 20,
                      "the green word through the live tail")
        assert color(page, "#log .f2") == "rgb(63, 185, 80)"
        magenta = page.evaluate("[...document.querySelectorAll('#log .f5')].map(e => e.textContent)")
        assert magenta == ["start", "still magenta"]
        assert color(page, "#log .f196.b") == "rgb(255, 0, 0)"  # truecolour, in the browser too
        page.wait_for("document.getElementById('log').textContent.indexOf('</pre>') >= 0", 20,
                      "the hostile line through the live tail")
        text = page.evaluate("document.getElementById('log').textContent")
        assert "start\nstill magenta green red\n<img src=x onerror=alert(1)><script>" in text
        assert "\x1b" not in text
        assert page.evaluate("document.querySelector('#log img, #log script, #injected')") is None
        page.screenshot(artifacts_dir() / "job-live.png")
    server.request("POST", f"/api/jobs/{job['id']}/cancel")
    server.wait_final(job["id"])


def test_the_charts_draw_the_jobs_that_ran(server: Server, tmp_path: Path) -> None:
    done = [server.submit("sleep 0.2", name=f"ok {i}") for i in range(3)]
    done.append(server.submit("sleep 0.1; exit 1", name="broken"))
    for job in done:
        server.wait_final(job["id"])
    # Each supervisor adds its executors' time every 10 s; the busy share needs one.
    wait_until(lambda: b"not reported yet" not in server.request("GET", "/charts").body,
               30, "the executors' time to reach the charts")
    with open_page(server, "/charts", tmp_path, "charts") as page:
        assert page.evaluate("document.querySelectorAll('svg.chart').length") == 5
        assert page.evaluate("document.querySelectorAll('rect.c-success').length") >= 2
        assert color(page, "rect.c-failed", "fill") == "rgb(207, 34, 46)"
        assert page.evaluate("document.querySelectorAll('circle.dot50').length") >= 2
        share = page.evaluate("document.querySelector('rect.busy').getAttribute('width')")
        assert float(share) > 0
        page.screenshot(artifacts_dir() / "charts.png")
