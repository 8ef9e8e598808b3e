"""Execute the chapters and render the book with Sphinx and MyST-NB (``make book``).

    python -m emd_lib book [--only 01,03] [--rerun] [--fresh] [--out _build] [--chapters DIR] [--api MODULES|none]

The stack is jupyter-book's: Sphinx, MyST-NB, sphinx-book-theme, sphinxcontrib-bibtex,
sphinx-togglebutton, with ``docs/conf.py`` as the configuration. The build goes in three steps:

1. **Stage** ``_build/src``: every ``chapters/NN_*.py`` (also ``NNb_*.py``, found by name and
   kept in name order) is read with jupytext and written as a notebook whose cells are tagged
   for the page (:func:`auto_tags`); the pages of ``docs/`` (``intro.md`` becomes the home
   page with the contents), ``docs/references.bib``, a library-reference page.
2. **Execute** the chapters that need it in a fresh kernel, from the ``chapters/`` folder (full
   mode unless ``EMD_FAST=1``), and store them in a jupyter-cache, one per mode
   (``_build/jupyter_cache/fast`` or ``full``) with their run time. A chapter needs to run when
   the cache holds no run of its code, or only one made with another ``emd_lib``/``data``
   (a fingerprint of their files, the build's own code aside); ``--rerun`` runs every chapter. ``--only 01,03`` runs those
   chapters (always) and no other: the others come from the cache, or, with no cached run,
   are shown without outputs. A failing chapter stops the build with a non-zero exit status
   and names the chapter and the cell.
3. **Render** with ``sphinx-build -c docs _build/src _build/html`` (MyST-NB reads the outputs
   from the cache and never executes), then the API pages with pdoc under ``_build/html/api``,
   and ``_build/html/timings.json``.

Everything works offline: MathJax 2 is copied from the ``jupyter-server-mathjax`` package into
``_static/mathjax``, the theme ships its fonts, and no page loads from the network.
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import html
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .. import ROOT, is_fast

BOOK_TITLE = "EM Distillation, a runnable textbook"
DOCS = ROOT / "docs"
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # colours in tracebacks
#: a chapter file: two digits, an optional letter (an appendix such as 04b), an underscore
CHAPTER = re.compile(r"^(\d\d[a-z]?)_.+\.py$")
KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}


# ---------------------------------------------------------------------------------------
# chapters


def chapter_numbers(only: str) -> list[str]:
    """``--only``'s comma-separated chapter keys: ``"1,03,4b"`` gives ``["01", "03", "04b"]``."""
    out = []
    for part in only.split(","):
        part = part.strip().lower()
        if not part:
            continue
        m = re.fullmatch(r"(\d{1,2})([a-z]?)", part)
        if not m:
            raise ValueError(f"{part!r} is not a chapter number")
        out.append(f"{int(m.group(1)):02d}{m.group(2)}")
    return out


def chapter_key(path: Path) -> str:
    return CHAPTER.match(path.name).group(1)


def chapters(only: list[str] | None = None, src: Path | None = None) -> list[Path]:
    """The chapter files of ``src`` (default ``chapters/``) in name order: ``NN_slug.py`` and
    appendices ``NNx_slug.py``; ``only`` keeps those numbered there (``"1"`` and ``"01"`` alike)."""
    paths = sorted(p for p in (src or ROOT / "chapters").glob("[0-9][0-9]*_*.py") if CHAPTER.match(p.name))
    if only:
        wanted = set(chapter_numbers(",".join(str(n) for n in only)))
        paths = [p for p in paths if chapter_key(p) in wanted]
    return paths


def title_of(nb) -> str:
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return "untitled"


# ---------------------------------------------------------------------------------------
# tags: what each code cell shows on the page (every cell is still executed)

PAGE_TAGS = {"hide-input", "hide-output", "hide-cell", "remove-input", "remove-output", "remove-cell"}
#: a first line ``# hide`` (hide-input) or ``# remove-input`` etc. tags the cell
DIRECTIVE = re.compile(r"^#\s*(hide|%s)\s*$" % "|".join(sorted(PAGE_TAGS)))
SOLUTION = "### BEGIN SOLUTION"


def _statements(source: str):
    try:
        return ast.parse(source).body
    except SyntaxError:  # IPython magics, a cell meant to fail
        return None


