"""Benchmark a training step and one-step sampling at any scale.

    python -m emd_lib bench --config imagenet64 [--method emd|di] [--langevin-steps K[,K...]] [--batch B]
                            [--steps N] [--compile] [--cuda-graphs] [--passes] [--tiny] [--json OUT.json]
                            [--time-limit SECONDS]

For each method (Diff-Instruct and EMD-1/2/4/8/16 unless ``--method`` picks one) it times
full training steps (student-score updates + generator update, exactly as
:mod:`emd_lib.scale.train` runs them) and prints seconds per step, images per second, peak memory,
the FLOPs of one step (counted by ``torch.utils.flop_counter``) and the achieved TFLOP/s, also
as a share of the card's measured dense matrix rate. ``--passes`` times one forward pass, one
forward-and-VJP to the input (the E-step's pass) and one training pass of the network, and sets
each step beside the sum of the passes it makes. Then it compares sampling: the one-step generator against the teacher's Heun sampler.

The teacher has random weights of the config's architecture (``teacher.arch``): for
``imagenet64`` a diffusers ``UNet2DModel`` laid out like EDM's ADM ImageNet-64 network (about
270M parameters), for ``imagenet128`` guided-diffusion's ADM-128 layout, for ``sd15`` Stable
Diffusion v1.5's UNet with a ViT-L-sized text encoder. Timings do not depend on the weights,
so nothing needs downloading. ``--tiny`` swaps in the tiny stand-ins (a CPU run for tests).
``--compile`` wraps the networks in ``torch.compile``; ``--cuda-graphs`` uses its
"reduce-overhead" mode, which replays CUDA graphs.
"""
from __future__ import annotations

import platform
import resource
import sys
import tempfile
import time

import torch

from .train import ConfigError, Trainer, load_config

__all__ = ["bench", "matmul_peak", "pass_counts", "pass_flops", "passes", "TINY_ARCH"]

TINY_ARCH = {"adm64": "tiny-edm", "adm128": "tiny-adm", "sd15": "tiny-sd", "tiny-edm": "tiny-edm",
             "tiny-adm": "tiny-adm", "tiny-sd": "tiny-sd"}


def _version(package):
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _peak_mb(dev):
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # whole process, Linux reports KiB


def _compile(tr, mode):
    from .train import networks

    for net in networks(tr.prob):
        net.compile(mode=mode)


class FlopCount:
    """Count the FLOPs of the operations run inside ``with FlopCount() as fc:`` with the formulas of
    ``torch.utils.flop_counter`` (matmuls, convolutions, attention; forward and backward).

    ``FlopCounterMode`` itself also tracks modules through hooks, which cannot follow the E-step's
    ``autograd.grad`` with respect to z; this counts the same operations without the module tree.
    Operations torch has no formula for count zero: on the CPU that includes its fused attention
    kernel, so CPU figures for networks with attention are a little low (CUDA's kernels are counted)."""

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


