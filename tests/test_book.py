"""The rendered book (Sphinx, MyST-NB, sphinx-book-theme): contents, search, numbered equations,
bibliography, notation, run times, tags, glue, tables, offline pages, and a real browser.

A quick book is built once from three tiny chapters (a figure, equations with and without a
label, a citation, glue, a table, an assert cell, an exercise, an appendix chapter ``02b``) in
fast mode; the real chapters go through the same code in ``make book``. The browser test drives
headless Chromium (Debian's package) through the DevTools protocol: no broken image, every
equation typeset by the local MathJax, nothing loaded from the network, the search page finds a
chapter, and screenshots in ``_build/browser/``.
"""
import base64
import json
import os
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

from emd_lib.book import build as book
from emd_lib.book import glue, table

ROOT = Path(__file__).resolve().parent.parent

TINY = r'''# %% [markdown]
# # Chapter 1: A tiny chapter
#
# Noising in log-SNR, inline $\lambda = \log \alpha^2 / \sigma^2$, and on a line of its own
#
# $$x_t = \alpha x + \sigma \epsilon, \qquad \epsilon \sim \mathcal N(0, I).$$
#
# ## 1.1 A figure

# %%
import matplotlib.pyplot as plt

fig, ax = plt.subplots(figsize=(4, 2.5))
ax.plot([0, 1, 2, 3], [0, 1, 4, 9], "o-")
ax.set_title(r"$\sigma^2 = e^{-\lambda}$")
plt.show()

# %% [markdown]
# ## 1.2 Text & the score $\nabla \log p$
#
# The score is $\nabla_x \log p(x)$ and Tweedie's formula {cite:p}`efron2011tweedie` reads
# $$\hat x = \frac{x_t + \sigma^2 \nabla \log p_t(x_t)}{\alpha}.$$
#
# $$
# \lambda^* = -6
# $$ (eq-tiny-lam)
#
# The generator starts at {eq}`eq-tiny-lam`, as in EMD {cite:p}`xie2024emd`.

# %%
print("fast mode:", __import__("emd_lib").is_fast())

# %%
assert 1 + 1 == 2, "the guarded number"
assert "a hidden guard" != ""

# %%
visible_work = 6 * 7
print("the answer is", visible_work)
# the guard
assert visible_work == 42, "trailing_guard"

# %%
from emd_lib.book import glue, table

glue("tiny_ratio", 3.14159)
glue("tiny_e", 2.71828, fmt=".3f")
glue("tiny_w", 0.15, fmt=".3f")
glue("tiny_np", __import__("numpy").float64(0.25))
glue("tiny_light", 0.1234, fmt=".3f", fast="20 updates")
table([("EMD-8", 0.051234), ("Diff-Instruct", 0.2)], ["method", "MMD"], fmt="{:.3f}")

# %%
tiny_v = 1 / 1.0125
glue("tiny_last", tiny_v, fmt=".2f")

# %% [markdown]
# The ratio is {glue:text}`tiny_ratio:.2f`, and e is about {glue:text}`tiny_e`. The light mass is
# {glue:text}`tiny_light` of {glue:text}`tiny_w`, a quarter is {glue:text}`tiny_np:.2f`, the last
# {glue:text}`tiny_last`.
#
# :::{admonition} Our convention
# :class: note
# The step is ours.
# :::
#
# ## Exercise 1.1: a stub

# %%
def check(id, fn):
    print(f"Exercise {id}: correct.")
    return True


def answer():
    ### BEGIN SOLUTION
    return "the hidden solution"
    ### END SOLUTION


check("1.1", answer)

# %%
# hide
bookkeeping_line = "a bookkeeping cell behind a toggle"
'''

SECOND = '''# %% [markdown]
# # Chapter 2: Another chapter
#
# ## 2.1 Only text
#
# $a^2 + b^2 = c^2$

# %%
1 + 1
'''

