"""Sample digits from a shipped checkpoint: ``python -m emd_lib sample``.

    python -m emd_lib sample --checkpoint data/mnist_emd --class 3 --n 64 --out threes.npy
    python -m emd_lib sample --checkpoint data/mnist_teacher --n 100 --out teacher.npy --steps 18

Writes an ``(N, 1, 28, 28)`` float32 array of pixels in [0, 1]. A student checkpoint
(``data/mnist_emd``, ``data/mnist_di``) takes one generator evaluation per image; the teacher
(``data/mnist_teacher``) runs the probability-flow ODE with Heun's method (``--steps S``:
``2 S - 1`` evaluations) or, with ``--sde``, the reverse SDE (``S`` evaluations). Without
``--class`` the classes cycle 0, 1, ..., 9, 0, ... The checkpoint's sha256 is checked.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from ..images.models import generate
from ..runs.checkpoint import CheckpointError, output_path_problem

__all__ = ["generate", "main"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m emd_lib sample", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="data/mnist_emd, data/mnist_di or data/mnist_teacher")
    p.add_argument("--class", dest="cls", type=int, default=None, help="digit 0-9 (default: cycle through all)")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--out", required=True, help="output .npy, (N, 1, 28, 28) float32 in [0, 1]")
    p.add_argument("--steps", type=int, default=18, help="teacher only: sampler steps")
    p.add_argument("--sde", action="store_true", help="teacher only: reverse SDE instead of the ODE")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.n < 1:
        p.error("--n must be >= 1")
    if args.cls is not None and not 0 <= args.cls <= 9:
        p.error("--class must be a digit 0-9")
    if args.steps < 1:
        p.error("--steps must be >= 1")
    out = Path(args.out if args.out.endswith(".npy") or Path(args.out).is_dir() else args.out + ".npy")
    if why := output_path_problem(out):                                   # (numpy adds the .npy suffix)
        p.error(f"--out: {why}")
    from .. import device as pick_device
    try:
        t0 = time.perf_counter()
        x, nfe = generate(args.checkpoint, args.n, args.cls, args.steps, args.sde, args.seed, device=pick_device())
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    np.save(out, x.numpy().astype(np.float32))
    print(f"wrote {out}: {tuple(x.shape)} float32 in [0, 1], {nfe} evaluation(s) per image, "
          f"{args.n / (time.perf_counter() - t0):.1f} images/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
