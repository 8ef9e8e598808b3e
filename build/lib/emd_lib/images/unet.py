"""A compact class-conditional UNet denoiser for small images (MNIST 28x28, digits 8x8).

:class:`UNet` is a denoiser ``D(x_t, lam, c) ~ E[x | x_t]`` with EDM's preconditioning,
written in the variance-preserving coordinates of :mod:`emd_lib.schedules`. With
``y = x_t / alpha`` and ``s = sigma / alpha = exp(-lam / 2)`` (so ``y = x + s eps``),

    D = c_skip y + c_out F(c_in y, lam, c),
    c_skip = sd^2 / (s^2 + sd^2),  c_out = s sd / sqrt(s^2 + sd^2),  c_in = 1 / sqrt(s^2 + sd^2),

where ``sd`` is the data's RMS (``sigma_data``). ``F`` sees unit-variance inputs and has a
unit-variance target at every noise level, so one network is accurate from pure noise to
clean images, and ``D`` stays well behaved where eps-prediction would divide by a tiny alpha
(the generator's initialisation at a low ``lam*`` reads ``D`` there).

Wrapped as ``NetworkTeacher(unet, VP, predicts="x0")`` it has the teacher interface; the
class label ``c`` is an integer in ``0..n_classes-1``, or ``n_classes`` for "no class"
(trained with label dropout, so the model is also unconditional).

The image chapter's one-step generator is :class:`emd_lib.nets.TeacherInitGenerator` around a copy
of this teacher.
"""
from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import nn
from torch.nn import functional as F

from ..nets import LamEmbedding
from ..schedules import VP, Schedule

__all__ = ["UNet", "unet_from_card"]


def _groups(ch: int) -> int:
    return math.gcd(ch, 8)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with the embedding as a per-channel scale and shift."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(c_in), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * c_out)
        self.norm2 = nn.GroupNorm(_groups(c_out), c_out)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x, emb):  # (B, c_in, H, W), (B, E) -> (B, c_out, H, W)
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = rearrange(self.emb(emb), "b (two c) -> two b c 1 1", two=2)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.drop(F.silu(h)))
        return h + self.skip(x)


class Attention(nn.Module):
    """Single-head self-attention over the pixels of the lowest resolution."""

    def __init__(self, ch: int):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(ch), ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.out = nn.Conv2d(ch, ch, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x):
        B, C, H, W = x.shape
        q, k, v = rearrange(self.qkv(self.norm(x)), "b (three c) h w -> three b (h w) c", three=3)
        h = F.scaled_dot_product_attention(q, k, v)
        return x + self.out(rearrange(h, "b (h w) c -> b c h w", h=H, w=W))


class UNet(nn.Module):
    """Class-conditional UNet denoiser ``D(x_t, lam, c)`` (VP coordinates, EDM preconditioning).

    ``channels`` gives the width at each resolution (28 -> 14 -> 7 for three levels); one
    residual block a level on the way down, two on the way up, attention at the bottom.
    """

    def __init__(self, in_ch: int = 1, channels=(32, 64, 64), n_classes: int = 10, sigma_data: float = 1.0,
                 emb_dim: int = 128, n_freq: int = 16, attention: bool = True, dropout: float = 0.0,
                 schedule: Schedule = VP):
        super().__init__()
        self.config = dict(in_ch=in_ch, channels=list(channels), n_classes=n_classes, sigma_data=sigma_data,
                           emb_dim=emb_dim, n_freq=n_freq, attention=attention, dropout=dropout)
        self.schedule, self.sigma_data, self.n_classes = schedule, sigma_data, n_classes
        self.lam_emb = LamEmbedding(n_freq)
        self.emb = nn.Sequential(nn.Linear(2 * n_freq + 1, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.class_emb = nn.Embedding(n_classes + 1, emb_dim)       # index n_classes = no class
        chs = list(channels)
        self.conv_in = nn.Conv2d(in_ch, chs[0], 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        c = chs[0]
        for i, ch in enumerate(chs):
            self.down.append(ResBlock(c, ch, emb_dim, dropout))
            c = ch
            if i < len(chs) - 1:
                self.downsample.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
        self.mid1 = ResBlock(c, c, emb_dim, dropout)
        self.attn = Attention(c) if attention else nn.Identity()
        self.mid2 = ResBlock(c, c, emb_dim, dropout)
        self.up = nn.ModuleList()
        for i, ch in reversed(list(enumerate(chs))):
            self.up.append(ResBlock(c + ch, ch, emb_dim, dropout))
            c = ch
        self.norm_out = nn.GroupNorm(_groups(c), c)
        self.conv_out = nn.Conv2d(c, in_ch, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def raw(self, x_in, lam, cond):
        """``F(c_in y, lam, c)``: the network before preconditioning."""
        emb = self.emb(self.lam_emb(lam)) + self.class_emb(cond)
        h = self.conv_in(x_in)
        skips = []
        for i, block in enumerate(self.down):
            h = block(h, emb)
            skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
        h = self.mid2(self.attn(self.mid1(h, emb)), emb)
        for block in self.up:
            skip = skips.pop()
            if h.shape[-1] != skip.shape[-1]:
                h = F.interpolate(h, size=skip.shape[-2:], mode="nearest")
            h = block(torch.cat([h, skip], dim=1), emb)
        return self.conv_out(F.silu(self.norm_out(h)))

    def forward(self, x_t, lam, cond=None):  # (B, C, H, W), (B,), (B,) -> (B, C, H, W)
        lam = torch.as_tensor(lam, dtype=x_t.dtype, device=x_t.device).expand(x_t.shape[0])
        if cond is None:
            cond = torch.full((x_t.shape[0],), self.n_classes, dtype=torch.long, device=x_t.device)
        alpha, _ = self.schedule.alpha_sigma(lam)
        s = torch.exp(-0.5 * lam)                                   # sigma / alpha
        sd = self.sigma_data
        y = x_t / alpha[:, None, None, None]                        # y = x + s eps
        c_skip = (sd**2 / (s**2 + sd**2))[:, None, None, None]
        c_out = (s * sd / torch.sqrt(s**2 + sd**2))[:, None, None, None]
        c_in = (1 / torch.sqrt(s**2 + sd**2))[:, None, None, None]
        # D = c_skip y + c_out F(c_in y, lam, c)
        return c_skip * y + c_out * self.raw(c_in * y, lam, cond)

    def loss(self, x, cond, lam, eps):
        """EDM's weighted denoising loss, ``|| (D(x_t) - x) / c_out ||^2`` per pixel (a unit-variance target)."""
        alpha, sigma = self.schedule.alpha_sigma(lam)
        x_t = alpha[:, None, None, None] * x + sigma[:, None, None, None] * eps
        s = torch.exp(-0.5 * lam)
        c_out = (s * self.sigma_data / torch.sqrt(s**2 + self.sigma_data**2))[:, None, None, None]
        return (((self(x_t, lam, cond) - x) / c_out) ** 2).mean()


def unet_from_card(card: dict) -> UNet:
    """A :class:`UNet` with the architecture recorded in a checkpoint's card."""
    return UNet(**card["arch"])


