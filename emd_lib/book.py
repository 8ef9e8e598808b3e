"""Execute every chapter and render the book to ``_build/html`` (``make book``).

    python -m emd_lib.book [--only 01,03] [--out _build]

Each ``chapters/NN_*.py`` (Jupytext py:percent) is executed in a fresh kernel from the
``chapters/`` folder (full mode unless ``EMD_FAST=1`` is set), then written as HTML with its
run time; ``index.html`` holds the table of contents. A failing chapter stops the build with
a non-zero exit status and names the chapter and the cell.
"""
from __future__ import annotations

import argparse
import html
import json
import os
import sys
import time
from pathlib import Path

from . import ROOT, is_fast


def chapters(only: list[str] | None = None) -> list[Path]:
    paths = sorted(p for p in (ROOT / "chapters").glob("[0-9][0-9]_*.py"))
    if only:
        paths = [p for p in paths if p.name[:2] in only]
    return paths


def title_of(nb) -> str:
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return "untitled"


def execute(path: Path, timeout: int = 3600):
    """Execute one chapter; returns ``(notebook, seconds)``."""
    import jupytext
    from nbclient import NotebookClient

    nb = jupytext.read(path)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    t0 = time.perf_counter()
    client.execute()
    return nb, time.perf_counter() - t0


def render(nb, out: Path, seconds: float, title: str):
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="lab")
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": title}})
    note = (f'<div style="margin:1em 2em;color:#555">Executed in {seconds:.1f} s '
            f'({"fast" if is_fast() else "full"} mode). <a href="index.html">Contents</a></div>')
    body = body.replace("<body", "<body", 1)
    i = body.find(">", body.find("<body")) + 1
    out.write_text(body[:i] + note + body[i:])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m emd_lib.book", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help="comma-separated chapter numbers, e.g. 01,03")
    ap.add_argument("--out", default=str(ROOT / "_build"))
    args = ap.parse_args(argv)
    os.environ.setdefault("MPLBACKEND", "Agg")
    out = Path(args.out)
    (out / "html").mkdir(parents=True, exist_ok=True)
    (out / "executed").mkdir(parents=True, exist_ok=True)
    paths = chapters(args.only.split(",") if args.only else None)
    if not paths:
        print("no chapters found in chapters/", file=sys.stderr)
        return 1
    import nbformat
    from nbclient.exceptions import CellExecutionError

    rows = []
    for p in paths:
        print(f"executing {p.name} ...", flush=True)
        try:
            nb, sec = execute(p)
        except CellExecutionError as e:
            print(f"\nchapter {p.name} failed:\n{str(e)[-3000:]}", file=sys.stderr)
            return 1
        title = title_of(nb)
        nbformat.write(nb, out / "executed" / (p.stem + ".ipynb"))
        render(nb, out / "html" / (p.stem + ".html"), sec, title)
        rows.append({"file": p.stem, "title": title, "seconds": round(sec, 1)})
        print(f"  {title}: {sec:.1f} s", flush=True)
    items = "\n".join(f'<tr><td><a href="{r["file"]}.html">{html.escape(r["title"])}</a></td>'
                      f'<td style="text-align:right">{r["seconds"]:.1f} s</td></tr>' for r in rows)
    (out / "html" / "index.html").write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>EM Distillation, a runnable textbook</title>"
        "<style>body{font-family:sans-serif;max-width:50em;margin:2em auto}td{padding:.3em 1em}</style></head><body>"
        "<h1>EM Distillation, a runnable textbook</h1>"
        f"<p>{'Fast' if is_fast() else 'Full'} mode; run times on this machine.</p>"
        f"<table><tr><th>chapter</th><th>run time</th></tr>{items}</table></body></html>")
    (out / "html" / "timings.json").write_text(json.dumps({"fast": is_fast(), "chapters": rows}, indent=1))
    print(f"book written to {out / 'html' / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
