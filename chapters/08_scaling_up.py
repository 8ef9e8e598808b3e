# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Chapter 8: Scaling up
#
# Everything so far ran on a laptop's CPU: exact mixtures in 2D, then MNIST. The paper distils
# much larger teachers: EDM's class-conditional ImageNet 64x64 network, a 128x128 ImageNet
# model, and Stable Diffusion v1.5 for text to image. This chapter shows that the same
# `emd_lib` code runs them. Nothing in the E-step, the M-step or the student's score matching
# changes; what changes is how a teacher is read, how long a run lasts, and how many GPUs it
# takes.
#
# **What you will learn**
#
# * how three published kinds of network become one teacher interface `denoise(x_t, lam, cond)`:
#   EDM's $D(x; \sigma, c)$, discrete-time eps-prediction networks (ADM, Stable Diffusion's UNet),
#   and classifier-free guidance that belongs to the teacher only;
# * how the generator and the student score start as copies of the teacher's network;
# * the one training command for every scale, with checkpoints that resume exactly, and what
#   several GPUs change (nothing in the results: a step on $N$ processes equals one process's step);
# * what a step costs, measured, and what the paper's runs cost;
# * how the field evaluates: FID on 50,000 samples, Inception Score, precision and recall, COCO
#   FID and CLIP score.
#
# The cells below run on tiny stand-ins with random weights, on the CPU, in well under a minute.
# The commands for the real runs are printed beside them; they need the teachers' weights, the
# datasets and GPUs.

# %%
import functools
import json
import math
import tempfile
import time
from pathlib import Path

import torch
from IPython.display import display

from emd_lib import DATA_DIR, ROOT, fast_or
from emd_lib.book import glue, table
from emd_lib.nets import TeacherInitGenerator
from emd_lib.scale import adapters as A
from emd_lib.scale.bench import bench, bench_notes, bench_table
from emd_lib.scale.evaluate import fid_from_features, inception_score
from emd_lib.metrics import knn_precision_recall
from emd_lib.scale.train import Trainer, load_config

torch.set_num_threads(1)
t_start = time.perf_counter()
TMP = Path(tempfile.mkdtemp(prefix="emd-ch08-"))


def show_bench(info):
    """A benchmark as ``python -m emd_lib bench`` reports it: its lines, then its table."""
    print("\n".join(bench_notes(info)))
    return bench_table(info)


# %% [markdown]
# ## 1. One teacher interface, three kinds of network
#
# Every teacher in this book answers one question: given a noisy $x_t$ at log-SNR $\lambda$ (and a
# condition $c$), what is $\hat x_0 = D(x_t, \lambda, c) \approx E[x \mid x_t]$? The score and the
# eps-prediction follow from it (chapter 1). Published networks answer slightly different questions,
# and an *adapter* translates.
#
# ### 1.1 EDM: $D(x; \sigma, c)$ with $\alpha = 1$
#
# NVlabs' EDM networks (the paper's ImageNet 64x64 teacher is `edm-imagenet-64x64-cond-adm.pkl`) are
# denoisers already, parametrised by $\sigma$ with $\alpha = 1$, so $\sigma = e^{-\lambda/2}$, and they
# take the class as a one-hot row. `emd_lib.scale.adapters.EDMPrecond` is EDM's preconditioning around a
# diffusers `UNet2DModel`, with the same call signature as NVlabs' networks; here is a tiny one with
# random weights, and the adapter checked against a direct call.

# %%
net = A.edm_unet("tiny", num_classes=10, seed=0).eval().requires_grad_(False)
edm = A.EDMTeacher(net)
g = torch.Generator().manual_seed(0)
x_t = torch.randn(4, 3, 8, 8, generator=g)                          # (B, C, H, W)
lam = torch.tensor([-8.0, -2.0, 1.0, 6.0])                          # (B,)
labels = torch.tensor([3, 1, 4, 1])
sigma = torch.exp(-lam / 2)                                         # EDM: alpha = 1, sigma = exp(-lam/2)
direct = net(x_t, sigma, torch.nn.functional.one_hot(labels, 10).float())
torch.testing.assert_close(edm.denoise(x_t, lam, labels), direct)
print("EDM teacher:", edm.shape, edm.schedule)

# %% [markdown]
# NVlabs' checkpoints are Python pickles. Unpickling runs code from the file, so
# `load_edm_pickle` refuses unless the caller says `trust_pickle=True`, and the classes inside need
# NVlabs' `torch_utils` and `dnnlib` (the most common complaint of EDM's users is "No module named
# torch_utils"), which a clone of https://github.com/NVlabs/edm supplies:

# %%
for kw in ({}, {"trust_pickle": True}):
    try:
        A.load_edm_pickle(TMP / "edm-imagenet-64x64-cond-adm.pkl", **kw)
    except A.AdapterError as e:
        print(f"{kw}: {e}\n")

# %% [markdown]
# ### 1.2 Discrete-time eps-prediction: ADM and Stable Diffusion
#
# DDPM-style networks were trained at integer timesteps $t = 0..T-1$ with $\bar\alpha_t$ from a fixed
# schedule, and predict $\epsilon$ (or $v$). Under VP, $\alpha^2 = \bar\alpha_t$ means
# $\lambda_t = \log(\bar\alpha_t / (1 - \bar\alpha_t))$; a log-SNR between two timesteps is read at the
# fractional timestep found by interpolating that table. `DiscreteVPTeacher` does this, for
# OpenAI's ADM (guided-diffusion) and for Stable Diffusion's UNet alike.

