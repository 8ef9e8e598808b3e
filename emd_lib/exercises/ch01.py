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


# ---- 1.1: VP alpha and sigma from the log-SNR ------------------------------------------------
def _wrong_vp_no_sqrt(lam):
    lam = torch.as_tensor(lam)
    return torch.sigmoid(lam), torch.sigmoid(-lam)          # forgot the square roots


def _wrong_vp_swapped(lam):
    lam = torch.as_tensor(lam)
    return torch.sigmoid(-lam).sqrt(), torch.sigmoid(lam).sqrt()   # alpha and sigma swapped


@register("1.1", title="VP alpha and sigma from lam", wrong=[_wrong_vp_no_sqrt, _wrong_vp_swapped])
def check_vp_alpha_sigma(fn):
    lam = torch.linspace(-10, 10, 41)
    out = fn(lam)
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        raise ExerciseFailed("return a pair (alpha, sigma)")
    alpha, sigma = (torch.as_tensor(t, dtype=torch.float64) for t in out)
    if alpha.shape != lam.shape or sigma.shape != lam.shape:
        raise ExerciseFailed(f"alpha and sigma must have the shape of lam {tuple(lam.shape)}")
    if not torch.allclose(alpha**2 + sigma**2, torch.ones_like(alpha), atol=1e-5):
        raise ExerciseFailed("a VP schedule keeps alpha^2 + sigma^2 = 1; check for missing square roots")
    if not torch.allclose(2 * (alpha.log() - sigma.log()), lam.double(), atol=1e-4):
        raise ExerciseFailed("log(alpha^2 / sigma^2) must equal lam; is alpha the one that grows with lam?")
    ref_a, ref_s = VP.alpha_sigma(lam)
    if not (_close(alpha, ref_a) and _close(sigma, ref_s)):
        raise ExerciseFailed("alpha and sigma differ from emd_lib.schedules.VP.alpha_sigma")


# ---- 1.2: the score of a noisy mixture ---------------------------------------------------------
def _wrong_score_no_alpha(x_t, lam, weights, means, stds):
    # forgets that noising scales the means and the variances by alpha
    a2, s2 = torch.sigmoid(lam), torch.sigmoid(-lam)
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
