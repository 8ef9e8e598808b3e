"""The project's own rules: requirements agree, CI runs the README's test command, no notebooks in git."""
import json
import re
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _name(req: str) -> str:
    return re.split(r"[<>=!~ \[]", req.strip(), maxsplit=1)[0].lower()


def test_environment_yml_lists_the_same_requirements_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"] + [d for extra in project["optional-dependencies"].values() for d in extra]
    text = (ROOT / "environment.yml").read_text()
    pip_block = re.findall(r"^\s+- ([a-zA-Z][^\s#]*)\s*$", text.split("- pip:")[1], re.M)
    env = {r for r in pip_block if not r.startswith("-e")}
    assert {_name(d): d for d in deps} == {_name(e): e for e in env}


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci/run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make book" in readme


def test_torch_is_pinned_in_the_install_step_only():
    assert 'torch==2.13.0' in (ROOT / "Makefile").read_text()
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert not any("==" in d for d in deps), "dependencies must be lower bounds"


def test_no_notebooks_are_tracked():
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout (an exported tree): nothing is tracked")
    out = subprocess.run(["git", "ls-files", "*.ipynb"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


def test_readme_is_a_newcomers_page_whose_links_resolve():
    """The README stays short (results live in the book and docs/), and every file it links exists."""
    text = (ROOT / "README.md").read_text()
    assert len(text.encode()) < 10_000, "README.md is over 10 KB: move results and reference to docs/"
    links = re.findall(r"\]\(([^)#:]+)\)", text)
    assert "docs/commands.md" in links and "docs/results.md" in links
    for link in links:
        assert (ROOT / link).exists(), f"README links {link}, which does not exist"


def test_the_result_tables_of_the_docs_are_generated_from_the_stored_results():
    from emd_lib.book import results

    page = (ROOT / "docs" / "results.md").read_text()
    assert results.main(["--check"]) == 0, "docs/results.md is stale: run python -m emd_lib.book.results"
    assert page.count("<!-- generated:") == len(results.TABLES)
    tampered = page.replace("| ring8 | EMD-8 | 3000 | 8/8 | 0.011 |", "| ring8 | EMD-8 | 3000 | 8/8 | 0.999 |")
    assert tampered != page and results.render(tampered) == page      # a hand edit inside a table is undone
    ring8 = json.loads((ROOT / "data" / "results" / "toy_ring8_emd.json").read_text())
    assert f"| {ring8['tv']:.3f} | {ring8['within_3sd']:.3f} |" in results.toy_table()


@pytest.mark.parametrize("name", sorted(__import__("emd_lib.__main__", fromlist=["COMMANDS"]).COMMANDS))
def test_every_command_answers_help_under_python_m_emd_lib(name, capsys):
    """``python -m emd_lib --help`` lists the command and ``python -m emd_lib NAME --help`` explains it."""
    from emd_lib.__main__ import main, usage

    assert f"  {name} " in usage()
    try:
        rc = main([name, "--help"])
    except SystemExit as e:                    # argparse's --help
        rc = e.code
    assert rc in (0, None)
    assert "usage:" in capsys.readouterr().out


def test_the_library_layers_import_nothing_from_a_command():
    """The method imports only itself; nothing outside emd_lib/commands imports a command module."""
    import ast

    for path in (ROOT / "emd_lib").rglob("*.py"):
        rel = path.relative_to(ROOT / "emd_lib")
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            target = ("." * node.level) + (node.module or "")
            names = [a.name for a in node.names]
            if rel.parts[0] != "commands":
                assert "commands" not in target.split(".") and "commands" not in names, f"{rel} imports {target}"
            if len(rel.parts) == 1 and rel.name != "__main__.py":        # the method: only itself
                assert node.level <= 1 and not any(target.lstrip(".").startswith(p) for p in
                                                   ("runs", "images", "scale", "book", "exercises", "experiments")), \
                    f"the method's {rel} imports {target}"
