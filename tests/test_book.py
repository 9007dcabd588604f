"""The book end to end on the smoke profile: papermill, glue, Jupyter Book with -W, headless Chromium."""

import functools
import http.server
import json
import math
import os
import re
import shutil
import threading
from pathlib import Path

import pytest

from ncpaper.book import (
    NOTEBOOKS,
    NotebookFailed,
    build_book,
    build_site,
    execute_notebooks,
    glued_values,
    page_inputs,
)

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
        timings = build_book(root, profile="smoke", workers=2)  # as scripts/build-book.sh: pages side by side
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
    assert number(glue(root, "setting")["group_lambda"]) == pytest.approx(2.5e-3)  # the group's setting, our units
    lemma1 = glue(root, "lemma1")
    assert number(lemma1["lemma1_max_error"]) < 1e-12
    assert number(lemma1["lemma1_floor"]) == pytest.approx(1 / 20)  # 1/(2C): N examples per class
    assert number(lemma1["caveat_max_loss"]) == 0  # NC1 + NC2 features with W = kM + beta 1 mu_G^T interpolate
    lemma2 = glue(root, "lemma2")
    assert number(lemma2["euler_residual"]) < 1e-10
    assert number(lemma2["balance_settled_worst"]) <= 0.05  # every layer at a critical point after settling
    theorem = glue(root, "theorem")
    assert number(theorem["constructed_readout_error"]) < 1e-10
    assert number(theorem["thm_exact_worst"]) <= 0.05
    for number_, name in ((1, "figure1_cifar10"), (2, "figure2_mnist")):
        values = glue(root, name)
        for key in ("nc1_nowd", "nc3_nowd", "nc1_ratio_1", "nc3_ratio_1", "nc1_ratio_2", "nc3_ratio_2"):
            assert math.isfinite(number(values[key])) and number(values[key]) > 0, (name, key)
        assert "smoke" in values["caption"]
        assert (root / "book" / "figures" / f"figure{number_}_{name.split('_')[1]}_smoke.pdf").stat().st_size > 0
    assert "CIFAR-10 (JPEG q75 copy)" in glue(root, "figure1_cifar10")["data_source"]
    assert number(glue(root, "reproduce")["total_train_minutes"]) > 0
    bounds = glue(root, "bounds")
    assert bounds["all_ordered"] == "True" and number(bounds["n_reliable"]) <= number(bounds["n_defined"])
    assert 0 <= number(bounds["share_min"]) <= number(bounds["share_max"]) <= 1 + 1e-9  # Phi <= NC1 on every run
    for dataset in ("mnist", "cifar10"):
        phase = glue(root, f"phase_{dataset}")
        assert number(phase["n_runs"]) == 8 and number(phase["n_lambdas"]) == 4 and number(phase["n_seeds"]) == 2
        assert "λ" in phase["onset_text"] or "no λ" in phase["onset_text"]
        assert (root / "book" / "figures" / f"phase_{dataset}_smoke.pdf").stat().st_size > 0
        page = (root / "_build" / "html" / "book" / "executed" / f"phase_{dataset}.html").read_text()
        words = " ".join(re.sub(r"<[^>]+>", " ", page).split())
        pooled = "averaged over 2x2 pixel blocks (16x16 inputs)"  # the smoke profile pools CIFAR-10 as the default
        assert (pooled in words) == (dataset == "cifar10"), dataset


