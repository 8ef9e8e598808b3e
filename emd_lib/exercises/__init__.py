"""Checks for the chapters' exercises.

In a chapter::

    from emd_lib.exercises import check
    def my_score(x_t, lam, weights, means, stds):   # the signature exercise 1.2 asks for
        ### BEGIN SOLUTION
        ...
        ### END SOLUTION
    check("1.2", my_score)

``check`` prints a line when the answer is right (and returns ``None``, so that a notebook
shows nothing more), and raises :class:`ExerciseFailed` (an ``AssertionError``) with a hint
when it is not, or when the solution is still the student edition's stub.

Each chapter's checks live in ``emd_lib/exercises/chNN.py`` and are registered with
:func:`register`, together with

* ``wrong=``: wrong answers the tests use to prove the check can fail;
* ``points=`` (``weight``) and ``minutes=``: the exercise's points in a grade and the time a
  student needs for it (the instructor kit's session plans add these up);
* ``forbid=``: the library functions that implement the exercise. While the check runs the
  student's function they refuse to run (:mod:`emd_lib.exercises.refuse`), so an answer that
  calls the library's own implementation fails with a message that says so;
* ``route=``: the "library route", an answer that just calls the library; the tests prove it fails;
* ``kind=``: ``"method"`` (a piece of EMD: a loss, a gradient, a step, a loop, run on network or
  mixture inputs), ``"derivation"`` (a formula or a number the check evaluates), ``"experiment"``
  (a measured quantity within a band) or ``"tool"``.

:func:`judge` is the verdict without the printed line: the grader (:mod:`emd_lib.book.grading`)
calls it in its own process on the answers a submission's cell sent back
(:mod:`emd_lib.exercises.record`).
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Callable

__all__ = ["check", "judge", "register", "ExerciseFailed", "registry", "expect_close", "grade_id", "KINDS"]

KINDS = ("method", "derivation", "experiment", "tool")


class ExerciseFailed(AssertionError):
    """The answer to an exercise is not right yet; the message says what to look at."""


@dataclass
class Exercise:
    id: str
    fn: Callable              # fn(answer) -> None; raises ExerciseFailed with a hint
    title: str = ""
    wrong: list = field(default_factory=list)   # answers that must fail (used by the tests)
    weight: float = 1                           # points in a grade
    minutes: int = 10                           # a student's time for it
    forbid: tuple = ()                          # library functions that refuse to run in the answer
    route: Callable | None = None               # an answer that just calls the library (must fail)
    kind: str = "derivation"                    # see KINDS

    @property
    def points(self) -> float:
        """The exercise's points in a grade (its weight)."""
        return self.weight

    @property
    def grade_id(self) -> str:
        """The exercise's nbgrader grade id (see :func:`grade_id`)."""
        return grade_id(self.id)


def grade_id(ex_id: str) -> str:
    """The nbgrader grade id of exercise ``ex_id``'s autograded cell: ``"1.2"`` -> ``"exercise_1_2"``
    (its answer cell is ``grade_id(ex_id) + "_answer"``)."""
    return "exercise_" + str(ex_id).replace(".", "_")


_REGISTRY: dict[str, Exercise] = {}


def expect_close(name: str, got, want, tol: float = 1e-5, relative: bool = True) -> None:
    """Raise :class:`ExerciseFailed` unless ``got`` has ``want``'s shape and matches it to ``tol``
    (relative to ``max(|want|, 1)`` when ``relative``, else absolute), naming ``name``."""
    import torch

    got = torch.as_tensor(got, dtype=torch.float64)
    want = torch.as_tensor(want, dtype=torch.float64)
    if got.shape != want.shape:
        raise ExerciseFailed(f"{name} should have shape {tuple(want.shape)}, got {tuple(got.shape)}")
    err = float((got - want).abs().max())
    bound = tol * max(float(want.abs().max()), 1.0) if relative else tol
    if not err <= bound:
        raise ExerciseFailed(f"{name} is off by up to {err:.3g}")


def ring_networks(seed: int, batch: int, salt: int):
    """A random MLP generator and eps-predicting student score (width 32) facing the exact
    ``ring8`` teacher, with ``batch`` latents, noises and log-SNRs drawn from U[-6, 6]: the inputs
    on which the checks run an answer. ``salt`` keeps each chapter's draws its own.
    Returns ``(gen, teacher, student, z, eps, lam)``."""
    import torch

    from ..mixtures import ring8
    from ..nets import MLPGenerator, MLPScore
    from ..teachers import NetworkTeacher

    teacher = ring8()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        gen = MLPGenerator(2, 32, 2)
        student = NetworkTeacher(MLPScore(2, 32, 2, schedule=teacher.schedule), teacher.schedule, predicts="eps")
    g = torch.Generator().manual_seed(10 * seed + salt)
    z, eps = torch.randn(batch, 2, generator=g), torch.randn(batch, 2, generator=g)
    lam = -6 + 12 * torch.rand(batch, generator=g)
    return gen, teacher, student, z, eps, lam


