"""Train the class-conditional image teacher: ``python -m emd_lib train_teacher``.

    python -m emd_lib train_teacher --out data/mnist_teacher --steps 3000 --minutes 38 --threads 1  # CPU
    python -m emd_lib train_teacher --out runs/mnist_teacher --steps 40000 --batch 256 --channels 64 128 128  # GPU-sized (not run here)

Denoising score matching with EDM's preconditioning (:class:`emd_lib.images.unet.UNet`) on the
training part of the 5,000 MNIST digits (the held-out 500 are never seen), log-SNR drawn
from the cosine schedule over [-10, 10], 10% label dropout (so the model is also
unconditional), Adam with a short warm-up and a cosine decay, and an EMA of the weights,
which is what is saved. The checkpoint (safetensors + JSON card with the command, steps,
wall time, machine, date, metrics and sha256) is rewritten atomically every
``--save-every`` seconds, so an interrupted run leaves its last complete state; Ctrl-C saves
the steps done so far (card ``"complete": false``) and exits with status 130.

The learning rate decays over ``--horizon`` steps (default ``--steps``). With ``--minutes`` the
horizon is sized from the first step's time (at most ``--steps``) and training also stops when
the time is up; the card records the ``horizon`` and the ``steps`` run, and
``--steps STEPS --horizon HORIZON`` (no ``--minutes``) repeats such a run step for step.
Without ``--out`` the checkpoint goes to ``runs/mnist_teacher`` (the shipped one, in ``data/``,
is only replaced when named).
"""
from __future__ import annotations

import argparse
import copy
import math
import time

import torch

from .. import device as pick_device
from .. import seed_all
from ..runs.runner import run_steps
from ..runs.checkpoint import checkpoint_path_problem, exit_interrupted, machine, run_card, save_checkpoint
from ..images.data import load_images
from ..distill import set_cosine_lr
from ..nets import ema_update
from ..schedules import sample_lam

__all__ = ["main"]


@torch.no_grad()
def heldout_loss(net, x, y, lams=(-6.0, -2.0, 0.0, 2.0, 6.0), seed: int = 0) -> dict:
    """The preconditioned denoising loss on held-out images at fixed log-SNRs (fixed noise)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for lam in lams:
        eps = torch.randn(x.shape, generator=g).to(x.device)
        lam_b = torch.full((len(x),), lam, device=x.device)
        out[f"heldout_loss_lam{lam:+g}"] = float(net.loss(x, y, lam_b, eps))
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m emd_lib train_teacher", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default="mnist", choices=["mnist", "digits8"])
    p.add_argument("--out", default="runs/mnist_teacher",
                   help="checkpoint path (NAME: writes NAME.safetensors and NAME.json)")
    p.add_argument("--steps", type=int, default=3000, help="training steps (at most)")
    p.add_argument("--horizon", type=int, default=None,
                   help="steps of the learning-rate decay (default: --steps; with --minutes, sized from the "
                        "first step's time)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--channels", type=int, nargs="+", default=[24, 48, 64])
    p.add_argument("--emb-dim", type=int, default=128)
    p.add_argument("--label-dropout", type=float, default=0.1)
    p.add_argument("--lam-min", type=float, default=-10.0)
    p.add_argument("--lam-max", type=float, default=10.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--save-every", type=float, default=300.0, help="seconds between checkpoints")
    p.add_argument("--minutes", type=float, default=0.0,
                   help="wall-time budget (0: none); the learning-rate horizon is then sized from the first "
                        "step's time, and training stops when the steps or the time run out")
    p.add_argument("--quiet", action="store_true")
    return p


def check_args(parser, args) -> None:
    """Every argument checked before any data is read (``parser.error``: one line, status 2)."""
    for name in ("steps", "batch", "warmup", "emb_dim"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.horizon is not None and args.horizon < 1:
        parser.error(f"--horizon must be >= 1, got {args.horizon}")
    if any(c < 1 for c in args.channels):
        parser.error(f"--channels must all be >= 1, got {' '.join(map(str, args.channels))}")
    if not (math.isfinite(args.lr) and args.lr > 0):
        parser.error(f"--lr must be a finite number > 0, got {args.lr}")
    if not (math.isfinite(args.lam_min) and math.isfinite(args.lam_max) and args.lam_min < args.lam_max):
        parser.error(f"need finite --lam-min < --lam-max, got {args.lam_min} and {args.lam_max}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if args.minutes < 0 or args.save_every <= 0 or not 0 <= args.label_dropout < 1 or not 0 <= args.ema < 1:
        parser.error("--minutes must be >= 0, --save-every > 0, --label-dropout and --ema in [0, 1)")
    if why := checkpoint_path_problem(args.out):
        parser.error(f"--out {args.out}: {why}")


def main(argv=None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    try:
        return _train(args, argv)
    except KeyboardInterrupt:                      # before the first step (later ones are saved)
        exit_interrupted(args.out)


def _train(args, argv) -> dict:
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    from ..images.unet import UNet

    g = seed_all(args.seed)                 # the global seed sets the initial weights, g the batches
    dev = pick_device()
    x_tr, y_tr, x_ev, y_ev = (t.to(dev) for t in load_images(args.data))
    net = UNet(in_ch=x_tr.shape[1], channels=tuple(args.channels), emb_dim=args.emb_dim).to(dev)
    ema = copy.deepcopy(net).requires_grad_(False)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    n_params = sum(p.numel() for p in net.parameters())
    base = run_card(argv, module=__spec__.name, what=f"class-conditional UNet denoiser ({args.data}), EMA weights",
                    arch=net.config, schedule="vp", predicts="x0", n_params=n_params, data=args.data,
                    n_train=len(x_tr), n_heldout=len(x_ev), machine=machine(dev), settings=vars(args))

    def save(complete, horizon, **extra):
        card = dict(base, steps=len(losses), horizon=horizon, wall_time_s=round(time.perf_counter() - t0, 1),
                    complete=complete, **extra,
                    metrics={"train_loss_last200": sum(losses[-200:]) / max(len(losses[-200:]), 1),
                             **heldout_loss(ema, x_ev, y_ev)})
        return save_checkpoint(args.out, ema.state_dict(), card)

    def train_step(step, horizon):
        idx = torch.randint(0, len(x_tr), (args.batch,), generator=g).to(dev)
        x, y = x_tr[idx], y_tr[idx].clone()
        drop = torch.rand(args.batch, generator=g).to(dev) < args.label_dropout
        y[drop] = net.n_classes                                         # "no class"
        lam = sample_lam(args.batch, "cosine", args.lam_min, args.lam_max, generator=g).to(dev)
        eps = torch.randn(x.shape, generator=g).to(dev)
        loss = net.loss(x, y, lam, eps)
        # warm-up, then cosine decay to 5% of the learning rate over the horizon
        set_cosine_lr(opt, args.lr * min(1.0, (step + 1) / args.warmup), 0.05, step / horizon)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        ema_update(ema, net, min(args.ema, (1 + step) / (10 + step)))
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):
            raise FloatingPointError(f"non-finite loss at step {step}; lower --lr")

    t0 = time.perf_counter()
    losses = []
    card = run_steps(train_step, steps=args.steps, horizon=args.horizon, minutes=args.minutes, t0=t0, save=save,
                     save_every=args.save_every, out=args.out, desc="teacher", quiet=args.quiet,
                     status=lambda: {"loss": sum(losses[-50:]) / len(losses[-50:])})
    if not args.quiet:
        print(f"{n_params} parameters; {card['metrics']}")
    return card

if __name__ == "__main__":
    main()
