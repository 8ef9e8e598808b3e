"""Teachers at scale, behind the one teacher interface ``denoise(x_t, lam, cond)``.

Every adapter turns a published network into a :class:`~emd_lib.teachers.Teacher`, so the
E-step, the losses and the samplers of the 2D chapters run on it unchanged:

* :class:`EDMTeacher`: NVlabs' EDM networks ``D(x; sigma, class_labels)`` (the paper's
  ImageNet 64x64 teacher is ``edm-imagenet-64x64-cond-adm.pkl``). EDM speaks sigma with
  ``alpha = 1``, so ``sigma = exp(-lam / 2)``. :func:`load_edm_pickle` reads NVlabs' pickles;
  unpickling runs code, so it needs ``trust_pickle=True``, and the classes inside need
  ``torch_utils`` and ``dnnlib`` from a clone of https://github.com/NVlabs/edm.
* :class:`DiscreteVPTeacher`: eps- (or v-) prediction networks trained on a discrete VP
  schedule of ``T`` steps, ``net(x_t, t, cond)`` with ``alpha_bar_t`` given. A log-SNR maps to
  a (fractional) timestep by interpolating ``lam_t = log(alpha_bar_t / (1 - alpha_bar_t))``.
  OpenAI's class-conditional ADM 128x128 (guided-diffusion, :func:`load_adm`) is the public
  stand-in for the paper's ImageNet-128 teacher, VDM++, whose weights are not public.
* :class:`StableDiffusionTeacher`: Stable Diffusion v1.5 through diffusers (eps-prediction
  in the VAE's 4-channel latent space, CLIP text conditioning). Classifier-free guidance is a
  setting of the *teacher*; the student score and the generator read the text without it.
  :func:`load_sd` reads a local folder or, for users with the network, a hub id.

The random-weight builders (:func:`edm_unet`, :func:`adm_unet`, :func:`tiny_sd_folder`) give
the same architectures with random weights: tiny ones for the tests and the book, full-size
ones for the benchmark.

Precision: a network's body runs in the run's precision (bf16 under autocast, float32
otherwise; float16 never, so the ``use_fp16`` flags of released checkpoints are not used, and
they are switched off in the trainable copies). Everything around the body is float32: EDM's
preconditioning, eps to denoiser and score (where ``sigma / alpha`` amplifies any rounding at
low log-SNR), v to eps, and the classifier-free guidance combination. Every adapter returns
float32 (float64 for float64 input). A discrete-time teacher refuses a log-SNR outside the
range it was trained on (:class:`LamRangeError`).
"""
from __future__ import annotations

import math
import os
import pickle
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

from ..runs.checkpoint import load_pickle
from ..schedules import EDM, Schedule, bcast
from ..teachers import Teacher

__all__ = ["AdapterError", "perturb_weights", "LamRangeError", "EDMTeacher", "EDMNet", "EDMPrecond", "load_edm_pickle",
           "DiscreteVPTeacher", "load_adm", "ADM128_FLAGS", "ADM64_FLAGS", "StableDiffusionTeacher", "load_sd",
           "linear_alphas_cumprod", "cosine_alphas_cumprod", "adm_alphas_cumprod", "edm_unet", "adm_unet",
           "sd_unet_config", "tiny_sd_folder", "random_sd", "network_copy"]


class AdapterError(RuntimeError):
    """A teacher cannot be loaded; the message says what is missing and what to do."""


class LamRangeError(ValueError):
    """A log-SNR outside the range a discrete-time teacher was trained on."""


def _lam_batch(lam, x):
    return torch.as_tensor(lam, dtype=torch.float32, device=x.device).expand(x.shape[0])


# ============================================================================================
# EDM (NVlabs): D(x; sigma, class_labels), alpha = 1, sigma = exp(-lam / 2)
# ============================================================================================

