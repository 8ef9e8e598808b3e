"""Teachers at scale, behind the one teacher interface ``denoise(x_t, lam, cond)``.

Every adapter turns a published network into a :class:`~emd_lib.teachers.Teacher`, so the
E-step, the losses and the samplers of the 2D chapters run on it unchanged:

One module per teacher: :mod:`~emd_lib.scale.edm`, :mod:`~emd_lib.scale.adm`, :mod:`~emd_lib.scale.sd`,
with what they share in :mod:`~emd_lib.scale.base`; this module gathers them under one name
(``from emd_lib.scale import adapters as A``).

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

from .adm import (ADM64_FLAGS, ADM128_FLAGS, DiffusersClassUNet, DiscreteVPTeacher, adm_alphas_cumprod, adm_unet,  # noqa: F401
                  cosine_alphas_cumprod, linear_alphas_cumprod, load_adm)
from .base import AdapterError, LamRangeError, network_copy, perturb_weights  # noqa: F401
from .edm import EDMNet, EDMPrecond, EDMTeacher, edm_coefficients, edm_unet, load_edm_pickle  # noqa: F401
from .sd import StableDiffusionTeacher, load_sd, random_sd, sd_unet_config, tiny_sd_folder  # noqa: F401

__all__ = ["AdapterError", "perturb_weights", "LamRangeError", "EDMTeacher", "EDMNet", "EDMPrecond", "load_edm_pickle",
           "DiscreteVPTeacher", "load_adm", "ADM128_FLAGS", "ADM64_FLAGS", "StableDiffusionTeacher", "load_sd",
           "linear_alphas_cumprod", "cosine_alphas_cumprod", "adm_alphas_cumprod", "edm_unet", "adm_unet",
           "sd_unet_config", "tiny_sd_folder", "random_sd", "network_copy", "edm_coefficients"]
