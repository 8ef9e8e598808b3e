"""Chapter 4 sweeps: Langevin coordinates, the z step size, and noise cancellation.

Every run distils the exact 2D mixture teacher (``irregular`` by default) with
:class:`emd_lib.distill.Distiller` and reports :func:`emd_lib.metrics.mixture_report` of the
EMA generator, the generator's gradient norm over training, and whether the run diverged.

Sweeps (each writes ``data/results/ch04_<sweep>.json``)::

    python -m emd_lib experiment ch04 --sweep space     # (x, z), (eps, z), (x, -), (eps, -) and DI
    python -m emd_lib experiment ch04 --sweep space_x   # two more (x, z) chains
    python -m emd_lib experiment ch04 --sweep gamma_z   # (eps, z): gamma_z and its preconditioning
    python -m emd_lib experiment ch04 --sweep cancel    # noise cancellation none / injected / full, cancel_z
    python -m emd_lib experiment ch04 --sweep zstep     # the joint chain's z step: a trust region
    python -m emd_lib experiment ch04 --sweep joint     # stable joint chains: Jacobian-scaled step, MALA
    python -m emd_lib experiment ch04 --sweep joint --equal-time '(eps, z) mala jacobian 1'
                                                           # (eps, -) and DI given that chain's seconds

``--seeds``, ``--steps``, ``--width`` and ``--mixture`` shrink or grow a sweep, ``--variants`` picks some of
its variants and ``--merge`` adds them to an existing JSON; the JSON records
the command, the date, the machine and the wall time. Runs are single-threaded
(``torch.set_num_threads(1)``) unless ``--threads`` says otherwise.

In the x-space chains we use one fixed step ``gamma_x`` for every noise level (what a chain in
x without the reparametrisation would do). It must stay below ``2 sigma^2`` at the smallest
noise level drawn or the chain diverges, so we take ``gamma_x = gamma_eps * sigma^2(lam_max)``:
the eps-chain's step at the least noisy level, and far smaller than it everywhere else (our
convention; the paper's values are unknown).
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import time

import torch

from .. import DATA_DIR
from ..runs.checkpoint import run_card, write_json
from ..distill import DistillConfig, Distiller
from ..langevin import LangevinConfig
from ..metrics import mixture_report
from ..mixtures import get_mixture
from ..schedules import VP

__all__ = ["load_sweep", "sweep_table", "grad_norm_curves", "kept_all_modes", "mode_masses", "light_masses",
           "divergence_table", "stability_limits", "cancel_numbers", "per_seed", "seed_dots", "GAMMA_EPS", "gamma_x_fixed", "SWEEPS", "DEFAULT_STEPS", "z_curvature", "variant_config", "run_variant", "run_sweep", "summarize",
           "time_per_update", "run_equal_time", "main"]

GAMMA_EPS = 0.3
LAM_MAX = 6.0


def linear_pair():
    """Chapter 3's linear-Gaussian pair, as fresh tensors ``(m, C, A, b)``: the teacher
    ``N(m, C)`` and a linear generator ``g(z) = A z + b`` that does not fit it yet."""
    return (torch.tensor([1.0, -0.5]), torch.tensor([[1.0, 0.6], [0.6, 0.8]]),
            torch.tensor([[0.5, 0.0], [0.2, 0.4]]), torch.tensor([0.3, 0.2]))


def level(lam) -> tuple[float, float]:
    """``(alpha, sigma)`` of the VP schedule at log-SNR ``lam``, as floats."""
    alpha, sigma = VP.alpha_sigma(torch.tensor(float(lam)))
    return float(alpha), float(sigma)


def gamma_x_fixed(gamma_eps: float = GAMMA_EPS, lam_max: float = LAM_MAX) -> float:
    """The fixed x-space step of our ablation: ``gamma_eps * sigma^2(lam_max)`` (VP schedule)."""
    _, sigma = VP.alpha_sigma(torch.tensor(float(lam_max)))
    # sigma^2 = sigmoid(-lam_max); the chain in x is stable only while gamma_x < 2 sigma^2
    return float(gamma_eps * sigma**2)


GX = gamma_x_fixed()

#: generator updates per run, per sweep (sized so that each sweep of 3 seeds takes about 10 to 15
#: minutes on one shared CPU core); the stability sweep is shorter because divergence comes early
DEFAULT_STEPS = {"space": 600, "space_x": 600, "gamma_z": 400, "cancel": 600, "zstep": 1000, "joint": 1000}

#: name -> {variant label -> overrides of DistillConfig (``langevin`` a dict of LangevinConfig fields)}
SWEEPS: dict[str, dict[str, dict]] = {
    "space": {
        "(x, z)": {"langevin": {"space": "x", "gamma_x": GX, "move_z": True}},
        "(eps, z)": {"langevin": {"space": "eps", "move_z": True}},
        "(x, -)": {"langevin": {"space": "x", "gamma_x": GX, "move_z": False}},
        "(eps, -)": {"langevin": {"space": "eps", "move_z": False}},
        "DI": {"method": "di"},
    },
    # two more (x, z) chains: without noise cancellation, and with the x step scaled by sigma^2
    "space_x": {
        "(x, z) no cancel": {"langevin": {"space": "x", "gamma_x": GX, "move_z": True, "cancel": "none"}},
        "(x, z) gamma_x = 0.3 sigma^2": {"langevin": {"space": "x", "gamma_x": None, "move_z": True}},
    },
    "gamma_z": {
        **{f"snr {g:g}": {"langevin": {"space": "eps", "move_z": True, "z_precondition": "snr", "gamma_z": g}}
           for g in (0.03, 0.1, 0.3, 1.0)},
        **{f"none {g:g}": {"langevin": {"space": "eps", "move_z": True, "z_precondition": "none", "gamma_z": g}}
           for g in (0.003, 0.01, 0.03, 0.1)},
    },
    # making the joint chain stable with network generators: the z step's drift limited per sample
    # (a trust region), against the frozen-z chain, the library's earlier joint setting and DI
    "zstep": {
        "(eps, -)": {"langevin": {"space": "eps", "move_z": False}},
        "(eps, z) snr 0.1 full": {"langevin": {"space": "eps", "move_z": True, "z_precondition": "snr",
                                               "gamma_z": 0.1, "cancel": "full"}},
        "(eps, z) none 0.05": {"langevin": {"space": "eps", "move_z": True, "z_precondition": "none",
                                            "gamma_z": 0.05, "cancel": "none"}},
        "(eps, z) none 0.05 clip 0.1": {"langevin": {"space": "eps", "move_z": True, "z_precondition": "none",
                                                     "gamma_z": 0.05, "cancel": "none", "z_clip": 0.1}},
        "(eps, z) none 0.02 clip 0.1": {"langevin": {"space": "eps", "move_z": True, "z_precondition": "none",
                                                     "gamma_z": 0.02, "cancel": "none", "z_clip": 0.1}},
        "(eps, z) none 0.02": {"langevin": {"space": "eps", "move_z": True, "z_precondition": "none",
                                            "gamma_z": 0.02, "cancel": "none"}},
        "DI": {"method": "di"},
    },
    # why the plain z step blows up and what makes it stable without a bias: the z step scaled by the
    # generator's Jacobian (the curvature bound 1 + alpha^2 ||J||^2 / sigma^2), the same with a unit
    # Jacobian ("snr"), a Metropolis-adjusted step, and a small z step with more Langevin steps,
    # against the trust region, the plain step, the frozen-z chain and DI
    "joint": {
        "(eps, -)": {"langevin": {"space": "eps", "move_z": False}},
        "DI": {"method": "di"},
        "(eps, z) none 0.02": {"langevin": {"move_z": True, "z_precondition": "none", "gamma_z": 0.02,
                                            "cancel": "none"}},
        "(eps, z) none 0.02 clip 0.1": {"langevin": {"move_z": True, "z_precondition": "none", "gamma_z": 0.02,
                                                     "cancel": "none", "z_clip": 0.1}},
        "(eps, z) none 0.002 K 16": {"langevin": {"K": 16, "move_z": True, "z_precondition": "none",
                                                  "gamma_z": 0.002, "cancel": "none"}},
        "(eps, z) snr 1": {"langevin": {"move_z": True, "z_precondition": "snr", "gamma_z": 1.0, "cancel": "none"}},
        "(eps, z) jacobian 0.3": {"langevin": {"move_z": True, "z_precondition": "jacobian", "gamma_z": 0.3,
                                               "cancel": "none"}},
        "(eps, z) jacobian 1": {"langevin": {"move_z": True, "z_precondition": "jacobian", "gamma_z": 1.0,
                                             "cancel": "none"}},
        "(eps, z) mala 0.02": {"langevin": {"move_z": True, "z_precondition": "none", "gamma_z": 0.02,
                                            "cancel": "none", "metropolis": True}},
        "(eps, z) mala jacobian 1": {"langevin": {"move_z": True, "z_precondition": "jacobian", "gamma_z": 1.0,
                                                  "cancel": "none", "metropolis": True}},
    },
    "cancel": {
        "(eps, -) none": {"langevin": {"space": "eps", "move_z": False, "cancel": "none"}},
        "(eps, -) injected": {"langevin": {"space": "eps", "move_z": False, "cancel": "injected"}},
        "(eps, -) full": {"langevin": {"space": "eps", "move_z": False, "cancel": "full"}},
        "(eps, z) none": {"langevin": {"space": "eps", "move_z": True, "cancel": "none"}},
        "(eps, z) full": {"langevin": {"space": "eps", "move_z": True, "cancel": "full", "cancel_z": False}},
        "(eps, z) full + z": {"langevin": {"space": "eps", "move_z": True, "cancel": "full", "cancel_z": True}},
    },
}


def z_curvature(generator, teacher, student, lam: float, n: int = 500, seed: int = 0) -> torch.Tensor:
    """Largest curvature of ``-log rho`` in ``z`` for the (eps, z) chain, per sample ``(n,)``.

    In the reparametrised coordinates ``grad_z log rho = alpha J^T ds(alpha g(z) + sigma eps) - z``.
    Its Jacobian in ``z`` (the Hessian of ``log rho``, through the generator, the teacher and the
    student) is symmetrised; we return minus its smallest eigenvalue. A Langevin step on ``z`` is
    stable only below about ``2 / curvature``. Written for ``(B, d)`` data (the 2D chapters).
    """
    from ..langevin import score_gap_eps
    from ..schedules import bcast

    g = torch.Generator().manual_seed(seed)
    d = teacher.dim
    z = torch.randn(n, d, generator=g).requires_grad_(True)
    eps = torch.randn(n, d, generator=g)
    lam_b = torch.full((n,), float(lam))
    alpha, sigma = teacher.schedule.alpha_sigma(lam_b)
    with torch.enable_grad():
        x = generator(z)
        a, s = bcast(alpha, x), bcast(sigma, x)
        x_t = a * x + s * eps
        sds = score_gap_eps(teacher, student, x_t, lam_b)                     # sigma ds, differentiable in z
        # grad_z log rho = (alpha / sigma) J^T (sigma ds) - z
        gz = torch.autograd.grad(x, z, grad_outputs=a / s * sds, create_graph=True)[0] - z
        # per-sample Jacobian: row j is d gz_j / dz (samples do not interact)
        H = torch.stack([torch.autograd.grad(gz[:, j].sum(), z, retain_graph=True)[0] for j in range(d)], 1)
    H = 0.5 * (H + H.transpose(1, 2)).detach()
    return -torch.linalg.eigvalsh(H)[:, 0]


def variant_config(overrides: dict, seed: int = 0, steps: int = 1500, width: int = 128, K: int = 8,
                   **extra) -> DistillConfig:
    """A :class:`DistillConfig` for one variant: the book's 2D defaults, ``K`` Langevin steps, the overrides."""
    ov = dict(overrides)
    lang = {"K": K, "gamma_eps": GAMMA_EPS, **ov.pop("langevin", {})}
    kw = {"method": "emd", "steps": steps, "width": width, "seed": seed, "lam_max": LAM_MAX, **extra, **ov}
    return DistillConfig(langevin=LangevinConfig(**lang), **kw)


