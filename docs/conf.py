"""Sphinx configuration of the book (MyST-NB, sphinx-book-theme, sphinxcontrib-bibtex).

``python -m emd_lib book`` (``make book``) stages the sources in ``_build/src`` (the chapters
as tagged notebooks, the pages of ``docs/``), executes the chapters into a jupyter-cache, then
runs ``sphinx-build -c docs _build/src _build/html``. The builder passes what changes between
builds through the environment: ``EMD_BOOK_CACHE`` (the jupyter-cache of this mode),
``EMD_BOOK_STATIC`` (the folder holding the local MathJax) and ``EMD_FAST``.
Nothing here reaches the network: MathJax 2 is a local copy, the theme's fonts are its own.
"""
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from emd_lib import is_fast  # noqa: E402  (this clone's emd_lib, which the extension below imports too)

FAST = is_fast()
BUILD = Path(os.environ.get("EMD_BOOK_OUT", ROOT / "_build"))

project = "EM Distillation, a runnable textbook"
author = "the emd_lib authors"
copyright = "the emd_lib authors, MIT licence"
language = "en"

extensions = [
    "myst_nb",
    "sphinx_book_theme",
    "sphinx_design",
    "sphinx_togglebutton",
    "sphinxcontrib.bibtex",
    "sphinx.ext.mathjax",
    "emd_lib.book.sphinx_ext",
]

exclude_patterns = ["_build", "**.ipynb_checkpoints", "jupyter_execute"]
source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb"}
root_doc = "index"

# MyST: $...$ and $$...$$ (numbered with a label: $$ ... $$ (label)), \begin{align} ...,
# ::: admonitions, {glue} roles, definition lists, headings as anchors
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist", "substitution",
                          "attrs_inline", "html_image"]
myst_dmath_double_inline = True
myst_heading_anchors = 3
myst_update_mathjax = False          # MathJax 2 below is configured by hand

# Chapters are executed by the builder into this jupyter-cache; MyST-NB reads them from it.
nb_execution_mode = "cache"
nb_execution_cache_path = os.environ.get("EMD_BOOK_CACHE",
                                         str(BUILD / "jupyter_cache" / ("fast" if FAST else "full")))
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_execution_timeout = 3600
nb_output_stderr = "remove"          # progress bars and library warnings stay out of the pages
nb_merge_streams = True
nb_number_source_lines = False
nb_render_markdown_format = "myst"

# Every displayed equation is numbered; the numbers are per chapter: (4.2) (see sphinx_ext).
numfig = True
math_numfig = True
math_number_all = True
math_eqref_format = "({number})"

bibtex_bibfiles = ["references.bib"]
bibtex_default_style = "plain"
bibtex_reference_style = "author_year"

# MathJax 2 from the jupyter-server-mathjax package, copied to _static/mathjax by the builder.
mathjax_path = "mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full,Safe"
mathjax2_config = {
    "tex2jax": {"inlineMath": [["\\(", "\\)"]], "displayMath": [["\\[", "\\]"]],
                "processEscapes": True, "processEnvironments": True,
                "ignoreClass": "document|tex2jax_ignore|mathjax_ignore",
                "processClass": "math|output_area|tex2jax_process|mathjax_process|output"},
    "TeX": {"equationNumbers": {"autoNumber": "none"}},
    "HTML-CSS": {"availableFonts": [], "imageFont": None, "preferredFont": None,
                 "webFont": "STIX-Web", "linebreaks": {"automatic": True}},
    "displayAlign": "center", "messageStyle": "none", "showMathMenu": False,
}

html_theme = "sphinx_book_theme"
html_title = "EM Distillation"
html_static_path = [str(HERE / "_static")]
_mathjax_static = os.environ.get("EMD_BOOK_STATIC")
if _mathjax_static:
    html_static_path.append(_mathjax_static)
html_css_files = ["book.css"]
html_last_updated_fmt = None
html_copy_source = False
html_show_sourcelink = False
html_theme_options = {
    "home_page_in_toc": True,
    "show_toc_level": 2,
    "use_download_button": False,
    "use_fullscreen_button": False,
    "use_repository_button": False,
    "navigation_with_keys": False,
    "show_navbar_depth": 1,
    "collapse_navbar": False,
    "extra_footer": "",
}
html_sidebars = {"**": ["navbar-logo.html", "search-button-field.html", "sbt-sidebar-nav.html"]}
suppress_warnings = ["mystnb.unknown_mime_type", "myst.header", "misc.highlighting_failure"]
