"""Fuzzing the command line with malformed mixture files.

Random mutations of a valid file (wrong types, missing or extra fields, NaN, huge or negative
values, dropped entries, truncated text, non-JSON bytes) go through ``python -m emd_lib toy``'s
``main()`` in-process with ``--check`` (validation only, a few milliseconds a file). A mutation that
must be refused exits with status 2 and one line on stderr; one that is still a valid mixture
exits 0, and a few of those are also distilled for one step to show that what validation lets
through does not crash later. One subprocess run confirms the real exit status and that no
traceback reaches the terminal.
"""
import copy
import json
import math
import random
import subprocess
import sys

import numpy as np

from emd_lib import ROOT

BASE = {"weights": [0.25, 0.25, 0.5], "means": [[-1.0, 0.0], [1.0, 0.5], [0.0, 2.0]], "stds": [0.3, 0.4, 0.2]}
BASE_COVS = {"weights": [0.4, 0.6], "means": [[0.0, 0.0], [2.0, 1.0]],
             "covs": [[[1.0, 0.3], [0.3, 0.5]], [[0.2, 0.0], [0.0, 0.2]]]}
WRONG_TYPES = ["text", {"a": 1}, None, True, [], [[[]]], "NaN"]
N_CASES = 300


def leaves(obj, path=()):
    """Paths to every number in nested lists."""
    if isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from leaves(v, path + (i,))
    elif isinstance(obj, (int, float)):
        yield path


def set_at(obj, path, value):
    for p in path[:-1]:
        obj = obj[p]
    obj[path[-1]] = value


def mutate(rng: random.Random) -> tuple[str | bytes, bool, str]:
    """A mutated mixture file: ``(content, must_fail, what was done)``."""
    spec = copy.deepcopy(rng.choice([BASE, BASE_COVS]))
    shape_key = "stds" if "stds" in spec else "covs"
    key = rng.choice(["weights", "means", shape_key])
    kind = rng.choice(["wrong_type_field", "wrong_type_leaf", "missing", "extra_field", "nan", "inf", "huge",
                       "negative", "moderate", "drop_entry", "truncate", "bytes", "not_object", "empty"])
    if kind == "wrong_type_field":
        spec[key] = rng.choice(WRONG_TYPES)
        return json.dumps(spec), True, f"{key} = {spec[key]!r}"
    if kind == "wrong_type_leaf":
        path = rng.choice(list(leaves(spec[key])))
        bad = rng.choice(["1.0", None, True, {"x": 1}, [1.0, 2.0]])
        set_at(spec[key], path, bad)
        return json.dumps(spec), True, f"{key}{list(path)} = {bad!r}"
    if kind == "missing":
        spec.pop(key)
        return json.dumps(spec), True, f"no {key}"
    if kind == "extra_field":
        spec[rng.choice(["colour", "std", "Weights", "cov"])] = [1.0]
        return json.dumps(spec), True, "unknown field"
    if kind in ("nan", "inf", "huge", "negative", "moderate"):
        path = rng.choice(list(leaves(spec[key])))
        value = {"nan": math.nan, "inf": rng.choice([math.inf, -math.inf]), "huge": rng.choice([1e39, 1e300, -1e308]),
                 "negative": -rng.uniform(0.01, 5.0), "moderate": rng.choice([1e6, -1e6, 1e-6, 0.0])}[kind]
        set_at(spec[key], path, value)
        # a negative or moderate mean (or an off-diagonal covariance entry) can still be a valid mixture
        must = kind in ("nan", "inf", "huge") or (kind == "negative" and key != "means" and
                                                  not (key == "covs" and path[-1] != path[-2]))
        if kind == "moderate" and key == "weights":
            must = True                                       # the weights no longer sum to 1
        return json.dumps(spec), must, f"{key}{list(path)} = {value}"
    if kind == "drop_entry":
        spec[key] = spec[key][:-1]
        return json.dumps(spec), True, f"{key} one entry short"
    if kind == "truncate":
        text = json.dumps(spec)
        cut = rng.randrange(0, len(text) - 1)
        return text[:cut], True, f"cut at {cut} of {len(text)}"
    if kind == "bytes":
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64))), True, "random bytes"
    if kind == "not_object":
        return json.dumps(rng.choice([[spec], spec["weights"], "mixture", 3, None])), True, "not an object"
    return "", True, "empty file"


def valid_mixture(spec: dict) -> bool:
    """An independent verdict (numpy, float64) on a spec whose fields have the right types and
    shapes: weights non-negative and summing to one, finite means, positive stds or symmetric
    positive-definite covariances."""
    w, mu = np.array(spec["weights"], float), np.array(spec["means"], float)
    ok = (w >= 0).all() and abs(w.sum() - 1) <= 1e-4 and np.isfinite(mu).all()
    if "stds" in spec:
        return bool(ok and (np.array(spec["stds"], float) > 0).all())
    c = np.array(spec["covs"], float)
    return bool(ok and np.allclose(c, c.transpose(0, 2, 1), atol=1e-6) and (np.linalg.eigvalsh(c) > 0).all())


def test_fuzz_mixture_files_in_process(tmp_path, toy_cli):
    rng = random.Random(20240516)
    f = tmp_path / "m.json"
    out = tmp_path / "s.npy"
    refused, accepted, distilled, may_pass = 0, 0, 0, 0
    for i in range(N_CASES):
        content, must_fail, what = mutate(rng)
        f.write_bytes(content) if isinstance(content, bytes) else f.write_text(content)
        rc, _, err = toy_cli("--mixture", f, "--samples", out, "--check")
        case = f"case {i} ({what}): {content[:120]!r}"
        assert rc in (0, 2), case
        if not must_fail:          # a mutation that may keep the mixture valid: refused exactly when it does not
            assert (rc == 0) == valid_mixture(json.loads(content)), (case, err)
            may_pass += 1
        assert "Traceback" not in err, case
        if rc == 2:
            lines = err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("error: ") and str(f) in lines[0], (case, err)
            refused += 1
        else:
            assert not must_fail, f"accepted a file that must be refused, {case}"
            accepted += 1
            if distilled < 3:  # a one-step distillation of what validation let through
                rc, _, err = toy_cli("--mixture", f, "--samples", out, "--steps", 1, "--init-steps", 0, "--warmup", 0,
                                     "--n-samples", 6, "--quiet", "-K", 1)
                assert rc == 0 and err == "", (case, err)
                distilled += 1
    assert refused > 0.8 * N_CASES and accepted > 0 and distilled > 0 and may_pass >= 10, \
        (refused, accepted, distilled, may_pass)


def test_fuzz_subprocess_exit_status(tmp_path):
    f = tmp_path / "m.json"
    f.write_bytes(b"\x00\x01\x02garbage\xff")
    r = subprocess.run([sys.executable, "-m", "emd_lib.commands.toy", "--mixture", str(f), "--samples", str(tmp_path / "s.npy"),
                        "--steps", "1"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("error: ")
