"""The chapters as text: their length, the numbers their prose glues, and no printed tables.

Each chapter's Markdown names computed numbers with MyST-NB roles (``{glue:text}`name```); a
role whose name no ``glue(...)`` call of the same chapter makes would show a warning and a hole
in the book, and a glued name the prose never uses only adds a printed line. Tables are drawn
with ``emd_lib.book.table`` (an HTML table in the book), not printed with padded f-strings.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

CHAPTERS = sorted((Path(__file__).resolve().parents[1] / "chapters").glob("[0-9][0-9]*_*.py"))
ROLE = re.compile(r"\{glue(?::[a-z]+)?\}`([^`:]+)(?::[^`]*)?`")
#: a printed table's line: two replacement fields padded to a width ({name:>9} ... {tv:8.3f})
WIDTH_FIELD = re.compile(r"\{[^{}]*:[<>^]?\d+(?:\.\d+)?[a-z%]?\}")


def markdown(path: Path) -> str:
    """The chapter's Markdown cells (the commented lines after ``# %% [markdown]``)."""
    out, inside = [], False
    for line in path.read_text().splitlines():
        if line.startswith("# %%"):
            inside = "[markdown]" in line
            continue
        if inside and line.startswith("#"):
            out.append(line[2:] if line.startswith("# ") else line[1:])
    return "\n".join(out)


def glued_names(path: Path) -> list[str]:
    """Regular expressions for the names a chapter glues: a literal name, or an f-string name
    whose replacement fields match any name part (``f"std_{m}"`` -> ``std_\\w+``)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not (isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "glue"
                and node.args):
            continue
        arg = node.args[0]
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            names.append(re.escape(arg.value))
        elif isinstance(arg, ast.JoinedStr):
            names.append("".join(re.escape(v.value) if isinstance(v, ast.Constant) else r"\w+" for v in arg.values))
    return names


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem[:2])
def test_every_glued_name_in_the_prose_is_made_by_the_chapter(path):
    names = glued_names(path)
    missing = [key for key in ROLE.findall(markdown(path)) if not any(re.fullmatch(n, key) for n in names)]
    assert not missing, f"{path.name}: the prose names {missing}, which no glue(...) call makes"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem[:2])
def test_every_literal_glued_name_is_used_by_the_prose(path):
    used = set(ROLE.findall(markdown(path)))
    literal = [n for n in glued_names(path) if "\\w+" not in n]
    unused = [re.sub(r"\\(.)", r"\1", n) for n in literal if not any(re.fullmatch(n, k) for k in used)]
    assert not unused, f"{path.name}: glued but never named in the prose: {unused}"


def test_a_printed_table_row_is_recognised():
    assert len(WIDTH_FIELD.findall('print(f"{name:>9} {tv:8.3f} {x:.3f}")')) == 2
    assert len(WIDTH_FIELD.findall("print(f\"{'TV':>13} | {'modes':>9}\")")) == 2
    assert len(WIDTH_FIELD.findall('print(f"light mass {m:.3f}, TV {tv:+.2f} of {n:,}")')) == 0


def test_the_role_pattern_reads_both_spellings(tmp_path):
    f = tmp_path / "01_x.py"
    f.write_text('# %% [markdown]\n# a {glue:text}`a_b:.3f` and {glue}`c` and {glue:text}`s_di`\n'
                 '# %%\nglue("a_b", 1.0)\nglue("c", 2)\nfor m in "di", "emd":\n    glue(f"s_{m}", 3)\n')
    assert ROLE.findall(markdown(f)) == ["a_b", "c", "s_di"]
    assert glued_names(f) == ["a_b", "c", r"s_\w+"]


def test_chapters_keep_their_length():
    lengths = {p.name: len(p.read_text().splitlines()) for p in CHAPTERS}
    over = {n: k for n, k in lengths.items() if k > (800 if n.startswith("04_") else 900)}
    assert not over, f"chapters over their length (chapter 4: 800 lines, others 900): {over}"


def test_prose_states_its_conclusions():
    said = {p.name: len(re.findall(r"printed (above|below)", p.read_text())) for p in CHAPTERS}
    assert sum(said.values()) <= 3, f"'printed above/below' instead of the number: {said}"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem[:2])
def test_no_table_is_printed_by_hand(path):
    rows = [i + 1 for i, line in enumerate(path.read_text().splitlines()) if len(WIDTH_FIELD.findall(line)) >= 2]
    assert not rows, (f"{path.name}, lines {rows}: a table printed with padded f-strings; "
                      "show it with emd_lib.book.table(rows, columns) (an HTML table in the book)")


def test_load_result_names_its_source_and_refuses_an_unknown_name(capsys):
    from emd_lib.experiments import load_result

    rec = load_result("ch02_far")
    assert rec["runs"] and capsys.readouterr().out.startswith("ch02_far.json: `python -m emd_lib")
    assert load_result("ch02_far.json", quiet=True)["command"] == rec["command"]
    assert capsys.readouterr().out == ""
    with pytest.raises(FileNotFoundError, match="no stored result nope.json.*ch02_far"):
        load_result("nope")


def full_values(source: str) -> set[float]:
    """The numbers in the first argument of every ``fast_or(full, fast)`` call of a chapter."""
    out = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "fast_or" and node.args:
            out |= {float(c.value) for c in ast.walk(node.args[0])
                    if isinstance(c, ast.Constant) and isinstance(c.value, (int, float)) and not isinstance(c.value, bool)}
    return out


def unbacked_full_values(source: str) -> list[tuple[int, float]]:
    """``(line, number)`` for each number a fast-mode remark says the full run uses ("the full run
    uses 400 and 3000") that is not the full value of any ``fast_or`` call in the chapter."""
    full = full_values(source)
    out = []
    for m in re.finditer(r"the full run uses ([^\"')]*)", source):
        line = source[:m.start()].count("\n") + 1
        out += [(line, v) for v in (float(x.replace(",", "")) for x in re.findall(r"\d[\d,]*(?:\.\d+)?", m.group(1)))
                if v not in full]
    return out


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem[:2])
def test_what_a_fast_remark_says_of_the_full_run_is_what_the_full_run_uses(path):
    wrong = unbacked_full_values(path.read_text())
    assert not wrong, (f"{path.name}: a fast-mode remark names a full-run value that no fast_or(full, fast) "
                       f"call of the chapter uses (line, value): {wrong}")


def test_an_unbacked_full_value_is_found():
    src = 'N = fast_or(4000, 1000)\nB = fast_or(2 ** 8, 64)\nnote = f"{N} samples; the full run uses 4,000 and 500"\n'
    assert unbacked_full_values(src) == [(3, 500.0)]
