"""The `artifacts` field of a submission and glob matching: pure functions, one behaviour per test."""

from __future__ import annotations

import pytest

from remoteci.artifacts.manifest import matches, may_contain, parse_patterns
from remoteci.config import ConfigError, load_settings
from remoteci.errors import ApiError
from remoteci.web.submissions import parse_common


def test_a_list_of_globs_is_kept_normalised() -> None:
    assert parse_patterns(["dist/*.whl", "./reports//**/**/*.xml"]) == (
        "dist/*.whl", "reports/**/*.xml")


def test_multipart_and_query_send_the_list_as_json_text() -> None:
    assert parse_common({"script": "x", "artifacts": '["out/*"]'}, 60).artifacts == ("out/*",)


def test_absent_means_no_artifacts() -> None:
    assert parse_common({"script": "x"}, 60).artifacts == ()


@pytest.mark.parametrize("value", [
    [], ["a"] * 51, "dist/*", '{"a": 1}', ["../etc/passwd"], ["dist/../../x"], ["/etc/*"],
    [""], ["a\x00b"], ["x" * 513], [3], ["."], ["./"], {"a": "b"},
])
def test_bad_artifacts_are_refused_naming_the_field(value: object) -> None:
    with pytest.raises(ApiError) as info:
        parse_patterns(value)
    assert info.value.status == 400 and "'artifacts'" in info.value.message


def test_a_name_with_two_dots_is_not_a_parent_component() -> None:
    assert parse_patterns(["dist/..hidden", "a..b/*"]) == ("dist/..hidden", "a..b/*")


@pytest.mark.parametrize(("path", "pattern", "expected"), [
    ("dist/a.whl", "dist/*.whl", True),
    ("dist/sub/a.whl", "dist/*.whl", False),
    ("a.whl", "dist/*.whl", False),
    ("reports/x.xml", "reports/**/*.xml", True),
    ("reports/a/b/c/x.xml", "reports/**/*.xml", True),
    ("reports/a/b/c/x.txt", "reports/**/*.xml", False),
    ("deep/er/file", "**", True),
    ("dist/.hidden", "dist/*", True),
    ("out/f1", "out/f?", True),
    ("out/f10", "out/f[0-9]", False),
])
def test_matching(path: str, pattern: str, expected: bool) -> None:
    assert matches(path.split("/"), pattern.split("/")) is expected


def test_many_double_stars_match_in_linear_time() -> None:
    pattern = "/".join(["**", "a"] * 20 + ["b"]).split("/")
    assert not matches(["a"] * 60 + ["c"], pattern)


@pytest.mark.parametrize(("directory", "pattern", "expected"), [
    ("dist", "dist/*.whl", True),
    ("node_modules", "dist/*.whl", False),
    ("dist/sub", "dist/*.whl", False),
    ("any/where", "**/*.xml", True),
    ("reports/a", "reports/**/*.xml", True),
])
def test_the_walk_enters_only_directories_that_may_hold_matches(
        directory: str, pattern: str, expected: bool) -> None:
    assert may_contain(directory.split("/"), pattern.split("/")) is expected


def test_max_artifact_mb_is_validated() -> None:
    env = {"REMOTE_CI_TOKEN": "0123456789"}
    assert load_settings(env).max_artifact_mb == 1024
    assert load_settings({**env, "REMOTE_CI_MAX_ARTIFACT_MB": "5"}).max_artifact_mb == 5
    with pytest.raises(ConfigError, match="REMOTE_CI_MAX_ARTIFACT_MB"):
        load_settings({**env, "REMOTE_CI_MAX_ARTIFACT_MB": "0"})
