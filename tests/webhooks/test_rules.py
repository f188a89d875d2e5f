"""The webhook rules: allowlist, URL validation, address checks, signing, retry decisions (pure)."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from remoteci.config import ConfigError, load_settings
from remoteci.errors import ApiError
from remoteci.webhooks.rules import (
    Reply,
    allowed_by,
    decide,
    delivery_body,
    delivery_headers,
    http_reply,
    parse_allowlist,
    parse_target,
    refused_address,
    validate_webhook,
)

ALLOW = parse_allowlist("ci.example.com,*.internal:8080,127.0.0.1:*,10.0.0.*:9000")
TOKEN = {"REMOTE_CI_TOKEN": "a-long-enough-token"}


# --- the allowlist ---------------------------------------------------------------------------

@pytest.mark.parametrize("url", [
    "https://ci.example.com/hooks/x?secret=1",
    "http://ci.example.com/",
    "http://a.b.internal:8080/",
    "http://127.0.0.1:1234/",
    "http://10.0.0.7:9000/",
    "HTTPS://CI.Example.COM/path",
])
def test_allowed_urls(url: str) -> None:
    assert validate_webhook(url, ALLOW, have_secret=True) == url


@pytest.mark.parametrize(("url", "words"), [
    ("http://ci.example.com:8080/", "not in the server's REMOTE_CI_WEBHOOK_ALLOW"),  # default port only
    ("http://evil.com/", "not in the server's REMOTE_CI_WEBHOOK_ALLOW"),
    ("http://a.internal:8081/", "not in the server's REMOTE_CI_WEBHOOK_ALLOW"),
    ("http://127.0.0.2:80/", "not in the server's REMOTE_CI_WEBHOOK_ALLOW"),
    ("http://localhost:80/", "not in the server's REMOTE_CI_WEBHOOK_ALLOW"),
    ("ftp://ci.example.com/", "only http:// and https://"),
    ("file:///etc/passwd", "only http:// and https://"),
    ("https://user:pw@ci.example.com/", "user names and passwords"),
    ("https://ci.example.com:99999/", "port"),
    ("http://2130706433/", "not a host name"),
    ("http://0x7f/", "not a host name"),
    ("http://ci.example.com/" + "a" * 2048, "longer than 2048"),
    ("http://ci.example.com/a b", "spaces"),
    (42, "must be a URL string"),
])
def test_refused_urls_name_the_field(url: object, words: str) -> None:
    with pytest.raises(ApiError) as info:
        validate_webhook(url, ALLOW, have_secret=True)
    assert info.value.status == 400
    assert "'webhook'" in info.value.message and words in info.value.message


def test_a_name_pattern_never_matches_an_ip_literal() -> None:
    assert allowed_by(parse_target("http://127.0.0.1/"), parse_allowlist("*")) is None
    assert allowed_by(parse_target("http://example.org/"), parse_allowlist("*")) is not None


def test_without_an_allowlist_webhooks_are_refused_saying_what_to_set() -> None:
    with pytest.raises(ApiError, match="REMOTE_CI_WEBHOOK_ALLOW"):
        validate_webhook("https://ci.example.com/", (), have_secret=True)


def test_without_a_secret_webhooks_are_refused_saying_what_to_set() -> None:
    with pytest.raises(ApiError, match="REMOTE_CI_WEBHOOK_SECRET"):
        validate_webhook("https://ci.example.com/", ALLOW, have_secret=False)


def test_no_webhook_is_fine_anywhere() -> None:
    assert validate_webhook(None, (), have_secret=False) is None
    assert validate_webhook("", (), have_secret=False) is None


@pytest.mark.parametrize("raw", ["ci.example.com:http", "[::1]:80", "a b", "*.", "host:70000",
                                 "ex?mple.com"])
def test_bad_allowlist_patterns_stop_the_server_naming_the_variable(raw: str) -> None:
    with pytest.raises(ConfigError, match="REMOTE_CI_WEBHOOK_ALLOW"):
        load_settings({**TOKEN, "REMOTE_CI_WEBHOOK_ALLOW": raw})


def test_webhook_settings_and_their_defaults() -> None:
    s = load_settings(TOKEN)
    assert (s.webhook_allow, s.webhook_secret, s.webhooks_enabled) == ((), None, False)
    assert (s.webhook_timeout, s.webhook_attempts, s.webhook_retry_seconds) == (5, 6, 20.0)
    s = load_settings({**TOKEN, "REMOTE_CI_WEBHOOK_ALLOW": "a.example", "REMOTE_CI_WEBHOOK_SECRET":
                       "0123456789abcdef", "REMOTE_CI_WEBHOOK_RETRY_SECONDS": "0.05"})
    assert s.webhooks_enabled and s.webhook_retry_seconds == 0.05
    assert "0123456789abcdef" not in repr(s)


def test_a_short_secret_is_refused() -> None:
    with pytest.raises(ConfigError, match="REMOTE_CI_WEBHOOK_SECRET must be at least 16"):
        load_settings({**TOKEN, "REMOTE_CI_WEBHOOK_SECRET": "short"})


# --- where a delivery may connect ------------------------------------------------------------

@pytest.mark.parametrize("address", ["127.0.0.1", "::1", "169.254.169.254", "0.0.0.0",
                                     "::ffff:127.0.0.1", "224.0.0.1"])
def test_a_name_resolving_to_loopback_or_link_local_is_refused(address: str) -> None:
    reason = refused_address(parse_target("http://hooks.internal:8080/"), address)
    assert reason is not None and "allow it by IP" in reason


@pytest.mark.parametrize("address", [
    "fd00:ec2::254", "100.100.100.200", "fd20:ce::254",  # cloud metadata (AWS v6, Alibaba, GCP v6)
    "2002:7f00:1::1", "2002:a9fe:a9fe::", "64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe",  # 6to4, NAT64
    "64:ff9b:1::a9fe:a9fe", "::ffff:169.254.169.254",
])
def test_metadata_and_refused_addresses_behind_6to4_or_nat64_are_refused(address: str) -> None:
    reason = refused_address(parse_target("http://hooks.internal:8080/"), address)
    assert reason is not None and "allow it by IP" in reason


@pytest.mark.parametrize("address", ["10.1.2.3", "192.168.0.9", "93.184.216.34", "2001:db8::1",
                                     "2002:5db8:d822::1", "64:ff9b::5db8:d822"])
def test_a_name_may_resolve_to_private_and_public_addresses(address: str) -> None:
    assert refused_address(parse_target("http://hooks.internal:8080/"), address) is None


def test_an_ip_literal_connects_only_to_itself() -> None:
    target = parse_target("http://127.0.0.1:8080/")
    assert refused_address(target, "127.0.0.1") is None
    assert refused_address(target, "10.0.0.1") is not None


# --- what is sent ------------------------------------------------------------------------------

RECORD = {"id": "j1", "mode": "rsync", "status": "success", "script": "true", "source": "p",
          "timeout": "60", "created_at": "t", "exit_code": "0", "webhook": "http://x.internal/",
          "webhook_status": "pending", "webhook_attempts": "2", "webhook_delivery": "d"}


def test_the_body_is_the_job_object_without_delivery_bookkeeping() -> None:
    body = json.loads(delivery_body(RECORD))
    assert body["id"] == "j1" and body["status"] == "success" and body["exit_code"] == 0
    assert body["webhook"] == "http://x.internal/"
    assert "webhook_status" not in body and "webhook_attempts" not in body
    assert "webhook_delivery" not in body


def test_headers_sign_the_exact_body() -> None:
    body = delivery_body(RECORD)
    headers = delivery_headers(body, "0123456789abcdef", "delivery-1")
    expected = hmac.new(b"0123456789abcdef", body, hashlib.sha256).hexdigest()
    assert headers["X-RemoteCI-Signature"] == f"sha256={expected}"
    assert headers["X-RemoteCI-Event"] == "job.finished"
    assert headers["X-RemoteCI-Delivery"] == "delivery-1"
    assert headers["User-Agent"] == "remote-ci"


# --- retries -----------------------------------------------------------------------------------

def test_2xx_is_delivered() -> None:
    assert decide(http_reply(204), 1, 6, 20).status == "delivered"


@pytest.mark.parametrize("reply", [http_reply(500), http_reply(503), http_reply(429),
                                   Reply(None, "no answer within 5 s", retryable=True)])
def test_5xx_429_and_no_answer_are_retried_with_backoff(reply: Reply) -> None:
    delays = [decide(reply, n, 6, 20).retry_in for n in range(1, 6)]
    assert delays == [20, 40, 80, 160, 320]  # 6 attempts over ~10 minutes
    last = decide(reply, 6, 6, 20)
    assert last.retry_in is None and last.status.startswith("failed: ")
    assert "gave up after 6 attempts" in last.status


@pytest.mark.parametrize("status", [400, 404, 301, 410])
def test_other_answers_fail_at_once(status: int) -> None:
    decision = decide(http_reply(status), 1, 6, 20)
    assert decision == type(decision)(f"failed: HTTP {status}", None)
