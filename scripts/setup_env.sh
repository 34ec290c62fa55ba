#!/usr/bin/env bash
# Creates .venv (if needed) and installs SCIseg with its test dependencies.
# torch is pinned by constraints.txt in the same resolve as nnunetv2, so pip never pulls a
# CUDA build or a newer torch (see README, "Installation").
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.sciseg-installed
wanted=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$wanted" ]; then
  echo "Installing SCIseg into .venv (the first time takes a few minutes; log: .venv/install.log)..."
  {
    .venv/bin/python -m pip install --upgrade pip &&
    .venv/bin/python -m pip install -c constraints.txt "torch==$(sed -n 's/^torch==//p' constraints.txt)" &&
    .venv/bin/python -m pip install -c constraints.txt -e ".[test,web,int8]"
  } > .venv/install.log 2>&1 || { tail -n 40 .venv/install.log; echo "Installation failed; the full log is .venv/install.log"; exit 1; }
  echo "$wanted" > "$stamp"
fi
