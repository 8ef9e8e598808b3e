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
# # Chapter 3: The EM derivation
#
# A one-step generator $x = g_\theta(z)$, $z \sim \mathcal N(0, I)$, is a latent-variable
# model. This chapter derives EM Distillation from that single observation: maximum likelihood
# on the teacher's noisy samples is the forward KL, its gradient is an expectation under the
# posterior of the latent (Fisher's identity), and EM turns it into two alternating steps:
# sample a teacher point together with the latent that most plausibly produced it (E-step),
# then regress the generator onto those pairs (M-step).
#
# **What you will learn**
#
# * the noisy student marginal $q_\theta^\lambda(x_t)$ as an integral over the latent, and why
#   maximum likelihood is the forward KL $\mathrm{KL}(p_\lambda \,\|\, q_\theta^\lambda)$;
# * Fisher's identity, checked numerically on a linear generator;
# * the E-step target $\rho(x_t, z)$ and the M-step regression, and that their combination
#   has exactly the gradient of the forward KL;
# * why EMD needs a student score network: $\nabla \log q_\theta^\lambda$ has no usable estimate
#   for a neural generator;
# * exact EM on a linear-Gaussian generator against EM with the Langevin E-step and a
#   stochastic M-step: both reach $A A^\top = C$, $b = m$.
#
# Everything here is exact or Monte Carlo with a known answer: the generator is linear,
# $g(z) = A z + b$, and the teacher is a Gaussian $p_0 = \mathcal N(m, C)$.
#
# Notation: a noise level is named by its log-SNR $\lambda$ (chapter 1); $p_\lambda$ and $q_\theta^\lambda$ are the
# teacher's and the student's densities at that level. A noisy sample is written $x_t$: the subscript
# is the paper's time $t$, kept only as a label (the library's code calls it `x_t` too). The joint
# posterior of the E-step is $\rho$ (section 4).

# %%
import math
import time

import matplotlib.pyplot as plt
import torch

import emd_lib
from emd_lib import fast_or
from emd_lib.book import glue, table
from emd_lib.em import (LinearGenerator, exact_em, exact_em_step, exact_student, fisher_grad, fit_error,
                        gaussian_kl, gaussian_teacher, langevin_em, latent_posterior, marginal_log_prob,
                        rho_moments)
from emd_lib.langevin import LangevinConfig
from emd_lib.book.plotting import COLORS, use_style
from emd_lib.schedules import VP

torch.set_num_threads(1)
use_style()
torch.manual_seed(0)                      # the Monte Carlo checks below draw from torch's global generator
t_start = time.perf_counter()

# the teacher p_0 = N(m, C) and a linear generator g(z) = A z + b that does not fit it yet
m = torch.tensor([1.0, -0.5])
C = torch.tensor([[1.0, 0.6], [0.6, 0.8]])
A = torch.tensor([[0.5, 0.0], [0.2, 0.4]])
b = torch.tensor([0.3, 0.2])
teacher = gaussian_teacher(m, C)          # exact teacher, VP schedule
gen = LinearGenerator(A, b)


def level(lam):
    """(alpha, sigma) of the VP schedule at log-SNR lam, as floats."""
    alpha, sigma = VP.alpha_sigma(torch.tensor(float(lam)))
    return float(alpha), float(sigma)


# %% [markdown]
# ## 1. The latent-variable view
#
# Noise the generator's output like a diffusion model does, $x_t = \alpha\, g(z) + \sigma \epsilon$.
# The noisy student is a continuous mixture of Gaussians, one per latent:
#
# $$q_\theta^\lambda(x_t) = \int \mathcal N\big(x_t;\, \alpha g_\theta(z),\, \sigma^2 I\big)\, \mathcal N(z; 0, I)\, dz .$$
#
# *Why noisy marginals at all?* Without noise ($\sigma = 0$) the student is the push-forward of
# $\mathcal N(0, I)$ through $g$: its density needs $|\det \partial g/\partial z|^{-1}$ summed over every $z$ that
# maps to $x$, which is intractable for a network and undefined where $g$ folds or squeezes space,
# and off the image of $g$ a teacher sample has likelihood zero, so $\log q_\theta(x) = -\infty$ and there is
# no gradient to follow. The latent's posterior is then a point mass, and EM has nothing to average.
# Adding noise $\mathcal N(0, \sigma^2 I)$ fixes all three: every $x_t$ has a positive density, the
# complete-data likelihood $\mathcal N(x_t; \alpha g(z), \sigma^2 I)$ is a plain Gaussian, and the teacher
# gives exactly what the E-step needs at each level, the score $\nabla \log p_\lambda$ of its noisy
# marginal, which a diffusion model is trained to provide. Matching the noisy marginals at every
# level still matches the clean ones (at $\lambda \to \infty$ they coincide).
#
# For a neural $g$ this integral has no closed form. For $g(z) = A z + b$ it does:
# $q_\theta^\lambda = \mathcal N(\alpha b,\ \alpha^2 A A^\top + \sigma^2 I)$. We estimate the integral
# by plain Monte Carlo over $z$ and compare with the closed form (and with the library's
# `exact_student`, which is this Gaussian with the teacher interface).

# %%
lam0 = 0.0
alpha, sigma = level(lam0)
g = torch.Generator().manual_seed(0)
x_t = torch.tensor([[0.9, -0.2], [-0.5, 0.7], [1.5, 0.3]])           # three query points

# from scratch: q_t(x_t) ~ mean_i N(x_t; alpha g(z_i), sigma^2 I),  z_i ~ N(0, I)
n_mc = fast_or(400_000, 100_000)
z = torch.randn(n_mc, 2, generator=g)
with torch.no_grad():
    mu = alpha * gen(z)                                                 # (n, 2)
    log_kernel = (-((x_t[:, None, :] - mu[None]) ** 2).sum(-1) / (2 * sigma**2)
                  - math.log(2 * math.pi * sigma**2))                   # (3, n)
    log_q_mc = torch.logsumexp(log_kernel, dim=1) - math.log(n_mc)
    log_q_exact = marginal_log_prob(gen, x_t, alpha, sigma)
    log_q_lib = exact_student(A, b).log_prob(x_t, torch.full((3,), lam0))
