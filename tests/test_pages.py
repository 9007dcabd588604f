"""Page plumbing: citations from CITATION.cff, tables, the verdict, figure files and blocks, train/settled rows."""

import base64
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ncpaper import __version__
from ncpaper.analysis import last_rows, settled_rows
from ncpaper.pages import FigureFiles, bibtex_from_citation, citation, readable_columns, table_html, verdict_sentence
from ncpaper.pages.verdicts import criterion_table
from ncpaper.plots import classifier_column, figure_nc, save_figure

REPO = Path(__file__).resolve().parents[1]


def test_bibtex_is_generated_from_citation_cff_and_agrees_with_references_bib():
    cff = citation()
    assert cff["type"] == "software" and cff["references"][0]["type"] == "conference-paper"
    bib = bibtex_from_citation(cff)
    assert bib.startswith("@misc{ncpaper2026,") and f"Version {cff['version']}" in bib  # classic BibTeX knows @misc
    assert "@inproceedings{rangamani2022neural," in bib and re.search(r"pages\s*= \{4243--4247\}", bib)
    assert "{{Neural Collapse in Deep Homogeneous" in bib  # braced: the title keeps its capitals
    references = (REPO / "book" / "references.bib").read_text()
    for key in ("ncpaper2026", "rangamani2022neural"):  # the keys the pages {cite} exist in both
        assert f"{{{key}," in references
    assert "doi     = {10.1073/pnas.2015509117}" in references
    assert cff["version"] == __version__
    assert f"Version {__version__};" in references  # the book's bibliography cites this version


def test_citation_names_the_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"generated from CITATION\.cff"):
        citation(tmp_path / "CITATION.cff")


def test_tables_have_readable_headers_a_caption_and_a_scrolling_box():
    frame = pd.DataFrame({"weight_decay": [0.0, 0.01], "nc2_equinorm_means": [0.78750, 0.179],
                          "nc3_centred": [1.0, 0.001]})
    text = table_html(frame, "Table: a result")
    # the caption above the scrolling box (a wide table cannot cut it off), labelling the table
    caption, rest = text.split('<div class="nc-table-wrap">')
    assert caption.startswith('<div class="nc-table-block"><p class="nc-table-caption" id="nc-caption-')
    assert "Table: a result</p>" in caption and "<caption" not in rest
    label = caption.split('id="')[1].split('"')[0]
    assert f'class="nc-table" aria-labelledby="{label}"' in rest
    for label in ("NC2 equinorm, means", "NC3 (W centred)", "λ"):
        assert f">{label}</th>" in text
    assert "nc2_equinorm_means" not in text
    assert readable_columns(["nc1", "unknown_column"]) == ["NC1", "unknown_column"]


def test_a_wide_table_is_split_into_parts_that_repeat_what_a_row_is():
    from ncpaper.pages.display import column_parts, identifying_columns

    frame = pd.DataFrame({"dataset": ["MNIST", "CIFAR-10"], "weight_decay": [0.0, 0.01],
                          **{f"q{k}": [0.5, 0.25] for k in range(12)}})
    assert identifying_columns(frame) == ["dataset", "weight_decay"]
    parts = column_parts(frame)
    assert len(parts) == 2 and all(p[:2] == ["dataset", "weight_decay"] and len(p) <= 8 for p in parts)
    assert [c for p in parts for c in p[2:]] == [f"q{k}" for k in range(12)]  # every column once, in order
    text = table_html(frame, "Table: wide")
    assert text.count("<table") == 2 and "Table: wide (part 1 of 2)" in text and "Table: wide (part 2 of 2)" in text
    assert column_parts(frame.iloc[:, :8]) == [list(frame.columns[:8])]  # a table that fits stays whole
    text = table_html(pd.DataFrame({"why": ["the gap is 360x and it has stopped falling"], "nc1": [0.5]}), "T")
    assert text.count("white-space: normal") == 1  # the text column wraps, the number does not
    text = table_html(pd.DataFrame({"nc1": [0.0032449999451637268, 1 / 3], "seed": [0, 1]}), "T")
    assert "white-space: normal" not in text  # a float whose repr is long is still one number
    indexed = frame.set_index("weight_decay").drop(columns="dataset")
    assert all(len(p) <= 7 for p in column_parts(indexed, index=True))  # the index is the eighth column
    assert table_html(indexed, "Table: t", index=True).count(">λ</th>") == 2  # the index heads every part


