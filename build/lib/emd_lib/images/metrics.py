"""Metrics for generated digits that need no download.

The field's FID uses an Inception network trained on ImageNet, whose weights are a download.
This module measures the same kinds of things with a small MNIST classifier trained in this
project (:class:`DigitClassifier`, shipped in ``data/mnist_classifier``):

* :func:`classifier_frechet_distance`: the Fréchet distance between Gaussians fitted to the
  classifier's penultimate features of real and generated digits,
  ``|mu_r - mu_g|^2 + tr(S_r + S_g - 2 (S_r S_g)^{1/2})``. Same formula as FID, different
  features: its values are not FID values and must not be compared with them.
* k-NN precision and recall (Kynkäänniemi et al., 2019) in the same feature space.
* :func:`class_accuracy`: how often the classifier reads a class-conditional sample as the
  class it was asked for; :func:`class_coverage`: how many classes the samples reach.

:func:`inception_fid` computes real FID through ``torch-fidelity`` or ``clean-fid`` when one
of them (and its Inception weights) is installed; neither is a dependency. Pass your own
``extractor`` to use any other feature network.

All functions take pixels in ``[0, 1]``: the classifier's, shape ``(n, 1, 28, 28)``; the Inception
helpers, ``(n, C, H, W)`` with C = 1 or 3.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from .. import DATA_DIR
from ..metrics import equal_random_subsets, knn_precision_recall

__all__ = ["DigitClassifier", "frechet_distance", "gaussian_stats", "classifier_frechet_distance",
           "class_accuracy", "class_coverage", "image_report", "load_classifier", "inception_fid",
           "inception_extractor", "CLASSIFIER_PATH"]

CLASSIFIER_PATH = DATA_DIR / "mnist_classifier"


class DigitClassifier(nn.Module):
    """A small CNN for 28x28 digits: two conv blocks, a ``feat_dim`` feature layer, 10 logits."""

    def __init__(self, width: int = 32, feat_dim: int = 128, n_classes: int = 10):
        super().__init__()
        self.config = dict(width=width, feat_dim=feat_dim, n_classes=n_classes)
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1), nn.ReLU(), nn.Conv2d(w, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(), nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2), nn.Flatten(), nn.Linear(2 * w * 49, feat_dim), nn.ReLU())
        self.head = nn.Linear(feat_dim, n_classes)

    def features(self, x):  # (n, 1, 28, 28) in [0, 1] -> (n, feat_dim)
        return self.body((x - 0.13) / 0.31)

    def forward(self, x):  # -> logits (n, 10)
        return self.head(self.features(x))


def load_classifier(path=None, device="cpu") -> DigitClassifier:
    """The shipped classifier (sha256 checked), in eval mode."""
    from ..runs.checkpoint import load_state_into, read_card

    path = Path(path) if path is not None else CLASSIFIER_PATH
    clf = DigitClassifier(**read_card(path)["arch"])
    load_state_into(clf, path, device=device)
    return clf.to(device).eval().requires_grad_(False)


@torch.no_grad()
def _batched(fn, x, batch: int = 500):
    return torch.cat([fn(x[i:i + batch]) for i in range(0, len(x), batch)])


def gaussian_stats(feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and covariance (float64) of features ``(n, d)``."""
    f = feats.double()
    mu = f.mean(0)
    fc = f - mu
    return mu, fc.T @ fc / (len(f) - 1)


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """``|mu1 - mu2|^2 + tr(C1 + C2 - 2 (C1 C2)^{1/2})`` between two Gaussians.

    ``tr (C1 C2)^{1/2} = sum sqrt(eig(C1^{1/2} C2 C1^{1/2}))``, a symmetric problem, so no
    complex square roots are needed.
    """
    mu1, mu2, cov1, cov2 = (torch.as_tensor(t, dtype=torch.float64) for t in (mu1, mu2, cov1, cov2))
    w, v = torch.linalg.eigh(cov1)
    s1 = (v * w.clamp_min(0).sqrt()) @ v.T                              # C1^{1/2}
    m = s1 @ cov2 @ s1
    tr_sqrt = torch.linalg.eigvalsh((m + m.T) / 2).clamp_min(0).sqrt().sum()
    return float(((mu1 - mu2) ** 2).sum() + torch.trace(cov1) + torch.trace(cov2) - 2 * tr_sqrt)


def classifier_frechet_distance(real: torch.Tensor, fake: torch.Tensor, classifier: DigitClassifier) -> float:
    """Fréchet distance between the classifier's features of ``real`` and ``fake`` digits (not FID)."""
    fr, ff = _batched(classifier.features, real), _batched(classifier.features, fake)
    return frechet_distance(*gaussian_stats(fr), *gaussian_stats(ff))


def class_accuracy(fake: torch.Tensor, labels: torch.Tensor, classifier: DigitClassifier) -> float:
    """Fraction of samples the classifier assigns to the class they were generated for."""
    pred = _batched(classifier, fake).argmax(1)
    return float((pred == labels.to(pred.device)).float().mean())


