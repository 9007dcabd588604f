"""Interactive versions of the figures (Plotly): a tidy run table in, an HTML fragment a page can display out.

Hovering a point shows its weight decay, seed, epoch and value; clicking a legend entry hides or shows that
weight decay's curves (every seed); a menu picks the quantity, one panel at a time, so that a phone shows it at a
readable size. Colours, markers and dash patterns are the static figures' (``ncpaper.palette``). The PNG and PDF
stay the citable versions.

The fragment carries its figure as JSON and draws it with ``Plotly.newPlot`` once ``window.Plotly`` exists: the
book's Sphinx extension (``book/_ext/ncpaper_sphinx.py``) copies plotly.min.js, from the ``plotly`` package, into
the site's ``_static/`` and loads it on the pages that hold such a fragment, so the site needs no other host.
Outside the book, Jupyter shows the same figure from the ``application/vnd.plotly.v1+json`` representation (with
the ``plotly`` package installed), and anything else reads the text fallback.

Building the figure needs neither plotly nor a browser: the figure is a plain dict in Plotly's JSON schema.
"""

from __future__ import annotations

import html
import json
import math
import re
from dataclasses import dataclass

import pandas as pd

from .palette import lambda_label, lambda_styles

__all__ = ["MIME", "PLOTLY_SYMBOLS", "InteractiveFigure", "nc_figure", "phase_figure", "plotly_js", "script_json"]

MIME = "application/vnd.plotly.v1+json"
# matplotlib markers (ncpaper.palette) as Plotly symbols
PLOTLY_SYMBOLS = {"o": "circle", "s": "square", "^": "triangle-up", "D": "diamond", "v": "triangle-down",
                  "P": "cross", "X": "x", "*": "star"}
FONT_PX = 13  # text size of the interactive figures (ticks, legend, hover), in CSS pixels
HEIGHT_PX = 460
LINE_PX = 2.0
NARROW_PX = 600  # a chart narrower than this (a phone) has no mode bar and no drag: a swipe scrolls the page


@dataclass
class InteractiveFigure:
    """A Plotly figure (``spec``: data, layout, config) with a caption; displays as an HTML fragment."""

    spec: dict
    name: str
    caption: str

    @property
    def div_id(self) -> str:
        return "nc-interactive-" + re.sub(r"[^\w-]", "-", self.name)

    def html(self) -> str:
        """The fragment: a box with the plot, its JSON, the script that draws it and a caption."""
        data = script_json(_finite(self.spec))
        return (f'<figure class="nc-interactive" id="{self.div_id}-figure">'
                f'<div class="nc-interactive-plot" id="{self.div_id}" style="min-height:{HEIGHT_PX}px"></div>'
                f'<script type="application/json" class="nc-interactive-data">{data}</script>'
                f"<script>{_DRAW % {'id': json.dumps(self.div_id), 'narrow': NARROW_PX}}</script>"
                f'<p class="nc-interactive-fallback" hidden>The interactive figure needs plotly.min.js, which the '
                f"book's site serves; the figure above is the same data.</p>"
                f"<figcaption>{html.escape(self.caption)}</figcaption></figure>")

    def _repr_mimebundle_(self, include=None, exclude=None):
        return {"text/html": self.html(), MIME: _finite(self.spec),
                "text/plain": f"Interactive figure: {self.caption}"}


# Draw once Plotly is there (the site loads plotly.min.js deferred, so at DOMContentLoaded at the latest)
_DRAW = """(function () {
  var plot = document.getElementById(%(id)s);
  var box = plot.parentElement;
  function draw() {
    if (!window.Plotly) { box.querySelector('.nc-interactive-fallback').hidden = false; return; }
    var spec = JSON.parse(box.querySelector('script.nc-interactive-data').textContent);
    // a phone or any touch screen: no mode bar (it covered the menu) and no drag (zoom or pan), so that a vertical
    // swipe over the chart scrolls the page; hover (a tap) and the legend still work
    if (plot.clientWidth < %(narrow)d || window.matchMedia('(pointer: coarse)').matches) {
      spec.config.displayModeBar = false;
      spec.layout.dragmode = false;
      box.classList.add('nc-touch');
      // Plotly's own touch handler on the plot area blocks scrolling: the browser keeps the swipe, and a tap still
      // shows a point's values through the mouse events it is followed by
      plot.addEventListener('touchstart', function (e) {
        if (e.target.closest && e.target.closest('.nsewdrag, .draglayer')) { e.stopPropagation(); }
      }, {capture: true, passive: true});
    }
    window.Plotly.newPlot(plot, spec.data, spec.layout, spec.config);
  }
  if (window.Plotly || document.readyState !== 'loading') { draw(); }
  else { document.addEventListener('DOMContentLoaded', draw); }
})();"""


