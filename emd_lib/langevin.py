"""The E-step: Langevin dynamics on the joint posterior rho(x_t, z).

With the generator frozen, EMD draws pairs from

    rho(x_t, z)  ∝  p_t(x_t) N(x_t; alpha g(z), sigma^2 I) N(z; 0, I) / q_t(x_t),

a teacher sample together with the latent that most plausibly produced it. The intractable
``grad log q_t`` is replaced by the student score ``s_psi``, and the score gap
``ds = s_phi - s_psi`` is the only force that moves the chain away from the generator's own
joint sample (where it starts).

Two coordinate systems (``space``):

* ``"x"``:   grad_x log rho = ds - (x_t - alpha g(z)) / sigma^2,
             grad_z log rho = (alpha / sigma^2) J_z^T (x_t - alpha g(z)) - z
* ``"eps"``: with ``x_t = alpha g(z) + sigma eps`` (constant Jacobian),
             grad_eps log rho = sigma ds - eps,
             grad_z   log rho = alpha J_z^T ds - z

One Langevin step is ``u <- u + gamma grad log rho + sqrt(2 gamma) n`` (our convention).

Noise cancellation (our convention, see the book's chapter 4). The M-step gradient is linear
in the final eps, so injected noise enters it directly. We track the noise as the chain's
linear part propagates it, ``eta <- (1 - gamma) eta + sqrt(2 gamma) n``, and hand
``eps_K - eta_K`` to the M-step. ``cancel="injected"`` starts from ``eta_0 = 0`` (removes the
injected noise only); ``cancel="full"`` starts from ``eta_0 = eps_0`` (also removes the
initial noise, leaving the pure drift ``sum_k (1-gamma)^(K-1-k) gamma sigma ds_k``).
``cancel_z=True`` does the same for the injected noise in ``z`` (``eta_z,0 = 0``).

What is removed has zero mean in the M-step gradient, ``E[eta_K^T dg(z_K)/dtheta] = 0``, only
while ``z`` is frozen (``move_z=False``): then ``eta_K`` is independent of ``z``, and cancellation
reduces the variance and leaves the mean. When ``z`` moves, the injected noise moves ``x_t``,
hence the score gap, hence ``z``; ``z_K`` is correlated with ``eta_K``, and cancellation also
shifts the gradient's mean, a bias that more Langevin steps do not remove (it vanishes
where the score gap does). The book's chapter 4 measures it.
"""
from __future__ import annotations

import contextlib
import math
import numbers
from dataclasses import dataclass, field

import torch

from . import randn
from .schedules import bcast

__all__ = ["LangevinConfig", "JOINT_CHAIN", "EStepResult", "chain_label", "estep", "score_gap_eps", "log_rho_grads",
           "mcmc_correct", "call_generator", "jacobian_norm"]


