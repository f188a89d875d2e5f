"""Project tokens against a real `serve`, with the tokens file written by the real CLI."""

from __future__ import annotations

import base64
import gzip
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import ROOT, TOKEN, MakeServer, Server, wait_until

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def token_command(tokens_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "remoteci.py"), "token", *args],
                          env={"PATH": os.environ["PATH"], "REMOTE_CI_TOKENS_FILE": str(tokens_file)},
                          capture_output=True, text=True, timeout=30, check=False)


def add_token(tokens_file: Path, name: str, *args: str) -> str:
    done = token_command(tokens_file, "add", name, *args)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@dataclass
class Setup:
    server: Server
    tokens_file: Path
    alpha: str  # workspaces alpha, shared-*
    beta: str  # workspaces beta (the default: its name)

    def submit(self, token: str, workspace: str, script: str = "true") -> dict[str, object]:
        resp = self.server.request("POST", "/api/jobs/rsync",
                                   {"workspace": workspace, "script": script}, token=token)
        assert resp.status == 202, resp.body
        return dict(resp.json())

    def ids(self, token: str, query: str = "") -> list[str]:
        resp = self.server.request("GET", f"/api/jobs{query}", token=token)
        assert resp.status == 200, resp.body
        return [j["id"] for j in resp.json()["jobs"]]


@pytest.fixture
def setup(make_server: MakeServer, tmp_path: Path) -> Setup:
    tokens_file = tmp_path / "tokens"
    alpha = add_token(tokens_file, "alpha", "--workspaces", "alpha,shared-*")
    beta = add_token(tokens_file, "beta")
    server = make_server(env={"REMOTE_CI_TOKENS_FILE": str(tokens_file)})
    for name in ("alpha", "alpha/sub", "beta", "shared-x"):
        server.make_workspace(name)
    return Setup(server, tokens_file, alpha, beta)


def basic(token: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"ci:{token}".encode()).decode()}


# --- the command and the file ------------------------------------------------------------------

def test_token_add_prints_a_working_token_and_stores_only_its_hash(setup: Setup) -> None:
    text = setup.tokens_file.read_text()
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", setup.alpha)
    assert setup.alpha not in text and setup.beta not in text
    assert re.fullmatch(r"alpha:[0-9a-f]{64}:alpha,shared-\*\nbeta:[0-9a-f]{64}:beta\n", text)
    assert setup.tokens_file.stat().st_mode & 0o777 == 0o600
    job = setup.submit(setup.alpha, "alpha")
    assert job["owner"] == "alpha"
    assert setup.server.wait_final(str(job["id"]))["status"] == "success"
    log = setup.server.output()
    assert setup.alpha not in log and setup.alpha[:12] not in log


def test_token_add_refuses_a_duplicate_and_list_shows_no_hash(tmp_path: Path) -> None:
    tokens_file = tmp_path / "tokens"
    add_token(tokens_file, "web", "--workspaces", "web-*")
    again = token_command(tokens_file, "add", "web")
    assert again.returncode == 1 and "already exists" in again.stderr and again.stdout == ""
    listed = token_command(tokens_file, "list")
    assert listed.stdout == "web\tweb-*\n"
    assert token_command(tokens_file, "remove", "web").returncode == 0
    assert tokens_file.read_text() == ""


def test_malformed_tokens_file_stops_serve_naming_file_and_line(tmp_path: Path) -> None:
    tokens_file = tmp_path / "tokens"
    add_token(tokens_file, "web")
    with tokens_file.open("a") as f:
        f.write("# fine\nbroken-line-without-fields\n")
    done = subprocess.run(
        [sys.executable, str(ROOT / "remoteci.py"), "serve"], capture_output=True, text=True,
        timeout=30, check=False, cwd=tmp_path,
        env={"PATH": os.environ["PATH"], "REMOTE_CI_TOKEN": TOKEN,
             "REMOTE_CI_TOKENS_FILE": str(tokens_file), "REMOTE_CI_DATA_DIR": str(tmp_path / "d")})
    assert done.returncode != 0
    assert f"{tokens_file} line 3: expected name:sha256-hex:workspace-patterns" in done.stderr


