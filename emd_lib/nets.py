"""Networks for low-dimensional data: the one-step generator and the student score.

* :class:`MLPGenerator`: ``x = g_theta(z)``, ``z ~ N(0, I)`` with the shape of ``x``.
* :class:`MLPScore`: an eps-prediction network ``epshat_psi(x_t, lam)``; wrapped as a
  :class:`~emd_lib.teachers.NetworkTeacher` it has the teacher's interface, so the student
  score ``s_psi = -epshat_psi / sigma`` is used exactly like the teacher's.
* :func:`init_generator_from_teacher`: the EMD initialisation ``g(z) = D_phi(z_in(z), lam*)``
  (VP: ``z_in = z``; EDM: ``z_in = sigma* z``), reached for an MLP by regression.
* :class:`TeacherInitGenerator`: the same initialisation for a network teacher, exactly: the
  generator *is* a trainable copy of the teacher read at ``lam*`` (the MNIST UNet, EDM, ADM and
  Stable Diffusion teachers all use it).
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn

from .schedules import Schedule, VP

__all__ = ["MLP", "MLPGenerator", "MLPScore", "LamEmbedding", "init_generator_from_teacher", "TeacherInitGenerator",
           "ema_update"]


def MLP(d_in: int, d_out: int, width: int = 256, depth: int = 3) -> nn.Sequential:
    """``depth`` hidden layers of ``width`` units with SiLU."""
    layers, d = [], d_in
    for _ in range(depth):
        layers += [nn.Linear(d, width), nn.SiLU()]
        d = width
    layers.append(nn.Linear(d, d_out))
    return nn.Sequential(*layers)


class LamEmbedding(nn.Module):
    """Fourier features of the log-SNR, scaled to about [-1, 1] over [-12, 12]."""

    def __init__(self, n_freq: int = 8):
        super().__init__()
        self.register_buffer("freq", 2.0 ** torch.arange(n_freq) * math.pi / 24.0)

    def forward(self, lam):  # (B,) -> (B, 2 n_freq + 1)
        a = lam[:, None] * self.freq[None]
        return torch.cat([lam[:, None] / 12.0, torch.sin(a), torch.cos(a)], dim=-1)


class MLPGenerator(nn.Module):
    """One-step generator ``x = g(z)`` for ``d``-dimensional data (``z`` has the shape of ``x``)."""

    def __init__(self, dim: int = 2, width: int = 256, depth: int = 3):
        super().__init__()
        self.dim = dim
        self.net = MLP(dim, dim, width, depth)

    def forward(self, z):  # (B, d) -> (B, d)
        return self.net(z)


class MLPScore(nn.Module):
    """Eps-prediction network ``epshat(x_t, lam)`` with input scaling ``c_in = 1/sqrt(alpha^2 v + sigma^2)``."""

    def __init__(self, dim: int = 2, width: int = 256, depth: int = 3, schedule: Schedule = VP,
                 data_var: float = 1.0, n_freq: int = 8):
        super().__init__()
        self.schedule, self.data_var = schedule, data_var
        self.emb = LamEmbedding(n_freq)
        self.net = MLP(dim + 2 * n_freq + 1, dim, width, depth)

    def forward(self, x_t, lam):  # (B, d), (B,) -> (B, d)
        alpha, sigma = self.schedule.alpha_sigma(lam)
        c_in = 1.0 / torch.sqrt(alpha**2 * self.data_var + sigma**2)
        return self.net(torch.cat([x_t * c_in[:, None], self.emb(lam)], dim=-1))


def init_generator_from_teacher(gen: nn.Module, teacher, lam_star: float = -2.0, steps: int = 500,
                                batch: int = 512, lr: float = 2e-3, generator: torch.Generator | None = None,
                                progress: bool = False) -> list[float]:
    """Regress ``g(z)`` onto the teacher denoiser ``D_phi(z_in(z), lam*)``; returns the loss curve.

    For a network teacher the paper copies the teacher's weights and fixes ``lam = lam*``; an
    MLP generator facing an exact mixture teacher learns the same map by regression.
    """
    teacher.schedule.check_lam(lam_star, "lam_star")
    dim = teacher.dim
    opt = torch.optim.Adam(gen.parameters(), lr=lr)
    lam = torch.full((batch,), float(lam_star))
    scale = teacher.schedule.z_in_scale(lam_star)                      # z_in = z (VP) or sigma* z (EDM)
    losses = []
    it = range(steps)
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(it, desc=f"init g at lam*={lam_star}", leave=False)
    for _ in it:
        z = torch.randn(batch, dim, generator=generator)
        with torch.no_grad():
            target = teacher.denoise(scale * z, lam)
        loss = ((gen(z) - target) ** 2).sum(-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


class TeacherInitGenerator(nn.Module):
    """The one-step generator initialised from a network teacher: ``g(z, c) = D(z_in(z), lam*, c)``,
    where ``D`` is a trainable copy of the teacher's denoiser (VP: ``z_in = z``, unit variance like
    ``x_t`` there; EDM: ``z_in = sigma* z``).

    ``teacher`` is any teacher with ``denoise(x_t, lam, cond)`` and ``schedule`` (a
    :class:`~emd_lib.teachers.NetworkTeacher`, a scale adapter). ``copy_weights=False`` uses it as
    it is: pass a copy made elsewhere (``emd_lib.scale.adapters.network_copy`` for the adapters) or,
    to read a trained generator, the network it was saved as. ``net`` is the copy's network: what
    checkpoints of MNIST students hold.
    """

    def __init__(self, teacher, lam_star: float, copy_weights: bool = True):
        super().__init__()
        teacher.schedule.check_lam(lam_star, "lam_star")
        self.copy = copy.deepcopy(teacher).requires_grad_(True) if copy_weights else teacher
        self.lam_star = float(lam_star)
        self.z_scale = teacher.schedule.z_in_scale(self.lam_star)

    @property
    def net(self) -> nn.Module:
        return self.copy.net

    @property
    def n_classes(self) -> int:
        return int(getattr(self.copy.net, "n_classes", 0) or 0)

    def forward(self, z, cond=None):  # (B, *shape) -> (B, *shape)
        lam = torch.full((z.shape[0],), self.lam_star, dtype=z.dtype, device=z.device)
        return self.copy.denoise(self.z_scale * z, lam, cond)


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """``ema <- decay * ema + (1 - decay) * model``, parameter by parameter."""
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm, 1.0 - decay)
