"""Evaluation at scale, for users who have the data and the weights.

* ImageNet (class-conditional): FID on 50,000 samples against reference statistics (EDM's
  ``imagenet-64x64.npz`` holds ``mu`` and ``sigma`` of Inception pool features), Inception
  Score, and precision/recall (Kynkäänniemi et al. 2019, k = 3) against real features.
* Text to image: zero-shot COCO-30k FID (30,000 captions of the 2014 validation set,
  generated at 512 px and resized to 256, features of clean-fid's Inception network against
  reference statistics of the matching real images; the resize to 299 px is torch's bicubic on
  floats, not clean-fid's PIL resize of uint8 images, so published clean-fid numbers compare only
  approximately) and CLIP score (``100 max(cos(image, text), 0)`` with a CLIP
  model from transformers).

The Inception network comes from ``torch-fidelity`` (or ``clean-fid`` for COCO's features);
neither is a dependency of this project (they pull torchvision, whose wheels pin another
torch build): install one to evaluate for real. Every function also takes an ``extractor`` you
supply (returning features, or ``(features, logits)`` for the Inception Score), which is how the
tests run on tiny stand-ins without a download.

    python -m emd_lib evaluate --run runs/imagenet64 --task imagenet --ref imagenet-64x64.npz \\
        [--real-features imagenet64-train-feats.npz] [--n 50000]
    python -m emd_lib evaluate --run runs/sd15 --task coco --captions coco30k.txt \\
        --ref coco30k-clean-stats.npz [--clip openai/clip-vit-large-patch14]
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from ..images.metrics import frechet_distance, gaussian_stats, inception_extractor
from ..metrics import equal_random_subsets, knn_precision_recall

__all__ = ["inception_score", "load_reference_stats", "fid_from_features", "clip_score", "inception_extractor",
           "imagenet_eval", "coco_eval", "check_inputs", "load_clip", "InputError"]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def inception_score(logits: torch.Tensor, splits: int = 10) -> tuple[float, float]:
    """``exp(E_x KL(p(y|x) || p(y)))`` over ``splits`` equal parts; returns (mean, std)."""
    logp = torch.log_softmax(torch.as_tensor(logits, dtype=torch.float64), dim=1)
    scores = []
    for part in logp.chunk(splits):
        p_y = torch.logsumexp(part, 0) - math.log(len(part))            # log of the marginal p(y)
        kl = (part.exp() * (part - p_y)).sum(1).mean()
        scores.append(float(kl.exp()))
    s = np.array(scores)
    return float(s.mean()), float(s.std())


def load_reference_stats(path) -> tuple[np.ndarray, np.ndarray]:
    """``(mu, sigma)`` from an ``.npz`` with keys ``mu`` and ``sigma`` (EDM's and clean-fid's format)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"reference statistics {p} not found; for ImageNet 64 EDM publishes "
                                "https://nvlabs-fi-cdn.nvidia.com/edm/fid-refs/imagenet-64x64.npz")
    with np.load(p) as f:
        if "mu" not in f or "sigma" not in f:
            raise ValueError(f"{p} must hold arrays 'mu' and 'sigma', it holds {sorted(f.keys())}")
        return f["mu"], f["sigma"]


def fid_from_features(feats, mu_ref, sigma_ref) -> float:
    """FID of features ``(n, d)`` against reference statistics (the Fréchet distance of two Gaussians)."""
    mu, sigma = gaussian_stats(torch.as_tensor(np.asarray(feats)))
    return frechet_distance(mu, sigma, mu_ref, sigma_ref)


# ---- CLIP score -----------------------------------------------------------------------------------

def _clip_pixels(images: torch.Tensor, size: int) -> torch.Tensor:
    x = images.float().clamp(0, 1)      # antialiased when shrinking, as CLIP's own image processor resizes
    x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=x.shape[-1] > size)
    mean = torch.tensor(CLIP_MEAN, device=x.device)[None, :, None, None]
    std = torch.tensor(CLIP_STD, device=x.device)[None, :, None, None]
    return (x.clamp(0, 1) - mean) / std


