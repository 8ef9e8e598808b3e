"""Checks for chapter 6 (EMD in practice)."""
from __future__ import annotations

import math

import torch

from . import ExerciseFailed, expect_close, register


# ---- 6.1 how collapsed the start is ----------------------------------------------------------------

def _spread_ref(v, lam_star, kind):
    """The std of g(z) = D(z_in(z), lam*) for a 1D teacher N(0, v) and z ~ N(0, 1)."""
    if kind == "vp":
        a2, s2 = 1 / (1 + math.exp(-lam_star)), 1 / (1 + math.exp(lam_star))
        return math.sqrt(a2) * v / (a2 * v + s2)          # D(x_t) = alpha v x_t / (alpha^2 v + sigma^2), x_t = z
    s = math.exp(-lam_star / 2)
    return v * s / (v + s**2)                             # EDM: D(y) = v y / (v + sigma^2), y = sigma* z


def _spread_no_alpha(v, lam_star, kind):                  # VP's alpha forgotten in the numerator
    if kind == "vp":
        a2, s2 = 1 / (1 + math.exp(-lam_star)), 1 / (1 + math.exp(lam_star))
        return v / (a2 * v + s2)
    return _spread_ref(v, lam_star, kind)


def _spread_edm_unscaled(v, lam_star, kind):              # EDM's z fed without sigma*
    if kind == "edm":
        s = math.exp(-lam_star / 2)
        return v / (v + s**2)
    return _spread_ref(v, lam_star, kind)


def _spread_variance(v, lam_star, kind):                  # the variance, not the standard deviation
    return _spread_ref(v, lam_star, kind) ** 2


def _route_spread(v, lam_star, kind):
    from emd_lib.em import gaussian_teacher
    from emd_lib.experiments.ch06 import init_target
    from emd_lib.schedules import EDM, VP

    teacher = gaussian_teacher(torch.zeros(1), torch.full((1, 1), float(v)), VP if kind == "vp" else EDM)
    return float(init_target(teacher, lam_star, torch.randn(100_000, 1)).std())


@register("6.1", title="how collapsed the generator's start D(z_in(z), lam*) is",
          wrong=[_spread_no_alpha, _spread_edm_unscaled, _spread_variance],
          points=2, minutes=20, kind="derivation", route=_route_spread,
          forbid=["emd_lib.experiments.ch06:init_target", "emd_lib.nets:init_generator_from_teacher",
                  "emd_lib.schedules:Schedule.z_in_scale", "emd_lib.teachers:GaussianMixture.denoise",
                  "emd_lib.teachers:GaussianMixture.eps", "emd_lib.teachers:GaussianMixture.score"])
def _check_6_1(start_spread):
    from ..em import gaussian_teacher
    from ..experiments.ch06 import init_target
    from ..schedules import EDM, VP

    for kind, sch in (("vp", VP), ("edm", EDM)):
        for v, lam_star in ((1.0, -2.0), (0.25, 0.0), (4.0, -6.0), (0.5, 3.0)):
            want = _spread_ref(v, lam_star, kind)
            # the closed form agrees with the library's start for a Gaussian teacher (a linear map of z)
            t = gaussian_teacher(torch.zeros(1), torch.full((1, 1), v), sch)
            slope = float(init_target(t, lam_star, torch.ones(1, 1)) - init_target(t, lam_star, torch.zeros(1, 1)))
            assert math.isclose(abs(slope), want, rel_tol=1e-4), (kind, v, lam_star, slope, want)
            got = float(start_spread(v, lam_star, kind))
            if not math.isclose(got, want, rel_tol=1e-6):
                raise ExerciseFailed(f"for a teacher N(0, {v:g}) under {kind.upper()} at lam* = {lam_star:g} you gave "
                                     f"{got:.6g}. For a Gaussian teacher the denoiser is linear, D = E[x | x_t]; the "
                                     "start feeds it z (VP) or sigma* z (EDM, alpha = 1) with z ~ N(0, 1): return the "
                                     "standard deviation of g(z)")


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


def _route_correction(generator, teacher, student, z, eps, lam, gamma_eps, gamma_z, n_eps, n_z):
    from emd_lib.langevin import LangevinConfig, estep

    noise = iter([n_eps, n_z])
    res = estep(generator, teacher, student, z, eps, lam, LangevinConfig(K=1, move_z=True, gamma_eps=gamma_eps,
                gamma_z=gamma_z, cancel="none"), rng=lambda like: next(noise))
    return res.z_chain, res.eps_chain


_CHAIN = ["emd_lib.langevin:estep", "emd_lib.langevin:mcmc_correct", "emd_lib.langevin:log_rho_grads",
          "emd_lib.langevin:_vjp", "emd_lib.experiments.ch06:correct"]


@register("6.2", title="one Langevin step of the test-time correction on (eps, z)",
          wrong=[_step_no_precondition, _step_sequential],
          points=3, minutes=25, kind="method", route=_route_correction, forbid=_CHAIN)
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


