#!/usr/bin/env bash
# Set up everything the tests need, then run the whole suite (lint, types, tests).
# As root on Debian it installs the system packages the tests use where missing:
# chromium (browser tests), redis-server (hub and sessions), wrk (benchmarks).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  missing=""
  command -v chromium >/dev/null || missing="$missing chromium"
  command -v redis-server >/dev/null || missing="$missing redis-server"
  command -v wrk >/dev/null || missing="$missing wrk"
  if [ -n "$missing" ]; then
    echo "installing Debian packages:$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
  fi
fi
scripts/setup.sh test,redis,dev
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy rtserver
.venv/bin/python -m pytest "$@"
