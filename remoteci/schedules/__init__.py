"""Schedules: cron-timed jobs, each due tick made into exactly one job by any worker host.
May import: the shared top-level modules, remoteci.store, remoteci.auth, remoteci.sources,
remoteci.web (the API's routes and a submission's rules) and remoteci.pages (its page).
"""
