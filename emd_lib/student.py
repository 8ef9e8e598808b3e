"""The student edition: every solution replaced by a stub; grading a student's chapter.

    python -m emd_lib.student [--out _build/student]      # the edition: NN_*.py and NN_*.ipynb
    python -m emd_lib.student --grade FILE [FILE ...]      # run the exercise checks of answered chapters

Lines between ``### BEGIN SOLUTION`` and ``### END SOLUTION`` (markers included) become
``raise NotImplementedError(...)`` at the marker's indentation, so each exercise's check
fails until the student writes an answer. The edition goes to ``_build/``, never into git:
the ``.py`` files open as notebooks in ``make lab``, the ``.ipynb`` files (with the install
cell of :mod:`emd_lib.notebooks`) in Colab.

``--grade`` runs each exercise cell of a chapter (``.py`` or ``.ipynb``) on its own, the way
the tests run the reference solutions, and prints one line per exercise and the score; the
exit status is 0 only when every exercise passes. It executes the student's code: grade in a
sandbox you trust.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from . import ROOT

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
STUB = 'raise NotImplementedError("write your solution here")'


def strip_solutions(text: str) -> str:
    """Replace every solution block of a chapter's source with a stub."""
    out, inside = [], False
    for line in text.splitlines(keepends=True):
        stripped = line.strip()
        if stripped == BEGIN:
            if inside:
                raise ValueError("nested ### BEGIN SOLUTION")
            inside = True
            indent = line[: len(line) - len(line.lstrip())]
            out.append(f"{indent}{STUB}\n")
        elif stripped == END:
            if not inside:
                raise ValueError("### END SOLUTION without ### BEGIN SOLUTION")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError("### BEGIN SOLUTION without ### END SOLUTION")
    return "".join(out)


def solution_text(text: str) -> list[str]:
    """The solution blocks of a chapter's source (to check that none leaks)."""
    return [m.strip() for m in re.findall(rf"{re.escape(BEGIN)}\n(.*?){re.escape(END)}", text, re.S) if m.strip()]


CHECK = re.compile(r'check\(\s*"([\d.]+)"')


def grade(path: Path) -> dict[str, tuple[bool, str]]:
    """Run every exercise cell of a chapter on its own: ``{id: (passed, message)}``."""
    import contextlib
    import io
    import os

    import jupytext

    from .exercises import ExerciseFailed

    results = {}
    nb = jupytext.read(path)
    cwd = os.getcwd()
    try:
        os.chdir(ROOT / "chapters")
        for cell in nb.cells:
            ids = CHECK.findall(cell.source) if cell.cell_type == "code" else []
            if not ids:
                continue
            buf = io.StringIO()
            try:
                with contextlib.redirect_stdout(buf):
                    exec(compile(cell.source, f"<exercise {ids[0]}>", "exec"), {"__name__": "__exercise__"})
                results[ids[0]] = (True, "correct")
            except ExerciseFailed as e:
                results[ids[0]] = (False, str(e))
            except Exception as e:  # the cell failed before reaching its check
                results[ids[0]] = (False, f"the cell raised {type(e).__name__}: {e}")
    finally:
        os.chdir(cwd)
    return results


def write_edition(out: Path, src: Path | None = None) -> list[Path]:
    """The student edition of every chapter of ``src``: ``NN_*.py`` and ``NN_*.ipynb``."""
    from .book import chapters
    from .notebooks import write_notebooks

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for p in chapters(src=src):
        (out / p.name).write_text(strip_solutions(p.read_text()))
        written.append(out / p.name)
    return written + write_notebooks(out, student=True, src=src)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m emd_lib.student", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "_build" / "student"))
    ap.add_argument("--grade", nargs="+", metavar="FILE", help="grade answered chapters instead")
    args = ap.parse_args(argv)
    if args.grade:
        ok = True
        for f in args.grade:
            res = grade(Path(f).resolve())
            passed = sum(p for p, _ in res.values())
            for ex_id, (p, msg) in res.items():
                print(f"{Path(f).name}  {ex_id}: {'PASS' if p else 'FAIL'}" + ("" if p else f"  {msg}"))
            print(f"{Path(f).name}: {passed}/{len(res)} exercises pass")
            ok &= passed == len(res)
        return 0 if ok else 1
    for path in write_edition(Path(args.out)):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
