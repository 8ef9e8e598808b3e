# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Chapter 1: Diffusion in 2D
#
# A diffusion model {cite:p}`ho2020ddpm,song2021sde` is the teacher that EM Distillation {cite:p}`xie2024emd` compresses into a one-step
# generator. Before distilling anything we need a teacher we can trust completely. In two
# dimensions there is one: a Gaussian mixture, whose noisy densities, scores and denoisers
# are closed-form at every noise level. This chapter builds that teacher from scratch and
# samples from it the way a diffusion model is sampled, by integrating from noise to data.
#
# **What you will learn**
#
# * how data are noised, with the noise level named by its log signal-to-noise ratio
#   $\lambda$, and how the VP and EDM schedules meet in that one coordinate;
# * what the noisy marginals of a mixture look like as $\lambda$ falls;
# * how to derive the exact score and denoiser of a noisy mixture, and Tweedie's formula
#   that links them;
# * how the probability-flow ODE (Heun) and the reverse SDE turn noise into samples;
# * how sample quality depends on the number of function evaluations (NFE): it collapses
#   at few NFE, and that collapse is why a one-step generator is the prize.

# %%
import math

import matplotlib.pyplot as plt
import torch

import emd_lib
from emd_lib import fast_or, is_fast
from emd_lib.book import glue, table
from emd_lib.metrics import knn_precision_recall, mmd, mode_masses, total_variation
from emd_lib.mixtures import irregular, ring8
from emd_lib.book.plotting import COLORS, density2d, scatter2d, use_style
from emd_lib.sampling import sample_ode, sample_sde, sigma_grid
from emd_lib.schedules import EDM, VP
from emd_lib.teachers import GaussianMixture

torch.set_num_threads(1)
use_style()
emd_lib.seed_all(0)
N = fast_or(4000, 1000)          # samples per evaluation
fast_n = f"{N} samples; the full run uses 4000"   # beside the numbers that N changes
print(f"fast mode: {is_fast()}, samples per evaluation: {N}")

# %% [markdown]
# ## 1. Noising in log-SNR
#
# A clean sample $x$ is noised as $x_t = \alpha x + \sigma \epsilon$ with
# $\epsilon \sim \mathcal N(0, I)$. Rather than a time $t$, we name the noise level by its
# log signal-to-noise ratio
#
# $$\lambda = \log \frac{\alpha^2}{\sigma^2}.$$
#
# Large $\lambda$ is almost clean data, very negative $\lambda$ is almost pure noise. Two
# schedules fix $\alpha$ and $\sigma$ from $\lambda$:
#
# * **VP** (variance preserving): $\alpha^2 = \mathrm{sigmoid}(\lambda)$,
#   $\sigma^2 = \mathrm{sigmoid}(-\lambda)$, so $\alpha^2 + \sigma^2 = 1$;
# * **EDM** {cite:p}`karras2022edm` (variance exploding): $\alpha = 1$, $\sigma = e^{-\lambda/2}$
#   (EDM's largest noise $\sigma_{\max} = 80$ is $\lambda = -2 \log 80$).
#
# Both give the same ratio $\sigma/\alpha = e^{-\lambda/2}$: the two schedules differ only
# by the overall scale $\alpha$ of $x_t$. Written from scratch and checked against the library:

# %%
def vp_alpha_sigma(lam):
    # alpha^2 = sigmoid(lam), sigma^2 = sigmoid(-lam)
    return torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()


def edm_alpha_sigma(lam):
    # alpha = 1, sigma = exp(-lam / 2)
    return torch.ones_like(lam), torch.exp(-lam / 2)


lam = torch.linspace(-10, 10, 201)
for mine, lib in ((vp_alpha_sigma, VP), (edm_alpha_sigma, EDM)):
    for a, b in zip(mine(lam), lib.alpha_sigma(lam)):
        torch.testing.assert_close(a, b)
a_vp, s_vp = vp_alpha_sigma(lam)
a_edm, s_edm = edm_alpha_sigma(lam)
torch.testing.assert_close(s_vp / a_vp, s_edm / a_edm)          # same sigma / alpha
torch.testing.assert_close(2 * torch.log(a_vp / s_vp), lam)      # lam = log(alpha^2 / sigma^2)
lam_edm_max = float(EDM.lam(1.0, 80.0))                          # EDM's sigma_max = 80
glue("ch01_lam_edm_max", lam_edm_max, fmt=".2f")
alpha_edm_max = float(VP.alpha_sigma(torch.tensor(lam_edm_max))[0])
glue("ch01_vp_alpha_edm_max", alpha_edm_max, fmt=".4f")
assert alpha_edm_max < 0.02                                      # almost pure noise

# %% [markdown]
# Both schedules agree with the library, and with each other in $\sigma/\alpha$. EDM's
# $\sigma_{\max} = 80$ is $\lambda =$ {glue:text}`ch01_lam_edm_max`; a VP sample at that level keeps
# a signal of scale $\alpha =$ {glue:text}`ch01_vp_alpha_edm_max`, almost pure noise.

