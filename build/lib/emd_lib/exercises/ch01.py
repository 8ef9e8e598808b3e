"""Checks for the exercises of chapter 1 (diffusion in 2D)."""
from __future__ import annotations

import math

import torch

from . import ExerciseFailed, register
from ..schedules import VP
from ..teachers import GaussianMixture


def _close(a, b, atol=1e-5, rtol=1e-4):
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return a.shape == b.shape and torch.allclose(a, b, atol=atol, rtol=rtol)


# ---- 1.1: the log-SNR of the cosine schedule ----------------------------------------------------
def _wrong_cosine_no_two(t):
    return -torch.log(torch.tan(math.pi * torch.as_tensor(t) / 2))       # log(alpha / sigma), not its square


def _wrong_cosine_sign(t):
    return 2 * torch.log(torch.tan(math.pi * torch.as_tensor(t) / 2))    # sign flipped: noise grows with lam


@register("1.1", title="the log-SNR of the cosine schedule", wrong=[_wrong_cosine_no_two, _wrong_cosine_sign])
def check_cosine_lam(fn):
    t = torch.linspace(0.02, 0.98, 49)
    lam = torch.as_tensor(fn(t.clone()), dtype=torch.float64)
    if lam.shape != t.shape:
        raise ExerciseFailed(f"return one log-SNR per time, shape {tuple(t.shape)}")
    if not torch.isfinite(lam).all():
        raise ExerciseFailed("the log-SNR must be finite for 0 < t < 1")
    if not (lam[:-1] > lam[1:]).all():
        raise ExerciseFailed("the log-SNR must fall as t grows (t = 0 is clean data, t = 1 is pure noise)")
    alpha, sigma = VP.alpha_sigma(lam.float())
    ref_a, ref_s = torch.cos(math.pi * t / 2), torch.sin(math.pi * t / 2)
    if not (_close(alpha, ref_a, atol=1e-4) and _close(sigma, ref_s, atol=1e-4)):
        raise ExerciseFailed("VP.alpha_sigma(lam) must give back alpha = cos(pi t / 2) and sigma = sin(pi t / 2); "
                             "lam is the log of alpha^2 / sigma^2 (mind the square)")


# ---- 1.2: the score of a noisy mixture ---------------------------------------------------------
def _wrong_score_no_alpha(x_t, lam, weights, means, stds):
    # forgets that noising scales the means and the variances by alpha
    s2 = torch.sigmoid(-lam)
    var = stds**2 + s2                                         # (K,)
    diff = x_t[:, None, :] - means[None]                       # (B, K, d)
    logn = -0.5 * (diff**2).sum(-1) / var - 0.5 * x_t.shape[1] * torch.log(2 * math.pi * var)
    r = torch.softmax(torch.log(weights) + logn, -1)
    return -(r[..., None] * diff / var[None, :, None]).sum(1)


def _wrong_score_sign(x_t, lam, weights, means, stds):
    a, s2 = torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam)
    var = a**2 * stds**2 + s2
    diff = x_t[:, None, :] - a * means[None]
    logn = -0.5 * (diff**2).sum(-1) / var - 0.5 * x_t.shape[1] * torch.log(2 * math.pi * var)
    r = torch.softmax(torch.log(weights) + logn, -1)
    return (r[..., None] * diff / var[None, :, None]).sum(1)    # sign error: points away from the modes


@register("1.2", title="the score of a noisy Gaussian mixture", wrong=[_wrong_score_no_alpha, _wrong_score_sign])
def check_mixture_score(fn):
    g = torch.Generator().manual_seed(1)
    for K, d, lam in ((1, 1, 0.5), (3, 2, -1.0), (4, 2, 2.0), (2, 3, 0.0)):
        w = torch.rand(K, generator=g) + 0.2
        w = w / w.sum()
        means = 2 * torch.randn(K, d, generator=g)
        stds = 0.2 + torch.rand(K, generator=g)
        x_t = torch.randn(64, d, generator=g) * 1.5
        mix = GaussianMixture(w, means, stds, schedule=VP)
        ref = mix.score(x_t, torch.full((64,), lam))
        out = fn(x_t, torch.tensor(lam), w, means, stds)
        out = torch.as_tensor(out)
        if out.shape != ref.shape:
            raise ExerciseFailed(f"the score must have the shape of x_t {tuple(ref.shape)}, got {tuple(out.shape)}")
        if not _close(out, ref, atol=1e-4, rtol=1e-3):
            if _close(-out, ref, atol=1e-4, rtol=1e-3):
                raise ExerciseFailed("sign error: the score points towards the modes, -S^{-1}(x_t - alpha mu)")
            raise ExerciseFailed(f"wrong score for a {K}-component mixture in {d}D at lam={lam}; each component "
                                 "becomes N(alpha mu_k, (alpha^2 std_k^2 + sigma^2) I)")


# ---- 1.3: one Euler step of the probability-flow ODE --------------------------------------------
def _wrong_euler_sign(denoise, y, s, s_next):
    return y - (s_next - s) * (y - denoise(y, s)) / s


def _wrong_euler_no_div(denoise, y, s, s_next):
    return y + (s_next - s) * (y - denoise(y, s))


@register("1.3", title="one Euler step of the PF ODE", wrong=[_wrong_euler_sign, _wrong_euler_no_div])
def check_euler_step(fn):
    from ..mixtures import ring8
    from ..sampling import _denoise

    mix = ring8()

    def denoise(y, s):  # D at y = x_t / alpha and s = sigma / alpha
        return _denoise(mix, y, float(s), None)

    g = torch.Generator().manual_seed(3)
    for s, s_next in ((5.0, 3.0), (1.0, 0.6), (0.3, 0.1)):
        y = torch.randn(128, 2, generator=g) * math.sqrt(2 + s**2)
        # dy/ds = (y - D(y, s)) / s, one Euler step from s to s_next
        ref = y + (s_next - s) * (y - denoise(y, s)) / s
        out = torch.as_tensor(fn(denoise, y.clone(), s, s_next))
        if out.shape != y.shape:
            raise ExerciseFailed(f"return the new y with shape {tuple(y.shape)}")
        if not _close(out, ref, atol=1e-4, rtol=1e-4):
            raise ExerciseFailed(f"wrong step from s={s} to s={s_next}; the slope is (y - D(y, s)) / s and the "
                                 "step is (s_next - s) (negative: s decreases)")
