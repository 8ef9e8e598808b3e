"""The student edition, the Colab notebooks, grading, the script example and the make targets."""
import re
import runpy
import subprocess
from pathlib import Path

import jupytext
import nbformat
import pytest

from emd_lib.book import grading

from emd_lib.book import notebooks

from emd_lib.book import student
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
    """The code cells that call check, without nbgrader's locked test cells (which repeat the call)."""
    return [c.source for c in nb.cells if c.cell_type == "code" and student.CHECK.search(c.source)
            and not c.metadata.get("nbgrader", {}).get("grade")]


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


def _nbgrader_cells(path):
    return [(c, c.metadata["nbgrader"]) for c in nbformat.read(path, as_version=4).cells if "nbgrader" in c.metadata]


def test_student_notebooks_carry_nbgrader_metadata_matching_the_registry(edition, tmp_path):
    """Each exercise: an answer cell, then a locked autograded test cell whose grade id and points
    are the registry's; the metadata passes nbgrader's schema-3 rules (ids present and unique,
    points on every graded cell). The full notebooks (nbgrader's source) carry the same cells
    with the solutions between nbgrader's markers."""
    from emd_lib.exercises import grade_id, registry

    reg = registry()
    notebooks.write_notebooks(tmp_path, repo="https://example.org/x.git")
    seen = set()
    for path in CHAPTERS:
        for folder in (edition, tmp_path):
            cells = _nbgrader_cells(folder / f"{path.stem}.ipynb")
            ids = [m["grade_id"] for _, m in cells]
            assert len(ids) == len(set(ids)) and all(ids), ids
            for (answer, a), (test, t) in zip(cells[::2], cells[1::2]):
                assert a["solution"] and not a["grade"] and not a["locked"] and a["schema_version"] == 3
                assert t["grade"] and t["locked"] and not t["solution"] and t["schema_version"] == 3
                ex_id = re.search(r'check\("([\d.]+)"', test.source).group(1)
                assert t["grade_id"] == grade_id(ex_id) == reg[ex_id].grade_id
                assert a["grade_id"] == grade_id(ex_id) + "_answer"
                assert t["points"] == reg[ex_id].weight
                assert f'check("{ex_id}"' in answer.source
                assert ("### BEGIN SOLUTION" in answer.source) == (folder == tmp_path)
                seen.add(ex_id)
    assert seen == set(reg)


def test_grading_scores_a_stub_and_a_reference(edition, capsys):
    path = CHAPTERS[0]
    graded = grading.grade(edition / path.name)
    res = graded.verdicts()
    assert res and not any(ok for ok, _ in res.values())
    assert all("not answered yet" in msg for _, msg in res.values())
    assert student.main(["--grade", str(edition / path.name)]) == 1
    out = capsys.readouterr().out
    assert f"0/{len(res)} exercises pass" in out
    graded = grading.grade(path)
    res = graded.verdicts()
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


# ---------------------------------------------------------------------------------------
# grading: what check returned, against the exercises the library registers for the chapter

CH1 = CHAPTERS[0]   # 01_*: exercises 1.1, 1.2 and 1.3, whose checks run in well under a second


def _answered(tmp_path, edit=None, name=None):
    """Chapter 1 with its solutions (the reference), changed by ``edit``, saved as a submission."""
    text = CH1.read_text()
    new = edit(text) if edit else text
    assert edit is None or new != text, "the edit changed nothing"
    path = tmp_path / (name or CH1.name)
    path.write_text(new)
    return path


def _cell_of(text, ex_id):
    """The py:percent source of exercise ``ex_id``'s code cell (from its ``# %%`` to the next)."""
    head = text.index(f"## Exercise {ex_id}:")
    start = text.index("# %%\n", head)
    end = text.find("# %%", start + 1)
    return text[start:end if end >= 0 else len(text)]