def class_coverage(fake: torch.Tensor, classifier: DigitClassifier, n_classes: int = 10,
                   cover_frac: float = 0.2) -> tuple[int, list[float]]:
    """``(classes covered, predicted class shares)``: a class is covered when it receives at least
    ``cover_frac`` of an even share ``1 / n_classes`` of the samples."""
    pred = _batched(classifier, fake).argmax(1)
    share = torch.bincount(pred, minlength=n_classes).double() / len(pred)
    return int((share >= cover_frac / n_classes).sum()), share.tolist()


def image_report(fake: torch.Tensor, labels: torch.Tensor | None, real: torch.Tensor,
                 classifier: DigitClassifier, k: int = 5) -> dict:
    """Every metric of the image chapter for ``fake`` digits against ``real`` ones, as floats."""
    fake = fake.float().clamp(0, 1)
    if not torch.isfinite(fake).all():
        raise ValueError("generated images contain NaN or inf")
    fr, ff = _batched(classifier.features, real), _batched(classifier.features, fake)
    prec, rec = knn_precision_recall(*equal_random_subsets(fr, ff), k=k)
    covered, shares = class_coverage(fake, classifier)
    out = {"classifier_frechet": frechet_distance(*gaussian_stats(fr), *gaussian_stats(ff)),
           "precision": prec, "recall": rec, "classes_covered": covered, "class_shares": shares}
    if labels is not None:
        out["class_accuracy"] = class_accuracy(fake, labels, classifier)
    return out


# ---- real FID, when an Inception implementation is installed ---------------------------------------

def inception_extractor(device="cpu", logits: bool = False, backend: str | None = None):
    """A callable: pixels in [0, 1] ``(n, 1|3, H, W)`` -> Inception pool features ``(n, 2048)``
    (float64, CPU), or ``(features, logits (n, 1008))`` with ``logits=True`` (for the Inception
    Score; torch-fidelity only).

    ``backend``: ``"torch-fidelity"`` or ``"clean-fid"`` (COCO's convention); by default the
    first installed. Neither is a dependency of this project (they pull a torchvision that pins
    another torch); a missing one raises ``ImportError`` saying what to install. Their weights
    are a download, done by those packages, never by this project.
    """
    if backend not in (None, "torch-fidelity", "clean-fid"):
        raise ValueError(f"backend must be 'torch-fidelity' or 'clean-fid', got {backend!r}")
    fe = None
    if backend in (None, "torch-fidelity"):
        try:
            from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
            names = ["2048", "logits_unbiased"] if logits else ["2048"]
            fe = FeatureExtractorInceptionV3("inception-v3-compat", names).to(device).eval()
        except ImportError:
            if backend or logits:
                raise ImportError("Inception features with logits need torch-fidelity: `pip install torch-fidelity` "
                                  "(with a torchvision that matches your torch); or pass extractor=your_function"
                                  if logits else "`pip install torch-fidelity`, or pass extractor=your_function") from None
    if fe is not None:
        @torch.no_grad()
        def extract(x):  # torch-fidelity takes uint8 (n, 3, H, W) and resizes to 299 itself
            x = (x.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).to(device)
            out = fe(x)
            feats = out[0].double().cpu()
            return (feats, out[1].double().cpu()) if logits else feats
        return extract
    try:
        from cleanfid.features import build_feature_extractor
    except ImportError:
        raise ImportError("real FID needs torch-fidelity or clean-fid (`pip install torch-fidelity` or "
                          "`pip install clean-fid`), plus their Inception weights; or pass extractor=") from None
    try:   # one device: clean-fid's DataParallel wrapper would leave a CPU model behind on a several-GPU machine
        model = build_feature_extractor("clean", torch.device(device), use_dataparallel=False)
    except TypeError:                                          # clean-fid before use_dataparallel existed
        model = build_feature_extractor("clean", torch.device(device))

    @torch.no_grad()
    def extract(x):  # clean-fid's network takes 0..255 floats at 299x299 (its own resize is PIL bicubic)
        x = F.interpolate(x.clamp(0, 1).expand(-1, 3, -1, -1), size=(299, 299), mode="bicubic", align_corners=False)
        return torch.as_tensor(model((x.clamp(0, 1) * 255).to(device))).double().cpu()
    return extract


def inception_fid(real: torch.Tensor, fake: torch.Tensor, extractor=None, batch: int = 200) -> float:
    """FID between ``real`` and ``fake`` pixels in [0, 1], with ``extractor`` (default
    :func:`inception_extractor`). With so few MNIST samples it is biased upwards; compare only
    like with like."""
    extractor = extractor or inception_extractor()
    fr, ff = _batched(extractor, real, batch), _batched(extractor, fake, batch)
    return frechet_distance(*gaussian_stats(fr), *gaussian_stats(ff))
