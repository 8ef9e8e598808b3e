"""The student edition: every solution replaced by a stub; grading a student's chapter.

    python -m emd_lib student [--out _build/student] [--repo URL]   # the edition: NN_*.py and NN_*.ipynb
    python -m emd_lib student --grade FILE [FILE ...]                # run the exercise checks of answered chapters

Lines between ``### BEGIN SOLUTION`` and ``### END SOLUTION`` (markers included) become
``raise NotImplementedError(...)`` at the marker's indentation, so each exercise's check
fails until the student writes an answer; under each exercise heading a line gives its points
and minutes (from the registry), and a note says that the exercise's cell is graded on its own. The edition goes to ``_build/``, never into git:
the ``.py`` files open as notebooks in ``make lab``, the ``.ipynb`` files (with the install
cell of :mod:`emd_lib.book.notebooks`, which clones ``--repo`` and removes the clone's
``chapters/``) in Colab.

``--grade`` is ``python -m emd_lib grade`` (:mod:`emd_lib.book.grading`): each exercise cell of a
submission runs on its own in a process of its own, with a time limit, and the verdicts are
decided in the grader's process.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from .. import ROOT
from ..exercises import STUB_MESSAGE
from .grading import CHECK, EXERCISE_HEADING  # noqa: F401  (the edition and the grader agree)

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
STUB = f'raise NotImplementedError("{STUB_MESSAGE}")'


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


# Under every exercise heading of the student edition: what the grader needs of the exercise's cell.
NOTE = ("> **Graded on its own:** the grader runs this exercise's code cell by itself, without the cells "
        "before it: define or import in that cell everything your answer uses (functions from earlier "
        "cells included), and keep its `check(...)` call there.")


def points_line(ex_id: str) -> str:
    """What an exercise is worth and how long it takes, from the registry (a line under its heading)."""
    from ..exercises import registry

    ex = registry().get(ex_id)
    if ex is None:
        return ""
    pts = f"{ex.points:g} point{'s' if ex.points != 1 else ''}"
    return f"> **{pts}, about {ex.minutes} minutes.**"


def add_grading_notes(text: str) -> str:
    """A chapter's py:percent source with the exercise's points and minutes and :data:`NOTE` under
    every ``## Exercise N.k`` heading."""
    out = []
    for line in text.splitlines(keepends=True):
        out.append(line)
        m = EXERCISE_HEADING.match(line) if line.startswith("# ") else None
        if m:
            pts = points_line(m.group(1))
            if pts:
                out.append("#\n# " + pts + "\n")
            out.append("#\n# " + NOTE + "\n")
    return "".join(out)


def student_source(text: str) -> str:
    """A chapter's source as the student edition has it: solutions stubbed, grading notes added."""
    return add_grading_notes(strip_solutions(text))


def write_edition(out: Path, src: Path | None = None, repo: str | None = None) -> list[Path]:
    """The student edition of every chapter of ``src``: ``NN_*.py`` and ``NN_*.ipynb``."""
    from .build import chapters
    from .notebooks import write_notebooks

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for p in chapters(src=src):
        (out / p.name).write_text(student_source(p.read_text()))
        written.append(out / p.name)
    return written + write_notebooks(out, repo=repo, student=True, src=out)


def main(argv=None) -> int:
    from .notebooks import default_repo, warn_if_placeholder

    ap = argparse.ArgumentParser(prog="python -m emd_lib student", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "_build" / "student"))
    ap.add_argument("--repo", default=None, help="git URL the notebooks' install cell clones on Colab "
                                                 "(default: EMD_REPO_URL, else the origin remote)")
    ap.add_argument("--grade", nargs="+", metavar="FILE", help="grade answered chapters instead "
                    "(the same as python -m emd_lib grade; its options follow the files)")
    args, rest = ap.parse_known_args(argv)
    if args.grade:
        from .grading import main as grade_main
        return grade_main(args.grade + rest, prog="python -m emd_lib student --grade")
    if rest:
        ap.error(f"unrecognized arguments: {' '.join(rest)}")
    repo = args.repo or default_repo()
    warn_if_placeholder(repo)
    for path in write_edition(Path(args.out), repo=repo):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
