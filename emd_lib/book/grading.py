"""Grading submitted chapters: each exercise cell in a process of its own, every verdict in the grader's.

    python -m emd_lib grade FILE_OR_FOLDER... [--timeout S] [--memory MB] [--json OUT] [--gradescope OUT]
    python -m emd_lib student --grade FILE...          # the same command, under its older name

A submission is a chapter (``.py`` or ``.ipynb``); a folder is graded file by file (every
``.py`` and ``.ipynb`` under it, one per student, any mix), into one table. The exercises
expected are those the library registers for the chapter (from the file name ``NN_*``, else its
``# Chapter N`` title).

Each exercise cell runs on its own, as in the student edition's note: a fresh namespace, the
book's ``chapters/`` folder as working directory (the submission's folder where the install
has none), on the CPU, in a child process with a time limit (``--timeout``, 120 s by default)
and, on Linux, a limit on its address space (``--memory``, 4096 MB by default, ``RLIMIT_AS``). The child sends back only
data: for each call of ``check`` in the cell, what the student's function returned on each of
the check's inputs (:mod:`emd_lib.exercises.record`), and whether the cell ran to its end. The
verdict is decided here, by this process's own copy of the check, on those values: nothing the
cell does (replacing ``check``, the registry, ``torch.allclose``, writing its own report,
ending the interpreter) can make a wrong answer pass or change another exercise's verdict.

An exercise passes only when its check was called, the answer the cell sent back passes the
check here, and its cell ran to the end. An endless loop ("timed out after 120 s"), a crash
(a signal such as SIGSEGV), ``os._exit``, ``SystemExit``, a ``KeyboardInterrupt`` raised by the
code, or running out of memory fails that exercise only, with a one-line reason; grading goes
on. ``--json`` writes every file's exercises (id, passed, score, max score, message, seconds),
``--gradescope`` Gradescope's ``results.json``. The exit status is 0 only when every exercise
of every file passes.

The child is an ordinary process of the same user: it can read and write what the grader can.
Grade untrusted submissions in a container or as a user who cannot write the installation.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import ROOT

DEFAULT_TIMEOUT = 120.0
DEFAULT_MEMORY_MB = 4096
REPORT_LIMIT = 64 << 20             # bytes a cell may send back
MAX_CHECKS_PER_CELL = 50

EXERCISE_HEADING = re.compile(r"^(?:#\s+)?##\s+Exercise\s+(\d+\.\d+)\b.*$", re.M)
CHECK = re.compile(r"""\bcheck\(\s*(?:id\s*=\s*)?["']([\d.]+)["']""")   # check("2.1", ...), check('2.1', ...)

# what the grader needs of an exercise's cell (the student edition says it under every heading)
ALONE = ("the grader runs each exercise's code cell on its own, without the cells before it, so "
         "everything the answer uses (imports, helper functions from earlier cells) must be in that cell")


# ---- the cell's process ---------------------------------------------------------------------------

def run_cell(source: str, name: str) -> dict:
    """Execute one cell in a fresh namespace, recording every ``check`` it makes; the report
    (JSON-ready): ``{"checks": [{"id", "calls" | "value"}], "error": None | {...}, "finished": True}``.

    This runs in the cell's own process (:func:`_child`); its ``check`` only records what the
    student's function returns and still runs the library's check, so the cell behaves as in a
    notebook. None of it is trusted: the grader judges the recorded values itself."""
    from .. import exercises
    from ..exercises import record

    checks, raised = [], []
    real = exercises.check
    budget = record._Budget()

    def recording_check(id, answer, *args, **kwargs):
        rec = {"id": str(id), "name": str(getattr(answer, "__name__", "answer"))[:80]}
        if len(checks) < MAX_CHECKS_PER_CELL:
            checks.append(rec)
        if callable(answer):
            rec["calls"] = []
            answer = record.recorder(answer, rec["calls"], budget)
        else:
            try:
                rec["value"] = record.encode(answer, budget)
            except Exception as e:
                rec["value"] = {"unreadable": f"{type(answer).__name__} ({e})"}
        try:
            return real(id, answer, *args, **kwargs)
        except BaseException as e:
            raised.append(e)
            raise

    error = None
    exercises.check = recording_check
    try:
        exec(compile(source, name, "exec"), {"__name__": "__exercise__"})
    except BaseException as e:  # SystemExit and KeyboardInterrupt too: the report says so
        error = {"type": type(e).__name__, "message": str(e)[:2000],
                 "code": repr(e.code)[:200] if isinstance(e, SystemExit) else None,
                 "from_check": any(e is r for r in raised),
                 "name_error": isinstance(e, NameError) or isinstance(e.__cause__, NameError)}
    finally:
        exercises.check = real
    return {"checks": checks, "error": error, "finished": True}


def _limit_memory(nbytes: int | None) -> None:
    """Cap this process's address space where the platform allows it (Linux: RLIMIT_AS)."""
    if not nbytes:
        return
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            nbytes = min(nbytes, hard)
        resource.setrlimit(resource.RLIMIT_AS, (nbytes, hard))
    except (ImportError, ValueError, OSError, AttributeError):  # no such limit here
        pass


def _die_with_parent(cpu_seconds: float) -> None:
    """Where the platform allows: SIGKILL when the process that forked this one ends (the fork
    server, which ends with the grader), and a CPU-time limit, so that a cell cannot outlive a
    grader that was killed before it could stop the cell."""
    try:
        # the fork server lives while any of its children holds this end of its "grader alive" pipe:
        # drop it, so that the server ends when the grader does
        from multiprocessing import forkserver
        alive = forkserver._forkserver._forkserver_alive_fd
        if isinstance(alive, int):
            os.close(alive)
            forkserver._forkserver._forkserver_alive_fd = None
    except (ImportError, AttributeError, OSError):
        pass
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))          # PR_SET_PDEATHSIG (Linux)
        if os.getppid() == 1:                       # the server ended already
            os._exit(1)
    except (OSError, AttributeError, TypeError):
        pass
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_CPU)
        limit = int(cpu_seconds) + 1
        if hard == resource.RLIM_INFINITY or limit < hard:
            resource.setrlimit(resource.RLIMIT_CPU, (limit, hard))
    except (ImportError, ValueError, OSError, AttributeError):
        pass