glue("ch03_logq_mc_err", float((log_q_mc - log_q_exact).abs().max()), fmt=".4f",
     fast=f"{n_mc:,} draws; the full run uses 400,000")
torch.testing.assert_close(log_q_exact, log_q_lib, rtol=1e-5, atol=1e-5)
torch.testing.assert_close(log_q_mc, log_q_exact, rtol=0, atol=0.02)
table([(f"({x[0]:.1f}, {x[1]:.1f})", mc, ex) for x, mc, ex in zip(x_t, log_q_mc.tolist(), log_q_exact.tolist())],
      ["x_t", "log q_t, Monte Carlo", "log q_t, closed form"], fmt="{:.4f}", title=f"lambda = {lam0:.0f}")

# %% [markdown]
# At the three points the Monte Carlo estimate is within {glue:text}`ch03_logq_mc_err` of the
# closed form.

# %% [markdown]
# ## 2. Maximum likelihood is the forward KL
#
# Fit the generator to the teacher's noisy samples by maximum likelihood:
#
# $$\mathbb E_{x_t \sim p_\lambda}\big[\log q_\theta^\lambda(x_t)\big] = -\mathrm{KL}(p_\lambda \,\|\, q_\theta^\lambda) - H(p_\lambda).$$
#
# The entropy $H(p_\lambda)$ does not depend on $\theta$, so maximising the expected log-likelihood
# *is* minimising the forward KL: the student pays for every region where the teacher has
# mass and it has little (mode covering, chapter 2). EMD minimises
# $\mathbb E_\lambda\, w(\lambda)\, \mathrm{KL}(p_\lambda \,\|\, q_\theta^\lambda)$ over noise levels. We check the identity at
# one level with teacher samples.

# %%
n_p = fast_or(200_000, 50_000)
p_t = torch.distributions.MultivariateNormal(alpha * m, alpha**2 * C + sigma**2 * torch.eye(2))
with torch.no_grad():
    xs = p_t.sample((n_p,))
    avg_loglik = marginal_log_prob(gen, xs, alpha, sigma).mean().item()
kl_pq = gaussian_kl(p_t.mean, p_t.covariance_matrix, alpha * b, alpha**2 * A @ A.T + sigma**2 * torch.eye(2))
H_p = p_t.entropy().item()
glue("ch03_avg_loglik", avg_loglik, fmt=".4f", fast=f"{n_p:,} samples; the full run uses 200,000")
glue("ch03_kl_h", -float(kl_pq) - H_p, fmt=".4f")
glue("ch03_kl", float(kl_pq), fmt=".4f")
glue("ch03_entropy", H_p, fmt=".4f")
assert abs(avg_loglik - (-kl_pq - H_p)) < 0.02

# %% [markdown]
# The average log-likelihood of the teacher's samples under the student is
# {glue:text}`ch03_avg_loglik`; the right side, $-\mathrm{KL} - H$, is {glue:text}`ch03_kl_h`,
# with $\mathrm{KL}(p_\lambda \,\|\, q_\theta^\lambda) =$ {glue:text}`ch03_kl` and
# $H(p_\lambda) =$ {glue:text}`ch03_entropy`.

# %% [markdown]
# ## 3. Fisher's identity
#
# The gradient of the log-likelihood needs $\nabla_\theta \log q_\theta^\lambda(x_t)$, the gradient of
# the log of an integral. Differentiate under the integral and divide by $q$:
#
# $$\nabla_\theta \log q_\theta^\lambda(x_t)
#   = \frac{\int \nabla_\theta \mathcal N(x_t; \alpha g_\theta(z), \sigma^2 I)\, \mathcal N(z)\, dz}{q_\theta^\lambda(x_t)}
#   = \mathbb E_{z \sim q_\theta(z \mid x_t)}\Big[\nabla_\theta \log \mathcal N\big(x_t;\, \alpha g_\theta(z),\, \sigma^2 I\big)\Big],$$
#
# with the posterior $q_\theta(z \mid x_t) \propto \mathcal N(x_t; \alpha g(z), \sigma^2 I)\, \mathcal N(z)$.
# The gradient of the marginal is the *average complete-data gradient*, with the latent filled in
# by its posterior. For the linear generator the posterior is Gaussian,
# $\mathcal N\big(M(x_t - \alpha b),\, S_z\big)$ with $S_z = (I + \tfrac{\alpha^2}{\sigma^2} A^\top A)^{-1}$
# and $M = \tfrac{\alpha}{\sigma^2} S_z A^\top$.
#
# Three ways to compute the same gradient, for one point $x_t$:
# autograd of the closed-form $\log q_\theta^\lambda$; the posterior expectation in closed form
# (`emd_lib.em.fisher_grad`); and Monte Carlo: draw $z$ from the posterior and average
# autograd of $\log \mathcal N(x_t; \alpha g_\theta(z), \sigma^2 I)$.

# %%
x1 = x_t[:1]                                                            # (1, 2)
# (a) autograd of the closed-form marginal log density
gA_auto, gb_auto = torch.autograd.grad(marginal_log_prob(gen, x1, alpha, sigma).sum(), (gen.A, gen.b))

# (b) the posterior expectation, closed form
gA_post, gb_post = fisher_grad(A, b, x1, alpha, sigma)

# (c) Monte Carlo over the posterior, with autograd of the complete-data log likelihood
n_post = fast_or(200_000, 50_000)
mu_z, S_z = latent_posterior(A, b, x1, alpha, sigma)
z_post = torch.distributions.MultivariateNormal(mu_z[0], S_z).sample((n_post,)).float()
log_lik = -((x1 - alpha * gen(z_post)) ** 2).sum(-1) / (2 * sigma**2)  # log N(x_t; alpha g(z), sigma^2 I) + const
gA_mc, gb_mc = torch.autograd.grad(log_lik.mean(), (gen.A, gen.b))



