"""Who may do what: project tokens (file format, hashing, the `token` command) and the identity
of a request (admin or project) with its rules on jobs, workspaces and git hosts.
May import: core (errors, config) and remoteci.sources.git (a repo URL's host).
"""
