"""What a node name may be, and the `host` a submission pins a job to."""

from __future__ import annotations

import re
from typing import Any

from remoteci.errors import ApiError

# A hostname's alphabet: what `hostname` prints fits, and a name is safe in a Redis key, a log
# line and a URL query without quoting. No ':' (executor ids are `<node>:<pid>`).
NODE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
NODE_NAME_RULE = ("1-128 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit "
                  "(a worker's REMOTE_CI_NODE_NAME)")


def is_node_name(value: str) -> bool:
    return NODE_NAME_RE.fullmatch(value) is not None


def parse_host(value: Any) -> str | None:
    """The optional `host` of a submission: None (any host) or a valid node name."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ApiError(400, f"field 'host' must be a string: {NODE_NAME_RULE}")
    if not is_node_name(value):
        raise ApiError(400, f"field 'host' {value[:140]!r} is not a node name; it must be "
                            f"{NODE_NAME_RULE}")
    return value


def node_of(executor_id: str) -> str:
    """The host part of an executor id `<node>:<pid>` ('' for an id without one)."""
    return executor_id.rpartition(":")[0]
