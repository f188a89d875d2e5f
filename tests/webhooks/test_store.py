"""The Redis side of deliveries, against a real redis-server: nothing lost, nothing recreated."""

from __future__ import annotations

import redis

from remoteci.queue import WEBHOOKS, job_key
from remoteci.store.redis_conn import Client as Redis
from remoteci.webhooks.store import RETRY, WebhookStore, inflight_key


def test_a_retry_leaves_in_flight_and_comes_back_only_when_due(redis_client: redis.Redis,
                                                               store_client: Redis) -> None:
    store = WebhookStore(store_client)
    redis_client.hset(job_key("j1"), "status", "success")
    redis_client.lpush(WEBHOOKS, "j1")
    assert store.take("d1", 0.1) == "j1"
    store.settle("d1", "j1", {"webhook_status": "pending"}, retry_at=1000.0)
    assert redis_client.llen(inflight_key("d1")) == 0
    assert store.promote_due(999.0) == 0
    assert store.promote_due(1000.0) == 1
    assert redis_client.zcard(RETRY) == 0 and store.take("d1", 0.1) == "j1"


def test_an_expired_record_is_never_recreated(redis_client: redis.Redis, store_client: Redis) -> None:
    store = WebhookStore(store_client)
    store.update("gone", {"webhook_attempts": "1"})
    store.settle("d1", "gone", {"webhook_status": "delivered"}, retry_at=None)
    assert not redis_client.exists(job_key("gone"))


def test_a_dead_deliverers_deliveries_are_taken_next(redis_client: redis.Redis, store_client: Redis) -> None:
    store = WebhookStore(store_client)
    redis_client.lpush(WEBHOOKS, "a", "b")
    assert store.take("d1", 0.1) == "a"
    store.heartbeat("d1")
    redis_client.delete("rci:deliverer:d1")
    assert store.dead_deliverers() == ["d1"]
    assert store.hand_back("d1") == 1
    assert store.dead_deliverers() == [] and store.take("d2", 0.1) == "a"