@torch.no_grad()
def clip_score(images: torch.Tensor, texts: list[str], model, tokenizer, batch: int = 64) -> float:
    """Mean ``100 max(cos(E_img(x), E_txt(c)), 0)`` over image-caption pairs; images in ``[0, 1]``,
    ``(n, 3, H, W)``. ``model`` is a transformers ``CLIPModel`` (e.g. openai/clip-vit-large-patch14),
    ``tokenizer`` its tokenizer."""
    if len(images) != len(texts):
        raise ValueError(f"{len(images)} images but {len(texts)} captions")
    dev = next(model.parameters()).device
    size = model.config.vision_config.image_size
    scores = []
    for i in range(0, len(images), batch):
        px = _clip_pixels(images[i:i + batch].to(dev), size)
        tok = tokenizer(list(texts[i:i + batch]), padding=True, truncation=True,
                        max_length=tokenizer.model_max_length, return_tensors="pt").to(dev)
        fi = _features(model.get_image_features(pixel_values=px))
        ft = _features(model.get_text_features(**tok))
        cos = F.cosine_similarity(fi.float(), ft.float(), dim=-1)
        scores.append(100 * cos.clamp_min(0))
    return float(torch.cat(scores).mean())


def _features(out):
    """transformers returns a tensor (v4) or an output object holding the projected embeddings (v5)."""
    if torch.is_tensor(out):
        return out
    for name in ("pooler_output", "image_embeds", "text_embeds"):
        v = getattr(out, name, None)
        if v is not None:
            return v
    return out[0]


@torch.no_grad()
def imagenet_eval(sample, n: int = 50_000, batch: int = 250, ref=None, extractor=None, num_classes: int = 1000,
                  real_features=None, k: int = 3, progress: bool = True, device="cpu") -> dict:
    """FID, Inception Score and (with ``real_features``) precision/recall of a class-conditional sampler.

    ``sample(labels) -> images in [0, 1]`` generates one image per label; labels cycle through the
    classes so every class gets ``n / num_classes`` samples. ``ref``: reference statistics
    (``.npz`` path or ``(mu, sigma)``); ``extractor(images) -> (features, logits)`` (or bare features: no Inception Score;
    by default torch-fidelity's Inception network on ``device``).
    """
    extractor = extractor or inception_extractor(device, logits=True)
    feats, logits = [], []
    it = range(0, n, batch)
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(it, desc="samples", total=math.ceil(n / batch))
    for i in it:
        labels = torch.arange(i, min(i + batch, n)) % num_classes
        out_f = extractor(sample(labels))
        f, lg = out_f if isinstance(out_f, tuple) else (out_f, None)    # (features, logits) or features
        feats.append(torch.as_tensor(f))
        if lg is not None:
            logits.append(torch.as_tensor(lg))
    feats = torch.cat(feats)
    out = {"n": n}
    if ref is not None:
        mu, sigma = load_reference_stats(ref) if isinstance(ref, (str, Path)) else ref
        out["fid"] = fid_from_features(feats, mu, sigma)
    if logits:
        out["inception_score"], out["inception_score_std"] = inception_score(torch.cat(logits))
    if real_features is not None:
        rf = np.load(real_features)["features"] if isinstance(real_features, (str, Path)) else real_features
        rf = torch.as_tensor(np.asarray(rf))
        out["precision"], out["recall"] = knn_precision_recall(*equal_random_subsets(rf, feats), k=k)
    return out


