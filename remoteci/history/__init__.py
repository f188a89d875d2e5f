"""Durable history, one feature: final job records in SQLite or PostgreSQL (db, migrations), the
Redis hand-off and the writer process (store, writer), and the API's reads from it (api).
May import: the shared top-level modules, remoteci.store, remoteci.system, remoteci.auth.
"""
