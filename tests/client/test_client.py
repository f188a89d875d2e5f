"""The CI-side client (ci/README.md): both clients, Python and bash, against real
server processes; then the Python client's pure parts."""

from __future__ import annotations

import http.client
import io
import os
import signal
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from remoteci import client
from tests.helpers import ROOT, TOKEN, Server, free_port, running_server, wait_until

# The client must run on a runner's own python3: REMOTE_CI_CLIENT_PYTHON=/path/to/python3.8 checks one.
CLIENTS = {
    "py": [os.environ.get("REMOTE_CI_CLIENT_PYTHON", sys.executable), str(ROOT / "remoteci.py"), "submit"],
    "sh": ["bash", str(ROOT / "ci" / "remote-ci.sh")],
}
RUN_TIMEOUT = 60
UPLOAD_WIRED = (ROOT / "remoteci" / "web" / "uploads.py").exists()
GIT_WIRED = (ROOT / "remoteci" / "sources" / "git.py").exists()
needs_upload = pytest.mark.skipif(not UPLOAD_WIRED, reason="POST /api/jobs/upload is not in this branch")
needs_git = pytest.mark.skipif(not GIT_WIRED, reason="POST /api/jobs/git is not in this branch")


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the module: short graces so timeouts and cancels end in about a second."""
    with running_server(tmp_path_factory.mktemp("client"),
                        {"REMOTE_CI_JOB_TIMEOUT": "60", "REMOTE_CI_KILL_GRACE": "1",
                         "REMOTE_CI_CANCEL_GRACE": "1", "REMOTE_CI_DRAIN_TIMEOUT": "2",
                         "REMOTE_CI_CONCURRENCY": "4", "REMOTE_CI_GIT_ALLOW_FILE": "1"},
                        workers=4) as server:
        server.make_workspace("proj", {"data.txt": "from the workspace\n"})
        yield server


@pytest.fixture
def own_server(make_server: Callable[..., Server]) -> Iterator[Callable[..., Server]]:
    """make_server, each stopped with SIGTERM at the end so no executor outlives the test."""
    started: list[Server] = []

    def make(*args: Any, env: dict[str, str] | None = None, **kwargs: Any) -> Server:
        server = make_server(*args, env={"REMOTE_CI_DRAIN_TIMEOUT": "1", **(env or {})}, **kwargs)
        started.append(server)
        return server

    yield make
    for server in reversed(started):
        if server.proc is not None and server.proc.poll() is None:
            server.stop()


@pytest.fixture(params=sorted(CLIENTS))
def cli(request: pytest.FixtureRequest) -> list[str]:
    return CLIENTS[request.param]


def start(cli: list[str], server: Server, *args: str, env: dict[str, str] | None = None,
          cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """The client as the public CI runs it: token and server from the environment, SIGINT and
    SIGQUIT at their defaults even when the tests themselves run in a background job (which
    ignores them, and bash cannot trap a signal ignored when it starts)."""
    environment = {"PATH": os.environ["PATH"], "HOME": str(server.base), "LANG": "C.UTF-8",
                   "REMOTE_CI_TOKEN": TOKEN, "REMOTE_CI_SERVER": server.url, **(env or {})}
    return subprocess.Popen([*cli, *args], env=environment, cwd=cwd or server.base,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=_default_signals)


def _default_signals() -> None:
    for sig in (signal.SIGINT, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_DFL)


def finish(proc: subprocess.Popen[bytes]) -> tuple[int, bytes, str]:
    try:
        out, err = proc.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=10)
        raise AssertionError(f"client still running after {RUN_TIMEOUT} s: {err.decode()}") from None
    return proc.returncode, out, err.decode(errors="replace")


def run(cli: list[str], server: Server, *args: str, **kwargs: Any) -> tuple[int, bytes, str]:
    return finish(start(cli, server, *args, **kwargs))


def assert_cancelled(server: Server, job_id: str, client_err: str) -> None:
    """The job ends cancelled; a failure shows what the client said about its cancel."""
    try:
        final = server.wait_final(job_id, 15)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the client said:\n{client_err}") from None
    assert final["status"] == "cancelled", f"{final}; the client said:\n{client_err}"


def job_named(server: Server, name: str, status: str | None = None) -> dict[str, Any]:
    """The job a client submitted, found by its unique --name (and, if given, status)."""
    def find() -> dict[str, Any] | None:
        for job in server.request("GET", "/api/jobs?limit=500").json()["jobs"]:
            if job["name"] == name and (status is None or job["status"] == status):
                return dict(job)
        return None
    return dict(wait_until(find, 30, f"job {name!r} ({status or 'any status'})"))


def unique(request: pytest.FixtureRequest) -> str:
    return str(request.node.name)


# --- exit codes --------------------------------------------------------------------------------

def test_success_exits_0_and_stdout_is_exactly_the_log(cli: list[str], srv: Server,
                                                       request: pytest.FixtureRequest) -> None:
    code, out, err = run(cli, srv, "--workspace", "proj", "--name", unique(request),
                         "--script", "cat data.txt; printf 'no newline'")
    job = job_named(srv, unique(request))
    assert code == 0, err
    assert out == srv.log(job["id"])
    assert out.startswith(b"from the workspace\nno newline")
    assert f"{srv.url}/jobs/{job['id']}" in err


def test_failure_exits_with_the_scripts_code(cli: list[str], srv: Server) -> None:
    code, out, err = run(cli, srv, "--workspace", "proj", "--script", "echo broken; exit 7")
    assert code == 7, err
    assert out.startswith(b"broken\n")


def test_timeout_exits_124(cli: list[str], srv: Server) -> None:
    code, _, err = run(cli, srv, "--workspace", "proj", "--timeout", "2", "--script", "sleep 30")
    assert code == 124, err
    assert "timeout" in err


def test_job_cancelled_elsewhere_exits_1(cli: list[str], srv: Server,
                                         request: pytest.FixtureRequest) -> None:
    proc = start(cli, srv, "--workspace", "proj", "--name", unique(request),
                 "--script", "echo started; sleep 30")
    job = job_named(srv, unique(request), "running")
    assert srv.request("POST", f"/api/jobs/{job['id']}/cancel").status == 202
    code, _, err = finish(proc)
    assert code == 1, err
    assert "cancelled" in err


def test_refused_submission_exits_2_with_the_servers_message(cli: list[str], srv: Server) -> None:
    code, out, err = run(cli, srv, "--workspace", "no-such-dir", "--script", "true")
    assert code == 2
    assert out == b""
    assert "refused" in err and "no-such-dir" in err


def test_wrong_token_exits_2_and_says_which_secret(cli: list[str], srv: Server) -> None:
    code, _, err = run(cli, srv, "--workspace", "proj", "--script", "true",
                       env={"REMOTE_CI_TOKEN": "wrong-token-123"})
    assert code == 2
    assert "401" in err and "REMOTE_CI_TOKEN" in err


def test_unreachable_server_is_retried_then_exits_1(cli: list[str], srv: Server) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    code, _, err = run(cli, srv, "--workspace", "proj", "--script", "true", "--retry-for", "1",
                         env={"REMOTE_CI_SERVER": dead})
    assert code == 1
    assert "retrying" in err and "gave up" in err and "--retry-for" in err


def test_busy_server_is_polled_without_spending_the_retry_budget(
        cli: list[str], own_server: Callable[..., Server], request: pytest.FixtureRequest) -> None:
    srv = own_server(env={"REMOTE_CI_MAX_FOLLOWERS": "1"})
    blocker = srv.submit("sleep 20")
    slot = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    try:
        slot.request("GET", f"/api/jobs/{blocker['id']}/logs?follow=1",
                     headers={"Authorization": f"Bearer {TOKEN}"})
        held = slot.getresponse()  # keep a reference: the slot is held while this stream is open
        assert held.status == 200 and held.getheader("X-Log-Poll-After") is None
        # The only slot stays taken for the client's whole run: it follows by polling, and
        # a --retry-for far shorter than the job proves polls are not counted as failures.
        code, out, err = run(cli, srv, "--workspace", "proj", "--name", unique(request),
                             "--retry-for", "1", "--script", "echo one; sleep 3; echo two")
        job = job_named(srv, unique(request))
    finally:
        slot.close()
        srv.request("POST", f"/api/jobs/{blocker['id']}/cancel")
    assert code == 0, err
    assert "retrying" not in err
    assert out == srv.log(job["id"])
    assert out.startswith(b"one\ntwo\n")


# --- the log -----------------------------------------------------------------------------------

def test_binary_and_long_output_is_byte_identical(cli: list[str], srv: Server,
                                                  request: pytest.FixtureRequest) -> None:
    script = ("head -c 300000 /dev/urandom; printf '\\0\\r\\n\\377\\376'; seq 1 300000; "
              "printf 'tail without newline'")
    code, out, err = run(cli, srv, "--workspace", "proj", "--name", unique(request), "--script", script)
    assert code == 0, err
    log = srv.log(job_named(srv, unique(request))["id"])
    assert len(log) > 2_000_000
    assert out == log


def test_env_and_name_reach_the_job(cli: list[str], srv: Server, request: pytest.FixtureRequest) -> None:
    code, out, err = run(cli, srv, "--workspace", "proj", "--name", unique(request),
                         "--env", "GREETING=hello world", "--env", "FROM_CI",
                         "--script", 'printf "%s|%s" "$GREETING" "$FROM_CI"',
                         env={"FROM_CI": "copied \"value\""})
    assert code == 0, err
    assert out.startswith(b'hello world|copied "value"')
    assert job_named(srv, unique(request))["name"] == unique(request)


# --- signals and waiting -----------------------------------------------------------------------

@pytest.mark.parametrize(("sig", "expected"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_cancels_the_remote_job(cli: list[str], srv: Server, request: pytest.FixtureRequest,
                                       sig: int, expected: int) -> None:
    proc = start(cli, srv, "--workspace", "proj", "--name", unique(request),
                 "--script", "echo started; sleep 30")
    job = job_named(srv, unique(request), "running")
    wait_until(lambda: b"started" in srv.log(job["id"]), 10, "the job to print")
    proc.send_signal(sig)
    code, _, err = finish(proc)
    assert code == expected, err
    assert_cancelled(srv, job["id"], err)


def test_a_signal_as_the_server_accepts_still_cancels_the_job(
        cli: list[str], srv: Server, request: pytest.FixtureRequest) -> None:
    # The signal lands as soon as the job exists: often before the client has read the reply
    # that names it. The client holds the signal until it has, then cancels the job.
    for attempt in range(3):
        name = f"{unique(request)}-{attempt}"
        proc = start(cli, srv, "--workspace", "proj", "--name", name, "--script", "sleep 30")
        job = job_named(srv, name)
        proc.send_signal(signal.SIGTERM)
        code, _, err = finish(proc)
        assert code == 143, err
        assert_cancelled(srv, job["id"], err)


@pytest.mark.parametrize(("flags", "expected"), [((), 0), (("--fail-on-wait-timeout",), 1)])
def test_max_wait_stops_waiting_and_says_where_to_follow(
        cli: list[str], srv: Server, request: pytest.FixtureRequest,
        flags: tuple[str, ...], expected: int) -> None:
    code, _, err = run(cli, srv, "--workspace", "proj", "--name", unique(request), "--max-wait", "1",
                       *flags, "--script", "sleep 30")
    job = job_named(srv, unique(request))
    assert code == expected, err
    assert f"{srv.url}/jobs/{job['id']}" in err and "follow=1" in err
    assert srv.job(job["id"])["status"] in ("queued", "running")  # it goes on without us
    srv.request("POST", f"/api/jobs/{job['id']}/cancel")


def test_api_restart_mid_job_does_not_break_the_stream(
        cli: list[str], own_server: Callable[..., Server], tmp_path: Path,
        request: pytest.FixtureRequest) -> None:
    base = tmp_path / "shared"
    worker = own_server("worker", base=base, env={"REMOTE_CI_CONCURRENCY": "1"})
    api = own_server("api", redis_url=worker.redis_url, base=base)
    wait_until(lambda: api.request("GET", "/api/stats").json()["workers"] >= 1, 20, "the executor")
    api.make_workspace("proj")
    script = 'for i in $(seq 1 50); do echo "line $i"; sleep 0.06; done'
    proc = start(cli, api, "--workspace", "proj", "--name", unique(request), "--script", script)
    job = job_named(api, unique(request), "running")
    wait_until(lambda: b"line 5\n" in api.log(job["id"]), 10, "the job to print")
    api.stop(signal.SIGKILL)
    api = own_server("api", redis_url=worker.redis_url, base=base, port=api.port)
    code, out, err = finish(proc)
    assert code == 0, err
    assert "retrying" in err  # the stream really broke and was resumed
    log = api.log(job["id"])
    assert out == log
    assert [f"line {i}".encode() for i in range(1, 51)] == log.splitlines()[:50]


# --- other sources -----------------------------------------------------------------------------

def test_rsync_to_copies_the_dir_then_runs_in_that_workspace(cli: list[str], srv: Server,
                                                             tmp_path: Path) -> None:
    src = tmp_path / "checkout"
    (src / ".git").mkdir(parents=True)
    (src / "build").mkdir()
    (src / "main.c").write_text("int main;\n")
    (src / "build" / "big.o").write_text("object\n")
    (src / client.IGNORE_FILE).write_text("build/\n")
    name = "rs-" + Path(cli[-1]).stem  # one workspace per client
    code, out, err = run(cli, srv, "--rsync-to", str(srv.workspace_dir / name), "--source-dir", str(src),
                         "--script", "ls -A")
    assert code == 0, err
    assert out.splitlines()[:2] == [client.IGNORE_FILE.encode(), b"main.c"]


def test_webhook_is_refused_by_a_server_without_an_allowlist(cli: list[str], srv: Server) -> None:
    code, _, err = run(cli, srv, "--workspace", "proj", "--webhook", "http://127.0.0.1:9/hook",
                       "--script", "true")
    assert code == 2 and "field 'webhook' is refused" in err, err


@needs_upload
@pytest.mark.parametrize("source", ["--workspace", "--upload"])
def test_webhook_reaches_the_job_in_json_and_in_a_raw_upload(
        cli: list[str], own_server: Callable[..., Server], tmp_path: Path,
        request: pytest.FixtureRequest, source: str) -> None:
    hook_port = free_port()
    server = own_server(env={"REMOTE_CI_WEBHOOK_ALLOW": f"127.0.0.1:{hook_port}",
                             "REMOTE_CI_WEBHOOK_SECRET": "s" * 32}, wait_workers=2)
    server.make_workspace("proj", {"data.txt": "x\n"})
    (tmp_path / "src").mkdir()
    url = f"http://127.0.0.1:{hook_port}/hook?from=ci"
    code, _, err = run(cli, server, source, "proj" if source == "--workspace" else str(tmp_path / "src"),
                       "--name", unique(request), "--webhook", url, "--script", "true")
    assert code == 0, err
    assert job_named(server, unique(request))["webhook"] == url


@needs_upload
def test_upload_sends_the_dir_honouring_remoteciignore(cli: list[str], srv: Server,
                                                       tmp_path: Path) -> None:
    src = tmp_path / "up"
    (src / ".git").mkdir(parents=True)
    (src / "node_modules" / "x").mkdir(parents=True)
    (src / "src").mkdir()
    (src / "src" / "a.py").write_text("print('a')\n")
    (src / "node_modules" / "x" / "big.js").write_text("x\n")
    (src / client.IGNORE_FILE).write_text("node_modules/\n*.log\n")
    (src / "debug.log").write_text("noise\n")
    code, out, err = run(cli, srv, "--upload", str(src), "--timeout", "30", "--env", "K=v v",
                         "--script", 'find . -type f | sort; echo "K=$K"')
    assert code == 0, err
    assert out.splitlines()[:3] == [b"./" + client.IGNORE_FILE.encode(), b"./src/a.py", b"K=v v"]


@needs_upload
def test_the_bash_client_shows_the_http_servers_own_plain_text_413(
        own_server: Callable[..., Server], tmp_path: Path) -> None:
    # Past the upload limit plus the form allowance waitress refuses the body itself, in plain
    # text, not the app's JSON; the client still says why.
    server = own_server(env={"REMOTE_CI_MAX_UPLOAD_MB": "1"})
    src = tmp_path / "big"
    src.mkdir()
    (src / "random.bin").write_bytes(os.urandom(4 * 1024 * 1024))  # incompressible: > 1 + 2 MiB
    code, out, err = run(CLIENTS["sh"], server, "--upload", str(src), "--script", "true")
    assert code == 2 and out == b"", err
    assert "HTTP 413" in err and "exceeds max_body" in err, err


def path_without_zstd(tmp_path: Path) -> str:
    """A PATH with every program of this one but zstd: a runner that lacks it."""
    bin_dir = tmp_path / "bin-without-zstd"
    bin_dir.mkdir()
    for directory in os.environ["PATH"].split(os.pathsep):
        if not os.path.isdir(directory):
            continue
        for name in os.listdir(directory):
            if not name.startswith("zstd") and not (bin_dir / name).exists():
                (bin_dir / name).symlink_to(os.path.join(directory, name))
    return str(bin_dir)


@needs_upload
@pytest.mark.parametrize("has_zstd", [True, False], ids=["zstd", "no-zstd"])
def test_upload_packs_with_zstd_when_the_runner_has_it(cli: list[str], srv: Server, tmp_path: Path,
                                                       has_zstd: bool) -> None:
    src = tmp_path / "up"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "data.bin").write_bytes(bytes(range(256)) * 4000)
    (src / "run.sh").write_text("echo packed\n")
    env = {} if has_zstd else {"PATH": path_without_zstd(tmp_path)}
    code, out, err = run(cli, srv, "--upload", str(src), "--script",
                         "sh run.sh; cksum < sub/data.bin", env=env)
    assert code == 0, err
    expected = subprocess.run(["cksum"], input=bytes(range(256)) * 4000, stdout=subprocess.PIPE,
                              check=True).stdout
    assert out.startswith(b"packed\n" + expected), err
    assert ("as tar.zst" if has_zstd else "as tar.gz") in err


@needs_git
def test_git_from_ci_variables_clones_this_commit(cli: list[str], srv: Server, tmp_path: Path) -> None:
    repo = tmp_path / "org" / "proj"
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    (repo / "f.txt").write_text("first\n")
    git = ["git", "-C", str(repo), "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    first = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True,
                           text=True).stdout.strip()
    (repo / "f.txt").write_text("second\n")
    subprocess.run([*git, "commit", "-qam", "two"], check=True)
    subprocess.run(["git", "clone", "-q", "--bare", str(repo), str(tmp_path / "org" / "proj.git")],
                   check=True)
    ci_env = {"GITHUB_SERVER_URL": f"file://{tmp_path}", "GITHUB_REPOSITORY": "org/proj",
              "GITHUB_SHA": first}
    code, out, err = run(cli, srv, "--git", "--script", "cat f.txt", env=ci_env)
    assert code == 0, err
    assert first.encode() in out and b"\nfirst\n" in out  # the server logs the fetch first


# --- pure parts of the Python client -----------------------------------------------------------

BASE_ENV = {"REMOTE_CI_SERVER": "https://ci.example.org/", "REMOTE_CI_TOKEN": "t0ken-abc"}


def test_parse_args_takes_server_and_token_from_the_environment() -> None:
    opts = client.parse_args(["--workspace", "proj", "--script", "make"], BASE_ENV)
    assert (opts.server, opts.token) == ("https://ci.example.org", "t0ken-abc")
    assert opts.source == client.Source("rsync", "proj")
    assert (opts.max_wait, opts.fail_on_wait_timeout, opts.retry_for) == (1500, False, 300)


def test_flags_override_the_environment() -> None:
    opts = client.parse_args(["--server", "http://h:5000", "--token", "other-token", "--upload", ".",
                              "--script", "x", "--timeout", "9", "--name", "n", "--max-wait", "5",
                              "--fail-on-wait-timeout"], BASE_ENV)
    assert (opts.server, opts.token, opts.timeout, opts.name) == ("http://h:5000", "other-token", 9, "n")
    assert opts.source == client.Source("upload", ".") and opts.fail_on_wait_timeout


@pytest.mark.parametrize(("argv", "env", "message"), [
    (["--workspace", "p", "--script", "x"], {"REMOTE_CI_TOKEN": "t0ken-abc"}, "REMOTE_CI_SERVER"),
    (["--workspace", "p", "--script", "x"], {"REMOTE_CI_SERVER": "http://h"}, "REMOTE_CI_TOKEN"),
    (["--script", "x"], BASE_ENV, "--workspace NAME"),
    (["--workspace", "p"], BASE_ENV, "--script"),
    (["--workspace", "p", "--upload", ".", "--script", "x"], BASE_ENV, "not allowed with"),
    (["--workspace", "p", "--ref", "main", "--script", "x"], BASE_ENV, "--ref only"),
    (["--git", "--script", "x"], BASE_ENV, "--git URL"),
    (["--upload", "/no/such/dir", "--script", "x"], BASE_ENV, "not a directory"),
    (["--workspace", "p", "--script", "x", "--server", "ftp://h"], BASE_ENV, "http://"),
    (["--workspace", "p", "--script", "x", "--timeout", "0"], BASE_ENV, "--timeout"),
])
def test_bad_arguments_are_refused_with_the_fix(argv: list[str], env: dict[str, str], message: str) -> None:
    with pytest.raises(client.ClientError) as caught:
        client.parse_args(argv, env)
    assert caught.value.code == client.EXIT_REFUSED
    assert message in str(caught.value)


def test_bare_git_uses_github_actions_variables() -> None:
    env = {**BASE_ENV, "GITHUB_SERVER_URL": "https://github.com", "GITHUB_REPOSITORY": "org/r",
           "GITHUB_SHA": "abc123"}
    opts = client.parse_args(["--git", "--script", "x"], env)
    assert opts.source == client.Source("git", "https://github.com/org/r.git", "abc123")
    explicit = client.parse_args(["--git", "--ref", "main", "--script", "x"], env)
    assert explicit.source.ref == "main"


def test_bare_git_uses_gitlab_variables() -> None:
    env = {**BASE_ENV, "CI_REPOSITORY_URL": "https://gitlab.example/g/r.git", "CI_COMMIT_SHA": "def"}
    assert client.git_source_from_ci(env) == ("https://gitlab.example/g/r.git", "def")


def test_git_with_a_url_has_no_default_ref() -> None:
    opts = client.parse_args(["--git", "https://h/r.git", "--script", "x"], {**BASE_ENV, "GITHUB_SHA": "a"})
    assert opts.source == client.Source("git", "https://h/r.git", None)


@pytest.mark.parametrize(("dest", "workspace"), [
    ("ci@host:/var/ci-workspace/proj", "proj"), ("ci@host:/var/ci-workspace/proj/", "proj"),
    ("/local/dir/ws", "ws"), ("ci@host:", None)])
def test_workspace_defaults_to_the_rsync_destinations_name(dest: str, workspace: str | None) -> None:
    assert client.workspace_from_rsync_dest(dest) == workspace


def test_env_pairs_split_at_the_first_equals_and_copy_bare_names() -> None:
    env = client.parse_env_pairs(["A=1", "B=x=y", "EMPTY=", "SECRET"], {"SECRET": "s3"})
    assert env == {"A": "1", "B": "x=y", "EMPTY": "", "SECRET": "s3"}


@pytest.mark.parametrize(("pair", "message"), [("1A=x", "not a variable name"), ("=x", "not a variable"),
                                               ("UNSET_HERE", "not set here")])
def test_bad_env_pairs_are_refused(pair: str, message: str) -> None:
    with pytest.raises(client.ClientError, match=message):
        client.parse_env_pairs([pair], {})


def test_upload_query_carries_env_as_a_json_string() -> None:
    opts = client.parse_args(["--upload", ".", "--script", "a && b", "--env", "K=v w", "--timeout", "5"],
                             BASE_ENV)
    assert client.upload_query(opts) == ("script=a%20%26%26%20b&timeout=5&env=%7B%22K%22%3A%20%22v%20w%22%7D")


IGNORE = """
# build outputs
build/
*.log
!keep.log
/top-only
docs/*.pdf
**/cache
\\#literal
"""


@pytest.mark.parametrize(("path", "is_dir", "ignored"), [
    ("build", True, True), ("sub/build", True, True), ("build", False, False),
    ("a.log", False, True), ("deep/b.log", False, True), ("keep.log", False, False),
    ("top-only", False, True), ("sub/top-only", False, False),
    ("docs/x.pdf", False, True), ("docs/sub/x.pdf", False, False), ("other/docs/x.pdf", False, False),
    ("cache", True, True), ("a/b/cache", False, True),
    ("#literal", False, True), ("src/main.c", False, False),
])
def test_ignore_patterns_follow_gitignore(path: str, is_dir: bool, ignored: bool) -> None:
    assert client.is_ignored(path, is_dir, client.parse_ignore(IGNORE)) is ignored


def test_files_to_send_prunes_ignored_dirs_and_git(tmp_path: Path) -> None:
    for rel in (".git/config", "build/keep.log", "src/a.c", "src/.git", "x.log", "keep.log"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    rules = client.parse_ignore("build/\n*.log\n!keep.log\n")
    assert list(client.files_to_send(str(tmp_path), rules, include_git=False)) == [
        "src", "keep.log", "src/a.c"]
    with_git = list(client.files_to_send(str(tmp_path), rules, include_git=True))
    assert ".git/config" in with_git and "src/.git" in with_git


def test_tar_stream_is_a_valid_archive_of_the_kept_files(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f.txt").write_bytes(b"\0binary\xff" * 10000)
    (tmp_path / "skip.tmp").write_text("x")
    (tmp_path / client.IGNORE_FILE).write_text("*.tmp\n")
    data = b"".join(client.tar_gz_stream(str(tmp_path), include_git=False))
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        assert sorted(tar.getnames()) == [client.IGNORE_FILE, "a", "a/f.txt"]
        member = tar.extractfile("a/f.txt")
        assert member is not None and member.read() == b"\0binary\xff" * 10000


@pytest.mark.parametrize(("job", "code"), [
    ({"status": "success", "exit_code": 0}, 0), ({"status": "failed", "exit_code": 7}, 7),
    ({"status": "failed", "exit_code": -9}, 137), ({"status": "failed", "exit_code": None}, 1),
    ({"status": "timeout"}, 124), ({"status": "error"}, 1), ({"status": "cancelled"}, 1)])
def test_exit_code_mirrors_the_job(job: dict[str, Any], code: int) -> None:
    assert client.exit_code_for(job) == code


def test_a_copy_of_the_one_file_is_a_complete_client(tmp_path: Path) -> None:
    vendored = tmp_path / "remote_ci_client.py"
    vendored.write_bytes((ROOT / "remoteci" / "client.py").read_bytes())
    done = subprocess.run([sys.executable, "-I", str(vendored), "--script", "x"], capture_output=True,
                          text=True, timeout=30, cwd=tmp_path, env={"PATH": os.environ["PATH"]})
    assert done.returncode == client.EXIT_REFUSED
    assert "REMOTE_CI_SERVER" in done.stderr


def test_client_imports_only_the_standard_library() -> None:
    probe = ("import sys; import remoteci.client; "
             "bad = [m for m in sys.modules if m.split('.')[0] in ('redis', 'waitress', 'multipart')]; "
             "print(bad)")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True,
                         check=True, timeout=30).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize(("header", "pause"), [
    (None, None), ("1", 1.0), ("2.5", 2.5), ("3600", client.POLL_AFTER_MAX), ("0", 1.0),
    ("-4", 1.0), ("nan", 1.0), ("soon", 1.0)])
def test_poll_after_is_a_bounded_pause(header: str | None, pause: float | None) -> None:
    assert client._seconds(header) == pause


def test_zstd_stream_is_a_valid_archive_of_the_kept_files(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f.txt").write_bytes(b"\0binary\xff" * 10000)
    (tmp_path / "-dash").write_text("a name tar must not take for an option")
    (tmp_path / "keep.tmp").write_text("kept by a negation")
    (tmp_path / "skip.tmp").write_text("x")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("ref\n")
    (tmp_path / client.IGNORE_FILE).write_text("*.tmp\n!keep.tmp\n")
    packed = b"".join(client.tar_stream(str(tmp_path), False, "zstd"))
    data = subprocess.run(["zstd", "-d", "-q", "-c"], input=packed, stdout=subprocess.PIPE,
                          check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        assert sorted(tar.getnames()) == sorted(["-dash", client.IGNORE_FILE, "a", "a/f.txt", "keep.tmp"])
        member = tar.extractfile("a/f.txt")
        assert member is not None and member.read() == b"\0binary\xff" * 10000


def test_a_file_tar_cannot_read_stops_a_zstd_upload_naming_it(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # A file that vanishes between the listing and tar reading it (root reads every file, so
    # this is how a test makes tar fail whoever runs it).
    (tmp_path / "kept.txt").write_text("x")
    listed = client.files_to_send
    monkeypatch.setattr(client, "files_to_send",
                        lambda *args: iter([*listed(*args), "vanished.txt"]))
    with pytest.raises(client.ClientError, match=r"vanished\.txt") as caught:
        b"".join(client.tar_stream(str(tmp_path), False, "zstd"))
    assert caught.value.code == client.EXIT_REFUSED


def test_host_goes_into_the_submission_and_the_upload_query() -> None:
    opts = client.parse_args(["--workspace", "w", "--script", "x", "--host", "build-2"], BASE_ENV)
    assert client.submission_fields(opts)["host"] == "build-2"
    upload = client.parse_args(["--upload", ".", "--script", "x", "--host", "build-2"], BASE_ENV)
    assert client.upload_query(upload) == "script=x&host=build-2"
    assert "host" not in client.submission_fields(client.parse_args(["--workspace", "w",
                                                                     "--script", "x"], BASE_ENV))
