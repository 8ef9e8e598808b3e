"""One figure style for the book, and the plots the 2D chapters share."""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["use_style", "COLORS", "scatter2d", "density2d", "mass_bars", "curve"]

#: method -> colour, used everywhere so EMD and Diff-Instruct look the same in every chapter
COLORS = {"teacher": "#444444", "emd": "#1f77b4", "di": "#d62728", "data": "#7f7f7f",
          "init": "#2ca02c", "corrected": "#9467bd"}


def use_style():
    """The book's matplotlib style (call once per chapter)."""
    import matplotlib as mpl

    mpl.rcParams.update({
        "figure.dpi": 100, "savefig.dpi": 120, "figure.figsize": (6.4, 4.0),
        "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False, "axes.spines.right": False,
        "axes.titlesize": 11, "axes.labelsize": 10, "legend.fontsize": 9, "legend.frameon": False,
        "xtick.labelsize": 9, "ytick.labelsize": 9, "image.cmap": "viridis",
    })


def _np(x):
    return x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)


def scatter2d(ax, x, title: str = "", color=None, lim: float = 3.0, s: float = 2.0, alpha: float = 0.4, label=None):
    """A 2D sample cloud with equal axes."""
    x = _np(x)
    ax.scatter(x[:, 0], x[:, 1], s=s, alpha=alpha, color=color or COLORS["emd"], linewidths=0, label=label)
    ax.set_xlim(-lim, lim), ax.set_ylim(-lim, lim), ax.set_aspect("equal")
    if title:
        ax.set_title(title)
    return ax


def density2d(ax, mixture, lam=float("inf"), lim: float = 3.0, n: int = 200, title: str = "", cmap="Greys"):
    """The (noisy) mixture density at log-SNR ``lam`` as an image."""
    g = torch.linspace(-lim, lim, n)
    xx, yy = torch.meshgrid(g, g, indexing="xy")
    pts = torch.stack([xx.flatten(), yy.flatten()], 1)
    lam_t = torch.full((len(pts),), float(lam)) if np.isfinite(lam) else float("inf")
    with torch.no_grad():
        logp = mixture.log_prob(pts, lam_t).reshape(n, n)
    ax.imshow(logp.exp().numpy(), extent=(-lim, lim, -lim, lim), origin="lower", cmap=cmap)
    ax.set_aspect("equal")
    if title:
        ax.set_title(title)
    return ax


def mass_bars(ax, true_weights, masses: dict, errors: dict | None = None, title: str = ""):
    """Per-mode mass: the true weights beside each method's (with error bars over seeds)."""
    true_weights = _np(true_weights)
    k = np.arange(len(true_weights))
    n = len(masses) + 1
    width = 0.8 / n
    ax.bar(k - 0.4 + width / 2, true_weights, width, color=COLORS["teacher"], label="target")
    for i, (name, m) in enumerate(masses.items(), start=1):
        err = None if errors is None else _np(errors[name])
        ax.bar(k - 0.4 + width * (i + 0.5), _np(m), width, yerr=err, capsize=2,
               color=COLORS.get(name.lower().split("-")[0], None), label=name)
    ax.set_xticks(k), ax.set_xlabel("mode"), ax.set_ylabel("mass")
    ax.legend()
    if title:
        ax.set_title(title)
    return ax


def curve(ax, x, y, label=None, color=None, band=None, **kw):
    """A line with an optional ``(low, high)`` band."""
    x, y = _np(x), _np(y)
    ax.plot(x, y, label=label, color=color, **kw)
    if band is not None:
        ax.fill_between(x, _np(band[0]), _np(band[1]), color=color, alpha=0.2, linewidth=0)
    return ax
