"""Who may do what: project tokens (file format, hashing, the `token` command) and the identity
of a request (admin or project) with its rules on jobs, workspaces and git hosts.
May import: the shared top-level modules and remoteci.sources (a repo URL's host).
"""