def _call_name(node) -> str:
    if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
        f = node.value.func
        return f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
    return ""


def _is_guard(node) -> bool:
    """Bookkeeping the page need not show: ``assert ...``, a call such as
    ``torch.testing.assert_close(...)``, ``glue(...)`` (its number shows in the prose), or a
    ``for`` loop of nothing else."""
    if isinstance(node, ast.For):
        return not node.orelse and all(_is_guard(s) for s in node.body)
    return isinstance(node, ast.Assert) or _call_name(node).startswith("assert") or _call_name(node) == "glue"


def auto_tags(cell) -> list[str]:
    """The page tags the builder adds to a code cell (the cell still runs):

    * a first line ``# hide`` gives ``hide-input`` (the code behind a toggle), and ``# hide-input``,
      ``# hide-output``, ``# hide-cell``, ``# remove-input``, ``# remove-output``, ``# remove-cell``
      give that tag;
    * an exercise's solution (``### BEGIN SOLUTION``) gives ``hide-input``;
    * a cell of asserts and glue calls only (``assert``, ``torch.testing.assert_close(...)``,
      ``glue(...)``, loops of them) gives ``hide-input``: the checks that guard the numbers and
      the calls that hand them to the prose run, one click away;
    * a cell of imports only gives ``hide-input``.

    Tags set in the chapter (``# %% tags=["hide-output"]``) are kept, and a cell that already has
    a page tag gets no other."""
    if cell.cell_type != "code":
        return []
    tags = list(cell.metadata.get("tags", []))
    if PAGE_TAGS & set(tags):
        return tags
    source = cell.source.strip()
    first = source.splitlines()[0].strip() if source else ""
    m = DIRECTIVE.match(first)
    if m:
        tag = "hide-input" if m.group(1) == "hide" else m.group(1)
    elif SOLUTION in source:
        tag = "hide-input"
    else:
        body = _statements(source)
        if not body:
            return tags
        if all(_is_guard(s) for s in body):
            tag = "hide-input"
        elif all(isinstance(s, (ast.Import, ast.ImportFrom)) for s in body):
            tag = "hide-input"
        else:
            return tags
    return tags + [tag]


def split_guards(cell) -> list:
    """A code cell that ends with asserts and glue calls becomes two cells: the computation,
    then that tail (with the comment lines just above it), which :func:`auto_tags` hides. The cell is kept
    whole when its last other statement is an expression whose value the page would then show,
    when it has tags, or when it is nothing but asserts."""
    import nbformat

    if cell.cell_type != "code" or cell.metadata.get("tags") or SOLUTION in cell.source:
        return [cell]
    body = _statements(cell.source)
    if not body:
        return [cell]
    k = len(body)
    while k > 0 and _is_guard(body[k - 1]):
        k -= 1
    if k == len(body) or k == 0:
        return [cell]
    prev = body[k - 1]
    if isinstance(prev, ast.Expr) and _call_name(prev) not in ("print", "show", "display"):
        return [cell]
    lines = cell.source.splitlines()
    start = body[k].lineno - 1
    while start > prev.end_lineno and lines[start - 1].lstrip().startswith("#"):
        start -= 1
    head, tail = "\n".join(lines[:start]).rstrip(), "\n".join(lines[start:]).strip("\n")
    return [nbformat.v4.new_code_cell(head, metadata=dict(cell.metadata)),
            nbformat.v4.new_code_cell(tail, metadata=dict(cell.metadata))]


def ends_with_a_check(source: str) -> bool:
    """The cell ends with a call such as ``check("1.1", f)``, ``assert_close(...)`` or
    ``glue(...)``, whose returned value (``True``, ``None``) is not worth a line on the page."""
    body = _statements(source)
    return bool(body) and (_call_name(body[-1]) in ("check", "glue") or _call_name(body[-1]).startswith(("assert", "check_")))


