"""The CI-side client: submit a job, stream its log byte-exact, exit with the job's result.

Standard library only: it must run on any CI runner that has python3, without a venv. Everything
the client itself says goes to stderr, so stdout carries exactly the job's log.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, BinaryIO, NamedTuple, NoReturn
from urllib.parse import quote, urlencode, urlsplit

# A CI step pays the interpreter's start on every run, so this module imports little: ssl,
# tarfile, subprocess, threading, queue and uuid where they are used (only https, an upload,
# artifacts or rsync need them), and records are NamedTuples or plain classes, not dataclasses
# (whose import and class set-up cost ~10 ms, an eighth of a short run).
if TYPE_CHECKING:
    import queue
    import threading
    from types import FrameType

EXIT_SUCCESS = 0
EXIT_ERROR = 1  # the job errored or was cancelled elsewhere, or the server stayed unreachable
EXIT_REFUSED = 2  # nothing ran: bad flags, rsync failed, or the server answered 4xx
EXIT_TIMEOUT = 124  # as timeout(1)
FINAL = ("success", "failed", "timeout", "error", "cancelled")
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
IGNORE_FILE = ".remoteciignore"
CHUNK = 64 * 1024
FOLLOW_READ_TIMEOUT = 60.0  # a quiet job is re-followed this often; a dead link is noticed by then
REQUEST_TIMEOUT = 30.0
POLL_AFTER_MAX = 60.0  # the longest pause a server's X-Log-Poll-After may ask for
TAR_STALL_LIMIT = 600.0
CANCEL_BUDGET = 10.0  # the public CI gives a cancelled step a few seconds before SIGKILL
BACKOFF_FIRST, BACKOFF_MAX = 0.25, 10.0
PROG = "remote-ci"


# --- errors that end the run -------------------------------------------------------------------

class ClientError(Exception):
    """Ends the run with `code` after printing the message, which tells the CI user what to do."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


