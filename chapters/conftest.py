"""Run the py:percent chapters under nbval without writing .ipynb files.

nbval collects only ``.ipynb``; here each ``chapters/NN_*.py`` is read with jupytext and
handed to nbval's collector, so ``pytest --nbval-lax chapters`` executes every chapter.
"""
import re

import jupytext
import nbval.plugin as nbval_plugin
import pytest

CHAPTER = re.compile(r"^\d\d[a-z]?_.+\.py$")  # 04_x.py, and an appendix 04b_x.py


class _JupytextNbformat:
    """nbformat, except that ``read`` goes through jupytext."""

    def __getattr__(self, name):
        import nbformat
        return getattr(nbformat, name)

    @staticmethod
    def read(path, as_version=4):
        return jupytext.read(path)


class JupytextNbFile(nbval_plugin.IPyNbFile):
    def collect(self):
        real = nbval_plugin.nbformat
        nbval_plugin.nbformat = _JupytextNbformat()
        try:
            yield from super().collect()
        finally:
            nbval_plugin.nbformat = real


def pytest_collect_file(file_path, parent):
    opt = parent.config.option
    if (opt.nbval or opt.nbval_lax) and CHAPTER.match(file_path.name):
        return JupytextNbFile.from_parent(parent, path=file_path)
