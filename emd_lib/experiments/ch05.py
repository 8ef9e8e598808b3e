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

    python -m emd_lib experiment ch05                       # grid25, 400 steps, seeds 0 1 2
    python -m emd_lib experiment ch05 --mixture ring8 --steps 800 --seeds 0 1 2 3

**What moving z buys** (``--sweep moving_z``): the linear generator with the exact student on
``bimodal``, w = 1 and w = sigma^2, from the narrow start and from the forward-KL fit, by
Diff-Instruct, EMD-16 on (eps, -) with full cancellation and EMD-16 on (eps, z) without
cancellation (:data:`MOVING_Z`); writes ``data/results/ch05_linear_moving_z.json``::

    python -m emd_lib experiment ch05 --sweep moving_z --seeds 0 1 2

The JSON (``data/results/ch05_ksweep_<mixture>.json``) records the command, the date, the machine
and the wall time. Runs are single-threaded unless ``--threads`` says otherwise.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import inspect
import os
import platform
import sys
import time

import torch

from .. import DATA_DIR
from ..runs.checkpoint import run_card, write_json  # noqa: F401  (re-exported: the experiments write with it)
from ..divergences import mixture_moments
from ..distill import DistillConfig, Distiller, di_generator_loss, emd_generator_loss
from ..langevin import LangevinConfig
from ..metrics import mixture_report
from ..mixtures import get_mixture
from ..nets import MLPGenerator, MLPScore
from ..schedules import bcast, sample_lam, weight
from ..teachers import NetworkTeacher

__all__ = ["flat_grad", "random_pair", "prepare", "k1_gradients", "eps0_gradient", "label_config", "run_one",
           "time_per_step", "summarise", "pm", "k_curve", "linear_knob", "linear_start", "moving_z_run", "MOVING_Z", "run_info", "write_json", "main", "LABELS"]

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
    """``"DI"``, ``"EMD-K"`` (eps-only chain) or ``"EMD-K (eps, z)"`` (z moves too) as a
    :class:`DistillConfig` with the book's defaults (and ``overrides``)."""
    lang = dict(overrides.pop("langevin", {}))
    if label.upper() == "DI":
        return DistillConfig(method="di", steps=steps, seed=seed, langevin=LangevinConfig(**lang), **overrides)
    if not label.upper().startswith("EMD-"):
        raise ValueError(f"label must be 'DI', 'EMD-K' or 'EMD-K (eps, z)', got {label!r}")
    body = label.split("-", 1)[1].strip()
    if body.endswith("(eps, z)"):                          # the joint chain: z moves too
        lang.setdefault("move_z", True)
        body = body[: -len("(eps, z)")].strip()
    K = int(body)
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
                  configs: dict | None = None, whole: bool = False, **overrides) -> dict:
    """Median seconds of one generator step (E-step + M-step, or the DI step) per method.

    ``labels`` are ``"DI"`` / ``"EMD-K"`` (built by :func:`label_config` with ``overrides``);
    ``configs`` adds ``{label: DistillConfig}`` for any other setting. Methods are timed
    round-robin (``reps`` rounds of ``steps`` steps each), so that a change of load on a shared
    machine hits them all alike. ``whole=False`` times the generator step alone; ``whole=True``
    the whole training step, the student-score updates (``student_updates`` of them, the same
    for every method) included, which is what a run's wall time is made of.
    Returns ``{label: {"median": s, "all": [...]}}``.
    """
    cfgs = {lab: label_config(lab, seed=seed, steps=steps * reps, batch=batch, init_steps=0, student_warmup=0,
                              **copy.deepcopy(overrides)) for lab in labels}
    for lab, c in (configs or {}).items():
        cfgs[lab] = dataclasses.replace(c, batch=batch, init_steps=0, student_warmup=0, steps=steps * reps)
    from ..runs.timing import time_round_robin

    ds = {lab: Distiller(teacher, c) for lab, c in cfgs.items()}

    return time_round_robin({lab: d.train_step if whole else d.generator_step for lab, d in ds.items()}, steps,
                            rounds=reps)


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


def pm(entry: dict, key: str, fmt: str = ".3f") -> str:
    """``"mean ± std"`` of metric ``key`` in one entry of a sweep's summary (:func:`summarise`),
    each formatted with ``fmt``: a table's cell."""
    return f"{entry[key]['mean']:{fmt}} ± {entry[key]['std']:{fmt}}"


