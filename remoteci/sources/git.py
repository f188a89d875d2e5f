"""Git sources: which URLs and refs a job may name, and a bounded, non-interactive clone of one commit.

Everything a CI user sends reaches git only after validation, and git itself runs boxed in:
only the allowed transports (`-c protocol.*`), no system or user config, no prompts, a private
HOME, `--` before every user value, its own process group killed at the deadline.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from remoteci.errors import ApiError, SourceError

MAX_URL_CHARS = 2048
MAX_REF_CHARS = 255
_ALLOWED = "https://host/org/repo.git, ssh://, git:// or user@host:path"
_SCHEMES = {"https", "ssh", "git"}
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
# git's `<transport>::<address>` form runs a remote helper (`ext::` runs any command): never allowed.
_HELPER = re.compile(r"[A-Za-z0-9+.-]*::")
_SCP = re.compile(r"(?:(?P<user>[^@/:]+)@)?"
                  r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9.-]*):(?P<path>.+)")
_ENCODED_CONTROL = re.compile(r"%(?:[01][0-9A-Fa-f]|7[Ff])")
_SHA = re.compile(r"[0-9a-fA-F]{40}|[0-9a-fA-F]{64}")
_SHORT_SHA = re.compile(r"[0-9a-fA-F]{4,39}")
# The userinfo ends at the LAST `@` of the authority (a password may hold `@`); the authority
# ends at the first `/`, `?` or `#` (or a space, in free text such as git's messages).
_USERINFO = re.compile(r"(?<=://)[^/?#\s]*@")
_ERROR_CHARS = 2000
_CHUNK = 64 * 1024


def validate_git_url(url: str, *, allow_file: bool) -> str:
    """Refuse anything that could make git run a program or read the server's own files."""
    if not isinstance(url, str) or not url:
        raise _bad_url("is required")
    if len(url) > MAX_URL_CHARS:
        raise _bad_url(f"is longer than {MAX_URL_CHARS} characters")
    if url.startswith("-"):
        raise _bad_url("may not start with '-'")
    if _HELPER.match(url):
        raise _bad_url("uses git's `transport::address` form, which runs programs on the server")
    if any(ch.isspace() or not ch.isprintable() for ch in url) or _ENCODED_CONTROL.search(url):
        raise _bad_url("may not contain spaces, newlines or control characters (percent-encode spaces)")
    if scheme := _SCHEME.match(url):
        return _check_scheme_url(url, scheme.group(1).lower(), allow_file)
    if url.startswith("/"):
        if allow_file:
            return url
        raise _bad_url("is a local path; local repositories are disabled on this server "
                       "(the operator can allow them with REMOTE_CI_GIT_ALLOW_FILE=1)")
    scp = _SCP.fullmatch(url)
    if scp and "/" not in url.split(":", 1)[0]:
        if (scp.group("user") or "").startswith("-") or scp.group("path").startswith("-"):
            raise _bad_url("has a user or path starting with '-'")
        return url
    raise _bad_url("is not a URL this server clones")


def _check_scheme_url(url: str, scheme: str, allow_file: bool) -> str:
    if scheme == "file":
        if not allow_file:
            raise _bad_url("is a file:// URL; local repositories are disabled on this server "
                           "(the operator can allow them with REMOTE_CI_GIT_ALLOW_FILE=1)")
        if not url.startswith("file:///"):
            raise _bad_url("must be file:///absolute/path")
        return url
    if scheme == "http":
        raise _bad_url("uses plain http://, which anyone on the way can tamper with")
    if scheme not in _SCHEMES:
        raise _bad_url(f"uses the {scheme}:// scheme")
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - urlsplit checks the port only when it is read
    except ValueError:
        raise _bad_url("has an invalid port") from None
    if not parts.hostname or parts.hostname.startswith("-") or (parts.username or "").startswith("-"):
        raise _bad_url("needs a host name that does not start with '-'")
    if parts.path in ("", "/"):
        raise _bad_url("names no repository path")
    return url


def _bad_url(problem: str) -> ApiError:
    return ApiError(400, f"field 'repo' {problem}; use {_ALLOWED}")


