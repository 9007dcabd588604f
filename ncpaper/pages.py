"""The book pages' plumbing: each page makes one or two calls here and displays what they return.

Everything a page shows that depends on its runs (the figure with its download links, anchor, citation
line and provenance; the sentences with numbers; the tables) is built here, so that it is tested, and so
that a notebook run outside the book (Jupyter, a download of the executed notebook) shows the same
figure and prose: the prose is Markdown output, the figure an HTML block holding the image itself.

Figures are saved as ``book/figures/<stem>.png`` and ``.pdf`` (fixed names; the book's Sphinx extension
copies them to the same place in the site), and the figure's anchor is ``#<stem with dashes>``.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import math
import numbers
import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import pandas as pd
import yaml

from . import __version__
from . import analysis as _analysis

__all__ = ["COLUMN_LABELS", "FigureFiles", "FigurePage", "PhasePage", "after_interpolation_markdown",
           "after_interpolation_summary", "after_interpolation_table", "bibtex_from_citation", "citation",
           "code_commit", "figure_page", "figures_dir", "page_figure", "phase_page", "pilot_table", "pooling_text",
           "readable_columns", "reproduce_runs", "show", "table", "table_html", "verdict_sentence"]

REPO = Path(__file__).resolve().parents[1]

COLUMN_LABELS = {
    "weight_decay": "λ", "seed": "seed", "epoch": "epoch", "train_error": "training error",
    "test_error": "test error", "train_loss": "training loss", "eps": "ε", "nc1": "NC1",
    "nc2_equinorm_means": "NC2 equinorm, means", "nc2_equiangular_means": "NC2 equiangular, means",
    "nc2_maxangle_means": "NC2 max-angle, means", "nc2_equinorm_weights": "NC2 equinorm, W",
    "nc2_equiangular_weights": "NC2 equiangular, W", "nc2_maxangle_weights": "NC2 max-angle, W",
    "nc2_equinorm_weights_centred": "NC2 equinorm, W centred",
    "nc2_equiangular_weights_centred": "NC2 equiangular, W centred", "nc3": "NC3",
    "nc3_centred": "NC3 (W centred)", "nc4": "NC4", "fit_term": "fit term", "w_mean_cosine": "mean cos(W rows)",
}


def readable_columns(columns) -> list[str]:
    """Column names as a reader reads them (``nc2_equinorm_means`` -> "NC2 equinorm, means")."""
    return [COLUMN_LABELS.get(c, c) for c in columns]


def figures_dir(root: str | os.PathLike = ".") -> Path:
    return Path(root) / "book" / "figures"


def code_commit() -> str:
    """The commit of the ncpaper code that runs now (short), "+ uncommitted changes" when the tree is dirty."""
    from .results import _git_state

    return _describe_git(_git_state())


def _describe_git(git: dict | None) -> str:
    git = git or {}
    commit = (git.get("commit") or "unknown")[:10]
    return commit + (" + uncommitted changes" if git.get("dirty") else "")


def citation(path: str | os.PathLike | None = None) -> dict:
    """The repository's ``CITATION.cff`` (the one citation source), parsed."""
    path = Path(path) if path else REPO / "CITATION.cff"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the book's citations are generated from CITATION.cff")
    return yaml.safe_load(path.read_text())


def _bib_authors(authors: list[dict]) -> str:
    names = []
    for a in authors:
        names.append(f"{a['family-names']}, {a['given-names']}" if "family-names" in a else "{" + a["name"] + "}")
    return " and ".join(names)


def bibtex_from_citation(cff: dict) -> str:
    """BibTeX for the reproduction (``@misc``, classic BibTeX) and the paper it reproduces (``citing.bibtex``)."""
    from .citing import bibtex, source_archive

    return bibtex(cff, source_archive())


def _significant(digits: int):
    """A cell formatter: floats to ``digits`` significant digits (0.0001234, 1.2e-07, 0.5; 12,345 whole when
    it has more digits before the point), anything else as it is."""
    def shown(value):
        if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):  # NumPy floats too
            value = float(value)
            return f"{value:,.0f}" if abs(value) >= 10**digits else f"{value:.{digits}g}"
        return value
    return shown


def table_html(frame: pd.DataFrame, caption: str, formats: dict | None = None, precision: int = 4,
               index: bool = False) -> str:
    """A table as HTML: readable headers, a caption, padded cells, scrolling inside its box when wide.

    Floats show ``precision`` significant digits unless ``formats`` (column -> format string or function)
    says otherwise; missing values show as a dash."""
    shown = frame.rename(columns=dict(zip(frame.columns, readable_columns(frame.columns), strict=True)))
    if index:
        shown = shown.rename_axis(index=readable_columns([shown.index.name])[0] if shown.index.name else None)
    formats = {COLUMN_LABELS.get(k, k): v for k, v in (formats or {}).items()}
    default = _significant(precision)
    styler = shown.style.format({column: formats.get(column, default) for column in shown.columns},
                                na_rep="–").set_caption(html.escape(caption))
    styler = styler.set_table_attributes('class="nc-table"')
    if not index:
        styler = styler.hide(axis="index")
    else:
        styler = styler.format_index("{:g}" if pd.api.types.is_float_dtype(shown.index) else "{}")
    return f'<div class="nc-table-wrap">{styler.to_html()}</div>'


def table(frame: pd.DataFrame, caption: str, **options) -> _HTML:
    """:func:`table_html` as a displayable object."""
    return _HTML(table_html(frame, caption, **options))


class _HTML:
    """Rich output: HTML for browsers and Jupyter; an image (when given) for other renderers."""

    def __init__(self, text: str, png: bytes | None = None):
        self.text, self.png = text, png

    def _repr_mimebundle_(self, include=None, exclude=None):
        bundle = {"text/html": self.text}
        if self.png is not None:
            bundle["image/png"] = base64.b64encode(self.png).decode()
        return bundle


class _Markdown:
    def __init__(self, text: str):
        self.text = text

    def _repr_markdown_(self):
        return self.text


def show(*items) -> None:
    """Display Markdown strings (prose) and HTML blocks (figures, tables) in order."""
    from IPython.display import display

    for item in items:
        if item:
            display(_Markdown(item) if isinstance(item, str) else item)


