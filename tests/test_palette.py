"""Figures for every reader: one colour, marker and line style per weight decay, the same on every figure; readable
in simulated colour-vision deficiencies and in greyscale; text of at least 10 px on a desktop and on a phone (the
narrow copy); TrueType fonts in the PDFs."""

import itertools
import json
import shutil
import subprocess

import matplotlib
import numpy as np
import pandas as pd
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from PIL import Image

from ncpaper.palette import (
    ZERO,
    deficient_view,
    delta_e,
    lab,
    lambda_colour,
    lambda_style,
    lambda_styles,
    relative_luminance,
)
from ncpaper.plots import (
    NARROW_WIDTH_IN,
    PAGE_WIDTH_IN,
    figure_layers_training,
    figure_nc,
    figure_phase,
    narrow_copy,
    narrow_path,
    pdf_fonts,
    save_figure,
    weight_decay_label,
)

# every set of weight decays one figure of the book shows (profiles smoke, default, paper, horizon)
BOOK_FIGURES = [[0, 0.01, 0.05], [0, 0.01, 0.02], [0, 0.005, 0.01], [0, 5e-4, 7.5e-4, 1e-3, 2e-3, 3e-3],
                [0, 5e-4, 1e-3, 2e-3], [0, 0.0028, 0.0066, 0.015]]
DEFICIENCIES = ("protanopia", "deuteranopia", "tritanopia")
DESKTOP_PX, PHONE_PX = 768, 342  # the figure's width in the book at 1400 and 390 px (measured in Chromium)


def test_a_weight_decay_has_one_style_whatever_figure_it_is_in():
    for wd in (5e-4, 1e-3, 0.005, 0.01, 0.02):
        seen = {(s[wd].colour, s[wd].dashes) for s in (lambda_styles(v) for v in BOOK_FIGURES) if wd in s}
        assert len(seen) == 1, (wd, seen)  # 0.01 was orange on Figure 1 and blue on Figure 2
        assert lambda_colour(wd) == lambda_style(wd).colour
    assert lambda_styles([0, 0.01])[0.0] == ZERO and ZERO.colour == "#000000" and ZERO.linestyle == "-"
    for figure in BOOK_FIGURES:
        styles = lambda_styles(figure)
        assert all(s.dashes for w, s in styles.items() if w > 0)  # only lambda = 0 is solid
        markers = [s.marker for s in styles.values()]
        assert len(set(markers)) == len(markers), figure  # no two curves of a figure share a marker


def test_the_palette_is_ordered_by_log_lambda():
    values = np.logspace(-3.5, -1, 12)
    lightness = [lab(lambda_colour(v))[0] for v in values]
    assert all(b > a + 1 for a, b in itertools.pairwise(lightness))  # darker for smaller lambda: ordered in grey
    for kind in DEFICIENCIES:  # and still ordered as colour-blind readers see it
        seen = [lab(deficient_view(lambda_colour(v), kind))[0] for v in values]
        assert all(b > a for a, b in itertools.pairwise(seen)), kind
    assert lambda_colour(1e-6) == lambda_colour(1e-4) and lambda_colour(1.0) == lambda_colour(0.5)  # ends clamp


def test_no_two_curves_of_a_figure_look_alike_to_colour_blind_readers():
    """Every pair of weight decays of a book figure differs in marker and in colour or line style; lambda = 0 stands
    apart in every view; weight decays a factor 2 or more apart differ in colour in every view (the six-curve
    full-scale Figure 1 had three curves of one olive in a deuteranopia view)."""
    for figure in BOOK_FIGURES:
        styles = lambda_styles(figure)
        for one, other in itertools.combinations(styles.values(), 2):
            assert one.marker != other.marker
            assert one.dashes != other.dashes or delta_e(one.colour, other.colour) > 5, (one, other)
            for kind in DEFICIENCIES:
                apart = delta_e(deficient_view(one.colour, kind), deficient_view(other.colour, kind))
                if 0 in (one.weight_decay, other.weight_decay):
                    assert apart > 25, (kind, one, other)
                elif max(one.weight_decay, other.weight_decay) >= 2 * min(one.weight_decay, other.weight_decay):
                    assert apart > 5, (kind, one, other)


