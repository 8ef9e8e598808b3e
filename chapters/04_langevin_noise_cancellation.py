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
# # Chapter 4: Langevin and noise cancellation
#
# Chapter 3 ended with an E-step that runs $K$ Langevin steps on the joint posterior
# $\rho(x_t, z) \propto p_\lambda(x_t)\, \mathcal N(x_t; \alpha g(z), \sigma^2 I)\, \mathcal N(z; 0, I) / q_\theta^\lambda(x_t)$,
# starting from the generator's own sample (the Langevin update itself is in chapter 3, section 6).
# This chapter is about how to run that chain well: in which coordinates, with which step sizes,
# which coordinates to move, and how to keep the chain's injected noise out of the generator's
# gradient. The ablations behind the choices (how stiff the $z$ direction is, where each chain
# leads EM, the four-way table of coordinates, which $z$ steps stay stable in training) are in
# the appendix, chapter 9.
#
# **What you will be able to do**
#
# * write the gradients of $\log \rho$ in $(x_t, z)$ and in the reparametrised $(\epsilon, z)$, and
#   convert one into the other;
# * choose a step size that works at every noise level, and say why a fixed step in $x$ cannot;
# * say what freezing $z$ does to the chain's target, and when moving $z$ is worth its cost;
# * cancel the chain's noise in the generator's gradient, and say when that keeps the gradient's
#   mean (with $z$ frozen) and when it biases it (with $z$ moving).
#
# Notation: $\lambda$ is the log-SNR (chapter 1); $ds = \nabla \log p_\lambda - \nabla \log q_\theta^\lambda$ the score
# gap; $\gamma_\epsilon$, $\gamma_x$, $\gamma_z$ the step sizes of the chain in each coordinate; $\eta$ the record
# of the chain's injected noise (section 4). The book's notation page (`docs/notation.md`) lists every symbol.

# %%
import math
import time

import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import display

from emd_lib import fast_or
from emd_lib.book import glue, table
from emd_lib.book.plotting import use_style
from emd_lib.distill import emd_generator_loss
from emd_lib.em import LinearGenerator, exact_student, frozen_z_moments, gaussian_kl, gaussian_teacher, rho_moments
from emd_lib.experiments import ch04 as sweeps
from emd_lib.experiments.ch05 import flat_grad
from emd_lib.langevin import LangevinConfig, estep, log_rho_grads, score_gap_eps
from emd_lib.schedules import VP

torch.set_num_threads(1)
use_style()
t_start = time.perf_counter()

# the linear-Gaussian pair of chapter 3: teacher N(m, C), generator g(z) = A z + b, exact student
m, C, A, b = sweeps.linear_pair()
teacher, gen, student = gaussian_teacher(m, C), LinearGenerator(A, b), exact_student(A, b)
level = sweeps.level                      # (alpha, sigma) of the VP schedule at log-SNR lam, as floats


# %% [markdown]
# ## 1. One target, two coordinate systems
#
# Write $ds(x_t) = \nabla \log p_\lambda(x_t) - \nabla \log q_\theta^\lambda(x_t)$ for the score gap (teacher minus
# student) and $J = \partial g / \partial z$. In $(x_t, z)$:
#
# $$\nabla_{x_t} \log \rho = ds(x_t) - \frac{x_t - \alpha g(z)}{\sigma^2}, \qquad
#   \nabla_z \log \rho = \frac{\alpha}{\sigma^2} J^\top \big(x_t - \alpha g(z)\big) - z .$$
#
# Reparametrise $x_t = \alpha g(z) + \sigma \epsilon$. The map $(\epsilon, z) \mapsto (x_t, z)$ has
# Jacobian determinant $\sigma^d$, a constant, so $\rho$ in the new coordinates is the same function
# up to a constant, and the chain rule gives
# $\nabla_\epsilon = \sigma \nabla_{x_t}$ and $\nabla_z^{(\epsilon)} = \nabla_z^{(x)} + \alpha J^\top \nabla_{x_t}$:
#
# $$\nabla_{\epsilon} \log \rho = \sigma\, ds(x_t) - \epsilon, \qquad
#   \nabla_z \log \rho = \alpha J^\top ds(x_t) - z .$$
#
# In $(\epsilon, z)$ both coordinates see a standard normal prior, and the *only* force is the
# score gap. When the student matches the teacher ($ds = 0$), the generator's own sample is
# already a sample of $\rho$ and the chain just diffuses around $\mathcal N(0, I)$. We write the
# four gradients from scratch for the linear generator ($J = A$) and check them against
# `emd_lib.langevin.log_rho_grads`.

# %%
lam1 = 1.0
a1, sig1 = level(lam1)
g = torch.Generator().manual_seed(0)
n = 6
z = torch.randn(n, 2, generator=g)
eps = torch.randn(n, 2, generator=g)
lam_b = torch.full((n,), lam1)
with torch.no_grad():
    x_t = a1 * gen(z) + sig1 * eps
    ds = teacher.score(x_t, lam_b) - student.score(x_t, lam_b)           # score gap, exact here

# (x, z) coordinates
gx = ds - (x_t - a1 * gen(z).detach()) / sig1**2
gz_x = (a1 / sig1**2) * (x_t - a1 * gen(z).detach()) @ A - z               # J^T v = A^T v, row-wise v @ A
# (eps, z) coordinates
ge = sig1 * ds - eps
gz_e = a1 * ds @ A - z

lib_gx, lib_gz_x = log_rho_grads(gen, teacher, student, z, lam_b, x_t=x_t)
lib_ge, lib_gz_e = log_rho_grads(gen, teacher, student, z, lam_b, eps=eps)
for mine, lib in ((gx, lib_gx), (gz_x, lib_gz_x), (ge, lib_ge), (gz_e, lib_gz_e)):
    torch.testing.assert_close(mine, lib, rtol=1e-4, atol=1e-5)
# the chain rule between the two
torch.testing.assert_close(ge, sig1 * gx, rtol=1e-4, atol=1e-5)
torch.testing.assert_close(gz_e, gz_x + a1 * gx @ A, rtol=1e-4, atol=1e-5)
print("gradients in (x, z) and (eps, z): scratch = library, and related by the chain rule")