def validate_git_ref(ref: str | None) -> str | None:
    """A branch or tag name by git's check-ref-format rules, or a full commit sha; None for the default."""
    if ref is None or ref == "":
        return None
    if not isinstance(ref, str):
        raise ApiError(400, "field 'ref' must be a string: a branch, a tag or a full commit sha")
    if _SHA.fullmatch(ref):
        return ref.lower()
    problem = _ref_problem(ref)
    if problem:
        shown = repr(ref) if len(ref) <= 100 else "given"
        raise ApiError(400, f"field 'ref' {shown} is not a valid branch or tag name: it {problem}; "
                            "give a branch, a tag or a full 40-character commit sha")
    return ref


def _ref_problem(ref: str) -> str | None:
    """Why git check-ref-format would refuse the name; also a leading '-', which reads as an option."""
    if len(ref) > MAX_REF_CHARS:
        return f"is longer than {MAX_REF_CHARS} characters"
    if ref.startswith("-"):
        return "starts with '-'"
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F or not ch.isprintable() for ch in ref):
        return "contains a control character"
    for bad in (" ", "~", "^", ":", "?", "*", "[", "\\", "..", "@{"):
        if bad in ref:
            return f"contains {bad!r}"
    if ref == "@":
        return "is '@'"
    if ref.startswith("/") or ref.endswith("/") or "//" in ref:
        return "has an empty path component"
    if ref.endswith("."):
        return "ends with '.'"
    for part in ref.split("/"):
        if part.startswith("."):
            return "has a component starting with '.'"
        if part.endswith(".lock"):
            return "has a component ending with '.lock'"
    return None


@dataclass(frozen=True)
class Credential:
    """`user:password@` taken out of an https URL; handed to git through its environment."""

    username: str
    password: str = field(repr=False)

    def to_json(self) -> str:
        return json.dumps({"username": self.username, "password": self.password})

    @classmethod
    def from_json(cls, text: str) -> Credential:
        data = json.loads(text)
        return cls(str(data["username"]), str(data["password"]))


