"""emd_lib: EM Distillation (Xie et al., NeurIPS 2024) in a compact PyTorch library.

The modules follow the book's chapters:

* :mod:`emd_lib.schedules`  noise schedules in log-SNR (VP and EDM), noise-level draws, weightings
* :mod:`emd_lib.teachers`   the teacher interface and the exact Gaussian-mixture teacher
* :mod:`emd_lib.sampling`   probability-flow ODE (Heun) and SDE samplers with NFE counts
* :mod:`emd_lib.nets`       generator and student-score networks for low-dimensional data
* :mod:`emd_lib.em`         exact EM for a linear-Gaussian generator (the E-step's reference)
* :mod:`emd_lib.langevin`   the E-step: Langevin on (eps, z) or (x, z), noise cancellation
* :mod:`emd_lib.distill`    one loop for EMD-K and Diff-Instruct / VSD
* :mod:`emd_lib.metrics`    mode masses, coverage, MMD, k-NN precision and recall
* :mod:`emd_lib.images.data`       5,000 real MNIST digits (sha256-checked cache) and the 8x8 digits
* :mod:`emd_lib.images.unet`       a class-conditional UNet denoiser and the generator read at lam*
* :mod:`emd_lib.images.metrics`  classifier Fréchet distance (not FID), precision/recall, class accuracy
* :mod:`emd_lib.commands.distill_images` / :mod:`emd_lib.commands.sample`  distil and sample the MNIST models
* :mod:`emd_lib.scale.adapters`   teachers at scale: EDM pickles, ADM, Stable Diffusion (diffusers)
* :mod:`emd_lib.scale.train`      the training command for every scale (checkpoints, resume, DDP)
* :mod:`emd_lib.scale.bench`      seconds, memory and TFLOP/s per step; one-step vs many-step sampling
* :mod:`emd_lib.scale.evaluate`   FID, Inception Score, precision/recall, CLIP score at scale
* :mod:`emd_lib.exercises`  checks for the chapters' exercises
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

__version__ = "0.1.0"

#: Root of the repository (the folder holding ``data/`` and ``chapters/``) when the library runs
#: from a clone; for an installed wheel, the folder above the installed package.
ROOT = Path(__file__).resolve().parent.parent
#: Where the shipped MNIST models, digits and results live: ``EMD_DATA`` when set, else the clone's ``data/``.
DATA_DIR = Path(os.environ.get("EMD_DATA", ROOT / "data"))


def data_dir_hint() -> str:
    """What to do when a shipped file is missing from :data:`DATA_DIR` (one line)."""
    return (f"the shipped models and results are in the repository's data/ folder, which {DATA_DIR} is not a "
            "copy of; set EMD_DATA=/path/to/clone/data (the library installed from a wheel does not carry them)")


def is_fast() -> bool:
    """True when ``EMD_FAST=1``: chapters shrink step counts and sample sizes."""
    return os.environ.get("EMD_FAST", "0").strip().lower() not in ("", "0", "false", "no")


def fast_or(full, fast):
    """Return ``fast`` under ``EMD_FAST=1`` and ``full`` otherwise, so readers see both values."""
    return fast if is_fast() else full


def device() -> torch.device:
    """The one place that picks the device: ``EMD_DEVICE`` if set, else CUDA when present, else CPU."""
    name = os.environ.get("EMD_DEVICE")
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def randn(shape, generator: torch.Generator | None = None, device=None, dtype=None) -> torch.Tensor:
    """Standard normal noise of ``shape`` on ``device``, drawn from ``generator`` on the generator's own
    device (a CPU generator can seed a GPU run: the draw is made on the CPU and moved)."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if generator is None or generator.device == dev:
        return torch.randn(shape, generator=generator, device=dev, dtype=dtype)
    return torch.randn(shape, generator=generator, device=generator.device, dtype=dtype).to(dev)


def seed_all(seed: int) -> torch.Generator:
    """Seed torch's global generator (and numpy's) and return a fresh ``torch.Generator``."""
    import numpy as np

    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))
    return torch.Generator().manual_seed(seed)
