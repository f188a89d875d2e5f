"""The strict JSON reader: each hostile form is one JsonError naming the problem."""

from __future__ import annotations

import pytest

from remoteci.errors import ApiError
from remoteci.web import strict_json
from remoteci.web.strict_json import JsonError
from remoteci.web.submissions import parse_common, parse_json_body


def test_plain_json_is_read() -> None:
    assert strict_json.loads(b'{"a": [1, 2.5, "x", null, true], "b": {"c": -3}}') == {
        "a": [1, 2.5, "x", None, True], "b": {"c": -3}}


@pytest.mark.parametrize("text, fragment", [
    ("[" * 100_000, "nested deeper than 32"),
    ("[" * 40 + "]" * 40, "nested deeper than 32"),
    ('{"a": 1, "a": 2}', "key 'a' appears twice"),
    ('{"e": {"K": "1", "K": "2"}}', "key 'K' appears twice"),
    ('{"timeout": 1e999}', "out of range"),
    ('{"timeout": -1e999}', "out of range"),
    ('{"timeout": NaN}', "NaN is not a JSON number"),
    ('{"timeout": Infinity}', "Infinity is not a JSON number"),
    ('{"timeout": ' + "9" * 5000 + "}", "has 5000 digits"),
    ('{"script": "\\ud800"}', "lone surrogate"),
    ('{"\\udfff": "x"}', "lone surrogate"),
    ('["\\ud800"]', "lone surrogate"),
    ('{"a": 1', "line 1 column"),
])
def test_hostile_json_is_refused(text: str, fragment: str) -> None:
    with pytest.raises(JsonError, match=fragment):
        strict_json.loads(text)


def test_invalid_utf8_names_the_byte() -> None:
    with pytest.raises(JsonError, match="not UTF-8 text"):
        strict_json.loads(b'{"script": "\xff\xfe"}')


def test_a_surrogate_pair_is_text() -> None:
    assert strict_json.loads('"\\ud83d\\ude00"') == "\U0001f600"


def test_the_body_error_says_what_to_send() -> None:
    with pytest.raises(ApiError) as info:
        parse_json_body(b"[" * 100_000)
    assert info.value.status == 400 and "nested deeper" in info.value.message


def test_env_and_artifacts_as_json_strings_are_strict_too() -> None:
    with pytest.raises(ApiError, match="appears twice"):
        parse_common({"script": "x", "env": '{"A": "1", "A": "2"}'}, 3600)
    with pytest.raises(ApiError, match="nested deeper"):
        parse_common({"script": "x", "artifacts": "[" * 5000}, 3600)


def test_a_huge_timeout_string_is_a_400() -> None:
    with pytest.raises(ApiError, match="'timeout'"):
        parse_common({"script": "x", "timeout": "9" * 5000}, 3600)