APPENDIX = '''# %% [markdown]
# # Appendix 2b: A derivation
#
# $$e^{i \\pi} + 1 = 0$$
#
# $$a = b$$

# %%
print("appendix ran")
'''


def _build(src: Path, out: Path, *extra) -> int:
    env = {"EMD_FAST": "1", "MPLBACKEND": "Agg"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return book.main(["--chapters", str(src), "--out", str(out), *extra])
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


@pytest.fixture(scope="module")
def book_dirs(tmp_path_factory):
    src = tmp_path_factory.mktemp("chapters")
    (src / "01_tiny.py").write_text(TINY)
    (src / "02_more.py").write_text(SECOND)
    (src / "02b_appendix.py").write_text(APPENDIX)
    out = tmp_path_factory.mktemp("build")
    assert _build(src, out, "--api", "emd_lib.schedules") == 0
    return src, out


@pytest.fixture(scope="module")
def built(book_dirs):
    return book_dirs[1] / "html"


def test_index_lists_the_chapters_in_name_order_with_run_times(built):
    index = (built / "index.html").read_text()
    links = [m for m in re.findall(r'href="(0[^"#]*\.html)"', index)]
    firsts = list(dict.fromkeys(links))
    assert firsts[:3] == ["01_tiny.html", "02_more.html", "02b_appendix.html"], firsts
    assert "Chapter 1: A tiny chapter" in index and "Appendix 2b: A derivation" in index
    assert re.search(r"\d+\.\d s", index), "each chapter's run time"
    assert 'href="teaching.html"' in index and 'href="api.html"' in index
    assert 'href="notation.html"' in index and 'href="bibliography.html"' in index
    timings = json.loads((built / "timings.json").read_text())
    assert timings["fast"] is True
    assert [r["file"] for r in timings["chapters"]] == ["01_tiny", "02_more", "02b_appendix"]
    assert all(r["seconds"] > 0 and r["fast"] for r in timings["chapters"])


def test_search_page_and_general_index(built):
    assert "searchindex.js" in (built / "search.html").read_text()
    index = (built / "searchindex.js").read_text()
    assert "tiny" in index.lower() and "01_tiny" in index
    genindex = (built / "genindex.html").read_text()
    assert 'href="notation.html#term-score-gap"' in genindex, "the notation page's terms are in the index"


def test_chapter_pages_hold_figures_equations_run_time_and_navigation(built):
    page = (built / "01_tiny.html").read_text()
    imgs = re.findall(r'<img [^>]*src="([^"]+)"', page)
    assert any((built / i).exists() and i.endswith(".png") for i in imgs), imgs
    assert r"\mathcal N(0, I)" in page, "the equations are left for MathJax"
    assert re.search(r"Executed in \d+\.\d s \(fast mode\)", page)
    assert 'href="index.html"' in page and 'href="02_more.html"' in page
    assert "fast mode: True" in page
    assert "Our convention" in page and "admonition" in page


def test_equations_are_numbered_per_chapter_and_referenced(built):
    page = (built / "01_tiny.html").read_text()
    assert re.findall(r'class="eqno">\((1\.\d)\)', page) == ["1.1", "1.2", "1.3"]
    assert 'id="equation-eq-tiny-lam"' in page
    ref = re.search(r'<a class="reference internal" href="#equation-eq-tiny-lam">(.*?)</a>', page, re.S)
    assert ref and "(1.3)" in ref.group(1)
    appendix = (built / "02b_appendix.html").read_text()
    assert re.findall(r'class="eqno">\(([^)]*)\)', appendix) == ["2b.1", "2b.2"]


def test_bibliography_and_citations(built):
    bib = (built / "bibliography.html").read_text()
    for title in ["EM Distillation for One-step Diffusion Models", "Diff-Instruct", "ProlificDreamer",
                  "One-step Diffusion with Distribution Matching Distillation",
                  "Elucidating the Design Space of Diffusion-Based Generative Models",
                  "Tweedie", "Score-Based Generative Modeling", "Denoising Diffusion Probabilistic Models"]:
        assert title in bib, title
    page = (built / "01_tiny.html").read_text()
    assert re.search(r'<a class="reference internal" href="bibliography.html#[^"]+"[^>]*>Xie', page)


def test_notation_writing_and_execution_pages(built):
    notation = (built / "notation.html").read_text()
    for sym in [r"\lambda^*", r"g_\theta", r"s_\psi", r"\rho", r"\gamma", r"w(\lambda)"]:
        assert sym in notation, sym
    assert "glue:text" in (built / "writing.html").read_text()
    stats = (built / "execution.html").read_text()
    assert "01_tiny" in stats and "02b_appendix" in stats and "cache" in stats


def test_glue_tables_and_tags_on_the_page(built):
    page = (built / "01_tiny.html").read_text()
    assert re.search(r"The ratio is <span[^>]*>3\.14</span>", page), "the glued number in the prose"
    assert re.search(r"e is about <span[^>]*>2\.718</span>", page), "a glued formatted text, no quotes"
    assert re.search(r"of <span[^>]*>0\.150</span>", page), "a formatted text keeps its trailing zero"
    assert re.search(r"a quarter is <span[^>]*>0\.25</span>", page), "a NumPy scalar glues as a number"
    assert re.search(r"light mass is\s+<span[^>]*>0\.123 \(fast mode: 20 updates\)</span>", page), \
        "a number that fast mode changes says so beside it"
    assert "tiny_ratio:" not in page, "in the book the glue cell prints nothing"
    assert "0.98765" not in page and re.search(r"the last\s+<span[^>]*>0\.99</span>", page), \
        "a cell that ends with glue shows no stray value"
    assert "Built with <code>EMD_FAST=1</code>" in page, "a fast build says its numbers are shortened runs'"
    assert '<table class="emd-table">' in page and "0.051" in page
    assert re.search(r'class="cell tag_hide-input[^"]*"[^>]*>(?:(?!class="cell ).)*the guarded number', page, re.S), \
        "a cell of asserts is behind a toggle"
    assert re.search(r'class="cell tag_hide-input[^"]*"[^>]*>(?:(?!class="cell ).)*trailing_guard', page, re.S), \
        "the asserts that end a cell are split off and hidden"
    assert not re.search(r'class="cell tag_hide-input[^"]*"[^>]*>(?:(?!class="cell ).)*the answer is', page, re.S)
    assert "the answer is 42" in page
    assert re.search(r'class="cell tag_hide-input[^"]*"[^>]*>(?:(?!class="cell ).)*the hidden solution', page, re.S), \
        "an exercise's solution is behind a toggle"
    assert "Exercise 1.1: correct." in page
    assert not re.search(r"<pre><span></span>True\s*</pre>", page), "no stray True under a check"
    assert re.search(r'class="cell tag_hide-input[^"]*"[^>]*>(?:(?!class="cell ).)*bookkeeping', page, re.S)


@pytest.mark.parametrize("source, tags", [
    ("assert x == 1\nassert y > 0, 'why'", ["hide-input"]),
    ("torch.testing.assert_close(a, b)\nassert c", ["hide-input"]),
    ("# hide\nx = 1", ["hide-input"]),
    ("# remove-output\nprint(1)", ["remove-output"]),
    ("import torch\nfrom emd_lib import fast_or", ["hide-input"]),
    ("def f():\n    ### BEGIN SOLUTION\n    return 1\n    ### END SOLUTION\ncheck('1.1', f)", ["hide-input"]),
    ("x = 1\nassert x == 1", []),
    ("glue('a', 1)\nfor m in ms:\n    glue(f'b_{m}', 2)\nassert a", ["hide-input"]),
    ("for m in ms:\n    print(m)", []),
    ("%matplotlib inline\nassert True", []),
])
def test_auto_tags(source, tags):
    cell = nbformat.v4.new_code_cell(source)
    assert book.auto_tags(cell) == tags
    cell.metadata["tags"] = ["hide-output"]
    assert book.auto_tags(cell) == ["hide-output"], "a tag set in the chapter wins"


@pytest.mark.parametrize("source, parts", [
    ("x = f()\nprint(x)\n\n# the guard\nassert x > 0\nassert_close(x, 1)",
     ["x = f()\nprint(x)", "# the guard\nassert x > 0\nassert_close(x, 1)"]),
    ("x = f()\nassert x > 0\ny = 2\nassert y", ["x = f()\nassert x > 0\ny = 2", "assert y"]),
    ("x = f()\nx\nassert x > 0", None),            # the value of x would show: kept whole
    ("x = f()\nplt.show()\nglue('ch_x', x)\nfor k in d:\n    glue(f'ch_{k}', d[k])\nassert x > 0",
     ["x = f()\nplt.show()", "glue('ch_x', x)\nfor k in d:\n    glue(f'ch_{k}', d[k])\nassert x > 0"]),
    ("assert x\nassert y", None),                    # asserts only: tagged, not split
    ("x = 1", None),
])
def test_split_guards(source, parts):
    cell = nbformat.v4.new_code_cell(source)
    got = [c.source for c in book.split_guards(cell)]
    assert got == (parts or [source])


def test_a_check_at_the_end_of_a_cell_leaves_no_value():
    assert book.ends_with_a_check("x = 1\ncheck('1.1', f)")
    assert book.ends_with_a_check("torch.testing.assert_close(a, b)")
    assert not book.ends_with_a_check("x == 1")


def test_glue_prints_name_and_text_outside_a_build(monkeypatch, capsys):
    from emd_lib.book import display

    monkeypatch.setattr(display, "_NOTED", set())
    monkeypatch.delenv("EMD_BOOK_BUILD", raising=False)
    monkeypatch.setenv("EMD_FAST", "0")
    assert glue("x", 0.25, fmt=".1f") is None, "a cell ending with glue shows no value"
    glue("n_kept", __import__("numpy").int64(3))
    glue("light", 0.1234, fmt=".3f", fast="200 updates")
    assert capsys.readouterr().out.splitlines() == ["x: 0.2", "n_kept: 3", "light: 0.123"]
    monkeypatch.setenv("EMD_FAST", "1")
    glue("light", 0.1234, fmt=".3f", fast="200 updates")
    glue("heavy", 0.8766, fmt=".3f", fast="200 updates")
    assert capsys.readouterr().out.splitlines() == ["light: 0.123 (fast mode: 200 updates)",
                                                    "heavy: 0.877 (fast mode)"]
    with pytest.raises(ValueError, match="letters, digits and underscores"):
        glue("light mass", 0.1)


def test_table_renders_as_html_markdown_and_text():
    t = table([("a", 1.23456), ("bb", 10.0)], ["name", "value"], fmt="{:.2f}")
    assert t._repr_html_().count("<tr>") == 3 and 'style="text-align: right"' in t._repr_html_()
    assert t._repr_markdown_().splitlines()[:2] == ["| name | value |", "|---|---:|"]
    assert str(t).splitlines() == ["name  value", "----  -----", "a      1.23", "bb    10.00"]
    with pytest.raises(ValueError):
        table([("a",)], ["name", "value"])


def test_equations_are_typeset_offline(built):
    """MathJax is copied next to the pages and loaded by a relative URL."""
    page = (built / "01_tiny.html").read_text()
    src = re.search(r'<script [^>]*src="([^"]*MathJax\.js)[^"]*"', page).group(1)
    assert not src.startswith(("http:", "https:", "//"))
    assert (built / src).exists()
    assert (built / "_static" / "mathjax" / "jax" / "input" / "TeX" / "jax.js").exists()


EXTERNAL = [
    re.compile(r"<script\b[^>]*\bsrc\s*=\s*[\"']?(https?:)?//", re.I),
    re.compile(r"<link\b[^>]*\bhref\s*=\s*[\"']?(https?:)?//", re.I),
    re.compile(r"@import\s+(url\()?[\"']?(https?:)?//", re.I),
    re.compile(r"\bimport\(\s*[\"'](https?:)?//", re.I),
    re.compile(r"<iframe\b[^>]*\bsrc\s*=\s*[\"']?(https?:)?//", re.I),
    re.compile(r"<img\b[^>]*\bsrc\s*=\s*[\"']?(https?:)?//", re.I),
]
CSS_EXTERNAL = re.compile(r"(@import\s+(url\()?|url\()\s*[\"']?(https?:)?//", re.I)


def test_no_page_loads_from_the_network(built):
    pages = list(built.rglob("*.html"))
    assert len(pages) >= 10
    for page in pages:
        text = page.read_text()
        for pattern in EXTERNAL:
            m = pattern.search(text)
            assert m is None, f"{page.relative_to(built)} loads from the network: {text[m.start():m.start() + 120]}"
    for css in (built / "_static").rglob("*.css"):
        m = CSS_EXTERNAL.search(css.read_text(errors="replace"))
        assert m is None, f"{css.relative_to(built)} loads from the network: {m.group(0)}"


def test_the_tiny_book_builds_without_sphinx_warnings(book_dirs):
    warnings = book_dirs[1] / "sphinx-warnings.txt"
    assert warnings.exists() and warnings.read_text().strip() == ""


def test_teaching_and_api_pages(built):
    teaching = (built / "teaching.html").read_text()
    assert "Teaching with this book" in teaching and "make student" in teaching
    assert "Run times of this build" in teaching and "01_tiny.html" in teaching
    api = (built / "api.html").read_text()
    assert "Use emd_lib in your own script" in api and "Distiller" in api
    assert 'href="api/emd_lib/schedules.html"' in api
    ref = (built / "api" / "emd_lib" / "schedules.html").read_text()
    assert "log-SNR" in ref and 'href="../../api.html"' in ref


def test_a_failing_chapter_fails_the_build(tmp_path, capsys):
    src = tmp_path / "chapters"
    src.mkdir()
    (src / "01_broken.py").write_text("# %%\nx = 1\n\n# %%\nraise RuntimeError('the chapter is broken')\n")
    rc = book.main(["--chapters", str(src), "--out", str(tmp_path / "out"), "--api", "none"])
    assert rc != 0
    err = capsys.readouterr().err
    assert "01_broken.py failed" in err and "the chapter is broken" in err
    assert "\x1b[" not in err, "the traceback is printed without terminal colours"


def test_a_failing_chapter_names_its_cell_before_a_long_traceback(tmp_path, capsys):
    src = tmp_path / "chapters"
    src.mkdir()
    (src / "01_broken.py").write_text("# %% [markdown]\n# # Broken\n\n# %%\nx = 1\n\n# %%\n"
                                      "first_line_of_the_failing_cell = 2\nraise ValueError('y' * 2500)\n")
    # "1" is chapter 01: the build runs it (and fails) rather than finding no chapter
    rc = book.main(["--chapters", str(src), "--out", str(tmp_path / "out"), "--api", "none", "--only", "1"])
    assert rc != 0
    err = capsys.readouterr().err
    assert "chapter 01_broken.py failed in cell 3 of 3" in err
    assert "first_line_of_the_failing_cell = 2" in err and "raise ValueError" in err
    assert err.index("first_line_of_the_failing_cell") < err.index("traceback") < err.rindex("ValueError")


def test_only_accepts_unpadded_numbers_and_refuses_unknown_ones(tmp_path, capsys):
    src = tmp_path / "chapters"
    src.mkdir()
    for name in ("01_a.py", "03_c.py", "03b_d.py", "conftest.py", "0_x.py"):
        (src / name).write_text("# %%\nx = 1\n")
    assert book.chapter_numbers("1, 03,4B") == ["01", "03", "04b"]
    assert [p.name for p in book.chapters(src=src)] == ["01_a.py", "03_c.py", "03b_d.py"]
    assert [p.name for p in book.chapters(["1", "3"], src=src)] == ["01_a.py", "03_c.py"]
    assert [p.name for p in book.chapters(["3b"], src=src)] == ["03b_d.py"]
    out = str(tmp_path / "out")
    assert book.main(["--chapters", str(src), "--out", out, "--api", "none", "--only", "01,99"]) != 0
    said = capsys.readouterr()
    assert "no chapter 99" in said.err and "executing" not in said.out
    assert book.main(["--chapters", str(src), "--out", out, "--api", "none", "--only", "one"]) != 0
    assert "not a chapter number" in capsys.readouterr().err


def test_only_executes_those_chapters_and_takes_the_others_from_the_cache(book_dirs, tmp_path, capsys):
    src, out = book_dirs
    chapters, again = tmp_path / "chapters", tmp_path / "build"
    shutil.copytree(src, chapters)
    shutil.copytree(out, again)
    (chapters / "03_new.py").write_text("# %% [markdown]\n# # Chapter 3: New\n\n# %%\nprint('never' + ' run')\n")
    before = json.loads((again / "html" / "timings.json").read_text())["chapters"]
    assert _build(chapters, again, "--api", "none", "--only", "2") == 0
    said = capsys.readouterr().out
    assert "executing 02_more.py" in said and "executing 01_tiny.py" not in said
    assert "01_tiny.py: cached run" in said and "03_new.py: not executed" in said
    html = again / "html"
    rows = {r["file"]: r for r in json.loads((html / "timings.json").read_text())["chapters"]}
    assert rows["01_tiny"]["seconds"] == before[0]["seconds"], "chapter 1 comes from the cache"
    assert rows["03_new"]["seconds"] is None
    assert "fast mode: True" in (html / "01_tiny.html").read_text()
    new = (html / "03_new.html").read_text()
    assert "never run" not in new and "Not executed in this build" in new


def test_a_cached_chapter_is_not_executed_again(book_dirs, tmp_path, capsys):
    src, out = book_dirs
    shutil.copytree(out, tmp_path / "build")
    assert _build(src, tmp_path / "build", "--api", "none") == 0
    said = capsys.readouterr().out
    assert "executing" not in said and "0 chapter(s) executed" in said


# ---------------------------------------------------------------------------------------
# a real browser


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


CHROMIUM_MISSING = ("no Chromium found (chromium, chromium-browser or google-chrome on PATH): "
                    "install it (Debian/Ubuntu: sudo apt-get install chromium) to run the browser test")


def ensure_chromium() -> str:
    """The path of a headless-capable Chromium, or a skip that says how to get one (the tests
    install nothing: `.ci/run` installs Chromium before `make test`)."""
    return _chromium() or pytest.skip(CHROMIUM_MISSING)


def test_without_chromium_the_browser_test_skips_and_installs_nothing(monkeypatch):
    ran = []
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: ran.append(a))
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: ran.append(a))
    with pytest.raises(pytest.skip.Exception) as info:
        ensure_chromium()
    assert ran == [] and "\n" not in str(info.value) and "apt-get install chromium" in str(info.value)
    ci = (ROOT / ".ci" / "run").read_text()
    assert ci.index("apt-get install") < ci.index("make test")   # CI installs it, before the tests


