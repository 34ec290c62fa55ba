#!/usr/bin/env bash
# The README's demo command: set up .venv, then segment a synthetic scan with the bundled model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/sciseg demo "$@"
