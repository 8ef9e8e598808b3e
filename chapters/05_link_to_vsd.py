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
# # Chapter 5: The link to VSD
#
# Chapter 2 met Diff-Instruct (DI) and variational score distillation (VSD): a one-step
# generator trained on the *reverse* KL, $\mathrm{KL}(q_\theta^\lambda \,\|\, p_\lambda)$, which is mode seeking.
# Chapters 3 and 4 built EMD on the *forward* KL, $\mathrm{KL}(p_\lambda \,\|\, q_\theta^\lambda)$, which is
# mode covering, with an E-step of $K$ Langevin steps. This chapter shows that the two are not
# strangers: with one Langevin step, EMD's generator gradient **is** the DI/VSD gradient, exactly.
# The number of Langevin steps $K$ is then a knob that moves the method from DI towards maximum
# likelihood.
#
# **What you will learn**
#
# * the $K = 1$ identity: one step on $\epsilon$ with $\gamma_\epsilon = 1$ and full noise cancellation
#   gives $\nabla_\theta \mathcal L_{\rm EMD} = \nabla_\theta \mathcal L_{\rm DI}$, derived and checked to float
#   rounding on random networks;
# * what other step sizes give: $\gamma$ times the DI gradient, plus a zero-mean noise term
#   unless the initial noise is cancelled, and why Adam does not see the factor $\gamma$;
# * how far $K$ moves the fit from DI towards maximum likelihood when nothing else differs (a
#   Gaussian generator with an exact student), with $\epsilon$ alone and with $(\epsilon, z)$;
# * what $K$ does with networks on a 2D mixture with 25 narrow modes: quality and recall for
#   $K = 1, 2, 4, 8, 16$ and DI over several seeds at equal generator steps, and what each
#   step costs.

# %%
import math
import time

import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import display

from emd_lib import fast_or, is_fast
from emd_lib.book import glue, table
from emd_lib.distill import di_generator_loss, emd_generator_loss
from emd_lib.experiments import ch05 as sweep
from emd_lib.experiments import load_result
from emd_lib.langevin import LangevinConfig
from emd_lib.mixtures import grid25, ring8
from emd_lib.nets import MLPGenerator, MLPScore
from emd_lib.book.plotting import COLORS, use_style
from emd_lib.schedules import VP, sample_lam
from emd_lib.teachers import NetworkTeacher

torch.set_num_threads(1)
use_style()
t_start = time.perf_counter()

# %% [markdown]
# ## 1. The identity on paper
#
# Fix a noise level $\lambda$ with $(\alpha, \sigma)$, a weight $w = w(\lambda)$, a latent $z$ and the
# generator's sample $x = g_\theta(z)$. Write $ds(x_t) = s_\phi(x_t) - s_\psi(x_t)$ for the score gap
# (teacher minus student), as in chapter 4.
#
# **Diff-Instruct / VSD.** The reverse KL at one noise level is
# $\mathrm{KL}(q_\theta^\lambda \| p_\lambda) = \mathbb E_{z, \epsilon}\,[\log q_\theta^\lambda(x_t) - \log p_\lambda(x_t)]$ with
# $x_t = \alpha g_\theta(z) + \sigma \epsilon$. Its gradient has two parts: the path through $x_t$, and
# the explicit dependence of $\log q_\theta^\lambda$ on $\theta$, whose expectation
# $\mathbb E_{q_\theta^\lambda}[\nabla_\theta \log q_\theta^\lambda] = 0$ vanishes (the score-function identity). What
# is left, with the student score standing in for $\nabla \log q_\theta^\lambda$, is
#
# $$\nabla_\theta \mathcal L_{\rm DI} = -\,\mathbb E\Big[ w\, \alpha\, ds(x_t)^\top \frac{\partial g_\theta(z)}{\partial \theta} \Big].$$
#
# **EMD with one step.** The E-step starts at the generator's joint sample $(\epsilon_0, z)$ and, in the
# reparametrised chain of chapter 4 with $z$ frozen, takes one step
#
# $$\epsilon_1 = \epsilon_0 + \gamma\,\big(\sigma\, ds(x_t^0) - \epsilon_0\big) + \sqrt{2\gamma}\, n .$$
#
# Full noise cancellation (our convention, chapter 4) keeps the record
# $\eta_1 = (1-\gamma)\,\eta_0 + \sqrt{2\gamma}\, n$ with $\eta_0 = \epsilon_0$ and hands the M-step
# $\tilde\epsilon = \epsilon_1 - \eta_1 = \gamma\, \sigma\, ds(x_t^0)$. The M-step regresses the generator onto
# the fixed target $x_t^1 = \alpha g(z) + \sigma \tilde \epsilon$ (generator detached):
#
# $$\mathcal L_{\rm EMD}(\theta) = \frac{w}{2\sigma^2} \big\| x_t^1 - \alpha g_\theta(z) \big\|^2, \qquad
#   \nabla_\theta \mathcal L_{\rm EMD} = -\frac{w\,\alpha}{\sigma^2}\,\big(\sigma \tilde\epsilon\big)^\top \frac{\partial g_\theta}{\partial \theta}
#   = -\,\gamma\, w\, \alpha\, ds(x_t^0)^\top \frac{\partial g_\theta}{\partial \theta} .$$
#
# At $\gamma = 1$ this is the DI gradient term by term, for every sample, not only in expectation.
# With other $\gamma$ it is $\gamma$ times the DI gradient. If only the *injected* noise is
# cancelled ($\eta_0 = 0$), the M-step sees $\tilde \epsilon = (1 - \gamma)\epsilon_0 + \gamma \sigma\, ds$, and the
# gradient gains the term $-(1-\gamma)\, (w \alpha / \sigma)\, \epsilon_0^\top \partial g / \partial \theta$, which has
# mean zero ($\epsilon_0$ is independent of $z$) but does not vanish on any one batch.

# %% [markdown]
# ## 2. The identity in code
#
# We write both gradients from scratch in a few lines, on a random generator and a random student
# score network facing the exact ring teacher, and compare them with each other and with the
# library's `emd_generator_loss` and `di_generator_loss` (same $z$, $\epsilon$, $\lambda$).

# %%
teacher = ring8()


def scratch_gradients(gen, student, z, eps, lam, gamma=1.0, weighting="sigma2"):
    """Generator gradients (flat) of EMD-1 (eps only, full cancellation) and of DI, from scratch."""
    a, s = VP.alpha_sigma(lam)
    a, s = a[:, None], s[:, None]                                          # (B, 1)
    w = s**2 if weighting == "sigma2" else torch.ones_like(s)
    x = gen(z)                                                             # (B, d), carries the graph
    x_t0 = a * x.detach() + s * eps
    with torch.no_grad():
        sds = student.eps(x_t0, lam) - teacher.eps(x_t0, lam)             # sigma ds = epshat_psi - epshat_phi
    # E-step: one Langevin step on eps, and the noise record started at eta_0 = eps_0
    n = torch.randn(eps.shape, generator=torch.Generator().manual_seed(0))
    eps1 = eps + gamma * (sds - eps) + math.sqrt(2 * gamma) * n
    eta1 = (1 - gamma) * eps + math.sqrt(2 * gamma) * n
    eps_tilde = eps1 - eta1
    # M-step: w ||x_t^1 - alpha g(z)||^2 / (2 sigma^2), target held fixed
    x_target = (a * x.detach() + s * eps_tilde).detach()
    loss_emd = (w * (x_target - a * x) ** 2 / (2 * s**2)).sum(1).mean()
    # DI: a surrogate whose gradient is -w alpha ds^T dg/dtheta (ds = sds / sigma)
    loss_di = -(w * a * (sds / s) * x).sum(1).mean()
    return sweep.flat_grad(loss_emd, gen, retain_graph=True), sweep.flat_grad(loss_di, gen)


