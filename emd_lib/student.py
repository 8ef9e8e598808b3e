"""The student edition: every solution replaced by a stub; grading a student's chapter.

    python -m emd_lib.student [--out _build/student] [--repo URL]   # the edition: NN_*.py and NN_*.ipynb
    python -m emd_lib.student --grade FILE [FILE ...]                # run the exercise checks of answered chapters

Lines between ``### BEGIN SOLUTION`` and ``### END SOLUTION`` (markers included) become
``raise NotImplementedError(...)`` at the marker's indentation, so each exercise's check
fails until the student writes an answer, and a note under each exercise heading says that
the exercise's cell is graded on its own. The edition goes to ``_build/``, never into git:
the ``.py`` files open as notebooks in ``make lab``, the ``.ipynb`` files (with the install
cell of :mod:`emd_lib.notebooks`, which clones ``--repo`` and removes the clone's
``chapters/``) in Colab.

``--grade`` runs each exercise cell of a chapter (``.py`` or ``.ipynb``) on its own, the way
the tests run the reference solutions, and records what each call of ``check`` returned. It
scores every exercise the library registers for the chapter (named by the file's ``NN_``
prefix, else its ``# Chapter N`` title): an exercise passes only when its check was called and
passed and its cell ran to the end; a missing exercise, a check never called, or a cell that
raised (``SystemExit`` included) is a FAIL with the reason. It prints one line per exercise
and the score, and the exit status is 0 only when every exercise of every file passes. It
executes the student's code: grade in a sandbox you trust.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from . import ROOT
from .exercises import STUB_MESSAGE

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


EXERCISE_HEADING = re.compile(r"^(?:#\s+)?##\s+Exercise\s+(\d+\.\d+)\b.*$", re.M)
CHECK = re.compile(r"""\bcheck\(\s*(?:id\s*=\s*)?["']([\d.]+)["']""")   # check("2.1", ...), check('2.1', ...)

# Under every exercise heading of the student edition: what the grader needs of the exercise's cell.
ALONE = ("the grader runs each exercise's code cell on its own, without the cells before it, so "
         "everything the answer uses (imports, helper functions from earlier cells) must be in that cell")
NOTE = ("> **Graded on its own:** the grader runs this exercise's code cell by itself, without the cells "
        "before it: define or import in that cell everything your answer uses (functions from earlier "
        "cells included), and keep its `check(...)` call there.")


def add_grading_notes(text: str) -> str:
    """A chapter's py:percent source with :data:`NOTE` under every ``## Exercise N.k`` heading."""
    out = []
    for line in text.splitlines(keepends=True):
        out.append(line)
        if line.startswith("# ") and EXERCISE_HEADING.match(line):
            out.append("#\n# " + NOTE + "\n")
    return "".join(out)


def student_source(text: str) -> str:
    """A chapter's source as the student edition has it: solutions stubbed, grading notes added."""
    return add_grading_notes(strip_solutions(text))


class Grades(dict):
    """``{exercise id: (passed, message)}`` for every exercise of the chapter, in order, with
    ``notes``: what the grader saw besides (a duplicated exercise cell, an exercise of another
    chapter, a cell that failed outside any exercise)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.notes: list[str] = []


def _id_key(ex_id: str):
    return tuple(int(p) if p.isdigit() else p for p in ex_id.split("."))


def chapter_of(path: Path, nb=None) -> str | None:
    """The chapter number of a submission: ``NN_`` of its file name, else its ``# Chapter N`` title."""
    m = re.match(r"(\d+)_", path.name)
    if m:
        return str(int(m.group(1)))
    for cell in nb.cells if nb is not None else []:
        if cell.cell_type == "markdown":
            m = re.search(r"^#\s+Chapter\s+(\d+)\b", cell.source, re.M)
            if m:
                return str(int(m.group(1)))
    return None


def _calls_check(source: str) -> bool:
    """Whether a code cell calls ``check`` or imports :mod:`emd_lib.exercises`."""
    import ast

    try:
        tree = ast.parse(source)
    except SyntaxError:  # IPython magics or a broken cell: fall back on the text
        return bool(re.search(r"\bcheck\s*\(", source)) or "emd_lib.exercises" in source
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            if (isinstance(f, ast.Name) and f.id == "check") or (isinstance(f, ast.Attribute) and f.attr == "check"):
                return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("emd_lib.exercises"):
            return True
        if isinstance(node, ast.ImportFrom) and node.module == "emd_lib" and any(
                a.name == "exercises" for a in node.names):
            return True
        if isinstance(node, ast.Import) and any(a.name.startswith("emd_lib.exercises") for a in node.names):
            return True
    return False


def _describe(e: BaseException) -> str:
    """A failure in one line, with the advice on cells graded alone for a ``NameError``."""
    from .exercises import ExerciseFailed

    if isinstance(e, ExerciseFailed):
        msg = str(e)
    elif isinstance(e, SystemExit):
        msg = f"the cell raised SystemExit ({e.code!r}): an exercise cell must not call sys.exit() or exit()"
    else:
        msg = f"the cell raised {type(e).__name__}" + (f": {e}" if str(e) else "")
    if isinstance(e, NameError) or isinstance(e.__cause__, NameError):
        msg += f" ({ALONE})"
    return msg


def _run_cell(source: str, name: str) -> tuple[list[tuple[str, bool, str, BaseException | None]], BaseException | None]:
    """Execute one cell in a fresh namespace, recording every ``check`` it makes: ``(calls, error)``
    with ``calls`` a list of ``(id, passed, message, exception)`` and ``error`` what escaped the cell."""
    import contextlib
    import io

    from . import exercises

    calls = []
    real = exercises.check

    def recording_check(id, answer, *args, **kwargs):
        try:
            out = real(id, answer, *args, **kwargs)
        except BaseException as e:
            calls.append((str(id), False, _describe(e), e))
            raise
        if out is True:
            calls.append((str(id), True, "correct", None))
        else:
            calls.append((str(id), False, f"check returned {out!r}", None))
        return out

    buf = io.StringIO()
    error = None
    exercises.check = recording_check
    try:
        with contextlib.redirect_stdout(buf):
            exec(compile(source, name, "exec"), {"__name__": "__exercise__"})
    except KeyboardInterrupt:   # Ctrl-C stops the grading
        raise
    except BaseException as e:  # SystemExit too: it fails this exercise only
        error = e
    finally:
        exercises.check = real
    return calls, error


def grade(path: Path) -> Grades:
    """Run every exercise cell of a chapter on its own: ``{id: (passed, message)}``.

    The exercises expected are those the library registers for the chapter (from the file name
    ``NN_*`` or the ``# Chapter N`` title); each passes only when ``check`` was called on it,
    every such call returned ``True`` and every cell that holds it ran to its end. A missing
    exercise, one never checked, or one whose cell raised (``SystemExit`` included) fails."""
    import os

    import jupytext

    from .exercises import registry

    nb = jupytext.read(path)
    chapter = chapter_of(path, nb)
    if chapter is None:
        raise ValueError(f"cannot tell which chapter {path.name} is: name it NN_*.py or NN_*.ipynb, "
                         "or keep its '# Chapter N' title")
    expected = sorted((k for k in registry() if k.split(".")[0] == chapter), key=_id_key)
    if not expected:
        raise ValueError(f"{path.name}: chapter {chapter} has no exercises")

    runs: dict[str, list[tuple[int, bool | None, str]]] = {k: [] for k in expected}   # None: no check here
    called: dict[str, set[int]] = {k: set() for k in expected}
    res = Grades()
    heading_id = None
    cwd = os.getcwd()
    try:
        for i, cell in enumerate(nb.cells, 1):
            if cell.cell_type == "markdown":
                found = EXERCISE_HEADING.findall(cell.source)
                heading_id = found[-1] if found else None
                continue
            if cell.cell_type != "code":
                continue
            after_heading, heading_id = heading_id, None
            if not (_calls_check(cell.source) or after_heading):
                continue
            intended = set(CHECK.findall(cell.source)) | ({after_heading} if after_heading else set())
            # where the book runs its chapters (whatever an earlier cell did); a student edition's
            # install drops chapters/, and then the submission's own folder serves
            os.chdir(ROOT / "chapters" if (ROOT / "chapters").is_dir() else path.resolve().parent)
            calls, error = _run_cell(cell.source, f"<cell {i} of {path.name}>")
            ids = intended | {c[0] for c in calls}
            for ex_id in sorted(ids, key=_id_key):
                mine = [c for c in calls if c[0] == ex_id]
                if ex_id not in runs:
                    if mine:
                        res.notes.append(f"cell {i} checks exercise {ex_id}, which is not an exercise of "
                                         f"chapter {chapter}: not scored")
                    continue
                if mine:
                    called[ex_id].add(i)
                    bad = [c for c in mine if not c[1]]
                    if bad:
                        runs[ex_id].append((i, False, bad[0][2]))
                    elif error is not None and not any(error is c[3] for c in calls):
                        runs[ex_id].append((i, False, "the check passed but then " + _describe(error)))
                    else:
                        runs[ex_id].append((i, True, "correct"))
                elif error is not None:
                    runs[ex_id].append((i, False, f"{_describe(error)}, before the cell reached "
                                                  f"check(\"{ex_id}\", ...)"))
                else:  # a FAIL only if no other cell checks it (a definition cell may precede the check)
                    runs[ex_id].append((i, None, f"the cell never calls check(\"{ex_id}\", ...)"))
            if error is not None and not ids:
                res.notes.append(f"cell {i} (no exercise) failed: {_describe(error)}")
    finally:
        os.chdir(cwd)

    for ex_id in expected:
        cells = sorted(called[ex_id])
        if not runs[ex_id]:
            res[ex_id] = (False, f"exercise {ex_id} is missing: no cell ends with check(\"{ex_id}\", ...)")
            continue
        failed = [(i, msg) for i, ok, msg in runs[ex_id] if ok is False]
        if not cells and not failed:
            failed = [(i, msg) for i, ok, msg in runs[ex_id]]
        if len(cells) > 1:
            res.notes.append(f"exercise {ex_id} is checked in cells {', '.join(map(str, cells))}: "
                             "every copy must pass")
        if failed:
            where = f"cell {failed[0][0]}: " if len(runs[ex_id]) > 1 else ""
            res[ex_id] = (False, where + failed[0][1])
        else:
            res[ex_id] = (True, "correct")
    return res


def write_edition(out: Path, src: Path | None = None, repo: str | None = None) -> list[Path]:
    """The student edition of every chapter of ``src``: ``NN_*.py`` and ``NN_*.ipynb``."""
    from .book import chapters
    from .notebooks import write_notebooks

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for p in chapters(src=src):
        (out / p.name).write_text(student_source(p.read_text()))
        written.append(out / p.name)
    return written + write_notebooks(out, repo=repo, student=True, src=src)


def grade_files(files: list[str]) -> bool:
    """Grade each file and print its exercises and score; whether every exercise of every file passed."""
    ok = True
    for f in files:
        name = Path(f).name
        try:
            res = grade(Path(f).resolve())
        except Exception as e:  # an unreadable file, an unknown chapter: the next file is still graded
            print(f"{name}: cannot grade: {type(e).__name__}: {e}")
            ok = False
            continue
        passed = sum(p for p, _ in res.values())
        for ex_id, (p, msg) in res.items():
            print(f"{name}  {ex_id}: {'PASS' if p else 'FAIL'}" + ("" if p else f"  {msg}"))
        for note in res.notes:
            print(f"{name}  note: {note}")
        print(f"{name}: {passed}/{len(res)} exercises pass")
        ok &= bool(res) and passed == len(res)
    return ok


def main(argv=None) -> int:
    from .notebooks import default_repo, warn_if_placeholder

    ap = argparse.ArgumentParser(prog="python -m emd_lib.student", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "_build" / "student"))
    ap.add_argument("--repo", default=None, help="git URL the notebooks' install cell clones on Colab "
                                                 "(default: EMD_REPO_URL, else the origin remote)")
    ap.add_argument("--grade", nargs="+", metavar="FILE", help="grade answered chapters instead")
    args = ap.parse_args(argv)
    if args.grade:
        return 0 if grade_files(args.grade) else 1
    repo = args.repo or default_repo()
    warn_if_placeholder(repo)
    for path in write_edition(Path(args.out), repo=repo):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