class Browser:
    """Headless Chromium driven through the DevTools protocol (websocket-client)."""

    def __init__(self, exe: str, profile: Path):
        self.proc = subprocess.Popen(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", "--no-default-browser-check", "--hide-scrollbars",
             "--window-size=1200,900", "--remote-debugging-port=0", "--remote-allow-origins=*",
             f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = profile / "DevToolsActivePort"
        deadline = time.time() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.proc.poll() is not None or time.time() > deadline:
                self.close()
                pytest.fail("headless Chromium did not start")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            target = next(t for t in json.load(r) if t["type"] == "page")
        import websocket

        self.ws = websocket.create_connection(target["webSocketDebuggerUrl"], timeout=30,
                                              suppress_origin=True)
        self.next_id = 0

    def call(self, method, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    def eval(self, expression):
        res = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in res:
            raise RuntimeError(f"{expression[:60]}...: {res['exceptionDetails']}")
        return res["result"].get("value")

    def open(self, url, ready="document.readyState === 'complete'", timeout=60):
        self.call("Page.navigate", url=url)
        deadline = time.time() + timeout
        time.sleep(0.2)
        while not self.eval(f"(() => {{ try {{ return !!({ready}); }} catch (e) {{ return false; }} }})()"):
            if time.time() > deadline:
                raise TimeoutError(f"{url} not ready: {ready}")
            time.sleep(0.2)

    def screenshot(self, path: Path):
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))

    def close(self):
        try:
            self.ws.close()
        except Exception:
            pass
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()



