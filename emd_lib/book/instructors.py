"""The instructor kit's tables, built from the exercise registry (points and minutes).

``docs/instructors.md`` holds the output of :func:`plan_tables` between two markers; a test
checks that the page and the registry agree. Regenerate the block with::

    python -c "from emd_lib.book.instructors import plan_tables; print(plan_tables())"
"""
from __future__ import annotations

BEGIN, END = "<!-- BEGIN GENERATED: python -m emd_lib.book.instructors -->", "<!-- END GENERATED -->"

#: sessions of the two courses: (name, chapters whose exercises it assigns)
ONE_WEEK = [("Day 1: diffusion in 2D, mode seeking", (1, 2)),
            ("Day 2: the EM derivation", (3,)),
            ("Day 3: Langevin and noise cancellation", (4,)),
            ("Day 4: the link to VSD, EMD in practice", (5, 6)),
            ("Day 5: images and scale; project start", (7, 8))]
ONE_TERM = [("Weeks 1-2: diffusion in 2D", (1,)),
            ("Weeks 3-4: mode seeking vs mode covering", (2,)),
            ("Weeks 5-6: the EM derivation", (3,)),
            ("Weeks 7-8: Langevin and noise cancellation", (4,)),
            ("Week 9: the link to VSD", (5,)),
            ("Week 10: EMD in practice", (6,)),
            ("Week 11: images", (7,)),
            ("Week 12: scaling up; project", (8,))]


def _key(ex_id: str):
    return tuple(int(p) for p in ex_id.split("."))


def exercises_of(chapters) -> list:
    from ..exercises import registry

    reg = registry()
    return [reg[k] for k in sorted(reg, key=_key) if int(k.split(".")[0]) in chapters]


def plan_table(plan) -> str:
    rows = ["| session | exercises (points, minutes) | minutes | points |", "|---|---|---|---|"]
    total_m = total_p = 0
    for name, chapters in plan:
        exs = exercises_of(chapters)
        m, p = sum(e.minutes for e in exs), sum(e.points for e in exs)
        total_m, total_p = total_m + m, total_p + p
        listed = "; ".join(f"{e.id}{'*' if e.kind == 'method' else ''} ({e.points:g}, {e.minutes})" for e in exs)
        rows.append(f"| {name} | {listed} | {m} | {p:g} |")
    rows.append(f"| **total** | | **{total_m}** | **{total_p:g}** |")
    return "\n".join(rows)


def exercise_table() -> str:
    from ..exercises import registry

    reg = registry()
    rows = ["| id | title | kind | points | minutes |", "|---|---|---|---|---|"]
    for k in sorted(reg, key=_key):
        e = reg[k]
        rows.append(f"| {k} | {e.title} | {e.kind} | {e.points:g} | {e.minutes} |")
    return "\n".join(rows)


def plan_tables() -> str:
    """The generated block of ``docs/instructors.md``."""
    return "\n".join([BEGIN, "", "### Every exercise", "", exercise_table(), "",
                      "### One-week course (exercises marked * build a piece of the method)", "", plan_table(ONE_WEEK), "",
                      "### One-term course", "", plan_table(ONE_TERM), "", END])


if __name__ == "__main__":
    print(plan_tables())