def test_full_scale_pages_show_the_published_runs_or_say_they_are_not_published(built):
    """The paper profile's pages come from published/paper/ (never retrained) and say where they were run;
    while published/paper/ lacks runs of the current paper profile they say so instead of failing."""
    from ncpaper.analysis import provenance_table
    from ncpaper.profiles import figure_configs
    from ncpaper.published import MissingResultError, load_published

    root, _ = built
    html = root / "_build" / "html" / "book" / "executed"
    for name, figure, source in (("figure1_cifar10_paper", "cifar10", "CIFAR-10"), ("figure2_mnist_paper", "mnist",
                                                                                      "MNIST")):
        values = glue(root, name)
        page = (html / f"{name}.html").read_text()
        try:
            runs = load_published(figure_configs("paper", figure), "paper")
        except MissingResultError:
            assert values["missing"].strip("'\"").startswith("**Not yet published.**")
            words = " ".join(re.sub(r"<[^>]+>", " ", page).split())  # inline code is split into spans
            assert "Not yet published." in words and f"ncpaper sweep --profile paper --figure {figure}" in words
            continue
        assert values["data_source"].strip("'").startswith(source) and "'paper'" in values["caption"]
        assert math.isfinite(number(values["nc1_ratio_1"])) and math.isfinite(number(values["nc3_ratio_1"]))
        assert "published results" in page and "does not retrain" in page
        provenance = provenance_table(runs)
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
    assert '"profile": "smoke"' in text and '"data_source": "MNIST' in text
    meta = json.loads(text)
    assert meta["plotted_at_commit"]["commit"] and meta["ncpaper_version"] and "CC-BY-4.0" in meta["licence"]
    assert len(meta["runs"]) == 3 and all(r["key"] and "commit" in r["git"] for r in meta["runs"])
    pdf = (root / "book" / "figures" / "figure2_mnist_smoke.pdf").read_bytes()
    assert b"smoke" in pdf and b"CreationDate" not in pdf  # the same figure gives the same bytes


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
            if page.locator(".math").count() > 0:  # every page whose source has maths renders it
                assert page.locator("mjx-container").count() > 0, f"no rendered maths on {page_name}"
            if page_name != "book/intro":
                for tex in ("$", "\\frac", "\\lambda", "\\lVert"):
                    assert tex not in prose, f"raw TeX {tex!r} on {page_name}"
            if page_name == "book/intro":  # the landing page opens with its answer, then the key figure
                assert page.evaluate(
                    "() => { const box = document.querySelector('article .nc-takeaway'); "
                    "const key = document.querySelectorAll('article figure.nc-figure'); "
                    "const first = document.querySelector('article .nc-takeaway ~ p'); "
                    "return key.length === 1 && key[0].id === 'necessity-key-horizon' && "
                    "!!(box.compareDocumentPosition(key[0]) & Node.DOCUMENT_POSITION_FOLLOWING) && "
                    "!!(key[0].compareDocumentPosition(first) & Node.DOCUMENT_POSITION_FOLLOWING); }"), page_name
            if page_name.endswith("figure1_cifar10"):
                assert page.evaluate("Array.from(document.images).some(i => i.naturalWidth > 1000)")
                assert f"{nc3:.3g}" in text
            if page_name.endswith("lemma1"):
                assert "Lemma 1 holds when NC3 is read literally" in text
            if page_name.endswith("theorem"):
                assert "as stated, the theorem is vacuous" in text
            page.close()
        browser.close()


READER_CHECKS = """() => {
  const article = document.querySelector('article');
  const width = article.getBoundingClientRect().width;
  const wide = Array.from(article.querySelectorAll('table, img, figure')).filter(e => {
    const box = e.closest('.nc-table-wrap, .cell_output, .output') || e;   // scrolling boxes may hold wide tables
    return box.getBoundingClientRect().width > width + 1; }).map(e => e.outerHTML.slice(0, 80));
  const unpadded = Array.from(article.querySelectorAll('td, th')).filter(c =>
    parseFloat(getComputedStyle(c).paddingLeft) < 4 || parseFloat(getComputedStyle(c).paddingRight) < 4).length;
  const figures = Array.from(article.querySelectorAll('figure.nc-figure')).map(f => {
    const shown = Array.from(f.querySelectorAll('img')).filter(i => i.getBoundingClientRect().width > 0);
    const img = shown[0];
    return {id: f.id, shown: img.getBoundingClientRect().width, natural: img.naturalWidth, alt: img.alt,
            images: shown.length, narrow: img.classList.contains('nc-narrow'), src: img.currentSrc,
            full: f.querySelector('a > img') ? f.querySelector('a > img').parentElement.getAttribute('href') : null,
            downloads: Array.from(f.querySelectorAll('a[download]')).map(a => a.getAttribute('href')),
            anchor: !!f.querySelector(`a[href="#${f.id}"]`)};
  });
  return {overflow: document.documentElement.scrollWidth - innerWidth, wide, unpadded, figures,
          text: article.innerText,
          links: Array.from(document.querySelectorAll('a[href]')).map(a => a.getAttribute('href'))};
}"""