def vec(t):
    """A tensor's entries, flattened, as short text for a table."""
    return ", ".join(f"{v:.4f}" for v in t.flatten().tolist())


def max_diff(pairs):
    return max(float((u.float() - v.float()).abs().max()) for u, v in pairs)


glue("ch03_fisher_exact_err", max_diff([(gA_post[0], gA_auto), (gb_post[0], gb_auto)]), fmt=".1e")
glue("ch03_fisher_mc_err", max_diff([(gA_mc, gA_auto), (gb_mc, gb_auto)]), fmt=".4f",
     fast=f"{n_post:,} draws; the full run uses 200,000")
torch.testing.assert_close(gA_post[0].float(), gA_auto, rtol=1e-4, atol=1e-5)
torch.testing.assert_close(gb_post[0].float(), gb_auto, rtol=1e-4, atol=1e-5)
torch.testing.assert_close(gA_mc, gA_auto, rtol=0, atol=0.03)
torch.testing.assert_close(gb_mc, gb_auto, rtol=0, atol=0.03)
table([("autograd of log q_t", vec(gA_auto), vec(gb_auto)),
       ("posterior mean, closed form", vec(gA_post[0]), vec(gb_post[0])),
       ("posterior mean, Monte Carlo", vec(gA_mc), vec(gb_mc))],
      ["gradient", "d/dA (A11, A12, A21, A22)", "d/db"], title=f"grad log q_t(x_t) at x_t = ({x1[0, 0]:.1f}, {x1[0, 1]:.1f})")

# %% [markdown]
# The posterior average in closed form matches autograd to {glue:text}`ch03_fisher_exact_err`
# (rounding), and the Monte Carlo average over posterior draws to {glue:text}`ch03_fisher_mc_err`.

# %% [markdown]
# ## 4. The E-step target $\rho$ and the M-step
#
# Average Fisher's identity over teacher samples $x_t \sim p_\lambda$. The pairs $(x_t, z)$ are then
# drawn from
#
# $$\rho(x_t, z) = p_\lambda(x_t)\, q_\theta(z \mid x_t)
#   = \frac{p_\lambda(x_t)\; \mathcal N(x_t; \alpha g_\theta(z), \sigma^2 I)\; \mathcal N(z; 0, I)}{q_\theta^\lambda(x_t)}:$$
#
# a teacher sample together with the latent that most plausibly produced it. With
# $\rho$ frozen at the current $\theta$ (the **E-step**), the gradient of the forward KL is
#
# $$\nabla_\theta\, \mathrm{KL}(p_\lambda \,\|\, q_\theta^\lambda)
#   = -\mathbb E_{\rho}\big[\nabla_\theta \log \mathcal N(x_t; \alpha g_\theta(z), \sigma^2 I)\big]
#   = \nabla_\theta\, \mathbb E_{\rho}\Big[\frac{\| x_t - \alpha g_\theta(z) \|^2}{2 \sigma^2}\Big],$$
#
# the gradient of a **regression** of the generator onto the E-step's pairs (the **M-step**).
#
# *Why alternating the two cannot lower the likelihood* (the EM bound). For one $x_t$ and any
# distribution $r(z)$, Jensen's inequality on the log of an average gives
#
# $$\log q_\theta^\lambda(x_t) = \log \mathbb E_{r}\Big[\frac{q_\theta(x_t, z)}{r(z)}\Big]
#   \;\ge\; \mathbb E_{r}\big[\log q_\theta(x_t, z)\big] + H(r) \;=:\; \mathcal L(r, \theta),$$
#
# with $q_\theta(x_t, z) = \mathcal N(x_t; \alpha g_\theta(z), \sigma^2 I)\, \mathcal N(z; 0, I)$. Writing
# $q_\theta(x_t, z) = q_\theta^\lambda(x_t)\, q_\theta(z \mid x_t)$ shows the gap exactly:
# $\log q_\theta^\lambda(x_t) - \mathcal L(r, \theta) = \mathrm{KL}\big(r \,\|\, q_\theta(z \mid x_t)\big) \ge 0$.
# The **E-step** sets $r = q_{\theta_k}(z \mid x_t)$, which closes the gap at the current $\theta_k$. The
# **M-step** maximises $\mathcal L(r, \theta)$ over $\theta$ with $r$ held fixed; only $\mathbb E_r[\log q_\theta(x_t, z)]$ depends
# on $\theta$, and up to a constant it is $-\mathbb E_r\|x_t - \alpha g_\theta(z)\|^2 / 2\sigma^2$, the regression above. Then
#
# $$\log q_{\theta_{k+1}}^\lambda(x_t) \ge \mathcal L(r, \theta_{k+1}) \ge \mathcal L(r, \theta_k) = \log q_{\theta_k}^\lambda(x_t):$$
#
# the first inequality is the bound, the second the M-step, the equality the E-step. Averaging over
# $x_t \sim p_\lambda$ turns $r$ into $\rho$ and the log-likelihood into $-\mathrm{KL}(p_\lambda \,\|\, q_\theta^\lambda) - H(p_\lambda)$, so
# a full M-step never increases the forward KL. At $\theta = \theta_k$ the bound touches the
# log-likelihood, so their gradients agree there: that is the gradient identity above. EMD takes one
# gradient step on the regression instead of a full M-step (a generalised EM step), and its
# E-step is approximate (section 6 and chapter 4), so the guarantee becomes a direction, not a
# promise.
#
# For the linear generator $\rho$ is a Gaussian over $(x_t, z)$ with closed-form moments
# (`emd_lib.em.rho_moments`). We check the gradient identity with exact samples of $\rho$ and
# autograd of the closed-form KL, then do one exact EM step from scratch (least squares on
# samples of $\rho$) and compare with `emd_lib.em.exact_em_step`.

