"""A pipeline's end is POSTed to its webhook once, signed, like a job's (the README, "Pipelines")."""

from __future__ import annotations

import hashlib
import hmac
import json

from tests.helpers import MakeServer, wait_until
from tests.pipelines.test_pipelines import job, pipeline, stage, submit, wait_pipeline
from tests.webhook_receiver import Receiver
from tests.webhooks.test_delivery import SECRET, WEBHOOK_ENV


def test_the_end_of_a_pipeline_is_posted_to_its_webhook(make_server: MakeServer) -> None:
    receiver = Receiver().start()
    try:
        srv = make_server(env=WEBHOOK_ENV, wait_workers=2)
        srv.make_workspace("proj")
        bad = srv.request("POST", "/api/pipelines", {
            "source": {"mode": "rsync", "workspace": "proj"}, "webhook": "https://elsewhere.example/",
            "stages": [stage("s", job("j", "true"))]})
        assert bad.status == 400 and "webhook" in bad.json()["error"]
        created = submit(srv, stage("one", job("a", "true")), stage("two", job("b", "exit 4")),
                         webhook=receiver.url("/pipeline"))
        assert created["webhook_status"] == "pending"
        [delivery] = receiver.wait_for("/pipeline")
        done = wait_pipeline(srv, created["id"])
        body = json.loads(delivery.body)
        assert delivery.headers["x-remoteci-event"] == "pipeline.finished"
        expected = hmac.new(SECRET.encode(), delivery.body, hashlib.sha256).hexdigest()
        assert delivery.headers["x-remoteci-signature"] == f"sha256={expected}"
        assert (body["id"], body["status"]) == (created["id"], "failed")
        assert [s["status"] for s in body["stages"]] == ["success", "failed"]
        assert body["stages"] == done["stages"] and "webhook_status" not in body
        wait_until(lambda: pipeline(srv, created["id"])["webhook_status"] == "delivered", 15,
                   "the pipeline's webhook_status to say delivered")
        # Its jobs carry no webhook of their own: one delivery for the pipeline, none per job.
        assert len(receiver.received("/pipeline")) == 1
    finally:
        receiver.stop()