@dataclass
class LangevinConfig:
    """Settings of the E-step.

    K: Langevin steps (0 leaves the generator's sample untouched).
    space: ``"eps"`` (reparametrised, our default) or ``"x"``.
    move_data / move_z: which coordinates move; (x, z), (eps, z), (x, -), (eps, -) are
        ``move_z`` True/False in either space.
    gamma_eps: step size of eps; in ``"x"`` space the step is ``gamma_x`` if given, else
        ``gamma_eps * sigma^2`` (the same step measured in x).
    gamma_z: base step size of z, scaled per sample by ``z_precondition``:
        ``"snr"`` divides it by ``1 + alpha^2 / sigma^2``, ``"none"`` uses it as is. That factor is
        the curvature in z of the likelihood term plus the prior for a generator with unit
        Jacobian, with ``x_t`` held fixed: the curvature the ``"x"`` chain sees. The ``"eps"`` chain
        holds eps fixed instead and sees ``I - alpha^2 J^T (grad_x ds) J`` (plus terms with the
        derivative of J), which the factor does not track.
        ``"jacobian"`` divides it by ``1 + alpha^2 ||J||^2 / sigma^2``, with ``||J||`` the spectral norm
        of the generator's Jacobian at the chain's current z, per sample, estimated by ``jac_iters``
        power iterations (warm-started from the previous step's vector, so a few suffice). In the
        ``"eps"`` chain ``-grad_x ds`` is the difference of two Hessians of ``-log`` densities, and the
        teacher's is at most ``I / sigma^2`` (a noised density is no sharper than its noise), so
        ``1 + alpha^2 ||J||^2 / sigma^2`` bounds the z curvature the teacher can cause; a fixed step
        must stay below ``2 /`` that curvature, which near a narrow mode at high SNR is hundreds.
    jac_iters: power iterations per Langevin step for ``z_precondition="jacobian"`` (>= 1); each
        costs one Jacobian-vector and one vector-Jacobian product through the generator (no extra
        forward pass).
    metropolis: a Metropolis-adjusted step (MALA) on the joint ``(eps, z)``: each step's proposal is
        the Langevin step above, accepted per sample with the Metropolis-Hastings probability. The
        teacher and the student give scores, not log densities, so the log-ratio of ``rho`` is the
        trapezoid rule along the move, ``(grad(u) + grad(u'))^T (u' - u) / 2`` (exact for a Gaussian
        target). A rejected sample keeps its eps and its z for that step. Costs one evaluation more
        per chain (K + 1: the gradient at each proposal is the next step's). Only in the ``"eps"``
        space, with ``cancel="none"`` and without ``z_clip`` (both would change the proposal).
    cancel: ``"none"``, ``"injected"`` or ``"full"`` (see the module docstring). Mean-preserving
        only with ``move_z=False``; with z moving it biases the M-step gradient.
    cancel_z: also remove the injected z noise before the M-step. The record decays by
        ``1 - g_z`` per step (``g_z`` the step after preconditioning), which is the linear part of
        the z-update in the ``"eps"`` chain only; in ``"x"`` space that part is
        ``1 - g_z (1 + alpha^2 / sigma^2)`` for a unit Jacobian, so the record does not track the
        z noise there.
    z_clip: a trust region for the z step (None: off). No sample's z drifts by more than
        ``z_clip * sqrt(dim z)`` in one step; the injected noise is not touched. With a network
        generator the drift ``gamma_z (alpha J^T ds - z)`` can grow without bound: where the
        generator is steep (between modes) or the chain reaches latents the student score was never
        trained on, one step takes z further out, where the drift is larger still. The book's
        chapter 4 measures what the limit buys.
    """

    K: int = 8
    space: str = "eps"
    move_data: bool = True
    move_z: bool = False
    gamma_eps: float = 0.3
    gamma_x: float | None = None
    gamma_z: float = 0.1
    z_precondition: str = "snr"
    cancel: str = "full"
    cancel_z: bool = False
    z_clip: float | None = None
    jac_iters: int = 2
    metropolis: bool = False

    def __post_init__(self):
        if isinstance(self.K, bool) or not isinstance(self.K, numbers.Real) or not math.isfinite(self.K) \
                or int(self.K) != self.K or self.K < 0:
            raise ValueError(f"K (Langevin steps) must be a whole number >= 0, got {self.K!r}")
        if self.space not in ("eps", "x"):
            raise ValueError(f"space must be 'eps' or 'x', got {self.space!r}")
        if self.cancel not in ("none", "injected", "full"):
            raise ValueError(f"cancel must be 'none', 'injected' or 'full', got {self.cancel!r}")
        if self.z_precondition not in ("none", "snr", "jacobian"):
            raise ValueError(f"z_precondition must be 'none', 'snr' or 'jacobian', got {self.z_precondition!r}")
        if isinstance(self.jac_iters, bool) or not isinstance(self.jac_iters, numbers.Integral) or self.jac_iters < 1:
            raise ValueError(f"jac_iters (power iterations for the Jacobian's norm) must be a whole number >= 1, "
                             f"got {self.jac_iters!r}")
        if not isinstance(self.metropolis, bool):
            raise ValueError(f"metropolis must be True or False, got {self.metropolis!r}")
        if self.metropolis:
            why = ("space='x'" if self.space != "eps" else f"cancel={self.cancel!r}" if self.cancel != "none"
                   else "cancel_z=True" if self.cancel_z else f"z_clip={self.z_clip!r}" if self.z_clip is not None
                   else "")
            if why:
                raise ValueError(f"metropolis (MALA) needs space='eps', cancel='none', cancel_z=False and no z_clip "
                                 f"(a rejected or clipped step has no noise record and no Gaussian proposal); got {why}")
        for name in ("gamma_eps", "gamma_z") + (("gamma_x",) if self.gamma_x is not None else ()) \
                + (("z_clip",) if self.z_clip is not None else ()):
            v = getattr(self, name)
            if not (isinstance(v, numbers.Real) and math.isfinite(v) and v > 0):
                what = "the largest z drift per step" if name == "z_clip" else "a Langevin step size"
                raise ValueError(f"{name} ({what}) must be a finite number > 0, got {v!r}")


