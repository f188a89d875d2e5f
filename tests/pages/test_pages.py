"""The HTML pages: escaping, Basic auth, filters, paging over 10,000 jobs, the cancel form."""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Callable, Iterator
from html import unescape

import pytest

from remoteci.queue import JobStore
from remoteci.store.redis_conn import connect
from tests.helpers import TOKEN, Server, wait_until

BASIC = {"Authorization": "Basic " + base64.b64encode(f"ci:{TOKEN}".encode()).decode()}
HOSTILE_NAME = "<script>alert('name')</script>\"&'"
HOSTILE_LOG = "<img src=x onerror=alert(1)></pre><script>alert('log')</script>"


def page(server: Server, path: str, headers: dict[str, str] | None = None) -> str:
    resp = server.request("GET", path, headers={**BASIC, **(headers or {})}, token=None)
    assert resp.status == 200, resp.body
    assert resp.headers["content-type"].startswith("text/html")
    return resp.body.decode()


def jobs_section(html: str) -> str:
    return html.split("<h2>Jobs</h2>", 1)[1]


def listed_ids(html: str) -> list[str]:
    return re.findall(r'<tr><td><a class=id href="/jobs/([\w-]+)"', jobs_section(html))


def csrf_token(html: str) -> str:
    match = re.search(r'name=csrf value="([^"]+)"', html)
    assert match, "the job page has no cancel form"
    return unescape(match.group(1))


# --- content and escaping ------------------------------------------------------------------

def test_hostile_name_script_and_log_are_escaped(server: Server) -> None:
    job = server.submit(f"printf '%s\\n' \"{HOSTILE_LOG}\"", name=HOSTILE_NAME)
    server.wait_final(job["id"])
    for html in (page(server, "/"), page(server, f"/jobs/{job['id']}")):
        assert "<script>alert" not in html and "<img src=x" not in html
        assert "&lt;script&gt;alert(&#x27;name&#x27;)&lt;/script&gt;&quot;&amp;&#x27;" in html
    job_html = page(server, f"/jobs/{job['id']}")
    assert "&lt;img src=x onerror=alert(1)&gt;&lt;/pre&gt;&lt;script&gt;" in job_html  # the log
    assert job_html.count("</pre>") == 2  # script and log; the hostile one stays text


def test_index_shows_stats_executors_and_recent_jobs(server: Server) -> None:
    job = server.submit("true", name="index-check")
    server.wait_final(job["id"])
    html = page(server, "/")
    assert "<h2>Executors</h2>" in html and "<h2>Queue</h2>" in html
    assert html.count("<td class=id>") >= 2  # both live executors, with their host
    assert job["id"] in listed_ids(html) and "index-check" in html
    assert 'class="st st-success"' in html


def test_executor_row_shows_its_running_job(server: Server) -> None:
    job = server.submit("sleep 20", name="long-one")
    server.wait_status(job["id"], ("running",))
    executors = page(server, "/").split("<h2>Executors</h2>", 1)[1].split("<h2>Queue</h2>")[0]
    assert f'href="/jobs/{job["id"]}"' in executors and "long-one" in executors
    assert server.request("POST", f"/api/jobs/{job['id']}/cancel").status == 202
    server.wait_final(job["id"])


def test_security_headers_allow_only_the_hashed_script(server: Server) -> None:
    resp = server.request("GET", "/", headers=BASIC, token=None)
    csp = resp.headers["content-security-policy"]
    assert "default-src 'none'" in csp and re.search(r"script-src 'sha256-[A-Za-z0-9+/=]+';", csp)
    assert "'unsafe-inline'" not in csp.split("script-src")[1].split(";")[0]
    assert resp.headers["x-content-type-options"] == "nosniff"


def test_styles_are_allowed_by_hash_only_so_no_style_attribute_applies(server: Server) -> None:
    csp = server.request("GET", "/", headers=BASIC, token=None).headers["content-security-policy"]
    styles = csp.split("style-src")[1].split(";")[0].split()
    assert styles and all(re.fullmatch(r"'sha256-[A-Za-z0-9+/=]+'", s) for s in styles)
    job = server.submit("printf '\\033[31mred\\033[0m\\n'")
    server.wait_final(job["id"])
    html = page(server, f"/jobs/{job['id']}")
    assert '<span class="f1">red</span>' in html and " style=" not in html


