"""Sphinx tweaks for the book.

- Emit each inline script once: sphinx-thebe (loaded by Jupyter Book 1.0.4) registers its inline
  configuration script (``const THEBE_JS_URL = ...``) twice, a JavaScript error on every page
  ("Identifier 'THEBE_JS_URL' has already been declared").
- A stylesheet: padded table cells, wide tables scrolling in their box, figures within the page.
- The footer of every page names the ncpaper version, the commit and the build date
  (``SOURCE_DATE_EPOCH`` when set, so that a rebuild can reproduce it), the licences, and links the source
  archive of that commit (``ncpaper.citing.source_archive``: ``git archive``, no data, no results), which the
  build writes to the site's root with a ``.sha256`` file beside it.
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


def footer_html(stamp: dict, archive, href: str | None) -> str:
    """The footer: version, commit, build date, licences and (``href``: the archive's address from the page) the
    source archive with its sha256."""
    from ncpaper.citing import LICENCE_SHORT

    if archive is None or href is None:
        source = "source: not built from a git checkout, so no archive"
    else:
        dirty = " (the commit, without the uncommitted changes this site was built with)" if archive.dirty else ""
        source = (f'<a class="nc-source" href="{href}" download>source of this commit</a>{dirty}: '
                  f'<code>{archive.name}</code>, sha256 <code class="nc-sha256">{archive.sha256}</code>')
    return (f'<p class="nc-footer">ncpaper {stamp["version"]} · commit <code>{stamp["commit"]}</code> · '
            f'built {stamp["date"]} · {LICENCE_SHORT} · {source}</p>')


def _archive():
    import ncpaper
    from ncpaper.citing import source_archive

    return source_archive(Path(ncpaper.__file__).resolve().parents[1])


def _builder_inited(app):
    app.env.ncpaper_stamp = build_stamp()


def _footer(app, pagename, templatename, context, doctree):
    archive = _archive() if app.builder.format == "html" else None
    href = context["pathto"](archive.name, 1) if archive is not None else None
    context["theme_extra_footer"] = footer_html(app.env.ncpaper_stamp, archive, href)


def _write_archive(app, exception):
    """The source archive (and its ``sha256sum`` line) at the site's root."""
    if exception is not None or app.builder.format != "html":
        return
    archive = _archive()
    if archive is not None:
        out = Path(app.outdir)
        (out / archive.name).write_bytes(archive.data)
        (out / f"{archive.name}.sha256").write_text(f"{archive.sha256}  {archive.name}\n")


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
    app.connect("builder-inited", _builder_inited)
    app.connect("html-page-context", _footer)
    app.connect("build-finished", _write_archive)
    app.connect("builder-inited", lambda app: app.config.html_static_path.append(str(STATIC)))
    app.add_css_file("ncpaper.css")
    app.connect("build-finished", _copy_figures)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