BROKEN_IMAGES = "[...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src.slice(0, 80))"
# everything the page loaded (scripts, styles, fonts, images) that is not a local file
REMOTE = ("performance.getEntriesByType('resource').map(e => e.name)"
          ".filter(n => !n.startsWith('file:') && !n.startsWith('data:'))")
# MathJax 2 leaves each equation's source in a <script type="math/tex"> and puts the typeset
# equation right before it (span.MathJax inline, div.MathJax_Display on its own line)
TYPESET = ("(s => s.previousElementSibling && /(^| )MathJax(_Display)?( |$)/"
           ".test(s.previousElementSibling.className))")
MATHJAX_DONE = ("document.readyState === 'complete' && window.MathJax && MathJax.Hub && "
                "MathJax.Hub.queue.pending === 0 && MathJax.Hub.queue.running === 0 && "
                "document.querySelectorAll('script[type^=\"math/tex\"]').length > 0 && "
                f"[...document.querySelectorAll('script[type^=\"math/tex\"]')].every({TYPESET})")
MATH_REPORT = """(() => {
  const scripts = [...document.querySelectorAll('article script[type^="math/tex"]')];
  return {scripts: scripts.length, jax: MathJax.Hub.getAllJax().length,
          typeset: scripts.filter(TYPESET).length,
          display: document.querySelectorAll('article div.MathJax_Display').length,
          errors: document.querySelectorAll('.MathJax_Error, merror, .mjx-merror').length,
          webfont: [...document.querySelectorAll('span.MathJax span')].some(
              s => getComputedStyle(s).fontFamily.includes('STIX')),
          mathjax: [...document.scripts].map(s => s.src).filter(s => s.includes('MathJax.js')),
          dollars: [...document.querySelectorAll('article p, article h1, article h2, article li')].some(
              e => e.innerText.includes('$'))};
})()""".replace("TYPESET", TYPESET)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    exe = ensure_chromium()
    b = Browser(exe, tmp_path_factory.mktemp("chromium-profile"))
    yield b
    b.close()


