"""The sweeps behind the chapters' stored results, one module per chapter.

    python -m emd_lib experiment ch04 --sweep zstep     # = python -m emd_lib.experiments.ch04 --sweep zstep

Each writes ``data/results/chNN_*.json`` with the command line, date, machine and wall time.
"""
from __future__ import annotations

import importlib
import json
import pkgutil
import sys

__all__ = ["available", "load_result", "main"]


def load_result(name: str, quiet: bool = False) -> dict:
    """A stored result ``data/results/NAME.json`` (``.json`` may be left out). Unless ``quiet``,
    prints where it came from: the command, its date, and the minutes and machine when recorded."""
    from .. import DATA_DIR

    path = DATA_DIR / "results" / (name if name.endswith(".json") else f"{name}.json")
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in path.parent.glob("*.json")))
        raise FileNotFoundError(f"no stored result {path.name} in {path.parent} (there are: {known})")
    rec = json.loads(path.read_text())
    if not quiet:
        meta = rec.get("meta", rec)
        machine = meta.get("machine")
        if isinstance(machine, dict):
            machine = f"{machine.get('cpu_count', machine.get('cpus', '?'))} CPUs"
        wall = meta.get("wall_seconds", meta.get("wall_s"))     # the sweeps of chapters 5 and 6 write wall_s
        minutes = f"{wall / 60:.1f} min" if wall is not None else None
        where = " on ".join(str(x) for x in (minutes, machine) if x)
        print(f"{path.name}: `{meta.get('command', '?')}`, {meta.get('date', '?')}" + (f", {where}" if where else ""))
    return rec


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