def test_verdict_is_labelled_ours_and_gives_one_clause_per_lambda():
    last = pd.DataFrame({"nc1": [1.0, 0.1, 0.5, 0.01, 0.01], "nc3": [1.0, 0.1, 0.1, 0.5, 0.01],
                         "train_error": [0.0, 0.002, 0.0, 0.0, 0.0021]}, index=[0.0, 0.001, 0.002, 0.005, 0.01])
    text = verdict_sentence(last, "nc3")
    assert text.startswith("**Our criterion** (ours, not the paper's): in the terminal phase (training error at "
                           "most 0.2%)")
    assert "Yes at λ = 0.001." in text  # 0.2% training error is still the terminal phase
    assert "**No** at λ = 0.002, 0.005 (they fit but collapse less than 5-fold) and at λ = 0.01 (training error " \
           "over 0.2%)." in text  # 100x collapse at 0.01, but no fit
    frame = criterion_table(last, "nc3")
    assert list(frame["λ"]) == [0.0, 0.001, 0.002, 0.005, 0.01] and frame["our criterion"].iloc[0] == "reference"
    assert list(frame["our criterion"].iloc[1:]) == ["met", "fits, < 5x", "fits, < 5x", "no fit (> 0.2%)"]
    assert list(frame["NC1 ratio"]) == pytest.approx([1, 10, 2, 100, 100])
    assert list(frame["NC3 ratio"]) == pytest.approx([1, 10, 10, 2, 100])
    with pytest.raises(ValueError, match="no lambda = 0 runs"):
        verdict_sentence(last.drop(index=0.0), "nc3")


def test_last_rows_are_training_rows_and_settled_rows_are_apart():
    table = pd.DataFrame({"run_id": ["a"] * 3 + ["b"] * 2, "epoch": [1, 10, 10, 1, 10],
                          "phase": ["train", "train", "settled", "train", "train"], "nc1": [5.0, 2.0, 0.1, 4.0, 3.0]})
    last = last_rows(table)
    assert list(last["nc1"]) == [2.0, 3.0] and set(last["phase"]) == {"train"}
    settled = settled_rows(table)
    assert list(settled["run_id"]) == ["a"] and list(settled["nc1"]) == [0.1]
    old = table.drop(columns="phase").iloc[[0, 1, 3, 4]]  # published tables before the phase column
    assert list(last_rows(old)["nc1"]) == [2.0, 3.0] and settled_rows(old).empty


def fake_table(centred: bool) -> pd.DataFrame:
    rows = []
    for wd in (0.0, 0.01, 0.02):
        for epoch in (1, 10, 100):
            row = {"run_id": f"r{wd}", "weight_decay": wd, "seed": 0, "epoch": epoch, "phase": "train"}
            for column in ("train_error", "train_loss", "nc1", "nc2_equinorm_means", "nc2_equinorm_weights",
                           "nc2_equiangular_means", "nc2_equiangular_weights", "nc2_maxangle_means",
                           "nc2_maxangle_weights", "nc3", "nc4"):
                row[column] = (1 + wd * 50) / epoch
            if centred:
                row["nc3_centred"] = row["nc2_equinorm_weights_centred"] = 0.5 / epoch
            rows.append(row)
    rows.append({**rows[-1], "phase": "settled", "epoch": 100, "nc1": 1e-9})  # never drawn over training
    return pd.DataFrame(rows)