# --- who sees what -----------------------------------------------------------------------------

def test_wrong_token_and_the_stored_hash_are_401(setup: Setup) -> None:
    stored_hash = setup.tokens_file.read_text().split(":")[1]
    for token in ("not-a-token-at-all", stored_hash, setup.alpha + "x"):
        assert setup.server.request("GET", "/api/jobs", token=token).status == 401


def test_project_sees_lists_and_reads_only_its_own_jobs(setup: Setup) -> None:
    mine = setup.submit(setup.alpha, "alpha", "echo alpha-log")
    theirs = setup.submit(setup.beta, "beta", "echo beta-log")
    admins = setup.server.submit("true", "alpha")
    for job in (mine, theirs, admins):
        setup.server.wait_final(str(job["id"]))
    assert setup.ids(setup.alpha) == [mine["id"]]
    assert setup.ids(setup.beta) == [theirs["id"]]
    assert setup.ids(TOKEN) == [admins["id"], theirs["id"], mine["id"]]
    assert setup.server.job(str(admins["id"]))["owner"] == "admin"
    own = setup.server.request("GET", f"/api/jobs/{mine['id']}/logs", token=setup.alpha)
    assert own.status == 200 and own.body.startswith(b"alpha-log\n")
    unknown = setup.server.request("GET", "/api/jobs/nosuchjob", token=setup.alpha).json()["error"]
    for path in (f"/api/jobs/{theirs['id']}", f"/api/jobs/{theirs['id']}/logs",
                 f"/api/jobs/{admins['id']}"):
        resp = setup.server.request("GET", path, token=setup.alpha)
        assert resp.status == 404
        hidden = re.sub(r"'[^']+'", "'ID'", resp.json()["error"])
        assert hidden == re.sub(r"'[^']+'", "'ID'", unknown)  # indistinguishable from unknown


def test_project_cannot_cancel_another_owners_job(setup: Setup) -> None:
    theirs = setup.submit(setup.beta, "beta", "sleep 30")
    mine = setup.submit(setup.alpha, "alpha", "sleep 30")
    setup.server.wait_status(str(theirs["id"]), ("running",))
    resp = setup.server.request("POST", f"/api/jobs/{theirs['id']}/cancel", token=setup.alpha)
    assert resp.status == 404
    assert setup.server.job(str(theirs["id"]))["status"] == "running"
    ok = setup.server.request("POST", f"/api/jobs/{mine['id']}/cancel", token=setup.alpha)
    assert ok.status == 202
    assert setup.server.request("POST", f"/api/jobs/{theirs['id']}/cancel").status == 202  # admin
    for job in (mine, theirs):
        assert setup.server.wait_final(str(job["id"]))["status"] == "cancelled"


def test_admin_filters_by_owner_and_projects_cannot(setup: Setup) -> None:
    a = setup.submit(setup.alpha, "alpha")
    b = setup.submit(setup.beta, "beta")
    admins = setup.server.submit("true", "beta")
    assert setup.ids(TOKEN, "?owner=alpha") == [a["id"]]
    assert setup.ids(TOKEN, "?owner=beta&mode=rsync") == [b["id"]]
    assert setup.ids(TOKEN, "?owner=admin") == [admins["id"]]
    assert setup.ids(setup.alpha, "?owner=alpha") == [a["id"]]
    assert setup.server.request("GET", "/api/jobs?owner=beta", token=setup.alpha).status == 403
    assert setup.server.request("GET", "/api/jobs?owner=a%20b").status == 400


# --- workspaces --------------------------------------------------------------------------------

def test_matching_workspaces_are_accepted(setup: Setup) -> None:
    for workspace in ("alpha", "alpha/sub", "shared-x"):
        assert setup.submit(setup.alpha, workspace)["source"] == workspace


