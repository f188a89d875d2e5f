"""Collecting artifacts from a hostile job dir: real files, links, FIFOs; no server needed."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from remoteci.artifacts.collector import Limits, collect
from remoteci.artifacts.manifest import read_manifest

MB = 1024 * 1024


def kept(dest: Path) -> dict[str, bytes]:
    files = dest / "files"
    return {str(p.relative_to(files)): p.read_bytes() for p in sorted(files.rglob("*")) if p.is_file()}


def test_matching_regular_files_are_copied_with_their_sha256(tmp_path: Path) -> None:
    job = tmp_path / "job"
    (job / "dist").mkdir(parents=True)
    (job / "dist" / "a.whl").write_bytes(b"wheel" * 1000)
    (job / "dist" / "notes.txt").write_bytes(b"not asked for")
    (job / "reports" / "x" / "y").mkdir(parents=True)
    (job / "reports" / "x" / "y" / "t.xml").write_bytes(b"<ok/>")
    result = collect(job, ["dist/*.whl", "reports/**/*.xml"], tmp_path / "out", Limits(MB))
    assert kept(tmp_path / "out") == {"dist/a.whl": b"wheel" * 1000, "reports/x/y/t.xml": b"<ok/>"}
    manifest = read_manifest(tmp_path, "out")
    assert [(f.path, f.size, f.sha256) for f in manifest.files] == [
        ("dist/a.whl", 5000, hashlib.sha256(b"wheel" * 1000).hexdigest()),
        ("reports/x/y/t.xml", 5, hashlib.sha256(b"<ok/>").hexdigest())]
    assert manifest.truncated is None
    assert result.summary() == "artifacts: kept 2 files, 5005 bytes"


def test_links_fifos_and_link_dirs_are_never_followed(tmp_path: Path) -> None:
    job = tmp_path / "job"
    (job / "dist").mkdir(parents=True)
    (job / "dist" / "real.txt").write_bytes(b"real")
    os.symlink("/etc/passwd", job / "dist" / "passwd.txt")
    os.symlink("real.txt", job / "dist" / "inside.txt")  # even a link to inside is skipped
    os.mkfifo(job / "dist" / "pipe.txt")
    outside = tmp_path / "outside"
    (outside / "x").mkdir(parents=True)
    (outside / "x" / "secret.txt").write_bytes(b"secret")
    os.symlink(outside, job / "dist" / "linkdir")  # a directory link in the middle of the pattern
    result = collect(job, ["dist/*.txt", "dist/*/*/*.txt", "**/*.txt"], tmp_path / "out", Limits(MB))
    assert kept(tmp_path / "out") == {"dist/real.txt": b"real"}
    assert sorted(result.skipped) == ["dist/inside.txt", "dist/passwd.txt", "dist/pipe.txt"]
    assert "skipped 3 match(es)" in result.summary()


def test_a_name_that_is_not_utf8_is_skipped(tmp_path: Path) -> None:
    job = tmp_path / "job"
    job.mkdir()
    with open(os.fsencode(job) + b"/bad-\xff.log", "wb") as f:
        f.write(b"x")
    result = collect(job, ["*.log"], tmp_path / "out", Limits(MB))
    assert result.manifest.files == [] and len(result.skipped) == 1


def test_the_count_cap_keeps_the_first_files_and_says_so(tmp_path: Path) -> None:
    job = tmp_path / "job"
    job.mkdir()
    for i in range(5):
        (job / f"f{i}.out").write_bytes(b"x")
    result = collect(job, ["*.out"], tmp_path / "out", Limits(MB, max_files=3))
    assert [f.path for f in result.manifest.files] == ["f0.out", "f1.out", "f2.out"]
    assert "more than 3 files matched" in str(result.manifest.truncated)
    assert "more than 3 files matched" in (read_manifest(tmp_path, "out").truncated or "")


def test_the_bytes_cap_stops_before_the_file_that_would_pass_it(tmp_path: Path) -> None:
    job = tmp_path / "job"
    job.mkdir()
    (job / "a.bin").write_bytes(b"a" * 600)
    (job / "b.bin").write_bytes(b"b" * 600)
    result = collect(job, ["*.bin"], tmp_path / "out", Limits(1000))
    assert kept(tmp_path / "out") == {"a.bin": b"a" * 600}
    assert "b.bin (600 bytes) would take the artifacts past" in result.summary()


def test_the_walk_is_bounded_by_entries_visited(tmp_path: Path) -> None:
    job = tmp_path / "job"
    job.mkdir()
    for i in range(50):
        (job / f"n{i:02d}").write_bytes(b"")
    result = collect(job, ["**"], tmp_path / "out", Limits(MB, max_visited=10))
    assert len(result.manifest.files) == 10
    assert "looked at 10 directory entries" in str(result.manifest.truncated)


def test_a_missing_job_dir_keeps_nothing_and_says_why(tmp_path: Path) -> None:
    result = collect(tmp_path / "gone", ["**"], tmp_path / "out", Limits(MB))
    assert result.manifest.files == [] and "could not keep artifacts" in result.summary()
    assert read_manifest(tmp_path, "out").files == []
