"""Distil the image teacher into a one-step generator: ``python -m emd_lib distill_images``.

    python -m emd_lib distill_images --method emd --K 4 --minutes 14 --out data/mnist_emd --threads 1   # CPU
    python -m emd_lib distill_images --method di --minutes 14 --out data/mnist_di --threads 1
    python -m emd_lib distill_images --method emd --K 8 --steps 20000 --batch 256 --out runs/mnist_emd8  # GPU-sized (not run here)
    python -m emd_lib distill_images --method emd --K 4 --minutes 8 --unconditional --out runs/mnist_u_emd4 --threads 1

The same :class:`~emd_lib.distill.Distiller` as the 2D chapters, on ``(B, 1, 28, 28)``
images with class labels as ``cond``; with ``--unconditional``, without them: the teacher, the
generator and the student score all read the teacher's "no class" label (the shipped teacher was
trained with 10% label dropout, so it is also an unconditional model), and which digit a sample
shows is left to the generator. The generator is a trainable copy of the teacher read at
the fixed log-SNR ``lam*`` (:class:`~emd_lib.nets.TeacherInitGenerator`); the student score is
a second copy, refitted to the generator's samples every step. The checkpoint holds the EMA
generator (``generator.*``) and the student score (``student.*``, used by the test-time MCMC
correction), with a card recording the command, steps, wall time, machine and date.

The learning rates decay over ``--horizon`` generator steps (default ``--steps``). With
``--minutes`` the horizon is sized from the first step's time (at most ``--steps``) and training
also stops when the time is up; the card records the ``horizon`` (also ``config["steps"]``) and
the ``steps`` run, and ``--steps STEPS --horizon HORIZON`` (no ``--minutes``) repeats such a run
step for step. Ctrl-C saves the steps done so far (card ``"complete": false``) and exits with
status 130.

:func:`load_teacher` and :func:`load_student` read the shipped checkpoints (sha256 checked).
"""
from __future__ import annotations

import argparse
import math
import shlex
import time
from pathlib import Path

import torch

from .. import device as pick_device
from ..runs.runner import run_steps
from ..runs.checkpoint import (CheckpointError, exit_interrupted, machine, run_card)
from ..distill import DistillConfig, method_name
from ..langevin import LangevinConfig

__all__ = ["args_from_command", "config_from_command", "TEACHER_PATH", "load_teacher", "load_student", "make_distiller", "unconditional_problem", "save_student", "main"]

from ..images.models import (TEACHER_PATH, load_student, load_teacher, make_distiller,  # noqa: F401
                             save_student, unconditional_problem)


def build_parser():
    p = argparse.ArgumentParser(prog="python -m emd_lib distill_images", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--teacher", default=str(TEACHER_PATH))
    p.add_argument("--method", default="emd", choices=["emd", "di"])
    p.add_argument("--K", type=int, default=4, help="Langevin steps of the E-step (EMD)")
    p.add_argument("--gamma-eps", type=float, default=0.3)
    p.add_argument("--move-z", action="store_true",
                   help="EMD: the joint (eps, z) chain (default: z frozen, the (eps, -) chain)")
    p.add_argument("--gamma-z", type=float, default=LangevinConfig.gamma_z, help="with --move-z: z's step size")
    p.add_argument("--z-precondition", choices=["none", "snr", "jacobian"], default=LangevinConfig.z_precondition,
                   help="with --move-z: how z's step shrinks with the signal-to-noise ratio (jacobian: by "
                        "1 + alpha^2 |J|^2 / sigma^2, |J| the generator's Jacobian norm by power iteration)")
    p.add_argument("--metropolis", action="store_true",
                   help="with --move-z: Metropolis-adjust every joint (eps, z) step (needs --cancel none, no --z-clip)")
    p.add_argument("--z-clip", type=float, default=None,
                   help="with --move-z: the largest z drift per step, in units of sqrt(dim) (default: none)")
    p.add_argument("--cancel", choices=["none", "injected", "full"], default=LangevinConfig.cancel,
                   help="EMD: noise cancellation of the E-step")
    p.add_argument("--unconditional", action="store_true",
                   help="distil without class labels: every network reads the teacher's 'no class' label (needs a "
                        "teacher trained with label dropout, as the shipped one is)")
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=2000, help="generator updates (at most)")
    p.add_argument("--horizon", type=int, default=None,
                   help="generator updates of the learning-rate decay (default: --steps; with --minutes, sized "
                        "from the first step's time)")
    p.add_argument("--minutes", type=float, default=0.0, help="wall-time budget (0: none)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr-g", type=float, default=2e-4)
    p.add_argument("--lr-s", type=float, default=4e-4)
    p.add_argument("--lam-star", type=float, default=-6.0)
    p.add_argument("--lam-min", type=float, default=-6.0)
    p.add_argument("--lam-max", type=float, default=4.0)
    p.add_argument("--student-updates", type=int, default=1)
    p.add_argument("--student-warmup", type=int, default=20)
    p.add_argument("--ema", type=float, default=0.99)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--save-every", type=float, default=180.0, help="seconds between checkpoints")
    p.add_argument("--quiet", action="store_true")
    return p