def test_other_workspace_is_403_naming_it(setup: Setup) -> None:
    resp = setup.server.request("POST", "/api/jobs/rsync",
                                {"workspace": "beta", "script": "true"}, token=setup.alpha)
    assert resp.status == 403
    assert resp.json()["error"].startswith("workspace 'beta' is not among the workspaces of "
                                           "token 'alpha' (alpha, shared-*)")
    assert setup.ids(TOKEN) == []


def test_symlink_to_another_workspace_is_judged_by_its_target(setup: Setup) -> None:
    (setup.server.workspace_dir / "shared-link").symlink_to(setup.server.workspace_dir / "beta")
    resp = setup.server.request("POST", "/api/jobs/rsync",
                                {"workspace": "shared-link", "script": "true"}, token=setup.alpha)
    assert resp.status == 403
    assert "'shared-link' (resolves to 'beta')" in resp.json()["error"]


def test_a_workspace_swapped_for_a_link_while_queued_is_not_copied(setup: Setup) -> None:
    """The patterns are checked at submission; the job must not copy what the path became."""
    ws = setup.server.workspace_dir
    setup.server.make_workspace("beta", {"secret.txt": "beta's secret\n"})
    setup.server.make_workspace("alpha/x", {"own.txt": "alpha's own\n"})
    blockers = [str(setup.submit(setup.alpha, "alpha", "sleep 60")["id"]) for _ in range(2)]
    for blocker in blockers:
        setup.server.wait_status(blocker, ("running",))
    job = str(setup.submit(setup.alpha, "alpha/x", "cat *.txt")["id"])
    assert setup.server.job(job)["status"] == "queued"
    shutil.rmtree(ws / "alpha" / "x")
    (ws / "alpha" / "x").symlink_to("../beta")  # the rsync user's swap, inside the root
    for blocker in blockers:
        assert setup.server.request("POST", f"/api/jobs/{blocker}/cancel").status == 202
    final = setup.server.wait_final(job)
    assert final["status"] == "error", final
    assert "'alpha/x'" in final["error"] and "link" in final["error"]
    assert b"beta's secret" not in setup.server.log(job)


def test_a_project_cannot_tell_missing_workspaces_from_forbidden_ones(setup: Setup) -> None:
    """Outside its patterns a project token gets one answer, whether the path exists or not."""
    ws = setup.server.workspace_dir
    (ws / "beta" / "deep").mkdir()
    (ws / "alpha" / "to-beta").symlink_to("../beta/deep")
    (ws / "alpha" / "to-beta-missing").symlink_to("../beta/nothing-here")
    (ws / "gamma-link").symlink_to("beta")

    def answer(workspace: str) -> tuple[int, str]:
        resp = setup.server.request("POST", "/api/jobs/rsync",
                                    {"workspace": workspace, "script": "true"}, token=setup.alpha)
        return resp.status, resp.json()["error"].replace(repr(workspace), "'W'")

    others = {w: answer(w) for w in ("beta", "beta/deep", "beta/nothing-here", "gamma-missing",
                                     "gamma-link", "../outside", str(ws.parent))}
    assert len(set(others.values())) == 1, others
    assert others["beta"][0] == 403 and "beta" not in others["gamma-link"][1]
    # Its own links: the same answer whether their target exists.
    own = {w: answer(w)[0] for w in ("alpha/to-beta", "alpha/to-beta-missing")}
    assert own == {"alpha/to-beta": 403, "alpha/to-beta-missing": 403}
    assert answer("alpha/nothing-here")[0] == 400  # its own: missing may be said


def test_upload_and_git_jobs_need_no_workspace(setup: Setup) -> None:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        data = b"echo from upload\n"
        member = tarfile.TarInfo("run.sh")
        member.size = len(data)
        tar.addfile(member, io.BytesIO(data))
    resp = setup.server.request("POST", "/api/jobs/upload?script=sh%20run.sh",
                                gzip.compress(raw.getvalue()),
                                headers={"Content-Type": "application/gzip"}, token=setup.beta)
    assert resp.status == 202 and resp.json()["owner"] == "beta"
    assert setup.server.wait_final(resp.json()["id"])["status"] == "success"
    git = setup.server.request("POST", "/api/jobs/git", {"repo": "https://git.invalid/x.git",
                                                         "script": "true"}, token=setup.beta)
    assert git.status == 202 and git.json()["owner"] == "beta"
    setup.server.wait_final(git.json()["id"])


