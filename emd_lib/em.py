"""Exact EM for a linear-Gaussian generator: the reference the Langevin E-step is checked against.

Generator ``g(z) = A z + b`` with ``z ~ N(0, I)``; Gaussian teacher ``p_0 = N(m, C)``. At one
noise level ``(alpha, sigma)`` everything is Gaussian:

* the student's noisy marginal ``q_t = N(alpha b, alpha^2 A A^T + sigma^2 I)`` and the teacher's
  ``p_t = N(alpha m, alpha^2 C + sigma^2 I)``;
* the posterior of the latent, ``q(z | x_t) = N(M (x_t - alpha b), S_z)`` with
  ``S_z = (I + alpha^2 / sigma^2 A^T A)^{-1}`` and ``M = S_z A^T alpha / sigma^2``;
* so the E-step target ``rho(x_t, z) = p_t(x_t) q(z | x_t)`` is Gaussian with closed-form moments;
* the M-step is least squares of ``x_t / alpha`` on ``[z, 1]`` under rho.

EM's fixed point is the maximum-likelihood fit: ``A A^T = C`` and ``b = m`` (``A`` up to a rotation).

Helpers for the book's chapter 3 (the EM derivation) and chapter 4 (the chains' targets):

* :func:`marginal_log_prob` (differentiable in the generator), :func:`latent_posterior` and
  :func:`fisher_grad`, the two sides of Fisher's identity;
* :func:`frozen_z_moments`, the law that a chain moving only ``x_t`` (or ``eps``) samples;
* :func:`gaussian_kl`, :func:`fit_error`, :func:`exact_em` (a loop of :func:`exact_em_step`);
* :func:`langevin_em_step` and :func:`langevin_em`: the same EM with the Langevin E-step
  (:func:`emd_lib.langevin.estep`, exact student) and a stochastic M-step (gradient steps on
  the regression loss).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .teachers import GaussianMixture

__all__ = ["LinearGenerator", "rho_moments", "exact_em_step", "exact_student", "gaussian_teacher",
           "marginal_log_prob", "latent_posterior", "fisher_grad", "frozen_z_moments", "gaussian_kl",
           "fit_error", "exact_em", "langevin_em_step", "langevin_em", "chain_cov_1d"]


class LinearGenerator(nn.Module):
    """``g(z) = A z + b`` (``z`` and ``x`` both ``d``-dimensional)."""

    def __init__(self, A: torch.Tensor, b: torch.Tensor):
        super().__init__()
        self.A = nn.Parameter(torch.as_tensor(A, dtype=torch.float32).clone())
        self.b = nn.Parameter(torch.as_tensor(b, dtype=torch.float32).clone())
        self.dim = self.b.shape[0]

    def forward(self, z):  # (B, d) -> (B, d)
        return z @ self.A.T + self.b


def gaussian_teacher(m, C, schedule=None) -> GaussianMixture:
    """The one-component mixture ``N(m, C)`` as an exact teacher."""
    kw = {} if schedule is None else {"schedule": schedule}
    return GaussianMixture([1.0], [list(map(float, m))], covs=[torch.as_tensor(C).tolist()], **kw)


def exact_student(A, b, schedule=None) -> GaussianMixture:
    """The exact noisy marginal ``q_t`` of the linear generator, as a 'student' with the teacher interface."""
    A = torch.as_tensor(A, dtype=torch.float32)
    return gaussian_teacher(torch.as_tensor(b), A @ A.T, schedule)


def rho_moments(A, b, m, C, alpha: float, sigma: float):
    """Mean ``(2d,)`` and covariance ``(2d, 2d)`` of rho over the stacked vector ``(x_t, z)``."""
    A, b, m, C = (torch.as_tensor(t, dtype=torch.float64) for t in (A, b, m, C))
    d = len(b)
    eye = torch.eye(d, dtype=torch.float64)
    P = alpha**2 * C + sigma**2 * eye                     # Cov p_t
    S_z = torch.linalg.inv(eye + alpha**2 / sigma**2 * A.T @ A)
    M = S_z @ A.T * alpha / sigma**2
    mu_x = alpha * m
    mu_z = M @ (mu_x - alpha * b)
    mean = torch.cat([mu_x, mu_z])
    cov = torch.cat([torch.cat([P, P @ M.T], 1), torch.cat([M @ P, M @ P @ M.T + S_z], 1)], 0)
    return mean, cov


def exact_em_step(A, b, m, C, alpha: float, sigma: float):
    """One EM step at noise level (alpha, sigma) with the exact E-step. Returns the new ``(A, b)``."""
    mean, cov = rho_moments(A, b, m, C, alpha, sigma)
    d = len(b)
    second = cov + torch.outer(mean, mean)                 # E[u u^T], u = (x_t, z)
    Exz, Ezz = second[:d, d:], second[d:, d:]
    Ex, Ez = mean[:d], mean[d:]
    # least squares of x_t / alpha on [z, 1]
    G = torch.cat([torch.cat([Ezz, Ez[:, None]], 1), torch.cat([Ez[None], torch.ones(1, 1, dtype=Ez.dtype)], 1)], 0)
    R = torch.cat([Exz, Ex[:, None]], 1) / alpha
    W = R @ torch.linalg.inv(G)
    return W[:, :d], W[:, d]


# ---- chapter 3: Fisher's identity and EM with a Langevin E-step ---------------------------------

def marginal_log_prob(gen: LinearGenerator, x_t: torch.Tensor, alpha: float, sigma: float) -> torch.Tensor:
    """``log q_t(x_t)`` of the linear generator, ``(B,)``, differentiable in ``gen.A`` and ``gen.b``.

    ``q_t = N(alpha b, alpha^2 A A^T + sigma^2 I)``.
    """
    d = gen.dim
    eye = torch.eye(d, dtype=gen.A.dtype)
    # Sigma = alpha^2 A A^T + sigma^2 I
    cov = alpha**2 * gen.A @ gen.A.T + sigma**2 * eye
    dist = torch.distributions.MultivariateNormal(alpha * gen.b, covariance_matrix=cov)
    return dist.log_prob(x_t)


def latent_posterior(A, b, x_t, alpha: float, sigma: float):
    """``q(z | x_t) = N(M (x_t - alpha b), S_z)``: returns the means ``(B, d)`` and the shared ``S_z`` ``(d, d)``."""
    A, b, x_t = (torch.as_tensor(t, dtype=torch.float64) for t in (A, b, x_t))
    eye = torch.eye(len(b), dtype=torch.float64)
    # S_z = (I + alpha^2 / sigma^2 A^T A)^{-1},  M = S_z A^T alpha / sigma^2
    S_z = torch.linalg.inv(eye + alpha**2 / sigma**2 * A.T @ A)
    M = S_z @ A.T * alpha / sigma**2
    return (x_t - alpha * b) @ M.T, S_z


def fisher_grad(A, b, x_t, alpha: float, sigma: float):
    """The right side of Fisher's identity in closed form, per sample.

    ``E_{z ~ q(z|x_t)} grad_theta log N(x_t; alpha (A z + b), sigma^2 I)`` for ``theta = (A, b)``;
    returns ``(grad_A (B, d, d), grad_b (B, d))``.
    """
    A, b, x_t = (torch.as_tensor(t, dtype=torch.float64) for t in (A, b, x_t))
    mu, S_z = latent_posterior(A, b, x_t, alpha, sigma)                 # (B, d), (d, d)
    r = x_t - alpha * b                                                  # (B, d)
    Ezz = S_z[None] + mu[:, :, None] * mu[:, None, :]                   # E[z z^T | x_t]
    # grad_A log N = alpha / sigma^2 (x_t - alpha A z - alpha b) z^T, averaged over the posterior
    gA = alpha / sigma**2 * (r[:, :, None] * mu[:, None, :] - alpha * A[None] @ Ezz)
    # grad_b log N = alpha / sigma^2 (x_t - alpha A z - alpha b)
    gb = alpha / sigma**2 * (r - alpha * mu @ A.T)
    return gA, gb


def frozen_z_moments(A, b, m, C, alpha: float, sigma: float):
    """Mean and covariance over ``(x_t, z)`` of the law a chain that moves only ``x_t`` samples.

    With ``z ~ N(0, I)`` held fixed, the chain targets ``rho(x_t | z)`` ∝
    ``p_t(x_t) N(x_t; alpha g(z), sigma^2 I) / q_t(x_t)``, a Gaussian with precision
    ``P = P_p + I / sigma^2 - P_q``. The joint differs from ``rho`` (whose z is not N(0, I)).
    """
    A, b, m, C = (torch.as_tensor(t, dtype=torch.float64) for t in (A, b, m, C))
    eye = torch.eye(len(b), dtype=torch.float64)
    Pp = torch.linalg.inv(alpha**2 * C + sigma**2 * eye)                # precision of p_t
    Pq = torch.linalg.inv(alpha**2 * A @ A.T + sigma**2 * eye)          # precision of q_t
    Pinv = torch.linalg.inv(Pp + eye / sigma**2 - Pq)
    # mean of x_t given z: P^{-1} (P_p alpha m + alpha (A z + b) / sigma^2 - P_q alpha b)  = mu0 + L z
    mu0 = Pinv @ (Pp @ (alpha * m) + alpha * b / sigma**2 - Pq @ (alpha * b))
    L = Pinv @ A * alpha / sigma**2
    mean = torch.cat([mu0, torch.zeros_like(b)])
    cov = torch.cat([torch.cat([L @ L.T + Pinv, L], 1), torch.cat([L.T, eye], 1)], 0)
    return mean, cov


def gaussian_kl(mean0, cov0, mean1, cov1) -> float:
    """``KL(N(mean0, cov0) || N(mean1, cov1))``."""
    mean0, cov0, mean1, cov1 = (torch.as_tensor(t, dtype=torch.float64) for t in (mean0, cov0, mean1, cov1))
    k = len(mean0)
    P1 = torch.linalg.inv(cov1)
    dm = mean1 - mean0
    # 0.5 [tr(S1^-1 S0) + dm^T S1^-1 dm - k + log det S1 - log det S0]
    return 0.5 * float(torch.trace(P1 @ cov0) + dm @ P1 @ dm - k + torch.logdet(cov1) - torch.logdet(cov0))


def fit_error(A, b, m, C) -> float:
    """Distance to the maximum-likelihood fit: ``||A A^T - C||_F + ||b - m||``."""
    A, b, m, C = (torch.as_tensor(t, dtype=torch.float64) for t in (A, b, m, C))
    return float(torch.linalg.norm(A @ A.T - C) + torch.linalg.norm(b - m))


def exact_em(A, b, m, C, alpha: float, sigma: float, iters: int = 50):
    """``iters`` exact EM steps at one noise level; returns ``(A, b, errors)`` with the fit error after each step."""
    A, b = torch.as_tensor(A, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    errors = []
    for _ in range(iters):
        A, b = exact_em_step(A, b, m, C, alpha, sigma)
        errors.append(fit_error(A, b, m, C))
    return A, b, errors


def langevin_em_step(gen: LinearGenerator, teacher, lam: float, lcfg, opt: torch.optim.Optimizer,
                     batch: int = 1024, rng: torch.Generator | None = None, mstep_iters: int = 1) -> float:
    """One EM iteration with the Langevin E-step and a stochastic M-step; returns the M-step loss.

    E-step: ``lcfg.K`` Langevin steps on rho from the generator's joint sample ``(z, eps)``, with the
    exact student ``q_t`` of the current generator in place of a trained score network.
    M-step: ``mstep_iters`` steps of ``opt`` on ``||x_t - alpha g(z)||^2 / (2 sigma^2)`` with the
    E-step's ``(x_t, z)`` held fixed.
    """
    from .langevin import estep

    d = gen.dim
    student = exact_student(gen.A.detach(), gen.b.detach(), teacher.schedule)
    z = torch.randn(batch, d, generator=rng)
    eps = torch.randn(batch, d, generator=rng)
    lam_b = torch.full((batch,), float(lam))
    a, s = (float(v) for v in teacher.schedule.alpha_sigma(torch.tensor(float(lam))))
    res = estep(gen, teacher, student, z, eps, lam_b, lcfg, rng=rng)
    with torch.no_grad():
        # x_t^K = alpha g(z^K) + sigma eps^K, held fixed in the M-step
        x_t = a * gen(res.z) + s * res.eps
    for _ in range(mstep_iters):
        # the M-step regression: ||x_t - alpha g_theta(z)||^2 / (2 sigma^2)
        loss = ((x_t - a * gen(res.z)) ** 2).sum(1).mean() / (2 * s**2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return loss.item()


def langevin_em(A0, b0, m, C, lam: float, lcfg, iters: int = 300, batch: int = 1024, lr: float = 0.5,
                t0: float = 30.0, seed: int = 0, schedule=None) -> dict:
    """EM with the Langevin E-step and an SGD M-step; returns ``{"A", "b", "errors", "losses"}``.

    The learning rate is ``lr * sigma^2 / alpha^2 * t0 / (t0 + t)``: the regression's curvature is
    ``alpha^2 / sigma^2 E[z z^T]`` (about ``alpha^2 / sigma^2``), and the decay averages out the
    Monte Carlo noise (Robbins-Monro).
    """
    teacher = gaussian_teacher(m, C, schedule)
    rng = torch.Generator().manual_seed(seed)
    gen = LinearGenerator(A0, b0)
    a, s = (float(v) for v in teacher.schedule.alpha_sigma(torch.tensor(float(lam))))
    base = lr * s**2 / a**2
    opt = torch.optim.SGD(gen.parameters(), lr=base)
    errors, losses = [], []
    for t in range(iters):
        for g in opt.param_groups:
            g["lr"] = base * t0 / (t0 + t)
        losses.append(langevin_em_step(gen, teacher, lam, lcfg, opt, batch=batch, rng=rng))
        errors.append(fit_error(gen.A.detach(), gen.b.detach(), m, C))
    return {"A": gen.A.detach().clone(), "b": gen.b.detach().clone(), "errors": errors, "losses": losses}


def chain_cov_1d(space, a, s, c, gamma_u, gamma_z, K, start):
    """Exact covariance of (u, z, eta) after K steps on a 1D linear pair: g(z) = z, ds(x_t) = c x_t.

    u is eps (space "eps") or x_t (space "x"); eta is the record of the injected noise of u
    (chapter 4, section 4); gamma_z = 0 freezes z. start: the (3, 3) covariance at step 0 (all means are zero).
    """
    r_u, r_z = math.sqrt(2 * gamma_u), math.sqrt(2 * gamma_z)
    if space == "eps":
        # eps <- eps + g (sigma ds - eps) + r n,  z <- z + g_z (alpha ds - z) + r_z n_z,  sigma ds = s c (a z + s eps)
        M = [[1 - gamma_u + gamma_u * c * s * s, gamma_u * c * s * a, 0],
             [gamma_z * a * c * s, 1 - gamma_z + gamma_z * a * c * a, 0],
             [0, 0, 1 - gamma_u]]                                        # eta <- (1 - g) eta + r n
    else:
        # x <- x + g (ds - (x - a z) / s^2) + r n,  z <- z + g_z (a (x - a z) / s^2 - z) + r_z n_z
        M = [[1 + gamma_u * c - gamma_u / s**2, gamma_u * a / s**2, 0],
             [gamma_z * a / s**2, 1 - gamma_z * a**2 / s**2 - gamma_z, 0],
             [0, 0, 1 - gamma_u / s**2]]                                 # eta <- (1 - g / s^2) eta + r n
    M = torch.tensor(M, dtype=torch.float64)
    N = torch.tensor([[r_u, 0], [0, r_z], [r_u, 0]], dtype=torch.float64)   # the same n drives u and eta
    S = start.clone().double()
    for _ in range(K):
        S = M @ S @ M.T + N @ N.T
    return S
