"""Webhooks end to end: a real server delivers to a real HTTP receiver on 127.0.0.1."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from remoteci.store.histograms import seconds_between
from tests.core.test_lifecycle import executor_infos
from tests.helpers import TOKEN, MakeServer, RedisServer, Server, wait_until
from tests.webhook_receiver import Delivery, Receiver

SECRET = "webhook-secret-0123456789"
WEBHOOK_ENV = {
    "REMOTE_CI_WEBHOOK_ALLOW": "127.0.0.1:*,localhost:*",
    "REMOTE_CI_WEBHOOK_SECRET": SECRET,
    "REMOTE_CI_WEBHOOK_RETRY_SECONDS": "0.05",
    "REMOTE_CI_WEBHOOK_ATTEMPTS": "4",
    "REMOTE_CI_WEBHOOK_TIMEOUT": "1",
}


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    rec = Receiver().start()
    yield rec
    rec.stop()


@pytest.fixture(scope="module")
def hooks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One executor, so a job can be held queued behind another."""
    base = tmp_path_factory.mktemp("webhooks")
    rs = RedisServer(base / "redis").start()
    srv = Server(base / "srv", redis_url=rs.url,
                 env={**WEBHOOK_ENV, "REMOTE_CI_CONCURRENCY": "1", "REMOTE_CI_CANCEL_GRACE": "1",
                      "REMOTE_CI_DRAIN_TIMEOUT": "2"})
    srv.start(wait_workers=1)
    yield srv
    srv.shutdown()
    rs.stop()


def without_delivery_fields(job: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in job.items() if k not in ("webhook_status", "webhook_attempts")}


