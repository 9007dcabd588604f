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
  # --no-compile: byte-compiling all ~13,000 modules was 72 of the install's ~160 s; the ~3,600 that the book
  # imports are compiled below, two processes at a time, and Python compiles any other on its first import.
  # torch first, pinned: a CPU-or-CUDA build that torchvision 0.29.1 works with
  .venv/bin/python -m pip install --quiet --no-compile "torch==2.14.1" "torchvision==0.29.1"
  .venv/bin/python -m pip install --quiet --no-compile -e ".[dev]"
  compile() { env -u PYTHONDONTWRITEBYTECODE .venv/bin/python -c "import $1"; }
  compile "torch, torchvision, numpy, pandas, seaborn, matplotlib.pyplot, matplotlib.backends.backend_pdf, \
    fontTools.subset, sympy, dask.distributed, ncpaper.book, ncpaper.cli, ncpaper.pages, ncpaper.plots" &
  compile "papermill, nbclient, ipykernel.kernelapp, ipykernel.ipkernel, debugpy, jupytext, myst_nb, \
    jupyter_book.cli.main, jupyter_cache, sphinx.application, sphinx.builders.html, pytest, hypothesis"
  wait $!
  touch "$stamp"
fi
