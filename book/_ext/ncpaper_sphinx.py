"""Sphinx tweaks for the book.

- Emit each inline script once: sphinx-thebe (loaded by Jupyter Book 1.0.4) registers its inline
  configuration script (``const THEBE_JS_URL = ...``) twice, a JavaScript error on every page
  ("Identifier 'THEBE_JS_URL' has already been declared").
- A stylesheet: padded table cells, wide tables scrolling in their box, figures within the page.
- The footer of every page names the ncpaper version, the commit and the build date
  (``SOURCE_DATE_EPOCH`` when set, so that a rebuild can reproduce it).
- The figures the pages saved in ``book/figures/`` are copied to the same path in the site, so each has
  a fixed address next to the pages that link to it.
"""

import datetime
import os
import shutil
import subprocess
from pathlib import Path

STATIC = Path(__file__).parent / "static"


def _dedupe_scripts(app, pagename, templatename, context, doctree):
    seen, unique = set(), []
    for script in context.get("script_files", []):
        attributes = getattr(script, "attributes", {})
        key = (getattr(script, "filename", script) or "", tuple(sorted((k, str(v)) for k, v in attributes.items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"][:] = unique  # in place: themes may hold the same list


def _commit() -> str:
    """The commit of the ncpaper code that built the book ("+ changes" if the tree was dirty)."""
    try:
        import ncpaper

        here = Path(ncpaper.__file__).resolve().parent
        commit = subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], cwd=here, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, check=True).stdout.strip()
        return commit + (" + uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError, ImportError):
        return "unknown"


def build_stamp() -> dict:
    import ncpaper

    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = datetime.datetime.fromtimestamp(int(epoch), datetime.timezone.utc) if epoch else \
        datetime.datetime.now(datetime.timezone.utc)
    return {"version": ncpaper.__version__, "commit": _commit(), "date": when.date().isoformat()}


def _footer(app, config):
    stamp = build_stamp()
    footer = (f'<p class="nc-footer">ncpaper {stamp["version"]} · commit <code>{stamp["commit"]}</code> · '
              f'built {stamp["date"]} · text and figures CC-BY-4.0, code MIT</p>')
    options = dict(config.html_theme_options or {})
    options["extra_footer"] = footer
    config.html_theme_options = options


def _copy_figures(app, exception):
    if exception is not None or app.builder.format != "html":
        return
    source = Path(app.srcdir) / "book" / "figures"
    if source.is_dir():
        target = Path(app.outdir) / "book" / "figures"
        target.mkdir(parents=True, exist_ok=True)
        for path in sorted(source.glob("*")):
            if path.suffix in (".png", ".pdf"):
                shutil.copy2(path, target / path.name)


def setup(app):
    app.connect("html-page-context", _dedupe_scripts, priority=999)  # after every script is added
    app.connect("config-inited", _footer)
    app.connect("builder-inited", lambda app: app.config.html_static_path.append(str(STATIC)))
    app.add_css_file("ncpaper.css")
    app.connect("build-finished", _copy_figures)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