def run_variant(mixture, cfg: DistillConfig, n_eval: int = 5000, every: int = 10) -> dict:
    """Train one run; return its metrics, gradient-norm curve (every ``every`` steps) and timing.

    A run whose loss or gradient turns non-finite is reported with ``diverged=True``, the step
    it reached, and the metrics of the generator as it stood (usually broken).
    """
    t0 = time.perf_counter()
    d = Distiller(mixture, cfg)
    diverged, err = False, ""
    try:
        d.train(progress=False)
    except FloatingPointError as e:
        diverged, err = True, str(e)
    h = d.history
    x = d.sample(n_eval, generator=torch.Generator().manual_seed(10_000 + cfg.seed))
    rep = mixture_report(mixture, x)
    gn = h.get("grad_norm", [])
    train_s = float(h["seconds"][-1]) if h.get("seconds") else float("nan")
    out = {
        "seed": cfg.seed,
        "diverged": diverged,
        "error": err,
        "steps_done": len(gn),
        "seconds": time.perf_counter() - t0,
        "train_seconds": train_s,                      # the generator updates alone (no set-up, no evaluation)
        "seconds_per_step": train_s / max(len(gn), 1),
        "metrics": rep,
        "grad_norm": [float(sum(gn[i:i + every]) / len(gn[i:i + every])) for i in range(0, len(gn), every)],
        "grad_norm_every": every,
        "grad_norm_last": float(sum(gn[-200:]) / max(len(gn[-200:]), 1)) if gn else float("nan"),
    }
    for key in ("estep_moved_z", "estep_moved_data", "estep_grad_z_norm", "estep_score_gap_norm", "estep_accept",
                "estep_jac_norm", "estep_z_step"):
        v = h.get(key, [])
        if v:
            vals = [t for t in v if math.isfinite(t)]
            out[key.replace("estep_", "mean_")] = float(sum(vals) / max(len(vals), 1))
    return out


