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
# # Chapter 6: EMD in practice
#
# Chapters 3 to 5 derived the pieces of EM distillation one at a time: the student score, the
# E-step's Langevin chain with noise cancellation, the M-step's regression, and the link to
# Diff-Instruct. This chapter puts them together into the training loop that the library runs,
# and then looks at the choices that decide whether it works in practice.
#
# **What you will learn**
#
# * the full loop, in about 30 lines of torch, reproducing `emd_lib.distill.Distiller` step for step;
# * how the generator is initialised from the teacher's denoiser at a log-SNR $\lambda^*$, what it
#   looks like at step 0 for several $\lambda^*$, and how much the start matters at the end;
# * the weighting $w(\lambda)$ of the noise levels;
# * test-time MCMC correction: many Langevin steps from the generator's samples that remove the
#   bridges a continuous generator draws between separated modes;
# * what a step costs, EMD-$K$ against Diff-Instruct, counted in network evaluations and measured;
# * our hyperparameters, and the small sweeps behind them.

# %%
import copy
import dataclasses
import inspect
import math
import time

import matplotlib.pyplot as plt
import numpy as np
import torch

import emd_lib
from emd_lib import fast_or, is_fast
from emd_lib.book import glue, table
from emd_lib.distill import DistillConfig, Distiller, evals_per_step
from emd_lib.experiments import load_result
from emd_lib.experiments import ch05 as sweep5
from emd_lib.experiments import ch06 as sweep6
from emd_lib.langevin import LangevinConfig, mcmc_correct
from emd_lib.metrics import mixture_report
from emd_lib.mixtures import grid25, ring8
from emd_lib.book.plotting import COLORS, density2d, scatter2d, use_style
from emd_lib.schedules import VP

torch.set_num_threads(1)
use_style()
t_start = time.perf_counter()

# %% [markdown]
# ## 1. The loop, assembled
#
# One iteration of `Distiller.train` does three things.
#
# 1. **Student score** (`student_updates` times, `emd_lib.distill.student_loss`): denoising score
#    matching on detached generator samples, $\|\hat\epsilon_\psi(\alpha g(z) + \sigma\epsilon, \lambda) - \epsilon\|^2$,
#    so that $s_\psi$ tracks the score of the generator's noisy marginal $q_\theta^\lambda$.
# 2. **Generator** (`Distiller.generator_step`): draw $(z, \epsilon, \lambda)$, run the E-step
#    (`emd_lib.langevin.estep`: $K$ Langevin steps on $\epsilon$ driven by the score gap
#    $\sigma\, ds = \hat\epsilon_\psi - \hat\epsilon_\phi$, with the noise record $\eta$ of chapter 4), then the
#    M-step regression $w \|x_t^K - \alpha g_\theta(z)\|^2 / (2\sigma^2)$ with $x_t^K$ held fixed
#    (`emd_lib.distill.emd_generator_loss`); clip the gradient norm, take an Adam step with a
#    cosine-decayed learning rate.
# 3. **EMA** of the generator's weights (`emd_lib.nets.ema_update`); samples come from the EMA.
#
# Before the first iteration the generator is initialised from the teacher (section 2) and the
# student is warmed up on it (`student_warmup` updates). Here is the generator step as the library
# writes it:

# %%
print(inspect.getsource(Distiller.generator_step))

# %% [markdown]
# Now the whole iteration from scratch, in plain torch, for the default chain ($\epsilon$ only, full
# noise cancellation). We start from a `Distiller`'s state after its initialisation and warm-up,
# copy its networks, optimiser state and random-number generator, run three iterations both ways,
# and compare the weights.

# %%
teacher = ring8()
cfg_demo = DistillConfig(steps=100, batch=128, init_steps=fast_or(400, 50), student_warmup=fast_or(300, 20),
                         langevin=LangevinConfig(K=4))
d = Distiller(teacher, cfg_demo)
d.warmup()
gen, student, ema = copy.deepcopy(d.generator), copy.deepcopy(d.student), copy.deepcopy(d.ema)
opt_g = torch.optim.Adam(gen.parameters(), lr=cfg_demo.lr_g, betas=cfg_demo.betas)
opt_s = torch.optim.Adam(student.parameters(), lr=cfg_demo.lr_s, betas=cfg_demo.betas)
opt_s.load_state_dict(copy.deepcopy(d.opt_s.state_dict()))    # deepcopy: the state's tensors must not be shared
rng = torch.Generator()
rng.set_state(d.rng.get_state())


def draw(cfg):
    z = torch.randn(cfg.batch, 2, generator=rng)                                     # (B, d)
    eps = torch.randn(cfg.batch, 2, generator=rng)                                   # (B, d)
    lam = cfg.lam_min + (cfg.lam_max - cfg.lam_min) * torch.rand(cfg.batch, generator=rng)   # lam ~ U[-6, 6]
    a, s = VP.alpha_sigma(lam)
    return z, eps, lam, a[:, None], s[:, None]


def emd_iteration(cfg, step):
    # 1. student: denoising score matching on detached generator samples
    for _ in range(cfg.student_updates):
        z, eps, lam, a, s = draw(cfg)
        with torch.no_grad():
            x = gen(z)
        loss_s = ((student.eps(a * x + s * eps, lam) - eps) ** 2).sum(1).mean()
        opt_s.zero_grad()
        loss_s.backward()
        opt_s.step()
    # 2a. E-step: K Langevin steps on eps from the generator's joint sample; eta records the noise
    z, eps, lam, a, s = draw(cfg)
    x = gen(z)
    gam = cfg.langevin.gamma_eps
    e, eta = eps.clone(), eps.clone()                      # eta_0 = eps_0: full cancellation
    with torch.no_grad():
        for _ in range(cfg.langevin.K):
            x_t = a * x + s * e
            sds = student.eps(x_t, lam) - teacher.eps(x_t, lam)          # sigma ds
            n = torch.randn(e.shape, generator=rng)
            e = e + gam * (sds - e) + math.sqrt(2 * gam) * n              # eps <- eps + g (sigma ds - eps) + sqrt(2g) n
            eta = (1 - gam) * eta + math.sqrt(2 * gam) * n
    # 2b. M-step: w ||x_t^K - alpha g(z)||^2 / (2 sigma^2), w = sigma^2, target held fixed
    x_target = (a * x + s * (e - eta)).detach()
    loss_g = (s**2 * (x_target - a * x) ** 2 / (2 * s**2)).sum(1).mean()
    opt_g.zero_grad()
    loss_g.backward()
    torch.nn.utils.clip_grad_norm_(gen.parameters(), cfg.grad_clip)
    frac = step / cfg.steps                                # cosine decay of the learning rate
    for group in opt_g.param_groups:
        group["lr"] = cfg.lr_g * (cfg.lr_decay + (1 - cfg.lr_decay) * 0.5 * (1 + math.cos(math.pi * frac)))
    opt_g.step()
    # 3. EMA of the generator
    with torch.no_grad():
        for pe, pm_ in zip(ema.parameters(), gen.parameters()):
            pe.lerp_(pm_, 1 - cfg.ema)


for step in range(3):
    emd_iteration(cfg_demo, step)
