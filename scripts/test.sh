#!/usr/bin/env bash
# The README's test command: set up .venv and the system packages, lint, then run the whole pytest suite
# and print its 15 slowest tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
bash scripts/system_packages.sh
.venv/bin/ruff check --output-format concise .
exec .venv/bin/python -m pytest -q -ra --durations=15 "$@"