def test_browser_shows_figures_and_typesets_equations_with_the_local_mathjax(built, browser):
    shots = ROOT / "_build" / "browser"
    browser.open((built / "01_tiny.html").as_uri(), ready=MATHJAX_DONE)
    assert browser.eval(BROKEN_IMAGES) == []
    assert browser.eval("document.images.length") >= 1
    math = browser.eval(MATH_REPORT)
    assert math["errors"] == 0, math
    assert math["mathjax"] and all(s.startswith("file:") for s in math["mathjax"]), math
    assert math["scripts"] >= 6 and math["typeset"] == math["scripts"], math   # every equation
    assert math["display"] >= 3, math                       # the $$ equations on lines of their own
    assert math["webfont"], f"MathJax fell back from its web fonts: {math}"
    assert not math["dollars"], "a $ of the source is still visible"
    assert browser.eval(REMOTE) == []
    assert browser.eval("document.querySelector('.emd-run-time').innerText").startswith("Executed in")
    browser.screenshot(shots / "chapter.png")
    assert (shots / "chapter.png").stat().st_size > 10_000


def test_browser_search_finds_a_chapter(built, browser):
    browser.open((built / "search.html").as_uri() + "?q=tiny",
                 ready="document.querySelectorAll('#search-results li').length > 0")
    found = browser.eval("[...document.querySelectorAll('#search-results li a')].map(a => a.innerText).join(' | ')")
    assert "A tiny chapter" in found, found
    assert browser.eval(REMOTE) == []
    browser.screenshot(ROOT / "_build" / "browser" / "search.png")