def test_classifier_columns_are_centred_when_the_table_has_them():
    assert classifier_column(fake_table(True), "nc3") == ("nc3_centred", True)
    assert classifier_column(fake_table(False), "nc3") == ("nc3", False)  # old published tables


def test_figure_is_page_sized_text_large_enough_and_files_byte_stable(tmp_path):
    import matplotlib.pyplot as plt
    from PIL import Image

    fig = figure_nc(fake_table(True), title="Figure 2 · test")
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "classifier rows, centred" in labels and "λ = 0.01" in labels
    markers = {line.get_marker() for line in fig.legends[0].get_lines()[:3]}
    assert len(markers) == 3  # the lambdas differ by marker as well as colour
    assert any(ax.get_title(loc="left").endswith("(W centred)") for ax in fig.axes)
    drawn = [y for ax in fig.axes for line in ax.get_lines() for y in np.atleast_1d(line.get_ydata())]
    assert 1e-9 not in drawn  # the settled row is not a training epoch
    provenance = {"figure": 2}
    first = save_figure(fig, tmp_path / "a" / "figure2", provenance)
    second = save_figure(fig, tmp_path / "b" / "figure2", provenance)
    plt.close(fig)
    for one, other in zip(first, second, strict=True):
        assert one.read_bytes() == other.read_bytes(), one.suffix  # no date in the files
    png = Image.open(first[0])
    meta = json.loads(png.text["Description"])
    assert meta["width_in"] == pytest.approx(7.2) and png.size[0] == round(7.2 * meta["dpi"])
    # at 750 px (a desktop page) the smallest text is at least 9 px
    assert meta["smallest_text_pt"] / 72 * 750 / meta["width_in"] >= 9


def test_figure_block_embeds_the_image_links_the_files_and_has_an_anchor(tmp_path):
    png = tmp_path / "figure1_cifar10_default.png"
    png.write_bytes(b"\x89PNG fake")
    files = FigureFiles("figure1_cifar10_default", png, png.with_suffix(".pdf"), "**Figure 1.** CIFAR-10 <x>",
                        'Eight plots "quoted"', "ncpaper contributors (2026). *ncpaper*, commit `abc`.",
                        "Generated by `notebooks/figure.md` at commit `abc`.")
    bundle = files.html()._repr_mimebundle_()
    html = bundle["text/html"]
    assert base64.b64decode(bundle["image/png"]) == b"\x89PNG fake"  # the notebook shows it outside the book
    assert '<figure class="nc-figure" id="figure1-cifar10-default">' in html
    assert 'href="#figure1-cifar10-default"' in html
    assert '<a href="../figures/figure1_cifar10_default.png" download>PNG</a>' in html
    assert '<a href="../figures/figure1_cifar10_default.pdf" download>PDF</a>' in html
    assert 'alt="Eight plots &quot;quoted&quot;"' in html and "CIFAR-10 &lt;x&gt;" in html
    assert "<strong>Figure 1.</strong>" in html and "How to cite this figure" in html
    assert re.search(r'<img src="data:image/png;base64,[A-Za-z0-9+/=]+"', html)


def test_pilot_table_applies_our_terminal_phase_criterion():
    from ncpaper.pages import pilot_table

    pilots = pilot_table().set_index(["dataset", "width", "lambda"])
    assert (pilots.xs(0.0, level="lambda")[["NC1 ratio", "NC3 ratio"]] == 1).all().all()
    for dataset in ("cifar10", "mnist"):
        assert pilots.loc[(dataset, 2048, 3e-3), "meets it"]  # the setting the reproduce page recommends
        assert not pilots.loc[(dataset, 2048, 1e-2), "meets it"]  # lambda = 1e-2 no longer fits
        row = pilots.loc[(dataset, 2048, 3e-3)]
        assert row["train_error"] <= 0.002 and row["NC1 ratio"] >= 5 and row["NC3 ratio"] >= 5


