"""What every teacher adapter shares: errors, float32 around the body, trainable copies of a teacher."""
from __future__ import annotations


import torch
from torch import nn

from ..teachers import Teacher


class AdapterError(RuntimeError):
    """A teacher cannot be loaded; the message says what is missing and what to do."""


class LamRangeError(ValueError):
    """A log-SNR outside the range a discrete-time teacher was trained on."""


def _lam_batch(lam, x):
    return torch.as_tensor(lam, dtype=torch.float32, device=x.device).expand(x.shape[0])



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


def perturb_weights(module: nn.Module, scale: float = 0.05, seed: int = 0) -> nn.Module:
    """Add ``scale`` N(0, 1) noise to every weight and return ``module`` frozen in eval mode. diffusers
    and EDM start some output layers at zero, which would hide rounding in precision measurements;
    the tests and chapter 8 measure bf16 against fp32 on random weights everywhere."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return module.eval().requires_grad_(False)



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
