"""The rendered book: contents, figures, equations, run times, offline pages, and a real browser.

A quick book is built once from a tiny chapter (a figure, inline and display equations,
two sections) in fast mode; the real chapters go through the same code in ``make book``.
The browser test drives headless Chromium (Debian's package, installed here when missing)
through the DevTools protocol: no broken image, every equation typeset by MathJax, and a
screenshot in ``_build/browser/``.
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

import pytest

from emd_lib.book import build as book

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
# The score is $\nabla_x \log p(x)$ and Tweedie's formula reads
# $$\hat x = \frac{x_t + \sigma^2 \nabla \log p_t(x_t)}{\alpha}.$$

# %%
print("fast mode:", __import__("emd_lib").is_fast())
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


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    src = tmp_path_factory.mktemp("chapters")
    (src / "01_tiny.py").write_text(TINY)
    (src / "02_more.py").write_text(SECOND)
    out = tmp_path_factory.mktemp("build")
    env = {"EMD_FAST": "1", "MPLBACKEND": "Agg"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        rc = book.main(["--chapters", str(src), "--out", str(out), "--api", "emd_lib.schedules"])
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    assert rc == 0
    return out / "html"


def test_index_is_a_table_of_contents_with_run_times(built):
    index = (built / "index.html").read_text()
    assert 'href="01_tiny.html"' in index and 'href="02_more.html"' in index
    assert "Chapter 1: A tiny chapter" in index
    assert re.search(r'href="01_tiny.html#[^"]*1.1[^"]*"', index), "sections are listed"
    assert r"1.2 Text &amp; the score $\nabla \log p$" in index
    assert re.search(r"\d+\.\d s", index), "each chapter's run time"
    assert 'href="teaching.html"' in index and 'href="api.html"' in index
    timings = json.loads((built / "timings.json").read_text())
    assert timings["fast"] is True
    assert [r["file"] for r in timings["chapters"]] == ["01_tiny", "02_more"]
    assert all(r["seconds"] > 0 for r in timings["chapters"])


def test_chapter_pages_hold_figures_equations_run_time_and_navigation(built):
    page = (built / "01_tiny.html").read_text()
    assert re.search(r'<img [^>]*src="data:image/png;base64,', page), "the figure is embedded"
    assert r"\mathcal N(0, I)" in page and "$$" in page, "the equations are left for MathJax"
    assert re.search(r"executed in \d+\.\d s \(fast mode\)", page)
    assert 'href="index.html"' in page and 'href="02_more.html"' in page
    assert "fast mode: True" in page


def test_equations_are_typeset_offline(built):
    """MathJax is copied next to the pages and loaded by a relative URL."""
    for page in built.glob("*.html"):
        text = page.read_text()
        if "MathJax.js" in text:
            src = re.search(r'<script src="([^"]*MathJax\.js)[^"]*"', text).group(1)
            assert not src.startswith(("http:", "https:", "//"))
            assert (page.parent / src).exists()
    assert (built / "_static" / "mathjax" / "jax" / "input" / "TeX" / "jax.js").exists()


EXTERNAL = [
    re.compile(r"<script\b[^>]*\bsrc\s*=\s*[\"']?(https?:)?//", re.I),
    re.compile(r"<link\b[^>]*\bhref\s*=\s*[\"']?(https?:)?//", re.I),
    re.compile(r"@import\s+(url\()?[\"']?(https?:)?//", re.I),
    re.compile(r"\bimport\(\s*[\"'](https?:)?//", re.I),
    re.compile(r"<iframe\b[^>]*\bsrc\s*=\s*[\"']?(https?:)?//", re.I),
]


def test_no_page_references_an_external_script(built):
    pages = list(built.rglob("*.html"))
    assert len(pages) >= 5
    for page in pages:
        text = page.read_text()
        for pattern in EXTERNAL:
            m = pattern.search(text)
            assert m is None, f"{page.relative_to(built)} loads from the network: {text[m.start():m.start() + 120]}"


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
    for name in ("01_a.py", "03_c.py"):
        (src / name).write_text("# %%\nx = 1\n")
    assert book.chapter_numbers("1, 03") == ["01", "03"]
    assert [p.name for p in book.chapters(["1", "3"], src=src)] == ["01_a.py", "03_c.py"]
    out = str(tmp_path / "out")
    assert book.main(["--chapters", str(src), "--out", out, "--api", "none", "--only", "01,99"]) != 0
    said = capsys.readouterr()
    assert "no chapter 99" in said.err and "executing" not in said.out
    assert book.main(["--chapters", str(src), "--out", out, "--api", "none", "--only", "one"]) != 0
    assert "not a chapter number" in capsys.readouterr().err


def test_only_keeps_the_other_chapters_of_an_earlier_build(built, tmp_path):
    html = tmp_path / "out" / "html"
    shutil.copytree(built, html)
    rows = json.loads((html / "timings.json").read_text())["chapters"]
    # as if 01 had been rebuilt alone: the index still lists 02 from the earlier build
    kept = book._previous_rows(html, {"02_more"})
    assert [r["file"] for r in kept] == ["02_more"] and kept[0]["seconds"] == rows[1]["seconds"]


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
# MathJax 2 leaves each equation's source in a <script type="math/tex"> and puts the typeset
# equation right before it (span.MathJax inline, div.MathJax_Display on its own line)
TYPESET = ("(s => s.previousElementSibling && /(^| )MathJax(_Display)?( |$)/"
           ".test(s.previousElementSibling.className))")
MATHJAX_DONE = ("document.readyState === 'complete' && window.MathJax && MathJax.Hub && "
                "MathJax.Hub.queue.pending === 0 && MathJax.Hub.queue.running === 0 && "
                "document.querySelectorAll('script[type^=\"math/tex\"]').length > 0 && "
                f"[...document.querySelectorAll('script[type^=\"math/tex\"]')].every({TYPESET})")
MATH_REPORT = """(() => {
  const scripts = [...document.querySelectorAll('script[type^="math/tex"]')];
  return {scripts: scripts.length, jax: MathJax.Hub.getAllJax().length,
          typeset: scripts.filter(TYPESET).length,
          display: document.querySelectorAll('div.MathJax_Display').length,
          errors: document.querySelectorAll('.MathJax_Error, merror, .mjx-merror').length,
          webfont: [...document.querySelectorAll('span.MathJax span')].some(
              s => getComputedStyle(s).fontFamily.includes('STIX')),
          dollars: [...document.querySelectorAll('.jp-RenderedMarkdown')].some(
              e => e.innerText.includes('$'))};
})()""".replace("TYPESET", TYPESET)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    exe = ensure_chromium()
    b = Browser(exe, tmp_path_factory.mktemp("chromium-profile"))
    yield b
    b.close()


def test_browser_shows_figures_and_typeset_equations(built, browser):
    shots = ROOT / "_build" / "browser"
    browser.open((built / "01_tiny.html").as_uri(), ready=MATHJAX_DONE)
    assert browser.eval(BROKEN_IMAGES) == []
    assert browser.eval("document.images.length") >= 1
    math = browser.eval(MATH_REPORT)
    assert math["errors"] == 0, math
    assert math["scripts"] >= 4 and math["jax"] == math["scripts"], math
    assert math["typeset"] == math["scripts"], math      # every equation was typeset
    assert math["display"] >= 2, math                      # the $$ equations on lines of their own
    assert math["webfont"], f"MathJax fell back from its web fonts: {math}"
    assert not math["dollars"], "a $ of the source is still visible"
    browser.screenshot(shots / "chapter.png")
    assert (shots / "chapter.png").stat().st_size > 10_000


def test_browser_contents_page_typesets_the_headings(built, browser):
    browser.open((built / "index.html").as_uri(), ready=MATHJAX_DONE)
    assert browser.eval(BROKEN_IMAGES) == []
    text = browser.eval("document.querySelector('table.toc').innerText")
    assert "A tiny chapter" in text and "$" not in text
    assert browser.eval(MATH_REPORT)["errors"] == 0
    browser.screenshot(ROOT / "_build" / "browser" / "index.png")


@pytest.mark.parametrize("page", ["teaching.html", "api.html", "api/emd_lib/schedules.html"])
def test_browser_other_pages_have_no_broken_image(built, browser, page):
    browser.open((built / page).as_uri())
    assert browser.eval(BROKEN_IMAGES) == []
    assert browser.eval("document.body.innerText.length") > 200


# ---------------------------------------------------------------------------------------
# the chapters' equations survive Markdown (a line starting with "+ " inside $...$ turns
# into a list item and breaks the equation: the browser then shows raw TeX)

MATH = re.compile(r"\$\$(.+?)\$\$|(?<![\\$])\$(?!\$)(.+?)(?<![\\$])\$", re.S)
TAG = re.compile(r"</?(p|ul|ol|li|h\d|blockquote|em|strong|code|pre)\b")


@pytest.mark.parametrize("path", sorted((ROOT / "chapters").glob("[0-9][0-9]_*.py")), ids=lambda p: p.stem)
def test_chapter_equations_survive_markdown(path):
    import jupytext
    from nbconvert.filters.markdown_mistune import markdown2html_mistune

    for cell in jupytext.read(path).cells:
        if cell.cell_type == "markdown":
            for m in MATH.finditer(markdown2html_mistune(cell.source)):
                body = m.group(1) or m.group(2)
                assert not TAG.search(body), f"{path.name}: Markdown broke an equation: {body[:160]!r}"
