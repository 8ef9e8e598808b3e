"""The grader against student code: each exercise cell in its own process, every verdict in the grader's.

Submissions are built here from the shipped chapters: the reference solutions, with one
exercise cell changed (an endless loop, an exit, a crash, a wrong answer with code that tampers
with the checks). Each failure must fail its exercise only, with a one-line reason, and no
wrong answer may pass, however its cell is written.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jupytext
import pytest

from emd_lib.book import grading
from emd_lib.exercises import registry

ROOT = Path(__file__).resolve().parent.parent
CH1 = ROOT / "chapters" / "01_diffusion_2d.py"
CH3 = ROOT / "chapters" / "03_em_derivation.py"
FAST = dict(timeout=5, memory_mb=2048)      # short limits: every failure case stays quick

# wrong answers, as edits of the reference solutions
WRONG = {
    "1.1": ("return -2.0 * torch.log(torch.tan(math.pi * t / 2))", "return -1.0 * torch.log(torch.tan(math.pi * t / 2))"),
    "1.3": ("return alpha2 * D + sigma2 * (x_t - alpha * D) / sigma", "return alpha2 * D - sigma2 * (x_t - alpha * D) / sigma"),
    "3.2": ("return alpha / sigma**2 * (x_t - alpha * mu @ A.T - alpha * b)",
            "return -alpha / sigma**2 * (x_t - alpha * mu @ A.T - alpha * b)"),
}


def _cell_bounds(text: str, ex_id: str) -> tuple[int, int]:
    """Where exercise ``ex_id``'s code cell sits in a py:percent chapter (from its ``# %%`` to the next)."""
    head = text.index(f"## Exercise {ex_id}:")
    start = text.index("# %%\n", head) + len("# %%\n")
    end = text.find("# %%", start)
    return start, end if end >= 0 else len(text)


def submission(folder: Path, chapter: Path, name: str | None = None, prepend: dict | None = None,
               wrong: tuple = (), notebook: bool = False) -> Path:
    """``chapter`` with its reference solutions, code put at the top of some exercise cells
    (``prepend``: id -> code) and some answers made wrong (``wrong``: ids of :data:`WRONG`)."""
    text = chapter.read_text()
    for ex_id in wrong:
        old, new = WRONG[ex_id]
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    for ex_id, code in (prepend or {}).items():
        start, _ = _cell_bounds(text, ex_id)
        text = text[:start] + code.rstrip("\n") + "\n" + text[start:]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (name or chapter.name)
    if notebook:
        path = path.with_suffix(".ipynb")
        jupytext.write(jupytext.reads(text, fmt="py:percent"), path)
    else:
        path.write_text(text)
    return path


def test_the_reference_passes_in_isolation(tmp_path):
    g = grading.grade(submission(tmp_path, CH1), **FAST)
    assert g.passed and [r.id for r in g.results.values()] == ["1.1", "1.2", "1.3"], g.verdicts()
    assert g.score == g.max_score == sum(registry()[k].points for k in ("1.1", "1.2", "1.3"))
    assert all(r.seconds > 0 for r in g.results.values())


def test_a_notebook_with_nbgrader_test_cells_is_graded_by_its_exercise_cells(tmp_path):
    from emd_lib.book import notebooks

    notebooks.write_notebooks(tmp_path, repo="https://example.org/x.git")
    g = grading.grade(tmp_path / f"{CH1.stem}.ipynb", **FAST)
    assert g.passed and g.notes == [] and len(g.results) == 3, (g.verdicts(), g.notes)


# ---- each way a cell can fail: that exercise fails, with one line; the others still pass --------------

