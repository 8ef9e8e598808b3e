"""Discrete-time VP teachers: ADM (guided-diffusion) and any ``net(x_t, t, cond)`` on a ``T``-step schedule."""
from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import torch
from torch import nn

from ..schedules import Schedule, bcast
from ..teachers import Teacher
from .base import AdapterError, LamRangeError, _lam_batch, _out_dtype


# ============================================================================================
# Discrete-time VP teachers (ADM / guided-diffusion, Stable Diffusion's UNet)
# ============================================================================================

def linear_alphas_cumprod(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02, scaled: bool = False):
    """``alpha_bar_t`` of DDPM's linear schedule (``scaled=True``: SD's "scaled_linear", linear in sqrt(beta))."""
    if scaled:
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float64) ** 2
    else:
        betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
    return torch.cumprod(1 - betas, 0)


def cosine_alphas_cumprod(T: int = 1000, s: float = 0.008, max_beta: float = 0.999):
    """``alpha_bar_t`` of the cosine schedule (Nichol & Dhariwal 2021) as guided-diffusion discretises it:
    ``f(u) = cos((u + s) / (1 + s) * pi / 2)^2``, ``beta_i = min(1 - f((i + 1) / T) / f(i / T), max_beta)``."""
    u = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=max_beta)
    return torch.cumprod(1 - betas, 0)


def adm_alphas_cumprod(noise_schedule: str, T: int = 1000):
    """guided-diffusion's named schedules: ``"linear"`` (betas 1e-4 to 0.02, scaled by 1000 / T) or ``"cosine"``."""
    if noise_schedule == "linear":
        return linear_alphas_cumprod(T, 1e-4 * 1000 / T, 0.02 * 1000 / T)
    if noise_schedule == "cosine":
        return cosine_alphas_cumprod(T)
    raise AdapterError(f"unknown noise_schedule {noise_schedule!r} in the ADM flags; guided-diffusion's are "
                       "'linear' and 'cosine' (its README lists each model's flags)")


class DiscreteVPTeacher(Teacher):
    """A network ``net(x_t, t, cond)`` trained on a discrete VP schedule ``alpha_bar_t`` (``t = 0..T-1``).

    ``lam_t = log(alpha_bar_t / (1 - alpha_bar_t))`` falls with ``t``; a log-SNR in between is
    read at the fractional timestep found by linear interpolation. ``predicts`` is ``"eps"`` or
    ``"v"``; ``eps_channels`` keeps the first channels of the output (ADM with learned variances
    returns eps and the variance interpolation stacked).
    """

    def __init__(self, net: nn.Module, alphas_cumprod, shape, num_classes: int = 0, predicts: str = "eps",
                 eps_channels: int | None = None):
        super().__init__()
        if predicts not in ("eps", "v"):
            raise ValueError(f"predicts must be 'eps' or 'v', got {predicts!r}")
        self.net, self.predicts, self.shape = net, predicts, tuple(shape)
        self.num_classes, self.eps_channels = num_classes, eps_channels
        ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        self.register_buffer("lam_table", torch.log(ac / (1 - ac)).float().flip(0), persistent=False)  # increasing
        self.T = len(ac)
        # the range where the network was trained (VP: alpha^2 = sigmoid(lam) = alpha_bar)
        self.schedule = Schedule("vp", float(self.lam_table[0]), float(self.lam_table[-1]))

    @property
    def dim(self) -> int:
        return math.prod(self.shape)

    def _init_args(self):
        return dict(alphas_cumprod=torch.sigmoid(self.lam_table.double().flip(0)), shape=self.shape,
                    num_classes=self.num_classes, predicts=self.predicts, eps_channels=self.eps_channels)

    def replace_net(self, net):
        return type(self)(net, **self._init_args())

    #: log-SNRs this far outside the trained range (float32 rounding of its ends) are read at the end
    LAM_TOL = 1e-4

    def check_range(self, lam: torch.Tensor) -> None:
        """Raise :class:`LamRangeError` when a log-SNR lies outside the trained range ``[lam_T-1, lam_0]``:
        the network never saw those noise levels, and reading it at the nearest end would pair its
        answer with another level's alpha and sigma."""
        lo, hi = self.schedule.lam_min, self.schedule.lam_max
        lam = torch.as_tensor(lam)
        if lam.device.type != "cpu":
            # reading the answer would make every call wait for the accelerator; there the range is
            # checked once, where the values come from (lam_min, lam_max, lam_star against this
            # schedule, in the training command and the Distiller)
            return
        bad = ~((lam >= lo - self.LAM_TOL) & (lam <= hi + self.LAM_TOL))
        if bool(bad.any()):
            v = float(lam[bad].flatten()[0]) if lam.ndim else float(lam)
            raise LamRangeError(f"log-SNR {v:.4g} is outside the range this teacher was trained on "
                                f"[{lo:.4g}, {hi:.4g}] (timesteps {self.T - 1}..0); keep lam_min, lam_max and "
                                "lam_star inside it")

    def t_of_lam(self, lam: torch.Tensor) -> torch.Tensor:
        """The fractional timestep whose log-SNR is ``lam`` (linear interpolation in the table of
        ``lam_t``); a ``lam`` outside the trained range raises :class:`LamRangeError`."""
        self.check_range(lam)
        table = self.lam_table.to(lam.device)
        lam = lam.float().clamp(table[0], table[-1])             # only float32 rounding of the ends moves
        i = torch.searchsorted(table, lam).clamp(1, len(table) - 1)
        lo, hi = table[i - 1], table[i]
        j = (i - 1) + (lam - lo) / (hi - lo)                           # index in the increasing table
        return (self.T - 1) - j                                        # t = T - 1 - j

    def call_net(self, x_t, t, cond):
        return self.net(x_t, t, cond)

    def eps(self, x_t, lam, cond=None):
        lam = _lam_batch(lam, x_t)
        # the network's body runs in the run's precision; what follows is float32 arithmetic
        out = self.call_net(x_t, self.t_of_lam(lam), cond).to(_out_dtype(x_t))
        if self.eps_channels:
            out = out[:, : self.eps_channels]
        if self.predicts == "v":
            # v = alpha eps - sigma x0 and x_t = alpha x0 + sigma eps  =>  eps = sigma x_t + alpha v
            alpha, sigma = self.schedule.alpha_sigma(lam)
            out = bcast(sigma, out) * x_t.to(out.dtype) + bcast(alpha, out) * out
        return out

    def denoise(self, x_t, lam, cond=None):
        # D = (x_t - sigma eps) / alpha, in float32: at low lam, sigma / alpha amplifies eps's error
        lam = _lam_batch(lam, x_t)
        eps = self.eps(x_t, lam, cond)
        alpha, sigma = self.schedule.alpha_sigma(lam)
        return (x_t.to(eps.dtype) - bcast(sigma, eps) * eps) / bcast(alpha, eps)

    def score(self, x_t, lam, cond=None):
        # s = -eps / sigma
        eps = self.eps(x_t, lam, cond)
        _, sigma = self.schedule.alpha_sigma(_lam_batch(lam, x_t))
        return -eps / bcast(sigma, eps)


