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
"""
from __future__ import annotations

import torch
from torch import nn

from .teachers import GaussianMixture

__all__ = ["LinearGenerator", "rho_moments", "exact_em_step", "exact_student", "gaussian_teacher"]


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