# %%
fig, axes = plt.subplots(1, 2, figsize=(8.5, 3.0))
axes[0].plot(lam, a_vp, label=r"VP $\alpha$", color="C0")
axes[0].plot(lam, s_vp, label=r"VP $\sigma$", color="C1")
axes[0].set_xlabel(r"log-SNR $\lambda$"), axes[0].set_title("VP schedule"), axes[0].legend()
axes[1].semilogy(lam, s_edm / a_edm, color="C2", label=r"$\sigma/\alpha$ (both schedules)")
axes[1].set_xlabel(r"log-SNR $\lambda$"), axes[1].set_title(r"EDM: $\alpha = 1$, $\sigma = e^{-\lambda/2}$")
axes[1].legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 2. The noisy marginals of a mixture
#
# Our first target is `ring8`: eight Gaussian modes on a circle of radius 2, standard
# deviation 0.15, with unequal weights. If $x \sim \sum_k w_k \mathcal N(\mu_k, C_k)$, then
# each component stays Gaussian under noising:
#
# $$p_\lambda(x_t) = \sum_k w_k\, \mathcal N\big(x_t;\ \alpha \mu_k,\ S_k\big),
# \qquad S_k = \alpha^2 C_k + \sigma^2 I .$$
#
# First a sanity check against samples: the noised samples must have mean
# $\alpha\,\mathbb E[x]$ and covariance $\alpha^2 \mathrm{Cov}[x] + \sigma^2 I$.

# %%
mix = ring8()                                      # VP schedule
print("weights:", [round(w, 3) for w in mix.weights.tolist()])
x0 = mix.sample(20000, generator=torch.Generator().manual_seed(0))
m_x = (mix.weights[:, None] * mix.means).sum(0)
second = (mix.weights[:, None, None] * (mix.covs + mix.means[:, :, None] * mix.means[:, None, :])).sum(0)
C_x = second - torch.outer(m_x, m_x)              # exact covariance of the clean mixture
cov_errs, mean_errs = [], []
for lam_i in (2.0, -2.0):
    alpha, sigma = VP.alpha_sigma(torch.tensor(lam_i))
    x_t = alpha * x0 + sigma * torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    cov_exact = alpha**2 * C_x + sigma**2 * torch.eye(2)
    cov_errs.append((torch.cov(x_t.T) - cov_exact).abs().max().item())
    mean_errs.append((x_t.mean(0) - alpha * m_x).abs().max().item())
glue("ch01_cov_err", max(cov_errs), fmt=".3f")
glue("ch01_mean_err", max(mean_errs), fmt=".3f")
assert max(cov_errs) < 0.06 and max(mean_errs) < 0.03

# %% [markdown]
# At $\lambda = +2$ and $\lambda = -2$, 20,000 noised samples have a mean within
# {glue:text}`ch01_mean_err` and a covariance within {glue:text}`ch01_cov_err` (largest entry) of
# the exact values: errors of the size that sampling alone leaves.
#
# The densities themselves, as images (the library's `density2d` evaluates
# `mix.log_prob(x_t, lam)`). As $\lambda$ falls the modes widen, merge into a ring, then
# into a single blob that approaches $\mathcal N(0, I)$; the heaviest mode (weight 4/15,
# at angle 315°) is the last one you can still pick out.

# %%
lams_show = [6.0, 2.0, 0.0, -2.0, -6.0]
fig, axes = plt.subplots(1, len(lams_show), figsize=(12, 2.7))
for ax, l in zip(axes, lams_show):
    density2d(ax, mix, lam=l, lim=3.0, n=160, title=rf"$\lambda = {l:+.0f}$")
    ax.set_xticks([]), ax.set_yticks([])
plt.suptitle("VP-noised ring8, density of $x_t$", y=1.02)
plt.tight_layout()
plt.show()

# where is the noisy density highest? (the heaviest mode sits at 315 degrees)
gl = torch.linspace(-3, 3, 241)
gxx, gyy = torch.meshgrid(gl, gl, indexing="xy")
pts = torch.stack([gxx.flatten(), gyy.flatten()], 1)
for l, key in ((2.0, "p2"), (0.0, "0")):
    top = pts[mix.log_prob(pts, torch.full((len(pts),), l)).argmax()]
    angle = math.degrees(math.atan2(top[1], top[0])) % 360
    glue(f"ch01_peak_angle_{key}", angle, fmt=".0f")
    glue(f"ch01_peak_radius_{key}", float(top.norm()), fmt=".2f")
    assert abs(angle - 315) < 10

# %% [markdown]
# On a grid over $[-3, 3]^2$ the noisy density is highest at angle {glue:text}`ch01_peak_angle_p2`°
# (radius {glue:text}`ch01_peak_radius_p2`) at $\lambda = 2$ and at angle {glue:text}`ch01_peak_angle_0`°
# (radius {glue:text}`ch01_peak_radius_0`) at $\lambda = 0$: in the heaviest mode both times.