def test_grading_a_commented_out_check_fails(tmp_path, capsys):
    path = _answered(tmp_path, lambda t: t.replace('check("1.1", cosine_lam)', '# check("1.1", cosine_lam)'))
    graded = grading.grade(path)
    res = graded.verdicts()
    assert res["1.1"][0] is False and "never calls check" in res["1.1"][1]
    assert res["1.2"][0] and res["1.3"][0]
    assert student.main(["--grade", str(path)]) == 1
    assert "2/3 exercises pass" in capsys.readouterr().out


def test_grading_counts_deleted_exercises_as_failed(tmp_path, capsys):
    path = _answered(tmp_path, lambda t: t[:t.index("# ## Exercise 1.2:")])
    graded = grading.grade(path)
    res = graded.verdicts()
    assert list(res) == ["1.1", "1.2", "1.3"]
    assert res["1.1"][0] and not res["1.2"][0] and not res["1.3"][0]
    assert "missing" in res["1.2"][1]
    assert student.main(["--grade", str(path)]) == 1
    assert "1/3 exercises pass" in capsys.readouterr().out


def test_grading_a_file_without_exercises_fails(tmp_path, capsys):
    path = tmp_path / "01_empty.py"
    path.write_text("# %% [markdown]\n# # Chapter 1: nothing here\n\n# %%\nx = 1\n")
    graded = grading.grade(path)
    res = graded.verdicts()
    assert list(res) == ["1.1", "1.2", "1.3"] and not any(ok for ok, _ in res.values())
    assert student.main(["--grade", str(path)]) == 1
    assert "0/3 exercises pass" in capsys.readouterr().out


def test_grading_finds_a_check_with_single_quotes(tmp_path):
    path = _answered(tmp_path, lambda t: t.replace('check("1.1", cosine_lam)', "check('1.1', cosine_lam)"))
    graded = grading.grade(path)
    res = graded.verdicts()
    assert res["1.1"] == (True, "correct") and all(ok for ok, _ in res.values())


def test_grading_a_check_caught_by_the_student_still_fails(tmp_path):
    path = _answered(tmp_path, lambda t: t.replace(
        'check("1.1", cosine_lam)', 'try:\n    check("1.1", lambda t: t)\nexcept Exception:\n    pass'))
    graded = grading.grade(path)
    res = graded.verdicts()
    assert res["1.1"][0] is False and "Exercise 1.1" in res["1.1"][1]


@pytest.mark.parametrize("stop", ["import sys\nsys.exit()", "exit(0)"])
def test_grading_survives_a_cell_that_exits(tmp_path, capsys, stop):
    bad = _answered(tmp_path, lambda t: t.replace("def cosine_lam(t):", f"{stop}\n\n\ndef cosine_lam(t):"))
    good = _answered(tmp_path, name="01_good.py")
    graded = grading.grade(bad)
    res = graded.verdicts()
    assert res["1.1"][0] is False and res["1.2"][0] and res["1.3"][0]
    assert student.main(["--grade", str(bad), str(good)]) == 1
    out = capsys.readouterr().out
    assert "01_good.py: 3/3 exercises pass" in out and f"{CH1.name}: 2/3 exercises pass" in out


def test_grading_goes_on_after_a_file_it_cannot_read(tmp_path, capsys):
    broken = tmp_path / "notes.ipynb"
    broken.write_text("{ not json")
    good = _answered(tmp_path)
    assert student.main(["--grade", str(broken), str(good)]) == 1
    out = capsys.readouterr().out
    assert "notes.ipynb: cannot grade" in out and "3/3 exercises pass" in out
    assert student.main(["--grade", str(good)]) == 0


def test_grading_reports_a_duplicated_exercise_cell(tmp_path, capsys):
    def duplicate(text):   # a copy of the stubbed cell of 1.1 pasted at the end
        return text + "\n" + student.strip_solutions(_cell_of(text, "1.1"))
    path = _answered(tmp_path, duplicate)
    graded = grading.grade(path)
    res = graded.verdicts()
    assert res["1.1"][0] is False and "not answered yet" in res["1.1"][1]
    assert any("1.1 is checked in cells" in n for n in graded.notes)
    assert student.main(["--grade", str(path)]) == 1
    assert "note: exercise 1.1 is checked in cells" in capsys.readouterr().out