# %% [markdown]
# ## 2. Step sizes across noise levels
#
# One Langevin step (chapter 3, section 6; our convention): $u \leftarrow u + \gamma \nabla_u \log \rho + \sqrt{2\gamma}\, n$,
# $n \sim \mathcal N(0, I)$. Look at the linear part of each chain (the part that does not
# involve the score gap):
#
# * in $x$: the residual $x_t - \alpha g(z)$ is multiplied by $1 - \gamma_x / \sigma^2$ each step;
# * in $\epsilon$: $\epsilon$ is multiplied by $1 - \gamma_\epsilon$ each step, whatever the noise level.
#
# So an $x$-chain is stable only for $\gamma_x < 2\sigma^2$ and relaxes in about $\sigma^2/\gamma_x$ steps,
# while the $\epsilon$-chain relaxes in about $1/\gamma_\epsilon$ steps at every level. In fact, with
# $z$ frozen, the $x$-chain with the step $\gamma_x = \gamma_\epsilon \sigma^2$ *is* the $\epsilon$-chain
# (the library's default for `space="x"` when `gamma_x` is not given). A single $\gamma_x$ for all
# levels, which is what a chain in $x$ without that rescaling uses, cannot be right at both ends of
# the schedule: EMD draws $\lambda \in [-6, 6]$, so $\sigma^2$ spans $0.0025$ to $0.9975$.
#
# We write the frozen-$z$ chain in $x$ from scratch (so that we can watch it diverge: the library
# refuses steps with $|1 - \gamma_x/\sigma^2| > 1$), check it against the library, and check the
# equivalence with the $\epsilon$-chain.

# %%
def x_chain(gen, teacher, student, z, x_t, lam, gamma_x, K, rng):
    """K Langevin steps on x_t with z frozen; gamma_x a float or a per-sample tensor (B, 1)."""
    a, s = VP.alpha_sigma(lam)
    a, s = a[:, None], s[:, None]
    with torch.no_grad():
        mu = a * gen(z)
        for _ in range(K):
            # grad_x log rho = ds - (x_t - alpha g(z)) / sigma^2
            grad = (teacher.score(x_t, lam) - student.score(x_t, lam)) - (x_t - mu) / s**2
            x_t = x_t + gamma_x * grad + math.sqrt(2) * torch.as_tensor(gamma_x).sqrt() * torch.randn(
                x_t.shape, generator=rng)
    return x_t


B = 64
g = torch.Generator().manual_seed(1)
z, eps = torch.randn(B, 2, generator=g), torch.randn(B, 2, generator=g)
lam_b = torch.full((B,), lam1)
x0 = (a1 * gen(z) + sig1 * eps).detach()
mine = x_chain(gen, teacher, student, z, x0, lam_b, 0.05, K=10, rng=torch.Generator().manual_seed(5))
res = estep(gen, teacher, student, z, eps, lam_b, LangevinConfig(K=10, space="x", gamma_x=0.05, cancel="none"),
            rng=torch.Generator().manual_seed(5))
lib = a1 * gen(res.z_chain).detach() + sig1 * res.eps_chain
torch.testing.assert_close(mine, lib, rtol=1e-4, atol=1e-4)

# the x-chain with gamma_x = gamma_eps * sigma^2 is the eps-chain
res_x = estep(gen, teacher, student, z, eps, lam_b, LangevinConfig(K=10, space="x", gamma_eps=0.3, cancel="none"),
              rng=torch.Generator().manual_seed(5))
res_e = estep(gen, teacher, student, z, eps, lam_b, LangevinConfig(K=10, space="eps", gamma_eps=0.3, cancel="none"),
              rng=torch.Generator().manual_seed(5))
torch.testing.assert_close(res_x.eps_chain, res_e.eps_chain, rtol=1e-4, atol=1e-4)
print("x-chain: scratch = library; with gamma_x = gamma_eps sigma^2 it is the eps-chain")

# %% [markdown]
# Now the experiment. With $z$ frozen, the chain's target is $z \sim \mathcal N(0, I)$,
# $x_t \sim \rho(x_t \mid z)$, a Gaussian in closed form for the linear generator
# (`emd_lib.em.frozen_z_moments`). Run $K = 32$ steps (16 in fast mode) from the generator's
# joint sample at each noise level and measure the KL divergence from the chain's
# (Gaussian-fitted) samples of $(x_t, z)$ to that target. A good chain is near zero at every level; what remains for the
# $\epsilon$-chain is the discretisation bias of unadjusted Langevin at $\gamma_\epsilon = 0.3$.

# %%
lams = [-6.0, -4.0, -2.0, 0.0, 2.0, 4.0, 6.0]
K_chain = fast_or(32, 16)
B_chain = fast_or(4000, 1000)


def chain_kl(target_moments, z_chain, x_chain_):
    u = torch.cat([x_chain_, z_chain], 1).double()
    if not torch.isfinite(u).all() or u.abs().max() > 1e6:
        return math.inf
    return gaussian_kl(u.mean(0), torch.cov(u.T), *target_moments)


step_rows = {"start (K = 0)": None, "eps, gamma_eps = 0.3": ("eps", 0.3)}
step_rows.update({f"x, gamma_x = {gx:g}": ("x", gx) for gx in (1e-3, 1e-2, 1e-1)})
kl_frozen = {name: [] for name in step_rows}
for lam in lams:
    a_, sig_ = level(lam)
    g = torch.Generator().manual_seed(2)
    z, eps = torch.randn(B_chain, 2, generator=g), torch.randn(B_chain, 2, generator=g)
    lam_b = torch.full((B_chain,), lam)
    target = frozen_z_moments(A, b, m, C, a_, sig_)
    x0 = (a_ * gen(z) + sig_ * eps).detach()
    for name, spec in step_rows.items():
        rng = torch.Generator().manual_seed(3)
        if spec is None:
            xk = x0
        elif spec[0] == "eps":
            r = estep(gen, teacher, student, z, eps, lam_b, LangevinConfig(K=K_chain, gamma_eps=spec[1], cancel="none"),
                      rng=rng)
            xk = a_ * gen(z).detach() + sig_ * r.eps_chain
        else:
            xk = x_chain(gen, teacher, student, z, x0, lam_b, spec[1], K_chain, rng)
        kl_frozen[name].append(chain_kl(target, z, xk))

lam_cols = [f"λ = {l:+.0f}" for l in lams]
display(table([[name] + ["diverged" if not math.isfinite(v) else v for v in row] for name, row in kl_frozen.items()],
              ["chain"] + lam_cols, fmt="{:.4f}", title=f"KL(chain after K = {K_chain} steps || target), z frozen"))
FAST_KL = f"K = {K_chain} steps on {B_chain} samples; the full run uses 32 on 4000"
eps_row = kl_frozen["eps, gamma_eps = 0.3"]
i0 = lams.index(0.0)
big_div = [l for l, v in zip(lams, kl_frozen["x, gamma_x = 0.1"]) if not math.isfinite(v)]
small_x = kl_frozen["x, gamma_x = 0.001"][i0]
glue("ch04_x_div", " and ".join(f"{l:+.0f}" for l in big_div))
for key, v in (("eps_kl", max(eps_row)), ("x_small", small_x), ("start0", kl_frozen["start (K = 0)"][i0])):
    glue(f"ch04_{key}", v, fmt=".3f", fast=FAST_KL)
