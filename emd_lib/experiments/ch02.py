"""Chapter 2's sweep: Diff-Instruct (reverse KL) against EMD (forward KL), seeds x methods x targets.

Two studies, each written to its own JSON file under ``data/results/``:

* ``gaussian``: a linear generator ``g(z) = A z + b`` (a Gaussian, the least capacity there is)
  distilled from the ``bimodal`` target, in two regimes of noise levels: ``default``
  (``lam ~ U[-6, 6]``, ``w = sigma^2``) and ``low_noise`` (``lam ~ U[2, 6]``). Writes
  ``ch02_gaussian.json``.
* ``mlp``: the default expressive MLP generator (2-256-256-256-2, initialised from the teacher
  at ``lam* = -2``) on ``ring8`` and ``irregular``, with one weighting per invocation:
  ``--weighting sigma2`` (our default) or ``--weighting one`` (``w = 1``, which puts far more
  weight on low noise). Writes ``ch02_mlp_<weighting>.json``.

* ``far``: the MLP generator on the ``far`` target (a light mode, weight 0.15, five units from
  the heavy one), Diff-Instruct against EMD-K for K in 1, 2, 4, 8, 16 (eps-only chain), at
  equal generator updates and then at equal wall time: each EMD-K gets the updates that cost
  what ``--steps`` Diff-Instruct updates cost, from the seconds per whole step (student updates
  included) of every method, measured round-robin in the same process. Writes
  ``ch02_far.json`` (``ch02_far_<weighting>.json`` for another weighting).
* ``far_map``: the same on ``two_modes(distance, weight)`` over a grid of distances and
  weights, Diff-Instruct and EMD-8 only, equal updates. Writes ``ch02_far_map.json``.

Every run records the final :func:`~emd_lib.metrics.mixture_report` of 4000 one-step samples
and, every ``eval_every`` steps, the mode masses of 2000 samples (for the curves of early
training). Usage::

    python -m emd_lib experiment ch02 --study gaussian
    python -m emd_lib experiment ch02 --study mlp --weighting sigma2
    python -m emd_lib experiment ch02 --study mlp --weighting one
    python -m emd_lib experiment ch02 --study far --seeds 0 1 2 3 4 --steps 1500
    python -m emd_lib experiment ch02 --study far --weighting one --labels DI EMD-8 --seeds 0 1 2 --steps 1500 --no-equal-time
    python -m emd_lib experiment ch02 --study far_map --distances 2 4 6 --weights 0.05 0.15 0.3 --seeds 0 1 2 --steps 600
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .. import DATA_DIR
from ..distill import DistillConfig, Distiller
from ..em import LinearGenerator
from ..metrics import mixture_report, mode_masses, total_variation
from ..mixtures import get_mixture, two_modes

__all__ = ["run_one", "run_label", "whole_step_seconds", "equal_time_steps", "keeps", "REGIMES", "FAR_LABELS",
           "KEEP_FRACTION", "main", "group_runs", "stat", "gaussian_table", "mlp_summary", "mlp_table", "compare",
           "compare_table", "early_tv", "mode_losses", "far_study", "far_table", "far_timing_table", "far_losses",
           "far_map_grid"]

#: the methods of the ``far`` study
FAR_LABELS = ["DI", "EMD-1", "EMD-2", "EMD-4", "EMD-8", "EMD-16"]

#: a run "keeps" the light mode when that mode's sample mass is at least this fraction of its weight
KEEP_FRACTION = 0.5


def keeps(mass: float, weight: float, fraction: float = KEEP_FRACTION) -> bool:
    """Whether a light mode of ``weight`` with sample mass ``mass`` counts as kept."""
    return bool(mass >= fraction * weight)

#: noise-level regimes of the ``gaussian`` study (DistillConfig overrides)
REGIMES = {"default": {}, "low_noise": {"lam_min": 2.0}}


def _linear_generator(seed: int, dim: int = 2) -> LinearGenerator:
    """``g(z) = 0.3 z + b0`` with ``b0 ~ N(0, I)`` drawn from ``seed``: a narrow Gaussian at a random place."""
    b0 = torch.randn(dim, generator=torch.Generator().manual_seed(seed))
    return LinearGenerator(0.3 * torch.eye(dim), b0)


def run_one(mixture: str, method: str, seed: int, steps: int, generator: str = "mlp", eval_every: int = 100,
            n_eval: int = 2000, n_final: int = 4000, keep_samples: int = 0, progress: bool = False, **overrides) -> dict:
    """One distillation run; returns a JSON-ready dict of its settings, final metrics and mass history.

    ``generator``: ``"mlp"`` (the default MLP, initialised from the teacher) or ``"linear"``
    (:func:`_linear_generator`, with ``lr_g = 0.02`` unless overridden and a 128-wide student).
    ``overrides`` go to :class:`DistillConfig`.
    """
    mix = get_mixture(mixture)
    kw = dict(method=method, steps=steps, seed=seed)
    gen = None
    if generator == "linear":
        kw.update(lr_g=0.02, width=128, student_warmup=200)
        gen = _linear_generator(seed, mix.dim)
    elif generator != "mlp":
        raise ValueError(f"generator must be 'mlp' or 'linear', got {generator!r}")
    kw.update(overrides)
    cfg = DistillConfig(**kw)
    d = Distiller(mix, cfg, generator=gen)
    eval_gen = torch.Generator()

    def eval_fn(dist):
        x = dist.sample(n_eval, generator=eval_gen.manual_seed(1000 + seed))
        masses, _ = mode_masses(mix, x)
        return {"tv": total_variation(masses, mix.weights), "masses": masses.tolist()}

    t0 = time.perf_counter()
    hist = d.train(progress=progress, eval_every=eval_every, eval_fn=eval_fn,
                   desc=f"{mixture} {method} seed {seed}")
    seconds = time.perf_counter() - t0
    x = d.sample(n_final, generator=torch.Generator().manual_seed(2000 + seed))
    rep = mixture_report(mix, x, seed=seed)
    out = {"mixture": mixture, "method": method, "seed": seed, "steps": steps, "generator": generator,
           "overrides": {k: v for k, v in overrides.items()}, "config": cfg.to_dict(),
           "seconds": round(seconds, 1), "final": rep,
           "history": {"step": hist.get("eval_step", []), "tv": hist.get("eval_tv", []),
                       "masses": hist.get("eval_masses", [])},
           "true_weights": mix.weights.tolist()}
    if generator == "linear":
        g = d.ema
        out["b"] = g.b.detach().tolist()
        out["cov"] = (g.A @ g.A.T).detach().tolist()
        out["b0"] = _linear_generator(seed, mix.dim).b.detach().tolist()
    if keep_samples:
        out["samples"] = [[round(v, 3) for v in row] for row in x[:keep_samples].tolist()]
    return out


def run_label(mix, label: str, seed: int, steps: int, eval_every: int = 100, n_eval: int = 2000,
              n_final: int = 4000, keep_samples: int = 0, **overrides) -> dict:
    """One run of ``label`` (``"DI"`` or ``"EMD-K"``, as :func:`emd_lib.experiments.ch05.label_config`
    builds it, with ``overrides``) on the two-mode mixture ``mix`` (light mode = component 1):
    final report, the light mode's mass over training, and the wall time of the training loop."""
    from .ch05 import label_config

    cfg = label_config(label, seed=seed, steps=steps, **overrides)
    d = Distiller(mix, cfg)
    eval_gen = torch.Generator()

    def eval_fn(dist):
        x = dist.sample(n_eval, generator=eval_gen.manual_seed(1000 + seed))
        return {"light": float(mode_masses(mix, x)[0][-1])}

    t0 = time.perf_counter()
    d.warmup()
    t1 = time.perf_counter()
    hist = d.train(progress=False, eval_every=eval_every, eval_fn=eval_fn)
    t2 = time.perf_counter()
    x = d.sample(n_final, generator=torch.Generator().manual_seed(2000 + seed))
    rep = mixture_report(mix, x, seed=seed)
    w_light = float(mix.weights[-1])
    out = {"label": label, "seed": seed, "steps": steps, "config": cfg.to_dict(),
           "seconds_warmup": round(t1 - t0, 2), "seconds_train": round(t2 - t1, 2),
           "light_mass": rep["masses"][-1], "light_weight": w_light, "kept": keeps(rep["masses"][-1], w_light),
           "final": rep, "history": {"step": hist.get("eval_step", []), "light": hist.get("eval_light", [])}}
    if keep_samples:
        out["samples"] = [[round(v, 2) for v in row] for row in x[:keep_samples].tolist()]
    return out