@torch.no_grad()
def coco_eval(sample, captions: list[str], ref=None, extractor=None, clip=None, batch: int = 50,
              size: int = 256, progress: bool = True, device="cpu") -> dict:
    """Zero-shot text-to-image evaluation: FID against reference statistics of the real images
    (features by ``extractor``, by default clean-fid's on ``device``) and CLIP score with
    ``clip = (model, tokenizer)``.

    ``sample(captions) -> images in [0, 1]`` (SD decodes 512 px); images are resized to ``size``
    (256 for COCO-30k) before the feature network. The CLIP score is taken on the images as
    generated, before that resize."""
    if extractor is None:
        extractor = inception_extractor(device, backend="clean-fid")
    feats, clip_scores = [], []
    it = range(0, len(captions), batch)
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(it, desc="captions", total=math.ceil(len(captions) / batch))
    for i in it:
        caps = captions[i:i + batch]
        img = sample(caps).float()
        if clip is not None:
            clip_scores.append(clip_score(img, caps, *clip) * len(caps))
        if img.shape[-1] != size:
            img = F.interpolate(img, size=(size, size), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        f = extractor(img)
        feats.append(torch.as_tensor(f[0] if isinstance(f, tuple) else f))
    out = {"n": len(captions)}
    if ref is not None:
        mu, sigma = load_reference_stats(ref) if isinstance(ref, (str, Path)) else ref
        out["fid"] = fid_from_features(torch.cat(feats), mu, sigma)
    if clip is not None:
        out["clip_score"] = sum(clip_scores) / len(captions)
    return out


# ---- command line: a trained run's EMA generator -----------------------------------------------------

def _load_run(run, device=None):
    from ..runs.checkpoint import load_checkpoint
    from .config import TrainConfig, _build
    from .train import Trainer

    cards = sorted((Path(run) / "checkpoints").glob("step_*.json"))
    if not cards:
        raise FileNotFoundError(f"no checkpoint in {run}/checkpoints; train first (python -m emd_lib train)")
    tensors, card = load_checkpoint(cards[-1].with_suffix(""))
    cfg_d = card["config"]
    cfg_d.update(resume=False, progress=False, tensorboard=False, out=str(Path(run) / "eval"))
    tr = Trainer(_build(TrainConfig, cfg_d), device=device, quiet=True)
    tr.load(tensors, card)
    return tr


class InputError(ValueError):
    """A command-line input that cannot work; the message names the option and the fix."""


def _read_npz(path, option: str, keys: tuple[str, ...]):
    """The arrays ``keys`` of the ``.npz`` file given to ``option``, or :class:`InputError` in one line."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{option} {p}: no such file")
    try:
        with np.load(p, allow_pickle=False) as f:
            if not hasattr(f, "files"):
                raise InputError(f"{option} {p} is a single .npy array, not an .npz holding {', '.join(keys)}")
            missing = [k for k in keys if k not in f.files]
            if missing:
                raise InputError(f"{option} {p} lacks {', '.join(repr(k) for k in missing)} (it holds "
                                 f"{', '.join(f.files) or 'nothing'}); give an .npz with {', '.join(keys)}")
            return {k: f[k] for k in keys}
    except InputError:
        raise
    except Exception as e:                                   # not a zip, pickled objects, truncated file
        raise InputError(f"{option} {p} is not a readable .npz file ({type(e).__name__}: "
                         f"{(str(e).splitlines() or [''])[0]})") from None


def check_inputs(args) -> dict:
    """Check every file the command was given, before any network loads: the run's checkpoint, ``--ref``
    (``mu`` (d,) and ``sigma`` (d, d), finite), ``--real-features`` (``features`` (n, d)), ``--captions``
    (a non-empty UTF-8 text file); returns what they hold. Each problem is one :class:`InputError` line."""
    if args.n < 1 or args.batch < 1:
        raise InputError(f"--n and --batch must be at least 1, got {args.n} and {args.batch}")
    if not sorted((Path(args.run) / "checkpoints").glob("step_*.json")):
        raise InputError(f"--run {args.run}: no checkpoint in {Path(args.run) / 'checkpoints'}; give the OUT folder "
                         "of a training run (python -m emd_lib train ... out=OUT)")
    got = {}
    if args.ref:
        ref = _read_npz(args.ref, "--ref", ("mu", "sigma"))
        mu, sigma = ref["mu"], ref["sigma"]
        if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
            raise InputError(f"--ref {args.ref}: mu must be (d,) and sigma (d, d), got {mu.shape} and {sigma.shape}")
        if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
            raise InputError(f"--ref {args.ref}: mu or sigma holds NaN or infinite values")
        got["ref"] = (mu, sigma)
    elif args.task == "coco":
        raise InputError("--ref is required for --task coco: the reference statistics (mu, sigma) of the real "
                         "images' clean-fid features")
    if args.real_features:
        if args.task != "imagenet":
            raise InputError("--real-features is for --task imagenet (precision and recall); leave it out for coco")
        rf = _read_npz(args.real_features, "--real-features", ("features",))["features"]
        if rf.ndim != 2 or len(rf) < 2:
            raise InputError(f"--real-features {args.real_features}: 'features' must be (n, d) with n >= 2, got "
                             f"{rf.shape}")
        if "ref" in got and rf.shape[1] != len(got["ref"][0]):
            raise InputError(f"--real-features has {rf.shape[1]} features per image but --ref has {len(got['ref'][0])}; "
                             "both must come from the same Inception layer (2048 pool features)")
        got["real_features"] = rf
    if args.task == "coco":
        if not args.captions:
            raise InputError("--captions is required for --task coco: a text file, one caption a line")
        cp = Path(args.captions)
        if not cp.is_file():
            raise InputError(f"--captions {cp}: no such file")
        try:
            caps = [ln.strip() for ln in cp.read_text(encoding="utf-8").splitlines() if ln.strip()]
        except UnicodeDecodeError:
            raise InputError(f"--captions {cp} is not UTF-8 text; give a text file, one caption a line") from None
        if not caps:
            raise InputError(f"--captions {cp} holds no caption")
        got["captions"] = caps
    elif args.captions:
        raise InputError("--captions is for --task coco; leave it out for imagenet")
    return got


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers a TCP connection within ``timeout`` seconds (offline: no, at
    once, instead of the hub client's retries); ``HF_HUB_OFFLINE=1`` means no."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout).close()
        return True
    except OSError:
        return False


def load_clip(name, device="cpu"):
    """``(model, tokenizer)`` of a transformers CLIP from a folder or a hub id: the local cache first, the hub
    only when the cache lacks it; :class:`InputError` in one line naming ``--clip`` when neither works."""
    try:
        from transformers import CLIPModel, CLIPTokenizer
    except ImportError:
        raise InputError("the CLIP score needs transformers: `pip install transformers`") from None
    from .base import _quiet

    local = Path(name).expanduser()
    if str(name).startswith(("/", ".", "~")) and not local.is_dir():
        raise InputError(f"--clip {name}: no such folder; give a CLIP model folder (transformers layout) or a hub id")
    src = str(local) if local.is_dir() else name
    last = None
    for only_local in (True, False):
        if not only_local and not _hub_reachable():
            last = RuntimeError("not in the local cache, and the Hugging Face hub cannot be reached")
            break
        try:
            with _quiet():
                model = CLIPModel.from_pretrained(src, local_files_only=only_local)
                tok = CLIPTokenizer.from_pretrained(src, local_files_only=only_local)
            return model.to(device).eval(), tok
        except Exception as e:                                # missing files, no network, a bad folder
            last = e
            if local.is_dir() or os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
                break
    first = (str(last).strip().splitlines() or [type(last).__name__])[0]
    raise InputError(f"cannot load the CLIP model {name!r} ({first[:200]}); pass --clip FOLDER with a downloaded "
                     "CLIP model (e.g. `huggingface-cli download openai/clip-vit-large-patch14 --local-dir "
                     "clip`), or run once with network access")


def _extractor(device, logits=False, backend=None):
    """The Inception feature network, or :class:`InputError` in one line naming the package to install."""
    try:
        return inception_extractor(device, logits=logits, backend=backend)
    except ImportError as e:
        raise InputError(str(e)) from None
    except Exception as e:                                    # e.g. its weights cannot be downloaded offline
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise InputError(f"cannot load the Inception network ({type(e).__name__}: {first[:200]}); "
                         f"{backend or 'torch-fidelity'} downloads its weights on first use: run once with network "
                         "access") from None