#: The joint (eps, z) chain's settings that the book recommends for network generators (chapter 4,
#: "A stable z step"): the z step scaled by the generator's Jacobian, ``1 / (1 + alpha^2 ||J||^2 / sigma^2)``
#: (the curvature that a narrow teacher mode can put on z at high SNR, which with a fixed step blows the
#: chain up), each step Metropolis-adjusted (which removes the discretisation bias of so large a step and
#: rejects what overshoots), and no noise cancellation (with z moving, cancelling shifts the M-step
#: gradient's mean).
JOINT_CHAIN = {"move_z": True, "z_precondition": "jacobian", "gamma_z": 1.0, "z_clip": None, "cancel": "none",
               "metropolis": True}


@dataclass
class EStepResult:
    """What the M-step needs, and what happened on the way."""

    z: torch.Tensor            # latent for the M-step (noise-cancelled if cancel_z)
    eps: torch.Tensor          # eps for the M-step, in eps units (noise-cancelled per ``cancel``)
    z_chain: torch.Tensor      # the chain's final z
    eps_chain: torch.Tensor    # the chain's final eps = (x_t - alpha g(z_chain)) / sigma
    diagnostics: dict = field(default_factory=dict)


def chain_label(cfg: "LangevinConfig | dict") -> str:
    """The chain's coordinates as the book writes them: ``"(eps, -)"``, ``"(eps, z)"``, ``"(x, z)"``, ...
    (``"-"``: that coordinate frozen); ``cfg`` is a :class:`LangevinConfig` or its dict (a card's)."""
    c = cfg if isinstance(cfg, dict) else cfg.__dict__
    data = c.get("space", "eps") if c.get("move_data", True) else "-"
    return f"({data}, {'z' if c.get('move_z') else '-'})"


def score_gap_eps(teacher, student, x_t, lam, cond=None):
    """``sigma * ds = sigma (s_phi - s_psi) = epshat_psi - epshat_phi``, shape of ``x_t``."""
    return student.eps(x_t, lam, cond) - teacher.eps(x_t, lam, cond)


def _vjp(x, z, v):
    """``J_z^T v`` for ``x = g(z)``."""
    (g,) = torch.autograd.grad(x, z, grad_outputs=v, retain_graph=False)
    return g


def _power_iteration(xg, z, v, iters):
    """Per-sample spectral norm of ``J = dxg/dz`` by ``iters`` power iterations on ``J^T J`` from ``v``.

    ``xg = g(z)`` must still hold its graph (kept). ``J v`` is the derivative of the linear map
    ``w -> J^T w`` with respect to ``w`` (a second backward pass through the same graph, no forward
    pass). Returns ``(||J v||, J^T J v)`` with ``v`` the last unit vector: the first is a lower bound of
    ``||J||`` that converges to it, the second the start of the next call."""
    w = torch.zeros_like(xg, requires_grad=True)
    (jtw,) = torch.autograd.grad(xg, z, grad_outputs=w, create_graph=True)
    for _ in range(iters):
        v = v / bcast(v.flatten(1).norm(dim=1).clamp_min(1e-30), v)
        (jv,) = torch.autograd.grad(jtw, w, grad_outputs=v, retain_graph=True)
        (v,) = torch.autograd.grad(xg, z, grad_outputs=jv, retain_graph=True)
    return jv.detach().flatten(1).norm(dim=1), v.detach()


