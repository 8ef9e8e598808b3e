"""The book's own Sphinx extension (listed in ``docs/conf.py``; imported only by Sphinx).

* Equation numbers per chapter: Sphinx numbers equations across the whole book when the
  toctree is not numbered; here the equations of ``04_*.ipynb`` become (4.1), (4.2), ... and
  those of an appendix chapter ``04b_*`` (4b.1), ...; other pages keep (1), (2), ...
* Each executed chapter shows its run time under its title (from MyST-NB's execution data:
  the seconds the builder measured, stored in the jupyter-cache).
"""
from __future__ import annotations

import re
from datetime import datetime, timezone

from .. import is_fast

CHAPTER = re.compile(r"^(\d\d)([a-z]?)_")


def chapter_label(docname: str) -> str | None:
    """``"04_langevin"`` -> ``"4"``, ``"04b_appendix"`` -> ``"4b"``, other pages -> None."""
    m = CHAPTER.match(docname.rsplit("/", 1)[-1])
    return f"{int(m.group(1))}{m.group(2)}" if m else None


def number_every_equation(app, doctree):
    """Give every displayed equation without a label a label (Sphinx's ``math_number_all``,
    which MyST's ``$$ ... $$`` does not follow), so that all of them are numbered."""
    from docutils import nodes

    if not app.config.math_number_all:
        return
    env = app.env
    domain = env.get_domain("math")
    docname = env.docname
    n = 0
    for node in list(doctree.findall(nodes.math_block)):
        if node.get("label") or node.get("ids"):
            continue
        n += 1
        label = f"{docname}-{n}"
        node["label"] = label
        domain.note_equation(docname, label, location=node)
        node["number"] = domain.get_equation_number_for(label)
        node["docname"] = docname
        node["ids"] = [nodes.make_id(f"equation-{label}")]


def number_equations_per_chapter(app, env):
    for docname, figtypes in env.toc_fignumbers.items():
        numbers = figtypes.get("displaymath")
        if not numbers:
            continue
        label = chapter_label(docname)
        order = sorted(numbers, key=lambda k: numbers[k])
        figtypes["displaymath"] = {k: ((label, i + 1) if label else (i + 1,)) for i, k in enumerate(order)}
    return []


def exec_data(env, docname):
    try:
        from myst_nb.sphinx_ import NbMetadataCollector
    except ImportError:  # pragma: no cover
        return None
    try:
        return NbMetadataCollector.get_exec_data(env, docname)
    except KeyError:
        return None


def run_time_note(app, pagename, templatename, context, doctree):
    data = exec_data(app.env, pagename)
    if "body" not in context or not (data or chapter_label(pagename)):
        return
    mode = "fast" if is_fast() else "full"
    if not data or data.get("runtime") is None:
        note = ("<p class=\"emd-run-time not-run\">Not executed in this build: the page shows "
                "the chapter's code without its outputs.</p>")
    else:
        when = datetime.fromtimestamp(data["mtime"], tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        note = (f'<p class="emd-run-time">Executed in {data["runtime"]:.1f} s ({mode} mode), '
                f"{when}.</p>")
        if mode == "fast":
            note += ('<p class="emd-run-time fast">Built with <code>EMD_FAST=1</code>: the runs on this '
                     "page are shortened, so the numbers they compute differ from the full book's "
                     "(<code>make book</code>); a number that fast mode changes says so beside it. "
                     "Stored sweeps are the full runs.</p>")
    body = context["body"]
    m = re.search(r"</h1>", body)
    context["body"] = body[:m.end()] + note + body[m.end():] if m else note + body


def setup(app):
    app.connect("doctree-read", number_every_equation)
    app.connect("env-get-updated", number_equations_per_chapter, priority=900)
    app.connect("html-page-context", run_time_note)
    return {"parallel_read_safe": True, "parallel_write_safe": True, "version": "1"}
