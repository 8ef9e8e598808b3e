"""Library functions that refuse to run while a student's answer runs.

Each exercise names the library functions that implement it (``forbid=`` in
:func:`emd_lib.exercises.register`). While the check calls the student's function, those
functions are replaced by a stub that raises :class:`LibraryRefused`, whose message says that
the exercise asks the student to write it; afterwards the originals are restored. The check's
own references are computed outside the student's calls. A stub lets a call through only when
nothing but the library and a check's own wrong answer stands between it and the check (the
tests feed the checks wrong answers built on the library); a call that passes through the
student's code, or a check's library route (``_route*``), meets the refusal, even by way of a
check's helper functions.

A name is ``"module:attribute"`` or ``"module:Class.attribute"``, e.g. ``"emd_lib.em:latent_posterior"``
or ``"emd_lib.teachers:GaussianMixture.score"``. Besides the attribute itself, every other name that
holds the same function is replaced for the duration: aliases in the library's modules (``from .em
import latent_posterior``, the checks' own imports included), and in the namespace of the student's function (the chapter's, or the
graded cell's), so that ``from emd_lib.em import latent_posterior`` at the top of a notebook does
not get round it.
"""
from __future__ import annotations

import contextlib
import importlib
import inspect
import sys

__all__ = ["MESSAGE", "LibraryRefused", "refusing", "call_refusing", "namespaces_of", "resolve"]

MESSAGE = "this exercise asks you to write it yourself"


class LibraryRefused(RuntimeError):
    """A library function was called by an answer to the exercise it implements."""


def resolve(name: str):
    """``(owner, attribute, value)`` of ``"module:attr"`` or ``"module:Class.attr"``; for a class
    attribute ``value`` is the raw entry of the class's ``__dict__`` (a function, static or class method)."""
    mod_name, _, path = name.partition(":")
    if not path:
        raise ValueError(f"a forbidden name is 'module:attribute', got {name!r}")
    owner = importlib.import_module(mod_name)
    *parents, attr = path.split(".")
    for p in parents:
        owner = getattr(owner, p)
    if inspect.isclass(owner):
        for klass in owner.__mro__:
            if attr in vars(klass):
                return owner, attr, vars(klass)[attr]
        raise AttributeError(f"{name}: no attribute {attr!r}")
    return owner, attr, getattr(owner, attr)


def _called_by_a_check(frame) -> bool:
    """Whether a refused function was reached from a check's own wrong answer (which the tests feed
    the checks, and which may use the library) rather than from the answer under test.

    The stack from the call up to :func:`call_refusing` is read: any frame of other code than the
    library's (the student's, a test's) or of a check's library route (``_route*``) means the
    answer under test made the call; a stack of library and check frames only is a wrong answer's."""
    from_check = False
    while frame is not None:
        if frame.f_code is call_refusing.__code__:
            return from_check
        mod = str(frame.f_globals.get("__name__", ""))
        if mod.startswith("emd_lib.exercises.ch"):
            if frame.f_code.co_name.startswith("_route"):
                return False
            from_check = True
        elif not (mod == "emd_lib" or mod.startswith("emd_lib.")):
            return False
        frame = frame.f_back
    return False


def _stub(name: str, original):
    mod, _, path = name.partition(":")
    shown = f"{mod}.{path}"
    target = _plain(original)

    def refused(*args, **kwargs):
        if _called_by_a_check(sys._getframe(1)):
            return target(*args, **kwargs)
        raise LibraryRefused(f"{shown} is the library's own implementation, and {MESSAGE} "
                             "(the library's version refuses to run while the check calls your answer)")

    refused.__name__ = refused.__qualname__ = path.split(".")[-1]
    refused.__doc__ = f"Refuses to run: {MESSAGE}."
    refused._refused = shown
    return refused


def _plain(value):
    """The function behind a static or class method (what a module alias holds)."""
    return value.__func__ if isinstance(value, (staticmethod, classmethod)) else value


@contextlib.contextmanager
def refusing(names, namespaces=()):
    """Within the block, every function named in ``names`` raises :class:`LibraryRefused`, under
    every name the library's modules and ``namespaces`` (dicts: a function's ``__globals__``) give it."""
    patches = []            # (setter target, key, original) in the order applied
    try:
        for name in names:
            owner, attr, value = resolve(name)
            stub = _stub(name, value)
            if isinstance(value, staticmethod):
                replacement = staticmethod(stub)
            elif isinstance(value, classmethod):
                raise ValueError(f"{name}: a class method cannot be forbidden; forbid the class")
            else:
                replacement = stub
            if inspect.isclass(owner):
                had = attr in vars(owner)
                patches.append(("class", owner, attr, value if had else None))
                setattr(owner, attr, replacement)
            else:
                patches.append(("module", owner, attr, value))
                setattr(owner, attr, stub)
            target = _plain(value)
            if inspect.isclass(owner):   # a method: its module aliases are rare; the class entry is enough
                continue
            for mod_name, mod in list(sys.modules.items()):
                if mod is None or mod is owner or not (mod_name == "emd_lib" or mod_name.startswith("emd_lib.")):
                    continue
                if mod_name in ("emd_lib.exercises", "emd_lib.exercises.refuse"):
                    continue
                d = getattr(mod, "__dict__", None)
                if not isinstance(d, dict):
                    continue
                for k, v in list(d.items()):
                    if v is target:
                        patches.append(("module", mod, k, v))
                        setattr(mod, k, stub)
            for ns in namespaces:
                for k, v in list(ns.items()):
                    if v is target:
                        patches.append(("dict", ns, k, v))
                        ns[k] = stub
        yield
    finally:
        for kind, owner, key, value in reversed(patches):
            if kind == "dict":
                owner[key] = value
            elif kind == "class" and value is None:
                delattr(owner, key)
            else:
                setattr(owner, key, value)


def call_refusing(names, namespaces, fn, args, kwargs):
    """``fn(*args, **kwargs)`` with the functions ``names`` refused (the frame the stubs look for)."""
    with refusing(names, namespaces):
        return fn(*args, **kwargs)


def namespaces_of(answer) -> list:
    """The global namespaces of a student's answer (a function, a bound method, a partial)."""
    import functools

    out, seen = [], set()
    todo = [answer]
    while todo:
        f = todo.pop()
        if isinstance(f, functools.partial):
            todo.append(f.func)
            continue
        f = getattr(f, "__func__", f)
        f = getattr(f, "__wrapped__", f) if not hasattr(f, "__globals__") else f
        g = getattr(f, "__globals__", None)
        if isinstance(g, dict) and str(g.get("__name__", "")).startswith("emd_lib.exercises"):
            continue            # the checks' own answers (the wrong ones of the tests) keep the library
        if isinstance(g, dict) and id(g) not in seen:
            seen.add(id(g))
            out.append(g)
    return out