# %%
ac = A.linear_alphas_cumprod(1000, 0.00085, 0.012, scaled=True)     # Stable Diffusion's schedule
lam_t = torch.log(ac / (1 - ac))                                    # falls with t
adm = A.DiscreteVPTeacher(A.adm_unet("tiny", seed=0).eval(), A.linear_alphas_cumprod(1000), (3, 8, 8),
                          num_classes=10, eps_channels=3)
sd_like = A.DiscreteVPTeacher(lambda x, t, c: x, ac, (4, 8, 8))
t_back = sd_like.t_of_lam(lam_t[[0, 10, 500, 999]].float())
print(f"SD's range of log-SNR: [{lam_t.min():.2f}, {lam_t.max():.2f}]; timesteps read back: {t_back.tolist()}")
torch.testing.assert_close(t_back, torch.tensor([0.0, 10.0, 500.0, 999.0]), atol=2e-3, rtol=0)
print(f"ADM's (linear betas) range: [{adm.schedule.lam_min:.2f}, {adm.schedule.lam_max:.2f}]")

# %% [markdown]
# **ImageNet 128x128.** The paper's 128x128 teacher is a VDM++ model whose weights are not public.
# `emd_lib` therefore supports a public class-conditional 128x128 denoiser through the same adapter
# pattern: OpenAI's ADM (`128x128_diffusion.pt` from guided-diffusion), loaded by `load_adm`, a
# `DiscreteVPTeacher` with ADM's linear schedule that drops the learned-variance channels. Numbers
# distilled from it are not comparable with the paper's 128x128 results.
#
# ### 1.3 Stable Diffusion: latents, text, and guidance on the teacher only
#
# Stable Diffusion v1.5 predicts $\epsilon$ for 4x64x64 latents of its VAE, conditioned on CLIP text
# embeddings. `load_sd` reads a diffusers folder (or a hub id, for users who have the network). Here
# we write a folder of tiny random models (UNet, VAE, CLIP text encoder, tokenizer, scheduler) and
# read it back exactly as the real one is read.
#
# Classifier-free guidance sharpens the teacher: $\hat\epsilon_w = \hat\epsilon(x_t, \varnothing) + w\,
# (\hat\epsilon(x_t, c) - \hat\epsilon(x_t, \varnothing))$. In EMD it is applied to the **teacher's** score
# only: the student score models the generator's own distribution, conditional on the text, without
# guidance. The adapter's `guidance_scale` is a property of one teacher object, and the copies made
# for the student and the generator get `guidance_scale=1`.

# %%
sd = A.load_sd(A.tiny_sd_folder(TMP / "tiny-sd"), guidance_scale=3.0)
text = sd.encode_prompts(["a red cube on a table", "two cats"])      # (B, L, D)
empty = sd.encode_prompts(["", ""])
z_lat = torch.randn(2, *sd.shape, generator=g)
lam2 = torch.tensor([-1.0, 3.0])
t2 = sd.t_of_lam(lam2)
e_c = sd.net(z_lat, t2, encoder_hidden_states=text).sample
e_u = sd.net(z_lat, t2, encoder_hidden_states=empty).sample
torch.testing.assert_close(sd.eps(z_lat, lam2, text), e_u + 3.0 * (e_c - e_u), atol=1e-5, rtol=1e-4)
student_sd = A.network_copy(sd, guidance_scale=1.0)                 # the student: no guidance
torch.testing.assert_close(student_sd.eps(z_lat, lam2, text), e_c, atol=1e-5, rtol=1e-4)
print("latents", tuple(z_lat.shape), "-> images", tuple(sd.decode(z_lat).shape), "(through the VAE, for viewing)")

# %% [markdown]
# ## 2. The generator and the student start as the teacher
#
# At scale the generator is not a fresh network regressed onto the teacher (chapter 6 did that for
# an MLP): it *is* a copy of the teacher's network, read at the fixed log-SNR $\lambda^*$,
# $g(z, c) = D(z_{\rm in}(z), \lambda^*, c)$ with $z_{\rm in} = \sigma^* z$ under EDM and $z$ under VP. The
# student score is another copy. Both copies train; the teacher stays frozen.

# %%
gen = TeacherInitGenerator(A.network_copy(edm), -6.0, copy_weights=False)
z = torch.randn(4, 3, 8, 8, generator=g)
torch.testing.assert_close(gen(z, labels), edm.denoise(math.exp(3.0) * z, torch.full((4,), -6.0), labels))
print("trainable generator parameters:", sum(p.numel() for p in gen.parameters() if p.requires_grad),
      "| trainable teacher parameters:", sum(p.numel() for p in edm.parameters() if p.requires_grad))

# %% [markdown]
# ## 3. One training command for every scale
#
#     python -m emd_lib train --config NAME [key=value ...]   # a name in emd_lib/configs/, or a YAML file
#
# `emd_lib/configs/` holds `toy`, `mnist`, `imagenet64`, `imagenet128` and `sd15`. The loop is chapter 6's:
# it calls the same `student_loss`, `emd_generator_loss` and `di_generator_loss`. Around it,
# `emd_lib.scale.train` adds what long runs need: bf16 autocast on GPUs, a generator EMA, checkpoints
# (safetensors and a JSON card, written atomically) that hold everything needed to continue, logs as
# JSON lines, a progress bar. A non-finite loss or gradient stops the run *before* the optimiser
# step, naming the step and the last good checkpoint; SIGINT or SIGTERM saves and exits; a mistyped
# key gets one line that names it.
#
# Here is the ImageNet-64 config run for a few steps with the tiny EDM stand-in in place of the real
# teacher (`teacher.kind=random teacher.arch=tiny-edm`). The other overrides shrink the run to fit a
# CPU: batch 8 instead of 256, K = 2 instead of 8, a few steps, and a uniform noise range of
# $[-5, 5]$ with $\lambda^* = -4$ for the untrained stand-in in place of the config's EDM range (the
# first table sets each override beside the config's value; the second is the run's log):

