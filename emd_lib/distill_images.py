"""Distil the image teacher into a one-step generator: ``python -m emd_lib.distill_images``.

    python -m emd_lib.distill_images --method emd --K 4 --minutes 14 --out data/mnist_emd --threads 1   # CPU
    python -m emd_lib.distill_images --method di --minutes 14 --out data/mnist_di --threads 1
    python -m emd_lib.distill_images --method emd --K 8 --steps 20000 --batch 256 --out runs/mnist_emd8  # GPU-sized (not run here)

The same :class:`~emd_lib.distill.Distiller` as the 2D chapters, on ``(B, 1, 28, 28)``
images with class labels as ``cond``. The generator is a trainable copy of the teacher read at
the fixed log-SNR ``lam*`` (:class:`~emd_lib.unet.TeacherInitGenerator`); the student score is
a second copy, refitted to the generator's samples every step. The checkpoint holds the EMA
generator (``generator.*``) and the student score (``student.*``, used by the test-time MCMC
correction), with a card recording the command, steps, wall time, machine and date.

:func:`load_teacher` and :func:`load_student` read the shipped checkpoints (sha256 checked).
"""
from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch

from . import DATA_DIR
from . import device as pick_device
from .checkpoint import load_checkpoint, load_state_into, machine, read_card, run_card, save_checkpoint
from .distill import DistillConfig, Distiller
from .langevin import LangevinConfig
from .schedules import get_schedule
from .teachers import NetworkTeacher
from .unet import TeacherInitGenerator, unet_from_card

__all__ = ["TEACHER_PATH", "load_teacher", "load_student", "make_distiller", "save_student", "main"]

_DATA = DATA_DIR
TEACHER_PATH = _DATA / "mnist_teacher"
SHAPES = {"mnist": (1, 28, 28), "digits8": (1, 8, 8)}


def load_teacher(path=None, device="cpu") -> NetworkTeacher:
    """A UNet teacher written by ``python -m emd_lib.train_teacher`` (default: the shipped one) as a
    frozen :class:`NetworkTeacher` (``denoise(x_t, lam, cond)``), with its ``card``, ``shape`` and
    ``num_classes``; the schedule and what the network predicts are read from the card."""
    path = Path(path) if path is not None else TEACHER_PATH
    card = read_card(path)
    net = unet_from_card(card)
    load_state_into(net, path, device=device)
    teacher = NetworkTeacher(net.to(device).eval(), get_schedule(card.get("schedule", "vp")),
                             predicts=card.get("predicts", "x0")).requires_grad_(False)
    teacher.card = card
    teacher.shape = tuple(card.get("shape", SHAPES[card.get("data", "mnist")]))
    teacher.num_classes = int(card["arch"].get("n_classes", 0))
    return teacher


def make_distiller(teacher: NetworkTeacher, cfg: DistillConfig, device="cpu") -> Distiller:
    """A :class:`Distiller` for class-conditional images: generator and student score start as
    copies of the teacher (the generator read at ``cfg.lam_star``)."""
    net = teacher.net
    gen = TeacherInitGenerator(net, cfg.lam_star).to(device).train()
    student = NetworkTeacher(copy.deepcopy(net).requires_grad_(True).train(), teacher.schedule, predicts=teacher.predicts)
    return Distiller(teacher, cfg, generator=gen, student=student, device=torch.device(device),
                     shape=getattr(teacher, "shape", None) or SHAPES[getattr(teacher, "card", {}).get("data", "mnist")],
                     n_classes=net.n_classes)


def save_student(path, d: Distiller, card: dict) -> dict:
    """Write the EMA generator and the student score, with the card."""
    tensors = {f"generator.{k}": v for k, v in d.ema.net.state_dict().items()}
    tensors.update({f"student.{k}": v for k, v in d.student.net.state_dict().items()})
    return save_checkpoint(path, tensors, card)