def test_the_list_shows_relative_times_with_the_exact_one_queue_wait_and_duration(
        server: Server) -> None:
    job = server.submit("sleep 0.3", name="timed")
    server.wait_final(job["id"])
    html = jobs_section(page(server, "/"))
    assert "<th>queue wait</th><th>duration</th>" in html
    row = html.split(f'href="/jobs/{job["id"]}"', 1)[1].split("</tr>", 1)[0]
    assert re.search(r'<time datetime="[^"]+Z" title="\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC">'
                     r"(just now|\d+ s ago)</time>", row), row
    wait, duration = re.findall(r"<td>(\d+\.\d) s</td>", row)[-2:]
    assert float(wait) < 5 and 0.3 <= float(duration) < 5, row


def test_the_raw_log_link_serves_all_of_it_and_the_download_is_an_attachment(
        server: Server) -> None:
    job = server.submit("head -c 300000 /dev/zero | tr '\\0' x; echo; echo end")
    server.wait_final(job["id"])
    html = page(server, f"/jobs/{job['id']}")
    assert f'href="/jobs/{job["id"]}/log">Raw log' in html
    assert f'href="/jobs/{job["id"]}/log?download=1" download>Download' in html
    raw = server.request("GET", f"/jobs/{job['id']}/log", headers=BASIC, token=None)
    assert raw.status == 200 and raw.body == server.log(job["id"]) and len(raw.body) > 300000
    assert "content-disposition" not in raw.headers
    saved = server.request("GET", f"/jobs/{job['id']}/log?download=1", headers=BASIC, token=None)
    assert saved.body == raw.body
    assert saved.headers["content-disposition"] == f'attachment; filename="{job["id"]}.log"'
    bad = server.request("GET", f"/jobs/{job['id']}/log?download=yes", headers=BASIC, token=None)
    assert bad.status == 400 and b"download" in bad.body


def test_the_charts_page_is_svg_without_script(server: Server) -> None:
    job = server.submit("true")
    server.wait_final(job["id"])
    html = page(server, "/charts")
    assert html.count("<svg class=chart") >= 4 and "<script" not in html
    assert "class=c-success" in html


def test_running_job_page_tails_live_and_refreshes_without_js(server: Server) -> None:
    job = server.submit("echo first; sleep 20")
    server.wait_status(job["id"], ("running",))
    wait_until(lambda: b"first" in server.log(job["id"]), 10, "the first line")
    html = page(server, f"/jobs/{job['id']}")
    assert "<noscript><meta http-equiv=refresh content=5></noscript>" in html
    assert 'data-status="running"' in html and "<script>" in html
    offset = int(re.search(r'data-offset="(\d+)"', html).group(1))  # type: ignore[union-attr]
    tail = server.request("GET", f"/jobs/{job['id']}/log?offset=0", headers=BASIC, token=None)
    assert tail.status == 200 and tail.body.startswith(b"first\n")
    assert tail.headers["x-job-status"] == "running"
    assert int(tail.headers["x-log-offset"]) >= offset
    server.request("POST", f"/api/jobs/{job['id']}/cancel")
    server.wait_final(job["id"])


def test_unknown_job_page_is_404(server: Server) -> None:
    resp = server.request("GET", "/jobs/no-such-job", headers=BASIC, token=None)
    assert resp.status == 404


# --- filters -------------------------------------------------------------------------------

def test_status_filter_lists_only_that_status(server: Server) -> None:
    ok = server.submit("true")
    bad = server.submit("exit 3")
    server.wait_final(ok["id"])
    server.wait_final(bad["id"])
    failed = page(server, "/?status=failed")
    assert bad["id"] in listed_ids(failed) and ok["id"] not in listed_ids(failed)
    assert set(re.findall(r'class="st st-(\w+)"', jobs_section(failed))) == {"failed"}
    assert "<option selected>failed</option>" in failed


def test_bad_filter_is_400(server: Server) -> None:
    resp = server.request("GET", "/?status=<b>", headers=BASIC, token=None)
    assert resp.status == 400 and "status" in resp.json()["error"]
    assert server.request("GET", "/?before=x", headers=BASIC, token=None).status == 400


# --- cancel form ---------------------------------------------------------------------------

def test_cancel_form_with_valid_token_cancels_and_redirects(server: Server) -> None:
    job = server.submit("sleep 30")
    server.wait_status(job["id"], ("running",))
    token = csrf_token(page(server, f"/jobs/{job['id']}"))
    resp = server.request("POST", f"/jobs/{job['id']}/cancel", body=f"csrf={token}",
                          headers={**BASIC, "Content-Type": "application/x-www-form-urlencoded",
                                   "Origin": server.url}, token=None)
    assert resp.status == 303 and resp.headers["location"] == f"/jobs/{job['id']}"
    assert server.wait_final(job["id"])["status"] == "cancelled"