def _child(source: str, name: str, cwd: str, memory: int | None, conn, timeout: float = DEFAULT_TIMEOUT) -> None:
    """The cell's process: its own session (so the grader can stop it with all it started),
    no terminal output, limited memory; sends back the JSON of :func:`run_cell` and exits."""
    if hasattr(os, "setsid"):
        try:
            os.setsid()
        except OSError:
            pass
    # CPU time can run ahead of the wall clock only by the number of cores
    _die_with_parent(timeout * (os.cpu_count() or 1) + 30)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    # the checks need no GPU; a GPU driver would also reserve more address space than the limit
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    os.environ["EMD_DEVICE"] = "cpu"
    # one thread per cell: the checks are small, and a thread pool inherited through fork (or one
    # competing with the rest of the machine) can make a cell many times slower than its time limit
    import torch

    torch.set_num_threads(1)
    _limit_memory(memory)
    os.chdir(cwd)
    try:
        report = run_cell(source, name)
        data = json.dumps(report, allow_nan=True).encode()
    except BaseException as e:  # a report that cannot be written (too large, out of memory)
        data = json.dumps({"checks": [], "finished": True, "error": {
            "type": type(e).__name__, "message": str(e)[:500], "code": None, "from_check": False,
            "name_error": False}}).encode()
    conn.send_bytes(data)
    conn.close()
    os._exit(0)


# ---- this process ------------------------------------------------------------------------------------

_CONTEXT = None


