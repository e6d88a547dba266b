#!/usr/bin/env bash
# Set up and run the tests. Usage: bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
VENV="${VENV:-.venv}"
exec "$VENV/bin/python" -m pytest "$@"