def stage_notebook(path: Path):
    """The chapter as a notebook for the book: jupytext's cells, tagged by :func:`auto_tags`."""
    import jupytext

    nb = jupytext.read(path)
    count = len(nb.cells)
    cells, origin = [], []
    for i, cell in enumerate(nb.cells):
        cell.metadata = {k: v for k, v in cell.metadata.items() if k == "tags"}
        for part in split_guards(cell):
            tags = auto_tags(part)
            if tags:
                part.metadata["tags"] = tags
            part.id = f"{path.stem[:40]}-{len(cells)}"
            cells.append(part)
            origin.append(i)
    nb.cells = cells
    # the chapter's own cell numbers, for a failure report (not part of the cache's key)
    nb.metadata = {"kernelspec": dict(KERNELSPEC), "language_info": {"name": "python"},
                   "emd": {"source_cells": origin, "source_count": count}}
    return nb


# ---------------------------------------------------------------------------------------
# execution


def kernel_env() -> dict:
    """The kernel's environment: figures inline (whatever MPLBACKEND the caller has), this
    clone's emd_lib first on the path, and the flag :func:`emd_lib.book.glue` looks for."""
    path = os.pathsep.join([str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    return dict(os.environ, MPLBACKEND="module://matplotlib_inline.backend_inline",
                EMD_BOOK_BUILD="1", PYTHONPATH=path)


def execute(nb, cwd: Path, timeout: int = 3600):
    """Execute ``nb`` (changed in place) in a fresh kernel from ``cwd``; returns the seconds."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                            extra_arguments=["--IPKernelApp.log_level=ERROR"],
                            resources={"metadata": {"path": str(cwd)}})
    t0 = time.perf_counter()
    try:
        client.execute(env=kernel_env())
    except CellExecutionError as e:  # which cell failed, for :func:`failure_report`
        for i, cell in enumerate(nb.cells):
            errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
            if errors and "raises-exception" not in cell.metadata.get("tags", []):
                origin = nb.metadata.get("emd", {})
                e.cell_index = origin["source_cells"][i] if origin else i
                e.cell_count = origin["source_count"] if origin else len(nb.cells)
                e.cell_source = cell.source
                e.cell_traceback = "\n".join(errors[0].get("traceback", []))
                break
        raise
    seconds = time.perf_counter() - t0
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.metadata.pop("execution", None)
            if ends_with_a_check(cell.source):  # no stray "True" under a check
                cell.outputs = [o for o in cell.outputs if o.get("output_type") != "execute_result"]
    return seconds


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


def fingerprint() -> str:
    """A hash of the library's and the shipped data cards' files: a cached chapter run made
    with other files is run again."""
    h = hashlib.sha256()
    files = sorted((ROOT / "emd_lib").rglob("*.py")) + sorted((ROOT / "emd_lib").rglob("*.yaml"))
    files += sorted((ROOT / "data").rglob("*.json")) if (ROOT / "data").exists() else []
    for f in files:
        # the build's own code changes the staged notebooks (and so the cache's key) by itself
        if "__pycache__" in f.parts or (f.name in ("build.py", "sphinx_ext.py") and f.parent.name == "book"):
            continue
        h.update(str(f.relative_to(ROOT)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def cached_record(cache, nb):
    try:
        return cache.match_cache_notebook(nb)
    except KeyError:
        return None


# ---------------------------------------------------------------------------------------
# the pages around the chapters


def write_if_changed(path: Path, text: str) -> bool:
    """Write ``text`` unless ``path`` holds it already (Sphinx rereads changed files only)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.read_text() == text:
        return False
    path.write_text(text)
    return True


def mathjax_source() -> Path:
    """MathJax 2 as shipped by the ``jupyter-server-mathjax`` package (a requirement)."""
    try:
        import jupyter_server_mathjax
    except ImportError as e:  # pragma: no cover - a requirement of the project
        raise SystemExit("the book needs the jupyter-server-mathjax package: "
                         "pip install jupyter-server-mathjax") from e
    return Path(jupyter_server_mathjax.__file__).parent / "static"


def write_mathjax(static: Path) -> Path:
    """``static/mathjax``: the local MathJax (English only: it loads other languages on request)."""
    dest = static / "mathjax"
    if not (dest / "MathJax.js").exists():
        def ignore(folder, names):
            return [n for n in names if Path(folder).name == "localization" and n != "en"]

        shutil.copytree(mathjax_source(), dest, ignore=ignore, dirs_exist_ok=True)
    return static


#: the pages of docs/ in the order of the contents; other docs/*.md follow in name order
DOC_ORDER = ["notation", "writing", "bibliography", "execution", "api", "teaching", "commands",
             "results", "reliability"]
INTRO = "intro"


def runtime_rows(cache, staged: dict[str, object], titles: dict[str, str]) -> list[dict]:
    rows = []
    for stem, nb in staged.items():
        rec = cached_record(cache, nb)
        rows.append({"file": stem, "title": titles[stem],
                     "seconds": round(rec.data.get("execution_seconds", 0.0), 1) if rec else None,
                     "fast": rec.data.get("fast") if rec else None,
                     "when": rec.created.strftime("%Y-%m-%d %H:%M") if rec else None})
    return rows


def fmt_seconds(s) -> str:
    return "not executed" if s is None else f"{s:.1f} s"


def index_page(rows: list[dict], docs: list[str]) -> str:
    intro = (DOCS / f"{INTRO}.md").read_text() if (DOCS / f"{INTRO}.md").exists() else f"# {BOOK_TITLE}\n"
    table = ["| chapter | run time |", "|---|---:|"]
    for r in rows:
        table.append(f"| [{r['title']}]({r['file']}.ipynb) | {fmt_seconds(r['seconds'])} |")
    done = [r["seconds"] for r in rows if r["seconds"] is not None]
    mode = "fast" if is_fast() else "full"
    table.append(f"| all chapters ({mode} mode) | {sum(done):.0f} s |")
    toc_chapters = "\n".join(r["file"] for r in rows)
    toc_docs = "\n".join(docs)
    return (f"{intro.rstrip()}\n\n## Contents\n\nEvery chapter page was produced by running it; "
            f"the run time is that of its last execution in {mode} mode "
            "([execution statistics](execution.md)).\n\n" + "\n".join(table) +
            f"\n\n```{{toctree}}\n:caption: Chapters\n:maxdepth: 2\n:hidden:\n\n{toc_chapters}\n```\n\n"
            f"```{{toctree}}\n:caption: Reference\n:maxdepth: 1\n:hidden:\n\n{toc_docs}\n```\n")


def teaching_text(rows: list[dict]) -> str:
    text = (DOCS / "teaching.md").read_text()
    lines = ["| chapter | mode | run time |", "|---|---|---:|"]
    for r in rows:
        mode = "" if r["fast"] is None else ("fast" if r["fast"] else "full")
        lines.append(f"| [{r['title']}]({r['file']}.ipynb) | {mode} | {fmt_seconds(r['seconds'])} |")
    return (text.rstrip() + "\n\n## Run times of this build\n\nMeasured when the chapters were executed "
            "for this book (one process, the building machine's CPU):\n\n" + "\n".join(lines) + "\n")


EXAMPLE = ROOT / "examples" / "distil_mixture.py"


def api_modules_page(html_dir: Path) -> str:
    """The library-reference page (Markdown for Sphinx): a row for each page pdoc wrote under
    ``html/api`` (:func:`pdoc_pages`), with the first paragraph of the module's docstring."""
    import importlib

    api = html_dir / "api"
    rows = []
    for page in sorted(api.rglob("*.html")):
        if page.name == "index.html":
            continue
        name = ".".join(page.relative_to(api).with_suffix("").parts)
        try:
            doc = (importlib.import_module(name).__doc__ or "").strip()
        except Exception:  # a module that does not import here is listed without a summary
            doc = ""
        summary = doc.split("\n\n")[0].replace("\n", " ")
        href = "api/" + page.relative_to(api).as_posix()
        rows.append(f'<tr><td><a class="reference external" href="{href}"><code>{name}</code></a></td>'
                    f"<td>{html.escape(summary)}</td></tr>")
    text = ("# Library reference\n\n`emd_lib` is the library the chapters import; scripts use the same "
            "code. Each module's page below is generated from its docstrings (pdoc).\n\n"
            '<table class="emd-table"><thead><tr><th>module</th><th>what it holds</th></tr></thead><tbody>\n'
            + "\n".join(rows) + "\n</tbody></table>\n")
    if EXAMPLE.exists():
        text += ("\n## Use emd_lib in your own script\n\n"
                 f"`examples/{EXAMPLE.name}` (the tests run it):\n\n```python\n{EXAMPLE.read_text()}\n```\n")
    return text


def pdoc_pages(html_dir: Path, modules: list[str]) -> None:
    """pdoc's pages of ``modules`` under ``html/api``, each with a link back to the book."""
    import pdoc
    import pdoc.render

    api = html_dir / "api"
    shutil.rmtree(api, ignore_errors=True)
    pdoc.render.configure(docformat="restructuredtext", footer_text=BOOK_TITLE, show_source=True)
    pdoc.pdoc(*modules, output_directory=api)
    for page in sorted(api.rglob("*.html")):
        up = "../" * (len(page.relative_to(html_dir).parts) - 1)
        text = page.read_text()
        page.write_text(text.replace('<nav class="pdoc">', f'<nav class="pdoc"><p><a href="{up}api.html">'
                                     f'\u2190 {BOOK_TITLE}</a></p>', 1))


def sphinx(src: Path, html_dir: Path, doctrees: Path, env: dict, fresh: bool = False,
           warnings: Path | None = None) -> int:
    """``sphinx-build -c docs``, quiet but for warnings (also written to ``warnings``)."""
    cmd = [sys.executable, "-m", "sphinx", "-b", "html", "-c", str(DOCS), "-d", str(doctrees),
           "-q", str(src), str(html_dir)]
    if warnings is not None:
        cmd[3:3] = ["-w", str(warnings)]
    if fresh:
        cmd.insert(3, "-E")
    return subprocess.call(cmd, env=env)


# ---------------------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m emd_lib book", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help="comma-separated chapter numbers, e.g. 01,03 or 1,3 or 4b: execute "
                                   "those chapters only (the others from the cache, or without outputs); "
                                   "a number with no chapter is refused")
    ap.add_argument("--rerun", action="store_true", help="execute every chapter, cached or not")
    ap.add_argument("--fresh", action="store_true", help="render every page again (sphinx-build -E)")
    ap.add_argument("--out", default=str(ROOT / "_build"), help="build folder (default _build)")
    ap.add_argument("--chapters", default=str(ROOT / "chapters"), help="folder of the chapters")
    ap.add_argument("--api", default="emd_lib",
                    help="comma-separated modules for the library reference, or 'none'")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds allowed per cell")
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    src_dir, html_dir, doctrees = out / "src", out / "html", out / "doctrees"
    chapter_dir = Path(args.chapters).resolve()
    mode = "fast" if is_fast() else "full"
    everything = chapters(src=chapter_dir)
    try:
        only = chapter_numbers(args.only) if args.only else None
    except ValueError as e:
        print(f"--only: {e}", file=sys.stderr)
        return 2
    paths = chapters(only, src=chapter_dir)
    if only:
        unknown = sorted(set(only) - {chapter_key(p) for p in paths})
        if unknown:
            print(f"--only: no chapter {', '.join(unknown)} in {chapter_dir} (chapters: "
                  f"{', '.join(chapter_key(p) for p in everything) or 'none'})", file=sys.stderr)
            return 2
    if not paths:
        print(f"no chapters found in {chapter_dir}", file=sys.stderr)
        return 1

    from jupyter_cache import get_cache
    from jupyter_cache.base import CacheBundleIn
    from nbclient.exceptions import CellExecutionError
    import nbformat

    t_start = time.perf_counter()
    cache_dir = out / "jupyter_cache" / mode
    cache_dir.mkdir(parents=True, exist_ok=True)
    cache = get_cache(str(cache_dir))
    fp = fingerprint()

    # 1. stage the chapters
    staged = {p.stem: stage_notebook(p) for p in everything}
    titles = {stem: title_of(nb) for stem, nb in staged.items()}
    selected = {p.stem for p in paths}

    # 2. execute
    ran = []
    for p in everything:
        nb = staged[p.stem]
        rec = cached_record(cache, nb)
        if only:
            run = p.stem in selected
        else:
            run = args.rerun or rec is None or rec.data.get("emd_lib") != fp
        if not run:
            if rec is None:  # --only: another chapter with no cached run is shown without outputs
                nb.metadata["mystnb"] = {"execution_mode": "off"}
                print(f"{p.name}: not executed (not in --only, no cached run)", flush=True)
            else:
                stale = "" if rec.data.get("emd_lib") == fp else ", made with an earlier emd_lib"
                print(f"{p.name}: cached run of {rec.created:%Y-%m-%d %H:%M}{stale}", flush=True)
            continue
        print(f"executing {p.name} ({mode} mode) ...", flush=True)
        executed = nbformat.from_dict(json.loads(json.dumps(nb)))
        try:
            seconds = execute(executed, p.parent, timeout=args.timeout)
        except CellExecutionError as e:
            print("\n" + failure_report(p, e), file=sys.stderr)
            return 1
        except Exception as e:  # a timeout, a dead kernel: the chapter did not finish
            print(f"\nchapter {p.name} failed: {type(e).__name__}: {e}", file=sys.stderr)
            return 1
        record = cache.cache_notebook_bundle(
            CacheBundleIn(executed, str(p), data={"execution_seconds": seconds, "emd_lib": fp,
                                                 "fast": is_fast()}),
            check_validity=False, overwrite=True)
        for old in cache.list_cache_records():  # earlier runs of this chapter's earlier code
            if old.uri == str(p) and old.pk != record.pk:
                cache.remove_cache(old.pk)
        ran.append(p.stem)
        print(f"  {titles[p.stem]}: {seconds:.1f} s", flush=True)

    # 3. the sources of the book
    rows = runtime_rows(cache, staged, titles)
    for stem, nb in staged.items():
        target = src_dir / f"{stem}.ipynb"
        if write_if_changed(target, nbformat.writes(nb)) is False and stem in ran:
            os.utime(target)  # new outputs in the cache: Sphinx reads the chapter again
    for old in src_dir.glob("*.ipynb"):
        if old.stem not in staged:
            old.unlink()
    docs = []
    for md in sorted(DOCS.glob("*.md"), key=lambda f: (DOC_ORDER.index(f.stem) if f.stem in DOC_ORDER
                                                        else len(DOC_ORDER), f.stem)):
        if md.stem == INTRO:
            continue
        text = teaching_text(rows) if md.stem == "teaching" else md.read_text()
        write_if_changed(src_dir / md.name, text)
        docs.append(md.stem)
    modules = [] if args.api.strip().lower() == "none" else [m for m in args.api.split(",") if m]
    if modules:
        print("library reference (pdoc) ...", flush=True)
        pdoc_pages(html_dir, modules)
        write_if_changed(src_dir / "api.md", api_modules_page(html_dir))
        docs = sorted(set(docs) | {"api"}, key=lambda d: (DOC_ORDER.index(d) if d in DOC_ORDER
                                                           else len(DOC_ORDER), d))
    elif (src_dir / "api.md").exists():
        (src_dir / "api.md").unlink()
    for old in src_dir.glob("*.md"):  # a page deleted from docs/ leaves the book
        if old.stem not in docs and old.stem != "index":
            old.unlink()
    if (DOCS / "references.bib").exists():
        write_if_changed(src_dir / "references.bib", (DOCS / "references.bib").read_text())
    write_if_changed(src_dir / "index.md", index_page(rows, docs))

    # 4. render
    print(f"rendering with Sphinx into {html_dir} ...", flush=True)
    static = write_mathjax(out / "static")
    env = dict(os.environ, EMD_BOOK_CACHE=str(cache_dir), EMD_BOOK_STATIC=str(static),
               EMD_BOOK_OUT=str(out), EMD_FAST="1" if is_fast() else "0",
               PYTHONPATH=kernel_env()["PYTHONPATH"])
    warnings = out / "sphinx-warnings.txt"
    rc = sphinx(src_dir, html_dir, doctrees, env, fresh=args.fresh, warnings=warnings)
    if rc:
        print(f"sphinx-build failed (exit status {rc})", file=sys.stderr)
        return 1
    (html_dir / "timings.json").write_text(json.dumps({"fast": is_fast(), "chapters": rows}, indent=1))
    said = warnings.read_text().strip().splitlines() if warnings.exists() else []
    print(f"book written to {html_dir / 'index.html'} in {time.perf_counter() - t_start:.0f} s "
          f"({len(ran)} chapter(s) executed, {len(said)} line(s) of Sphinx warnings"
          f"{f' in {warnings}' if said else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