glue("ch04_eps_kl0", eps_row[i0], fmt=".4f", fast=FAST_KL)
assert max(eps_row) < 0.05                                   # the eps-chain is fine at every level
assert not math.isfinite(kl_frozen["x, gamma_x = 0.1"][-1])  # a large x step diverges at low noise
assert small_x > 5 * eps_row[i0]                             # a small x step has barely moved at lam = 0

# %% [markdown]
# The $\epsilon$-chain's KL stays at or below {glue:text}`ch04_eps_kl` at every level: it sits at its small
# discretisation bias over the whole range of $\sigma^2$ (a factor of 400 from $\lambda = -6$ to $6$). The
# $x$ step 0.1 diverged at $\lambda =$ {glue:text}`ch04_x_div`, and at $\lambda = 0$ the $x$ step 0.001 is at
# {glue:text}`ch04_x_small`, against {glue:text}`ch04_start0` at the start and {glue:text}`ch04_eps_kl0` for the
# $\epsilon$-chain. Every fixed $x$ step is either too small where the noise
# is large (the chain has not left its start) or unstable where the noise is small (the residual
# grows by $|1 - \gamma_x/\sigma^2|^K$). A step in $x$ must shrink with $\sigma^2$, and the
# reparametrisation does that for free.
#
# ## 3. Moving $z$, and what freezing it costs
#
# Freezing $z$ changes the target. The pair $(x_t, z)$ of a frozen-$z$ chain has $z \sim \mathcal N(0, I)$,
# whereas under $\rho$ the latent is the one that most plausibly produced a *teacher* sample. At
# high SNR, $z$ nearly determines $x_t$ ($x_t$ can only move by about $\sigma$ around $\alpha g(z)$),
# so a chain that keeps $z$ cannot carry a sample to the teacher at all. The exact KL between the
# frozen-$z$ target and $\rho$ shows how much that costs at each level, and chains that move $z$
# can close the gap, if their $z$ step suits the level.
#
# Two $z$ steps: the plain $\gamma_z$, and the library's `z_precondition="snr"`, which divides it by
# $1 + \alpha^2/\sigma^2 = 1 + e^{\lambda}$ (the curvature in $z$ of $-\log \mathcal N(x_t; \alpha g(z), \sigma^2 I)$
# plus the prior, for a unit Jacobian, with $x_t$ held fixed: the scale that keeps the $(x, z)$ chain
# stable). We run both $(\epsilon, z)$ variants, and the $(x, z)$ chain, against $\rho$.

# %%
chains_z = {
    "(eps, -)": LangevinConfig(K=K_chain, gamma_eps=0.3, cancel="none"),
    "(eps, z), gamma_z = 0.3, no preconditioning": LangevinConfig(K=K_chain, gamma_eps=0.3, move_z=True, gamma_z=0.3,
                                                                  z_precondition="none", cancel="none"),
    "(eps, z), gamma_z = 0.3 / (1 + SNR)": LangevinConfig(K=K_chain, gamma_eps=0.3, move_z=True, gamma_z=0.3,
                                                          z_precondition="snr", cancel="none"),
    "(x, z), gamma_x = 0.3 sigma^2, gamma_z = 0.3 / (1 + SNR)": LangevinConfig(
        K=K_chain, space="x", gamma_eps=0.3, move_z=True, gamma_z=0.3, z_precondition="snr", cancel="none"),
}
kl_rho = {"start (K = 0)": [], "frozen-z target (exact)": [], **{k: [] for k in chains_z}}
for lam in lams:
    a_, sig_ = level(lam)
    rho = rho_moments(A, b, m, C, a_, sig_)
    g = torch.Generator().manual_seed(2)
    z, eps = torch.randn(B_chain, 2, generator=g), torch.randn(B_chain, 2, generator=g)
    lam_b = torch.full((B_chain,), lam)
    kl_rho["start (K = 0)"].append(chain_kl(rho, z, (a_ * gen(z) + sig_ * eps).detach()))
    kl_rho["frozen-z target (exact)"].append(gaussian_kl(*frozen_z_moments(A, b, m, C, a_, sig_), *rho))
    for name, cfg in chains_z.items():
        r = estep(gen, teacher, student, z, eps, lam_b, cfg, rng=torch.Generator().manual_seed(3))
        kl_rho[name].append(chain_kl(rho, r.z_chain, (a_ * gen(r.z_chain) + sig_ * r.eps_chain).detach()))

display(table([[name] + row for name, row in kl_rho.items()], ["chain"] + lam_cols, fmt="{:.3f}",
              title=f"KL(chain after K = {K_chain} steps || rho)"))

fig, ax = plt.subplots(1, 2, figsize=(11, 3.8))
styles = ["k:", "o-", "s--", "^--", "v--"]
for (name, row), st in zip(kl_frozen.items(), styles):
    y = [v if math.isfinite(v) else np.nan for v in row]
    ax[0].semilogy(lams, y, st, label=name)
    bad = [l for l, v in zip(lams, row) if not math.isfinite(v)]
    if bad:
        ax[0].plot(bad, [2.0] * len(bad), "x", ms=9, mew=2, color=ax[0].lines[-1].get_color())
ax[0].set(ylim=(1e-3, 4), xlabel=r"log-SNR $\lambda$", ylabel="KL to the target",
          title=f"z frozen, K = {K_chain} (crosses at the top: diverged)"), ax[0].legend(fontsize=7)
styles = ["k:", "k-", "o-", "s-", "^--", "v--"]
for (name, row), st in zip(kl_rho.items(), styles):
    ax[1].semilogy(lams, row, st, label=name, alpha=0.5 if name.startswith("frozen") else 1.0)
ax[1].set(ylim=(1e-3, 5), xlabel=r"log-SNR $\lambda$", ylabel=r"KL to $\rho$", title=f"moving z, K = {K_chain}")
ax[1].legend(fontsize=7)
fig.tight_layout()
plt.show()

hi, i4 = lams.index(6.0), lams.index(4.0)
start_hi = kl_rho["start (K = 0)"][hi]
plain, snr_z = "(eps, z), gamma_z = 0.3, no preconditioning", "(eps, z), gamma_z = 0.3 / (1 + SNR)"
xz_name = "(x, z), gamma_x = 0.3 sigma^2, gamma_z = 0.3 / (1 + SNR)"
glue("ch04_frozen_hi", kl_rho["frozen-z target (exact)"][hi], fmt=".2f")       # exact: no sampling
glue("ch04_plain_max", max(kl_rho[plain]), fmt=".3f", fast=FAST_KL)
for key, v in (("start_hi", start_hi), ("snr_hi", kl_rho[snr_z][hi]), ("xz_hi", kl_rho[xz_name][hi])):
    glue(f"ch04_{key}", v, fmt=".2f", fast=FAST_KL)
