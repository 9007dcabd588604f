"""Interactive figures: the Plotly spec built from a run table, and in headless Chromium on a page made here (with
the plotly.min.js of the installed plotly package, served locally): hovering a point shows its weight decay, seed,
epoch and value; clicking a legend entry hides that weight decay's curves; the menu switches the quantity."""

import functools
import http.server
import json
import re
import shutil
import threading
from pathlib import Path

import pytest
from test_palette import run_table

from ncpaper.interactive import MIME, PLOTLY_SYMBOLS, nc_figure, phase_figure, plotly_js
from ncpaper.palette import lambda_styles

CHROMIUM = "/usr/bin/chromium"


def test_one_curve_per_run_in_the_palette_with_what_a_hover_shows():
    table = run_table([0, 0.005, 0.01], seeds=(0, 1, 2))
    table.loc[table.index[3], "nc1"] = float("nan")
    figure = nc_figure(table, "Figure 2 · MNIST · profile 'test'", "figure2_mnist_test", rate_cuts=[50])
    traces = figure.spec["data"]
    assert len(traces) == 9  # (lambda, seed)
    styles = lambda_styles([0, 0.005, 0.01])
    for trace in traces:
        wd = 0.0 if trace["name"] == "no weight decay" else float(trace["name"].split("= ")[1])
        assert trace["legendgroup"] == trace["name"] and trace["line"]["color"] == styles[wd].colour
        assert trace["marker"]["symbol"] == PLOTLY_SYMBOLS[styles[wd].marker]
        assert trace["line"]["dash"] == ("solid" if wd == 0 else styles[wd].plotly_dash(2.0))
        assert [c[2] for c in trace["customdata"]] == trace["x"]  # epoch
        assert {c[0] for c in trace["customdata"]} == {"0 (no weight decay)" if wd == 0 else f"{wd:g}"}
        assert "%{customdata[0]}" in trace["hovertemplate"] and "%{customdata[1]}" in trace["hovertemplate"]
    assert [t["showlegend"] for t in traces].count(True) == 3  # one legend entry per lambda, for all its seeds
    menu = figure.spec["layout"]["updatemenus"][0]["buttons"]
    labels = [b["label"] for b in menu]
    assert labels[:3] == ["Training error", "Training loss", "NC1"] and "NC3, W centred" in labels
    assert max(map(len, labels)) <= 26  # the menu is as wide as its longest label: it fits a phone
    assert all(len(b["args"][0]["y"]) == len(traces) for b in menu)
    assert figure.spec["layout"]["shapes"][0]["x0"] == 50
    html = figure.html()
    data = json.loads(re.search(r'<script type="application/json"[^>]*>(.*?)</script>', html, re.S).group(1))
    nc1 = next(b for b in data["layout"]["updatemenus"][0]["buttons"] if b["label"] == "NC1")
    assert any(None in y for y in nc1["args"][0]["y"])  # NaN is JSON null (a gap), not invalid JSON
    bundle = figure._repr_mimebundle_()
    assert bundle[MIME]["data"][0]["name"] == "no weight decay" and "text/html" in bundle


def test_a_script_end_tag_in_a_title_cannot_end_the_data():
    figure = nc_figure(run_table([0, 0.01]), "a </script><b>", "x")
    assert "</script><b>" not in figure.html() and "\\u003c/script\\u003e\\u003cb\\u003e" in figure.html()


def test_error_panels_use_the_static_figures_log_axis_with_the_fit_threshold():
    from ncpaper.analysis import TERMINAL_TRAIN_ERROR
    from ncpaper.interactive import ERROR_FLOOR

    table = run_table([0, 0.005, 0.01])
    table.loc[table.index[-1], "train_error"] = 0.0  # an exact 0: drawn at the axis' "0", exact in the hover
    figure = nc_figure(table, "Figure 2 · test", "figure2_test", rate_cuts=[50])
    layout = figure.spec["layout"]
    assert layout["yaxis"]["type"] == "log" and layout["yaxis"]["ticktext"][0] == "0"
    [threshold] = [s for s in layout["shapes"] if s["yref"] == "y"]
    assert threshold["y0"] == TERMINAL_TRAIN_ERROR and "fits" in threshold["label"]["text"]
    last = figure.spec["data"][-1]
    assert last["y"][-1] == ERROR_FLOOR and last["text"][-1] == 0.0 and "%{text" in last["hovertemplate"]
    buttons = {b["label"]: b["args"] for b in layout["updatemenus"][0]["buttons"]}
    assert len(buttons["NC1"][1]["shapes"]) == 1 and buttons["NC1"][1]["yaxis.tickvals"] is None  # the cut only
    assert len(buttons["Training error"][1]["shapes"]) == 2
    phase = phase_figure(run_table([0, 0.001, 0.01]).query("epoch == 100"), "Phase · test", "phase_test")
    assert phase.spec["layout"]["yaxis"]["type"] == "log"  # the phase diagrams' training error too