def config_from_args(args) -> DistillConfig:
    return DistillConfig(method=args.method, steps=args.steps, batch=args.batch, lr_g=args.lr_g, lr_s=args.lr_s,
                         student_updates=args.student_updates, student_warmup=args.student_warmup, ema=args.ema,
                         lam_min=args.lam_min, lam_max=args.lam_max, lam_star=args.lam_star, init_steps=0,
                         seed=args.seed, langevin=LangevinConfig(K=args.K, gamma_eps=args.gamma_eps, move_z=args.move_z,
                                                                 gamma_z=args.gamma_z, z_precondition=args.z_precondition,
                                                                 z_clip=args.z_clip, cancel=args.cancel,
                                                                 metropolis=args.metropolis))


def args_from_command(command: str) -> argparse.Namespace:
    """The arguments of a recorded ``distill_images`` command, in either spelling
    (``python -m emd_lib distill_images ...`` or the older ``python -m emd_lib.distill_images ...``)."""
    words = shlex.split(command)
    start = next((i for i, w in enumerate(words) if w.endswith("distill_images")), None)
    if start is None:
        raise ValueError(f"not a distill_images command: {command!r}")
    return build_parser().parse_args(words[start + 1:])


def config_from_command(command: str) -> DistillConfig:
    """The :class:`DistillConfig` a recorded ``distill_images`` command runs with today's defaults."""
    return config_from_args(args_from_command(command))


def _check_args(parser, args) -> DistillConfig:
    """Every argument checked before the teacher is read (``parser.error``: one line, status 2)."""
    from ..runs.checkpoint import checkpoint_path_problem

    if args.method == "di" and args.move_z:
        parser.error("--move-z sets EMD's E-step; --method di has none")
    if not args.move_z and args.z_clip is not None:
        parser.error("--z-clip limits the z step; it needs --move-z")
    if args.metropolis and not args.move_z:
        parser.error("--metropolis adjusts the joint (eps, z) step; it needs --move-z")
    for name, low in (("steps", 1), ("batch", 1), ("K", 0)):
        if getattr(args, name) < low:
            parser.error(f"--{name} must be >= {low}, got {getattr(args, name)}")
    if args.horizon is not None and args.horizon < 1:
        parser.error(f"--horizon must be >= 1, got {args.horizon}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if not (math.isfinite(args.minutes) and args.minutes >= 0) or not args.save_every > 0:
        parser.error(f"--minutes must be >= 0 and --save-every > 0, got {args.minutes} and {args.save_every}")
    try:
        cfg = config_from_args(args)
    except (TypeError, ValueError) as e:
        parser.error(f"{e} (see --help for the option)")
    if why := checkpoint_path_problem(args.out):
        parser.error(f"--out {args.out}: {why}")
    return cfg


def main(argv=None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    cfg = _check_args(parser, args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        return _distil(parser, args, cfg, argv)
    except KeyboardInterrupt:                      # before the first step (later ones are saved)
        exit_interrupted(args.out)


def _distil(parser, args, cfg: DistillConfig, argv) -> dict:
    dev = pick_device()
    try:
        teacher = load_teacher(args.teacher, device=dev)
    except CheckpointError as e:
        parser.error(f"--teacher {args.teacher}: {e}")
    try:
        d = make_distiller(teacher, cfg, device=dev, unconditional=args.unconditional)
    except ValueError as e:                       # settings the teacher's schedule cannot take, or no "no class"
        parser.error(f"--teacher {args.teacher}: {e}" if args.unconditional and unconditional_problem(teacher)
                     else str(e))
    name = method_name(args.method, cfg.langevin)
    kind = "unconditional " if args.unconditional else ""
    base = run_card(argv, module=__spec__.name, what=f"{kind}{name} one-step generator distilled from "
                    f"{Path(args.teacher).name} (EMA generator and student score)", method=args.method,
                    unconditional=args.unconditional, arch=teacher.net.config,
                    lam_star=args.lam_star, teacher=Path(args.teacher).name, data=teacher.card.get("data", "mnist"),
                    teacher_sha256=teacher.card.get("sha256"), machine=machine(dev))
    cfg.steps = args.horizon or args.steps       # the learning-rate horizon (Distiller reads cfg.steps)

    def card(complete, horizon, **extra):
        cfg.steps = horizon                      # the config as used: its "steps" is the learning-rate horizon
        wall = time.perf_counter() - t0
        if complete:
            hist = {k: d.history[k] for k in ("loss_g", "loss_s", "grad_norm")}
            # the E-step's diagnostics (z and x moved, Metropolis acceptance, ...), averaged over the run
            extra.update(seconds_per_step=round(wall / max(d.step_count, 1), 3),
                         estep_means={k[len("estep_"):]: round(sum(v) / len(v), 5)
                                      for k, v in d.history.items() if k.startswith("estep_") and v},
                         curves={k: [round(v, 5) for v in vs[::5]] for k, vs in hist.items()})
        return save_student(args.out, d, dict(base, config=cfg.to_dict(), horizon=horizon, steps=d.step_count,
                                              wall_time_s=round(wall, 1), complete=complete, **extra))

    def step(i, horizon):
        cfg.steps = horizon                      # Distiller reads cfg.steps
        d.train(steps=1, progress=False)

    t0 = time.perf_counter()
    d.warmup()
    return run_steps(step, steps=args.steps, horizon=args.horizon, minutes=args.minutes, t0=t0, save=card,
                     save_every=args.save_every, out=args.out, desc=name, quiet=args.quiet,
                     status=lambda: {"loss_g": d.history["loss_g"][-1], "loss_s": d.history["loss_s"][-1]})

if __name__ == "__main__":
    main()
