#!/usr/bin/env bash
# Create .venv (Python 3.11+) and install rtserver with the given extras.
# Usage: scripts/setup.sh [EXTRAS]   e.g. scripts/setup.sh test,redis,dev
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
py=""
for candidate in python3.11 python3.12 python3.13 python3; do
  if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    py="$candidate"; break
  fi
done
if [ -z "$py" ]; then
  echo "rtserver needs Python 3.11 or newer (python3.11 not found)" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  if ! "$py" -m venv .venv 2>/dev/null; then
    # Debian splits venv out of the interpreter package.
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
      rm -rf .venv && "$py" -m venv .venv
    else
      echo "cannot create a virtualenv: install python3-venv" >&2
      exit 1
    fi
  fi
fi
stamp=".venv/.installed-${extras:-base}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  spec="."
  [ -n "$extras" ] && spec=".[${extras}]"
  .venv/bin/python -m pip install -q -e "$spec"
  touch "$stamp"
fi
