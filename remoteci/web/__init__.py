"""The HTTP side's building blocks (the app itself is remoteci/http.py): request and response
types, routing, waitress, uploads, submissions, logs, metrics and the OpenAPI document.
May import: core, remoteci.store, remoteci.system, remoteci.auth, remoteci.sources (validation),
remoteci.history; never remoteci.http, service or cli.
"""
