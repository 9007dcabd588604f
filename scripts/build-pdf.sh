#!/usr/bin/env bash
# The PDF edition: typeset the executed pages (book/executed/, from `bash scripts/build-book.sh`) as one
# PDF, _build/latex/ncpaper.pdf, and re-render the site so that every page links it (_build/html/ncpaper.pdf).
# Executes and trains nothing. Installs the TeX it needs with apt-get when missing (Debian/Ubuntu, as root):
# XeLaTeX, latexmk and the LaTeX packages Jupyter Book's class loads (about 200 MB to download, 600 MB
# installed), not the 1.4 GB texlive-fonts-extra: book/latex/bbm.sty stands in for its one package.
#   bash scripts/build-pdf.sh                 # install TeX if needed, build the PDF, re-render the site
#   bash scripts/build-pdf.sh --install-only  # only install TeX and poppler-utils (what CI does)
set -euo pipefail
cd "$(dirname "$0")/.."
TEX_PACKAGES="texlive-xetex texlive-latex-extra texlive-latex-recommended texlive-fonts-recommended
  texlive-pictures latexmk fonts-freefont-otf poppler-utils"
missing=""
for tool in xelatex latexmk makeindex pdfimages pdftotext; do command -v "$tool" >/dev/null || missing="$missing $tool"; done
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing TeX (missing:$missing) with apt-get ..." >&2
    apt-get update -qq
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $TEX_PACKAGES >/dev/null
  else
    echo "the PDF needs TeX (missing:$missing); install it with:" >&2
    echo "  sudo apt-get install --no-install-recommends $(echo $TEX_PACKAGES)" >&2
    echo "(or your system's TeX Live with XeLaTeX, latexmk, tikz/pgfplots and the FreeFont OpenType fonts)" >&2
    exit 1
  fi
fi
[ "${1:-}" = "--install-only" ] && exit 0
bash scripts/install.sh
.venv/bin/ncpaper pdf
