"""The worker routes' wire format, pure."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from remoteci.shipping import protocol
from tests.helpers import ROOT


def test_content_range_round_trips() -> None:
    header = protocol.content_range(10, 5)
    assert header == "bytes 10-14/*"
    assert protocol.parse_append(header, 5) == protocol.Append(10, 15)


@pytest.mark.parametrize("header,length", [("bytes 0-4/*", 4), ("bytes 4-0/*", 5),
                                           ("bytes 0-4/5", 5), ("bytes -4/*", 4), ("", 0),
                                           ("bytes 0-4/* ,1-2/*", 5)])
def test_a_content_range_that_does_not_match_the_body_is_refused(header: str, length: int) -> None:
    with pytest.raises(ValueError):
        protocol.parse_append(header, length)


def test_an_append_is_bounded() -> None:
    size = protocol.MAX_LOG_APPEND + 1
    with pytest.raises(ValueError, match="at most"):
        protocol.parse_append(protocol.content_range(0, size), size)


@pytest.mark.parametrize("path", ["", "/etc/passwd", "a/../b", "..", "./a", "a//b", "a/",
                                  "a\x00b", "a\\b", "/".join(["d"] * 65), "x" * 5000])
def test_artifact_paths_that_could_leave_the_dir_are_refused(path: str) -> None:
    with pytest.raises(ValueError):
        protocol.artifact_path(path)


def test_plain_artifact_paths_pass() -> None:
    assert protocol.artifact_path("dist/deep/é.whl") == "dist/deep/é.whl"
    assert protocol.artifact_path(".hidden/x") == ".hidden/x"


@pytest.mark.parametrize("raw", ["ftp://x", "http://", "localhost:5000", "http://a/?q=1",
                                 "http://u:p@a", "http://a:99999"])
def test_bad_api_urls_are_refused(raw: str) -> None:
    with pytest.raises(ValueError):
        protocol.parse_api_url(raw)


def test_an_api_url_loses_its_trailing_slash() -> None:
    assert protocol.parse_api_url(" https://ci.example.com/ ") == "https://ci.example.com"


def test_a_bad_api_url_stops_the_start_naming_the_variable() -> None:
    from remoteci.config import ConfigError, load_settings

    env = {"REMOTE_CI_TOKEN": "t" * 16, "REMOTE_CI_API_URL": "ci.example.com"}
    with pytest.raises(ConfigError, match="REMOTE_CI_API_URL"):
        load_settings(env)
    env["REMOTE_CI_API_URL"] = "https://ci.example.com/"
    assert load_settings(env).api_url == "https://ci.example.com"


def test_serve_refuses_an_api_url(tmp_path: Path) -> None:
    """`serve` is the API: shipping its own logs to itself would write each byte twice."""
    done = subprocess.run([sys.executable, str(ROOT / "remoteci.py"), "serve"],
                          env={"PATH": os.environ["PATH"], "REMOTE_CI_TOKEN": "t" * 16,
                               "REMOTE_CI_API_URL": "http://127.0.0.1:1",
                               "REMOTE_CI_PORT": "0", "REMOTE_CI_DATA_DIR": str(tmp_path / "d"),
                               "REMOTE_CI_WORK_DIR": str(tmp_path / "w"),
                               "REMOTE_CI_WORKSPACE_DIR": str(tmp_path / "ws")},
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert "REMOTE_CI_API_URL is for `worker` hosts" in done.stderr