# %% [markdown]
# ## 3. The exact teacher: score and denoiser of a noisy mixture
#
# A diffusion model is a **denoiser** $D(x_t, \lambda) \approx \mathbb E[x \mid x_t]$, or
# equivalently a **score** $\nabla_{x_t} \log p_\lambda(x_t)$. For the mixture both are exact.
#
# *Score.* Differentiate the log of the mixture density. With the responsibilities
# $r_k(x_t) = w_k \mathcal N(x_t; \alpha\mu_k, S_k) / p_\lambda(x_t)$,
#
# $$\nabla \log p_\lambda(x_t) = -\sum_k r_k(x_t)\, S_k^{-1}(x_t - \alpha \mu_k).$$
#
# *Denoiser.* Given the component $k$, $(x, x_t)$ is jointly Gaussian with
# $\mathrm{Cov}(x, x_t) = \alpha C_k$, so $\mathbb E[x \mid x_t, k] = \mu_k + \alpha C_k S_k^{-1}(x_t - \alpha\mu_k)$;
# averaging over $k$ with $r_k$:
#
# $$D(x_t) = \mathbb E[x \mid x_t] = \sum_k r_k(x_t)\big(\mu_k + \alpha C_k S_k^{-1}(x_t - \alpha \mu_k)\big).$$
#
# *Tweedie's formula* links them for any data distribution {cite:p}`efron2011tweedie`. The noisy density is
# $p_\lambda(x_t) = \int \mathcal N(x_t; \alpha x, \sigma^2 I)\, p(x)\, dx$. Differentiate under the integral, using
# $\nabla_{x_t} \mathcal N(x_t; \alpha x, \sigma^2 I) = \frac{\alpha x - x_t}{\sigma^2}\, \mathcal N(x_t; \alpha x, \sigma^2 I)$,
# and divide by $p_\lambda(x_t)$:
#
# $$\nabla \log p_\lambda(x_t) = \int \frac{\alpha x - x_t}{\sigma^2}\,
#   \underbrace{\frac{\mathcal N(x_t; \alpha x, \sigma^2 I)\, p(x)}{p_\lambda(x_t)}}_{p(x \mid x_t)} dx
#   = \frac{\alpha\, \mathbb E[x \mid x_t] - x_t}{\sigma^2} .$$
#
# So $\alpha D(x_t) = x_t + \sigma^2 \nabla \log p_\lambda(x_t)$, i.e. $\nabla\log p_\lambda = (\alpha D - x_t)/\sigma^2$.
# Since $x_t = \alpha x + \sigma\epsilon$, the noise prediction $\hat\epsilon = \mathbb E[\epsilon \mid x_t] = (x_t - \alpha D)/\sigma$ is
# $-\sigma \nabla \log p_\lambda$. (For the mixture, both formulas above satisfy it: the check below.)
#
# From scratch, for isotropic components ($C_k = \omega_k^2 I$, so $S_k = (\alpha^2 \omega_k^2 + \sigma^2) I$):

# %%
def mixture_from_scratch(x_t, lam, weights, means, stds, schedule=VP):
    """log p, score and denoiser of an isotropic Gaussian mixture noised at log-SNR lam (a scalar)."""
    alpha, sigma = schedule.alpha_sigma(torch.as_tensor(lam))
    d = x_t.shape[1]
    # S_k = (alpha^2 omega_k^2 + sigma^2) I, omega_k = stds[k]
    var = alpha**2 * stds**2 + sigma**2                                   # (K,)
    diff = x_t[:, None, :] - alpha * means[None]                          # (B, K, d)
    # log N(x_t; alpha mu_k, S_k)
    logn = -0.5 * (diff**2).sum(-1) / var - 0.5 * d * torch.log(2 * math.pi * var)   # (B, K)
    logp = torch.logsumexp(torch.log(weights) + logn, dim=-1)            # (B,)
    r = torch.softmax(torch.log(weights) + logn, dim=-1)                  # responsibilities (B, K)
    # score = -sum_k r_k S_k^{-1} (x_t - alpha mu_k)
    score = -(r[..., None] * diff / var[None, :, None]).sum(1)
    # D = sum_k r_k (mu_k + alpha C_k S_k^{-1} (x_t - alpha mu_k))
    denoised = (r[..., None] * (means[None] + alpha * (stds**2 / var)[None, :, None] * diff)).sum(1)
    return logp, score, denoised


