"""Sphinx tweaks for the book.

- Emit each inline script once: sphinx-thebe (loaded by Jupyter Book 1.0.4) registers its inline
  configuration script (``const THEBE_JS_URL = ...``) twice, a JavaScript error on every page
  ("Identifier 'THEBE_JS_URL' has already been declared").
- A stylesheet: padded table cells, wide tables scrolling in their box, figures within the page.
- The footer of every page names the ncpaper version, the commit and the build date
  (``SOURCE_DATE_EPOCH`` when set, so that a rebuild can reproduce it), the licences, and links the source
  archive of that commit (``ncpaper.citing.source_archive``: ``git archive``, no data, no results), which the
  build writes to the site's root with a ``.sha256`` file beside it.
- A printed page ends with its address and the commit (``print_line_html``, placed by ``templates/layout.html``,
  which also drops the theme's print-only second h1 and table of contents).
- A link to a glossary term (the Setting page's glossary, ``{term}`` roles) shows its definition when hovered.
- The figures the pages saved in ``book/figures/`` are copied to the same path in the site, so each has
  a fixed address next to the pages that link to it.
"""

import datetime
import os
import shutil
import subprocess
from pathlib import Path

STATIC = Path(__file__).parent / "static"
TEMPLATES = Path(__file__).parent / "templates"


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


def print_line_html(stamp: dict, page: str, base_url: str = "") -> str:
    """The line a printed page ends with: its address (``base_url`` + ``page``, or the page's path in a local
    build; ncpaper.js replaces it by the address the page was read at, when that is a web address), the commit and
    the build date."""
    import html

    where = (f"{base_url.rstrip('/')}/{page}" if base_url else f"{page} (local build)")
    href = page.rpartition("/")[2]  # the page itself, relative to it: a printed PDF links its address
    return (f'<p class="nc-print-line">Printed from <a class="nc-page-url" href="{html.escape(href)}">'
            f'{html.escape(where)}</a> · ncpaper '
            f'{html.escape(stamp["version"])} · commit <code>{html.escape(stamp["commit"])}</code> · built '
            f'{stamp["date"]}</p>')


def _footer(app, pagename, templatename, context, doctree):
    archive = _archive() if app.builder.format == "html" else None
    href = context["pathto"](archive.name, 1) if archive is not None else None
    context["theme_extra_footer"] = footer_html(app.env.ncpaper_stamp, archive, href)
    context["ncpaper_print_line"] = print_line_html(app.env.ncpaper_stamp, f"{pagename}.html",
                                                    getattr(app.config, "html_baseurl", "") or "")


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


def plain_definition(definition) -> str:
    """A glossary definition as a one-line tooltip: its words without the maths (a tooltip cannot typeset it)."""
    import re

    from docutils import nodes

    words = [t.astext() for t in definition.findall(nodes.Text)
             if not any(isinstance(a, nodes.math) for a in _ancestors(t))]
    text = " ".join("".join(words).split())
    text = re.sub(r"\(\s*\)|,\s*(?=[;.)])|\s+(?=[,;.])", "", text)
    return re.sub(r"\s+", " ", text).strip(" ,;")


def _ancestors(node):
    while node.parent is not None:
        node = node.parent
        yield node


def _collect_glossary(app, doctree):
    """Each glossary term's id and definition (as a tooltip) on the page that defines it."""
    from docutils import nodes
    from sphinx import addnodes

    found = {}
    for glossary in doctree.findall(addnodes.glossary):
        for item in glossary.findall(nodes.definition_list_item):
            definition = next(iter(item.findall(nodes.definition)), None)
            text = plain_definition(definition) if definition is not None else ""
            for term in item.findall(nodes.term):
                for ident in term["ids"]:
                    found[ident] = text
    if found:
        app.env.ncpaper_glossary = {**getattr(app.env, "ncpaper_glossary", {}), app.env.docname: found}


def _purge_glossary(app, env, docname):
    getattr(env, "ncpaper_glossary", {}).pop(docname, None)


def _merge_glossary(app, env, docnames, other):
    env.ncpaper_glossary = {**getattr(env, "ncpaper_glossary", {}), **getattr(other, "ncpaper_glossary", {})}


def _term_tooltips(app, doctree, docname):
    """Every link to a glossary term shows the term's definition when hovered (its ``title``)."""
    from docutils import nodes

    definitions = {k: v for terms in getattr(app.env, "ncpaper_glossary", {}).values() for k, v in terms.items()}
    for reference in doctree.findall(nodes.reference):
        target = reference.get("refuri", "") or ("#" + reference.get("refid", ""))
        fragment = target.rpartition("#")[2]
        if fragment in definitions and any("std-term" in c.get("classes", []) for c in reference.children
                                           if isinstance(c, nodes.Element)):
            reference["reftitle"] = definitions[fragment]


def _templates(app, config):
    if str(TEMPLATES) not in config.templates_path:
        config.templates_path.append(str(TEMPLATES))


def setup(app):
    app.connect("html-page-context", _dedupe_scripts, priority=999)  # after every script is added
    app.connect("builder-inited", _builder_inited)
    app.connect("html-page-context", _footer)
    app.connect("build-finished", _write_archive)
    app.connect("builder-inited", lambda app: app.config.html_static_path.append(str(STATIC)))
    app.add_css_file("ncpaper.css")
    app.add_js_file("ncpaper.js", loading_method="defer")
    app.connect("config-inited", _templates)
    app.connect("doctree-read", _collect_glossary)
    app.connect("env-purge-doc", _purge_glossary)
    app.connect("env-merge-info", _merge_glossary)
    app.connect("doctree-resolved", _term_tooltips)
    app.connect("build-finished", _copy_figures)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
