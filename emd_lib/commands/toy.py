"""Distil a Gaussian mixture from a JSON file into a one-step generator, from the command line.

    python -m emd_lib toy --mixture ring8 --method emd --samples out.npy          # a mixture of the book, by name
    python -m emd_lib toy --mixture my_mixture.json --method emd --samples out.npy  # or any mixture, from a file

The mixture file is a JSON object with ``weights`` (K numbers summing to 1), ``means``
(K points of dimension d), and either ``stds`` (K positive numbers, or K lists of d) or
``covs`` (K symmetric positive-definite d x d matrices). The mixture is standardised
internally (zero mean, unit average variance) so that the defaults fit any scale; the
samples are written back in the file's coordinates, as an (M, d) float32 array.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..runs.checkpoint import machine, output_path_problem, run_card, write_json
from ..distill import DistillConfig, Distiller, method_name
from ..langevin import JOINT_CHAIN, LangevinConfig
from ..metrics import mixture_report
from ..mixtures import MIXTURES, get_mixture
from ..schedules import VP
from ..teachers import GaussianMixture, MixtureError

__all__ = ["standardise", "distil_mixture", "main"]


def standardise(mix: GaussianMixture) -> tuple[GaussianMixture, torch.Tensor, float]:
    """Affine map to zero mean and unit average variance: returns ``(mixture', centre, scale)``
    with ``x' = (x - centre) / scale``."""
    w, mu, C = mix.weights, mix.means, mix.covs
    centre = (w[:, None] * mu).sum(0)
    total_cov = (w[:, None, None] * (C + torch.einsum("ki,kj->kij", mu - centre, mu - centre))).sum(0)
    scale = float(torch.sqrt(torch.diagonal(total_cov).mean()))
    if mix.diagonal:
        out = GaussianMixture(w, (mu - centre) / scale, (mix.var.sqrt() / scale).tolist(), schedule=mix.schedule)
    else:
        out = GaussianMixture(w, (mu - centre) / scale, covs=(C / scale**2).tolist(), schedule=mix.schedule)
    return out, centre, scale


def distil_mixture(mix: GaussianMixture, cfg: DistillConfig, n_samples: int = 10_000, progress: bool = True,
                   eval_every: int = 0):
    """Standardise, distil, and return ``(samples in the mixture's coordinates, report, distiller)``."""
    std_mix, centre, scale = standardise(mix)
    d = Distiller(std_mix, cfg)
    eval_fn = (lambda dd: {k: v for k, v in mixture_report(std_mix, dd.sample(4000)).items() if k != "masses"}) \
        if eval_every else None
    d.train(progress=progress, eval_every=eval_every, eval_fn=eval_fn)
    x = d.sample(n_samples, generator=torch.Generator().manual_seed(cfg.seed + 1)) * scale + centre
    return x, mixture_report(mix, x), d


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument gets one line (and exit status 2), not the usage block."""

    def error(self, message):
        self.exit(2, f"error: {message} (see python -m emd_lib toy --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m emd_lib toy", description=__doc__,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mixture", required=True, help="a JSON file with weights, means, and stds or covs, or the name of "
                   f"one of the book's mixtures ({', '.join(sorted(MIXTURES))})")
    p.add_argument("--method", choices=["emd", "di"], default="emd", help="EMD (forward KL) or Diff-Instruct (reverse KL)")
    p.add_argument("--langevin-steps", "-K", type=int, default=8, help="E-step Langevin steps K (EMD only; default 8)")
    p.add_argument("--steps", type=int, default=DistillConfig.steps, help="generator updates (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-samples", type=int, default=10_000, help="samples to write (default %(default)s)")
    p.add_argument("--samples", required=True, help="output .npy file, an (M, d) float32 array")
    p.add_argument("--report", help="also write the final metrics as JSON here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--init-steps", type=int, default=DistillConfig.init_steps,
                   help="regression steps of the generator onto the teacher at lam* (default %(default)s)")
    p.add_argument("--warmup", type=int, default=DistillConfig.student_warmup,
                   help="student-score updates before the first generator update (default %(default)s)")
    p.add_argument("--depth", type=int, default=TOY_DEPTH,
                   help="hidden layers of the generator and student networks (default %(default)s)")
    p.add_argument("--width", type=int, default=DistillConfig.width,
                   help="hidden units per layer (default %(default)s)")
    p.add_argument("--weighting", choices=["sigma2", "one", "snr", "edm"], default=DistillConfig.weighting,
                   help="loss weighting w(lam) over noise levels (default %(default)s)")
    p.add_argument("--lam-star", type=float, default=DistillConfig.lam_star,
                   help="log-SNR at which the generator is initialised from the teacher, g(z) = D(z, lam*) "
                        "(default %(default)s)")
    p.add_argument("--move-z", action="store_true",
                   help="EMD: the E-step moves z as well as eps (the (eps, z) chain; default (eps, -)), with "
                        "the settings chapter 4 recommends: " + ", ".join(f"{k}={v}" for k, v in JOINT_CHAIN.items()
                                                                         if k != "move_z"))
    p.add_argument("--cancel", choices=["none", "injected", "full"], default=None,
                   help=f"EMD: noise cancellation of the E-step (default {LangevinConfig.cancel}; "
                        f"{JOINT_CHAIN['cancel']} with --move-z, where injected or full turns the Metropolis "
                        "adjustment off)")
    p.add_argument("--gamma-z", type=float, default=None,
                   help=f"EMD with --move-z: Langevin step size of z (default {JOINT_CHAIN['gamma_z']})")
    p.add_argument("--z-clip", type=float, default=None,
                   help="EMD with --move-z: the largest z drift per step, in units of sqrt(dim) (default "
                        + (f"{JOINT_CHAIN['z_clip']})" if JOINT_CHAIN.get("z_clip") else "none; this trust region "
                           "replaces the Metropolis adjustment, which cannot take a clipped step)"))
    p.add_argument("--check", action="store_true",
                   help="only check the mixture file and the arguments, print a summary and exit")
    return p


#: The command's networks have one hidden layer more than the library default (3): on the
#: book's mixtures a 4-layer generator draws thinner bridges between modes, for more CPU time per
#: step (ring8: data/results/toy_ring8_emd.json against toy_ring8_emd_depth3.json, the same command
#: with --depth 3; docs/results.md quotes both).
TOY_DEPTH = 4


def _fail(msg: str) -> int:
    msg = " ".join(msg.split("\n"))  # always one line
    print(f"error: {msg}", file=sys.stderr)
    return 2


def main(argv=None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


def _main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    # arguments first (cheap), then the file, then the output paths: all before any training
    if args.steps < 1:
        return _fail(f"--steps must be >= 1, got {args.steps}")
    if args.n_samples < 6:
        return _fail(f"--n-samples must be >= 6 (the report's k-NN precision and recall need more "
                     f"than 5 samples), got {args.n_samples}")
    if args.langevin_steps < 0:
        return _fail(f"--langevin-steps must be >= 0, got {args.langevin_steps}")
    if args.init_steps < 0 or args.warmup < 0:
        return _fail("--init-steps and --warmup must be >= 0")
    if args.depth < 1 or args.width < 1:
        return _fail(f"--depth and --width must be >= 1, got {args.depth} and {args.width}")
    if args.threads is not None and args.threads < 1:
        return _fail(f"--threads must be >= 1, got {args.threads}")
    if not -(2**63) <= args.seed <= 2**63 - 2:
        return _fail(f"--seed must fit in a signed 64-bit integer, got {args.seed}")
    if args.method == "di" and (args.move_z or args.cancel is not None or args.gamma_z is not None
                                or args.z_clip is not None):
        return _fail("--move-z, --cancel, --gamma-z and --z-clip set EMD's E-step; --method di has none")
    for option, value in (("--gamma-z", args.gamma_z), ("--z-clip", args.z_clip)):
        if value is not None and not args.move_z:
            return _fail(f"{option} sets the step of z; it needs --move-z")
        if value is not None and not (math.isfinite(value) and value > 0):
            return _fail(f"{option} must be a finite number > 0, got {value}")
    try:
        VP.check_lam(args.lam_star, "--lam-star")
    except ValueError as e:
        return _fail(str(e))
    try:
        mix = (get_mixture(args.mixture) if args.mixture in MIXTURES and not Path(args.mixture).exists()
               else GaussianMixture.from_json(args.mixture))
    except MixtureError as e:
        return _fail(f"{args.mixture}: {e}")
    try:
        standardise(mix)
    except ValueError as e:  # scales so far apart that the standardised mixture leaves float32
        return _fail(f"{args.mixture}: its scales are too far apart to standardise in float32 ({e}); "
                     "rescale the means or the stds")
    if not args.samples.endswith(".npy"):
        return _fail(f"--samples must name a .npy file, got {args.samples!r}")
    for path, option in ((args.samples, "--samples"), (args.report, "--report")):
        if path is not None and (why := output_path_problem(path)):
            return _fail(f"{option}: {why}")
    if args.check:
        print(f"ok: {args.mixture}: {mix.n_components} components in {mix.dim} dimensions "
              f"({'diagonal' if mix.diagonal else 'full'} covariances)")
        return 0
    lang = {"K": args.langevin_steps, "move_z": args.move_z, **(JOINT_CHAIN if args.move_z else {})}
    for key, value in (("cancel", args.cancel), ("gamma_z", args.gamma_z), ("z_clip", args.z_clip)):
        if value is not None:
            lang[key] = value
    if lang.get("metropolis") and (args.z_clip is not None or args.cancel not in (None, "none")):
        lang["metropolis"] = False      # a clipped step or a noise record has no Metropolis-Hastings ratio
    try:
        lcfg = LangevinConfig(**lang)
    except ValueError as e:
        return _fail(str(e))
    cfg = DistillConfig(method=args.method, steps=args.steps, seed=args.seed, init_steps=args.init_steps,
                        student_warmup=args.warmup, depth=args.depth, width=args.width,
                        weighting=args.weighting, lam_star=args.lam_star, langevin=lcfg)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        x, report, _ = distil_mixture(mix, cfg, args.n_samples, progress=not args.quiet)
    except (FloatingPointError, ValueError) as e:
        return _fail(str(e))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    try:
        np.save(args.samples, x.numpy().astype(np.float32))
    except OSError as e:
        return _fail(f"cannot write {args.samples}: {e.strerror}")
    name = method_name(args.method, cfg.langevin)
    print(f"{name}: {args.steps} steps in {wall:.1f} s, {len(x)} samples -> {args.samples}")
    print(f"  modes covered     {report['modes_covered']}/{report['n_modes']} (hit by samples within 3 sd: "
          f"{report['modes_hit']}/{report['n_modes']})")
    print(f"  TV of mode masses {report['tv']:.4f}")
    print(f"  within 3 sd       {report['within_3sd']:.3f}")
    print(f"  MMD^2             {report['mmd']:.5f}")
    print(f"  precision/recall  {report['precision']:.3f} / {report['recall']:.3f}")
    if args.report:               # the command, the settings it resolved to and the machine, beside the metrics
        try:
            write_json(args.report, {**run_card(argv, module="emd_lib.commands.toy"), "method": name, "steps": args.steps,
                                     "seed": args.seed, "seconds": round(wall, 1), "cpu_seconds": round(cpu, 1),
                                     "threads": torch.get_num_threads(), "machine": machine(),
                                     "n_samples": args.n_samples, "weighting": cfg.weighting, "lam_star": cfg.lam_star,
                                     "chain": None if args.method == "di" else {
                                         "K": cfg.langevin.K, "move_z": cfg.langevin.move_z,
                                         "cancel": cfg.langevin.cancel,
                                         "gamma_z": cfg.langevin.gamma_z if cfg.langevin.move_z else None,
                                         "z_precondition": cfg.langevin.z_precondition if cfg.langevin.move_z else None,
                                         "z_clip": cfg.langevin.z_clip if cfg.langevin.move_z else None,
                                         "metropolis": cfg.langevin.metropolis if cfg.langevin.move_z else None},
                                     "config": cfg.to_dict(), **report})
        except OSError as e:
            return _fail(f"cannot write {args.report}: {e.strerror}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
