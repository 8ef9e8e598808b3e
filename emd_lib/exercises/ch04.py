"""Checks for chapter 4 (Langevin and noise cancellation)."""
from __future__ import annotations

import functools
import math

import torch

from ..langevin import log_rho_grads
from . import ExerciseFailed, expect_close, register, ring_networks


_close = functools.partial(expect_close, relative=False)     # absolute tolerances here


# ---- shared: a random generator and student score facing the exact ring ---------------------------

def _networks(seed):
    return ring_networks(seed, 32, 7)


_CHAIN = ["emd_lib.langevin:log_rho_grads", "emd_lib.langevin:estep", "emd_lib.langevin:mcmc_correct",
          "emd_lib.langevin:_vjp", "emd_lib.experiments.ch06:correct", "emd_lib.distill:emd_generator_loss"]


def _pair(out, what):
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        raise ExerciseFailed(f"return a pair ({what})")
    return [torch.as_tensor(v).detach() for v in out]


# ---- 4.1 the (eps, z) gradients of log rho for a network generator -------------------------------

def _vjp_ref(gen, z, v):
    z = z.detach().requires_grad_(True)
    return torch.autograd.grad(gen(z), z, grad_outputs=v)[0]


def _rho_eps_ref(gen, teacher, student, z, eps, lam):
    return log_rho_grads(gen, teacher, student, z, lam, eps=eps)


def _rho_eps_no_alpha(gen, teacher, student, z, eps, lam):     # J^T ds without the alpha
    a, s = teacher.schedule.alpha_sigma(lam)
    ge, gz = _rho_eps_ref(gen, teacher, student, z, eps, lam)
    return ge, (gz + z) / a[:, None] - z


def _rho_eps_gap_sign(gen, teacher, student, z, eps, lam):     # teacher minus student in eps units
    ge, gz = _rho_eps_ref(gen, teacher, student, z, eps, lam)
    return -ge - 2 * eps, -gz - 2 * z


def _rho_eps_no_prior(gen, teacher, student, z, eps, lam):     # forgets the N(0, I) priors
    ge, gz = _rho_eps_ref(gen, teacher, student, z, eps, lam)
    return ge + eps, gz + z


def _route_rho_eps(gen, teacher, student, z, eps, lam):
    from emd_lib.langevin import log_rho_grads as lib

    return lib(gen, teacher, student, z, lam, eps=eps)


@register("4.1", title="the (eps, z) gradients of log rho for a network generator",
          wrong=[_rho_eps_no_alpha, _rho_eps_gap_sign, _rho_eps_no_prior],
          points=3, minutes=25, kind="method", route=_route_rho_eps, forbid=_CHAIN)
def _check_4_1(grad_log_rho):
    for seed in (0, 1):
        gen, teacher, student, z, eps, lam = _networks(seed)
        want_e, want_z = _rho_eps_ref(gen, teacher, student, z, eps, lam)
        ge, gz = _pair(grad_log_rho(gen, teacher, student, z.clone(), eps.clone(), lam.clone()), "grad_eps, grad_z")
        try:
            _close("grad_eps", ge, want_e, tol=1e-4)
        except ExerciseFailed as e:
            raise ExerciseFailed(f"{e}: grad_eps log rho = sigma ds - eps, and sigma ds = epshat_student - "
                                 "epshat_teacher at x_t = alpha g(z) + sigma eps") from None
        try:
            _close("grad_z", gz, want_z, tol=1e-4)
        except ExerciseFailed as e:
            raise ExerciseFailed(f"{e}: grad_z log rho = alpha J^T ds - z; J^T v is one vector-Jacobian product, "
                                 "torch.autograd.grad(g(z), z, grad_outputs=v)") from None


# ---- 4.2 the stationary variance of a discretised Langevin chain ------------------------------------

def _var_ref(gamma, v):
    return v / (1 - gamma / (2 * v)) if gamma < 2 * v else math.inf


def _var_exact(gamma, v):                                        # the target's variance: no discretisation bias
    return v


def _var_half(gamma, v):                                         # v / (1 - gamma / v)
    return v / (1 - gamma / v) if gamma < v else math.inf


def _var_always_finite(gamma, v):                                # misses the instability
    return v / abs(1 - gamma / (2 * v))


def _route_var(gamma, v):
    """Measured with the library's chain in x: zero score gap, sigma^2 = v, fixed step gamma."""
    import torch as _t

    from emd_lib.langevin import LangevinConfig as _C, estep as _estep
    from emd_lib.em import gaussian_teacher

    t = gaussian_teacher(_t.zeros(1), _t.eye(1))
    vv = min(max(v, 1e-4), 0.999)
    lam = _t.full((4000,), math.log((1 - vv) / vv))
    res = _estep(lambda z: z, t, t, _t.zeros(4000, 1), _t.zeros(4000, 1), lam,
                 _C(K=500, space="x", gamma_x=gamma, cancel="none"))
    return float((res.eps_chain * _t.sigmoid(-lam[:, None]).sqrt()).var())