# %%
n_rho = fast_or(400_000, 100_000)
mean_rho, cov_rho = rho_moments(A, b, m, C, alpha, sigma)
pairs = torch.distributions.MultivariateNormal(mean_rho, cov_rho).sample((n_rho,)).float()
xr, zr = pairs[:, :2], pairs[:, 2:]                                      # x_t ~ p_t, z ~ q(z | x_t)

# the M-step regression at the current theta, gradient by autograd
reg = ((xr - alpha * gen(zr)) ** 2).sum(-1).mean() / (2 * sigma**2)
gA_reg, gb_reg = torch.autograd.grad(reg, (gen.A, gen.b))
# the forward KL in closed form, gradient by autograd
q_t = torch.distributions.MultivariateNormal(alpha * gen.b, alpha**2 * gen.A @ gen.A.T + sigma**2 * torch.eye(2))
kl = torch.distributions.kl_divergence(p_t, q_t)
gA_kl, gb_kl = torch.autograd.grad(kl, (gen.A, gen.b))
fast_rho = f"{n_rho:,} samples of rho; the full run uses 400,000"
glue("ch03_reg_err", max_diff([(gA_reg, gA_kl), (gb_reg, gb_kl)]), fmt=".4f", fast=fast_rho)
torch.testing.assert_close(gA_reg, gA_kl, rtol=0, atol=0.03)
torch.testing.assert_close(gb_reg, gb_kl, rtol=0, atol=0.03)

# one exact EM step from scratch: least squares of x_t / alpha on [z, 1] over samples of rho
design = torch.cat([zr, torch.ones(n_rho, 1)], 1).double()               # (n, 3)
W = torch.linalg.lstsq(design, (xr / alpha).double()).solution.T          # (2, 3) = [A_new | b_new]
A_new_lib, b_new_lib = exact_em_step(A, b, m, C, alpha, sigma)
glue("ch03_em_step_err", max_diff([(W[:, :2], A_new_lib), (W[:, 2], b_new_lib)]), fmt=".4f", fast=fast_rho)
torch.testing.assert_close(W[:, :2], A_new_lib, rtol=0, atol=0.03)
torch.testing.assert_close(W[:, 2], b_new_lib, rtol=0, atol=0.03)
glue("ch03_fit_before", float(fit_error(A, b, m, C)), fmt=".3f")
glue("ch03_fit_after", float(fit_error(A_new_lib, b_new_lib, m, C)), fmt=".3f")
assert fit_error(A_new_lib, b_new_lib, m, C) < fit_error(A, b, m, C)
table([("gradient of KL(p_t || q_t), closed form", vec(gA_kl), vec(gb_kl)),
       ("gradient of the M-step regression", vec(gA_reg), vec(gb_reg)),
       ("one EM step, least squares on samples", vec(W[:, :2]), vec(W[:, 2])),
       ("one EM step, exact_em_step", vec(A_new_lib), vec(b_new_lib))],
      ["", "A (A11, A12, A21, A22)", "b"], title=f"lambda = {lam0:.0f}")

# %% [markdown]
# The regression's gradient on samples of $\rho$ matches the closed-form gradient of the forward KL
# to within {glue:text}`ch03_reg_err`, and least squares on the same samples finds the exact EM step's
# $(A, b)$ to within {glue:text}`ch03_em_step_err`. That one step lowers the fit error
# $\|AA^\top - C\|_F + \|b - m\|$ from {glue:text}`ch03_fit_before` to {glue:text}`ch03_fit_after`.

# %% [markdown]
# ## 5. Why EMD needs a student score
#
# Exact samples of $\rho$ are out of reach for a real teacher, so EMD runs Langevin dynamics on
# $\rho$ (its update rule is in section 6; chapter 4 is about running it well). Its gradient in $x_t$ is
#
# $$\nabla_{x_t} \log \rho = \underbrace{\nabla \log p_\lambda(x_t)}_{\text{teacher score}}
#    - \underbrace{\nabla \log q_\theta^\lambda(x_t)}_{\text{student score}}
#    - \frac{x_t - \alpha g(z)}{\sigma^2}.$$
#
# The teacher's score is what a diffusion model provides. The student's is the score of the
# integral in section 1, and for a neural generator there is no closed form. Could Monte Carlo
# do? By Fisher's identity once more, $\nabla \log q_\theta^\lambda(x_t)$ is a posterior average,
# which self-normalised importance sampling from the prior estimates with weights
# $w_i \propto \mathcal N(x_t; \alpha g(z_i), \sigma^2 I)$. When $\sigma$ is small, almost every
# $z_i$ lands far from $x_t$, and one weight takes all: the effective sample size
# $(\sum_i w_i)^2 / \sum_i w_i^2$ collapses. We measure it for the linear generator, where the
# exact score is known, at points $x_t$ drawn from $p_\lambda$, where the E-step needs it.

# %%
def mc_student_score(gen, x_t, alpha, sigma, n, generator=None):
    """Self-normalised importance sampling of grad log q_t(x_t) with z ~ N(0, I); returns (score, ESS)."""
    z = torch.randn(n, gen.dim, generator=generator)
    with torch.no_grad():
        mu = alpha * gen(z)                                               # (n, d)
    diff = x_t[:, None, :] - mu[None]                                     # (B, n, d)
    logw = -(diff**2).sum(-1) / (2 * sigma**2)                            # (B, n)
    w = torch.softmax(logw, dim=1)
    # grad_x log N(x_t; alpha g(z), sigma^2 I) = -(x_t - alpha g(z)) / sigma^2, averaged with weights w
    score = -(w[..., None] * diff).sum(1) / sigma**2
    ess = 1.0 / (w**2).sum(1)
    return score, ess