# %%
print("\n".join(ln for ln in (ROOT / "emd_lib" / "configs" / "imagenet64.yaml").read_text().splitlines()[:12]))
shrunk = {"batch": 8, "steps": fast_or(6, 3), "lam_dist": "uniform", "lam_min": -5, "lam_max": 5, "lam_star": -4,
          "langevin.K": 2}                                  # what makes the run fit a CPU
real_cfg = load_config("imagenet64")
display(table([(key, str(val), str(functools.reduce(getattr, key.split("."), real_cfg)))   # langevin.K -> .langevin.K
               for key, val in shrunk.items()], ["key", "here", "in the config"]))
over = ["teacher.kind=random", "teacher.arch=tiny-edm", *(f"{k}={v}" for k, v in shrunk.items()), "progress=false",
        "tensorboard=false", "log_every=1", f"out={TMP / 'in64'}"]
run = Trainer(load_config("imagenet64", over))
hist = run.run()
x_gen = run.sample(4, cond=torch.tensor([0, 1, 2, 3]))
print("one-step samples:", tuple(x_gen.shape))
log_keys = ("step", "loss_g", "loss_s", "grad_norm", "lr_g")
log = [json.loads(line) for line in (TMP / "in64" / "log.jsonl").read_text().splitlines()]
table([[rec.get(k, "-") for k in log_keys] for rec in log], log_keys, fmt="{:.6g}", title="log.jsonl")

# %% [markdown]
# **Exact resume.** A checkpoint holds the generator, its EMA, the student score, both optimisers'
# states, the random-number generator and the step. So a run stopped after any checkpoint continues
# as if nothing had happened: on the CPU the weights at the end are *bitwise* equal to those of an
# uninterrupted run. (The tests also kill a run with SIGKILL at a random moment, possibly while it
# writes, and resume from the newest complete checkpoint.)

# %%
toy = ["batch=32", "width=32", "depth=2", "init_steps=10", "student_warmup=5", "langevin.K=2", "steps=10",
       "ckpt_every=3", "progress=false", "tensorboard=false"]
Trainer(load_config("toy", toy + [f"out={TMP / 'whole'}"])).run()
Trainer(load_config("toy", toy + [f"out={TMP / 'parts'}"])).run(until=4)    # stopped after step 4
resumed = Trainer(load_config("toy", toy + [f"out={TMP / 'parts'}"]))
resumed.run()                                                                 # picks up at step 4
a = resumed.state()[0]
b = Trainer(load_config("toy", toy + [f"out={TMP / 'whole'}"]))
assert b.try_resume() and b.step == 10
for k, v in b.state()[0].items():
    if k != "torch_rng":
        assert torch.equal(v, a[k]), k
print("stopped at 4 and resumed == uninterrupted, bitwise, over", len(a), "tensors")

# %% [markdown]
# ## 4. Several GPUs
#
#     torchrun --nproc_per_node 8 -m emd_lib train --config imagenet64 \
#         teacher.path=/data/edm-imagenet-64x64-cond-adm.pkl teacher.code_root=/src/edm teacher.trust_pickle=true
#
# `torchrun` starts one process per GPU and `emd_lib.scale.train` wraps the generator and the student score
# in PyTorch's DistributedDataParallel, which averages their gradients. `batch` is the *global* batch.
# One design choice makes the result independent of the number of processes: every process draws the
# randomness of the whole global batch ($z$, $\epsilon$, $\lambda$, the classes, and the Langevin noise of
# the E-step) from the same seeded generator, and keeps its own rows. Drawing random numbers costs
# little next to a UNet, and a step on $N$ processes then equals the single-process step on the same
# global batch; the tests check it with two CPU processes (gloo).

# %%
# the trainer's own draws as one process and as each of two (without starting processes: we set the
# rank and the number of processes that torchrun would give it)
tr = Trainer(load_config("toy", toy + [f"out={TMP / 'draws'}"]))


def draws(world, rank):
    tr.world, tr.rank = world, rank
    tr.rng.manual_seed(5)
    return tr.draw_batch()[:3]                                                     # z, eps, lam


whole, parts = draws(1, 0), [draws(2, r) for r in range(2)]
for w, p0, p1 in zip(whole, *parts):
    torch.testing.assert_close(torch.cat([p0, p1]), w)
print(f"batch {tr.cfg.batch}: each of 2 processes keeps {len(parts[0][0])} rows of the same global draw of z, eps "
      "and lam")

