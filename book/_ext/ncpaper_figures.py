"""The pages' figures in the site: a phone-width copy of each figure, and the interactive figures' script.

- **Narrow screens.** ``ncpaper.plots.save_figure`` writes beside each figure ``<stem>-narrow.png``, its panels
  stacked in one column. Here every page's ``nc-figure`` block gets that copy as a second image (class
  ``nc-narrow``, loaded lazily); the stylesheet shows it instead of the full-width image (``nc-wide``) when the
  figure's box is narrower than ``NARROW_BELOW_PX`` (a CSS container query), where the full-width image's 8 pt
  text would be drawn smaller than 10 px. Both link to the full-size PNG.
- **Figures as files.** The notebooks hold each figure's PNG itself (so that Jupyter shows it); the site links the
  file instead (``with_linked_images``), so that no page's HTML carries an image.
- **Interactive figures** (``ncpaper.interactive``): plotly.min.js, from the installed ``plotly`` package, is
  copied once into the site's ``_static/`` and loaded (deferred) by the pages that hold an interactive figure, and
  by no other; nothing is fetched from another host.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from sphinx.util import logging

LOGGER = logging.getLogger(__name__)
PLOTLY_JS = "plotly.min.js"
# the figure box's width below which the narrow copy is shown: the full-width figure (7.2 in at 150 dpi, 1080 px)
# draws its 8 pt (16.7 px) text at 10 px when shown 648 px wide (kept in step with ncpaper.css's container query)
NARROW_BELOW_PX = 660
FIGURE = re.compile(r'<figure class="nc-figure"[^>]*>.*?</figure>', re.S)
IMAGE = re.compile(r'(<a href="((?:\.\./)*figures/[\w.-]+)\.png"[^>]*>)(<img )([^>]*>)(</a>)')


def with_narrow_copies(body: str, exists) -> str:
    """``body`` with each figure's narrow copy added after its image, where ``exists(href)`` says that the copy
    (``<stem>-narrow.png``, relative to the page) was made."""
    def figure(match: re.Match) -> str:
        block = match.group(0)
        found = IMAGE.search(block)
        if found is None or "nc-narrow" in block:
            return block
        link, stem, img, rest, close = found.groups()
        narrow = f"{stem}-narrow.png"
        if not exists(narrow):
            return block
        alt = re.search(r'alt="([^"]*)"', rest)
        images = (f'{img}class="nc-wide" {rest}<img class="nc-narrow" src="{narrow}" loading="lazy" '
                  f'alt="{alt.group(1) if alt else ""}">')
        return block[:found.start()] + link + images + close + block[found.end():]

    return FIGURE.sub(figure, body)


EMBEDDED = re.compile(r'(<a href="((?:\.\./)*figures/[\w.-]+\.png)"[^>]*><img )src="data:image/png;base64,[^"]*"')


def with_linked_images(body: str, exists) -> str:
    """``body`` with each figure's embedded PNG (``ncpaper.pages.FigureFiles.html`` puts the image itself in the
    notebook, for Jupyter) replaced by a link to its file, which the site serves (``exists(href)``: the file is
    there), so that a page stays small."""
    def linked(match: re.Match) -> str:
        start, href = match.group(1), match.group(2)
        return f'{start}src="{href}"' if exists(href) else match.group(0)

    return EMBEDDED.sub(linked, body)


def _page_context(app, pagename, templatename, context, doctree):
    body = context.get("body") or ""
    if 'class="nc-figure"' in body:
        page_dir = (Path(app.srcdir) / pagename).parent

        def exists(href: str) -> bool:
            return (page_dir / href).resolve().is_file()

        context["body"] = with_narrow_copies(with_linked_images(body, exists), exists)
    if 'class="nc-interactive"' in body:
        if app.env.ncpaper_plotly is None:
            LOGGER.warning(f"ncpaper: {pagename} has an interactive figure but plotly is not installed "
                           "(pip install plotly): it shows its text fallback")
        else:
            app.add_js_file(PLOTLY_JS, loading_method="defer")  # in this handler: for this page only


def _builder_inited(app):
    from ncpaper.interactive import plotly_js

    app.env.ncpaper_plotly = plotly_js() if app.builder.format == "html" else None


def _copy_plotly(app, exception):
    if exception is not None or app.builder.format != "html" or not getattr(app.env, "ncpaper_plotly", None):
        return
    static = Path(app.outdir) / "_static"
    static.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(app.env.ncpaper_plotly, static / PLOTLY_JS)


def setup(app):
    app.connect("builder-inited", _builder_inited)
    app.connect("html-page-context", _page_context)
    app.connect("build-finished", _copy_plotly)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