def _context():
    """The multiprocessing context for cells: a fork server that has imported torch and the
    library once (fast, and forked from a process that never ran student code), else spawn."""
    global _CONTEXT
    if _CONTEXT is None:
        import multiprocessing as mp

        if "forkserver" in mp.get_all_start_methods():
            import pkgutil

            from .. import exercises

            chapters = [f"emd_lib.exercises.{m.name}" for m in pkgutil.iter_modules(exercises.__path__)
                        if m.name.startswith("ch")]
            _CONTEXT = mp.get_context("forkserver")
            _CONTEXT.set_forkserver_preload(["torch", "emd_lib.book.grading", "emd_lib.exercises.record",
                                             *chapters, *exercises.check_modules()])
        else:
            _CONTEXT = mp.get_context("spawn")
    return _CONTEXT


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def _kill(proc) -> None:
    """Stop a cell's process and everything it started (its session)."""
    if proc.pid and hasattr(os, "killpg"):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError, OSError):
            pass
    try:
        proc.kill()
    except (OSError, ValueError, AttributeError):
        pass


def run_isolated(source: str, name: str, cwd: Path, timeout: float = DEFAULT_TIMEOUT,
                 memory_mb: int | None = DEFAULT_MEMORY_MB) -> tuple[dict | None, str | None, float]:
    """Run one cell in its own process: ``(report, failure, seconds)``, with ``report`` the data
    the cell sent back (None when it sent none) and ``failure`` why not, in one line."""
    ctx = _context()
    reader, writer = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(source, name, str(cwd), (memory_mb or 0) << 20, writer, timeout),
                       daemon=True)
    t0 = time.monotonic()
    data, failure = None, None
    try:
        proc.start()
        writer.close()
        deadline = t0 + timeout
        try:
            if reader.poll(max(deadline - time.monotonic(), 0)):
                data = reader.recv_bytes(REPORT_LIMIT)
            elif time.monotonic() >= deadline:
                failure = f"timed out after {timeout:g} s"
        except EOFError:    # the process ended without a report
            pass
        except OSError:     # recv_bytes: longer than REPORT_LIMIT
            failure = f"the cell sent back more than {REPORT_LIMIT >> 20} MB"
        if failure is None:
            proc.join(max(min(deadline - time.monotonic(), 5.0), 0.5))
            if data is None:
                if proc.exitcode is None:
                    failure = f"timed out after {timeout:g} s"
                elif proc.exitcode < 0:
                    sig = _signal_name(-proc.exitcode)
                    why = {"SIGSEGV": " (a crash)", "SIGKILL": " (out of memory?)", "SIGABRT": " (an abort)",
                           "SIGXCPU": " (its CPU time ran out)"}
                    failure = f"the cell's process was killed by {sig}{why.get(sig, '')}"
                else:
                    failure = (f"the cell ended the interpreter (exit status {proc.exitcode}, os._exit?) "
                               "before it finished")
    finally:
        _kill(proc)
        proc.join(1)
        reader.close()
        try:
            proc.close()
        except ValueError:
            pass
    seconds = time.monotonic() - t0
    if data is None:
        return None, failure, seconds
    try:
        report = json.loads(data)
        if not (isinstance(report, dict) and isinstance(report.get("checks"), list)):
            raise ValueError("not a report")
    except (ValueError, RecursionError):
        return None, "the cell's process sent back data that is not a report", seconds
    return report, None, seconds


def _describe_error(err: dict) -> str:
    """A cell's error, as the cell's process reported it, in one line."""
    name = str(err.get("type", "Exception"))[:80]
    msg = " ".join(str(err.get("message", "")).split())[:300]
    if name == "SystemExit":
        text = (f"the cell raised SystemExit ({err.get('code')}): an exercise cell must not call "
                "sys.exit() or exit()")
    elif name == "KeyboardInterrupt":
        text = "the cell raised KeyboardInterrupt"
    elif name == "MemoryError" or "can't allocate memory" in msg:
        text = "the cell ran out of memory" + (f" ({name}: {msg})" if msg else f" ({name})")
    else:
        text = f"the cell raised {name}" + (f": {msg}" if msg else "")
    if err.get("name_error") is True:
        text += f" ({ALONE})"
    return text