def jacobian_norm(generator, z, iters: int = 20, cond=None, v=None) -> torch.Tensor:
    """Spectral norm of the generator's Jacobian ``dg/dz`` at each sample's ``z``, ``(B,)``, by power
    iteration (from ``v``, by default ``z`` itself); what ``z_precondition="jacobian"`` uses."""
    return _forward_z(generator, z, cond, (z if v is None else v).detach(), iters)[2]


def _forward_z(generator, z, cond, v, iters):
    """``g(z)`` with its graph to a fresh leaf ``z``: ``(g(z), z, ||J||, v)``, the Jacobian's norm and the
    power vector from ``iters`` power iterations from ``v`` (none when ``iters`` is 0: ``(None, v)``)."""
    z = z.detach().requires_grad_(True)
    with torch.enable_grad():
        xg = call_generator(generator, z, cond)
        jn, v = _power_iteration(xg, z, v, iters) if iters else (None, v)
    return xg, z, jn, v


def _z_step(cfg, g_z0, a, s, jnorm):
    """The z step size per sample: ``g_z0`` (already scaled for ``"snr"``), or for ``"jacobian"``
    ``gamma_z / (1 + alpha^2 ||J||^2 / sigma^2)``."""
    if cfg.z_precondition != "jacobian":
        return g_z0
    return cfg.gamma_z / (1 + a**2 * bcast(jnorm, a).to(a.dtype) ** 2 / s**2)


def _randn(like, rng):
    """Standard normal noise shaped like ``like``; ``rng`` is a ``torch.Generator`` (or None), or a
    function ``rng(like)`` that returns the noise (data-parallel training draws the global batch's
    noise on every process and keeps its own rows, so the result does not depend on the split)."""
    if callable(rng) and not isinstance(rng, torch.Generator):
        return rng(like)
    return randn(like.shape, rng, like.device, like.dtype)


def call_generator(generator, z, cond=None):
    """``g(z)``, or ``g(z, c)`` for a class-conditional generator (images)."""
    return generator(z) if cond is None else generator(z, cond)


def _norm_t(t):  # mean over the batch of per-sample L2 norms, left on the device (no synchronisation)
    return t.detach().flatten(1).float().norm(dim=1).mean()


def _mean_t(ts) -> float:
    return float(torch.stack(ts).mean()) if ts else 0.0


@contextlib.contextmanager
def frozen_params(module):
    """Within the block, ``module``'s trainable parameters do not require grad (restored after).

    The E-step differentiates the generator with respect to ``z`` only. Eager autograd already
    skips the weight gradients there, but a compiled network's backward computes the gradients
    of every input that required grad when it was traced; freezing the weights halves that VJP.
    """
    ps = [p for p in module.parameters() if p.requires_grad] if isinstance(module, torch.nn.Module) else []
    for p in ps:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in ps:
            p.requires_grad_(True)


def log_rho_grads(generator, teacher, student, z, lam, *, x_t=None, eps=None, cond=None):
    """Gradients of log rho in (x, z) when ``x_t`` is given, or in (eps, z) when ``eps`` is.

    Returns ``(grad_data, grad_z)``; used by the tests to check that both chains target the
    same joint (``grad_eps = sigma grad_x``, ``grad_z^(eps) = grad_z^(x) + alpha J^T grad_x``).
    """
    alpha, sigma = teacher.schedule.alpha_sigma(lam)
    x, z, _, _ = _forward_z(generator, z, cond, None, 0)
    a, s = bcast(alpha, x), bcast(sigma, x)
    if eps is not None:
        x_t = a * x.detach() + s * eps
    with torch.no_grad():
        sds = score_gap_eps(teacher, student, x_t, lam, cond)
    if eps is not None:
        return sds - eps, _vjp(x, z, a / s * sds) - z.detach()
    r = x_t - a * x.detach()
    return sds / s - r / s**2, _vjp(x, z, a / s**2 * r) - z.detach()