def test_stats_are_global_and_metrics_admin_only(setup: Setup) -> None:
    setup.server.submit("true", "alpha")
    stats = setup.server.request("GET", "/api/stats", token=setup.alpha)
    assert stats.status == 200 and {"running", "queued", "workers"} <= set(stats.json())
    metrics = setup.server.request("GET", "/metrics", token=setup.alpha)
    assert metrics.status == 403 and "admin token" in metrics.json()["error"]
    assert setup.server.request("GET", "/metrics").status == 200


def test_sighup_takes_up_added_and_removed_tokens(setup: Setup) -> None:
    gamma = add_token(setup.tokens_file, "gamma")
    assert setup.server.request("GET", "/api/jobs", token=gamma).status == 401
    assert token_command(setup.tokens_file, "remove", "beta").returncode == 0
    assert setup.server.proc is not None
    setup.server.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: setup.server.request("GET", "/api/jobs", token=gamma).status == 200, 10,
               "the new token to work")
    assert setup.server.request("GET", "/api/jobs", token=setup.beta).status == 401
    assert "SIGHUP: 2 project tokens" in setup.server.output()


# --- pages -------------------------------------------------------------------------------------

def page(setup: Setup, path: str, token: str) -> str:
    resp = setup.server.request("GET", path, headers=basic(token), token=None)
    assert resp.status == 200, resp.body
    return resp.body.decode()


def test_pages_show_a_project_only_its_jobs(setup: Setup) -> None:
    mine = setup.submit(setup.alpha, "alpha", "sleep 30")
    theirs = setup.submit(setup.beta, "beta", "sleep 30")
    setup.server.wait_status(str(theirs["id"]), ("running",))
    html = page(setup, "/", setup.alpha)
    assert str(mine["id"]) in html and str(theirs["id"]) not in html
    assert "<th>owner</th>" not in html and "name=owner" not in html
    hidden = setup.server.request("GET", f"/jobs/{theirs['id']}", headers=basic(setup.alpha),
                                  token=None)
    assert hidden.status == 404
    admin = page(setup, "/?owner=beta", TOKEN)
    assert "<th>owner</th>" in admin and "<select name=owner>" in admin
    assert "<option selected>beta</option>" in admin
    assert str(theirs["id"]) in admin.split("<h2>Jobs</h2>")[1]
    assert str(mine["id"]) not in admin.split("<h2>Jobs</h2>")[1]
    for job in (mine, theirs):
        setup.server.request("POST", f"/api/jobs/{job['id']}/cancel")


def test_cancel_form_works_only_on_own_jobs(setup: Setup) -> None:
    mine = setup.submit(setup.alpha, "alpha", "sleep 30")
    theirs = setup.submit(setup.beta, "beta", "sleep 30")
    setup.server.wait_status(str(theirs["id"]), ("running",))
    csrf = re.search(r'name=csrf value="([^"]+)"', page(setup, f"/jobs/{mine['id']}", setup.alpha))
    assert csrf
    own = setup.server.request("POST", f"/jobs/{mine['id']}/cancel", body=f"csrf={csrf.group(1)}",
                               headers={**basic(setup.alpha), **FORM}, token=None)
    assert own.status == 303
    # A valid form token for beta's job (as an admin's page would show) is still no licence.
    admin_form = re.search(r'name=csrf value="([^"]+)"', page(setup, f"/jobs/{theirs['id']}", TOKEN))
    assert admin_form
    other = setup.server.request("POST", f"/jobs/{theirs['id']}/cancel",
                                 body=f"csrf={admin_form.group(1)}",
                                 headers={**basic(setup.alpha), **FORM}, token=None)
    assert other.status == 404
    assert setup.server.job(str(theirs["id"]))["status"] == "running"
    assert setup.server.wait_final(str(mine["id"]))["status"] == "cancelled"
    setup.server.request("POST", f"/api/jobs/{theirs['id']}/cancel")