def register(id: str, title: str = "", wrong: list | None = None, weight: float | None = None, *,
             points: float | None = None, minutes: int = 10, forbid=(), route: Callable | None = None,
             kind: str = "derivation"):
    """Decorator: register ``fn(answer)`` as the check of exercise ``id``, worth ``points`` (or
    ``weight``) points and about ``minutes`` minutes of work; while it runs the answer, the library
    functions in ``forbid`` refuse to run; ``route`` is the library's own answer, which must fail."""
    if points is not None and weight is not None and points != weight:
        raise ValueError(f"exercise {id}: give points or weight, not both")
    weight = points if points is not None else (weight if weight is not None else 1)
    if not weight > 0:
        raise ValueError(f"exercise {id}: weight must be positive, got {weight!r}")
    if not (isinstance(minutes, int) and minutes > 0):
        raise ValueError(f"exercise {id}: minutes must be a whole number > 0, got {minutes!r}")
    if kind not in KINDS:
        raise ValueError(f"exercise {id}: kind must be one of {KINDS}, got {kind!r}")

    def deco(fn):
        _REGISTRY[id] = Exercise(id, fn, title, list(wrong or []), weight, minutes, tuple(forbid), route, kind)
        return fn
    return deco


def registry() -> dict[str, Exercise]:
    """All registered exercises (imports every ``chNN`` module)."""
    for mod in pkgutil.iter_modules(__path__):
        if mod.name.startswith("ch"):
            importlib.import_module(f"{__name__}.{mod.name}")
    return dict(_REGISTRY)


STUB_MESSAGE = "write your solution here"   # the student edition's stub raises NotImplementedError(STUB_MESSAGE)


class _ReturnedNone(Exception):
    """Raised by :func:`_refuse_none` when the student's function returns ``None``."""


def _refuse_none(answer):
    """``answer`` wrapped so that a ``None`` return stops the check with a clear message
    (a function that computes its result but forgets ``return``)."""
    import functools
    import inspect

    if not (inspect.isfunction(answer) or inspect.ismethod(answer)):
        return answer

    @functools.wraps(answer)
    def wrapped(*args, **kwargs):
        out = answer(*args, **kwargs)
        if out is None:
            raise _ReturnedNone(getattr(answer, "__name__", "your function"))
        return out

    return wrapped


def _is_stub(e: NotImplementedError) -> bool:
    """The student edition's stub, not a ``NotImplementedError`` raised by the student's own code."""
    return str(e) == STUB_MESSAGE


def _refusing_library(answer, forbid):
    """``answer`` wrapped so that, during each of its calls, the library functions ``forbid`` refuse
    to run (:func:`emd_lib.exercises.refuse.refusing`); the check's own code runs outside."""
    import functools

    from .refuse import call_refusing, namespaces_of

    if not forbid or not callable(answer):
        return answer
    namespaces = namespaces_of(answer)

    @functools.wraps(answer)
    def wrapped(*args, **kwargs):
        return call_refusing(forbid, namespaces, answer, args, kwargs)

    return wrapped


def _refused_message(e: BaseException) -> str | None:
    """The message of a library function's refusal (here, or sent back by a graded cell), else None."""
    if type(e).__name__ == "LibraryRefused":
        from .refuse import MESSAGE

        msg = str(e)
        return msg if MESSAGE in msg else f"{msg} ({MESSAGE})"
    return None


def judge(id: str, answer) -> None:
    """Return when ``answer`` to exercise ``id`` is right, else raise :class:`ExerciseFailed` with the hint.

    When the student's code raises, the :class:`ExerciseFailed` keeps that exception as its
    cause, so the traceback still shows the student's own line. An answer that calls one of the
    library functions the exercise forbids fails with a message that says so."""
    ex = registry().get(id)
    if ex is None:
        raise KeyError(f"no exercise {id!r}; known: {sorted(registry())}")
    try:
        ex.fn(_refuse_none(_refusing_library(answer, ex.forbid)))
    except _ReturnedNone as e:
        raise ExerciseFailed(f"Exercise {id}: your function {e} returned None: did you forget `return`?") from None
    except NotImplementedError as e:
        if not _is_stub(e):
            raise ExerciseFailed(f"Exercise {id}: your answer raised NotImplementedError: {e}") from e
        raise ExerciseFailed(f"Exercise {id}: not answered yet; replace the `raise NotImplementedError` "
                             "with your solution") from None
    except ExerciseFailed as e:
        raise ExerciseFailed(f"Exercise {id}: {e}") from None
    except Exception as e:  # the student's code crashed inside the check: keep its traceback
        refused = _refused_message(e)
        if refused is not None:
            raise ExerciseFailed(f"Exercise {id}: your answer calls the library: {refused}") from None
        raise ExerciseFailed(f"Exercise {id}: your answer raised {type(e).__name__}: {e}") from e


def check(id: str, answer) -> None:
    """Check ``answer`` to exercise ``id``; prints a confirmation or raises :class:`ExerciseFailed`
    (the call an exercise cell ends with; see :func:`judge`). Returns ``None``, so that a notebook
    shows only the printed line."""
    judge(id, answer)
    ex = registry()[id]
    print(f"Exercise {id}: correct ({ex.points:g} point{'s' if ex.points != 1 else ''}).")


def check_modules() -> list[str]:
    """Every ``emd_lib`` module the checks import or whose functions they forbid, so a grader can
    import them all before it runs any student code (a check imports some of them only when it
    first runs)."""
    import re
    from pathlib import Path

    names = set()
    for mod in pkgutil.iter_modules(__path__):
        if mod.name.startswith("ch"):
            text = (Path(__file__).parent / f"{mod.name}.py").read_text()
            names |= {f"emd_lib.{m}" for m in re.findall(r"^\s*from \.\.([\w.]+) import", text, re.M)}
    # and the modules of the functions the exercises forbid (their stubs replace attributes there)
    names |= {name.partition(":")[0] for ex in registry().values() for name in ex.forbid}
    return sorted(names)