def test_lines_stand_out_on_white():
    """WCAG's 3:1 for graphics, for the lambdas of the default and full-scale figures (up to 0.02; from about 0.03 on
    the ramp reaches orange and yellow, which only the smoke profile and the phase diagrams' far end use)."""
    for wd in (5e-4, 7.5e-4, 1e-3, 2e-3, 3e-3, 0.005, 0.01, 0.015, 0.02):
        assert 1.05 / (relative_luminance(lambda_colour(wd)) + 0.05) >= 3, wd


def run_table(weight_decays, seeds=(0, 1)) -> pd.DataFrame:
    rows = []
    for wd, seed in itertools.product(weight_decays, seeds):
        for epoch in (1, 3, 10, 30, 100):
            value = (1 + 30 * wd + 0.1 * seed) / epoch
            row = {"run_id": f"r{wd}-{seed}", "weight_decay": wd, "seed": seed, "epoch": epoch, "phase": "train",
                   "train_error": value / 10, "train_loss": value, "nc1": value, "nc3": value, "nc3_centred": value,
                   "nc4": value / 10, "eps": value / 2, "nc_defined": True, "fit_term": 0.1, "layer_norm_sq_1": 2.0,
                   "layer_norm_sq_2": 3.0, "nc1_layer_1": value * 2, "nc1_layer_2": value}
            for side in ("equinorm", "equiangular", "maxangle"):
                row[f"nc2_{side}_means"] = row[f"nc2_{side}_weights"] = value
                row[f"nc2_{side}_weights_centred"] = value / 2
            rows.append(row)
    return pd.DataFrame(rows)


def drawn_colours(fig) -> dict[str, set]:
    """Label -> the colours of the legend entries with that label, over every legend of the figure."""
    out = {}
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
    for legend in legends:
        for line, text in zip(legend.get_lines(), legend.get_texts(), strict=True):
            out.setdefault(text.get_text(), set()).add(matplotlib.colors.to_hex(line.get_color()))
    return out


def test_figures_draw_each_weight_decay_in_its_own_style_on_every_figure():
    one = figure_nc(run_table([0, 0.01, 0.02]))
    other = figure_nc(run_table([0, 0.005, 0.01]))
    layers = figure_layers_training({"MNIST": run_table([0, 0.005, 0.01]), "CIFAR-10": run_table([0, 0.01, 0.02])})
    label = weight_decay_label(0.01)
    colours = set().union(*(drawn_colours(f)[label] for f in (one, other, layers)))
    assert colours == {lambda_colour(0.01)}  # one colour for lambda = 0.01 in every figure and row
    data_lines = [line for ax in one.axes for line in ax.get_lines() if len(line.get_xdata()) > 1]
    styles = lambda_styles([0, 0.01, 0.02])
    by_colour = {s.colour: s for s in styles.values()}
    for line in data_lines:
        style = by_colour[matplotlib.colors.to_hex(line.get_color())]
        assert line.get_marker() == style.marker
        assert (line.get_linestyle() == "-") == (style.weight_decay == 0)
    open_markers = [line for line in data_lines if line.get_markerfacecolor() == "white"]
    assert open_markers and all(line.get_markeredgecolor() == line.get_color() for line in open_markers)
    for fig in (one, other, layers):
        plt.close(fig)


def test_phase_diagram_marks_each_lambda_in_its_colour():
    last = run_table([0, 0.001, 0.01, 0.1]).query("epoch == 100")
    fig = figure_phase(last)
    marks = {matplotlib.colors.to_hex(line.get_color()) for ax in fig.axes for line in ax.get_lines()
             if line.get_linestyle() == "None" and len(line.get_xdata()) == 1}
    assert {lambda_colour(w) for w in (0.001, 0.01, 0.1)} | {ZERO.colour} <= marks
    plt.close(fig)