n_is = fast_or(4000, 1000)
lams_is = [-6.0, -4.0, -2.0, 0.0, 2.0, 4.0, 6.0]
ess_frac, rel_err = [], []
g = torch.Generator().manual_seed(1)
student = exact_student(A, b)
for lam in lams_is:
    a_, sig_ = level(lam)
    pt = torch.distributions.MultivariateNormal(a_ * m, a_**2 * C + sig_**2 * torch.eye(2))
    xq = pt.sample((200,))
    sc, ess = mc_student_score(gen, xq, a_, sig_, n_is, generator=g)
    exact = student.score(xq, torch.full((200,), lam))
    ess_frac.append(float(ess.median()) / n_is)
    rel_err.append(float(((sc - exact).norm(dim=1) / exact.norm(dim=1)).median()))

fast_is = f"{n_is} draws; the full run uses 4000"
glue("ch03_ess_lo", ess_frac[0], fmt=".1%", fast=fast_is)
glue("ch03_ess_hi_draws", ess_frac[-1] * n_is, fmt=".1f", fast=fast_is)
glue("ch03_ess_drop", ess_frac[0] / ess_frac[-1], fmt=".0f", fast=fast_is)
glue("ch03_relerr_lo", rel_err[0], fmt=".2g", fast=fast_is)
glue("ch03_relerr_hi", rel_err[-1], fmt=".3g", fast=fast_is)
# the estimator is right where it has samples (the noisiest level), and collapses at the cleanest:
# a handful of effective draws, and an error larger than the score itself
assert rel_err[0] < 0.05 and ess_frac[-1] < 0.1 * ess_frac[0] and ess_frac[-1] * n_is < 10 and rel_err[-1] > 1

fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
ax[0].semilogy(lams_is, ess_frac, "o-", color=COLORS["emd"])
ax[0].set_xlabel("log-SNR $\\lambda$"), ax[0].set_ylabel("ESS / draws"), ax[0].set_title("importance weights collapse")
ax[1].semilogy(lams_is, rel_err, "o-", color=COLORS["di"])
ax[1].set_xlabel("log-SNR $\\lambda$"), ax[1].set_ylabel("relative error"),
ax[1].set_title(f"Monte Carlo student score ({n_is} draws)")
fig.tight_layout()
plt.show()
table(list(zip(lams_is, ess_frac, rel_err)), ["lambda", "median ESS / draws", "median relative error"],
      fmt={"lambda": "{:+.0f}", "median ESS / draws": "{:.2%}", "median relative error": "{:.3g}"},
      title=f"Importance sampling of the student score, {n_is} draws from the prior")

# %% [markdown]
# At high noise the prior is a fine proposal: at $\lambda = -6$ the median effective sample size is
# {glue:text}`ch03_ess_lo` of the draws and the score's median relative error
# {glue:text}`ch03_relerr_lo`. At low noise the estimate rests on a handful of draws: at
# $\lambda = 6$ the median effective sample size is {glue:text}`ch03_ess_hi_draws`,
# {glue:text}`ch03_ess_drop` times smaller than at $\lambda = -6$, and the median relative error is
# {glue:text}`ch03_relerr_hi`: the error is larger than the score itself. And that is for a 2D linear
# generator, the easiest case there is. So EMD learns
# the student score $s_\psi \approx \nabla \log q_\theta^\lambda$ the way a diffusion model is trained:
# denoising score matching on the generator's own (detached) samples, updated as the generator
# moves (`emd_lib.distill.student_loss`). In the rest of this chapter the generator is linear
# and we use the exact student `exact_student(A, b)`, so that any error is the E-step's own.

# %% [markdown]
# ## 6. Exact EM against the Langevin E-step
#
# **Exact EM.** `exact_em_step` does one E-step and one full M-step in closed form at a single
# noise level. Its fixed point is the maximum-likelihood fit $A A^\top = C$, $b = m$ at every
# level (with $A$ determined up to a rotation), but the speed is not: at high noise the
# posterior of $z$ is nearly the prior and says little about $A$; at low noise $z$ is
# almost a function of $x_t$ and the M-step hands back the $A$ it was given (the well-known
# slowness of EM when the latent is nearly determined).

# %%
A_init, b_init = 0.3 * torch.eye(2), torch.zeros(2)
em_iters = fast_or(300, 80)
em_curves = {}
for lam in (-4.0, -2.0, 0.0, 2.0, 4.0):
    em_curves[lam] = exact_em(A_init, b_init, m, C, *level(lam), iters=em_iters)[2]
hits = {lam: next((i + 1 for i, v in enumerate(e) if v < 1e-3), None) for lam, e in em_curves.items()}
for lam, key in ((-4.0, "m4"), (0.0, "0"), (4.0, "p4")):
    glue(f"ch03_em10_{key}", float(em_curves[lam][9]), fmt=".2g")
glue("ch03_em_hit0", hits[0.0])
assert min(em_curves, key=lambda l: em_curves[l][9]) not in (-4.0, 4.0)   # fastest in the middle
assert hits[0.0] == 15 and all(hits[0.0] < (h or em_iters + 1) for l, h in hits.items() if l != 0.0)
table([(lam, float(e[9]), float(e[-1]), hits[lam] or f"> {em_iters}") for lam, e in em_curves.items()],
      ["lambda", "error after 10 iterations", f"error after {em_iters}", "iterations to error < 1e-3"],
      fmt={"lambda": "{:+.0f}", "error after 10 iterations": "{:.2e}", f"error after {em_iters}": "{:.2e}"},
      title="Exact EM from A = 0.3 I, b = 0: the error ||AA^T - C||_F + ||b - m||")

# %% [markdown]
# After 10 iterations the error is
# {glue:text}`ch03_em10_0` at $\lambda = 0$, against {glue:text}`ch03_em10_m4` at $\lambda = -4$ and
# {glue:text}`ch03_em10_p4` at $\lambda = 4$; at $\lambda = 0$ it falls below $10^{-3}$ after
# {glue:text}`ch03_em_hit0` iterations, sooner than at any other level.

