"""Chapter 6 sweeps: EMD in practice.

Every training run distils an exact 2D mixture teacher with :class:`emd_lib.distill.Distiller`
(EMD with the :class:`~emd_lib.distill.DistillConfig` defaults unless a variant overrides them)
and reports :func:`emd_lib.metrics.mixture_report` of the EMA generator over training. Each sweep
writes ``data/results/ch06_<sweep>.json`` with the command, the date, the machine and the wall time::

    python -m emd_lib experiment ch06 --sweep lamstar     # generator initialisation at lam* = 0, -2, -6, -10
    python -m emd_lib experiment ch06 --sweep weighting   # w(t) = sigma^2, 1, SNR
    python -m emd_lib experiment ch06 --sweep hparams     # one setting at a time around the defaults
    python -m emd_lib experiment ch06 --sweep mcmc        # test-time MCMC correction on grid25

``--seeds``, ``--steps`` and ``--mixture`` shrink or grow a sweep. Runs are single-threaded
unless ``--threads`` says otherwise. Within one seed, every variant that does not change the
initialisation starts from the same initialised generator and warmed-up student (a paired
comparison, :func:`emd_lib.experiments.ch05.prepare`).
"""
from __future__ import annotations

import argparse
import copy
import sys
import time

import torch

from .. import DATA_DIR
from ..distill import DistillConfig, Distiller, evals_per_step
from ..langevin import LangevinConfig, mcmc_correct
from ..metrics import mixture_report
from ..mixtures import get_mixture
from ..schedules import bcast
from .ch05 import pm, prepare, run_info, run_one, write_json

__all__ = ["SWEEPS", "DEFAULT_STEPS", "DEFAULT_MIXTURE", "variant_config", "run_sweep", "summarise",
           "evals_per_step", "init_target", "MCMC_SETTINGS", "correct", "mcmc_sweep", "pm", "summary_table",
           "clip_fractions", "mcmc_mean", "mcmc_table", "main"]

#: sweep -> {variant label -> overrides of DistillConfig (``langevin``: a dict of LangevinConfig fields)}
SWEEPS: dict[str, dict[str, dict]] = {
    "lamstar": {f"lam* = {v:g}": {"lam_star": v} for v in (0.0, -2.0, -6.0, -10.0)},
    "weighting": {"w = sigma^2": {"weighting": "sigma2"}, "w = 1": {"weighting": "one"},
                  "w = SNR": {"weighting": "snr"}},
    "hparams": {
        "defaults": {},
        "gamma_eps = 0.1": {"langevin": {"gamma_eps": 0.1}},
        "gamma_eps = 0.6": {"langevin": {"gamma_eps": 0.6}},
        "student_updates = 1": {"student_updates": 1},
        "no EMA": {"ema": 0.0},
        "lr_g = 5e-4": {"lr_g": 5e-4},
        "lr_g = 5e-3": {"lr_g": 5e-3},
        "Adam betas (0.9, 0.999)": {"betas": (0.9, 0.999)},
    },
}
#: generator updates per run, sized so that each sweep of 3 seeds takes about 15 minutes on one
#: shared CPU core
DEFAULT_STEPS = {"lamstar": 400, "weighting": 400, "hparams": 300, "mcmc": 400}
DEFAULT_MIXTURE = {"lamstar": "ring8", "weighting": "ring8", "hparams": "ring8", "mcmc": "grid25"}


def variant_config(overrides: dict, seed: int = 0, steps: int = 400, base: dict | None = None) -> DistillConfig:
    """The book's defaults (:class:`DistillConfig`), then ``base``, then ``overrides``."""
    ov = {**copy.deepcopy(base or {}), **copy.deepcopy(overrides)}
    lang = ov.pop("langevin", {})
    return DistillConfig(steps=steps, seed=seed, langevin=LangevinConfig(**lang), **ov)


def _changes_start(overrides: dict) -> bool:
    """Variants that change the initialisation or the student warm-up cannot share a start."""
    return any(k in overrides for k in ("lam_star", "init_steps", "student_warmup", "width", "depth", "lr_s"))


@torch.no_grad()
def _init_report(mixture, generator, n_eval: int, seed: int) -> dict:
    z = torch.randn(n_eval, mixture.dim, generator=torch.Generator().manual_seed(10_000 + seed))
    return mixture_report(mixture, generator(z), n_ref=n_eval)


