#!/usr/bin/env bash
# Build the book end to end: install, run every notebook on a profile (default: "default"), render
# _build/html. Results are cached in results/, so a rerun only re-executes and re-renders.
#   PROFILE=smoke bash scripts/build-book.sh     # seconds, for a quick look
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
unset PYTHONDONTWRITEBYTECODE  # pip did not byte-compile (install.sh): a module compiled once is kept
source scripts/data-root.sh
.venv/bin/ncpaper book --profile "${PROFILE:-default}" --workers "${WORKERS:-2}"