# %% [markdown]
# ### 4.1 Leaving the process group cleanly
#
# A run that trained well must also *end* well on every process, or torchrun reports it as failed
# and a scheduler that retries failed jobs trains it again. Two rules in `emd_lib.scale.train` see to it:
#
# * **Collectives only on tensors the trainer holds.** The backend finishes a collective on a worker
#   thread of its own and releases the collective's tensors there. When the tensor was a Python
#   temporary (`torch.tensor([loss])`, reduced and dropped), that release frees a Python object and
#   must take the interpreter's lock; if it comes while the interpreter is shutting down, the worker
#   is ended in the middle of C++ code and the process aborts ("terminate called without an active
#   exception"). With gloo this hit some of our two-process runs with the joint chain (how often, we
#   did not measure), after the final checkpoint was written. The loss average and the stop-signal check now reduce two buffers
#   the trainer owns (`_loss_sum`, `_stop_max`); `tests/test_ddp.py` records every tensor handed to a
#   collective during a two-process run and fails if Python had let go of any, and runs the command
#   itself eight times.
# * **One way out.** Success, a training fault and a signal all end in `leave_process_group`: the
#   DistributedDataParallel wrappers come off, then `destroy_process_group`, with no collective in
#   between, so a process that failed alone cannot hang the others. The E-step's calls of the
#   generator go to the network inside the wrapper (they need $g$ and its vector-Jacobian product in
#   $z$, never a gradient reduction), so the M-step's forward is the only one the wrapper prepares a
#   reduction for; the networks' buffers are constants, so the wrapper broadcasts none before a forward.
#
# What differs with NCCL on GPUs (reviewed, not yet run here): each process selects its GPU from
# `LOCAL_RANK` *before* the group is made, so NCCL never guesses a device for a barrier. NCCL's work
# objects are released by its watchdog thread once the GPU has finished them, again off the main
# thread, so the first rule matters there too. `destroy_process_group` aborts NCCL's communicators
# instead of waiting for peers; a process that stops with an error while the others sit inside a
# collective leaves them blocked until NCCL's timeout (10 minutes by default) or until torchrun,
# seeing one process fail, stops the rest. Training faults here (a non-finite loss or gradient) are
# decided from values averaged over all processes, so every process stops at the same step.

# %% [markdown]
# ## 5. What a step costs
#
# Per generator update, Diff-Instruct evaluates the teacher and the student score once; EMD-$K$ $K$ times
# each (plus, when $z$ moves, a generator pass and a vector-Jacobian product per Langevin step), and
# both add the generator's forward and backward and the student's update. `python -m emd_lib bench`
# measures it: seconds per step, images per second, peak memory, the FLOPs of a step (counted with
# `torch.utils.flop_counter`'s formulas) and the achieved TFLOP/s, for Diff-Instruct and EMD-1/2/4/8/16,
# and then one-step sampling against the teacher's Heun sampler. The teacher has random weights of the
# config's architecture: speed does not depend on the weights, so nothing needs downloading.
#
# On this CPU, with the tiny stand-in (`--tiny`):

# %%
ks = fast_or((1, 2, 4, 8, 16), (1, 4))
info = bench("imagenet64", methods=[("di", 1)] + [("emd", k) for k in ks], tiny=True, steps=fast_or(5, 1),
             warmup=1, sampler_steps=fast_or(40, 4), quiet=True)
rows = {r["method"]: r for r in info["rows"]}
assert rows[f"EMD-{ks[-1]}"]["tflop_per_step"] > rows["EMD-1"]["tflop_per_step"] > 0
show_bench(info)

# %% [markdown]
# **On one GPU.** The same command on the full-size ImageNet-64 network (a diffusers `UNet2DModel` laid
# out like EDM's ADM-64, {glue:text}`ch08_params` parameters per network, random weights) at batch 64 in bf16 autocast,
# eager and under `torch.compile` (`make bench-gpu` runs these and the CUDA-graph variant):
#
#     python -m emd_lib bench --config imagenet64 --batch 64 --steps 2 --warmup 1 --langevin-steps 1,2,4,8 \
#         --passes --json data/results/bench_gpu_imagenet64.json
#     python -m emd_lib bench --config imagenet64 --batch 64 --steps 3 --warmup 1 --langevin-steps 1,2,4,8 \
#         --passes --compile --json data/results/bench_gpu_imagenet64_compile.json
#
# We ran them on one {glue:text}`ch08_device` with PyTorch {glue:text}`ch08_torch` (the files hold the
# date and the command). The
# compiled run stopped at its time limit while timing EMD-8, so its table ends at EMD-4; the two tiny
# tables show CUDA graphs (`--cuda-graphs`) on a network small enough to be bound by kernel launches.

# %%
gpu = {f.stem.removeprefix("bench_gpu_"): json.loads(f.read_text())
       for f in sorted((DATA_DIR / "results").glob("bench_gpu_*.json"))}
assert {"imagenet64", "imagenet64_compile", "tiny", "tiny_graphs"} <= set(gpu), "run `make bench-gpu` on a CUDA GPU"
glue("ch08_params", f"{gpu['imagenet64']['params_per_network'] / 1e6:.0f}M")
glue("ch08_device", gpu["imagenet64"]["device_name"])
glue("ch08_torch", gpu["imagenet64"]["torch"].split("+")[0])                      # 2.11.0+cu130 -> 2.11.0
for info in gpu.values():
    display(show_bench(info))

# %% [markdown]
# What the tables say, computed from them:

# %%
eager = {r["method"]: r for r in gpu["imagenet64"]["rows"]}
comp = {r["method"]: r for r in gpu["imagenet64_compile"]["rows"]}
di, e8 = eager["Diff-Instruct"], eager["EMD-8"]
glue("ch08_e8_ratio", e8["ratio_to_di"], fmt=".1f")
for key, n in e8["passes"].items():
    glue(f"ch08_e8_{key}", n)                                               # ch08_e8_forward, ch08_e8_vjp, ...
    glue(f"ch08_di_{key}", di["passes"][key])
