"""The worker process: the supervisor that forks executors (remoteci/executor.py) and the
auxiliary processes (webhook deliverer, history writer), and a job's dirs under the work dir.
May import: core, remoteci.store, remoteci.system, remoteci.sources and the features' workers.
"""
