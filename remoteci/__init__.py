"""Remote CI: a small self-hosted job server for public CI pipelines.

At this level: the shared modules any package may import (config, errors, events, jobs,
timefmt, and queue, the whole Redis schema), the entry points (cli, service, routes), the
executor, the WSGI app (http) and the CI client (client, standard library only). Subpackages
are roles (store, system, web, pages, auth, worker, sources) and features (artifacts,
webhooks, history); each says what it may import, and tests/test_architecture.py holds them to it.
"""