def test_phase_figure_keeps_lambda_zero_apart_and_says_so_on_hover():
    last = run_table([0, 0.001, 0.01, 0.1]).query("epoch == 100")
    figure = phase_figure(last, "Phase diagram · test", "phase_test")
    lines = [t for t in figure.spec["data"] if t["mode"] == "lines"]
    points = [t for t in figure.spec["data"] if t["mode"] == "markers"]
    assert [t["name"] for t in lines] == ["seed 0", "seed 1"] and all(min(t["x"]) == 0.001 for t in lines)
    assert [t["legendgroup"] for t in points] == ["seed 0", "seed 1"] and not any(t["showlegend"] for t in points)
    styles = lambda_styles([0, 0.001, 0.01, 0.1])
    for trace in points:
        assert trace["customdata"][0][0] == "0 (no weight decay)" and trace["x"][0] < 0.001  # lambda = 0, apart
        assert trace["marker"]["color"] == [styles[w].colour for w in (0, 0.001, 0.01, 0.1)]
        assert [c[2] for c in trace["customdata"]] == [100] * 4  # the last epoch
    axis = figure.spec["layout"]["xaxis"]
    assert axis["ticktext"][0] == "0" and axis["tickvals"][0] == points[0]["x"][0]


@pytest.fixture(scope="module")
def served_page(tmp_path_factory):
    """A page holding Figure 2's and a phase diagram's interactive figures, with plotly.min.js beside it."""
    js = plotly_js()
    assert js, "pip install plotly (the book extra): the site's interactive figures use its plotly.min.js"
    root = tmp_path_factory.mktemp("interactive")
    shutil.copyfile(js, root / "plotly.min.js")
    figure = nc_figure(run_table([0, 0.005, 0.01]), "Figure 2 · test", "figure2_test")
    phase = phase_figure(run_table([0, 0.001, 0.01, 0.1]).query("epoch == 100"), "Phase · test", "phase_test")
    (root / "index.html").write_text('<!doctype html><html><head><meta charset="utf-8">'
                                     '<script defer src="plotly.min.js"></script></head><body style="width:760px">'
                                     f"{figure.html()}{phase.html()}</body></html>")
    # a phone's page: the figure between two screens of text, so that the page can scroll either way
    text = "<p>" + "A paragraph of the page around the figure. " * 60 + "</p>"
    (root / "phone.html").write_text('<!doctype html><html><head><meta charset="utf-8"><meta name="viewport" '
                                     'content="width=device-width, initial-scale=1"><script defer '
                                     f'src="plotly.min.js"></script></head><body>{text}{figure.html()}{text}'
                                     "</body></html>")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/index.html"
    server.shutdown()
    server.server_close()


def _hover_text(page, plot_id: str, trace: int, point: int) -> str:
    """Move the mouse onto one drawn point and return the hover label's text."""
    box = page.locator(f"#{plot_id} .scatterlayer .trace").nth(trace).locator("path.point").nth(point).bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.wait_for_selector(f"#{plot_id} .hoverlayer .hovertext", timeout=5000)
    lines = page.locator(f"#{plot_id} .hoverlayer .hovertext").first.evaluate(  # an SVG text, one tspan a line
        "e => Array.from(e.querySelectorAll('tspan.line')).map(t => t.textContent).join(' ') || e.textContent")
    return " ".join(lines.split())