assert kl_rho[plain][hi] < 0.1 * kl_rho["(eps, -)"][hi] and max(kl_rho[plain]) < 0.1  # a plain z step closes the gap
assert kl_rho[snr_z][hi] > 0.5 * start_hi                                    # the preconditioned z barely moves
assert kl_rho[xz_name][hi] > 0.95 * start_hi and kl_rho[xz_name][i4] > 0.75 * kl_rho["start (K = 0)"][i4]
assert kl_rho["frozen-z target (exact)"][hi] > 0.5 * start_hi                # freezing z costs most of the gap

# %% [markdown]
# At $\lambda = 6$ the chains start {glue:text}`ch04_start_hi` from $\rho$ and the frozen-$z$ target itself is
# {glue:text}`ch04_frozen_hi:.2f` from it: for this Gaussian pair a frozen $z$ leaves most of the gap open at high
# SNR. The $(\epsilon, z)$ chain with a plain $z$ step closes it: its KL to $\rho$ is at most
# {glue:text}`ch04_plain_max` at every level. The SNR-preconditioned $z$ step is so small at high
# SNR that $z$ hardly moves in $K$ steps, in $\epsilon$ ({glue:text}`ch04_snr_hi`) or in $x$
# ({glue:text}`ch04_xz_hi`): a stable step need not make a fast chain. Whether a plain $z$ step stays stable for a multimodal teacher,
# and how large it may be in training, is an ablation: the appendix (chapter 9, sections 1 and 4)
# measures the curvature of $-\log\rho$ in $z$, which grows with the SNR for a mixture, and the
# stable steps, and finds that with network generators moving $z$ did not beat the frozen-$z$
# chain in 2D. The library's default, and the chain of the rest of this chapter, is $(\epsilon, -)$.

# %% [markdown]
# ## 4. Noise cancellation
#
# The M-step regresses $\alpha g_\theta(z)$ onto $x_t^K = \alpha g(z^K) + \sigma \epsilon^K$. At the
# current $\theta$ its gradient is
#
# $$\nabla_\theta \frac{w\, \|x_t^K - \alpha g_\theta(z^K)\|^2}{2\sigma^2} = -\frac{w\,\alpha}{\sigma}\; (\epsilon^K)^\top \frac{\partial g_\theta(z^K)}{\partial \theta},$$
#
# *linear* in the chain's final $\epsilon$. Unroll the $\epsilon$-chain with $z$ frozen:
#
# $$\epsilon^K = \underbrace{(1-\gamma)^K \epsilon^0}_{\text{initial noise}}
#   + \underbrace{\sum_{k<K} (1-\gamma)^{K-1-k}\, \gamma\, \sigma\, ds_k}_{\text{drift}}
#   + \underbrace{\sum_{k<K} (1-\gamma)^{K-1-k} \sqrt{2\gamma}\, n_k}_{\text{injected noise}} .$$
#
# With $z$ frozen both noise terms are independent of $z$, so on average they add nothing to the
# gradient, only variance. The initial noise has mostly decayed after $K$ steps, its variance is
# $(1-\gamma)^{2K}$; the injected noise has a variance of order one,
# $2\gamma \sum_{k<K} (1-\gamma)^{2k} \to 1/(1 - \gamma/2)$. The drift, the only part that carries
# information about the teacher, is small once the student is close to the generator. So the
# gradient is mostly noise.
#
# **The noise record $\eta$.** Our convention (the paper's exact form is not known to us): track the
# noise as the chain's linear part propagates it,
#
# $$\eta^{k+1} = (1 - \gamma)\,\eta^k + \sqrt{2\gamma}\, n_k ,$$
#
# with the same $n_k$ as the chain, and hand $\epsilon^K - \eta^K$ to the M-step. Starting from
# $\eta^0 = 0$ (`cancel="injected"`) removes the injected noise; starting from $\eta^0 = \epsilon^0$
# (`cancel="full"`) also removes the initial noise and leaves the pure drift. `cancel_z=True` does
# the same for the injected noise of $z$ (the M-step then evaluates the generator at
# $z^K - \eta_z^K$). With $K = 1$, $\gamma = 1$ and full cancellation, the M-step gradient is exactly
# the Diff-Instruct gradient: chapter 5.
#
# On the 1D linear pairs below (teacher and student Gaussian, so the score gap is linear,
# $ds(x_t) = c\, x_t$), every step of the chain is linear in the state $v = (u, z, \eta)$,
# $v \leftarrow M v + N n$, and the covariance after $K$ steps follows exactly from
# $S \leftarrow M S M^\top + N N^\top$; `chain_cov_1d` computes it. From scratch, then against the
# library with the same random numbers:

# %%
from emd_lib.em import chain_cov_1d       # M and N as above; S <- M S M^T + N N^T, K times

a0, sig0 = level(0.0)


def eps_chain_cancelled(teacher, student, gen, z, eps0, lam, gamma, K, rng):
    """(eps, -) chain; returns eps_K, eps_K - eta_K with eta_0 = 0, and the pure drift sum."""
    a, s = VP.alpha_sigma(lam)
    a, s = a[:, None], s[:, None]
    with torch.no_grad():
        x = gen(z)
        eps, eta, drift = eps0.clone(), torch.zeros_like(eps0), torch.zeros_like(eps0)
        root = math.sqrt(2 * gamma)
        for _ in range(K):
            sds = score_gap_eps(teacher, student, a * x + s * eps, lam)          # sigma ds_k
            n = torch.randn(eps.shape, generator=rng)
            eps = eps + gamma * (sds - eps) + root * n
            eta = (1 - gamma) * eta + root * n                                   # injected noise, propagated
            drift = (1 - gamma) * drift + gamma * sds                            # sum_k (1-g)^(K-1-k) g sigma ds_k
    return eps, eps - eta, drift


B = 64
g = torch.Generator().manual_seed(4)
z, eps0 = torch.randn(B, 2, generator=g), torch.randn(B, 2, generator=g)
lam_b = torch.full((B,), lam1)
eps_K, eps_inj, drift = eps_chain_cancelled(teacher, student, gen, z, eps0, lam_b, 0.3, 8, torch.Generator().manual_seed(9))
for cancel, mine in (("none", eps_K), ("injected", eps_inj), ("full", drift)):
    r = estep(gen, teacher, student, z, eps0, lam_b, LangevinConfig(K=8, gamma_eps=0.3, cancel=cancel),
              rng=torch.Generator().manual_seed(9))
    torch.testing.assert_close(r.eps, mine, rtol=1e-4, atol=1e-5)
print("noise cancellation: scratch = library for none / injected / full")
for cancel, e_ in (("none", eps_K), ("inj", eps_inj), ("full", drift)):
    glue(f"ch04_eps_{cancel}", float(e_.norm(dim=1).mean()), fmt=".3f")