def test_saved_figures_are_readable_on_a_desktop_and_a_phone_and_have_no_type3_fonts(tmp_path):
    fig = figure_nc(run_table([0, 5e-4, 7.5e-4, 1e-3, 2e-3, 3e-3]), title="Figure 1 · CIFAR-10 · profile 'test'",
                    rate_cuts=[50])
    png, pdf = save_figure(fig, tmp_path / "figure1", {"figure": 1})
    assert len(fig.axes) == 8 and fig.get_figwidth() == pytest.approx(PAGE_WIDTH_IN)  # the figure is unchanged
    plt.close(fig)
    wide, narrow = Image.open(png), Image.open(narrow_path(tmp_path / "figure1"))
    for image, shown in ((wide, DESKTOP_PX), (narrow, PHONE_PX)):
        meta = json.loads(image.text["Description"])
        assert meta["figure"] == 1 and image.size[0] == round(meta["width_in"] * meta["dpi"])
        assert meta["smallest_text_pt"] / 72 * meta["dpi"] * shown / image.size[0] >= 10, (meta, shown)
    assert json.loads(narrow.text["Description"])["width_in"] == pytest.approx(NARROW_WIDTH_IN)
    assert narrow.size[1] > 3 * wide.size[1] / 2  # eight panels stacked, not shrunk
    fonts = pdf_fonts(pdf)
    assert fonts and all(kind in ("Type0", "CIDFontType2", "TrueType") for _, kind in fonts), fonts
    assert b"/Type3" not in pdf.read_bytes()
    if shutil.which("pdffonts"):  # poppler's view of the same file
        listed = subprocess.run(["pdffonts", str(pdf)], capture_output=True, text=True, check=True).stdout
        assert "Type 3" not in listed and "TrueType" in listed


def test_a_stem_with_dots_keeps_its_whole_name(tmp_path):
    """A rerun's stem holds a weight decay such as 0.05: its three files are named after the whole stem."""
    fig, ax = plt.subplots()
    ax.plot([1, 2])
    stem = tmp_path / "figure2_mnist_smoke-rerun-weight_decays-0-0.05-7cac1811"
    png, pdf = save_figure(fig, stem, {"figure": 2})
    plt.close(fig)
    ends = ("-narrow.png", ".pdf", ".png")
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{stem.name}{end}" for end in ends]
    assert (png.name, pdf.name) == (f"{stem.name}.png", f"{stem.name}.pdf")


def test_type3_fonts_would_be_found(tmp_path):
    fig, ax = plt.subplots()
    ax.set_title("λ = 0.01")
    with plt.rc_context({"pdf.fonttype": 3}):
        fig.savefig(tmp_path / "type3.pdf")
    plt.close(fig)
    assert any(kind == "Type3" for _, kind in pdf_fonts(tmp_path / "type3.pdf"))


def test_the_narrow_copy_stacks_panels_in_reading_order():
    fig, axes = plt.subplots(2, 2)
    for k, ax in enumerate(axes.flat):
        ax.set_title(f"panel {k}")
    fig.ncpaper_reading_order = "columns"
    fig.suptitle("Figure · data · profile")
    copy = narrow_copy(fig)
    titles = [ax.get_title() for ax in sorted(copy.axes, key=lambda ax: ax.get_subplotspec().rowspan.start)]
    assert titles == ["panel 0", "panel 2", "panel 1", "panel 3"]  # down the first column, then the second
    assert {ax.get_subplotspec().colspan.start for ax in copy.axes} == {0}
    assert copy.get_suptitle() == "Figure\ndata\nprofile" and fig.get_suptitle() == "Figure · data · profile"
    assert [ax.get_title() for ax in fig.axes] == ["panel 0", "panel 1", "panel 2", "panel 3"]
    plt.close(fig)
    plt.close(copy)
    shared = figure_layers_training({"MNIST": run_table([0, 0.01])})  # one row of panels sharing their y-axis
    copy = narrow_copy(shared)
    copy.draw_without_rendering()
    for ax in copy.axes:  # stacked, every panel has its own tick labels again
        assert any(t.get_visible() and t.get_text() for t in ax.get_yticklabels()), ax.get_title()
    plt.close(shared)
    plt.close(copy)