def run_sweep(name: str, mixture, seeds=(0, 1, 2), steps: int = 400, n_eval: int = 2000, eval_every: int = 100,
              variants: dict | None = None, progress: bool = True, base: dict | None = None) -> dict:
    """Run every variant of sweep ``name`` for every seed; returns ``{label: [run, ...]}``.

    Each run is :func:`emd_lib.experiments.ch05.run_one`'s dict, plus ``init_metrics``: the
    generator at step 0 (after its initialisation from the teacher). ``base`` overrides the
    defaults for every variant (e.g. a smaller batch for a quick test).
    """
    variants = SWEEPS[name] if variants is None else variants
    runs = {lab: [] for lab in variants}
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(seeds) * len(variants), desc=f"sweep {name}")
    for seed in seeds:
        shared = None
        for lab, ov in variants.items():
            cfg = variant_config(ov, seed=seed, steps=steps, base=base)
            if bar is not None:
                bar.set_postfix_str(f"{lab}, seed {seed}")
            if _changes_start(ov):
                start = prepare(mixture, cfg)
            else:
                shared = shared or prepare(mixture, variant_config({}, seed=seed, steps=steps, base=base))
                start = shared
            init = _init_report(mixture, start[0], n_eval, seed)
            try:
                r = run_one(mixture, cfg, n_eval, eval_every, start=start)
                r["diverged"] = False
            except FloatingPointError as e:
                r = {"seed": seed, "diverged": True, "error": str(e), "metrics": None}
            r["init_metrics"] = init
            runs[lab].append(r)
            if bar is not None:
                bar.update()
    if bar is not None:
        bar.close()
    return runs


_METRICS = ("tv", "mmd", "recall", "precision", "within_3sd", "modes_covered")


def summarise(runs: dict) -> dict:
    """``{label: [run, ...]}`` -> ``{label: {metric: {"mean", "std", "values"}, "diverged": n}}``.

    Diverged runs are counted, and left out of the means.
    """
    out = {}
    for lab, rs in runs.items():
        ok = [r for r in rs if not r.get("diverged")]
        out[lab] = {"diverged": len(rs) - len(ok), "n": len(rs)}
        for k in _METRICS:
            v = torch.tensor([float(r["metrics"][k]) for r in ok], dtype=torch.float64)
            out[lab][k] = {"mean": float(v.mean()) if len(v) else float("nan"),
                           "std": float(v.std()) if len(v) > 1 else 0.0, "values": v.tolist()}
            if "init_metrics" in rs[0]:
                v0 = torch.tensor([float(r["init_metrics"][k]) for r in rs], dtype=torch.float64)
                out[lab][f"init_{k}"] = {"mean": float(v0.mean()), "std": float(v0.std()) if len(v0) > 1 else 0.0}
    return out


# ---- small helpers the chapter uses ---------------------------------------------------------------------

@torch.no_grad()
def init_target(teacher, lam_star: float, z: torch.Tensor) -> torch.Tensor:
    """The map the generator is initialised to: ``D_phi(z_in(z), lam*)`` (VP: ``z_in = z``; EDM: ``sigma* z``)."""
    lam = torch.full((z.shape[0],), float(lam_star), dtype=z.dtype)
    return teacher.denoise(teacher.schedule.z_in_scale(lam_star) * z, lam)


#: label -> keyword arguments of :func:`correct` (the MCMC sweep)
MCMC_SETTINGS: dict[str, dict] = {
    **{f"lam {lam:g}, denoise only": {"lam": lam, "steps": 0} for lam in (2.0, 4.0, 6.0)},
    **{f"lam {lam:g}, {n} steps": {"lam": lam, "steps": n} for lam in (2.0, 4.0, 6.0) for n in (30, 100, 300)},
    "lam 6, 300 steps, eps only": {"lam": 6.0, "steps": 300, "move_z": False},
    "lam 6, 300 steps, gamma_z 0.2": {"lam": 6.0, "steps": 300, "gamma_z": 0.2},
    "lam 6, 300 steps, gamma_z 1": {"lam": 6.0, "steps": 300, "gamma_z": 1.0},
    "lam 6, 300 steps, gamma_eps 0.3": {"lam": 6.0, "steps": 300, "gamma_eps": 0.3},
}


def correct(generator, teacher, student, z, lam: float, steps: int = 300, gamma_eps: float = 0.1,
            gamma_z: float = 0.05, move_z: bool = True, seed: int = 0) -> dict:
    """:func:`emd_lib.langevin.mcmc_correct` and three readouts of its final state.

    Returns ``{"denoised": D_phi(x_t^K), "noisy": x_t^K / alpha, "generator": g(z^K)}``, each
    ``(n, d)``. ``steps = 0`` is the baseline without MCMC: the teacher's denoiser applied to
    ``alpha g(z) + sigma eps`` directly.
    """
    rng = torch.Generator().manual_seed(seed)
    if steps == 0:
        teacher.schedule.check_lam(lam, "lam")
        lam_b = torch.full((z.shape[0],), float(lam))
        alpha, sigma = teacher.schedule.alpha_sigma(lam_b)
        with torch.no_grad():
            x = generator(z)
            eps = torch.randn(z.shape, generator=rng)
            x_t = bcast(alpha, x) * x + bcast(sigma, x) * eps
            return {"denoised": teacher.denoise(x_t, lam_b), "noisy": x_t / bcast(alpha, x), "generator": x}
    x_d, z_k, eps_k = mcmc_correct(generator, teacher, student, z, lam, steps=steps, gamma_eps=gamma_eps,
                                   gamma_z=gamma_z, move_z=move_z, rng=rng)
    alpha, sigma = (float(v) for v in teacher.schedule.alpha_sigma(torch.tensor(float(lam))))
    with torch.no_grad():
        xg = generator(z_k)
    return {"denoised": x_d, "noisy": (alpha * xg + sigma * eps_k) / alpha, "generator": xg}