glue("ch08_pred_err", max(abs(r["predicted_sec"] / r["sec_per_step"] - 1) for r in eager.values()), fmt=".0%")
pct_e, pct_c = [r["pct_peak"] for r in eager.values()], [r["pct_peak"] for r in comp.values()]
glue("ch08_pct_eager", sum(pct_e) / len(pct_e), fmt=".0f")
glue("ch08_pct_comp_lo", min(pct_c), fmt=".0f")
glue("ch08_pct_comp_hi", max(pct_c), fmt=".0f")
glue("ch08_mem_eager", max(r["peak_mb"] for r in eager.values()) / 1024, fmt=".0f")
glue("ch08_mem_comp", max(r["peak_mb"] for r in comp.values()) / 1024, fmt=".0f")
# one more Langevin step (a generator forward + VJP, a teacher and a student forward), from EMD-2 -> EMD-4
step_s = (comp["EMD-4"]["sec_per_step"] - comp["EMD-2"]["sec_per_step"]) / 2
step_tf = (comp["EMD-4"]["tflop_per_step"] - comp["EMD-2"]["tflop_per_step"]) / 2
peak_c = gpu["imagenet64_compile"]["peak"]["tflops"]
glue("ch08_step_pct", 100 * step_tf / step_s / peak_c, fmt=".0f")
emd8_c = comp["EMD-4"]["sec_per_step"] + 4 * step_s                 # extrapolated, not measured
glue("ch08_e8_comp", emd8_c)
glue("ch08_e8_gain", e8["sec_per_step"] / emd8_c, fmt=".1f")
assert max(pct_c) < 100 * step_tf / step_s / peak_c                # no whole step reaches the marginal step's rate
passes = gpu["imagenet64"]["pass_times"]
glue("ch08_fwd_pct", passes["forward"]["pct_peak"], fmt=".0f")
glue("ch08_train_pct", passes["train"]["pct_peak"], fmt=".0f")
glue("ch08_fwd_ms", passes["forward"]["sec"] * 1e3, fmt=".0f")
t0 = {r["method"]: r for r in gpu["tiny"]["rows"]}
t1 = {r["method"]: r for r in gpu["tiny_graphs"]["rows"]}
speed = [t0[m]["sec_per_step"] / t1[m]["sec_per_step"] for m in t0]
glue("ch08_graphs_lo", min(speed), fmt=".0f")
glue("ch08_graphs_hi", max(speed), fmt=".0f")
assert min(pct_c) > max(pct_e)                                      # compiling raises every step's rate
assert max(r["peak_mb"] for r in comp.values()) < min(r["peak_mb"] for r in eager.values())   # and cuts memory

# %% [markdown]
# * **EMD-$K$ against Diff-Instruct.** Eager, EMD-8 costs about {glue:text}`ch08_e8_ratio`
#   Diff-Instruct steps, as counting its passes predicts: {glue:text}`ch08_e8_forward` forward passes
#   (the student update's generator pass, a teacher and a student evaluation per Langevin step),
#   {glue:text}`ch08_e8_vjp` forward-and-VJP passes of the generator and {glue:text}`ch08_e8_train`
#   training passes, against Diff-Instruct's {glue:text}`ch08_di_forward` forward and
#   {glue:text}`ch08_di_train` training passes. The sum of the separately timed passes matches the
#   measured step within {glue:text}`ch08_pred_err`, so what a step does outside the networks (noise,
#   schedules, optimiser updates) costs little.
# * **Compiling** raises every step from about {glue:text}`ch08_pct_eager`% to
#   {glue:text}`ch08_pct_comp_lo`-{glue:text}`ch08_pct_comp_hi`% of the card's measured bf16 matrix
#   rate and cuts peak memory from {glue:text}`ch08_mem_eager` to {glue:text}`ch08_mem_comp` GiB. The
#   marginal Langevin step runs at about {glue:text}`ch08_step_pct`%; the fixed part of a step (the
#   student update and the M-step's training pass, where the backward to the weights dominates) runs
#   lower, so no whole step reaches that rate. The compiled EMD-8 step, extrapolated from EMD-4 and not
#   measured, comes to about {glue:text}`ch08_e8_comp:.2f` s, {glue:text}`ch08_e8_gain` times faster
#   than eager.
# * **What is left of the gap.** Even the network's own passes leave most of the rate unused: eager,
#   one forward pass reaches {glue:text}`ch08_fwd_pct`% and a training pass
#   {glue:text}`ch08_train_pct`%. The matrix products of an ADM-64 network are small (192 to 768
#   channels, down to 8x8 pixels) and between them sit group norms, SiLUs and attention softmaxes
#   that move data rather than multiply it; compiling fuses those, the likely source of its gain (we
#   did not profile the kernels). CUDA graphs remove launch overhead: on the tiny network, which is
#   bound by launches, they make every step {glue:text}`ch08_graphs_lo`-{glue:text}`ch08_graphs_hi`x
#   faster; on the full-size network a forward pass already keeps the GPU busy for about
#   {glue:text}`ch08_fwd_ms` ms (eager), so we expect little from them there, but that run did not
#   finish within our time on the card and is not measured; nor is the channels-last layout
#   (`--channels-last`). The E-step's chain makes no host synchronisation and no pass it does not
#   need (the FLOPs of a step are exactly those of its passes, a test checks), and freezes the
#   generator's weights for its VJPs, so that a compiled backward,
#   traced for every input that requires grad, has no weight gradients to compute.