class Interrupted(BaseException):
    """SIGINT/SIGTERM arrived: the public CI is cancelling this step (a BaseException, like
    KeyboardInterrupt, so no `except Exception` swallows it)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def refused(message: str) -> ClientError:
    return ClientError(message, EXIT_REFUSED)


# --- options -----------------------------------------------------------------------------------

class Source(NamedTuple):
    mode: str  # "rsync" | "upload" | "git"
    value: str  # the workspace name, the directory to upload, or the repository URL
    ref: str | None = None


class Options(NamedTuple):
    server: str
    token: str
    source: Source
    script: str
    timeout: int | None = None
    name: str | None = None
    env: Mapping[str, str] = {}  # never changed: parse_args builds a new one per run
    max_wait: float = 1500.0
    fail_on_wait_timeout: bool = False
    retry_for: float = 300.0
    rsync_to: str | None = None
    source_dir: str = "."
    include_git: bool = False
    artifacts: tuple[str, ...] = ()
    download_artifacts: str | None = None
    webhook: str | None = None
    host: str | None = None  # the worker host (its REMOTE_CI_NODE_NAME) that must run the job
    pipeline: dict[str, Any] | None = None  # --pipeline FILE, read; its `source` may come from flags


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="remoteci.py submit", description=(
        "Run a script on a Remote CI server and behave like a local CI step: stream its log to "
        "stdout and exit with its exit code (124 timeout, 1 error/cancelled, 2 refused)."))
    parser.add_argument("--server", help="server URL, e.g. https://ci.example.org "
                                          "(default: $REMOTE_CI_SERVER)")
    parser.add_argument("--token", help="API token (default: $REMOTE_CI_TOKEN; prefer the "
                                         "variable, so the token stays out of the process list)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--workspace", help="a directory under the server's workspace root "
                                           "(the code is already there, e.g. via --rsync-to)")
    where.add_argument("--upload", metavar="DIR", help="send DIR as a tar.zst if this runner has "
                                                         "zstd and the server takes it, else a tar.gz "
                                                         f"(honours {IGNORE_FILE}; skips .git)")
    where.add_argument("--git", nargs="?", const="", metavar="URL",
                       help="let the server clone URL; without a value, this CI's own repository "
                            "(GITHUB_SERVER_URL/GITHUB_REPOSITORY or CI_REPOSITORY_URL)")
    parser.add_argument("--ref", help="branch, tag or sha for --git (default with a bare --git: "
                                      "GITHUB_SHA or CI_COMMIT_SHA)")
    parser.add_argument("--script", help="the shell command(s) to run (required without --pipeline)")
    parser.add_argument("--pipeline", metavar="FILE",
                        help="run the pipeline in FILE (JSON: name, stages of jobs, and source "
                             "unless a source flag gives it); each log line is prefixed [job]")
    parser.add_argument("--timeout", type=int, help="job time limit in seconds")
    parser.add_argument("--name", help="a label shown in the server's job list")
    parser.add_argument("--env", action="append", default=[], metavar="K=V",
                        help="pass a variable to the script; a bare K takes its value from here")
    parser.add_argument("--max-wait", type=float, default=1500.0, metavar="SEC",
                        help="stop following after SEC seconds, leaving the job running (1500)")
    parser.add_argument("--fail-on-wait-timeout", action="store_true",
                        help="exit 1 instead of 0 when --max-wait ends the wait")
    parser.add_argument("--retry-for", type=float, default=300.0, metavar="SEC",
                        help="keep retrying an unreachable server (or 502/503/504) this long (300); "
                             "a busy server's poll answers do not count")
    parser.add_argument("--rsync-to", metavar="DEST", help="first `rsync -az --delete` the source "
                        "dir to DEST (user@host:/var/ci-workspace/NAME); --workspace defaults to NAME")
    parser.add_argument("--source-dir", default=".", metavar="DIR",
                        help="what --rsync-to copies (default: the current directory)")
    parser.add_argument("--include-git", action="store_true",
                        help="also send .git with --upload/--rsync-to (for `git describe` and such)")
    parser.add_argument("--artifacts", action="append", default=[], metavar="GLOB",
                        help="keep files matching GLOB (relative to the job dir, ** spans dirs) "
                             "when the job ends; repeatable")
    parser.add_argument("--download-artifacts", metavar="DIR",
                        help="after the job ends, download its artifacts and unpack them into DIR")
    parser.add_argument("--webhook", metavar="URL",
                        help="the server POSTs the job's final state to URL (a signed JSON body); "
                             "its host must be in the server's REMOTE_CI_WEBHOOK_ALLOW")
    parser.add_argument("--host", metavar="NAME",
                        help="run the job only on the worker host NAME (its REMOTE_CI_NODE_NAME), "
                             "e.g. the one that holds the --workspace")
    return parser


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise refused(f"{message}; see `remoteci.py submit --help`")


def parse_args(argv: Sequence[str], environ: Mapping[str, str]) -> Options:
    """Flags and environment into Options; raise ClientError(2) naming the fix."""
    args = build_parser().parse_args(list(argv))
    server = (args.server or environ.get("REMOTE_CI_SERVER", "")).strip().rstrip("/")
    if not server:
        raise refused("no server: pass --server https://your-ci-host or set REMOTE_CI_SERVER")
    if urlsplit(server).scheme not in ("http", "https") or not urlsplit(server).netloc:
        raise refused(f"--server {server!r} must be an http:// or https:// URL")
    token = (args.token or environ.get("REMOTE_CI_TOKEN", "")).strip()
    if not token:
        raise refused("no API token: set REMOTE_CI_TOKEN from your CI's secret store "
                      "(GitHub: secrets.REMOTE_CI_TOKEN; GitLab: a masked CI/CD variable)")
    for flag, value in (("--max-wait", args.max_wait), ("--retry-for", args.retry_for)):
        if value < 0:
            raise refused(f"{flag} must be a number of seconds, 0 or more")
    if args.timeout is not None and args.timeout < 1:
        raise refused("--timeout must be a whole number of seconds, 1 or more")
    pipeline = None
    if args.pipeline is not None:
        pipeline = read_pipeline(args.pipeline, args)
        source = Source("file", "") if "source" in pipeline and not _has_source_flag(args) \
            else _source(args, environ)
    elif not args.script:
        raise refused("--script is required: the shell command(s) to run (or --pipeline FILE)")
    else:
        source = _source(args, environ)
    return Options(
        server=server, token=token, source=source, script=args.script or "", pipeline=pipeline,
        timeout=args.timeout, name=args.name, env=parse_env_pairs(args.env, environ),
        max_wait=args.max_wait, fail_on_wait_timeout=args.fail_on_wait_timeout,
        retry_for=args.retry_for, rsync_to=args.rsync_to, source_dir=args.source_dir,
        include_git=args.include_git, artifacts=tuple(args.artifacts),
        download_artifacts=args.download_artifacts, webhook=args.webhook, host=args.host or None)


def _has_source_flag(args: argparse.Namespace) -> bool:
    return any(v is not None for v in (args.workspace, args.upload, args.git, args.rsync_to))


def read_pipeline(path: str, args: argparse.Namespace) -> dict[str, Any]:
    """The pipeline file as a JSON object; per-job settings live in it, not in flags."""
    per_job = [flag for flag, value in (("--script", args.script), ("--timeout", args.timeout),
                                        ("--env", args.env), ("--artifacts", args.artifacts),
                                        ("--download-artifacts", args.download_artifacts),
                                        ("--host", args.host))
               if value]
    if per_job:
        raise refused(f"{per_job[0]} does not go with --pipeline: set it per job in the file")
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except OSError as exc:
        raise refused(f"cannot read --pipeline {path!r}: {exc.strerror}") from None
    except ValueError as exc:
        raise refused(f"--pipeline {path!r} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise refused(f"--pipeline {path!r} must hold a JSON object with \"stages\"")
    for key, value in (("name", args.name), ("webhook", args.webhook)):
        if value:
            data[key] = value
    return data


def _source(args: argparse.Namespace, environ: Mapping[str, str]) -> Source:
    if args.ref is not None and args.git is None:
        raise refused("--ref only applies to --git")
    if args.git is not None:
        if args.rsync_to:
            raise refused("--rsync-to goes with --workspace, not --git")
        if args.git:
            return Source("git", args.git, args.ref)
        repo, sha = git_source_from_ci(environ)
        return Source("git", repo, args.ref or sha)
    if args.upload is not None:
        if args.rsync_to:
            raise refused("--rsync-to goes with --workspace, not --upload")
        if not os.path.isdir(args.upload):
            raise refused(f"--upload {args.upload!r} is not a directory; pass the directory "
                          "to send, e.g. --upload .")
        return Source("upload", args.upload)
    workspace = args.workspace or (workspace_from_rsync_dest(args.rsync_to) if args.rsync_to else None)
    if not workspace:
        raise refused("say where the code is: --workspace NAME (already on the server), "
                      "--rsync-to DEST, --upload DIR, or --git [URL]")
    return Source("rsync", workspace)


def workspace_from_rsync_dest(dest: str) -> str | None:
    """user@host:/var/ci-workspace/proj -> proj; a dest with no directory name gives None."""
    path = dest.split(":", 1)[1] if ":" in dest else dest
    name = os.path.basename(path.rstrip("/"))
    return name or None


def git_source_from_ci(environ: Mapping[str, str]) -> tuple[str, str | None]:
    """This CI run's repository and commit, from GitHub Actions' or GitLab CI's variables."""
    if environ.get("GITHUB_REPOSITORY"):
        base = environ.get("GITHUB_SERVER_URL", "https://github.com").rstrip("/")
        return f"{base}/{environ['GITHUB_REPOSITORY']}.git", environ.get("GITHUB_SHA") or None
    if environ.get("CI_REPOSITORY_URL"):
        return environ["CI_REPOSITORY_URL"], environ.get("CI_COMMIT_SHA") or None
    raise refused("--git without a URL needs GitHub Actions (GITHUB_REPOSITORY) or GitLab CI "
                  "(CI_REPOSITORY_URL) variables; outside them pass --git URL")


def parse_env_pairs(pairs: Sequence[str], environ: Mapping[str, str]) -> dict[str, str]:
    """--env K=V items into a dict; a bare K copies this process's K (handy for CI secrets)."""
    env: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not ENV_NAME_RE.fullmatch(key):
            raise refused(f"--env {pair!r}: {key!r} is not a variable name "
                          "(letters, digits and _, not starting with a digit); write --env NAME=value")
        if not sep:
            if key not in environ:
                raise refused(f"--env {key}: {key} is not set here; write --env {key}=value")
            value = environ[key]
        env[key] = value
    return env


