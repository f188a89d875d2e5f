"""Every feature's routes, in one list: the one place a new feature adds its `routes` function.

The app (remoteci/http.py) never imports a feature; the process that serves it (service.py)
hands it this list, so a route module may build on the web types without an import cycle.
"""

from __future__ import annotations

from remoteci.artifacts import routes as artifacts
from remoteci.pages import routes as pages
from remoteci.pipelines import routes as pipelines
from remoteci.schedules import page as schedule_pages
from remoteci.schedules import routes as schedules
from remoteci.shipping import routes as shipping
from remoteci.web.routing import RouteSet

ROUTE_SETS: list[RouteSet] = [
    artifacts.routes,
    pages.routes,
    pipelines.routes,
    shipping.routes,
    schedules.routes,
    schedule_pages.routes,
]
