"""The book's tools: the build (``make book``), JupyterLab, the Colab notebooks, the student
edition, grading, and what chapters use to show results (:func:`glue`, :func:`table`)."""
from .display import Table, fast_note, glue, in_book_build, table  # noqa: F401
