"""The worker process: the supervisor that forks executors (remoteci/executor.py) and the
auxiliary processes (history writer, webhook deliverer), and a job's dirs under the work dir.
May import: the shared top-level modules, remoteci.executor, remoteci.store, remoteci.system,
remoteci.sources, and the features' worker sides (history, webhooks, artifacts, pipelines).
"""
