"""The supervisor's auxiliary processes: long-running loops next to the executors (the history
writer, the webhook deliverer, the schedule ticker), each forked once, restarted when it dies,
stopped at the drain.

A new loop (say, a scheduler) is one more entry in `auxiliaries`: a name and a `main`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from remoteci import events
from remoteci.config import Settings
from remoteci.history.writer import history_main
from remoteci.queue import JobStore
from remoteci.schedules.firing import ticker_main
from remoteci.webhooks.deliverer import STOP_GRACE, deliverer_main
from remoteci.webhooks.store import WebhookStore

COMPONENT = "supervisor"


@dataclass(frozen=True)
class Auxiliary:
    """One auxiliary process: what it runs, and what its death and the drain ask of the supervisor."""

    name: str  # in the log: "<name> <node>:<pid> died ..."
    main: Callable[[Settings, JobStore], None]  # runs in the fork until SIGTERM
    after_death: str = ""  # what the log adds on a restart: why nothing is lost
    stops_last: bool = False  # stopped after the executors: it finishes what their drain queued
    stop_grace: float = 0.0  # seconds it may take after its SIGTERM (stops_last only)
    hand_back: Callable[[JobStore, str], int] | None = None  # a dead one's work back, by its id


def auxiliaries(settings: Settings) -> list[Auxiliary]:
    """The auxiliary processes of this host, in start order."""
    found = []
    if settings.api_url is not None and settings.history.dialect == "sqlite":
        # SQLite history lives in the API's data dir, which a remote worker does not have.
        events.info(COMPONENT, "no history writer on this host: its history would go to a "
                               "SQLite file the API never reads; the API host's `serve` "
                               "writes it, or set REMOTE_CI_HISTORY_URL=postgresql://...")
    else:
        found.append(Auxiliary("history writer", history_main,
                               after_death="what it had not copied waits in Redis"))
    # On every host: a tick's claim in Redis makes its job once, whoever looks first.
    found.append(Auxiliary("schedule ticker", ticker_main,
                           after_death="due ticks wait in Redis for it"))
    if settings.webhooks_enabled:
        found.append(Auxiliary("webhook deliverer", deliverer_main, stops_last=True,
                               stop_grace=STOP_GRACE + settings.webhook_timeout,
                               hand_back=hand_back_deliveries))
    else:
        events.info(COMPONENT, "no webhook deliverer on this host (set REMOTE_CI_WEBHOOK_ALLOW "
                               "and REMOTE_CI_WEBHOOK_SECRET to start one)")
    return found


def dead_deliverers(store: JobStore) -> list[str]:
    """Deliverers on any host whose heartbeat expired: their deliveries may need handing back."""
    return WebhookStore(store.r).dead_deliverers()


def hand_back_deliveries(store: JobStore, deliverer_id: str) -> int:
    """A dead deliverer's in-flight deliveries go back to the queue; a duplicate is harmless."""
    return WebhookStore(store.r).hand_back(deliverer_id)
