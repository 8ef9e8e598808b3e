"""Answers as data: what a graded cell's process sends back, and the answer the grader rebuilds.

The grader runs a submission's exercise cell in a process of its own and decides the verdict
in its own process, where nothing the submission ran can reach the checks. Between the two
only data travels, as JSON (never pickle, which would run code on loading):

* in the cell's process, :func:`recorder` wraps the student's function before the library's
  check calls it, and records what every call returned (tensors, numbers, strings, ``None``,
  tuples, lists and dicts of them) or which exception it raised;
* in the grader's process, :func:`replayer` builds a function that gives back those results,
  call after call, and the grader's own copy of the check judges them against the references it
  computes itself, on the inputs it chose.

A submission can send anything it likes; it is only ever read as the values its function
returned, so the only data that passes a check is a right answer to the grader's inputs.

A scalar that depends on tensors the check passed in with ``requires_grad``, or on the weights of a
network the check passed in (a loss the check differentiates), also carries its gradient with
respect to them; the replayed scalar is its value
plus the first-order term in those inputs, so the check's ``autograd.grad`` gives the student's
gradient. A non-scalar output comes back without its graph.
"""
from __future__ import annotations

import builtins
import functools
import math

LIMIT_ITEMS = 2_000_000     # numbers in one cell's report, all answers together
MAX_DEPTH = 20
_DTYPES = ("float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool")


class Unreadable:
    """A value the cell's process could not send back (an object of type ``kind``)."""

    def __init__(self, kind: str):
        self.kind = kind

    def __repr__(self):
        return f"<a {self.kind}, which the grader cannot read back>"


class _Budget:
    def __init__(self):
        self.left = LIMIT_ITEMS

    def take(self, n: int):
        self.left -= n
        if self.left < 0:
            raise ValueError("the answers are too large to send back")


# ---- the cell's process -------------------------------------------------------------------------

def encode(value, budget: _Budget | None = None, depth: int = 0):
    """``value`` as JSON-ready data; anything else becomes ``{"unreadable": type name}``."""
    import torch

    budget = budget or _Budget()
    if depth > MAX_DEPTH:
        return {"unreadable": "structure nested too deep"}
    if value is None or isinstance(value, (bool, str)):
        budget.take(1 if not isinstance(value, str) else 1 + len(value) // 64)
        return value if not isinstance(value, str) else value[:10_000]
    if isinstance(value, int):
        budget.take(1)
        return value if abs(value) < 2**63 else float(value)
    if isinstance(value, float):
        budget.take(1)
        return {"float": repr(value)} if not math.isfinite(value) else value
    if isinstance(value, torch.Size):
        return {"tuple": [encode(int(v), budget, depth + 1) for v in value]}
    try:
        import numpy as np
        if isinstance(value, np.generic):
            return encode(value.item(), budget, depth + 1)
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(np.ascontiguousarray(value))
    except ImportError:  # numpy is optional
        pass
    if isinstance(value, torch.Tensor):
        t = value.detach().as_subclass(torch.Tensor).to("cpu")
        name = str(t.dtype).replace("torch.", "")
        if name not in _DTYPES:
            return {"unreadable": f"tensor of dtype {name}"}
        budget.take(t.numel())
        flat = t.reshape(-1).to(torch.float64 if t.is_floating_point() else t.dtype).tolist()
        data = [x if not isinstance(x, float) or math.isfinite(x) else repr(x) for x in flat]
        return {"tensor": {"dtype": name, "shape": list(t.shape), "data": data}}
    if isinstance(value, tuple):
        return {"tuple": [encode(v, budget, depth + 1) for v in value]}
    if isinstance(value, list):
        return {"list": [encode(v, budget, depth + 1) for v in value]}
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"dict": [[k, encode(v, budget, depth + 1)] for k, v in value.items()]}
    return {"unreadable": type(value).__name__}


