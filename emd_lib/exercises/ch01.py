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


def _route_cosine(t):                                                  # the library's inverse of alpha_sigma
    from emd_lib.schedules import VP as _VP

    t = torch.as_tensor(t)
    return _VP.lam(torch.cos(math.pi * t / 2), torch.sin(math.pi * t / 2))


@register("1.1", title="the log-SNR of the cosine schedule", wrong=[_wrong_cosine_no_two, _wrong_cosine_sign],
          points=1, minutes=5, kind="derivation", route=_route_cosine,
          forbid=["emd_lib.schedules:Schedule.lam", "emd_lib.schedules:lam_from_sigma"])
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


def _route_score(x_t, lam, weights, means, stds):                      # the exact teacher of the library
    from emd_lib.teachers import GaussianMixture as _GM

    mix = _GM(weights, means, stds)
    return mix.score(x_t, torch.full((x_t.shape[0],), float(lam)))


_MIXTURE_METHODS = [f"emd_lib.teachers:GaussianMixture.{m}"
                    for m in ("score", "eps", "denoise", "log_prob", "responsibilities", "_components")]


@register("1.2", title="the score of a noisy Gaussian mixture", wrong=[_wrong_score_no_alpha, _wrong_score_sign],
          points=2, minutes=20, kind="method", route=_route_score, forbid=_MIXTURE_METHODS)
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


# ---- 1.3: one Euler step of the probability-flow ODE, written in x_t (DDIM) ----------------------
def _ab(lam):
    return math.sqrt(1 / (1 + math.exp(-lam))), math.sqrt(1 / (1 + math.exp(lam)))      # VP: (alpha, sigma)


def _ddim_ref(denoise, x_t, lam, lam_next):
    """The Euler step of dy/ds = (y - D) / s in y = x_t / alpha, s = sigma / alpha, mapped back to x_t."""
    (a, s_), (a2, s2_) = _ab(lam), _ab(lam_next)
    y, s, s_next = x_t / a, s_ / a, s2_ / a2
    D = denoise(x_t, lam)
    return a2 * (y + (s_next - s) * (y - D) / s)


def _wrong_ddim_y_formula(denoise, x_t, lam, lam_next):      # the y-step applied to x_t without the scalings
    (a, s), (a2, s2) = _ab(lam), _ab(lam_next)
    D = denoise(x_t, lam)
    return D + (s2 / s) * (x_t - D)


def _wrong_ddim_no_alpha(denoise, x_t, lam, lam_next):       # forgets alpha on the denoised part
    (a, s), (a2, s2) = _ab(lam), _ab(lam_next)
    D = denoise(x_t, lam)
    return D + s2 * (x_t - a * D) / s


def _wrong_ddim_swapped(denoise, x_t, lam, lam_next):        # alpha' and sigma' swapped
    (a, s), (a2, s2) = _ab(lam), _ab(lam_next)
    D = denoise(x_t, lam)
    return s2 * D + a2 * (x_t - a * D) / s


def _route_ddim(denoise, x_t, lam, lam_next):
    from types import SimpleNamespace

    from emd_lib.sampling import ddim_step

    teacher = SimpleNamespace(schedule=VP, denoise=lambda x, l, c=None: denoise(x, float(l[0])))
    return ddim_step(teacher, x_t, lam, lam_next)


@register("1.3", title="one Euler step of the PF ODE, in x_t (DDIM)",
          wrong=[_wrong_ddim_y_formula, _wrong_ddim_no_alpha, _wrong_ddim_swapped],
          points=2, minutes=15, kind="method", route=_route_ddim,
          forbid=["emd_lib.sampling:ddim_step", "emd_lib.sampling:sample_ode", "emd_lib.sampling:sample_sde"])
def check_ddim_step(fn):
    from ..mixtures import ring8

    mix = ring8()

    def denoise(x_t, lam):   # the exact teacher's D(x_t, lam) at a scalar log-SNR
        return mix.denoise(x_t, torch.full((x_t.shape[0],), float(lam)))

    g = torch.Generator().manual_seed(3)
    for lam, lam_next in ((-4.0, -1.5), (0.0, 1.0), (2.5, 5.0)):
        a, s = _ab(lam)
        x_t = a * mix.sample(128, generator=g) + s * torch.randn(128, 2, generator=g)
        ref = _ddim_ref(denoise, x_t, lam, lam_next)
        out = torch.as_tensor(fn(denoise, x_t.clone(), lam, lam_next))
        if out.shape != x_t.shape:
            raise ExerciseFailed(f"return the new x_t with shape {tuple(x_t.shape)}")
        if not _close(out, ref, atol=1e-4, rtol=1e-4):
            raise ExerciseFailed(f"wrong step from lam={lam} to lam={lam_next}. Write y = x_t / alpha and "
                                 "s = sigma / alpha, take the Euler step of dy/ds = (y - D) / s, and map back "
                                 "with x_t' = alpha' y' (alpha, sigma and alpha', sigma' of the VP schedule)")
