"""Forward and reverse KL, and the single-Gaussian fits that show their difference.

Fit one Gaussian ``q = N(m, S)`` to a target ``p``:

* **forward KL** ``KL(p || q) = E_p[log p - log q]`` (maximum likelihood, *mode covering*).
  Over Gaussians its minimiser is closed-form: moment matching, ``m = E_p[x]``,
  ``S = Cov_p[x]``. :func:`forward_kl_gaussian_fit`.
* **reverse KL** ``KL(q || p) = E_q[log q - log p]`` (*mode seeking*: ``q`` is punished for
  mass where ``p`` is small, not for missing parts of ``p``). No closed form; minimised by
  gradient descent with reparametrised samples ``x = m + L e``, ``e ~ N(0, I)``, from several
  starts because it has one local minimum per mode. :func:`reverse_kl_gaussian_fit`.

Diffusion distillation compares the noisy marginals rather than the clean densities. Give
:func:`reverse_kl_gaussian_fit` a set of log-SNRs ``lams`` and weights, and it minimises
``sum_j w_j KL(q_{lam_j} || p_{lam_j})`` with ``q_lam = N(alpha m, alpha^2 S + sigma^2 I)``:
the objective whose gradient Diff-Instruct / VSD follows (with ``lam`` drawn at random).
The forward-KL fit needs no such option: the moments of ``p_lam`` are ``alpha E_p[x]`` and
``alpha^2 Cov_p[x] + sigma^2 I``, so moment matching gives the same ``(m, S)`` at every level.

:func:`kl_monte_carlo` estimates ``KL(a || b)`` (optionally between noisy marginals) for any
two objects with ``sample`` and ``log_prob``, e.g. :class:`~emd_lib.teachers.GaussianMixture`.
"""
from __future__ import annotations

import math

import torch

from .teachers import GaussianMixture

__all__ = ["mixture_moments", "gaussian", "forward_kl_gaussian_fit", "reverse_kl_gaussian_fit",
           "kl_monte_carlo", "gaussian_log_prob"]