class _Run:
    """What a page reads of a run for its takeaway: the data source and the epochs."""

    def __init__(self, source="MNIST (torchvision files)", epochs=200):
        self.meta = {"data_source": source, "num_classes": 10}
        self.config = type("Config", (), {"epochs": epochs, "n_per_class": 50})()


def _figure_page(rows, seeds=1):
    """A FigurePage whose last-epoch means are ``rows``: lambda -> (training error, NC1, NC3)."""
    from ncpaper.pages import FigurePage

    page = FigurePage("smoke", "mnist", 2, runs=[_Run()])
    last = pd.DataFrame([{"weight_decay": w, "train_error": e, "nc1": a, "nc3": b} for w, (e, a, b) in rows.items()])
    page.__dict__["last"] = last.set_index("weight_decay")
    page.__dict__["table"] = pd.DataFrame([{"weight_decay": w, "seed": s, "nc3": 0.0} for w in rows
                                           for s in range(seeds)])
    return page


def test_the_figure_takeaway_names_each_group_of_lambdas_with_its_ratios():
    page = _figure_page({0.0: (0.0, 1.0, 2.0), 0.01: (0.0, 0.1, 0.2), 0.02: (0.001, 0.05, 0.25),
                         0.03: (0.0, 0.5, 1.0), 0.1: (0.2, 0.01, 0.01)})
    text = page.headline()
    assert text == ("MNIST (torchvision files), 200 epochs, one seed: at λ = 0.01, 0.02 the network fits its "
                    "training set and NC1 ends 10-20, NC3 8-10 times lower than without weight decay; at λ = 0.03 "
                    "it fits but collapses less; from λ = 0.1 on it no longer fits (training error over 0.2%). Our "
                    "settings and thresholds, not the paper's.")
    assert "means over 3 seeds" in _figure_page({0.0: (0.0, 1.0, 1.0), 0.01: (0.0, 0.5, 0.5)}, seeds=3).headline()
    assert "no λ fits the training set with NC1 and NC3 5 times lower than without weight decay" in \
        _figure_page({0.0: (0.0, 1.0, 1.0), 0.01: (0.0, 0.5, 0.5)}).headline()


def test_the_balance_table_gives_each_runs_ratios_at_the_last_iterate_and_after_settling():
    from ncpaper.pages import FigurePage

    rows = []
    for wd, trained, settled, gradient in ((0.0, (None, None), (None, None), None),
                                           (0.01, (1.5, 4.0), (1.0005, 0.999), 20.0),
                                           (0.02, (0.9, 2.0), (1.001, 1.0), 0.001)):
        for phase, (b1, b2), epoch in (("train", (9.0, 9.0), 1), ("train", trained, 10), ("settled", settled, 10)):
            rows.append({"run_id": f"r{wd}", "weight_decay": wd, "seed": 0, "epoch": epoch, "phase": phase,
                         "balance_1": b1, "balance_2": b2, "settle_gradient_1": gradient if phase == "settled"
                         else None, "settle_gradient_2": 0.0})
    page = FigurePage("smoke", "mnist", 2, runs=[_Run()])
    page.__dict__["table"] = pd.DataFrame(rows)
    frame = page.balance_frame
    assert list(frame["λ"]) == [0.01, 0.02]  # lambda = 0 has no balance to check
    assert list(frame["last iterate: ratios"]) == ["1.5–4", "0.9–2"]  # the last epoch's, not the first's
    assert list(frame["settled: largest |ratio − 1|"]) == pytest.approx([0.001, 0.001])
    assert list(frame["settled: hidden layers' gradient"]) == [20.0, 0.001]  # W_L's (layer 2) is left out
    assert "below 0.01 in some runs and larger in others" in page.balance_markdown()
    assert "0.10%" in page.balance_table().text and "balance per weight-decay run" in page.balance_table().text
    page.__dict__["table"] = pd.DataFrame(rows).query("phase == 'train'")
    page.__dict__.pop("balance_frame")  # computed once per page: drop it with the table it came from
    assert page.balance_frame.empty and page.balance_markdown() == "" and page.balance_table() is None