def test_pages_for_readers_on_desktop_and_phone(served):
    """No table or figure wider than its page, padded cells, figure text >= 10 px on a desktop (1400 px) and on a
    phone (390 px: the figure's one-column copy), no parameters cell or raw glue role, every figure with PNG, PDF,
    anchor and alt text, every link resolving."""
    from urllib.parse import urljoin, urlparse

    from PIL import Image
    from playwright.sync_api import sync_playwright

    root, url = served
    site = root / "_build" / "html"
    checked_external = {"https://doi.org/10.1073/pnas.2015509117"}  # the PNAS paper's DOI, checked
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        for width in (1400, 390):
            context = browser.new_context(viewport={"width": width, "height": 900})
            for page_name in PAGES:
                page = context.new_page()
                address = f"{url}/{page_name}.html"
                page.goto(address, wait_until="networkidle")
                page.evaluate("() => Promise.all(Array.from(document.images).map(i => { i.loading = 'eager'; "
                              "return i.complete ? 0 : new Promise(r => { i.onload = i.onerror = r; }); }))")
                info = page.evaluate(READER_CHECKS)
                where = (width, page_name)
                assert info["overflow"] <= 0 and info["wide"] == [], (where, info["overflow"], info["wide"])
                assert info["unpadded"] == 0, where
                for raw in ("{glue", "injected-parameters", "# Parameters", "profile = \"smoke\""):
                    assert raw not in info["text"], (where, raw)
                for figure in info["figures"]:
                    assert figure["anchor"] and len(figure["alt"]) > 40, (where, figure["id"])
                    png = figure["full"]
                    assert png.endswith(".png") and figure["downloads"] == [png, png[:-4] + ".pdf",
                                                                            png[:-4] + "-narrow.png"], (where, figure)
                    assert figure["images"] == 1 and figure["narrow"] == (width < 1000), (where, figure)
                    shown = urlparse(urljoin(address, png)).path if not figure["narrow"] else \
                        urlparse(figure["src"]).path  # the full-width figure, or its one-column copy
                    meta = json.loads(Image.open(site / shown.lstrip("/")).text["Description"])
                    assert meta["width_in"] * meta["dpi"] == pytest.approx(figure["natural"], abs=1), (where, meta)
                    text_px = meta["smallest_text_pt"] / 72 * meta["dpi"] * figure["shown"] / figure["natural"]
                    assert text_px >= 10, (where, figure["id"], text_px)
                for href in info["links"]:
                    target = urlparse(urljoin(address, href))
                    if target.scheme in ("http", "https") and target.netloc != urlparse(url).netloc:
                        assert href in checked_external, (where, href)
                    elif target.scheme in ("http", "https"):
                        path = site / target.path.lstrip("/")
                        assert path.exists() or (path / "index.html").exists(), (where, href)
                page.close()
            context.close()
        browser.close()
    figure_pages = [n for n in PAGES if "figure" in n and "paper" not in n]
    assert figure_pages and all("nc-figure" in (site / f"{n}.html").read_text() for n in figure_pages)


TAKEAWAY_CHECKS = """() => {
  const article = document.querySelector('article');
  const box = article.querySelector('.admonition');
  if (!box) return {box: false};
  const first = Array.from(article.querySelectorAll('p, table, figure, img, .cell_output, mjx-container[display]'))
    .find(e => !box.contains(e) && !e.contains(box) && e.getBoundingClientRect().height > 0);  // an output holds it
  // lines of text: the rectangles' vertical centres, grouped when closer than 0.6 line heights (so that a
  // subscript or a fraction in inline maths stays on its line)
  const centres = [];
  let lineHeight = 0;
  for (const part of box.children) {
    if (part.classList.contains('admonition-title') || part.classList.contains('nc-key')) continue;  // its key
    lineHeight = Math.max(lineHeight, parseFloat(getComputedStyle(part).lineHeight) || 0);
    const range = document.createRange();
    range.selectNodeContents(part);
    for (const r of range.getClientRects()) if (r.height > 0) centres.push(r.top + r.height / 2);
  }
  centres.sort((a, b) => a - b);
  let lines = 0, last = -1e9;
  for (const c of centres) if (c > last + 0.6 * lineHeight) { lines += 1; last = c; }
  return {box: box.classList.contains('nc-takeaway'), title: box.querySelector('.admonition-title').innerText,
          lines, before: !first || box.getBoundingClientRect().top < first.getBoundingClientRect().top};
}"""

