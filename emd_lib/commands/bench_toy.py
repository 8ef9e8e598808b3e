"""Seconds per training step of Diff-Instruct and EMD-K on the 2D toy, with the ratio that
counting network evaluations predicts.

    python -m emd_lib bench_toy [--steps 60] [--batch 256] [--ks 1,2,4,8,16] [--move-z]

One training step = ``student_updates`` student-score updates + one generator update. The
prediction times each piece alone (a generator forward+backward, a student update, one
teacher and one student evaluation) and adds them up as the method uses them:

    DI    = S + G + (T + s)
    EMD-K = S + G + K (T + s)   (+ K generator forwards and VJPs when z moves)
"""
from __future__ import annotations

import argparse
import platform
import time

import torch

from ..distill import DistillConfig, Distiller
from ..langevin import LangevinConfig
from ..mixtures import ring8
from ..runs.timing import time_round_robin


def bench(steps: int = 60, batch: int = 256, ks=(1, 2, 4, 8, 16), move_z: bool = False, threads: int | None = None):
    if threads:
        torch.set_num_threads(threads)
    teacher = ring8()
    rows = []

    def make(method, K=1):
        cfg = DistillConfig(method=method, batch=batch, steps=10_000, student_warmup=0, init_steps=0,
                            langevin=LangevinConfig(K=K, move_z=move_z))
        return Distiller(teacher, cfg)

    # pieces, for the prediction
    d = make("di")
    z, eps, lam = d._draw(batch)
    a, s = teacher.schedule.alpha_sigma(lam)
    x_t = a[:, None] * d.generator(z).detach() + s[:, None] * eps

    def gen_fb():
        d.generator(z).sum().backward()

    def eval_pair():
        with torch.no_grad():
            d.student.eps(x_t, lam) - teacher.eps(x_t, lam)

    def gen_vjp():
        zz = z.clone().requires_grad_(True)
        torch.autograd.grad(d.generator(zz), zz, eps)

    pieces = {"S": lambda: [d.student_step() for _ in range(d.cfg.student_updates)], "G": gen_fb, "P": eval_pair}
    if move_z:
        pieces["V"] = gen_vjp
    pieces = {k: v["median"] for k, v in time_round_robin(pieces, max(steps, 20) // 5).items()}
    S, G, P, V = pieces["S"], pieces["G"], pieces["P"], pieces.get("V", 0.0)

    runs = {"Diff-Instruct": make("di")}
    runs.update({f"EMD-{K}": make("emd", K) for K in ks})
    times = {k: v["median"] for k, v in
             time_round_robin({name: r.train_step for name, r in runs.items()}, max(1, steps // 5)).items()}
    t_di = times["Diff-Instruct"]
    rows.append(("Diff-Instruct", t_di, 1.0, 1.0))
    base = S + G + P
    for K in ks:
        t = times[f"EMD-{K}"]
        pred = (S + G + K * (P + V)) / base
        rows.append((f"EMD-{K}", t, t / t_di, pred))
    return rows, {"student updates S": S, "generator fwd+bwd G": G, "teacher+student eval T+s": P,
                  "generator fwd+VJP": V}


def parse_ks(text: str) -> tuple[int, ...]:
    """``"1,2,4"`` -> ``(1, 2, 4)``: Langevin step counts, each a whole number >= 1."""
    try:
        ks = tuple(int(k) for k in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"give whole numbers >= 1 separated by commas, such as 1,2,4; got {text!r}") from None
    if any(k < 1 for k in ks):
        raise argparse.ArgumentTypeError(f"every K must be >= 1, got {text!r}")
    return ks


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m emd_lib bench_toy", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--ks", type=parse_ks, default=(1, 2, 4, 8, 16), help="Langevin steps K of the EMD rows, "
                    "comma-separated (default 1,2,4,8,16)")
    ap.add_argument("--move-z", action="store_true", help="E-step moves z too (eps, z)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", help="also write the table to this JSON file")
    args = ap.parse_args(argv)
    for name in ("steps", "batch"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.threads is not None and args.threads < 1:
        ap.error(f"--threads must be >= 1, got {args.threads}")
    if args.json:
        from ..runs.checkpoint import output_path_problem

        if why := output_path_problem(args.json, make_folders=True):
            ap.error(f"--json {args.json}: {why}")
    rows, parts = bench(args.steps, args.batch, args.ks, args.move_z, args.threads)
    timings = dict(seconds_per_step={n: t for n, t, _, _ in rows}, ratio_to_di={n: r for n, _, r, _ in rows},
                   predicted_ratio={n: p for n, _, _, p in rows}, pieces_s=parts)
    if args.json:
        from ..runs.checkpoint import machine, run_card, write_json

        write_json(args.json, run_card(argv, module="emd_lib.commands.bench_toy", machine=machine(), batch=args.batch,
                                       move_z=args.move_z, **timings))
    from ..book.results import bench_toy_rows

    print(f"# 2D toy (ring8), batch {args.batch}, {'(eps, z)' if args.move_z else '(eps, -)'} E-step, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
          f"{time.strftime('%Y-%m-%d')}")
    print("\n".join(bench_toy_rows(timings)))
    print("\npieces (ms): " + ", ".join(f"{k} {1000 * v:.2f}" for k, v in parts.items()))

if __name__ == "__main__":
    main()