# Characters that could end a <script> element or change how its text parses (<!-- or </script> in a string), or
# that older JavaScript reads as line ends: written as JSON escapes, which JSON.parse reads back as themselves
_SCRIPT_UNSAFE = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def script_json(value) -> str:
    """``value`` as JSON to embed in an HTML ``<script>`` element: every ``<``, ``>``, ``&``, U+2028 and U+2029
    escaped (they can only occur inside JSON strings)."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return text.translate(str.maketrans(_SCRIPT_UNSAFE))


def _finite(value):
    """JSON-safe copy: NaN and infinities become null (a gap in the curve)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if hasattr(value, "item"):  # NumPy scalars
        return _finite(value.item())
    return value


def _lambda_text(value: float) -> str:
    return "0 (no weight decay)" if value == 0 else f"{value:g}"


# An error rate's axis (the static figures' symlog, linear below 0.1%): Plotly has no symlog, so a rate is drawn on a
# log axis with 0 (and anything under ERROR_FLOOR) at ERROR_FLOOR, labelled "0"; the hover gives the exact value
ERROR_FLOOR = 1e-4
ERROR_TICKS = ([ERROR_FLOOR, 1e-3, 1e-2, 1e-1, 1.0], ["0", "0.1%", "1%", "10%", "100%"])


def _shown(values: list, scale) -> list:
    """The y values as drawn: an error rate's below ERROR_FLOOR at the floor."""
    if scale != "symlog":
        return values
    return [v if v is None or (isinstance(v, float) and math.isnan(v)) else max(v, ERROR_FLOOR) for v in values]


def _threshold_shape() -> dict:
    """The dashed line of "fits its training set" (``TERMINAL_TRAIN_ERROR``) on an error panel, labelled."""
    from .analysis import TERMINAL_TRAIN_ERROR

    return {"type": "line", "xref": "paper", "yref": "y", "x0": 0, "x1": 1, "y0": TERMINAL_TRAIN_ERROR,
            "y1": TERMINAL_TRAIN_ERROR, "line": {"color": "#b22222", "dash": "dash", "width": 1},
            "label": {"text": f"{TERMINAL_TRAIN_ERROR:.1%}: fits", "textposition": "end",
                      "font": {"size": FONT_PX - 2, "color": "#b22222"}}}


def _axis(label: str, scale) -> dict:
    """The y axis of one quantity (``scale``: True log, False linear, "symlog" an error rate's)."""
    axis = {"yaxis.type": "log" if scale else "linear", "yaxis.title.text": label,
            "yaxis.tickvals": None, "yaxis.ticktext": None}
    if scale == "symlog":
        axis["yaxis.tickvals"], axis["yaxis.ticktext"] = ERROR_TICKS
    return axis


def _layout(title: str, x_title: str, x_log: bool, metrics: list[tuple[str, str, object]], traces: list[dict],
            values: list[dict], shapes: list | None = None) -> dict:
    """The shared layout: a menu that switches every trace's y values (and the exact values the hover shows) to
    another quantity, with its axis; an error rate's panel shows the threshold of "fits its training set"."""
    shapes = shapes or []
    buttons = []
    for k, (_, label, scale) in enumerate(metrics):
        panel_shapes = shapes + ([_threshold_shape()] if scale == "symlog" else [])
        buttons.append({"label": label, "method": "update",
                        "args": [{"y": [_shown(v[k], scale) for v in values], "meta": [label] * len(traces),
                                  "text": [v[k] for v in values]},
                                 {**_axis(label, scale), "shapes": panel_shapes}]})
    first_label, first_scale = metrics[0][1], metrics[0][2]
    first_axis = _axis(first_label, first_scale)
    # no title inside the plot (the caption names the figure: a title does not fit a phone's width); x log axes
    # labelled at decades only (Plotly draws its in-between labels smaller than FONT_PX)
    yaxis = {"type": first_axis["yaxis.type"], "title": {"text": first_label}, "exponentformat": "e",
             "gridcolor": "#e5e5e5"}
    if first_scale == "symlog":
        yaxis["tickvals"], yaxis["ticktext"] = ERROR_TICKS
    return {
        "meta": {"title": title},
        "font": {"size": FONT_PX, "family": "DejaVu Sans, Verdana, sans-serif"},
        "height": HEIGHT_PX, "autosize": True, "margin": {"l": 60, "r": 10, "t": 40, "b": 40},
        "xaxis": {"type": "log" if x_log else "linear", "title": {"text": x_title, "standoff": 4},
                  "gridcolor": "#e5e5e5", **({"dtick": 1} if x_log else {})},
        "yaxis": yaxis,
        "legend": {"orientation": "h", "y": -0.16, "yanchor": "top", "x": 0, "font": {"size": FONT_PX}},
        "hoverlabel": {"font": {"size": FONT_PX}},
        "plot_bgcolor": "white", "hovermode": "closest",
        "shapes": shapes + ([_threshold_shape()] if first_scale == "symlog" else []),
        "updatemenus": [{"buttons": buttons, "direction": "down", "x": 0, "xanchor": "left", "y": 1.0,
                         "yanchor": "bottom", "pad": {"b": 4}, "showactive": True, "font": {"size": FONT_PX}}],
    }


