"""Metrics for low-dimensional samples against a Gaussian-mixture target.

* :func:`mode_masses`: the fraction of samples whose most likely component is k
  (``argmax_k w_k N(x; mu_k, C_k)``), and each sample's Mahalanobis distance to it
* :func:`mixture_report`: total variation between generated and true masses, modes covered,
  the fraction of samples within 3 standard deviations of their component, MMD, precision, recall
* :func:`mmd`: squared maximum mean discrepancy with a sum of RBF kernels
* :func:`knn_precision_recall`: Kynkäänniemi et al. (2019) k-NN manifolds
"""
from __future__ import annotations

import torch

__all__ = ["mode_masses", "mixture_report", "mmd", "knn_precision_recall", "equal_random_subsets", "total_variation"]


def mode_masses(mixture, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(masses (K,), mahalanobis (n,))`` of samples ``x`` ``(n, d)`` by most likely component."""
    x = torch.as_tensor(x, dtype=mixture.means.dtype)
    _check_samples(x, mixture.dim)
    k, maha = mixture.assign(x)
    return _shares(k, mixture.n_components, x.dtype), maha


def _shares(k: torch.Tensor, n_components: int, dtype) -> torch.Tensor:
    """The fraction of the component indices ``k`` that name each component (zeros when ``k`` is empty)."""
    return torch.bincount(k, minlength=n_components).to(dtype) / max(len(k), 1)


def _check_samples(x: torch.Tensor, dim: int | None = None, name: str = "samples", least: int = 1) -> None:
    """One clear message for an empty or misshapen set of samples, before any metric is computed."""
    if x.ndim != 2 or (dim is not None and x.shape[1] != dim):
        raise ValueError(f"{name} must have shape (n, {dim if dim is not None else 'd'}), got {tuple(x.shape)}")
    if len(x) < least:
        raise ValueError(f"{name}: need at least {least} sample(s), got {len(x)}")


def total_variation(p: torch.Tensor, q: torch.Tensor) -> float:
    """``0.5 * sum |p - q|`` of two probability vectors of the same length (e.g. mode masses and
    the mixture's weights)."""
    p, q = torch.as_tensor(p), torch.as_tensor(q)
    if p.ndim != 1 or p.shape != q.shape:
        raise ValueError(f"total_variation needs two 1-D probability vectors of one length, got shapes "
                         f"{tuple(p.shape)} and {tuple(q.shape)}; flatten them or pass masses per mode")
    return 0.5 * float((p - q).abs().sum())


def _sqdist(a, b):
    return (a.pow(2).sum(1)[:, None] + b.pow(2).sum(1)[None] - 2 * a @ b.T).clamp_min(0)


def mmd(x: torch.Tensor, y: torch.Tensor, bandwidths=(0.05, 0.2, 1.0)) -> float:
    """Biased estimate of squared MMD between samples ``x`` and ``y`` with summed RBF kernels."""
    x, y = torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y, dtype=torch.float64)
    _check_samples(x, name="mmd: x")
    _check_samples(y, x.shape[1], name="mmd: y")
    dxx, dyy, dxy = _sqdist(x, x), _sqdist(y, y), _sqdist(x, y)
    out = 0.0
    for h in bandwidths:
        k = lambda d: torch.exp(-d / (2 * h * h))  # noqa: E731
        out += float(k(dxx).mean() + k(dyy).mean() - 2 * k(dxy).mean())
    return out


def equal_random_subsets(real: torch.Tensor, fake: torch.Tensor, seed: int = 0):
    """Equal-sized random subsets of both sets (for precision and recall): a data set sorted by class
    must not be cut to its first classes."""
    m = min(len(real), len(fake))
    g = torch.Generator().manual_seed(seed)
    ir, i_f = torch.randperm(len(real), generator=g)[:m], torch.randperm(len(fake), generator=g)[:m]
    return real[ir.to(real.device)], fake[i_f.to(fake.device)]


def knn_precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 5,
                         batch: int = 5000) -> tuple[float, float]:
    """Improved precision (fake samples inside the real manifold) and recall (real inside fake).

    Each set's manifold is the union of balls around its points with radius the distance to
    the k-th nearest neighbour (Kynkäänniemi et al., 2019; the field uses k = 3 on Inception
    features). Works for any feature dimension; distances are computed ``batch`` rows at a
    time, so 50,000 x 50,000 never sit in memory at once.
    """
    real, fake = torch.as_tensor(real, dtype=torch.float32).flatten(1), torch.as_tensor(fake, dtype=torch.float32).flatten(1)
    if len(real) <= k or len(fake) <= k:
        raise ValueError(f"need more than k={k} samples in each set, got {len(real)} real and {len(fake)} fake")

    def radii(a):
        return torch.cat([torch.cdist(a[i:i + batch], a).kthvalue(k + 1, dim=1).values   # +1 skips the point itself
                          for i in range(0, len(a), batch)])

    def inside(points, centres, r):
        hit = [(torch.cdist(points[i:i + batch], centres) <= r[None]).any(1) for i in range(0, len(points), batch)]
        return torch.cat(hit).float().mean().item()

    return inside(fake, real, radii(real)), inside(real, fake, radii(fake))


def mixture_report(mixture, x: torch.Tensor, n_ref: int = 4000, cover_frac: float = 0.2, seed: int = 0) -> dict:
    """All the toy metrics of samples ``x`` against ``mixture``, as plain floats.

    ``tv``: total variation between generated and true component masses; ``modes_covered``:
    components holding at least ``cover_frac`` of their true weight; ``within_3sd``: fraction of
    samples within Mahalanobis distance 3 of their component; ``mmd``, ``precision``, ``recall``
    against ``n_ref`` exact samples of the mixture.

    Every sample counts towards its most likely component however far it lies, so stray samples
    spread over the plane lend mass to every mode: ``modes_covered`` can count a mode no sample
    is near. ``modes_hit`` applies the same rule to the samples within 3 sd of their component
    only (their masses renormalised): a mode is hit when the samples that land on modes give it
    at least ``cover_frac`` of its weight.
    """
    x = torch.as_tensor(x, dtype=mixture.means.dtype)
    # the k-NN precision and recall (k = 5) need more than 5 samples
    _check_samples(x, mixture.dim, name="mixture_report: samples", least=6)
    if not torch.isfinite(x).all():
        return {"tv": 1.0, "modes_covered": 0, "modes_hit": 0, "n_modes": mixture.n_components, "within_3sd": 0.0,
                "mmd": float("inf"), "precision": 0.0, "recall": 0.0, "masses": [float("nan")] * mixture.n_components}
    k, maha = mixture.assign(x)                                 # each sample's component, one pass
    near = maha <= 3                                            # the samples that land on a mode
    masses, near_masses = (_shares(idx, mixture.n_components, x.dtype) for idx in (k, k[near]))
    ref = mixture.sample(n_ref, generator=torch.Generator().manual_seed(seed))
    m = min(len(x), n_ref)
    prec, rec = knn_precision_recall(ref[:m], x[:m])
    return {
        "tv": total_variation(masses, mixture.weights),
        "modes_covered": int((masses >= cover_frac * mixture.weights).sum()),
        "modes_hit": int((near_masses >= cover_frac * mixture.weights).sum()),
        "n_modes": mixture.n_components,
        "within_3sd": float(near.float().mean()),
        "mmd": mmd(x[:2000], ref[:2000]),
        "precision": prec,
        "recall": rec,
        "masses": masses.tolist(),
    }