# --- .remoteciignore ---------------------------------------------------------------------------

class IgnoreRule(NamedTuple):
    regex: re.Pattern[str]
    negate: bool
    dir_only: bool


def parse_ignore(text: str) -> list[IgnoreRule]:
    """gitignore-like lines: #comments, !negation, trailing / for dirs, a / inside anchors, * ? ** []."""
    rules = []
    for raw in text.splitlines():
        line = raw.rstrip(" ") if not raw.endswith("\\ ") else raw
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        if negate or line.startswith(("\\!", "\\#")):  # \! and \# escape a literal first char
            line = line[1:]
        dir_only = line.endswith("/")
        line = line.rstrip("/")
        if not line:
            continue
        anchored = "/" in line
        body = _glob_regex(line.lstrip("/"))
        prefix = "" if anchored else "(?:.*/)?"
        rules.append(IgnoreRule(re.compile(f"{prefix}{body}", re.DOTALL), negate, dir_only))
    return rules


def _glob_regex(pattern: str) -> str:
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and (end := pattern.find("]", i + 2)) != -1:
            inner = pattern[i + 1:end]
            inner = "^" + inner[1:] if inner.startswith("!") else inner
            out.append("[" + inner.replace("\\", "\\\\") + "]")
            i = end + 1
        elif pattern[i] == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return "".join(out)


def is_ignored(relpath: str, is_dir: bool, rules: Sequence[IgnoreRule]) -> bool:
    """The last matching rule decides, as in git."""
    ignored = False
    for rule in rules:
        if rule.dir_only and not is_dir:
            continue
        if rule.regex.fullmatch(relpath):
            ignored = not rule.negate
    return ignored


def files_to_send(root: str, rules: Sequence[IgnoreRule], include_git: bool) -> Iterator[str]:
    """Relative paths to archive, sorted; an ignored directory is not entered (as in git)."""
    for current, dirs, files in os.walk(root):
        rel_dir = os.path.relpath(current, root)
        rel_dir = "" if rel_dir == "." else rel_dir + "/"
        kept_dirs = []
        for name in sorted(dirs):
            rel = rel_dir + name
            if (name == ".git" and not include_git) or is_ignored(rel, True, rules):
                continue
            if os.path.islink(os.path.join(current, name)):
                yield rel  # a symlink to a dir goes in as a link, never followed
                continue
            kept_dirs.append(name)
            yield rel
        dirs[:] = kept_dirs
        for name in sorted(files):
            rel = rel_dir + name
            if not (name == ".git" and not include_git) and not is_ignored(rel, False, rules):
                yield rel


def load_ignore_rules(root: str) -> list[IgnoreRule]:
    try:
        with open(os.path.join(root, IGNORE_FILE), encoding="utf-8") as f:
            return parse_ignore(f.read())
    except FileNotFoundError:
        return []


# --- the tar.gz stream -------------------------------------------------------------------------

class _QueueWriter:
    """A write-only file for tarfile that hands chunks to the HTTP sender with backpressure."""

    def __init__(self, chunks: queue.Queue[bytes | BaseException | None], stop: threading.Event):
        self.chunks, self.stop = chunks, stop

    def write(self, data: bytes) -> int:
        import queue

        while not self.stop.is_set():
            try:
                self.chunks.put(bytes(data), timeout=1)
                return len(data)
            except queue.Full:
                continue
        raise OSError("upload abandoned")


def tar_gz_stream(root: str, include_git: bool) -> Iterator[bytes]:
    """The directory as a tar.gz, produced while it is sent: no temp file, bounded memory."""
    return tar_stream(root, include_git, "gzip")


def tar_stream(root: str, include_git: bool, compression: str) -> Iterator[bytes]:
    """The directory as a tar compressed with `compression` ("gzip", or "zstd": see
    tar_zstd_stream), produced while it is sent: no temp file, bounded memory."""
    if compression == "zstd":
        return tar_zstd_stream(root, include_git)
    return _tarfile_gz_stream(root, include_git)


def _tarfile_gz_stream(root: str, include_git: bool) -> Iterator[bytes]:
    import queue
    import tarfile
    import threading

    rules = load_ignore_rules(root)
    chunks: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=16)
    stop = threading.Event()

    def produce() -> None:
        try:
            with tarfile.open(fileobj=_QueueWriter(chunks, stop), mode="w|gz",  # type: ignore[call-overload]
                              format=tarfile.PAX_FORMAT) as tar:
                for rel in files_to_send(root, rules, include_git):
                    tar.add(os.path.join(root, rel), arcname=rel, recursive=False)
            chunks.put(None)
        except BaseException as exc:  # handed to the sender, which raises it in the main thread
            if not stop.is_set():
                chunks.put(exc)

    threading.Thread(target=produce, name="tar", daemon=True).start()
    try:
        while (item := _next_chunk(chunks, root)) is not None:
            if isinstance(item, BaseException):
                raise _archive_error(root, item)
            yield item
    finally:
        stop.set()


