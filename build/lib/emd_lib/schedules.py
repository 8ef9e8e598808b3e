"""Noise schedules in log-SNR.

Every noisy sample is ``x_t = alpha * x + sigma * eps`` with ``eps ~ N(0, I)``; the noise
level is named by its log signal-to-noise ratio ``lam = log(alpha^2 / sigma^2)``. Speaking
log-SNR lets a variance-preserving (VP) teacher and an EDM (variance-exploding) teacher meet
in one place:

* VP:  ``alpha^2 = sigmoid(lam)``, ``sigma^2 = sigmoid(-lam)``
* EDM: ``alpha = 1``, ``sigma = exp(-lam / 2)``  (``lam = -8.76`` is ``sigma = 80``)

Both share ``sigma / alpha = exp(-lam / 2)``, which is what the samplers integrate over.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["Schedule", "VP", "EDM", "get_schedule", "lam_from_sigma", "sigma_from_lam",
           "sample_lam", "weight", "bcast"]


def bcast(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape a per-sample tensor ``(B,)`` (or a scalar) so it broadcasts against ``x`` ``(B, ...)``."""
    v = torch.as_tensor(v, dtype=x.dtype, device=x.device)
    if v.ndim == 0:
        return v
    return v.reshape(v.shape[0], *([1] * (x.ndim - 1)))


def lam_from_sigma(sigma):
    """EDM convention (alpha = 1): ``lam = -2 log sigma``."""
    return -2.0 * torch.log(torch.as_tensor(sigma, dtype=torch.float32))


def sigma_from_lam(lam):
    """EDM convention (alpha = 1): ``sigma = exp(-lam / 2)``."""
    return torch.exp(-0.5 * torch.as_tensor(lam, dtype=torch.float32))


@dataclass(frozen=True)
class Schedule:
    """A noise schedule: ``kind`` is ``"vp"`` or ``"edm"``; ``lam_min``/``lam_max`` bound its range."""

    kind: str = "vp"
    lam_min: float = -10.0
    lam_max: float = 10.0

    def __post_init__(self):
        if self.kind not in ("vp", "edm"):
            raise ValueError(f"schedule kind must be 'vp' or 'edm', got {self.kind!r}")
        if not self.lam_min < self.lam_max:
            raise ValueError(f"need lam_min < lam_max, got {self.lam_min} and {self.lam_max}")

    def alpha_sigma(self, lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(alpha, sigma)`` at log-SNR ``lam`` (any shape)."""
        lam = torch.as_tensor(lam, dtype=torch.get_default_dtype())
        if self.kind == "vp":
            # alpha^2 = sigmoid(lam), sigma^2 = sigmoid(-lam)
            return torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()
        # EDM: alpha = 1, sigma = exp(-lam/2)
        return torch.ones_like(lam), torch.exp(-0.5 * lam)

    def lam(self, alpha, sigma) -> torch.Tensor:
        """Inverse: ``lam = log(alpha^2 / sigma^2)``."""
        alpha, sigma = torch.as_tensor(alpha), torch.as_tensor(sigma)
        return 2.0 * (torch.log(alpha) - torch.log(sigma))

    def z_in_scale(self, lam_star: float) -> float:
        """The generator initialised from the teacher reads ``z`` as a noisy input at ``lam*``:
        ``g(z) = D(s z, lam*)`` with ``s = 1`` (VP: ``x_t`` has unit variance) or ``s = sigma*`` (EDM)."""
        return 1.0 if self.kind == "vp" else float(self.alpha_sigma(torch.tensor(float(lam_star)))[1])

    def check_lam(self, lam: float, name: str = "lam") -> float:
        """Raise a clear error when a log-SNR lies outside this schedule's range."""
        lam = float(lam)
        if not math.isfinite(lam) or not (self.lam_min <= lam <= self.lam_max):
            raise ValueError(f"{name}={lam} is outside the teacher's log-SNR range "
                             f"[{self.lam_min}, {self.lam_max}]; pick a value inside it")
        return lam


VP = Schedule("vp", -10.0, 10.0)
EDM = Schedule("edm", float(-2 * math.log(80.0)), float(-2 * math.log(0.002)))


def get_schedule(kind: "str | Schedule") -> Schedule:
    """The schedule named ``"vp"`` or ``"edm"`` (any case), or ``kind`` itself when it is a
    :class:`Schedule` already."""
    if isinstance(kind, Schedule):
        return kind
    known = {"vp": VP, "edm": EDM}
    if not isinstance(kind, str) or kind.lower() not in known:
        raise ValueError(f"unknown schedule {kind!r}; give 'vp', 'edm' or a Schedule such as emd_lib.schedules.VP")
    return known[kind.lower()]


def sample_lam(n: int, kind: str = "uniform", lam_min: float = -6.0, lam_max: float = 6.0,
               generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """Draw ``n`` noise levels (as log-SNR).

    * ``"uniform"``: ``lam ~ U[lam_min, lam_max]``
    * ``"cosine"``: ``t ~ U[0, 1]``, ``lam = -2 log tan(pi t / 2)``, truncated to the range
    * ``"edm"``: EDM's log-normal, ``log sigma ~ N(-1.2, 1.2^2)``, ``lam = -2 log sigma``, clipped
    """
    u = torch.rand(n, generator=generator, device=device)
    if kind == "uniform":
        return lam_min + (lam_max - lam_min) * u
    if kind == "cosine":
        # invert lam(t) on the truncated interval so that every draw is in range
        t_lo = 2 / math.pi * math.atan(math.exp(-lam_max / 2))
        t_hi = 2 / math.pi * math.atan(math.exp(-lam_min / 2))
        t = t_lo + (t_hi - t_lo) * u
        return -2.0 * torch.log(torch.tan(math.pi * t / 2))
    if kind == "edm":
        n01 = torch.randn(n, generator=generator, device=device)
        return (-2.0 * (-1.2 + 1.2 * n01)).clamp(lam_min, lam_max)
    raise ValueError(f"unknown noise-level distribution {kind!r}; use 'uniform', 'cosine' or 'edm'")


def weight(lam: torch.Tensor, schedule: Schedule, kind: str = "sigma2", sigma_data: float = 0.5) -> torch.Tensor:
    """Per-noise-level weighting ``w(lam)`` of the distillation losses.

    * ``"sigma2"``: ``w = sigma^2`` (our default for the 2D toys)
    * ``"one"``: ``w = 1``
    * ``"snr"``: ``w = alpha^2 / sigma^2``
    * ``"edm"``: EDM's ``(sigma^2 + sigma_data^2) / (sigma * sigma_data)^2`` in ``sigma / alpha``
    """
    alpha, sigma = schedule.alpha_sigma(lam)
    if kind == "sigma2":
        return sigma**2
    if kind == "one":
        return torch.ones_like(sigma)
    if kind == "snr":
        return (alpha / sigma) ** 2
    if kind == "edm":
        s = sigma / alpha
        return (s**2 + sigma_data**2) / (s * sigma_data) ** 2
    raise ValueError(f"unknown weighting {kind!r}; use 'sigma2', 'one', 'snr' or 'edm'")