@dataclass
class FigureFiles:
    """A saved figure: its fixed files, its anchor in the page, its caption, alt text and citation line."""

    stem: str
    png: Path
    pdf: Path
    caption: str
    alt: str
    cite: str
    generated_by: str

    @property
    def anchor(self) -> str:
        return self.stem.replace("_", "-")

    def html(self) -> _HTML:
        png = self.png.read_bytes()
        src = "data:image/png;base64," + base64.b64encode(png).decode()
        href = f"../figures/{self.stem}"
        text = (f'<figure class="nc-figure" id="{self.anchor}">'
                f'<a href="{href}.png" title="the full-size PNG"><img src="{src}" alt="{html.escape(self.alt)}"></a>'
                f'<figcaption><p>{_inline(self.caption)} <a class="headerlink" href="#{self.anchor}" '
                f'title="link to this figure">#</a></p>'
                f'<p class="nc-downloads">Download: <a href="{href}.png" download>PNG</a> · '
                f'<a href="{href}.pdf" download>PDF</a></p>'
                f'<p class="nc-cite"><strong>How to cite this figure:</strong> {_inline(self.cite)}</p>'
                f'<p class="nc-generated">{_inline(self.generated_by)}</p></figcaption></figure>')
        return _HTML(text, png)


def _inline(text: str) -> str:
    """Escape text for HTML, keeping `code` spans, **bold** and *italics*, and $maths$ as MathJax inline maths."""
    out = html.escape(text, quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    out = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)
    out = re.sub(r"(?<![\w*])\*([^*\s][^*]*?)\*(?![\w*])", r"<em>\1</em>", out)
    return re.sub(r"\$([^$]+)\$", r'<span class="math notranslate nohighlight">\\(\1\\)</span>', out)


def page_figure(fig, stem: str, runs, profile: str, *, figure_id, what: str, notebook: str, params: str,
                caption: str, alt: str, root=".", rerun: str | None = None) -> FigureFiles:
    """Save a page's figure under ``book/figures/<stem>`` with its provenance, and close it.

    Every figure carries the same two lines: how to cite it (``what``, at the code's commit) and what
    generated it (``notebooks/<notebook>`` with ``params``, the runs' commits, the version and the licences).
    """
    import matplotlib.pyplot as plt

    from .citing import LICENCE_SHORT, cite_line
    from .plots import runs_provenance, save_figure

    commit = code_commit()
    generated = (f"Generated by `notebooks/{notebook}` ({params}) at commit `{commit}` with ncpaper {__version__}, "
                 f"from {len(runs)} runs trained at commit(s) {_run_commits(runs)}. "
                 f"Licence: {LICENCE_SHORT}.")
    png, pdf = save_figure(fig, figures_dir(root) / stem, runs_provenance(runs, profile, figure_id))
    plt.close(fig)
    return FigureFiles(stem, png, pdf, caption, alt, cite_line(what, rerun=rerun), generated)


def _run_commits(runs) -> str:
    commits = sorted({_describe_git(r.meta.get("git")) for r in runs})
    return ", ".join(f"`{c}`" for c in commits)


def pooling_text(run) -> str:
    """", images averaged over 2x2 pixel blocks (16x16 inputs)" for a run on pooled images, "" otherwise."""
    k = run.config.input_pool
    if k == 1:
        return ""
    height, width = run.meta["input_shape"][-2:]
    return f", images averaged over {k}x{k} pixel blocks ({height}x{width} inputs)"


def _lambdas(values) -> str:
    return ", ".join(f"{v:g}" for v in sorted(values))


# Our criterion (not the paper's) for "Neural Collapse with weight decay" at the last epoch: the terminal phase
# (training error at most TERMINAL_TRAIN_ERROR) and NC1 and NC3 COLLAPSE_FACTOR times below lambda = 0.
COLLAPSE_FACTOR = 5.0
TERMINAL_TRAIN_ERROR = _analysis.TERMINAL_TRAIN_ERROR  # "fits its training set", on every page


def _judged(last_means: pd.DataFrame, nc3_column: str, factor: float, max_train_error: float) -> dict:
    """lambda > 0 -> ((NC1 ratio, NC3 ratio) against lambda = 0, fits the training set?), in lambda order."""
    if 0.0 not in last_means.index:
        raise ValueError("the figure has no lambda = 0 runs to compare with; add 0 to its weight decays")
    zero = last_means.loc[0.0]
    return {w: ((zero["nc1"] / last_means.loc[w, "nc1"], zero[nc3_column] / last_means.loc[w, nc3_column]),
                bool(last_means.loc[w, "train_error"] <= max_train_error))
            for w in sorted(w for w in last_means.index if w > 0)}


def _criterion_groups(judged: dict, factor: float) -> tuple[list, list, list]:
    """:func:`_judged`'s lambdas split by our criterion: (met, fit but collapse less than ``factor``-fold, unfit)."""
    met = [w for w, (ratios, fits) in judged.items() if fits and min(ratios) >= factor]
    weak = [w for w, (ratios, fits) in judged.items() if fits and min(ratios) < factor]
    unfit = [w for w, (_, fits) in judged.items() if not fits]
    return met, weak, unfit


def verdict_sentence(last_means: pd.DataFrame, nc3_column: str, factor: float = COLLAPSE_FACTOR,
                     max_train_error: float = TERMINAL_TRAIN_ERROR) -> str:
    """Our criterion (not the paper's): in the terminal phase (training error at most ``max_train_error``)
    with NC1 and NC3 at the last epoch ``factor`` times smaller than without weight decay? One clause per
    lambda > 0, with the numbers."""
    judged = _judged(last_means, nc3_column, factor, max_train_error)
    zero = last_means.loc[0.0]
    met, missed = [], []
    for wd, (ratios, fits) in judged.items():
        row = last_means.loc[wd]
        if min(ratios) >= factor and fits:
            met.append(f"λ = {wd:g}")
        else:
            why = "" if fits else f"training error {row['train_error']:.2%}, over {max_train_error:.1%}; "
            missed.append(f"λ = {wd:g} ({why}NC1 {row['nc1']:.3g} against {zero['nc1']:.3g}, NC3 "
                          f"{row[nc3_column]:.3g} against {zero[nc3_column]:.3g}"
                          + (f"; training error {row['train_error']:.2%})" if fits else ")"))
    return (f"**Our criterion** (ours, not the paper's): in the terminal phase (training error at most "
            f"{max_train_error:.1%}) with NC1 and NC3 at the last epoch at least {factor:g} times smaller than "
            f"without weight decay? " + (f"Yes at {' and '.join(met)}. " if met else "")
            + (f"**No** at {'; '.join(missed)}." if missed else ""))