# ---- the knob with an exact student: a linear generator -----------------------------------------------

def k_curve(summary: dict) -> tuple[list[int], list[float], list[float]]:
    """The EMD-K rows of a linear sweep's summary (``--sweep linear``, DI left out) as
    ``(Ks, mean std along the axis, its spread over seeds)``: one curve of the K sweep."""
    labs = [k for k in summary if k != "DI"]
    return ([int(k.split("-")[1].split()[0]) for k in labs], [summary[k]["std_mean"][0] for k in labs],
            [summary[k]["std_std"][0] for k in labs])


def linear_knob(teacher, label: str, steps: int = 1000, batch: int = 256, lr: float = 1e-2, seed: int = 0,
                lam_min: float = -6.0, lam_max: float = 6.0, gamma_eps: float = 0.3, A0=None, b0=None,
                cancel: str = "full", weighting: str = "sigma2", langevin: dict | None = None) -> dict:
    """Fit a linear generator ``g(z) = A z + b`` to ``teacher`` by DI or EMD-K with the *exact* student.

    The student is the closed-form noisy marginal ``q_t = N(alpha b, alpha^2 A A^T + sigma^2 I)``
    (:func:`emd_lib.em.exact_student`), rebuilt at every step, so that the only difference between
    methods is the E-step. Adam (betas (0, 0.999)) with a linearly decaying learning rate,
    ``lam ~ U[lam_min, lam_max]``, the weighting ``w(lam)`` named by ``weighting`` (``"sigma2"``
    by default; ``"one"``, ``"snr"``, ``"edm"``), the label's chain (eps only, or ``(eps, z)``)
    with noise cancellation ``cancel`` (``"full"`` by default; chapter 4 shows it keeps the
    gradient's mean only with z frozen) and any other chain settings in ``langevin`` (e.g.
    ``{"z_precondition": "none", "gamma_z": 0.05}``). ``A0``, ``b0``: the start (default
    ``A = 0.5 I``, ``b = 0``).
    Returns the fitted ``b``, ``C = A A^T`` and the loss-free summary ``std`` (sqrt of diag C).
    """
    from ..em import LinearGenerator, exact_student

    d = teacher.dim
    A0 = 0.5 * torch.eye(d) if A0 is None else torch.as_tensor(A0, dtype=torch.float32)
    b0 = torch.zeros(d) if b0 is None else torch.as_tensor(b0, dtype=torch.float32)
    gen = LinearGenerator(A0, b0)
    opt = torch.optim.Adam(gen.parameters(), lr=lr, betas=(0.0, 0.999))
    g = torch.Generator().manual_seed(seed)
    cfg = label_config(label, langevin={"gamma_eps": gamma_eps, "cancel": cancel, **(langevin or {})},
                       weighting=weighting)
    for i in range(steps):
        student = exact_student(gen.A.detach(), gen.b.detach(), teacher.schedule)
        z = torch.randn(batch, d, generator=g)
        eps = torch.randn(batch, d, generator=g)
        lam = sample_lam(batch, "uniform", lam_min, lam_max, generator=g)
        if cfg.method == "di":
            loss, _ = di_generator_loss(gen, teacher, student, z, eps, lam, weighting)
        else:
            loss, _ = emd_generator_loss(gen, teacher, student, z, eps, lam, cfg.langevin, weighting, rng=g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for group in opt.param_groups:                      # linear decay to 1% of lr
            group["lr"] = lr * (1 - 0.99 * i / max(steps - 1, 1))
        opt.step()
    A, b = gen.A.detach().double(), gen.b.detach().double()
    C = A @ A.T
    return {"label": label, "seed": seed, "weighting": weighting, "b": b.tolist(), "C": C.tolist(),
            "std": C.diag().sqrt().tolist()}


#: chapter 5's comparison of the chains on the linear generator: label and chain settings
MOVING_Z = {"DI": ("DI", {}),
            "EMD-16 (eps, -)": ("EMD-16", {"cancel": "full"}),
            "EMD-16 (eps, z), no cancel": ("EMD-16 (eps, z)", {"cancel": "none", "z_precondition": "none",
                                                                "gamma_z": 0.05})}


def linear_start(teacher, start: str):
    """``(A0, b0)`` of a named start: ``"narrow"`` (``A = 0.5 I``, ``b = 0``) or ``"fit"`` (the
    forward-KL Gaussian fit, ``A = chol(C)``, ``b = m`` with the mixture's moments)."""
    if start == "narrow":
        return 0.5 * torch.eye(teacher.dim), torch.zeros(teacher.dim)
    if start == "fit":
        m, cov = mixture_moments(teacher, torch.float64)
        return torch.linalg.cholesky(cov).float(), m.float()
    raise ValueError(f"start must be 'narrow' or 'fit', got {start!r}")


def moving_z_run(teacher, method: str, weighting: str, start: str, seed: int, steps: int = 1000,
                 batch: int = 256) -> dict:
    """One cell of the moving-z comparison: ``method`` (a key of :data:`MOVING_Z`) from ``start``."""
    label, lang = MOVING_Z[method]
    A0, b0 = linear_start(teacher, start)
    t0 = time.perf_counter()
    r = linear_knob(teacher, label, steps=steps, batch=batch, seed=seed, A0=A0, b0=b0, weighting=weighting,
                    cancel=lang.get("cancel", "full"), langevin={k: v for k, v in lang.items() if k != "cancel"})
    r.update(method=method, start=start, steps=steps, seconds=round(time.perf_counter() - t0, 2))
    return r


# ---- bookkeeping shared with chapter 6's sweeps --------------------------------------------------------

def run_info(t0: float, module: str, argv) -> dict:
    """The command, date, machine and wall time recorded in every results JSON."""
    return {
        **run_card([str(a) for a in argv], module=module),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "cpus": os.cpu_count()},
        "wall_s": round(time.perf_counter() - t0, 1),
    }


