"""How the pages' sentences write their numbers: lists of lambdas, percentages, ranges, ratios."""

from __future__ import annotations


def pooling_text(run) -> str:
    """", images averaged over 2x2 pixel blocks (16x16 inputs)" for a run on pooled images, "" otherwise."""
    k = run.config.input_pool
    if k == 1:
        return ""
    height, width = run.meta["input_shape"][-2:]
    return f", images averaged over {k}x{k} pixel blocks ({height}x{width} inputs)"


def number(value, fmt=".2g") -> str:
    """A number as a reader reads it: 2 significant digits by default, whole numbers from 100 on."""
    return f"{value:,.0f}" if fmt == ".2g" and abs(value) >= 100 else f"{value:{fmt}}"


def lambda_list(values) -> str:
    return ", ".join(f"{v:g}" for v in sorted(values))


def commit_notes(notes: list[str]) -> str:
    """" Commit note(s) in the runs' metadata: ..." for a page's prose; "" when there is none."""
    if len(notes) <= 1:
        return "".join(f" Commit note in the runs' metadata: {n}." for n in notes)
    return " Commit notes in the runs' metadata: " + "; ".join(f"({k}) {n}" for k, n in enumerate(notes, 1)) + "."


def percent(value: float) -> str:
    """A rate as a percentage with two significant digits, so that 4e-5 reads 0.004%, not 0.00%; 0 reads 0%."""
    return f"{value * 100:.2g}%"


def span(values, shown=lambda v: f"{v:.3g}") -> str:
    """"a" or "a-b" for the smallest and largest of ``values``, each as ``shown`` writes it (default: ratios to
    3 digits, 1.4, 7.13, 43.7)."""
    lo, hi = min(values), max(values)
    return shown(lo) if shown(lo) == shown(hi) else f"{shown(lo)}-{shown(hi)}"