def after_interpolation_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per lambda, over seeds as "mean (min-max)": t* and NC1 / the figure's NC3 at t*, at the end, their fall
    after t* and their late slope (:func:`ncpaper.analysis.after_interpolation`)."""
    from .necessity import spread
    from .plots import classifier_column

    nc3 = classifier_column(table, "nc3")[0]
    after = _analysis.after_interpolation(table, columns=("nc1", nc3))
    rows = []
    for wd, runs in after.groupby("weight_decay"):
        row = {"λ": f"{wd:g}", "fit (seeds)": f"{int(runs['t_star'].notna().sum())} of {len(runs)}",
               "t*": spread(runs["t_star"])}
        for column, name in (("nc1", "NC1"), (nc3, "NC3")):
            row.update({f"{name} at t*": spread(runs[f"{column}_at_t_star"]),
                        f"{name} end": spread(runs[f"{column}_end"]), f"{name} fall": spread(runs[f"{column}_fall"]),
                        f"{name} slope": spread(runs[f"{column}_slope"], 2)})
        rows.append(row)
    return pd.DataFrame(rows)


def after_interpolation_table(table: pd.DataFrame, label: str) -> _HTML:
    """:func:`after_interpolation_summary` as the pages show it."""
    caption = (f"Table: {label} after interpolation. t*: the first measured epoch from which the training error "
               f"stays at most {TERMINAL_TRAIN_ERROR:.1%}; NC1 and NC3 at t* and at the last epoch, their fall after "
               f"t* (times smaller) and late slope d log / d log epoch over the last decade of epochs; mean "
               f"(min–max) over seeds; dashes: never fits (or too few measurements for a slope).")
    return _HTML(table_html(after_interpolation_summary(table), caption))


def after_interpolation_markdown(table: pd.DataFrame) -> str:
    """One sentence: what NC1 does after t* without weight decay, against the weight decays (seed means)."""
    from .necessity import spread

    after = _analysis.after_interpolation(table, columns=("nc1",))
    zero, positive = after[after["weight_decay"] == 0], after[after["weight_decay"] > 0]
    if zero.empty or zero["t_star"].isna().any():
        return ("**After interpolation.** Without weight decay the network does not fit its training set (training "
                f"error at most {TERMINAL_TRAIN_ERROR:.1%}) on every seed, so nothing is measured after t*.")
    falls = positive.groupby("weight_decay")["nc1_fall"].mean().dropna()
    with_wd = (f"; with weight decay it fell {_span(falls.tolist())}-fold after its own t*" if len(falls) else "")
    return (f"**After interpolation.** Without weight decay the network fits its training set from epoch "
            f"t* = {spread(zero['t_star'])} on, and from there NC1 went from {spread(zero['nc1_at_t_star'])} to "
            f"{spread(zero['nc1_end'])}, a {spread(zero['nc1_fall'])}-fold fall (late slope "
            f"{spread(zero['nc1_slope'], 2)}){with_wd}. [Is weight decay necessary?](necessity.ipynb) follows this "
            f"for twenty times longer.")


def _commit_notes(notes: list[str]) -> str:
    """" Commit note(s) in the runs' metadata: ..." for a page's prose; "" when there is none."""
    if len(notes) <= 1:
        return "".join(f" Commit note in the runs' metadata: {n}." for n in notes)
    return " Commit notes in the runs' metadata: " + "; ".join(f"({k}) {n}" for k, n in enumerate(notes, 1)) + "."


def _percent(value: float) -> str:
    """A rate as a percentage with two significant digits, so that 4e-5 reads 0.004%, not 0.00%; 0 reads 0%."""
    return f"{value * 100:.2g}%"


def _span(values, shown=lambda v: f"{v:.3g}") -> str:
    """"a" or "a-b" for the smallest and largest of ``values``, each as ``shown`` writes it (default: ratios to
    3 digits, 1.4, 7.13, 43.7)."""
    lo, hi = min(values), max(values)
    return shown(lo) if shown(lo) == shown(hi) else f"{shown(lo)}-{shown(hi)}"


def _change(ratio: float) -> str:
    if not math.isfinite(ratio):
        return "undefined"
    return f"{ratio:.1f} times smaller" if ratio >= 1 else f"{1 / ratio:.1f} times larger"


def _configs_with(configs, weight_decays):
    """The profile's runs at the given lambdas (same settings and seeds); None: the profile's own lambdas."""
    if weight_decays is None:
        return configs
    weight_decays = [float(w) for w in weight_decays]
    if 0.0 not in weight_decays:
        raise ValueError(f"weight_decays={weight_decays}: include 0, the runs every lambda is compared with")
    first = [c for c in configs if c.weight_decay == configs[0].weight_decay]  # one per seed
    return [dataclasses.replace(c, weight_decay=w) for w in sorted(set(weight_decays)) for c in first]


