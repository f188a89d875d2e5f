"""Pipelines: ordered stages of parallel jobs on one code snapshot, advanced inside the jobs'
own final transitions (see lua.py), so a stage starts exactly once whatever process dies.

May import: the core (errors, events, jobs, config, queue), the store, the web side's messages
and validation, auth, sources, artifacts, pages (for its page); lua.py imports nothing, since
queue.py builds its job transitions with it.
"""
