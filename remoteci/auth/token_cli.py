"""`remoteci.py token add | list | remove`: edit the tokens file without a running server.

The new token goes to stdout once and nowhere else; the file only ever gets its hash.
Every edit holds an exclusive lock on the file, so two operators adding at once cannot
both take a name or lose each other's line.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import secrets
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

from remoteci.auth import tokens

FILE_VARIABLE = "REMOTE_CI_TOKENS_FILE"


class TokenCommandError(Exception):
    """The edit was refused; the message says why and what to do."""


@contextmanager
def _locked(path: Path, create: bool) -> Iterator[int]:
    """The file open for appending, exclusively locked, and still the file at `path`.

    `remove` replaces the file by rename; whoever waited for the lock on the old one must
    start again on the new one, or their line would go to an unlinked file.
    """
    flags = os.O_RDWR | os.O_APPEND | os.O_CLOEXEC | (os.O_CREAT if create else 0)
    while True:
        try:
            fd = os.open(path, flags, 0o600)
        except FileNotFoundError:
            raise TokenCommandError(f"{path} does not exist; `token add` creates it") from None
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        yield fd
    finally:
        os.close(fd)


def _read(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks).decode("utf-8")


def _parse(text: str, path: Path) -> tuple[tokens.ProjectToken, ...]:
    try:
        return tokens.parse_text(text, str(path))
    except tokens.TokensFileError as exc:
        raise TokenCommandError(f"{exc}; fix the file first") from None


def add_token(path: Path, name: str, patterns: str, git_hosts: str = "") -> str:
    """Append a new token's line and return the token, which is shown once and never stored."""
    problem = tokens.check_name(name) or tokens.check_patterns(patterns) or (
        tokens.check_git_hosts(git_hosts) if git_hosts else None)
    if problem:
        raise TokenCommandError(problem)
    with _locked(path, create=True) as fd:
        text = _read(fd)
        if any(t.name == name for t in _parse(text, path)):
            raise TokenCommandError(f"a token named {name!r} already exists in {path}; "
                                    "remove it first or choose another name")
        token = secrets.token_urlsafe(32)
        line = tokens.format_line(name, tokens.hash_token(token.encode()), patterns, git_hosts)
        os.write(fd, (("\n" if text and not text.endswith("\n") else "") + line).encode())
        os.fsync(fd)
    return token


def remove_token(path: Path, name: str) -> None:
    """Rewrite the file without `name`'s line; comments and other lines stay as they were."""
    with _locked(path, create=False) as fd:
        text = _read(fd)
        _parse(text, path)
        lines = text.splitlines(keepends=True)
        kept = [line for line in lines if not _is_line_of(line, name)]
        if len(kept) == len(lines):
            raise TokenCommandError(f"no token named {name!r} in {path}")
        _replace(path, "".join(kept), os.fstat(fd))


def _replace(path: Path, text: str, like: os.stat_result) -> None:
    """Swap in new contents by rename, so the server never reads a half-written file.

    The new file keeps the old one's mode and (when we may) owner: an operator running this
    as root must not leave a file the server's user can no longer read.
    """
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    out = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        try:
            os.fchmod(out, like.st_mode & 0o777)
            with suppress(PermissionError):
                os.fchown(out, like.st_uid, like.st_gid)
            os.write(out, text.encode())
            os.fsync(out)
        finally:
            os.close(out)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _is_line_of(line: str, name: str) -> bool:
    try:
        token = tokens.parse_line(line)
    except ValueError:
        return False
    return token is not None and token.name == name


def list_tokens(path: Path) -> list[tuple[str, str]]:
    try:
        found = tokens.load_tokens_file(path)
    except tokens.TokensFileError as exc:
        raise TokenCommandError(str(exc)) from None
    return [(t.name, ",".join(t.workspaces) + (f"\tgit: {','.join(t.git_hosts)}" if t.git_hosts else ""))
            for t in found]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="remoteci.py token", description="manage project tokens in REMOTE_CI_TOKENS_FILE")
    parser.add_argument("--file", type=Path, default=None,
                        help=f"the tokens file (default: ${FILE_VARIABLE})")
    sub = parser.add_subparsers(dest="action", required=True)
    add = sub.add_parser("add", help="create a token and print it once")
    add.add_argument("name")
    add.add_argument("--workspaces", metavar="GLOB", default=None,
                     help="comma-separated workspace patterns (default: the token's name)")
    add.add_argument("--git-hosts", metavar="GLOB", default="",
                     help="comma-separated hosts its git jobs may clone from (default: any)")
    sub.add_parser("list", help="names and workspace patterns, never hashes")
    remove = sub.add_parser("remove", help="delete a token's line")
    remove.add_argument("name")
    return parser


def main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(argv)
    raw = args.file or os.environ.get(FILE_VARIABLE, "").strip()
    if not raw:
        print(f"remoteci.py token: set {FILE_VARIABLE} or pass --file", file=sys.stderr)
        return 2
    path = Path(raw).expanduser().absolute()
    try:
        if args.action == "add":
            token = add_token(path, args.name, args.workspaces or args.name, args.git_hosts.lower())
            print(token)
            print(f"added {args.name!r} to {path}; the token above is shown only now. "
                  "Send the server SIGHUP (or restart it) to use it.", file=sys.stderr)
        elif args.action == "list":
            for name, patterns in list_tokens(path):
                print(f"{name}\t{patterns}")
        else:
            remove_token(path, args.name)
            print(f"removed {args.name!r} from {path}; send the server SIGHUP (or restart it)",
                  file=sys.stderr)
    except (TokenCommandError, OSError, UnicodeDecodeError) as exc:
        print(f"remoteci.py token {args.action}: {exc}", file=sys.stderr)
        return 1
    return 0
