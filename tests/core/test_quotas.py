"""Per-owner caps: queued jobs and stored bytes, checked in the enqueue's own transaction."""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import pytest
import redis

from remoteci import jobs
from remoteci.queue import JobStore, OverQuota, Quotas, job_key
from remoteci.store.redis_conn import Client as Redis
from tests.auth.test_project_tokens import add_token
from tests.helpers import TOKEN, MakeServer, Server

TTL = 7 * 86400


@pytest.fixture
def store(store_client: Redis) -> JobStore:
    return JobStore(store_client, TTL)


def enqueue(store: JobStore, job_id: str, owner: str, quotas: Quotas, stored: int = 0,
            artifacts: bool = False) -> None:
    record = {"id": job_id, "mode": "upload", "status": "queued", "script": "true",
              "source": "upload", "timeout": "60", "created_at": jobs.iso_now(), "owner": owner}
    payload: dict[str, Any] = {"id": job_id, "mode": "upload", "script": "true", "timeout": 60,
                               "owner": owner, **({"artifacts": ["*"]} if artifacts else {})}
    store.enqueue(record, payload, 100, quotas=quotas, stored_bytes=stored)


def test_an_owner_may_queue_only_its_cap_and_others_are_not_held_up(store: JobStore) -> None:
    caps = Quotas(max_queued=2)
    enqueue(store, "a1", "alpha", caps)
    enqueue(store, "a2", "alpha", caps)
    with pytest.raises(OverQuota) as over:
        enqueue(store, "a3", "alpha", caps)
    assert over.value.what == "queued"
    enqueue(store, "b1", "beta", caps)
    taken = store.take("host:1", timeout=1)  # a1 starts: one place for alpha again
    assert taken is not None and json.loads(taken.payload)["id"] == "a1"
    enqueue(store, "a3", "alpha", caps)
    with pytest.raises(OverQuota):
        enqueue(store, "a4", "alpha", caps)
    assert store.cancel("a2", jobs.iso_now()) == "dequeued"
    enqueue(store, "a4", "alpha", caps)


def test_stored_bytes_count_uploads_then_artifacts_until_the_record_expires(
        store: JobStore, redis_client: redis.Redis) -> None:
    caps = Quotas(max_stored_bytes=1000)
    enqueue(store, "a1", "alpha", caps, stored=600)
    with pytest.raises(OverQuota) as over:
        enqueue(store, "a2", "alpha", caps, stored=600)
    assert over.value.what == "stored"
    enqueue(store, "b1", "beta", caps, stored=600)
    store.settle_stored("alpha", "a1", 300)  # the upload went, 300 bytes of artifacts stay
    assert store.stored_bytes("alpha") == 300
    enqueue(store, "a2", "alpha", caps, stored=600)
    with pytest.raises(OverQuota):
        enqueue(store, "a3", "alpha", caps, stored=200)
    redis_client.delete(job_key("a1"))  # as the retention TTL would
    store.prune_indexes()
    assert store.stored_bytes("alpha") == 600
    enqueue(store, "a3", "alpha", caps, stored=200)


def test_an_owner_at_its_byte_cap_may_not_start_a_job_that_keeps_artifacts(store: JobStore) -> None:
    caps = Quotas(max_stored_bytes=1000)
    enqueue(store, "a1", "alpha", caps, stored=1000)
    with pytest.raises(OverQuota):
        enqueue(store, "a2", "alpha", caps, artifacts=True)
    enqueue(store, "a3", "alpha", caps)  # keeps nothing: fine


def upload(server: Server, token: str, size: int, script: str = "true",
           **query: str) -> Any:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        member = tarfile.TarInfo("blob")
        member.size = size
        tar.addfile(member, io.BytesIO(os.urandom(size)))  # random: gzip cannot shrink it
    extra = "".join(f"&{k}={v}" for k, v in query.items())
    return server.request("POST", f"/api/jobs/upload?script={script}{extra}",
                          gzip.compress(raw.getvalue()),
                          headers={"Content-Type": "application/gzip"}, token=token)


def test_429_names_the_cap_on_queued_jobs(make_server: MakeServer, tmp_path: Path) -> None:
    tokens_file = tmp_path / "tokens"
    alpha = add_token(tokens_file, "alpha")
    server = make_server(env={"REMOTE_CI_TOKENS_FILE": str(tokens_file), "REMOTE_CI_CONCURRENCY": "1",
                              "REMOTE_CI_MAX_QUEUED_PER_OWNER": "2"}, wait_workers=1)
    server.make_workspace("alpha")
    blocker = server.submit("sleep 60")
    server.wait_status(blocker["id"], ("running",))
    body = {"workspace": "alpha", "script": "true"}
    first = [server.request("POST", "/api/jobs/rsync", body, token=alpha) for _ in range(2)]
    assert [r.status for r in first] == [202, 202]
    refused = server.request("POST", "/api/jobs/rsync", body, token=alpha)
    assert refused.status == 429 and refused.headers["retry-after"] == "30"
    assert "REMOTE_CI_MAX_QUEUED_PER_OWNER" in refused.json()["error"]
    assert server.request("POST", "/api/jobs/rsync", body).status == 202  # the admin is not held up
    server.request("POST", f"/api/jobs/{first[0].json()['id']}/cancel", token=alpha)
    assert server.request("POST", "/api/jobs/rsync", body, token=alpha).status == 202
    server.request("POST", f"/api/jobs/{blocker['id']}/cancel")


def test_429_names_the_cap_on_stored_bytes_and_artifacts_count(make_server: MakeServer) -> None:
    server = make_server(env={"REMOTE_CI_MAX_STORED_MB_PER_OWNER": "1"})
    kept = upload(server, TOKEN, 700 * 1024, "cp%20blob%20out", artifacts='["out"]')
    assert kept.status == 202, kept.body
    assert server.wait_final(kept.json()["id"])["status"] == "success"
    refused = upload(server, TOKEN, 400 * 1024)  # 700 KB of artifacts are kept
    assert refused.status == 429 and refused.headers["retry-after"] == "300"
    assert "REMOTE_CI_MAX_STORED_MB_PER_OWNER" in refused.json()["error"]
    assert list((server.data_dir / "uploads").iterdir()) == []  # the refused body is not kept
    assert upload(server, TOKEN, 200 * 1024).status == 202