def judge_record(ex_id: str, rec: dict) -> tuple[bool, str]:
    """This process's verdict on one check's data from a cell: ``(passed, message)``."""
    from ..exercises import ExerciseFailed, judge
    from ..exercises.record import ReplayError, replayer

    try:
        answer = replayer(rec, str(rec.get("name", "answer")))
    except (ReplayError, ValueError, TypeError, RecursionError) as e:
        return False, f"Exercise {ex_id}: the cell sent back no usable answer ({e})"
    try:
        judge(ex_id, answer)
    except ExerciseFailed as e:
        msg = " ".join(str(e).split())
        if isinstance(e.__cause__, NameError):
            msg += f" ({ALONE})"
        return False, msg
    except Exception as e:  # a check that cannot read what came back
        return False, f"Exercise {ex_id}: the check could not read your answer ({type(e).__name__}: {e})"
    return True, "correct"


@dataclass
class Result:
    """One exercise of one submission."""
    id: str
    passed: bool
    message: str
    score: float
    max_score: float
    seconds: float
    title: str = ""


@dataclass
class Grades:
    """A submission's exercises in order, with ``notes`` (a duplicated exercise cell, an exercise
    of another chapter, a cell that failed outside any exercise) and ``error`` (why the file could
    not be graded at all)."""
    path: Path
    name: str
    chapter: str | None = None
    results: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    error: str | None = None

    @property
    def score(self) -> float:
        return sum(r.score for r in self.results.values())

    @property
    def max_score(self) -> float:
        return sum(r.max_score for r in self.results.values())

    @property
    def passed(self) -> bool:
        return self.error is None and bool(self.results) and all(r.passed for r in self.results.values())

    def verdicts(self) -> dict:
        """``{exercise id: (passed, message)}``."""
        return {k: (r.passed, r.message) for k, r in self.results.items()}


def exercise_order(ex_id: str):
    """The sort key of an exercise id: ``"4.10"`` after ``"4.9"``."""
    return tuple(int(p) if p.isdigit() else p for p in ex_id.split("."))


def chapter_of(path: Path, nb=None) -> str | None:
    """The chapter number of a submission: ``NN_`` of its file name, else its ``# Chapter N`` title."""
    m = re.match(r"(\d+)_", path.name)
    if m:
        return str(int(m.group(1)))
    for cell in nb.cells if nb is not None else []:
        if cell.cell_type == "markdown":
            m = re.search(r"^#\s+Chapter\s+(\d+)\b", cell.source, re.M)
            if m:
                return str(int(m.group(1)))
    return None


def _calls_check(source: str) -> bool:
    """Whether a code cell calls ``check`` or imports :mod:`emd_lib.exercises`."""
    import ast

    try:
        tree = ast.parse(source)
    except SyntaxError:  # IPython magics or a broken cell: fall back on the text
        return bool(re.search(r"\bcheck\s*\(", source)) or "emd_lib.exercises" in source
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            if (isinstance(f, ast.Name) and f.id == "check") or (isinstance(f, ast.Attribute) and f.attr == "check"):
                return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("emd_lib.exercises"):
            return True
        if isinstance(node, ast.ImportFrom) and node.module == "emd_lib" and any(
                a.name == "exercises" for a in node.names):
            return True
        if isinstance(node, ast.Import) and any(a.name.startswith("emd_lib.exercises") for a in node.names):
            return True
    return False


def _is_nbgrader_test(cell) -> bool:
    """An nbgrader autograder-tests cell (it repeats an exercise's check for nbgrader, which runs
    the whole notebook; this grader judges the exercise's own cell)."""
    meta = cell.get("metadata", {}).get("nbgrader", {})
    return meta.get("grade") is True and not meta.get("solution")


def prepare() -> dict:
    """The registry, with every module the checks import loaded before any student code runs
    (a cell could change the library's files on disk; this process never reads them again)."""
    import importlib

    from ..exercises import check_modules, registry

    reg = registry()
    for mod in check_modules():
        importlib.import_module(mod)
    return reg