d.train(3, progress=False)
flat = lambda m: torch.cat([p.detach().flatten() for p in m.parameters()])  # noqa: E731
for name, mine, lib in (("generator", gen, d.generator), ("EMA", ema, d.ema), ("student", student, d.student)):
    torch.testing.assert_close(flat(mine), flat(lib), rtol=1e-5, atol=1e-6)
glue("ch06_loop_gap", max(float((flat(m) - flat(lib)).abs().max())
                          for m, lib in ((gen, d.generator), (ema, d.ema), (student, d.student))), fmt=".2g",
     fast="a shorter initialisation and warm-up; the full run uses 400 and 300 updates");

# %% [markdown]
# After three iterations the scratch and the library weights (generator, EMA and student) differ
# by at most {glue:text}`ch06_loop_gap` (the check allows float rounding).
# The thirty lines above are the whole method; the library adds the other chain variants of
# chapters 4 and 9 (moving $z$, the $x$ coordinates, other cancellations), Diff-Instruct on the same
# loop (`method="di"`), and bookkeeping.
#
# ## 2. Where the generator starts: $\lambda^*$
#
# A one-step generator $g(z)$ and a denoiser $D_\phi(x_t, \lambda)$ have the same input and output
# shapes, so EMD starts the generator *as the teacher's denoiser read at one fixed log-SNR* $\lambda^*$:
# $g(z) = D_\phi(z, \lambda^*)$ under VP (under EDM, $D_\phi(\sigma^* z, \lambda^*)$, so that the input has
# the scale the denoiser expects). For a network teacher one copies the weights; our MLP
# generator facing the exact mixture teacher learns the same map by regression
# (`emd_lib.nets.init_generator_from_teacher`, `init_steps` Adam steps).
#
# What does the start look like? $D_\phi(z, \lambda^*)$ is the posterior mean $\mathbb E[x \mid x_t = z]$. At
# high noise (small $\lambda^*$) every input looks alike to the teacher and the posterior mean is
# close to the data mean: the start is *collapsed*. At $\lambda^* = 0$ the input is taken seriously
# and the start already has the rough shape of the data. `DistillConfig.lam_star` must lie in the
# teacher schedule's range $[\lambda_{\min}, \lambda_{\max}]$: for our VP schedule that is
# $[{-10}, 10]$, so all four values below are allowed ($-10$ at the very edge).

# %%
lam_stars = [0.0, -2.0, -6.0, -10.0]
print(f"VP schedule range: [{VP.lam_min}, {VP.lam_max}]")
try:
    Distiller(teacher, DistillConfig(lam_star=-12.0, init_steps=0, student_warmup=0))
except ValueError as e:
    print("lam* = -12:", e)

n_cloud = fast_or(3000, 1000)
z_cloud = torch.randn(n_cloud, 2, generator=torch.Generator().manual_seed(0))
starts = {ls: sweep6.init_target(teacher, ls, z_cloud) for ls in lam_stars}
start_reports = {ls: mixture_report(teacher, x, n_ref=n_cloud) for ls, x in starts.items()}
spreads = [float(starts[ls].std(0).mean()) for ls in lam_stars]
assert all(a > b for a, b in zip(spreads, spreads[1:])), "the start should collapse as lam* decreases"