def _brief(rep: dict) -> dict:
    return {k: rep[k] for k in _METRICS}


def mcmc_sweep(mixture, seeds=(0, 1), steps: int = 400, n: int = 1000, settings: dict | None = None,
               n_cloud: int = 1000, progress: bool = True, base: dict | None = None) -> dict:
    """Train EMD (defaults) on ``mixture`` per seed, then run every correction setting on ``n`` latents.

    Returns ``{"runs": [{"seed", "train_metrics", "generator", "settings": {label: {...}}}], "clouds": {...}}``.
    The correction uses the raw generator (the one the student score tracks), not the EMA.
    The clouds (first seed) hold ``n_cloud`` points before and after the correction at lam 6, 300 steps.
    """
    settings = MCMC_SETTINGS if settings is None else settings
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(seeds) * (1 + len(settings)), desc="mcmc")
    out, clouds = [], {}
    for seed in seeds:
        d = Distiller(mixture, variant_config({}, seed=seed, steps=steps, base=base))
        d.train(progress=False)
        if bar is not None:
            bar.update()
        z = torch.randn(n, mixture.dim, generator=torch.Generator().manual_seed(20_000 + seed))
        with torch.no_grad():
            x_raw, x_ema = d.generator(z), d.ema(z)
        row = {"seed": seed, "train_metrics": _brief(mixture_report(mixture, x_ema, n_ref=n)),
               "generator": _brief(mixture_report(mixture, x_raw, n_ref=n)), "settings": {}}
        for lab, kw in settings.items():
            t0 = time.perf_counter()
            res = correct(d.generator, mixture, d.student, z, seed=seed, **kw)
            row["settings"][lab] = {"kwargs": kw, "seconds": time.perf_counter() - t0,
                                    **{k: _brief(mixture_report(mixture, v, n_ref=n)) for k, v in res.items()}}
            if seed == seeds[0] and lab == "lam 6, 300 steps":
                clouds = {"before": x_raw[:n_cloud].round(decimals=3).tolist(),
                          "after": res["denoised"][:n_cloud].round(decimals=3).tolist(),
                          "after_noisy": res["noisy"][:n_cloud].round(decimals=3).tolist()}
            if bar is not None:
                bar.update()
        out.append(row)
    if bar is not None:
        bar.close()
    return {"runs": out, "clouds": clouds}


# ---- the stored sweeps, as the chapter shows them --------------------------------------------------------

#: the metrics of a summary table: (key in the summary, column name, format spec)
SUMMARY_METRICS = (("tv", "TV", ".3f"), ("mmd", "MMD", ".4f"), ("recall", "recall", ".2f"))


def summary_table(res: dict, metrics=SUMMARY_METRICS, first: str = "variant", init: bool = False):
    """A stored sweep (``data/results/ch06_<sweep>.json``) as a table: one row per variant,
    ``mean ± std`` over seeds per metric (``(key, column, format)``), the step-0 TV first when
    ``init``, and a column of diverged runs when any run diverged."""
    from ..book import table

    summ = res["summary"]
    diverged = any(s["diverged"] for s in summ.values())
    cols = [first] + (["TV at step 0"] if init else []) + [c for _, c, _ in metrics] + (["diverged"] if diverged else [])
    rows = []
    for lab, s in summ.items():
        row = [lab] + ([f"{s['init_tv']['mean']:.3f}"] if init else []) + [pm(s, k, f) for k, _, f in metrics]
        rows.append(row + ([f"{s['diverged']} of {s['n']}"] if diverged else []))
    title = f"{res['mixture']}, {res['steps']} generator steps, seeds {res['seeds']} (mean ± std over seeds)"
    return table(rows, cols, title=title)


def clip_fractions(*results: dict) -> dict:
    """``{(sweep, label): (largest fraction of steps in which the gradient clip acted, mean gradient
    norm)}`` over the runs of stored sweeps."""
    return {(res["sweep"], lab): (max(r["clipped_frac"] for r in rs), sum(r["grad_norm_mean"] for r in rs) / len(rs))
            for res in results for lab, rs in res["runs"].items()}