# %% [markdown]
# **What the paper's runs cost.** The paper's checklist states its compute: 300k steps in about 8 days on
# 64 TPU-v4, and 200k steps in about 10 days (which of its runs is which is not stated). No code was
# released; our configs' hyperparameters for the large runs are our starting points, not the paper's
# (the paper tabulates its own in an appendix we could not read: they are not known to us). At the paper's scale the E-step's $K$ teacher and student evaluations
# dominate a step, which is why the benchmark's ratio of EMD-$K$ to Diff-Instruct matters more than its
# absolute numbers.
#
# ## 6. Evaluation at scale
#
# The field's numbers: FID of 50,000 samples against reference statistics (for ImageNet 64, EDM's
# `imagenet-64x64.npz`), Inception Score, precision and recall (Kynkäänniemi et al. 2019) for
# ImageNet; for text to image, zero-shot FID on COCO-30k (30,000 captions of the 2014 validation set,
# generated at 512 px, resized to 256, clean-fid features) and CLIP score. `emd_lib.scale.evaluate` computes
# them from features, so the Inception network (torch-fidelity or clean-fid, not dependencies here:
# they pull a torchvision that pins another torch) is the only thing to install:
#
#     python -m emd_lib evaluate --run runs/imagenet64 --task imagenet --ref imagenet-64x64.npz
#     python -m emd_lib evaluate --run runs/sd15 --task coco --captions coco30k.txt --ref coco30k-stats.npz
#
# The formulas, on features we make up here:

# %%
gf = torch.Generator().manual_seed(8)
feats_real = torch.randn(2000, 16, generator=gf, dtype=torch.float64)
feats_fake = 1.2 * torch.randn(2000, 16, generator=gf, dtype=torch.float64) + 0.1
mu_r, cov_r = feats_real.mean(0), torch.cov(feats_real.T)
glue("ch08_fd", fid_from_features(feats_fake, mu_r, cov_r))                  # the prose formats it (.3f)
glue("ch08_fd_exact", 16 * (0.1**2 + (1.2 - 1) ** 2))                         # two Gaussians, in closed form
p, r = knn_precision_recall(feats_real, feats_fake, k=3)
glue("ch08_prec", p)
glue("ch08_rec", r)
conf = 30 * torch.nn.functional.one_hot(torch.arange(1000) % 100, 100).double()
glue("ch08_is_conf", inception_score(conf)[0], fmt=".1f")
glue("ch08_is_flat", inception_score(torch.zeros(1000, 100))[0], fmt=".1f")
assert p < r and abs(inception_score(conf)[0] - 100) < 0.5 and abs(inception_score(torch.zeros(1000, 100))[0] - 1) < 1e-6

# %% [markdown]
# The fake features are a Gaussian shifted by 0.1 and widened by 1.2 in each of 16 dimensions, so their
# Fréchet distance to the real ones is $16\,(0.1^2 + (1.2 - 1)^2) =$ {glue:text}`ch08_fd_exact:.3f` in
# closed form; measured on 2,000 samples of each it is {glue:text}`ch08_fd:.3f`, the difference being
# sampling error. Their k-NN precision is {glue:text}`ch08_prec:.3f` and recall {glue:text}`ch08_rec:.3f`
# (the wider fakes cover the real ones and stray beyond them). The Inception Score of confident
# predictions spread evenly over 100 classes is {glue:text}`ch08_is_conf`, the number of classes; that
# of uninformative predictions is {glue:text}`ch08_is_flat`.
#
# The paper's verified one-step results, for orientation: FID 2.20 on ImageNet 64x64
# (class-conditional; the EDM teacher scores 2.44 with its 79-evaluation Heun sampler and 1.36 with
# 511 stochastic evaluations) and zero-shot COCO FID 9.66 distilling Stable Diffusion v1.5: the
# `imagenet64` and `sd15` configs distil the same teachers, but with hyperparameters of our own (the
# paper's are not known to us), so these are targets, not numbers we have reproduced. FID 6.0 for
# EMD-16 on ImageNet 128x128 came from the non-public VDM++ teacher; the `imagenet128` config uses
# ADM instead, so its numbers cannot be set beside that one.
#
# ## 7. Precision: bf16 bodies, float32 arithmetic
#
# On a GPU, `precision: auto` (every config's default) runs the step under bf16 autocast. bf16 keeps
# float32's range but only 8 significant bits, so a matrix product or convolution rounds its result to
# about 0.4% (relative). That is harmless inside a network's body and harmful in a few places around it.
# The policy of `emd_lib`:
#
# | computation | precision | why |
# |---|---|---|
# | the bodies of the teacher, the student score and the generator (convolutions, attention, linear layers) | bf16 under autocast (`precision=bf16`, or `auto` on CUDA); float32 with `precision=fp32` | this is where the time goes; bf16 halves memory traffic and doubles the matrix rate |
# | EDM's preconditioning ($c_\text{skip}, c_\text{out}, c_\text{in}, c_\text{noise}$) and the skip connection | float32, computed by the adapter, which calls the network's inner model and casts its output to float32 | NVlabs' own `EDMPrecond.forward` asserts that its inner model returns the dtype it chose, which bf16 autocast breaks |
# | eps to denoiser ($D = (x_t - \sigma \hat\epsilon) / \alpha$), score, v to eps | float32 | at low $\lambda$ the factor $\sigma / \alpha$ (20 at $\lambda = -6$) multiplies any rounding of $\hat\epsilon$ |
# | classifier-free guidance $\hat\epsilon_u + w (\hat\epsilon_c - \hat\epsilon_u)$ | float32, from the network's two bf16 halves | the difference of two close numbers, multiplied by $w$ |
# | the E-step (Langevin updates, noise cancellation), the losses, gradients, Adam and the EMA | float32 | the parameters and their gradients stay float32; only the bodies' activations are bf16 |
# | float16 | never | there is no loss scaler; a released network's `use_fp16` flag is ignored, and switched off in the trainable copies (generator, student score) |
#
# Every loss and every gradient norm is checked for finite values before the optimisers step (section 3).
# The float32 arithmetic cannot undo the rounding that happened inside the body: the denoiser read from
# a bf16 $\hat\epsilon$ carries $\sigma/\alpha$ times $\hat\epsilon$'s error, exactly. The generator's
# starting map reads the teacher at $\lambda^* = -6$ (ImageNet) or $-5$ (Stable Diffusion), where that
# factor is 20 or 12. Here is the measurement on the tiny stand-ins, with random weights everywhere (an
# untrained network's zero-initialised output layers would hide the rounding):

