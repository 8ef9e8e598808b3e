"""Chapter 5: the link to VSD / Diff-Instruct, and K as the knob from mode seeking to mode covering.

Two pieces live here.

**The K = 1 identity**, as functions the chapter and the tests share. With one Langevin step on
eps alone, ``gamma_eps = gamma`` and the initial noise cancelled (``cancel="full"``), the
E-step hands the M-step ``eps_tilde = gamma sigma ds(x_t^0)``, so the EMD generator gradient is
``gamma`` times the Diff-Instruct (VSD) gradient ``-w alpha ds^T dg/dtheta``. With
``cancel="injected"`` a zero-mean term ``(1 - gamma) * (-w alpha / sigma) eps_0^T dg/dtheta`` is
added (:func:`eps0_gradient`). :func:`k1_gradients` returns all three gradients, flattened.

**The K sweep**: DI and EMD-K for K in 1, 2, 4, 8, 16, several seeds, equal generator steps, on
one of the book's mixtures; mode-mass total variation, MMD, recall, precision over training,
and the cost of a generator step measured round-robin so that every method sees the same load::

    python -m emd_lib.experiments.ch05                       # grid25, 400 steps, seeds 0 1 2
    python -m emd_lib.experiments.ch05 --mixture ring8 --steps 800 --seeds 0 1 2 3

The JSON (``data/results/ch05_ksweep_<mixture>.json``) records the command, the date, the machine
and the wall time. Runs are single-threaded unless ``--threads`` says otherwise.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone

import torch

from .. import DATA_DIR
from ..distill import DistillConfig, Distiller, di_generator_loss, emd_generator_loss
from ..langevin import LangevinConfig
from ..metrics import mixture_report
from ..mixtures import get_mixture
from ..nets import MLPGenerator, MLPScore
from ..schedules import bcast, sample_lam, weight
from ..teachers import NetworkTeacher

__all__ = ["flat_grad", "random_pair", "prepare", "k1_gradients", "eps0_gradient", "label_config", "run_one",
           "time_per_step", "summarise", "run_info", "write_json", "main", "LABELS"]

#: the methods of the sweep, in the order the chapter plots them
LABELS = ["DI", "EMD-1", "EMD-2", "EMD-4", "EMD-8", "EMD-16"]


# ---- the K = 1 identity ----------------------------------------------------------------------------

def flat_grad(loss: torch.Tensor, module: torch.nn.Module, retain_graph: bool = False) -> torch.Tensor:
    """Gradient of ``loss`` with respect to ``module``'s parameters, as one flat vector."""
    params = [p for p in module.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=retain_graph)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, params)])


def random_pair(teacher, seed: int = 0, width: int = 64, depth: int = 2):
    """A randomly initialised generator and student score (``NetworkTeacher``) for ``teacher``'s dimension."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        gen = MLPGenerator(teacher.dim, width, depth)
        student = NetworkTeacher(MLPScore(teacher.dim, width, depth, schedule=teacher.schedule),
                                 teacher.schedule, predicts="eps")
    return gen, student


def eps0_gradient(generator, teacher, z, eps, lam, weighting="sigma2") -> torch.Tensor:
    """Surrogate loss of the zero-mean term: its gradient is ``-(w alpha / sigma) eps_0^T dg/dtheta``."""
    x = generator(z)
    alpha, sigma = teacher.schedule.alpha_sigma(lam)
    a, s = bcast(alpha, x), bcast(sigma, x)
    w = bcast(weight(lam, teacher.schedule, weighting), x)
    return -(w * a / s * eps * x).flatten(1).sum(1).mean()


def k1_gradients(teacher, generator=None, student=None, *, batch: int = 128, gamma: float = 1.0,
                 cancel: str = "full", weighting: str = "sigma2", seed: int = 0,
                 lam_min: float = -6.0, lam_max: float = 6.0) -> dict:
    """Generator gradients of EMD-1 (eps only), Diff-Instruct, and the ``eps_0`` term, on one batch.

    The same ``z``, ``eps``, ``lam`` feed every loss. Returns flat vectors ``emd``, ``di`` and
    ``eps0``, such that (to float rounding)

    * ``cancel="full"``:     ``emd = gamma * di``
    * ``cancel="injected"``: ``emd = gamma * di + (1 - gamma) * eps0``
    """
    if generator is None or student is None:
        generator, student = random_pair(teacher, seed)
    g = torch.Generator().manual_seed(seed + 1)
    z = torch.randn(batch, teacher.dim, generator=g)
    eps = torch.randn(batch, teacher.dim, generator=g)
    lam = sample_lam(batch, "uniform", lam_min, lam_max, generator=g)
    lcfg = LangevinConfig(K=1, space="eps", move_z=False, gamma_eps=gamma, cancel=cancel)
    loss_emd, _ = emd_generator_loss(generator, teacher, student, z, eps, lam, lcfg, weighting,
                                     rng=torch.Generator().manual_seed(seed + 2))
    loss_di, _ = di_generator_loss(generator, teacher, student, z, eps, lam, weighting)
    return {"emd": flat_grad(loss_emd, generator), "di": flat_grad(loss_di, generator),
            "eps0": flat_grad(eps0_gradient(generator, teacher, z, eps, lam, weighting), generator)}


# ---- the K sweep ---------------------------------------------------------------------------------------

def label_config(label: str, seed: int = 0, steps: int = 400, **overrides) -> DistillConfig:
    """``"DI"`` or ``"EMD-K"`` as a :class:`DistillConfig` with the book's defaults (and ``overrides``)."""
    lang = dict(overrides.pop("langevin", {}))
    if label.upper() == "DI":
        return DistillConfig(method="di", steps=steps, seed=seed, langevin=LangevinConfig(**lang), **overrides)
    if not label.upper().startswith("EMD-"):
        raise ValueError(f"label must be 'DI' or 'EMD-K', got {label!r}")
    K = int(label.split("-", 1)[1])
    return DistillConfig(method="emd", steps=steps, seed=seed, langevin=LangevinConfig(K=K, **lang), **overrides)