def test_hover_legend_and_menu_in_chromium(served_page):
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "install Chromium: apt-get install chromium"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        page = browser.new_page(viewport={"width": 800, "height": 900})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("requestfailed", lambda r: errors.append(f"failed: {r.url}"))
        page.goto(served_page, wait_until="networkidle")
        page.wait_for_function("() => document.querySelectorAll('.main-svg').length >= 2")
        plot = "nc-interactive-figure2_test"
        # trace 2: lambda = 0.005, seed 0 (traces go by lambda, then seed); its first point is epoch 1, where the
        # curves are furthest apart
        text = _hover_text(page, plot, 2, 0)
        assert "λ = 0.005" in text and "seed 0" in text and "epoch 1 " in text and "Training error:" in text, text
        table = run_table([0, 0.005, 0.01])
        value = table.query("weight_decay == 0.005 and seed == 0 and epoch == 1")["train_error"].item()
        assert f"{value:.4g}" in text, (value, text)
        # the legend: clicking lambda = 0.005 hides both its seeds, clicking again shows them
        entry = page.locator(f"#{plot} .legend .traces").nth(1)
        assert "λ = 0.005" in entry.text_content()
        # Plotly acts on a single click only once its double-click window (300 ms) has passed: wait for the change
        visibility = f"() => document.getElementById('{plot}').data.map(t => t.visible)"
        entry.click()
        page.wait_for_function(f"() => ({visibility})().includes('legendonly')", timeout=5000)
        visible = page.evaluate(visibility)
        assert visible[2:4] == ["legendonly", "legendonly"] and "legendonly" not in visible[:2] + visible[4:]
        entry.click()
        page.wait_for_function(f"() => !({visibility})().includes('legendonly')", timeout=5000)
        assert "legendonly" not in page.evaluate(visibility)
        # the menu: NC1 instead of the training error
        page.locator(f"#{plot} .updatemenu-header-group").click()
        page.locator(f"#{plot} .updatemenu-item-text", has_text="NC1").first.click()
        page.wait_for_timeout(300)
        assert "NC1:" in _hover_text(page, plot, 2, 0)
        # the phase diagram: the lambda = 0 point says so
        text = _hover_text(page, "nc-interactive-phase_test", 1, 0)  # trace 1: seed 0's points, lambda = 0 first
        assert "λ = 0 (no weight decay)" in text and "epoch 100" in text, text
        assert errors == []
        browser.close()


def test_on_a_phone_a_swipe_over_the_chart_scrolls_the_page_and_a_legend_tap_hides_a_lambda(served_page):
    """At 390 px with touch: no mode bar over the menu; a vertical swipe that starts on the chart scrolls the page
    (Plotly's drag used to keep it); tapping a legend entry hides that weight decay."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        context = browser.new_context(viewport={"width": 390, "height": 800}, has_touch=True, is_mobile=True)
        page = context.new_page()
        page.goto(served_page.replace("index.html", "phone.html"), wait_until="networkidle")
        page.wait_for_selector(".main-svg")
        plot = "nc-interactive-figure2_test"
        assert page.locator(f"#{plot} .modebar-btn").count() == 0  # no mode bar (it covered the menu)
        page.evaluate(f"() => window.scrollTo({{top: document.getElementById('{plot}').getBoundingClientRect().top"
                      " + scrollY - 150, behavior: 'instant'})")
        box = page.evaluate(f"() => {{ const r = document.querySelector('#{plot} .nsewdrag').getBoundingClientRect();"
                            " return {x: r.x + r.width / 2, y: r.y + r.height * 0.8}; }")
        assert page.evaluate(f"() => !!document.elementFromPoint({box['x']}, {box['y']}).closest('#{plot}')")
        before = page.evaluate("scrollY")
        cdp = context.new_cdp_session(page)  # a finger moving up 250 px over the chart
        cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [box]})
        for k in range(1, 11):
            cdp.send("Input.dispatchTouchEvent", {"type": "touchMove",
                                                  "touchPoints": [{"x": box["x"], "y": box["y"] - 25 * k}]})
            page.wait_for_timeout(16)
        cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
        page.wait_for_timeout(500)
        assert page.evaluate("scrollY") - before > 150, (before, page.evaluate("scrollY"))
        entry = page.locator(f"#{plot} .legend .traces").nth(1)
        entry.scroll_into_view_if_needed()
        entry.tap()
        visibility = f"() => document.getElementById('{plot}').data.map(t => t.visible)"
        page.wait_for_function(f"() => ({visibility})().includes('legendonly')", timeout=5000)
        assert page.evaluate(visibility) == [None, None, "legendonly", "legendonly", None, None]  # lambda = 0.005
        browser.close()