def _light_mass(run: dict, weights) -> float:
    """The mass a run gives the mixture's lightest mode (the first of the lightest)."""
    i = min(range(len(weights)), key=lambda k: weights[k])
    return float(run["metrics"]["masses"][i])


def summarize(result: dict, keys=("tv", "modes_covered", "within_3sd", "mmd", "precision", "recall")) -> dict:
    """Per-variant mean and standard deviation over seeds of the metrics and the final gradient norm
    (and, where the runs recorded them, the lightest mode's mass and the seconds per generator update).

    Diverged runs are counted in ``diverged`` and left out of the means (NaN when every run diverged).
    """
    table = {}
    weights = get_mixture(result["mixture"]).weights.tolist()
    for name, runs in result["runs"].items():
        ok = [r for r in runs if not r["diverged"]]
        row = {"n": len(runs), "diverged": len(runs) - len(ok)}
        extra = ("light_mass", "seconds_per_step", "steps_done") if all("seconds_per_step" in r for r in runs) else ()
        for k in keys + ("grad_norm_last", "seconds") + extra:
            vals = torch.tensor([_light_mass(r, weights) if k == "light_mass" else
                                 float(r["metrics"][k] if k in r["metrics"] else r[k]) for r in ok],
                                dtype=torch.float64)
            if len(vals) == 0:
                row[k] = (float("nan"), float("nan"))
            else:
                row[k] = (float(vals.mean()), float(vals.std()) if len(vals) > 1 else 0.0)
        table[name] = row
    return table