def _grad_inputs(args, kwargs) -> list:
    """The tensors among a call's arguments that require a gradient (a network's trainable weights
    among them), in a fixed order."""
    import torch

    found = []

    def walk(v, depth=0):
        if depth > MAX_DEPTH:
            return
        if isinstance(v, torch.nn.Module):        # a network the check passed in: its trainable weights
            found.extend(p for p in v.parameters() if p.requires_grad)
        elif isinstance(v, torch.Tensor):
            if v.requires_grad:
                found.append(v)
        elif isinstance(v, (tuple, list)):
            for x in v:
                walk(x, depth + 1)
        elif isinstance(v, dict):
            for x in v.values():
                walk(x, depth + 1)

    walk(list(args))
    walk([kwargs[k] for k in sorted(kwargs)])
    return found


def encode_output(out, args, kwargs, budget: _Budget | None = None) -> dict:
    """What one call returned, with the gradient of a scalar that depends on the call's inputs."""
    import torch

    budget = budget or _Budget()
    rec = {"value": encode(out, budget)}
    if isinstance(out, torch.Tensor) and out.requires_grad and out.numel() == 1:
        inputs = _grad_inputs(args, kwargs)
        grads = None
        if inputs:
            try:
                grads = torch.autograd.grad(out.reshape(()), inputs, retain_graph=True, allow_unused=True)
            except RuntimeError:
                grads = None
        rec["grads"] = None if grads is None else [
            None if g is None else encode(g, budget) for g in grads]
    return rec


def recorder(answer, calls: list, budget: _Budget | None = None):
    """``answer`` wrapped so that each call appends to ``calls`` what it returned or raised."""
    from . import STUB_MESSAGE

    budget = budget or _Budget()

    @functools.wraps(answer)
    def recorded(*args, **kwargs):
        try:
            out = answer(*args, **kwargs)
        except BaseException as e:
            calls.append({"raised": type(e).__name__, "message": str(e)[:2000],
                          "stub": isinstance(e, NotImplementedError) and str(e) == STUB_MESSAGE})
            raise
        try:
            calls.append({"returned": encode_output(out, args, kwargs, budget)})
        except Exception as e:  # too large, or an object that fails while read
            calls.append({"returned": {"value": {"unreadable": f"{type(out).__name__} ({e})"}}})
        return out

    if not callable(answer):
        return answer
    return recorded


# ---- the grader's process -----------------------------------------------------------------------

class ReplayError(Exception):
    """The data sent back does not hold an answer the check can use."""


def decode(data, depth: int = 0):
    """The value :func:`encode` wrote (tensors rebuilt with their dtype and shape)."""
    import torch

    if depth > MAX_DEPTH:
        raise ReplayError("the answer is nested too deep")
    if data is None or isinstance(data, (bool, int, float, str)):
        return data
    if not isinstance(data, dict) or len(data) != 1:
        raise ReplayError("malformed answer data")
    (kind, body), = data.items()
    if kind == "float":
        if body not in ("nan", "inf", "-inf"):
            raise ReplayError("malformed number")
        return float(body)
    if kind in ("tuple", "list"):
        if not isinstance(body, list):
            raise ReplayError("malformed sequence")
        items = [decode(v, depth + 1) for v in body]
        return tuple(items) if kind == "tuple" else items
    if kind == "dict":
        if not isinstance(body, list) or not all(isinstance(kv, list) and len(kv) == 2 and isinstance(kv[0], str)
                                                 for kv in body):
            raise ReplayError("malformed dict")
        return {k: decode(v, depth + 1) for k, v in body}
    if kind == "unreadable":
        return Unreadable(str(body)[:200])
    if kind == "tensor":
        if not isinstance(body, dict) or body.get("dtype") not in _DTYPES:
            raise ReplayError("malformed tensor")
        shape, values = body.get("shape"), body.get("data")
        if not (isinstance(shape, list) and all(isinstance(s, int) and s >= 0 for s in shape)
                and isinstance(values, list) and len(shape) <= 16 and math.prod(shape) == len(values)):
            raise ReplayError("malformed tensor")
        if not all(isinstance(v, (int, float)) or v in ("nan", "inf", "-inf") for v in values):
            raise ReplayError("malformed tensor")
        dtype = getattr(torch, body["dtype"])
        vals = [float(v) if isinstance(v, str) else v for v in values]
        if dtype.is_floating_point:
            return torch.tensor(vals, dtype=torch.float64).to(dtype).reshape(shape)
        if dtype == torch.bool:
            return torch.tensor([bool(v) for v in vals], dtype=torch.bool).reshape(shape)
        return torch.tensor([int(v) for v in vals], dtype=dtype).reshape(shape)
    raise ReplayError(f"unknown answer data {kind!r}")