def assert_signed(delivery: Delivery) -> None:
    expected = hmac.new(SECRET.encode(), delivery.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(delivery.headers["x-remoteci-signature"], f"sha256={expected}")
    assert delivery.headers["x-remoteci-event"] == "job.finished"
    assert delivery.headers["user-agent"] == "remote-ci"
    assert delivery.headers["content-type"] == "application/json"
    uuid.UUID(delivery.headers["x-remoteci-delivery"])


def wait_webhook_status(srv: Server, job_id: str, prefix: str) -> dict[str, Any]:
    return dict(wait_until(lambda: str((j := srv.job(job_id)).get("webhook_status")).startswith(
        prefix) and j, 15, f"webhook_status {prefix!r} on job {job_id}"))


# --- every way a job ends ----------------------------------------------------------------------

@pytest.mark.parametrize(("script", "status"), [("env", "success"), ("exit 3", "failed")])
def test_a_finished_job_posts_its_final_object_signed(hooks: Server, receiver: Receiver,
                                                      script: str, status: str) -> None:
    path = f"/finished-{status}"
    job = hooks.submit(script, webhook=receiver.url(path))
    assert (job["webhook"], job["webhook_status"], job["webhook_attempts"]) == (
        receiver.url(path), "pending", 0)
    [delivery] = receiver.wait_for(path)
    assert_signed(delivery)
    final = wait_webhook_status(hooks, job["id"], "delivered")
    assert final["status"] == status and final["webhook_attempts"] == 1
    assert json.loads(delivery.body) == without_delivery_fields(final)
    assert SECRET.encode() not in hooks.log(job["id"])  # the secret never reaches a job


def test_cancelling_a_queued_job_posts_it(hooks: Server, receiver: Receiver) -> None:
    blocker = hooks.submit("sleep 30")
    hooks.wait_status(blocker["id"], ("running",))
    queued = hooks.submit("true", webhook=receiver.url("/cancelled"))
    assert hooks.request("POST", f"/api/jobs/{queued['id']}/cancel").status == 202
    [delivery] = receiver.wait_for("/cancelled")
    body = json.loads(delivery.body)
    assert (body["id"], body["status"], body["started_at"]) == (queued["id"], "cancelled", None)
    hooks.request("POST", f"/api/jobs/{blocker['id']}/cancel")
    hooks.wait_final(blocker["id"])


def test_a_job_of_a_lost_executor_posts_it(hooks: Server, receiver: Receiver) -> None:
    job = hooks.submit("sleep 30", webhook=receiver.url("/lost"))
    running = hooks.wait_status(job["id"], ("running",))
    client = redis.Redis.from_url(str(hooks.redis_url))
    victim = next(int(str(e["pid"])) for e in executor_infos(client) if e["id"] == running["worker"])
    os.kill(victim, signal.SIGKILL)
    [delivery] = receiver.wait_for("/lost")
    body = json.loads(delivery.body)
    assert body["status"] == "error" and "executor lost" in body["error"]
    assert_signed(delivery)
    wait_until(lambda: hooks.request("GET", "/api/stats").json()["workers"] == 1, 20,
               "a new executor")


def test_a_job_ended_by_the_drain_is_posted_before_the_server_stops(
        make_server: MakeServer, receiver: Receiver) -> None:
    srv = make_server(env={**WEBHOOK_ENV, "REMOTE_CI_DRAIN_TIMEOUT": "1"}, wait_workers=2)
    job = srv.submit("sleep 30", webhook=receiver.url("/drained"))
    srv.wait_status(job["id"], ("running",))
    assert srv.stop(timeout=30) == 0
    [delivery] = receiver.received("/drained")  # already there when the server has exited
    body = json.loads(delivery.body)
    assert body["status"] == "error" and "shutting down" in body["error"]


# --- retries and outcomes ----------------------------------------------------------------------

def test_a_500_is_retried_until_delivered(hooks: Server, receiver: Receiver) -> None:
    receiver.answer("/flaky", (500, 0), (503, 0))
    job = hooks.submit("true", webhook=receiver.url("/flaky"))
    deliveries = receiver.wait_for("/flaky", 3)
    final = wait_webhook_status(hooks, job["id"], "delivered")
    assert final["webhook_attempts"] == 3
    assert len({d.headers["x-remoteci-delivery"] for d in deliveries}) == 1  # one delivery, 3 tries
    assert len({d.body for d in deliveries}) == 1


def test_a_4xx_fails_without_retry(hooks: Server, receiver: Receiver) -> None:
    receiver.answer("/gone", (404, 0))
    job = hooks.submit("true", webhook=receiver.url("/gone"))
    final = wait_webhook_status(hooks, job["id"], "failed")
    assert (final["webhook_status"], final["webhook_attempts"]) == ("failed: HTTP 404", 1)
    later = hooks.submit("true", webhook=receiver.url("/after-gone"))  # retries would be done by now
    receiver.wait_for("/after-gone")
    wait_webhook_status(hooks, later["id"], "delivered")
    assert len(receiver.received("/gone")) == 1


def test_a_receiver_that_never_answers_fails_after_the_last_attempt(
        hooks: Server, receiver: Receiver) -> None:
    receiver.answer("/silent", *[(200, 1.5)] * 4)  # each past the 1 s timeout
    job = hooks.submit("true", webhook=receiver.url("/silent"))
    final = wait_webhook_status(hooks, job["id"], "failed")
    assert final["webhook_status"] == "failed: no answer within 1 s (gave up after 4 attempts)"
    assert final["webhook_attempts"] == 4


def test_a_slow_receiver_delays_neither_the_next_job_nor_other_deliveries(
        hooks: Server, receiver: Receiver) -> None:
    receiver.answer("/slow", (200, 3.0))
    slow = hooks.submit("true", webhook=receiver.url("/slow"))
    fast = hooks.submit("true", webhook=receiver.url("/fast"))
    [first_try] = receiver.wait_for("/slow")
    [other] = receiver.wait_for("/fast")
    assert other.at - first_try.at < 1.0  # delivered while the slow attempt still hangs
    slow_job, fast_job = hooks.job(slow["id"]), hooks.wait_final(fast["id"])
    assert fast_job["status"] == "success"
    gap = seconds_between(slow_job["finished_at"], fast_job["started_at"])
    assert gap is not None and gap < 1.0  # the executor went straight on to the next job
    final = wait_webhook_status(hooks, slow["id"], "delivered")
    assert final["webhook_attempts"] == 2  # the first attempt timed out, the retry got through


# --- refused targets ---------------------------------------------------------------------------

@pytest.mark.parametrize(("target", "words"), [
    ("http://example.com/", "REMOTE_CI_WEBHOOK_ALLOW"),
    ("http://user:pw@127.0.0.1:{port}/refused", "user names and passwords"),
    ("ftp://127.0.0.1:{port}/refused", "only http:// and https://"),
])
def test_refused_targets_get_400_and_nothing_is_sent(hooks: Server, receiver: Receiver,
                                                     target: str, words: str) -> None:
    hooks.make_workspace("proj")
    resp = hooks.request("POST", "/api/jobs/rsync", {"workspace": "proj", "script": "true",
                                                    "webhook": target.format(port=receiver.port)})
    assert resp.status == 400
    assert "'webhook'" in resp.json()["error"] and words in resp.json()["error"]
    assert receiver.received("/refused") == []


def test_without_an_allowlist_webhooks_get_400_saying_what_to_set(
        make_server: MakeServer, receiver: Receiver) -> None:
    srv = make_server(env={"REMOTE_CI_WEBHOOK_SECRET": SECRET})
    srv.make_workspace("proj")
    resp = srv.request("POST", "/api/jobs/rsync", {"workspace": "proj", "script": "true",
                                                  "webhook": receiver.url("/unconfigured")})
    assert resp.status == 400 and "set REMOTE_CI_WEBHOOK_ALLOW" in resp.json()["error"]
    assert receiver.received("/unconfigured") == []


def test_an_allowed_name_resolving_to_loopback_is_not_contacted(hooks: Server,
                                                                 receiver: Receiver) -> None:
    job = hooks.submit("true", webhook=receiver.url("/by-name", host="localhost"))
    final = wait_webhook_status(hooks, job["id"], "failed")
    assert "localhost resolved to" in final["webhook_status"]
    assert "allow it by IP" in final["webhook_status"]
    assert final["webhook_attempts"] == 1
    assert receiver.received("/by-name") == []


def test_multipart_uploads_take_webhook_as_a_plain_field(hooks: Server, receiver: Receiver,
                                                         tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_text("x")
    archive = tmp_path / "src.tar.gz"
    subprocess.run(["tar", "czf", str(archive), "-C", str(tmp_path / "src"), "."], check=True)
    out = subprocess.run(
        ["curl", "-s", "-H", f"Authorization: Bearer {TOKEN}",
         "-F", f"code=@{archive}", "-F", "script=true", "-F", f"webhook={receiver.url('/upload')}",
         f"{hooks.url}/api/jobs/upload"], check=True, capture_output=True)
    job = json.loads(out.stdout)
    [delivery] = receiver.wait_for("/upload")
    assert json.loads(delivery.body)["id"] == job["id"]


def test_a_killed_deliverer_is_replaced_and_its_delivery_handed_back(hooks: Server,
                                                                     receiver: Receiver) -> None:
    receiver.answer("/deliverer-killed", (200, 3.0))  # holds the attempt while we kill it
    job = hooks.submit("true", webhook=receiver.url("/deliverer-killed"))
    [first] = receiver.wait_for("/deliverer-killed")
    client = redis.Redis.from_url(str(hooks.redis_url))
    [deliverer] = [m.decode() for m in client.smembers("rci:deliverers")]
    os.kill(int(deliverer.rpartition(":")[2]), signal.SIGKILL)
    deliveries = receiver.wait_for("/deliverer-killed", 2)
    assert deliveries[1].headers["x-remoteci-delivery"] == first.headers["x-remoteci-delivery"]
    final = wait_webhook_status(hooks, job["id"], "delivered")
    assert final["webhook_attempts"] == 2
