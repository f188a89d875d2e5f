"""zstd uploads: unpacked through the zstd program with the very rules of a gzip upload."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from remoteci.errors import SourceError
from remoteci.sources.archives import extract_archive, sniff_archive
from tests.helpers import Server

MB = 1024 * 1024


def tar_bytes(members: list[tuple[str, bytes | None, bytes]]) -> bytes:
    """(name, data or None for a symlink, link target) -> an uncompressed tar."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data, target in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type, info.linkname = tarfile.SYMTYPE, target.decode()
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def zstd_file(path: Path, data: bytes) -> Path:
    path.write_bytes(subprocess.run(["zstd", "-q", "-c"], input=data, stdout=subprocess.PIPE,
                                    check=True).stdout)
    return path


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    (tmp_path / "dest").mkdir()
    (tmp_path / "sentinel").mkdir()
    return tmp_path / "dest"


def no_zstd_left() -> bool:
    """No zstd process of ours outlives an extraction."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                with open(f"/proc/{entry}/comm") as f:
                    comm = f.read().strip()
            except OSError:
                continue
            if comm == "zstd" and int(fields[1]) == os.getpid() and fields[0] != "Z":
                return False
    return True


def test_a_tar_zst_unpacks_like_a_tar_gz(tmp_path: Path, dest: Path) -> None:
    archive = zstd_file(tmp_path / "a.tar.zst", tar_bytes([
        ("src/mod.py", b"print(1)\n", b""), ("link", None, b"src/mod.py")]))
    sniff_archive(archive)
    extract_archive(archive, dest, max_bytes=MB, max_members=10)
    assert (dest / "src/mod.py").read_bytes() == b"print(1)\n"
    assert os.readlink(dest / "link") == "src/mod.py"
    assert no_zstd_left()


@pytest.mark.parametrize(("members", "names"), [
    ([("../evil", b"x", b"")], "../evil"),
    ([("/etc/evil", b"x", b"")], "/etc/evil"),
    ([("out", None, b"../sentinel"), ("out/keep.txt", b"pwned", b"")], "out"),
])
def test_a_hostile_tar_zst_is_refused_naming_the_member(tmp_path: Path, dest: Path,
                                                        members: list[tuple[str, bytes | None, bytes]],
                                                        names: str) -> None:
    archive = zstd_file(tmp_path / "a.tar.zst", tar_bytes(members))
    with pytest.raises(SourceError) as caught:
        extract_archive(archive, dest, max_bytes=MB, max_members=10)
    assert repr(names) in str(caught.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tar.zst", "dest", "sentinel"]
    assert list((tmp_path / "sentinel").iterdir()) == []
    assert no_zstd_left()


def test_a_truncated_tar_zst_is_refused(tmp_path: Path, dest: Path) -> None:
    whole = zstd_file(tmp_path / "whole", tar_bytes([("f", os.urandom(300_000), b"")])).read_bytes()
    archive = tmp_path / "a.tar.zst"
    archive.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(SourceError, match="truncated or corrupt"):
        extract_archive(archive, dest, max_bytes=MB, max_members=10)
    assert no_zstd_left()


def test_a_zstd_bomb_stops_at_the_extract_cap(tmp_path: Path, dest: Path) -> None:
    # 200 MB of zeros compress to a few KB: the cap, not the archive's size, must stop it.
    big = tarfile.TarInfo("zeros")
    big.size = 200 * MB
    header = big.tobuf(format=tarfile.GNU_FORMAT)
    proc = subprocess.Popen(["zstd", "-q", "-c", "-o", str(tmp_path / "bomb.tar.zst")],
                            stdin=subprocess.PIPE)
    assert proc.stdin is not None
    proc.stdin.write(header)
    for _ in range(200):
        proc.stdin.write(bytes(MB))
    proc.stdin.write(bytes(1024))
    proc.stdin.close()
    assert proc.wait(60) == 0
    assert (tmp_path / "bomb.tar.zst").stat().st_size < MB
    with pytest.raises(SourceError, match="zeros"):
        extract_archive(tmp_path / "bomb.tar.zst", dest, max_bytes=MB, max_members=10)
    assert sum(f.stat().st_size for f in dest.rglob("*")) <= MB
    assert no_zstd_left()


def test_garbage_behind_a_zstd_magic_is_refused(tmp_path: Path, dest: Path) -> None:
    archive = tmp_path / "a.tar.zst"
    archive.write_bytes(b"\x28\xb5\x2f\xfd" + os.urandom(2000))
    with pytest.raises(SourceError, match="truncated or corrupt"):
        extract_archive(archive, dest, max_bytes=MB, max_members=10)
    assert no_zstd_left()


# --- through the API, as curl sends them ---

def test_a_raw_zstd_body_runs(server: Server) -> None:
    body = subprocess.run(["zstd", "-q", "-c"], input=tar_bytes([("hello.txt", b"from zstd\n", b"")]),
                          stdout=subprocess.PIPE, check=True).stdout
    resp = server.request("POST", "/api/jobs/upload?script=cat%20hello.txt", body,
                          {"Content-Type": "application/zstd"})
    assert resp.status == 202, resp.body
    assert server.wait_final(resp.json()["id"])["status"] == "success"
    assert server.log(resp.json()["id"]).startswith(b"from zstd\n")


def test_a_multipart_tar_zst_runs_and_a_hostile_one_ends_error(server: Server) -> None:
    good = subprocess.run(["zstd", "-q", "-c"], input=tar_bytes([("a.txt", b"multipart\n", b"")]),
                          stdout=subprocess.PIPE, check=True).stdout
    bad = subprocess.run(["zstd", "-q", "-c"], input=tar_bytes([("../escape.txt", b"x", b"")]),
                         stdout=subprocess.PIPE, check=True).stdout
    ids = []
    for data in (good, bad):
        body, content_type = multipart({"script": b"cat a.txt"}, ("code", "src.tar.zst", data))
        resp = server.request("POST", "/api/jobs/upload", body, {"Content-Type": content_type})
        assert resp.status == 202, resp.body
        ids.append(resp.json()["id"])
    assert server.wait_final(ids[0])["status"] == "success"
    assert server.log(ids[0]).startswith(b"multipart\n")
    refused = server.wait_final(ids[1])
    assert refused["status"] == "error" and "../escape.txt" in refused["error"]


def test_health_says_the_server_unpacks_zstd(server: Server) -> None:
    assert "zstd" in server.request("GET", "/api/health", token=None).json()["uploads"]


def multipart(fields: dict[str, bytes], file: tuple[str, str, bytes]) -> tuple[bytes, str]:
    boundary = "zstd-test-boundary-7f3a"
    parts = [b"--%s\r\nContent-Disposition: form-data; name=\"%s\"\r\n\r\n%s\r\n"
             % (boundary.encode(), name.encode(), value) for name, value in fields.items()]
    name, filename, data = file
    parts.append(b"--%s\r\nContent-Disposition: form-data; name=\"%s\"; filename=\"%s\"\r\n"
                 b"Content-Type: application/zstd\r\n\r\n%s\r\n"
                 % (boundary.encode(), name.encode(), filename.encode(), data))
    return b"".join(parts) + b"--%s--\r\n" % boundary.encode(), f"multipart/form-data; boundary={boundary}"
