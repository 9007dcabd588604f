#!/usr/bin/env bash
# Create .venv and install ncpaper with the book and development extras. Safe to rerun: it only
# reinstalls when pyproject.toml changed since the last install.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
stamp=.venv/.ncpaper-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  # torch first, pinned: a CPU-or-CUDA build that torchvision 0.29.1 works with
  .venv/bin/python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
  .venv/bin/python -m pip install --quiet -e ".[dev]"
  touch "$stamp"
fi