def grade(path: Path, timeout: float = DEFAULT_TIMEOUT, memory_mb: int | None = DEFAULT_MEMORY_MB,
          name: str | None = None) -> Grades:
    """Grade one submission: every exercise cell in its own process, every verdict here.

    Each exercise passes only when ``check`` was called on it, the answer the cell sent back
    passes this process's check, and every cell that holds it ran to its end. A missing
    exercise, one never checked, or one whose cell raised, crashed, exited or timed out fails."""
    import jupytext

    reg = prepare()
    path = Path(path)
    res = Grades(path=path, name=name or path.name)
    try:
        nb = jupytext.read(path)
    except Exception as e:  # an unreadable file: the caller grades the next one
        res.error = f"cannot grade: {type(e).__name__}: {' '.join(str(e).split())[:300]}"
        return res
    chapter = res.chapter = chapter_of(path, nb)
    if chapter is None:
        res.error = (f"cannot grade: cannot tell which chapter {path.name} is: name it NN_*.py or "
                     "NN_*.ipynb, or keep its '# Chapter N' title")
        return res
    expected = sorted((k for k in reg if k.split(".")[0] == chapter), key=exercise_order)
    if not expected:
        res.error = f"cannot grade: chapter {chapter} has no exercises"
        return res

    runs: dict[str, list[tuple[int, bool | None, str]]] = {k: [] for k in expected}   # None: no check here
    called: dict[str, set[int]] = {k: set() for k in expected}
    seconds: dict[str, float] = {k: 0.0 for k in expected}
    heading_id = None
    # where the book runs its chapters; a student edition's install drops chapters/, and then
    # the submission's own folder serves
    cwd = ROOT / "chapters" if (ROOT / "chapters").is_dir() else path.resolve().parent
    for i, cell in enumerate(nb.cells, 1):
        if cell.cell_type == "markdown":
            found = EXERCISE_HEADING.findall(cell.source)
            heading_id = found[-1] if found else None
            continue
        if cell.cell_type != "code":
            continue
        after_heading, heading_id = heading_id, None
        if _is_nbgrader_test(cell) or not (_calls_check(cell.source) or after_heading):
            continue
        intended = set(CHECK.findall(cell.source)) | ({after_heading} if after_heading else set())
        report, failure, took = run_isolated(cell.source, f"<cell {i} of {path.name}>", cwd, timeout, memory_mb)
        t0 = time.monotonic()
        if report is None:
            for ex_id in intended & set(runs):
                runs[ex_id].append((i, False, failure))
                seconds[ex_id] += took
            if not intended & set(runs):
                res.notes.append(f"cell {i} (no exercise) failed: {failure}")
            continue
        verdicts = []   # (id, passed, message) for each check the cell made, judged here
        for rec in report["checks"][:MAX_CHECKS_PER_CELL]:
            if not isinstance(rec, dict) or not isinstance(rec.get("id"), str):
                continue
            ex_id = rec["id"]
            if ex_id in runs:
                verdicts.append((ex_id, *judge_record(ex_id, rec)))
            else:
                verdicts.append((ex_id, False, ""))
        err = report.get("error")
        error = _describe_error(err) if isinstance(err, dict) else None
        from_check = isinstance(err, dict) and err.get("from_check") is True
        ids = intended | {v[0] for v in verdicts}
        for ex_id in sorted(ids, key=exercise_order):
            mine = [v for v in verdicts if v[0] == ex_id]
            if ex_id not in runs:
                if mine:
                    res.notes.append(f"cell {i} checks exercise {ex_id}, which is not an exercise of "
                                     f"chapter {chapter}: not scored")
                continue
            seconds[ex_id] += took
            if mine:
                called[ex_id].add(i)
                bad = [v for v in mine if not v[1]]
                if bad:
                    runs[ex_id].append((i, False, bad[0][2]))
                elif error is not None:
                    runs[ex_id].append((i, False, "the check passed but then " + error))
                else:
                    runs[ex_id].append((i, True, "correct"))
            elif error is not None and not from_check:
                runs[ex_id].append((i, False, f"{error}, before the cell reached check(\"{ex_id}\", ...)"))
            elif error is not None:
                runs[ex_id].append((i, False, error))
            else:  # a FAIL only if no other cell checks it (a definition cell may precede the check)
                runs[ex_id].append((i, None, f"the cell never calls check(\"{ex_id}\", ...)"))
        if error is not None and not ids:
            res.notes.append(f"cell {i} (no exercise) failed: {error}")
        for ex_id in ids & set(runs):
            seconds[ex_id] += time.monotonic() - t0

    for ex_id in expected:
        ex = reg[ex_id]
        cells = sorted(called[ex_id])
        if not runs[ex_id]:
            ok, msg = False, f"exercise {ex_id} is missing: no cell ends with check(\"{ex_id}\", ...)"
        else:
            failed = [(i, m) for i, ok, m in runs[ex_id] if ok is False]
            if not cells and not failed:
                failed = [(i, m) for i, ok, m in runs[ex_id]]
            if len(cells) > 1:
                res.notes.append(f"exercise {ex_id} is checked in cells {', '.join(map(str, cells))}: "
                                 "every copy must pass")
            if failed:
                where = f"cell {failed[0][0]}: " if len(runs[ex_id]) > 1 else ""
                ok, msg = False, where + failed[0][1]
            else:
                ok, msg = True, "correct"
        res.results[ex_id] = Result(ex_id, ok, msg, ex.weight if ok else 0, ex.weight, round(seconds[ex_id], 3),
                                    ex.title)
    return res


