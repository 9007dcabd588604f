"""Is this execution of a notebook one of the book's pages, or a reader's rerun with other parameters?

The book's pages are ``ncpaper.book.NOTEBOOKS``: a notebook source and the parameters the book gives it on top
of the defaults in the notebook's parameters cell. A run whose parameters (the profile aside: every page is
built on the profile the book is built on, which the figure names already carry) are those of a book page is
that page; any other run is a rerun: its figures get names made from its parameters, so that it never
overwrites the book's files, and their cite lines say that they are not the book's figures.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
from pathlib import Path

__all__ = ["book_parameters", "describe", "figure_stem", "notebook_defaults", "rerun_of"]

REPO = Path(__file__).resolve().parents[1]


def notebook_defaults(source: str, notebooks: Path | None = None) -> dict:
    """The values of the parameters cell of ``notebooks/<source>`` (a Jupytext MyST notebook): name -> value."""
    text = ((notebooks or REPO / "notebooks") / source).read_text()
    match = re.search(r"```\{code-cell\}[^\n]*\n:tags: \[[^\]]*\bparameters\b[^\]]*\]\n(.*?)```", text, re.S)
    if match is None:
        raise ValueError(f"notebooks/{source} has no parameters cell")
    values = {}
    for node in ast.parse(match.group(1)).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            values[node.targets[0].id] = ast.literal_eval(node.value)
    return values


def book_parameters(source: str, notebooks: Path | None = None) -> list[tuple[str, dict, set]]:
    """(page name, full parameters, the names the page sets itself) of every book page made from ``source``:
    the notebook's defaults with the page's own on top."""
    from .book import NOTEBOOKS

    defaults = notebook_defaults(source, notebooks)
    return [(name, {**defaults, **params}, set(params)) for src, name, params, _ in NOTEBOOKS if src == source]


def _same(one, other) -> bool:
    """Equal as parameters: numbers by value (0 == 0.0), lists element by element."""
    if isinstance(one, (list, tuple)) and isinstance(other, (list, tuple)):
        return len(one) == len(other) and all(_same(a, b) for a, b in zip(one, other, strict=True))
    return one == other


def rerun_of(source: str, params: dict, notebooks: Path | None = None) -> str | None:
    """None when ``params`` (the run's parameters, as its notebook has them) are a book page's; else the
    parameters that differ from the nearest book page's, as ``name=value`` text (``weight_decays=[0, 0.05]``).

    Every parameter counts, ``published`` included. A page that does not fix its profile is built on the book's,
    whichever that is, except a profile that another page of the notebook fixes (the full-scale pages:
    ``profile='paper'``): those figure names are that page's, so a run on it must match that page."""
    pages = book_parameters(source, notebooks)
    fixed = {book.get("profile") for _, book, explicit in pages if "profile" in explicit}
    best = None
    for _, book, explicit in pages:
        free = "profile" not in explicit and params.get("profile") not in fixed
        keys = [k for k in sorted(set(book) | set(params)) if k != "profile" or not free]
        differ = {k: params.get(k) for k in keys if not _same(params.get(k), book.get(k))}
        if best is None or len(differ) < len(best):
            best = differ
    if best is None:  # a notebook the book does not use
        best = dict(params)
    return describe(best) if best else None


def describe(params: dict) -> str:
    """Parameters as text: ``figure='cifar10', weight_decays=[0, 0.05]``."""
    return ", ".join(f"{k}={v!r}" for k, v in params.items())


def _slug(text: str, most: int) -> str:
    """``text`` as one safe part of a file name: letters, digits, ``_`` and ``.``, other runs as ``-``; at most
    ``most`` characters, never starting or ending in ``-`` or ``.`` (so never ``..``)."""
    return re.sub(r"[^A-Za-z0-9_.]+", "-", text.replace("'", "")).strip("-.")[:most].strip("-.")


def figure_stem(stem: str, rerun: str | None) -> str:
    """The figure's file stem, one plain file name (under 150 characters): ``stem`` for a book page; for a rerun,
    a slug of ``stem`` and of its differing parameters and 8 hex digits of their sha256
    (``figure2_mnist_default-rerun-weight_decays-0-0.05-1a2b3c4d``). A ``stem`` that is not already plain (a
    rerun's ``figure_number='2/../x'``) is slugged too, never used as a path."""
    plain = _slug(stem, 80) or "figure"
    if not rerun and plain == stem:
        return stem
    digest = hashlib.sha256(json.dumps(rerun if plain == stem else [stem, rerun]).encode()).hexdigest()[:8]
    return "-".join(part for part in (plain, "rerun", _slug(rerun or "", 48), digest) if part)