def run_sweep(name: str, seeds=(0, 1, 2), steps: int = 1500, width: int = 128, mixture: str = "irregular",
              K: int = 8, n_eval: int = 5000, progress: bool = True, variants: list | None = None, **extra) -> dict:
    """Run every variant of sweep ``name`` for every seed; return the results as a plain dict."""
    if name not in SWEEPS:
        raise KeyError(f"unknown sweep {name!r}; known: {sorted(SWEEPS)}")
    spec = SWEEPS[name]
    if variants is not None:
        spec = {k: spec[k] for k in variants}
    mix = get_mixture(mixture)
    jobs = [(v, s) for v in spec for s in seeds]
    it = jobs
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(jobs, desc=f"ch04 {name}")
    runs: dict[str, list] = {v: [] for v in spec}
    configs = {}
    for v, s in it:
        cfg = variant_config(spec[v], seed=s, steps=steps, width=width, K=K, **extra)
        configs[v] = cfg.to_dict() | {"seed": None}
        runs[v].append(run_variant(mix, cfg, n_eval=n_eval))
    return {"sweep": name, "mixture": mixture, "seeds": list(seeds), "steps": steps, "width": width, "K": K,
            "gamma_x_fixed": GX, "variants": configs, "runs": runs}


def time_per_update(mixture, overrides: dict, n: int = 40, width: int = 128, K: int = 8, **extra) -> dict:
    """Seconds per whole training step (student updates and one generator update) of each variant in
    ``overrides`` (label -> overrides), timed in turns: every round times one step of each variant, so
    that the load of a shared machine falls on all of them alike; returns label -> median over ``n`` rounds."""
    ds = {v: Distiller(mixture, variant_config(ov, seed=0, steps=n, width=width, K=K, **extra))
          for v, ov in overrides.items()}
    from ..runs.timing import time_round_robin

    for d in ds.values():
        d.warmup()

    def one_step(d):
        def step():
            d.train_step()
            d.step_count += 1
        return step

    timed = time_round_robin({v: one_step(d) for v, d in ds.items()}, calls=1, rounds=n, warmup=0)
    return {v: r["median"] for v, r in timed.items()}


