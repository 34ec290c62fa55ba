#!/usr/bin/env bash
# One short GPU check (at most 5 minutes): SCT's call against the CUDA engine on three ../shared/data scans.
# Usage: benchmarks/gpu_check.sh [OUTPUT.json] [more gpu_check.py options]
# Writes benchmarks/gpu_check.json by default; without an NVIDIA GPU it stops at once (exit code 2).
set -euo pipefail
cd "$(dirname "$0")/.."
output="${1:-benchmarks/gpu_check.json}"
shift || true
python="${PYTHON:-$(command -v python3)}"
if [ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ]; then python=.venv/bin/python; fi
if ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "gpu_check: nvidia-smi is not here: this machine has no NVIDIA driver; run it on a machine with an NVIDIA GPU." >&2
    exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >&2
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" timeout 300 "$python" benchmarks/gpu_check.py -o "$output" --budget-s 240 "$@"