def test_the_takeaway_box_is_the_admonition_every_page_opens_with():
    from ncpaper.pages import takeaway_box

    box = takeaway_box("It holds.")
    assert box.splitlines() == ["```{admonition} Takeaway", ":class: tip nc-takeaway", "It holds.", "```"]


def test_the_phase_takeaway_gives_both_edges_and_the_lambdas_between():
    from ncpaper.pages import PhasePage

    rows = [(0.0, 1.0, 0.0), (1e-4, 0.5, 0.0), (1e-3, 0.05, 0.0), (1e-2, 0.01, 0.0), (1e-1, 0.001, 0.5)]
    last = pd.DataFrame([{"weight_decay": w, "seed": s, "nc1": a, "train_error": e} for w, a, e in rows
                         for s in (0, 1)])
    page = PhasePage("smoke", "mnist", [_Run(epochs=150)])
    page.__dict__["last"] = last
    assert page.headline() == ("MNIST (torchvision files), 5 weight decays x 2 seeds, 150 epochs: NC1 falls below a "
                               "tenth of its value without weight decay (1) from λ = 0.001, and the network stops "
                               "fitting its training set from λ = 0.1: only λ = 0.001, 0.01 do both. Our settings "
                               "and thresholds, not the paper's.")
    page = PhasePage("smoke", "mnist", [_Run(epochs=150)])
    page.__dict__["last"] = last[last["weight_decay"] < 1e-3]
    assert "from λ" not in page.headline() and "no λ does both" in page.headline()
    page = PhasePage("smoke", "mnist", [_Run(epochs=150)])
    page.__dict__["last"] = last[last["weight_decay"] != 1e-2]
    assert "only λ = 0.001 does both" in page.headline()  # one λ: the verb agrees


def test_numbers_are_set_like_a_journal():
    from ncpaper.pages.display import count_text, number_text

    assert number_text(2610709943119281.0) == "2.61×10¹⁵"  # no 16-digit integers
    assert number_text(0.0009886) == "9.89×10⁻⁴" and number_text(5.01e-07) == "5.01×10⁻⁷"  # one format below 1e-3
    assert number_text(-3.503e-16) == "0" and number_text(2e-14) == "0"  # rounding noise
    assert number_text(0.0652) == "0.0652" and number_text(0.5) == "0.5" and number_text(-0.0275) == "−0.0275"
    assert number_text(1519.2) == "1519" and number_text(12345.6) == "12346" and number_text(1e5) == "1×10⁵"
    assert number_text(float("inf")) == "∞" and number_text(float("nan")) == "–"
    assert count_text(80) == "80" and count_text(1234) == "1234" and count_text(54210) == "54,210"


