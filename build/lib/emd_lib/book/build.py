"""Execute every chapter and render the book to ``_build/html`` (``make book``).

    python -m emd_lib book [--only 01,03] [--out _build] [--chapters DIR] [--api MODULES|none]

Each ``chapters/NN_*.py`` (Jupytext py:percent) is executed in a fresh kernel from the
``chapters/`` folder (full mode unless ``EMD_FAST=1`` is set), then written as HTML with its
run time. ``index.html`` holds the table of contents (chapters and their sections, with run
times), ``teaching.html`` the guide for teachers (``docs/teaching.md``), ``api.html`` the
library reference (pdoc, from ``emd_lib``'s docstrings, under ``api/``) and ``timings.json``
the run times. A failing chapter stops the build with a non-zero exit status and names the
chapter and the cell.

Everything works offline: figures are embedded in the pages, equations are typeset by a
copy of MathJax (from the ``jupyter-server-mathjax`` package) under ``_static/``, and no
page loads a script or a style sheet from the network.
"""
from __future__ import annotations

import argparse
import html
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

from .. import ROOT, is_fast

BOOK_TITLE = "EM Distillation, a runnable textbook"
MATHJAX_CONFIG = "TeX-AMS-MML_HTMLorMML-full,Safe"
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # colours in tracebacks

MATHJAX_HEAD = r"""<script type="text/x-mathjax-config">
MathJax.Hub.Config({
  tex2jax: {inlineMath: [["$", "$"], ["\\(", "\\)"]], displayMath: [["$$", "$$"], ["\\[", "\\]"]],
            processEscapes: true, processEnvironments: true},
  TeX: {equationNumbers: {autoNumber: "AMS", useLabelIds: true}},
  "HTML-CSS": {availableFonts: [], imageFont: null, preferredFont: null, webFont: "STIX-Web",
               linebreaks: {automatic: true}},
  displayAlign: "center", messageStyle: "none", showMathMenu: false
});
</script>
<script src="{url}"></script>
"""


def mathjax_head(static: str = "_static") -> str:
    """The MathJax 2 configuration and loader, from the copy under ``static``."""
    return MATHJAX_HEAD.replace("{url}", f"{static}/mathjax/MathJax.js?config={MATHJAX_CONFIG}")


