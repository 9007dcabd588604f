"""The book end to end on the smoke profile: papermill, glue, Jupyter Book with -W, headless Chromium."""

import functools
import http.server
import math
import os
import shutil
import threading
from pathlib import Path

import pytest

from ncpaper.book import NOTEBOOKS, NotebookFailed, build_book, build_site, execute_notebooks, glued_values

REPO = Path(__file__).resolve().parents[1]
PAGES = ["book/intro"] + [f"book/executed/{name}" for _, name, _, _ in NOTEBOOKS]
CHROMIUM = "/usr/bin/chromium"


def copy_book_sources(target: Path) -> Path:
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy(REPO / name, target / name)
    shutil.copytree(REPO / "book", target / "book", ignore=shutil.ignore_patterns("executed", "figures", "__pycache__"))
    shutil.copytree(REPO / "notebooks", target / "notebooks")
    return target


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = copy_book_sources(tmp_path_factory.mktemp("book"))
    saved = {k: os.environ.get(k) for k in ("NCPAPER_RESULTS", "NCPAPER_CACHE")}
    os.environ["NCPAPER_RESULTS"] = str(root / "results")
    os.environ["NCPAPER_CACHE"] = str(tmp_path_factory.getbasetemp() / "cache")
    try:
        timings = build_book(root, profile="smoke", workers=1)
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    return root, timings


def glue(root, name):
    return glued_values(root / "book" / "executed" / f"{name}.ipynb")


def number(text: str) -> float:
    return float(text.strip("'\""))


def test_every_notebook_glues_plain_values(built):
    root, _ = built
    for _, name, _, _ in NOTEBOOKS:
        values = glue(root, name)
        assert values, f"{name} glued nothing"
        for key, text in values.items():
            assert text is not None and "np.float" not in text and "np.int" not in text, (name, key, text)


def test_glued_values_are_the_derivations_and_checks(built):
    root, _ = built
    assert number(glue(root, "setting")["etf_max_metric"]) < 1e-10
    assert number(glue(root, "setting")["noisy_nc1"]) > 0.01
    lemma1 = glue(root, "lemma1")
    assert lemma1["lemma1_ratio"] == "'kappa'"
    assert number(lemma1["lemma1_max_error"]) < 1e-12
    assert number(lemma1["lemma1_floor"]) == pytest.approx(1 / 200)
    assert number(glue(root, "lemma2")["euler_residual"]) < 1e-10
    theorem = glue(root, "theorem")
    assert theorem["scale_ratio"] == theorem["norm_ratio"] == "'kappa'"
    for number_, name in ((1, "figure1_cifar10"), (2, "figure2_mnist")):
        values = glue(root, name)
        for key in ("nc1_nowd", "nc3_nowd", "nc1_ratio_1", "nc3_ratio_1", "nc1_ratio_2", "nc3_ratio_2"):
            assert math.isfinite(number(values[key])) and number(values[key]) > 0, (name, key)
        assert "smoke" in values["caption"]
        assert (root / "book" / "figures" / f"figure{number_}_{name.split('_')[1]}_smoke.pdf").stat().st_size > 0
    assert "CIFAR-10 (JPEG q75 copy)" in glue(root, "figure1_cifar10")["data_source"]
    assert number(glue(root, "reproduce")["total_train_minutes"]) > 0
    for dataset in ("mnist", "cifar10"):
        phase = glue(root, f"phase_{dataset}")
        assert number(phase["n_runs"]) == 8 and number(phase["n_lambdas"]) == 4 and number(phase["n_seeds"]) == 2
        assert "λ" in phase["onset_text"] or "no λ" in phase["onset_text"]
        assert (root / "book" / "figures" / f"phase_{dataset}_smoke.pdf").stat().st_size > 0


def test_full_scale_pages_show_the_published_runs_with_provenance(built):
    """The paper profile's pages come from published/paper/ (never retrained) and say where they were run."""
    from ncpaper.analysis import provenance_table
    from ncpaper.profiles import figure_configs
    from ncpaper.published import load_published

    root, _ = built
    html = root / "_build" / "html" / "book" / "executed"
    for name, figure, source in (("figure1_cifar10_paper", "cifar10", "CIFAR-10"), ("figure2_mnist_paper", "mnist",
                                                                                      "MNIST")):
        values = glue(root, name)
        assert values["data_source"].strip("'").startswith(source) and "'paper'" in values["caption"]
        assert math.isfinite(number(values["nc1_ratio_1"])) and math.isfinite(number(values["nc3_ratio_2"]))
        page = (html / f"{name}.html").read_text()
        assert "published results" in page and "does not retrain" in page
        provenance = provenance_table(load_published(figure_configs("paper", figure), "paper"))
        for commit in provenance["commit"]:
            assert commit.split()[0] in page
        assert provenance["device"].iloc[0].split(" (")[0] in page
        assert (root / "book" / "figures" / f"figure{name[6]}_{figure}_paper.pdf").stat().st_size > 0
    assert not (root / "results").exists() or not any(
        '"n_per_class": 5000' in p.read_text() for p in (root / "results").glob("*/meta.json"))  # nothing retrained