# ---- 6.3 where each weighting puts the gradient ---------------------------------------------------------

def _peak_ref(s, kind):
    """The log-SNR that maximises w(lam) alpha^2 / (alpha^2 s^2 + sigma^2) under VP (inf: no interior peak)."""
    return -math.log(s) if kind == "sigma2" else math.inf


def _peak_sqrt(s, kind):                                  # where sigma / alpha = s
    return -2 * math.log(s) if kind == "sigma2" else math.inf


def _peak_finite(s, kind):                                # claims a peak for every weighting
    return -math.log(s)


def _peak_zero(s, kind):                                  # alpha = sigma
    return 0.0 if kind == "sigma2" else math.inf


def _route_peak(s, kind):
    import torch as _t

    from emd_lib.schedules import VP, weight

    lam = _t.linspace(-20, 20, 40001, dtype=_t.float64)
    a2, s2 = _t.sigmoid(lam), _t.sigmoid(-lam)
    f = weight(lam, VP, kind) * a2 / (a2 * s**2 + s2)
    return float(lam[f.argmax()])


@register("6.3", title="where each weighting puts the M-step's gradient",
          wrong=[_peak_sqrt, _peak_finite, _peak_zero],
          points=2, minutes=20, kind="derivation", route=_route_peak, forbid=["emd_lib.schedules:weight"])
def _check_6_3(gradient_peak):
    for s in (0.15, 0.3, 0.05):
        for kind in ("sigma2", "one", "snr"):
            want = _peak_ref(s, kind)
            got = float(gradient_peak(s, kind))
            ok = math.isinf(want) and math.isinf(got) and got > 0 if math.isinf(want) else \
                math.isclose(got, want, rel_tol=1e-6)
            if not ok:
                raise ExerciseFailed(f"for a mode of width s = {s} and w = {kind!r} you gave {got:.6g}. Section 3's "
                                     "gradient size at one level is about w alpha^2 / (alpha^2 s^2 + sigma^2); write it "
                                     "in a = alpha^2 (VP: sigma^2 = 1 - a) and maximise over 0 < a < 1; where it only "
                                     "grows towards the clean end, return math.inf")


# ---- 6.4 the whole loop, graded by its result ----------------------------------------------------------

def _loop_teacher():
    from ..teachers import GaussianMixture

    g = torch.Generator().manual_seed(64)
    means = torch.tensor([[-2.0, -1.0], [2.0, -1.0], [0.0, 2.0]]) + 0.3 * torch.randn(3, 2, generator=g)
    weights = torch.tensor([0.5, 0.3, 0.2])[torch.randperm(3, generator=g)]
    return GaussianMixture(weights, means, [0.3, 0.3, 0.3])


def _loop(teacher, z_eval, steps, seed, K=4):
    """A compact EMD-K loop (the wrong answers below change one thing in it)."""
    from ..nets import MLPGenerator, MLPScore
    from ..teachers import NetworkTeacher

    torch.manual_seed(seed)
    gen = MLPGenerator(2, 64, 2)
    student = NetworkTeacher(MLPScore(2, 64, 2), teacher.schedule, predicts="eps")
    opt_g = torch.optim.Adam(gen.parameters(), lr=2e-3, betas=(0.0, 0.999))
    opt_s = torch.optim.Adam(student.parameters(), lr=1e-3, betas=(0.0, 0.999))
    B, gamma = 256, 0.3

    def draw():
        lam = -6 + 12 * torch.rand(B)
        return torch.randn(B, 2), torch.randn(B, 2), lam, torch.sigmoid(lam).sqrt()[:, None], torch.sigmoid(-lam).sqrt()[:, None]

    for _ in range(150):
        z = torch.randn(B, 2)
        with torch.no_grad():
            target = teacher.denoise(z, torch.full((B,), -2.0))
        loss = ((gen(z) - target) ** 2).sum(1).mean()
        opt_g.zero_grad()
        loss.backward()
        opt_g.step()

    def student_update():
        z, eps, lam, a, s = draw()
        with torch.no_grad():
            x = gen(z)
        loss = ((student.eps(a * x + s * eps, lam) - eps) ** 2).sum(1).mean()
        opt_s.zero_grad()
        loss.backward()
        opt_s.step()

    for _ in range(100):
        student_update()
    for _ in range(steps):
        student_update()
        student_update()
        z, eps, lam, a, s = draw()
        x = gen(z)
        with torch.no_grad():
            u, eta = eps.clone(), eps.clone()
            for _ in range(K):
                sds = student.eps(a * x + s * u, lam) - teacher.eps(a * x + s * u, lam)
                n = torch.randn_like(u)
                u = u + gamma * (sds - u) + math.sqrt(2 * gamma) * n
                eta = (1 - gamma) * eta + math.sqrt(2 * gamma) * n
            x_target = a * x + s * (u - eta)
        loss = ((x_target - a * x) ** 2 / 2).sum(1).mean()            # w = sigma^2 cancels the 1 / sigma^2
        opt_g.zero_grad()
        loss.backward()
        opt_g.step()
    with torch.no_grad():
        return gen(z_eval)