def test_browser_solution_toggle_opens(built, browser):
    browser.open((built / "01_tiny.html").as_uri(), ready=MATHJAX_DONE)
    hidden = "(() => { const d = [...document.querySelectorAll('details')].find(d => d.innerText.includes('Show code') || d.querySelector('summary')); return d ? d.open : null; })()"
    assert browser.eval(hidden) is False, "a hidden input sits in a closed <details>"
    browser.eval("document.querySelector('.tag_hide-input details summary').click()")
    assert browser.eval("document.querySelector('.tag_hide-input details').open") is True


@pytest.mark.parametrize("page", ["index.html", "teaching.html", "api.html", "api/emd_lib/schedules.html",
                                  "bibliography.html", "genindex.html"])
def test_browser_other_pages_have_no_broken_image(built, browser, page):
    browser.open((built / page).as_uri())
    assert browser.eval(BROKEN_IMAGES) == []
    assert browser.eval("document.body.innerText.length") > 200
    assert browser.eval(REMOTE) == []


def test_browser_notation_page_typesets_its_symbols(built, browser):
    browser.open((built / "notation.html").as_uri(), ready=MATHJAX_DONE)
    math = browser.eval(MATH_REPORT)
    assert math["errors"] == 0 and math["scripts"] >= 20 and math["typeset"] == math["scripts"], math
    browser.screenshot(ROOT / "_build" / "browser" / "notation.png")


