"""Artifacts, one feature: the patterns a submission names and the manifest (manifest), keeping
files when a job ends (collector, in the executor), serving them (routes, in the API).
May import: the shared top-level modules, remoteci.web (routes only), remoteci.auth.
"""
