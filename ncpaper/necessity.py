"""Is weight decay necessary for Neural Collapse? The paper's central claim, judged on long runs.

The question is asked *after interpolation*: the theorem's collapse is a property of weight decay's critical points,
while Lemma 1 says only that, without weight decay, Neural Collapse solutions do not interpolate (it says nothing
about training dynamics; with the square loss the minimum is reached at finite weights). So for every run we take t*
(the first measured epoch from which the training error stays at most 0.2%,
:func:`ncpaper.analysis.interpolation_epoch`), how far each quantity falls after it, and its late slope
d log q / d log t over the last decade of epochs. :func:`verdict` turns those into "yes", "no" or "not decided
by these runs" for one quantity, with the numbers that decide it; :class:`NecessityPage` reads the published
``horizon`` runs (3,000 epochs, two learning-rate schedules, 3 seeds) and builds the page from them.
:func:`travel_bound` and :func:`float32_loss_floor` say whether a run without weight decay still moves at all.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import cached_property

import pandas as pd

from .analysis import TERMINAL_TRAIN_ERROR, after_interpolation, training_rows

__all__ = ["QUANTITIES", "SCHEDULES", "NecessityPage", "Verdict", "float32_loss_floor", "necessity_page", "spread",
           "travel_bound", "verdict"]

# The quantities judged, as the book names them: the class means' NC1, the centred classifier's NC3, NC4.
QUANTITIES = {"nc1": "NC1", "nc3_centred": "NC3 (W centred)", "nc4": "NC4"}
DATASET_NAMES = {"mnist": "MNIST", "cifar10": "CIFAR-10"}
# The horizon profile's entries are <dataset>_<schedule>.
SCHEDULES = {"schedule": "rate cut tenfold at 80%", "constant": "constant rate"}
# NC4 is a fraction of training examples: at most TERMINAL_TRAIN_ERROR (one image in 500 on the horizon runs)
# counts as reached, whatever a ratio of two such small counts says.
FLOORS = {"nc4": TERMINAL_TRAIN_ERROR}
# "yes" needs lambda = 0 to end at least COLLAPSE_FACTOR times above the best weight decay on every seed pairing,
# and its late rate to need more than REACH times the horizon's epochs to close that gap.
COLLAPSE_FACTOR = 5.0
REACH = 10.0
# "Converged" (NecessityPage.converged): the training loss within this factor of the float32 floor, and the weights
# able to move less than TRAVEL of their norm in as many epochs again.
LOSS_FLOOR_FACTOR = 100.0
TRAVEL = 0.01


@dataclass(frozen=True)
class Verdict:
    """The answer for one quantity on one set of runs (one dataset, one schedule), with what decided it."""

    answer: str  # "yes", "no" or "not decided"
    reason: str
    best_lambda: float = math.nan  # the weight decay (fitting on every seed) with the smallest seed-mean end value
    gap: float = math.nan  # lambda = 0's seed-mean end value over the best lambda's
    worst_gap: float = math.nan  # smallest over seeds of lambda = 0 over the largest of the best lambda
    zero_slope: float = math.nan  # lambda = 0's late slope, mean over seeds
    epochs_to_close: float = math.nan  # at that slope, the epoch where lambda = 0 would reach the best lambda


def spread(values, digits: int = 3) -> str:
    """"mean (min-max)" of ``values`` (over seeds), ``digits`` significant digits; just the value for one."""
    values = [float(v) for v in values if pd.notna(v)]
    if not values:
        return "–"
    mean, lo, hi = sum(values) / len(values), min(values), max(values)
    shown = f"{mean:.{digits}g}"
    return shown if len(values) == 1 or lo == hi else f"{shown} ({lo:.{digits}g}–{hi:.{digits}g})"


def verdict(after: pd.DataFrame, column: str, factor: float = COLLAPSE_FACTOR, reach: float = REACH,
            floor: float = 0.0) -> Verdict:
    """Is weight decay necessary for ``column`` to collapse, on these runs (one dataset, one schedule)?

    ``after``: :func:`~ncpaper.analysis.after_interpolation`'s rows, one per run, lambda = 0 and lambda > 0,
    several seeds each. The rules (ours, not the paper's):

    - "not decided" when lambda = 0 or no lambda > 0 interpolates on every seed (nothing to compare after t*);
    - "no" when lambda = 0 ends within ``factor`` times the best lambda > 0 (seed means), or at most at ``floor``
      (0; for a rate such as NC4, whose resolution is one example, the book passes 0.2%);
    - "yes" when it ends at least ``factor`` times above it on every pairing of seeds, and at lambda = 0's late
      slope s (a power law q ~ t^s) closing the gap would take more than ``reach`` times the last epoch;
    - "not decided" otherwise (the seeds overlap, or lambda = 0 is still falling fast enough to catch up).
    """
    end, slope = f"{column}_end", f"{column}_slope"
    zero = after[after["weight_decay"] == 0]
    fitting = after[after["weight_decay"] > 0].groupby("weight_decay").filter(
        lambda runs: bool(runs["t_star"].notna().all()))
    if zero.empty or zero["t_star"].isna().any():
        return Verdict("not decided", "without weight decay the network does not fit its training set on every seed")
    if fitting.empty:
        return Verdict("not decided", "no weight decay fits the training set on every seed")
    means = fitting.groupby("weight_decay")[end].mean()
    best = float(means.idxmin())
    zero_mean, best_mean = float(zero[end].mean()), float(means[best])
    ends = fitting.loc[fitting["weight_decay"] == best, end]
    gap = zero_mean / best_mean if best_mean > 0 else math.inf
    worst = float(zero[end].min()) / float(ends.max()) if ends.max() > 0 else math.inf
    s = float(zero[slope].mean())
    last = float(zero["last_epoch"].max())
    numbers = {"best_lambda": best, "gap": gap, "worst_gap": worst, "zero_slope": s}
    if zero_mean <= floor:
        return Verdict("no", "without weight decay it reaches 0" if zero_mean == 0 else
                       f"without weight decay it ends at {zero_mean:.2g}, at most {floor:g}", **numbers)
    if gap < factor:
        return Verdict("no", f"without weight decay it ends within {factor:g}x of the best weight decay", **numbers)
    if math.isnan(s):
        return Verdict("not decided", "its late slope without weight decay is undefined", **numbers)
    close = last * gap ** (1 / -s) if s < 0 and math.isfinite(gap) else math.inf
    numbers["epochs_to_close"] = close
    if worst < factor:
        return Verdict("not decided", f"the gap is {gap:.3g}x on seed means but only {worst:.3g}x between the "
                       "closest seeds", **numbers)
    if close <= reach * last:
        return Verdict("not decided", f"without weight decay it still falls fast enough (slope {s:.2f}) to close "
                       f"the gap by epoch {close:,.0f}", **numbers)
    from .pages.display import number_text  # rounding noise in a slope reads 0, an infinite gap ∞

    slope_text = number_text(s, 2)
    pace = (f"it has stopped falling (late slope {slope_text}), so the gap never closes" if not math.isfinite(close)
            else f"at its late slope ({slope_text}) closing it would take until epoch {close:.2g}")
    gap_text = (f"the gap is {gap:.3g}x ({worst:.3g}x on the closest seeds)" if math.isfinite(gap) else
                f"the best weight decay reaches 0 while without it the seed mean ends at {zero_mean:.2g}")
    return Verdict("yes", f"{gap_text} and {pace}", **numbers)


def float32_loss_floor(num_classes: int, width: int) -> float:
    """The square loss at which the residuals are float32's rounding of the outputs: (C/2) (sqrt(p) u)^2.

    A float32 output f_c ~ 1 is a sum of p (the last hidden width) rounded products, whose rounding error grows like
    sqrt(p) u with u = 2^-24; a residual y - f of that size in each of the C outputs gives this loss (half the sum over
    outputs, as :func:`ncpaper.measure.square_loss`). A training loss near it cannot fall further in float32.
    """
    u = 2.0 ** -24
    return num_classes / 2 * width * u * u


def travel_bound(epochs, grad_norms, lrs, steps_per_epoch: int, momentum: float) -> float:
    """How far SGD with momentum can move the weights between the first and last of ``epochs``, at most:
    sum over measured intervals of steps x eta/(1 - momentum) x the larger full-batch ||grad J|| at its ends.

    eta/(1 - momentum) is the heavy ball's step per unit gradient once its velocity has built up. Not a strict bound:
    SGD steps on minibatch gradients, which near interpolation are of the full-batch gradient's order, and the
    gradient between two measurements is taken to be at most the larger of its measured values."""
    epochs, grads, rates = (pd.Series(list(v), dtype=float) for v in (epochs, grad_norms, lrs))
    total = 0.0
    for k in range(1, len(epochs)):
        steps = (epochs[k] - epochs[k - 1]) * steps_per_epoch
        total += steps * rates[k] / (1 - momentum) * max(grads[k], grads[k - 1])
    return total


def combined(answers) -> str:
    """One answer from several schedules: theirs when they agree, else "not decided"."""
    answers = set(answers)
    return answers.pop() if len(answers) == 1 else "not decided"


@dataclass
class NecessityPage:
    """The published horizon runs of one profile, their post-interpolation summary and the verdicts."""

    profile: str
    runs: list
    root: str = "."

    @cached_property
    def table(self) -> pd.DataFrame:
        """Every measured row of every run, with ``dataset`` and ``schedule`` ("schedule" | "constant")."""
        from .results import collect

        table = collect(self.runs)
        cut = {r.meta["key"]: "schedule" if r.config.lr_milestones else "constant" for r in self.runs}
        return table.assign(schedule=table["run_id"].map(cut))

    @cached_property
    def after(self) -> pd.DataFrame:
        """One row per run: t*, and each quantity at t*, at the end, its fall after t* and its late slope."""
        frames = []
        for dataset, runs in self.table.groupby("dataset", sort=False):
            frames.append(after_interpolation(runs, columns=tuple(QUANTITIES)).assign(dataset=dataset))
        return pd.concat(frames, ignore_index=True)

    @cached_property
    def verdicts(self) -> dict:
        """(dataset, schedule, quantity) -> :class:`Verdict`."""
        return {(d, s, q): verdict(group, q, floor=FLOORS.get(q, 0.0))
                for (d, s), group in self.after.groupby(["dataset", "schedule"]) for q in QUANTITIES}

    def answer(self, dataset: str, quantity: str) -> str:
        return combined(self.verdicts[(dataset, s, quantity)].answer for s in self.schedules)

    @property
    def datasets(self) -> list[str]:
        return list(dict.fromkeys(self.after["dataset"]))

    @property
    def schedules(self) -> list[str]:
        return [s for s in SCHEDULES if s in set(self.after["schedule"])]

    @property
    def main_schedule(self) -> str:
        """The schedule the prose quotes: the constant rate where there is one (no rate cut to freeze it)."""
        return "constant" if "constant" in self.schedules else self.schedules[0]

    def source(self, dataset: str) -> str:
        """The data source the runs on ``dataset`` record, as literal Markdown text (escaped)."""
        from .pages.display import markdown_text

        return markdown_text(next(r.meta["data_source"] for r in self.runs if r.config.dataset == dataset))

    def _zero_and_positive(self, dataset: str, schedule: str):
        rows = self.after[(self.after["dataset"] == dataset) & (self.after["schedule"] == schedule)]
        return rows[rows["weight_decay"] == 0], rows[rows["weight_decay"] > 0]

    def answer_markdown(self) -> str:
        """The page's first paragraph: the answer per dataset and quantity, with the numbers behind it."""
        parts = []
        for dataset in self.datasets:
            clauses = []
            for q, name in QUANTITIES.items():
                clauses.append(f"{name}: **{self.answer(dataset, q)}**")
            from .pages.prose import number

            schedule = self.main_schedule
            nc1, nc3 = (self.verdicts[(dataset, schedule, q)] for q in ("nc1", "nc3_centred"))
            seeds = self.after.loc[self.after["dataset"] == dataset, "seed"].nunique()
            numbers = (f"With a {SCHEDULES[schedule]}, after interpolation NC1 without weight decay ends "
                       f"{number(nc1.gap)} times higher than with λ = {nc1.best_lambda:g} (late slope "
                       f"{nc1.zero_slope:.2f}), and the centred NC3 {number(nc3.gap)} times higher than with λ = "
                       f"{nc3.best_lambda:g}" if not math.isnan(nc1.best_lambda) else
                       "No weight decay fits its training set on every seed here")
            parts.append(f"**{DATASET_NAMES.get(dataset, dataset)}** ({self.source(dataset)}). Is weight decay "
                         f"necessary? {'; '.join(clauses)}. {numbers} (means over {seeds} seeds; the tables below "
                         f"give every number).")
        return "\n\n".join(parts)

    def one_line(self) -> str:
        """The answer in one line, for the introduction: per dataset, each quantity's answer."""
        per = []
        for dataset in self.datasets:
            answers = {name: self.answer(dataset, q) for q, name in QUANTITIES.items()}
            per.append(f"{DATASET_NAMES.get(dataset, dataset)}: " + ", ".join(f"{name} {a}"
                                                                            for name, a in answers.items()))
        return "; ".join(per)

    def takeaway(self) -> str:
        """The page's takeaway box: :meth:`one_line` and what it rests on, in two or three lines."""
        epochs = int(self.after["last_epoch"].max())
        return (f"**Is weight decay necessary?** {self.one_line()}. Measured after interpolation over "
                f"{self.after['seed'].nunique()} seeds and {epochs:,} epochs; our rule and settings, not the paper's.")

    def headline(self) -> str:
        """NC1 after interpolation without weight decay against the best weight decay, per dataset, in one
        sentence (plain text, for the introduction)."""
        per = []
        for dataset in self.datasets:
            zero, positive = self._zero_and_positive(dataset, self.main_schedule)
            best = self.verdicts[(dataset, self.main_schedule, "nc1")].best_lambda
            if math.isnan(best):
                continue
            at_best = positive[positive["weight_decay"] == best]
            per.append(f"on {DATASET_NAMES.get(dataset, dataset)} NC1 without weight decay goes from "
                       f"{zero['nc1_at_t_star'].mean():.2g} at t* to {zero['nc1_end'].mean():.2g} at epoch "
                       f"{zero['last_epoch'].max():,.0f} (late slope {zero['nc1_slope'].mean():.2f}), against "
                       f"{at_best['nc1_end'].mean():.2g} with λ = {best:g} (slope {at_best['nc1_slope'].mean():.2f})")
        return (f"At PyTorch's initialisation and one learning rate per dataset, after the network fits its training "
                f"set ({SCHEDULES[self.main_schedule]}, means over "
                f"{self.after['seed'].nunique()} seeds), " + "; ".join(per) + ".")

    def verdict_table(self) -> pd.DataFrame:
        """One row per dataset x schedule x quantity: the answer, the gap to the best weight decay, lambda = 0's
        late slope and the epoch at which that slope would close the gap."""
        rows = []
        for (dataset, schedule, q), v in self.verdicts.items():
            rows.append({"data": DATASET_NAMES.get(dataset, dataset), "schedule": SCHEDULES[schedule],
                         "quantity": QUANTITIES[q],
                         "answer": v.answer, "best λ": v.best_lambda, "gap (means)": v.gap,
                         "gap (closest seeds)": v.worst_gap, "slope at λ = 0": v.zero_slope,
                         "epochs to close": v.epochs_to_close, "why": v.reason})
        return pd.DataFrame(rows)

    def slope_table(self) -> pd.DataFrame:
        """Per dataset, schedule and lambda: t*, and NC1 / centred NC3 at t*, at the end, their fall and late
        slope, as mean (min-max) over seeds."""
        rows = []
        for (dataset, schedule, wd), runs in self.after.groupby(["dataset", "schedule", "weight_decay"], sort=True):
            fits = int(runs["t_star"].notna().sum())
            row = {"data": DATASET_NAMES.get(dataset, dataset), "schedule": SCHEDULES[schedule], "λ": f"{wd:g}",
                   "fit (seeds)": f"{fits} of {len(runs)}", "t*": spread(runs["t_star"])}
            for q in ("nc1", "nc3_centred"):
                name = QUANTITIES[q]
                row.update({f"{name} at t*": spread(runs[f"{q}_at_t_star"]), f"{name} end": spread(runs[f"{q}_end"]),
                            f"{name} fall after t*": spread(runs[f"{q}_fall"]),
                            f"{name} late slope": spread(runs[f"{q}_slope"], 2)})
            rows.append(row)
        return pd.DataFrame(rows)

    @cached_property
    def moving_frame(self) -> pd.DataFrame:
        """Has lambda = 0 stopped moving? Per dataset (the main schedule), over the last decade of epochs: how many
        times its training loss and gradient norm fell, and how much sum_l ||W_l||^2 changed, mean (min-max) over
        seeds."""
        rows = []
        train = training_rows(self.table)
        for dataset in self.datasets:
            runs = train[(train["dataset"] == dataset) & (train["weight_decay"] == 0)
                         & (train["schedule"] == self.main_schedule)]
            runs = [g.sort_values("epoch") for _, g in runs.groupby("run_id")]
            last = max(int(g["epoch"].iloc[-1]) for g in runs)

            def fall(column, runs=runs, last=last):
                """Each seed's value at the first epoch of the last decade over its value at the end."""
                return [float(g.loc[g["epoch"] >= last / 10, column].iloc[0] / g[column].iloc[-1]) for g in runs]

            rows.append({"data": DATASET_NAMES.get(dataset, dataset), "schedule": SCHEDULES[self.main_schedule],
                         "epochs": f"{last // 10:,} to {last:,}", "training loss fall": spread(fall("train_loss")),
                         "gradient norm fall": spread(fall("grad_norm")),
                         "Σ‖W_l‖² change": spread([100 * (1 / f - 1) for f in fall("weight_norm_sq")], 2) + "%",
                         "_loss": min(fall("train_loss")), "_weights": max(abs(1 / f - 1) for f in
                                                                           fall("weight_norm_sq"))})
        return pd.DataFrame(rows)

    def moving_markdown(self) -> str:
        """What :meth:`moving_frame` says, in words."""
        frame = self.moving_frame
        parts = []
        for _, row in frame.iterrows():
            loss = "still falls many-fold" if row["_loss"] > 10 else "still falls" if row["_loss"] > 1.1 else \
                "has stopped falling"
            weights = "barely changes (under 1%)" if row["_weights"] < 0.01 else "still changes"
            parts.append(f"On {row['data']} without weight decay ({row['schedule']}), over the last decade of epochs "
                         f"the training loss and the gradient norm {loss.replace('falls', 'fall')}, while the "
                         f"weights' size $\\sum_l\\lVert W_l\\rVert^2$ {weights}.")
        return " ".join(parts)

    @cached_property
    def travel_frame(self) -> pd.DataFrame:
        """Has lambda = 0 converged? Per dataset and seed (the main schedule): the training loss at the end against
        :func:`float32_loss_floor`, and how far the weights could move (:func:`travel_bound`, relative to ||W||)
        over the last decade of epochs and over as many epochs again at the final gradient."""
        rows = []
        train = training_rows(self.table)
        for run in self.runs:
            c = run.config
            if c.weight_decay != 0 or ("constant" if not c.lr_milestones else "schedule") != self.main_schedule:
                continue
            r = train[train["run_id"] == run.meta["key"]].sort_values("epoch")
            last = float(r["epoch"].iloc[-1])
            late = r[r["epoch"] >= last / 10]
            steps = -(-int(sum(run.meta["data"]["train"]["class_counts"])) // c.batch_size)
            norm = math.sqrt(float(r["weight_norm_sq"].iloc[-1]))
            floor = float32_loss_floor(run.meta["num_classes"], c.sizes.get("widths", [c.sizes.get("fc_width")])[-1])
            past = travel_bound(late["epoch"], late["grad_norm"], late["lr"], steps, c.momentum)
            ahead = last * steps * float(r["lr"].iloc[-1]) / (1 - c.momentum) * float(r["grad_norm"].iloc[-1])
            rows.append({"dataset": c.dataset, "seed": c.seed, "last_epoch": last,
                         "loss": float(r["train_loss"].iloc[-1]), "floor": floor,
                         "loss_over_floor": float(r["train_loss"].iloc[-1]) / floor,
                         "past_travel": past / norm, "ahead_travel": ahead / norm,
                         "weight_change": abs(float(late["weight_norm_sq"].iloc[-1] / late["weight_norm_sq"].iloc[0])
                                              - 1)})
        return pd.DataFrame(rows)

    def converged(self, dataset: str, loss_factor: float = LOSS_FLOOR_FACTOR, travel: float = TRAVEL) -> bool:
        """lambda = 0 has converged on ``dataset``: on every seed the loss is within ``loss_factor`` of the float32
        floor (100: residuals within 10 roundings of the outputs) and the weights could move less than ``travel`` (1%)
        of their norm in as many epochs again at the final gradient."""
        rows = self.travel_frame[self.travel_frame["dataset"] == dataset]
        return bool(len(rows) and (rows["loss_over_floor"] <= loss_factor).all()
                    and (rows["ahead_travel"] < travel).all())

    def travel_table(self):
        from .pages import table

        rows = []
        for dataset, g in self.travel_frame.groupby("dataset", sort=False):
            rows.append({"verdict": "converged" if self.converged(dataset) else "still moving",
                         "data": DATASET_NAMES.get(dataset, dataset), "schedule": SCHEDULES[self.main_schedule],
                         "loss at the end": spread(g["loss"], 2), "float32 floor": f"{g['floor'].iloc[0]:.2g}",
                         "loss / floor": spread(g["loss_over_floor"], 2),
                         "could move, last decade": spread(100 * g["past_travel"], 2) + "%",
                         "could move, as long again": spread(100 * g["ahead_travel"], 2) + "%",
                         "Σ‖W_l‖² changed": spread(100 * g["weight_change"], 2) + "%"})
        return table(pd.DataFrame(rows),
                     "Table: has λ = 0 converged? Per dataset, mean (min–max) over seeds: the training loss at the "
                     "last epoch and the float32 floor (C/2)(√p u)², u = 2⁻²⁴, p the last hidden width; how far the "
                     "weights could have moved over the last decade of epochs and could move over as many epochs "
                     "again at the final gradient (steps × η/(1 − momentum) × the full-batch ‖∇J‖, relative to "
                     "‖W‖); how much Σ‖W_l‖² changed over the last decade.")

    def converged_markdown(self) -> str:
        """The answer to "has training without weight decay stopped moving?", with the numbers."""
        parts = []
        for dataset, g in self.travel_frame.groupby("dataset", sort=False):
            name = DATASET_NAMES.get(dataset, dataset)
            if self.converged(dataset):
                parts.append(f"**{name}: converged.** Its training loss ends at {spread(g['loss_over_floor'], 2)} "
                             f"times the float32 floor (at most {LOSS_FLOOR_FACTOR:g}: residuals within "
                             f"{math.sqrt(LOSS_FLOOR_FACTOR):g} roundings of the outputs), and at "
                             f"its final gradient another {g['last_epoch'].max():,.0f} epochs could move the weights "
                             f"by at most {spread(100 * g['ahead_travel'], 2)}% of their norm.")
            else:
                parts.append(f"**{name}: still moving.** Its training loss ends at {spread(g['loss_over_floor'], 2)} "
                             f"times the float32 floor, and at its final gradient another "
                             f"{g['last_epoch'].max():,.0f} epochs could move the weights by up to "
                             f"{spread(100 * g['ahead_travel'], 2)}% of their norm.")
        return " ".join(parts)

    def shared_trajectory(self) -> pd.DataFrame:
        """lambda = 0 with the rate cut and at a constant rate: per dataset and seed, the largest relative difference
        of NC1 and the training loss between the two runs at the epochs before the cut (0: the same trajectory)."""
        rows = []
        train = training_rows(self.table)
        zero = train[train["weight_decay"] == 0]
        for (dataset, seed), g in zero.groupby(["dataset", "seed"], sort=False):
            if set(g["schedule"]) != set(SCHEDULES):
                continue
            cut = g.loc[g["schedule"] == "schedule"].sort_values("epoch")
            before = cut[cut["lr"] == cut["lr"].iloc[0]]["epoch"]
            pairs = g[g["epoch"].isin(before.iloc[:-1])].pivot_table(index="epoch", columns="schedule",
                                                                     values=["nc1", "train_loss"])
            diff = max(float(((pairs[(q, "schedule")] - pairs[(q, "constant")]).abs()
                              / pairs[(q, "constant")].abs()).max()) for q in ("nc1", "train_loss"))
            rows.append({"dataset": dataset, "seed": seed, "until_epoch": float(before.iloc[-2]),
                         "max_relative_difference": diff})
        return pd.DataFrame(rows)

    def trajectories_markdown(self) -> str:
        """The two schedules' lambda = 0 runs are one trajectory until the rate cut: what their agreement is worth."""
        shared = self.shared_trajectory()
        if shared.empty:
            return ""
        same = bool((shared["max_relative_difference"] == 0).all())
        until = f"{shared['until_epoch'].min():,.0f}"
        return ((f"The two schedules' λ = 0 runs of one seed are the same trajectory until the rate cut (identical at "
                 f"every measured epoch up to {until}): their agreement is not independent evidence, so each "
                 f"dataset has {self.trajectories()} independent trajectories without weight decay (one per seed), "
                 f"not {self.trajectories() * len(self.schedules)}.") if same else
                f"The two schedules' λ = 0 runs already differ before the rate cut (up to "
                f"{shared['max_relative_difference'].max():.2g} relative by epoch {until}).")

    def trajectories(self) -> int:
        """Independent lambda = 0 trajectories per dataset: the two schedules share theirs until the rate cut."""
        shared = self.shared_trajectory()
        seeds = self.after[self.after["weight_decay"] == 0].groupby("dataset")["seed"].nunique()
        same = bool(len(shared)) and bool((shared["max_relative_difference"] == 0).all())
        per = int(seeds.min()) if same else int(seeds.min()) * len(self.schedules)
        return per

    def moving_table(self):
        from .pages import table

        return table(self.moving_frame.drop(columns=["_loss", "_weights"]),
                     "Table: λ = 0 over the last decade of epochs: how many times its training loss and gradient "
                     "norm fell, and how much the weights' size Σ‖W_l‖² changed; mean (min–max) over seeds.")

    @property
    def description(self) -> str:
        c = self.runs[0].config
        lambdas = ", ".join(f"{w:g}" for w in sorted({r.config.weight_decay for r in self.runs}))
        from .pages.display import inline_text  # the description goes into figure captions (inline HTML)

        sources = " and ".join(inline_text(next(r.meta["data_source"] for r in self.runs if r.config.dataset == d))
                               for d in self.datasets)
        return (f"{sources}, {c.architecture()}, {c.n_per_class} training images per class, batch {c.batch_size}, "
                f"{c.epochs:,} epochs, λ in {{{lambdas}}}, {self.after['seed'].nunique()} seeds each, profile "
                f"'{self.profile}'")

    def _figure_files(self, columns, stem: str, title: str, caption: str, alt: str):
        from .pages import page_figure

        fig = figure_horizon(self.table, self.after, columns, title=title, row_labels={
            (d, s): f"{DATASET_NAMES.get(d, d)},\n{SCHEDULES[s]}" for d in self.datasets for s in self.schedules})
        return page_figure(fig, stem, self.runs, self.profile, figure_id=title, what=title, notebook="necessity.md",
                           params=f"profile='{self.profile}'", caption=caption, alt=alt, root=self.root)

    @cached_property
    def files(self):
        """NC1, centred NC3 and the training loss against epoch, log-log, lambda = 0 against lambda > 0."""
        return self._figure_files(
            ("nc1", "nc3_centred", "train_loss"), f"necessity_{self.profile}", "Is weight decay necessary?",
            f"**Is weight decay necessary?** {self.description}. NC1, centred NC3 and the training loss against "
            f"epoch (log-log), one row per dataset and learning-rate schedule; lines: mean over seeds, bands: "
            f"min-max; the ringed dot on each curve is its median t* (training error at most "
            f"{TERMINAL_TRAIN_ERROR:.1%} from there on). All settings are our choices.",
            "Twelve log-log line plots: for MNIST and CIFAR-10, each with a step and a constant learning rate, NC1, "
            "the centred NC3 and the training loss against epoch, one line per weight decay including none.")

    @cached_property
    def key_files(self):
        """The book's key figure, shown on its first page: NC1 and centred NC3 against epoch on the main
        schedule, lambda = 0 against lambda > 0, one row per dataset."""
        from .pages import page_figure

        schedule = self.main_schedule
        fig = figure_horizon(self.table, self.after, ("nc1", "nc3_centred"), title="", row_labels={
            (d, schedule): DATASET_NAMES.get(d, d) for d in self.datasets})
        return page_figure(
            fig, f"necessity_key_{self.profile}", self.runs, self.profile, figure_id="key figure",
            what="Is weight decay necessary? (key figure)", notebook="necessity.md", params=f"profile='{self.profile}'",
            caption=f"**Is weight decay necessary?** NC1 and centred NC3 against epoch (log-log) with a "
                    f"{SCHEDULES[schedule]}, one row per dataset; lines: mean over {self.after['seed'].nunique()} "
                    f"seeds, bands: min-max, ringed dots: the median t* (from there on training error is at most "
                    f"{TERMINAL_TRAIN_ERROR:.1%}); black: no weight decay. At these knobs (PyTorch's "
                    f"initialisation, one learning rate, the square loss, an MLP) our rule answers: {self.one_line()}; "
                    f"the page tests it under other knobs. "
                    f"The runs and every number are on the page \"Is weight decay necessary?\".",
            alt="Four log-log line plots: NC1 and the centred NC3 against epoch, for MNIST and CIFAR-10, one line "
                "per weight decay including none.", root=self.root)

    @cached_property
    def moving_files(self):
        """The full-batch gradient norm and sum_l ||W_l||^2 against epoch: has lambda = 0 stopped moving?"""
        return self._figure_files(
            ("grad_norm", "weight_norm_sq"), f"necessity_moving_{self.profile}", "Has training stopped moving?",
            "**Has training stopped moving?** The same runs: the full-batch gradient norm of the objective "
            "$\\lVert\\nabla J\\rVert_F$ (J includes the penalty) and $\\sum_l\\lVert W_l\\rVert_F^2$ against "
            "epoch, log-log; lines: mean over seeds, bands: min-max.",
            "Eight log-log line plots: gradient norm and squared weight norm against epoch, per dataset and "
            "schedule, one line per weight decay.")

    def provenance(self) -> pd.DataFrame:
        """Where, when and by which code the runs were trained: one row per dataset and schedule."""
        from .analysis import provenance_table

        prov = provenance_table(self.runs)
        prov["data"] = [r.config.dataset for r in self.runs]
        prov["schedule"] = [SCHEDULES["schedule" if r.config.lr_milestones else "constant"] for r in self.runs]
        prov["cpu"] = [r.meta.get("cpu", "unknown") for r in self.runs]
        return prov.groupby(["data", "schedule"], sort=False).agg(
            runs=("run", "size"), device=("device", "first"), cpu=("cpu", "first"),
            commits=("commit", lambda c: len(set(c))), finished=("finished (UTC)", "max"),
            minutes=("wall min", "sum")).reset_index()

    def first_commit(self) -> str:
        """The commit recorded by the run that started first (a sweep's workers import the code once, then)."""
        first = min(self.runs, key=lambda r: r.meta["created"])
        return ((first.meta.get("git") or {}).get("commit") or "unknown")[:10]

    def minutes(self) -> float:
        return sum(r.meta["timings"]["wall_seconds"] for r in self.runs) / 60

    def glue(self) -> None:
        """Glue the answers (for the introduction and the tests), without displaying anything."""
        from myst_nb import glue

        glue("necessity_horizon_one_line", self.one_line(), display=False)
        glue("necessity_key_figure", self.key_files.html(figures="figures"), display=False)  # for book/intro.md
        glue("necessity_headline", self.headline(), display=False)
        c = self.runs[0].config
        images = c.n_per_class * self.runs[0].meta["num_classes"]
        glue("necessity_setting", f"{c.architecture()} networks on {images:,} training images, {c.epochs:,} epochs, "
                                  f"{self.after['seed'].nunique()} seeds", display=False)
        for dataset in self.datasets:
            for q in QUANTITIES:
                glue(f"necessity_{dataset}_{q}", self.answer(dataset, q), display=False)


def necessity_page(profile: str = "horizon", root: str | os.PathLike = ".") -> NecessityPage:
    """The published runs of ``profile``'s horizon section (read from ``published/<profile>/``, never trained)."""
    from .profiles import load_profile, section_configs
    from .published import load_published

    configs = [c for entry in load_profile(profile).get("horizon", {})
               for c in section_configs(profile, "horizon", entry)]
    if not configs:
        raise ValueError(f"profile {profile!r} has no horizon section")
    return NecessityPage(profile, load_published(configs, profile), str(root))



FIGURE_LABELS = {"nc1": r"NC1: $\mathrm{Tr}(\Sigma_W \Sigma_B^+)/C$", "nc3_centred": "NC3 (W centred)",
                 "train_loss": r"training loss $\frac{1}{2NC}\sum\Vert y-f\Vert^2$",
                 "grad_norm": r"$\Vert\nabla J\Vert_F$ (full batch)",
                 "weight_norm_sq": r"$\sum_l \Vert W_l\Vert_F^2$"}


def figure_horizon(table: pd.DataFrame, after: pd.DataFrame, columns, row_labels: dict, title: str = ""):
    """Rows: (dataset, schedule) in ``row_labels``; columns: ``columns`` against epoch, log-log. One colour and
    marker per lambda (the book's palette), the seed mean as a line and min-max as a band, a dot at the median t*."""
    import matplotlib.pyplot as plt

    from .palette import lambda_style
    from .plots import PAGE_FONTS, PAGE_WIDTH_IN, weight_decay_label, weight_decay_palette, weight_decay_styles

    train = training_rows(table)
    palette, markers = weight_decay_palette(train["weight_decay"]), weight_decay_styles(train["weight_decay"])
    with plt.rc_context(PAGE_FONTS):
        fig, axes = plt.subplots(len(row_labels), len(columns), squeeze=False, constrained_layout=True,
                                 figsize=(PAGE_WIDTH_IN, 1.9 * len(row_labels) + 0.6))
        for r, ((dataset, schedule), label) in enumerate(row_labels.items()):
            rows = train[(train["dataset"] == dataset) & (train["schedule"] == schedule)]
            starts = after[(after["dataset"] == dataset) & (after["schedule"] == schedule)]
            for k, column in enumerate(columns):
                ax = axes[r, k]
                for wd, runs in rows.groupby("weight_decay"):
                    name = weight_decay_label(wd)
                    band = runs.groupby("epoch")[column].agg(["mean", "min", "max"])
                    band = band[band["min"] > 0]
                    ax.plot(band.index, band["mean"], color=palette[name], marker=markers[name], markevery=6,
                            markersize=3.5, linewidth=1.2, label=name, linestyle=lambda_style(wd).linestyle)
                    ax.fill_between(band.index, band["min"], band["max"], color=palette[name], alpha=0.2,
                                    linewidth=0)
                    t_star = starts.loc[starts["weight_decay"] == wd, "t_star"].median()
                    if pd.notna(t_star) and t_star in band.index:
                        ax.plot([t_star], [band.loc[t_star, "mean"]], "o", color=palette[name], markersize=6,
                                markeredgecolor="black", markeredgewidth=0.8, zorder=5)
                ax.set_xscale("log")
                ax.set_yscale("log")
                ax.grid(True, which="major", alpha=0.3)
                if r == 0:
                    ax.set_title(FIGURE_LABELS.get(column, column))
                if k == 0:
                    ax.set_ylabel(label, fontsize=8)
                if r == len(row_labels) - 1:
                    ax.set_xlabel("epoch")
        handles, labels = axes[0, 0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), frameon=False)
        if title:
            fig.suptitle(title)
    return fig
