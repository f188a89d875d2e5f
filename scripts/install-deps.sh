#!/usr/bin/env bash
# Install what Remote CI needs on Debian/Ubuntu when it is missing: the system packages
# (redis-server, rsync, git, curl, zstd, python3-venv) and a venv with requirements.txt.
# Usage: scripts/install-deps.sh [requirements-file]   (default requirements.txt)
set -euo pipefail
cd "$(dirname "$0")/.."
requirements="${1:-requirements.txt}"

missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v rsync >/dev/null || missing+=(rsync)
command -v git >/dev/null || missing+=(git)
command -v curl >/dev/null || missing+=(curl)
command -v zstd >/dev/null || missing+=(zstd)  # unpacks .tar.zst uploads
[[ -e /usr/share/zoneinfo/Etc/UTC ]] || missing+=(tzdata)  # schedules' time zones (zoneinfo)
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
if ((${#missing[@]})); then
  echo "installing system packages: ${missing[*]}" >&2
  sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi

stamp=".venv/.installed-$(basename "$requirements")"
if [[ ! -x .venv/bin/python ]]; then
  python3 -m venv .venv
fi
if [[ ! -f "$stamp" || "$requirements" -nt "$stamp" || requirements.txt -nt "$stamp" ]]; then
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -r "$requirements"
  touch "$stamp"
fi