@dataclass
class FigurePage:
    """Figure 1 or 2 on one profile: the runs, the figure, and what the page says about them."""

    profile: str
    figure: str
    figure_number: int
    published: bool = False
    weight_decays: list | None = None
    root: str = "."
    missing: str | None = None
    runs: list = field(default_factory=list)

    @cached_property
    def table(self) -> pd.DataFrame:
        from .results import collect

        return collect(self.runs)

    @cached_property
    def last(self) -> pd.DataFrame:
        """End of training (last "train" row), mean over seeds, one row per lambda."""
        from .analysis import last_rows

        return last_rows(self.table).groupby("weight_decay").mean(numeric_only=True)

    @cached_property
    def seeds(self) -> int:
        """Seeds per weight decay (the most any lambda has)."""
        return int(self.table.groupby("weight_decay")["seed"].nunique().max())

    @property
    def over_seeds(self) -> str:
        """How the page's numbers combine seeds: "one seed (seed 0)" or "means over 3 seeds"."""
        return (f"one seed (seed {int(self.table['seed'].iloc[0])})" if self.seeds == 1
                else f"means over {self.seeds} seeds")

    @property
    def nc3_column(self) -> str:
        from .plots import classifier_column

        return classifier_column(self.table, "nc3")[0]

    @property
    def label(self) -> str:
        return f"Figure {self.figure_number} ({self.runs[0].meta['data_source'] if self.runs else self.figure}, " \
               f"profile '{self.profile}')"

    @cached_property
    def description(self) -> str:
        c, source, classes = self.runs[0].config, self.runs[0].meta["data_source"], self.runs[0].meta["num_classes"]
        test = (f", test error on {c.n_test_per_class * classes:,} test images ({c.n_test_per_class:,} per class)"
                if c.n_test_per_class else "")
        return (f"{source}{pooling_text(self.runs[0])}, {c.n_per_class * classes:,} training images "
                f"({c.n_per_class:,} per class){test}, {c.architecture()}, {c.epochs} epochs, profile '{self.profile}'")

    @cached_property
    def files(self) -> FigureFiles:
        from .plots import figure_nc
        from .rerun import figure_stem, rerun_of

        lambdas = sorted(self.last.index)
        rerun = rerun_of("figure.md", {"profile": self.profile, "figure": self.figure,
                                       "figure_number": self.figure_number, "published": self.published,
                                       "weight_decays": self.weight_decays})
        stem = figure_stem(f"figure{self.figure_number}_{self.figure}_{self.profile}", rerun)
        side = "classifier rows, centred" if self.nc3_column.endswith("_centred") else "classifier rows"
        seeds = "lines are means over seeds, bands their range" if self.seeds > 1 else \
            f"{self.over_seeds} per weight decay"
        caption = (f"**Figure {self.figure_number}.** {self.description}. Neural Collapse measured on the training "
                   f"set at log-spaced epochs, one colour, marker and line style per weight decay "
                   f"(λ = {_lambdas(lambdas)}; black, solid: none); {seeds}. Filled markers: class means; open "
                   f"markers: {side}; dotted verticals: learning-rate cuts. All settings are our choices (see "
                   f"Reproduce and cite).")
        nc1 = ", ".join(f"{self.last.loc[w, 'nc1']:.3g} at λ = {w:g}" for w in lambdas)
        alt = (f"Eight line plots against training epoch on a log axis, one line per weight decay "
               f"(λ = {_lambdas(lambdas)}): training error, training loss, NC1, NC2 equinorm, NC2 equiangularity, "
               f"NC2 max-angle, NC3 and NC4. At the last epoch NC1 is {nc1}.")
        params = f"profile='{self.profile}', figure='{self.figure}'" + (
            f", weight_decays={[float(w) for w in lambdas]}" if self.weight_decays is not None else "")
        c = self.runs[0].config
        fig = figure_nc(self.table, title=f"Figure {self.figure_number} · {self.runs[0].meta['data_source']} · "
                                          f"profile '{self.profile}'",
                        rate_cuts=[round(m * c.epochs) for m in c.lr_milestones])
        return page_figure(fig, stem, self.runs, self.profile, figure_id=self.figure_number,
                           what=f"Figure {self.figure_number} ({self.runs[0].meta['data_source']}, profile "
                                f"'{self.profile}')",
                           notebook="figure.md", params=params, caption=caption, alt=alt, root=self.root,
                           rerun=rerun)

    def interactive(self):
        """The figure as an interactive figure (``ncpaper.interactive``); None while the runs are missing."""
        if self.missing:
            return None
        from .interactive import nc_figure

        c = self.runs[0].config
        return nc_figure(self.table, title=f"Figure {self.figure_number} · {self.runs[0].meta['data_source']} · "
                                           f"profile '{self.profile}'", name=self.files.stem,
                         rate_cuts=[round(m * c.epochs) for m in c.lr_milestones])

    def figure_block(self):
        if self.missing:
            return self.missing
        return self.files.html()

    def results_markdown(self) -> str:
        """What the figure shows at the last epoch, one sentence per lambda, then our 5x criterion."""
        if self.missing:
            return ""
        last, nc3 = self.last, self.nc3_column
        zero = last.loc[0.0]
        nc3_name = "NC3 (W centred)" if nc3.endswith("_centred") else "NC3"
        parts = [f"**At the last epoch** ({self.runs[0].config.epochs}; {self.over_seeds}). Without weight decay "
                 f"NC1 is {zero['nc1']:.3g} and {nc3_name} {zero[nc3]:.3g} (training error {zero['train_error']:.2%})."]
        for wd in sorted(w for w in last.index if w > 0):
            row = last.loc[wd]
            parts.append(f"With $\\lambda = {wd:g}$: NC1 {row['nc1']:.3g}, **{_change(zero['nc1'] / row['nc1'])}**, "
                         f"and {nc3_name} {row[nc3]:.3g}, **{_change(zero[nc3] / row[nc3])}** (training error "
                         f"{row['train_error']:.2%}).")
        return (" ".join(parts) + "\n\n" + verdict_sentence(last, nc3) + "\n\n" + self.takeaway() + "\n\n"
                + after_interpolation_markdown(self.table))

    def after_table(self):
        """t*, and NC1 and NC3 after it, per lambda (:func:`after_interpolation_table`)."""
        return None if self.missing else after_interpolation_table(self.table, self.label)

    def takeaway(self, factor: float = COLLAPSE_FACTOR, max_train_error: float = TERMINAL_TRAIN_ERROR) -> str:
        """One paragraph on what to take from the figure, claiming no more than the measured numbers show."""
        from .analysis import last_rows, settled_rows, training_rows

        last, nc3 = self.last, self.nc3_column
        zero = last.loc[0.0]
        n_train = self.runs[0].config.n_per_class * self.runs[0].meta["num_classes"]
        judged = _judged(last, nc3, factor, max_train_error)
        ratio = {w: ratios for w, (ratios, _) in judged.items()}
        met, weak, unfit = _criterion_groups(judged, factor)
        seeds = "one seed" if self.seeds == 1 else f"{self.seeds} seeds, means"
        spread_note = (" How much such numbers move from seed to seed is measured on [Is weight decay necessary?]"
                       "(necessity.ipynb) (3 seeds of smaller runs, twenty times longer) and on the phase diagrams "
                       "(3 seeds at every λ)." if self.seeds == 1 else "")
        train = training_rows(self.table)
        first_nc1 = train[train["epoch"] == train["epoch"].min()].groupby("weight_decay")["nc1"].mean()[0.0]
        parts = [f"**What to take from it** ({seeds} per λ).{spread_note} Without weight decay the network "
                 f"{'fits' if zero['train_error'] <= max_train_error else 'does not fit'} its training set (error "
                 f"{_percent(zero['train_error'])}), with NC1 {zero['nc1']:.3g} and NC3 {zero[nc3]:.3g} at the last "
                 f"epoch"
                 + (f": NC1 fell {first_nc1 / zero['nc1']:.3g}-fold from the first measured epoch ({first_nc1:.3g}) "
                    f"without weight decay too." if first_nc1 > zero["nc1"] else
                    f", NC1 no lower than at the first measured epoch ({first_nc1:.3g}).")]
        if met:
            wrong = _span([last.loc[w, "train_error"] * n_train for w in met], "{:,.0f}".format)  # seed means
            nc1s, nc3s = [ratio[w][0] for w in met], [ratio[w][1] for w in met]
            worst = max(last.loc[w, "train_error"] for w in met)
            fit = (f"it fits all {n_train:,} training images" if worst == 0 else
                   f"it misclassifies {wrong} of its {n_train:,} training images (error at most {_percent(worst)})")
            parts.append(f"With λ = {_lambdas(met)} {fit} and NC1 is {_span(nc1s)} and NC3 {_span(nc3s)} times "
                         f"smaller: the collapse of NC1 and NC3 with weight decay that the paper's figures show.")
            edge = [w for w in met if min(ratio[w]) < 1.1 * factor]
            if edge:
                parts.append(f"At λ = {_lambdas(edge)} the smaller ratio is within 10% of our {factor:g}x threshold: "
                             f"met, but only just, on {seeds.split(',')[0]}.")
        if weak:
            parts.append(f"At λ = {_lambdas(weak)} it fits but collapses less than {factor:g}-fold.")
        if unfit:
            errors = _span([last.loc[w, "train_error"] for w in unfit], _percent)
            parts.append(f"From λ = {min(unfit):g} on, more of the training set than our {max_train_error:.1%} "
                         f"threshold stays misclassified (error {errors}), so those runs are outside the terminal "
                         f"phase as we define it.")
        epochs = self.runs[0].config.epochs
        earlier = last_rows(train[train["epoch"] <= 0.75 * epochs]).groupby("weight_decay")["nc1"].mean()
        if len(earlier) == len(last):
            fall = earlier / last["nc1"]
            with_wd = [fall[w] for w in ratio]
            parts.append(f"Over the last quarter of training NC1 still fell {_span(with_wd)} times with weight decay "
                         f"and {fall[0.0]:.1f} times without: the ratios are those at epoch {epochs}, not limits.")
        if "test_error" in last.columns and last["test_error"].notna().all():
            parts.append(f"Test error is {zero['test_error']:.1%} without weight decay and "
                         f"{_span([last.loc[w, 'test_error'] for w in ratio], '{:.1%}'.format)} with it.")
        settled = settled_rows(self.table)
        balance = [c for c in settled.columns if c.startswith("balance_")]
        if len(settled) and balance:
            trained = last_rows(train)
            trained = trained[trained["weight_decay"] > 0][balance]
            gradients = [c for c in settled.columns if c.startswith("settle_gradient_")]
            hidden = sorted(gradients, key=lambda c: int(c.rsplit("_", 1)[1]))[:-1]  # W_L's is 0 after settling
            still = (f" The hidden layers are not stationary there: their gradient "
                     f"$\\lVert\\nabla_{{W_l}}J\\rVert_F / \\lVert\\lambda W_l\\rVert_F$ (0 at a critical point) "
                     f"is {_span(settled[hidden].max(axis=1).tolist())} (largest layer, per run)."
                     if hidden and settled[hidden].notna().all().all() else "")
            parts.append(f"Lemma 2's balance (every layer's ratio 1) holds at critical points, and SGD's last "
                         f"iterate is not one: there the ratios reach {float(trained.max().max()):.3g}. Settling "
                         f"after training (Lemma 2 page: the classifier solved exactly and every unit and layer "
                         f"rescaled) stops only when every layer is within 0.1% of it, so the settled runs meet it "
                         f"by construction (here within {float((settled[balance] - 1).abs().max().max()):.2%}); it "
                         f"makes the objective stationary in those directions, not in every direction.{still}")
        return " ".join(parts)

    def end_table(self):
        if self.missing:
            return None
        columns = ["train_error", "test_error", "train_loss", "eps", "nc1", "nc2_equinorm_means",
                   "nc2_equiangular_means", self.nc3_column, "nc4"]
        caption = (f"Table: {self.label} at the last training epoch, {self.over_seeds}, one row per weight decay "
                   f"(the measurements on the training set; test error on the test set).")
        return _HTML(table_html(self.last[columns], caption, index=True,
                                formats={"train_error": "{:.2%}", "test_error": "{:.2%}"}))

    def origin_markdown(self) -> str:
        from .analysis import provenance_table

        if self.missing:
            return ""
        prov = provenance_table(self.runs)
        if self.published:
            notes = sorted({n for r in self.runs if (n := (r.meta.get("git") or {}).get("note"))})
            return (f"These are **published results**: the book reads them from `published/{self.profile}/` and "
                    f"does not retrain them. They were trained on {', '.join(sorted(prov['device'].unique()))} in "
                    f"{', '.join(sorted(prov['precision'].unique()))}, finished between "
                    f"{prov['finished (UTC)'].min()} and {prov['finished (UTC)'].max()} UTC; their wall times "
                    f"(training, measuring and settling, some side by side on one device) add up to "
                    f"{prov['wall min'].sum():.0f} minutes. `ncpaper sweep --profile {self.profile} --figure "
                    f"{self.figure} --retrain-published` retrains them (resuming from checkpoints) and `ncpaper "
                    f"publish --profile {self.profile}` republishes them."
                    + _commit_notes(notes))
        return (f"These runs are trained when the book is built (or read from the result cache, keyed by their "
                f"configuration and data) on the profile '{self.profile}'.")

    def provenance(self):
        from .analysis import provenance_table

        if self.missing:
            return None
        shown = provenance_table(self.runs).drop(columns=["data", "training images"])  # both are in the caption
        return _HTML(table_html(shown, f"Table: the runs of {self.label}: where, when and by which code each was "
                                       "trained.", formats={"wall min": "{:.1f}", "images/s": "{:,.0f}",
                                                            "λ": "{:g}"}))

    def glue(self) -> None:
        """Glue the page's numbers (for other pages and the tests), without displaying anything."""
        from myst_nb import glue

        glue("missing", self.missing or "", display=False)
        if self.missing:
            return
        last, nc3 = self.last, self.nc3_column
        glue("caption", self.description, display=False)
        glue("data_source", self.runs[0].meta["data_source"], display=False)
        glue("epochs", int(self.runs[0].config.epochs), display=False)
        glue("nc1_nowd", float(last.loc[0.0, "nc1"]), display=False)
        glue("nc3_nowd", float(last.loc[0.0, nc3]), display=False)
        for k, wd in enumerate(sorted(w for w in last.index if w > 0), start=1):
            glue(f"wd{k}", float(wd), display=False)
            glue(f"nc1_ratio_{k}", float(last.loc[0.0, "nc1"] / last.loc[wd, "nc1"]), display=False)
            glue(f"nc3_ratio_{k}", float(last.loc[0.0, nc3] / last.loc[wd, nc3]), display=False)
        glue("figure_anchor", self.files.anchor, display=False)


