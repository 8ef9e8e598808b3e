"""EDM teachers (NVlabs): ``D(x; sigma, class_labels)`` with ``alpha = 1``, ``sigma = exp(-lam / 2)``; NVlabs' pickles, random-weight builders."""
from __future__ import annotations

import math
import os
import pickle
import sys
from pathlib import Path

import torch
from torch import nn

from ..distill import unwrap_parallel
from ..runs.checkpoint import load_pickle
from ..schedules import EDM, Schedule
from ..teachers import Teacher
from .base import AdapterError, _is_edm_precond, _lam_batch, _out_dtype


# ============================================================================================
# EDM (NVlabs): D(x; sigma, class_labels), alpha = 1, sigma = exp(-lam / 2)
# ============================================================================================

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
        if isinstance(unwrap_parallel(self.net), EDMNet):
            return self.net(x_t, sigma, self.class_labels(cond, x_t)).to(dt)
        with torch.autocast(x_t.device.type, enabled=False):    # a network of unknown dtype rules: float32
            return self.net(x_t.to(dt), sigma, self.class_labels(cond, x_t)).to(dt)


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
