"""Notebooks safe to rerun: papermill's injected values folded into the visible parameters cell, a first cell on
how to run the notebook, and a rerun with other parameters told apart from the book's page (its own file names)."""

import nbformat
import pytest

from ncpaper.book import NOTEBOOKS, fold_parameters, install_note
from ncpaper.rerun import book_parameters, describe, figure_stem, notebook_defaults, rerun_of


def notebook(parameters: str, injected: str | None) -> nbformat.NotebookNode:
    cells = [nbformat.v4.new_markdown_cell("# Title"),
             nbformat.v4.new_code_cell(parameters, metadata={"tags": ["parameters", "remove-cell"]})]
    if injected is not None:
        cells.append(nbformat.v4.new_code_cell(injected, metadata={"tags": ["injected-parameters"]}))
    cells.append(nbformat.v4.new_code_cell("print(figure)"))
    return nbformat.v4.new_notebook(cells=cells)


def test_injected_values_go_into_the_visible_cell_which_is_then_the_only_one():
    nb = notebook('profile = "default"\nfigure = "mnist"  # "cifar10" is Figure 1\nweight_decays = [\n    0,\n'
                  '    0.01,\n]  # lambdas\nfigure_number = 2',
                  '# Parameters\nprofile = "smoke"\nfigure = "cifar10"\nweight_decays = [0, 0.05]\nextra = None\n')
    assert fold_parameters(nb)
    assert [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])] == []
    assert nb.cells[1].source == ('profile = "smoke"\nfigure = "cifar10"  # "cifar10" is Figure 1\n'
                                  'weight_decays = [0, 0.05]  # lambdas\nfigure_number = 2\nextra = None')
    assert nb.cells[1].metadata["tags"] == ["parameters", "remove-cell"]  # papermill can parametrise it again
    namespace = {}
    exec(nb.cells[1].source, namespace)  # the folded cell is valid Python with the injected values
    assert namespace["figure"] == "cifar10" and namespace["weight_decays"] == [0, 0.05]
    assert not fold_parameters(notebook('figure = "mnist"', None))  # nothing injected: nothing to do
    with pytest.raises(ValueError, match="without a parameters cell"):
        nb = notebook("", 'figure = "x"')
        nb.cells[1].metadata["tags"] = []
        fold_parameters(nb)


def test_the_install_note_says_how_to_get_and_run_the_code():
    note = install_note()
    for words in ("pip install -e '.[book]'", "footer", "NCPAPER_DATA", "parameters cell below is the only one",
                  "not the book's figures"):
        assert words in note, words


def test_the_book_pages_are_not_reruns_and_other_parameters_are():
    assert notebook_defaults("figure.md")["weight_decays"] is None
    for source, name, params, _ in NOTEBOOKS:
        defaults = notebook_defaults(source)
        assert rerun_of(source, {**defaults, **params}) is None, name  # every book page, as the book runs it
        if "profile" not in params:  # built on whichever profile the book is built on
            assert rerun_of(source, {**defaults, **params, "profile": "smoke"}) is None, name
    figure2 = {**notebook_defaults("figure.md"), "figure": "mnist", "figure_number": 2}
    assert rerun_of("figure.md", {**figure2, "weight_decays": [0, 0.05]}) == "weight_decays=[0, 0.05]"
    assert rerun_of("figure.md", {**figure2, "weight_decays": [0.0, 0.005, 0.01]}) == \
        "weight_decays=[0.0, 0.005, 0.01]"  # the profile's own lambdas written out: still not the page's parameters
    assert rerun_of("figure.md", {**figure2, "figure": "cifar10"}) == "figure_number=2"  # nearest: Figure 1's page
    assert rerun_of("figure.md", {**figure2, "profile": "paper", "published": True}) is None
    assert rerun_of("figure.md", {**figure2, "published": True}) == "published=True"
    assert {name for name, _, _ in book_parameters("phase.md")} == {"phase_mnist", "phase_cifar10"}
    assert describe({"figure": "cifar10", "weight_decays": [0, 0.05]}) == "figure='cifar10', weight_decays=[0, 0.05]"


def test_a_rerun_gets_its_own_file_names():
    assert figure_stem("figure2_mnist_default", None) == "figure2_mnist_default"
    one = figure_stem("figure2_mnist_default", "weight_decays=[0, 0.05]")
    other = figure_stem("figure2_mnist_default", "weight_decays=[0, 0.5]")
    assert one.startswith("figure2_mnist_default-rerun-weight_decays-0-0.05-") and one != other
    assert figure_stem("figure2_mnist_default", "weight_decays=[0, 0.05]") == one  # derived, not random
    assert all(c.isalnum() or c in "_.-" for c in one)
