"""Pipelines: ordered stages of parallel jobs on one code snapshot, advanced inside the jobs'
own final transitions (see lua.py), so a stage starts exactly once whatever process dies.

May import: the shared top-level modules, remoteci.store, remoteci.web (messages, routing and
the submission checks), remoteci.auth, remoteci.sources, remoteci.artifacts, remoteci.webhooks
(its URL rules), remoteci.history (a pipeline's final record) and remoteci.pages (for its page).
lua.py and objects.py import nothing of ours: queue.py builds the job transitions with the one,
the webhook deliverer sends the other. The worker side loads cleanup.py and inputs.py only.
"""
