"""The operating system's side, for any process: process trees, a signal self-pipe, systemd's
sd_notify and switching a job to its own Unix user. Plain stdlib code.
May import: the shared top-level modules only.
"""