def _unreadable_in(value, depth=0):
    if isinstance(value, Unreadable):
        return value
    if depth < MAX_DEPTH and isinstance(value, (tuple, list)):
        for v in value:
            found = _unreadable_in(v, depth + 1)
            if found:
                return found
    if depth < MAX_DEPTH and isinstance(value, dict):
        return _unreadable_in(list(value.values()), depth + 1)
    return None


def _exception(name: str, message: str) -> Exception:
    """An exception of the student's type name (builtins by their class, KeyboardInterrupt and
    SystemExit as plain exceptions: they must not stop the grader)."""
    name = name if isinstance(name, str) and name.isidentifier() and len(name) < 80 else "Exception"
    cls = getattr(builtins, name, None)
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            return cls(message)
        except TypeError:  # an exception class with other constructor arguments
            pass
    return type(name, (Exception,), {})(message)


def _rebuild(rec: dict, args, kwargs):
    import torch

    if not isinstance(rec, dict) or "value" not in rec:
        raise ReplayError("malformed answer data")
    out = decode(rec["value"])
    bad = _unreadable_in(out)
    if bad is not None:
        from . import ExerciseFailed
        raise ExerciseFailed(f"your function returned {bad.kind.split(' (')[0] if bad.kind else 'an object'} "
                             "data the grader cannot read: return tensors, numbers, or tuples and lists of them")
    grads = rec.get("grads")
    if isinstance(out, torch.Tensor) and out.numel() == 1 and "grads" in rec:
        inputs = _grad_inputs(args, kwargs)
        value = out.to(torch.float64 if not out.is_floating_point() else out.dtype)
        if not isinstance(grads, list) or len(grads) != len(inputs):
            # the scalar required a gradient, but not through the inputs the check gave
            return value.detach().requires_grad_(True)
        first_order = 0
        for x, g in zip(inputs, grads):
            if g is None:
                g = torch.zeros_like(x)
            else:
                g = decode(g)
                if not isinstance(g, torch.Tensor) or g.shape != x.shape:
                    raise ReplayError("malformed gradient")
            # the scalar to first order in x: d(value)/dx = g, its value unchanged
            first_order = first_order + ((x - x.detach()) * g.to(x.dtype)).sum()
        return (value + first_order).reshape(out.shape)
    return out


def replayer(record: dict, name: str = "answer"):
    """A function that returns, call after call, what the student's function did in the cell's process.

    ``record`` is one check's data: ``{"calls": [...]}`` for a function, or ``{"value": ...}``
    for an answer that is a value."""
    from . import ExerciseFailed, STUB_MESSAGE

    if "value" in record and "calls" not in record:
        return decode(record["value"])
    calls = record.get("calls")
    if not isinstance(calls, list):
        raise ReplayError("malformed answer data")
    queue = iter(calls)

    def answer(*args, **kwargs):
        rec = next(queue, None)
        if rec is None:
            raise ExerciseFailed("your function was not called on every case of the check (the cell "
                                 "stopped inside the check, or changed the check)")
        if not isinstance(rec, dict):
            raise ReplayError("malformed answer data")
        if "raised" in rec:
            msg = str(rec.get("message", ""))
            if rec.get("stub") is True and rec.get("raised") == "NotImplementedError":
                msg = STUB_MESSAGE
            raise _exception(rec["raised"], msg)
        return _rebuild(rec.get("returned"), args, kwargs)

    answer.__name__ = answer.__qualname__ = name if str(name).isidentifier() else "answer"
    return answer