def _not_published(profile: str, figure: str, err: Exception) -> str:
    return (f"**Not yet published.** The full-scale runs of this figure (profile '{profile}', as it stands in "
            f"`ncpaper/profiles.yaml`) are not in `published/{profile}/` yet, so there is no figure here. To make "
            f"them: `ncpaper sweep --profile {profile} --figure {figure}`, then `ncpaper publish --profile "
            f"{profile}`, and rebuild the book. ({err})")


def figure_page(profile: str, figure: str, figure_number: int, published: bool = False,
                weight_decays: list | None = None, root: str | os.PathLike = ".", progress: bool = True
                ) -> FigurePage:
    """Load (published) or train the figure's runs and return its page; a missing publication is a note."""
    from .profiles import figure_configs
    from .published import MissingResultError, load_published
    from .sweep import run_sweep

    configs = _configs_with(figure_configs(profile, figure), weight_decays)
    page = FigurePage(profile, figure, figure_number, published, weight_decays, str(root))
    if published:
        try:
            page.runs = load_published(configs, profile)
        except MissingResultError as err:
            page.missing = _not_published(profile, figure, err)
    else:
        page.runs = run_sweep(configs, progress=progress)
    return page


@dataclass
class PhasePage:
    """The weight-decay phase diagram on one dataset: end-of-training rows over many lambdas and seeds."""

    profile: str
    dataset: str
    runs: list
    root: str = "."

    @cached_property
    def table(self) -> pd.DataFrame:
        from .results import collect

        return collect(self.runs)

    @cached_property
    def last(self) -> pd.DataFrame:
        from .analysis import last_rows

        return last_rows(self.table)

    def after_table(self):
        """t*, and NC1 and NC3 after it, per lambda (:func:`after_interpolation_table`)."""
        return after_interpolation_table(self.table, f"The phase diagram ({self.runs[0].meta['data_source']}, "
                                                     f"profile '{self.profile}')")

    @cached_property
    def description(self) -> str:
        c = self.runs[0].config
        return (f"{self.runs[0].meta['data_source']}{pooling_text(self.runs[0])}, {c.n_per_class} training "
                f"images per class, {c.architecture()}, {c.epochs} epochs, "
                f"{self.last['weight_decay'].nunique()} weight decays x {self.last['seed'].nunique()} seeds, "
                f"profile '{self.profile}'")

    @cached_property
    def files(self) -> FigureFiles:
        from .plots import figure_phase

        stem = f"phase_{self.dataset}_{self.profile}"
        caption = (f"**Phase diagram ({self.runs[0].meta['data_source']}).** {self.description}. End-of-training "
                   f"measurements on the training set against λ (log axis; left of the grey line: λ = 0). "
                   f"Lines: mean over seeds; bands and bars: min-max over seeds. Last panel: each layer's Lemma 2 "
                   f"ratio $\\lambda\\lVert W_l\\rVert_F^2 / \\frac{{1}}{{NC}}\\sum_i\\langle y_i - f_i, f_i\\rangle$ "
                   f"(1 at a critical point).")
        lambdas = self.last["weight_decay"]
        alt = (f"Eight plots against weight decay λ on a log axis, from {lambdas[lambdas > 0].min():g} "
               f"to {lambdas.max():g}, with λ = 0 as a square at the left: training error, ε, NC1, "
               f"NC2 equinorm and equiangularity of the class means, NC3, NC4, and each layer's Lemma 2 ratio.")
        fig = figure_phase(self.last, title=f"Phase diagram · {self.runs[0].meta['data_source']} · profile "
                                            f"'{self.profile}'")
        return page_figure(fig, stem, self.runs, self.profile, figure_id=f"phase diagram ({self.dataset})",
                           what=f"phase diagram ({self.runs[0].meta['data_source']}, profile '{self.profile}')",
                           notebook="phase.md", params=self._params, caption=caption, alt=alt, root=self.root)

    @property
    def _params(self) -> str:
        return f"profile='{self.profile}', dataset='{self.dataset}'"

    def interactive(self):
        """The phase diagram as an interactive figure (``ncpaper.interactive``)."""
        from .interactive import phase_figure

        return phase_figure(self.last, title=f"Phase diagram · {self.runs[0].meta['data_source']} · profile "
                                             f"'{self.profile}'", name=f"phase_{self.dataset}_{self.profile}")

    @cached_property
    def layers_files(self) -> FigureFiles:
        """NC1 and CDNV of every hidden layer at the end of training against lambda (seeds as bands)."""
        from .plots import figure_layers_phase

        source = self.runs[0].meta["data_source"]
        stem = f"phase_layers_{self.dataset}_{self.profile}"
        caption = (f"**Phase diagram per layer ({source}).** {self.description}. NC1 and CDNV of each hidden "
                   f"layer's features at the end of training against λ (log axis; λ = 0 at the left); lines: mean "
                   f"over seeds, bands: min-max. The last hidden layer's NC1 is the NC1 of the figure above.")
        alt = (f"Two plots against weight decay λ on a log axis, one line per hidden layer: NC1 and CDNV at the "
               f"end of training, {source}.")
        fig = figure_layers_phase({source: self.last})
        return page_figure(fig, stem, self.runs, self.profile, figure_id=f"phase diagram per layer ({self.dataset})",
                           what=f"phase diagram per layer ({source}, profile '{self.profile}')",
                           notebook="phase.md", params=self._params, caption=caption, alt=alt, root=self.root)

    def onset_markdown(self) -> str:
        from .analysis import collapse_onset, fit_breakdown, seed_summary

        nc1 = seed_summary(self.last, "nc1")
        errors = seed_summary(self.last, "train_error")["mean"]
        onset, breakdown = collapse_onset(self.last, "nc1", 10), fit_breakdown(self.last)
        dead = self.last[~self.last["nc_defined"].astype(bool)]
        onset_text = (f"**λ = {onset:.2g}** (NC1 {nc1.loc[onset, 'mean']:.3g})" if onset == onset
                      else "**no λ in this range**")
        breakdown_text = f"**λ = {breakdown:.2g}**" if breakdown == breakdown else "**no λ in this range**"
        fit = [w for w in nc1.index if w > 0 and errors[w] <= TERMINAL_TRAIN_ERROR]
        both = [w for w in fit if nc1.loc[w, "mean"] < nc1.loc[0.0, "mean"] / 10]
        both_text = (f"Both tests pass at λ = {_lambdas(both)} only" if both else
                     "No λ here passes both tests")
        above = [w for w in fit if nc1.loc[w, "mean"] >= nc1.loc[0.0, "mean"]]
        above_text = (f" NC1 is not monotone in λ: at λ = {_lambdas(above)} the network fits, yet NC1 (mean "
                      f"{_span([nc1.loc[w, 'mean'] for w in above])}) is no lower than without weight decay."
                      if above else "")
        dead_text = (f"From λ = {dead['weight_decay'].min():.2g} on, {len(dead)} of the runs end at the trivial "
                     "solution f = 0 (every last-layer feature zero), where Neural Collapse is undefined; they "
                     "appear as gaps."
                     if len(dead) else "No run ends at the trivial solution f = 0.")
        minutes = sum(r.meta["timings"]["train_seconds"] + r.meta["timings"]["measure_seconds"] for r in self.runs) / 60
        return (f"**Where collapse sets in.** Without weight decay NC1 ends at {nc1.loc[0.0, 'mean']:.3g} (mean of "
                f"{self.last['seed'].nunique()} seeds). The smallest weight decay at which NC1 falls below a tenth "
                f"of that (our threshold) is {onset_text}. Training stops fitting the data (mean training error above "
                f"{TERMINAL_TRAIN_ERROR:.1%}, the threshold of every page) from {breakdown_text}. {both_text} (the "
                f"network fits and NC1 is below a tenth of λ = 0's).{above_text} Both edges depend on the training "
                f"budget: a smaller $\\lambda$ needs more steps (about $1/(\\eta\\lambda)$) to reach the balanced "
                f"critical point of Lemma 2, which is why the smallest values here behave like $\\lambda = 0$ "
                f"([Is weight decay necessary?](necessity.ipynb) follows four of these λ for twenty times the "
                f"epochs). {dead_text} The {len(self.runs)} runs took {minutes:.1f} CPU-minutes.{self._pooling_note()}")

    def _pooling_note(self) -> str:
        k = self.runs[0].config.input_pool
        if k == 1:
            return ""
        height, width = self.runs[0].meta["input_shape"][-2:]
        return (f" These runs see each image averaged over {k}x{k} pixel blocks ({height}x{width} inputs): a "
                f"first layer {k * k} times cheaper, so that the sweep fits the book's CPU budget. Side by side with "
                f"the sweep on the full images (`benchmarks/README.md`: {height * k}x{width * k} inputs, twice the "
                "epochs at half the rate) it puts the NC1 and centred-NC3 onsets and the fit breakdown at the same "
                f"λ, and collapses less at the strongest λ that still fit (its first layer has 1/{k * k} of the "
                "weights) and misclassifies more past the breakdown.")

    def theory_summary(self) -> tuple[pd.DataFrame, str]:
        """Per lambda > 0 (seed means): Lemma 2's balance per layer, RHS against symmetric quasi-interpolation,
        the classifier rows' mean cosine against -1/(C-1); and a sentence on the fitting lambdas."""
        import sympy

        from . import theory

        num_classes = self.runs[0].meta["num_classes"]
        positive = self.last[self.last["weight_decay"] > 0].copy()
        layers = sorted((c for c in positive.columns if c.startswith("layer_norm_sq_")), key=lambda c: int(c[14:]))
        symmetric = sympy.lambdify((theory.eps, theory.C), theory.derive_balance_identity())  # Lemma 2's RHS
        positive["symmetric"] = [float(symmetric(e, num_classes)) for e in positive["eps"]]
        fits = positive["fit_term"] > 0
        for k, layer in enumerate(layers, start=1):
            name = "λ‖W_L‖²/RHS" if k == len(layers) else f"λ‖W_{k}‖²/RHS"
            positive[name] = (positive["weight_decay"] * positive[layer] / positive["fit_term"]).where(fits)
        positive["RHS/symmetric"] = (positive["fit_term"] / positive["symmetric"]).where(fits)
        nc3 = "nc3_centred" if "nc3_centred" in positive.columns else "nc3"  # the figure's NC3 (W centred)
        columns = ["train_error", "eps", "nc1", nc3, "RHS/symmetric"] + [c for c in positive.columns if "/RHS" in c]
        summary = positive.groupby("weight_decay")[[*columns, "off_class_mean", "w_mean_cosine"]].mean()
        summary["cos predicted (ε, δ)"] = [  # the two-parameter theorem's raw-row cosine at the measured eps, delta
            theory.two_parameter_predictions(e, d, w, num_classes)["raw_cosine"]
            for w, e, d in zip(summary.index, summary["eps"], summary["off_class_mean"], strict=True)]
        summary["-1/(C-1)"] = -1 / (num_classes - 1)
        summary = summary.rename(columns={"off_class_mean": "δ"})
        fitting = summary[summary["train_error"] <= TERMINAL_TRAIN_ERROR]
        if len(fitting):
            deviation = (fitting["λ‖W_L‖²/RHS"] - 1).abs()
            close_from = next((w for w in deviation.index if (deviation.loc[w:] <= 0.05).all()), None)
            cosine = float((fitting["w_mean_cosine"] - fitting["cos predicted (ε, δ)"]).abs().max())
            simplex = float((fitting["w_mean_cosine"] + 1 / (num_classes - 1)).abs().max())
            balance = (f"within {deviation.max():.1%} of Lemma 2's right-hand side at every $\\lambda$"
                       if close_from is None or close_from == deviation.index[0] else
                       f"within 5% of Lemma 2's right-hand side from $\\lambda$ = {close_from:g} on, and off by up to "
                       f"{deviation.max():.1%} at smaller $\\lambda$ (where fewer steps than about "
                       f"$1/(\\eta\\lambda)$ were run)")
            text = (f"Where the network still fits the data (training error at most {TERMINAL_TRAIN_ERROR:.1%}), the "
                    f"classifier's $\\lambda\\lVert W_L\\rVert^2$ is {balance}. The mean cosine between the "
                    f"(uncentred) classifier rows is within {cosine:.3f} of the two-parameter theorem's prediction "
                    f"$-\\delta(1 - 2\\epsilon + (C-2)\\delta) / (\\epsilon(1-\\epsilon) - (C-1)\\delta^2)$ at the "
                    f"measured $\\epsilon$ and $\\delta$ ([Theorem](theorem.ipynb)), and within {simplex:.3f} of "
                    f"$-1/(C-1)$, the value the raw rows reach only when $\\delta = \\epsilon/(C-1)$.")
        else:
            text = (f"No weight decay in this sweep fits the data (training error at most {TERMINAL_TRAIN_ERROR:.1%}), "
                    "so nothing is compared.")
        return summary.rename_axis("λ"), text

    def theory_table(self):
        summary, _ = self.theory_summary()
        caption = (f"Table: the theorem's predictions across λ ({self.runs[0].meta['data_source']}, profile "
                   f"'{self.profile}'), means over seeds; dashes: f = 0.")
        return _HTML(table_html(summary, caption, precision=3, index=True))

    def glue(self) -> None:
        from myst_nb import glue

        from .analysis import collapse_onset

        onset = collapse_onset(self.last, "nc1", 10)
        glue("n_runs", len(self.runs), display=False)
        glue("n_lambdas", int(self.last["weight_decay"].nunique()), display=False)
        glue("n_seeds", int(self.last["seed"].nunique()), display=False)
        glue("onset_text", f"λ = {onset:.2g}" if onset == onset else "no λ in this range", display=False)
        glue("phase_caption", self.description, display=False)
        glue("figure_anchor", self.files.anchor, display=False)