# ---------------------------------------------------------------------------------------
# the chapters' equations survive Markdown: in Jupyter (mistune) a line starting with "+ "
# inside $...$ turns into a list item and breaks the equation, the browser then shows raw TeX;
# in the book (MyST, markdown-it) every $...$ must come out as one math node

MATH = re.compile(r"\$\$(.+?)\$\$|(?<![\\$])\$(?!\$)(.+?)(?<![\\$])\$", re.S)
TAG = re.compile(r"</?(p|ul|ol|li|h\d|blockquote|em|strong|code|pre)\b")
CHAPTERS = book.chapters()


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_equations_survive_markdown(path):
    import jupytext
    from nbconvert.filters.markdown_mistune import markdown2html_mistune

    for cell in jupytext.read(path).cells:
        if cell.cell_type == "markdown":
            for m in MATH.finditer(markdown2html_mistune(cell.source)):
                body = m.group(1) or m.group(2)
                assert not TAG.search(body), f"{path.name}: Markdown broke an equation: {body[:160]!r}"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_equations_survive_myst(path):
    import jupytext
    from markdown_it import MarkdownIt
    from mdit_py_plugins.amsmath import amsmath_plugin
    from mdit_py_plugins.dollarmath import dollarmath_plugin

    md = MarkdownIt("commonmark").use(dollarmath_plugin, double_inline=True).use(amsmath_plugin)
    for cell in jupytext.read(path).cells:
        if cell.cell_type != "markdown":
            continue
        for token in md.parse(cell.source):
            for child in token.children or []:
                if child.type == "text":
                    assert "$" not in child.content, \
                        f"{path.name}: a $ outside math in the book: {child.content[:160]!r}"
