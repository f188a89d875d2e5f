"""Jobs as their own users: each attack a job could make on the server or on another project fails.

The server here runs as root (as CI does) on its embedded redis, with two project tokens. Every
attack is also run by the test itself, as root, to show it would succeed for a process that had
the server's rights: a job fails at it because of its uid, not because the path is wrong.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import ROOT, TOKEN, MakeServer, Server, process_tree, wait_until, work_root

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root (CI runs as root)")

# A block of its own for each test's server, so no other server's jobs on this host share a uid.
UID_LOW = 200_000 + 64 * int.from_bytes(os.urandom(2), "big")
UID_HIGH = UID_LOW + 63
# Prints one line per attempt: "DENIED <what>: <why>" or "LEAKED <what>".
TRY = 'try_() { what=$1; shift; if out=$("$@" 2>&1); then echo "LEAKED $what"; ' \
      'else echo "DENIED $what: ${out##*: }"; fi; }\n'


@dataclass
class Setup:
    server: Server
    alpha: str
    beta: str
    env_file: Path
    tokens_file: Path

    def submit(self, token: str, script: str, workspace: str, **fields: object) -> str:
        resp = self.server.request("POST", "/api/jobs/rsync",
                                   {"workspace": workspace, "script": script, **fields}, token=token)
        assert resp.status == 202, resp.body
        return str(resp.json()["id"])

    def run(self, token: str, script: str, workspace: str, **fields: object) -> tuple[dict[str, object], str]:
        job_id = self.submit(token, script, workspace, **fields)
        job = self.server.wait_final(job_id, timeout=60)
        return job, self.server.log(job_id).decode()


@pytest.fixture
def setup(make_server: MakeServer, tmp_path: Path) -> Setup:
    # Where an operator keeps them: a directory everyone may pass, files for the service only.
    etc = Path(os.path.join(work_root(), f"etc-{os.urandom(4).hex()}"))
    etc.mkdir(mode=0o755)
    tokens_file = etc / "tokens"
    alpha = _add_token(tokens_file, "alpha")
    beta = _add_token(tokens_file, "beta")
    env_file = etc / "remote-ci.env"
    env_file.write_text(f"REMOTE_CI_TOKEN={TOKEN}\n")
    env_file.chmod(0o640)
    server = make_server(redis_url=None, wait_workers=2,
                         env={"REMOTE_CI_TOKENS_FILE": str(tokens_file),
                              "REMOTE_CI_JOB_UID_RANGE": f"{UID_LOW}-{UID_HIGH}"})
    for name in ("alpha", "beta", "admin"):
        server.make_workspace(name)
    return Setup(server, alpha, beta, env_file, tokens_file)


def _add_token(tokens_file: Path, name: str) -> str:
    done = subprocess.run([sys.executable, str(ROOT / "remoteci.py"), "token", "add", name],
                          env={"PATH": os.environ["PATH"], "REMOTE_CI_TOKENS_FILE": str(tokens_file)},
                          capture_output=True, text=True, timeout=30, check=True)
    return done.stdout.strip()


def _lines(log: str, prefix: str) -> list[str]:
    return [line for line in log.splitlines() if line.startswith(prefix)]


def test_health_says_jobs_are_isolated(setup: Setup) -> None:
    assert setup.server.request("GET", "/api/health", token=None).json()["isolation"] == "user"


def test_a_job_runs_as_its_owners_uid_with_its_own_home(setup: Setup) -> None:
    script = 'id -u; id -g; id -G; echo "$HOME"; touch "$HOME/cache" && echo home-writable'
    job, log = setup.run(setup.alpha, script, "alpha")
    assert job["status"] == "success", log
    uid, gid, groups, home, writable = log.splitlines()[:5]
    assert UID_LOW <= int(uid) <= UID_HIGH and gid == uid and groups == uid
    assert home == str(setup.server.work_dir / f"{job['id']}.home") and writable == "home-writable"
    _, log_again = setup.run(setup.alpha, "id -u", "alpha")
    assert log_again.splitlines()[0] == uid, "an owner's uid is stable"
    _, log_other = setup.run(setup.beta, "id -u", "beta")
    _, log_admin = setup.run(TOKEN, "id -u", "admin")
    uids = {uid, log_other.splitlines()[0], log_admin.splitlines()[0]}
    assert len(uids) == 3, "every owner, admin included, has its own uid"
    assert not (setup.server.work_dir / f"{job['id']}.home").exists(), "HOME goes with the job"


def test_a_job_cannot_read_or_change_anything_of_the_servers(setup: Setup) -> None:
    server = setup.server
    earlier, _ = setup.run(setup.beta, "echo beta-private-output", "beta")
    data = server.data_dir
    socket_path = data / "redis" / "redis.sock"
    assert server.proc is not None
    attacks = {
        "env-file": ["cat", str(setup.env_file)],
        "tokens-file": ["cat", str(setup.tokens_file)],
        "server-environ": ["cat", f"/proc/{server.proc.pid}/environ"],
        "data-dir": ["ls", str(data)],
        "logs-dir": ["ls", str(data / "logs")],
        "other-log": ["cat", str(data / "logs" / f"{earlier['id']}.log")],
        "redis-socket": ["redis-cli", "-s", str(socket_path), "ping"],
        "write-data-dir": ["touch", str(data / "planted")],
        "work-dir-listing": ["ls", str(server.work_dir)],
    }
    for what, argv in attacks.items():  # the control: with the server's rights, each works
        if what != "write-data-dir":
            assert subprocess.run(argv, capture_output=True, timeout=10).returncode == 0, what
    script = TRY + "".join(f"try_ {what} {' '.join(argv)}\n" for what, argv in attacks.items())
    script += 'try_ executor-environ cat "/proc/$PPID/environ"\n'
    _, log = setup.run(setup.alpha, script, "alpha")
    denied = _lines(log, "DENIED")
    assert _lines(log, "LEAKED") == [] and len(denied) == len(attacks) + 1, log
    assert all("Permission denied" in line for line in denied if "redis" not in line), log
    assert not (data / "planted").exists()
    assert server.request("GET", "/api/health", token=None).status == 200


def test_kill_minus_one_stops_only_the_jobs_own_uid(setup: Setup) -> None:
    server = setup.server
    assert server.proc is not None
    family = [server.proc.pid, *process_tree(server.proc.pid)]
    beta_id = setup.submit(setup.beta, "sleep 3; echo beta-survived", "beta")
    server.wait_status(beta_id, ("running",))
    # Linux spares the caller of kill(-1): with no other process of its uid, nothing is hit.
    job, log = setup.run(setup.alpha, 'kill -9 -1; echo "kill exit $?"', "alpha")
    assert job["status"] == "success" and "kill exit" in log, log
    beta = server.wait_final(beta_id)
    assert beta["status"] == "success" and b"beta-survived" in server.log(beta_id)
    assert all(_alive(pid) for pid in family), "the server and its executors are untouched"
    assert setup.run(setup.alpha, "echo fine", "alpha")[0]["status"] == "success"


def test_two_projects_cannot_read_each_others_running_dirs(setup: Setup) -> None:
    server = setup.server
    alpha_id = setup.submit(setup.alpha, 'echo s3cret > secret; echo s3cret > "$HOME/secret"; '
                                         "while [ ! -e go ]; do sleep 0.05; done", "alpha",
                            timeout=60)
    code, home = server.work_dir / alpha_id, server.work_dir / f"{alpha_id}.home"
    wait_until(lambda: (code / "secret").exists() and (home / "secret").exists(), 30,
               "the alpha job to write its secrets")
    script = TRY + "".join(f"try_ {what} {cmd}\n" for what, cmd in {
        "code-dir": f"ls {code}", "code-file": f"cat {code}/secret",
        "home-file": f"cat {home}/secret",
        "write-into": f"touch {code}/planted"}.items())
    _, log = setup.run(setup.beta, script, "beta")
    assert _lines(log, "LEAKED") == [] and len(_lines(log, "DENIED")) == 4, log
    assert "s3cret" not in log
    (code / "go").touch()
    assert server.wait_final(alpha_id)["status"] == "success"
    assert not code.exists()


def test_jobs_of_one_owner_share_a_uid_and_so_may_signal_each_other(setup: Setup) -> None:
    # Documented, not a wish: the boundary is between owners, not between jobs of one owner.
    server = setup.server
    first = setup.submit(setup.alpha, "echo $$ > /tmp/remoteci-isolation-$REMOTE_CI_JOB_ID; sleep 30",
                         "alpha", timeout=60)
    pid_file = Path(f"/tmp/remoteci-isolation-{first}")
    wait_until(pid_file.exists, 30, "the first job to write its pid")
    try:
        pid = pid_file.read_text().strip()
        _, log = setup.run(setup.alpha, f"kill -TERM {pid} && echo signalled", "alpha")
        assert "signalled" in log
        assert server.wait_final(first)["status"] == "failed"
    finally:
        pid_file.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# --- a server that is not root ------------------------------------------------------------------

NOBODY = 65534


def _server_as_nobody(make_server: MakeServer, capabilities: list[str]) -> Server:
    """A `serve` as uid 65534 holding only `capabilities` (ambient, as systemd grants them).

    CAP_DAC_READ_SEARCH is added only so that nobody may run this test's Python, which lives
    under root's home here; it gives no right to switch users.
    """
    caps = ",".join(f"+{c}" for c in [*capabilities, "dac_read_search"])
    base = work_root() / f"nobody-{os.urandom(4).hex()}"
    base.mkdir(mode=0o755)
    wrapper = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
               f"--inh-caps={caps}", f"--ambient-caps={caps}", "--"]
    server = Server(base, redis_url=None, wrapper=wrapper,
                    env={"REMOTE_CI_JOB_UID_RANGE": f"{UID_LOW}-{UID_HIGH}"})
    server.work_dir.mkdir(mode=0o711)
    for path in (base, base / "ws", server.work_dir):
        os.chown(path, NOBODY, NOBODY)
    return make_server(base=base, redis_url=None, wrapper=wrapper, wait_workers=2,
                       env={"REMOTE_CI_JOB_UID_RANGE": f"{UID_LOW}-{UID_HIGH}"})


def _closed_artifact_job(server: Server) -> tuple[dict[str, object], str]:
    """A job that leaves its artifact in a dir only its own uid could enter (mode 0)."""
    server.make_workspace("proj")
    job = server.submit('id -u; mkdir -p out/deep; echo built > out/deep/app.txt; chmod 0 out/deep/app.txt '
                        'out/deep out; echo cache > "$HOME/c"', artifacts=["out/deep/app.txt"])
    return server.wait_final(str(job["id"]), timeout=60), str(job["id"])


def test_without_the_right_to_switch_users_jobs_run_as_the_server_and_it_warns(
        make_server: MakeServer) -> None:
    server = _server_as_nobody(make_server, [])
    assert server.request("GET", "/api/health", token=None).json()["isolation"] == "none"
    assert server.output().count("JOBS ARE NOT ISOLATED") == 1
    job, job_id = _closed_artifact_job(server)
    assert job["status"] == "success" and job["artifacts"] == 1, server.log(job_id)
    assert server.log(job_id).decode().splitlines()[0] == str(NOBODY)


def test_with_the_units_four_capabilities_a_non_root_server_isolates_and_cleans_up(
        make_server: MakeServer) -> None:
    server = _server_as_nobody(make_server, ["setuid", "setgid", "kill", "chown"])
    assert server.request("GET", "/api/health", token=None).json()["isolation"] == "user"
    job, job_id = _closed_artifact_job(server)
    log = server.log(job_id).decode()
    assert job["status"] == "success" and job["artifacts"] == 1, log
    assert UID_LOW <= int(log.splitlines()[0]) <= UID_HIGH
    got = server.request("GET", f"/api/jobs/{job_id}/artifacts/out/deep/app.txt")
    assert got.status == 200 and got.body == b"built\n"
    wait_until(lambda: not list(server.work_dir.iterdir()), 10, "the job's dirs to be removed")
    assert "NOT ISOLATED" not in server.output()