def whole_step_seconds(mix, labels, calls: int = 10, rounds: int = 5, batch: int = 256, **overrides) -> dict:
    """Median seconds of one whole training step (the student-score updates and the generator
    update) of each label, timed round-robin in this process (:func:`emd_lib.runs.timing.time_round_robin`)."""
    from ..runs.timing import time_round_robin
    from .ch05 import label_config

    ds = {lab: Distiller(mix, label_config(lab, steps=10_000, batch=batch, init_steps=0, student_warmup=0,
                                           **overrides)) for lab in labels}

    return time_round_robin({lab: d.train_step for lab, d in ds.items()}, calls, rounds=rounds)


def equal_time_steps(timing: dict, steps: int, reference: str = "DI") -> dict:
    """Updates each label gets for the wall time of ``steps`` updates of ``reference``."""
    budget = steps * timing[reference]["median"]
    return {lab: max(1, round(budget / t["median"])) for lab, t in timing.items()}


def _write(out: Path, record: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    tmp.replace(out)


def _main_far(p, args, argv):
    """The ``far`` and ``far_map`` studies (see the module docstring)."""
    from tqdm.auto import tqdm

    seeds = args.seeds if args.seeds is not None else [0, 1, 2, 3, 4]
    steps = args.steps or 1500
    labels = args.labels or (FAR_LABELS if args.study == "far" else ["DI", "EMD-8"])
    if steps < 1 or not seeds:
        p.error(f"--steps must be >= 1 and --seeds not empty, got {steps} and {seeds}")
    from .ch05 import label_config
    for lab in labels:
        try:
            label_config(lab)
        except ValueError as e:
            p.error(str(e))
    ov = {"weighting": args.weighting}
    cmd = "python -m emd_lib experiment ch02 " + " ".join(sys.argv[1:] if argv is None else argv)
    t0 = time.perf_counter()
    record = {"command": cmd, "date": _dt.datetime.now().isoformat(timespec="seconds"), "machine": _machine(),
              "study": args.study, "steps": steps, "seeds": seeds, "labels": labels, "weighting": args.weighting,
              "keep_fraction": KEEP_FRACTION, "complete": False, "runs": []}
    if args.study == "far":
        out = Path(args.out or DATA_DIR / "results" / ("ch02_far.json" if args.weighting == "sigma2"
                                                       else f"ch02_far_{args.weighting}.json"))
        mix = get_mixture("far")
        record["mixture"] = {"name": "far", **mix.to_dict()}
        jobs = [(lab, s, steps, "equal_updates") for s in seeds for lab in labels]
        if args.equal_time:
            timing = whole_step_seconds(mix, labels, **ov)
            record["timing"] = timing
            record["equal_time_steps"] = n_eq = equal_time_steps(timing, steps, labels[0])
            record["equal_time_reference"] = labels[0]
            jobs += [(lab, s, n_eq[lab], "equal_time") for s in seeds for lab in labels if lab != labels[0]]
        for lab, s, n, budget in tqdm(jobs, desc="ch02 far"):
            r = run_label(mix, lab, s, n, keep_samples=400 if budget == "equal_updates" else 0, **ov)
            r["budget"] = budget
            record["runs"].append(r)
            tqdm.write(f"far {budget:>13} {lab:>6} seed {s} ({n} updates): light mass {r['light_mass']:.3f}, "
                       f"TV {r['final']['tv']:.3f} ({r['seconds_train']:.0f} s)")
            record["wall_seconds"] = round(time.perf_counter() - t0, 1)
            _write(out, record)
    else:
        out = Path(args.out or DATA_DIR / "results" / "ch02_far_map.json")
        try:
            cells = [(dist, w, two_modes(dist, w)) for dist in args.distances for w in args.weights]
        except ValueError as e:
            p.error(str(e))
        record.update(distances=args.distances, weights=args.weights)
        jobs = [(dist, w, m, lab, s) for dist, w, m in cells for s in seeds for lab in labels]
        for dist, w, mix, lab, s in tqdm(jobs, desc="ch02 far map"):
            r = run_label(mix, lab, s, steps, eval_every=steps, **ov)
            r.update(distance=dist, weight=w)
            del r["history"]
            record["runs"].append(r)
            tqdm.write(f"distance {dist} weight {w} {lab:>6} seed {s}: light mass {r['light_mass']:.3f} "
                       f"({r['seconds_train']:.0f} s)")
            record["wall_seconds"] = round(time.perf_counter() - t0, 1)
            _write(out, record)
    record["complete"] = True
    record["wall_seconds"] = round(time.perf_counter() - t0, 1)
    _write(out, record)
    print(f"wrote {out} ({len(record['runs'])} runs, {record['wall_seconds']:.0f} s)")
    return record


def _machine() -> dict:
    return {"node": platform.node(), "platform": platform.platform(), "processor": platform.processor(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--study", choices=["gaussian", "mlp", "far", "far_map"], required=True)
    p.add_argument("--weighting", default="sigma2", choices=["sigma2", "one", "snr"],
                   help="loss weighting w(lam) of the mlp and far studies")
    p.add_argument("--labels", nargs="+", default=None,
                   help="far studies: DI and EMD-K labels (default DI EMD-1 .. EMD-16; DI EMD-8 for far_map)")
    p.add_argument("--no-equal-time", dest="equal_time", action="store_false",
                   help="far: skip the equal-wall-time runs")
    p.add_argument("--distances", nargs="+", type=float, default=[2.0, 4.0, 6.0], help="far_map: light-mode distances")
    p.add_argument("--weights", nargs="+", type=float, default=[0.05, 0.15, 0.3], help="far_map: light-mode weights")
    p.add_argument("--mixtures", nargs="+", default=None, help="targets (default: bimodal, or ring8 irregular)")
    p.add_argument("--seeds", nargs="+", type=int, default=None, help="default: 0 1 2 3 (gaussian), 0 1 2 (mlp), 0 1 2 3 4 (far)")
    p.add_argument("--steps", type=int, default=None, help="generator steps (default: 500 gaussian, 1000 mlp, 1500 far)")
    p.add_argument("--eval-every", type=int, default=None)
    p.add_argument("--out", default=None, help="output JSON (default: data/results/ch02_<study>.json)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.study in ("far", "far_map"):
        return _main_far(p, args, argv)

    if args.study == "gaussian":
        mixtures = args.mixtures or ["bimodal"]
        seeds = args.seeds if args.seeds is not None else [0, 1, 2, 3]
        steps = args.steps or 500
        eval_every = args.eval_every or 50
        jobs = [(m, r, meth, s) for m in mixtures for r in REGIMES for s in seeds for meth in ("di", "emd")]
        out = Path(args.out or DATA_DIR / "results" / "ch02_gaussian.json")
    else:
        mixtures = args.mixtures or ["ring8", "irregular"]
        seeds = args.seeds if args.seeds is not None else [0, 1, 2]
        steps = args.steps or 1000
        eval_every = args.eval_every or 100
        jobs = [(m, args.weighting, meth, s) for m in mixtures for s in seeds for meth in ("di", "emd")]
        out = Path(args.out or DATA_DIR / "results" / f"ch02_mlp_{args.weighting}.json")
    # every setting checked before the first run (each run takes minutes)
    if steps < 1 or eval_every < 1 or not seeds:
        p.error(f"--steps and --eval-every must be >= 1 and --seeds not empty, got {steps}, {eval_every} and {seeds}")
    for m in mixtures:
        try:
            get_mixture(m)
        except KeyError as e:
            p.error(str(e.args[0]))

    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    runs = []
    for mixture, regime, method, seed in tqdm(jobs, desc=f"ch02 {args.study}"):
        if args.study == "gaussian":
            r = run_one(mixture, method, seed, steps, generator="linear", eval_every=eval_every,
                        keep_samples=400 if seed == seeds[0] else 0, **REGIMES[regime])
        else:
            r = run_one(mixture, method, seed, steps, generator="mlp", eval_every=eval_every,
                        keep_samples=1000 if seed == seeds[0] else 0, weighting=regime)
        r["regime"] = regime
        runs.append(r)
        tqdm.write(f"{mixture:>9} {regime:>9} {method:>3} seed {seed}: TV {r['final']['tv']:.3f}, "
                   f"modes {r['final']['modes_covered']}/{r['final']['n_modes']}, "
                   f"recall {r['final']['recall']:.2f}, precision {r['final']['precision']:.2f} ({r['seconds']:.0f} s)")
    record = {
        "command": "python -m emd_lib experiment ch02 " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "machine": _machine(),
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "study": args.study, "steps": steps, "seeds": seeds, "mixtures": mixtures,
        "runs": runs,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    tmp.replace(out)
    print(f"wrote {out} ({len(runs)} runs, {record['wall_seconds']:.0f} s)")
    return record



# ---------------------------------------------------------------------------------------------
# reading the stored sweeps back: what chapters 2 and 10 show of them

METRICS = ("tv", "modes_covered", "recall", "precision")
_ORDER = {"default": 0, "low_noise": 1, "ring8": 0, "irregular": 1, "sigma2": 0, "one": 1, "di": 0, "emd": 1}


def group_runs(*names, keys=("mixture", "regime", "method"), quiet=False) -> dict:
    """The runs of the stored results ``names`` (``data/results/NAME.json``, read with
    :func:`emd_lib.experiments.load_result`), grouped by the tuple of their ``keys``; each group
    sorted by seed, the groups in the order the chapter shows them (regime, mixture, weighting, method)."""
    from . import load_result

    rows = {}
    for name in names:
        for run in load_result(name, quiet=quiet)["runs"]:
            rows.setdefault(tuple(run[k] for k in keys), []).append(run)
    return {k: sorted(v, key=lambda r: r["seed"])
            for k, v in sorted(rows.items(), key=lambda kv: [_ORDER.get(x, 9) for x in kv[0]])}


def stat(runs, key: str) -> tuple[float, float]:
    """Mean and standard deviation (``ddof=0``) over ``runs`` of the final metric ``key``."""
    v = np.array([r["final"][key] for r in runs], dtype=float)
    return float(v.mean()), float(v.std())


def gaussian_table(rows: dict):
    """The ``gaussian`` study as a table: per regime and method, each seed's starting and final
    mean ``x``, final std ``x`` and modes covered (``rows`` from ``group_runs(..., keys=("regime", "method"))``)."""
    from ..book import table

    def per_seed(runs, f):
        return ", ".join(f(r) for r in runs)

    out = [(regime, method.upper(), per_seed(runs, lambda r: f"{r['b0'][0]:+.2f}"),
            per_seed(runs, lambda r: f"{r['b'][0]:+.2f}"), per_seed(runs, lambda r: f"{r['cov'][0][0] ** 0.5:.2f}"),
            per_seed(runs, lambda r: str(r["final"]["modes_covered"]))) for (regime, method), runs in rows.items()]
    return table(out, ["regime", "method", "b0_x per seed", "final mean_x", "final std_x", "modes covered"],
                 title="Gaussian generator on bimodal, per seed")


def mlp_summary(rows: dict) -> dict:
    """Per ``(mixture, weighting, method)`` group of ``rows``: mean and std over seeds of each final
    metric (:data:`METRICS`), of the smallest ratio of a mode's mass to its weight (``min_ratio``),
    and the number of seeds ``n``."""
    summary = {}
    for key, runs in rows.items():
        tw = np.array(runs[0]["true_weights"])
        ratio = np.array([np.min(np.array(r["final"]["masses"]) / tw) for r in runs])
        s = {k: stat(runs, k) for k in METRICS}
        s["min_ratio"], s["n"] = (float(ratio.mean()), float(ratio.std())), len(runs)
        summary[key] = s
    return summary


def _pm(v, fmt=".3f") -> str:
    return f"{v[0]:{fmt}} ± {v[1]:{fmt}}"


def mlp_table(summary: dict):
    """:func:`mlp_summary` as a table: mean ± std over seeds per mixture, weighting and method."""
    from ..book import table

    out = [(mixture, wname, method.upper(), s["n"], _pm(s["tv"]), _pm(s["modes_covered"], ".1f"),
            _pm(s["recall"], ".2f"), _pm(s["precision"], ".2f"), _pm(s["min_ratio"], ".2f"))
           for (mixture, wname, method), s in summary.items()]
    return table(out, ["mixture", "w", "method", "seeds", "TV", "modes", "recall", "precision",
                       "smallest mass / weight"], title="MLP generator: mean ± std over seeds")


def compare(d: dict, e: dict) -> dict:
    """DI against EMD for two :func:`mlp_summary` entries: per metric, the difference of the means
    (``d - e``) and its standard error over seeds (each std rescaled to ``ddof=1``)."""
    return {k: (d[k][0] - e[k][0], math.sqrt(d[k][1] ** 2 / max(d["n"] - 1, 1) + e[k][1] ** 2 / max(e["n"] - 1, 1)))
            for k in METRICS}


def early_tv(rows: dict) -> dict:
    """Per group of ``rows``: the TV of the mode masses at the first evaluation, mean over seeds."""
    return {k: float(np.mean([r["history"]["tv"][0] for r in runs])) for k, runs in rows.items()}


def compare_table(verdicts: dict, tv_first: dict, step: int):
    """DI against EMD per ``(mixture, weighting)``: :func:`compare`'s differences ± standard errors,
    and each method's TV at the first evaluation (``tv_first`` from :func:`early_tv`, at ``step``)."""
    from ..book import table

    rows = [(mx, wn, *(f"{v[0]:+.3f} ± {v[1]:.3f}" for v in out.values()), tv_first[(mx, wn, "di")],
             tv_first[(mx, wn, "emd")]) for (mx, wn), out in verdicts.items()]
    return table(rows, ["mixture", "w", *(f"DI - EMD, {k}" for k in METRICS), f"TV at step {step}, DI", "EMD"],
                 fmt="{:.3f}", title="DI against EMD: difference of the means ± its standard error over seeds")


def mode_losses(rows: dict, mixture: str, weights, fraction: float = 0.2) -> dict:
    """Which modes of ``mixture`` (mode weights ``weights``) the ``(mixture, weighting, method)``
    groups of ``rows`` lose, per weighting: ``mean[(w, method)]``, the mean mass of each mode over
    seeds; ``lost[w]``, runs x modes, true where a run's mass is below ``fraction`` of the mode's
    weight (the threshold of ``modes_covered``), DI's runs first; ``n_di[w]``, how many are DI's."""
    weights = np.asarray(weights)
    ws = [w for (mx, w, m) in rows if mx == mixture and m == "di"]
    masses = {(w, m): np.array([r["final"]["masses"] for r in rows[(mixture, w, m)]]) for w in ws for m in ("di", "emd")}
    return {"mean": {k: v.mean(0) for k, v in masses.items()},
            "lost": {w: np.concatenate([masses[(w, "di")], masses[(w, "emd")]]) < fraction * weights for w in ws},
            "n_di": {w: len(masses[(w, "di")]) for w in ws}}


def far_study(rec: dict, budget: str) -> dict:
    """The ``far`` study's runs of one budget (``equal_updates`` or ``equal_time``; at equal time the
    reference method's equal-update runs) per method: seeds that kept the light mode (``kept`` of
    ``n``), the light mass per seed (``mass``, by seed), the updates (``steps``) and the final TVs."""
    out = {}
    for lab in rec["labels"]:
        b = "equal_updates" if budget == "equal_time" and lab == rec.get("equal_time_reference") else budget
        rs = sorted([r for r in rec["runs"] if r["label"] == lab and r["budget"] == b], key=lambda r: r["seed"])
        if rs:
            out[lab] = {"kept": sum(r["kept"] for r in rs), "n": len(rs), "steps": rs[0]["steps"],
                        "mass": np.array([r["light_mass"] for r in rs]),
                        "tv": np.array([r["final"]["tv"] for r in rs])}
    return out


def far_table(study: dict, w_light: float, title: str | None = None):
    """:func:`far_study` as a table: updates, seeds keeping the light mode, and its mass (weight ``w_light``)."""
    from ..book import table

    rows = [(lab, t["steps"], f"{t['kept']}/{t['n']}", _pm((t["mass"].mean(), t["mass"].std())),
             ", ".join(f"{m:.3f}" for m in t["mass"])) for lab, t in study.items()]
    return table(rows, ["method", "updates", "kept", f"light mass (weight {w_light:.2f})", "per seed"], title=title)


def far_timing_table(rec: dict):
    """The ``far`` study's timing: milliseconds per whole step of each method (median of the
    round-robin rounds), the ratio to the reference's, and the updates at equal wall time."""
    from ..book import table

    tm, n_eq, ref = rec["timing"], rec["equal_time_steps"], rec.get("equal_time_reference", "DI")
    rows = [(lab, 1e3 * tm[lab]["median"], tm[lab]["median"] / tm[ref]["median"], n_eq[lab]) for lab in rec["labels"]]
    return table(rows, ["method", "ms per whole step", f"/ {ref}", f"updates in {ref}'s time for {rec['steps']}"],
                 fmt={"ms per whole step": "{:.1f}", f"/ {ref}": "{:.2f}"},
                 title="seconds per whole step (median of round-robin rounds, one thread)")


def far_losses(rec: dict, at_step: int = 200) -> dict:
    """The ``far`` study's equal-update runs split by the verdict: ``lost`` and ``kept`` (lists of
    runs), ``came_back`` (kept runs whose light mass fell below 0.01 along the way) and ``at``, the
    index of update ``at_step`` in the runs' histories."""
    runs = [r for r in rec["runs"] if r["budget"] == "equal_updates"]
    kept = [r for r in runs if r["kept"]]
    return {"lost": [r for r in runs if not r["kept"]], "kept": kept,
            "came_back": [r for r in kept if min(r["history"]["light"]) < 0.01],
            "at": runs[0]["history"]["step"].index(at_step)}


def far_map_grid(fmap: dict) -> tuple[dict, dict]:
    """The ``far_map`` study on its grid: per method, arrays (weights x distances) of the fraction of
    seeds keeping the light mode and of its mass over its weight (mean of seeds)."""
    D, W = fmap["distances"], fmap["weights"]
    kept = {lab: np.zeros((len(W), len(D))) for lab in fmap["labels"]}
    mass = {lab: np.zeros((len(W), len(D))) for lab in fmap["labels"]}
    for lab in fmap["labels"]:
        for i, w in enumerate(W):
            for j, dist in enumerate(D):
                rs = [r for r in fmap["runs"] if r["label"] == lab and r["weight"] == w and r["distance"] == dist]
                kept[lab][i, j] = np.mean([r["kept"] for r in rs])
                mass[lab][i, j] = np.mean([r["light_mass"] / w for r in rs])
    return kept, mass


if __name__ == "__main__":
    main()