# %%
def rel_rms(a, b):
    return float((a - b).norm() / b.norm())


prec_teachers = {
    "EDM (tiny)": (A.EDMTeacher(A.perturb_weights(A.edm_unet("tiny", num_classes=4))), torch.tensor([0, 1, 2, 3])),
    "ADM (tiny)": (A.DiscreteVPTeacher(A.perturb_weights(A.adm_unet("tiny", num_classes=4)), A.linear_alphas_cumprod(1000),
                                       (3, 8, 8), num_classes=4, eps_channels=3), torch.tensor([0, 1, 2, 3])),
}
sd_prec = A.random_sd("tiny", guidance_scale=1.0)
A.perturb_weights(sd_prec.net)
prec_teachers["SD (tiny, no guidance)"] = (sd_prec, sd_prec.encode_prompts(["a cat", "a dog", "a red cube", ""]))

BF16_RTOL = 0.03          # the tolerance the tests hold every adapter to (tests/test_adapters.py)
gp = torch.Generator().manual_seed(11)
rows = []
for name, (tch, cond) in prec_teachers.items():
    for lv in (-5.0, 0.0, 4.0):
        lam = torch.full((4,), lv)
        alpha, sigma = tch.schedule.alpha_sigma(lam)
        x = 0.5 * alpha[0] * torch.randn(4, *tch.shape, generator=gp) + sigma[0] * torch.randn(4, *tch.shape, generator=gp)
        e32, d32 = tch.eps(x, lam, cond), tch.denoise(x, lam, cond)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            e16, d16 = tch.eps(x, lam, cond), tch.denoise(x, lam, cond)
        assert e16.dtype == d16.dtype == torch.float32            # every adapter returns float32
        assert rel_rms(e16, e32) < BF16_RTOL
        rows.append((name, lv, float(sigma[0] / alpha[0]), rel_rms(e16, e32), float((e16 - e32).pow(2).mean().sqrt()),
                     float((d16 - d32).pow(2).mean().sqrt())))
for name, lv, ratio, _, e_err, d_err in rows:      # the text: a VP denoiser's error is sigma/alpha times eps's
    if not name.startswith("EDM"):
        assert abs(d_err - ratio * e_err) < 0.02 * ratio * e_err + 1e-6, (name, lv)
d_edm = {lv: d_err for name, lv, *_, d_err in rows if name.startswith("EDM")}
assert d_edm[-5.0] < 1.5 * d_edm[0.0]                 # EDM's denoiser error does not grow at low lambda
table(rows, ["teacher", "lam", "sigma/alpha", "eps rel. err", "eps rms err", "D rms err"],
      fmt={"lam": "{:.1f}", "sigma/alpha": "{:.2f}", "eps rel. err": "{:.4f}", "eps rms err": "{:.4f}", "D rms err": "{:.4f}"})

# %% [markdown]
# For the two VP teachers (ADM, Stable Diffusion) the denoiser's error is the eps error times
# $\sigma/\alpha$: the arithmetic after the network adds nothing, and the amplification is the
# network's own rounding. EDM's network predicts the denoiser's correction directly, scaled by
# $c_\text{out} \le \sigma_\text{data}$, so its denoiser error does not grow at low $\lambda$. The
# tolerance the tests hold each adapter to is 3% relative (rms) for one evaluation, bf16 against
# float32; guidance with weight $w$ can multiply it by up to $2w - 1$, which is why the combination
# itself is float32. To see the EDM fix at work: a network with the released code's dtype contract is
# wrapped by `EDMTeacher` in `EDMNet`, which calls its inner model, so under autocast the result is
# float32 and matches float32 within the tolerance (a relative rms error of {glue:text}`ch08_edm_bf16:.1%`):

# %%
edm_prec = prec_teachers["EDM (tiny)"][0]
print("EDMTeacher wraps", type(edm_prec.net.precond).__name__, "in", type(edm_prec.net).__name__)
xe, le, ye = torch.randn(2, 3, 8, 8, generator=gp), torch.tensor([-6.0, 2.0]), torch.tensor([1, 3])
with torch.autocast("cpu", dtype=torch.bfloat16):
    d_bf16 = edm_prec.denoise(xe, le, ye)
