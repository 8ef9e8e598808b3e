"""Teachers: anything that denoises.

Everything that distils sees a teacher through one method, ``denoise(x_t, lam, cond)``,
which estimates ``E[x | x_t]`` at log-SNR ``lam``. The score and the eps-prediction follow:

    score(x_t) = (alpha * D(x_t) - x_t) / sigma^2          (Tweedie)
    epshat(x_t) = (x_t - alpha * D(x_t)) / sigma = -sigma * score

:class:`GaussianMixture` is the exact teacher of the 2D chapters: a mixture stays a mixture
under noising, so its noisy log density, score and denoiser are closed-form at every level.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

from .schedules import VP, Schedule, bcast, get_schedule

__all__ = ["Teacher", "GaussianMixture", "NetworkTeacher", "MixtureError"]


class MixtureError(ValueError):
    """A mixture specification that cannot describe a Gaussian mixture."""


class Teacher(nn.Module):
    """The teacher interface: subclasses implement :meth:`denoise`; score and eps follow."""

    schedule: Schedule = VP

    def denoise(self, x_t: torch.Tensor, lam: torch.Tensor, cond=None) -> torch.Tensor:  # (B, ...) -> (B, ...)
        raise NotImplementedError

    def score(self, x_t, lam, cond=None):
        # s = (alpha D - x_t) / sigma^2
        alpha, sigma = self.schedule.alpha_sigma(lam)
        a, s = bcast(alpha, x_t), bcast(sigma, x_t)
        return (a * self.denoise(x_t, lam, cond) - x_t) / s**2

    def eps(self, x_t, lam, cond=None):
        # epshat = (x_t - alpha D) / sigma
        alpha, sigma = self.schedule.alpha_sigma(lam)
        a, s = bcast(alpha, x_t), bcast(sigma, x_t)
        return (x_t - a * self.denoise(x_t, lam, cond)) / s

    def forward(self, x_t, lam, cond=None):
        return self.denoise(x_t, lam, cond)


class NetworkTeacher(Teacher):
    """Wrap a trained eps- or x0-predicting network ``net(x_t, lam, cond)`` as a teacher."""

    def __init__(self, net: nn.Module, schedule: Schedule = VP, predicts: str = "eps"):
        super().__init__()
        if predicts not in ("eps", "x0"):
            raise ValueError(f"predicts must be 'eps' or 'x0', got {predicts!r}")
        self.net, self.schedule, self.predicts = net, schedule, predicts

    def denoise(self, x_t, lam, cond=None):
        lam = torch.as_tensor(lam, dtype=x_t.dtype, device=x_t.device).expand(x_t.shape[0])
        out = self.net(x_t, lam) if cond is None else self.net(x_t, lam, cond)
        if self.predicts == "x0":
            return out
        alpha, sigma = self.schedule.alpha_sigma(lam)
        # D = (x_t - sigma eps) / alpha
        return (x_t - bcast(sigma, x_t) * out) / bcast(alpha, x_t)

    def eps(self, x_t, lam, cond=None):
        if self.predicts == "x0":
            return super().eps(x_t, lam, cond)
        lam = torch.as_tensor(lam, dtype=x_t.dtype, device=x_t.device).expand(x_t.shape[0])
        return self.net(x_t, lam) if cond is None else self.net(x_t, lam, cond)

    def score(self, x_t, lam, cond=None):
        _, sigma = self.schedule.alpha_sigma(lam)
        return -self.eps(x_t, lam, cond) / bcast(sigma, x_t)


def _check_numbers(name, value):
    """Reject what JSON can hold but a mixture cannot: strings, objects, null, true/false."""
    if isinstance(value, torch.Tensor):
        return
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, (list, tuple)):
            stack.extend(v)
        elif isinstance(v, bool) or not isinstance(v, (int, float)):
            if hasattr(v, "__array__") or hasattr(v, "tolist"):   # numpy arrays and scalars
                continue
            shown = repr(v) if len(repr(v)) <= 40 else repr(v)[:37] + "..."
            raise MixtureError(f"'{name}' must hold only numbers (in nested lists), found {shown} "
                               f"of type {type(v).__name__}")


def _as_tensor(name, value, dtype):
    _check_numbers(name, value)
    try:
        t = torch.as_tensor(value, dtype=dtype)
    except (TypeError, ValueError, OverflowError, RuntimeError) as e:
        raise MixtureError(f"'{name}' must be numbers of a regular shape ({e})") from None
    if not torch.isfinite(t).all():
        raise MixtureError(f"'{name}' contains NaN, infinite, or too large values (beyond {dtype} range); "
                           "give finite numbers of moderate size")
    return t


class GaussianMixture(Teacher):
    """The exact teacher ``p_0(x) = sum_k w_k N(x; mu_k, C_k)`` in any dimension.

    Give ``weights`` ``(K,)`` and ``means`` ``(K, d)``, and one of ``stds`` (``(K,)``
    isotropic, or ``(K, d)`` diagonal) or ``covs`` ``(K, d, d)`` (full). Under noising at
    ``lam`` each component becomes ``N(alpha mu_k, S_k)`` with ``S_k = alpha^2 C_k + sigma^2 I``,
    so everything below is exact.
    """

    def __init__(self, weights, means, stds=None, covs=None, schedule: Schedule = VP, dtype=torch.float32):
        super().__init__()
        self.schedule = get_schedule(schedule)                  # a Schedule, or its name "vp" / "edm"
        w = _as_tensor("weights", weights, dtype)
        mu = _as_tensor("means", means, dtype)
        if w.ndim != 1 or len(w) == 0:
            raise MixtureError(f"'weights' must be a non-empty list of numbers, got shape {tuple(w.shape)}")
        if (w < 0).any():
            raise MixtureError("'weights' must be non-negative")
        if abs(float(w.sum()) - 1.0) > 1e-4:
            raise MixtureError(f"'weights' must sum to 1 (they sum to {float(w.sum()):.6g}); normalise them")
        if mu.ndim == 1:
            mu = mu[:, None]
        if mu.ndim != 2 or mu.shape[0] != len(w):
            raise MixtureError(f"'means' must be a list of {len(w)} points (one per weight), got shape {tuple(mu.shape)}")
        K, d = mu.shape
        if d == 0:
            raise MixtureError("'means' must be points of dimension >= 1, got empty lists")
        if (stds is None) == (covs is None):
            raise MixtureError("give exactly one of 'stds' (one per component) or 'covs'")
        if stds is not None:
            sd = _as_tensor("stds", stds, dtype)
            if sd.ndim == 1 and sd.shape[0] == K:
                sd = sd[:, None].expand(K, d)
            if sd.shape != (K, d):
                raise MixtureError(f"'stds' must hold {K} numbers (one per component) or {K} lists of {d}, "
                                   f"got shape {tuple(sd.shape)}")
            if (sd <= 0).any():
                raise MixtureError(f"'stds' must be positive (and not so small that they round to 0 in {dtype})")
            if not torch.isfinite(sd**2).all():
                raise MixtureError(f"'stds' are too large: their squares overflow {dtype}; rescale the mixture")
            self.diagonal = True
            self.register_buffer("var", sd.clone() ** 2)  # (K, d)
            cov = torch.diag_embed(self.var)
        else:
            cov = _as_tensor("covs", covs, dtype)
            if cov.shape != (K, d, d):
                raise MixtureError(f"'covs' must be {K} matrices of size {d}x{d}, got shape {tuple(cov.shape)}")
            if not torch.allclose(cov, cov.transpose(-1, -2), atol=1e-6):
                raise MixtureError("'covs' must be symmetric matrices")
            if (torch.linalg.eigvalsh(cov) <= 0).any() or (torch.linalg.cholesky_ex(cov).info != 0).any():
                raise MixtureError("'covs' must be positive definite (every eigenvalue > 0, and not so "
                                   f"ill-conditioned that a Cholesky factorisation fails in {dtype})")
            self.diagonal = False
        self.register_buffer("weights", w.clone())
        self.register_buffer("means", mu.clone())
        self.register_buffer("covs", cov.clone())

    # ---- construction helpers -------------------------------------------------------------
    @classmethod
    def from_dict(cls, spec: dict, schedule: Schedule = VP) -> "GaussianMixture":
        """Build from ``{"weights": [...], "means": [[...]], "stds" | "covs": ...}``."""
        if not isinstance(spec, dict):
            raise MixtureError("a mixture file must hold a JSON object with 'weights', 'means' and 'stds' or 'covs'")
        for key in ("weights", "means"):
            if key not in spec:
                raise MixtureError(f"missing field '{key}'")
        unknown = set(spec) - {"weights", "means", "stds", "covs", "name"}
        if unknown:
            raise MixtureError(f"unknown field(s) {sorted(unknown)}; allowed: weights, means, stds, covs, name")
        if "name" in spec and not isinstance(spec["name"], str):
            raise MixtureError(f"'name' must be a string, got {type(spec['name']).__name__}")
        for key in ("stds", "covs"):
            if key in spec and spec[key] is None:
                raise MixtureError(f"'{key}' is null; give numbers or leave the field out")
        return cls(spec["weights"], spec["means"], spec.get("stds"), spec.get("covs"), schedule=schedule)

    @classmethod
    def from_json(cls, path, schedule: Schedule = VP) -> "GaussianMixture":
        path = Path(path)
        try:
            spec = json.loads(path.read_text())
        except FileNotFoundError:
            raise MixtureError(f"mixture file {path} does not exist") from None
        except IsADirectoryError:
            raise MixtureError(f"{path} is a folder; give the path of a .json mixture file") from None
        except OSError as e:
            raise MixtureError(f"cannot read {path}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise MixtureError(f"{path} is not a text file; a mixture file is UTF-8 JSON") from None
        except json.JSONDecodeError as e:
            raise MixtureError(f"{path} is not valid JSON (line {e.lineno}: {e.msg})") from None
        except RecursionError:
            raise MixtureError(f"{path} nests lists too deeply to be a mixture") from None
        return cls.from_dict(spec, schedule)

    def to_dict(self) -> dict:
        out = {"weights": self.weights.tolist(), "means": self.means.tolist()}
        if self.diagonal:
            out["stds"] = self.var.sqrt().tolist()
        else:
            out["covs"] = self.covs.tolist()
        return out

    @property
    def n_components(self) -> int:
        return self.weights.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    # ---- the exact noisy marginal ---------------------------------------------------------
    def _components(self, x_t, lam):
        """Per-component pieces at log-SNR ``lam``: log N(x_t; alpha mu_k, S_k), S_k^{-1}(x_t - alpha mu_k)."""
        if x_t.ndim != 2 or x_t.shape[1] != self.dim:
            raise ValueError(f"expected points of shape (batch, {self.dim}) for this {self.dim}-D mixture, "
                             f"got {tuple(x_t.shape)}")
        lam = torch.as_tensor(lam, dtype=x_t.dtype, device=x_t.device).expand(x_t.shape[0])
        alpha, sigma = self.schedule.alpha_sigma(lam)
        a, s2 = alpha[:, None, None], (sigma**2)[:, None, None]          # (B, 1, 1)
        diff = x_t[:, None, :] - a * self.means[None]                      # (B, K, d)
        d = x_t.shape[1]
        if self.diagonal:
            S = a**2 * self.var[None] + s2                                  # (B, K, d)
            v = diff / S                                                    # S^{-1} diff
            logdet = torch.log(S).sum(-1)
        else:
            eye = torch.eye(d, dtype=x_t.dtype, device=x_t.device)
            S = a[..., None] ** 2 * self.covs[None] + s2[..., None] * eye     # (B, K, d, d)
            L = torch.linalg.cholesky(S)
            v = torch.cholesky_solve(diff[..., None], L)[..., 0]
            logdet = 2 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
        logn = -0.5 * (diff * v).sum(-1) - 0.5 * logdet - 0.5 * d * math.log(2 * math.pi)  # (B, K)
        return logn, v, a

    def log_prob(self, x_t: torch.Tensor, lam=math.inf) -> torch.Tensor:
        """``log p_t(x_t)`` at log-SNR ``lam``, a number or one per row (``lam = inf`` is the clean density)."""
        lam = torch.as_tensor(lam, dtype=x_t.dtype, device=x_t.device)
        lam = torch.where(lam == math.inf, torch.full_like(lam, 60.0), lam)  # sigma ~ 1e-13: the clean mixture
        logn, _, _ = self._components(x_t, lam)
        return torch.logsumexp(torch.log(self.weights) + logn, dim=-1)

    def responsibilities(self, x_t, lam) -> torch.Tensor:
        """``r_k(x_t) = p(component k | x_t)``, shape ``(B, K)``."""
        logn, _, _ = self._components(x_t, lam)
        return torch.softmax(torch.log(self.weights) + logn, dim=-1)

    def score(self, x_t, lam, cond=None):
        # grad log p_t = -sum_k r_k S_k^{-1} (x_t - alpha mu_k)
        logn, v, _ = self._components(x_t, lam)
        r = torch.softmax(torch.log(self.weights) + logn, dim=-1)
        return -(r[..., None] * v).sum(1)

    def eps(self, x_t, lam, cond=None):
        _, sigma = self.schedule.alpha_sigma(lam)
        return -bcast(sigma, x_t) * self.score(x_t, lam)

    def denoise(self, x_t, lam, cond=None):
        # E[x | x_t] = sum_k r_k (mu_k + alpha C_k S_k^{-1} (x_t - alpha mu_k))
        logn, v, a = self._components(x_t, lam)
        r = torch.softmax(torch.log(self.weights) + logn, dim=-1)
        if self.diagonal:
            Cv = self.var[None] * v
        else:
            Cv = torch.einsum("kij,bkj->bki", self.covs, v)
        comp = self.means[None] + a * Cv                                    # (B, K, d)
        return (r[..., None] * comp).sum(1)

    # ---- sampling and assignment ------------------------------------------------------------
    def sample(self, n: int, generator: torch.Generator | None = None, return_labels: bool = False):
        """Exact samples of the clean mixture, ``(n, d)``."""
        if int(n) != n or n < 0:
            raise ValueError(f"n (number of samples) must be a whole number >= 0, got {n}")
        if n == 0:
            x, k = torch.empty(0, self.dim, dtype=self.means.dtype), torch.empty(0, dtype=torch.long)
            return (x, k) if return_labels else x
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        L = torch.linalg.cholesky(self.covs)                                  # (K, d, d)
        e = torch.randn(n, self.dim, generator=generator, dtype=self.means.dtype)
        x = self.means[k] + torch.einsum("nij,nj->ni", L[k], e)
        return (x, k) if return_labels else x

    def assign(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Most likely component of each clean sample, ``argmax_k w_k N(x; mu_k, C_k)``, and its
        Mahalanobis distance to that component."""
        x = x.to(self.means.dtype)
        diff = x[:, None, :] - self.means[None]
        L = torch.linalg.cholesky(self.covs)
        sol = torch.linalg.solve_triangular(L[None].expand(x.shape[0], -1, -1, -1), diff[..., None], upper=False)[..., 0]
        maha2 = (sol**2).sum(-1)                                               # (n, K)
        logdet = 2 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
        score = torch.log(self.weights) - 0.5 * maha2 - 0.5 * logdet
        k = score.argmax(-1)
        return k, maha2.gather(1, k[:, None])[:, 0].sqrt()
