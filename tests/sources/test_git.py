"""Git sources: hostile URLs and refs are refused; clones fetch the asked commit, within the time limit."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from remoteci.errors import ApiError, SourceError
from remoteci.sources.git import clone_git, validate_git_ref, validate_git_url

GIT_ENV = {
    "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/nonexistent", "LANG": "C",
    "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
    "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com",
}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], env=GIT_ENV, check=True,
                          capture_output=True, text=True).stdout.strip()


@dataclass(frozen=True)
class Origin:
    """A repository with an old commit, a main tip, an annotated tag and a side branch."""

    base: Path
    path: Path
    old: str
    main: str
    feature: str


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Origin:
    base = tmp_path_factory.mktemp("served")
    repo = base / "repo"
    repo.mkdir()
    git(repo, "init", "--quiet", "--initial-branch=main")

    def commit(content: str) -> str:
        (repo / "version.txt").write_text(content)
        git(repo, "add", "version.txt")
        git(repo, "commit", "--quiet", "-m", content)
        return git(repo, "rev-parse", "HEAD")

    old = commit("old")
    main = commit("main")
    git(repo, "tag", "-a", "v1", "-m", "release 1")
    git(repo, "checkout", "--quiet", "-b", "feature")
    feature = commit("feature")
    git(repo, "checkout", "--quiet", "main")
    return Origin(base, repo, old, main, feature)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def daemon_url(origin: Origin) -> Iterator[str]:
    """`git daemon` on loopback serving the origin, so git:// is tested over a real socket."""
    port = free_port()
    proc = subprocess.Popen(
        ["git", "daemon", "--reuseaddr", f"--base-path={origin.base}", "--export-all",
         "--listen=127.0.0.1", f"--port={port}", str(origin.base)],
        env=GIT_ENV, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("git daemon did not start") from None
                try:
                    proc.wait(timeout=0.05)  # bounded poll that also notices a daemon that died
                    raise RuntimeError("git daemon exited")
                except subprocess.TimeoutExpired:
                    pass
        yield f"git://127.0.0.1:{port}/repo"
    finally:
        os.killpg(proc.pid, 9)
        proc.wait()


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    path = tmp_path / "checkout"
    path.mkdir()
    return path


def checked_out(dest: Path) -> str:
    return (dest / "version.txt").read_text()


# ---- clones over git:// ----

def test_clone_of_a_branch_returns_its_tip(origin: Origin, daemon_url: str, dest: Path) -> None:
    sha = clone_git(daemon_url, "feature", dest, timeout=30, allow_file=False)
    assert sha == origin.feature
    assert checked_out(dest) == "feature"


def test_clone_of_an_annotated_tag_checks_out_its_commit(origin: Origin, daemon_url: str, dest: Path) -> None:
    assert clone_git(daemon_url, "v1", dest, timeout=30, allow_file=False) == origin.main
    assert checked_out(dest) == "main"


def test_clone_of_an_old_commit_by_full_sha(origin: Origin, daemon_url: str, dest: Path) -> None:
    assert clone_git(daemon_url, origin.old, dest, timeout=30, allow_file=False) == origin.old
    assert checked_out(dest) == "old"


def test_clone_without_ref_takes_the_default_branch(origin: Origin, daemon_url: str, dest: Path) -> None:
    assert clone_git(daemon_url, None, dest, timeout=30, allow_file=False) == origin.main
    assert checked_out(dest) == "main"


def test_clone_is_shallow(origin: Origin, daemon_url: str, dest: Path) -> None:
    clone_git(daemon_url, "main", dest, timeout=30, allow_file=False)
    assert git(dest, "rev-list", "--count", "HEAD") == "1"


def test_progress_goes_to_the_log_fd(daemon_url: str, dest: Path, tmp_path: Path) -> None:
    log = tmp_path / "job.log"
    fd = os.open(log, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        clone_git(daemon_url, "v1", dest, timeout=30, allow_file=False, log_fd=fd)
    finally:
        os.close(fd)
    text = log.read_text()
    assert "[remote-ci] fetching v1 from git://127.0.0.1" in text
    assert "tag               v1" in text


# ---- failures carry git's own message ----

def test_unknown_ref_fails_with_gits_message(daemon_url: str, dest: Path) -> None:
    with pytest.raises(SourceError, match="couldn't find remote ref no-such-branch"):
        clone_git(daemon_url, "no-such-branch", dest, timeout=30, allow_file=False)


def test_abbreviated_sha_gets_a_hint(daemon_url: str, dest: Path) -> None:
    with pytest.raises(SourceError, match="full 40-character commit sha"):
        clone_git(daemon_url, "deadbeef", dest, timeout=30, allow_file=False)


def test_unknown_sha_fails_after_the_full_fetch_fallback(daemon_url: str, dest: Path) -> None:
    with pytest.raises(SourceError, match=f"commit {'ab' * 20} is not in git://"):
        clone_git(daemon_url, "ab" * 20, dest, timeout=30, allow_file=False)


def test_closed_port_fails_and_credentials_are_redacted(dest: Path, tmp_path: Path) -> None:
    url = f"https://ci-user:s3cret-token@127.0.0.1:{free_port()}/org/repo.git"
    log = tmp_path / "job.log"
    fd = os.open(log, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with pytest.raises(SourceError) as caught:
            clone_git(url, "main", dest, timeout=30, allow_file=False, log_fd=fd)
    finally:
        os.close(fd)
    message = str(caught.value)
    assert "Failed to connect" in message or "Connection refused" in message, message
    assert "s3cret" not in message and "s3cret" not in log.read_text()


def test_credentials_never_show_in_a_command_line_during_the_clone(dest: Path) -> None:
    """/proc/<pid>/cmdline is world-readable: a password there is everyone's on the host."""
    secret = "s3cret-in-cmdline"
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        url = f"https://ci-user:{secret}@127.0.0.1:{listener.getsockname()[1]}/org/repo.git"
        failures: list[BaseException] = []

        def clone() -> None:
            try:
                clone_git(url, "main", dest, timeout=20, allow_file=False)
            except SourceError as exc:
                failures.append(exc)

        thread = threading.Thread(target=clone)
        thread.start()
        listener.settimeout(15)
        conn, _ = listener.accept()  # git's https helper is connected: it runs now
        with conn:
            assert processes_mentioning(secret) == []
        thread.join(20)
    assert failures and secret not in str(failures[0])


def test_the_credential_helper_answers_only_for_the_url_host(tmp_path: Path) -> None:
    """git asks the helper built from the URL; another host (a redirect) gets nothing."""
    from remoteci.sources import git as gitsource

    clean, credential = gitsource.split_credentials("https://u%40corp:p%3Ass@git.example.com/r.git")
    assert clean == "https://git.example.com/r.git" and credential is not None
    env = gitsource._git_env(str(tmp_path), clean, credential)

    def fill(host: str) -> str:
        return subprocess.run(["git", *gitsource._git_config(False), "credential", "fill"],
                              input=f"protocol=https\nhost={host}\n\n", env=env,
                              capture_output=True, text=True, timeout=10, check=False).stdout

    assert "username=u@corp\npassword=p:ss\n" in fill("git.example.com")
    assert "password=p:ss" not in fill("evil.example.com")


@pytest.mark.parametrize(("url", "shown"), [
    ("https://u:p@ss@host/r.git", "https://***@host/r.git"),
    ("fatal: https://tok@host/r.git gone; mail a@b", "fatal: https://***@host/r.git gone; mail a@b"),
    ("https://host/r@x.git", "https://host/r@x.git"),
])
def test_redaction_ends_the_userinfo_at_the_last_at_before_the_host(url: str, shown: str) -> None:
    from remoteci.sources.git import redact_url

    assert redact_url(url) == shown


def test_a_silent_server_times_out_and_git_is_killed(dest: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)  # the kernel accepts the connection; nobody ever answers
        url = f"git://127.0.0.1:{listener.getsockname()[1]}/silent"
        started = time.monotonic()
        with pytest.raises(SourceError, match="git clone timed out after 2 s"):
            clone_git(url, "main", dest, timeout=2, allow_file=False)
        assert time.monotonic() - started < 5
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(5)
            while conn.recv(4096):  # EOF: the git that held the connection is gone
                pass
    assert not processes_mentioning(url)


def processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and text.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            pass
    return found


# ---- file:// only when the operator allows it ----

def test_file_url_clones_when_allowed(origin: Origin, dest: Path) -> None:
    assert clone_git(f"file://{origin.path}", "main", dest, timeout=30, allow_file=True) == origin.main


def test_file_url_is_refused_by_default(origin: Origin, dest: Path) -> None:
    with pytest.raises(ApiError, match="REMOTE_CI_GIT_ALLOW_FILE"):
        clone_git(f"file://{origin.path}", "main", dest, timeout=30, allow_file=False)
    assert not (dest / ".git").exists()


# ---- URL validation ----

@pytest.mark.parametrize("url", [
    "https://github.com/org/repo.git",
    "https://x-access-token:abc@github.com/org/repo.git",
    "ssh://git@example.com:2222/org/repo.git",
    "git://example.com/repo",
    "git@github.com:org/repo.git",
    "example.com:org/repo.git",
    "git@[::1]:repo.git",
])
def test_remote_urls_are_accepted(url: str) -> None:
    assert validate_git_url(url, allow_file=False) == url


@pytest.mark.parametrize("url", ["file:///srv/git/repo", "/srv/git/repo"])
def test_local_urls_need_the_operator_flag(url: str) -> None:
    assert validate_git_url(url, allow_file=True) == url
    with pytest.raises(ApiError, match="REMOTE_CI_GIT_ALLOW_FILE"):
        validate_git_url(url, allow_file=False)


HOSTILE = [
    "",
    "-uhack",
    "--upload-pack=touch {tmp}/pwned-upload-pack",
    "ext::sh -c touch% {tmp}/pwned-ext",
    "ext::sh",
    "fd::3",
    "transport::x",
    "https::github.com/org/repo",
    "http://example.com/repo.git",
    "ftp://example.com/repo.git",
    "https://example.com/repo.git\n--upload-pack=touch {tmp}/pwned-newline",
    "https://example.com/re po.git",
    "https://example.com/repo%0a.git",
    "ssh://-oProxyCommand=touch%20{tmp}/pwned-proxy/repo",
    "ssh://-oProxyCommand=x@host/repo",
    "-oProxyCommand=x@host:repo",
    "host:-repo",
    "https://example.com:99999/repo.git",
    "https://example.com",
    "file://host/etc",
    "relative/path",
    "./repo",
    "h" * 2049,
]


@pytest.mark.parametrize("allow_file", [False, True])
@pytest.mark.parametrize("template", HOSTILE)
def test_hostile_urls_are_refused_before_git_runs(template: str, allow_file: bool, tmp_path: Path) -> None:
    url = template.format(tmp=tmp_path)
    dest = tmp_path / "checkout"
    dest.mkdir()
    with pytest.raises(ApiError) as caught:
        clone_git(url, None, dest, timeout=5, allow_file=allow_file)
    assert caught.value.status == 400
    assert "field 'repo'" in caught.value.message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkout"]
    assert not any(dest.iterdir())


@pytest.mark.parametrize("url", ["file:///etc", "/etc"])
def test_server_paths_are_refused_without_the_flag(url: str) -> None:
    with pytest.raises(ApiError) as caught:
        validate_git_url(url, allow_file=False)
    assert caught.value.status == 400


# ---- ref validation ----

@pytest.mark.parametrize("ref", ["main", "feature/login-form", "v1.2.3", "release_2026", "HEAD", "ünïcode"])
def test_branch_and_tag_names_are_accepted(ref: str) -> None:
    assert validate_git_ref(ref) == ref


def test_full_shas_are_accepted_and_lowercased() -> None:
    assert validate_git_ref("AB" * 20) == "ab" * 20
    assert validate_git_ref("0f" * 32) == "0f" * 32


@pytest.mark.parametrize("ref", [None, ""])
def test_no_ref_means_the_default_branch(ref: str | None) -> None:
    assert validate_git_ref(ref) is None


@pytest.mark.parametrize("ref", [
    "-x", "--upload-pack=x", "a..b", "a b", "a\nb", "a\tb", "a\x7fb", "x~1", "x^", "a:b", "a?", "a*",
    "a[b", "a\\b", "a@{1}", "@", "/a", "a/", "a//b", "a.", ".a", "a/.b", "a.lock", "a/b.lock/c", "r" * 256,
])
def test_malformed_refs_are_refused(ref: str) -> None:
    with pytest.raises(ApiError) as caught:
        validate_git_ref(ref)
    assert caught.value.status == 400
    assert "field 'ref'" in caught.value.message


@pytest.mark.parametrize("url", ["ssh://git:pw@host/org/repo.git", "git://u:pw@host/repo"])
def test_a_password_where_it_cannot_be_used_is_refused(url: str) -> None:
    from remoteci.sources.git import split_credentials

    with pytest.raises(ApiError, match="carries a password") as caught:
        split_credentials(validate_git_url(url, allow_file=False))
    assert caught.value.status == 400


def test_ssh_keeps_its_login_name() -> None:
    from remoteci.sources.git import split_credentials

    assert split_credentials("ssh://git@host/org/repo.git") == ("ssh://git@host/org/repo.git", None)
    assert split_credentials("git@host:org/repo.git") == ("git@host:org/repo.git", None)
    assert split_credentials("https://@host/r.git") == ("https://host/r.git", None)
