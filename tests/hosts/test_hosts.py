"""Node names and the per-host table: pure functions."""

from __future__ import annotations

from typing import Any

import pytest

from remoteci.errors import ApiError
from remoteci.hosts.names import is_node_name, node_of, parse_host
from remoteci.hosts.table import host_table, waiting_note


@pytest.mark.parametrize("name", ["c", "build-01", "gpu.example.org", "A_b-9", "x" * 128])
def test_hostnames_are_node_names(name: str) -> None:
    assert is_node_name(name) and parse_host(name) == name


@pytest.mark.parametrize("value", [None, ""])
def test_no_host_means_any_host(value: Any) -> None:
    assert parse_host(value) is None


@pytest.mark.parametrize("value", ["a:b", "-x", ".x", "a b", "a/b", "x" * 129, "é", "a\nb"])
def test_a_bad_host_is_a_400_naming_the_field_and_the_rule(value: str) -> None:
    with pytest.raises(ApiError) as raised:
        parse_host(value)
    assert raised.value.status == 400
    assert "'host'" in raised.value.message and "REMOTE_CI_NODE_NAME" in raised.value.message


@pytest.mark.parametrize("value", [7, ["c"], {"name": "c"}, True])
def test_a_host_that_is_not_a_string_is_a_400(value: Any) -> None:
    with pytest.raises(ApiError, match="'host' must be a string"):
        parse_host(value)


def test_the_node_of_an_executor_id() -> None:
    assert node_of("build-01:1234") == "build-01" and node_of("ex1") == ""


def test_the_host_table_joins_heartbeats_running_jobs_and_queues() -> None:
    table = host_table([{"host": "b"}, {"host": "b"}, {"host": "c"}, {"id": "no host"}],
                       ["b:1", "c:9", None], {"c": 2, "d": 1, "e": 0})
    assert table == {"b": {"executors": 2, "running": 1, "queued": 0},
                     "c": {"executors": 1, "running": 1, "queued": 2},
                     "d": {"executors": 0, "running": 0, "queued": 1}}
    assert list(table) == ["b", "c", "d"]


def test_a_queued_job_for_a_host_with_no_executor_says_what_it_waits_for() -> None:
    waiting = {"status": "queued", "host": "c"}
    assert "host 'c', which has no live executor" in str(waiting_note(waiting, {"b"}))
    assert waiting_note(waiting, {"b", "c"}) is None
    assert waiting_note({"status": "running", "host": "c"}, set()) is None
    assert waiting_note({"status": "queued", "host": None}, set()) is None
