"""Settings are validated once, with messages that name the variable and the fix."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

from remoteci.config import ConfigError, load_settings

TOKEN = {"REMOTE_CI_TOKEN": "a-long-enough-token"}


def test_defaults_match_the_contract() -> None:
    s = load_settings(TOKEN)
    assert s.tokens == ("a-long-enough-token",)
    assert s.redis_url is None
    assert (s.host, s.port) == ("127.0.0.1", 5000)
    assert s.workspace_dir == Path("/var/ci-workspace")
    assert s.data_dir == Path("/var/lib/remote-ci") and s.logs_dir == Path("/var/lib/remote-ci/logs")
    assert s.work_dir == Path("/tmp/remote-ci")
    assert (s.concurrency, s.job_timeout, s.kill_grace, s.cancel_grace) == (2, 3600, 60, 10)
    assert (s.drain_timeout, s.retention_days, s.max_upload_mb) == (300, 7, 500)
    assert s.shell == "/bin/bash"
    assert s.soft_limit(3600) == 3540


def test_missing_token_refuses_to_start() -> None:
    with pytest.raises(ConfigError, match="REMOTE_CI_TOKEN is not set"):
        load_settings({})
    with pytest.raises(ConfigError, match="at least 8"):
        load_settings({"REMOTE_CI_TOKEN": "short"})


def test_several_tokens_comma_separated() -> None:
    s = load_settings({"REMOTE_CI_TOKEN": " first-token-1 , second-token-2 ,"})
    assert s.tokens == ("first-token-1", "second-token-2")


@pytest.mark.parametrize("name, value, fragment", [
    ("REMOTE_CI_PORT", "http", "not a whole number"),
    ("REMOTE_CI_PORT", "70000", "out of range"),
    ("REMOTE_CI_CONCURRENCY", "0", "REMOTE_CI_CONCURRENCY=0 is out of range"),
    ("REMOTE_CI_JOB_TIMEOUT", "-5", "out of range"),
    ("REMOTE_CI_REDIS_URL", "localhost:6379", "must start with redis://"),
    ("REMOTE_CI_REDIS_URL", "redis://:secret@h:6379/zero", "database .zero. is not a number"),
    ("REMOTE_CI_GIT_ALLOW_FILE", "maybe", "not a boolean"),
    ("REMOTE_CI_DATA_DIR", " ", "empty"),
])
def test_bad_values_name_the_variable(name: str, value: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment) as info:
        load_settings({**TOKEN, name: value})
    assert name in str(info.value)


def test_a_bad_redis_url_is_refused_without_repeating_its_password() -> None:
    with pytest.raises(ConfigError, match="bad redis URL") as info:
        load_settings({**TOKEN, "REMOTE_CI_REDIS_URL": "redis://:hunter2@h:6379/zero"})
    assert "hunter2" not in str(info.value)


def test_followers_must_leave_threads_for_the_api() -> None:
    with pytest.raises(ConfigError, match="REMOTE_CI_MAX_FOLLOWERS"):
        load_settings({**TOKEN, "REMOTE_CI_MAX_FOLLOWERS": "16", "REMOTE_CI_HTTP_THREADS": "16"})


def test_missing_shell_falls_back_to_sh() -> None:
    assert load_settings({**TOKEN, "REMOTE_CI_SHELL": "/no/such/shell"}).shell == "/bin/sh"
    assert load_settings({**TOKEN, "REMOTE_CI_SHELL": "/bin/sh"}).shell == "/bin/sh"


def test_soft_limit_keeps_a_grace_for_short_timeouts() -> None:
    s = load_settings({**TOKEN, "REMOTE_CI_KILL_GRACE": "60"})
    assert s.soft_limit(10) == 5
    assert s.soft_limit(120) == 60
    s = load_settings({**TOKEN, "REMOTE_CI_KILL_GRACE": "2"})
    assert s.soft_limit(5) == 3
    assert load_settings({**TOKEN, "REMOTE_CI_KILL_GRACE": "0"}).soft_limit(5) == 5


def test_job_uid_range_defaults_to_systemds_first_dynamic_block() -> None:
    assert load_settings(TOKEN).job_uid_range == (61184, 61439)
    chosen = load_settings({**TOKEN, "REMOTE_CI_JOB_UID_RANGE": " 70000-70099 "})
    assert chosen.job_uid_range == (70000, 70099)


@pytest.mark.parametrize("value, fragment", [
    ("61184", "LOW-HIGH"), ("a-b", "LOW-HIGH"), ("-5-10", "LOW-HIGH"), ("0-10", "1 <= LOW"),
    ("70-60", "LOW <= HIGH"), ("1-4294967295", "HIGH <="),
])
def test_a_bad_job_uid_range_is_refused(value: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match="REMOTE_CI_JOB_UID_RANGE") as caught:
        load_settings({**TOKEN, "REMOTE_CI_JOB_UID_RANGE": value})
    assert fragment in str(caught.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="uid 0 is never in a range: LOW is at least 1")
def test_a_job_uid_range_holding_the_servers_own_uid_is_refused() -> None:
    me = os.geteuid()
    with pytest.raises(ConfigError, match="holds the server's own uid"):
        load_settings({**TOKEN, "REMOTE_CI_JOB_UID_RANGE": f"{me}-{me + 5}"})


def test_job_user_must_exist_and_not_be_root() -> None:
    nobody = pwd.getpwnam("nobody")
    user = load_settings({**TOKEN, "REMOTE_CI_JOB_USER": "nobody"}).job_user
    assert user is not None and (user.uid, user.gid) == (nobody.pw_uid, nobody.pw_gid)
    with pytest.raises(ConfigError, match="no user 'no-such-user-x'"):
        load_settings({**TOKEN, "REMOTE_CI_JOB_USER": "no-such-user-x"})
    with pytest.raises(ConfigError, match="is root"):
        load_settings({**TOKEN, "REMOTE_CI_JOB_USER": "root"})


def test_history_defaults_to_sqlite_in_the_data_dir_for_a_year() -> None:
    s = load_settings({**TOKEN, "REMOTE_CI_DATA_DIR": "/srv/ci"})
    assert str(s.history) == "sqlite:///srv/ci/history.sqlite3" and s.history_days == 365
    pg = load_settings({**TOKEN, "REMOTE_CI_HISTORY_URL": "postgresql://ci@db/history",
                        "REMOTE_CI_HISTORY_DAYS": "90"})
    assert pg.history.dialect == "postgresql" and pg.history_days == 90


def test_a_bad_history_setting_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"REMOTE_CI_HISTORY_URL: .*postgresql") as caught:
        load_settings({**TOKEN, "REMOTE_CI_HISTORY_URL": "mysql://u:secret@h/db"})
    assert "secret" not in str(caught.value)
    with pytest.raises(ConfigError, match="REMOTE_CI_HISTORY_DAYS"):
        load_settings({**TOKEN, "REMOTE_CI_HISTORY_DAYS": "0"})
def test_min_replicas_needs_a_redis_of_its_own() -> None:
    url = {"REMOTE_CI_REDIS_URL": "redis+sentinel://s1,s2,s3/main"}
    assert load_settings({**TOKEN, **url, "REMOTE_CI_REDIS_MIN_REPLICAS": "1"}).redis_min_replicas == 1
    assert load_settings({**TOKEN, **url}).redis_min_replicas == 0
    with pytest.raises(ConfigError, match="REMOTE_CI_REDIS_MIN_REPLICAS needs REMOTE_CI_REDIS_URL"):
        load_settings({**TOKEN, "REMOTE_CI_REDIS_MIN_REPLICAS": "1"})
    with pytest.raises(ConfigError, match="REMOTE_CI_REDIS_MIN_REPLICAS=-1 is out of range"):
        load_settings({**TOKEN, **url, "REMOTE_CI_REDIS_MIN_REPLICAS": "-1"})


@pytest.mark.parametrize("name", ["has space", "a:b", "-lead", "x" * 129])
def test_a_node_name_a_submission_could_not_name_refuses_to_start(name: str) -> None:
    with pytest.raises(ConfigError, match="REMOTE_CI_NODE_NAME"):
        load_settings({**TOKEN, "REMOTE_CI_NODE_NAME": name})


def test_a_hostname_is_a_node_name() -> None:
    assert load_settings({**TOKEN, "REMOTE_CI_NODE_NAME": "build-02.lan"}).node_name == "build-02.lan"