def matmul_peak(device=None, n: int | None = None, iters: int = 10) -> dict:
    """The card's measured dense matrix rate: an ``n x n x n`` product (bf16 on CUDA, fp32 on the
    CPU), mean of ``iters`` timed products after three warm-ups. Returns ``{"dtype", "n", "tflops"}``."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = dev.type == "cuda"
    n = n or (8192 if cuda else 1024)
    dtype = torch.bfloat16 if cuda else torch.float32
    g = torch.Generator(device=dev).manual_seed(0)
    a = torch.randn(n, n, device=dev, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=dev, dtype=dtype, generator=g)
    sec = _timed(lambda: a @ b, dev, iters, 3)
    return {"dtype": str(dtype).replace("torch.", ""), "n": n, "tflops": 2 * n**3 / sec / 1e12}


def _timed(fn, dev, steps, warmup):
    for _ in range(warmup):
        fn()
    _sync(dev)
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    _sync(dev)
    return (time.perf_counter() - t0) / steps


def pass_counts(method: str, K: int = 0, move_z: bool = True, space: str = "eps", student_updates: int = 1,
                guided: bool = False) -> dict:
    """How many passes of each kind one training step makes, the student-score updates included:
    ``forward`` (no graph kept), ``vjp`` (forward, then the backward to the network's input only)
    and ``train`` (forward, then the backward to the weights). From
    :func:`emd_lib.distill.evals_per_step`, which counts the generator update's evaluations.
    Each student update adds a ``g(z)`` without grad and a training pass; ``guided`` (a teacher
    with classifier-free guidance) runs each teacher evaluation on a doubled batch: two passes."""
    from ..distill import evals_per_step

    e = evals_per_step(method, K, move_z, space)
    vjp = e["generator_bwd"] - 1                            # g(z_k) and J^T v to z_k, per Langevin step
    return {"forward": student_updates + e["teacher"] * (2 if guided else 1) + e["student"]
            + e["generator_fwd"] - 1 - vjp,                 # + g(z) before and after an x-chain
            "vjp": vjp, "train": student_updates + 1}       # train: the student's DSM and the generator's update


def _pass_fns(tr):
    from ..langevin import call_generator, frozen_params

    G = tr.prob.generator
    z, _, _, cond = tr.draw_batch()

    def forward():
        with torch.no_grad():
            call_generator(G, z, cond)

    def vjp():
        zz = z.detach().requires_grad_(True)
        with frozen_params(G):
            x = call_generator(G, zz, cond)
            torch.autograd.grad(x, zz, grad_outputs=torch.ones_like(x))

    def train():
        call_generator(G, z, cond).square().mean().backward()

    return {"forward": forward, "vjp": vjp, "train": train}


def pass_flops(tr) -> dict:
    """FLOPs of one pass of each kind (count them before compiling: the counter runs eagerly)."""
    out = {}
    with tr.autocast():
        for name, fn in _pass_fns(tr).items():
            with FlopCount() as fc:
                fn()
            out[name] = fc.total
    tr.prob.generator.zero_grad(set_to_none=True)
    return out


def passes(tr, steps: int = 5, warmup: int = 2, flops: dict | None = None) -> dict:
    """Time the three kinds of network pass (:func:`pass_counts`) on the generator's network at the
    step's batch; ``flops`` from :func:`pass_flops` (counted now when not given)."""
    flops = flops or pass_flops(tr)
    out = {}
    with tr.autocast():
        for name, fn in _pass_fns(tr).items():
            sec = _timed(fn, tr.device, steps, warmup)
            out[name] = {"sec": sec, "tflop": flops[name] / 1e12, "tflops": flops[name] / sec / 1e12}
    tr.prob.generator.zero_grad(set_to_none=True)
    return out


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
          overrides=(), device=None, quiet: bool = False, peak: bool = True,
          time_passes: bool = False, on_row=None, time_limit: float | None = None) -> dict:
    """Time training steps for each ``(method, K)`` in ``methods`` and one-step vs many-step sampling.

    ``peak`` also measures the card's dense matrix rate (:func:`matmul_peak`) and reports each step's
    TFLOP/s as a share of it; ``time_passes`` times the three kinds of network pass (:func:`passes`)
    and predicts each step as the sum of its passes (:func:`pass_counts`). ``on_row(info)`` is called
    after each method is timed (the command uses it to write partial results).

    ``time_limit`` (seconds from the call) stops before a row that would not finish in time: each
    row's time is predicted from the last timed row's seconds per TFLOP (a compiled first row's
    compile time cannot be predicted, so it always runs; a later row that needs graphs of its own,
    such as the first EMD row after Diff-Instruct, compiles them unpredicted too, so leave a margin
    under ``--compile``). Rows that were not timed, and the pass
    timings and sampling comparison when they do not fit, are named in ``info["note"]``."""
    t_start = time.perf_counter()
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
    tmp = tempfile.mkdtemp(prefix="emd-bench-")          # the trainer's folder; it writes nothing there
    cfg = load_config(config, over + [f"batch={batch}", f"out={tmp}", "progress=false", "resume=false",
                                      "tensorboard=false", "student_warmup=0", f"steps={10**9}", f"ckpt_every={10**9}"]
                      + (["init_steps=0"] if "teacher.kind=random" not in over and base.teacher.kind == "mixture" else []))
    tr = Trainer(cfg, device=device, quiet=True)
    dev = tr.device
    if cuda_graphs and dev.type != "cuda":
        raise ConfigError(f"--cuda-graphs replays CUDA graphs and needs a CUDA device, not {dev.type}; "
                          "use --compile on this device")
    n_params = sum(p.numel() for p in tr.prob.generator.parameters())
    info = {"config": config, "arch": cfg.teacher.arch or cfg.teacher.kind, "batch": batch, "device": str(dev),
            "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
            "precision": "bf16 autocast" if tr.amp else "fp32", "params_per_network": n_params,
            "threads": torch.get_num_threads(), "compile": compile, "cuda_graphs": cuda_graphs,
            "channels_last": cfg.channels_last,
            "torch": torch.__version__, "diffusers": _version("diffusers"), "steps_timed": steps, "rows": []}

    if peak:
        info["peak"] = matmul_peak(dev, n=None if dev.type == "cuda" else 512)

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
    pflops = pass_flops(tr) if time_passes else None
    if compile or cuda_graphs:
        _compile(tr, "reduce-overhead" if cuda_graphs else "default")
    skipped = []

    def fits(sec):                       # would ``sec`` more seconds still end within the limit?
        return time_limit is None or time.perf_counter() - t_start + sec <= time_limit

    for method, K in methods:
        use(method, K)
        if info["rows"] and not fits((warmup + steps) * info["rows"][-1]["sec_per_step"]
                                     * flops[method, K] / (1e12 * info["rows"][-1]["tflop_per_step"])):
            skipped.append("Diff-Instruct" if method == "di" else f"EMD-{K}")
            continue
        if not quiet:
            print(f"  {'Diff-Instruct' if method == 'di' else f'EMD-{K}':>14}: warming up"
                  + (" (compiling)" if compile or cuda_graphs else ""), file=sys.stderr, flush=True)
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
        row = {"method": "Diff-Instruct" if method == "di" else f"EMD-{K}", "K": int(K) if method == "emd" else 0,
               "sec_per_step": sec, "img_per_s": batch / sec, "peak_mb": _peak_mb(dev),
               "tflop_per_step": flops[method, K] / 1e12, "tflops": flops[method, K] / sec / 1e12,
               "passes": pass_counts(method, K, cfg.langevin.move_z, cfg.langevin.space, cfg.student_updates,
                                     getattr(tr.prob.teacher, "guidance_scale", 1.0) != 1.0)}
        if peak:
            row["pct_peak"] = 100 * row["tflops"] / info["peak"]["tflops"]
        di = [r for r in info["rows"] if r["method"] == "Diff-Instruct"]
        if di or method == "di":
            row["ratio_to_di"] = sec / (di[0]["sec_per_step"] if di else sec)
        info["rows"].append(row)
        if not quiet:
            print(f"  {row['method']:>14}: {sec:.4g} s/step", file=sys.stderr, flush=True)
        if on_row is not None:
            on_row(info)
    last = info["rows"][-1] if info["rows"] else None
    # one forward pass, in seconds, from the last row: a VJP costs about two forwards, a training pass three
    in_forwards = {"forward": 1, "vjp": 2, "train": 3}
    sec_fwd = last["sec_per_step"] / sum(n * in_forwards[k] for k, n in last["passes"].items()) if last else 0.0
    if time_passes and not fits(sec_fwd * (max(steps, 3) + max(warmup, 1)) * 6):
        skipped.append("the pass timings")
        time_passes = False
    if time_passes:
        info["pass_times"] = pt = passes(tr, steps=max(steps, 3), warmup=max(warmup, 1), flops=pflops)
        for r in info["rows"]:
            r["predicted_sec"] = sum(n * pt[k]["sec"] for k, n in r["passes"].items())
        if peak:
            for v in pt.values():
                v["pct_peak"] = 100 * v["tflops"] / info["peak"]["tflops"]

    # sampling: one generator pass against the teacher's Heun sampler (2 n - 1 network evaluations)
    from ..sampling import sample_ode

    if last is not None and not fits(sec_fwd * (2 * sampler_steps + 3)):       # Heun's 2 n - 1, the generator twice
        skipped.append("the sampling comparison")
    if skipped:
        info["note"] = (f"stopped at the time limit of {time_limit:g} s: not timed: " + ", ".join(skipped))
        if not quiet:
            print(f"  {info['note']}", file=sys.stderr, flush=True)
        if "the sampling comparison" in skipped:
            return info
    n = batch
    cond = _cond(tr, n)
    g = torch.Generator(device=dev).manual_seed(0)
    with torch.no_grad(), tr.autocast():
        tr.sample(n, generator=g, cond=cond)
        _sync(dev)
        t0 = time.perf_counter()
        tr.sample(n, generator=g, cond=cond)
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


