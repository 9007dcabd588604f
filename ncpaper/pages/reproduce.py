"""The Reproduce and cite page (``notebooks/reproduce.md``): what each part of the book took and with which
settings, the full-scale verdicts, the pilots, and the BibTeX."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .prose import lambda_list, percent
from .verdicts import COLLAPSE_FACTOR, TERMINAL_TRAIN_ERROR, criterion_groups, judge_lambdas


def bibtex_from_citation(cff: dict) -> str:
    """BibTeX for the reproduction (``@misc``, classic BibTeX) and the paper it reproduces (``citing.bibtex``)."""
    from ..citing import bibtex, source_archive

    return bibtex(cff, source_archive())


# (section, entry, label) of every part of the book; the reproduce page lists what each took.
PARTS = [("figures", "cifar10", "Figure 1"), ("figures", "mnist", "Figure 2"),
         ("phase", "mnist", "Phase diagram, MNIST"), ("phase", "cifar10", "Phase diagram, CIFAR-10")]


HORIZON_PARTS = [("mnist_schedule", "MNIST, rate cut"), ("mnist_constant", "MNIST, constant rate"),
                 ("cifar10_schedule", "CIFAR-10, rate cut"), ("cifar10_constant", "CIFAR-10, constant rate")]


def reproduce_runs(profile: str, published_profile: str = "paper", progress: bool = True,
                   horizon_profile: str = "horizon"):
    """What each part of the book took (one row per part), the settings it used (one row per part) and the parts
    not published yet.

    The book's own profile is trained (or read from the cache); the full-scale profile's figures are read
    from ``published/``, and a part not published yet is listed as such.
    """
    from ..analysis import provenance_table
    from ..profiles import load_profile, section_configs
    from ..published import MissingResultError, load_published
    from ..sweep import run_sweep

    parts = [(profile, s, e, label, False) for s, e, label in PARTS]
    parts += [(published_profile, "figures", e, f"{label}, full scale (published)", True)
              for s, e, label in PARTS if s == "figures"]
    parts += [(horizon_profile, "horizon", e, f"Is weight decay necessary? {label} (published)", True)
              for e, label in HORIZON_PARTS]
    rows, choices, missing = [], [], []
    for part_profile, section, name, label, published in parts:
        if name not in load_profile(part_profile).get(section, {}):
            continue
        configs = section_configs(part_profile, section, name)
        c = configs[0]
        cuts = ", ".join(f"{m:.0%}" for m in c.lr_milestones)
        rate = f"lr {c.lr:g} cut {1 / c.lr_gamma:g}-fold at {cuts} of the epochs" if cuts else f"constant lr {c.lr:g}"
        pooled = f", images averaged over {c.input_pool}x{c.input_pool} pixels" if c.input_pool > 1 else ""
        choices.append({"part": label, "profile": part_profile, "network": f"{c.architecture()}{pooled}",
                        "images per class": c.n_per_class, "epochs": c.epochs,
                        "SGD": f"{rate}, momentum {c.momentum:g}",
                        "batch": c.batch_size, "λ": lambda_list({x.weight_decay for x in configs})})
        try:
            runs = load_published(configs, part_profile) if published else run_sweep(configs, progress=progress)
        except MissingResultError:
            missing.append(label)
            continue
        timings = pd.DataFrame([r.meta["timings"] for r in runs])
        prov = provenance_table(runs)
        rows.append({"part": label, "profile": part_profile, "data": prov["data"][0], "runs": len(runs),
                     "epochs": c.epochs, "train images": prov["training images"][0],
                     "minutes": timings["wall_seconds"].sum() / 60,  # as the figure pages count them
                     "measure / train": timings["measure_seconds"].sum() / timings["train_seconds"].sum(),
                     "images/s (median)": timings["images_per_second"].median(), "device": prov["device"][0],
                     "commits": ", ".join(sorted(set(prov["commit"]))), "created": prov["finished (UTC)"].max()})
    return pd.DataFrame(rows), pd.DataFrame(choices), missing


def full_scale_verdicts(profile: str = "paper") -> str:
    """One sentence per figure of the published full-scale runs: the λ that meet our criterion and from which λ on
    the network no longer fits (read from ``published/<profile>/``; "" for a figure not published)."""
    from ..analysis import last_rows
    from ..profiles import figure_configs
    from ..published import MissingResultError, load_published
    from ..results import collect

    sentences = []
    for figure, label in (("cifar10", "CIFAR-10"), ("mnist", "MNIST")):
        try:
            runs = load_published(figure_configs(profile, figure), profile)
        except MissingResultError:
            continue
        last = last_rows(collect(runs)).groupby("weight_decay").mean(numeric_only=True)
        judged = judge_lambdas(last, "nc3_centred", COLLAPSE_FACTOR, TERMINAL_TRAIN_ERROR)
        met, _, unfit = criterion_groups(judged, COLLAPSE_FACTOR)
        n_train = runs[0].config.n_per_class * runs[0].meta["num_classes"]
        parts = []
        if met:
            parts.append(f"λ = {lambda_list(met)} {'meets' if len(met) == 1 else 'meet'} the criterion")
        if unfit:
            worst = max(last.loc[w, "train_error"] for w in unfit)
            where = (f"from λ = {min(unfit):g} on" if all(w in unfit for w in judged if w >= min(unfit))
                     else f"at λ = {lambda_list(unfit)}")
            parts.append(f"{where} the network leaves more than {TERMINAL_TRAIN_ERROR:.1%} of the "
                         f"training set misclassified (up to {percent(worst)}; the figure pages give each λ)")
        sentences.append(f"On all {n_train:,} {label} images " + " and ".join(parts) + ".")
    return " ".join(sentences)


PILOTS_CSV = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "pilots-h100.csv"


def pilot_table(path: Path = PILOTS_CSV) -> pd.DataFrame:
    """The full-scale pilots (benchmarks/pilot_terminal_phase.py), float32 rows, with our terminal-phase criterion.

    Adds the lambda = 0 over lambda ratios of NC1 and the centred NC3 (same dataset and width) and ``meets it``:
    training error <= 0.2% and both ratios >= 5 (our criterion, not the paper's).
    """
    pilots = pd.read_csv(path)
    pilots = pilots[pilots["precision"] == "float32"].copy()
    base = pilots[pilots["lambda"] == 0].set_index(["dataset", "width"])
    keys = list(zip(pilots["dataset"], pilots["width"], strict=True))
    pilots["NC1 ratio"] = [base.loc[k, "nc1"] / v for k, v in zip(keys, pilots["nc1"], strict=True)]
    pilots["NC3 ratio"] = [base.loc[k, "nc3_centred"] / v for k, v in zip(keys, pilots["nc3_centred"], strict=True)]
    pilots["meets it"] = ((pilots["lambda"] > 0) & (pilots["train_error"] <= TERMINAL_TRAIN_ERROR)
                          & (pilots["NC1 ratio"] >= COLLAPSE_FACTOR) & (pilots["NC3 ratio"] >= COLLAPSE_FACTOR))
    return pilots[["dataset", "width", "lambda", "train_error", "test_error", "nc1", "NC1 ratio", "nc3_centred",
                   "NC3 ratio", "meets it", "device"]].reset_index(drop=True)