# %% [markdown]
# **Langevin dynamics, in one paragraph.** To sample a density $\pi(u)$ known through its score
# $\nabla \log \pi$ (the normaliser is not needed), repeat
#
# $$u \leftarrow u + \gamma\, \nabla_u \log \pi(u) + \sqrt{2\gamma}\; n, \qquad n \sim \mathcal N(0, I),$$
#
# with a step size $\gamma > 0$ (our convention; some authors write $\gamma/2$ for the drift). It is the
# Euler discretisation of the Langevin diffusion $du = \nabla \log \pi\, dt + \sqrt 2\, dW$, whose density
# evolves by the Fokker-Planck equation $\partial_t p = -\nabla\cdot(p \nabla \log \pi) + \Delta p$; at $p = \pi$
# the right side is $-\Delta \pi + \Delta \pi = 0$, so $\pi$ is its stationary law, and the chain forgets its
# start. The discrete chain with a finite $\gamma$ samples $\pi$ only approximately (unadjusted
# Langevin: a bias that shrinks with $\gamma$), and $\gamma$ must stay below about $2/\text{curvature}$
# of $-\log \pi$ or the chain diverges. For $\pi = \mathcal N(0, 1)$ the step is
# $u \leftarrow (1 - \gamma) u + \sqrt{2\gamma}\, n$: it forgets its start in about $1/\gamma$ steps and settles
# at the variance $2\gamma / (1 - (1-\gamma)^2) = 1/(1 - \gamma/2)$, a bias of about $\gamma/2$. The E-step
# applies this to $\pi = \rho$, whose score needs only the teacher's and the student's scores (section 5).
# A check of those two numbers:

# %%
gamma_lg, K_lg = 0.3, 40
u = 3.0 + torch.zeros(fast_or(200_000, 50_000))                  # every chain starts at u = 3
g_lg = torch.Generator().manual_seed(3)
for _ in range(K_lg):
    u = u + gamma_lg * (-u) + math.sqrt(2 * gamma_lg) * torch.randn(u.shape, generator=g_lg)   # score of N(0, 1): -u
fast_u = f"{len(u):,} chains; the full run uses 200,000"
glue("ch03_lg_mean", float(u.mean()), fmt=".3f", fast=fast_u)
glue("ch03_lg_var", float(u.var()), fmt=".3f", fast=fast_u)
glue("ch03_lg_decay", (1 - gamma_lg) ** K_lg, fmt=".1e")
glue("ch03_lg_stat_var", 1 / (1 - gamma_lg / 2), fmt=".3f")
assert abs(u.mean()) < 0.02 and abs(u.var() - 1 / (1 - gamma_lg / 2)) < 0.03

# %% [markdown]
# After 40 steps of size 0.3 the chains' mean is {glue:text}`ch03_lg_mean`: the start 3 has decayed
# by $(1 - \gamma)^K =$ {glue:text}`ch03_lg_decay`. Their variance is {glue:text}`ch03_lg_var`:
# close to the chain's own stationary variance $1/(1 - \gamma/2) =$ {glue:text}`ch03_lg_stat_var`,
# not to the target's 1.

# %% [markdown]
# **EM with the Langevin E-step.** Now the E-step is what EMD does: start from the generator's
# own joint sample $(z, \epsilon)$, run $K$ Langevin steps on $\rho$ in the $(\epsilon, z)$
# coordinates (chapter 4) with the exact student score, and hand the final pairs to an M-step
# that takes *one* SGD step on the regression loss. The learning rate is scaled by the inverse of
# the regression's curvature $\alpha^2 / \sigma^2$, that is $0.5\, \sigma^2 / \alpha^2$, and in the full runs below it
# decays as $t_0 / (t_0 + k)$ over the EM iterations $k$, with $t_0 = 30$ (`langevin_em`'s default), to
# average out the Monte Carlo noise. The noise in the chain is not cancelled here
# (`cancel="none"`; chapter 4 is about cancelling it).
#
# One iteration from scratch, then the library's `langevin_em_step` with the same random numbers:

# %%
from emd_lib.langevin import estep
from emd_lib.em import langevin_em_step

lcfg = LangevinConfig(K=8, space="eps", move_z=True, gamma_eps=0.3, gamma_z=0.3, z_precondition="none",
                      cancel="none")
lam_em = 0.0
a_em, sig_em = level(lam_em)
batch = fast_or(1024, 256)

# from scratch
g1 = LinearGenerator(A_init, b_init)
opt1 = torch.optim.SGD(g1.parameters(), lr=0.5 * sig_em**2 / a_em**2)
rng = torch.Generator().manual_seed(7)
z0, eps0 = torch.randn(batch, 2, generator=rng), torch.randn(batch, 2, generator=rng)
res = estep(g1, teacher, exact_student(g1.A.detach(), g1.b.detach()), z0, eps0,
            torch.full((batch,), lam_em), lcfg, rng=rng)                 # E-step: K Langevin steps on rho
with torch.no_grad():
    x_target = a_em * g1(res.z) + sig_em * res.eps                          # x_t^K, held fixed
loss1 = ((x_target - a_em * g1(res.z)) ** 2).sum(1).mean() / (2 * sig_em**2)   # M-step regression
opt1.zero_grad(), loss1.backward(), opt1.step()

# the library
g2 = LinearGenerator(A_init, b_init)
opt2 = torch.optim.SGD(g2.parameters(), lr=0.5 * sig_em**2 / a_em**2)
loss2 = langevin_em_step(g2, teacher, lam_em, lcfg, opt2, batch=batch, rng=torch.Generator().manual_seed(7))
glue("ch03_em_loss", loss2, fmt=".4f", fast=f"a batch of {batch}; the full run uses 1024")
torch.testing.assert_close(torch.tensor(loss1.item()), torch.tensor(loss2))
torch.testing.assert_close(g1.A, g2.A)
torch.testing.assert_close(g1.b, g2.b)

