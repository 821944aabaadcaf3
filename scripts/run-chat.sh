#!/usr/bin/env bash
# Set up rtserver in .venv and run the chat example on embedded defaults
# (in-memory hub, RAM sessions, no external service). Extra arguments go to the app,
# e.g. --port 9000, --broker redis://127.0.0.1:6379/0 --workers 2. With --broker the
# redis extra (redis-py, for the hub and the sessions) is installed too.
set -euo pipefail
cd "$(dirname "$0")/.."
extras=""
for arg in "$@"; do
  case "$arg" in
    --broker | --broker=*) extras="redis" ;;
  esac
done
scripts/setup.sh "$extras"
exec .venv/bin/python -m examples.chat "$@"
