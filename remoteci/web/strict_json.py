"""JSON as a hostile client may send it: every way the stdlib parser would accept nonsense, or
fail with something other than a parse error, becomes one error that names the problem.

`json.loads` alone takes `NaN` and `1e999` (infinity), keeps the last of two equal keys,
passes lone surrogates (`"\\ud800"`) that fail later when encoded, raises RecursionError on
deep nesting and a plain ValueError past Python's int-string conversion limit. A submission
needs none of these, so each is refused here, before any field is looked at.
"""

from __future__ import annotations

import json
import math
from typing import Any

MAX_DEPTH = 32  # a submission nests two levels (env, artifacts); the limit is generous
MAX_NUMBER_CHARS = 30  # any number a submission needs (a timeout) fits with room to spare


class JsonError(ValueError):
    """The text is not JSON a submission can be: the message names what and where."""


def loads(text: str | bytes) -> Any:
    """Parse strict JSON: no duplicate keys, no NaN/Infinity, finite and short numbers, no lone
    surrogates, at most MAX_DEPTH levels of nesting."""
    try:
        data = json.loads(text, object_pairs_hook=_object, parse_constant=_constant,
                          parse_int=_int, parse_float=_float)
    except RecursionError:
        raise JsonError(f"it is nested deeper than {MAX_DEPTH} levels") from None
    except UnicodeDecodeError as exc:
        raise JsonError(f"it is not UTF-8 text (byte {exc.start} is invalid)") from None
    except json.JSONDecodeError as exc:
        raise JsonError(f"{exc.msg} at line {exc.lineno} column {exc.colno}") from None
    _check_tree(data)
    return data


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise JsonError(f"key {_shown(key)} appears twice in one object; send it once")
        obj[key] = value
    return obj


def _constant(name: str) -> Any:
    raise JsonError(f"{name} is not a JSON number; send a finite number")


def _int(digits: str) -> int:
    if len(digits) > MAX_NUMBER_CHARS:
        raise JsonError(f"the number {digits[:20]}... has {len(digits)} digits; "
                        f"numbers here have at most {MAX_NUMBER_CHARS}")
    return int(digits)


def _float(text: str) -> float:
    value = float(text)
    if len(text) > MAX_NUMBER_CHARS or not math.isfinite(value):
        raise JsonError(f"the number {text[:20]} is out of range; send a plain number such as 600")
    return value


def _check_tree(data: Any) -> None:
    """Walk the parsed value without recursion: depth and strings that cannot be UTF-8."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            _check_string(value)
        elif isinstance(value, dict | list):
            if depth > MAX_DEPTH:
                raise JsonError(f"it is nested deeper than {MAX_DEPTH} levels")
            if isinstance(value, dict):
                for key, item in value.items():
                    _check_string(key)
                    stack.append((item, depth + 1))
            else:
                stack.extend((item, depth + 1) for item in value)


def _check_string(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise JsonError(f"a string holds a lone surrogate ({text[exc.start]!a}), which is not "
                        "Unicode text; send UTF-8") from None


def _shown(key: str) -> str:
    return ascii(key[:80])
