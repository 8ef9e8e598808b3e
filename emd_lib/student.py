"""The student edition: every solution replaced by a stub.

    python -m emd_lib.student [--out _build/student]

Lines between ``### BEGIN SOLUTION`` and ``### END SOLUTION`` (markers included) become
``raise NotImplementedError(...)`` at the marker's indentation, so each exercise's check
fails until the student writes an answer. The edition goes to ``_build/``, never into git.
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m emd_lib.student", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "_build" / "student"))
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for p in sorted((ROOT / "chapters").glob("[0-9][0-9]_*.py")):
        (out / p.name).write_text(strip_solutions(p.read_text()))
        print(f"{p.name} -> {out / p.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