def split_credentials(url: str) -> tuple[str, Credential | None]:
    """The URL without its userinfo, and the credential that was in it (https only).

    A URL's `user:password@` would be in git's command line (world-readable in /proc while
    the clone runs) and in every record that holds the URL; git gets it from a credential
    helper instead. ssh keeps its user (a login name, not a secret) and takes no password;
    git:// has no authentication at all.
    """
    match = _SCHEME.match(url)
    if not match:
        return url, None
    scheme = match.group(1).lower()
    parts = urlsplit(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    if not at:
        return url, None
    if not userinfo:
        return parts._replace(netloc=host).geturl(), None
    if scheme == "ssh" and ":" not in userinfo:
        return url, None
    if scheme != "https":
        raise _bad_url(f"carries a password; {scheme}:// takes none (use a deploy key for ssh, "
                       "or an https URL with a token)")
    user, _, password = userinfo.partition(":")
    return parts._replace(netloc=host).geturl(), Credential(unquote(user), unquote(password))


def git_host(url: str) -> str | None:
    """The host a validated URL clones from, lowercased; None for a local repository."""
    if _SCHEME.match(url):
        return urlsplit(url).hostname or None  # file:// has none
    scp = _SCP.fullmatch(url)
    return scp.group("host").strip("[]").lower() if scp and not url.startswith("/") else None


def redact_url(text: str) -> str:
    """Hide `user:password@` in URLs, so tokens sent in a clone URL never reach a log or an error."""
    return _USERINFO.sub("***@", text)


def clone_git(url: str, ref: str | None, dest: Path, *, timeout: float, allow_file: bool,
              log_fd: int | None = None, credential: Credential | None = None) -> str:
    """Check out one commit of `url` into the existing dir `dest`; return its full sha.

    Raises SourceError with git's own words on failure, or when the whole clone passes `timeout`.
    """
    url, in_url = split_credentials(validate_git_url(url, allow_file=allow_file))
    credential = credential or in_url
    ref = validate_git_ref(ref)
    secrets = _secrets(credential)
    with tempfile.TemporaryDirectory(prefix="remoteci-git-home-") as home:
        git = _Git(dest, _git_env(home, url, credential), _git_config(allow_file),
                   time.monotonic() + timeout, timeout, _Output(log_fd, secrets))
        git.run("init", "--quiet", echo=False)
        git.run("remote", "add", "--", "origin", url, echo=False)
        git.note(f"fetching {ref or 'the default branch'} from {redact_url(url)}")
        target = _fetch(git, ref, url)
        git.run("checkout", "--quiet", "--detach", target, "--", what=f"checking out {ref or 'HEAD'}")
        sha = git.run("rev-parse", "--verify", "--quiet", "HEAD^{commit}", echo=False).split()
    if not sha or not _SHA.fullmatch(sha[-1]):
        raise SourceError(f"git did not report the checked-out commit of {redact_url(url)}")
    return sha[-1]


def _fetch(git: _Git, ref: str | None, url: str) -> str:
    """Fetch only what the job needs; return what to check out."""
    if ref is None:
        git.run("fetch", "--depth", "1", "--", "origin", "HEAD", what=f"fetching {redact_url(url)}")
        return "FETCH_HEAD"
    if not _SHA.fullmatch(ref):
        hint = ("; `ref` must be a branch, a tag or a full 40-character commit sha"
                if _SHORT_SHA.fullmatch(ref) else "")
        git.run("fetch", "--depth", "1", "--", "origin", ref,
                what=f"fetching ref {ref!r} from {redact_url(url)}", hint=hint)
        return "FETCH_HEAD"
    try:
        git.run("fetch", "--depth", "1", "--", "origin", ref)
    except _GitFailed:
        # Older servers (protocol v0) only serve advertised tips; fetch everything and look there.
        git.note("the server refused a fetch by commit sha; fetching all branches and tags")
        git.run("fetch", "--tags", "--", "origin", what=f"fetching {redact_url(url)}")
        git.run("cat-file", "-e", f"{ref}^{{commit}}", echo=False,
                what=f"looking for commit {ref}", hint=f"; commit {ref} is not in {redact_url(url)}")
    return ref


# git runs this with the operation as $1; it answers only `get`, from the environment (readable
# by the server's own user alone, unlike a command line). printf is a shell builtin: no process
# with the password in its arguments.
_HELPER_SCRIPT = ('!f() { test "$1" = get || exit 0; '
                  'printf "username=%s\\npassword=%s\\n" "$REMOTE_CI_GIT_USERNAME" '
                  '"$REMOTE_CI_GIT_PASSWORD"; }; f')


def _git_env(home: str, url: str = "", credential: Credential | None = None) -> dict[str, str]:
    """Built, not inherited: git sees no server secrets and no operator's personal config.

    A credential goes into the environment with a helper scoped to the URL's own scheme and
    host (config through GIT_CONFIG_COUNT, not `-c`, which would show in the command line), so
    a redirect to another host is never given it.
    """
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOME": home,
        "XDG_CONFIG_HOME": home,
        "LANG": "C",
        "LC_ALL": "C",
        "GIT_TERMINAL_PROMPT": "0",  # a repo needing a password fails at once instead of waiting
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        # BatchMode: never prompt; accept-new: a first contact works (like git:// would), a changed
        # host key still fails. ssh reads keys and known_hosts from the service user's passwd home.
        "GIT_SSH_COMMAND": "ssh -o BatchMode=yes -o StrictHostKeyChecking=accept-new",
    }
    if "SSH_AUTH_SOCK" in os.environ:
        env["SSH_AUTH_SOCK"] = os.environ["SSH_AUTH_SOCK"]  # an operator's ssh-agent holds deploy keys
    if credential is not None:
        parts = urlsplit(url)
        env.update({
            "GIT_CONFIG_COUNT": "1",
            "GIT_CONFIG_KEY_0": f"credential.{parts.scheme}://{parts.netloc}.helper",
            "GIT_CONFIG_VALUE_0": _HELPER_SCRIPT,
            "REMOTE_CI_GIT_USERNAME": credential.username,
            "REMOTE_CI_GIT_PASSWORD": credential.password,
        })
    return env


def _git_config(allow_file: bool) -> tuple[str, ...]:
    protocols = ["https", "ssh", "git", *(["file"] if allow_file else [])]
    pairs = ["protocol.allow=never", *(f"protocol.{p}.allow=always" for p in protocols),
             "advice.detachedHead=false", "init.defaultBranch=main", "core.hooksPath=/dev/null"]
    return tuple(arg for pair in pairs for arg in ("-c", pair))


def _secrets(credential: Credential | None) -> tuple[str, ...]:
    """What to blank out of git's output. A token is often sent as the user name; a short one
    is a login name, and replacing it everywhere in git's output would garble the log."""
    if credential is None:
        return ()
    user = credential.username if len(credential.username) >= 8 else ""
    return tuple(s for s in (credential.password, user) if s)


