"""The HTTP side's building blocks (the app itself is remoteci/http.py): request and response
types, routing, waitress, uploads, submissions, logs, metrics and the OpenAPI document.
May import: the shared top-level modules, remoteci.store, remoteci.system, remoteci.auth,
remoteci.sources, remoteci.history, and the features' pure rules (artifacts, webhooks, hosts).
"""