class DiffusersClassUNet(nn.Module):
    """``(x, t, y) -> eps`` for a class-conditional diffusers ``UNet2DModel`` (the ADM layout)."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, x, t, y=None):
        if y is None and self.unet.config.num_class_embeds:
            y = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        return self.unet(x, t, class_labels=y).sample


def adm_unet(size: str = "tiny", resolution: int | None = None, num_classes: int = 10, seed: int | None = 0):
    """A class-conditional ``UNet2DModel`` with random weights, as ``(x, t, y) -> eps`` with learned-variance
    channels like ADM's: ``"adm128"`` follows guided-diffusion's 128x128 model (256 channels x (1, 1, 2, 3, 4),
    two blocks, attention at 32, 16, 8), ``"tiny"`` is for tests."""
    from diffusers import UNet2DModel

    if size == "adm128":
        resolution, num_classes = resolution or 128, num_classes if num_classes != 10 else 1000
        kw = dict(block_out_channels=(256, 256, 512, 768, 1024), layers_per_block=2,
                  down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D",
                                    "AttnDownBlock2D"),
                  up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
                  attention_head_dim=64, resnet_time_scale_shift="scale_shift", norm_num_groups=32)
    elif size == "tiny":
        resolution = resolution or 8
        kw = dict(block_out_channels=(16, 32), layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                  up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=8, norm_num_groups=8)
    else:
        raise ValueError(f"unknown ADM network size {size!r}; use 'tiny' or 'adm128'")
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        unet = UNet2DModel(sample_size=resolution, in_channels=3, out_channels=6, num_class_embeds=num_classes, **kw)
    return DiffusersClassUNet(unet)


#: guided-diffusion's flags of its class-conditional 128x128 ImageNet model (``128x128_diffusion.pt``),
#: as its README lists them: the network's settings and the diffusion's (``noise_schedule``,
#: ``diffusion_steps``).
ADM128_FLAGS = dict(image_size=128, num_channels=256, num_res_blocks=2, learn_sigma=True, class_cond=True,
                    attention_resolutions="32,16,8", num_heads=4, num_head_channels=-1, num_heads_upsample=-1,
                    use_scale_shift_norm=True, resblock_updown=True, use_fp16=True, channel_mult="",
                    dropout=0.0, use_checkpoint=False, use_new_attention_order=False,
                    noise_schedule="linear", diffusion_steps=1000)

#: the same for its class-conditional 64x64 model (``64x64_diffusion.pt``), trained with the cosine schedule.
ADM64_FLAGS = dict(image_size=64, num_channels=192, num_res_blocks=3, learn_sigma=True, class_cond=True,
                   attention_resolutions="32,16,8", num_heads=4, num_head_channels=64, num_heads_upsample=-1,
                   use_scale_shift_norm=True, resblock_updown=True, use_fp16=True, channel_mult="",
                   dropout=0.1, use_checkpoint=False, use_new_attention_order=True,
                   noise_schedule="cosine", diffusion_steps=1000)

# guided-diffusion's diffusion settings: those that change what the network predicts must be the defaults;
# the others (losses, respacing for sampling) do not matter to a trained network read as a teacher
_ADM_DIFFUSION_KEYS = ("noise_schedule", "diffusion_steps", "predict_xstart", "rescale_timesteps", "use_kl",
                       "rescale_learned_sigmas", "sigma_small", "timestep_respacing")


def _split_adm_flags(flags: dict):
    """``(network flags, alphas_cumprod)``: the schedule comes from the flags' ``noise_schedule`` and
    ``diffusion_steps``, which must be given (guided-diffusion's default, linear, is wrong for its 64x64
    model)."""
    flags = dict(flags)
    missing = [k for k in ("noise_schedule", "diffusion_steps", "image_size") if k not in flags]
    if missing:
        raise AdapterError(f"the ADM flags lack {', '.join(missing)}; give them as guided-diffusion's README lists "
                           "them for the checkpoint (e.g. noise_schedule='cosine', diffusion_steps=1000 for "
                           "64x64_diffusion.pt), or start from ADM64_FLAGS / ADM128_FLAGS")
    diff = {k: flags.pop(k) for k in _ADM_DIFFUSION_KEYS if k in flags}
    if diff.get("predict_xstart") or diff.get("rescale_timesteps"):
        raise AdapterError("ADM flags with predict_xstart=True or rescale_timesteps=True are not supported: the "
                           "adapter reads an eps-prediction network at timesteps 0..diffusion_steps-1")
    T = int(diff["diffusion_steps"])
    if T < 2:
        raise AdapterError(f"diffusion_steps must be at least 2, got {T}")
    # the run's precision decides the body's dtype (bf16 autocast or float32): no float16 parameters
    flags["use_fp16"] = False
    return flags, adm_alphas_cumprod(diff["noise_schedule"], T)


def load_adm(path, *, code_root=None, flags: dict | None = None, num_classes: int = 1000) -> DiscreteVPTeacher:
    """OpenAI's class-conditional ADM (guided-diffusion) as a teacher: ``path`` is the ``.pt`` state dict
    (``128x128_diffusion.pt`` for ImageNet 128), ``code_root`` a clone of
    https://github.com/openai/guided-diffusion. The weights load with ``torch.load(weights_only=True)``:
    no code runs. ``flags`` are guided-diffusion's model and diffusion flags (default
    :data:`ADM128_FLAGS`); the schedule is theirs (``noise_schedule``, ``diffusion_steps``). The network
    predicts eps and, with ``learn_sigma``, variances (the first 3 channels are eps). ``use_fp16`` is
    switched off: the body runs in the run's precision."""
    flags = dict(ADM128_FLAGS if flags is None else flags)
    net_flags, alphas_cumprod = _split_adm_flags(flags)
    root = code_root or os.environ.get("EMD_GUIDED_DIFFUSION_ROOT")
    if root:
        if not (Path(root) / "guided_diffusion").is_dir():
            raise AdapterError(f"{root} is not a clone of openai/guided-diffusion (no guided_diffusion/ in it)")
        if str(root) not in sys.path:
            sys.path.insert(0, str(root))
    try:
        from guided_diffusion.script_util import create_model
    except ImportError:
        raise AdapterError("the ADM teacher needs OpenAI's guided_diffusion package: run `git clone "
                           "https://github.com/openai/guided-diffusion` and pass its path as code_root "
                           "(config: teacher.code_root=PATH)") from None
    if not Path(path).exists():
        raise AdapterError(f"ADM checkpoint {path} does not exist; download 128x128_diffusion.pt from "
                           "https://github.com/openai/guided-diffusion (its README links the weights)")
    net = create_model(**net_flags)
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    net.eval().requires_grad_(False)
    size = net_flags["image_size"]
    return DiscreteVPTeacher(net, alphas_cumprod, (3, size, size), num_classes=num_classes,
                             eps_channels=3 if net_flags.get("learn_sigma") else None)
