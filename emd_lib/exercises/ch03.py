"""Checks for chapter 3 (the EM derivation)."""
from __future__ import annotations

import functools

import torch

from . import ExerciseFailed, expect_close, register
from ..em import LinearGenerator, exact_em_step, latent_posterior, marginal_log_prob, rho_moments


def _case(seed=0, n=6):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(2, 2, generator=g, dtype=torch.float64) * 0.7
    b = torch.randn(2, generator=g, dtype=torch.float64)
    x_t = torch.randn(n, 2, generator=g, dtype=torch.float64)
    return A, b, x_t


_close = functools.partial(expect_close, relative=False)     # absolute tolerances here


# ---- 3.1 the EM bound's gap ---------------------------------------------------------------------

def _post(A, b, x_t, alpha, sigma):
    eye = torch.eye(A.shape[1], dtype=torch.float64)
    S = torch.linalg.inv(eye + alpha**2 / sigma**2 * A.T @ A)
    return (x_t - alpha * b) @ (alpha / sigma**2 * S @ A.T).T, S


def _kl(m0, S0, m1, S1):
    """KL(N(m0_i, S0) || N(m1_i, S1)) row by row, (n,)."""
    P1 = torch.linalg.inv(S1)
    dm = m1 - m0
    return 0.5 * (torch.trace(P1 @ S0) + ((dm @ P1) * dm).sum(1) - S0.shape[0]
                  + torch.logdet(S1) - torch.logdet(S0))


def _gap_ref(A, b, x_t, alpha, sigma, m, S):
    mu, Sz = _post(A, b, x_t, alpha, sigma)
    return _kl(m, S, mu, Sz)


def _gap_reversed(A, b, x_t, alpha, sigma, m, S):              # KL the wrong way round
    mu, Sz = _post(A, b, x_t, alpha, sigma)
    return _kl(mu, Sz, m, S)


def _gap_prior(A, b, x_t, alpha, sigma, m, S):                 # measures the distance to the prior
    return _kl(m, S, torch.zeros_like(m), torch.eye(2, dtype=m.dtype))


def _gap_no_logdet(A, b, x_t, alpha, sigma, m, S):             # forgets the entropy of the bound's q
    mu, Sz = _post(A, b, x_t, alpha, sigma)
    P = torch.linalg.inv(Sz)
    dm = mu - m
    return 0.5 * (torch.trace(P @ S) + ((dm @ P) * dm).sum(1) - 2)


def _route_gap(A, b, x_t, alpha, sigma, m, S):
    from emd_lib.em import gaussian_kl, latent_posterior

    mu, Sz = latent_posterior(A, b, x_t, alpha, sigma)
    return torch.tensor([gaussian_kl(m[i], S, mu[i], Sz) for i in range(len(m))])


_POSTERIOR = ["emd_lib.em:latent_posterior", "emd_lib.em:marginal_log_prob", "emd_lib.em:gaussian_kl",
              "emd_lib.em:fisher_grad", "emd_lib.em:rho_moments", "emd_lib.em:exact_em_step",
              "emd_lib.em:frozen_z_moments", "emd_lib.em:exact_em"]


@register("3.1", title="the gap of the EM bound at a given q(z)",
          wrong=[_gap_reversed, _gap_prior, _gap_no_logdet],
          points=2, minutes=25, kind="derivation", route=_route_gap, forbid=_POSTERIOR)
def _check_3_1(bound_gap):
    for seed, (alpha, sigma) in enumerate([(0.8, 0.6), (0.3, 0.95), (0.99, 0.14)]):
        A, b, x_t = _case(seed)
        g = torch.Generator().manual_seed(100 + seed)
        m = torch.randn(len(x_t), 2, generator=g, dtype=torch.float64)
        L = torch.randn(2, 2, generator=g, dtype=torch.float64) * 0.5
        S = L @ L.T + 0.2 * torch.eye(2, dtype=torch.float64)
        got = bound_gap(A, b, x_t, alpha, sigma, m, S)
        try:
            _close("the gap", got, _gap_ref(A, b, x_t, alpha, sigma, m, S), tol=1e-6)
        except ExerciseFailed as e:
            raise ExerciseFailed(f"{e} at alpha={alpha}, sigma={sigma}. log q_t(x_t) minus the bound "
                                 "E_q[log N(x_t; alpha g(z), sigma^2 I) + log N(z) - log q(z)] is a KL divergence "
                                 "between two Gaussians over z: which two, and in which order?") from None
        # at the posterior itself the bound is tight
        mu, Sz = _post(A, b, x_t, alpha, sigma)
        _close("the gap at q(z) = q(z | x_t)", bound_gap(A, b, x_t, alpha, sigma, mu, Sz), torch.zeros(len(x_t)),
               tol=1e-6)