def mixture_moments(p: GaussianMixture, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact mean ``(d,)`` and covariance ``(d, d)`` of a Gaussian mixture (computed in float64, returned
    in ``dtype``)."""
    w = p.weights.double()
    mu, C = p.means.double(), p.covs.double()
    # E[x] = sum_k w_k mu_k
    m = (w[:, None] * mu).sum(0)
    # E[x x^T] = sum_k w_k (C_k + mu_k mu_k^T)
    second = (w[:, None, None] * (C + mu[:, :, None] * mu[:, None, :])).sum(0)
    return m.to(dtype), (second - torch.outer(m, m)).to(dtype)


def gaussian(mean, cov, schedule=None) -> GaussianMixture:
    """``N(mean, cov)`` as a one-component :class:`GaussianMixture` (so it has ``sample``,
    ``log_prob`` at any noise level, ``score`` and ``denoise``)."""
    mean = torch.as_tensor(mean, dtype=torch.float32)
    cov = torch.as_tensor(cov, dtype=torch.float32)
    cov = 0.5 * (cov + cov.T)
    kw = {} if schedule is None else {"schedule": schedule}
    return GaussianMixture([1.0], mean[None], covs=cov[None], **kw)


def forward_kl_gaussian_fit(target) -> tuple[torch.Tensor, torch.Tensor]:
    """``argmin_{m, S} KL(p || N(m, S))``: moment matching. Returns ``(mean (d,), cov (d, d))``.

    ``target`` is a :class:`GaussianMixture` (exact moments) or samples ``(n, d)`` (empirical).
    Why: ``KL(p || q) = const - E_p[log q]``, and ``-E_p[log N(x; m, S)] =
    0.5 (log det S + tr(S^{-1} Cov_p) + (m - E_p x)^T S^{-1} (m - E_p x)) + const`` is
    minimised at ``m = E_p x``, ``S = Cov_p``.
    """
    if isinstance(target, GaussianMixture):
        return mixture_moments(target)
    x = torch.as_tensor(target, dtype=torch.float32)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"samples must have shape (n >= 2, d), got {tuple(x.shape)}")
    m = x.mean(0)
    return m, (x - m).T @ (x - m) / len(x)


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """``log N(x; mean, cov)`` for ``x`` ``(B, d)``; ``mean`` ``(d,)`` or ``(B, d)``; ``cov`` ``(d, d)``
    (one Cholesky factor for the whole batch) or ``(B, d, d)``. Differentiable in all arguments."""
    d = x.shape[-1]
    diff = x - mean                                                       # (B, d)
    L = torch.linalg.cholesky(cov)
    if L.ndim == 2:
        sol = torch.linalg.solve_triangular(L, diff.T, upper=False).T     # L^{-1} (x - m)
    else:
        sol = torch.linalg.solve_triangular(L, diff[..., None], upper=False)[..., 0]
    logdet = 2 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
    return -0.5 * (sol**2).sum(-1) - 0.5 * logdet - 0.5 * d * math.log(2 * math.pi)


def reverse_kl_gaussian_fit(target: GaussianMixture, mean0, std0: float = 0.5, steps: int = 1000,
                            n: int = 1024, lr: float = 0.02, lams=None, weights=None,
                            generator: torch.Generator | None = None) -> dict:
    """``argmin_{m, S} KL(N(m, S) || p)`` by Adam on reparametrised samples, from ``(mean0, std0^2 I)``.

    ``S = L L^T`` with ``L`` lower triangular and a positive (exp-parametrised) diagonal. With
    ``lams`` (a 1D tensor of log-SNRs) and ``weights`` (same length, default ones) the objective
    is ``sum_j w_j KL(q_j || p_j) / sum_j w_j`` between the noisy marginals at ``lams[j]``
    (the target's schedule), estimated with a fresh random ``lam_j`` per sample.
    Returns ``{"mean", "cov", "kl", "history"}``; ``kl`` is the objective over the last 10% of steps.
    """
    d = target.dim
    m = torch.as_tensor(mean0, dtype=torch.float32).clone().reshape(d).requires_grad_(True)
    log_diag = torch.full((d,), math.log(std0)).requires_grad_(True)
    off = torch.zeros(d, d).requires_grad_(True)
    opt = torch.optim.Adam([m, log_diag, off], lr=lr)
    tril = torch.tril(torch.ones(d, d), diagonal=-1)
    if lams is not None:
        lams = torch.as_tensor(lams, dtype=torch.float32).flatten()
        weights = torch.ones_like(lams) if weights is None else torch.as_tensor(weights, dtype=torch.float32).flatten()
        if weights.shape != lams.shape or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError("weights must be non-negative, one per lam, and not all zero")
        weights = weights / weights.mean()
    hist = []
    for _ in range(steps):
        L = torch.diag(log_diag.exp()) + off * tril
        S = L @ L.T
        e = torch.randn(n, d, generator=generator)
        x = m + e @ L.T                                                  # x ~ q, reparametrised
        if lams is None:
            # KL(q || p) = E_q[log q(x) - log p(x)]
            logq = gaussian_log_prob(x, m, S)
            logp = target.log_prob(x)
            w = torch.ones(n)
        else:
            j = torch.randint(len(lams), (n,), generator=generator)
            lam, w = lams[j], weights[j]
            alpha, sigma = target.schedule.alpha_sigma(lam)
            # x_t = alpha x + sigma eps ~ q_t = N(alpha m, alpha^2 S + sigma^2 I)
            x_t = alpha[:, None] * x + sigma[:, None] * torch.randn(n, d, generator=generator)
            # one covariance per noise level of the grid (not per sample): precision and log det
            a_j, s_j = target.schedule.alpha_sigma(lams)
            cov_j = a_j[:, None, None] ** 2 * S + s_j[:, None, None] ** 2 * torch.eye(d)   # (J, d, d)
            L_j = torch.linalg.cholesky(cov_j)
            prec_j = torch.cholesky_inverse(L_j)
            logdet_j = 2 * torch.log(torch.diagonal(L_j, dim1=-2, dim2=-1)).sum(-1)
            diff = x_t - alpha[:, None] * m
            quad = torch.einsum("ni,nij,nj->n", diff, prec_j[j], diff)
            logq = -0.5 * quad - 0.5 * logdet_j[j] - 0.5 * d * math.log(2 * math.pi)
            logp = target.log_prob(x_t, lam)
        loss = (w * (logq - logp)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        hist.append(loss.item())
    with torch.no_grad():
        L = torch.diag(log_diag.exp()) + off * tril
        S = L @ L.T
    tail = hist[-max(len(hist) // 10, 1):]
    return {"mean": m.detach().clone(), "cov": S.detach().clone(), "kl": sum(tail) / len(tail), "history": hist}


@torch.no_grad()
def kl_monte_carlo(a, b, n: int = 20000, lam=None, generator: torch.Generator | None = None) -> tuple[float, float]:
    """Monte-Carlo ``KL(a || b) = E_a[log a - log b]`` and its standard error.

    ``a`` and ``b`` need ``sample(n, generator=...)`` and ``log_prob(x, lam)`` (as
    :class:`GaussianMixture` has). With ``lam`` (a float), both are compared as noisy marginals
    at that log-SNR, using ``a``'s schedule to noise its samples.
    """
    x = a.sample(n, generator=generator)
    if lam is None:
        diff = a.log_prob(x) - b.log_prob(x)
    else:
        lam_b = torch.full((n,), float(lam))
        alpha, sigma = a.schedule.alpha_sigma(lam_b)
        x = alpha[:, None] * x + sigma[:, None] * torch.randn(x.shape, generator=generator)
        diff = a.log_prob(x, lam_b) - b.log_prob(x, lam_b)
    diff = diff.double()
    return float(diff.mean()), float(diff.std() / math.sqrt(n))
