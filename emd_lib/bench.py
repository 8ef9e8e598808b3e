"""Benchmark a training step and one-step sampling at any scale.

    python -m emd_lib.bench --config imagenet64 [--method emd|di] [--langevin-steps K] [--batch B]
                            [--steps N] [--compile] [--cuda-graphs] [--tiny] [--json OUT.json]

For each method (Diff-Instruct and EMD-1/2/4/8/16 unless ``--method`` picks one) it times
full training steps (student-score updates + generator update, exactly as
:mod:`emd_lib.train` runs them) and prints seconds per step, images per second, peak memory,
the FLOPs of one step (counted by ``torch.utils.flop_counter``) and the achieved TFLOP/s.
Then it compares sampling: the one-step generator against the teacher's Heun sampler.

The teacher has random weights of the config's architecture (``teacher.arch``): for
``imagenet64`` a diffusers ``UNet2DModel`` laid out like EDM's ADM ImageNet-64 network (about
270M parameters), for ``imagenet128`` guided-diffusion's ADM-128 layout, for ``sd15`` Stable
Diffusion v1.5's UNet with a ViT-L-sized text encoder. Timings do not depend on the weights,
so nothing needs downloading. ``--tiny`` swaps in the tiny stand-ins (a CPU run for tests).
``--compile`` wraps the networks in ``torch.compile``; ``--cuda-graphs`` uses its
"reduce-overhead" mode, which replays CUDA graphs.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import tempfile
import time

import torch

from .train import ConfigError, Trainer, load_config

__all__ = ["bench", "main", "TINY_ARCH"]

TINY_ARCH = {"adm64": "tiny-edm", "adm128": "tiny-adm", "sd15": "tiny-sd", "tiny-edm": "tiny-edm",
             "tiny-adm": "tiny-adm", "tiny-sd": "tiny-sd"}


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _peak_mb(dev):
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # whole process, Linux reports KiB


def _compile(tr, mode):
    p = tr.prob
    for m in (p.teacher, p.student, getattr(p.generator, "copy", p.generator)):
        net = getattr(m, "net", None)
        if net is not None:
            net.compile(mode=mode)


class FlopCount:
    """Count the FLOPs of the operations run inside ``with FlopCount() as fc:`` with the formulas of
    ``torch.utils.flop_counter`` (matmuls, convolutions, attention; forward and backward).

    ``FlopCounterMode`` itself also tracks modules through hooks, which cannot follow the E-step's
    ``autograd.grad`` with respect to z; this counts the same operations without the module tree."""

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils.flop_counter import flop_registry

        outer = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                out = func(*args, **kwargs)
                f = flop_registry.get(func._overloadpacket)
                if f is not None:
                    outer.total += int(f(*args, **kwargs, out_val=out))
                return out

        self.total = 0
        self._mode = _Mode()

    def __enter__(self):
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self._mode.__exit__(*exc)


def _one_step(tr):
    for _ in range(tr.cfg.student_updates):
        tr.student_step()
    tr.generator_step()
    tr.step += 1


def _cond(tr, n):
    p = tr.prob
    if p.cond == "none":
        return None
    m = p.num_classes if p.cond == "class" else len(p.prompts)
    return p.make_cond(torch.arange(n, device=tr.device) % m, tr.device)


def bench(config: str = "imagenet64", methods=None, batch: int | None = None, steps: int = 10, warmup: int = 2,
          tiny: bool = False, compile: bool = False, cuda_graphs: bool = False, sampler_steps: int = 40,
          n_sample: int | None = None, overrides=(), device=None, quiet: bool = False) -> dict:
    """Time training steps for each ``(method, K)`` in ``methods`` and one-step vs many-step sampling."""
    methods = methods or [("di", 1)] + [("emd", k) for k in (1, 2, 4, 8, 16)]
    base = load_config(config)
    over = list(overrides)
    if base.teacher.kind != "mixture":
        arch = base.teacher.arch or ""
        if tiny:
            arch = TINY_ARCH.get(arch, "tiny-edm")
        if not arch:
            raise ConfigError(f"config {config!r} names no teacher.arch to benchmark with random weights")
        over += ["teacher.kind=random", f"teacher.arch={arch}"]
        if tiny:
            over += ["lam_dist=uniform", "lam_min=-5", "lam_max=5", "lam_star=-4"]
    if batch is None:
        batch = base.batch if base.teacher.kind == "mixture" else (4 if tiny else min(base.batch, 32))
    tmp = tempfile.mkdtemp(prefix="emd-bench-")
    cfg = load_config(config, over + [f"batch={batch}", f"out={tmp}", "progress=false", "resume=false",
                                      "tensorboard=false", "student_warmup=0", "init_steps=0",
                                      f"steps={10**9}", f"ckpt_every={10**9}"])
    tr = Trainer(cfg, device=device, quiet=True)
    dev = tr.device
    n_params = sum(p.numel() for p in tr.prob.generator.parameters())
    info = {"config": config, "arch": cfg.teacher.arch or cfg.teacher.kind, "batch": batch, "device": str(dev),
            "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
            "precision": "bf16 autocast" if tr.amp else "fp32", "params_per_network": n_params,
            "threads": torch.get_num_threads(), "compile": compile, "cuda_graphs": cuda_graphs,
            "torch": torch.__version__, "steps_timed": steps, "rows": []}

    def use(method, K):
        cfg.method = method
        cfg.langevin.K = int(K)

    # FLOPs first, on the plain networks (compiling does not change them)
    flops = {}
    for method, K in methods:
        use(method, K)
        with FlopCount() as fc:
            _one_step(tr)
        flops[method, K] = fc.total
    if compile or cuda_graphs:
        _compile(tr, "reduce-overhead" if cuda_graphs else "default")
    for method, K in methods:
        use(method, K)
        for _ in range(warmup):
            _one_step(tr)
        _sync(dev)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        t0 = time.perf_counter()
        for _ in range(steps):
            _one_step(tr)
        _sync(dev)
        sec = (time.perf_counter() - t0) / steps
        row = {"method": "Diff-Instruct" if method == "di" else f"EMD-{K}", "sec_per_step": sec,
               "img_per_s": batch / sec, "peak_mb": _peak_mb(dev), "tflop_per_step": flops[method, K] / 1e12,
               "tflops": flops[method, K] / sec / 1e12}
        info["rows"].append(row)
        if not quiet:
            print(f"  {row['method']:>14}: {sec:.4g} s/step", file=sys.stderr, flush=True)

    # sampling: one generator pass against the teacher's Heun sampler (2 n - 1 network evaluations)
    from .sampling import sample_ode

    n = n_sample or batch
    cond = _cond(tr, n)
    g = torch.Generator(device=dev).manual_seed(0)
    with torch.no_grad(), tr._autocast():
        tr.sample(n, cond, generator=g)
        _sync(dev)
        t0 = time.perf_counter()
        tr.sample(n, cond, generator=g)
        _sync(dev)
        t_gen = time.perf_counter() - t0
        t0 = time.perf_counter()
        _, nfe = sample_ode(tr.prob.teacher, n, n_steps=sampler_steps, shape=tr.prob.shape, cond=cond, generator=g,
                            device=dev)
        _sync(dev)
        t_teacher = time.perf_counter() - t0
    info["sampling"] = {"n": n, "generator_img_per_s": n / t_gen, "teacher_img_per_s": n / t_teacher,
                        "teacher_nfe": nfe, "speedup": t_teacher / t_gen}
    return info


def format_table(info: dict) -> str:
    lines = [f"{info['config']} ({info['arch']}, {info['params_per_network'] / 1e6:.1f}M parameters per network), "
             f"{info['device_name']} [{info['device']}], batch {info['batch']}, {info['precision']}"
             + (", torch.compile" if info["compile"] else "") + (" + CUDA graphs" if info["cuda_graphs"] else ""),
             f"{'method':>14} {'s/step':>10} {'img/s':>10} {'peak MB':>10} {'TFLOP/step':>11} {'TFLOP/s':>9}"]
    for r in info["rows"]:
        lines.append(f"{r['method']:>14} {r['sec_per_step']:>10.4g} {r['img_per_s']:>10.4g} {r['peak_mb']:>10.0f} "
                     f"{r['tflop_per_step']:>11.4g} {r['tflops']:>9.3g}")
    s = info.get("sampling")
    if s:
        lines.append(f"sampling {s['n']} images: one-step generator {s['generator_img_per_s']:.4g} img/s; teacher "
                     f"Heun ({s['teacher_nfe']} NFE) {s['teacher_img_per_s']:.4g} img/s; {s['speedup']:.0f}x faster")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m emd_lib.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True, help="toy, mnist, imagenet64, imagenet128, sd15 or a YAML file")
    ap.add_argument("--method", choices=["emd", "di"], help="one method (default: DI and EMD-1/2/4/8/16)")
    ap.add_argument("--langevin-steps", type=int, help="K for --method emd (default: the config's)")
    ap.add_argument("--batch", type=int, help="batch per step (default: 32 for the image configs)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per method")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per method")
    ap.add_argument("--sampler-steps", type=int, default=40, help="Heun steps of the teacher's sampler (2n-1 NFE)")
    ap.add_argument("--tiny", action="store_true", help="tiny random stand-ins (CPU)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the networks")
    ap.add_argument("--cuda-graphs", action="store_true", help="torch.compile mode='reduce-overhead' (CUDA graphs)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--json", help="also write the results to this JSON file")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. precision=fp32")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = None
    if args.method == "di":
        methods = [("di", 1)]
    elif args.method == "emd":
        k = args.langevin_steps if args.langevin_steps is not None else load_config(args.config).langevin.K
        methods = [("emd", k)]
    elif args.langevin_steps is not None:
        methods = [("emd", args.langevin_steps)]
    try:
        info = bench(args.config, methods, args.batch, args.steps, args.warmup, args.tiny, args.compile,
                     args.cuda_graphs, args.sampler_steps, overrides=args.overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_table(info))
    if args.json:
        from pathlib import Path

        info["command"] = "python -m emd_lib.bench " + " ".join(sys.argv[1:] if argv is None else argv)
        info["date"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(info, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
