"""Keeping a job's artifacts when it ends: matching regular files, copied out, never via a link.

The job dir is the job's own playground: it may hold symlinks to /etc, FIFOs that block a reader,
devices, directory links in the middle of a pattern, names that are not UTF-8. So the walk goes
from directory fd to directory fd with O_NOFOLLOW and never resolves a path string; a match is
kept only if it is a regular file both by its directory entry and by fstat of what was opened.
Every part is bounded: entries looked at, directory depth, files and bytes kept.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import shutil
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from remoteci.artifacts.manifest import FILES, Artifact, Manifest, matches, may_contain, write_manifest

MAX_FILES = 1000
MAX_VISITED = 100_000  # directory entries looked at; bounds the walk's time whatever the tree
MAX_DEPTH = 64  # directories below the job dir; deeper ones are not entered
CHUNK = 1024 * 1024
SKIPPED_SHOWN = 5
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO that replaced a file must not wait for a writer that never comes.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


@dataclass(frozen=True)
class Limits:
    max_bytes: int
    max_files: int = MAX_FILES
    max_visited: int = MAX_VISITED


@dataclass
class Collected:
    """What collection kept, and what the job log should say about it."""

    manifest: Manifest = field(default_factory=Manifest)
    skipped: list[str] = field(default_factory=list)  # matches that are not regular UTF-8 files

    def summary(self) -> str:
        kept = self.manifest.files
        text = f"artifacts: kept {len(kept)} file{'s' * (len(kept) != 1)}, " \
               f"{sum(f.size for f in kept)} bytes"
        if self.skipped:
            shown = ", ".join(self.skipped[:SKIPPED_SHOWN])
            more = f" and {len(self.skipped) - SKIPPED_SHOWN} more" \
                if len(self.skipped) > SKIPPED_SHOWN else ""
            text += (f"; skipped {len(self.skipped)} match(es) that are not regular files "
                     f"(symlinks, FIFOs, devices) or not UTF-8 names: {shown}{more}")
        if self.manifest.truncated:
            text += f"; stopped: {self.manifest.truncated}"
        return text


class _Stop(Exception):
    """A cap was reached: collection ends, what was kept so far stays."""


def collect(job_dir: Path, patterns: Sequence[str], dest: Path, limits: Limits) -> Collected:
    """Copy the files of `job_dir` matching `patterns` to `dest/files/` and write the manifest.

    Never raises for anything the job did or for a full disk: the job's own outcome stands, and
    the reason collection stopped is in the result.
    """
    run = _Run([p.split("/") for p in patterns], dest / FILES, limits)
    try:
        shutil.rmtree(dest, ignore_errors=True)  # a leftover of a crashed attempt
        run.files_dir.mkdir(mode=0o700, parents=True)
        root_fd = os.open(job_dir, _DIR_FLAGS)
        try:
            run.walk(root_fd, ())
        finally:
            os.close(root_fd)
    except _Stop as stop:
        run.result.manifest.truncated = str(stop)
    except OSError as exc:
        run.result.manifest.truncated = f"could not keep artifacts: {exc}"
    try:
        write_manifest(dest, run.result.manifest)
    except OSError as exc:
        run.result.manifest = Manifest(truncated=f"could not write the manifest: {exc}")
    return run.result


@dataclass
class _Run:
    patterns: list[list[str]]
    files_dir: Path
    limits: Limits
    result: Collected = field(default_factory=Collected)
    visited: int = 0
    total: int = 0

    def walk(self, dir_fd: int, rel: tuple[str, ...]) -> None:
        budget = self.limits.max_visited - self.visited
        with os.scandir(dir_fd) as it:
            entries = sorted(itertools.islice(it, budget + 1), key=lambda e: e.name)
        for entry in entries:
            self.visited += 1
            if self.visited > self.limits.max_visited:
                raise _Stop(f"looked at {self.limits.max_visited} directory entries; narrow the "
                            "patterns or clean the job dir")
            path = (*rel, entry.name)
            if entry.is_dir(follow_symlinks=False):
                if len(path) <= MAX_DEPTH and any(may_contain(path, p) for p in self.patterns):
                    self._enter(dir_fd, path)
            elif any(matches(path, p) for p in self.patterns):
                self._keep(dir_fd, path, entry.is_file(follow_symlinks=False))

    def _enter(self, dir_fd: int, path: tuple[str, ...]) -> None:
        try:
            fd = os.open(path[-1], _DIR_FLAGS, dir_fd=dir_fd)
        except OSError:
            return  # replaced by a link since the listing, or unreadable: nothing to keep there
        try:
            self.walk(fd, path)
        finally:
            os.close(fd)

    def _keep(self, dir_fd: int, path: tuple[str, ...], is_file: bool) -> None:
        shown = "/".join(path)
        try:
            rel = "/".join(name.encode().decode() for name in path)
        except UnicodeError:
            self.result.skipped.append(ascii(shown))
            return
        if not is_file:
            self.result.skipped.append(rel)
            return
        try:
            src = os.open(path[-1], _FILE_FLAGS, dir_fd=dir_fd)
        except OSError:
            self.result.skipped.append(rel)  # a link since the listing (ELOOP), or unreadable
            return
        try:
            info = os.fstat(src)
            if not stat.S_ISREG(info.st_mode):
                self.result.skipped.append(rel)
                return
            self._check_caps(rel, info.st_size)
            size, digest = self._copy(src, rel)
        finally:
            os.close(src)
        self.total += size
        self.result.manifest.files.append(Artifact(rel, size, digest))

    def _check_caps(self, rel: str, size: int) -> None:
        if len(self.result.manifest.files) >= self.limits.max_files:
            raise _Stop(f"more than {self.limits.max_files} files matched; kept the first "
                        f"{self.limits.max_files} (by path) — narrow the patterns")
        if self.total + size > self.limits.max_bytes:
            raise _Stop(f"{rel} ({size} bytes) would take the artifacts past "
                        f"REMOTE_CI_MAX_ARTIFACT_MB={self.limits.max_bytes // 2**20}; "
                        "it and any later match were not kept")

    def _copy(self, src: int, rel: str) -> tuple[int, str]:
        """Stream the file to its place under files/, hashing on the way."""
        target = self.files_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        size = 0
        dst = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                      0o600)
        try:
            while chunk := os.read(src, CHUNK):
                size += len(chunk)
                if self.total + size > self.limits.max_bytes:  # it grew since fstat
                    os.unlink(target)
                    self._check_caps(rel, size)
                digest.update(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(dst, view):]
        finally:
            os.close(dst)
        return size, digest.hexdigest()
