"""Small Sphinx fixes for the GLARE book (loaded through ``sphinx.local_extensions`` in ``_config.yml``).

``dedupe_scripts``: with Sphinx 7.4, sphinx-thebe 0.3.1 registers its inline configuration script
(``const THEBE_JS_URL = ...``) both in the application registry and on the HTML builder, so every page carries it
twice and the browser reports ``SyntaxError: Identifier 'THEBE_JS_URL' has already been declared``
(``tools/check_pages.py`` finds it). Keeping the first copy of each identical script removes the error.
"""

from __future__ import annotations


def dedupe_scripts(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, unique = set(), []
    for script in scripts:
        # The registry's copy has filename None, the builder's '' (both: an inline script with a body).
        filename = str(getattr(script, "filename", script) or "")
        key = (filename, repr(sorted(getattr(script, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    scripts[:] = unique


def setup(app):
    app.connect("html-page-context", dedupe_scripts)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