PRINT_CHECKS = """() => {
  const article = document.querySelector('article');
  const right = article.getBoundingClientRect().right;
  const outside = Array.from(article.querySelectorAll('table, img, figure, pre')).filter(e =>
    e.getBoundingClientRect().width > 0 && e.getBoundingClientRect().right > right + 1)
    .map(e => e.outerHTML.slice(0, 80));
  const loose = Array.from(article.querySelectorAll('figure.nc-figure'))
    .filter(f => getComputedStyle(f).breakInside !== 'avoid').map(f => f.id);
  return {overflow: document.documentElement.scrollWidth - innerWidth, outside, loose};
}"""


def test_every_page_opens_with_a_takeaway_and_prints_within_its_page(served):
    """Every page opens with a takeaway box of at most three lines (at 1400 px) before anything else it shows; in
    print (A4 width), no table or figure runs past the page and every figure is kept with its caption."""
    from playwright.sync_api import sync_playwright

    _, url = served
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        screen = browser.new_context(viewport={"width": 1400, "height": 900})
        paper = browser.new_context(viewport={"width": 794, "height": 1123})  # A4 at 96 px per inch
        for page_name in PAGES:
            page = screen.new_page()
            page.goto(f"{url}/{page_name}.html", wait_until="networkidle")
            page.wait_for_function("() => !window.MathJax || !MathJax.startup || MathJax.startup.promise")
            page.evaluate("() => window.MathJax && MathJax.startup ? MathJax.startup.promise : 0")
            box = page.evaluate(TAKEAWAY_CHECKS)
            assert box["box"] and box["before"] and 1 <= box["lines"] <= 3, (page_name, box)
            page.close()
            page = paper.new_page()
            page.emulate_media(media="print")
            page.goto(f"{url}/{page_name}.html", wait_until="networkidle")
            page.evaluate("() => window.MathJax && MathJax.startup ? MathJax.startup.promise : 0")
            printed = page.evaluate(PRINT_CHECKS)
            assert printed["overflow"] <= 0 and printed["outside"] == [] and printed["loose"] == [], \
                (page_name, printed)
            page.close()
        browser.close()


TABLE_CHECKS = """() => Array.from(document.querySelectorAll('article .nc-table-wrap')).map(wrap => {
  const box = wrap.getBoundingClientRect();
  const first = wrap.querySelector('tbody tr');
  const cells = first ? Array.from(first.children) : [];
  const heads = Array.from(wrap.querySelectorAll('thead th')).map(h => h.innerText.trim());
  return {caption: (wrap.previousElementSibling || {}).innerText || '',
          scrolls: wrap.scrollWidth > wrap.clientWidth + 1,
          // the first two columns lie inside the box before any scrolling, and the first stays there when it scrolls
          two_shown: cells.slice(0, 2).every(c => c.getBoundingClientRect().right <= box.right + 1),
          pinned: cells.length ? getComputedStyle(cells[0]).position === 'sticky' : true,
          heads: heads.slice(0, 2),
          right: Array.from(wrap.querySelectorAll('td.nc-num')).every(c => getComputedStyle(c).textAlign === 'right')};
})"""


def test_tables_fit_a_phone_and_a_desktop(served):
    """At 1400 px no table scrolls; at 390 px every table shows its first two columns (the row's key and, where the
    table has one, its answer) without scrolling, and a table that scrolls keeps its first column pinned; numbers
    are right-aligned. A figure page's criterion table has its answer second."""
    from playwright.sync_api import sync_playwright

    _, url = served
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        for width in (1400, 390):
            context = browser.new_context(viewport={"width": width, "height": 900})
            for page_name in PAGES:
                page = context.new_page()
                page.goto(f"{url}/{page_name}.html", wait_until="networkidle")
                for table in page.evaluate(TABLE_CHECKS):
                    where = (width, page_name, table["caption"][:60])
                    assert table["right"], where
                    if width == 1400:
                        assert not table["scrolls"], where
                    else:
                        assert table["two_shown"] and table["pinned"], where
                    if "our criterion per weight decay" in table["caption"]:
                        assert table["heads"] == ["λ", "our criterion"], where
                page.close()
            context.close()
        browser.close()


