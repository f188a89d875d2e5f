"""Validation of submitted fields: pure functions, one behaviour per test."""

from __future__ import annotations

import pytest

from remoteci.errors import ApiError
from remoteci.web.submissions import check_known_fields, parse_common, parse_json_body


def test_common_fields_with_defaults() -> None:
    common = parse_common({"script": "make test"}, max_timeout=3600)
    assert (common.script, common.timeout, common.name, common.env) == ("make test", 3600, None, {})


def test_multipart_style_strings_are_accepted() -> None:
    common = parse_common({"script": "x", "timeout": " 30 ", "env": '{"A": "1"}', "name": "n"}, 3600)
    assert (common.timeout, common.env, common.name) == (30, {"A": "1"}, "n")


def test_whole_float_timeout_is_accepted() -> None:
    assert parse_common({"script": "x", "timeout": 30.0}, 3600).timeout == 30


@pytest.mark.parametrize("timeout", [0, -1, 3601, 1.5, "1e3", True, [], {}])
def test_bad_timeouts(timeout: object) -> None:
    with pytest.raises(ApiError) as info:
        parse_common({"script": "x", "timeout": timeout}, 3600)
    assert info.value.status == 400 and "'timeout'" in info.value.message


@pytest.mark.parametrize("env, fragment", [
    ({"A-B": "x"}, "not a valid variable name"),
    ({"": "x"}, "not a valid variable name"),
    ({"A": None}, "must be a string"),
    ({"A": "a\x00b"}, "NUL"),
    ({"REMOTE_CI_JOB_ID": "x"}, "set by the server"),
    ({f"V{i}": "x" for i in range(201)}, "more than 200"),
    ({"BIG": "x" * 300_000}, "larger than"),
    ("not json", "JSON object"),
    ('["A"]', "object of string"),
])
def test_bad_env(env: object, fragment: str) -> None:
    with pytest.raises(ApiError, match=fragment):
        parse_common({"script": "x", "env": env}, 3600)


def test_script_limits() -> None:
    with pytest.raises(ApiError, match="required"):
        parse_common({"script": ""}, 3600)
    with pytest.raises(ApiError, match="longer than"):
        parse_common({"script": "x" * (256 * 1024 + 1)}, 3600)
    with pytest.raises(ApiError, match="NUL"):
        parse_common({"script": "a\x00b"}, 3600)


def test_name_must_be_printable_and_short() -> None:
    with pytest.raises(ApiError, match="printable"):
        parse_common({"script": "x", "name": "a\nb"}, 3600)
    with pytest.raises(ApiError, match="printable"):
        parse_common({"script": "x", "name": "n" * 201}, 3600)


def test_unknown_fields_are_named() -> None:
    with pytest.raises(ApiError, match="unknown field 'repo' for a rsync job"):
        check_known_fields({"script": "x", "workspace": "w", "repo": "r"}, "rsync")
    check_known_fields({"script": "x", "repo": "r", "ref": "main", "timeout": 5}, "git")


@pytest.mark.parametrize("body, fragment", [
    (b"", "empty"), (b"  ", "empty"), (b"nope", "not valid JSON"), (b"\xff\xfe", "not valid JSON"),
    (b'"str"', "JSON object"), (b"null", "JSON object"),
])
def test_json_body(body: bytes, fragment: str) -> None:
    with pytest.raises(ApiError, match=fragment):
        parse_json_body(body)
