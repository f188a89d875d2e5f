"""Worker hosts by name: the node name a submission's `host` pins a job to, and the per-host
table that stats, pages and metrics show. Pure functions; the queues live in remoteci/queue.py.
May import: the shared top-level modules (errors) only.
"""
