#!/usr/bin/env bash
# Create .venv and install ncpaper with the book and development extras. Safe to rerun: it only
# reinstalls when pyproject.toml changed since the last install.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
stamp=.venv/.ncpaper-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  # The venv takes 6.3 GB (torch's CUDA build); pip fails with "No space left on device" a minute in without it.
  free_kb=$(df -Pk .venv | awk 'NR == 2 {print $4}')
  if ! compgen -G ".venv/lib/python*/site-packages/torch" >/dev/null && [ "$free_kb" -lt $((7 * 1024 * 1024)) ]; then
    echo "install.sh: the virtual environment needs about 7 GB of free disk (torch's CUDA build is 6.3 GB);" \
      "only $((free_kb / 1024 / 1024)) GB is free on $(df -P .venv | awk 'NR == 2 {print $6}'). Free some space and rerun." >&2
    exit 1
  fi
  .venv/bin/python -m pip install --quiet --upgrade pip
  # --no-compile: byte-compiling all ~13,000 modules took 72 of the install's ~170 s; the ~4,000 that the book
  # imports are compiled by importing them (torch's while pip installs the rest), and Python compiles any
  # other on its first import (the build scripts let it keep them).
  compile() {  # a warm-up only: if it fails, the modules are compiled when first imported
    env -u PYTHONDONTWRITEBYTECODE .venv/bin/python -c "import $1" || echo "(pre-compiling failed: $1)" >&2
  }
  # torch first, pinned: a CPU-or-CUDA build that torchvision 0.29.1 works with
  .venv/bin/python -m pip install --quiet --no-compile "torch==2.14.1" "torchvision==0.29.1"
  compile "torch, torchvision" &
  .venv/bin/python -m pip install --quiet --no-compile -e ".[dev]"
  compile "sympy, dask.distributed, papermill, nbclient, ipykernel.kernelapp, ipykernel.ipkernel, debugpy, \
    jupytext, myst_nb, jupyter_book.cli.main, jupyter_cache, sphinx.application, sphinx.builders.html" &
  compile "numpy, pandas, seaborn, matplotlib.pyplot, matplotlib.backends.backend_pdf, fontTools.subset, \
    pytest, hypothesis"
  wait
  touch "$stamp"
fi