def estep(generator, teacher, student, z0, eps0, lam, cfg: LangevinConfig, cond=None,
          rng: torch.Generator | None = None, x0=None) -> EStepResult:
    """Run ``cfg.K`` Langevin steps on rho from the generator's joint sample ``(z0, eps0)``.

    ``z0`` and ``eps0`` have the shape of the data ``(B, ...)``; ``lam`` is ``(B,)``. Pass
    ``x0 = g(z0)`` when it is already computed. The generator's parameters are not updated;
    only vector-Jacobian products with respect to ``z`` are taken.
    """
    alpha, sigma = teacher.schedule.alpha_sigma(lam)
    K = int(cfg.K)
    in_x = cfg.space == "x"
    if x0 is None and (in_x or not cfg.move_z or K == 0):
        # (eps, z) with z moving never needs g(z0) outside the loop, whose first step computes it
        with torch.no_grad():
            x0 = call_generator(generator, z0, cond)
    x = x0.detach() if x0 is not None else None
    a, s = bcast(alpha, z0), bcast(sigma, z0)
    z, eps = z0.detach(), eps0.detach()

    # step sizes, per sample where they depend on the noise level
    g_eps = torch.as_tensor(cfg.gamma_eps, dtype=z.dtype)
    if in_x:
        g_data = bcast(torch.as_tensor(cfg.gamma_x, dtype=z.dtype).expand_as(sigma), z) if cfg.gamma_x is not None \
            else g_eps * s**2
        decay = 1 - g_data / s**2          # linear part of the x-chain acting on x_t - alpha g
    else:
        g_data = g_eps
        decay = 1 - g_eps
    if (decay.abs() > 1).any() if torch.is_tensor(decay) else abs(decay) > 1:
        raise ValueError("the Langevin step is too large for this noise level (|1 - gamma/sigma^2| > 1); "
                         "use a smaller gamma_x or gamma_eps")
    g_z = torch.as_tensor(cfg.gamma_z, dtype=z.dtype)
    if cfg.z_precondition == "snr":
        g_z = g_z / (1 + bcast(alpha**2 / sigma**2, z))

    # the data coordinate in its own units: eps, or x_t
    u = a * x + s * eps if in_x else eps
    u0 = u
    eta = (u.clone() if not in_x else (u - a * x)) if cfg.cancel == "full" else torch.zeros_like(u)
    eta_z = torch.zeros_like(z)
    grad_data_norms, grad_z_norms, gap_norms = [], [], []

    if cfg.metropolis and K > 0:
        return _mala(generator, teacher, student, z, eps, lam, a, s, g_eps, g_z, cfg, cond, rng)
    use_jac = cfg.move_z and cfg.z_precondition == "jacobian"
    g_z0, v_jac, jac_norms, z_steps = g_z, z, [], []

    frozen = frozen_params(generator) if cfg.move_z else contextlib.nullcontext()
    with frozen:                        # the chain differentiates the generator with respect to z only
        for _ in range(K):
            if cfg.move_z:
                xg, z, jn, v_jac = _forward_z(generator, z, cond, v_jac, cfg.jac_iters if use_jac else 0)
                if use_jac:
                    g_z = _z_step(cfg, g_z0, a, s, jn)
                    jac_norms.append(jn.mean())
                    z_steps.append(g_z.mean())
                x = xg.detach()
            x_t = u if in_x else a * x + s * u
            with torch.no_grad():
                sds = score_gap_eps(teacher, student, x_t, lam, cond)            # sigma * ds
            gap_norms.append(_norm_t(sds))
            if in_x:
                r = x_t - a * x
                grad_u = sds / s - r / s**2                                       # ds - r / sigma^2
                vz = a / s**2 * r
            else:
                grad_u = sds - u                                                  # sigma ds - eps
                vz = a / s * sds                                                  # alpha ds (J^T applied below)
            grad_data_norms.append(_norm_t(grad_u))
            if cfg.move_z:
                grad_z = _vjp(xg, z, vz).detach() - z.detach()
                grad_z_norms.append(_norm_t(grad_z))
                z = z.detach()
            if cfg.move_data:
                n = _randn(u, rng)
                u = u + g_data * grad_u + torch.sqrt(2 * g_data) * n
                eta = decay * eta + torch.sqrt(2 * g_data) * n
            if cfg.move_z:
                nz = _randn(z, rng)
                drift = g_z * grad_z
                if cfg.z_clip is not None:
                    # trust region: no sample's z drifts by more than z_clip * sqrt(dim) in one step
                    lim = cfg.z_clip * math.sqrt(z[0].numel())
                    norm = drift.flatten(1).norm(dim=1).clamp_min(1e-12)
                    drift = drift * bcast((lim / norm).clamp(max=1.0), z)
                z = z + drift + torch.sqrt(2 * g_z) * nz
                # (1 - g_z): the linear part of the z-update in eps space (not in x space: see cancel_z)
                eta_z = (1 - g_z) * eta_z + torch.sqrt(2 * g_z) * nz

    if in_x:
        with torch.no_grad():
            x_final = call_generator(generator, z, cond) if cfg.move_z and K > 0 else x
        eps_chain = (u - a * x_final) / s
        # eta is in x units and tracks x_t - alpha g; hand it over in eps units
        eps_used = eps_chain - eta / s if cfg.cancel != "none" else eps_chain
    else:
        eps_chain = u
        eps_used = u - eta if cfg.cancel != "none" else u
    # cancel_z: the M-step evaluates the generator at the latent the drift alone reached
    # (with z moving, eta and eta_z are correlated with z, so this and the eps cancellation shift the
    # M-step gradient's mean, not only its variance)
    z_used = z - eta_z if (cfg.cancel_z and cfg.move_z) else z
    diag = {
        "grad_data_norm": _mean_t(grad_data_norms),
        "grad_z_norm": _mean_t(grad_z_norms),
        "score_gap_norm": _mean_t(gap_norms),
        "moved_data": float(_norm_t(u - u0)) / (1.0 if not in_x else float(s.mean())),
        "moved_z": float(_norm_t(z - z0)),
    }
    if use_jac:
        diag["jac_norm"] = _mean_t(jac_norms)
        diag["z_step"] = _mean_t(z_steps)
    return EStepResult(z=z_used.detach(), eps=eps_used.detach(), z_chain=z.detach(),
                       eps_chain=eps_chain.detach(), diagnostics=diag)