def mcmc_mean(mc: dict, label: str, out: str = "denoised", key: str = "within_3sd") -> float:
    """The mean over seeds of metric ``key`` of readout ``out`` (``denoised``, ``noisy``,
    ``generator``) of correction setting ``label`` in the stored MCMC sweep."""
    v = [r["settings"][label][out][key] for r in mc["runs"]]
    return sum(v) / len(v)


def mcmc_table(mc: dict):
    """The stored MCMC sweep as a table: per setting, the denoised samples' fraction within 3 sd of
    a mode, MMD, recall and TV, the fraction of ``g(z_K)`` within 3 sd, and the seconds, means over seeds."""
    from ..book import table

    rows = []
    for lab in mc["runs"][0]["settings"]:
        sec = sum(r["settings"][lab]["seconds"] for r in mc["runs"]) / len(mc["runs"])
        rows.append([lab] + [mcmc_mean(mc, lab, "denoised", k) for k in ("within_3sd", "mmd", "recall", "tv")]
                    + [mcmc_mean(mc, lab, "generator"), sec])
    fmt = {"within 3 sd": "{:.3f}", "MMD": "{:.4f}", "recall": "{:.2f}", "TV": "{:.3f}", "g(z_K) within 3 sd": "{:.3f}",
           "seconds": "{:.1f}"}
    return table(rows, ["setting", "within 3 sd", "MMD", "recall", "TV", "g(z_K) within 3 sd", "seconds"], fmt=fmt,
                 title=f"{mc['mixture']}, EMD {mc['steps']} steps, seeds {mc['seeds']}: the denoised samples "
                       "(means over seeds)")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sweep", required=True, choices=list(SWEEPS) + ["mcmc"])
    p.add_argument("--mixture", default=None, help="default: ring8 (grid25 for mcmc)")
    p.add_argument("--seeds", nargs="+", type=int, default=None, help="default 0 1 2 (0 1 for mcmc)")
    p.add_argument("--steps", type=int, default=None, help="generator steps per run")
    p.add_argument("--n-eval", type=int, default=2000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--init-steps", type=int, default=400, help="generator initialisation steps (DistillConfig)")
    p.add_argument("--student-warmup", type=int, default=300)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="default data/results/ch06_<sweep>.json")
    args = p.parse_args(argv)
    name = args.sweep
    mix_name = args.mixture or DEFAULT_MIXTURE[name]
    steps = args.steps or DEFAULT_STEPS[name]
    seeds = args.seeds or ([0, 1] if name == "mcmc" else [0, 1, 2])
    out = args.out or str(DATA_DIR / "results" / f"ch06_{name}.json")
    base = {"batch": args.batch, "init_steps": args.init_steps, "student_warmup": args.student_warmup}
    # every setting checked before the first run (each run takes minutes)
    try:
        mixture = get_mixture(mix_name)
    except KeyError as e:
        p.error(str(e.args[0]))
    if steps < 1 or args.n_eval < 1 or args.threads < 1:
        p.error(f"--steps, --n-eval and --threads must be >= 1, got {steps}, {args.n_eval} and {args.threads}")
    for lab, ov in ({"defaults": {}} if name == "mcmc" else SWEEPS[name]).items():
        try:
            variant_config(ov, steps=steps, base=base)
        except (TypeError, ValueError) as e:
            p.error(f"variant {lab!r}: {e}")
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    payload = {"sweep": name, "mixture": mix_name, "seeds": seeds, "steps": steps,
               "defaults": variant_config({}, steps=steps, base=base).to_dict()}
    if name == "mcmc":
        payload.update(mcmc_sweep(mixture, seeds, steps, n=min(args.n_eval, 1000), base=base))
        payload["settings"] = MCMC_SETTINGS
    else:
        runs = run_sweep(name, mixture, seeds, steps, args.n_eval, base=base)
        payload.update({"variants": SWEEPS[name], "summary": summarise(runs), "runs": runs})
    payload.update(run_info(t0, "emd_lib.experiments.ch06", sys.argv[1:] if argv is None else argv))
    write_json(out, payload)
    print(f"wrote {out} in {payload['wall_s']:.0f} s")
    if name != "mcmc":
        for lab, s in payload["summary"].items():
            print(f"{lab:>26}: TV {s['tv']['mean']:.3f} ± {s['tv']['std']:.3f}  MMD {s['mmd']['mean']:.4f}  "
                  f"recall {s['recall']['mean']:.2f}  (step 0: TV {s['init_tv']['mean']:.3f})"
                  + (f"  diverged {s['diverged']}/{s['n']}" if s["diverged"] else ""))


if __name__ == "__main__":
    main()