# %% [markdown]
# The iteration from scratch and the library's agree: the same regression loss,
# {glue:text}`ch03_em_loss`, and the same updated $A$ and $b$.
#
# Now the whole run at $\lambda = 0$, against exact EM at the same level. We run the Langevin
# E-step with $z$ moving, $(\epsilon, z)$, and with $z$ frozen, $(\epsilon, -)$.

# %%
iters = fast_or(300, 60)
runs = {
    "Langevin E-step, (eps, z), K=8": lcfg,
    "Langevin E-step, (eps, -), K=8": LangevinConfig(K=8, space="eps", move_z=False, gamma_eps=0.3, cancel="none"),
}
hist = {}
t0 = time.perf_counter()
for name, cfg in runs.items():
    hist[name] = langevin_em(A_init, b_init, m, C, lam_em, cfg, iters=iters, batch=batch, seed=0)
print(f"{len(runs)} Langevin-EM runs of {iters} iterations in {time.perf_counter() - t0:.1f} s")
exact_curve = em_curves[lam_em][:iters]

fig, ax = plt.subplots(1, 2, figsize=(11, 3.8))
for lam, e in em_curves.items():
    ax[0].semilogy(range(1, em_iters + 1), e, label=rf"$\lambda = {lam:+.0f}$")
ax[0].set_xlabel("EM iteration"), ax[0].set_ylabel(r"$\|AA^\top - C\|_F + \|b - m\|$")
ax[0].set_title("exact EM: one fixed point, speeds that depend on the noise level")
ax[0].set_ylim(1e-6, 5), ax[0].legend()
ax[1].semilogy(range(1, iters + 1), exact_curve, color=COLORS["teacher"], label="exact EM")
for (name, h), c in zip(hist.items(), (COLORS["emd"], COLORS["init"])):
    ax[1].semilogy(range(1, iters + 1), h["errors"], color=c, alpha=0.8, label=name)
ax[1].set_xlabel("EM iteration"), ax[1].set_ylim(1e-3, 5)
ax[1].set_title(r"exact against Langevin E-step at $\lambda = 0$")
ax[1].legend()
fig.tight_layout()
plt.show()