#: (row key, column name, format) of a benchmark's table
COLUMNS = [("sec_per_step", "s/step", "{:.4g}"), ("ratio_to_di", "x DI", "{:.2f}"), ("img_per_s", "img/s", "{:.4g}"),
           ("peak_mb", "peak MB", "{:.0f}"), ("tflop_per_step", "TFLOP/step", "{:.4g}"), ("tflops", "TFLOP/s", "{:.3g}"),
           ("pct_peak", "% peak", "{:.1f}"), ("predicted_sec", "sum of passes (s)", "{:.4g}")]


def bench_table(info: dict):
    """The rows of :func:`bench`'s ``info`` as an :class:`emd_lib.book.Table` (HTML in a notebook,
    aligned text when printed), its setting and measured matrix rate as the caption; "-" where a
    row has no value (no Diff-Instruct row: no ratio)."""
    from ..book.display import Table

    pk = info.get("peak")
    title = (f"{info['config']} ({info['arch']}, {info['params_per_network'] / 1e6:.1f}M parameters per network), "
             f"{info['device_name']} [{info['device']}], batch {info['batch']}, {info['precision']}"
             + (", torch.compile" if info["compile"] else "") + (" + CUDA graphs" if info["cuda_graphs"] else "")
             + (", channels-last" if info.get("channels_last") else "")
             + (f"; measured {pk['dtype']} matrix rate ({pk['n']}^3 product) {pk['tflops']:.4g} TFLOP/s" if pk else ""))
    rows = [[r["method"]] + [fmt.format(r[key]) if r.get(key) is not None else "-" for key, _, fmt in COLUMNS]
            for r in info["rows"]]
    return Table(rows, ["method"] + [name for _, name, _ in COLUMNS], title=title)


def bench_notes(info: dict) -> list[str]:
    """The lines that go with :func:`bench_table`: single passes, a note, sampling, where measured."""
    lines = [f"one {name} pass of the generator's network: {v['sec'] * 1e3:.4g} ms, {v['tflops']:.3g} TFLOP/s"
             + (f" ({v['pct_peak']:.1f}% of the matrix rate)" if "pct_peak" in v else "")
             for name, v in info.get("pass_times", {}).items()]
    if info.get("note"):
        lines.append(f"note: {info['note']}")
    s = info.get("sampling")
    if s:
        lines.append(f"sampling {s['n']} images: one-step generator {s['generator_img_per_s']:.4g} img/s; teacher "
                     f"Heun ({s['teacher_nfe']} NFE) {s['teacher_img_per_s']:.4g} img/s; {s['speedup']:.0f}x faster")
    return lines


def format_table(info: dict) -> str:
    """:func:`bench_table` and :func:`bench_notes` as text, for the terminal."""
    return "\n".join([str(bench_table(info))] + bench_notes(info))