def _mala(generator, teacher, student, z, u, lam, a, s, g_eps, g_z0, cfg, cond, rng):
    """``cfg.K`` Metropolis-adjusted Langevin steps on the joint (eps, z) (``cfg.metropolis``)."""
    z0, u0 = z, u
    d_z = z[0].numel()
    jac = cfg.move_z and cfg.z_precondition == "jacobian"
    v_jac = z

    def evaluate(z, u, v_jac):
        """gradients of log rho in (eps, z) at (u, z), the z step there, the score gap's norm, the power vector"""
        jn = None
        if cfg.move_z:
            xg, zr, jn, v_jac = _forward_z(generator, z, cond, v_jac, cfg.jac_iters if jac else 0)
            x = xg.detach()
        else:
            with torch.no_grad():
                x = call_generator(generator, z, cond)
        with torch.no_grad():
            sds = score_gap_eps(teacher, student, a * x + s * u, lam, cond)
        grad_u = sds - u
        grad_z = (_vjp(xg, zr, a / s * sds).detach() - z) if cfg.move_z else None
        gz = _z_step(cfg, g_z0, a, s, jn) * torch.ones_like(a) if cfg.move_z else None   # (B, 1, ...)
        return grad_u, grad_z, gz, sds, v_jac, jn

    def sq(t):
        return t.flatten(1).pow(2).sum(1)

    grad_data_norms, grad_z_norms, gap_norms, accepts, jac_norms = [], [], [], [], []
    frozen = frozen_params(generator) if cfg.move_z else contextlib.nullcontext()
    with frozen:
        grad_u, grad_z, gz, sds, v_jac, jn = evaluate(z, u, v_jac)
        for _ in range(int(cfg.K)):
            gap_norms.append(_norm_t(sds))
            grad_data_norms.append(_norm_t(grad_u))
            if jn is not None:
                jac_norms.append(jn.mean())
            n = _randn(u, rng)
            u_p = u + g_eps * grad_u + torch.sqrt(2 * g_eps) * n if cfg.move_data else u
            fwd = -sq(n) / 2 if cfg.move_data else 0.0
            if cfg.move_z:
                grad_z_norms.append(_norm_t(grad_z))
                nz = _randn(z, rng)
                z_p = z + gz * grad_z + torch.sqrt(2 * gz) * nz
                fwd = fwd - sq(nz) / 2 - 0.5 * d_z * torch.log(gz.flatten(1)[:, 0])
            else:
                z_p = z
            gu_p, gzr_p, gz_p, sds_p, v_p, jn_p = evaluate(z_p, u_p, v_jac)
            # log rho(u') - log rho(u) by the trapezoid rule; the proposal densities in both directions
            dlog = 0.5 * ((grad_u + gu_p) * (u_p - u)).flatten(1).sum(1)
            rev = 0.0
            if cfg.move_data:
                rev = -sq(u - u_p - g_eps * gu_p) / (4 * g_eps)
            if cfg.move_z:
                dlog = dlog + 0.5 * ((grad_z + gzr_p) * (z_p - z)).flatten(1).sum(1)
                rev = rev - sq(z - z_p - gz_p * gzr_p) / (4 * gz_p.flatten(1)[:, 0]) \
                    - 0.5 * d_z * torch.log(gz_p.flatten(1)[:, 0])
            log_acc = dlog + rev - fwd
            log_acc = torch.where(torch.isfinite(log_acc), log_acc, torch.full_like(log_acc, -math.inf))
            # a uniform number from a normal one (``rng`` may be a function that returns normal noise)
            unif = 0.5 * (1 + torch.erf(_randn(log_acc[:, None], rng)[:, 0] / math.sqrt(2)))
            acc = torch.log(unif.clamp_min(1e-38)) < log_acc.clamp(max=0.0)
            accepts.append(acc.float().mean())
            m = acc.view(-1, *([1] * (u.dim() - 1)))

            def pick(new, old):
                return torch.where(m, new, old) if new is not None else None

            u, z = pick(u_p, u), pick(z_p, z)
            grad_u, grad_z, sds = pick(gu_p, grad_u), pick(gzr_p, grad_z), pick(sds_p, sds)
            gz = pick(gz_p, gz)
            if jn_p is not None:
                jn = torch.where(acc, jn_p, jn)
                v_jac = v_p
    diag = {
        "grad_data_norm": _mean_t(grad_data_norms),
        "grad_z_norm": _mean_t(grad_z_norms),
        "score_gap_norm": _mean_t(gap_norms),
        "moved_data": float(_norm_t(u - u0)),
        "moved_z": float(_norm_t(z - z0)),
        "accept": _mean_t(accepts),
    }
    if jac_norms:
        diag["jac_norm"] = _mean_t(jac_norms)
    return EStepResult(z=z.detach(), eps=u.detach(), z_chain=z.detach(), eps_chain=u.detach(), diagnostics=diag)