d_fp32 = edm_prec.denoise(xe, le, ye)
print(f"bf16 denoiser: {d_bf16.dtype}")
glue("ch08_edm_bf16", rel_rms(d_bf16, d_fp32))
assert d_bf16.dtype == torch.float32 and rel_rms(d_bf16, d_fp32) < BF16_RTOL
released_like = A.edm_unet("tiny", num_classes=4, seed=1).eval().requires_grad_(False)
released_like.use_fp16 = True                       # as NVlabs' ImageNet-64 pickle says
gen_copy = TeacherInitGenerator(A.network_copy(A.EDMTeacher(released_like)), -6.0, copy_weights=False)
print("use_fp16: teacher", released_like.use_fp16, "| generator's trainable copy", gen_copy.copy.net.precond.use_fp16)
assert released_like.use_fp16 and not gen_copy.copy.net.precond.use_fp16

# %% [markdown]
# ## Summary
#
# You can now:
#
# * put a published network behind the one teacher interface: EDM's $D(x; \sigma = e^{-\lambda/2}, c)$
#   directly, eps- or v-prediction networks through a timestep read off the log-SNR table, Stable
#   Diffusion with its text encoder and VAE, with classifier-free guidance on the teacher only;
# * start the generator as the teacher read at $\lambda^*$ and the student as the teacher, and run every
#   scale with `python -m emd_lib train --config NAME`, resuming bitwise from checkpoints;
# * scale out with `torchrun` and DistributedDataParallel without changing the result (every process
#   draws the whole batch's randomness and keeps its rows);
# * predict and measure a step's cost: EMD-8 at batch 64 on one {glue:text}`ch08_device` took about {glue:text}`ch08_e8_ratio`
#   Diff-Instruct steps, as its pass count predicts, and compiled steps reached
#   {glue:text}`ch08_pct_comp_lo`-{glue:text}`ch08_pct_comp_hi`% of the card's bf16 matrix rate;
# * evaluate at scale (FID, IS, precision/recall, CLIP score from features) and keep precision where it
#   matters: bf16 bodies under autocast, float32 preconditioning, guidance and E-step.

# %% [markdown]
# ## Exercise 8.1: an EDM network behind a VP caller
#
# Section 1 reads an EDM network at its own noise levels ($\alpha = 1$). A chain written for the VP
# schedule hands it $x_t = \alpha x + \sigma \epsilon$ with $\alpha^2 = \mathrm{sigmoid}(\lambda)$ instead.
# Write `vp_denoise(net, x_t, lam, labels)`: the clean-sample estimate $\hat x_0$ of an EDM network
# `net(x, sigma, class_labels)` (which takes $\sigma$ of shape `(B,)` and one-hot rows
# `(B, net.label_dim)`) for a VP batch `x_t` at log-SNR `lam` $(B,)$, integer `labels`. Chapter 1's
# $y = x_t/\alpha$ tells you what the network must see; decide whether its output needs rescaling.

# %%
import torch

from emd_lib.exercises import check


def vp_denoise(net, x_t, lam, labels):
    ### BEGIN SOLUTION
    alpha = torch.sigmoid(lam).sqrt()[:, None, None, None]             # VP: alpha^2 = sigmoid(lam)
    y = x_t / alpha                                                     # = x + (sigma / alpha) eps: EDM's input
    noise_level = torch.exp(-0.5 * lam)                                 # sigma / alpha, the same for every schedule
    onehot = torch.nn.functional.one_hot(labels.long(), net.label_dim).to(x_t.dtype)
    return net(y, noise_level, onehot)                                  # an estimate of x: no rescaling
    ### END SOLUTION


check("8.1", vp_denoise)

# %% [markdown]
# ## Exercise 8.2: guidance on the teacher
#
# Write `guided_eps(unet, x_t, t, text, empty, w)`: the teacher's classifier-free-guided eps for a
# diffusers-style network called as `unet(x, t, encoder_hidden_states=e).sample`, with the text
# embeddings `text` and the empty prompt's `empty` (both `(B, L, D)`) and guidance scale `w` (1 means
# no guidance). Evaluating both halves in one batch of `2B` is the usual trick.

# %%
import torch

from emd_lib.exercises import check


def guided_eps(unet, x_t, t, text, empty, w):
    ### BEGIN SOLUTION
    both = unet(torch.cat([x_t, x_t]), torch.cat([t, t]), encoder_hidden_states=torch.cat([empty, text])).sample
    eps_empty, eps_text = both.chunk(2)
    return eps_empty + w * (eps_text - eps_empty)
    ### END SOLUTION


check("8.2", guided_eps)

# %% [markdown]
# ## Exercise 8.3: the distribution a guided teacher asks the student to learn
#
# With guidance the teacher's score is $s_w = s_u + w\,(s_c - s_u)$, and EMD distils the generator
# toward whatever density has that score. Take 1D Gaussians $p(x \mid c) = \mathcal N(\mu_c, v_c)$ and
# $p(x) = \mathcal N(\mu_u, v_u)$ (at the clean end) and derive that density. Write
# `guided_target(mu_c, v_c, mu_u, v_u, w)` returning its `(mean, variance)`. What happens to the
# variance as $w$ grows when $v_c < v_u$, and what does that predict for a guided student's diversity?

# %%
from emd_lib.exercises import check


def guided_target(mu_c, v_c, mu_u, v_u, w):
    ### BEGIN SOLUTION
    # scores -(x - m) / v add up: the guided score is -(x - m_w) / v_w with
    precision = w / v_c + (1 - w) / v_u
    return (w * mu_c / v_c + (1 - w) * mu_u / v_u) / precision, 1 / precision
    ### END SOLUTION


check("8.3", guided_target)

# %%
print(f"chapter run time: {time.perf_counter() - t_start:.0f} s")
