"""The sweeps behind the chapters' stored results, one module per chapter.

    python -m emd_lib experiment ch04 --sweep zstep     # = python -m emd_lib experiment ch04 --sweep zstep

Each writes ``data/results/chNN_*.json`` with the command line, date, machine and wall time.
"""
from __future__ import annotations

import importlib
import pkgutil
import sys

__all__ = ["available", "main"]


def available() -> list[str]:
    """The chapters that have sweeps (``ch02``, ``ch04``, ...)."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name.startswith("ch"))


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    names = available()
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in names:
        print(f"usage: python -m emd_lib experiment {{{','.join(names)}}} [ARGS...]\n"
              "python -m emd_lib experiment chNN --help lists a chapter's sweeps and options.",
              file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module = importlib.import_module(f"{__name__}.{argv[0]}")
    sys.argv = [f"python -m emd_lib experiment {argv[0]}"] + argv[1:]
    out = module.main(argv[1:])
    return out if isinstance(out, int) else 0