class _GitFailed(SourceError):
    """A git command exited non-zero (its message is in the text)."""


@dataclass
class _Output:
    """Collects git's output: a redacted tail for errors, and a redacted copy for the job log."""

    log_fd: int | None
    secrets: tuple[str, ...]
    echo: bool = True
    tail: bytes = b""
    pending: bytes = b""

    def feed(self, chunk: bytes) -> None:
        self.tail = (self.tail + chunk)[-4 * _ERROR_CHARS:]
        if self.log_fd is None or not self.echo:
            return
        self.pending += chunk
        cut = max(self.pending.rfind(b"\n"), self.pending.rfind(b"\r")) + 1
        if cut == 0 and len(self.pending) < _CHUNK:
            return  # redact whole lines only, so a secret is never split across two writes
        cut = cut or len(self.pending)
        self.write(self.pending[:cut].decode("utf-8", "replace"))
        self.pending = self.pending[cut:]

    def flush(self) -> None:
        if self.pending:
            self.write(self.pending.decode("utf-8", "replace"))
            self.pending = b""

    def write(self, text: str) -> None:
        if self.log_fd is not None:
            data = memoryview(self.redact(text).encode())
            while data:
                data = data[os.write(self.log_fd, data):]

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return redact_url(text)

    def take_tail(self) -> str:
        text = self.redact(self.tail.decode("utf-8", "replace")).strip()
        self.tail = b""
        return text[-_ERROR_CHARS:]


@dataclass
class _Git:
    """One clone: its dir, environment, deadline and output; runs git commands against them."""

    dest: Path
    env: dict[str, str]
    config: tuple[str, ...]
    deadline: float
    timeout: float
    output: _Output

    def note(self, message: str) -> None:
        self.output.write(f"[remote-ci] {message}\n")

    def run(self, *args: str, echo: bool = True, what: str = "", hint: str = "") -> str:
        """Run `git <args>` in dest; return its output, or raise with git's message or at the deadline."""
        self.output.echo = echo
        try:
            code = self._run(args)
        finally:
            self.output.flush()
        text = self.output.take_tail()
        if code != 0:
            raise _GitFailed(f"{what or 'git ' + args[0]} failed: {text or f'git exited {code}'}{hint}")
        return text

    def _run(self, args: tuple[str, ...]) -> int:
        try:
            proc = subprocess.Popen(
                ["git", "-C", str(self.dest), *self.config, *args], env=self.env,
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                start_new_session=True)  # its own process group, so ssh and helpers die with it
        except FileNotFoundError:
            raise SourceError("git is not installed on this server; ask the operator to install it") from None
        assert proc.stdout is not None
        try:
            if not self._pump(proc.pid, proc.stdout.fileno()):
                raise self._expired()
        finally:
            # Also after success: whatever git left behind (an ssh master, a helper) goes with it.
            _kill_group(proc)
            proc.stdout.close()
        return proc.returncode

    def _pump(self, pid: int, out: int) -> bool:
        """Copy git's output until git exits; False if the deadline comes first.

        A pidfd tells when git exits without reaping it, so its group id cannot be reused before
        the group is killed, and a leftover child holding the pipe open cannot stall the clone.
        """
        os.set_blocking(out, False)
        pidfd = os.pidfd_open(pid)
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(out, selectors.EVENT_READ)
                selector.register(pidfd, selectors.EVENT_READ)
                while (remaining := self.deadline - time.monotonic()) > 0:
                    for key, _ in selector.select(remaining):
                        if key.fd == pidfd:
                            self._drain(out)
                            return True
                        if not self._drain(out):
                            selector.unregister(out)  # end of output; git is about to exit
        finally:
            os.close(pidfd)
        return False

    def _drain(self, out: int) -> bool:
        """Copy what the pipe holds now; False at end of output."""
        while True:
            try:
                chunk = os.read(out, _CHUNK)
            except BlockingIOError:
                return True
            if not chunk:
                return False
            self.output.feed(chunk)

    def _expired(self) -> SourceError:
        return SourceError(f"git clone timed out after {self.timeout:g} s; a faster remote, a smaller "
                           "repository or a larger job `timeout` (up to REMOTE_CI_GIT_TIMEOUT) may help")


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL git's process group, then reap git; until then the group id cannot be reused."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