# ---- many submissions -------------------------------------------------------------------------------

def submissions(targets: list[str]) -> list[tuple[Path, str]]:
    """``(path, name)`` for each file named, and each ``.py`` / ``.ipynb`` under each folder named
    (hidden folders and notebook checkpoints skipped), the name relative to the folder (to its
    parent when several targets are named)."""
    out = []
    for t in targets:
        p = Path(t)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix in (".py", ".ipynb") and f.is_file()
                           and not any(part.startswith(".") or part == "__pycache__"
                                       for part in f.relative_to(p).parts))
            base = p.resolve().parent if len(targets) > 1 else p.resolve()
            out += [(f, f.resolve().relative_to(base).as_posix()) for f in found]
        else:
            out.append((p, p.name))
    return out


def _fmt(x: float) -> str:
    return f"{x:g}"


def print_grades(g: Grades, out=None) -> None:
    """One line per exercise, the notes, and the file's score."""
    out = out or sys.stdout
    if g.error:
        print(f"{g.name}: {g.error}", file=out)
        return
    for ex_id, r in g.results.items():
        print(f"{g.name}  {ex_id}: {'PASS' if r.passed else 'FAIL'} {_fmt(r.score)}/{_fmt(r.max_score)} points"
              + ("" if r.passed else f"  {r.message}"), file=out)
    for note in g.notes:
        print(f"{g.name}  note: {note}", file=out)
    n_pass = sum(r.passed for r in g.results.values())
    print(f"{g.name}: {n_pass}/{len(g.results)} exercises pass, score {_fmt(g.score)}/{_fmt(g.max_score)} points",
          file=out)


def table(all_grades: list[Grades]) -> str:
    """Every submission in one table: a row per file, a column per exercise, and the score."""
    ids = sorted({k for g in all_grades for k in g.results}, key=exercise_order)
    head = ["file"] + ids + ["score"]
    rows = []
    for g in all_grades:
        if g.error:
            rows.append([g.name] + ["-"] * len(ids) + ["cannot grade"])
            continue
        rows.append([g.name] + [("PASS" if g.results[k].passed else "FAIL") if k in g.results else "-"
                                for k in ids] + [f"{_fmt(g.score)}/{_fmt(g.max_score)}"])
    widths = [max(len(str(r[j])) for r in [head] + rows) for j in range(len(head))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [head] + rows]
    return "\n".join(lines)


def to_json(all_grades: list[Grades], timeout: float) -> dict:
    """Per file and per exercise: id, passed, score, max score, message, seconds."""
    return {
        "timeout_s": timeout,
        "score": sum(g.score for g in all_grades),
        "max_score": sum(g.max_score for g in all_grades),
        "files": [{
            "file": g.name, "path": str(g.path), "chapter": g.chapter, "error": g.error,
            "passed": g.passed, "score": g.score, "max_score": g.max_score, "notes": list(g.notes),
            "exercises": [{"id": r.id, "title": r.title, "passed": r.passed, "score": r.score,
                           "max_score": r.max_score, "message": r.message, "seconds": r.seconds}
                          for r in g.results.values()],
        } for g in all_grades],
    }