def _loop_no_estep(teacher, z_eval, steps, seed):                 # K = 0: the generator stays at its start
    return _loop(teacher, z_eval, steps, seed, K=0)


def _route_loop(teacher, z_eval, steps, seed):
    from emd_lib.distill import DistillConfig, Distiller

    d = Distiller(teacher, DistillConfig(steps=steps, batch=256, width=64, depth=2, seed=seed))
    d.train(progress=False)
    with torch.no_grad():
        return d.ema(z_eval)


LOOP_STEPS = 300
MASS_TOL = 0.1            # each mode's share within 0.1 of its weight
INSIDE = 0.45             # at least this share of samples within 3 standard deviations of their mode
                          # (the compact loop above: 0.59 to 0.64 over three seeds; its start, K = 0: 0.23 to 0.26)


@register("6.4", title="the assembled EMD loop, graded by the mixture it learns",
          wrong=[_loop_no_estep],
          points=5, minutes=60, kind="method", route=_route_loop,
          forbid=["emd_lib.distill:Distiller", "emd_lib.distill:emd_generator_loss", "emd_lib.distill:di_generator_loss",
                  "emd_lib.distill:student_loss", "emd_lib.langevin:estep", "emd_lib.langevin:log_rho_grads",
                  "emd_lib.langevin:mcmc_correct", "emd_lib.teachers:GaussianMixture.sample"])
def _check_6_4(distill):
    teacher = _loop_teacher()
    z_eval = torch.randn(4000, 2, generator=torch.Generator().manual_seed(640))
    x = torch.as_tensor(distill(teacher, z_eval.clone(), LOOP_STEPS, 0)).detach().float()
    if x.shape != z_eval.shape:
        raise ExerciseFailed(f"return the trained generator's samples g(z_eval), shape {tuple(z_eval.shape)}")
    if not torch.isfinite(x).all():
        raise ExerciseFailed("some samples are not finite: lower the learning rate or the Langevin step size")
    k, maha = teacher.assign(x)
    masses = torch.bincount(k, minlength=3).double() / len(k)
    inside = float((maha < 3).double().mean())
    w = teacher.weights.double()
    if not bool(((masses - w).abs() <= MASS_TOL).all()):
        raise ExerciseFailed(f"the modes' shares {[round(v, 3) for v in masses.tolist()]} are not within {MASS_TOL} of "
                             f"the weights {[round(v, 3) for v in w.tolist()]}")
    if inside < INSIDE:
        raise ExerciseFailed(f"only {inside:.2f} of the samples lie within 3 standard deviations of their mode (at least "
                             f"{INSIDE} expected after {LOOP_STEPS} steps): is the E-step moving the samples, and the "
                             "generator regressing onto them?")


# ---- 6.5 what a step costs -------------------------------------------------------------------------

def _cost_ref(K, move_z):
    """Forward-pass equivalents of one EMD-K generator step relative to DI's (a backward or a VJP = 2 forwards)."""
    emd = 2 * K + 1 + 2 + ((K + 2 * K) if (move_z and K > 0) else 0)
    return emd / (1 + 1 + 1 + 2)


def _cost_no_vjp(K, move_z):                              # forgets the VJPs of a moving z
    return (2 * K + 3 + (K if move_z else 0)) / 5


def _cost_backward_one(K, move_z):                        # counts a backward as one forward
    return (2 * K + 2 + (2 * K if move_z else 0)) / 4


def _route_cost(K, move_z):
    from emd_lib.distill import evals_per_step

    def total(d):
        return d["teacher"] + d["student"] + d["generator_fwd"] + 2 * d["generator_bwd"]

    return total(evals_per_step("emd", K, move_z)) / total(evals_per_step("di"))


@register("6.5", title="what an EMD-K step costs against a Diff-Instruct step",
          wrong=[_cost_no_vjp, _cost_backward_one],
          points=1, minutes=10, kind="derivation", route=_route_cost, forbid=["emd_lib.distill:evals_per_step"])
def _check_6_5(cost_ratio):
    for K in (1, 4, 8, 16):
        for move_z in (False, True):
            got, want = float(cost_ratio(K, move_z)), _cost_ref(K, move_z)
            if not math.isclose(got, want, rel_tol=1e-9):
                raise ExerciseFailed(f"for K = {K}, move_z = {move_z} you gave {got:.4g}. Count forward-pass "
                                     "equivalents: each Langevin step calls the teacher and the student once; with z "
                                     "moving it also runs g and a vector-Jacobian product through it; the M-step runs g "
                                     "forward and backward. A backward or a VJP costs two forwards. DI: one teacher, "
                                     "one student, one generator forward and backward")