def _out_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype every adapter returns: float32, or wider when the input is (float64 in the tests)."""
    return torch.promote_types(x.dtype, torch.float32)


def _is_edm_precond(net) -> bool:
    """NVlabs' ``EDMPrecond`` (and :class:`EDMPrecond` here): EDM's preconditioning around ``net.model``."""
    return (type(net).__name__ == "EDMPrecond" and isinstance(getattr(net, "model", None), nn.Module)
            and hasattr(net, "sigma_data"))


def _fp32_bodies(net: nn.Module) -> nn.Module:
    """Switch off the half-precision flags of a network (and its submodules): NVlabs' ``use_fp16``,
    guided-diffusion's ``use_fp16`` / ``dtype`` with its parameters converted back to float32. Its body
    then runs in the run's precision: float32, or bf16 under autocast."""
    for m in net.modules():
        if getattr(m, "use_fp16", False):
            m.use_fp16 = False
        if getattr(m, "dtype", None) == torch.float16 and hasattr(m, "convert_to_fp32"):
            m.convert_to_fp32()                                 # guided-diffusion's UNetModel
            m.dtype = torch.float32
    if any(p.dtype in (torch.float16, torch.bfloat16) for p in net.parameters()):
        net.float()                                             # e.g. a diffusers model loaded in half precision
    return net


def edm_coefficients(sigma: torch.Tensor, sigma_data: float):
    """EDM's preconditioning at noise levels ``sigma`` ``(B,)``: ``(c_skip, c_out, c_in, c_noise)``, the
    first three shaped ``(B, 1, 1, 1)`` for images, ``c_noise`` ``(B,)``, in ``sigma``'s dtype."""
    sigma = sigma.reshape(-1, 1, 1, 1)
    sd = sigma_data
    c_skip = sd**2 / (sigma**2 + sd**2)
    c_out = sigma * sd / (sigma**2 + sd**2).sqrt()
    c_in = 1 / (sigma**2 + sd**2).sqrt()
    return c_skip, c_out, c_in, sigma.log().flatten() / 4


def _edm_labels(class_labels, label_dim: int, x):
    """EDM's label rows ``(B, label_dim)`` in float32; no class is the zero vector (NVlabs' convention)."""
    if not label_dim:
        return None
    if class_labels is None:
        return torch.zeros(x.shape[0], label_dim, device=x.device)
    return class_labels.to(torch.float32).reshape(-1, label_dim)


class EDMNet(nn.Module):
    """An EDM network with its preconditioning computed here, in float32, around its inner model:

        D(x; sigma) = c_skip x + c_out F(c_in x; c_noise, class),
        c_skip = s_d^2 / (sigma^2 + s_d^2),  c_out = sigma s_d / sqrt(sigma^2 + s_d^2),
        c_in = 1 / sqrt(sigma^2 + s_d^2),    c_noise = log(sigma) / 4.

    NVlabs' ``EDMPrecond.forward`` does the same but asserts that its inner model returns the dtype it
    chose (float16 when the pickle says ``use_fp16`` and the input is on CUDA, else float32), which bf16
    autocast breaks. Here the inner model gets float32 input and runs in the run's precision (bf16
    under autocast, float32 otherwise; ``use_fp16`` is not used: float16 without a loss scaler is not
    offered), and its output is cast to float32 before the skip connection. A missing class is
    the zero label vector, as in NVlabs' code. The call signature is ``EDMPrecond``'s, and going
    through ``forward`` keeps DistributedDataParallel's hooks in place.
    """

    def __init__(self, precond: nn.Module):
        super().__init__()
        self.precond = precond
        self.img_resolution, self.img_channels = int(precond.img_resolution), int(precond.img_channels)
        self.label_dim = int(getattr(precond, "label_dim", 0) or 0)
        self.sigma_min = float(getattr(precond, "sigma_min", 0.0))
        self.sigma_max = float(getattr(precond, "sigma_max", float("inf")))
        self.sigma_data = float(precond.sigma_data)

    def forward(self, x, sigma, class_labels=None):  # (B, C, H, W), (B,), (B, label_dim) -> (B, C, H, W)
        x = x.to(_out_dtype(x))
        c_skip, c_out, c_in, c_noise = edm_coefficients(sigma.to(x.dtype), self.sigma_data)
        labels = _edm_labels(class_labels, self.label_dim, x)
        F = self.precond.model((c_in * x).to(torch.float32), c_noise.to(torch.float32), class_labels=labels)
        F = getattr(F, "sample", F)                             # a diffusers UNet returns an output object
        return c_skip * x + c_out * F.to(x.dtype)