_METRICS = ("tv", "mmd", "recall", "precision", "within_3sd", "modes_covered")


def _report(mixture, d: Distiller, n_eval: int, seed: int) -> dict:
    x = d.sample(n_eval, generator=torch.Generator().manual_seed(10_000 + seed))
    return mixture_report(mixture, x, n_ref=n_eval)


def prepare(mixture, cfg: DistillConfig):
    """The common start of every method at one seed: the generator initialised from the teacher at
    ``lam*`` and the student score warmed up on it. Returns ``(generator, student)``."""
    d = Distiller(mixture, cfg)
    d.warmup()
    return d.generator, d.student


def run_one(mixture, cfg: DistillConfig, n_eval: int = 2000, eval_every: int = 100, start=None) -> dict:
    """Train one run; return final metrics, metric curves every ``eval_every`` steps, and timing.

    ``start=(generator, student)`` (from :func:`prepare`) begins from copies of a shared start, so
    that the methods compared at one seed differ only in their updates (a paired comparison).
    ``seconds_train`` is the wall time of the training loop (student updates included): under a
    shared CPU it is noisy, so compare methods' costs with :func:`time_per_step`.
    """
    t0 = time.perf_counter()
    if start is None:
        d = Distiller(mixture, cfg)
        d.warmup()
    else:
        d = Distiller(mixture, cfg, generator=copy.deepcopy(start[0]), student=copy.deepcopy(start[1]))
        d._warm = True
    t_init = time.perf_counter() - t0
    curves = {k: [] for k in ("step",) + _METRICS}

    def ev(dd):
        r = _report(mixture, dd, n_eval, cfg.seed)
        return {k: r[k] for k in _METRICS}

    t1 = time.perf_counter()
    d.train(progress=False, eval_every=eval_every, eval_fn=ev)
    t_train = time.perf_counter() - t1
    h = d.history
    curves["step"] = list(h["eval_step"])
    for k in _METRICS:
        curves[k] = list(h[f"eval_{k}"])
    final = _report(mixture, d, n_eval, cfg.seed)
    gn = torch.tensor(h["grad_norm"])
    return {
        "seed": cfg.seed,
        "metrics": final,
        "curves": curves,
        "grad_norm_mean": float(gn.mean()),
        "clipped_frac": float((gn > cfg.grad_clip).float().mean()),
        "seconds_init": t_init,
        "seconds_train": t_train,
        "seconds": time.perf_counter() - t0,
    }


def time_per_step(teacher, labels=LABELS, steps: int = 5, reps: int = 3, batch: int = 256, seed: int = 0,
                  configs: dict | None = None, **overrides) -> dict:
    """Median seconds of one generator step (E-step + M-step, or the DI step) per method.

    ``labels`` are ``"DI"`` / ``"EMD-K"`` (built by :func:`label_config` with ``overrides``);
    ``configs`` adds ``{label: DistillConfig}`` for any other setting. Methods are timed
    round-robin (``reps`` rounds of ``steps`` steps each), so that a change of load on a shared
    machine hits them all alike. Student updates are not included: they cost the same for every
    method. Returns ``{label: {"median": s, "all": [...]}}``.
    """
    cfgs = {lab: label_config(lab, seed=seed, steps=steps * reps, batch=batch, init_steps=0, student_warmup=0,
                              **copy.deepcopy(overrides)) for lab in labels}
    for lab, c in (configs or {}).items():
        cfgs[lab] = dataclasses.replace(c, batch=batch, init_steps=0, student_warmup=0, steps=steps * reps)
    ds = {}
    for lab, c in cfgs.items():
        ds[lab] = Distiller(teacher, c)
        ds[lab].generator_step()                                   # warm up allocations
    times = {lab: [] for lab in cfgs}
    for _ in range(reps):
        for lab in cfgs:
            t0 = time.perf_counter()
            for _ in range(steps):
                ds[lab].generator_step()
            times[lab].append((time.perf_counter() - t0) / steps)
    return {lab: {"median": float(torch.tensor(v).median()), "all": v} for lab, v in times.items()}


