"""Validating what a CI pipeline submits: pure functions, each error naming the field and the fix."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from remoteci.artifacts.manifest import parse_patterns
from remoteci.errors import ApiError
from remoteci.hosts.names import parse_host
from remoteci.web import strict_json
from remoteci.webhooks.rules import HostPattern, validate_webhook

MAX_SCRIPT_BYTES = 256 * 1024
MAX_NAME_CHARS = 200
MAX_ENV_VARS = 200
MAX_ENV_BYTES = 256 * 1024
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
RESERVED_ENV = frozenset({"REMOTE_CI_JOB_ID"})
COMMON_FIELDS = ("script", "timeout", "env", "name", "artifacts", "webhook", "host")
MODE_FIELDS = {"rsync": ("workspace",), "git": ("repo", "ref"), "upload": ()}


@dataclass(frozen=True)
class Common:
    script: str
    timeout: int
    name: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    artifacts: tuple[str, ...] = ()  # glob patterns; empty: keep nothing
    webhook: str | None = None
    host: str | None = None  # the node name of the only host that may run it; None: any


def parse_json_body(body: bytes) -> dict[str, Any]:
    """Any Content-Type is read as JSON: plain `curl -d` sends form-urlencoded by default."""
    if not body.strip():
        raise ApiError(400, "the request body is empty; send a JSON object such as "
                            '{"workspace": "project-a", "script": "make test"}')
    try:
        data = strict_json.loads(body)
    except strict_json.JsonError as exc:
        raise ApiError(400, f"the request body is not valid JSON ({exc}); send a JSON object") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object, not "
                            f"{type(data).__name__}")
    return data


def check_known_fields(data: Mapping[str, Any], mode: str) -> None:
    allowed = set(COMMON_FIELDS) | set(MODE_FIELDS[mode])
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ApiError(400, f"unknown field {unknown[0]!r} for a {mode} job; "
                            f"the fields are: {', '.join(sorted(allowed))}")


def parse_common(data: Mapping[str, Any], max_timeout: int,
                 webhook_allow: tuple[HostPattern, ...] = (), webhook_signed: bool = False,
                 ) -> Common:
    """script, timeout, env, name, artifacts, webhook and host; strings are accepted for
    timeout/env/artifacts (multipart, query)."""
    return Common(
        script=_script(data.get("script")),
        timeout=_timeout(data.get("timeout"), max_timeout),
        name=_name(data.get("name")),
        env=_env(data.get("env")),
        artifacts=parse_patterns(data.get("artifacts")),
        webhook=validate_webhook(data.get("webhook"), webhook_allow, webhook_signed),
        host=parse_host(data.get("host")),
    )


def required_string(data: Mapping[str, Any], key: str, hint: str) -> str:
    value = data.get(key)
    if value is None or value == "":
        raise ApiError(400, f"field {key!r} is required: {hint}")
    if not isinstance(value, str):
        raise ApiError(400, f"field {key!r} must be a string: {hint}")
    if "\x00" in value:
        raise ApiError(400, f"field {key!r} contains a NUL byte")
    return value


def _script(value: Any) -> str:
    script = required_string({"script": value}, "script", "the shell command(s) to run, "
                             "e.g. \"make test\"")
    if len(script.encode()) > MAX_SCRIPT_BYTES:
        raise ApiError(400, f"field 'script' is longer than {MAX_SCRIPT_BYTES // 1024} KB; "
                            "commit a script file and run that instead")
    return script


def _timeout(value: Any, max_timeout: int) -> int:
    if value is None or value == "":
        return max_timeout
    if isinstance(value, bool):
        raise ApiError(400, f"field 'timeout' must be a whole number of seconds, 1..{max_timeout}")
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise ApiError(400, f"field 'timeout' must be a whole number of seconds, "
                                f"1..{max_timeout}, not {value!r}") from None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or not 1 <= value <= max_timeout:
        raise ApiError(400, f"field 'timeout' must be a whole number of seconds, 1..{max_timeout} "
                            "(REMOTE_CI_JOB_TIMEOUT is the server's limit)")
    return value


def _name(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ApiError(400, "field 'name' must be a string")
    if len(value) > MAX_NAME_CHARS or not value.isprintable():
        raise ApiError(400, f"field 'name' must be printable text of at most {MAX_NAME_CHARS} "
                            "characters")
    return value


def _env(value: Any) -> dict[str, str]:
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        try:
            value = strict_json.loads(value)
        except strict_json.JsonError as exc:
            raise ApiError(400, f"field 'env' must be a JSON object of strings, "
                                f'e.g. {{"NODE_ENV": "test"}}: {exc}') from None
    if not isinstance(value, dict):
        raise ApiError(400, "field 'env' must be an object of string to string")
    if len(value) > MAX_ENV_VARS:
        raise ApiError(400, f"field 'env' has more than {MAX_ENV_VARS} variables")
    size = 0
    for key, val in value.items():
        if not ENV_NAME_RE.fullmatch(key):
            raise ApiError(400, f"env name {key!r} is not a valid variable name "
                                "(letters, digits and _, not starting with a digit)")
        if key in RESERVED_ENV:
            raise ApiError(400, f"env name {key!r} is set by the server and cannot be given")
        if not isinstance(val, str):
            raise ApiError(400, f"env {key!r} must be a string, not {type(val).__name__}")
        if "\x00" in val:
            raise ApiError(400, f"env {key!r} contains a NUL byte")
        size += len(key) + len(val.encode())
    if size > MAX_ENV_BYTES:
        raise ApiError(400, f"field 'env' is larger than {MAX_ENV_BYTES // 1024} KB")
    return dict(value)


IDEMPOTENCY_KEY_RE = re.compile(r"[A-Za-z0-9_.:-]{1,128}")


def parse_idempotency_key(raw: str) -> str | None:
    """The `Idempotency-Key` header: a client's name for one submission, reused on retries."""
    if not raw:
        return None
    if not IDEMPOTENCY_KEY_RE.fullmatch(raw):
        raise ApiError(400, "header Idempotency-Key must be 1-128 characters of A-Z a-z 0-9 _ . : - "
                            "(a UUID is a good choice)")
    return raw