FAILURES = {
    "endless loop": ("while True:\n    pass", "timed out after 5 s"),
    "os._exit": ("import os\nos._exit(0)", "ended the interpreter (exit status 0"),
    "segfault": ("import ctypes\nctypes.string_at(0)", "killed by SIGSEGV"),
    "SystemExit": ("raise SystemExit(3)", "SystemExit (3)"),
    "KeyboardInterrupt": ("raise KeyboardInterrupt", "KeyboardInterrupt"),
    # 3 GiB of address space: more than the 2 GiB limit (without it the tensor would be made, unused)
    "memory": ("import torch\nhog = torch.empty(3 * 2**30, dtype=torch.uint8)", "out of memory"),
}


LINUX = sys.platform.startswith("linux")     # RLIMIT_AS and /proc


@pytest.mark.parametrize("kind", FAILURES)
def test_a_failing_cell_fails_its_exercise_only(tmp_path, kind):
    if kind == "memory" and not LINUX:
        pytest.skip("the memory limit (RLIMIT_AS) is Linux's")
    code, reason = FAILURES[kind]
    t0 = time.monotonic()
    g = grading.grade(submission(tmp_path, CH1, prepend={"1.1": code}), **FAST)
    ok = g.verdicts()
    assert ok["1.1"][0] is False and reason in ok["1.1"][1], ok["1.1"]
    assert "\n" not in ok["1.1"][1]
    assert ok["1.2"] == (True, "correct") and ok["1.3"] == (True, "correct"), ok
    assert time.monotonic() - t0 < 3 * FAST["timeout"] + 60


@pytest.mark.skipif(not LINUX, reason="the memory limit (RLIMIT_AS) is Linux's")
def test_the_memory_limit_is_what_stops_the_hog(tmp_path):
    overcommit = Path("/proc/sys/vm/overcommit_memory")
    if overcommit.exists() and overcommit.read_text().strip() == "2":
        pytest.skip("this machine does not overcommit memory: an unused 3 GiB tensor fails without a limit too")
    code, _ = FAILURES["memory"]
    g = grading.grade(submission(tmp_path, CH1, prepend={"1.1": code}), timeout=30, memory_mb=None)
    assert g.results["1.1"].passed, g.results["1.1"]


def test_the_grader_keeps_going_after_a_crash(tmp_path, capsys):
    crash = submission(tmp_path, CH1, name="01_crash.py", prepend={"1.1": "import os\nos._exit(0)"})
    good = submission(tmp_path, CH1, name="01_good.py")
    assert grading.main([str(crash), str(good), "--timeout", "5"]) == 1
    out = capsys.readouterr().out
    assert "01_crash.py: 2/3 exercises pass" in out and "01_good.py: 3/3 exercises pass" in out


# ---- no wrong answer passes, however the cell is written ---------------------------------------------

TAMPER = {
    "replaces check": "import emd_lib.exercises as E\nE.check = lambda *a, **k: True",
    "replaces the registered check": "import emd_lib.exercises as E\nE.registry()['1.1'].fn = lambda answer: None",
    "rewrites the check's code": ("import emd_lib.exercises.ch01 as C\n"
                                  "C.check_cosine_lam.__code__ = (lambda fn: None).__code__"),
    "makes every comparison true": ("import torch\ntorch.allclose = lambda *a, **k: True\n"
                                    "torch.Tensor.all = lambda self, *a, **k: torch.tensor(True)"),
    "catches the failure": ("import emd_lib.exercises as E\n_real = E.check\n"
                            "def _quiet(*a, **k):\n    try:\n        return _real(*a, **k)\n"
                            "    except Exception:\n        return True\nE.check = _quiet"),
    "returns a tensor that lies": (
        "import torch\nclass Liar(torch.Tensor):\n    @classmethod\n"
        "    def __torch_function__(cls, func, types, args=(), kwargs=None):\n        return True\n"
        "_ORIG_WRONG = None"),
}