# The book's nbconvert template: JupyterLab's, less everything it loads from the network
# (require.js, widget manager, mermaid), with MathJax from _static/ and a navigation bar.
TEMPLATE = r"""
{%- extends 'index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{% block jupyter_widgets %}{% endblock jupyter_widgets %}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block html_head_js_mathjax -%}
{{ resources.book_mathjax }}
{%- endblock html_head_js_mathjax -%}
{% block extra_css %}<link rel="stylesheet" href="{{ resources.book_static }}/book.css">{% endblock extra_css %}
{%- block body_header -%}
{{ super() }}
{{ resources.book_nav }}
{%- endblock body_header -%}
{% block body_footer %}
{{ resources.book_nav_bottom }}
{{ super() }}
{% endblock body_footer %}
"""

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
main, body.book-page { max-width: 64em; margin: 0 auto; padding: 0 1.5em; }
body .jp-InputArea, body .jp-InputArea-editor { overflow-x: auto; }  /* long code lines scroll */
body.book-page { line-height: 1.5; color: #222; }
nav.book-nav { display: flex; flex-wrap: wrap; gap: 1.2em; align-items: baseline;
  margin: 1em 0; padding: .5em 0; border-bottom: 1px solid #ddd; font-size: 95%; }
nav.book-nav.bottom { border-top: 1px solid #ddd; border-bottom: 0; margin-top: 2em; }
nav.book-nav .run-time { margin-left: auto; color: #666; }
table.toc { border-collapse: collapse; width: 100%; }
table.toc th { text-align: left; }
table.toc td, table.toc th { padding: .35em .8em; border-bottom: 1px solid #eee; vertical-align: top; }
table.toc .t { text-align: right; white-space: nowrap; color: #444; }
table.toc ul { margin: .2em 0 0 0; padding-left: 1.2em; font-size: 90%; }
pre.example { background: #f6f8fa; padding: 1em; overflow-x: auto; border-radius: 4px; }
"""


# ---------------------------------------------------------------------------------------
# chapters


def chapter_numbers(only: str) -> list[str]:
    """``--only``'s comma-separated chapter numbers as two digits: ``"1,03"`` gives ``["01", "03"]``."""
    out = []
    for part in only.split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit():
            raise ValueError(f"{part!r} is not a chapter number")
        out.append(f"{int(part):02d}")
    return out


def chapters(only: list[str] | None = None, src: Path | None = None) -> list[Path]:
    """The chapter files ``NN_slug.py`` of ``src`` (default ``chapters/``), in order; ``only``
    keeps the chapters numbered there (``"1"`` and ``"01"`` alike)."""
    paths = sorted((src or ROOT / "chapters").glob("[0-9][0-9]_*.py"))
    if only:
        wanted = {f"{int(n):02d}" if str(n).strip().isdigit() else str(n) for n in only}
        paths = [p for p in paths if p.name[:2] in wanted]
    return paths


def title_of(nb) -> str:
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return "untitled"


def execute(path: Path, timeout: int = 3600):
    """Execute one chapter from its own folder; returns ``(notebook, seconds)``."""
    import jupytext
    from nbclient import NotebookClient

    from nbclient.exceptions import CellExecutionError

    nb = jupytext.read(path)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    # figures inline, whatever MPLBACKEND the caller has (``make test`` sets Agg)
    env = dict(os.environ, MPLBACKEND="module://matplotlib_inline.backend_inline")
    t0 = time.perf_counter()
    try:
        client.execute(env=env)
    except CellExecutionError as e:  # which cell failed, for :func:`failure_report`
        for i, cell in enumerate(nb.cells):
            errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
            if errors:
                e.cell_index, e.cell_count, e.cell_source = i, len(nb.cells), cell.source
                e.cell_traceback = "\n".join(errors[0].get("traceback", []))
                break
        raise
    return nb, time.perf_counter() - t0


def failure_report(path: Path, e: Exception, lines: int = 8, tail: int = 3000) -> str:
    """What to print when a chapter fails: the chapter, the failing cell's number and the first
    ``lines`` lines of its source, the error, then the last ``tail`` characters of the traceback."""
    where = ""
    if hasattr(e, "cell_index"):
        where = f" in cell {e.cell_index + 1} of {e.cell_count} (counted from 1, markdown cells included)"
    out = [f"chapter {path.name} failed{where}:"]
    source = getattr(e, "cell_source", None)
    if source is not None:
        src = source.splitlines()
        out += ["  " + ln for ln in src[:lines]]
        if len(src) > lines:
            out.append(f"  ... ({len(src) - lines} more lines)")
    if getattr(e, "ename", None):
        value = str(e.evalue)
        out.append(f"{e.ename}: {value if len(value) <= 500 else value[:500] + ' ...'}")
    tb = ANSI.sub("", getattr(e, "cell_traceback", None) or str(e)).rstrip()
    out.append(f"traceback (its last {tail} characters):" if len(tb) > tail else "traceback:")
    out.append(tb[-tail:])
    return "\n".join(out)


# ---------------------------------------------------------------------------------------
# static files and pages


def mathjax_source() -> Path:
    """MathJax 2 as shipped by the ``jupyter-server-mathjax`` package (a requirement)."""
    try:
        import jupyter_server_mathjax
    except ImportError as e:  # pragma: no cover - a requirement of the project
        raise SystemExit("the book needs the jupyter-server-mathjax package: "
                         "pip install jupyter-server-mathjax") from e
    return Path(jupyter_server_mathjax.__file__).parent / "static"


def write_static(html_dir: Path) -> None:
    """``_static/book.css`` and ``_static/mathjax`` (copied once) next to the pages."""
    static = html_dir / "_static"
    static.mkdir(parents=True, exist_ok=True)
    (static / "book.css").write_text(CSS)
    dest = static / "mathjax"
    if not (dest / "MathJax.js").exists():
        src = mathjax_source()

        def ignore(folder, names):  # English only: MathJax loads other languages on request
            return [n for n in names if Path(folder).name == "localization" and n != "en"]

        shutil.copytree(src, dest, ignore=ignore, dirs_exist_ok=True)


def exporter():
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    return HTMLExporter(template_name="lab", template_file="emd_book.html.j2",
                        extra_loaders=[DictLoader({"emd_book.html.j2": TEMPLATE})])


def nav(links: list[tuple[str, str]], note: str = "", bottom: bool = False) -> str:
    items = "".join(f'<a href="{href}">{html.escape(text)}</a>' for text, href in links if href)
    extra = f'<span class="run-time">{note}</span>' if note else ""
    return f'<nav class="book-nav{" bottom" if bottom else ""}">{items}{extra}</nav>'


def render_notebook(nb, out: Path, title: str, links: list[tuple[str, str]], note: str = "") -> str:
    """Write ``nb`` as a page of the book; returns the HTML."""
    body, _ = exporter().from_notebook_node(nb, resources={
        "metadata": {"name": title}, "book_static": "_static", "book_mathjax": mathjax_head(),
        "book_nav": nav(links, note), "book_nav_bottom": nav(links, bottom=True)})
    out.write_text(body)
    return body


def render(nb, out: Path, seconds: float, title: str, links=None) -> str:
    """Write an executed chapter with its run time."""
    links = links or [("Contents", "index.html")]
    note = f"executed in {seconds:.1f} s ({'fast' if is_fast() else 'full'} mode)"
    return render_notebook(nb, out, title, links, note)


def sections(page: str) -> list[tuple[str, str]]:
    """``(anchor, text)`` of the ``<h2>`` headings of a rendered page."""
    out = []
    for anchor, inner in re.findall(r'<h2 id="([^"]+)"[^>]*>(.*?)</h2>', page, re.S):
        text = html.unescape(re.sub(r"<[^>]+>", "", inner)).replace("\u00b6", "").strip()
        if text:
            out.append((anchor, text))
    return out


def markdown_page(text: str, out: Path, title: str, links) -> str:
    """A page of the book from Markdown (same look, same MathJax as the chapters)."""
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(text)])
    return render_notebook(nb, out, title, links)


def timings_table(rows: list[dict]) -> str:
    lines = ["| chapter | mode | run time |", "|---|---|---:|"]
    for r in rows:
        lines.append(f"| [{r['title']}]({r['file']}.html) | {'fast' if r['fast'] else 'full'} | "
                     f"{r['seconds']:.0f} s |")
    return "\n".join(lines)


def teaching_page(html_dir: Path, rows: list[dict], links) -> None:
    src = ROOT / "docs" / "teaching.md"
    if not src.exists():
        return
    text = src.read_text()
    if rows:
        text += ("\n\n## Run times of this build\n\nMeasured when this book was built "
                 "(one process, this machine's CPU):\n\n" + timings_table(rows) + "\n")
    markdown_page(text, html_dir / "teaching.html", "Teaching with this book", links)


#: the pages of docs/ the book renders beside the chapters (teaching.md has its own, with run times)
DOC_PAGES = [("commands", "Commands", "every command-line tool and its options, from the 2D toy to several GPUs"),
             ("results", "Results", "what was measured, with the commands and files behind each number"),
             ("reliability", "Reliability", "the bad inputs and faults that are tested, and what each one shows")]

EXAMPLE = ROOT / "examples" / "distil_mixture.py"


def api_pages(html_dir: Path, modules: list[str], links) -> bool:
    """The library reference: pdoc pages under ``api/`` and ``api.html`` with an example."""
    import importlib

    import pdoc
    import pdoc.render

    api = html_dir / "api"
    shutil.rmtree(api, ignore_errors=True)
    pdoc.render.configure(docformat="restructuredtext", footer_text=BOOK_TITLE, show_source=True)
    pdoc.pdoc(*modules, output_directory=api)
    rows = []
    for page in sorted(api.rglob("*.html")):
        up = "../" * (len(page.relative_to(html_dir).parts) - 1)
        text = page.read_text()  # a way back to the book from every pdoc page
        page.write_text(text.replace('<nav class="pdoc">', f'<nav class="pdoc"><p><a href="{up}api.html">'
                                     f'\u2190 {BOOK_TITLE}</a></p>', 1))
        if page.name == "index.html":
            continue
        name = ".".join(page.relative_to(api).with_suffix("").parts)
        try:
            doc = (importlib.import_module(name).__doc__ or "").strip()
        except Exception:  # a module pdoc could not import is listed without a summary
            doc = ""
        summary = doc.split("\n\n")[0].replace("\n", " ").replace("|", "\\|")
        rows.append(f"| [`{name}`](api/{page.relative_to(api).as_posix()}) | {summary} |")
    example = EXAMPLE.read_text() if EXAMPLE.exists() else ""
    text = ("# Library reference\n\n"
            "`emd_lib` is the library the chapters import; scripts use the same code. "
            "Each module's page below is generated from its docstrings.\n\n"
            "| module | what it holds |\n|---|---|\n" + "\n".join(rows) + "\n")
    if example:
        text += ("\n## Use emd_lib in your own script\n\n"
                 f"`examples/{EXAMPLE.name}` (the tests run it):\n\n```python\n{example}\n```\n")
    markdown_page(text, html_dir / "api.html", "Library reference", links)
    return True


def index_page(html_dir: Path, rows: list[dict], extras: list[tuple[str, str, str]]) -> None:
    toc = []
    for r in rows:
        subs = "".join(f'<li><a href="{r["file"]}.html#{a}">{html.escape(t)}</a></li>'
                       for a, t in r.get("sections", []))
        toc.append(f'<tr><td><a href="{r["file"]}.html">{html.escape(r["title"])}</a>'
                   f'{f"<ul>{subs}</ul>" if subs else ""}</td>'
                   f'<td class="t">{r["seconds"]:.1f} s {"(fast)" if r["fast"] else ""}</td></tr>')
    more = "".join(f'<li><a href="{href}">{html.escape(text)}</a>: {html.escape(what)}</li>'
                   for text, href, what in extras)
    total = sum(r["seconds"] for r in rows)
    (html_dir / "index.html").write_text(
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1.0'>"
        f"<title>{BOOK_TITLE}</title><link rel='stylesheet' href='_static/book.css'>{mathjax_head()}</head>"
        f"<body class='book-page'><h1>{BOOK_TITLE}</h1>"
        "<p>EM Distillation (Xie et al., NeurIPS 2024) built in stages on problems whose "
        "teachers are exact, with the compact PyTorch library <code>emd_lib</code>. Every page "
        "was produced by running its chapter; the run time is that of this build.</p>"
        "<h2>Contents</h2><table class='toc'><tr><th>chapter</th><th class='t'>run time</th></tr>"
        f"{''.join(toc)}<tr><td>all chapters</td><td class='t'>{total:.0f} s</td></tr></table>"
        f"{f'<h2>More</h2><ul>{more}</ul>' if more else ''}</body></html>")


# ---------------------------------------------------------------------------------------


def _previous_rows(html_dir: Path, keep: set[str]) -> list[dict]:
    """Rows of an earlier build for chapters not rebuilt now (``--only``)."""
    try:
        old = json.loads((html_dir / "timings.json").read_text())["chapters"]
    except (OSError, ValueError, KeyError):
        return []
    return [r for r in old if r.get("file") in keep and (html_dir / f"{r['file']}.html").exists()
            and "fast" in r]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m emd_lib book", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help="comma-separated chapter numbers, e.g. 01,03 or 1,3 (the index keeps "
                                   "the other chapters of an earlier build); a number with no chapter "
                                   "is refused")
    ap.add_argument("--out", default=str(ROOT / "_build"), help="build folder (default _build)")
    ap.add_argument("--chapters", default=str(ROOT / "chapters"), help="folder of the chapters")
    ap.add_argument("--api", default="emd_lib",
                    help="comma-separated modules for the library reference, or 'none'")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds allowed per cell")
    args = ap.parse_args(argv)
    out = Path(args.out)
    html_dir = out / "html"
    html_dir.mkdir(parents=True, exist_ok=True)
    (out / "executed").mkdir(parents=True, exist_ok=True)
    src = Path(args.chapters)
    everything = chapters(src=src)
    try:
        only = chapter_numbers(args.only) if args.only else None
    except ValueError as e:
        print(f"--only: {e}", file=sys.stderr)
        return 2
    paths = chapters(only, src=src)
    if only:
        unknown = sorted(set(only) - {p.name[:2] for p in paths})
        if unknown:
            print(f"--only: no chapter {', '.join(unknown)} in {src} (chapters: "
                  f"{', '.join(p.name[:2] for p in everything) or 'none'})", file=sys.stderr)
            return 2
    if not paths:
        print(f"no chapters found in {src}", file=sys.stderr)
        return 1
    import nbformat
    from nbclient.exceptions import CellExecutionError

    write_static(html_dir)
    stems = [p.stem for p in everything]
    done = {p.stem for p in paths}
    rows = {r["file"]: r for r in _previous_rows(html_dir, set(stems) - done)}
    order = [s for s in stems if s in done or s in rows]
    for p in paths:
        print(f"executing {p.name} ...", flush=True)
        try:
            nb, sec = execute(p, timeout=args.timeout)
        except CellExecutionError as e:
            print("\n" + failure_report(p, e), file=sys.stderr)
            return 1
        except Exception as e:  # a timeout, a dead kernel: the chapter did not finish
            print(f"\nchapter {p.name} failed: {type(e).__name__}: {e}", file=sys.stderr)
            return 1
        nbformat.write(nb, out / "executed" / (p.stem + ".ipynb"))
        row = rows[p.stem] = {"file": p.stem, "title": title_of(nb), "seconds": round(sec, 1),
                              "fast": is_fast()}
        i = order.index(p.stem)
        links = [("Contents", "index.html"),
                 ("\u2190 previous", f"{order[i - 1]}.html" if i else ""),
                 ("next \u2192", f"{order[i + 1]}.html" if i + 1 < len(order) else "")]
        page = render(nb, html_dir / f"{p.stem}.html", sec, row["title"], links)
        row["sections"] = [list(s) for s in sections(page)]
        print(f"  {row['title']}: {sec:.1f} s", flush=True)
    rows = [rows[s] for s in order]

    links = [("Contents", "index.html")]
    extras = []
    if (ROOT / "docs" / "teaching.md").exists():
        teaching_page(html_dir, rows, links)
        extras.append(("Teaching with this book", "teaching.html",
                       "a one-week or a one-term course, the student edition, grading, hardware"))
    for name, title, what in DOC_PAGES:
        if (ROOT / "docs" / f"{name}.md").exists():
            text = re.sub(r"\]\((\w+)\.md\)", r"](\1.html)", (ROOT / "docs" / f"{name}.md").read_text())
            markdown_page(text, html_dir / f"{name}.html", title, links)
            extras.append((title, f"{name}.html", what))
    if args.api.strip().lower() != "none":
        print("library reference (pdoc) ...", flush=True)
        api_pages(html_dir, [m for m in args.api.split(",") if m], links)
        extras.append(("Library reference", "api.html",
                       "emd_lib's modules, from their docstrings, and a script that uses them"))
    index_page(html_dir, rows, extras)
    (html_dir / "timings.json").write_text(
        json.dumps({"fast": is_fast(), "chapters": rows}, indent=1))
    print(f"book written to {html_dir / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