A_ex, b_ex, _ = exact_em(A_init, b_init, m, C, a_em, sig_em, iters=iters)
fast_em = f"{iters} iterations with a batch of {batch}; the full run uses 300 and 1024"
tails = {name: sum(h["errors"][-10:]) / 10 for name, h in hist.items()}
glue("ch03_tail_z", tails["Langevin E-step, (eps, z), K=8"], fmt=".3f", fast=fast_em)
glue("ch03_tail_frozen", tails["Langevin E-step, (eps, -), K=8"], fmt=".3f", fast=fast_em)
glue("ch03_exact_final", exact_curve[-1], fmt=".0e", fast=f"{iters} iterations; the full run uses 300")
for name, h in hist.items():
    assert tails[name] < 0.2 * h["errors"][0]                      # both reach the teacher's neighbourhood
    mid = h["errors"][iters // 2 - 10:iters // 2]
    assert tails[name] > sum(mid) / len(mid) / 3                   # and stall there: the second half gains little
    assert tails[name] > 1e6 * exact_curve[-1]                     # far above exact EM
table([(name, h["errors"][-1], tails[name], vec(h["A"] @ h["A"].T), vec(h["b"])) for name, h in hist.items()]
      + [("exact EM", exact_curve[-1], sum(exact_curve[-10:]) / 10, vec(A_ex @ A_ex.T), vec(b_ex)),
         ("the teacher: C and m", 0.0, 0.0, vec(C), vec(m))],
      ["E-step", "final error", "mean of the last 10", "AA^T (11, 12, 21, 22)", "b"],
      fmt={"final error": "{:.2e}", "mean of the last 10": "{:.2e}"},
      title=f"EM at lambda = {lam_em:.0f} after {iters} iterations")

# %% [markdown]
# Both Langevin E-steps lead the generator to the teacher: $A A^\top$ and $b$ end near $C$ and $m$.
# Exact EM gets there quickly and with no noise at all: below $10^{-3}$ after
# {glue:text}`ch03_em_hit0` iterations at $\lambda = 0$, and an error of
# {glue:text}`ch03_exact_final` at the end. The Langevin version stalls at a Monte Carlo floor set
# by the batch and the decaying learning rate: over its last 10 iterations the error averages
# {glue:text}`ch03_tail_z` with $z$ moving and {glue:text}`ch03_tail_frozen` with $z$ frozen
# (chapter 4 removes that floor by cancelling the chain's noise). Even the chain that never moves
# $z$ converges to the same place: at the fixed point $q_\theta^\lambda = p_\lambda$ the score gap
# is zero and the generator's own joint sample already *is* a sample of $\rho$, so the
# $\epsilon$-chain leaves it there for any $K$, with $z$ moving or not. Away from the fixed point
# the chains differ (a frozen $z$ samples a different joint than $\rho$). Here that changes only the
# path, because the linear family can match this Gaussian teacher exactly and at that match the
# score gap vanishes for every chain. When the family cannot match the teacher there is no such
# common point: each chain settles where its own gradient vanishes, and the destination differs too.
# Chapter 5 fits a linear generator to a two-mode mixture, where the frozen-$z$ chain stops less
# than half of the way from Diff-Instruct's (reverse-KL) fit to the forward-KL fit. Chapter 4 shows
# a choice of coordinates for which the destination changes even here.

# %%
print(f"chapter run time: {time.perf_counter() - t_start:.1f} s")

# %% [markdown]
# ## Summary
#
# You can now:
#
# * write a one-step generator's noisy marginal $q_\theta^\lambda$ as an integral over its latent, say why
#   distillation works with noisy marginals rather than clean ones, and compute the integral in closed
#   form for a linear generator;
# * show that maximum likelihood on teacher samples is the forward KL, and derive its gradient with
#   Fisher's identity as a posterior average of the complete-data gradient;
# * derive the EM bound $\log q_\theta^\lambda(x_t) \ge \mathbb E_r[\log q_\theta(x_t, z)] + H(r)$ with gap
#   $\mathrm{KL}(r \,\|\, q_\theta(z \mid x_t))$, and explain why a full M-step cannot lower the likelihood;
# * state the E-step target $\rho(x_t, z) = p_\lambda(x_t)\, q_\theta(z \mid x_t)$ and the M-step regression
#   $\mathbb E_\rho \|x_t - \alpha g_\theta(z)\|^2 / 2\sigma^2$, whose gradient is the forward-KL gradient;
# * explain why $\nabla \log q_\theta^\lambda$ needs a learned student score (importance sampling collapses at
#   low noise);
# * run Langevin dynamics ($u \leftarrow u + \gamma \nabla \log \pi + \sqrt{2\gamma}\, n$) and EM with a
#   Langevin E-step on a linear generator, and check that it reaches $A A^\top = C$, $b = m$.

# %% [markdown]
# ## Exercise 3.1: the gap of the EM bound
#
# For any distribution $r(z)$ over the latent, Jensen's inequality gives the bound
# $\log q_\theta^\lambda(x_t) \ge \mathbb E_{r}\big[\log \mathcal N(x_t; \alpha g(z), \sigma^2 I) + \log \mathcal N(z; 0, I) - \log r(z)\big]$,
# which EM's E-step makes tight. Derive the gap (left side minus right side) in closed form for
# the linear generator and a Gaussian $r = \mathcal N(m_i, S)$, and write
# `bound_gap(A, b, x_t, alpha, sigma, m, S)`: the gap for each row of `x_t` $(n, d)$ with its own
# mean `m[i]` and the shared covariance `S` (float64 tensors), shape $(n,)$. The check evaluates
# it at random points and covariances, and at $r$ = the posterior, where it must vanish.
# `emd_lib.em` refuses to run inside your answer.

# %%
import torch
from emd_lib.exercises import check


def bound_gap(A, b, x_t, alpha, sigma, m, S):
    ### BEGIN SOLUTION
    eye = torch.eye(A.shape[1], dtype=A.dtype)
    S_z = torch.linalg.inv(eye + alpha**2 / sigma**2 * A.T @ A)             # the posterior's covariance
    mu = (x_t - alpha * b) @ (alpha / sigma**2 * S_z @ A.T).T                # and its means, (n, d)
    # log q_t(x_t) - bound(r) = KL(r(z) || q(z | x_t)), a KL between Gaussians
    P = torch.linalg.inv(S_z)
    dm = mu - m
    return 0.5 * (torch.trace(P @ S) + ((dm @ P) * dm).sum(1) - len(b) + torch.logdet(S_z) - torch.logdet(S))
    ### END SOLUTION


check("3.1", bound_gap)

# %% [markdown]
# ## Exercise 3.2: Fisher's identity for the offset
#
# Write `grad_b(A, b, x_t, alpha, sigma)` returning, per sample `(B, d)`, the posterior average
# $\mathbb E_{q(z|x_t)}\big[\nabla_b \log \mathcal N(x_t; \alpha(Az + b), \sigma^2 I)\big]$. Use
# `emd_lib.em.latent_posterior` for the posterior mean. The check compares it with autograd
# of $\log q_\theta^\lambda(x_t)$.

# %%
import torch
from emd_lib.em import latent_posterior
from emd_lib.exercises import check


def grad_b(A, b, x_t, alpha, sigma):
    ### BEGIN SOLUTION
    mu, _ = latent_posterior(A, b, x_t, alpha, sigma)
    return alpha / sigma**2 * (x_t - alpha * mu @ A.T - alpha * b)
    ### END SOLUTION


check("3.2", grad_b)

# %% [markdown]
# ## Exercise 3.3: one exact EM step
#
# Section 4 did one EM step by least squares on samples of $\rho$. Do it without samples: under
# $\rho$, $x_t \sim p_\lambda = \mathcal N(\alpha m, \alpha^2 C + \sigma^2 I)$ and $z \mid x_t$ is the Gaussian
# posterior of section 3, and the least squares of $x_t/\alpha$ on $[z, 1]$ needs only the first and
# second moments of $(x_t, z)$. Write `em_step(A, b, m, C, alpha, sigma)` returning the new
# $(A, b)$ (float64 tensors). The check compares it at three noise levels with our closed form;
# `emd_lib.em` refuses to run inside your answer.

# %%
import torch
from emd_lib.exercises import check


def em_step(A, b, m, C, alpha, sigma):
    ### BEGIN SOLUTION
    d = len(b)
    eye = torch.eye(d, dtype=A.dtype)
    P = alpha**2 * C + sigma**2 * eye                                        # Cov of x_t ~ p_t
    S_z = torch.linalg.inv(eye + alpha**2 / sigma**2 * A.T @ A)
    M = alpha / sigma**2 * S_z @ A.T                                         # E[z | x_t] = M (x_t - alpha b)
    Ex = alpha * m
    Ez = M @ (Ex - alpha * b)
    Ezz = S_z + M @ P @ M.T + torch.outer(Ez, Ez)                            # E[z z^T]
    Exz = P @ M.T + torch.outer(Ex, Ez)                                      # E[x_t z^T]
    # normal equations of x_t / alpha ~ [A | b] [z; 1]
    G = torch.cat([torch.cat([Ezz, Ez[:, None]], 1), torch.cat([Ez[None], torch.ones(1, 1, dtype=A.dtype)], 1)], 0)
    W = torch.cat([Exz, Ex[:, None]], 1) / alpha @ torch.linalg.inv(G)
    return W[:, :d], W[:, d]
    ### END SOLUTION


check("3.3", em_step)