def phase_page(profile: str, dataset: str, root: str | os.PathLike = ".", progress: bool = True) -> PhasePage:
    from .profiles import phase_configs
    from .sweep import run_sweep

    return PhasePage(profile, dataset, run_sweep(phase_configs(profile, dataset), progress=progress), str(root))


# (section, entry, label) of every part of the book; the reproduce page lists what each took.
PARTS = [("figures", "cifar10", "Figure 1"), ("figures", "mnist", "Figure 2"),
         ("phase", "mnist", "Phase diagram, MNIST"), ("phase", "cifar10", "Phase diagram, CIFAR-10")]


HORIZON_PARTS = [("mnist_schedule", "MNIST, rate cut"), ("mnist_constant", "MNIST, constant rate"),
                 ("cifar10_schedule", "CIFAR-10, rate cut"), ("cifar10_constant", "CIFAR-10, constant rate")]


def reproduce_runs(profile: str, published_profile: str = "paper", progress: bool = True,
                   horizon_profile: str = "horizon"):
    """What each part of the book took (one row per part) and the settings it used (one sentence per part).

    The book's own profile is trained (or read from the cache); the full-scale profile's figures are read
    from ``published/``, and a part not published yet is listed as such.
    """
    from .analysis import provenance_table
    from .profiles import load_profile, section_configs
    from .published import MissingResultError, load_published
    from .sweep import run_sweep

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
        rate = f"lr {c.lr:g} cut {1 / c.lr_gamma:g}-fold at {cuts} of them" if cuts else f"constant lr {c.lr:g}"
        pooled = f", images averaged over {c.input_pool}x{c.input_pool} pixels" if c.input_pool > 1 else ""
        choices.append(f"{label} (profile '{part_profile}'): {c.architecture()}{pooled}, {c.n_per_class:,} images "
                       f"per class, {c.epochs:,} epochs, {rate}, "
                       f"batch {c.batch_size}, λ in {{{_lambdas({x.weight_decay for x in configs})}}}")
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
    return pd.DataFrame(rows), choices, missing


