"""Chapter 1's exercises: the reference solutions pass, the student stubs and the wrong answers fail."""
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


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one thread is fastest, and much faster on a busy machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


CHAPTER = "01_diffusion_2d.py"
IDS = ["1.1", "1.2", "1.3"]


def test_chapter_has_the_exercises():
    cells = exercise_cells(CHAPTER)
    assert sorted(cells) == IDS
    for code in cells.values():
        assert "### BEGIN SOLUTION" in code and "### END SOLUTION" in code and "check(" in code


@pytest.mark.parametrize("ex_id", IDS)
def test_reference_solution_passes(ex_id):
    exec(compile(exercise_cells(CHAPTER)[ex_id], f"exercise {ex_id}", "exec"), {"__name__": "__ex__"})


@pytest.mark.parametrize("ex_id", IDS)
def test_student_stub_fails(ex_id):
    code = student_edition(exercise_cells(CHAPTER)[ex_id])
    with pytest.raises(ExerciseFailed, match="not answered yet"):
        exec(compile(code, f"stub {ex_id}", "exec"), {"__name__": "__ex__"})


@pytest.mark.parametrize("ex_id", IDS)
def test_wrong_answers_fail(ex_id):
    ex = registry()[ex_id]
    assert ex.wrong, f"exercise {ex_id} registers no wrong answer"
    for wrong in ex.wrong:
        with pytest.raises(ExerciseFailed):
            ex.fn(wrong)