def test_tables_put_the_answer_first_right_align_numbers_and_mark_rows():
    frame = pd.DataFrame({"weight_decay": [0.0, 0.01], "nc1": [0.5, 1e-7], "fits": [True, False],
                          "runs": [3, 12345], "our criterion": ["reference", "met"]})
    text = table_html(frame, "Table: t", first=["our criterion"], marked=(frame["nc1"] < 1e-3, "unresolved <here>"))
    heads = re.findall(r'<th [^>]*class="col_heading[^"]*"[^>]*>(.*?)</th>', text)
    assert heads == ["λ", "our criterion", "NC1", "fits", "runs"]  # the answer next to the row's label
    cells = re.findall(r'<td [^>]*class="([^"]*)"[^>]*>(.*?)</td>', text)
    assert [c for _, c in cells] == ["0", "reference", "0.5", "yes", "3", "0.01 †", "met", "1×10⁻⁷", "no", "12,345"]
    assert ["nc-num" in k for k, _ in cells[:5]] == [True, False, True, False, True]  # numbers right-aligned
    assert all("nc-marked" in k for k, _ in cells[5:]) and not any("nc-marked" in k for k, _ in cells[:5])
    assert 'class="col_heading level0 col2 nc-num"' in text
    assert text.endswith('<p class="nc-table-legend">† unresolved &lt;here&gt;</p></div>')  # escaped, after the table
    assert "nc-table-legend" not in table_html(frame, "T", marked=(frame["nc1"] > 1, "never"))  # no row, no legend
    ranged = table_html(pd.DataFrame({"λ": ["0"], "NC1 end": ["0.0846 (0.0755–0.0936)"]}), "T")
    assert '>0.0846<span class="nc-range"> (0.0755–0.0936)</span></td>' in ranged  # the mean, its range below
    assert "white-space: normal" not in ranged  # a range is not prose
    with pytest.raises(KeyError, match="no column"):
        table_html(frame, "T", first=["answer"])
    wide = pd.DataFrame({"data": ["MNIST"], "weight_decay": [0.0], **{f"q{k}": [0.5] for k in range(10)},
                         "answer": ["yes"]})
    for part in table_html(wide, "Table: wide", first=["answer"]).split("</table>")[:-1]:  # every part leads with it
        assert re.findall(r'class="col_heading[^"]*"[^>]*>(.*?)</th>', part)[:2] == ["data", "answer"]


def test_the_glossary_states_the_thresholds_the_code_uses():
    """The Setting page's glossary (static Markdown, which the other pages and the landing answer link) says the
    same 0.2% and 5 times as the verdicts' constants."""
    from ncpaper.pages.verdicts import COLLAPSE_FACTOR, TERMINAL_TRAIN_ERROR

    source = (Path(__file__).resolve().parents[1] / "notebooks" / "setting.md").read_text()
    glossary = source[source.index("```{glossary}"):]
    glossary = glossary[:glossary.index("\n```\n")]
    for term in ("NC1", "NC2", "NC3", "NC4", "λ", "ε", "fit term", "fits its training set", "t*", "necessary"):
        assert f"\n{term}\n  " in glossary, term
    assert f"at most {TERMINAL_TRAIN_ERROR:.1%}" in glossary and f"at least {COLLAPSE_FACTOR:g} times" in glossary


def _extension(name: str):
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "book" / "_ext" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_site_links_each_figure_file_instead_of_embedding_it():
    ext = _extension("ncpaper_figures")
    block = ('<figure class="nc-figure" id="f"><a href="../figures/f_smoke.png" title="the full-size PNG">'
             '<img src="data:image/png;base64,iVBORw0KGgo=" alt="a figure"></a></figure>')
    linked = ext.with_linked_images(block, lambda href: href == "../figures/f_smoke.png")
    assert "data:image" not in linked and '<img src="../figures/f_smoke.png" alt="a figure">' in linked
    assert ext.with_linked_images(block, lambda href: False) == block  # no file: the image stays embedded


def test_glossary_tooltips_drop_the_maths_and_print_lines_name_the_page():
    from docutils import nodes

    ext = _extension("ncpaper_sphinx")
    definition = nodes.definition("", nodes.paragraph("", "", nodes.Text("Within-class spread, "),
                                                      nodes.math("", "\\operatorname{Tr}(\\Sigma_W)"),
                                                      nodes.Text("; 0 when collapsed.")))
    assert ext.plain_definition(definition) == "Within-class spread; 0 when collapsed."
    stamp = {"version": "0.3.0", "commit": "abc <d>", "date": "2026-12-08"}
    line = ext.print_line_html(stamp, "book/executed/figure1_cifar10.html")
    assert 'href="figure1_cifar10.html"' in line and "book/executed/figure1_cifar10.html (local build)" in line
    assert "abc &lt;d&gt;" in line
    assert "https://x.org/book/executed/figure1_cifar10.html</a>" in ext.print_line_html(
        stamp, "book/executed/figure1_cifar10.html", "https://x.org/")
