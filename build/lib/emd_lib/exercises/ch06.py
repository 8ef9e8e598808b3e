"""Checks for chapter 6 (EMD in practice)."""
from __future__ import annotations

import math

import torch

from . import ExerciseFailed, expect_close, register


# ---- 6.1 the generator's starting map ------------------------------------------------------------

def _init_no_edm_scale(teacher, lam_star, z):            # feeds z unscaled to an EDM teacher
    lam = torch.full((z.shape[0],), float(lam_star))
    return teacher.denoise(z, lam)


def _init_noisy_input(teacher, lam_star, z):             # builds x_t = alpha z + sigma eps instead of z_in(z)
    lam = torch.full((z.shape[0],), float(lam_star))
    a, s = teacher.schedule.alpha_sigma(lam)
    return teacher.denoise(a[:, None] * z + s[:, None] * torch.randn_like(z), lam)


@register("6.1", title="the generator's starting map D(z_in(z), lam*)", wrong=[_init_no_edm_scale, _init_noisy_input])
def _check_6_1(init_map):
    from ..experiments.ch06 import init_target
    from ..mixtures import ring8
    from ..schedules import EDM, VP

    z = torch.randn(50, 2, generator=torch.Generator().manual_seed(61))
    for sch in (VP, EDM):
        teacher = ring8(sch)
        for lam_star in (-2.0, -6.0):
            got = init_map(teacher, lam_star, z.clone())
            try:
                expect_close(f"g(z) under {sch.kind.upper()} at lam* = {lam_star}", got, init_target(teacher, lam_star, z))
            except ExerciseFailed as e:
                raise ExerciseFailed(f"{e}. The start is the teacher's denoiser at lam* applied to z_in(z): z itself "
                                     "under VP (unit variance, like x_t there), sigma* z under EDM (alpha = 1, "
                                     "sigma* = exp(-lam*/2)); no fresh noise is drawn") from None


# ---- 6.2 one step of the test-time correction chain ------------------------------------------------

def _setup_6_2():
    from ..mixtures import ring8
    from ..nets import MLPGenerator, MLPScore
    from ..teachers import NetworkTeacher

    teacher = ring8()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(62)
        gen = MLPGenerator(2, 32, 2)
        student = NetworkTeacher(MLPScore(2, 32, 2, schedule=teacher.schedule), teacher.schedule, predicts="eps")
    g = torch.Generator().manual_seed(620)
    z, eps = torch.randn(32, 2, generator=g), torch.randn(32, 2, generator=g)
    return gen, teacher, student, z, eps


def _step_ref(generator, teacher, student, z, eps, lam, gamma_eps, gamma_z, n_eps, n_z, precondition=True):
    a, s = teacher.schedule.alpha_sigma(lam)
    a, s = a[:, None], s[:, None]
    z = z.detach().requires_grad_(True)
    x = generator(z)
    x_t = a * x.detach() + s * eps
    with torch.no_grad():
        sds = student.eps(x_t, lam) - teacher.eps(x_t, lam)
    gz = torch.autograd.grad(x, z, grad_outputs=a / s * sds)[0] - z.detach()
    g_z = gamma_z / (1 + a**2 / s**2) if precondition else gamma_z * torch.ones_like(a)
    eps_new = eps + gamma_eps * (sds - eps) + math.sqrt(2 * gamma_eps) * n_eps
    z_new = z.detach() + g_z * gz + torch.sqrt(2 * g_z) * n_z
    return z_new, eps_new


def _step_no_precondition(*args):                         # the plain z step: far too large at low noise
    return _step_ref(*args, precondition=False)


def _step_sequential(generator, teacher, student, z, eps, lam, gamma_eps, gamma_z, n_eps, n_z):
    # moves eps first, then evaluates the z gradient at the new eps (not the library's simultaneous step)
    a, s = teacher.schedule.alpha_sigma(lam)
    a, s = a[:, None], s[:, None]
    with torch.no_grad():
        x = generator(z)
        sds = student.eps(a * x + s * eps, lam) - teacher.eps(a * x + s * eps, lam)
    eps_new = eps + gamma_eps * (sds - eps) + math.sqrt(2 * gamma_eps) * n_eps
    z_new, _ = _step_ref(generator, teacher, student, z, eps_new, lam, gamma_eps, gamma_z, n_eps, n_z)
    return z_new, eps_new


@register("6.2", title="one Langevin step of the test-time correction on (eps, z)",
          wrong=[_step_no_precondition, _step_sequential])
def _check_6_2(correction_step):
    from ..langevin import LangevinConfig, estep

    gen, teacher, student, z, eps = _setup_6_2()
    for lam_v in (0.0, 4.0):
        lam = torch.full((z.shape[0],), lam_v)
        cfg = LangevinConfig(K=1, space="eps", move_z=True, gamma_eps=0.1, gamma_z=0.05, z_precondition="snr",
                             cancel="none")
        res = estep(gen, teacher, student, z, eps, lam, cfg, rng=torch.Generator().manual_seed(7))
        g = torch.Generator().manual_seed(7)
        n_eps = torch.randn(eps.shape, generator=g)       # the library draws the eps noise first, then z's
        n_z = torch.randn(z.shape, generator=g)
        z_new, eps_new = correction_step(gen, teacher, student, z.clone(), eps.clone(), lam, 0.1, 0.05, n_eps, n_z)
        try:
            expect_close(f"eps after one step (lam = {lam_v:g})", torch.as_tensor(eps_new).detach(), res.eps_chain, 1e-4)
            expect_close(f"z after one step (lam = {lam_v:g})", torch.as_tensor(z_new).detach(), res.z_chain, 1e-4)
        except ExerciseFailed as e:
            raise ExerciseFailed(f"{e}. Evaluate sds = epshat_student - epshat_teacher at x_t = alpha g(z) + sigma eps "
                                 "once; grad_eps = sds - eps, grad_z = J^T (alpha / sigma) sds - z (one VJP); move "
                                 "both with u <- u + g grad + sqrt(2 g) n, where z's step is gamma_z / (1 + alpha^2 "
                                 "/ sigma^2)") from None


# ---- 6.3 the weighting w(lam) ------------------------------------------------------------------------

def _w_sigma(lam, kind):                                  # sigma, not sigma^2
    s2 = torch.sigmoid(-lam)
    return {"sigma2": s2.sqrt(), "one": torch.ones_like(lam), "snr": (1 - s2) / s2}[kind]


def _w_snr_inverted(lam, kind):                           # 1 / SNR
    s2 = torch.sigmoid(-lam)
    return {"sigma2": s2, "one": torch.ones_like(lam), "snr": s2 / (1 - s2)}[kind]


@register("6.3", title="the noise-level weightings under VP", wrong=[_w_sigma, _w_snr_inverted])
def _check_6_3(w):
    from ..schedules import VP, weight

    lam = torch.linspace(-6, 6, 13)
    for kind in ("sigma2", "one", "snr"):
        try:
            expect_close(f"w for {kind!r}", w(lam.clone(), kind), weight(lam, VP, kind), 1e-4)
        except ExerciseFailed as e:
            raise ExerciseFailed(f"{e}. Under VP alpha^2 = sigmoid(lam) and sigma^2 = sigmoid(-lam); the SNR is "
                                 "alpha^2 / sigma^2 = exp(lam)") from None