@pytest.mark.parametrize("how", TAMPER)
def test_a_wrong_answer_never_passes(tmp_path, how):
    path = submission(tmp_path, CH1, prepend={"1.1": TAMPER[how]}, wrong=("1.1",))
    if how == "returns a tensor that lies":
        text = path.read_text().replace("return -1.0 * torch.log(torch.tan(math.pi * t / 2))",
                                        "return torch.zeros_like(t).as_subclass(Liar)")
        path.write_text(text)
    ok = grading.grade(path, **FAST).verdicts()
    assert ok["1.1"][0] is False, (how, ok["1.1"])
    assert ok["1.2"][0] and ok["1.3"][0], ok


def test_a_forged_report_is_judged_as_data(tmp_path):
    """A cell that finds the grader's pipe and sends its own report, claiming a pass, then exits:
    the grader reads only the values in it, and judges them with its own check."""
    forge = '''
import gc, json, os
from multiprocessing.connection import Connection
report = {"checks": [{"id": "1.1", "passed": True, "verdict": "correct", "calls": [
    {"returned": {"value": {"tensor": {"dtype": "float32", "shape": [49], "data": [0.0] * 49}}}}]}],
    "error": None, "finished": True, "passed": True, "score": 3}
for c in [o for o in gc.get_objects() if isinstance(o, Connection) and o.writable]:
    c.send_bytes(json.dumps(report).encode())
os._exit(0)
'''
    ok = grading.grade(submission(tmp_path, CH1, prepend={"1.1": forge}), **FAST).verdicts()
    # the forged values reached the grader and failed its check (all zeros do not fall with t)
    assert ok["1.1"][0] is False and "must fall as t grows" in ok["1.1"][1], ok["1.1"]
    assert ok["1.2"][0] and ok["1.3"][0]


def test_tampering_in_one_cell_does_not_reach_another(tmp_path):
    # the cell of 1.1 (right) rewrites the checks of 1.2 and 1.3; the cell of 1.3 holds a wrong answer
    tamper = ("import emd_lib.exercises.ch01 as C\n"
              "C.check_mixture_score.__code__ = (lambda fn: None).__code__\n"
              "C.check_ddim_step.__code__ = (lambda fn: None).__code__")
    ok = grading.grade(submission(tmp_path, CH1, prepend={"1.1": tamper}, wrong=("1.3",)), **FAST).verdicts()
    assert ok["1.1"][0] and ok["1.2"][0] and ok["1.3"][0] is False, ok


def test_every_wrong_answer_of_the_registry_fails_from_its_sent_back_values():
    """The data path itself: each registered wrong answer, recorded as a cell's process records
    it and sent through JSON, fails the grader's check."""
    from emd_lib.exercises import ExerciseFailed, judge
    from emd_lib.exercises.record import recorder

    n = 0
    for ex_id, ex in sorted(registry().items()):
        for wrong in ex.wrong:
            rec = {"id": ex_id, "calls": []}
            with pytest.raises(ExerciseFailed):
                judge(ex_id, recorder(wrong, rec["calls"]))
            passed, msg = grading.judge_record(ex_id, json.loads(json.dumps(rec)))
            assert not passed and msg.startswith(f"Exercise {ex_id}"), (ex_id, wrong.__name__)
            n += 1
    assert n >= 2 * len(registry())


def test_every_library_route_fails_from_its_sent_back_values():
    """An answer that calls the library's own implementation, recorded as a cell's process records it
    and sent through JSON, fails in the grader's process too, with the message that says why."""
    from emd_lib.exercises import ExerciseFailed, judge
    from emd_lib.exercises.record import recorder
    from emd_lib.exercises.refuse import MESSAGE

    for ex_id, ex in sorted(registry().items()):
        rec = {"id": ex_id, "calls": []}
        with pytest.raises(ExerciseFailed, match=MESSAGE):
            judge(ex_id, recorder(ex.route, rec["calls"]))
        passed, msg = grading.judge_record(ex_id, json.loads(json.dumps(rec)))
        assert not passed and MESSAGE in msg, (ex_id, msg)


# ---- the command: a folder into one table, the JSON and Gradescope reports ----------------------------

