"""What a chapter shows: numbers glued into the prose, and tables.

``glue(name, value, fmt=None, fast=None)`` hands a computed number to the book's prose
(MyST-NB's glue): the chapter's Markdown then writes ``{glue:text}`name``` (or
``{glue:text}`name:.3f``` for an unformatted number) and the rendered page shows the value of
this build, hiding the cell's own output. ``fast="200 updates"`` marks a number that fast mode
changes: under ``EMD_FAST=1`` the glued text reads ``0.142 (fast mode: 200 updates)``. In plain
Jupyter and under nbval, where Markdown shows the role's name, the cell prints ``name: text``
instead, so the reader finds the number the prose names; the chapter runs the same everywhere.

``table(rows, columns)`` is a small table that Jupyter and the book draw as an HTML table and a
terminal prints as aligned text (no pandas)::

    table([("EMD-1", 0.12), ("EMD-8", 0.05)], ["method", "MMD"], fmt="{:.3f}")
"""
from __future__ import annotations

import html
import os
import re

#: set by ``python -m emd_lib book`` in the kernels that execute the chapters
BUILD_ENV = "EMD_BOOK_BUILD"


def in_book_build() -> bool:
    """True while ``python -m emd_lib book`` executes the chapter."""
    return os.environ.get(BUILD_ENV, "") not in ("", "0")


class _Text(str):
    """Formatted text to glue. MyST-NB's ``{glue:text}`` role reads a glued value's repr back
    with ``ast.literal_eval``, so the repr is the quoted string: the text comes back as it was
    (an unquoted "0.150" would come back as the number 0.15 and lose its zero)."""

    def __repr__(self) -> str:
        return repr(str(self))


#: the ``fast`` remarks a kernel has glued in full; later numbers with the same remark say only
#: "(fast mode)", so a paragraph of shortened numbers does not repeat the remark each time
_NOTED: set[str] = set()


def glue(name: str, value, fmt: str | None = None, display: bool = False, fast: str | None = None):
    """Make ``value`` available to the prose as ``{glue:text}`name```. Returns None, so a cell
    that ends with a glue call shows no stray value.

    ``fmt`` (a format spec such as ``".3f"``, ``","`` or ``".0%"``) glues the formatted text
    instead of the value. ``fast`` says what fast mode shortens; under ``EMD_FAST=1`` it is
    appended to the glued text as ``" (fast mode: FAST)"`` the first time, ``" (fast mode)"`` after
    (the value is glued as text then).
    In a book build the value goes to MyST-NB's glue and the cell shows nothing (``display=True``
    shows it there too); elsewhere the cell prints ``name: text``."""
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ValueError(f"glue name {name!r}: use letters, digits and underscores, as the prose's "
                         "{glue:text}`name` role needs")
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        value = value.item()           # a NumPy or torch scalar glues as the Python number
    text = format(value, fmt) if fmt else (value if isinstance(value, str) else None)
    note = fast_note(fast) if fast else ""
    if note and fast in _NOTED:
        note = " (fast mode)"          # the chapter has said what fast mode shortens
    elif note:
        _NOTED.add(fast)
    if note:
        text = (text if text is not None else str(value)) + note
    shown = _Text(text) if text is not None else value
    if in_book_build():
        try:
            from myst_nb import glue as _glue
        except ImportError:  # pragma: no cover - the book extra is not installed
            _glue = None
        if _glue is not None:
            _glue(name, shown, display=display)
            return None
    print(f"{name}: {shown}")
    return None


def _cell(value, fmt) -> str:
    if isinstance(value, str):
        return value
    if fmt is None:
        return f"{value:.4g}" if isinstance(value, float) else str(value)
    return fmt(value) if callable(fmt) else fmt.format(value)


class Table:
    """Rows and column names, shown as HTML (Jupyter, the book), Markdown or aligned text.

    ``fmt`` formats every number (``"{:.3f}"`` or a function); a dict maps column names to
    formats. ``title`` is a caption. Strings are shown as they are."""

    def __init__(self, rows, columns, fmt=None, title: str | None = None):
        self.columns = [str(c) for c in columns]
        self.title = title
        fmts = fmt if isinstance(fmt, dict) else {c: fmt for c in self.columns}
        self.rows = []
        for row in rows:
            row = list(row.values()) if isinstance(row, dict) else list(row)
            if len(row) != len(self.columns):
                raise ValueError(f"a row has {len(row)} values for {len(self.columns)} columns: {row}")
            self.rows.append([_cell(v, fmts.get(c)) for v, c in zip(row, self.columns)])
        self._numeric = [all(_is_number(r[j]) for r in self.rows) for j in range(len(self.columns))]

    def __len__(self) -> int:
        return len(self.rows)

    def _repr_html_(self) -> str:
        def align(j):
            return ' style="text-align: right"' if self._numeric[j] else ""

        head = "".join(f"<th{align(j)}>{html.escape(c)}</th>" for j, c in enumerate(self.columns))
        body = "".join("<tr>" + "".join(f"<td{align(j)}>{html.escape(v)}</td>" for j, v in enumerate(r))
                       + "</tr>" for r in self.rows)
        cap = f"<caption>{html.escape(self.title)}</caption>" if self.title else ""
        return (f'<table class="emd-table">{cap}<thead><tr>{head}</tr></thead>'
                f"<tbody>{body}</tbody></table>")

    def _repr_markdown_(self) -> str:
        def esc(s):
            return s.replace("|", "\\|")

        lines = ["| " + " | ".join(esc(c) for c in self.columns) + " |",
                 "|" + "|".join("---:" if n else "---" for n in self._numeric) + "|"]
        lines += ["| " + " | ".join(esc(v) for v in r) + " |" for r in self.rows]
        return (f"**{self.title}**\n\n" if self.title else "") + "\n".join(lines)

    def __str__(self) -> str:
        widths = [max([len(c)] + [len(r[j]) for r in self.rows]) for j, c in enumerate(self.columns)]

        def line(cells):
            return "  ".join(v.rjust(w) if self._numeric[j] else v.ljust(w)
                             for j, (v, w) in enumerate(zip(cells, widths))).rstrip()

        out = ([self.title] if self.title else []) + [line(self.columns), line(["-" * w for w in widths])]
        return "\n".join(out + [line(r) for r in self.rows])

    __repr__ = __str__


def _is_number(s: str) -> bool:
    try:
        float(s.replace(",", "").rstrip("%"))
        return True
    except ValueError:
        return False


def table(rows, columns, fmt=None, title: str | None = None) -> Table:
    """A :class:`Table`: the last expression of a cell, it is drawn as an HTML table."""
    return Table(rows, columns, fmt=fmt, title=title)


def fast_note(what: str) -> str:
    """A remark to print beside a number that fast mode changes: ``" (fast mode: WHAT)"`` under
    ``EMD_FAST=1``, else nothing."""
    from .. import is_fast

    return f" (fast mode: {what})" if is_fast() else ""
