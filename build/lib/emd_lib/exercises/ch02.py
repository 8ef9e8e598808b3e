"""Checks for the exercises of chapter 2 (mode seeking vs mode covering)."""
from __future__ import annotations

import math

import torch

from . import ExerciseFailed, register


# ---- 2.1: the forward-KL Gaussian fit of a 1D mixture is moment matching ------------------------
def _wrong_moments_no_within(weights, means, stds):
    m = (weights * means).sum()
    return m, (weights * means**2).sum() - m**2            # forgets the components' own variance


def _wrong_moments_unweighted(weights, means, stds):
    m = means.mean()
    return m, (stds**2 + means**2).mean() - m**2            # ignores the weights


@register("2.1", title="forward-KL fit by moment matching", wrong=[_wrong_moments_no_within, _wrong_moments_unweighted])
def check_moment_matching(fn):
    cases = [
        (torch.tensor([0.7, 0.3]), torch.tensor([-1.5, 1.5]), torch.tensor([0.4, 0.4])),
        (torch.tensor([0.2, 0.5, 0.3]), torch.tensor([-2.0, 0.0, 3.0]), torch.tensor([0.3, 1.0, 0.5])),
        (torch.tensor([1.0]), torch.tensor([0.7]), torch.tensor([2.0])),
    ]
    for w, mu, sd in cases:
        out = fn(w, mu, sd)
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            raise ExerciseFailed("return a pair (mean, variance)")
        m, v = (float(torch.as_tensor(t)) for t in out)
        m_ref = float((w * mu).sum())
        # Var = sum_k w_k (s_k^2 + mu_k^2) - m^2
        v_ref = float((w * (sd**2 + mu**2)).sum()) - m_ref**2
        if not abs(m - m_ref) <= 1e-4:   # also false for NaN
            raise ExerciseFailed(f"wrong mean for weights {w.tolist()}: the mean is sum_k w_k mu_k")
        if not abs(v - v_ref) <= 1e-4:
            raise ExerciseFailed(f"wrong variance for weights {w.tolist()}: the law of total variance adds the "
                                 "components' own variances to the spread of their means")


# ---- 2.2: a Monte-Carlo estimate of the reverse KL ---------------------------------------------
def _wrong_rkl_no_entropy(q_mean, q_std, log_p, n, generator):
    x = q_mean + q_std * torch.randn(n, generator=generator)
    return float(-log_p(x).mean())                          # forgets E_q[log q]


def _wrong_rkl_sign(q_mean, q_std, log_p, n, generator):
    x = q_mean + q_std * torch.randn(n, generator=generator)
    log_q = -0.5 * ((x - q_mean) / q_std) ** 2 - math.log(q_std) - 0.5 * math.log(2 * math.pi)
    return float((log_p(x) - log_q).mean())                 # sign flipped


@register("2.2", title="Monte-Carlo reverse KL", wrong=[_wrong_rkl_no_entropy, _wrong_rkl_sign])
def check_reverse_kl(fn):
    # KL(N(a, s^2) || N(0, 1)) = -log s + (s^2 + a^2 - 1) / 2
    for a, s in ((1.0, 0.5), (-0.5, 1.5), (0.0, 1.0)):
        def log_p(x):
            return -0.5 * x**2 - 0.5 * math.log(2 * math.pi)
        est = float(fn(torch.tensor(a), torch.tensor(s), log_p, 40000, torch.Generator().manual_seed(0)))
        exact = -math.log(s) + (s**2 + a**2 - 1) / 2
        if not abs(est - exact) <= 0.03:   # also false for NaN
            raise ExerciseFailed(f"for q = N({a}, {s}^2) and p = N(0, 1) the reverse KL is {exact:.3f}, your estimate "
                                 f"is {est:.3f}; average log q(x) - log p(x) over x ~ q")


# ---- 2.3: the Diff-Instruct surrogate loss ------------------------------------------------------
def _wrong_di_sign(x, ds, w, alpha):
    return (w[:, None] * alpha[:, None] * ds * x).sum(1).mean()


def _wrong_di_no_alpha(x, ds, w, alpha):
    return -(w[:, None] * ds * x).sum(1).mean()


@register("2.3", title="the Diff-Instruct surrogate", wrong=[_wrong_di_sign, _wrong_di_no_alpha])
def check_di_surrogate(fn):
    g = torch.Generator().manual_seed(5)
    A = torch.randn(2, 2, generator=g).requires_grad_(True)
    z = torch.randn(64, 2, generator=g)
    ds = torch.randn(64, 2, generator=g)
    lam = torch.linspace(-4, 4, 64)
    alpha, sigma = torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()
    w = sigma**2
    x = z @ A.T
    loss = fn(x, ds, w, alpha)
    loss = torch.as_tensor(loss)
    if loss.ndim != 0:
        raise ExerciseFailed("return a scalar (the mean over the batch)")
    if not loss.requires_grad:
        raise ExerciseFailed("the loss must depend on x (keep x in the graph; only ds is a constant)")
    (grad,) = torch.autograd.grad(loss, A)
    # the DI gradient: -E[w alpha ds^T dg/dA], with dg/dA for g = A z
    ref = -((w * alpha)[:, None, None] * ds[:, :, None] * z[:, None, :]).mean(0)
    if not torch.allclose(grad, ref, atol=1e-5, rtol=1e-4):
        if torch.allclose(grad, -ref, atol=1e-5, rtol=1e-4):
            raise ExerciseFailed("sign error: descending the loss must move g(z) along +ds (towards the teacher)")
        raise ExerciseFailed("the gradient is not -mean(w alpha ds^T dg/dtheta); check the factors w and alpha")