def test_a_folder_of_submissions_within_the_time_bound(tmp_path):
    """Cells that loop forever, exit the interpreter and tamper with the checks: the run ends within
    (exercise cells x timeout + 60 s), fails exactly the wrong exercises and writes both reports."""
    folder = tmp_path / "submissions"
    submission(folder / "alice", CH1, prepend={"1.1": "while True:\n    pass", "1.3": TAMPER["makes every comparison true"]},
               wrong=("1.3",))
    submission(folder / "bob", CH3, notebook=True, wrong=("3.2",),
               prepend={"3.1": "import os\nos._exit(0)", "3.2": TAMPER["replaces the registered check"].replace("1.1", "3.2")})
    timeout, cells = 5, 6
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "emd_lib", "grade", str(folder), "--timeout", str(timeout),
                           "--json", str(tmp_path / "grades.json"), "--gradescope", str(tmp_path / "results.json")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=cells * timeout + 120,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    wall = time.monotonic() - t0
    assert wall < cells * timeout + 60, wall
    assert proc.returncode == 1, proc.stderr
    table = proc.stdout[proc.stdout.index("\nfile"):]
    assert "alice/01_diffusion_2d.py" in table and "bob/03_em_derivation.ipynb" in table

    files = {f["file"]: f for f in json.loads((tmp_path / "grades.json").read_text())["files"]}
    verdicts = {(name, e["id"]): e["passed"] for name, f in files.items() for e in f["exercises"]}
    assert verdicts == {("alice/01_diffusion_2d.py", "1.1"): False, ("alice/01_diffusion_2d.py", "1.2"): True,
                        ("alice/01_diffusion_2d.py", "1.3"): False, ("bob/03_em_derivation.ipynb", "3.1"): False,
                        ("bob/03_em_derivation.ipynb", "3.2"): False, ("bob/03_em_derivation.ipynb", "3.3"): True}
    alice = files["alice/01_diffusion_2d.py"]
    pts = {k: registry()[k].points for k in ("1.1", "1.2", "1.3", "3.1", "3.2", "3.3")}
    assert alice["score"] == pts["1.2"] and alice["max_score"] == pts["1.1"] + pts["1.2"] + pts["1.3"]
    e11 = alice["exercises"][0]
    assert e11["message"] == f"timed out after {timeout} s" and set(e11) >= {
        "id", "passed", "score", "max_score", "message", "seconds"}
    assert timeout <= e11["seconds"] < timeout + 10

    gs = json.loads((tmp_path / "results.json").read_text())
    assert gs["score"] == pts["1.2"] + pts["3.3"] and len(gs["tests"]) == 6
    for t in gs["tests"]:
        assert set(t) >= {"name", "score", "max_score", "output"} and t["max_score"] == pts[t["number"]]
    assert sum(t["max_score"] for t in gs["tests"]) == sum(pts.values())


def test_weights_come_from_the_registry(tmp_path, monkeypatch):
    reg = registry()
    monkeypatch.setattr(reg["1.2"], "weight", 7)
    g = grading.grade(submission(tmp_path, CH1, wrong=("1.1",)), **FAST)
    p1, p3 = reg["1.1"].points, reg["1.3"].points
    assert (g.score, g.max_score) == (7 + p3, p1 + 7 + p3)
    report = grading.to_gradescope([g], 1.0)
    assert [(t["score"], t["max_score"]) for t in report["tests"]] == [(0, p1), (7, 7), (p3, p3)]
    assert grading.to_json([g], 5)["files"][0]["exercises"][1]["max_score"] == 7


@pytest.mark.skipif(not LINUX, reason="reads the cell's state from /proc")
@pytest.mark.parametrize("sig, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGKILL, -9)],
                         ids=["ctrl-c", "sigterm", "sigkill"])
