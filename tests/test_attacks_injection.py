"""Issue 33, break 1: no script runs from a run's metadata. A published run whose every string field holds markup is
shown as text, in Markdown (as MyST renders it), in tables, in the figure block and in the interactive figure's JSON;
the page is opened in headless Chromium."""

import json
from pathlib import Path

import pytest

from ncpaper import results
from ncpaper.interactive import plotly_js
from ncpaper.pages import FigurePage, show, takeaway_box
from ncpaper.pages.display import inline_html, table_html
from ncpaper.published import load_published, publish, write_manifest
from ncpaper.train import RunConfig

CHROMIUM = "/usr/bin/chromium"
TINY = {"dataset": "mnist", "sizes": {"widths": [16, 16]}, "n_per_class": 4, "n_test_per_class": 2,
        "epochs": 10, "lr": 0.1, "batch_size": 16, "n_measurements": 4}
IMG = '<img src=x onerror="window.pwned=(window.pwned||0)+1">'
HOSTILE = f"{IMG} <!--<script> </script>\u2028{{raw}}`<b>x</b>` $x$ `y` \\ *z*"


def _hostile(value):
    """Every string of ``value`` (a meta.json record) replaced by HOSTILE."""
    if isinstance(value, str):
        return HOSTILE
    if isinstance(value, dict):
        return {k: _hostile(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_hostile(v) for v in value]
    return value


def _resealed(folder: Path) -> None:
    """Give the published run at ``folder`` hostile strings everywhere its key does not cover, and reseal it."""
    meta = json.loads((folder / "meta.json").read_text())
    covered = {"key", "config", "data", "schema", "metrics_version", "threads", "files", "meta_sha256"}
    meta.update({k: _hostile(v) for k, v in meta.items() if k not in covered})
    meta["created"] = "2026-01-01T00:00:00+00:00" + HOSTILE  # still sorts as a date
    for split in ("train", "test"):
        meta["data"][split].update({k: HOSTILE for k in ("source", "location")})
    (folder / "meta.json").write_text(json.dumps(results.sealed(meta)))


@pytest.fixture(scope="module")
def hostile_page(tmp_path_factory):
    """The figure page (as ``notebooks/figure.md`` shows it) of published runs with hostile metadata."""
    tmp = tmp_path_factory.mktemp("hostile")
    configs = [RunConfig.from_dict({**TINY, "weight_decay": wd}) for wd in (0.0, 1e-3)]
    runs = [results.run_or_load(c, tmp / "results") for c in configs]
    for folder in publish(runs, "smoke", tmp / "published"):
        _resealed(folder)
    write_manifest(tmp / "published" / "smoke")
    page = FigurePage("smoke", "mnist", 2, published=True, root=str(tmp),
                      runs=load_published(configs, "smoke", tmp / "published"))
    return tmp, page


def _shown(page) -> list:
    """What figure.md displays, in order, as show() hands it to Jupyter."""
    import IPython.display

    shown, original = [], IPython.display.display
    IPython.display.display = lambda item: shown.append(item)
    try:
        show(takeaway_box(page.headline()))
        show(page.figure_block(), page.interactive(), *page.results())
        show(page.origin_markdown(), page.provenance())
    finally:
        IPython.display.display = original
    return shown


def _myst_html(markdown: str) -> str:
    """Markdown as the book renders a page's Markdown output (MyST, its extensions; raw HTML and directives on)."""
    import docutils.core
    from myst_parser.parsers.docutils_ import Parser

    return docutils.core.publish_parts(markdown, parser=Parser(), writer_name="html5", settings_overrides={
        "myst_enable_extensions": ["dollarmath", "amsmath", "colon_fence"], "output_encoding": "unicode",
        "report_level": 4})["body"]


def _page_html(items) -> str:
    body = []
    for item in items:
        bundle = item._repr_mimebundle_() if hasattr(item, "_repr_mimebundle_") else {}
        body.append(bundle["text/html"] if "text/html" in bundle else _myst_html(item._repr_markdown_()))
    plotly = Path(plotly_js()).as_uri()
    return (f'<!DOCTYPE html><html><head><meta charset="utf-8"><script src="{plotly}"></script></head>'
            f'<body><article>{"".join(body)}</article><p id="end">end of page</p></body></html>')


def test_markdown_escapes_leave_no_markup():
    from ncpaper.interactive import script_json
    from ncpaper.pages.display import inert_markdown, inline_text, markdown_code, markdown_text

    assert markdown_text("a <b>\nc\u2028d `e` {raw}") == r"a \<b\> c d \`e\` \{raw\}"
    assert markdown_code("a``b") == "```a``b```"
    assert inert_markdown("x <img src=x> `<kept>` \\\\<b> {raw}`y` \\<i>") == \
        "x &lt;img src=x> `<kept>` \\\\&lt;b> \\{raw}`y` \\<i>"
    assert inert_markdown("```{raw} html\n<script>\n```") == "```\\{raw} html\n&lt;script>\n```"
    assert inert_markdown(takeaway_box("fine")) == takeaway_box("fine")  # the page's own admonition stays
    assert inline_html(inline_text("`a` *b* $c$ \\")) == "`a` *b* $c$ \\"
    assert script_json({"a": "</script><!--\u2028"}) == '{"a":"\\u003c/script\\u003e\\u003c!--\\u2028"}'


def test_table_cells_and_headers_are_text():
    import pandas as pd

    text = table_html(pd.DataFrame({IMG: [IMG], "n": [1.5]}), "caption " + IMG)
    assert "<img" not in text and text.count("&lt;img") == 3


def test_a_hostile_run_shows_its_strings_as_text_in_chromium(hostile_page):
    """Every string field of meta.json holds markup: no handler runs, the interactive figure draws, the rest of the
    page is there, and the strings show as text."""
    from playwright.sync_api import sync_playwright

    tmp, page = hostile_page
    assert Path(CHROMIUM).exists(), "install Chromium: apt-get install chromium"
    document = tmp / "page.html"
    document.write_text(_page_html(_shown(page)))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu",
                                                                     "--allow-file-access-from-files"])
        tab = browser.new_page()
        errors = []
        tab.on("pageerror", lambda e: errors.append(str(e)))
        tab.goto(document.as_uri(), wait_until="load")
        tab.wait_for_timeout(500)
        assert tab.evaluate("() => window.pwned") is None
        assert errors == []
        assert tab.locator(".nc-interactive .main-svg").count() > 0, "the interactive figure did not draw"
        assert tab.locator("#end").is_visible()  # nothing swallowed the rest of the page
        text = tab.inner_text("article")
        browser.close()
    assert text.count(IMG) >= 4, text  # the headline, the origin, the provenance table, the figure's caption
    assert "<!--<script>" in text
