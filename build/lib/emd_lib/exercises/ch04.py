"""Checks for chapter 4 (Langevin and noise cancellation)."""
from __future__ import annotations

import functools
import math

import torch

from ..langevin import LangevinConfig, estep
from ..schedules import VP
from . import ExerciseFailed, expect_close, register


_close = functools.partial(expect_close, relative=False)     # absolute tolerances here


# ---- 4.1 from (x, z) to (eps, z) gradients ------------------------------------------------------

def _eps_no_jacobian(grad_x, grad_z_x, J, alpha, sigma):      # forgets that x_t moves with z
    return sigma * grad_x, grad_z_x


def _eps_divides(grad_x, grad_z_x, J, alpha, sigma):          # divides by sigma instead of multiplying
    return grad_x / sigma, grad_z_x + alpha * torch.einsum("bij,bi->bj", J, grad_x)


def _eps_no_transpose(grad_x, grad_z_x, J, alpha, sigma):     # J v instead of J^T v
    return sigma * grad_x, grad_z_x + alpha * torch.einsum("bij,bj->bi", J, grad_x)


@register("4.1", title="the (eps, z) gradients from the (x, z) gradients",
          wrong=[_eps_no_jacobian, _eps_divides, _eps_no_transpose])
def _check_4_1(to_eps_coords):
    g = torch.Generator().manual_seed(41)
    B, d = 5, 3
    grad_x = torch.randn(B, d, generator=g, dtype=torch.float64)
    grad_z_x = torch.randn(B, d, generator=g, dtype=torch.float64)
    J = torch.randn(B, d, d, generator=g, dtype=torch.float64)
    alpha, sigma = 0.6, 0.8
    ge, gz = to_eps_coords(grad_x, grad_z_x, J, alpha, sigma)
    try:
        _close("grad_eps", ge, sigma * grad_x)
    except ExerciseFailed as e:
        raise ExerciseFailed(f"{e}: x_t = alpha g(z) + sigma eps, so d x_t / d eps = sigma I") from None
    try:
        _close("grad_z", gz, grad_z_x + alpha * torch.einsum("bij,bi->bj", J, grad_x))
    except ExerciseFailed as e:
        raise ExerciseFailed(f"{e}: at fixed eps, x_t moves with z through alpha g(z); the chain rule adds "
                             "alpha J^T grad_x (J[b, i, j] = d g_i / d z_j)") from None


# ---- 4.2 the largest fixed step in x ------------------------------------------------------------

def _gx_lam_min(lam_min, lam_max):                            # the wrong end of the schedule
    return 2 * float(torch.sigmoid(torch.tensor(-float(lam_min))))


def _gx_no_two(lam_min, lam_max):                             # sigma^2 instead of 2 sigma^2
    return float(torch.sigmoid(torch.tensor(-float(lam_max))))


def _gx_sigma(lam_min, lam_max):                              # 2 sigma instead of 2 sigma^2
    return 2 * math.sqrt(float(torch.sigmoid(torch.tensor(-float(lam_max)))))


@register("4.2", title="the largest stable fixed step in x", wrong=[_gx_lam_min, _gx_no_two, _gx_sigma])
def _check_4_2(max_stable_gamma_x):
    for lo, hi in ((-6.0, 6.0), (-10.0, 2.0), (-3.0, 8.0)):
        want = 2 * float(torch.sigmoid(torch.tensor(-hi)))
        got = float(max_stable_gamma_x(lo, hi))
        if not math.isclose(got, want, rel_tol=1e-4):
            raise ExerciseFailed(f"for lam in [{lo}, {hi}] you gave {got:.6g}: the residual is multiplied by "
                                 "1 - gamma_x / sigma^2 per step; which level has the smallest sigma^2 (VP: "
                                 "sigma^2 = sigmoid(-lam))?")


# ---- 4.3 noise cancellation ---------------------------------------------------------------------

class _Scores:
    """A teacher that predicts no noise and a student whose k-th prediction is the k-th fixed drift, so
    the library's score gap ``sigma ds`` at Langevin step k is exactly ``drifts[k]``."""

    schedule = VP

    def __init__(self, out=None):
        self.out = None if out is None else iter(out)

    def eps(self, x_t, lam, cond=None):
        return torch.zeros_like(x_t) if self.out is None else next(self.out)


def _reference(eps0, drifts, noises, gamma, mode):
    """The library's E-step (eps-chain, z frozen) driven by the fixed drifts and noises."""
    noise = iter(noises)
    cfg = LangevinConfig(K=len(drifts), gamma_eps=gamma, cancel=mode, move_z=False)
    res = estep(torch.zeros_like, _Scores(), _Scores(drifts), eps0, eps0, torch.zeros(len(eps0), dtype=eps0.dtype),
                cfg, rng=lambda like: next(noise))
    return res.eps


def _cancel_no_decay(eps0, drifts, noises, gamma, mode):      # eta accumulates without the (1 - gamma) decay
    eps = eps0.clone()
    eta = eps0.clone() if mode == "full" else torch.zeros_like(eps0)
    for d, n in zip(drifts, noises):
        eps = eps + gamma * (d - eps) + math.sqrt(2 * gamma) * n
        eta = eta + math.sqrt(2 * gamma) * n
    return eps if mode == "none" else eps - eta


def _cancel_full_is_injected(eps0, drifts, noises, gamma, mode):   # forgets eta_0 = eps_0
    return _reference(eps0, drifts, noises, gamma, "injected" if mode == "full" else mode)


@register("4.3", title="noise cancellation in the eps-chain", wrong=[_cancel_no_decay, _cancel_full_is_injected])
def _check_4_3(cancelled_eps):
    g = torch.Generator().manual_seed(43)
    K, B, d, gamma = 6, 4, 2, 0.3
    eps0 = torch.randn(B, d, generator=g, dtype=torch.float64)
    drifts = 0.2 * torch.randn(K, B, d, generator=g, dtype=torch.float64)
    noises = torch.randn(K, B, d, generator=g, dtype=torch.float64)
    for mode in ("none", "injected", "full"):
        got = cancelled_eps(eps0, drifts, noises, gamma, mode)
        try:
            _close(f"mode={mode!r}", got, _reference(eps0, drifts, noises, gamma, mode))
        except ExerciseFailed as e:
            hint = {"none": "return the chain's final eps",
                    "injected": "eta starts at 0 and follows eta <- (1 - gamma) eta + sqrt(2 gamma) n",
                    "full": "eta starts at eps0; what is left is sum_k (1-gamma)^(K-1-k) gamma d_k"}[mode]
            raise ExerciseFailed(f"{e}: {hint}") from None