def test_figures_carry_their_provenance(built):
    from PIL import Image

    root, _ = built
    png = Image.open(root / "book" / "figures" / "figure2_mnist_smoke.png")
    text = png.text["Description"]
    assert '"profile": "smoke"' in text and '"data_source": "MNIST' in text and '"commit"' in text
    pdf = (root / "book" / "figures" / "figure2_mnist_smoke.pdf").read_bytes()
    assert b"smoke" in pdf


def test_site_has_every_page_with_its_glued_numbers(built):
    root, _ = built
    html = root / "_build" / "html"
    for page in PAGES:
        assert (html / f"{page}.html").exists(), page
    figure = (html / "book/executed/figure2_mnist.html").read_text()
    nc1 = number(glue(root, "figure2_mnist")["nc1_nowd"])
    assert f"{nc1:.3g}" in figure
    assert not list(html.rglob("*.ipynb.tmp*")) and not (root / "_build" / ".staging").exists()


@pytest.fixture(scope="module")
def served(built):
    root, _ = built
    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(QuietHandler, directory=str(root / "_build" / "html"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def open_page(browser, address):
    """Load a page fully (images, MathJax); return it and every console error, page error or failed request."""
    page = browser.new_page()
    problems = []
    page.on("console", lambda m: problems.append(f"{m.type}: {m.text}") if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"failed: {r.url}"))
    page.on("response", lambda r: problems.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None)
    page.goto(address, wait_until="networkidle")
    page.evaluate("() => Promise.all(Array.from(document.images).map(i => { i.loading = 'eager'; "
                  "return i.complete ? 0 : new Promise(r => { i.onload = i.onerror = r; }); }))")
    if page.evaluate("() => !!document.querySelector('script[src*=mathjax]')"):
        page.wait_for_function("() => window.MathJax && MathJax.startup && MathJax.startup.promise")
        page.evaluate("() => MathJax.startup.promise")  # resolves once the page is typeset
    return page, problems


def test_pages_in_headless_chromium(served):
    """Every page loads without console errors, every image loads, maths renders, glued numbers show."""
    from playwright.sync_api import sync_playwright

    root, url = served
    assert Path(CHROMIUM).exists(), "install Chromium: apt-get install chromium"
    nc3 = number(glue(root, "figure1_cifar10")["nc3_nowd"])
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        for page_name in PAGES:
            page, problems = open_page(browser, f"{url}/{page_name}.html")
            assert problems == [], (page_name, problems)
            broken = page.evaluate("Array.from(document.images).filter(i => !i.naturalWidth).map(i => i.src)")
            assert broken == [], (page_name, broken)
            text = page.inner_text("article")
            prose = page.evaluate("() => { const a = document.querySelector('article').cloneNode(true); "
                                  "a.querySelectorAll('pre, code, mjx-container').forEach(e => e.remove()); "
                                  "return a.innerText; }")
            if page_name != "book/intro":
                assert page.locator("mjx-container").count() > 0, f"no rendered maths on {page_name}"
                for tex in ("$", "\\frac", "\\lambda", "\\lVert"):
                    assert tex not in prose, f"raw TeX {tex!r} on {page_name}"
            if page_name.endswith("figure1_cifar10"):
                assert page.evaluate("Array.from(document.images).some(i => i.naturalWidth > 1000)")
                assert f"{nc3:.3g}" in text
            if page_name.endswith("lemma1"):
                assert "kappa" in text
            page.close()
        browser.close()


def test_a_failing_notebook_is_named_with_its_cell(tmp_path):
    root = copy_book_sources(tmp_path)
    source = root / "notebooks" / "setting.md"
    source.write_text(source.read_text().replace("import inspect", "import inspect\nraise RuntimeError('boom')"))
    with pytest.raises(NotebookFailed, match=r"notebooks/setting.md .*failed in cell \d+: RuntimeError: boom"):
        execute_notebooks(root, "smoke", only=["setting"])


def test_a_failed_render_leaves_the_previous_site_untouched(built, tmp_path):
    root, _ = built
    copy = tmp_path / "book"
    shutil.copytree(root, copy, ignore=shutil.ignore_patterns("results"))
    marker = copy / "_build" / "html" / "previous-build.txt"
    marker.write_text("the site before")
    intro = copy / "book" / "intro.md"
    intro.write_text(intro.read_text() + "\nSee {ref}`a-label-that-does-not-exist`.\n")
    with pytest.raises(RuntimeError, match="Jupyter Book build failed"):
        build_site(copy)
    assert marker.read_text() == "the site before"
    assert not (copy / "_build" / ".staging").exists()
