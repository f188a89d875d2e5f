"""Routes, and how a feature's routes register with the app: a function from the app's parts to a
list of routes, named in remoteci/routes.py, so the app never imports a feature's module.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from remoteci.auth.identity import Identity
from remoteci.config import Settings
from remoteci.history.db import HistoryDB
from remoteci.queue import JobStore
from remoteci.web import metrics
from remoteci.web.messages import Request, Response
from remoteci.web.streams import StreamSlots

Handler = Callable[[Request], Response]


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler
    auth: str  # "none", "api" (Bearer) or "page" (Bearer or Basic)
    label: str = field(init=False)  # the route in request metrics: /api/jobs/{id}

    def __post_init__(self) -> None:
        object.__setattr__(self, "label", metrics.route_label(self.pattern.pattern))


@dataclass(frozen=True)
class AppParts:
    """What the app lends to a feature's routes: shared state, built once per process."""

    settings: Settings
    store: JobStore
    history: HistoryDB
    streams: StreamSlots
    find_job: Callable[[str, Identity], dict[str, Any]]  # the job, or the API's 404


RouteSet = Callable[[AppParts], list[Route]]


def path(pattern: str) -> re.Pattern[str]:
    """A route's path pattern; named groups become `Request.params` (`id` must be a job id)."""
    return re.compile(pattern)