@register("4.2", title="the largest stable Langevin step, and the variance below it",
          wrong=[_var_exact, _var_half, _var_always_finite],
          points=2, minutes=20, kind="derivation", route=_route_var,
          forbid=["emd_lib.langevin:estep", "emd_lib.experiments.ch04:gamma_x_fixed"])
def _check_4_2(stationary_variance):
    for gamma, v in ((0.01, 1.0), (0.3, 1.0), (0.5, 0.3), (1.9, 1.0), (0.001, 0.0025), (0.006, 0.0025), (2.5, 1.0)):
        want = _var_ref(gamma, v)
        got = float(stationary_variance(gamma, v))
        if math.isinf(want):
            if not math.isinf(got):
                raise ExerciseFailed(f"for gamma = {gamma}, v = {v} the chain diverges: return math.inf (the residual "
                                     "is multiplied by 1 - gamma / v each step; when is |1 - gamma / v| >= 1?)")
            continue
        if not math.isclose(got, want, rel_tol=1e-6):
            raise ExerciseFailed(f"for gamma = {gamma}, v = {v} you gave {got:.6g}. For the target N(0, v), one step "
                                 "u <- u - (gamma / v) u + sqrt(2 gamma) n maps the variance V to (1 - gamma / v)^2 V "
                                 "+ 2 gamma: solve for its fixed point")


# ---- 4.3 one step of the joint (eps, z) chain: trust region and noise records ------------------------

def _step_ref(gen, teacher, student, z, eps, eta, eta_z, lam, gamma_eps, gamma_z, z_clip, n_eps, n_z,
              clip=True, decay_z=True):
    a, s = teacher.schedule.alpha_sigma(lam)
    a, s = a[:, None], s[:, None]
    zz = z.detach().requires_grad_(True)
    x = gen(zz)
    x_t = a * x.detach() + s * eps
    with torch.no_grad():
        sds = student.eps(x_t, lam) - teacher.eps(x_t, lam)
    grad_z = torch.autograd.grad(x, zz, grad_outputs=a / s * sds)[0] - z
    drift = gamma_z * grad_z
    if clip:
        lim = z_clip * math.sqrt(z.shape[1])
        drift = drift * (lim / drift.norm(dim=1, keepdim=True).clamp_min(1e-12)).clamp(max=1.0)
    eps_new = eps + gamma_eps * (sds - eps) + math.sqrt(2 * gamma_eps) * n_eps
    eta_new = (1 - gamma_eps) * eta + math.sqrt(2 * gamma_eps) * n_eps
    z_new = z + drift + math.sqrt(2 * gamma_z) * n_z
    eta_z_new = ((1 - gamma_z) if decay_z else 1.0) * eta_z + math.sqrt(2 * gamma_z) * n_z
    return z_new.detach(), eps_new, eta_new, eta_z_new


def _step_no_clip(*args):
    return _step_ref(*args, clip=False)


def _step_z_record_no_decay(*args):
    return _step_ref(*args, decay_z=False)


def _step_batch_clip(gen, teacher, student, z, eps, eta, eta_z, lam, gamma_eps, gamma_z, z_clip, n_eps, n_z):
    # limits the whole batch's drift at once, not each sample's
    z2, e2, h2, hz2 = _step_ref(gen, teacher, student, z, eps, eta, eta_z, lam, gamma_eps, gamma_z, z_clip,
                                n_eps, n_z, clip=False)
    drift = z2 - z - math.sqrt(2 * gamma_z) * n_z
    lim = z_clip * math.sqrt(z.numel())
    drift = drift * min(1.0, lim / float(drift.norm()))
    return z + drift + math.sqrt(2 * gamma_z) * n_z, e2, h2, hz2


def _route_step(gen, teacher, student, z, eps, eta, eta_z, lam, gamma_eps, gamma_z, z_clip, n_eps, n_z):
    from emd_lib.langevin import LangevinConfig as _C, estep as _estep

    noise = iter([n_eps, n_z])
    res = _estep(gen, teacher, student, z, eps, lam, _C(K=1, move_z=True, z_precondition="none", gamma_eps=gamma_eps,
                                                         gamma_z=gamma_z, z_clip=z_clip, cancel="none"),
                 rng=lambda like: next(noise))
    return res.z_chain, res.eps_chain, (1 - gamma_eps) * eta + res.eps_chain - eps, eta_z