class EDMTeacher(Teacher):
    """An EDM network ``net(x, sigma, class_labels)`` as a teacher.

    ``cond`` is ``None`` (the zero label vector, as in NVlabs' code), integer class labels ``(B,)``
    (turned into the one-hot vectors EDM expects) or label rows ``(B, label_dim)``. An ``EDMPrecond``
    (NVlabs' or :class:`EDMPrecond`) is wrapped in :class:`EDMNet`, so its preconditioning runs in
    float32 and its body in the run's precision; any other network is called in float32 with
    autocast off. The denoiser is returned in float32.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = EDMNet(net) if _is_edm_precond(net) else net
        self.label_dim = int(getattr(net, "label_dim", 0) or 0)
        smin, smax = float(getattr(net, "sigma_min", 0.002)), float(getattr(net, "sigma_max", 80.0))
        smin = max(smin, 0.002) if math.isfinite(smin) and smin > 0 else 0.002
        smax = min(smax, 80.0) if math.isfinite(smax) else 80.0
        self.schedule = Schedule("edm", -2 * math.log(smax), -2 * math.log(smin)) if (smin, smax) != (0.002, 80.0) \
            else EDM
        self.shape = (int(net.img_channels), int(net.img_resolution), int(net.img_resolution))

    @property
    def dim(self) -> int:
        return math.prod(self.shape)

    @property
    def num_classes(self) -> int:
        return self.label_dim

    def replace_net(self, net):
        return EDMTeacher(net)

    def class_labels(self, cond, x):
        if self.label_dim == 0:
            return None
        if cond is None:                                        # no class: the zero label vector
            return torch.zeros(x.shape[0], self.label_dim, device=x.device)
        if cond.ndim == 1:                                      # integer labels -> one-hot (B, label_dim)
            return nn.functional.one_hot(cond.long(), self.label_dim).to(torch.float32)
        return cond

    def denoise(self, x_t, lam, cond=None):
        # EDM: alpha = 1, sigma = exp(-lam / 2); the network is the denoiser D(x; sigma)
        dt = _out_dtype(x_t)
        sigma = torch.exp(-0.5 * _lam_batch(lam, x_t))
        if isinstance(self.net, EDMNet) or isinstance(_unwrap_ddp(self.net), EDMNet):
            return self.net(x_t, sigma, self.class_labels(cond, x_t)).to(dt)
        with torch.autocast(x_t.device.type, enabled=False):    # a network of unknown dtype rules: float32
            return self.net(x_t.to(dt), sigma, self.class_labels(cond, x_t)).to(dt)


def _unwrap_ddp(m):
    return m.module if isinstance(m, nn.parallel.DistributedDataParallel) else m


class _LabelVectorEmbedding(nn.Module):
    """A class embedding that reads label *vectors*: ``labels @ weight`` (one-hot rows pick a row of
    ``weight``, the zero vector gives zero, as EDM's bias-free label map does); integer labels still work."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone())

    def forward(self, labels):
        if labels.dtype in (torch.int32, torch.int64):
            return nn.functional.embedding(labels, self.weight)
        return labels.to(self.weight.dtype) @ self.weight


class EDMPrecond(nn.Module):
    """EDM's preconditioning (Karras et al. 2022) around a diffusers ``UNet2DModel``:

        D(x; sigma) = c_skip x + c_out F(c_in x; c_noise, class),
        c_skip = s_d^2 / (sigma^2 + s_d^2),  c_out = sigma s_d / sqrt(sigma^2 + s_d^2),
        c_in = 1 / sqrt(sigma^2 + s_d^2),    c_noise = log(sigma) / 4.

    It has the call signature and attributes of NVlabs' ``EDMPrecond`` (the class label a vector of
    length ``label_dim``, the zero vector when there is none), so :class:`EDMTeacher` wraps both alike.
    The tests and the benchmark build it with random weights (:func:`edm_unet`).
    """

    def __init__(self, unet: nn.Module, img_resolution: int, img_channels: int, label_dim: int = 0,
                 sigma_data: float = 0.5):
        super().__init__()
        if label_dim and isinstance(getattr(unet, "class_embedding", None), nn.Embedding):
            unet.class_embedding = _LabelVectorEmbedding(unet.class_embedding.weight)
        self.model = unet
        self.img_resolution, self.img_channels, self.label_dim = img_resolution, img_channels, label_dim
        self.sigma_data, self.sigma_min, self.sigma_max = sigma_data, 0.002, 80.0

    def forward(self, x, sigma, class_labels=None):
        c_skip, c_out, c_in, c_noise = edm_coefficients(sigma.to(torch.float32), self.sigma_data)
        labels = _edm_labels(class_labels, self.label_dim, x)
        F = self.model((c_in * x).to(x.dtype), c_noise, class_labels=labels).sample
        return c_skip * x + c_out * F.to(torch.float32)


def perturb_weights(module: nn.Module, scale: float = 0.05, seed: int = 0) -> nn.Module:
    """Add ``scale`` N(0, 1) noise to every weight and return ``module`` frozen in eval mode. diffusers
    and EDM start some output layers at zero, which would hide rounding in precision measurements;
    the tests and chapter 8 measure bf16 against fp32 on random weights everywhere."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return module.eval().requires_grad_(False)


def edm_unet(size: str = "tiny", resolution: int | None = None, channels: int = 3, num_classes: int = 10,
             seed: int | None = 0) -> EDMPrecond:
    """An EDM-preconditioned diffusers ``UNet2DModel`` with random weights.

    ``size="adm64"`` follows EDM's ADM ImageNet-64 network (channels 192 x (1, 2, 3, 4), three
    residual blocks per resolution, attention at 32, 16 and 8, 1000 classes; about 270M
    parameters with diffusers' blocks); ``"tiny"`` is a few-thousand-parameter version for tests.
    """
    from diffusers import UNet2DModel

    if size == "adm64":
        resolution, num_classes = resolution or 64, num_classes if num_classes != 10 else 1000
        kw = dict(block_out_channels=(192, 384, 576, 768), layers_per_block=3,
                  down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
                  up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
                  attention_head_dim=64, resnet_time_scale_shift="scale_shift", dropout=0.0,
                  time_embedding_type="positional", norm_num_groups=32)
    elif size == "tiny":
        resolution = resolution or 8
        kw = dict(block_out_channels=(16, 32), layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                  up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=8, norm_num_groups=8,
                  resnet_time_scale_shift="scale_shift")
    else:
        raise ValueError(f"unknown EDM network size {size!r}; use 'tiny' or 'adm64'")
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        unet = UNet2DModel(sample_size=resolution, in_channels=channels, out_channels=channels,
                           num_class_embeds=num_classes or None, **kw)
    return EDMPrecond(unet, resolution, channels, num_classes)


def _edm_root(edm_root):
    root = edm_root or os.environ.get("EMD_EDM_ROOT")
    if root:
        root = Path(root).expanduser()
        if not (root / "torch_utils").is_dir() or not (root / "dnnlib").is_dir():
            raise AdapterError(f"{root} is not a clone of NVlabs/edm (no torch_utils/ and dnnlib/ in it); "
                               "run `git clone https://github.com/NVlabs/edm` and pass its path as edm_root "
                               "(config: teacher.code_root=PATH)")
        if str(root) not in sys.path:
            sys.path.insert(0, str(root))


_EDM_HELP = ("EDM pickles need the modules torch_utils and dnnlib from NVlabs' EDM code. Run "
             "`git clone https://github.com/NVlabs/edm` and pass the clone's path as edm_root "
             "(config: teacher.code_root=PATH, or set EMD_EDM_ROOT=PATH)")


def load_edm_pickle(path, *, trust_pickle: bool = False, edm_root=None, key: str = "ema") -> nn.Module:
    """Read an EDM network from NVlabs' pickle (``{"ema": net, ...}``); returns it frozen, in eval mode.

    Unpickling runs code from the file, so this refuses unless ``trust_pickle=True``: pass it
    only for a file from a source you trust (NVIDIA's published EDM checkpoints, or your own).
    """
    if not trust_pickle:
        raise AdapterError(f"refusing to unpickle {path}: loading a pickle runs code from the file. Pass "
                           "trust_pickle=True (config: teacher.trust_pickle=true) only for a file from a source "
                           "you trust, such as NVIDIA's EDM checkpoints")
    _edm_root(edm_root)
    try:
        import dnnlib  # noqa: F401
        import torch_utils  # noqa: F401
    except ImportError:
        raise AdapterError(_EDM_HELP) from None
    path = str(path)
    try:
        if path.startswith(("http://", "https://")):
            import dnnlib.util
            with dnnlib.util.open_url(path) as f:
                obj = pickle.load(f)
        else:
            if not Path(path).exists():
                raise AdapterError(f"EDM pickle {path} does not exist; download it (for ImageNet 64: "
                                   "https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/edm-imagenet-64x64-cond-adm.pkl) "
                                   "and pass its path")
            obj = load_pickle(path, trust=True)          # the caller said trust_pickle=True above
    except ModuleNotFoundError as e:
        raise AdapterError(f"{_EDM_HELP} (missing module {e.name!r})") from None
    net = obj[key] if isinstance(obj, dict) else obj
    if not isinstance(net, nn.Module):
        raise AdapterError(f"{path} holds a {type(net).__name__} under {key!r}, not a network")
    return net.eval().requires_grad_(False)


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


# ============================================================================================
# Stable Diffusion (diffusers): eps-prediction in latent space, CLIP text, CFG on the teacher
# ============================================================================================

class StableDiffusionTeacher(DiscreteVPTeacher):
    """Stable Diffusion's UNet as a teacher on 4-channel latents; ``cond`` is the CLIP text
    embedding ``(B, L, D)`` from :meth:`encode_prompts`.

    Classifier-free guidance with weight ``guidance_scale`` (1 = none):
    ``eps = eps(x_t, empty) + w (eps(x_t, text) - eps(x_t, empty))``. The text encoder,
    tokenizer and VAE are kept beside the network (``self.parts``), not inside it, so the
    generator and student made from this teacher's UNet do not copy them.
    """

    def __init__(self, net, alphas_cumprod, shape, predicts="eps", guidance_scale: float = 1.0, parts=None,
                 uncond=None, num_classes: int = 0, eps_channels=None):
        super().__init__(net, alphas_cumprod, shape, predicts=predicts)
        self.guidance_scale = float(guidance_scale)
        self.parts = parts or SimpleNamespace(text_encoder=None, tokenizer=None, vae=None, scaling_factor=0.18215)
        self._uncond = uncond

    def _init_args(self):
        a = super()._init_args()
        a.update(guidance_scale=self.guidance_scale, parts=self.parts, uncond=self._uncond)
        return a

    def replace_net(self, net, guidance_scale: float | None = None):
        t = type(self)(net, **self._init_args())
        if guidance_scale is not None:
            t.guidance_scale = float(guidance_scale)
        return t

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str], device=None, chunk: int = 64) -> torch.Tensor:
        """CLIP text embeddings ``(B, L, D)`` of a list of prompts, in the encoder's own precision
        (autocast off, so the empty prompt and the prompts agree whether or not a bf16 step calls
        this) and ``chunk`` prompts at a time (the encoder's activations stay small)."""
        tok, enc = self.parts.tokenizer, self.parts.text_encoder
        if tok is None or enc is None:
            raise AdapterError("this Stable Diffusion teacher was built without its text encoder and tokenizer")
        dev = torch.device(device) if device is not None else next(enc.parameters()).device
        ids = tok(list(prompts), padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids.to(dev)
        with torch.autocast(dev.type, enabled=False):
            return torch.cat([enc(part)[0] for part in ids.split(chunk)])

    def uncond(self, like: torch.Tensor) -> torch.Tensor:
        if self._uncond is None:
            self._uncond = self.encode_prompts([""], device=like.device)
        return self._uncond.to(device=like.device, dtype=like.dtype).expand(like.shape[0], -1, -1)

    def call_net(self, x_t, t, cond):
        if cond is None:
            raise AdapterError("Stable Diffusion needs text: pass cond = teacher.encode_prompts(prompts)")
        w = self.guidance_scale
        if w == 1.0:
            return self.net(x_t, t, encoder_hidden_states=cond).sample
        # classifier-free guidance: eps_u + w (eps_c - eps_u), both halves in one batch
        out = self.net(torch.cat([x_t, x_t]), torch.cat([t, t]),
                       encoder_hidden_states=torch.cat([self.uncond(cond), cond])).sample
        e_u, e_c = out.to(_out_dtype(x_t)).chunk(2)               # the combination in float32
        return e_u + w * (e_c - e_u)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents to images in ``[0, 1]`` through the VAE, for viewing and evaluation."""
        vae = self.parts.vae
        if vae is None:
            raise AdapterError("this Stable Diffusion teacher was built without its VAE")
        img = vae.decode(latents.to(next(vae.parameters()).dtype) / self.parts.scaling_factor).sample
        return ((img.float() + 1) / 2).clamp(0, 1)


def load_sd(path_or_id: str = "stable-diffusion-v1-5/stable-diffusion-v1-5", *, guidance_scale: float = 1.75,
            dtype=torch.float32, device=None, local_files_only: bool | None = None) -> StableDiffusionTeacher:
    """Stable Diffusion (v1.5 layout: ``unet/ vae/ text_encoder/ tokenizer/ scheduler/``) from a local
    folder or a hub id. A hub id downloads only when ``local_files_only`` is False (default: False for
    a hub id, True for a folder)."""
    local = Path(path_or_id).expanduser().exists()
    if not local and str(path_or_id).startswith(("/", ".", "~")):
        raise AdapterError(f"cannot load Stable Diffusion from {path_or_id!r}: the folder does not exist; give a "
                           "local folder in the diffusers layout or a hub id such as stable-diffusion-v1-5/stable-diffusion-v1-5")
    if local_files_only is None:
        local_files_only = local
    kw = dict(local_files_only=local_files_only)
    src = str(Path(path_or_id).expanduser()) if local else path_or_id
    with _quiet():
        parts = _load_sd_parts(src, dtype, kw, path_or_id)
    unet, vae, text_encoder, tokenizer, sched = parts
    return _sd_from_parts(unet, vae, text_encoder, tokenizer, sched, guidance_scale, device)


class _quiet:
    """Silence diffusers' and transformers' loading chatter (warnings, progress bars) for a moment."""

    def __enter__(self):
        from diffusers.utils import logging as dl
        from transformers.utils import logging as tl

        self.levels = dl.get_verbosity(), tl.get_verbosity()
        dl.set_verbosity_error(), tl.set_verbosity_error()
        dl.disable_progress_bar(), tl.disable_progress_bar()
        return self

    def __exit__(self, *exc):
        from diffusers.utils import logging as dl
        from transformers.utils import logging as tl

        dl.set_verbosity(self.levels[0]), tl.set_verbosity(self.levels[1])
        dl.enable_progress_bar(), tl.enable_progress_bar()


def _load_sd_parts(src, dtype, kw, path_or_id):
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    try:
        unet = UNet2DConditionModel.from_pretrained(src, subfolder="unet", torch_dtype=dtype, **kw)
        vae = AutoencoderKL.from_pretrained(src, subfolder="vae", torch_dtype=dtype, **kw)
        text_encoder = CLIPTextModel.from_pretrained(src, subfolder="text_encoder", torch_dtype=dtype, **kw)
        tokenizer = CLIPTokenizer.from_pretrained(src, subfolder="tokenizer", **kw)
        sched = DDPMScheduler.from_pretrained(src, subfolder="scheduler", **kw)
    except (OSError, ValueError) as e:
        raise AdapterError(f"cannot load Stable Diffusion from {path_or_id!r} ({str(e).splitlines()[0]}); give a "
                           "local folder in the diffusers layout (unet/, vae/, text_encoder/, tokenizer/, "
                           "scheduler/) or a hub id with the network available") from None
    return unet, vae, text_encoder, tokenizer, sched


def _sd_from_parts(unet, vae, text_encoder, tokenizer, sched, guidance_scale, device):
    for m in (unet, vae, text_encoder):
        if m is None:
            continue
        m.eval().requires_grad_(False)
        if device is not None:
            m.to(device)
    pred = {"epsilon": "eps", "v_prediction": "v"}.get(sched.config.prediction_type)
    if pred is None:
        raise AdapterError(f"unsupported prediction type {sched.config.prediction_type!r}; use an eps- or "
                           "v-prediction model")
    c, s = unet.config.in_channels, unet.config.sample_size
    parts = SimpleNamespace(text_encoder=text_encoder, tokenizer=tokenizer, vae=vae,
                            scaling_factor=float(getattr(vae.config, "scaling_factor", 0.18215)) if vae is not None else 0.18215)
    return StableDiffusionTeacher(unet, sched.alphas_cumprod, (c, s, s), predicts=pred,
                                  guidance_scale=guidance_scale, parts=parts)


def sd_unet_config(size: str = "tiny") -> dict:
    """``UNet2DConditionModel`` settings: ``"sd15"`` is Stable Diffusion v1.5's UNet (about 860M
    parameters), ``"tiny"`` a test-sized one."""
    if size == "sd15":
        return dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                    block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
                    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
    if size == "tiny":
        return dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
                    cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8,
                    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    raise ValueError(f"unknown Stable Diffusion UNet size {size!r}; use 'tiny' or 'sd15'")


def _byte_level_tokenizer_files(folder: Path, max_length: int = 16):
    """A CLIP tokenizer whose vocabulary is the 256 byte symbols (no merges): no download needed."""
    import json

    # GPT-2's byte-to-symbol table (printable bytes map to themselves, the rest above 255)
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    syms = [chr(c) for c in cs]
    vocab = {s: i for i, s in enumerate(syms)}
    vocab.update({s + "</w>": 256 + i for i, s in enumerate(syms)})
    vocab.update({"<|startoftext|>": 512, "<|endoftext|>": 513})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": max_length,
                                                              "tokenizer_class": "CLIPTokenizer"}))
    (folder / "special_tokens_map.json").write_text(json.dumps({"bos_token": "<|startoftext|>",
                                                                "eos_token": "<|endoftext|>",
                                                                "unk_token": "<|endoftext|>",
                                                                "pad_token": "<|endoftext|>"}))


def _random_sd_parts(size: str = "tiny", seed: int = 0):
    """UNet, VAE (tiny only), CLIP text encoder, tokenizer and scheduler with random weights."""
    import tempfile

    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    ucfg = sd_unet_config(size)
    L = 77 if size == "sd15" else 16
    with torch.random.fork_rng(devices=[]), _quiet():
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**ucfg)
        vae = None
        if size == "tiny":
            vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                                down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                                layers_per_block=1, norm_num_groups=8, sample_size=16)
        width = ucfg["cross_attention_dim"]
        heads = 12 if size == "sd15" else 4
        tcfg = CLIPTextConfig(vocab_size=514, hidden_size=width, intermediate_size=4 * width,
                              num_hidden_layers=12 if size == "sd15" else 1, num_attention_heads=heads,
                              max_position_embeddings=L, bos_token_id=512, eos_token_id=513, pad_token_id=513)
        text_encoder = CLIPTextModel(tcfg)
        with tempfile.TemporaryDirectory() as d:
            _byte_level_tokenizer_files(Path(d), L)
            tokenizer = CLIPTokenizer.from_pretrained(d)
    sched = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                          prediction_type="epsilon")
    return unet, vae, text_encoder, tokenizer, sched


def random_sd(size: str = "tiny", guidance_scale: float = 1.75, seed: int = 0, device=None) -> StableDiffusionTeacher:
    """A Stable Diffusion teacher with random weights: ``"tiny"`` for tests (with a tiny VAE), ``"sd15"``
    with SD v1.5's UNet and a ViT-L-sized text encoder (no VAE) for the benchmark. Nothing downloads."""
    unet, vae, text_encoder, tokenizer, sched = _random_sd_parts(size, seed)
    return _sd_from_parts(unet, vae, text_encoder, tokenizer, sched, guidance_scale, device)


def tiny_sd_folder(folder, seed: int = 0) -> Path:
    """Write a Stable Diffusion folder in the diffusers layout (``unet/ vae/ text_encoder/ tokenizer/
    scheduler/``) with tiny random networks and a byte-level tokenizer: everything :func:`load_sd`
    reads, built offline."""
    folder = Path(folder)
    unet, vae, text_encoder, tokenizer, sched = _random_sd_parts("tiny", seed)
    with _quiet():
        unet.save_pretrained(folder / "unet")
        vae.save_pretrained(folder / "vae")
        text_encoder.save_pretrained(folder / "text_encoder")
        tokenizer.save_pretrained(folder / "tokenizer")
        sched.save_pretrained(folder / "scheduler")
    return folder


# ============================================================================================
# The generator and the student score made from the teacher (the paper's initialisation)
# ============================================================================================

def network_copy(teacher: Teacher, trainable: bool = True, **kw) -> Teacher:
    """A copy of a network teacher with its own weights (the student score starts here)."""
    import copy

    if not hasattr(teacher, "replace_net"):                     # e.g. a NetworkTeacher: copy it whole
        return copy.deepcopy(teacher).eval().requires_grad_(trainable)
    # eval mode: no dropout in the copies (our convention; it also keeps resumed runs exact); a trainable
    # copy runs in the run's precision, never float16 (there is no loss scaler): use_fp16 is switched off
    net = copy.deepcopy(teacher.net).eval().requires_grad_(trainable)
    _fp32_bodies(net)
    return teacher.replace_net(net, **kw)