def summarise(runs: dict) -> dict:
    """``{label: [run, ...]}`` -> ``{label: {metric: {"mean", "std", "values"}}}`` of the final metrics."""
    out = {}
    for lab, rs in runs.items():
        out[lab] = {}
        for k in _METRICS:
            v = torch.tensor([float(r["metrics"][k]) for r in rs], dtype=torch.float64)
            out[lab][k] = {"mean": float(v.mean()), "std": float(v.std()) if len(v) > 1 else 0.0,
                           "values": v.tolist()}
        m = torch.tensor([r["metrics"]["masses"] for r in rs], dtype=torch.float64)
        out[lab]["masses"] = {"mean": m.mean(0).tolist(), "std": (m.std(0) if len(rs) > 1 else 0 * m[0]).tolist()}
        out[lab]["seconds_train"] = float(torch.tensor([r["seconds_train"] for r in rs]).mean())
    return out


# ---- bookkeeping shared with chapter 6's sweeps --------------------------------------------------------

def run_info(t0: float, module: str, argv) -> dict:
    """The command, date, machine and wall time recorded in every results JSON."""
    return {
        "command": " ".join(["python -m", module] + [str(a) for a in argv]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "cpus": os.cpu_count()},
        "wall_s": round(time.perf_counter() - t0, 1),
    }


def write_json(path, payload: dict) -> None:
    """Write ``payload`` as indented JSON, atomically (temporary file, then rename)."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1)
    os.replace(tmp, path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mixture", default="grid25", help="ring8, irregular, grid25 or bimodal")
    p.add_argument("--labels", nargs="+", default=LABELS, help="DI and/or EMD-K labels")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=400, help="generator steps per run (equal for every method)")
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--n-eval", type=int, default=2000)
    p.add_argument("--timing-reps", type=int, default=5)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--init-steps", type=int, default=400, help="generator initialisation steps (DistillConfig)")
    p.add_argument("--student-warmup", type=int, default=300)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="default data/results/ch05_ksweep_<mixture>.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    mixture = get_mixture(args.mixture)
    out = args.out or str(DATA_DIR / "results" / f"ch05_ksweep_{args.mixture}.json")
    from tqdm.auto import tqdm

    ov = {"batch": args.batch, "init_steps": args.init_steps, "student_warmup": args.student_warmup}
    runs = {lab: [] for lab in args.labels}
    bar = tqdm(total=len(args.seeds) * len(args.labels), desc="K sweep")
    for seed in args.seeds:
        # one start per seed, shared by every method (paired comparison)
        start = prepare(mixture, label_config("DI", seed=seed, steps=args.steps, **ov))
        for lab in args.labels:
            bar.set_postfix_str(f"{lab} seed {seed}")
            runs[lab].append(run_one(mixture, label_config(lab, seed=seed, steps=args.steps, **ov), args.n_eval,
                                     args.eval_every, start=start))
            bar.update()
    bar.close()
    timing = time_per_step(mixture, args.labels, steps=5, reps=args.timing_reps, batch=args.batch)
    payload = {"mixture": args.mixture, "labels": args.labels, "seeds": args.seeds, "steps": args.steps,
               "config": label_config("EMD-8", steps=args.steps, **ov).to_dict(),
               "summary": summarise(runs), "timing": timing, "runs": runs}
    payload.update(run_info(t0, __name__ if __name__ != "__main__" else "emd_lib.experiments.ch05",
                            sys.argv[1:] if argv is None else argv))
    write_json(out, payload)
    print(f"wrote {out} in {payload['wall_s']:.0f} s")
    for lab in args.labels:
        s = payload["summary"][lab]
        print(f"{lab:>7}: TV {s['tv']['mean']:.3f} ± {s['tv']['std']:.3f}  MMD {s['mmd']['mean']:.4f}  "
              f"recall {s['recall']['mean']:.2f}  {1e3 * timing[lab]['median']:.1f} ms/step")


if __name__ == "__main__":
    main()