def run_equal_time(result: dict, ref: str, baselines=("(eps, -)", "DI"), width: int = 128, K: int = 8,
                   n_eval: int = 5000, progress: bool = True, **extra) -> dict:
    """Run each of ``baselines`` again with the updates that match ``ref``'s seconds (the cheaper chain
    gets more updates); returns ``{"runs": ..., "variants": ..., "equal_time": {label: steps}}``."""
    spec = SWEEPS[result["sweep"]]
    mix = get_mixture(result["mixture"])
    out = {"runs": {}, "variants": {}, "equal_time": {}}
    # the cost of a step, timed in turns (the runs' own timings depend on what else the machine did then)
    small = {**extra, "init_steps": min(extra.get("init_steps", 50), 50)}
    cost = time_per_update(mix, {v: spec[v] for v in (ref, *baselines)}, width=width, K=K, **small)
    for base in baselines:
        n_steps = max(1, round(result["steps"] * cost[ref] / cost[base]))
        label = f"{base} @ time of {ref}"
        out["equal_time"][label] = {"steps": n_steps, "reference": ref, "reference_steps": result["steps"],
                                    "seconds_per_step": {ref: cost[ref], base: cost[base]},
                                    "timing": "whole training steps timed in turns, median of 40"}
        out["runs"][label] = []
        seeds = result["seeds"]
        it = seeds
        if progress:
            from tqdm.auto import tqdm
            it = tqdm(seeds, desc=f"ch04 {label}")
        for sd in it:
            cfg = variant_config(spec[base], seed=sd, steps=n_steps, width=width, K=K, **extra)
            out["variants"][label] = cfg.to_dict() | {"seed": None}
            out["runs"][label].append(run_variant(mix, cfg, n_eval=n_eval))
    return out