def test_pages_are_small_have_a_map_and_link_their_terms(served):
    """No page's HTML over 300 KB (figures are files, not embedded); every figure, phase, layers page lists at least
    four sections under "On this page"; the figure pages' terms link the Setting page's glossary, with a tooltip;
    the site's figure PNGs are 300 dpi; every page has one h1."""
    from PIL import Image
    from playwright.sync_api import sync_playwright

    root, url = served
    site = root / "_build" / "html"
    for page_name in PAGES:
        assert (site / f"{page_name}.html").stat().st_size < 300_000, page_name
    for png in (site / "book" / "figures").glob("*.png"):
        assert json.loads(Image.open(png).text["Description"])["dpi"] == 300, png.name
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        for page_name in PAGES:
            page.goto(f"{url}/{page_name}.html", wait_until="networkidle")
            assert page.locator("h1").count() == 1, page_name
            if any(k in page_name for k in ("figure", "phase", "layers")):
                assert page.locator("nav.page-toc a").count() >= 4, page_name
        page.goto(f"{url}/book/executed/figure1_cifar10.html", wait_until="networkidle")
        terms = page.evaluate("() => Array.from(document.querySelectorAll('article a[href*=\\'setting.html#term-\\']'))"
                              ".map(a => [a.getAttribute('href'), a.title])")
        assert {h.split("#")[1] for h, _ in terms} >= {"term-NC1", "term-NC4", "term-t"}, terms
        assert all(len(title) > 20 and "\\" not in title for _, title in terms), terms  # no raw TeX in a tooltip
        page.goto(f"{url}/book/executed/setting.html#term-NC1", wait_until="networkidle")
        assert page.locator("#term-NC1").count() == 1
        browser.close()


def pdf_links(data: bytes) -> list[tuple[int, str, list[float]]]:
    """(page number, address, rectangle) of every link annotation in a PDF as Chromium prints it."""
    objects = {int(m.group(1)): m.group(2) for m in re.finditer(rb"(?m)^(\d+) 0 obj\s*(.*?)endobj", data, re.S)}
    [pages] = [body for body in objects.values() if re.search(rb"/Type\s*/Pages\b", body)]
    kids = [int(k) for k in re.findall(rb"(\d+) 0 R", re.search(rb"/Kids\s*\[(.*?)\]", pages, re.S).group(1))]
    out = []
    for number, page in enumerate(kids, start=1):
        annots = re.search(rb"/Annots\s*\[(.*?)\]", objects[page], re.S)
        for ref in re.findall(rb"(\d+) 0 R", annots.group(1) if annots else b""):
            body = objects[int(ref)]
            uri, rect = re.search(rb"/URI\s*\((.*?)\)", body, re.S), re.search(rb"/Rect\s*\[(.*?)\]", body, re.S)
            if uri and rect:
                out.append((number, uri.group(1).decode("latin-1"), [float(v) for v in rect.group(1).split()]))
    return out


def test_a_printed_figure_page_keeps_its_figure_with_its_caption_and_names_its_address(served):
    """The full-scale Figure 1 page printed to A4 PDF in Chromium: the figure (its image's link) and its caption's
    download links on the same page, no code toggle printed, and the last page links the page's own address."""
    from playwright.sync_api import sync_playwright

    _, url = served
    name = "book/executed/figure1_cifar10_paper"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        page.goto(f"{url}/{name}.html", wait_until="networkidle")
        page.evaluate("() => window.MathJax && MathJax.startup ? MathJax.startup.promise : 0")
        page.emulate_media(media="print")
        assert page.evaluate("() => Array.from(document.querySelectorAll('details, .cell_input'))"
                             ".filter(e => e.getBoundingClientRect().height > 0).length") == 0  # no code toggles
        pdf = page.pdf(format="A4")
        browser.close()
    links = pdf_links(pdf)
    figures = [(n, uri) for n, uri, rect in links if uri.endswith("figures/figure1_cifar10_paper.png")
               and rect[3] - rect[1] > 200]  # the image's link: as tall as the image
    captions = [n for n, uri, _ in links if uri.endswith("figures/figure1_cifar10_paper.pdf")]  # "Download: PDF"
    assert len(figures) == 1 and captions == [figures[0][0]], links
    last = max(n for n, _, _ in links)
    assert any(n == last and uri.endswith(f"{name}.html") for n, uri, _ in links), links  # "Printed from ..."


