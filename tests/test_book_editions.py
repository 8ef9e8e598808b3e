"""The student edition, the Colab notebooks, grading, the script example and the make targets."""
import re
import runpy
import subprocess
from pathlib import Path

import jupytext
import nbformat
import pytest

from emd_lib import notebooks, student
from emd_lib.exercises import ExerciseFailed

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = sorted((ROOT / "chapters").glob("[0-9][0-9]_*.py"))


@pytest.fixture(scope="module")
def edition(tmp_path_factory):
    out = tmp_path_factory.mktemp("student")
    assert student.main(["--out", str(out)]) == 0
    return out


def test_student_edition_has_every_chapter_as_py_and_ipynb(edition):
    for path in CHAPTERS:
        assert (edition / path.name).exists() and (edition / f"{path.stem}.ipynb").exists()


def test_student_edition_leaks_no_solution_text(edition):
    for path in CHAPTERS:
        solutions = student.solution_text(path.read_text())
        for copy in (edition / path.name, edition / f"{path.stem}.ipynb"):
            text = copy.read_text()
            if copy.suffix == ".ipynb":  # compare cell sources, not JSON-escaped text
                text = "\n".join(c.source for c in nbformat.read(copy, as_version=4).cells)
            assert "BEGIN SOLUTION" not in text and "END SOLUTION" not in text
            for sol in solutions:
                for line in sol.splitlines():
                    line = line.strip()
                    if len(line) > 12 and line not in path.read_text().replace(sol, ""):
                        assert line not in text, f"{copy.name}: solution line leaks: {line}"


def _exercise_cells(nb):
    return [c.source for c in nb.cells if c.cell_type == "code" and student.CHECK.search(c.source)]


def test_every_check_fails_on_the_student_stub(edition, monkeypatch):
    monkeypatch.chdir(ROOT / "chapters")
    n = 0
    for path in CHAPTERS:
        cells = _exercise_cells(jupytext.read(edition / path.name))
        assert len(cells) == len(_exercise_cells(jupytext.read(path)))
        assert _exercise_cells(nbformat.read(edition / f"{path.stem}.ipynb", as_version=4)) == cells
        for source in cells:
            assert "NotImplementedError" in source
            with pytest.raises(ExerciseFailed, match="not answered yet"):
                exec(compile(source, f"<{path.stem}>", "exec"), {"__name__": "__exercise__"})
            n += 1
    assert n >= len(CHAPTERS)


def test_grading_scores_a_stub_and_a_reference(edition, capsys):
    path = CHAPTERS[0]
    res = student.grade(edition / path.name)
    assert res and not any(ok for ok, _ in res.values())
    assert all("not answered yet" in msg for _, msg in res.values())
    assert student.main(["--grade", str(edition / path.name)]) == 1
    out = capsys.readouterr().out
    assert f"0/{len(res)} exercises pass" in out
    res = student.grade(path)
    assert all(ok for ok, _ in res.values()), res


def test_colab_notebooks_start_with_an_install_cell(tmp_path):
    written = notebooks.write_notebooks(tmp_path, repo="https://example.org/emd-book.git")
    assert [p.stem for p in written] == [p.stem for p in CHAPTERS]
    for path in written:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        first = nb.cells[0]
        assert first.cell_type == "code" and notebooks.INSTALL_TAG in first.metadata["tags"]
        assert "pip" in first.source and "https://example.org/emd-book.git" in first.source
        assert nb.cells[1].cell_type == "markdown" and nb.cells[1].source.startswith("# ")
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")
    # where emd_lib is importable the cell installs nothing and clones nothing
    calls = []
    real = subprocess.run
    subprocess.run = lambda *a, **k: calls.append(a)
    try:
        exec(compile(first.source, "<install>", "exec"), {})
    finally:
        subprocess.run = real
    assert calls == []


def test_notebooks_command_writes_into_build(tmp_path, capsys):
    assert notebooks.main(["--out", str(tmp_path), "--repo", "https://example.org/x.git"]) == 0
    assert len(list(tmp_path.glob("*.ipynb"))) == len(CHAPTERS)


def test_default_repo_reads_the_environment(monkeypatch):
    monkeypatch.setenv("EMD_REPO_URL", "git@example.org:team/emd-book.git")
    assert notebooks.default_repo() == "https://example.org/team/emd-book.git"


def test_script_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EMD_FAST", "1")
    monkeypatch.setenv("EMD_DEVICE", "cpu")
    mod = runpy.run_path(str(ROOT / "examples" / "distil_mixture.py"), run_name="example")
    reports = mod["main"](tmp_path)
    assert set(reports) == {"emd", "di"}
    for r in reports.values():
        assert r["n_modes"] == 8 and 0 <= r["tv"] <= 1
    assert (tmp_path / "ring8_emd.pt").exists()
    assert "modes covered" in capsys.readouterr().out


def test_make_targets_and_readme():
    make = (ROOT / "Makefile").read_text()
    readme = (ROOT / "README.md").read_text()
    for target in ("test", "book", "bench", "lab", "notebooks", "student"):
        assert re.search(rf"^{target}:", make, re.M), f"make {target}"
        assert f"make {target}" in readme, f"README documents make {target}"
    assert (ROOT / "docs" / "teaching.md").exists()


def test_teaching_page_says_what_a_teacher_needs():
    text = (ROOT / "docs" / "teaching.md").read_text()
    for needle in ("One-week", "One-term", "make student", "--grade", "GPU", "EMD_FAST=1", "Run times"):
        assert needle in text, needle
    # every chapter of the book appears in the plan
    for path in CHAPTERS:
        assert re.search(rf"^\| {int(path.name[:2])} ", text, re.M), path.name
