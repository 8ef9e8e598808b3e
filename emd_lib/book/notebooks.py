"""The chapters as ``.ipynb`` notebooks for Colab or any Jupyter (``make notebooks``).

    python -m emd_lib notebooks [--out _build/ipynb] [--repo URL]   (the student edition: python -m emd_lib student)

Each ``chapters/NN_*.py`` becomes ``NN_*.ipynb`` without outputs, with a first cell that
installs the library where it is missing (on Colab: clone the book's repository and
``pip install`` it, with the ``[scale]`` extra for chapter 8; where ``emd_lib`` is already
importable the cell does nothing). The repository is ``--repo``, else ``EMD_REPO_URL``, else
the clone's ``origin`` remote. The student edition (``python -m emd_lib student``) writes its
notebooks through :func:`write_notebooks` too (solutions replaced by a stub; its install cell
removes the clone's ``chapters/`` after installing).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from .. import ROOT

PLACEHOLDER = "https://github.com/OWNER/REPOSITORY.git"
INSTALL_TAG = "emd-install"

INSTALL_CELL = '''\
# Colab or a fresh Jupyter: install emd_lib, the book's library (does nothing where it is installed).
# {extras_note}
REPO = "{repo}"
import importlib.util, os, shutil, subprocess, sys
if importlib.util.find_spec("emd_lib") is None:
    cloned = not os.path.isdir("emd-book")
    if cloned:
        subprocess.run(["git", "clone", "--depth=1", REPO, "emd-book"], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "-e", "{target}"], check=True)
{student}    sys.path.insert(0, os.path.abspath("emd-book"))
    importlib.invalidate_caches()
'''

# The student edition's install cell drops the chapters (the book, solutions included) and the git
# history (which holds them too) from the clone it made; the library and data/ stay.
STUDENT_CLEANUP = '''\
    if cloned:  # the student edition: keep the library and data/, not the chapters with their solutions
        for folder in ("chapters", ".git"):
            shutil.rmtree(os.path.join("emd-book", folder), ignore_errors=True)
'''

# Chapters whose imports need an extra of pyproject.toml (diffusers and transformers for chapter 8).
EXTRAS = {"08": "scale"}


def install_cell(repo: str, extra: str = "", student: bool = False) -> str:
    """The first cell of a notebook: ``pip install`` the book's repository (with ``[extra]``)."""
    if extra:
        note = (f"This chapter installs emd-book[{extra}] (diffusers and transformers); "
                "the other chapters install emd-book without extras.")
    else:
        note = "This chapter installs emd-book without extras; chapter 8 adds [scale] (diffusers, transformers)."
    return INSTALL_CELL.format(repo=repo, extras_note=note, target=f"emd-book[{extra}]" if extra else "emd-book",
                               student=STUDENT_CLEANUP if student else "")


def warn_if_placeholder(repo: str) -> None:
    """Say on stderr when the install cell would clone the placeholder URL."""
    if repo == PLACEHOLDER:
        print(f"note: no repository URL known; the install cell clones {PLACEHOLDER}: pass --repo "
              "URL (or set EMD_REPO_URL) to point it at the book's repository", file=sys.stderr)


def default_repo() -> str:
    """``EMD_REPO_URL``, else the ``origin`` remote as an https URL, else a placeholder."""
    url = os.environ.get("EMD_REPO_URL", "").strip()
    if not url:
        try:
            url = subprocess.run(["git", "remote", "get-url", "origin"], cwd=ROOT, capture_output=True,
                                 text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            url = ""
    if url.startswith("git@") and ":" in url:  # git@host:owner/repo.git -> https://host/owner/repo.git
        host, path = url[4:].split(":", 1)
        url = f"https://{host}/{path}"
    return url or PLACEHOLDER


NBGRADER_SCHEMA = 3


def add_nbgrader(nb):
    """Mark a chapter notebook's exercises the way nbgrader does: each exercise's code cell is an
    autograded answer cell (``grade_id`` ``exercise_N_k_answer``), followed by a locked autograder
    test cell (``grade_id`` ``exercise_N_k``, points = the exercise's weight in the registry) that
    repeats the exercise's ``check`` call. Returns the notebook."""
    import nbformat

    from ..exercises import registry
    from .grading import CHECK, EXERCISE_HEADING

    reg = registry()
    cells, heading = [], None
    for cell in nb.cells:
        cells.append(cell)
        if cell.cell_type == "markdown":
            found = EXERCISE_HEADING.findall(cell.source)
            heading = found[-1] if found else None
            continue
        ex_id, heading = heading, None
        if cell.cell_type != "code" or ex_id not in reg or ex_id not in CHECK.findall(cell.source):
            continue
        ex = reg[ex_id]
        calls = [line for line in cell.source.splitlines() if CHECK.search(line) and ex_id in line]
        cell.metadata["nbgrader"] = {"grade": False, "solution": True, "locked": False,
                                     "grade_id": f"{ex.grade_id}_answer", "schema_version": NBGRADER_SCHEMA}
        test = nbformat.v4.new_code_cell(
            f"# The graded check of exercise {ex_id} (nbgrader runs this locked cell; it repeats the call above)\n"
            "from emd_lib.exercises import check\n\n" + "\n".join(calls))
        test.metadata["nbgrader"] = {"grade": True, "solution": False, "locked": True, "points": ex.weight,
                                     "grade_id": ex.grade_id, "schema_version": NBGRADER_SCHEMA}
        cells.append(test)
    nb.cells = cells
    return nb


def to_notebook(text: str, repo: str, extra: str = "", student: bool = False):
    """A chapter's py:percent source as a notebook with the install cell first and nbgrader's
    metadata on its exercises (:func:`add_nbgrader`)."""
    import jupytext
    import nbformat

    from .build import KERNELSPEC

    nb = add_nbgrader(jupytext.reads(text, fmt="py:percent"))
    cell = nbformat.v4.new_code_cell(install_cell(repo, extra, student).rstrip("\n"))
    cell.metadata["tags"] = [INSTALL_TAG]
    nb.cells.insert(0, cell)
    nb.metadata = {
        "kernelspec": dict(KERNELSPEC),
        "language_info": {"name": "python"},
        "colab": {"provenance": []},
    }
    nbformat.validate(nb)
    return nb


def write_notebooks(out: Path, repo: str | None = None, student: bool = False,
                    src: Path | None = None) -> list[Path]:
    """Every chapter of ``src`` as a notebook in ``out``. ``student=True`` gives the student edition's
    install cell and grading metadata; the sources are taken as they are (the student edition
    passes its stubbed copies as ``src``)."""
    import nbformat

    repo = repo or default_repo()
    out.mkdir(parents=True, exist_ok=True)
    written = []
    from .build import chapters

    for p in chapters(src=src):
        text = p.read_text()
        dest = out / (p.stem + ".ipynb")
        nbformat.write(to_notebook(text, repo, EXTRAS.get(p.name[:2], ""), student), dest)
        written.append(dest)
    return written


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m emd_lib notebooks", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "_build" / "ipynb"))
    ap.add_argument("--repo", default=None, help="git URL the install cell clones on Colab")
    args = ap.parse_args(argv)
    repo = args.repo or default_repo()
    warn_if_placeholder(repo)
    for path in write_notebooks(Path(args.out), repo):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