def full_scale_verdicts(profile: str = "paper") -> str:
    """One sentence per figure of the published full-scale runs: the λ that meet our criterion and the training
    error of those that do not fit (read from ``published/<profile>/``; "" for a figure not published)."""
    from .analysis import last_rows
    from .profiles import figure_configs
    from .published import MissingResultError, load_published
    from .results import collect

    sentences = []
    for figure, label in (("cifar10", "CIFAR-10"), ("mnist", "MNIST")):
        try:
            runs = load_published(figure_configs(profile, figure), profile)
        except MissingResultError:
            continue
        last = last_rows(collect(runs)).groupby("weight_decay").mean(numeric_only=True)
        judged = _judged(last, "nc3_centred", COLLAPSE_FACTOR, TERMINAL_TRAIN_ERROR)
        met, _, unfit = _criterion_groups(judged, COLLAPSE_FACTOR)
        n_train = runs[0].config.n_per_class * runs[0].meta["num_classes"]
        parts = []
        if met:
            parts.append(f"λ = {_lambdas(met)} {'meets' if len(met) == 1 else 'meet'} the criterion")
        if unfit:
            parts.append("λ = " + ", ".join(f"{w:g} leaves {_percent(last.loc[w, 'train_error'])}" for w in unfit)
                         + " of the training set misclassified")
        sentences.append(f"On all {n_train:,} {label} images " + " and ".join(parts) + ".")
    return " ".join(sentences)


PILOTS_CSV = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "pilots-h100.csv"


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