def test_stopping_the_grader_stops_its_cell(tmp_path, sig, status):
    """Ctrl-C or SIGTERM of the person grading (not one raised by the student's code) ends the run
    with one line, and the cell's process with it; a grader killed outright leaves no cell behind."""
    marker = tmp_path / "cell.pid"
    code = f"import os\nopen({str(marker)!r}, 'w').write(str(os.getpid()))\nwhile True:\n    pass"
    path = submission(tmp_path, CH1, prepend={"1.1": code})
    proc = subprocess.Popen([sys.executable, "-m", "emd_lib", "grade", str(path), "--timeout", "120"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        deadline = time.monotonic() + 90
        while not (marker.exists() and marker.read_text()):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.2)
        cell_pid = int(marker.read_text())
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == status, err
    if status > 0:
        assert "grading interrupted" in err and "Traceback" not in err, err
    deadline = time.monotonic() + 15
    while Path(f"/proc/{cell_pid}").exists() and "zombie" not in Path(f"/proc/{cell_pid}/status").read_text():
        assert time.monotonic() < deadline, "the cell's process outlived the grader"
        time.sleep(0.2)


def test_the_command_and_its_older_name(tmp_path, capsys):
    from emd_lib.book import student
    from emd_lib.__main__ import main

    assert main([]) == 2 and "grade" in capsys.readouterr().out
    assert main(["nope"]) == 2 and "unknown command 'nope'" in capsys.readouterr().err
    good = submission(tmp_path, CH1, name="01_good.py")
    assert student.main(["--grade", str(good), "--timeout", "30", "--json", str(tmp_path / "g.json")]) == 0
    report = json.loads((tmp_path / "g.json").read_text())
    assert report["files"][0]["score"] == sum(registry()[k].points for k in ("1.1", "1.2", "1.3"))
    assert report["timeout_s"] == 30


def test_bad_options_are_refused_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit):
        grading.main([str(CH1), "--timeout", "0"])
    assert "--timeout must be positive" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        grading.main([str(tmp_path)])
    assert "no .py or .ipynb submission" in capsys.readouterr().err


def test_every_chapter_reference_passes_in_the_grader(capsys):
    """Every check works on the values a cell sends back (a loss the check differentiates included)."""
    chapters = [p for p in sorted((ROOT / "chapters").glob("[0-9][0-9]_*.py")) if "appendix" not in p.stem]  # no exercises
    grades = grading.grade_all([str(p) for p in chapters], timeout=60)
    assert len(grades) == len(chapters)
    for g in grades:
        assert g.passed, (g.name, g.verdicts())
    assert {k for g in grades for k in g.results} == set(registry())
    assert "score" in capsys.readouterr().out.splitlines()[-len(chapters) - 1]


def test_an_answer_that_calls_the_library_fails_in_the_grader(tmp_path):
    """Exercise 1.2 answered with the library's own exact teacher: the grader fails it, and says why."""
    text = CH1.read_text()
    head = "def mixture_score(x_t, lam, weights, means, stds):\n    ### BEGIN SOLUTION\n"
    assert text.count(head) == 1
    text = text.replace(head, head + "    from emd_lib.teachers import GaussianMixture\n"
                        "    return GaussianMixture(weights, means, stds).score(x_t, torch.full((x_t.shape[0],), float(lam)))\n")
    path = tmp_path / CH1.name
    path.write_text(text)
    ok = grading.grade(path, **FAST).verdicts()
    assert ok["1.2"][0] is False and "write it yourself" in ok["1.2"][1], ok["1.2"]
    assert ok["1.1"][0] and ok["1.3"][0], ok


def test_grading_reports_points(tmp_path, capsys):
    path = submission(tmp_path, CH1, wrong=("1.3",))
    assert grading.main([str(path), "--timeout", "30"]) == 1
    out = capsys.readouterr().out
    reg = registry()
    got = reg["1.1"].points + reg["1.2"].points
    assert f"score {got:g}/{got + reg['1.3'].points:g} points" in out
    assert f"1.3: FAIL 0/{reg['1.3'].points:g} points" in out