def test_an_executed_notebook_shows_its_figure_and_prose_outside_the_book(built):
    """What the page's download button gives: the figure as an image output, the prose as Markdown output."""
    import nbformat

    root, _ = built
    nb = nbformat.read(root / "book" / "executed" / "figure1_cifar10.ipynb", as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert any("image/png" in o.get("data", {}) and "text/html" in o.get("data", {}) for o in outputs)
    markdown = [o["data"]["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {})]
    assert any("Our criterion" in m for m in markdown) and any("What to take from it" in m for m in markdown)
    tables = [o["data"]["text/html"] for o in outputs if "nc-table" in o.get("data", {}).get("text/html", "")]
    assert any("our criterion per weight decay" in t for t in tables)  # its numbers, in a table
    prose = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert "{glue" not in prose
    assert [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])] == []
    first = nb.cells[0]
    assert first.cell_type == "markdown" and "remove-cell" in first.metadata["tags"]
    assert "pip install -e '.[book]'" in first.source
    [parameters] = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    namespace = {}
    exec(parameters.source, namespace)  # the visible parameters cell holds the page's values
    assert (namespace["profile"], namespace["figure"], namespace["figure_number"]) == ("smoke", "cifar10", 1)


def test_theory_notebooks_show_their_numbers_as_text_not_glue_roles(built):
    """In Jupyter a {glue:text} role shows as itself; the pages compute their sentences instead."""
    import nbformat

    root, _ = built
    for name in ("setting", "lemma1", "lemma2"):
        nb = nbformat.read(root / "book" / "executed" / f"{name}.ipynb", as_version=4)
        prose = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
        assert "{glue" not in prose and "{doc}" not in prose, name
    page = " ".join(re.sub(r"<[^>]+>", " ", (root / "_build" / "html" / "book" / "executed" / "lemma1.html")
                           .read_text()).split())
    assert f": {1 / 20:.3f} for" in page  # Lemma 1's floor 1/(2C) at C = 10, computed
    assert "The largest difference is" in page and "Compare the weight-decay runs in" in page


def test_a_downloaded_notebook_runs_with_the_parameters_set_in_its_visible_cell(built, monkeypatch):
    """The notebook as the site's download button gives it, one parameter changed in its parameters cell, run as
    Jupyter runs it (no papermill): the change takes effect (an injected cell used to undo it)."""
    import nbformat
    from nbclient import NotebookClient

    root, _ = built
    monkeypatch.setenv("NCPAPER_RESULTS", str(root / "results"))  # the runs the build trained
    downloaded = root / "_build" / "html" / "_sources" / "book" / "executed" / "figure2_mnist.ipynb"
    page = (root / "_build" / "html" / "book" / "executed" / "figure2_mnist.html").read_text()
    assert "_sources/book/executed/figure2_mnist.ipynb" in page  # what the download button links
    nb = nbformat.read(downloaded, as_version=4)
    [parameters] = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert "weight_decays = None" in parameters.source
    parameters.source = parameters.source.replace("weight_decays = None", "weight_decays = [0, 0.05]")
    figures = root / "book" / "figures"
    before = set(figures.iterdir())
    try:
        NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(root)}}).execute()
        written = sorted(p.name for p in set(figures.iterdir()) - before)
    finally:  # the rerun's figures are not the book's: leave the built book as it was for the other tests
        for path in set(figures.iterdir()) - before:
            path.unlink()
    values, blocks = {}, []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            name = output.get("metadata", {}).get("scrapbook", {}).get("name")
            if name:
                data = {"/".join(k.split("/")[-2:]): v for k, v in output.get("data", {}).items()}
                values[name] = data.get("text/plain")
            blocks.append(str(output.get("data", {}).get("text/html", "")))
    assert number(values["wd1"]) == 0.05 and "wd2" not in values  # the book's page has 0.01 and 0.05
    # its figure is named after the changed parameters (never the page's file) and its cite line says so, first
    assert written and all(n.startswith("figure2_mnist_smoke-rerun-weight_decays-0-0.05-") for n in written), written
    cite = ('<p class="nc-cite"><strong>How to cite this figure:</strong> <strong>Not the book\'s figure:</strong> '
            'made by a rerun with ')  # the figure block's cite line, which the page shows under the figure
    assert any(cite in b and "weight_decays=[0, 0.05]" in b for b in blocks), \
        [b[:200] for b in blocks if "nc-cite" in b]


