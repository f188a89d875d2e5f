"""Pipelines: ordered stages of parallel jobs on one code snapshot, advanced inside the jobs'
own final transitions (see lua.py), so a stage starts exactly once whatever process dies."""
