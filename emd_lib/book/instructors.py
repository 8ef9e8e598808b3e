"""The instructor kit's tables, built from the exercise registry (points and minutes).

``docs/instructors.md`` holds the output of :func:`plan_tables` between two markers; a test
checks that the page and the registry agree. Regenerate the block with::

    python -c "from emd_lib.book.instructors import plan_tables; print(plan_tables())"
"""
from __future__ import annotations

from .grading import exercise_order

BEGIN, END = "<!-- BEGIN GENERATED: python -m emd_lib.book.instructors -->", "<!-- END GENERATED -->"

#: sessions of the two courses (as docs/teaching.md plans them): (name, chapters or exercise ids it assigns)
ONE_WEEK = [("Day 1: diffusion in 2D (ch. 1)", (1,)),
            ("Day 2: mode seeking vs mode covering (ch. 2)", (2,)),
            ("Day 3: the EM derivation (ch. 3)", (3,)),
            ("Day 4: the two chains and noise cancellation (ch. 4.1, 4.6), the link to VSD (ch. 5)",
             ("4.1", "4.3", "5.1", "5.2", "5.4")),
            ("Day 5: EMD in practice (ch. 6)", (6,))]
ONE_TERM = [("Weeks 1-2: diffusion in 2D (ch. 1)", (1,)),
            ("Week 3: mode seeking vs mode covering (ch. 2)", (2,)),
            ("Weeks 4-5: the EM derivation (ch. 3)", (3,)),
            ("Weeks 6-7: Langevin and noise cancellation (ch. 4)", (4,)),
            ("Week 8: the link to VSD (ch. 5)", (5,)),
            ("Weeks 9-10: EMD in practice (ch. 6)", (6,)),
            ("Weeks 11-12: real images (ch. 7)", (7,)),
            ("Week 13: scaling up (ch. 8), and the project", (8,))]


def exercises_of(selector) -> list:
    """The registered exercises of some chapters (ints) or with some ids (strings), in course order."""
    from ..exercises import registry

    reg = registry()
    chosen = [k for k in reg if k in selector or int(k.split(".")[0]) in selector]
    return [reg[k] for k in sorted(chosen, key=exercise_order)]


def plan_table(plan) -> str:
    rows = ["| session | exercises (points, minutes) | minutes | points |", "|---|---|---|---|"]
    total_m = total_p = 0
    for name, selector in plan:
        exs = exercises_of(selector)
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
    for k in sorted(reg, key=exercise_order):
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