def test_every_figure_pdf_has_truetype_fonts_only(built):
    from ncpaper.plots import pdf_fonts

    root, _ = built
    pdfs = sorted((root / "book" / "figures").glob("*.pdf"))
    assert len(pdfs) >= 8
    for pdf in pdfs:
        fonts = pdf_fonts(pdf)
        assert fonts and not [f for f in fonts if f[1] == "Type3"], (pdf.name, fonts)
        assert b"/Type3" not in pdf.read_bytes(), pdf.name
    narrow = sorted((root / "book" / "figures").glob("*-narrow.png"))
    assert {p.name[:-len("-narrow.png")] for p in narrow} == {p.stem for p in pdfs}  # a phone copy of each


def test_the_footer_links_the_source_archive_of_the_commit(built):
    import hashlib
    import io
    import tarfile

    from ncpaper.citing import source_archive

    root, _ = built
    site = root / "_build" / "html"
    archive = source_archive()
    data = (site / archive.name).read_bytes()
    assert data == archive.data and hashlib.sha256(data).hexdigest() == archive.sha256
    assert (site / f"{archive.name}.sha256").read_text() == f"{archive.sha256}  {archive.name}\n"
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        names = tar.getnames()
    prefix = archive.name[:-len(".tar.gz")]
    assert f"{prefix}/ncpaper/plots.py" in names and f"{prefix}/CITATION.cff" in names
    inside = [n.partition("/")[2] for n in names if n.startswith(f"{prefix}/")]  # paths under the archive's folder
    assert len(inside) == len(names) - 1  # every file is in the folder
    assert not [n for n in inside if n.split("/")[0] in ("results", "data", ".venv", "_build")]
    for page in PAGES:
        html = (site / f"{page}.html").read_text()
        [href] = re.findall(r'<a class="nc-source" href="([^"]+)"', html)
        assert (site / page).parent.joinpath(href).resolve() == (site / archive.name), page
        assert archive.sha256 in html and "code MIT, text and figures CC-BY-4.0" in html


NAVIGATION = """() => {
  const visible = e => !!e && e.getBoundingClientRect().width > 0 && getComputedStyle(e).visibility !== 'hidden';
  const links = Array.from(document.querySelectorAll('.bd-docs-nav a')).filter(visible);
  const modal = document.getElementById('pst-primary-sidebar-modal');
  const toc = document.getElementById('pst-secondary-sidebar-modal');
  return {toc_links: links.length, modal: !!modal && modal.open, page_toc: !!toc && toc.open,
          sidebar: visible(document.getElementById('pst-primary-sidebar'))};
}"""


