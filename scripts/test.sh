#!/usr/bin/env bash
# Install what the tests need (the venv, Chromium for the site test, TeX for the PDF test), lint, run every test.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k metrics`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
unset PYTHONDONTWRITEBYTECODE  # pip did not byte-compile (install.sh): a module compiled once is kept
if ! command -v chromium >/dev/null; then
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null;
  else echo "Chromium is needed for the site test: sudo apt-get install chromium" >&2; exit 1; fi
fi
bash scripts/build-pdf.sh --install-only  # TeX and poppler-utils for tests/test_pdf.py (apt-get, ~200 MB, if missing)
source scripts/data-root.sh
.venv/bin/ruff check ncpaper tests benchmarks scripts
.venv/bin/python -m pytest "$@"
