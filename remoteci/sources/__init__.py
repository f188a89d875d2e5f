"""A job's code: rsync workspaces, uploaded archives (tar, zip, zstd) and git clones, checked on
submission in the API and put into the job's dir by the executor.
May import: the shared top-level modules only.
"""