# the two noise terms' variances per coordinate at K = 8, gamma = 0.3 (z frozen, no score gap: c = 0)
var_init = (1 - 0.3) ** (2 * 8)                                              # (1 - gamma)^(2K)
var_inj = float(chain_cov_1d("eps", a0, sig0, 0.0, 0.3, 0.0, 8, torch.zeros(3, 3))[2, 2])
assert abs(var_inj - 0.6 * (1 - 0.7**16) / (1 - 0.7**2)) < 1e-9                 # 2 gamma sum_k (1 - gamma)^(2k)
glue("ch04_var_init", var_init, fmt=".4f")
glue("ch04_var_inj", var_inj, fmt=".3f")
assert var_init < 0.01 and var_inj > 1

# %% [markdown]
# At $K = 8$, $\gamma = 0.3$ the initial-noise term has variance {glue:text}`ch04_var_init:.4f`, the injected one
# {glue:text}`ch04_var_inj:.3f` (near $1/(1 - \gamma/2)$). The mean $|\epsilon|$ handed to the M-step above is {glue:text}`ch04_eps_none:.3f`
# without cancellation, {glue:text}`ch04_eps_inj:.3f` injected, {glue:text}`ch04_eps_full:.3f` full (the pure drift).
#
# ### 4.1 Cancellation is mean-preserving only with $z$ frozen
#
# The argument above unrolled the chain with $z$ frozen. Then $\eta^K$ is built from noise that the
# latent never sees, $\mathbb E[(\eta^K)^\top \partial g(z)/\partial\theta] = 0$, and cancellation removes
# variance and nothing else. When $z$ moves, the injected noise moves $x_t$, hence the score gap,
# hence the next $z$: $z^K$ is correlated with $\eta^K$, and subtracting $\eta^K$ changes the
# gradient's *mean*. This is the one place the book derives and measures that bias; later
# chapters refer back here.
#
# A 1D check: teacher $\mathcal N(0, 4)$, generator $g(z) = z$, exact student, $\lambda = 0$, $K = 8$,
# $\gamma_\epsilon = 0.3$. The M-step gradient with respect to the generator's slope is
# $-(w\alpha/\sigma)\, \mathbb E[\tilde\epsilon\, z^K]$, with $\tilde\epsilon$ what the M-step receives, so we compare
# $\mathbb E[\tilde\epsilon\, z^K]$ across the three variants: with the library's E-step on one batch
# (mean ± standard error, the same random numbers for every variant), with `chain_cov_1d`
# (exact) at $K = 8$ and in the stationary limit ($K = 512$), and against the value under exact $\rho$,
# $\mathbb E_\rho[\epsilon z]$ from `rho_moments`: the forward-KL gradient (chapter 3).

# %%
A1, b1, C1 = torch.tensor([[1.0]]), torch.zeros(1), torch.tensor([[4.0]])
teacher1, gen1, student1 = gaussian_teacher(b1, C1), LinearGenerator(A1, b1), exact_student(A1, b1)
_, cov_rho1 = rho_moments(A1, b1, b1, C1, a0, sig0)
# eps = (x_t - alpha z) / sigma, all means zero: E_rho[eps z] = (Cov(x_t, z) - alpha Var z) / sigma
fkl = float((cov_rho1[0, 1] - a0 * cov_rho1[1, 1]) / sig0)
c1 = 1 / (a0**2 + sig0**2) - 1 / (4 * a0**2 + sig0**2)       # ds = grad log p_t - grad log q_t = c1 x_t
B1 = fast_or(100_000, 20_000)
z_settings = {"z frozen": None, "z moving, gamma_z = 0.3": 0.3,
              "z moving, gamma_z = 0.1 / (1 + SNR)": 0.1 / (1 + a0**2 / sig0**2)}   # the last: the library's default
g = torch.Generator().manual_seed(6)
z1, e1 = torch.randn(B1, 1, generator=g), torch.randn(B1, 1, generator=g)
lam1_b = torch.zeros(B1)
bias_rows = {}
for setting, gz in z_settings.items():
    prods = {}
    for cancel in ("none", "injected", "full"):
        cfg = LangevinConfig(K=8, gamma_eps=0.3, cancel=cancel, move_z=gz is not None, gamma_z=gz or 0.1,
                             z_precondition="none")
        r = estep(gen1, teacher1, student1, z1, e1, lam1_b, cfg, rng=torch.Generator().manual_seed(7))
        prods[cancel] = (r.eps * r.z)[:, 0].double()
        start = torch.tensor([[1.0, 0, float(cancel == "full")], [0, 1, 0], [float(cancel == "full"), 0, float(cancel == "full")]])
        exact = []
        for K_ in (8, 512):
            S = chain_cov_1d("eps", a0, sig0, c1, 0.3, gz or 0.0, K_, start)
            exact.append(float(S[0, 1] - (S[2, 1] if cancel != "none" else 0)))   # E[(eps_K - eta_K) z_K]
        p = prods[cancel]
        d = p - prods["none"]                                  # paired with the uncancelled chain
        bias_rows[setting, cancel] = dict(mc=float(p.mean()), se=float(p.std() / math.sqrt(B1)),
                                          se_diff=float(d.std() / math.sqrt(B1)), diff=float(d.mean()),
                                          exact8=exact[0], exact_inf=exact[1])
display(table([[st, c, f"{r['mc']:.4f} ± {r['se']:.4f}", r["exact8"], r["exact_inf"]] for (st, c), r in bias_rows.items()],
              ["setting", "cancel", f"library, K = 8 (B = {B1:,})", "exact, K = 8", "exact, K = 512"], fmt="{:.4f}",
              title=f"E[ε̃ z_K], 1D: teacher N(0, 4), g(z) = z, exact student, λ = 0; exact ρ: {fkl:.4f}"))
mov = {c: bias_rows["z moving, gamma_z = 0.3", c] for c in ("none", "full")}
dflt = {c: bias_rows["z moving, gamma_z = 0.1 / (1 + SNR)", c]["exact_inf"] for c in ("none", "full")}
for key, v in (("bias", -mov["full"]["diff"]), ("bias_se", mov["full"]["se_diff"])):
    glue(f"ch04_{key}", v, fmt=".3f", fast=f"a batch of {B1:,}; the full run uses 100,000")
for key, v in (("fkl", fkl), ("none_inf", mov["none"]["exact_inf"]), ("full_inf", mov["full"]["exact_inf"]),
               ("dflt_none", dflt["none"]), ("dflt_full", dflt["full"])):
    glue(f"ch04_{key}", v, fmt=".3f")                  # exact moments: the same in fast mode
glue("ch04_full_short", 1 - mov["full"]["exact_inf"] / fkl, fmt=".0%")
for row in bias_rows.values():
    assert abs(row["mc"] - row["exact8"]) < 4 * row["se"]                     # the library's chain = the exact moments
for cancel in ("injected", "full"):
    fro, mv = bias_rows["z frozen", cancel], bias_rows["z moving, gamma_z = 0.3", cancel]
    assert abs(fro["diff"]) < 3 * fro["se_diff"]                              # z frozen: the same mean ...
    assert -mv["diff"] > 10 * mv["se_diff"]                                   # z moving: a different mean
    assert fkl - mv["exact_inf"] > 0.15                                       # and more steps do not remove it
    assert fkl - bias_rows["z moving, gamma_z = 0.1 / (1 + SNR)", cancel]["exact_inf"] > 0.03
