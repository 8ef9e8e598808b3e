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

    python -m emd_lib.evaluate --run runs/imagenet64 --task imagenet --ref imagenet-64x64.npz \\
        [--real-features imagenet64-train-feats.npz] [--n 50000]
    python -m emd_lib.evaluate --run runs/sd15 --task coco --captions coco30k.txt \\
        --ref coco30k-clean-stats.npz [--clip openai/clip-vit-large-patch14]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from .image_metrics import frechet_distance, gaussian_stats, inception_extractor
from .metrics import equal_random_subsets, knn_precision_recall

__all__ = ["inception_score", "load_reference_stats", "fid_from_features",
           "clip_score", "inception_extractor", "imagenet_eval", "coco_eval", "main"]

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
    from .checkpoint import load_checkpoint
    from .train import Trainer, TrainConfig, _build

    cards = sorted((Path(run) / "checkpoints").glob("step_*.json"))
    if not cards:
        raise FileNotFoundError(f"no checkpoint in {run}/checkpoints; train first (python -m emd_lib.train)")
    tensors, card = load_checkpoint(cards[-1].with_suffix(""))
    cfg_d = card["config"]
    cfg_d.update(resume=False, progress=False, tensorboard=False, out=str(Path(run) / "eval"))
    tr = Trainer(_build(TrainConfig, cfg_d), device=device, quiet=True)
    tr.load(tensors, card)
    return tr


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m emd_lib.evaluate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="a training run's folder (OUT of python -m emd_lib.train)")
    ap.add_argument("--task", choices=["imagenet", "coco"], required=True)
    ap.add_argument("--ref", help="reference statistics .npz (mu, sigma)")
    ap.add_argument("--real-features", help="imagenet: .npz with 'features' of real images, for precision/recall")
    ap.add_argument("--captions", help="coco: a text file, one caption a line (30,000 for COCO-30k)")
    ap.add_argument("--clip", default="openai/clip-vit-large-patch14", help="coco: CLIP model (folder or hub id)")
    ap.add_argument("--n", type=int, default=50_000, help="imagenet: number of samples")
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument("--json", help="write the metrics to this file")
    args = ap.parse_args(argv)
    try:
        tr = _load_run(args.run)
        if args.task == "imagenet":
            def sample(labels):
                x = tr.sample(len(labels), labels.to(tr.device) if tr.prob.cond == "class" else None)
                return ((x.float() + 1) / 2).clamp(0, 1)                  # model pixels [-1, 1] -> [0, 1]
            res = imagenet_eval(sample, args.n, args.batch, args.ref, num_classes=tr.prob.num_classes or 1000,
                                real_features=args.real_features, device=tr.device)
        else:
            from transformers import CLIPModel, CLIPTokenizer

            if not args.captions:
                raise ValueError("--captions is required for --task coco")
            caps = [ln.strip() for ln in Path(args.captions).read_text().splitlines() if ln.strip()]
            model = CLIPModel.from_pretrained(args.clip).to(tr.device).eval()
            tok = CLIPTokenizer.from_pretrained(args.clip)

            def sample(c):
                return tr.prob.teacher.decode(tr.sample(len(c), tr.prob.teacher.encode_prompts(c, tr.device)))
            res = coco_eval(sample, caps, args.ref, clip=(model, tok), batch=min(args.batch, 50), device=tr.device)
    except (ImportError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(res, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