_CONFIG = {"responsive": True, "displaylogo": False, "modeBarButtonsToRemove": ["select2d", "lasso2d"],
           "toImageButtonOptions": {"format": "png", "scale": 2}}

_HOVER = ("λ = %{customdata[0]}<br>seed %{customdata[1]}<br>epoch %{customdata[2]}<br>"
          "%{meta}: %{text:.4g}<extra></extra>")  # text: the exact value (y may sit at an error axis' floor)


def _nc_metrics(table: pd.DataFrame) -> list[tuple[str, str, object]]:
    """(column, label, log y) of every quantity Figure 1-2 plot: class-means and classifier sides apart."""
    from .plots import NC_PANELS, classifier_column

    # short labels: the menu is as wide as its longest one, and must fit a phone
    names = {"train_error": "Training error", "train_loss": "Training loss", "nc1": "NC1",
             "nc2_equinorm_means": "NC2 equinorm, means", "nc2_equiangular_means": "NC2 equiangular, means",
             "nc2_maxangle_means": "NC2 max-angle, means", "nc4": "NC4"}
    metrics = []
    for means, weights, _, log in NC_PANELS:
        if means:
            metrics.append((means, names[means], log if log == "symlog" else log is True))
        if weights:
            column, centred = classifier_column(table, weights)
            label = "NC3" if weights == "nc3" else names[weights.replace("weights", "means")].replace("means", "W")
            metrics.append((column, label + (", W centred" if centred and weights == "nc3" else
                                             " centred" if centred else ""), True))
    return [m for m in metrics if m[0] in table.columns]


def nc_figure(table: pd.DataFrame, title: str, name: str, rate_cuts=()) -> InteractiveFigure:
    """Figure 1 or 2 interactive: every quantity of ``figure_nc`` against epoch (log axis), one curve per run
    (weight decay and seed), training rows only; ``rate_cuts`` as dotted vertical lines. ``name``: a name unique
    in the page (the element's id)."""
    from .analysis import training_rows

    data = training_rows(table)
    data = data[data["epoch"] > 0].sort_values(["weight_decay", "seed", "epoch"])
    metrics = _nc_metrics(data)
    styles = lambda_styles(data["weight_decay"])
    traces, values = [], []
    for (wd, seed), run in data.groupby(["weight_decay", "seed"], sort=True):
        style = styles[wd]
        first_seed = seed == data.loc[data["weight_decay"] == wd, "seed"].min()
        traces.append({
            "type": "scatter", "mode": "lines+markers", "name": lambda_label(wd), "legendgroup": lambda_label(wd),
            "showlegend": bool(first_seed), "x": run["epoch"].tolist(),
            "y": _shown(run[metrics[0][0]].tolist(), metrics[0][2]), "text": run[metrics[0][0]].tolist(),
            "customdata": [[_lambda_text(wd), int(seed), int(e)] for e in run["epoch"]],
            "meta": metrics[0][1], "hovertemplate": _HOVER,
            "line": {"color": style.colour, "dash": style.plotly_dash(LINE_PX), "width": LINE_PX},
            "marker": {"symbol": PLOTLY_SYMBOLS[style.marker], "size": 7, "color": style.colour}})
        values.append([run[column].tolist() for column, _, _ in metrics])
    cuts = [{"type": "line", "xref": "x", "yref": "paper", "x0": e, "x1": e, "y0": 0, "y1": 1,
             "line": {"color": "grey", "dash": "dot", "width": 1}} for e in rate_cuts]
    layout = _layout(title, "epoch", True, metrics, traces, values, shapes=cuts)
    caption = (f"Interactive version of the figure above ({title}): pick a quantity in the menu; hover a point for "
               "its weight decay, seed, epoch and value; click a legend entry to hide or show that weight decay.")
    return InteractiveFigure({"data": traces, "layout": layout, "config": _CONFIG}, name, caption)