def library_gradients(gen, student, z, eps, lam, gamma=1.0, weighting="sigma2"):
    lcfg = LangevinConfig(K=1, space="eps", move_z=False, gamma_eps=gamma, cancel="full")
    loss_emd, _ = emd_generator_loss(gen, teacher, student, z, eps, lam, lcfg, weighting,
                                     rng=torch.Generator().manual_seed(1))
    loss_di, _ = di_generator_loss(gen, teacher, student, z, eps, lam, weighting)
    return sweep.flat_grad(loss_emd, gen), sweep.flat_grad(loss_di, gen)


rows = []
for seed in range(5):
    torch.manual_seed(seed)
    gen = MLPGenerator(2, width=64, depth=2)
    student = NetworkTeacher(MLPScore(2, width=64, depth=2), VP, predicts="eps")
    g = torch.Generator().manual_seed(100 + seed)
    B = 256
    z, eps = torch.randn(B, 2, generator=g), torch.randn(B, 2, generator=g)
    lam = sample_lam(B, "uniform", -6.0, 6.0, generator=g)
    for weighting in ("sigma2", "one"):
        s_emd, s_di = scratch_gradients(gen, student, z, eps, lam, weighting=weighting)
        l_emd, l_di = library_gradients(gen, student, z, eps, lam, weighting=weighting)
        torch.testing.assert_close(s_emd, l_emd, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(s_di, l_di, rtol=1e-4, atol=1e-6)
        rows.append((seed, weighting, float((l_emd - l_di).abs().max()), float(l_di.abs().max()),
                     float((s_emd - s_di).abs().max())))

max_rel = max(r[2] / r[3] for r in rows)
assert max_rel < 1e-5, "the K = 1 identity should hold to float rounding"
glue("ch05_k1_gap", max(r[2] for r in rows), fmt=".1e")
glue("ch05_k1_rel", max_rel, fmt=".1e")
cols = ["net", "w(t)", "max|EMD - DI| (library)", "max|DI|", "max|EMD - DI| (scratch)"]
table(rows, cols, fmt={c: "{:.2e}" for c in cols[2:]},
      title="K = 1, gamma_eps = 1, full cancellation: gradients in the generator's parameters")

# %% [markdown]
# The two gradients agree to float rounding, for both weightings and every random network: the
# largest difference over all cases is {glue:text}`ch05_k1_gap`, and relative to the largest entry of
# the DI gradient it is at most {glue:text}`ch05_k1_rel`, the order of float32's precision
# (about $10^{-7}$). With $K = 1$, $\gamma_\epsilon = 1$ and full noise cancellation, EMD **is** Diff-Instruct. The library and the
# from-scratch lines agree too. The tests of the library check the same identity.

# %% [markdown]
# ## 3. Other step sizes
#
# With $\gamma \neq 1$ the derivation above predicts
#
# * full cancellation ($\eta_0 = \epsilon_0$): $\nabla \mathcal L_{\rm EMD} = \gamma\, \nabla \mathcal L_{\rm DI}$;
# * injected noise only ($\eta_0 = 0$): $\nabla \mathcal L_{\rm EMD} = \gamma\, \nabla \mathcal L_{\rm DI} + (1-\gamma)\, G_0$,
#   with $G_0 = -\mathbb E[(w\alpha/\sigma)\, \epsilon_0^\top \partial g/\partial\theta]$ on the batch.
#
# `emd_lib.experiments.ch05.k1_gradients` returns the three flat gradients on one batch; we
# check both predictions for several $\gamma$.

# %%
torch.manual_seed(0)
gen = MLPGenerator(2, width=64, depth=2)
student = NetworkTeacher(MLPScore(2, width=64, depth=2), VP, predicts="eps")
pred_rows = []
for gamma in (0.1, 0.3, 0.7, 1.0):
    for cancel in ("full", "injected"):
        gr = sweep.k1_gradients(teacher, gen, student, gamma=gamma, cancel=cancel, batch=256)
        pred = gamma * gr["di"] + ((1 - gamma) * gr["eps0"] if cancel == "injected" else 0.0)
        err = float((gr["emd"] - pred).abs().max())
        assert err < 1e-5 * float(gr["di"].abs().max()) + 1e-7
        pred_rows.append((gamma, cancel, err, float(gr["emd"].norm() / gr["di"].norm())))
table(pred_rows, ["gamma", "cancel", "max|EMD - prediction|", "|EMD| / |DI|"],
      fmt={"gamma": "{:.1f}", "max|EMD - prediction|": "{:.2e}", "|EMD| / |DI|": "{:.3f}"})

# %% [markdown]
# Both predictions hold to rounding. Two consequences are worth spelling out.
#
# **The factor $\gamma$ is invisible to Adam.** Adam divides each coordinate's update by a running
# root-mean-square of its gradient, so multiplying every gradient by the same $\gamma$ leaves the
# updates unchanged (up to Adam's $\epsilon$ and float rounding). EMD-1 at the book's default $\gamma_\epsilon = 0.3$
# with full cancellation therefore follows the same trajectory as DI when both see the same batches.
# We check it: the same random start, the same batches, 50 Adam steps each.

# %%
def adam_run(loss_fn, steps=50, seed=0):
    torch.manual_seed(seed)
    gen = MLPGenerator(2, width=64, depth=2)
    student = NetworkTeacher(MLPScore(2, width=64, depth=2), VP, predicts="eps")   # fixed random student
    opt = torch.optim.Adam(gen.parameters(), lr=2e-3, betas=(0.0, 0.999))
    g = torch.Generator().manual_seed(seed + 1)
    for _ in range(steps):
        z, eps = torch.randn(256, 2, generator=g), torch.randn(256, 2, generator=g)
        lam = sample_lam(256, "uniform", -6.0, 6.0, generator=g)
        loss, _ = loss_fn(gen, student, z, eps, lam)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return torch.cat([p.detach().flatten() for p in gen.parameters()])


lcfg_03 = LangevinConfig(K=1, gamma_eps=0.3, cancel="full")
th_di = adam_run(lambda gen, st, z, e, l: di_generator_loss(gen, teacher, st, z, e, l))
th_emd = adam_run(lambda gen, st, z, e, l: emd_generator_loss(gen, teacher, st, z, e, l, lcfg_03))
th_0 = adam_run(lambda gen, st, z, e, l: (0 * gen(z).sum(), {}), steps=0)
moved = float((th_di - th_0).abs().max())
gap_adam = float((th_emd - th_di).abs().max())
assert gap_adam < 1e-2 * moved
glue("ch05_adam_moved", moved, fmt=".3f")
glue("ch05_adam_gap", gap_adam, fmt=".1e")
glue("ch05_adam_pct", 100 * gap_adam / moved, fmt=".2f");

# %% [markdown]
# After 50 Adam steps the parameters have moved by up to {glue:text}`ch05_adam_moved`, and EMD-1
# ($\gamma = 0.3$, full cancellation) and DI differ by at most {glue:text}`ch05_adam_gap`, which is
# {glue:text}`ch05_adam_pct`% of that.
# So any gap between EMD-1 and DI in a training run is seed noise, or the gradient-norm clip of
# `DistillConfig` (`grad_clip`), which acts on the raw gradient and so sees the factor $\gamma$ (it
# clips DI's larger gradients more often).
#
# **The zero-mean term is noise.** With only the injected noise cancelled, the M-step receives
# $(1-\gamma)\epsilon_0$ on top of the drift. Its gradient $G_0$ has mean zero, so averaging over many
# batches removes it, but on one batch it can be larger than the signal. We measure both on
# the linear generator of chapter 3 with its exact student (so that the DI gradient is the exact
# reverse-KL gradient): per-batch norms, and the norm of the average over $R$ batches.

# %%
from emd_lib.em import LinearGenerator, exact_student, gaussian_teacher

m_lin, C_lin = torch.tensor([1.0, -0.5]), torch.tensor([[1.0, 0.6], [0.6, 0.8]])
teacher_lin = gaussian_teacher(m_lin, C_lin)
L_lin = torch.linalg.cholesky(C_lin)
R = fast_or(200, 50)
zero_mean_rows = []
for tau in (0.0, 0.9):
    # a generator on the path from a poor fit (tau = 0) towards the maximum-likelihood fit (tau = 1)
    A_tau = (1 - tau) * torch.tensor([[0.5, 0.0], [0.2, 0.4]]) + tau * L_lin
    b_tau = (1 - tau) * torch.tensor([0.3, 0.2]) + tau * m_lin
    gen_lin = LinearGenerator(A_tau, b_tau)
    st_lin = exact_student(A_tau, b_tau)
    G_di, G_0 = [], []
    for r in range(R):
        gr = sweep.k1_gradients(teacher_lin, gen_lin, st_lin, batch=256, gamma=0.3, cancel="injected", seed=r)
        G_di.append(gr["di"])
        G_0.append(gr["eps0"])
    G_di, G_0 = torch.stack(G_di), torch.stack(G_0)
    row = (tau, float(G_di.norm(dim=1).mean()), float(G_di.mean(0).norm()), float(G_0.norm(dim=1).mean()),
           float(G_0.mean(0).norm()))
    zero_mean_rows.append(row)
tau9 = zero_mean_rows[1]
assert tau9[4] < 0.3 * tau9[3]          # zero mean: the average shrinks
assert tau9[3] > tau9[1]                # and on one batch it dominates near the fit
fast_R = f"{R} batches; the full run uses 200"
glue("ch05_noise_ratio", tau9[3] / tau9[1], fmt=".1f", fast=fast_R)
glue("ch05_noise_shrink", tau9[3] / tau9[4], fmt=".0f", fast=fast_R)
glue("ch05_sqrt_R", math.sqrt(R), fmt=".0f", fast=fast_R)
table(zero_mean_rows, ["tau", "|G_DI| per batch", "|mean G_DI|", "|G_0| per batch", "|mean G_0|"],
      fmt={"tau": "{:.1f}", **{c: "{:.4f}" for c in ("|G_DI| per batch", "|mean G_DI|", "|G_0| per batch", "|mean G_0|")}})

# %% [markdown]
# The noise term does not shrink as the generator improves, while the DI gradient does (it is
# proportional to the score gap): near the fit ($\tau = 0.9$), the noise term is
# {glue:text}`ch05_noise_ratio` times the DI gradient on one batch, so a batch gradient is mostly noise.
# Its average over $R$ batches is {glue:text}`ch05_noise_shrink` times smaller, against
# $\sqrt{R}$ = {glue:text}`ch05_sqrt_R`: roughly the $1/\sqrt{R}$ of a zero-mean term. This is why the
# library cancels the initial noise as well (`cancel="full"`, chapter 4).

# %% [markdown]
# ## 4. $K$ as the knob: a picture with an exact student
#
# With more Langevin steps, full cancellation hands the M-step the accumulated drift
# $\tilde\epsilon = \sum_{k=0}^{K-1} (1-\gamma)^{K-1-k}\, \gamma\, \sigma\, ds(x_t^k)$: score gaps evaluated at points
# that have moved towards where the teacher puts more mass than the generator. At $K = 1$ this is
# the reverse KL of DI. As $K \to \infty$ a chain that moves $z$ as well samples $\rho$, and *without*
# noise cancellation its M-step then follows the forward KL (maximum likelihood, chapter 3), up to
# the small bias of a finite Langevin step. Noise cancellation keeps the gradient's mean only while
# $z$ is frozen, and biases it once $z$ moves (chapter 4, section 4.1, derives and measures this:
# at the library's default $z$ step, which the $(\epsilon, z)$ runs below use, a few percent of the
# gradient, even in the stationary limit); a chain with $z$ frozen samples a different law (below).
# The sweeps below measure what that bias does to a fit.
# How far along the path do practical $K$ get?
#
# A clean way to see it: a **linear** generator $g(z) = Az + b$ (a Gaussian family) fitted to the
# two-mode mixture of chapter 2, with the **exact** student $q_\theta^\lambda = \mathcal N(\alpha b, \alpha^2 AA^\top + \sigma^2 I)$
# rebuilt at every step, so that the E-step is the only difference between the methods. The
# forward-KL answer is known in closed form: moment matching (the mixture's mean and covariance,
# `emd_lib.divergences.mixture_moments`, chapter 2's forward-KL fit). `linear_knob` runs one fit; the sweep runs DI and
# EMD-$K$ for several $K$ and seeds. First a short live run, then the sweep's results.

# %%
from emd_lib.divergences import mixture_moments
from emd_lib.mixtures import bimodal

bi = bimodal()
m_fwd, C_fwd = mixture_moments(bi, torch.float64)
# check the moments against samples of the mixture
xs = bi.sample(200_000, generator=torch.Generator().manual_seed(0)).double()
torch.testing.assert_close(xs.mean(0), m_fwd, atol=0.01, rtol=0)
torch.testing.assert_close(torch.cov(xs.T), C_fwd, atol=0.02, rtol=0)
glue("ch05_fwd_mean", float(m_fwd[0]), fmt="+.2f")
glue("ch05_fwd_std", float(C_fwd[0, 0].sqrt()), fmt=".2f")

steps_live = fast_or(600, 80)
live = {lab: sweep.linear_knob(bi, lab, steps=steps_live, seed=0) for lab in ("DI", "EMD-4", "EMD-4 (eps, z)")}
table([(lab, r["b"][0], r["std"][0]) for lab, r in live.items()], ["method", "b_x", "std along the axis"],
      fmt={"b_x": "{:+.3f}", "std along the axis": "{:.3f}"}, title=f"live, {steps_live} steps, seed 0")

# %% [markdown]
# The forward-KL fit has mean {glue:text}`ch05_fwd_mean` and standard deviation {glue:text}`ch05_fwd_std`
# along the modes' axis; one mode alone has standard deviation 0.4. The stored sweeps:

# %%
lin, lin_z, lin_nc = (load_result(f"ch05_linear_bimodal{x}") for x in ("", "_z", "_z_nocancel"))
st = lin_nc["settings"]            # the first two files were made before the settings were recorded: the same defaults
print(f"{lin['steps']} steps, batch {st['batch']}, seeds {lin['seeds']}, lambda ~ U[{st['lam_min']:g}, {st['lam_max']:g}], "
      f"w = sigma^2, gamma_eps = {st['gamma_eps']}; full cancellation except the last file (cancel = {st['cancel']!r})")
nocancel = {f"{k}, no cancel": v for k, v in lin_nc["summary"].items()}
summ = {**lin["summary"], **lin_z["summary"], **nocancel}
fwd_std = lin["forward_kl_fit"]["std"][0]
di_std = summ["DI"]["std_mean"][0]
lin_table = table([(lab, f"{s['b_mean'][0]:+.3f} ± {s['b_std'][0]:.3f}", f"{s['std_mean'][0]:.3f} ± {s['std_std'][0]:.3f}")
                   for lab, s in summ.items()] + [("forward-KL fit", f"{lin['forward_kl_fit']['mean'][0]:+.3f}", f"{fwd_std:.3f}")],
                  ["method", "mean b_x", "std along the axis"], title="mean ± std over seeds")

K_e, std_e, err_e = sweep.k_curve(lin["summary"])
K_z, std_z, err_z = sweep.k_curve(lin_z["summary"])
K_n, std_n, err_n = sweep.k_curve(lin_nc["summary"])
way = lambda v: 100 * (v - di_std) / (fwd_std - di_std)          # noqa: E731  percent of the way DI -> forward KL
glue("ch05_way_best", way(max(std_e)), fmt=".0f")
glue("ch05_way_last", way(std_e[-1]), fmt=".0f")
glue("ch05_K_last", K_e[-1])
glue("ch05_way_z8", way(summ["EMD-8 (eps, z)"]["std_mean"][0]), fmt=".0f")
glue("ch05_way_z16", way(std_z[-1]), fmt=".0f")
glue("ch05_nc16_std", std_n[-1], fmt=".3f")
glue("ch05_nc16_sd", err_n[-1], fmt=".3f")
glue("ch05_lin_fwd_std", fwd_std, fmt=".3f")
display(lin_table)

fig, ax = plt.subplots(figsize=(5.8, 3.3))
ax.errorbar(K_e, std_e, yerr=err_e, fmt="o-", color=COLORS["emd"], capsize=3, label=r"EMD-K, $\epsilon$ only")
ax.errorbar(K_z, std_z, yerr=err_z, fmt="s-", color=COLORS["corrected"], capsize=3, label=r"EMD-K, $(\epsilon, z)$")
ax.errorbar(K_n, std_n, yerr=err_n, fmt="^--", color=COLORS["corrected"], alpha=0.6, capsize=3,
            label=r"EMD-K, $(\epsilon, z)$, no cancellation")
ax.axhline(di_std, color=COLORS["di"], ls="--", label="DI")
ax.axhline(fwd_std, color=COLORS["teacher"], ls=":", label="forward-KL fit")
ax.set_xscale("log", base=2), ax.set_xlabel("Langevin steps K"), ax.set_ylabel("fitted std along the modes' axis")
ax.set_title("linear generator, exact student, two modes")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# Three things show.
#
# * With $z$ frozen (the library's default chain), more Langevin steps do move the fit towards
#   covering, but only part of the way: at best {glue:text}`ch05_way_best`% of the way from DI's spread to
#   the forward-KL fit's, at $K = 16$. The curve flattens: doubling $K$ once more adds nothing
#   (EMD-{glue:text}`ch05_K_last` gets {glue:text}`ch05_way_last`% of the way). This is not a shortage of steps. A chain that moves only
#   $\epsilon$ has its own stationary law, $\rho(x_t \mid z)$ with $z$ held at its prior draw (chapter 4),
#   which is not $\rho$; its drift converges to that law's, not to the forward-KL gradient.
# * When $z$ moves too, the chain targets $\rho$ itself and the fit travels much further: $K = 8$ lands
#   close to the forward-KL spread ({glue:text}`ch05_way_z8`% of the way).
# * With full noise cancellation it is not exact: at $K = 16$ the joint chain overshoots the spread
#   ({glue:text}`ch05_way_z16`% of the way), and its mean stays further from the mixture's mean than DI's
#   does (table above). These runs
#   cancel the noise while $z$ moves, which biases the gradient (chapter 4, section 4.1). The
#   same sweep without cancellation (the dashed curve) climbs with $K$ and stops at the forward-KL
#   spread ({glue:text}`ch05_nc16_std` ± {glue:text}`ch05_nc16_sd` at $K = 16$ against
#   {glue:text}`ch05_lin_fwd_std`), within its seeds' spread, instead of passing it: the overshoot is the cancellation's
#   bias, not the short chain's. What cancellation buys is visible too: without it the seeds
#   disagree more (the error bars). The next cell measures the bias directly, as the gradient at the
#   forward-KL fit with and without cancellation.

# %%
import dataclasses

lab16 = "EMD-16 (eps, z)"
cfg16 = sweep.label_config(lab16).langevin
assert cfg16.move_z and cfg16.cancel == "full" and cfg16.K == 16     # what the sweep's (eps, z) runs used
assert cfg16.gamma_z == 0.1 and cfg16.z_precondition == "snr"       # the library's default z step
# the generator at the forward-KL fit: A A^T = C_fwd (diagonal here, so A[0, 0] is the std along the axis)
assert abs(float(C_fwd[0, 1])) < 1e-12
gen_fwd = LinearGenerator(torch.linalg.cholesky(C_fwd).float(), m_fwd.float())
student_fwd = exact_student(gen_fwd.A.detach(), gen_fwd.b.detach(), bi.schedule)
R_fwd, B_fwd = fast_or(32, 16), 4096
push = {"full": [], "none": []}      # -dL/dA[0, 0]: > 0 means a descent step widens the spread
for r in range(R_fwd):
    for cancel in push:
        g = torch.Generator().manual_seed(r)                            # the same random numbers for both
        z = torch.randn(B_fwd, 2, generator=g)
        e = torch.randn(B_fwd, 2, generator=g)
        lam = sample_lam(B_fwd, "uniform", -6.0, 6.0, generator=g)
        lcfg = dataclasses.replace(cfg16, cancel=cancel)
        loss, _ = emd_generator_loss(gen_fwd, bi, student_fwd, z, e, lam, lcfg, "sigma2", rng=g)
        (gA,) = torch.autograd.grad(loss, [gen_fwd.A])
        push[cancel].append(-float(gA[0, 0]))
P = {c: torch.tensor(v, dtype=torch.float64) for c, v in push.items()}
se = {c: float(v.std() / math.sqrt(R_fwd)) for c, v in P.items()}
diff = P["full"] - P["none"]
se_diff = float(diff.std() / math.sqrt(R_fwd))
assert float(P["full"].mean()) > 2 * se["full"]          # with cancellation the fit is pushed outwards
assert float(P["none"].mean()) < 2 * se["none"]          # without it, not (inwards or within noise)
assert float(diff.mean()) > 2 * se_diff
fast_push = f"{R_fwd} batches of {B_fwd}; the full run uses 32"
for c, v, e_ in (("full", P["full"], se["full"]), ("none", P["none"], se["none"]), ("diff", diff, se_diff)):
    glue(f"ch05_push_{c}", f"{float(v.mean()):+.4f} ± {e_:.4f}", fast=fast_push)

# %% [markdown]
# At the forward-KL fit the fully cancelled $K = 16$ gradient pushes the spread outwards,
# $-\partial L/\partial A_{00}$ = {glue:text}`ch05_push_full` (mean ± standard error over the batches; a
# positive value widens the spread), more than two of its standard errors, while the uncancelled
# gradient with the same random numbers does not ({glue:text}`ch05_push_none`; the difference,
# batch by batch, is {glue:text}`ch05_push_diff`).
# With this chain, then, the forward-KL fit is not where the cancelled gradient
# vanishes, and the gradient there points towards the overshoot that the sweep measured; the
# uncancelled sweep, whose gradient does vanish there, does not overshoot.
#
# So $K$ is the knob from mode seeking towards mode covering, but with $\epsilon$ alone it saturates
# early; it turns fully only when the chain moves $z$ as well, and then noise cancellation trades
# the seeds' spread for a bias: keep it for the $\epsilon$-only chain, and weigh it when $z$ moves.
#

# %% [markdown]
# ### 4.1 What moving $z$ buys: leaving the mode $z$ maps to
#
# The sweeps above use $w = \sigma^2$. Chapter 2 shows that $w = 1$, which weights low noise
# as much as high, is where the reverse KL seeks modes hardest. The same linear generator and
# exact student under both weightings, from two starts, the narrow one above ($A = 0.5I$,
# $b = 0$) and the forward-KL fit itself, by three methods: Diff-Instruct, EMD-16 on
# $(\epsilon, -)$ with full cancellation (the library's default chain), and EMD-16 on
# $(\epsilon, z)$ without cancellation, with a plain $z$ step of 0.05 (no preconditioning):
#
#     python -m emd_lib experiment ch05 --sweep moving_z --seeds 0 1 2
#
# One cell, rerun live and compared with the stored run:

# %%
mz = load_result("ch05_linear_moving_z")
cell = dict(method="DI", weighting="one", start="fit", seed=0)
live_mz = sweep.moving_z_run(bi, cell["method"], cell["weighting"], cell["start"], cell["seed"], steps=mz["steps"])
stored_mz = next(r for r in mz["runs"] if all(r[k] == v for k, v in cell.items()))
assert abs(live_mz["std"][0] - stored_mz["std"][0]) < 0.03 and abs(live_mz["b"][0] - stored_mz["b"][0]) < 0.03
glue("ch05_mz_live", f"{live_mz['b'][0]:+.3f} and {live_mz['std'][0]:.3f}")
glue("ch05_mz_stored", f"{stored_mz['b'][0]:+.3f} and {stored_mz['std'][0]:.3f}")

fit_b, fit_std = mz["forward_kl_fit"]["mean"][0], mz["forward_kl_fit"]["std"][0]
MZ, mz_rows = {}, []
for w in ("one", "sigma2"):
    for st in ("narrow", "fit"):
        for m in mz["methods"]:
            rs = sorted([r for r in mz["runs"] if (r["weighting"], r["start"], r["method"]) == (w, st, m)],
                        key=lambda r: r["seed"])
            b = np.array([r["b"][0] for r in rs])
            sd = np.array([r["std"][0] for r in rs])
            MZ[(w, st, m)] = (b.mean(), b.std(), sd.mean(), sd.std(), len(rs))
            mz_rows.append((w, st, m, f"{b.mean():+.3f} ± {b.std():.3f}", f"{sd.mean():.3f} ± {sd.std():.3f}",
                            ", ".join(f"{v:.2f}" for v in sd)))
EPS_, Z_ = "EMD-16 (eps, -)", "EMD-16 (eps, z), no cancel"
starts_ = ("narrow", "fit")
glue("ch05_mz_di_b", max((MZ[("one", st, "DI")][0] for st in starts_), key=lambda v: abs(v + 1.5)), fmt="+.2f")
glue("ch05_mz_di_sd", max(MZ[("one", st, "DI")][2] for st in starts_), fmt=".2f")
glue("ch05_mz_fit_std", fit_std, fmt=".2f")
glue("ch05_mz_eps_wider", max(MZ[("one", st, EPS_)][2] - MZ[("one", st, "DI")][2] for st in starts_), fmt=".3f")
glue("ch05_mz_z_wider", max(MZ[("one", st, Z_)][2] - fit_std for st in starts_), fmt=".2f")
glue("ch05_mz_z_b", max(abs(MZ[("one", st, Z_)][0] - fit_b) for st in starts_), fmt=".2f")
glue("ch05_mz_s2_z", max(abs(MZ[("sigma2", st, Z_)][2] - fit_std) for st in starts_), fmt=".3f")
table(mz_rows + [("", "", "forward-KL fit", f"{fit_b:+.3f}", f"{fit_std:.3f}", "")],
      ["w", "start", "method", "mean b_x", "std along the axis", "per seed (std)"], title="mean ± std over seeds")

# %% [markdown]
# The live rerun of one cell (Diff-Instruct, $w = 1$, from the fit, seed 0) ends with $b_x$ and spread
# {glue:text}`ch05_mz_live`, the stored run with {glue:text}`ch05_mz_stored`.
#
# Under $w = 1$ Diff-Instruct collapses the Gaussian onto the heavy mode from *both* starts, the
# forward-KL fit included: its mean ends at {glue:text}`ch05_mz_di_b` (the heavy mode sits at $-1.5$) and
# its spread at {glue:text}`ch05_mz_di_sd`, about one mode's width (0.4), against the fit's
# {glue:text}`ch05_mz_fit_std`. EMD-16 on $(\epsilon, -)$ does nearly the same: its spread ends at most
# {glue:text}`ch05_mz_eps_wider` wider than Diff-Instruct's, so sixteen Langevin steps with $z$ frozen
# buy almost nothing. EMD-16 on $(\epsilon, z)$ without cancellation ends a little wider than the forward-KL
# fit (by at most {glue:text}`ch05_mz_z_wider`) from both starts, its mean within {glue:text}`ch05_mz_z_b`
# of the fit's: it keeps both modes. Under $w = \sigma^2$ nothing collapses and the three line up in the
# order of section 4: Diff-Instruct narrowest, $(\epsilon, -)$ a little wider, $(\epsilon, z)$ within
# {glue:text}`ch05_mz_s2_z` of the fit.
#
# Why the $(\epsilon, -)$ chain follows Diff-Instruct here: with $z$ frozen, the chain for a
# given $z$ samples $\rho(x_t \mid z) \propto p_\lambda(x_t)\, \mathcal N(x_t; \alpha g(z), \sigma^2 I)$, and at low
# noise the second factor keeps $x_t$ within a few $\sigma$ of $\alpha g(z)$: the M-step's target for
# $g(z)$ stays in the mode that $z$ already maps to, and each latent is pulled to the middle of
# its own mode. A linear map can do that only by shrinking, which is Diff-Instruct's pull too.
# When $z$ moves, the target is handed to the latent $z^K$ that explains it, so the regression
# need not shrink the map. The next cell measures both halves at the forward-KL fit under
# $w = 1$: how often a chain's $x_t$ ends on the other side of the midpoint between the modes
# than it started (at $\lambda = 2$, where $\sigma/\alpha = 0.37$ against modes 3 apart), and the
# gradient on the spread, $-\partial L/\partial A_{00}$, for the three methods with the same random numbers.

# %%
from emd_lib.langevin import estep  # noqa: E402

from emd_lib.schedules import bcast  # noqa: E402

chains_mz = {m: sweep.label_config(lab, langevin={"gamma_eps": mz["settings"]["gamma_eps"], **lang}).langevin
             for m, (lab, lang) in sweep.MOVING_Z.items() if m != "DI"}
B_mz, R_mz = 4096, fast_or(16, 8)
g = torch.Generator().manual_seed(0)
z = torch.randn(B_mz, 2, generator=g)
e = torch.randn(B_mz, 2, generator=g)
lam2 = torch.full((B_mz,), 2.0)
a2, s2 = (bcast(v, z) for v in bi.schedule.alpha_sigma(lam2))
assert abs(float(s2[0, 0] / a2[0, 0]) - 0.37) < 0.005 and float(bi.means[1, 0] - bi.means[0, 0]) == 3.0   # the text's numbers
x_start = a2 * gen_fwd(z).detach() + s2 * e
cross = {}
for m, lcfg in chains_mz.items():
    res = estep(gen_fwd, bi, student_fwd, z, e, lam2, lcfg, rng=torch.Generator().manual_seed(1))
    with torch.no_grad():
        x_end = a2 * gen_fwd(res.z_chain) + s2 * res.eps_chain
    mid = float(bi.means[:, 0].mean())                                     # the midpoint between the modes
    cross[m] = float(((x_end[:, 0] / a2[:, 0] > mid) != (x_start[:, 0] / a2[:, 0] > mid)).float().mean())
push_mz = {m: [] for m in sweep.MOVING_Z}
for r in range(R_mz):
    for m in push_mz:
        g = torch.Generator().manual_seed(r)                                # the same random numbers for all three
        z = torch.randn(B_mz, 2, generator=g)
        e = torch.randn(B_mz, 2, generator=g)
        lam = sample_lam(B_mz, "uniform", -6.0, 6.0, generator=g)
        if m == "DI":
            loss, _ = di_generator_loss(gen_fwd, bi, student_fwd, z, e, lam, "one")
        else:
            loss, _ = emd_generator_loss(gen_fwd, bi, student_fwd, z, e, lam, chains_mz[m], "one", rng=g)
        (gA,) = torch.autograd.grad(loss, [gen_fwd.A])
        push_mz[m].append(-float(gA[0, 0]))
PM = {m: (float(np.mean(v)), float(np.std(v, ddof=1) / math.sqrt(R_mz))) for m, v in push_mz.items()}
assert cross[EPS_] < 0.1 and cross[Z_] < 2 * cross[EPS_]      # the frozen-z chain stays on its side
assert PM[EPS_][0] < -2 * PM[EPS_][1] and PM[EPS_][0] < 0.7 * PM["DI"][0]     # it pulls inwards, most of DI's pull
assert abs(PM[Z_][0]) < 0.25 * abs(PM["DI"][0])                              # moving z: hardly any pull at the fit
assert abs(PM[Z_][0]) < 2 * PM[Z_][1]                                        # within its standard error
glue("ch05_cross_eps", cross[EPS_], fmt=".1%")
glue("ch05_cross_z", cross[Z_], fmt=".1%")
fast_mz = f"{R_mz} batches of {B_mz}; the full run uses 16"
glue("ch05_pull_eps", PM[EPS_][0] / PM["DI"][0], fmt=".0%", fast=fast_mz)
glue("ch05_pull_z", abs(PM[Z_][0]) / abs(PM["DI"][0]), fmt=".0%", fast=fast_mz)
table([(m, f"{100 * cross[m]:.1f}%" if m in cross else "", f"{v:+.4f} ± {se_:.4f}") for m, (v, se_) in PM.items()],
      ["method", "chains across the midpoint (lambda = 2)", "-dL/dA[0,0] at the fit (w = 1)"],
      title=f"at the forward-KL fit: {B_mz} chains; the gradient over {R_mz} batches of {B_mz} (< 0 shrinks the spread)")

# %% [markdown]
# Only {glue:text}`ch05_cross_eps` of the $(\epsilon, -)$ chains end on the other side of the midpoint at
# $\lambda = 2$: with $z$ frozen, the target stays in the mode that $z$ already maps to. At the forward-KL
# fit, the $(\epsilon, -)$ gradient pulls the spread inwards with most of Diff-Instruct's force
# ({glue:text}`ch05_pull_eps` of it), so the fit is no resting point for either, and both walk to the
# collapse the table shows. The $(\epsilon, z)$ gradient without cancellation is
# {glue:text}`ch05_pull_z` of Diff-Instruct's, within two of its standard errors of zero, and the fit is
# where that run stays. Yet its chains cross the midpoint less than twice as often
# ({glue:text}`ch05_cross_z`); what changes is the latent the M-step pairs with each target: $z^K$, which
# the chain has moved towards explaining it, instead of the prior draw $z$. That is what moving $z$
# buys here.

# %% [markdown]
# ## 5. $K$ with networks on 25 narrow modes
#
# Now the real setting: MLP generator and student, the $5 \times 5$ grid of narrow modes (equal
# weights, standard deviation 0.05: many narrow modes is where mode seeking should show), DI and
# EMD-$K$ for $K = 1, 2, 4, 8, 16$ at an equal number of generator steps, three seeds. Within a seed
# every method starts from the same initialised generator and warmed-up student
# (`emd_lib.experiments.ch05.prepare`). First a tiny live version of a run, to show the code path:

# %%
mini = {}
for lab in ("DI", "EMD-4"):
    cfg_mini = sweep.label_config(lab, seed=0, steps=fast_or(200, 20), batch=fast_or(256, 128),
                                  init_steps=fast_or(400, 60), student_warmup=fast_or(300, 40))
    mini[lab] = sweep.run_one(grid25(), cfg_mini, n_eval=fast_or(2000, 500), eval_every=fast_or(100, 10))
table([(lab, r["metrics"]["tv"], r["metrics"]["mmd"], r["metrics"]["recall"], f"{r['metrics']['modes_covered']}/25",
        r["seconds"]) for lab, r in mini.items()], ["method", "TV", "MMD", "recall", "modes", "seconds"],
      fmt={"TV": "{:.3f}", "MMD": "{:.4f}", "recall": "{:.2f}", "seconds": "{:.0f}"},
      title=f"live, {cfg_mini.steps} generator steps, seed 0")

# %%
ks, ks_z = load_result("ch05_ksweep_grid25"), load_result("ch05_ksweep_grid25_z")
S = {**ks["summary"], **ks_z["summary"]}
# each file times its methods round-robin with DI; rescale the second file's times by the two DI times
T = dict(ks["timing"])
for lab in ks_z["labels"]:
    T[lab] = {"median": ks_z["timing"][lab]["median"] * ks["timing"]["DI"]["median"] / ks_z["timing"]["DI"]["median"]}
ks["labels"] = ks["labels"] + ks_z["labels"]
ks["runs"] = {**ks["runs"], **ks_z["runs"]}
table([(lab, sweep.pm(S[lab], "tv", ".3f"), sweep.pm(S[lab], "mmd", ".4f"), sweep.pm(S[lab], "recall", ".2f"),
        sweep.pm(S[lab], "precision", ".2f"), S[lab]["modes_covered"]["mean"], 1e3 * T[lab]["median"])
       for lab in ks["labels"]],
      ["method", "TV", "MMD", "recall", "precision", "modes", "ms/step"], fmt={"modes": "{:.1f}", "ms/step": "{:.1f}"},
      title=f"{ks['mixture']}, {ks['steps']} generator steps, seeds {ks['seeds']} (mean ± std over seeds)")

# %%
tv_mean = {lab: S[lab]["tv"]["mean"] for lab in ks["labels"]}
near = {lab: S[lab]["within_3sd"]["mean"] for lab in ks["labels"]}
glue("ch05_near_min", min(near.values()), fmt=".0%")
glue("ch05_near_max", max(near.values()), fmt=".0%")
glue("ch05_tv_gap", max(tv_mean.values()) - min(tv_mean.values()), fmt=".3f")
glue("ch05_tv_spread", float(np.mean([S[lab]["tv"]["std"] for lab in ks["labels"]])), fmt=".3f")
cost_16 = T["EMD-16"]["median"] / T["DI"]["median"]
cost_z = T["EMD-8 (eps, z)"]["median"] / T["EMD-8"]["median"]
glue("ch05_cost_16", cost_16, fmt=".1f")
glue("ch05_cost_z", cost_z, fmt=".1f")
# a run's wall time is made of whole steps: the student-score updates (2 per step, the same for every
# method) and the generator step. Timed here, round-robin, on this machine, for the time axis below.
assert sweep.label_config("DI").student_updates == 2
TW = sweep.time_per_step(grid25(), ks["labels"], steps=fast_or(5, 2), reps=fast_or(5, 3), whole=True)
whole_16 = TW["EMD-16"]["median"] / TW["DI"]["median"]
glue("ch05_whole_16", whole_16, fmt=".1f", fast=f"{fast_or(5, 3)} rounds of {fast_or(5, 2)} steps; the full run uses 5 of 5")
assert 1 < whole_16 and (is_fast() or whole_16 < cost_16)   # the student updates shrink the ratio (timed
                                                             # too briefly in fast mode to check)

fig, axes = plt.subplots(1, 3, figsize=(13, 3.3))
Ks = [int(lab.split("-")[1]) for lab in ks["labels"] if lab != "DI" and "z" not in lab]
for ax, key, name in ((axes[0], "tv", "mode-mass TV"), (axes[1], "recall", "recall")):
    y = [S[f"EMD-{k}"][key]["mean"] for k in Ks]
    e = [S[f"EMD-{k}"][key]["std"] for k in Ks]
    ax.errorbar(Ks, y, yerr=e, fmt="o-", color=COLORS["emd"], capsize=3, label="EMD-K")
    for r in S["DI"][key]["values"]:
        ax.axhline(r, color=COLORS["di"], alpha=0.25, lw=1)
    ax.axhline(S["DI"][key]["mean"], color=COLORS["di"], ls="--", label="DI (mean; thin: seeds)")
    zl = "EMD-8 (eps, z)"
    ax.errorbar([8], [S[zl][key]["mean"]], yerr=[S[zl][key]["std"]], fmt="s", color=COLORS["corrected"], capsize=3,
                label=zl)
    ax.set_xscale("log", base=2), ax.set_xlabel("Langevin steps K"), ax.set_title(f"{name} after {ks['steps']} steps")
    ax.legend()
# quality against wall time: the training curves, with the x axis scaled by each method's cost per step
cmap = plt.get_cmap("Blues")
for i, lab in enumerate(ks["labels"]):
    rs = ks["runs"][lab]
    steps_ = np.array(rs[0]["curves"]["step"])
    tv = np.array([r["curves"]["tv"] for r in rs]).mean(0)
    c = COLORS["di"] if lab == "DI" else COLORS["corrected"] if "z" in lab else cmap(0.35 + 0.65 * i / len(ks["labels"]))
    axes[2].plot(steps_ * TW[lab]["median"], tv, "o-", color=c, label=lab, ms=3)
axes[2].set_yscale("log")
axes[2].set_xlabel("seconds (whole-step cost x steps)"), axes[2].set_ylabel("mode-mass TV (mean of seeds)")
axes[2].set_title("quality against time")
axes[2].legend(ncol=2, fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# At equal generator steps the methods are hard to tell apart on this target. After 400 steps no
# method is near converged: only {glue:text}`ch05_near_min` to {glue:text}`ch05_near_max`
# of the samples lie within 3 sd of a mode, the rest blur the grid. "All 25 modes covered" in the
# table therefore says little here: the count gives each sample to its nearest mode however far
# it lies, so a blur lends every mode mass (`emd_lib.metrics.mixture_report` now also counts
# `modes_hit`, from the samples that land on modes only; these sweeps predate it). Every EMD
# variant's mean TV lies within two seed-standard-deviations of DI's: the seeds' spread (a
# standard deviation of {glue:text}`ch05_tv_spread` on average) is comparable to the differences between
# methods (the best and the worst mean TV lie {glue:text}`ch05_tv_gap` apart). The gradient clip never
# acted, so EMD-1 and DI differ only in their random draws, as section 3 predicts: after the shared
# start, EMD-1's chain consumes random numbers, so the two runs see different batches. The joint
# chain, EMD-8 $(\epsilon, z)$, is no different in quality either, at a higher cost per step
# ({glue:text}`ch05_cost_z` times EMD-8's generator step).
#
# What $K$ certainly changes is the cost, timed round-robin against DI (the table's last column).
# EMD-16's generator step costs {glue:text}`ch05_cost_16` times DI's. The right panel's time axis
# counts whole steps, the two student-score updates of every step included, since those are part of
# every run's wall time; they cost the same for every method, so the ratio shrinks: EMD-16's whole
# step costs {glue:text}`ch05_whole_16` times DI's (timed in the cell above, on this machine), and the
# panel's EMD-16 curve is stretched by that factor against DI's. With an expressive generator and
# noise levels spread over $[-6, 6]$, the reverse KL's mode seeking hardly bites on these toys
# (chapter 2 looks for where it does), so the knob of section 4 has little to fix here.
#
# ## Summary
#
# You can now:
#
# * prove, and check to float rounding, that EMD with one Langevin step on $\epsilon$, $\gamma_\epsilon = 1$ and full
#   noise cancellation has exactly the Diff-Instruct / VSD gradient $-w\alpha\, ds^\top \partial g/\partial\theta$;
# * predict what other step sizes do ($\gamma$ times that gradient, which Adam undoes, so EMD-1 trains like
#   DI) and why cancelling only the injected noise leaves a zero-mean term $(1-\gamma)\epsilon_0$ that
#   dominates single batches near the fit;
# * use $K$ as the knob from the reverse KL towards maximum likelihood, knowing where it stops: with
#   $\epsilon$ alone it saturates part of the way, a chain that also moves $z$ reaches the forward-KL spread,
#   and with $z$ moving, noise cancellation biases the fit (chapter 4, section 4.1: it overshoots);
# * explain a collapse under $w = 1$: with $z$ frozen each target stays in the mode its $z$ maps to, so
#   DI and EMD on $(\epsilon, -)$ collapse even from the forward-KL fit, and only the joint chain does not;
# * weigh $K$ against its cost: a step of EMD-$K$ makes about $K$ teacher and student evaluations, and on
#   25 narrow modes at equal steps DI and EMD-$K$ stayed within the seeds' spread of each other.

# %% [markdown]
# ## Exercise 5.1: the EMD generator loss
#
# Put the E-step and the M-step together for a network generator. Write
# `emd_loss(generator, teacher, student, z, eps, lam, K, gamma, cancel, noises)`: $K$ Langevin
# steps on $\epsilon$ with $z$ frozen, step `gamma`, the injected noise of step $k$ given as
# `noises[k]`, the noise record of chapter 4 for `cancel` in `"none"`, `"injected"`, `"full"`;
# then the M-step loss $w\,\|x_t^K - \alpha g_\theta(z)\|^2 / (2\sigma^2)$, $w = \sigma^2$, mean over the
# batch, with the E-step's $x_t^K$ held fixed, so that the loss's gradient is the M-step's. The
# check compares the loss and its gradient in the generator's weights with ours for $K = 3$ and
# $K = 1$ and each `cancel`; `emd_lib.distill` and `emd_lib.langevin` refuse to run inside your answer.

# %%
import math

import torch
from emd_lib.exercises import check


def emd_loss(generator, teacher, student, z, eps, lam, K, gamma, cancel, noises):
    ### BEGIN SOLUTION
    alpha, sigma = teacher.schedule.alpha_sigma(lam)
    a, s = alpha[:, None], sigma[:, None]
    x = generator(z)                                                   # (B, d), carries the graph
    with torch.no_grad():                                              # E-step: theta and z frozen
        u = eps.clone()
        eta = eps.clone() if cancel == "full" else torch.zeros_like(eps)
        for k in range(K):
            sds = student.eps(a * x + s * u, lam) - teacher.eps(a * x + s * u, lam)
            u = u + gamma * (sds - u) + math.sqrt(2 * gamma) * noises[k]
            eta = (1 - gamma) * eta + math.sqrt(2 * gamma) * noises[k]
        x_target = a * x + s * (u if cancel == "none" else u - eta)    # x_t^K, held fixed
    return (s**2 * (x_target - a * x) ** 2 / (2 * s**2)).sum(1).mean()
    ### END SOLUTION


check("5.1", emd_loss)

# %% [markdown]
# ## Exercise 5.2: the $K = 1$ identity, and what breaks it, with your own losses
#
# Verify this chapter's identity with nothing of the library's, and find what the initial noise
# adds when it is not cancelled. Write
# `k1_gradients(generator, teacher, student, z, eps, lam, gamma, n, cancel)` returning the flat
# gradients in the generator's weights of your EMD loss (exercise 5.1, $K = 1$, step `gamma`, the
# given `cancel`, injected noise `n`) and of your Diff-Instruct surrogate (exercise 2.3), $w = \sigma^2$
# for both. The cell is graded on its own, so bring both losses into it. The check compares each
# gradient with ours, for `cancel="full"` and `"injected"`, and then tests the identity on your two
# numbers: EMD-1 minus `gamma` times Diff-Instruct must vanish with full cancellation. With
# injected-only cancellation it does not: derive what is left (section 3 and exercise 5.3 help).

# %%
import math

import torch
from emd_lib.exercises import check


def k1_gradients(generator, teacher, student, z, eps, lam, gamma, n, cancel):
    ### BEGIN SOLUTION
    alpha, sigma = teacher.schedule.alpha_sigma(lam)
    a, s = alpha[:, None], sigma[:, None]

    def emd_loss():                                                  # exercise 5.1 with K = 1
        x = generator(z)
        with torch.no_grad():
            u = eps + gamma * (student.eps(a * x + s * eps, lam) - teacher.eps(a * x + s * eps, lam) - eps) \
                + math.sqrt(2 * gamma) * n
            eta = (1 - gamma) * (eps if cancel == "full" else torch.zeros_like(eps)) + math.sqrt(2 * gamma) * n
            x_target = a * x + s * (u if cancel == "none" else u - eta)
        return (s**2 * (x_target - a * x) ** 2 / (2 * s**2)).sum(1).mean()

    def di_loss():                                                   # exercise 2.3
        x = generator(z)
        x_t = a * x.detach() + s * eps
        with torch.no_grad():
            gap = (student.eps(x_t, lam) - teacher.eps(x_t, lam)) / s
        return -(s**2 * a * gap * x).sum(1).mean()

    params = list(generator.parameters())

    def flat(loss):
        return torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)])

    return flat(emd_loss()), flat(di_loss())
    ### END SOLUTION


