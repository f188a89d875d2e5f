"""The operating system's side, for any process: process trees, a signal self-pipe, systemd's
sd_notify, switching a job to its own Unix user and removing files past the retention.
May import: the shared top-level modules only.
"""