@pytest.mark.parametrize("case", ["wrong token", "other job's token", "cross-site origin"])
def test_cancel_form_refuses_forgeries_and_leaves_the_job(server: Server, case: str) -> None:
    victim = server.submit("sleep 30")
    other = server.submit("sleep 30")
    server.wait_status(victim["id"], ("running",))
    token = {"wrong token": "9999999999.deadbeef",
             "other job's token": csrf_token(page(server, f"/jobs/{other['id']}")),
             "cross-site origin": csrf_token(page(server, f"/jobs/{victim['id']}"))}[case]
    origin = "http://evil.example" if case == "cross-site origin" else server.url
    resp = server.request("POST", f"/jobs/{victim['id']}/cancel", body=f"csrf={token}",
                          headers={**BASIC, "Content-Type": "application/x-www-form-urlencoded",
                                   "Origin": origin}, token=None)
    assert resp.status == 403
    job = server.job(victim["id"])
    assert job["status"] == "running" and "cancel_requested" not in job
    for j in (victim, other):
        server.request("POST", f"/api/jobs/{j['id']}/cancel")
        server.wait_final(j["id"])


def test_finished_job_page_has_no_cancel_form(server: Server) -> None:
    job = server.submit("true")
    server.wait_final(job["id"])
    html = page(server, f"/jobs/{job['id']}")
    assert "name=csrf" not in html and "<script>" not in html


# --- 10,000 jobs: paging, speed ------------------------------------------------------------

SEEDED = 10_000
MODES = ("rsync", "git", "upload")


@pytest.fixture(scope="module")
def crowded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """An API (no executors, so nothing moves) over 10,000 queued jobs written by the store."""
    from tests.helpers import RedisServer

    base = tmp_path_factory.mktemp("crowded")
    rs = RedisServer(base / "redis").start()
    store = JobStore(connect(rs.url), 3600)
    for n in range(SEEDED):
        mode = MODES[n % 3]
        store.enqueue({"id": f"seed{n:05d}", "mode": mode, "status": "queued", "script": "true",
                       "source": "s", "timeout": "60", "created_at": "2026-11-28T00:00:00.000Z",
                       "name": f"job {n}"}, {"id": f"seed{n:05d}", "mode": mode}, SEEDED + 1)
    srv = Server(base / "srv", redis_url=rs.url, command="api").start()
    yield srv
    srv.stop()
    rs.stop()


def timed(fetch: Callable[[], str]) -> tuple[str, float]:
    started = time.monotonic()
    html = fetch()
    return html, time.monotonic() - started


def test_pages_stay_fast_with_10000_jobs(crowded: Server) -> None:
    for path in ("/", "/?mode=git", "/?status=queued&mode=upload", "/?status=success&mode=git",
                 "/jobs/seed00042", f"/?before={SEEDED // 2}"):
        _, took = timed(lambda p=path: page(crowded, p))  # type: ignore[misc]
        assert took < 1.0, f"{path} took {took:.2f} s"


def test_paging_walks_newest_first_without_gaps(crowded: Server) -> None:
    html = page(crowded, "/")
    seen: list[str] = []
    for _ in range(3):
        ids = listed_ids(html)
        assert len(ids) == 50
        seen += ids
        older = re.search(r'<a rel=next href="([^"]+)">', html)
        assert older
        html = page(crowded, unescape(older.group(1)))
    assert seen == [f"seed{n:05d}" for n in range(SEEDED - 1, SEEDED - 151, -1)]


def test_paging_combines_with_filters(crowded: Server) -> None:
    html = page(crowded, "/?mode=git")
    older = re.search(r'<a rel=next href="([^"]+)">', html)
    assert older and "mode=git" in unescape(older.group(1))
    ids = listed_ids(html) + listed_ids(page(crowded, unescape(older.group(1))))
    assert len(ids) == 100 == len(set(ids))
    assert all(int(i[4:]) % 3 == 1 for i in ids)  # every git job, and only those


def test_oldest_page_has_no_older_link(crowded: Server) -> None:
    html = page(crowded, "/?before=3")
    assert listed_ids(html) == ["seed00001", "seed00000"]
    assert "rel=next" not in html and "« newest" in html


def test_queue_section_shows_the_next_jobs_in_order(crowded: Server) -> None:
    queue = page(crowded, "/").split("<h2>Queue</h2>", 1)[1].split("<h2>Jobs</h2>")[0]
    assert re.findall(r"/jobs/(seed\d+)", queue)[:3] == ["seed00000", "seed00001", "seed00002"]
    assert f"{SEEDED - 10} more" in queue
