#!/usr/bin/env bash
# Set up rtserver in .venv and run the chat example on embedded defaults
# (in-memory hub, RAM sessions, no external service). Extra arguments go to the app,
# e.g. --port 9000, --broker redis://127.0.0.1:6379/0 --workers 2.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python -m examples.chat "$@"