assert bias_rows["z frozen", "full"]["se"] < 0.5 * bias_rows["z frozen", "none"]["se"]   # ... with less variance
for setting in list(z_settings)[1:]:
    assert abs(fkl - bias_rows[setting, "none"]["exact_inf"]) < 0.01              # uncancelled: near the forward KL

# %% [markdown]
# With $z$ frozen the three variants have the same mean, to the standard error on the batch and
# exactly in the covariance propagation; cancellation only shrinks the standard error. (The
# frozen chain's limit is not the forward-KL value: it samples its own target, section 3.) With $z$
# moving they part: at $K = 8$ and $\gamma_z = 0.3$ the fully cancelled chain gives a value
# {glue:text}`ch04_bias` below the uncancelled one (paired standard error {glue:text}`ch04_bias_se`). It is not a
# short-chain effect. In the stationary limit the uncancelled chain gives {glue:text}`ch04_none_inf:.3f` against
# the exact {glue:text}`ch04_fkl:.3f` (its own small discretisation bias), while both cancelled chains stay at
# {glue:text}`ch04_full_inf:.3f`, {glue:text}`ch04_full_short` short. With the library's default, smaller $z$ step,
# $0.1/(1 + \text{SNR})$, the gap is smaller ({glue:text}`ch04_dflt_full:.3f` against {glue:text}`ch04_dflt_none:.3f`) but does
# not close. (These limits are exact moments, the same in fast mode.)
#
# **Cancellation is mean-preserving only with $z$ frozen; with $z$ moving it trades variance for a
# bias that more Langevin steps do not remove.** The bias comes from the drift (with the score gap
# at zero there is nothing to cancel but noise), so it vanishes at an exact fit, which stays a fixed
# point (in the next table the $(\epsilon, z)$ full gradient is zero at the exact fit, the column
# $\tau = 1$); where the generator family cannot match the teacher, it moves the point at which the
# gradient vanishes (chapter 5 measures this on a two-mode fit).
#
# ### 4.2 How much of the gradient is noise
#
# It depends on how far training has come: the drift is proportional to the score gap, which shrinks
# as the generator approaches the teacher, while the uncancelled noise does not. The linear pair
# makes this exact. Move the generator along the path $A_\tau = (1-\tau) A + \tau L$,
# $b_\tau = (1-\tau) b + \tau m$ (with $L L^\top = C$, so $\tau = 1$ is the maximum-likelihood fit), keep
# the exact student, and compute the EMD generator gradient (`emd_generator_loss`, $K = 8$,
# $\lambda \sim U[-6, 6]$, $w = \sigma^2$) on $R$ independent batches per variant, with the same random
# numbers for every variant. The mean per-batch norm is what the optimiser sees; the norm of the
# average over batches estimates the signal.

# %%
B_R = fast_or(256, 128)


def gradient_stats(generator, teacher, student, lcfg, R, batch=B_R):
    """EMD generator gradients on R batches: (mean per-batch norm, norm of the mean over batches, the (R, p) gradients)."""
    grads = []
    for r in range(R):
        gr = torch.Generator().manual_seed(r)
        z = torch.randn(batch, generator.dim, generator=gr)
        e = torch.randn(batch, generator.dim, generator=gr)
        lam = -6 + 12 * torch.rand(batch, generator=gr)
        grads.append(flat_grad(emd_generator_loss(generator, teacher, student, z, e, lam, lcfg, rng=gr)[0], generator))
    G = torch.stack(grads)
    return float(G.norm(dim=1).mean()), float(G.mean(0).norm()), G


R = fast_or(64, 8)
L_C = torch.linalg.cholesky(C)
taus = [0.0, 0.5, 0.9, 1.0]
cancel_variants = {
    "(eps, -) none": LangevinConfig(K=8, cancel="none"),
    "(eps, -) injected": LangevinConfig(K=8, cancel="injected"),
    "(eps, -) full": LangevinConfig(K=8, cancel="full"),
    "(eps, z) full": LangevinConfig(K=8, move_z=True, gamma_z=0.3, z_precondition="none", cancel="full"),
    "(eps, z) full + z": LangevinConfig(K=8, move_z=True, gamma_z=0.3, z_precondition="none", cancel="full",
                                        cancel_z=True),
}
gstats = {name: [] for name in cancel_variants}
for tau in taus:
    g_tau = LinearGenerator((1 - tau) * A + tau * L_C, (1 - tau) * b + tau * m)
    s_tau = exact_student(g_tau.A.detach(), g_tau.b.detach())
    for name, lc in cancel_variants.items():
        gstats[name].append(gradient_stats(g_tau, teacher, s_tau, lc, R))
display(table([[name] + [f"{per:.4f} [{mean:.4f}]" for per, mean, _ in rows] for name, rows in gstats.items()],
              ["variant"] + [f"τ = {t:g}" for t in taus],
              title=f"EMD generator gradient over {R} batches: mean per-batch norm [norm of the mean]"))
i9 = taus.index(0.9)
ratio9 = gstats["(eps, -) none"][i9][0] / gstats["(eps, -) full"][i9][0]
# the same random numbers for both, so compare the means batch by batch: the difference is the cancelled noise
G_diff = gstats["(eps, -) none"][i9][2] - gstats["(eps, -) full"][i9][2]
d_mean, d_noise = float(G_diff.mean(0).norm()), float((G_diff.var(0).sum() / R).sqrt())
FAST_R = f"R = {R} batches of {B_R}; the full run uses 64 of 256"
glue("ch04_ratio9", ratio9, fmt=".1f", fast=FAST_R)
for key, v in (("dmean", d_mean), ("dnoise", d_noise)):
    glue(f"ch04_{key}", v, fmt=".4f", fast=FAST_R)
assert ratio9 > 2                                                                  # near the fit, noise dominates
assert d_mean < 2 * d_noise                                                        # z frozen: the same mean
assert gstats["(eps, -) full"][-1][0] < 1e-3 * gstats["(eps, -) none"][-1][0]     # pure drift: zero at the fit
assert gstats["(eps, z) full"][-1][0] < 1e-3 * gstats["(eps, -) none"][-1][0]     # with z moving too