def test_navigation_opens_on_a_phone_and_the_sidebar_collapses_on_a_desktop(served):
    """At 390 px, tapping the visible "☰" shows the table of contents and tapping "On this page" the page's
    contents (with sphinx-book-theme 1.3.0 and pydata-sphinx-theme 0.17.1 neither did anything); at 1400 px the
    collapse button hides the sidebar."""
    from playwright.sync_api import sync_playwright

    _, url = served
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        phone = browser.new_context(viewport={"width": 390, "height": 800}, has_touch=True, is_mobile=True)
        page = phone.new_page()
        page.goto(f"{url}/book/executed/setting.html", wait_until="networkidle")
        assert page.evaluate(NAVIGATION)["toc_links"] == 0  # hidden until asked for
        [toggle] = [b for b in page.locator(".primary-toggle").all() if b.is_visible()]
        toggle.tap()
        page.wait_for_function("() => document.getElementById('pst-primary-sidebar-modal').open")
        state = page.evaluate(NAVIGATION)
        assert state["modal"] and state["toc_links"] >= len(PAGES) - 1, state
        page.keyboard.press("Escape")
        [contents] = [b for b in page.locator(".secondary-toggle").all() if b.is_visible()]
        contents.tap()
        page.wait_for_function("() => document.getElementById('pst-secondary-sidebar-modal').open")
        assert "Neural Collapse" in page.locator("#pst-secondary-sidebar-modal").inner_text()
        phone.close()
        desktop = browser.new_page(viewport={"width": 1400, "height": 900})
        desktop.goto(f"{url}/book/executed/setting.html", wait_until="networkidle")
        assert desktop.evaluate(NAVIGATION)["sidebar"]
        [collapse] = [b for b in desktop.locator(".primary-toggle").all() if b.is_visible()]
        collapse.click()
        desktop.wait_for_function("() => getComputedStyle(document.getElementById('pst-primary-sidebar'))"
                                  ".visibility === 'hidden'")
        assert not desktop.evaluate(NAVIGATION)["modal"]
        browser.close()


def test_only_names_the_pages_it_knows(tmp_path):
    with pytest.raises(ValueError, match="no page named nope; choose from setting, "):
        build_book(tmp_path, profile="smoke", only=["nope"])
    with pytest.raises(ValueError, match=r"book/executed/ lacks .*build the whole book once first"):
        build_book(tmp_path, profile="smoke", only=["setting"])


def test_a_failing_notebook_is_named_with_its_cell(tmp_path):
    root = copy_book_sources(tmp_path)
    source = root / "notebooks" / "setting.md"
    source.write_text(source.read_text().replace("import inspect", "import inspect\nraise RuntimeError('boom')"))
    with pytest.raises(NotebookFailed, match=r"notebooks/setting.md .*failed in cell \d+: RuntimeError: boom"):
        execute_notebooks(root, "smoke", only=["setting"])


def test_pages_side_by_side_name_the_failing_one_and_finish_the_others(tmp_path):
    root = copy_book_sources(tmp_path)
    source = root / "notebooks" / "setting.md"
    source.write_text(source.read_text().replace("import inspect", "import inspect\nraise RuntimeError('boom')"))
    with pytest.raises(NotebookFailed, match=r"notebooks/setting.md .*failed in cell \d+: RuntimeError: boom"):
        execute_notebooks(root, "smoke", only=["setting", "lemma1"], workers=2)
    assert (root / "book" / "executed" / "lemma1.ipynb").exists()
    assert glued_values(root / "book" / "executed" / "lemma1.ipynb")


def test_a_rebuild_executes_only_the_pages_whose_inputs_changed(built, tmp_path_factory, monkeypatch):
    root, _ = built
    monkeypatch.setenv("NCPAPER_RESULTS", str(root / "results"))  # the build's environment (part of the inputs)
    monkeypatch.setenv("NCPAPER_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    before = page_inputs(root, "setting", {}, "smoke")
    notebook, meta = root / "notebooks" / "setting.md", next((root / "results").glob("*/meta.json"))
    for changed in (notebook, meta):
        text = changed.read_text()
        changed.write_text(text + "\n")
        assert page_inputs(root, "setting", {}, "smoke") != before, changed
        changed.write_text(text)
    assert page_inputs(root, "setting", {}, "smoke") == before
    assert page_inputs(root, "setting", {"x": 1}, "smoke") != before != page_inputs(root, "setting", {}, "default")
    # nothing changed since the build: nothing is executed; a page's figure file gone: that page runs again
    assert set(execute_notebooks(root, "smoke", workers=2).values()) == {None}
    (root / "book" / "figures" / "figure2_mnist_smoke.png").unlink()
    seconds = execute_notebooks(root, "smoke", workers=2)
    assert seconds.pop("figure2_mnist") > 0 and set(seconds.values()) == {None}
    assert (root / "book" / "figures" / "figure2_mnist_smoke.png").is_file()


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