check("5.2", k1_gradients)

# %% [markdown]
# ## Exercise 5.3: the zero-mean term
#
# With only the injected noise cancelled, EMD-1's M-step sees $\tilde\epsilon = (1-\gamma)\epsilon_0 + \gamma\sigma\, ds$.
# Return the flat gradient, with respect to `gen`'s parameters, of the part that comes from
# $\epsilon_0$ alone (without the factor $1-\gamma$), averaged over the batch, with $w = \sigma^2$: start from
# the M-step loss $w\|x_t - \alpha g_\theta(z)\|^2/(2\sigma^2)$ with $x_t - \alpha g = \sigma\tilde\epsilon$ held fixed. `lam` has
# shape `(B,)`; `teacher.schedule.alpha_sigma(lam)` gives $(\alpha, \sigma)$.

# %%
import torch

from emd_lib.exercises import check


def eps0_term(gen, teacher, z, eps0, lam):
    ### BEGIN SOLUTION
    alpha, sigma = teacher.schedule.alpha_sigma(lam)
    coef = (sigma**2 * alpha / sigma)[:, None]                     # w alpha / sigma with w = sigma^2
    surrogate = -(coef * eps0 * gen(z)).sum(dim=1).mean()
    grads = torch.autograd.grad(surrogate, list(gen.parameters()))
    return torch.cat([g.reshape(-1) for g in grads])
    ### END SOLUTION


check("5.3", eps0_term)

# %%
print(f"chapter run time: {time.perf_counter() - t_start:.0f} s")

# %% [markdown]
# ## Exercise 5.4: how many Langevin steps for a share of the score gap
#
# With full noise cancellation and a score gap that stays constant along the chain, the M-step of
# EMD-$K$ sees a fixed fraction of $\sigma\, ds$, which grows with $K$ toward all of it. Derive that
# fraction, and write `steps_for_share(gamma, f)`: the smallest whole $K$ for which it reaches `f`
# (with $0 < \gamma < 1$, $0 < f < 1$). How many steps does $\gamma_\epsilon = 0.3$ need for 90%?

# %%
import math

from emd_lib.exercises import check


def steps_for_share(gamma, f):
    ### BEGIN SOLUTION
    # the weights gamma (1 - gamma)^(K-1-k) add up to 1 - (1 - gamma)^K
    return math.ceil(math.log(1 - f) / math.log(1 - gamma))
    ### END SOLUTION


check("5.4", steps_for_share)