def test_grading_a_cell_that_uses_an_earlier_cell_says_it_runs_alone(tmp_path):
    def split(text):   # the answer calls a helper of the previous cell
        return text.replace("def cosine_lam(t):", "def cosine_lam(t):\n    helper_from_an_earlier_cell()")
    graded = grading.grade(_answered(tmp_path, split))
    res = graded.verdicts()
    assert res["1.1"][0] is False
    assert "NameError" in res["1.1"][1] and "on its own" in res["1.1"][1]


def test_grading_names_the_chapter_from_the_title(tmp_path):
    graded = grading.grade(_answered(tmp_path, name="alice.py"))
    res = graded.verdicts()
    assert list(res) == ["1.1", "1.2", "1.3"] and all(ok for ok, _ in res.values())


def test_student_edition_says_each_exercise_cell_is_graded_alone(edition):
    for path in CHAPTERS:
        n = len(re.findall(r"^# ## Exercise \d+\.\d+:", path.read_text(), re.M))
        assert edition.joinpath(path.name).read_text().count(student.NOTE) == n
        assert n > 0 or "appendix" in path.stem          # appendices have no exercises
        md = "\n".join(c.source for c in nbformat.read(edition / f"{path.stem}.ipynb", as_version=4).cells
                       if c.cell_type == "markdown")
        assert md.count(student.NOTE) == n


# ---------------------------------------------------------------------------------------
# the install cell on Colab


def _run_install_cell(source, cwd, monkeypatch, existing=False):
    """Execute an install cell where emd_lib is missing, with git and pip faked: the pip arguments."""
    import importlib.util
    import sys

    pip = []

    def fake_run(cmd, check=False, **kw):
        if cmd[0] == "git":
            for sub in ("chapters", "emd_lib", "data", ".git"):
                (cwd / cmd[-1] / sub).mkdir(parents=True)
            (cwd / cmd[-1] / "chapters" / "01_x.py").write_text("### BEGIN SOLUTION\n")
        else:
            pip.append(cmd[cmd.index("install"):])
        return subprocess.CompletedProcess(cmd, 0)

    if existing:
        (cwd / "emd-book" / "chapters").mkdir(parents=True)
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    monkeypatch.setattr(sys, "path", list(sys.path))
    exec(compile(source, "<install>", "exec"), {})
    return pip


def test_student_install_cell_removes_the_cloned_chapters(tmp_path, monkeypatch):
    notebooks.write_notebooks(tmp_path, repo="https://example.org/emd-book.git", student=True)
    source = nbformat.read(tmp_path / f"{CHAPTERS[0].stem}.ipynb", as_version=4).cells[0].source
    work = tmp_path / "colab"
    work.mkdir()
    pip = _run_install_cell(source, work, monkeypatch)
    assert pip == [["install", "--quiet", "-e", "emd-book"]]
    assert not (work / "emd-book" / "chapters").exists() and not (work / "emd-book" / ".git").exists()
    assert (work / "emd-book" / "emd_lib").is_dir() and (work / "emd-book" / "data").is_dir()


def test_student_install_cell_leaves_a_folder_it_did_not_clone(tmp_path, monkeypatch):
    source = notebooks.install_cell("https://example.org/emd-book.git", student=True)
    _run_install_cell(source, tmp_path, monkeypatch, existing=True)
    assert (tmp_path / "emd-book" / "chapters").is_dir()


def test_full_install_cell_keeps_the_chapters(tmp_path, monkeypatch):
    _run_install_cell(notebooks.install_cell("https://example.org/emd-book.git"), tmp_path, monkeypatch)
    assert (tmp_path / "emd-book" / "chapters" / "01_x.py").exists()