def to_gradescope(all_grades: list[Grades], seconds: float) -> dict:
    """Gradescope's ``results.json``: a test per exercise (per file, when there are several)."""
    tests, several = [], len(all_grades) > 1
    for g in all_grades:
        prefix = f"{g.name}: " if several else ""
        if g.error:
            tests.append({"name": f"{prefix}the submission", "score": 0, "max_score": 0,
                          "status": "failed", "output": g.error})
        for r in g.results.values():
            tests.append({"name": f"{prefix}Exercise {r.id}" + (f": {r.title}" if r.title else ""),
                          "number": r.id, "score": r.score, "max_score": r.max_score,
                          "status": "passed" if r.passed else "failed",
                          "output": "correct" if r.passed else r.message})
    n_pass = sum(r.passed for g in all_grades for r in g.results.values())
    n_all = sum(len(g.results) for g in all_grades)
    return {"score": sum(g.score for g in all_grades), "execution_time": round(seconds),
            "output": f"{n_pass} of {n_all} exercises pass", "tests": tests}


def _write_json(path: str, data: dict) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, allow_nan=False, default=str) + "\n")
    os.replace(tmp, p)


def grade_all(targets: list[str], timeout: float = DEFAULT_TIMEOUT, memory_mb: int | None = DEFAULT_MEMORY_MB,
              json_out: str | None = None, gradescope_out: str | None = None, out=None) -> list[Grades]:
    """Grade every submission named (files and folders), print each and the table, write the reports."""
    out = out or sys.stdout
    t0 = time.monotonic()
    found = submissions(targets)
    all_grades = []
    for path, name in found:
        if not path.exists():
            g = Grades(path=path, name=name, error=f"cannot grade: no such file {path}")
        else:
            g = grade(path.resolve(), timeout, memory_mb, name=name)
        print_grades(g, out)
        out.flush()
        all_grades.append(g)
    if len(all_grades) > 1:
        print("", file=out)
        print(table(all_grades), file=out)
    if json_out:
        _write_json(json_out, to_json(all_grades, timeout))
    if gradescope_out:
        _write_json(gradescope_out, to_gradescope(all_grades, time.monotonic() - t0))
    return all_grades


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the grader waits, so that it stops the cell's process before it ends."""


def main(argv=None, prog: str = "python -m emd_lib grade") -> int:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("targets", nargs="+", metavar="FILE_OR_FOLDER", help="submitted chapters (.py, .ipynb) or folders")
    ap.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="S",
                    help=f"seconds each exercise cell may run (default {DEFAULT_TIMEOUT:g})")
    ap.add_argument("--memory", type=int, default=DEFAULT_MEMORY_MB, metavar="MB",
                    help=f"address space of each cell's process, Linux only (default {DEFAULT_MEMORY_MB}; 0: no limit)")
    ap.add_argument("--json", metavar="OUT", help="write every file's exercises as JSON")
    ap.add_argument("--gradescope", metavar="OUT", help="write Gradescope's results.json")
    args = ap.parse_args(argv)
    if not args.timeout > 0:
        ap.error(f"--timeout must be positive, got {args.timeout:g}")
    if args.memory and args.memory < 1024:
        ap.error(f"--memory {args.memory} MB is too small for torch: give at least 1024, or 0 for no limit")
    found = submissions(args.targets)
    if not found:
        ap.error(f"no .py or .ipynb submission in {' '.join(args.targets)}")
    def terminated(signum, frame):   # SIGTERM: stop the cell's process too, as Ctrl-C does
        raise _Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, terminated)
    except ValueError:   # not the main thread: SIGTERM keeps its handler
        previous = None
    try:
        grades = grade_all(args.targets, args.timeout, args.memory or None, args.json, args.gradescope)
    except KeyboardInterrupt as e:   # Ctrl-C of the person grading: the cell's process is already stopped
        print("grading interrupted: no report written", file=sys.stderr)
        return 143 if isinstance(e, _Terminated) else 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0 if all(g.passed for g in grades) else 1


if __name__ == "__main__":
    sys.exit(main())
