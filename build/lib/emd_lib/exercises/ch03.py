"""Checks for chapter 3 (the EM derivation)."""
from __future__ import annotations

import functools

import torch

from . import ExerciseFailed, expect_close, register
from ..em import LinearGenerator, latent_posterior, marginal_log_prob


def _case(seed=0, n=6):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(2, 2, generator=g, dtype=torch.float64) * 0.7
    b = torch.randn(2, generator=g, dtype=torch.float64)
    x_t = torch.randn(n, 2, generator=g, dtype=torch.float64)
    return A, b, x_t


_close = functools.partial(expect_close, relative=False)     # absolute tolerances here


# ---- 3.1 the latent posterior -------------------------------------------------------------------

def _posterior_wrong_alpha(A, b, x_t, alpha, sigma):          # forgets alpha in the precision
    cov = torch.linalg.inv(torch.eye(2, dtype=A.dtype) + A.T @ A / sigma**2)
    return (x_t - alpha * b) @ (alpha / sigma**2 * cov @ A.T).T, cov


def _posterior_prior(A, b, x_t, alpha, sigma):                 # returns the prior
    return torch.zeros_like(x_t), torch.eye(2, dtype=A.dtype)


def _posterior_no_offset(A, b, x_t, alpha, sigma):             # forgets to subtract alpha b
    cov = torch.linalg.inv(torch.eye(2, dtype=A.dtype) + alpha**2 / sigma**2 * A.T @ A)
    return x_t @ (alpha / sigma**2 * cov @ A.T).T, cov


@register("3.1", title="the latent posterior q(z | x_t)",
          wrong=[_posterior_wrong_alpha, _posterior_prior, _posterior_no_offset])
def _check_3_1(posterior):
    for seed, (alpha, sigma) in enumerate([(0.8, 0.6), (0.3, 0.95), (0.99, 0.14)]):
        A, b, x_t = _case(seed)
        mean, cov = posterior(A, b, x_t, alpha, sigma)
        want_mean, want_cov = latent_posterior(A, b, x_t, alpha, sigma)
        try:
            _close("the covariance", cov, want_cov)
        except ExerciseFailed as e:
            raise ExerciseFailed(f"{e} at alpha={alpha}, sigma={sigma}: the posterior precision is "
                                 "I + (alpha^2 / sigma^2) A^T A") from None
        try:
            _close("the mean", mean, want_mean)
        except ExerciseFailed as e:
            raise ExerciseFailed(f"{e} at alpha={alpha}, sigma={sigma}: the mean is "
                                 "cov A^T (alpha / sigma^2) (x_t - alpha b)") from None


# ---- 3.2 Fisher's identity for b ----------------------------------------------------------------

def _grad_b_prior_mean(A, b, x_t, alpha, sigma):              # z = 0 instead of its posterior mean
    return alpha / sigma**2 * (x_t - alpha * b)


def _grad_b_sign(A, b, x_t, alpha, sigma):                    # sign error
    mu, _ = latent_posterior(A, b, x_t, alpha, sigma)
    return -alpha / sigma**2 * (x_t - alpha * mu @ A.T - alpha * b)


def _grad_b_no_alpha(A, b, x_t, alpha, sigma):                # drops the outer alpha
    mu, _ = latent_posterior(A, b, x_t, alpha, sigma)
    return (x_t - alpha * mu @ A.T - alpha * b) / sigma**2


@register("3.2", title="Fisher's identity for the offset b",
          wrong=[_grad_b_prior_mean, _grad_b_sign, _grad_b_no_alpha])
def _check_3_2(grad_b):
    for seed, (alpha, sigma) in enumerate([(0.8, 0.6), (0.5, 0.87)]):
        A, b, x_t = _case(seed + 10)
        gen = LinearGenerator(A.float(), b.float())
        want = []
        for i in range(len(x_t)):
            lp = marginal_log_prob(gen, x_t[i:i + 1].float(), alpha, sigma).sum()
            want.append(torch.autograd.grad(lp, gen.b)[0].double())
        want = torch.stack(want)
        got = grad_b(A, b, x_t, alpha, sigma)
        try:
            _close("grad_b", got, want, tol=1e-3 * (1 + float(want.abs().max())))
        except ExerciseFailed as e:
            raise ExerciseFailed(f"{e} against autograd of log q_t: average "
                                 "(alpha / sigma^2)(x_t - alpha (A z + b)) over z ~ q(z | x_t)") from None


# ---- 3.3 the M-step ------------------------------------------------------------------------------

def _m_step_no_alpha(x_t, z, alpha):                          # regresses x_t, not x_t / alpha
    design = torch.cat([z, torch.ones(len(z), 1, dtype=z.dtype)], 1)
    W = torch.linalg.lstsq(design, x_t).solution.T
    return W[:, :-1], W[:, -1]


def _m_step_no_intercept(x_t, z, alpha):                      # forgets the offset
    W = torch.linalg.lstsq(z, x_t / alpha).solution.T
    return W, torch.zeros(x_t.shape[1], dtype=x_t.dtype)


@register("3.3", title="the M-step as least squares", wrong=[_m_step_no_alpha, _m_step_no_intercept])
def _check_3_3(m_step):
    g = torch.Generator().manual_seed(3)
    A = torch.tensor([[0.9, 0.1], [-0.4, 0.6]], dtype=torch.float64)
    b = torch.tensor([1.0, -0.7], dtype=torch.float64)
    alpha, sigma = 0.7, 0.71
    z = torch.randn(500, 2, generator=g, dtype=torch.float64)
    x_t = alpha * (z @ A.T + b) + sigma * torch.randn(500, 2, generator=g, dtype=torch.float64)
    design = torch.cat([z, torch.ones(500, 1, dtype=z.dtype)], 1)
    W = torch.linalg.lstsq(design, x_t / alpha).solution.T
    out = m_step(x_t, z, alpha)
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        raise ExerciseFailed("return a pair (A, b)")
    _close("b", out[1], W[:, -1], tol=1e-6)
    _close("A", out[0], W[:, :-1], tol=1e-6)