stds = mix.var[:, 0].sqrt()
g = torch.Generator().manual_seed(2)
for lam_i in (4.0, 0.0, -3.0):
    x_t = 2.0 * torch.randn(512, 2, generator=g)
    lam_b = torch.full((512,), lam_i)
    logp, score, den = mixture_from_scratch(x_t, lam_i, mix.weights, mix.means, stds)
    torch.testing.assert_close(logp, mix.log_prob(x_t, lam_b))
    torch.testing.assert_close(score, mix.score(x_t, lam_b), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(den, mix.denoise(x_t, lam_b), rtol=1e-4, atol=1e-4)
    # the score is the gradient of log p (autograd agrees)
    xg = x_t.clone().requires_grad_(True)
    (auto,) = torch.autograd.grad(mix.log_prob(xg, lam_b).sum(), xg)
    torch.testing.assert_close(score, auto, rtol=1e-4, atol=1e-4)
    # Tweedie: score = (alpha D - x_t) / sigma^2
    alpha, sigma = VP.alpha_sigma(torch.tensor(lam_i))
    torch.testing.assert_close(score, (alpha * den - x_t) / sigma**2, rtol=1e-4, atol=1e-3)
# the same code with the EDM schedule
mix_edm_chk = ring8(EDM)
x_t = 5.0 * torch.randn(256, 2, generator=g)
for lam_i in (2.0, -4.0):
    lam_b = torch.full((256,), lam_i)
    logp, score, den = mixture_from_scratch(x_t, lam_i, mix.weights, mix.means, stds, schedule=EDM)
    torch.testing.assert_close(score, mix_edm_chk.score(x_t, lam_b), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(den, mix_edm_chk.denoise(x_t, lam_b), rtol=1e-4, atol=1e-4)

# %% [markdown]
# The from-scratch log-density, score and denoiser match `GaussianMixture` under both schedules,
# and autograd and Tweedie's formula agree with the score. For full covariances the library solves
# with Cholesky factors instead of dividing by a variance. One more check of what "denoiser"
# means: $D$ is the *best* estimate of $x$ from $x_t$ in mean squared error, so any
# perturbation of it does worse. This is why a network trained to regress $x$ on $x_t$
# (denoising score matching) learns the score: its optimum is $D$.

# %%
lam_i = 0.0
alpha, sigma = VP.alpha_sigma(torch.tensor(lam_i))
x_clean = mix.sample(N, generator=torch.Generator().manual_seed(4))
x_t = alpha * x_clean + sigma * torch.randn(x_clean.shape, generator=torch.Generator().manual_seed(5))
D = mix.denoise(x_t, torch.full((N,), lam_i))
mse = lambda est: ((est - x_clean) ** 2).sum(1).mean().item()  # noqa: E731
candidates = {"D(x_t)": D, "x_t / alpha": x_t / alpha, "1.1 D(x_t)": 1.1 * D, "D(x_t) + 0.1": D + 0.1,
              "nearest mode mean": mix.means[mix.responsibilities(x_t, torch.full((N,), lam_i)).argmax(1)]}
errors = {name: mse(est) for name, est in candidates.items()}
for key, name in (("D", "D(x_t)"), ("scaled", "1.1 D(x_t)"), ("shifted", "D(x_t) + 0.1"),
                  ("xt", "x_t / alpha"), ("nearest", "nearest mode mean")):
    glue(f"ch01_mse_{key}", errors[name], fmt=".3f", fast=fast_n)
assert all(errors["D(x_t)"] < e for name, e in errors.items() if name != "D(x_t)")
table(sorted(errors.items(), key=lambda kv: kv[1]), ["estimate of x", "MSE"], fmt="{:.4f}",
      title=f"Mean squared error of estimates of x from x_t at lambda = {lam_i:.0f} ({N} samples)")

# %% [markdown]
# The exact denoiser has the smallest error, {glue:text}`ch01_mse_D`. Scaling it by 1.1 raises the
# error to {glue:text}`ch01_mse_scaled` and shifting it by 0.1 to {glue:text}`ch01_mse_shifted`;
# snapping to the most likely mode's mean gives {glue:text}`ch01_mse_nearest`, and undoing only the
# scale, $x_t/\alpha$, gives {glue:text}`ch01_mse_xt`.
#
# Pictured: the score field at two noise levels. At $\lambda = 2$ it points into the
# nearest mode; at $\lambda = -2$ every arrow points, roughly, at the centre of the blurred
# ring, with a bias towards the heavy modes.

# %%
fig, axes = plt.subplots(1, 2, figsize=(8, 4))
grid1 = torch.linspace(-2.8, 2.8, 17)
gx, gy = torch.meshgrid(grid1, grid1, indexing="xy")
pts = torch.stack([gx.flatten(), gy.flatten()], 1)
for ax, l in zip(axes, (2.0, -2.0)):
    density2d(ax, mix, lam=l, lim=3.0, n=160, title=rf"score field, $\lambda = {l:+.0f}$")
    sc = mix.score(pts, torch.full((len(pts),), l))
    sc = sc / sc.norm(dim=1, keepdim=True).clamp_min(1e-8)            # directions only
    ax.quiver(pts[:, 0], pts[:, 1], sc[:, 0], sc[:, 1], color="C1", scale=28, width=0.004)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 4. Sampling: the probability-flow ODE and the reverse SDE
#
# Write $y = x_t/\alpha$ and $s = \sigma/\alpha = e^{-\lambda/2}$ (EDM's $\sigma$ {cite}`karras2022edm`; in this book
# $s$ means this ratio and nothing else). Then $y = x + s\,\epsilon$ for *every* schedule: the noise
# level is one number, and the schedule only rescales $x_t$.
#
# *The probability-flow ODE in $(y, s)$* {cite}`song2021sde`. Let $p(y; s)$ be the density of $y$, the data
# convolved with $\mathcal N(0, s^2 I)$. A Gaussian convolution of variance $v = s^2$ obeys the heat equation
# $\partial p/\partial v = \tfrac12 \Delta p$, so $\partial p / \partial s = s\, \Delta p$. A deterministic flow
# $dy/ds = u(y, s)$ moves a density by the continuity equation $\partial p/\partial s = -\nabla\cdot(p\, u)$.
# The choice $u = -s \nabla_y \log p$ matches the two: $-\nabla\cdot(p \cdot (-s \nabla \log p)) = s\, \nabla \cdot \nabla p = s \Delta p$.
# So samples of $p(y; s_{\max})$ carried by $dy/ds = -s \nabla_y \log p(y; s)$ have the marginal $p(y; s)$ at
# every $s$. Tweedie's formula in these coordinates ($\alpha = 1$, noise $s$) reads
# $\nabla_y \log p(y; s) = (D(y, s) - y)/s^2$, which gives EDM's form
#
# $$\frac{dy}{ds} = \frac{y - D(y, s)}{s}.$$
#
# Start from $y \sim \mathcal N(0, s_{\max}^2 I)$ and integrate down to $s = 0$ on EDM's
# grid $s_i = \big(s_{\max}^{1/\kappa} + \tfrac{i}{n-1}(s_{\min}^{1/\kappa} - s_{\max}^{1/\kappa})\big)^\kappa$,
# with the EDM exponent $\kappa = 7$ (EDM calls it $\rho$; in this book $\rho$ is the E-step's joint
# posterior, chapter 3), then $0$. Heun's method averages the slope at both ends of each step: two
# denoiser calls per step, one on the last (Euler) step into $s=0$, so NFE $= 2n - 1$.
#
# *The reverse SDE.* The forward noising in $s$ is $dy = \sqrt{2s}\, dW$ (its variance grows by
# $d(s^2) = 2s\, ds$), whose time reversal is $dy = -2s \nabla_y \log p\, ds + \sqrt{2s}\, d\bar W$ with $s$
# decreasing. One Euler-Maruyama step from $s$ to $s' < s$ adds $2s(s - s') \approx s^2 - s'^2$ times the score
# and noise of that variance; with Tweedie's formula, one denoiser call per step:
# $y \leftarrow y + \frac{s^2 - s'^2}{s^2}(D(y) - y) + \sqrt{s^2 - s'^2}\,n$.
#
# From scratch, then checked against `emd_lib.sampling` from the same starting noise:

# %%
def denoise_ys(teacher, y, s):
    """D at y = x_t / alpha and noise s = sigma / alpha (the lam the teacher expects is -2 log s)."""
    lam_b = torch.full((y.shape[0],), -2 * math.log(s))
    alpha, _ = teacher.schedule.alpha_sigma(lam_b)
    return teacher.denoise(alpha[:, None] * y, lam_b)


def heun_from_scratch(teacher, y, grid):
    for s, s_next in zip(grid[:-1], grid[1:]):
        d = (y - denoise_ys(teacher, y, s)) / s                          # dy/ds at s
        y_next = y + (s_next - s) * d                                     # Euler step
        if s_next > 0:                                                    # Heun correction
            d2 = (y_next - denoise_ys(teacher, y_next, s_next)) / s_next
            y_next = y + (s_next - s) * 0.5 * (d + d2)
        y = y_next
    return y


def sde_from_scratch(teacher, y, grid, gen):
    for s, s_next in zip(grid[:-1], grid[1:]):
        D = denoise_ys(teacher, y, s)
        if s_next == 0:
            return D
        ds2 = s**2 - s_next**2
        y = y + ds2 / s**2 * (D - y) + math.sqrt(ds2) * torch.randn(y.shape, generator=gen)
    return y


s_min, s_max = math.exp(-10 / 2), math.exp(10 / 2)        # VP's lam range [-10, 10], capped at lam = 10
n_steps = 18
grid = sigma_grid(n_steps, s_min, s_max).tolist()
y0 = torch.randn(256, 2, generator=torch.Generator().manual_seed(6)) * grid[0]
x_ode, nfe = sample_ode(mix, n_steps=n_steps, y=y0.clone(), s_min=s_min, s_max=s_max)
torch.testing.assert_close(heun_from_scratch(mix, y0.clone(), grid), x_ode, rtol=1e-4, atol=1e-4)
assert nfe == 2 * n_steps - 1

# the SDE: the library draws y0 and then one noise per step from the same generator
x_sde, nfe_sde = sample_sde(mix, 256, n_steps=50, s_min=s_min, s_max=s_max, generator=torch.Generator().manual_seed(7))
gen = torch.Generator().manual_seed(7)
grid50 = sigma_grid(50, s_min, s_max).tolist()
y_start = torch.randn(256, 2, generator=gen) * grid50[0]
torch.testing.assert_close(sde_from_scratch(mix, y_start, grid50, gen), x_sde, rtol=1e-4, atol=1e-4)
glue("ch01_heun_nfe", nfe)
glue("ch01_sde_nfe", nfe_sde)
assert nfe_sde == 50                                             # one call per step

# %% [markdown]
# Both samplers from scratch match the library's. Heun's {glue:text}`ch01_heun_nfe` denoiser calls
# for 18 steps are $2n - 1$; the SDE's 50 steps cost {glue:text}`ch01_sde_nfe`, one call each.
#
# Because the ODE lives in $(y, s)$, a VP teacher and an EDM teacher of the same data give
# **the same trajectory** on the same $s$-grid: the denoiser is a function of $(y, s)$ only.
# A check (EDM's range is $s \in [0.002, 80]$, so we use it for both):

# %%
mix_edm = ring8(EDM)
y0 = torch.randn(256, 2, generator=torch.Generator().manual_seed(8)) * 80.0
x_vp, _ = sample_ode(mix, n_steps=18, y=y0.clone(), s_min=0.002, s_max=80.0)
x_edm, _ = sample_ode(mix_edm, n_steps=18, y=y0.clone(), s_min=0.002, s_max=80.0)
glue("ch01_vp_edm_diff", float((x_vp - x_edm).abs().max()), fmt=".1e")
assert (x_vp - x_edm).abs().max() < 1e-4

# %% [markdown]
# The VP and the EDM teacher's samples differ by at most {glue:text}`ch01_vp_edm_diff`: float32
# rounding of the same trajectory.

# %% [markdown]
# ## 5. Sample quality against the number of function evaluations
#
# Now the question that motivates the whole book: how good are the samples as we cut the
# number of denoiser calls? We measure, against exact samples of the mixture
# (`emd_lib.metrics`):
#
# * **TV**: total variation between the fraction of samples in each mode and the true weights;
# * **MMD**: squared maximum mean discrepancy (RBF kernels), zero only for equal distributions;
# * **precision / recall** (k-NN manifolds): are the samples on the data, and is the data covered?
#
# These are the pieces of `emd_lib.metrics.mixture_report`, called one by one so that fast mode
# can give the MMD (the expensive part) a smaller subsample. Fresh exact samples give the floor that
# sampling noise alone allows. We run both samplers on two targets, `ring8` and `irregular`
# (seven modes of unequal weights and widths), with the default range of the VP teacher,
# $s \in [e^{-5}, e^{5}] \approx [0.0067, 148]$.

# %%
N_MMD = fast_or(2000, 600)


def quality(teacher, ref, x):
    """TV of mode masses, modes covered, MMD, precision and recall of samples x against exact samples ref."""
    masses, _ = mode_masses(teacher, x)
    prec, rec = knn_precision_recall(ref, x)
    return {"tv": total_variation(masses, teacher.weights), "modes_covered": int((masses >= 0.2 * teacher.weights).sum()),
            "n_modes": teacher.n_components, "mmd": mmd(x[:N_MMD], ref[:N_MMD]), "precision": prec, "recall": rec}


ode_steps = [1, 2, 3, 4, 6, 9, 13, 18, 25]
sde_steps = [1, 2, 4, 8, 16, 32, 64, 128, 256]
targets = {"ring8": ring8(), "irregular": irregular()}
results = {}
for tname, teacher in targets.items():
    ref = teacher.sample(N, generator=torch.Generator().manual_seed(99))
    floor = quality(teacher, ref, teacher.sample(N, generator=torch.Generator().manual_seed(100)))
    rows = {"ode": [], "sde": []}
    for kind, steps_list in (("ode", ode_steps), ("sde", sde_steps)):
        for n_st in steps_list:
            gen = torch.Generator().manual_seed(11)
            sampler = sample_ode if kind == "ode" else sample_sde
            x, nfe = sampler(teacher, N, n_steps=n_st, generator=gen)
            rep = quality(teacher, ref, x)
            far = float((x.abs() > 3).any(1).float().mean())          # fraction outside the [-3, 3]^2 box
            rows[kind].append({"nfe": nfe, "far": far, "x": x,
                               **{k: rep[k] for k in ("tv", "mmd", "precision", "recall", "modes_covered")}})
    results[tname] = {"floor": floor, **rows}

# %%
from IPython.display import display

columns = ["sampler", "NFE", "TV", "MMD", "precision", "recall", "outside the box"]
fmts = {"TV": "{:.3f}", "MMD": "{:.4f}", "precision": "{:.2f}", "recall": "{:.2f}", "outside the box": "{:.0%}"}
for tname, res in results.items():
    fl = res["floor"]
    trows = [("exact samples", "-", fl["tv"], fl["mmd"], fl["precision"], fl["recall"], "-")]
    trows += [(kind.upper(), r["nfe"], r["tv"], r["mmd"], r["precision"], r["recall"], r["far"])
              for kind in ("ode", "sde") for r in res[kind]]
    display(table(trows, columns, fmt=fmts, title=f"{tname}: samples against {N} exact ones "
                  "(outside the box: the share of samples outside [-3, 3]^2)"))

# %%
fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
styles = {"ring8": "-", "irregular": "--"}
colors = {"ode": "C0", "sde": "C1"}
for tname, res in results.items():
    for kind in ("ode", "sde"):
        nf = [r["nfe"] for r in res[kind]]
        lab = f"{kind.upper()}, {tname}"
        axes[0].plot(nf, [r["tv"] for r in res[kind]], styles[tname], color=colors[kind], marker="o", ms=3, label=lab)
        axes[1].plot(nf, [max(r["mmd"], 1e-5) for r in res[kind]], styles[tname], color=colors[kind], marker="o", ms=3)
        axes[2].plot(nf, [r["precision"] for r in res[kind]], styles[tname], color=colors[kind], marker="o", ms=3)
    axes[0].axhline(res["floor"]["tv"], color=COLORS["teacher"], ls=styles[tname], lw=0.8)
    axes[1].axhline(max(res["floor"]["mmd"], 1e-5), color=COLORS["teacher"], ls=styles[tname], lw=0.8)
    axes[2].axhline(res["floor"]["precision"], color=COLORS["teacher"], ls=styles[tname], lw=0.8)
for ax, t in zip(axes, ("TV of mode masses", "MMD (log scale)", "precision")):
    ax.set_xscale("log"), ax.set_xlabel("NFE (denoiser calls)"), ax.set_title(t)
axes[1].set_yscale("log")
axes[0].legend(fontsize=8)
plt.suptitle("grey lines: exact samples (the floor set by sampling noise)", y=1.02, fontsize=9)
plt.tight_layout()
plt.show()

# %% [markdown]
# What the samples look like on the irregular target, at a few budgets (a panel can be
# nearly empty: those samples landed outside the box):

# %%
res = results["irregular"]
show = [("ode", 0), ("ode", 2), ("ode", 4), ("ode", len(ode_steps) - 1),
        ("sde", 0), ("sde", 3), ("sde", 5), ("sde", len(sde_steps) - 1)]
fig, axes = plt.subplots(2, 4, figsize=(11, 5.6))
for ax, (kind, i) in zip(axes.flatten(), show):
    r = res[kind][i]
    scatter2d(ax, r["x"], title=f"{kind.upper()}, NFE {r['nfe']} (TV {r['tv']:.2f})",
              color=colors[kind], lim=3.0, s=1.5)
    ax.set_xticks([]), ax.set_yticks([])
plt.tight_layout()
plt.show()

# %%
def nfe_to_reach(rows, floor_tv, factor=2.0, slack=0.02):
    """Smallest NFE from which on the TV stays within factor x floor + slack."""
    ok = [r["tv"] <= factor * floor_tv + slack for r in rows]
    for i in range(len(rows)):
        if all(ok[i:]):
            return rows[i]["nfe"]
    return None


glue("ch01_ode_nfe_max", results["ring8"]["ode"][-1]["nfe"])
glue("ch01_sde_nfe_max", results["ring8"]["sde"][-1]["nfe"])
for tname, key in (("ring8", "ring"), ("irregular", "irr")):
    res = results[tname]
    o1, s1 = res["ode"][0], res["sde"][0]
    ob, sb = res["ode"][-1], res["sde"][-1]
    n_ode, n_sde = nfe_to_reach(res["ode"], res["floor"]["tv"]), nfe_to_reach(res["sde"], res["floor"]["tv"])
    worst_ode = max(res["ode"][1:4], key=lambda r: r["far"])            # NFE 3, 5 or 7
    glue(f"ch01_{key}_floor", res["floor"]["tv"], fmt=".3f", fast=fast_n)
    glue(f"ch01_{key}_tv1", o1["tv"], fmt=".2f", fast=fast_n)
    glue(f"ch01_{key}_modes1", o1["modes_covered"])
    glue(f"ch01_{key}_far_nfe", worst_ode["nfe"], fast=fast_n)
    glue(f"ch01_{key}_far", worst_ode["far"], fmt=".0%", fast=fast_n)
    glue(f"ch01_{key}_far_prec", worst_ode["precision"], fmt=".2f", fast=fast_n)
    glue(f"ch01_{key}_far_rec", worst_ode["recall"], fmt=".2f", fast=fast_n)
    glue(f"ch01_{key}_sde_far2", res["sde"][1]["far"], fmt=".0%", fast=fast_n)
    glue(f"ch01_{key}_sde_far8", res["sde"][3]["far"], fmt=".0%", fast=fast_n)
    glue(f"ch01_{key}_ode_far7", res["ode"][3]["far"], fmt=".0%", fast=fast_n)
    glue(f"ch01_{key}_ode_reach", n_ode, fast=fast_n)
    glue(f"ch01_{key}_sde_reach", n_sde, fast=fast_n)
    glue(f"ch01_{key}_ode_tv", ob["tv"], fmt=".3f", fast=fast_n)
    glue(f"ch01_{key}_sde_tv", sb["tv"], fmt=".3f", fast=fast_n)
    glue(f"ch01_{key}_mmd1", o1["mmd"], fmt=".2f", fast=fast_n)
    glue(f"ch01_{key}_ode_mmd", ob["mmd"], fmt=".4f", fast=fast_n)
    glue(f"ch01_{key}_sde_mmd", sb["mmd"], fmt=".4f", fast=fast_n)
    # the claims of the text, as checks
    assert o1["tv"] > 5 * max(ob["tv"], 0.01) and o1["modes_covered"] == 1
    assert ob["mmd"] < 0.1 * o1["mmd"] and sb["mmd"] < 0.1 * s1["mmd"]
    assert worst_ode["far"] > 0.5 and worst_ode["precision"] < 0.5 and ob["far"] < 0.01
    assert res["sde"][1]["far"] > 0.5 and res["sde"][3]["far"] < 0.1 < res["ode"][3]["far"]   # NFE 2, 8 and 7
    assert all(r["far"] < 0.1 for r in res["sde"][3:])                # the SDE stays in place from NFE 8 on
    assert n_ode is not None and n_sde is not None

# %% [markdown]
# Reading the numbers. Fresh exact samples set the floor: their TV is {glue:text}`ch01_ring_floor`
# on ring8 and {glue:text}`ch01_irr_floor` on irregular.
#
# * With **one** denoiser call both samplers return $D(y, s_{\max})$, which at
#   $s_{\max} \approx 148$ is the mean of the whole mixture: every sample lands in one
#   place and the mode nearest the mean takes all the mass. Only {glue:text}`ch01_ring_modes1` mode
#   of 8 is covered on ring8 and {glue:text}`ch01_irr_modes1` of 7 on irregular; the TV is
#   {glue:text}`ch01_ring_tv1` and {glue:text}`ch01_irr_tv1`, the MMD {glue:text}`ch01_ring_mmd1`
#   and {glue:text}`ch01_irr_mmd1`.
# * With a few Heun steps the ODE is *worse than useless*: its corrector evaluates the slope
#   $(y - D)/s$ at a small $s$ from a point that is still far from the data, and the
#   averaged step overshoots, flinging most samples far outside the plot. At its worst,
#   {glue:text}`ch01_ring_far` of the ring8 samples land outside $[-3, 3]^2$, at NFE
#   {glue:text}`ch01_ring_far_nfe`, and {glue:text}`ch01_irr_far` of the irregular ones, at NFE
#   {glue:text}`ch01_irr_far_nfe`. Recall means little there, because the k-NN balls around
#   scattered samples are huge; precision tells the truth. At that budget the recall is
#   {glue:text}`ch01_ring_far_rec` and the precision {glue:text}`ch01_ring_far_prec` on ring8, and
#   {glue:text}`ch01_irr_far_rec` and {glue:text}`ch01_irr_far_prec` on irregular.
# * The SDE fails the same way at 2 calls, with {glue:text}`ch01_ring_sde_far2` of its ring8 samples
#   and {glue:text}`ch01_irr_sde_far2` of its irregular ones outside the box: its first step
#   injects noise of size about $s_{\max}$, and the one call left cannot remove it (our sampler
#   is a plain Euler-Maruyama discretisation, not an ancestral one). From about 8 calls on it
#   keeps the samples in place: at NFE 8 only {glue:text}`ch01_ring_sde_far8` and
#   {glue:text}`ch01_irr_sde_far8` are outside, where the 7-call ODE still loses
#   {glue:text}`ch01_ring_ode_far7` and {glue:text}`ch01_irr_ode_far7`. But it needs many calls to
#   remove the noise it injects.
# * Both approach the floor as the calls grow. Call a sampler there from the NFE on which its TV
#   stays within twice the floor plus 0.02: the ODE is there from NFE {glue:text}`ch01_ring_ode_reach`
#   on ring8 and {glue:text}`ch01_irr_ode_reach` on irregular, the SDE from NFE
#   {glue:text}`ch01_ring_sde_reach` and {glue:text}`ch01_irr_sde_reach`. At the largest budgets,
#   {glue:text}`ch01_ode_nfe_max` calls for the ODE and {glue:text}`ch01_sde_nfe_max` for the SDE,
#   the TV is {glue:text}`ch01_ring_ode_tv` and {glue:text}`ch01_ring_sde_tv` on ring8,
#   {glue:text}`ch01_irr_ode_tv` and {glue:text}`ch01_irr_sde_tv` on irregular, and the MMD has
#   fallen to {glue:text}`ch01_ring_ode_mmd` and {glue:text}`ch01_ring_sde_mmd` on ring8 and to
#   {glue:text}`ch01_irr_ode_mmd` and {glue:text}`ch01_irr_sde_mmd` on irregular.

# %% [markdown]
# A diffusion model is excellent at its full budget and useless at one step. Every
# one-step distillation method, EMD included, tries to learn a generator $g_\theta(z)$ that
# matches the many-step sampler's output distribution in a single call. The next chapter asks
# *which* distance to the teacher such a generator should minimise, and why the answer
# decides whether modes survive.
#
# ## Summary
#
# You can now:
#
# * name a noise level by its log-SNR $\lambda = \log(\alpha^2/\sigma^2)$ and move between VP and EDM, which
#   share $s = \sigma/\alpha = e^{-\lambda/2}$ and are the same process in $y = x_t/\alpha$;
# * write the noisy marginal, score and denoiser of a Gaussian mixture in closed form, and derive
#   Tweedie's formula $\nabla\log p_\lambda = (\alpha D - x_t)/\sigma^2$ for any data distribution: the exact
#   teacher of the 2D chapters;
# * derive the probability-flow ODE $dy/ds = (y - D)/s$ from the heat equation and the reverse SDE's
#   step, and sample with Heun (NFE $= 2n - 1$) or Euler-Maruyama;
# * measure sample quality against the number of denoiser calls (TV of mode masses, MMD, precision,
#   recall, against the floor of exact samples), and explain why one call is useless: that cost is
#   what one-step distillation removes.
#
# ## Exercise 1.1: the log-SNR of the cosine schedule
#
# The cosine schedule of improved DDPM is a VP schedule written in a time $t \in (0, 1)$:
# $\alpha_t = \cos(\pi t/2)$, $\sigma_t = \sin(\pi t/2)$. Write `cosine_lam(t)` returning its
# log-SNR $\lambda(t)$ for a tensor of times. The check feeds your $\lambda$ to
# `emd_lib.schedules.VP.alpha_sigma` and expects $\cos$ and $\sin$ back.

# %%
import math

import torch
from emd_lib.exercises import check


def cosine_lam(t):
    t = torch.as_tensor(t, dtype=torch.float32)
    ### BEGIN SOLUTION
    # lam = log(alpha^2 / sigma^2) = -2 log tan(pi t / 2)
    return -2.0 * torch.log(torch.tan(math.pi * t / 2))
    ### END SOLUTION


check("1.1", cosine_lam)

# %% [markdown]
# ## Exercise 1.2: the score of a noisy mixture
#
# Write `mixture_score(x_t, lam, weights, means, stds)`: the score
# $\nabla \log p_\lambda(x_t)$ of the isotropic mixture
# $\sum_k w_k \mathcal N(\mu_k, s_k^2 I)$ noised with the VP schedule at the scalar log-SNR
# `lam`. Shapes: `x_t` $(B, d)$, `weights` $(K,)$, `means` $(K, d)$, `stds` $(K,)$; return
# $(B, d)$. Hint: compute the responsibilities with `torch.softmax` of log-weights plus
# component log-densities; the dimension-dependent constant matters when the variances differ.

# %%
import math

import torch
from emd_lib.exercises import check


def mixture_score(x_t, lam, weights, means, stds):
    ### BEGIN SOLUTION
    alpha2, sigma2 = torch.sigmoid(lam), torch.sigmoid(-lam)
    var = alpha2 * stds**2 + sigma2                                   # (K,)
    diff = x_t[:, None, :] - alpha2.sqrt() * means[None]              # (B, K, d)
    logn = -0.5 * (diff**2).sum(-1) / var - 0.5 * x_t.shape[1] * torch.log(2 * math.pi * var)
    r = torch.softmax(torch.log(weights) + logn, dim=-1)              # (B, K)
    return -(r[..., None] * diff / var[None, :, None]).sum(1)
    ### END SOLUTION


check("1.2", mixture_score)

# %% [markdown]
# ## Exercise 1.3: one Euler step of the probability-flow ODE, in $x_t$ (DDIM)
#
# Section 1.4 integrates the ODE in $y = x_t/\alpha$ and $s = \sigma/\alpha$. A sampler that keeps
# its state in $x_t$ (DDIM's deterministic sampler) takes *the same* Euler step, written back in
# $x_t$. Write `ddim_step(denoise, x_t, lam, lam_next)`: one Euler step of the VP teacher's
# probability-flow ODE from the log-SNR `lam` to `lam_next` (floats, `lam_next > lam`), where
# `denoise(x_t, lam)` returns $D(x_t, \lambda)$. Derive the update first: it needs one denoiser
# call, and it can be written without $y$ or $s$ at all, in $\alpha, \sigma, \alpha', \sigma'$ only.
# The check runs it on the exact ring teacher at three pairs of noise levels.

# %%
import math

import torch
from emd_lib.exercises import check


def ddim_step(denoise, x_t, lam, lam_next):
    ### BEGIN SOLUTION
    alpha, sigma = math.sqrt(1 / (1 + math.exp(-lam))), math.sqrt(1 / (1 + math.exp(lam)))
    alpha2, sigma2 = math.sqrt(1 / (1 + math.exp(-lam_next))), math.sqrt(1 / (1 + math.exp(lam_next)))
    D = denoise(x_t, lam)
    # y' = y + (s' - s)(y - D) / s = D + (s' / s)(y - D), and x_t' = alpha' y'
    return alpha2 * D + sigma2 * (x_t - alpha * D) / sigma
    ### END SOLUTION


check("1.3", ddim_step)
