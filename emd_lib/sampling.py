"""Samplers for any teacher: the probability-flow ODE (Heun) and the reverse SDE.

Write ``y = x_t / alpha`` and ``s = sigma / alpha = exp(-lam / 2)``. Then ``y = x + s eps`` for
every schedule (VP and EDM alike), and the probability-flow ODE is EDM's

    dy/ds = (y - D(y, s)) / s.

Heun's method takes two denoiser calls a step (one on the last step); the reverse SDE,
discretised by Euler-Maruyama, one:

    y <- y + (s^2 - s'^2) / s^2 * (D(y) - y) + sqrt(s^2 - s'^2) * n.

Each sampler returns the samples and the number of function evaluations (NFE), i.e.
denoiser calls, that produced them.
"""
from __future__ import annotations

import math

import torch

from . import randn
from .schedules import bcast

__all__ = ["sigma_grid", "sample_ode", "sample_sde", "ddim_step"]


def sigma_grid(n_steps: int, s_min: float, s_max: float, rho: float = 7.0) -> torch.Tensor:
    """EDM's grid: ``n_steps`` noise levels from ``s_max`` down to ``s_min`` (spaced evenly in
    ``s ** (1 / rho)``), then 0; ``n_steps + 1`` values in all. With ``n_steps = 1`` it is
    ``[s_max, 0]``: one step straight from ``s_max`` to the clean end."""
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    i = torch.arange(n_steps, dtype=torch.float64)
    s = (s_max ** (1 / rho) + i / max(n_steps - 1, 1) * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
    return torch.cat([s, torch.zeros(1, dtype=torch.float64)])


def _range(teacher, s_min, s_max):
    sch = teacher.schedule
    if s_max is None:
        s_max = math.exp(-sch.lam_min / 2)
    if s_min is None:
        s_min = math.exp(-min(sch.lam_max, 12.0) / 2)
    if not (0 < s_min <= s_max < math.inf):
        raise ValueError(f"need 0 < s_min <= s_max (noise levels sigma/alpha), got s_min={s_min}, s_max={s_max}")
    return s_min, s_max


def _check_args(n, n_steps, y):
    """The samplers' arguments, checked once before the loop."""
    if int(n_steps) != n_steps or n_steps < 1:
        raise ValueError(f"n_steps must be a whole number >= 1, got {n_steps}")
    if y is None and (n is None or int(n) != n or n < 1):
        raise ValueError(f"n (number of samples) must be a whole number >= 1 when no starting point y is given, "
                         f"got {n}")


def _denoise(teacher, y, s, cond):
    """D at ``y = x_t / alpha`` and noise ``s = sigma / alpha``."""
    lam = torch.full((y.shape[0],), -2.0 * math.log(s), dtype=y.dtype, device=y.device)
    alpha, _ = teacher.schedule.alpha_sigma(lam)
    return teacher.denoise(bcast(alpha, y) * y, lam, cond)


def ddim_step(teacher, x_t: torch.Tensor, lam: float, lam_next: float, cond=None) -> torch.Tensor:
    """One Euler step of the probability-flow ODE from log-SNR ``lam`` to ``lam_next``, in ``x_t``:

        x_t' = alpha' D + sigma' (x_t - alpha D) / sigma     (DDIM's deterministic update)

    which is the Euler step ``y' = y + (s' - s)(y - D) / s`` of ``dy/ds`` written back in ``x_t``."""
    lam_b = torch.full((x_t.shape[0],), float(lam), dtype=x_t.dtype, device=x_t.device)
    a, s = (bcast(v, x_t) for v in teacher.schedule.alpha_sigma(lam_b))
    a2, s2 = (bcast(v, x_t) for v in teacher.schedule.alpha_sigma(torch.full_like(lam_b, float(lam_next))))
    D = teacher.denoise(x_t, lam_b, cond)
    return a2 * D + s2 * (x_t - a * D) / s


@torch.no_grad()
def sample_ode(teacher, n: int | None = None, n_steps: int = 18, shape=None, cond=None,
               s_min: float | None = None, s_max: float | None = None,
               generator: torch.Generator | None = None, y=None, device=None):
    """Heun sampler of the probability-flow ODE.

    Noise levels are ``s = sigma / alpha`` and the state is ``y = x_t / alpha`` (EDM's
    coordinates). By default ``s`` runs from the schedule's largest level ``exp(-lam_min / 2)``
    down to ``exp(-min(lam_max, 12) / 2)`` (for the EDM schedule 0.00248 rather than EDM's 0.002;
    pass ``s_min`` to change it). Give ``n`` for a fresh start ``y = s_max * N(0, I)`` of shape
    ``(n, *shape)`` (``shape`` defaults to ``(teacher.dim,)``), or give ``y`` itself, already in
    these coordinates (``x_t / alpha`` at ``s_max``); ``n`` is then ignored. ``cond`` goes to the
    teacher's denoiser; ``generator`` makes the draws reproducible. Returns ``(x, nfe)``: the samples
    and the number of network evaluations, ``2 n_steps - 1``."""
    _check_args(n, n_steps, y)
    s_min, s_max = _range(teacher, s_min, s_max)
    grid = sigma_grid(n_steps, s_min, s_max).tolist()
    if y is None:
        shape = shape or (teacher.dim,)
        y = randn((n, *shape), generator, device) * grid[0]
    nfe = 0
    for s, s_next in zip(grid[:-1], grid[1:]):
        d = (y - _denoise(teacher, y, s, cond)) / s            # dy/ds
        nfe += 1
        y_euler = y + (s_next - s) * d
        if s_next > 0:                                          # Heun's correction
            d2 = (y_euler - _denoise(teacher, y_euler, s_next, cond)) / s_next
            nfe += 1
            y = y + (s_next - s) * 0.5 * (d + d2)
        else:
            y = y_euler
    return y, nfe


@torch.no_grad()
def sample_sde(teacher, n: int | None = None, n_steps: int = 100, shape=None, cond=None,
               s_min: float | None = None, s_max: float | None = None,
               generator: torch.Generator | None = None, y=None, device=None):
    """Euler-Maruyama sampler of the reverse SDE; the last step is a plain denoise. The arguments
    are :func:`sample_ode`'s (the same coordinates, default range and starting point); ``generator``
    also draws each step's noise. Returns ``(x, nfe)``: the samples and the number of network
    evaluations, ``n_steps``."""
    _check_args(n, n_steps, y)
    s_min, s_max = _range(teacher, s_min, s_max)
    grid = sigma_grid(n_steps, s_min, s_max).tolist()
    if y is None:
        shape = shape or (teacher.dim,)
        y = randn((n, *shape), generator, device) * grid[0]
    nfe = 0
    for s, s_next in zip(grid[:-1], grid[1:]):
        D = _denoise(teacher, y, s, cond)
        nfe += 1
        if s_next == 0:
            y = D
            break
        ds2 = s**2 - s_next**2
        noise = randn(y.shape, generator, y.device, y.dtype)
        y = y + ds2 / s**2 * (D - y) + math.sqrt(ds2) * noise
    return y, nfe