# %% [markdown]
# Near the fit ($\tau = 0.9$) the uncancelled gradient is {glue:text}`ch04_ratio9` times the fully cancelled
# one in norm: mostly noise. With $z$ frozen it has the same mean as the cancelled one: the norm of
# the difference of their averages over the $R$ batches, {glue:text}`ch04_dmean`, is about what the
# noise left in an average of $R$ batches gives, {glue:text}`ch04_dnoise`
# ($\sqrt{\operatorname{tr} \operatorname{Cov} / R}$, the same random numbers for both). Full
# cancellation removes the noise exactly where it hurts most, at the end of training: at the fit the
# cancelled gradient is zero, not zero *on average*. On the linear pair this removes the Monte Carlo
# floor of chapter 3 altogether. The derivation assumed the $\epsilon$ coordinates; in $(x, z)$ the
# cancelled target is (nearly) $\alpha g(z^0)$ plus the drift, regressed on the moved latent $z^K$,
# and EM ends further from the fit than without cancellation (appendix, chapter 9, section 2).
#
# ### 4.3 Over a whole training run in 2D
#
# The generator's gradient norm (before clipping) over training, and the final quality, for each
# cancellation variant, on the `irregular` mixture (7 modes of unequal weights and widths): the exact
# teacher, an MLP generator and student score of width 128, 600 generator updates, $K = 8$,
# $\gamma_\epsilon = 0.3$, moving $z$ with the library's step $0.1/(1 + \text{SNR})$, three seeds per variant.
# Metrics (`emd_lib.metrics.mixture_report` on 5000 samples of the EMA generator): total variation
# between the generated and true mode masses (TV, lower is better), the fraction of samples within 3
# standard deviations of their mode, MMD, and k-NN precision and recall. The chapter loads the stored
# sweep; `tests/test_chapter_claims.py` reruns one of its runs and checks it against the stored seeds.

# %%
cancel = sweeps.load_sweep("cancel")
display(sweeps.sweep_table(cancel))

fig, ax = plt.subplots(1, 2, figsize=(11, 3.8))
for name, (steps, G) in sweeps.grad_norm_curves(cancel).items():     # G: runs x logged points
    line, = ax[0].plot(steps, G.mean(0), "--" if "none" in name else "-", label=name)
    ax[0].fill_between(steps, G.min(0), G.max(0), color=line.get_color(), alpha=0.15, linewidth=0)
ax[0].set_yscale("log"), ax[0].set_xlabel("generator step"), ax[0].set_ylabel("gradient norm")
ax[0].set_title("generator gradient norm (mean and range over seeds)"), ax[0].legend(fontsize=7)
sweeps.seed_dots(ax[1], [cancel], "tv", "final total variation (lower is better)")
fig.tight_layout()
plt.show()
nums = sweeps.cancel_numbers(cancel)                 # gradient norms, modes kept, the mode the cancelled runs lose
assert nums.pop("lost") == 6                         # irregular's central mode, weight 0.08 at (0, 0.2)
glue("ch04_left", (1 - 0.3) ** 8, fmt=".2f")        # the initial noise left after K = 8 steps of 0.3
assert nums["starved"] < nums["runs"] and 2 * nums["starved"] > nums["runs"]
for key, v in nums.items():
    glue(f"ch04_{key}", v, fmt=".1f" if "ratio" in key else "d" if isinstance(v, int) else ".3f")

# %% [markdown]
# What the 2D runs say (means over three seeds, from the stored sweep):
#
# * **Gradient norm.** Without cancellation the generator's gradient norm stays at its early level
#   for the whole run (for $(\epsilon, -)$: {glue:text}`ch04_gn_none_10:.3f` at step 10, {glue:text}`ch04_gn_none_20:.3f` at
#   step 20, then between {glue:text}`ch04_gn_none_lo:.3f` and {glue:text}`ch04_gn_none_hi:.3f`). With full cancellation it
#   drops over the first 20 generator steps, from {glue:text}`ch04_gn_full_10:.3f` to {glue:text}`ch04_gn_full_20:.3f`, and
#   for the rest of the run stays between {glue:text}`ch04_gn_full_lo:.3f` and {glue:text}`ch04_gn_full_hi:.3f`; over
#   the last 200 steps it is {glue:text}`ch04_gn_ratio_e:.1f` times lower than without cancellation for
#   $(\epsilon, -)$ and {glue:text}`ch04_gn_ratio_z:.1f` times lower for $(\epsilon, z)$. Unlike on the linear pair,
#   the cancelled norm does not keep falling towards zero. The fully cancelled gradient is the pure
#   drift, built from the score gap, so its level says that the gap between teacher and student stays
#   open in these runs.
# * **Injected against full** are nearly indistinguishable here: after $K = 8$ steps with
#   $\gamma_\epsilon = 0.3$ only $(1 - \gamma)^K \approx$ {glue:text}`ch04_left:.2f` of the initial noise is left.
# * **$(\epsilon, z)$ with and without cancellation** end with the same TV and MMD within the spread
#   between seeds: on this mixture, at the library's default $z$ step, the bias of section 4.1 did not
#   show in the final TV or MMD.
# * **Quality.** Cancellation gives sharper samples (more of them within 3 standard deviations of
#   their mode, higher precision, lower MMD), and the mode masses (TV) are the same within the
#   spread between seeds. Coverage did not gain from it: the runs without cancellation kept all 7
#   modes (each at a fifth of its weight or more) in {glue:text}`ch04_kept_none` of 6 paired runs ($(\epsilon, -)$
#   and $(\epsilon, z)$, three seeds each), the fully cancelled ones in {glue:text}`ch04_kept_full` of 6. The mode
#   they lose is the central one (weight 0.08, at $(0, 0.2)$), which {glue:text}`ch04_starved` of the
#   {glue:text}`ch04_runs` runs of the sweep give less than its weight: on $(\epsilon, -)$ it gets
#   {glue:text}`ch04_lost_none:.3f` of the samples without cancellation and {glue:text}`ch04_lost_full:.3f` with. At
#   this budget the noise costs precision, and cancelling it cost some coverage of that mode.
# * **Cancelling the $z$ noise hurt.** With `cancel_z=True` the M-step evaluates the generator at
#   $z^K - \eta_z^K$, a latent the chain never visited, while the drift it regresses onto was
#   measured along the chain's actual path; our reading is that this misplaces the teacher's
#   signal. TV, MMD, precision and the fraction within 3 standard deviations all got worse.

# %%
print(f"chapter run time: {time.perf_counter() - t_start:.1f} s")


# %% [markdown]
# ## Summary
#
# You can now:
#
# * write $\nabla \log \rho$ in $(x_t, z)$ and in $(\epsilon, z)$ and convert between them by the chain
#   rule; in $(\epsilon, z)$ both coordinates have a standard normal prior and the score gap is the only
#   force;
# * pick the chain's step: one $\gamma_\epsilon$ serves every noise level, while a fixed $\gamma_x$ is
#   unstable where $\sigma^2 < \gamma_x / 2$ and frozen where $\sigma^2$ is large (the $x$-chain with
#   $\gamma_x = \gamma_\epsilon \sigma^2$ *is* the $\epsilon$-chain);
# * say what freezing $z$ costs (at high SNR a frozen-$z$ chain cannot reach $\rho$) and why a $z$
#   step that is stable can still be too slow to matter;
# * cancel the chain's noise with the record $\eta$, knowing that it only removes variance while $z$
#   is frozen, and biases the gradient's mean once $z$ moves (section 4.1);
# * read a gradient-norm curve: with cancellation it is the pure drift, a measure of the score gap.
#
# The appendix (chapter 9) has the ablations: how stiff $z$ is, where each chain leads EM, the
# four-way table of coordinates, and which $z$ steps stay stable in training.