@torch.no_grad()
def mcmc_correct(generator, teacher, student, z, lam: float, steps: int = 300, gamma_eps: float = 0.1,
                 gamma_z: float = 0.05, move_z: bool = True, cond=None, rng=None):
    """Test-time MCMC correction: many joint Langevin steps on (eps, z) from generator samples at
    a fixed log-SNR ``lam``, then the teacher's denoiser. Returns ``(x_corrected, z, eps)``."""
    teacher.schedule.check_lam(lam, "lam")
    lam_b = torch.full((z.shape[0],), float(lam), dtype=z.dtype, device=z.device)
    eps0 = torch.randn(z.shape, generator=rng, dtype=z.dtype, device=z.device)
    cfg = LangevinConfig(K=steps, space="eps", move_z=move_z, gamma_eps=gamma_eps, gamma_z=gamma_z,
                         cancel="none")
    res = estep(generator, teacher, student, z, eps0, lam_b, cfg, cond=cond, rng=rng)
    alpha, sigma = teacher.schedule.alpha_sigma(lam_b)
    x = call_generator(generator, res.z_chain, cond)
    x_t = bcast(alpha, x) * x + bcast(sigma, x) * res.eps_chain
    return teacher.denoise(x_t, lam_b, cond), res.z_chain, res.eps_chain
