"""Chapters 1 and 2, exercise by exercise: each chapter has exactly its exercises, the reference
solutions pass, the student stubs fail with the "not answered yet" hint, the wrong answers fail."""
import re
from pathlib import Path

import jupytext
import pytest
import torch

from emd_lib.exercises import ExerciseFailed, registry

CHAPTERS = Path(__file__).resolve().parent.parent / "chapters"
HEADING = re.compile(r"^## Exercise (\d+\.\d+): (.+)$", re.M)


def exercise_cells(chapter: str) -> dict[str, str]:
    """``{"N.k": code}`` for every ``## Exercise N.k`` markdown cell followed by one code cell."""
    nb = jupytext.read(CHAPTERS / chapter)
    cells, out = nb.cells, {}
    for i, cell in enumerate(cells):
        if cell.cell_type != "markdown":
            continue
        for m in HEADING.finditer(cell.source):
            nxt = cells[i + 1] if i + 1 < len(cells) else None
            assert nxt is not None and nxt.cell_type == "code", f"exercise {m.group(1)} has no code cell after it"
            out[m.group(1)] = nxt.source
    return out


def student_edition(code: str) -> str:
    """Replace every solution block by ``raise NotImplementedError`` at the marker's indentation."""
    lines, out, inside = code.splitlines(), [], False
    for line in lines:
        s = line.strip()
        if s == "### BEGIN SOLUTION":
            indent = line[: len(line) - len(line.lstrip())]
            out.append(f'{indent}raise NotImplementedError("write your solution here")')
            inside = True
        elif s == "### END SOLUTION":
            inside = False
        elif not inside:
            out.append(line)
    assert not inside, "unterminated solution block"
    return "\n".join(out)


EXERCISES = {"01_diffusion_2d.py": ["1.1", "1.2", "1.3"],
             "02_mode_seeking_vs_covering.py": ["2.1", "2.2", "2.3"]}
CASES = [(chapter, ex_id) for chapter, ids in EXERCISES.items() for ex_id in ids]
IDS = [ex_id for _, ex_id in CASES]


@pytest.mark.parametrize("chapter", list(EXERCISES))
def test_chapter_has_the_exercises(chapter):
    cells = exercise_cells(chapter)
    assert sorted(cells) == EXERCISES[chapter]
    for code in cells.values():
        assert "### BEGIN SOLUTION" in code and "### END SOLUTION" in code and "check(" in code


@pytest.mark.parametrize("chapter, ex_id", CASES, ids=IDS)
def test_reference_solution_passes(chapter, ex_id):
    exec(compile(exercise_cells(chapter)[ex_id], f"exercise {ex_id}", "exec"), {"__name__": "__ex__"})


@pytest.mark.parametrize("chapter, ex_id", CASES, ids=IDS)
def test_student_stub_fails(chapter, ex_id):
    code = student_edition(exercise_cells(chapter)[ex_id])
    with pytest.raises(ExerciseFailed, match="not answered yet"):
        exec(compile(code, f"stub {ex_id}", "exec"), {"__name__": "__ex__"})


@pytest.mark.parametrize("ex_id", IDS)
def test_wrong_answers_fail(ex_id):
    ex = registry()[ex_id]
    assert ex.wrong, f"exercise {ex_id} registers no wrong answer"
    for wrong in ex.wrong:
        with pytest.raises(ExerciseFailed):
            ex.fn(wrong)