def tar_zstd_stream(root: str, include_git: bool) -> Iterator[bytes]:
    """The directory as a tar.zst made by the tar and zstd programs (`tar | zstd -T0`).

    zstd compresses on every core, so packing is then bound by reading the files, and
    tarfile's per-file work in Python would make it 3x slower (bench/README.md). The file list
    is still ours (.remoteciignore with negations, .git skipped): tar gets it NUL-separated on
    stdin with --no-recursion, and archives exactly those names.
    """
    import subprocess
    import tempfile
    import threading

    rules = load_ignore_rules(root)
    messages = tempfile.TemporaryFile()  # noqa: SIM115 - closed in every path below
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(subprocess.Popen(
            ["tar", "-C", root, "--no-recursion", "--null", "-T", "-", "-cf", "-"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=messages))
        tar_out = procs[0].stdout
        assert tar_out is not None
        procs.append(subprocess.Popen(["zstd", "-T0", "-q", "-c"], stdin=tar_out,
                                      stdout=subprocess.PIPE, stderr=messages))
        tar_out.close()  # zstd holds it now; tar sees a broken pipe if zstd dies
    except OSError as exc:
        for proc in procs:
            proc.kill()
            proc.wait()
        messages.close()
        raise refused(f"cannot start tar and zstd ({exc}); fix them, or uninstall zstd to "
                      "send a tar.gz") from None
    tar, zstd = procs
    names, packed = tar.stdin, zstd.stdout
    assert names is not None and packed is not None
    failures: list[BaseException] = []

    def feed() -> None:
        try:
            for rel in files_to_send(root, rules, include_git):
                names.write(os.fsencode(rel) + b"\0")
        except BaseException as exc:  # raised in the sender once the output ends
            failures.append(exc)
        finally:
            try:
                names.close()
            except OSError:
                pass

    feeder = threading.Thread(target=feed, name="tar-names", daemon=True)
    feeder.start()
    try:
        while chunk := os.read(packed.fileno(), CHUNK):
            yield chunk
        feeder.join(TAR_STALL_LIMIT)
        codes = (tar.wait(), zstd.wait())
        if failures and not isinstance(failures[0], BrokenPipeError):
            raise _archive_error(root, failures[0])
        if codes != (0, 0):
            messages.seek(0)
            said = messages.read(2000).decode(errors="replace").strip().replace("\n", "; ")
            raise refused(f"could not archive {root!r} (tar exit {codes[0]}, zstd exit "
                          f"{codes[1]}): {said or 'no message'}; fix the file or list it in "
                          f"{IGNORE_FILE}")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        packed.close()
        messages.close()


def _archive_error(root: str, exc: BaseException) -> ClientError:
    return refused(f"could not archive {root!r}: {exc}; fix the file or list it in {IGNORE_FILE}")


def _next_chunk(chunks: queue.Queue[bytes | BaseException | None], root: str) -> bytes | BaseException | None:
    import queue

    try:
        return chunks.get(timeout=TAR_STALL_LIMIT)
    except queue.Empty:
        raise ClientError(f"archiving {root!r} made no progress for {TAR_STALL_LIMIT:g} s; is a "
                          f"file on a hung mount? List it in {IGNORE_FILE}", EXIT_ERROR) from None


# --- HTTP --------------------------------------------------------------------------------------

class Reply(NamedTuple):
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return {}

    def error_text(self) -> str:
        data = self.json()
        if isinstance(data, dict) and isinstance(data.get("error"), str):
            return str(data["error"])
        return self.body[:500].decode(errors="replace").strip() or "(no message)"


class Retryable(Exception):
    """The server could not be reached or answered 502/503/504: worth trying again."""


class Api(NamedTuple):
    server: str
    token: str

    def url(self, path: str) -> str:
        return self.server + path

    def connect(self, timeout: float) -> http.client.HTTPConnection:
        parts = urlsplit(self.server)
        host = parts.hostname or ""
        if parts.scheme == "https":
            import ssl

            return http.client.HTTPSConnection(host, parts.port, timeout=timeout,
                                               context=ssl.create_default_context())
        return http.client.HTTPConnection(host, parts.port, timeout=timeout)

    def open(self, method: str, path: str, body: Any = None, headers: Mapping[str, str] | None = None,
             timeout: float = REQUEST_TIMEOUT) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """Send a request and read the status line; raise Retryable for what retrying may fix."""
        conn = self.connect(max(timeout, 0.1))
        all_headers = {"Authorization": f"Bearer {self.token}", "User-Agent": "remote-ci-client",
                       **(headers or {})}
        try:
            conn.request(method, urlsplit(self.server).path.rstrip("/") + path, body=body,
                         headers=all_headers)
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise Retryable(f"{type(exc).__name__}: {exc}") from None
        if resp.status in (502, 503, 504):
            detail = Reply(resp.status, resp.headers, resp.read(64 * 1024)).error_text()
            conn.close()
            raise Retryable(f"HTTP {resp.status}: {detail}")
        return conn, resp

    def call(self, method: str, path: str, body: Any = None, headers: Mapping[str, str] | None = None,
             timeout: float = REQUEST_TIMEOUT) -> Reply:
        conn, resp = self.open(method, path, body, headers, timeout)
        try:
            return Reply(resp.status, resp.headers, resp.read())
        except (OSError, http.client.HTTPException) as exc:
            raise Retryable(f"{type(exc).__name__}: {exc}") from None
        finally:
            conn.close()


class Patience:
    """Bounds every wait: the overall --max-wait and the --retry-for budget since the last success."""

    def __init__(self, deadline: float, retry_for: float):
        self.deadline = deadline  # time.monotonic() after which we stop waiting for the job
        self.retry_for = retry_for
        self.last_ok = time.monotonic()
        self.delay = BACKOFF_FIRST

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def ok(self) -> None:
        self.last_ok, self.delay = time.monotonic(), BACKOFF_FIRST

    def failed(self, what: str, reason: str) -> None:
        """Sleep before the next try; raise ClientError(1) once the retry budget is spent."""
        spent = time.monotonic() - self.last_ok
        if spent >= self.retry_for:
            raise ClientError(f"gave up {what} after {spent:.0f} s of failures ({reason}); check "
                              "that the server is up, or raise --retry-for", EXIT_ERROR)
        say(f"{what} failed ({reason}); retrying in {self.delay:g} s")
        pause = min(self.delay, self.retry_for - spent)
        if self.remaining() > 0:  # past --max-wait (e.g. 0) only the retry budget bounds a submission
            pause = min(pause, self.remaining())
        time.sleep(max(0.0, pause))
        self.delay = min(self.delay * 2, BACKOFF_MAX)


def with_retries(patience: Patience, what: str, action: Callable[[], Reply],
                 interrupted: Callable[[], int | None] = lambda: None) -> Reply:
    """`action` until it answers; a signal held meanwhile (see Run) ends the retries."""
    while True:
        try:
            reply = action()
        except Retryable as exc:
            signum = interrupted()
            if signum is not None:
                raise Interrupted(signum) from None
            patience.failed(what, str(exc))
            continue
        patience.ok()
        return reply


# --- submitting --------------------------------------------------------------------------------

def submission_fields(opts: Options) -> dict[str, Any]:
    fields: dict[str, Any] = {"script": opts.script}
    if opts.timeout is not None:
        fields["timeout"] = opts.timeout
    if opts.name:
        fields["name"] = opts.name
    if opts.env:
        fields["env"] = dict(opts.env)
    if opts.artifacts:
        fields["artifacts"] = list(opts.artifacts)
    if opts.webhook:
        fields["webhook"] = opts.webhook
    if opts.host:
        fields["host"] = opts.host
    return fields


def upload_query(opts: Options) -> str:
    """Raw-body uploads carry the fields in the query string; env and artifacts are JSON there."""
    fields = submission_fields(opts)
    for key in ("env", "artifacts"):
        if key in fields:
            fields[key] = json.dumps(fields[key])
    return urlencode(fields, quote_via=quote)


def submit(api: Api, opts: Options, patience: Patience,
           interrupted: Callable[[], int | None] = lambda: None) -> dict[str, Any]:
    """POST the job; a 4xx is final (exit 2), a network error or 503 is retried.

    Every retry carries the same Idempotency-Key, so a reply lost on the way back never makes
    the server run the job twice.
    """
    source = opts.source
    import uuid

    key = {"Idempotency-Key": str(uuid.uuid4())}
    if source.mode == "upload":
        compression = upload_compression(api)
        say(f"packing {source.value} as tar.{'zst' if compression == 'zstd' else 'gz'}")

        def send() -> Reply:
            return api.call("POST", "/api/jobs/upload?" + upload_query(opts),
                            body=tar_stream(source.value, opts.include_git, compression),
                            headers={"Content-Type": f"application/{compression}", **key}, timeout=300)
    else:
        payload = submission_fields(opts)
        if source.mode == "git":
            payload.update({"repo": source.value, **({"ref": source.ref} if source.ref else {})})
        else:
            payload["workspace"] = source.value
        data = json.dumps(payload).encode()

        def send() -> Reply:
            return api.call("POST", f"/api/jobs/{source.mode}", body=data,
                            headers={"Content-Type": "application/json", **key})
    reply = with_retries(patience, "submitting the job", send, interrupted)
    if reply.status == 202 and isinstance(reply.json().get("id"), str):
        return dict(reply.json())
    hint = {401: " (check the REMOTE_CI_TOKEN secret)",
            413: f" (send less: list build outputs in {IGNORE_FILE})"}.get(reply.status, "")
    if 400 <= reply.status < 500:
        raise refused(f"the server refused the job (HTTP {reply.status}): {reply.error_text()}{hint}")
    raise ClientError(f"the server failed to accept the job (HTTP {reply.status}): "
                      f"{reply.error_text()}; tell the server's operator", EXIT_ERROR)


def upload_compression(api: Api) -> str:
    """zstd when this runner has it (and tar) and the server says it unpacks it (GET
    /api/health): it packs on every core, where gzip packs a big tree at ~35 MB/s on one."""
    import shutil

    if shutil.which("zstd") is None or shutil.which("tar") is None:
        return "gzip"
    try:
        offered = api.call("GET", "/api/health", timeout=10).json()
    except Retryable:
        return "gzip"  # the submission's own retries will say what is wrong
    formats = offered.get("uploads") if isinstance(offered, dict) else None
    return "zstd" if isinstance(formats, list) and "zstd" in formats else "gzip"


def run_rsync(opts: Options, patience: Patience) -> None:
    """Copy the source dir to the workspace host; honours .remoteciignore like --upload does."""
    import subprocess

    assert opts.rsync_to is not None
    command = ["rsync", "-az", "--delete", "--filter", f":- {IGNORE_FILE}"]
    if not opts.include_git:
        command += ["--exclude", "/.git"]
    command += [opts.source_dir.rstrip("/") + "/", opts.rsync_to]
    say(f"rsync {opts.source_dir} -> {opts.rsync_to}")
    try:
        done = subprocess.run(command, stdin=subprocess.DEVNULL, timeout=max(1.0, patience.remaining()),
                              check=False)
    except FileNotFoundError:
        raise refused("rsync is not installed on this runner; install it (apt-get install -y "
                      "rsync) or use --upload DIR instead") from None
    except subprocess.TimeoutExpired:
        raise ClientError("rsync did not finish within --max-wait; is the host reachable?",
                          EXIT_ERROR) from None
    if done.returncode != 0:
        raise refused(f"rsync to {opts.rsync_to} failed with exit code {done.returncode}; check the "
                      "SSH key (RSYNC_RSH='ssh -i KEY') and that the destination is allowed (ci/README.md)")


# --- following ---------------------------------------------------------------------------------

class Cut(Retryable):
    """A log body broke off after `offset` bytes had been written out."""

    def __init__(self, message: str, offset: int, timed_out: bool):
        super().__init__(message)
        self.offset = offset
        self.timed_out = timed_out


def follow_log(api: Api, job_id: str, out: BinaryIO, patience: Patience) -> tuple[str | None, int]:
    """Copy the job's log to `out` from byte 0, across reconnects, never losing or repeating a
    byte; return (the final status, or None when --max-wait ran out; the bytes written)."""
    offset = 0
    while patience.remaining() > 0:
        try:
            offset, status, poll_after = _copy_log(api, job_id, offset, True, out, patience)
            if poll_after is not None:
                # A busy server (or a job far back in the queue) answered with what there is
                # and when to ask again, instead of a stream. Not a failure: no retry budget.
                if status in FINAL:
                    return status, offset
                time.sleep(max(0.0, min(poll_after, patience.remaining())))
                continue
            # The stream ended: the job is final, or the server stopped or cut a long stream. A
            # snapshot from our offset tells which, and carries any last bytes.
            offset, status, _ = _copy_log(api, job_id, offset, False, out, patience)
        except Cut as cut:
            offset = cut.offset
            if not cut.timed_out:  # a timeout is only a quiet job: ask again at once
                patience.failed("following the log", str(cut))
            continue
        except Retryable as exc:
            patience.failed("following the log", str(exc))
            continue
        if status in FINAL:
            return status, offset
    return None, offset


def _copy_log(api: Api, job_id: str, offset: int, follow: bool, out: BinaryIO,
              patience: Patience) -> tuple[int, str, float | None]:
    """One GET of the log from `offset`, written to `out`; returns (new offset, X-Job-Status,
    X-Log-Poll-After when the server answered a follow with a snapshot instead of a stream)."""
    path = f"/api/jobs/{job_id}/logs?offset={offset}" + ("&follow=1" if follow else "")
    conn, resp = api.open("GET", path, timeout=max(0.1, min(FOLLOW_READ_TIMEOUT, patience.remaining())))
    try:
        if resp.status != 200:
            reply = Reply(resp.status, resp.headers, resp.read(64 * 1024))
            raise ClientError(f"the server would not show the log (HTTP {resp.status}): "
                              f"{reply.error_text()}", EXIT_ERROR)
        poll_after = _seconds(resp.headers.get("X-Log-Poll-After")) if follow else None
        # A stream's X-Log-Offset is where it starts; anything else would duplicate or lose bytes.
        # (A snapshot's is where it ends: checked by the bytes read.)
        started = resp.headers.get("X-Log-Offset", str(offset))
        if follow and poll_after is None and started != str(offset):
            raise ClientError(f"the server resumed the log at byte {started}, not {offset}; "
                              f"read the whole log at {api.url(f'/jobs/{job_id}')}", EXIT_ERROR)
        patience.ok()
        while chunk := _read_some(resp, offset):
            _write_out(out, chunk)
            offset += len(chunk)
        return offset, resp.headers.get("X-Job-Status", ""), poll_after
    finally:
        conn.close()


def _seconds(value: str | None) -> float | None:
    """X-Log-Poll-After as a pause, bounded: a broken value means ask again in a second."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return 1.0
    return min(seconds, POLL_AFTER_MAX) if seconds >= 0.1 else 1.0  # NaN is not >= 0.1 either


def _read_some(resp: http.client.HTTPResponse, offset: int) -> bytes:
    try:
        return resp.read1(CHUNK)
    except (OSError, http.client.HTTPException) as exc:
        raise Cut(f"{type(exc).__name__}: {exc}", offset, isinstance(exc, socket.timeout)) from None


def _write_out(out: BinaryIO, chunk: bytes) -> None:
    """Flushed at once: the CI shows the log live. A closed stdout is not a network error."""
    try:
        out.write(chunk)
        out.flush()
    except OSError as exc:
        raise ClientError(f"cannot write the log to stdout ({exc}); is the output piped into a "
                          "command that exited?", EXIT_ERROR) from None


def exit_code_for(job: Mapping[str, Any]) -> int:
    """The job's result as this step's exit code, so the public CI shows red or green."""
    status = job.get("status")
    if status == "success":
        return EXIT_SUCCESS
    if status == "timeout":
        return EXIT_TIMEOUT
    if status == "failed":
        code = job.get("exit_code")
        if isinstance(code, int) and code < 0:
            return min(255, 128 - code)  # killed by a signal, as a shell reports it
        return code if isinstance(code, int) and 0 < code <= 255 else EXIT_ERROR
    return EXIT_ERROR


# --- the run -----------------------------------------------------------------------------------

def say(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


class Run:
    """What the signal path needs: the job to cancel, if one was created.

    A signal while the submission is on its way is held (`pending`) until the server answers:
    the job may be accepted already, and only its id lets us cancel it. A second one stops at once.
    """

    def __init__(self, api: Api):
        self.api = api
        self.job_id: str | None = None
        self.pipeline_id: str | None = None  # with --pipeline: what a signal cancels
        self.submitting = False
        self.pending: int | None = None

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.submitting and self.pending is None:
            self.pending = signum
            say(f"got {signal.Signals(signum).name}: cancelling the job once the server has "
                "answered the submission (send it again to stop at once)")
            return
        raise Interrupted(signum)

    def job_url(self) -> str:
        return self.api.url(f"/jobs/{self.job_id}")


def run(opts: Options, state: Run, out: BinaryIO) -> int:
    if opts.pipeline is not None:
        return run_pipeline(opts, state, out)
    patience = Patience(time.monotonic() + opts.max_wait, opts.retry_for)
    if opts.rsync_to:
        run_rsync(opts, patience)
    state.submitting = True
    try:
        job = submit(state.api, opts, patience, lambda: state.pending)
        state.job_id = job["id"]  # before submitting ends: a signal never finds the id missing
    finally:
        state.submitting = False
    if state.pending is not None:
        raise Interrupted(state.pending)
    position = f", queue position {job['queue_position']}" if job.get("queue_position") else ""
    say(f"job {state.job_id} {job.get('status', 'queued')}{position}: {state.job_url()}")
    if job.get("waiting_for"):
        say(f"it waits for {job['waiting_for']}")
    follow_path = f"/api/jobs/{state.job_id}/logs?follow=1"
    status, offset = follow_log(state.api, state.job_id, out, patience)
    if status is None:
        say(f"stopped waiting after --max-wait {opts.max_wait:g} s; the job goes on. Follow it at "
            f"{state.job_url()} or: curl -fsS -N -H \"Authorization: Bearer $REMOTE_CI_TOKEN\" "
            f"'{state.api.url(follow_path)}&offset={offset}'")
        return EXIT_ERROR if opts.fail_on_wait_timeout else EXIT_SUCCESS
    final = with_retries(patience, "reading the job's result",
                         lambda: state.api.call("GET", f"/api/jobs/{state.job_id}")).json()
    code = exit_code_for(final)
    detail = f" ({final['error']})" if final.get("error") else ""
    say(f"job {state.job_id} ended {status}{detail}, exit code {code}: {state.job_url()}")
    if opts.download_artifacts is not None:
        try:
            count = download_artifacts(state.api, state.job_id, opts.download_artifacts, patience)
            say(f"{count} artifact(s) unpacked into {opts.download_artifacts}")
        except ClientError as exc:
            say(str(exc))
            return code or exc.code  # a green job whose outputs are missing is not green
    return code


# --- pipelines ---------------------------------------------------------------------------------

PIPELINE_POLL = 0.5  # seconds between looks at a pipeline's jobs and their logs
PIPELINE_FINAL = ("success", "failed", "cancelled")


def submit_pipeline(api: Api, opts: Options, patience: Patience,
                    interrupted: Callable[[], int | None] = lambda: None) -> dict[str, Any]:
    """POST the pipeline: JSON with its source, or multipart with the code as `code`."""
    import uuid

    assert opts.pipeline is not None
    spec = dict(opts.pipeline)
    source = opts.source
    key = {"Idempotency-Key": str(uuid.uuid4())}
    if source.mode == "upload":
        spec.pop("source", None)
        compression = upload_compression(api)
        say(f"packing {source.value} as tar.{'zst' if compression == 'zstd' else 'gz'}")
        boundary = f"remote-ci-{uuid.uuid4().hex}"
        suffix = "zst" if compression == "zstd" else "gz"
        head = (f'--{boundary}\r\nContent-Disposition: form-data; name="pipeline"\r\n'
                "Content-Type: application/json\r\n\r\n").encode() + json.dumps(spec).encode() + (
            f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="code"; '
            f'filename="code.tar.{suffix}"\r\nContent-Type: application/{compression}\r\n\r\n'
        ).encode()
        tail = f"\r\n--{boundary}--\r\n".encode()

        def body() -> Iterator[bytes]:
            yield head
            yield from tar_stream(source.value, opts.include_git, compression)
            yield tail

        def send() -> Reply:
            return api.call("POST", "/api/pipelines", body=body(), timeout=300,
                            headers={"Content-Type": f"multipart/form-data; boundary={boundary}",
                                     **key})
    else:
        if source.mode == "git":
            spec["source"] = {"mode": "git", "repo": source.value,
                              **({"ref": source.ref} if source.ref else {})}
        elif source.mode == "rsync":
            spec["source"] = {"mode": "rsync", "workspace": source.value}
        data = json.dumps(spec).encode()

        def send() -> Reply:
            return api.call("POST", "/api/pipelines", body=data, timeout=300,
                            headers={"Content-Type": "application/json", **key})
    reply = with_retries(patience, "submitting the pipeline", send, interrupted)
    if reply.status == 202 and isinstance(reply.json().get("id"), str):
        return dict(reply.json())
    if 400 <= reply.status < 500:
        raise refused(f"the server refused the pipeline (HTTP {reply.status}): {reply.error_text()}")
    raise ClientError(f"the server failed to accept the pipeline (HTTP {reply.status}): "
                      f"{reply.error_text()}; tell the server's operator", EXIT_ERROR)


class PrefixedLog:
    """One job's log, copied line by line with `[name] ` in front; a last partial line is
    held until it ends or the job does."""

    def __init__(self, name: str, out: BinaryIO):
        self.prefix = f"[{name}] ".encode()
        self.out = out
        self.offset = 0
        self.partial = b""

    def feed(self, chunk: bytes) -> None:
        self.offset += len(chunk)
        *lines, self.partial = (self.partial + chunk).split(b"\n")
        if lines:
            _write_out(self.out, b"".join(self.prefix + line + b"\n" for line in lines))

    def close(self) -> None:
        if self.partial:
            _write_out(self.out, self.prefix + self.partial + b"\n")
            self.partial = b""


def _read_log_once(api: Api, job_id: str, log: PrefixedLog) -> str:
    """Copy what is new in the job's log; return its status as the log answer gave it (read
    before the log's size, so a final status means the whole log has been copied)."""
    conn, resp = api.open("GET", f"/api/jobs/{job_id}/logs?offset={log.offset}")
    try:
        if resp.status != 200:
            reply = Reply(resp.status, resp.headers, resp.read(64 * 1024))
            raise ClientError(f"the server would not show the log of job {job_id} "
                              f"(HTTP {resp.status}): {reply.error_text()}", EXIT_ERROR)
        status = resp.headers.get("X-Job-Status", "")
        while chunk := _read_some(resp, log.offset):
            log.feed(chunk)
        return status
    finally:
        conn.close()


def follow_pipeline(api: Api, pipeline_id: str, out: BinaryIO,
                    patience: Patience) -> dict[str, Any] | None:
    """Print every started job's log, prefixed by its name, until the pipeline and its jobs
    have ended; return the final pipeline, or None when --max-wait ran out."""
    logs: dict[str, PrefixedLog] = {}
    done: set[str] = set()
    while patience.remaining() > 0:
        try:
            pipeline = api.call("GET", f"/api/pipelines/{pipeline_id}").json()
            started = [job_id for stage in pipeline["stages"] if stage["status"] != "waiting"
                       for job_id in stage["jobs"]]
            for job_id in started:
                if job_id in done:
                    continue
                if job_id not in logs:
                    job = api.call("GET", f"/api/jobs/{job_id}").json()
                    if job.get("started_at") is None and job.get("status") in FINAL:
                        done.add(job_id)  # cancelled before it ran: no log to show
                        continue
                    logs[job_id] = PrefixedLog(str(job.get("name") or job_id), out)
                if _read_log_once(api, job_id, logs[job_id]) in FINAL:
                    logs[job_id].close()
                    done.add(job_id)
            patience.ok()
        except (Retryable, Cut) as exc:
            patience.failed("following the pipeline", str(exc))
            continue
        # A pipeline ends in the same step that writes its unstarted jobs as cancelled: once it
        # is final, every stage shows as started, and every job's status is final or running.
        if pipeline["status"] in PIPELINE_FINAL and set(started) <= done:
            return dict(pipeline)
        time.sleep(max(0.0, min(PIPELINE_POLL, patience.remaining())))
    return None


def pipeline_exit_code(api: Api, pipeline: Mapping[str, Any]) -> tuple[int, dict[str, Any] | None]:
    """0 when the pipeline succeeded; else the code of the job that failed first (of those that
    ran), or 1 when none did (say, it was cancelled while jobs were queued)."""
    if pipeline.get("status") == "success":
        return EXIT_SUCCESS, None
    ended = [api.call("GET", f"/api/jobs/{job_id}").json()
             for stage in pipeline["stages"] for job_id in stage["jobs"]]
    ran = [j for j in ended if j.get("started_at") and j.get("status") != "success"]
    if not ran:
        return EXIT_ERROR, None
    first = min(ran, key=lambda j: str(j.get("finished_at")))
    return exit_code_for(first), first


def run_pipeline(opts: Options, state: Run, out: BinaryIO) -> int:
    patience = Patience(time.monotonic() + opts.max_wait, opts.retry_for)
    if opts.rsync_to:
        run_rsync(opts, patience)
    state.submitting = True
    try:
        created = submit_pipeline(state.api, opts, patience, lambda: state.pending)
        state.pipeline_id = created["id"]
    finally:
        state.submitting = False
    if state.pending is not None:
        raise Interrupted(state.pending)
    url = state.api.url(f"/pipelines/{state.pipeline_id}")
    stages = " -> ".join(str(s["name"]) for s in created["stages"])
    say(f"pipeline {state.pipeline_id} running ({stages}): {url}")
    final = follow_pipeline(state.api, created["id"], out, patience)
    if final is None:
        say(f"stopped waiting after --max-wait {opts.max_wait:g} s; the pipeline goes on: {url}")
        return EXIT_ERROR if opts.fail_on_wait_timeout else EXIT_SUCCESS
    while True:
        try:
            code, first = pipeline_exit_code(state.api, final)
            break
        except Retryable as exc:
            patience.failed("reading the pipeline's result", str(exc))
    culprit = f"; first failed: {first.get('name')} ({first.get('status')})" if first else ""
    say(f"pipeline {state.pipeline_id} ended {final['status']}{culprit}, exit code {code}: {url}")
    return code


# --- artifacts ---------------------------------------------------------------------------------

def _cut_download() -> tuple[type[BaseException], ...]:
    """What a broken connection looks like while reading a tar.gz off it: worth starting over."""
    import ssl
    import tarfile

    return (ConnectionError, TimeoutError, socket.timeout, ssl.SSLError,
            http.client.HTTPException, tarfile.ReadError, EOFError)


def download_artifacts(api: Api, job_id: str, dest: str, patience: Patience) -> int:
    """Stream the job's artifacts.tar.gz into `dest`; a cut download starts over."""
    path = f"/api/jobs/{job_id}/artifacts.tar.gz"
    while True:
        try:
            conn, resp = api.open("GET", path, timeout=FOLLOW_READ_TIMEOUT)
        except Retryable as exc:
            patience.failed("downloading the artifacts", str(exc))
            continue
        try:
            if resp.status != 200:
                reply = Reply(resp.status, resp.headers, resp.read(64 * 1024))
                raise ClientError(f"the server would not send the artifacts (HTTP {resp.status}): "
                                  f"{reply.error_text()}", EXIT_ERROR)
            return unpack_artifacts(resp, dest)
        except _cut_download() as exc:
            patience.failed("downloading the artifacts", f"{type(exc).__name__}: {exc}")
        except OSError as exc:  # not the network: the download dir itself
            raise ClientError(f"cannot unpack the artifacts into {dest!r} ({exc}); give "
                              "--download-artifacts a writable directory", EXIT_ERROR) from None
        finally:
            conn.close()


def unpack_artifacts(stream: BinaryIO, dest: str) -> int:
    """Unpack a tar.gz stream member by member: only regular files and directories, only
    inside `dest` (tarfile's `data` filter where this Python has it, our own check always)."""
    import tarfile

    os.makedirs(dest, exist_ok=True)
    safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    count = 0
    with tarfile.open(fileobj=stream, mode="r|gz") as tar:
        for member in tar:
            parts = member.name.replace("\\", "/").split("/")
            if not (member.isfile() or member.isdir()) or member.name.startswith("/") or ".." in parts:
                raise ClientError(f"the artifacts archive holds {member.name!r}, which is not a "
                                  "plain file inside the download dir; nothing more unpacked",
                                  EXIT_ERROR)
            tar.extract(member, dest, **safe)  # type: ignore[arg-type]
            count += member.isfile()
    return count


def cancel_remote(state: Run) -> None:
    """Best effort, bounded: the CI is about to kill us, the remote job must not run on."""
    if state.pipeline_id is not None:  # the pipeline, and with it every job it has left
        state.job_id = state.pipeline_id
    if state.job_id is None:
        say("interrupted before the server accepted the job; nothing to cancel")
        return
    kind = "pipelines" if state.pipeline_id is not None else "jobs"
    deadline = time.monotonic() + CANCEL_BUDGET
    last = "no time left"
    while time.monotonic() < deadline:
        try:
            reply = state.api.call("POST", f"/api/{kind}/{state.job_id}/cancel",
                                   timeout=max(0.5, deadline - time.monotonic()))
        except Retryable as exc:
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
            last = str(exc)
            continue
        if reply.status in (200, 202):
            say(f"cancelled job {state.job_id}: {state.job_url()}")
        else:
            say(f"cancel of job {state.job_id} answered HTTP {reply.status}: {reply.error_text()}")
        return
    say(f"could not cancel job {state.job_id} ({last}); cancel it at {state.job_url()}")


def main(argv: Sequence[str]) -> int:
    try:
        opts = parse_args(argv, os.environ)
    except ClientError as exc:
        say(str(exc))
        return exc.code
    state = Run(Api(opts.server, opts.token))
    previous = {sig: signal.signal(sig, state.on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return run(opts, state, sys.stdout.buffer)
    except ClientError as exc:
        say(str(exc))
        return exc.code
    except Interrupted as stop:
        for sig in previous:  # a second signal must not abort the cancel half-way
            signal.signal(sig, signal.SIG_IGN)
        say(f"got {signal.Signals(stop.signum).name}: cancelling the remote job")
        cancel_remote(state)
        return 128 + stop.signum
    finally:
        for sig, handler in previous.items():
            if signal.getsignal(sig) is not signal.SIG_IGN:
                signal.signal(sig, handler)


def exit_now(code: int) -> NoReturn:
    """Exit without the interpreter's teardown, which costs a short run ~10 ms (a third of what
    the bash client takes in all): every connection is closed by now and the only thread left
    is a finished or abandoned tar producer, so only the output buffers need flushing."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


if __name__ == "__main__":
    # A vendored copy of this one file is a complete client: `python3 remote_ci_client.py --server …`.
    exit_now(main(sys.argv[1:]))