def test_chapter_8_installs_the_scale_extra(tmp_path, monkeypatch):
    written = notebooks.write_notebooks(tmp_path, repo="https://example.org/emd-book.git")
    for path in written:
        source = nbformat.read(path, as_version=4).cells[0].source
        scale = path.name.startswith("08_")
        assert ('"emd-book[scale]"' in source) == scale and "[scale]" in source.splitlines()[1]
        if scale:
            work = tmp_path / "colab"
            work.mkdir()
            assert _run_install_cell(source, work, monkeypatch) == [["install", "--quiet", "-e", "emd-book[scale]"]]
    assert any(p.name.startswith("08_") for p in written)


def test_student_command_takes_the_repository_and_warns_without_one(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(notebooks, "default_repo", lambda: notebooks.PLACEHOLDER)
    assert student.main(["--out", str(tmp_path / "a")]) == 0
    assert "no repository URL known" in capsys.readouterr().err
    assert student.main(["--out", str(tmp_path / "b"), "--repo", "https://example.org/course.git"]) == 0
    assert "no repository URL known" not in capsys.readouterr().err
    first = nbformat.read(tmp_path / "b" / f"{CHAPTERS[0].stem}.ipynb", as_version=4).cells[0].source
    assert '"https://example.org/course.git"' in first
    make = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^student:.*\n\t(.*)", make, re.M).group(1)
    assert "$(if $(REPO),--repo $(REPO))" in recipe


def test_teaching_page_is_honest_about_hints_and_public_solutions():
    text = (ROOT / "docs" / "teaching.md").read_text()
    assert "never the answer" not in text
    assert "formula" in text
    assert "solutions are public" in text and "without `chapters/`" in text


def test_grading_works_where_the_clone_has_no_chapters(tmp_path, monkeypatch):
    # a student edition's install drops chapters/ from its clone: the grader runs cells in the submission's folder
    good = _answered(tmp_path, name="01_good.py")
    monkeypatch.setattr(grading, "ROOT", tmp_path / "clone")
    graded = grading.grade(good)
    res = graded.verdicts()
    assert all(ok for ok, _ in res.values()) and len(res) == 3



def test_student_edition_shows_points_and_minutes(edition):
    from emd_lib.exercises import registry

    reg = registry()
    for path in CHAPTERS:
        text = edition.joinpath(path.name).read_text()
        for ex_id in re.findall(r"^# ## Exercise (\d+\.\d+):", path.read_text(), re.M):
            line = student.points_line(ex_id)
            assert f"{reg[ex_id].minutes} minutes" in line and line in text, ex_id


WITH_EXERCISES = [p for p in CHAPTERS if "# ## Exercise " in p.read_text()]     # the appendices have none


@pytest.mark.parametrize("path", WITH_EXERCISES, ids=[p.stem for p in WITH_EXERCISES])
def test_full_edition_grades_full_marks_and_student_edition_none(path, edition):
    full = grading.grade(path)
    assert full.passed and full.score == full.max_score > 0, full.verdicts()
    stub = grading.grade(edition / path.name)
    assert stub.score == 0 and not any(ok for ok, _ in stub.verdicts().values())


def test_instructor_kit_agrees_with_the_registry():
    from emd_lib.book.instructors import plan_tables
    from emd_lib.exercises import registry

    text = (ROOT / "docs" / "instructors.md").read_text()
    assert plan_tables() in text, "regenerate the tables: python -m emd_lib.book.instructors"
    total = sum(ex.minutes for ex in registry().values())
    assert f"| **total** | | **{total}** |" in text          # the one-term course assigns every exercise
    assert "instructors.md" in (ROOT / "docs" / "teaching.md").read_text()
    for needle in ("arXiv:2405.16852", "Diff-Instruct", "ProlificDreamer", "Distribution Matching", "Elucidating",
                   "rubric", "Notation", "misconceptions"):
        assert needle.lower() in text.lower(), needle