def load_student(path, device="cpu"):
    """``(generator, student, card)`` of a checkpoint written by :func:`save_student`; the
    generator maps ``(z, c)`` to images in [-1, 1] in one step."""
    state, card = load_checkpoint(path, device=device)
    nets = {}
    for part in ("generator", "student"):
        net = unet_from_card(card)
        net.load_state_dict({k[len(part) + 1:]: v for k, v in state.items() if k.startswith(part + ".")})
        nets[part] = net.to(device).eval().requires_grad_(False)
    gen = TeacherInitGenerator(nets["generator"], card["lam_star"], copy_weights=False).eval().requires_grad_(False)
    gen.shape = tuple(card.get("shape", SHAPES[card.get("data", "mnist")]))      # one sample's shape
    student = NetworkTeacher(nets["student"], get_schedule(card.get("schedule", "vp")), predicts=card.get("predicts", "x0"))
    return gen, student.requires_grad_(False), card


def build_parser():
    p = argparse.ArgumentParser(prog="python -m emd_lib.distill_images", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--teacher", default=str(TEACHER_PATH))
    p.add_argument("--method", default="emd", choices=["emd", "di"])
    p.add_argument("--K", type=int, default=4, help="Langevin steps of the E-step (EMD)")
    p.add_argument("--gamma-eps", type=float, default=0.3)
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=2000, help="generator updates (at most)")
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
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--save-every", type=float, default=180.0, help="seconds between checkpoints")
    p.add_argument("--quiet", action="store_true")
    return p


def config_from_args(args) -> DistillConfig:
    return DistillConfig(method=args.method, steps=args.steps, batch=args.batch, lr_g=args.lr_g, lr_s=args.lr_s,
                         student_updates=args.student_updates, student_warmup=args.student_warmup, ema=args.ema,
                         lam_min=args.lam_min, lam_max=args.lam_max, lam_star=args.lam_star, init_steps=0,
                         seed=args.seed, langevin=LangevinConfig(K=args.K, gamma_eps=args.gamma_eps))


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    dev = pick_device()
    teacher = load_teacher(args.teacher, device=dev)
    cfg = config_from_args(args)
    d = make_distiller(teacher, cfg, device=dev)
    name = "EMD-%d" % args.K if args.method == "emd" else "Diff-Instruct"
    base = run_card(argv, module=__spec__.name, what=f"{name} one-step generator distilled from {Path(args.teacher).name} "
                    "(EMA generator and student score)", method=args.method, arch=teacher.net.config,
                    lam_star=args.lam_star, teacher=Path(args.teacher).name, data=teacher.card.get("data", "mnist"),
                    teacher_sha256=read_card(args.teacher).get("sha256"), config=cfg.to_dict(), machine=machine(dev))
    t0 = time.perf_counter()
    d.warmup()
    # measure a step, then size the run to the budget (the schedule needs the step count)
    d.train(steps=2, progress=False)
    per_step = d.history["seconds"][-1] / 2
    if args.minutes > 0:
        left = 60 * args.minutes - (time.perf_counter() - t0)
        cfg.steps = max(3, min(args.steps, int(left / per_step) + 2))
    last = time.perf_counter()
    while d.step_count < cfg.steps:
        d.train(steps=min(10, cfg.steps - d.step_count), progress=False)
        if not args.quiet:
            print(f"step {d.step_count}/{cfg.steps}  loss_g {d.history['loss_g'][-1]:.4g}  "
                  f"loss_s {d.history['loss_s'][-1]:.4g}  {time.perf_counter() - t0:.0f}s", flush=True)
        if args.minutes > 0 and time.perf_counter() - t0 > 60 * args.minutes:
            break
        if time.perf_counter() - last > args.save_every:
            save_student(args.out, d, dict(base, steps=d.step_count, wall_time_s=round(time.perf_counter() - t0, 1),
                                           complete=False))
            last = time.perf_counter()
    hist = {k: d.history[k] for k in ("loss_g", "loss_s", "grad_norm")}
    card = save_student(args.out, d, dict(base, steps=d.step_count, wall_time_s=round(time.perf_counter() - t0, 1),
                                          seconds_per_step=round((time.perf_counter() - t0) / max(d.step_count, 1), 3),
                                          complete=True, curves={k: [round(v, 5) for v in vs[::5]] for k, vs in hist.items()}))
    if not args.quiet:
        print(f"saved {args.out}.safetensors after {d.step_count} steps ({card['wall_time_s']:.0f} s)")
    return card


if __name__ == "__main__":
    main()