# the MLP generator learns that map by regression: check it on one lam*
g_init = emd_lib.nets.MLPGenerator(2)
init_losses = emd_lib.nets.init_generator_from_teacher(g_init, teacher, -2.0, steps=fast_or(400, 150),
                                                       generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    init_err = float((g_init(z_cloud) - starts[-2.0]).norm(dim=1).mean())
fast_init = f"{len(init_losses)} regression steps and {n_cloud} latents; the full run uses 400 and 3000"
glue("ch06_init_steps", len(init_losses), fast=fast_init)
glue("ch06_init_err", init_err, fmt=".3f", fast=fast_init)
glue("ch06_init_spread", spreads[1], fmt=".3f", fast=fast_init)
assert init_err < 0.5 * spreads[1], "the regression should land close to D(z, -2)"

fig, axes = plt.subplots(1, 5, figsize=(13, 2.9))
density2d(axes[0], teacher, title="teacher")
for ax, ls in zip(axes[1:], lam_stars):
    scatter2d(ax, starts[ls], title=f"step 0, $\\lambda^*$ = {ls:g}", color=COLORS["init"], s=3)
for ax in axes:
    ax.set_xticks([]), ax.set_yticks([])
fig.tight_layout()
plt.show()
table([(f"{ls:g}", sp, start_reports[ls]["tv"], start_reports[ls]["mmd"], start_reports[ls]["recall"])
       for ls, sp in zip(lam_stars, spreads)], ["lam*", "spread (std)", "mode-mass TV", "MMD", "recall"],
      fmt={"spread (std)": "{:.3f}", "mode-mass TV": "{:.3f}", "MMD": "{:.3f}", "recall": "{:.2f}"},
      title=f"the start g(z) = D(z, lam*) on {n_cloud} latents")

# %% [markdown]
# The MLP generator, after {glue:text}`ch06_init_steps` regression steps onto $D_\phi(z, -2)$, lies a
# mean distance {glue:text}`ch06_init_err` from it, against a spread of the target of
# {glue:text}`ch06_init_spread`.
#
# In 2D the picture is the reverse of the paper's images (where $\lambda^* = 0$ looks like noise and
# lower values show more structure): here lower $\lambda^*$ means a tighter clump at the data mean,
# because a 2D denoiser at high noise has nothing to go on but the mean. Does the start matter at
# the end? The sweep below trains EMD (the defaults otherwise) from each start on the ring, three
# seeds each, and reports the EMA generator after the same number of steps.

# %%
lamstar = load_result("ch06_lamstar")
fig, ax = plt.subplots(figsize=(5.5, 3.2))
cmap = plt.get_cmap("viridis")
for i, (lab, rs) in enumerate(lamstar["runs"].items()):
    steps_ = rs[0]["curves"]["step"]
    tv = np.array([r["curves"]["tv"] for r in rs])
    c = cmap(i / max(len(lamstar["runs"]) - 1, 1))
    ax.plot(steps_, tv.mean(0), "o-", color=c, label=lab)
    ax.fill_between(steps_, tv.min(0), tv.max(0), color=c, alpha=0.15, linewidth=0)
ax.set_xlabel("generator step"), ax.set_ylabel("mode-mass TV"), ax.set_yscale("log")
ax.set_title(f"EMD-8 on {lamstar['mixture']} from different starts (band: min-max over seeds)")
ax.legend()
plt.show()
sweep6.summary_table(lamstar, first="start", init=True)

# %%
L = {lab: {k: s[k]["mean"] for k in ("tv", "mmd", "recall")} for lab, s in lamstar["summary"].items()}
best = {"tv": min(L["lam* = 0"]["tv"], L["lam* = -2"]["tv"]), "mmd": min(L["lam* = 0"]["mmd"], L["lam* = -2"]["mmd"]),
        "recall": max(L["lam* = 0"]["recall"], L["lam* = -2"]["recall"])}
for lab, key in (("lam* = -6", "ls6"), ("lam* = -10", "ls10"), ("lam* = 0", "ls0"), ("lam* = -2", "ls2")):
    for k, f in (("tv", ".3f"), ("mmd", ".4f"), ("recall", ".2f")):
        glue(f"ch06_{key}_{k}", L[lab][k], fmt=f)
assert all(L["lam* = -10"][k] > best[k] for k in ("tv", "mmd")) and L["lam* = -10"]["recall"] < best["recall"]
assert L["lam* = -6"]["tv"] <= best["tv"] + 0.01                     # -6 has caught up in the mode masses
assert L["lam* = -6"]["mmd"] > best["mmd"] and L["lam* = -6"]["recall"] < best["recall"]   # but not in spread
assert L["lam* = 0"]["recall"] > L["lam* = -2"]["recall"] and f"{L['lam* = 0']['mmd']:.4f}" == f"{L['lam* = -2']['mmd']:.4f}"

# %% [markdown]
# The start matters. From the collapsed starts ($\lambda^* = -6, -10$) the generator first has to
# grow out of a point: after the same number of steps $\lambda^* = -10$ is still far behind in every
# metric (TV {glue:text}`ch06_ls10_tv`, MMD {glue:text}`ch06_ls10_mmd`, recall {glue:text}`ch06_ls10_recall`),
# and $\lambda^* = -6$ has caught up in mode masses (TV {glue:text}`ch06_ls6_tv`) but not in spread: its MMD
# ({glue:text}`ch06_ls6_mmd`) is higher and its recall ({glue:text}`ch06_ls6_recall`) lower than those of
# $\lambda^* = 0$ and $-2$, so the modes are there but too narrow. Between $\lambda^* = 0$ and our default
# $-2$ the sweep shows no clear winner in TV ({glue:text}`ch06_ls0_tv` against {glue:text}`ch06_ls2_tv`)
# or MMD ({glue:text}`ch06_ls0_mmd` for both), and $\lambda^* = 0$ has the better
# recall on the ring ({glue:text}`ch06_ls0_recall` against {glue:text}`ch06_ls2_recall`). We kept $-2$, the value our first prototype
# used; on this 2D target $\lambda^* = 0$ is at least as good. (The paper shows iteration-0 samples
# for $\lambda^* = 0, -6, -10$ on images; which value its runs train from is not known to us.)
#
# ## 3. The weighting $w(\lambda)$
#
# The loss averages over noise levels $\lambda \sim U[-6, 6]$ with a weight $w(\lambda)$. Since Adam
# normalises the overall scale of the gradient, only the *shape* of $w$ matters: how the levels are
# weighted against each other. The M-step gradient at one level is
# $-(w\alpha/\sigma)\,\tilde\epsilon^\top \partial g/\partial\theta$ with $\tilde\epsilon \approx \gamma\,\sigma\, ds$ for a short chain,
# so its size is about $w\,\alpha\,\|ds\|$. For a mode of width $\omega$ displaced by $\delta$, the score gap is
# about $ds \approx \alpha\delta / (\alpha^2 \omega^2 + \sigma^2)$: it grows like $1/\sigma^2$ as the noise falls, until
# $\sigma$ reaches the mode's width. So $w = 1$ lets the least noisy levels dominate, $w = \alpha^2/\sigma^2$
# (the SNR) even more so, and $w = \sigma^2$ (our default) puts the weight in the middle of the range,
# where the noisy versions of neighbouring modes still overlap and mass can move between them.
# The figure draws $w\,\alpha^2/(\alpha^2 \omega^2 + \sigma^2)$ for the ring's mode width $\omega = 0.15$.

# %%
lam_grid = torch.linspace(-6, 6, 121)
a_g, s_g = VP.alpha_sigma(lam_grid)
width = 0.15
fig, ax = plt.subplots(figsize=(5.5, 3.0))
for kind, ls in (("sigma2", "-"), ("one", "--"), ("snr", ":")):
    w = emd_lib.schedules.weight(lam_grid, VP, kind)
    # size of the per-level gradient for a fixed displacement: w alpha |ds|, ds ~ alpha delta / (alpha^2 s^2 + sigma^2)
    eff = w * a_g**2 / (a_g**2 * width**2 + s_g**2)
    ax.plot(lam_grid, eff / eff.max(), ls, label=f"w = {kind}")
    peak = float(lam_grid[eff.argmax()])
    assert (-4 < peak < 4) if kind == "sigma2" else peak == 6.0
    if kind == "sigma2":
        glue("ch06_peak", peak, fmt="+.1f")
ax.set_yscale("log"), ax.set_xlabel(r"log-SNR $\lambda$"), ax.set_ylabel("relative to its maximum")
ax.set_title(r"how much each noise level pushes: $w\,\alpha^2/(\alpha^2 s^2 + \sigma^2)$")
ax.legend()
plt.show()


# %% [markdown]
# With $w = \sigma^2$ the push peaks at $\lambda$ = {glue:text}`ch06_peak`, inside the range; with $w = 1$
# and the SNR it only grows towards the clean end, $\lambda = 6$. The sweep trains EMD under each
# weighting on the ring:

# %%
weighting = load_result("ch06_weighting")
Wt = weighting["summary"]
ref = Wt["w = sigma^2"]
for lab, key in (("w = 1", "one"), ("w = SNR", "snr")):
    glue(f"ch06_w_{key}_tv", Wt[lab]["tv"]["mean"] / ref["tv"]["mean"], fmt=".1f")
    glue(f"ch06_w_{key}_mmd", Wt[lab]["mmd"]["mean"] / ref["mmd"]["mean"], fmt=".1f")
    assert all(Wt[lab][k]["mean"] - Wt[lab][k]["std"] > ref[k]["mean"] + ref[k]["std"] for k in ("tv", "mmd"))
weights = ring8().weights.tolist()
glue("ch06_w_min_share", min(m / w for rs in weighting["runs"].values() for r in rs
                             for m, w in zip(r["metrics"]["masses"], weights)), fmt=".0%")
glue("ch06_w_off", 1 - float(np.mean([s["within_3sd"]["mean"] for s in Wt.values()])), fmt=".0%")
sweep6.summary_table(weighting, sweep6.SUMMARY_METRICS + (("within_3sd", "within 3 sd", ".3f"),), first="weighting")

# %% [markdown]
# Here the choice is clear: $w = \sigma^2$ beats both alternatives in mode masses and in MMD, by more
# than the seeds' spread: the mode-mass TV is {glue:text}`ch06_w_one_tv` times as large with $w = 1$
# and {glue:text}`ch06_w_snr_tv` times with the SNR, the MMD {glue:text}`ch06_w_one_mmd` and
# {glue:text}`ch06_w_snr_mmd` times. With $w = 1$ or the SNR the least noisy levels dominate the gradient, and
# at low noise the score gap only moves samples locally, within their mode; moving mass *between*
# modes is the job of the noisy levels, which those weightings starve. Every run of the three gives
# each of the eight modes at least {glue:text}`ch06_w_min_share` of its weight by the nearest-mode count
# (with about {glue:text}`ch06_w_off` of the samples off the modes, which that count spreads over them
# too); what differs is how well the masses are matched. (With the SNR weighting the gradient clip
# acted at every step; section 6 comes back to that.)
#
# ## 4. Test-time MCMC correction
#
# A one-step generator is a continuous map from $\mathcal N(0, I)$. When the target has separated
# modes, the map has to cross the empty space between them somewhere, and the samples it puts
# there form thin *bridges*. The paper's Figure 1 shows the remedy on images: after training,
# run many Langevin steps on $\rho(x_t, z)$, the E-step's target, starting from the generator's
# samples (its caption shows the updated $x$ after 300 steps). Our readout differs: we read the
# chain's end out with the teacher's denoiser, a choice of ours. The student score is still
# needed (it is $\nabla \log q_\theta^\lambda$ inside $\rho$), so we use the raw generator that the student
# has been tracking, not its EMA.
#
# `emd_lib.langevin.mcmc_correct(generator, teacher, student, z, lam, steps=300, gamma_eps=0.1, gamma_z=0.05)`
# runs our joint $(\epsilon, z)$ chain at one fixed log-SNR $\lambda$ and returns $D_\phi(x_t^K, \lambda)$.
# Two choices matter:
#
# * $\lambda$ must lie in the range the student was trained on (`DistillConfig`'s
#   $[\lambda_{\min}, \lambda_{\max}] = [-6, 6]$), not only in the teacher's: outside it the student's
#   score is an extrapolation;
# * the final denoising by itself already snaps samples towards the nearest mode at high $\lambda$
#   (it is a posterior mean), so the fair baseline is the denoiser applied to $\alpha g(z) + \sigma\epsilon$
#   *without* any Langevin steps.
#
# We train EMD briefly on the $5 \times 5$ grid of narrow modes and correct its samples.

# %%
mix = grid25()
cfg_grid = DistillConfig(steps=fast_or(400, 60), batch=fast_or(256, 128), init_steps=fast_or(400, 150),
                         student_warmup=fast_or(300, 100), seed=0)
d_grid = Distiller(mix, cfg_grid)
d_grid.train(progress=False)
n_mc = fast_or(2000, 400)
z_mc = torch.randn(n_mc, 2, generator=torch.Generator().manual_seed(1))
lam_mc, steps_mc = 6.0, fast_or(300, 100)
t0 = time.perf_counter()
base_mc = sweep6.correct(d_grid.generator, mix, d_grid.student, z_mc, lam=lam_mc, steps=0)
corr_mc = sweep6.correct(d_grid.generator, mix, d_grid.student, z_mc, lam=lam_mc, steps=steps_mc)
t_mc = time.perf_counter() - t0
# the helper wraps the library call: check it on a few samples and the same random numbers
x_lib, _, _ = mcmc_correct(d_grid.generator, mix, d_grid.student, z_mc[:100], lam_mc, steps=20,
                           rng=torch.Generator().manual_seed(0))
torch.testing.assert_close(x_lib, sweep6.correct(d_grid.generator, mix, d_grid.student, z_mc[:100], lam=lam_mc,
                                                 steps=20)["denoised"])

rep = {"generator": mixture_report(mix, base_mc["generator"], n_ref=n_mc),
       "denoise only": mixture_report(mix, base_mc["denoised"], n_ref=n_mc),
       f"MCMC, {steps_mc} steps": mixture_report(mix, corr_mc["denoised"], n_ref=n_mc),
       "MCMC, g(z_K)": mixture_report(mix, corr_mc["generator"], n_ref=n_mc)}
w_gen, w_den, w_mc = (rep[k]["within_3sd"] for k in ("generator", "denoise only", f"MCMC, {steps_mc} steps"))
assert w_mc > w_gen and w_mc > w_den, "the chain should put more samples on the modes than either baseline"
fast_mc = f"{cfg_grid.steps} EMD steps, {n_mc} samples, {steps_mc} Langevin steps; the full run uses 400, 2000 and 300"
for name, v in (("gen", w_gen), ("den", w_den), ("mc", w_mc), ("gz", rep["MCMC, g(z_K)"]["within_3sd"])):
    glue(f"ch06_mc_w3_{name}", v, fmt=".2f", fast=fast_mc)
glue("ch06_mc_seconds", t_mc, fmt=".1f", fast=fast_mc)

fig, axes = plt.subplots(1, 3, figsize=(10.5, 3.5))
for ax, (x, title, c) in zip(axes, ((base_mc["generator"], "generator g(z)", COLORS["emd"]),
                                    (base_mc["denoised"], f"denoised at $\\lambda$ = {lam_mc:g}, no MCMC", COLORS["init"]),
                                    (corr_mc["denoised"], f"after {steps_mc} Langevin steps", COLORS["corrected"]))):
    ax.scatter(mix.means[:, 0], mix.means[:, 1], s=40, marker="+", color=COLORS["teacher"], linewidths=1)
    scatter2d(ax, x, title=title, color=c, s=3, alpha=0.5)
    ax.set_xticks([]), ax.set_yticks([])
fig.tight_layout()
plt.show()

# %%
r_gen, r_den, r_mc, r_gz = (rep[k] for k in ("generator", "denoise only", f"MCMC, {steps_mc} steps", "MCMC, g(z_K)"))
assert r_mc["mmd"] < r_gen["mmd"] and r_gz["within_3sd"] > r_gen["within_3sd"]
assert abs(r_mc["tv"] - r_gen["tv"]) < 0.5 * r_gen["tv"] + 0.02     # the masses stay about where they were
table([(k, r["within_3sd"], r["tv"], r["mmd"], r["precision"], r["recall"]) for k, r in rep.items()],
      ["samples", "within 3 sd", "TV", "MMD", "precision", "recall"],
      fmt={"within 3 sd": "{:.3f}", "TV": "{:.3f}", "MMD": "{:.4f}", "precision": "{:.2f}", "recall": "{:.2f}"},
      title=f"grid25 after {cfg_grid.steps} EMD steps; correction at lambda = {lam_mc:g} on {n_mc} samples")

# %% [markdown]
# The generator's samples spread along bridges between the modes (left): a fraction
# {glue:text}`ch06_mc_w3_gen` of them lies within three standard deviations of a mode. The teacher's
# denoiser alone, applied to $\alpha g(z) + \sigma\epsilon$, pulls samples towards the modes
# ({glue:text}`ch06_mc_w3_den` within three standard deviations) but leaves many between them (middle).
# After the Langevin steps ({glue:text}`ch06_mc_seconds` seconds for all the samples), a fraction
# {glue:text}`ch06_mc_w3_mc` sits on a mode (right) and the MMD to the teacher drops (table). A good part
# of the work is done by the latent: $g(z_K)$, the generator at the chain's final latent, already has
# {glue:text}`ch06_mc_w3_gz` of its samples on the modes. The mode masses (TV) stay about where they were: a chain at
# low noise moves samples onto the nearest mode, not between modes, so the correction repairs
# samples, not proportions.
#
# Which $\lambda$, how many steps, which step sizes? The sweep below trains EMD on the grid (two
# seeds, {glue:text}`ch06_mc_steps` steps each) and runs every setting on the same latents. "denoised" is the
# library's output; "$g(z_K)$" shows how far the latent moved by itself.

# %%
mc = load_result("ch06_mcmc")
glue("ch06_mc_steps", mc["steps"])
sweep6.mcmc_table(mc)

# %%
def den(lab, k="within_3sd"):
    return sweep6.mcmc_mean(mc, lab, "denoised", k)


gen_w3, gen_mmd, gen_tv = (float(np.mean([r["generator"][k] for r in mc["runs"]])) for k in ("within_3sd", "mmd", "tv"))
labels_mc = list(mc["runs"][0]["settings"])
checks = {
    "lam 6: the chain does the work": den("lam 6, denoise only") < 0.5 < den("lam 6, 300 steps") - 0.3,
    "lam 6: MMD below generator and denoiser": den("lam 6, 300 steps", "mmd") < min(gen_mmd, den("lam 6, denoise only", "mmd")),
    "lam 2: little repair": den("lam 2, 300 steps") < 0.6,
    "lam 4: the denoiser alone already snaps": den("lam 4, denoise only") > 0.8,
    "lam 4: narrower than lam 6 (recall)": den("lam 4, 300 steps", "recall") < den("lam 6, 300 steps", "recall"),
    "eps only: between denoiser and joint chain": den("lam 6, denoise only") < den("lam 6, 300 steps, eps only")
    < den("lam 6, 300 steps"),
    "30 steps at lam 6 already > 0.95 within 3 sd": den("lam 6, 30 steps") > 0.95,
    "gamma_z = 0.2 and gamma_eps = 0.3 do as well": all(
        den(lab) >= den("lam 6, 300 steps") - 0.02 and den(lab, "mmd") <= den("lam 6, 300 steps", "mmd") + 0.005
        for lab in ("lam 6, 300 steps, gamma_z 0.2", "lam 6, 300 steps, gamma_eps 0.3")),
    "gamma_z = 1 breaks the masses": den("lam 6, 300 steps, gamma_z 1", "tv") > 0.5,
    "no sane setting fixes the masses": all(abs(den(lab, "tv") - gen_tv) < 0.05 for lab in labels_mc
                                            if "gamma_z 1" not in lab),
}
assert all(checks.values()), [k for k, v in checks.items() if not v]
glue("ch06_sw_gen", gen_w3, fmt=".2f")
glue("ch06_sw_gen_tv", gen_tv, fmt=".3f")
for name, lab in (("l2", "lam 2, 300 steps"), ("l4_den", "lam 4, denoise only"), ("l6_den", "lam 6, denoise only"),
                  ("l6", "lam 6, 300 steps"), ("l6_eps", "lam 6, 300 steps, eps only"), ("l6_30", "lam 6, 30 steps")):
    glue(f"ch06_sw_{name}", den(lab), fmt=".3f")
glue("ch06_sw_l4_rec", den("lam 4, 300 steps", "recall"), fmt=".2f")
glue("ch06_sw_l6_rec", den("lam 6, 300 steps", "recall"), fmt=".2f")
glue("ch06_sw_gz1_tv", den("lam 6, 300 steps, gamma_z 1", "tv"), fmt=".2f")
glue("ch06_sw_gz_l6", sweep6.mcmc_mean(mc, "lam 6, 300 steps", "generator"), fmt=".3f");

# %% [markdown]
# What the sweep shows (each claim is checked in code; "on the modes" is the fraction within three
# standard deviations of a mode, {glue:text}`ch06_sw_gen` for the generator itself):
#
# * **$\lambda$ matters most.** At $\lambda = 2$ the chain repairs little ({glue:text}`ch06_sw_l2` on the
#   modes after 300 steps). At $\lambda = 4$ the denoiser alone already pulls most samples onto the
#   modes ({glue:text}`ch06_sw_l4_den`; at that noise level the posterior mean is close to the nearest
#   mode's centre), at a price in recall: the corrected modes come out too narrow (recall
#   {glue:text}`ch06_sw_l4_rec` against {glue:text}`ch06_sw_l6_rec` at $\lambda = 6$). At $\lambda = 6$, the top of
#   the student's training range, the denoiser alone leaves most samples off the modes
#   ({glue:text}`ch06_sw_l6_den` on them) and the chain itself does the work ({glue:text}`ch06_sw_l6`).
# * **Moving $z$ is what removes the bridges.** With $\epsilon$ alone the chain improves on plain
#   denoising but leaves many samples between modes ({glue:text}`ch06_sw_l6_eps` on them); with $z$ the
#   latents themselves leave the bridge regions ($g(z_K)$: {glue:text}`ch06_sw_gz_l6` on the modes).
# * **Far fewer steps than the 300 of our default already do most of it here**: 30 steps at $\lambda = 6$ put
#   {glue:text}`ch06_sw_l6_30` of the samples within three standard deviations; more steps keep moving the latents.
# * **The default step sizes are safe** ($\gamma_\epsilon = 0.1$, $\gamma_z = 0.05$ with the SNR preconditioning);
#   $\gamma_z = 0.2$ and $\gamma_\epsilon = 0.3$ do as well, while $\gamma_z = 1$ breaks the chain: samples
#   pile into a few modes and the mode masses are ruined (TV {glue:text}`ch06_sw_gz1_tv`).
# * **No setting fixes the mode masses**: a chain at low noise repairs samples, not proportions (the
#   generator's TV is {glue:text}`ch06_sw_gen_tv`, and every sane setting stays within 0.05 of it).

# %%
cl = mc["clouds"]
fig, axes = plt.subplots(1, 2, figsize=(7.5, 3.6))
for ax, (k, title, c) in zip(axes, (("before", "generator (sweep, seed 0)", COLORS["emd"]),
                                    ("after", "after 300 steps at $\\lambda$ = 6", COLORS["corrected"]))):
    ax.scatter(mix.means[:, 0], mix.means[:, 1], s=40, marker="+", color=COLORS["teacher"], linewidths=1)
    scatter2d(ax, torch.tensor(cl[k]), title=title, color=c, s=3, alpha=0.5)
    ax.set_xticks([]), ax.set_yticks([])
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 5. What a step costs
#
# Each Langevin step of the E-step evaluates the teacher and the student once; when $z$ moves, it
# also runs the generator forward and takes one vector-Jacobian product. Diff-Instruct evaluates
# the teacher and the student once per generator step. We count the calls in one generator step
# by wrapping the networks, compare with `emd_lib.distill.evals_per_step`, and then time
# a few generator steps of each method, round-robin so that the load of a shared machine hits all
# alike (`emd_lib.experiments.ch05.time_per_step`). The student's own updates (two per iteration
# in our defaults) cost the same for every method and are left out.

# %%
class CountEps:
    """Counts calls of .eps (the only way the chains use a teacher or a student)."""

    def __init__(self, inner):
        self.inner, self.calls = inner, 0

    def eps(self, *args, **kw):
        self.calls += 1
        return self.inner.eps(*args, **kw)

    def __getattr__(self, name):
        return getattr(self.inner, name)


cost_cfgs = {"DI": DistillConfig(method="di"),
             **{f"EMD-{K}": DistillConfig(langevin=LangevinConfig(K=K)) for K in (1, 2, 4, 8, 16)},
             "EMD-8 (eps, z)": DistillConfig(langevin=LangevinConfig(K=8, move_z=True))}
counts = []
for lab, c in cost_cfgs.items():
    dd = Distiller(teacher, dataclasses.replace(c, init_steps=0, student_warmup=0, batch=64))
    dd.teacher, dd.student = CountEps(dd.teacher), CountEps(dd.student)
    fwd = []
    hook = dd.generator.register_forward_hook(lambda *a: fwd.append(1))
    dd.generator_step()
    hook.remove()
    want = evals_per_step(c.method, c.langevin.K, c.langevin.move_z)
    assert (dd.teacher.calls, dd.student.calls, len(fwd)) == (want["teacher"], want["student"], want["generator_fwd"])
    counts.append((lab, dd.teacher.calls, dd.student.calls, len(fwd)))
table(counts, ["method", "teacher", "student", "generator forward"], title="network evaluations in one generator step")

# %%
timing = sweep5.time_per_step(teacher, ["DI", "EMD-1", "EMD-2", "EMD-4", "EMD-8", "EMD-16"],
                              steps=fast_or(10, 3), reps=fast_or(5, 2),
                              configs={"EMD-8 (eps, z)": cost_cfgs["EMD-8 (eps, z)"]})
t_di = timing["DI"]["median"]

fig, ax = plt.subplots(figsize=(6, 2.8))
labs = list(timing)
ax.bar(labs, [1e3 * timing[k]["median"] for k in labs],
       color=[COLORS["di"] if k == "DI" else COLORS["emd"] for k in labs])
ax.set_ylabel("ms per generator step"), ax.set_title("cost of one generator step (CPU, this run)")
ax.tick_params(axis="x", rotation=30)
plt.show()
table([(lab, 1e3 * t["median"], t["median"] / t_di) for lab, t in timing.items()], ["method", "ms per step", "x DI"],
      fmt={"ms per step": "{:.1f}", "x DI": "{:.1f}"},
      title=f"seconds per generator step (batch 256, MLP 2-256-256-256-2, one CPU thread, median of "
            f"{len(timing['DI']['all'])} rounds)")

# %%
r1 = timing["EMD-1"]["median"] / t_di
rz = timing["EMD-8 (eps, z)"]["median"] / timing["EMD-8"]["median"]
fast_t = f"{fast_or(5, 2)} rounds of {fast_or(10, 3)} steps; the full run uses 5 rounds of 10"
glue("ch06_cost_1", r1, fmt=".2f", fast=fast_t)
glue("ch06_cost_16_8", timing["EMD-16"]["median"] / timing["EMD-8"]["median"], fmt=".2f", fast=fast_t)
glue("ch06_cost_z", rz, fmt=".2f", fast=fast_t)
if not is_fast():   # fast mode times a few steps on a loaded machine: its ratios are too noisy to check
    assert r1 < 1.5 and rz > 1.2 and timing["EMD-16"]["median"] > timing["EMD-2"]["median"]

# %% [markdown]
# The counts are exact: EMD-$K$ evaluates the teacher and the student $K$ times per generator step,
# DI once, so EMD-1 costs about what DI costs ({glue:text}`ch06_cost_1` times as much here), and the
# cost of EMD-$K$ grows roughly linearly in $K$ (EMD-16 against EMD-8: {glue:text}`ch06_cost_16_8`; less
# than linearly at small $K$, where the generator's forward and backward pass and the fixed
# overheads still weigh). Moving $z$ adds a generator forward pass and a vector-Jacobian product to
# every Langevin step: EMD-8 on $(\epsilon, z)$ costs {glue:text}`ch06_cost_z` times EMD-8. The student's updates, equal for all methods, come on top. The milliseconds
# are from this run on a shared CPU; the ratios are what carries over. The paper tabulates seconds
# per step for Diff-Instruct and EMD-1 to EMD-16 too; its numbers are not known to us.
#
# ## 6. Our hyperparameters and how we chose them
#
# The paper's hyperparameters are not known to us, so every value below is our own choice for
# the 2D toys. The table lists `DistillConfig`'s and `LangevinConfig`'s defaults with where each
# came from; "sweep" rows are backed by the small sweep that follows.

# %%
why = {
    "method": "EMD; 'di' runs Diff-Instruct on the same loop",
    "steps": "the library's full run; the sweeps below use 300 to 400 to fit a CPU budget",
    "batch": "the prototype's value; not swept here",
    "lr_g": "sweep below (5e-4 and 5e-3 around it)",
    "lr_s": "from our first prototype; not swept here",
    "betas": "beta1 = 0, the prototype's value: sweep below against (0.9, 0.999)",
    "lr_decay": "a cosine decay to 5% of lr_g, the prototype's recipe; not swept here",
    "student_updates": "sweep below (1 against 2); 2 is the prototype's value",
    "student_warmup": "the student first learns the initial generator",
    "ema": "sweep below (no EMA against 0.995); the prototype's value",
    "lam_dist": "uniform in log-SNR",
    "lam_min": "-6: sigma^2 = 0.998, nearly pure noise",
    "lam_max": "6: sigma = 0.05, the width of grid25's modes",
    "weighting": "section 3",
    "lam_star": "section 2",
    "init_steps": "enough to match D(z, lam*) closely (section 2 gives the distance)",
    "width": "an expressive generator for the 2D toys",
    "depth": "3 hidden layers",
    "grad_clip": "a guard against spikes; with w = sigma^2 it never acted (checked below)",
    "seed": "any; the sweeps average over seeds",
    "langevin.K": "chapter 5 (K as the knob) and section 5 (cost)",
    "langevin.space": "chapter 4: one step size works at every noise level in eps",
    "langevin.move_data": "eps (or x) moves: the E-step's point; chapter 4 freezes it only to compare",
    "langevin.move_z": "chapters 4, 5: z moves go further, at about twice the chain's cost (section 5)",
    "langevin.gamma_eps": "sweep below (0.1, 0.6 around 0.3)",
    "langevin.gamma_x": "only for space = 'x'",
    "langevin.gamma_z": "chapters 4 and 9 (with the SNR preconditioning)",
    "langevin.z_precondition": "chapters 4 and 9",
    "langevin.cancel": "chapter 4: 'full' removes the noise terms (mean-preserving with z fixed, as here)",
    "langevin.cancel_z": "chapter 4",
    "langevin.z_clip": "chapter 9 (a trust region for the z step)",
    "langevin.metropolis": "chapter 9 (a Metropolis test on the joint step)",
    "langevin.jac_iters": "chapter 9 (power iterations for the Jacobian-scaled z step)",
}
defaults = DistillConfig()
rows = []
for f in dataclasses.fields(DistillConfig):
    if f.name == "langevin":
        rows += [(f"langevin.{g.name}", str(getattr(defaults.langevin, g.name)), why.get(f"langevin.{g.name}", ""))
                 for g in dataclasses.fields(LangevinConfig)]
    else:
        rows.append((f.name, str(getattr(defaults, f.name)), why.get(f.name, "")))
settings = ({f.name for f in dataclasses.fields(DistillConfig)} - {"langevin"}) \
    | {f"langevin.{g.name}" for g in dataclasses.fields(LangevinConfig)}
missing = {k for k in settings if not why.get(k, "").strip()}
assert not missing and set(why) <= settings, f"document every setting: {missing or set(why) - settings}"
table(rows, ["setting", "default", "how we chose it"], title="DistillConfig and LangevinConfig defaults")

# %%
hp = load_result("ch06_hparams")
clip_by = sweep6.clip_fractions(hp, lamstar, weighting)
clip_sigma2 = max(frac for (sw, lab), (frac, gn) in clip_by.items() if not lab.startswith("w = ") or lab == "w = sigma^2")
glue("ch06_clip_one", clip_by[("weighting", "w = 1")][0], fmt=".1%")
glue("ch06_norm_snr", clip_by[("weighting", "w = SNR")][1], fmt=".0f")
assert clip_sigma2 == 0 and 0 < clip_by[("weighting", "w = 1")][0] < 0.1 and clip_by[("weighting", "w = SNR")][0] == 1

H = hp["summary"]
d0 = H["defaults"]
close = lambda lab, k: abs(H[lab][k]["mean"] - d0[k]["mean"]) <= 2 * max(H[lab][k]["std"], d0[k]["std"]) + 1e-3  # noqa: E731
assert all(close(lab, k) for lab in ("gamma_eps = 0.1", "gamma_eps = 0.6", "student_updates = 1",
                                     "Adam betas (0.9, 0.999)") for k in ("tv", "mmd"))
for lab, key in (("defaults", "def"), ("lr_g = 5e-4", "slow"), ("lr_g = 5e-3", "fast"), ("no EMA", "noema")):
    for k, f in (("tv", ".3f"), ("mmd", ".4f"), ("recall", ".2f")):
        glue(f"ch06_hp_{key}_{k}", H[lab][k]["mean"], fmt=f)
assert H["lr_g = 5e-4"]["tv"]["mean"] > 2 * d0["tv"]["mean"]
assert H["lr_g = 5e-3"]["mmd"]["mean"] > 2 * d0["mmd"]["mean"] and H["lr_g = 5e-3"]["recall"]["mean"] < d0["recall"]["mean"]
assert H["no EMA"]["mmd"]["mean"] < d0["mmd"]["mean"] and H["no EMA"]["recall"]["mean"] > d0["recall"]["mean"] and close("no EMA", "tv")
sweep6.summary_table(hp)

# %% [markdown]
# What the sweep says, one setting at a time:
#
# * the Langevin step $\gamma_\epsilon$ between 0.1 and 0.6, one student update instead of two, and Adam's
#   $\beta_1 = 0.9$ instead of 0 stay within two seed-standard-deviations of the defaults in TV and MMD:
#   on this target and at this length they do not matter (chapter 5 explains why a rescaled drift
#   changes little under Adam);
# * the generator's learning rate matters most: $5\times 10^{-4}$ is too slow (the mode masses are still
#   far off after the same steps: TV {glue:text}`ch06_hp_slow_tv` against {glue:text}`ch06_hp_def_tv`) and
#   $5\times 10^{-3}$ loses spread (MMD {glue:text}`ch06_hp_fast_mmd` against {glue:text}`ch06_hp_def_mmd`,
#   recall {glue:text}`ch06_hp_fast_recall` against {glue:text}`ch06_hp_def_recall`);
# * the EMA *costs* spread at this length: without it recall ({glue:text}`ch06_hp_noema_recall`) and MMD
#   ({glue:text}`ch06_hp_noema_mmd`) are better after a few hundred steps (its TV, {glue:text}`ch06_hp_noema_tv`
#   against {glue:text}`ch06_hp_def_tv`, lies within the seeds' spread), because an average with decay
#   0.995 spans the last couple of hundred steps of a generator that is still growing its modes. Over
#   the library's 3000 steps that lag is a small part of the run; we kept the EMA from our first prototype, where it helped on long runs, but this sweep does
#   not show a benefit.
#
# The gradient clip never acted, in any step of any run, with our weighting $w = \sigma^2$
# (`tests/test_chapter_claims.py` checks it). With $w = 1$ it acted now and then (in up to
# {glue:text}`ch06_clip_one` of the steps), and with the SNR weighting at every step, with a mean gradient norm of
# {glue:text}`ch06_norm_snr`: under Adam, which normalises the scale anyway, that mostly rescales the step.
#
# ## Summary
#
# You can now:
#
# * write the whole EMD loop in about thirty lines (the student's denoising score matching, the E-step
#   and M-step of the generator, an EMA) and check it against the library's weights;
# * initialise the generator from the teacher's denoiser at $\lambda^*$, and recognise a start collapsed
#   at the data mean (low $\lambda^*$), which catches up slowly;
# * choose a weighting: $w = \sigma^2$ balances the noise levels, while $w = 1$ and the SNR weighting let
#   the least noisy levels dominate and matched the mode masses worse on the toys;
# * repair samples at test time with many Langevin steps at the top of the student's range, moving $z$,
#   and know its limit: it removes bridges between modes, not errors in the mode masses;
# * count what a step costs ($K$ teacher and $K$ student evaluations for EMD-$K$, plus a generator pass and
#   a vector-Jacobian product per step when $z$ moves) and which hyperparameters matter (the
#   generator's learning rate and the weighting most; $\gamma_\epsilon$, the student updates and Adam's
#   $\beta_1$ hardly).

# %% [markdown]
# ## Exercise 6.1: how collapsed the generator's start is
#
# Section 2 starts the generator at $g(z) = D_\phi(z_{\rm in}(z), \lambda^*)$ and finds the start collapsed
# at small $\lambda^*$. Make that exact for a 1D Gaussian teacher $\mathcal N(0, v)$, whose denoiser is
# linear: write `start_spread(v, lam_star, kind)` returning the standard deviation of $g(z)$,
# $z \sim \mathcal N(0, 1)$, under the VP schedule (`kind="vp"`) and under EDM (`kind="edm"`), each with
# its own $z_{\rm in}$. Which $\lambda^*$ gives the widest start under VP when $v = 1$?

# %%
import math

from emd_lib.exercises import check


def start_spread(v, lam_star, kind):
    ### BEGIN SOLUTION
    if kind == "vp":
        alpha2, sigma2 = 1 / (1 + math.exp(-lam_star)), 1 / (1 + math.exp(lam_star))
        # D(x_t) = E[x | x_t] = alpha v x_t / (alpha^2 v + sigma^2), fed x_t = z
        return math.sqrt(alpha2) * v / (alpha2 * v + sigma2)
    sigma_star = math.exp(-lam_star / 2)
    # EDM: alpha = 1, D(y) = v y / (v + sigma*^2), fed y = sigma* z
    return v * sigma_star / (v + sigma_star**2)
    ### END SOLUTION


check("6.1", start_spread)

# %% [markdown]
# ## Exercise 6.2: one step of the correction chain
#
# Write one step of the test-time correction on $(\epsilon, z)$ at log-SNR `lam` (shape `(B,)`):
# evaluate $\sigma\,ds = \hat\epsilon_\psi - \hat\epsilon_\phi$ at $x_t = \alpha g(z) + \sigma\epsilon$ once, then move
# both coordinates *simultaneously* with $u \leftarrow u + \gamma \nabla_u \log\rho + \sqrt{2\gamma}\, n$, where
# $\nabla_\epsilon \log\rho = \sigma\, ds - \epsilon$ and $\nabla_z \log \rho = \alpha J^\top ds - z$ (one vector-Jacobian
# product through the generator), and $z$'s step is preconditioned: $\gamma_z / (1 + \alpha^2/\sigma^2)$.
# Use the given noises `n_eps` and `n_z`. Return `(z_new, eps_new)`; the check compares with
# `emd_lib.langevin.estep`.

# %%
import math

import torch

from emd_lib.exercises import check


def correction_step(generator, teacher, student, z, eps, lam, gamma_eps, gamma_z, n_eps, n_z):
    ### BEGIN SOLUTION
    a, s = teacher.schedule.alpha_sigma(lam)
    a, s = a[:, None], s[:, None]
    z = z.detach().requires_grad_(True)
    x = generator(z)
    x_t = a * x.detach() + s * eps
    with torch.no_grad():
        sds = student.eps(x_t, lam) - teacher.eps(x_t, lam)                  # sigma ds
    grad_z = torch.autograd.grad(x, z, grad_outputs=a / s * sds)[0] - z.detach()
    grad_eps = sds - eps
    g_z = gamma_z / (1 + a**2 / s**2)
    eps_new = eps + gamma_eps * grad_eps + math.sqrt(2 * gamma_eps) * n_eps
    z_new = z.detach() + g_z * grad_z + torch.sqrt(2 * g_z) * n_z
    return z_new, eps_new
    ### END SOLUTION


check("6.2", correction_step)

# %% [markdown]
# ## Exercise 6.3: where each weighting puts the M-step's gradient
#
# Section 3 sizes the M-step's gradient at one noise level as about
# $w(\lambda)\, \alpha^2 / (\alpha^2 s^2 + \sigma^2)$ for a mode of width $s$. Under VP, find the log-SNR at
# which it is largest, for $w = \sigma^2$, $w = 1$ and $w = \alpha^2/\sigma^2$: write
# `gradient_peak(s, kind)` returning that $\lambda$, or `math.inf` where the size only grows toward the
# clean end. (Write it in $a = \alpha^2$, with $\sigma^2 = 1 - a$.) What does the answer say about the
# levels $w = \sigma^2$ trains on for the ring's modes, $s = 0.15$?

# %%
import math

from emd_lib.exercises import check


def gradient_peak(s, kind):
    ### BEGIN SOLUTION
    if kind != "sigma2":
        return math.inf              # a / (a s^2 + 1 - a) and a / (1 - a) times it grow all the way to a = 1
    # f(a) = a (1 - a) / (1 - (1 - s^2) a): f' = 0 at 1 - 2a + (1 - s^2) a^2 = 0, a = 1 / (1 + s)
    a = 1 / (1 + s)
    return math.log(a / (1 - a))     # = -log s
    ### END SOLUTION


check("6.3", gradient_peak)

# %% [markdown]
# ## Exercise 6.4: the whole loop, graded by what it learns
#
# Assemble EMD from your own pieces: write `distill(teacher, z_eval, steps, seed)` that trains a
# one-step generator on a 2D mixture teacher for `steps` generator updates and returns its samples
# at the latents `z_eval`. You may use the library's networks (`emd_lib.nets.MLPGenerator`,
# `MLPScore`, `emd_lib.teachers.NetworkTeacher`) and the teacher's `denoise` and `eps`; the losses,
# the E-step and the `Distiller` refuse to run inside your answer, and so does `teacher.sample`.
# A recipe that works (section 6): start the generator at the teacher's denoiser at
# $\lambda^* = -2$, warm the student score up, then per step two score-matching updates and one
# EMD-4 generator update ($\gamma_\epsilon = 0.3$, full cancellation, $w = \sigma^2$, $\lambda \sim U[-6, 6]$,
# Adam with $\beta_1 = 0$). The check picks a three-mode mixture, runs 300 steps, and grades the
# result: each mode's share of the samples within 0.1 of its weight, and at least 45% of the
# samples within three standard deviations of their mode. Keep it to a few seconds on a CPU.

# %%
import math

import torch
from emd_lib.exercises import check
from emd_lib.nets import MLPGenerator, MLPScore
from emd_lib.teachers import NetworkTeacher


def distill(teacher, z_eval, steps, seed):
    ### BEGIN SOLUTION
    torch.manual_seed(seed)
    gen = MLPGenerator(2, 64, 2)
    student = NetworkTeacher(MLPScore(2, 64, 2), teacher.schedule, predicts="eps")
    opt_g = torch.optim.Adam(gen.parameters(), lr=2e-3, betas=(0.0, 0.999))
    opt_s = torch.optim.Adam(student.parameters(), lr=1e-3, betas=(0.0, 0.999))
    B, K, gamma = 256, 4, 0.3

    def draw():
        lam = -6 + 12 * torch.rand(B)
        a, s = teacher.schedule.alpha_sigma(lam)
        return torch.randn(B, 2), torch.randn(B, 2), lam, a[:, None], s[:, None]

    def step(opt, loss):
        opt.zero_grad()
        loss.backward()
        opt.step()

    # the start: g(z) regressed onto the teacher's denoiser at lam* = -2 (VP: z_in = z)
    for _ in range(150):
        z = torch.randn(B, 2)
        with torch.no_grad():
            target = teacher.denoise(z, torch.full((B,), -2.0))
        step(opt_g, ((gen(z) - target) ** 2).sum(1).mean())

    def student_update():                                              # denoising score matching
        z, eps, lam, a, s = draw()
        with torch.no_grad():
            x = gen(z)
        step(opt_s, ((student.eps(a * x + s * eps, lam) - eps) ** 2).sum(1).mean())

    for _ in range(100):
        student_update()
    for _ in range(steps):
        student_update()
        student_update()
        z, eps, lam, a, s = draw()
        x = gen(z)
        with torch.no_grad():                                          # E-step on eps, full cancellation
            u, eta = eps.clone(), eps.clone()
            for _ in range(K):
                sds = student.eps(a * x + s * u, lam) - teacher.eps(a * x + s * u, lam)
                n = torch.randn_like(u)
                u = u + gamma * (sds - u) + math.sqrt(2 * gamma) * n
                eta = (1 - gamma) * eta + math.sqrt(2 * gamma) * n
            x_target = a * x + s * (u - eta)
        step(opt_g, (s**2 * (x_target - a * x) ** 2 / (2 * s**2)).sum(1).mean())   # M-step
    with torch.no_grad():
        return gen(z_eval)
    ### END SOLUTION


check("6.4", distill)

# %% [markdown]
# ## Exercise 6.5: what an EMD-$K$ step costs against a Diff-Instruct step
#
# Count the work of one generator update in forward-pass equivalents, with a backward pass or a
# vector-Jacobian product through the generator costing two forwards, and the student-score updates
# (equal for both methods) left out. Write `cost_ratio(K, move_z)`: the cost of an EMD-$K$ update on
# the $(\epsilon, z)$ chain ($z$ frozen unless `move_z`) divided by a Diff-Instruct update's. Where does
# EMD-8 with $z$ moving stand?

# %%
from emd_lib.exercises import check


def cost_ratio(K, move_z):
    ### BEGIN SOLUTION
    di = 1 + 1 + 1 + 2                                   # teacher, student, generator forward and backward
    emd = 2 * K + 1 + 2                                  # K teacher and K student calls, the M-step's g
    if move_z and K > 0:
        emd += K + 2 * K                                 # g(z_k) and its VJP at every step
    return emd / di
    ### END SOLUTION


check("6.5", cost_ratio)

# %%
print(f"chapter run time: {time.perf_counter() - t_start:.0f} s")