@register("4.3", title="one step of the (eps, z) chain with a trust region and noise records",
          wrong=[_step_no_clip, _step_z_record_no_decay, _step_batch_clip],
          points=3, minutes=30, kind="method", route=_route_step, forbid=_CHAIN)
def _check_4_3(langevin_step):
    for seed, lam_v in ((2, 0.0), (3, 4.0)):
        gen, teacher, student, z, eps, _ = _networks(seed)
        lam = torch.full((len(z),), lam_v)
        g = torch.Generator().manual_seed(430 + seed)
        eta, eta_z, n_eps, n_z = (torch.randn(z.shape, generator=g) for _ in range(4))
        args = (gen, teacher, student, z, eps, eta, eta_z, lam, 0.3, 0.05, 0.1, n_eps, n_z)
        want = _step_ref(*args)
        out = langevin_step(*(a.clone() if torch.is_tensor(a) else a for a in args))
        if not (isinstance(out, (tuple, list)) and len(out) == 4):
            raise ExerciseFailed("return four tensors: (z, eps, eta, eta_z) after the step")
        for name, got, w in zip(("z", "eps", "eta", "eta_z"), out, want):
            try:
                _close(f"{name} at lam = {lam_v:g}", torch.as_tensor(got).detach(), w.detach(), tol=1e-4)
            except ExerciseFailed as e:
                hint = {"z": "z <- z + drift + sqrt(2 gamma_z) n_z, with drift = gamma_z (alpha J^T ds - z) shortened, "
                             "sample by sample, to a norm of at most z_clip sqrt(dim z)",
                        "eps": "eps <- eps + gamma_eps (sigma ds - eps) + sqrt(2 gamma_eps) n_eps",
                        "eta": "the record of eps's noise decays as the chain's linear part does",
                        "eta_z": "the record of z's noise decays by (1 - gamma_z), the linear part of the z step "
                                 "in the eps chain"}[name]
                raise ExerciseFailed(f"{e}: {hint}") from None


# ---- 4.4 the (x, z) gradients of log rho for a network generator -----------------------------------

def _rho_x_ref(gen, teacher, student, z, x_t, lam):
    return log_rho_grads(gen, teacher, student, z, lam, x_t=x_t)


def _rho_x_no_residual(gen, teacher, student, z, x_t, lam):      # forgets -(x_t - alpha g) / sigma^2
    a, s = teacher.schedule.alpha_sigma(lam)
    with torch.no_grad():
        gx = (student.eps(x_t, lam) - teacher.eps(x_t, lam)) / s[:, None]
    return gx, _rho_x_ref(gen, teacher, student, z, x_t, lam)[1]


def _rho_x_as_eps(gen, teacher, student, z, x_t, lam):           # the (eps, z) formula for z
    a, s = teacher.schedule.alpha_sigma(lam)
    with torch.no_grad():
        eps = (x_t - a[:, None] * gen(z)) / s[:, None]
    return _rho_x_ref(gen, teacher, student, z, x_t, lam)[0], log_rho_grads(gen, teacher, student, z, lam, eps=eps)[1]


def _route_rho_x(gen, teacher, student, z, x_t, lam):
    from emd_lib.langevin import log_rho_grads as lib

    return lib(gen, teacher, student, z, lam, x_t=x_t)


@register("4.4", title="the (x, z) gradients of log rho for a network generator",
          wrong=[_rho_x_no_residual, _rho_x_as_eps],
          points=2, minutes=15, kind="method", route=_route_rho_x, forbid=_CHAIN)
def _check_4_4(grad_log_rho_x):
    for seed in (4, 5):
        gen, teacher, student, z, eps, lam = _networks(seed)
        a, s = teacher.schedule.alpha_sigma(lam)
        with torch.no_grad():
            x_t = a[:, None] * gen(z) + s[:, None] * eps + 0.3 * torch.randn(z.shape, generator=torch.Generator().manual_seed(seed))
        want_x, want_z = _rho_x_ref(gen, teacher, student, z, x_t, lam)
        gx, gz = _pair(grad_log_rho_x(gen, teacher, student, z.clone(), x_t.clone(), lam.clone()), "grad_x, grad_z")
        try:
            _close("grad_x", gx, want_x, tol=1e-4 * float(want_x.abs().max()))
            _close("grad_z", gz, want_z, tol=1e-4 * float(want_z.abs().max()))
        except ExerciseFailed as e:
            raise ExerciseFailed(f"{e}: in (x, z), grad_x log rho = ds - (x_t - alpha g(z)) / sigma^2 and grad_z log rho "
                                 "= (alpha / sigma^2) J^T (x_t - alpha g(z)) - z (here x_t is not alpha g + sigma eps "
                                 "for the current eps)") from None