def _check_args(p: argparse.ArgumentParser, args) -> None:
    """Every setting checked before the first run (each run takes minutes): ``p.error``, status 2."""
    linear = args.sweep in ("linear", "moving_z")
    try:
        get_mixture(args.mixture or ("bimodal" if linear else "grid25"))
    except KeyError as e:
        p.error(str(e.args[0]))
    if not args.seeds or not args.labels:
        p.error("--seeds and --labels need at least one value each")
    for name in ("batch", "eval_every", "n_eval", "timing_reps", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.steps is not None and args.steps < 1:
        p.error(f"--steps must be >= 1, got {args.steps}")
    if args.sweep != "linear" and args.cancel != "full":
        p.error("--cancel is for --sweep linear; the networks sweep takes the labels' default chain")
    ov = {} if linear else {"batch": args.batch, "init_steps": args.init_steps, "student_warmup": args.student_warmup}
    for lab in args.labels:
        try:
            label_config(lab, langevin={"cancel": args.cancel} if linear else {}, **ov)
        except (TypeError, ValueError) as e:
            p.error(f"--labels {lab!r}: {e}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sweep", default="networks", choices=["networks", "linear", "moving_z"],
                   help="networks: MLP generator and student (default); linear: linear generator, exact student; "
                        "moving_z: the linear generator's chains compared under two weightings and two starts")
    p.add_argument("--mixture", default=None, help="ring8, irregular, grid25 or bimodal (default grid25; "
                                                    "bimodal for --sweep linear)")
    p.add_argument("--labels", nargs="+", default=LABELS, help="DI and/or EMD-K labels")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=None, help="generator steps per run, equal for every method "
                                                             "(default 400; 1000 for --sweep linear)")
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--n-eval", type=int, default=2000)
    p.add_argument("--timing-reps", type=int, default=5)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--init-steps", type=int, default=400, help="generator initialisation steps (DistillConfig)")
    p.add_argument("--student-warmup", type=int, default=300)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cancel", default="full", choices=["none", "injected", "full"],
                   help="--sweep linear: the E-step's noise cancellation (default full)")
    p.add_argument("--out", default=None, help="default data/results/ch05_ksweep_<mixture>.json")
    args = p.parse_args(argv)
    _check_args(p, args)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    from tqdm.auto import tqdm

    if args.sweep == "linear":
        return _main_linear(args, t0, argv)
    if args.sweep == "moving_z":
        return _main_moving_z(args, t0, argv)
    args.mixture = args.mixture or "grid25"
    args.steps = args.steps or 400
    mixture = get_mixture(args.mixture)
    out = args.out or str(DATA_DIR / "results" / f"ch05_ksweep_{args.mixture}.json")

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
    # DI is always timed too, as the reference that makes separate sweeps' timings comparable
    timing = time_per_step(mixture, list(dict.fromkeys(["DI"] + args.labels)), steps=5, reps=args.timing_reps,
                           batch=args.batch)
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