# %% [markdown]
# ## Exercise 4.1: the $(\epsilon, z)$ gradients of $\log\rho$ for a network generator
#
# Section 1 wrote the gradients for the linear generator, where $J = A$. For a network, $J^\top v$ is
# a vector-Jacobian product. Write `grad_log_rho(generator, teacher, student, z, eps, lam)`
# returning `(grad_eps, grad_z)` at $x_t = \alpha g(z) + \sigma \epsilon$; the teacher and the student
# score are eps-predictors, `lam` is $(B,)$. Use one backward pass through the generator, not a
# Jacobian. The check runs it on a random MLP generator and student score facing the exact ring;
# `emd_lib.langevin` refuses to run inside your answer.

# %%
import torch
from emd_lib.exercises import check


def grad_log_rho(generator, teacher, student, z, eps, lam):
    ### BEGIN SOLUTION
    alpha, sigma = teacher.schedule.alpha_sigma(lam)
    a, s = alpha[:, None], sigma[:, None]
    z = z.detach().requires_grad_(True)
    x = generator(z)
    x_t = a * x.detach() + s * eps
    with torch.no_grad():
        sds = student.eps(x_t, lam) - teacher.eps(x_t, lam)              # sigma ds
    (jtv,) = torch.autograd.grad(x, z, grad_outputs=a / s * sds)          # J^T (alpha ds)
    return sds - eps, jtv - z.detach()
    ### END SOLUTION


check("4.1", grad_log_rho)

# %% [markdown]
# ## Exercise 4.2: the largest stable step, and the variance below it
#
# Run one Langevin step $u \leftarrow u + \gamma \nabla \log \mathcal N(u; 0, v) + \sqrt{2\gamma}\, n$ on a
# Gaussian target of variance $v$ (the $x$-chain's residual sees $v = \sigma^2$). The chain is not
# exact: derive the variance it settles at, and the step beyond which it has none. Write
# `stationary_variance(gamma, v)` returning that variance, or `math.inf` where the chain diverges.
# What does it say about a fixed $\gamma_x$ at $\lambda = 6$ (where $\sigma^2 \approx 0.0025$)?

# %%
import math

from emd_lib.exercises import check


def stationary_variance(gamma, v):
    ### BEGIN SOLUTION
    # V' = (1 - gamma / v)^2 V + 2 gamma; fixed point V = 2 gamma / (1 - (1 - gamma / v)^2)
    if gamma >= 2 * v:
        return math.inf
    return v / (1 - gamma / (2 * v))
    ### END SOLUTION


check("4.2", stationary_variance)

# %% [markdown]
# ## Exercise 4.3: one step of the joint chain, with a trust region and noise records
#
# Write `langevin_step(generator, teacher, student, z, eps, eta, eta_z, lam, gamma_eps, gamma_z,
# z_clip, n_eps, n_z)`: one step of the $(\epsilon, z)$ chain as `emd_lib.langevin.estep` takes it with
# `move_z=True`, `z_precondition="none"` and a trust region `z_clip`, given the noise draws
# `n_eps`, `n_z`. Both coordinates move from the *same* gradients (your exercise 4.1); the $z$ drift
# $\gamma_z \nabla_z \log\rho$ of each sample is shortened to a norm of at most
# `z_clip` $\sqrt{\dim z}$ (the injected noise is not); and both noise records move on, `eta` for
# $\epsilon$ and `eta_z` for $z$, each decaying as its coordinate's linear part does (section 6).
# Return `(z, eps, eta, eta_z)` after the step. The check runs it at $\lambda = 0$ and $\lambda = 4$,
# where the trust region bites.

# %%
import math

import torch
from emd_lib.exercises import check


def langevin_step(generator, teacher, student, z, eps, eta, eta_z, lam, gamma_eps, gamma_z, z_clip, n_eps, n_z):
    ### BEGIN SOLUTION
    alpha, sigma = teacher.schedule.alpha_sigma(lam)
    a, s = alpha[:, None], sigma[:, None]
    zg = z.detach().requires_grad_(True)
    x = generator(zg)
    x_t = a * x.detach() + s * eps
    with torch.no_grad():
        sds = student.eps(x_t, lam) - teacher.eps(x_t, lam)                # sigma ds
    grad_z = torch.autograd.grad(x, zg, grad_outputs=a / s * sds)[0] - z    # alpha J^T ds - z
    drift = gamma_z * grad_z
    limit = z_clip * math.sqrt(z.shape[1])                                   # per sample
    drift = drift * (limit / drift.norm(dim=1, keepdim=True).clamp_min(1e-12)).clamp(max=1.0)
    root_eps, root_z = math.sqrt(2 * gamma_eps), math.sqrt(2 * gamma_z)
    eps_new = eps + gamma_eps * (sds - eps) + root_eps * n_eps
    eta_new = (1 - gamma_eps) * eta + root_eps * n_eps
    z_new = z + drift + root_z * n_z
    eta_z_new = (1 - gamma_z) * eta_z + root_z * n_z
    return z_new.detach(), eps_new, eta_new, eta_z_new
    ### END SOLUTION


check("4.3", langevin_step)

# %% [markdown]
# ## Exercise 4.4: the $(x, z)$ gradients of $\log\rho$ for a network generator
#
# The other coordinate system: write `grad_log_rho_x(generator, teacher, student, z, x_t, lam)`
# returning `(grad_x, grad_z)` of $\log\rho$ at a given $(x_t, z)$, where $x_t$ is *not* tied to $z$ by
# a current $\epsilon$. One vector-Jacobian product again. Then compare with exercise 4.1: which
# term of $\nabla_z$ changed, and why?

# %%
import torch
from emd_lib.exercises import check


def grad_log_rho_x(generator, teacher, student, z, x_t, lam):
    ### BEGIN SOLUTION
    alpha, sigma = teacher.schedule.alpha_sigma(lam)
    a, s = alpha[:, None], sigma[:, None]
    z = z.detach().requires_grad_(True)
    x = generator(z)
    r = x_t - a * x.detach()                                                 # x_t - alpha g(z)
    with torch.no_grad():
        ds = (student.eps(x_t, lam) - teacher.eps(x_t, lam)) / s             # s_teacher - s_student
    (jtv,) = torch.autograd.grad(x, z, grad_outputs=a / s**2 * r)
    return ds - r / s**2, jtv - z.detach()
    ### END SOLUTION


check("4.4", grad_log_rho_x)
