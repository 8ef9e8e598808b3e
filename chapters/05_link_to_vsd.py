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
# generator trained on the *reverse* KL, $\mathrm{KL}(q_\theta^t \,\|\, p_t)$, which is mode seeking.
# Chapters 3 and 4 built EMD on the *forward* KL, $\mathrm{KL}(p_t \,\|\, q_\theta^t)$, which is
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
# * what $K$ does in practice on a 2D mixture with 25 narrow modes: quality and recall for
#   $K = 1, 2, 4, 8, 16$ and DI over several seeds at equal generator steps, and what each
#   step costs.

# %%
import json
import math
import time

import matplotlib.pyplot as plt
import numpy as np
import torch

import emd_lib
from emd_lib import DATA_DIR, fast_or
from emd_lib.distill import DistillConfig, Distiller, di_generator_loss, emd_generator_loss
from emd_lib.experiments import ch05 as sweep
from emd_lib.langevin import LangevinConfig, score_gap_eps
from emd_lib.mixtures import grid25, ring8
from emd_lib.nets import MLPGenerator, MLPScore
from emd_lib.plotting import COLORS, use_style
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
# $\mathrm{KL}(q_\theta^t \| p_t) = \mathbb E_{z, \epsilon}\,[\log q_\theta^t(x_t) - \log p_t(x_t)]$ with
# $x_t = \alpha g_\theta(z) + \sigma \epsilon$. Its gradient has two parts: the path through $x_t$, and
# the explicit dependence of $\log q_\theta^t$ on $\theta$, whose expectation
# $\mathbb E_{q_\theta^t}[\nabla_\theta \log q_\theta^t] = 0$ vanishes (the score-function identity). What
# is left, with the student score standing in for $\nabla \log q_\theta^t$, is
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


def scratch_gradients(gen, student, z, eps, lam, gamma=1.0, weighting="sigma2", seed=0):
    """Generator gradients (flat) of EMD-1 (eps only, full cancellation) and of DI, from scratch."""
    a, s = VP.alpha_sigma(lam)
    a, s = a[:, None], s[:, None]                                          # (B, 1)
    w = s**2 if weighting == "sigma2" else torch.ones_like(s)
    x = gen(z)                                                             # (B, d), carries the graph
    x_t0 = a * x.detach() + s * eps
    with torch.no_grad():
        sds = student.eps(x_t0, lam) - teacher.eps(x_t0, lam)             # sigma ds = epshat_psi - epshat_phi
    # E-step: one Langevin step on eps, and the noise record started at eta_0 = eps_0
    n = torch.randn(eps.shape, generator=torch.Generator().manual_seed(seed))
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

print("K = 1, gamma_eps = 1, full cancellation; gradients with respect to the generator's parameters")
print(f"{'net':>4} {'w(t)':>7} {'max|EMD - DI| (lib)':>20} {'max|DI|':>10} {'max|EMD - DI| (scratch)':>24}")
for r in rows:
    print(f"{r[0]:>4} {r[1]:>7} {r[2]:>20.2e} {r[3]:>10.2e} {r[4]:>24.2e}")
max_gap = max(r[2] for r in rows)
max_rel = max(r[2] / r[3] for r in rows)
print(f"largest difference over {len(rows)} cases: {max_gap:.2e} (relative to the gradient's size: {max_rel:.1e})")
assert max_rel < 1e-5, "the K = 1 identity should hold to float rounding"

# %% [markdown]
# The two gradients agree to float rounding (the relative difference printed above is a few
# units of float32 precision), for both weightings and every random network: with $K = 1$,
# $\gamma_\epsilon = 1$ and full noise cancellation, EMD **is** Diff-Instruct. The library and the
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
print(f"{'gamma':>6} {'cancel':>9} {'max|EMD - prediction|':>22} {'|EMD| / |DI|':>13}")
for gamma in (0.1, 0.3, 0.7, 1.0):
    for cancel in ("full", "injected"):
        gr = sweep.k1_gradients(teacher, gen, student, gamma=gamma, cancel=cancel, batch=256)
        pred = gamma * gr["di"] + ((1 - gamma) * gr["eps0"] if cancel == "injected" else 0.0)
        err = float((gr["emd"] - pred).abs().max())
        assert err < 1e-5 * float(gr["di"].abs().max()) + 1e-7
        print(f"{gamma:>6.1f} {cancel:>9} {err:>22.2e} {float(gr['emd'].norm() / gr['di'].norm()):>13.3f}")

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
print(f"after 50 Adam steps the parameters moved by up to {moved:.3e};")
print(f"EMD-1 (gamma = 0.3, full cancellation) and DI differ by at most {gap_adam:.2e} "
      f"({100 * gap_adam / moved:.2f}% of that)")
assert gap_adam < 1e-2 * moved

# %% [markdown]
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
print(f"{'tau':>5} {'|G_DI| per batch':>17} {'|mean G_DI|':>12} {'|G_0| per batch':>16} {'|mean G_0|':>11}")
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
    print(f"{row[0]:>5.1f} {row[1]:>17.4f} {row[2]:>12.4f} {row[3]:>16.4f} {row[4]:>11.4f}")
tau9 = zero_mean_rows[1]
print(f"near the fit (tau = 0.9) the noise term is {tau9[3] / tau9[1]:.1f} times the DI gradient per batch; "
      f"averaged over {R} batches it shrinks by {tau9[3] / tau9[4]:.0f}x (sqrt(R) = {math.sqrt(R):.0f})")
assert tau9[4] < 0.3 * tau9[3]          # zero mean: the average shrinks
assert tau9[3] > tau9[1]                # and on one batch it dominates near the fit

# %% [markdown]
# The noise term does not shrink as the generator improves, while the DI gradient does (it is
# proportional to the score gap): near the fit, a batch gradient is mostly noise. Its average
# over batches shrinks roughly like $1/\sqrt{R}$, as a zero-mean term should. This is why the
# library cancels the initial noise as well (`cancel="full"`, chapter 4).