def _main_linear(args, t0, argv):
    from tqdm.auto import tqdm

    name = args.mixture or "bimodal"
    steps = args.steps or 1000
    mixture = get_mixture(name)
    suffix = "" if args.cancel == "full" else f"_cancel_{args.cancel}"      # never the full-cancellation file
    out = args.out or str(DATA_DIR / "results" / f"ch05_linear_{name}{suffix}.json")
    runs = {lab: [] for lab in args.labels}
    bar = tqdm(total=len(args.seeds) * len(args.labels), desc="linear knob")
    for seed in args.seeds:
        for lab in args.labels:
            bar.set_postfix_str(f"{lab} seed {seed}")
            runs[lab].append(linear_knob(mixture, lab, steps=steps, batch=args.batch, seed=seed, cancel=args.cancel))
            bar.update()
    bar.close()
    m, cov = mixture_moments(mixture, torch.float64)         # the forward-KL (moment-matching) fit
    summary = {}
    for lab, rs in runs.items():
        sd = torch.tensor([r["std"] for r in rs], dtype=torch.float64)
        b = torch.tensor([r["b"] for r in rs], dtype=torch.float64)
        summary[lab] = {"std_mean": sd.mean(0).tolist(), "std_std": sd.std(0).tolist() if len(rs) > 1 else [0.0] * sd.shape[1],
                        "b_mean": b.mean(0).tolist(), "b_std": b.std(0).tolist() if len(rs) > 1 else [0.0] * b.shape[1]}
    knob = inspect.signature(linear_knob).parameters                  # the settings every run used
    settings = {k: knob[k].default for k in ("lr", "lam_min", "lam_max", "gamma_eps")}
    payload = {"sweep": "linear", "mixture": name, "labels": args.labels, "seeds": args.seeds, "steps": steps,
               "settings": dict(settings, batch=args.batch, cancel=args.cancel),
               "forward_kl_fit": {"mean": m.tolist(), "cov": cov.tolist(), "std": cov.diag().sqrt().tolist()},
               "summary": summary, "runs": runs}
    payload.update(run_info(t0, "emd_lib.experiments.ch05", sys.argv[1:] if argv is None else argv))
    write_json(out, payload)
    print(f"wrote {out} in {payload['wall_s']:.0f} s")
    for lab, s_ in summary.items():
        print(f"{lab:>7}: b {s_['b_mean'][0]:+.3f}  std {s_['std_mean'][0]:.3f} ± {s_['std_std'][0]:.3f}")
    print(f"forward-KL (moment-matching) fit: mean {m[0]:+.3f}, std {cov.diag().sqrt()[0]:.3f}")


def _main_moving_z(args, t0, argv):
    from tqdm.auto import tqdm

    name = args.mixture or "bimodal"
    steps = args.steps or 1000
    mixture = get_mixture(name)
    out = args.out or str(DATA_DIR / "results" / f"ch05_linear_moving_z{'' if name == 'bimodal' else '_' + name}.json")
    jobs = [(w, st, s, m) for w in ("one", "sigma2") for st in ("narrow", "fit") for s in args.seeds for m in MOVING_Z]
    runs = []
    for w, st, s, m in tqdm(jobs, desc="moving z"):
        r = moving_z_run(mixture, m, w, st, s, steps=steps, batch=args.batch)
        runs.append(r)
        tqdm.write(f"w={w:>6} start={st:>6} seed {s} {m:>27}: b {r['b'][0]:+.3f}, std {r['std'][0]:.3f} "
                   f"({r['seconds']:.0f} s)")
    m_, cov = mixture_moments(mixture, torch.float64)
    knob = inspect.signature(linear_knob).parameters
    payload = {"sweep": "moving_z", "mixture": name, "seeds": args.seeds, "steps": steps,
               "methods": {k: {"label": lab, "langevin": lang} for k, (lab, lang) in MOVING_Z.items()},
               "settings": dict({k: knob[k].default for k in ("lr", "lam_min", "lam_max", "gamma_eps")},
                                batch=args.batch),
               "forward_kl_fit": {"mean": m_.tolist(), "cov": cov.tolist(), "std": cov.diag().sqrt().tolist()},
               "runs": runs}
    payload.update(run_info(t0, "emd_lib.experiments.ch05", sys.argv[1:] if argv is None else argv))
    write_json(out, payload)
    print(f"wrote {out} in {payload['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