# (column, label, y axis: log, linear or "symlog", an error rate's) of the phase diagrams' quantities
PHASE_METRICS = [("train_error", "Training error", "symlog"), ("eps", "ε = 1 − mean f_y(x)", True),
                 ("nc1", "NC1", True),
                 ("nc2_equinorm_means", "NC2 equinorm, means", True),
                 ("nc2_equiangular_means", "NC2 equiangular, means", True), ("nc3", "NC3", True),
                 ("nc4", "NC4", False)]


def phase_figure(last: pd.DataFrame, title: str, name: str) -> InteractiveFigure:
    """A phase diagram interactive: end-of-training quantities against lambda (log axis), one curve per seed with
    each lambda's point in its colour and marker; lambda = 0 drawn apart at the left (left of the grey line), its
    hover saying lambda = 0. ``last``: one row per run (its last training epoch)."""
    from .plots import classifier_column

    positive = sorted(w for w in last["weight_decay"].unique() if w > 0)
    zero_at = positive[0] / 10 if positive else 1e-6
    metrics = []
    for column, label, log in PHASE_METRICS:
        if column == "nc3":
            column, centred = classifier_column(last, "nc3")
            label += ", W centred" if centred else ""
        if column in last.columns:
            metrics.append((column, label, log))
    styles = lambda_styles(last["weight_decay"])
    traces, values = [], []
    dashes = ["solid", "dash", "dot", "dashdot", "longdash", "longdashdot"]
    for k, seed in enumerate(sorted(last["seed"].unique())):
        runs = last[last["seed"] == seed].sort_values("weight_decay")
        group = f"seed {int(seed)}"
        line = runs[runs["weight_decay"] > 0]  # the seed's line through lambda > 0 (its legend entry)
        traces.append({"type": "scatter", "mode": "lines", "name": group, "legendgroup": group, "hoverinfo": "skip",
                       "x": line["weight_decay"].tolist(), "y": _shown(line[metrics[0][0]].tolist(), metrics[0][2]),
                       "text": line[metrics[0][0]].tolist(),
                       "line": {"color": "#777777", "width": 1.2, "dash": dashes[k % len(dashes)]}})
        values.append([line[column].tolist() for column, _, _ in metrics])
        ws = runs["weight_decay"].tolist()  # every run's point, lambda = 0 apart at the left, in its own style
        traces.append({
            "type": "scatter", "mode": "markers", "name": group, "legendgroup": group, "showlegend": False,
            "x": [zero_at if w == 0 else w for w in ws], "y": _shown(runs[metrics[0][0]].tolist(), metrics[0][2]),
            "text": runs[metrics[0][0]].tolist(),
            "customdata": [[_lambda_text(w), int(seed), int(e)] for w, e in zip(ws, runs["epoch"], strict=True)],
            "meta": metrics[0][1], "hovertemplate": _HOVER,
            "marker": {"size": 9, "color": [styles[w].colour for w in ws],
                       "symbol": [PLOTLY_SYMBOLS[styles[w].marker] for w in ws],
                       "line": {"color": "black", "width": 0.5}}})
        values.append([runs[column].tolist() for column, _, _ in metrics])
    apart = [{"type": "line", "xref": "x", "yref": "paper", "x0": zero_at * 3, "x1": zero_at * 3,
              "y0": 0, "y1": 1, "line": {"color": "grey", "width": 1}}]
    layout = _layout(title, "λ (left of the grey line: λ = 0)", True, metrics, traces, values, shapes=apart)
    decades = [10.0 ** e for e in range(math.floor(math.log10(positive[0])), 1)] if positive else []
    decades = [d for d in decades if d <= 1.5 * max(positive)] if positive else []
    layout["xaxis"].update({"tickvals": [zero_at, *decades], "ticktext": ["0", *[f"{d:g}" for d in decades]]})
    layout["xaxis"].pop("dtick", None)
    caption = (f"Interactive version of the phase diagram above ({title}): pick a quantity in the menu; hover a point "
               "for its weight decay, seed, last epoch and value; click a seed in the legend to hide or show it.")
    return InteractiveFigure({"data": traces, "layout": layout, "config": _CONFIG}, name, caption)


def plotly_js() -> str | None:
    """The path of the plotly.min.js that the installed ``plotly`` package ships (None without plotly)."""
    try:
        from importlib.resources import files

        path = files("plotly") / "package_data" / "plotly.min.js"
    except ModuleNotFoundError:
        return None
    return str(path) if path.is_file() else None
