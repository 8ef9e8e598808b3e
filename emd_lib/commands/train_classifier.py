"""Train the evaluation classifier: ``python -m emd_lib train_classifier``.

    python -m emd_lib train_classifier --out runs/mnist_classifier --epochs 8

(the shipped ``data/mnist_classifier`` was made with the command in its card; without ``--out``
the checkpoint goes to ``runs/mnist_classifier``).

A small CNN (:class:`emd_lib.images.metrics.DigitClassifier`) on the training part of the
5,000 MNIST digits, with random shifts of up to 2 pixels; its held-out accuracy (on the 500
digits no model here trains on) goes into the card. Its features define the classifier
Fréchet distance and the k-NN precision and recall of the image chapter.
"""
from __future__ import annotations

import argparse
import math
import time

import torch
from torch.nn import functional as F

from .. import device as pick_device
from ..runs.checkpoint import save_checkpoint
from ..images.metrics import DigitClassifier
from ..runs.checkpoint import machine, run_card
from ..images.data import load_images, to_unit


def shift(x, max_shift: int, g: torch.Generator):
    """Random translations of up to ``max_shift`` pixels (zero padding), one per image."""
    n, _, h, w = x.shape
    pad = F.pad(x, (max_shift,) * 4)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=g)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=g)
    rows = (dy[:, None] + torch.arange(h)[None]).to(x.device)           # (n, h)
    cols = (dx[:, None] + torch.arange(w)[None]).to(x.device)           # (n, w)
    idx = torch.arange(n, device=x.device)[:, None, None]
    return pad[idx, 0, rows[:, :, None], cols[:, None, :]][:, None]


def main(argv=None) -> dict:
    from ..runs.checkpoint import checkpoint_path_problem

    p = argparse.ArgumentParser(prog="python -m emd_lib train_classifier", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/mnist_classifier",
                   help="checkpoint path (NAME: writes NAME.safetensors and NAME.json)")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = p.parse_args(argv)
    for name in ("epochs", "batch", "width"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if not (math.isfinite(args.lr) and args.lr > 0):
        p.error(f"--lr must be a finite number > 0, got {args.lr}")
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    if why := checkpoint_path_problem(args.out):
        p.error(f"--out {args.out}: {why}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    dev = pick_device()
    x_tr, y_tr, x_ev, y_ev = load_images("mnist")
    if args.batch > len(x_tr):
        p.error(f"--batch {args.batch} is larger than the {len(x_tr)} training digits; use at most {len(x_tr)}")
    x_tr, x_ev = to_unit(x_tr), to_unit(x_ev)                              # pixels in [0, 1]
    clf = DigitClassifier(width=args.width).to(dev)
    opt = torch.optim.Adam(clf.parameters(), lr=args.lr)
    steps = args.epochs * (len(x_tr) // args.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=steps)
    g = torch.Generator().manual_seed(args.seed)
    t0 = time.perf_counter()
    for ep in range(args.epochs):
        perm = torch.randperm(len(x_tr), generator=g)
        clf.train()
        for i in range(len(x_tr) // args.batch):
            idx = perm[i * args.batch:(i + 1) * args.batch]
            x = shift(x_tr[idx], 2, g).to(dev)
            loss = F.cross_entropy(clf(x), y_tr[idx].to(dev))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        clf.eval()
        with torch.no_grad():
            acc = float((clf(x_ev.to(dev)).argmax(1).cpu() == y_ev).float().mean())
        print(f"epoch {ep + 1}: loss {loss.item():.4f}, held-out accuracy {acc:.4f}")
    card = run_card(argv, module=__spec__.name, what="MNIST digit classifier for the image metrics (features: 128-d penultimate layer)",
                    arch=clf.config, steps=steps, epochs=args.epochs, wall_time_s=round(time.perf_counter() - t0, 1),
                    machine=machine(dev), metrics={"heldout_accuracy": acc, "n_heldout": len(y_ev)},
                    settings=vars(args))
    card = save_checkpoint(args.out, clf.state_dict(), card)
    print(f"saved {args.out}.safetensors: held-out accuracy {acc:.4f}")
    return card


if __name__ == "__main__":
    main()