# ---- 3.2 Fisher's identity for b ----------------------------------------------------------------

def _grad_b_prior_mean(A, b, x_t, alpha, sigma):              # z = 0 instead of its posterior mean
    return alpha / sigma**2 * (x_t - alpha * b)


def _grad_b_sign(A, b, x_t, alpha, sigma):                    # sign error
    mu, _ = latent_posterior(A, b, x_t, alpha, sigma)
    return -alpha / sigma**2 * (x_t - alpha * mu @ A.T - alpha * b)


def _grad_b_no_alpha(A, b, x_t, alpha, sigma):                # drops the outer alpha
    mu, _ = latent_posterior(A, b, x_t, alpha, sigma)
    return (x_t - alpha * mu @ A.T - alpha * b) / sigma**2


def _route_grad_b(A, b, x_t, alpha, sigma):
    from emd_lib.em import fisher_grad

    return fisher_grad(A, b, x_t, alpha, sigma)[1]


@register("3.2", title="Fisher's identity for the offset b",
          wrong=[_grad_b_prior_mean, _grad_b_sign, _grad_b_no_alpha],
          points=2, minutes=20, kind="method", route=_route_grad_b,
          forbid=[f for f in _POSTERIOR if f != "emd_lib.em:latent_posterior"])   # the posterior is given
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


# ---- 3.3 one exact EM step --------------------------------------------------------------------------

def _em_step_ref(A, b, m, C, alpha, sigma):
    return exact_em_step(A, b, m, C, alpha, sigma)


def _em_no_posterior_cov(A, b, m, C, alpha, sigma):              # E[z z^T] without the posterior's own spread
    mean, cov = rho_moments(A, b, m, C, alpha, sigma)
    d = len(b)
    M = cov[d:, :d] @ torch.linalg.inv(cov[:d, :d])
    cov = cov.clone()
    cov[d:, d:] = M @ cov[:d, :d] @ M.T
    return _ls(mean, cov, d, alpha)


def _em_no_alpha(A, b, m, C, alpha, sigma):                      # regresses x_t, not x_t / alpha
    A2, b2 = exact_em_step(A, b, m, C, alpha, sigma)
    return alpha * A2, alpha * b2


def _em_prior(A, b, m, C, alpha, sigma):                         # z from the prior, independent of x_t
    return torch.zeros(2, 2, dtype=torch.float64), torch.as_tensor(m, dtype=torch.float64)


def _ls(mean, cov, d, alpha):
    second = cov + torch.outer(mean, mean)
    Exz, Ezz, Ex, Ez = second[:d, d:], second[d:, d:], mean[:d], mean[d:]
    G = torch.cat([torch.cat([Ezz, Ez[:, None]], 1), torch.cat([Ez[None], torch.ones(1, 1, dtype=Ez.dtype)], 1)], 0)
    W = torch.cat([Exz, Ex[:, None]], 1) / alpha @ torch.linalg.inv(G)
    return W[:, :d], W[:, d]


def _route_em_step(A, b, m, C, alpha, sigma):
    from emd_lib.em import exact_em_step

    return exact_em_step(A, b, m, C, alpha, sigma)


@register("3.3", title="one exact EM step for the linear generator",
          wrong=[_em_no_posterior_cov, _em_no_alpha, _em_prior],
          points=3, minutes=30, kind="method", route=_route_em_step, forbid=_POSTERIOR)
def _check_3_3(em_step):
    m = torch.tensor([1.0, -0.5], dtype=torch.float64)
    C = torch.tensor([[1.0, 0.6], [0.6, 0.8]], dtype=torch.float64)
    for seed, (alpha, sigma) in enumerate([(0.8, 0.6), (0.5, 0.87), (0.95, 0.31)]):
        A, b, _ = _case(seed + 20)
        want_A, want_b = _em_step_ref(A, b, m, C, alpha, sigma)
        out = em_step(A.clone(), b.clone(), m.clone(), C.clone(), alpha, sigma)
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            raise ExerciseFailed("return a pair (A_new, b_new)")
        try:
            _close("b_new", out[1], want_b, tol=1e-6)
            _close("A_new", out[0], want_A, tol=1e-6)
        except ExerciseFailed as e:
            raise ExerciseFailed(f"{e} at alpha={alpha}, sigma={sigma}. Under rho, x_t ~ p_t = N(alpha m, alpha^2 C + "
                                 "sigma^2 I) and z | x_t is the posterior of section 3; the M-step is the least "
                                 "squares of x_t / alpha on [z, 1], which needs only E[z], E[z z^T], E[x_t] and "
                                 "E[x_t z^T] under rho") from None
