"""Reaching Redis and the counters kept in it: the connection, the embedded redis-server, outage
logging, the duration histograms and the per-hour activity. The job schema itself is
remoteci/queue.py. May import: the shared top-level modules and remoteci.system.
"""