def _loadavg():
    try:
        import os
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sweep", choices=sorted(SWEEPS), required=True)
    p.add_argument("--seeds", type=int, default=3, help="number of seeds (0, 1, ...)")
    p.add_argument("--steps", type=int, default=None, help=f"generator updates per run (default {DEFAULT_STEPS})")
    p.add_argument("--width", type=int, default=128, help="MLP width of generator and student score")
    p.add_argument("--K", type=int, default=8, help="Langevin steps of the E-step")
    p.add_argument("--mixture", default="irregular")
    p.add_argument("--variants", nargs="*", default=None, help="a subset of the sweep's variants")
    p.add_argument("--batch", type=int, default=None, help="batch size (default: DistillConfig's)")
    p.add_argument("--init-steps", type=int, default=None, help="generator initialisation steps (default: DistillConfig's)")
    p.add_argument("--student-warmup", type=int, default=None, help="student warm-up steps (default: DistillConfig's)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="output JSON (default data/results/ch04_<sweep>.json)")
    p.add_argument("--equal-time", metavar="VARIANT", default=None,
                   help="run (eps, -) and DI again with the generator updates that match VARIANT's seconds in the "
                        "existing output JSON (a sweep at equal updates), and add them to it")
    p.add_argument("--baselines", nargs="+", default=["(eps, -)", "DI"], choices=["(eps, -)", "DI"],
                   help="with --equal-time: the chains to run again (default both)")
    p.add_argument("--merge", action="store_true",
                   help="add the variants run now to an existing output JSON (same sweep, seeds, steps, width, K)")
    args = p.parse_args(argv)
    steps = args.steps or DEFAULT_STEPS[args.sweep]
    extra = {k: v for k, v in (("batch", args.batch), ("init_steps", args.init_steps),
                                ("student_warmup", args.student_warmup)) if v is not None}
    # every setting checked before the first run (each run takes minutes)
    if args.seeds < 1 or args.threads < 1:
        p.error(f"--seeds and --threads must be >= 1, got {args.seeds} and {args.threads}")
    try:
        get_mixture(args.mixture)
    except KeyError as e:
        p.error(str(e.args[0]))
    known = SWEEPS[args.sweep]
    unknown = [v for v in args.variants or () if v not in known]
    if unknown:
        p.error(f"--variants: {', '.join(map(repr, unknown))} not in sweep {args.sweep!r}; its variants: "
                + ", ".join(repr(v) for v in known))
    if args.variants is not None and not args.variants:
        p.error("--variants needs at least one variant (or leave it out for all)")
    for v in args.variants or known:
        try:
            variant_config(known[v], steps=steps, width=args.width, K=args.K, **extra)
        except (TypeError, ValueError) as e:
            p.error(f"variant {v!r}: {e}")
    out = args.out or DATA_DIR / "results" / f"ch04_{args.sweep}.json"
    out = type(DATA_DIR)(out)
    if args.equal_time is not None:
        if not out.exists():
            p.error(f"--equal-time needs the sweep at equal updates in {out} first")
        prev = json.loads(out.read_text())
        if args.equal_time not in prev["runs"] or not all(b in prev["runs"] for b in ("(eps, -)", "DI")):
            p.error(f"--equal-time: {out} needs runs of {args.equal_time!r}, '(eps, -)' and 'DI'")
    torch.set_num_threads(args.threads)
    load0 = _loadavg()
    t0 = time.perf_counter()
    if args.equal_time is not None:
        res = run_equal_time(prev, args.equal_time, baselines=tuple(args.baselines), width=prev["width"],
                             K=prev["K"], **extra)
        res.update({k: prev[k] for k in ("sweep", "mixture", "seeds", "steps", "width", "K")})
        args.merge = True
    else:
        res = run_sweep(args.sweep, seeds=tuple(range(args.seeds)), steps=steps, width=args.width,
                        mixture=args.mixture, K=args.K, variants=args.variants, **extra)
    meta = {
        **run_card(argv, module="emd_lib.experiments.ch04"),
        "machine": f"{platform.node()} ({platform.machine()}, {platform.processor() or 'cpu'}), "
                   f"torch {torch.__version__}, {args.threads} thread(s)",
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "load_average_start_end": [load0, _loadavg()],   # a shared machine slows every run down
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.merge and out.exists():
        old = json.loads(out.read_text())
        for key in ("sweep", "mixture", "seeds", "steps", "width", "K"):
            if old[key] != res[key]:
                raise SystemExit(f"--merge: {key} differs ({old[key]} in {out}, {res[key]} now); not merging")
        old["runs"].update(res["runs"])
        old["variants"].update(res["variants"])
        if "equal_time" in res:
            old["equal_time"] = {**old.get("equal_time", {}), **res["equal_time"]}
        # keep the variants in the order of SWEEPS, the equal-time runs after them
        order = [v for v in SWEEPS[args.sweep] if v in old["runs"]] + [v for v in old["runs"] if v not in SWEEPS[args.sweep]]
        old["runs"] = {v: old["runs"][v] for v in order}
        old["variants"] = {v: old["variants"][v] for v in order if v in old["variants"]}
        parts = old["meta"].pop("parts", None) or [dict(old["meta"])]
        meta = {"command": "; ".join(p["command"] for p in parts + [meta]),
                "date": meta["date"], "machine": meta["machine"],
                "wall_seconds": round(sum(p["wall_seconds"] for p in parts) + meta["wall_seconds"], 1),
                "parts": parts + [meta]}
        res = old
    res["summary"] = summarize(res)
    res["meta"] = meta
    write_json(out, res, indent=1)
    print(f"wrote {out} in {res['meta']['wall_seconds']} s")
    for name, row in res["summary"].items():
        more = (f"  light {row['light_mass'][0]:.3f}±{row['light_mass'][1]:.3f}  rec {row['recall'][0]:.3f}  "
                f"w3 {row['within_3sd'][0]:.3f}  s/step {row['seconds_per_step'][0] * 1e3:.1f}ms") \
            if "light_mass" in row else ""
        print(f"{name:22s} tv {row['tv'][0]:.3f}±{row['tv'][1]:.3f}  modes {row['modes_covered'][0]:.1f}  "
              f"mmd {row['mmd'][0]:.4f}  grad {row['grad_norm_last'][0]:.3f}  diverged {row['diverged']}/{row['n']}" + more)


if __name__ == "__main__":
    main()


def load_sweep(name: str) -> dict:
    """A stored sweep ``data/results/ch04_NAME.json`` with its :func:`summarize` under ``"summary"``;
    prints where it came from (command, seeds, variants, steps, minutes, machine, date)."""
    from . import load_result

    res = load_result(f"ch04_{name}", quiet=True)
    res["summary"] = summarize(res)                     # means over the runs that did not diverge
    meta = res["meta"]
    print(f"{name}: `{meta['command']}`: {len(res['seeds'])} seeds x {len(res['runs'])} variants, "
          f"{res['steps']} generator steps each, width {res['width']}, K = {res['K']}; "
          f"{meta['wall_seconds'] / 60:.1f} min on {meta['machine']} ({meta['date']})")
    return res


#: column names of :func:`sweep_table`
HEADS = {"tv": "TV", "modes_covered": "modes", "within_3sd": "in 3 sd", "mmd": "MMD", "precision": "precision",
         "recall": "recall", "grad_norm_last": "|grad|"}


def sweep_table(res: dict, keys=("tv", "modes_covered", "within_3sd", "mmd", "precision", "recall", "grad_norm_last"),
                title: str | None = None):
    """A sweep's summary as a table (mean ± sd over the seeds that did not diverge, and how many
    diverged): an HTML table in the book and Jupyter, aligned text when printed; ``title`` its caption."""
    from ..book.display import table

    rows = [[name] + [f"{row[k][0]:.3f} ± {row[k][1]:.3f}" for k in keys] + [f"{row['diverged']}/{row['n']}"]
            for name, row in res["summary"].items()]
    return table(rows, ["variant"] + [HEADS[k] for k in keys] + ["diverged"], title=title)


def grad_norm_curves(res: dict) -> dict:
    """Per variant, ``(steps, G)``: the generator steps at which the gradient norm was logged and the
    array ``G`` (runs x points) of the logged norms (each the mean over ``grad_norm_every`` steps)."""
    import numpy as np

    out = {}
    for name, runs in res["runs"].items():
        G = np.array([r["grad_norm"] for r in runs])
        out[name] = (np.arange(1, G.shape[1] + 1) * runs[0]["grad_norm_every"], G)
    return out


def kept_all_modes(res: dict) -> dict:
    """Per variant, how many runs kept every mode (each at a fifth of its weight or more)."""
    return {name: sum(r["metrics"]["modes_covered"] == r["metrics"]["n_modes"] for r in runs)
            for name, runs in res["runs"].items()}


def mode_masses(res: dict, mode: int) -> dict:
    """Per variant, the mass each run that did not diverge gives mode ``mode`` of the mixture."""
    return {name: [float(r["metrics"]["masses"][mode]) for r in runs if not r["diverged"]]
            for name, runs in res["runs"].items()}


def light_masses(res: dict) -> dict:
    """:func:`mode_masses` of the mixture's lightest mode (the first of the lightest)."""
    w = get_mixture(res["mixture"]).weights.tolist()
    return mode_masses(res, min(range(len(w)), key=lambda k: w[k]))


def divergence_table(res: dict):
    """Per variant: how many runs diverged, after how many generator steps, and how far ``z`` moved per
    E-step (``mean_moved_z``, over the runs that did not diverge: a diverged chain ran off)."""
    from ..book.display import table

    rows = []
    for name, runs in res["runs"].items():
        steps = [r["steps_done"] for r in runs if r["diverged"]]
        moved = [r["mean_moved_z"] for r in runs if not r["diverged"] and "mean_moved_z" in r]
        rows.append([name, f"{len(steps)}/{len(runs)}", ", ".join(map(str, steps)) or "-",
                     f"{sum(moved) / len(moved):.3f}" if moved else "-"])
    return table(rows, ["variant", "diverged", "at steps", "mean |z_K - z_0|"])


def stability_limits(res: dict, schemes=("snr", "none")) -> dict:
    """For a sweep whose variants are named ``"SCHEME GAMMA"`` (the ``gamma_z`` sweep): per scheme, the
    largest step at which no run diverged and the smallest at which every run did (NaN if none)."""
    nan = float("nan")
    div = {n: res["summary"][n]["diverged"] if "summary" in res else sum(r["diverged"] for r in runs)
           for n, runs in res["runs"].items()}
    gamma = {n: float(n.split()[-1]) for n in res["runs"]}
    out = {}
    for sch in schemes:
        names = [n for n in res["runs"] if n.split()[0] == sch]
        out[sch] = (max((gamma[n] for n in names if div[n] == 0), default=nan),
                    min((gamma[n] for n in names if div[n] == len(res["runs"][n])), default=nan))
    return out


def cancel_numbers(res: dict) -> dict:
    """The numbers chapter 4 (section 4.3) reads from the ``cancel`` sweep, by short name.

    ``gn_{none,full}_{10,20,lo,hi}``: the ``(eps, -)`` chain's gradient norm (mean over seeds) at
    generator steps 10 and 20, and its least and largest value after step 20; ``gn_ratio_e`` and
    ``gn_ratio_z``: the uncancelled over the fully cancelled norm over the last 200 steps, for
    ``(eps, -)`` and ``(eps, z)``; ``kept_{none,full}``: runs of both chains that kept every mode;
    ``lost``: the mode the fully cancelled runs lose (below a fifth of its weight in some run);
    ``lost_{none,full}``: the mean mass ``(eps, -)`` gives it; ``starved`` of all ``runs`` of the sweep
    give it less than its weight."""
    import numpy as np

    curves = grad_norm_curves(res)
    steps = list(curves["(eps, -) full"][0])
    i10, i20 = steps.index(10), steps.index(20)
    out = {}
    for c in ("none", "full"):
        g = curves[f"(eps, -) {c}"][1].mean(0)
        out.update({f"gn_{c}_10": float(g[i10]), f"gn_{c}_20": float(g[i20]),
                    f"gn_{c}_lo": float(g[i20 + 1:].min()), f"gn_{c}_hi": float(g[i20 + 1:].max())})
    last = {n: float(G[:, -200 // res["runs"][n][0]["grad_norm_every"]:].mean()) for n, (_, G) in curves.items()}
    out["gn_ratio_e"] = last["(eps, -) none"] / last["(eps, -) full"]
    out["gn_ratio_z"] = last["(eps, z) none"] / last["(eps, z) full"]
    kept = kept_all_modes(res)
    for c in ("none", "full"):
        out[f"kept_{c}"] = kept[f"(eps, -) {c}"] + kept[f"(eps, z) {c}"]
    w = get_mixture(res["mixture"]).weights.tolist()
    lost = sorted({i for n in ("(eps, -) full", "(eps, z) full") for r in res["runs"][n]
                   for i, m in enumerate(r["metrics"]["masses"]) if m < 0.2 * w[i]})
    out["lost"] = lost[0] if len(lost) == 1 else None
    if out["lost"] is not None:
        masses = mode_masses(res, out["lost"])
        for c in ("none", "full"):
            out[f"lost_{c}"] = float(np.mean(masses[f"(eps, -) {c}"]))
        out["starved"] = sum(m < w[out["lost"]] for ms in masses.values() for m in ms)
        out["runs"] = sum(len(runs) for runs in res["runs"].values())
    return out


def per_seed(res: dict, name: str, key: str):
    """One metric (or a run's own field, such as ``steps_done``) of every run of a variant, as an array."""
    import numpy as np

    return np.array([r["metrics"][key] if key in r["metrics"] else r[key] for r in res["runs"][name]], dtype=float)


def seed_dots(ax, results, key: str, title: str, log: bool = False):
    """One column per variant of the sweeps ``results``: each seed a dot, the mean a bar (DI in its colour)."""
    import numpy as np

    from ..book.plotting import COLORS

    names = [n for res in results for n in res["runs"]]
    vals = [per_seed(res, n, key) for res in results for n in res["runs"]]
    for i, (n, v) in enumerate(zip(names, vals)):
        c = COLORS["di"] if n == "DI" else COLORS["emd"]
        ax.bar(i, v.mean(), color=c, alpha=0.35, width=0.7)
        ax.plot(np.full(len(v), i), v, "o", color=c, ms=4)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([n.replace(" gamma_x = ", "\n") for n in names], rotation=30, ha="right", fontsize=7)
    ax.set_title(title)
    if log:
        ax.set_yscale("log")
