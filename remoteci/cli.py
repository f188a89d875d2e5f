"""The command line: serve | api | worker | submit | token. Server modules are imported lazily, so
`submit` runs on any CI runner with nothing but the standard library."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

# flag -> environment variable it overrides (the same names, as docs/configuration.md promises)
SERVER_FLAGS = {
    "--host": "REMOTE_CI_HOST",
    "--port": "REMOTE_CI_PORT",
    "--redis-url": "REMOTE_CI_REDIS_URL",
    "--workspace-dir": "REMOTE_CI_WORKSPACE_DIR",
    "--data-dir": "REMOTE_CI_DATA_DIR",
    "--work-dir": "REMOTE_CI_WORK_DIR",
    "--concurrency": "REMOTE_CI_CONCURRENCY",
    "--job-timeout": "REMOTE_CI_JOB_TIMEOUT",
}


def _server_parser(name: str, help_text: str, sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(name, help=help_text, description=help_text)
    for flag, variable in SERVER_FLAGS.items():
        parser.add_argument(flag, dest=variable, metavar=variable, help=f"overrides ${variable}")


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["submit"]:
        from remoteci.client import exit_now
        from remoteci.client import main as submit_main

        exit_now(submit_main(args_list[1:]))
    if args_list[:1] == ["token"]:  # edits a file only: needs neither a token nor redis
        from remoteci.auth.token_cli import main as token_main

        return token_main(args_list[1:])
    parser = argparse.ArgumentParser(prog="remoteci.py", description="Remote CI job server")
    sub = parser.add_subparsers(dest="command", required=True)
    _server_parser("serve", "API, executors and (unless REMOTE_CI_REDIS_URL is set) a private "
                            "redis, all on this host", sub)
    _server_parser("api", "only the HTTP API (needs REMOTE_CI_REDIS_URL)", sub)
    _server_parser("worker", "only the supervisor and its executors (needs REMOTE_CI_REDIS_URL)",
                   sub)
    sub.add_parser("submit", help="the CI-side client; see `submit --help`")
    sub.add_parser("token", help="add, list or remove project tokens; see `token --help`")
    args = parser.parse_args(args_list)

    from remoteci.config import ConfigError, load_settings

    env = dict(os.environ)
    env.update({k: v for k, v in vars(args).items() if k.startswith("REMOTE_CI_") and v is not None})
    try:
        settings = load_settings(env)
    except ConfigError as exc:
        print(f"remoteci.py {args.command}: {exc}", file=sys.stderr)
        return 2

    from remoteci import service
    from remoteci.store.embedded_redis import EmbeddedRedisError

    try:
        if args.command == "serve":
            return service.run_serve(settings)
        if args.command == "api":
            return service.run_api(settings)
        return service.run_worker(settings)
    except (ConfigError, EmbeddedRedisError, OSError) as exc:
        print(f"remoteci.py {args.command}: {exc}", file=sys.stderr)
        return 1
