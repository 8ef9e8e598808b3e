"""The 2D targets of the book, as exact Gaussian-mixture teachers.

* ``ring8``: 8 modes on a circle of radius 2, unequal weights (1:2:1:3:1:2:1:4), std 0.15
* ``irregular``: 7 modes at irregular places with unequal weights and widths
* ``grid25``: a 5 x 5 grid of narrow modes (std 0.05), equal weights: a much harder target
* ``bimodal``: two modes, weights 0.7 / 0.3, for the forward- vs reverse-KL picture
* ``far``: a heavy mode and a light one (weights 0.85 / 0.15) five units apart, std 0.3: the
  target on which a distillation run can drop a mode (chapter 2)

Each is also shipped as JSON in ``data/mixtures/`` for the command line (``emd_lib.commands.toy``).
"""
from __future__ import annotations

import math

import torch

from .schedules import VP, Schedule
from .teachers import GaussianMixture

__all__ = ["ring8", "irregular", "grid25", "bimodal", "far", "two_modes", "get_mixture", "MIXTURES"]


def _normalise(w):
    w = torch.tensor(w, dtype=torch.float64)
    return (w / w.sum()).tolist()


def ring8(schedule: Schedule = VP) -> GaussianMixture:
    """8 modes on a circle of radius 2 with weights 1:2:1:3:1:2:1:4 (normalised), std 0.15 each.
    ``schedule``: the noising (:data:`~emd_lib.schedules.VP`, :data:`~emd_lib.schedules.EDM` or "vp"/"edm")."""
    ang = [2 * math.pi * k / 8 for k in range(8)]
    means = [[2 * math.cos(a), 2 * math.sin(a)] for a in ang]
    return GaussianMixture(_normalise([1, 2, 1, 3, 1, 2, 1, 4]), means, [0.15] * 8, schedule=schedule)


def irregular(schedule: Schedule = VP) -> GaussianMixture:
    """7 modes at irregular places, weights 0.06 to 0.22 and stds 0.10 to 0.30 (listed below).
    ``schedule``: as for :func:`ring8`."""
    means = [[-2.0, 1.6], [-0.6, 2.2], [1.5, 1.4], [2.2, -0.4], [0.6, -1.9], [-1.4, -1.5], [0.0, 0.2]]
    stds = [0.20, 0.12, 0.25, 0.10, 0.18, 0.30, 0.15]
    weights = _normalise([0.22, 0.06, 0.18, 0.10, 0.20, 0.16, 0.08])
    return GaussianMixture(weights, means, stds, schedule=schedule)


def grid25(schedule: Schedule = VP) -> GaussianMixture:
    """A 5 x 5 grid of modes (spacing 1, std 0.05), equal weights. ``schedule``: as for :func:`ring8`."""
    means = [[float(i), float(j)] for i in (-2, -1, 0, 1, 2) for j in (-2, -1, 0, 1, 2)]
    return GaussianMixture([1 / 25] * 25, means, [0.05] * 25, schedule=schedule)


def bimodal(schedule: Schedule = VP) -> GaussianMixture:
    """Two modes at x = -1.5 (weight 0.7) and x = +1.5 (weight 0.3), std 0.4. ``schedule``: as for
    :func:`ring8`."""
    return GaussianMixture([0.7, 0.3], [[-1.5, 0.0], [1.5, 0.0]], [0.4, 0.4], schedule=schedule)


def two_modes(distance: float, weight: float, std: float = 0.3, schedule: Schedule = VP) -> GaussianMixture:
    """A heavy mode at x = -1 (weight ``1 - weight``) and a light one ``distance`` to its right
    (weight ``weight``), both of std ``std``: chapter 2's map of when a mode is dropped."""
    if not (math.isfinite(distance) and distance > 0):
        raise ValueError(f"distance must be a finite number > 0, got {distance}")
    if not 0 < weight < 1:
        raise ValueError(f"weight (of the light mode) must be in (0, 1), got {weight}")
    return GaussianMixture([1 - weight, weight], [[-1.0, 0.0], [-1.0 + distance, 0.0]], [std, std], schedule=schedule)


def far(schedule: Schedule = VP) -> GaussianMixture:
    """A heavy mode at x = -1 (weight 0.85) and a light one at x = 4 (weight 0.15), std 0.3 each.
    ``schedule``: as for :func:`ring8`."""
    return GaussianMixture([0.85, 0.15], [[-1.0, 0.0], [4.0, 0.0]], [0.3, 0.3], schedule=schedule)


MIXTURES = {"ring8": ring8, "irregular": irregular, "grid25": grid25, "bimodal": bimodal, "far": far}


def get_mixture(name: str, schedule: Schedule = VP) -> GaussianMixture:
    """The book's mixture called ``name`` (``ring8``, ``irregular``, ``grid25``, ``bimodal``, ``far``)
    under ``schedule``; a :class:`KeyError` lists the names when ``name`` is not one of them."""
    if name not in MIXTURES:
        raise KeyError(f"unknown mixture {name!r}; known: {sorted(MIXTURES)}")
    return MIXTURES[name](schedule)
