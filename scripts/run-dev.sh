#!/usr/bin/env bash
# `make run`: start `serve` on the embedded default with everything under ./var, so a first
# try needs no root and touches nothing else. A token is made once and kept in var/token.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p var/workspace
if [[ -z "${REMOTE_CI_TOKEN:-}" ]]; then
  [[ -s var/token ]] || (umask 077 && .venv/bin/python -c 'import secrets; print(secrets.token_urlsafe(32))' > var/token)
  REMOTE_CI_TOKEN="$(cat var/token)"
fi
export REMOTE_CI_TOKEN
export REMOTE_CI_DATA_DIR="${REMOTE_CI_DATA_DIR:-$PWD/var/data}"
# As root, jobs run as users of their own, who must be able to pass every parent of their dirs:
# a checkout under /root is closed to them, /tmp is not.
if [[ $(id -u) == 0 ]]; then default_work=/tmp/remote-ci-dev; else default_work=$PWD/var/work; fi
export REMOTE_CI_WORK_DIR="${REMOTE_CI_WORK_DIR:-$default_work}"
export REMOTE_CI_WORKSPACE_DIR="${REMOTE_CI_WORKSPACE_DIR:-$PWD/var/workspace}"
port="${REMOTE_CI_PORT:-5000}"
cat <<MSG
Remote CI on http://127.0.0.1:$port  (Ctrl-C stops it and its private redis)
  token:      export REMOTE_CI_TOKEN=$REMOTE_CI_TOKEN   (kept in var/token)
  workspaces: $REMOTE_CI_WORKSPACE_DIR
  try it:     mkdir -p $REMOTE_CI_WORKSPACE_DIR/demo && echo 'echo hello from \$PWD' > $REMOTE_CI_WORKSPACE_DIR/demo/run.sh
              curl -s -H "Authorization: Bearer \$REMOTE_CI_TOKEN" -d '{"workspace": "demo", "script": "sh run.sh"}' http://127.0.0.1:$port/api/jobs/rsync
              curl -s -H "Authorization: Bearer \$REMOTE_CI_TOKEN" http://127.0.0.1:$port/api/jobs/<id>/logs
  status page: http://127.0.0.1:$port/  (any user name, the token as password)
MSG
exec .venv/bin/python remoteci.py serve
