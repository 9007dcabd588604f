"""Sphinx tweaks for the book: emit each inline script once.

sphinx-thebe (loaded by Jupyter Book 1.0.4) registers its inline configuration script
(``const THEBE_JS_URL = ...``) twice, which is a JavaScript error on every page
("Identifier 'THEBE_JS_URL' has already been declared"). Dropping exact duplicates fixes it.
"""


def _dedupe_scripts(app, pagename, templatename, context, doctree):
    seen, unique = set(), []
    for script in context.get("script_files", []):
        attributes = getattr(script, "attributes", {})
        key = (getattr(script, "filename", script) or "", tuple(sorted((k, str(v)) for k, v in attributes.items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"][:] = unique  # in place: themes may hold the same list


def setup(app):
    app.connect("html-page-context", _dedupe_scripts, priority=999)  # after every script is added
    return {"parallel_read_safe": True, "parallel_write_safe": True}
