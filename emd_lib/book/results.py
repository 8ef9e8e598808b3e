"""The result tables of ``docs/results.md``, written from the JSON files in ``data/results`` so
that the page cannot drift from what was measured.

    python -m emd_lib.book.results            # rewrite the generated tables in docs/results.md
    python -m emd_lib.book.results --check    # exit 1 when the page is not current

A generated table sits between ``<!-- generated: NAME -->`` and ``<!-- end generated -->``; the
prose around it is the page's own. The tests check that the page is current.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys

from .. import DATA_DIR, ROOT

__all__ = ["toy_table", "bench_toy_rows", "bench_toy_table", "TABLES", "render", "main"]

PAGE = ROOT / "docs" / "results.md"
BLOCK = re.compile(r"(<!-- generated: (\w+) -->\n)(.*?)(<!-- end generated -->)", re.S)


def _load(name: str) -> dict:
    return json.loads((DATA_DIR / "results" / f"{name}.json").read_text())


def _spread(values, fmt):
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(statistics.mean(values), fmt)} ± {format(statistics.stdev(values), fmt)}"


def toy_table() -> str:
    """The toy command's runs: one row per target and method (the seeds of ``far`` as mean ± sd)."""
    rows = [("ring8", "ring8", ["toy_ring8_emd"], ["toy_ring8_di"]),
            ("irregular", "irregular", ["toy_irregular_emd"], ["toy_irregular_di"]),
            ("grid25", "grid25", ["toy_grid25_emd"], ["toy_grid25_di"]),
            ("far", "far", [f"toy_far_emd_seed{s}" for s in range(3)], [f"toy_far_di_seed{s}" for s in range(3)])]
    out = ["| target | method | updates | modes | TV of masses | within 3 sd | MMD | precision | recall | CPU s |",
           "|---|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for _, target, *groups in rows:
        for names in groups:
            runs = [_load(n) for n in names]
            r0 = runs[0]
            if len(runs) == 1:
                modes = f"{r0['modes_covered']}/{r0['n_modes']}"
                target_cell = target
            else:
                kept = sum(r["modes_covered"] == r["n_modes"] for r in runs)
                modes = f"all {r0['n_modes']} in {kept} of {len(runs)}"
                target_cell = f"{target} (seeds {', '.join(str(r['seed']) for r in runs)}: mean ± sd)"
            cells = [target_cell, r0["method"], str(r0["steps"]), modes,
                     _spread([r["tv"] for r in runs], ".3f"), _spread([r["within_3sd"] for r in runs], ".3f"),
                     _spread([r["mmd"] for r in runs], ".4f"), _spread([r["precision"] for r in runs], ".3f"),
                     _spread([r["recall"] for r in runs], ".3f"), _spread([r["cpu_seconds"] for r in runs], ".0f")]
            out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def bench_toy_rows(d: dict) -> list[str]:
    """A ``bench_toy`` record's timings (``seconds_per_step``, ``ratio_to_di``, ``predicted_ratio``)
    as the lines of a table: ms per step, ratio to Diff-Instruct, the ratio the pieces predict."""
    out = ["| method | ms / step | ratio to DI | predicted ratio |", "|---|---:|---:|---:|"]
    for m, sec in d["seconds_per_step"].items():
        out.append(f"| {m} | {1000 * sec:.1f} | {d['ratio_to_di'][m]:.2f} | {d['predicted_ratio'][m]:.2f} |")
    return out


def bench_toy_table(name: str) -> str:
    """One ``bench_toy`` JSON as a table (:func:`bench_toy_rows`), its pieces and where it was measured."""
    d = _load(name)
    out = bench_toy_rows(d)
    pieces = ", ".join(f"{k} {1000 * v:.1f}" for k, v in d["pieces_s"].items() if v)
    out.append("")
    out.append(f"Pieces (ms): {pieces}. Measured {d['date']} on a {d['machine']}: `{d['command']}`.")
    return "\n".join(out)


#: generated block name -> function writing its markdown
TABLES = {"toy": toy_table, "bench_toy_eps": lambda: bench_toy_table("bench_toy_eps"),
          "bench_toy_z": lambda: bench_toy_table("bench_toy_z")}


def render(text: str) -> str:
    """``text`` with every generated block rewritten from the JSON files."""
    def block(m):
        name = m.group(2)
        if name not in TABLES:
            raise KeyError(f"docs/results.md names a generated table {name!r}; known: {', '.join(TABLES)}")
        return m.group(1) + TABLES[name]() + "\n" + m.group(4)
    return BLOCK.sub(block, text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m emd_lib.book.results", description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="only check that the page is current")
    args = ap.parse_args(argv)
    text = PAGE.read_text()
    new = render(text)
    if args.check:
        if new != text:
            print(f"{PAGE} is not current: run python -m emd_lib.book.results", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(new)
    print(f"wrote {PAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
