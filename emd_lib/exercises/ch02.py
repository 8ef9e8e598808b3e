"""Checks for the exercises of chapter 2 (mode seeking vs mode covering)."""
from __future__ import annotations

import functools
import math

import torch

from ..distill import di_generator_loss, student_loss
from ..experiments.ch05 import flat_grad
from . import ExerciseFailed, expect_close, register, ring_networks


# ---- 2.1: the forward-KL fit of a mixture by an isotropic Gaussian -------------------------------------

def _iso_ref(weights, means, stds):
    d = means.shape[1]
    m = (weights[:, None] * means).sum(0)
    # E|x|^2 = sum_k w_k (d s_k^2 + |mu_k|^2); the best s^2 is tr Cov / d
    s2 = ((weights * (d * stds**2 + (means**2).sum(1))).sum() - (m**2).sum()) / d
    return m, s2


def _iso_first_axis(weights, means, stds):                  # the 1D formula on the first coordinate only
    m = (weights[:, None] * means).sum(0)
    return m, (weights * (stds**2 + means[:, 0] ** 2)).sum() - m[0] ** 2


def _iso_no_d(weights, means, stds):                        # the trace, not divided by d
    m, s2 = _iso_ref(weights, means, stds)
    return m, s2 * means.shape[1]


def _iso_no_within(weights, means, stds):                   # forgets the components' own spread
    d = means.shape[1]
    m = (weights[:, None] * means).sum(0)
    return m, ((weights * (means**2).sum(1)).sum() - (m**2).sum()) / d


def _route_iso(weights, means, stds):                       # the library's full-covariance moment matching
    from emd_lib.divergences import forward_kl_gaussian_fit
    from emd_lib.teachers import GaussianMixture

    m, cov = forward_kl_gaussian_fit(GaussianMixture(weights, means, stds))
    return m, torch.diagonal(cov).mean()


@register("2.1", title="the forward-KL fit of a mixture by an isotropic Gaussian",
          wrong=[_iso_first_axis, _iso_no_d, _iso_no_within],
          points=2, minutes=15, kind="derivation", route=_route_iso,
          forbid=["emd_lib.divergences:forward_kl_gaussian_fit", "emd_lib.divergences:mixture_moments"])
def check_isotropic_fit(fn):
    g = torch.Generator().manual_seed(21)
    cases = [(torch.tensor([0.7, 0.3]), torch.tensor([[-1.5], [1.5]]), torch.tensor([0.4, 0.4]))]
    for K, d in ((3, 2), (4, 5)):
        w = torch.rand(K, generator=g) + 0.2
        cases.append((w / w.sum(), 2 * torch.randn(K, d, generator=g), 0.2 + torch.rand(K, generator=g)))
    for w, mu, sd in cases:
        out = fn(w.clone(), mu.clone(), sd.clone())
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            raise ExerciseFailed("return a pair (mean (d,), variance s^2)")
        m_ref, s2_ref = _iso_ref(w, mu, sd)
        m, s2 = torch.as_tensor(out[0], dtype=torch.float64).reshape(-1), float(torch.as_tensor(out[1]))
        if m.shape != m_ref.shape or not torch.allclose(m, m_ref.double(), atol=1e-4):
            raise ExerciseFailed(f"wrong mean for {len(w)} components in {mu.shape[1]}D: the mean is sum_k w_k mu_k")
        if not abs(s2 - float(s2_ref)) <= 1e-4 * max(1.0, float(s2_ref)):   # also false for NaN
            raise ExerciseFailed(f"wrong variance for {len(w)} components in {mu.shape[1]}D (you gave {s2:.4g}). With "
                                 "S = s^2 I, minimise log det S + tr(S^-1 Cov_p) over s^2; Cov_p follows from the law "
                                 "of total variance")


# ---- 2.2: a Monte-Carlo estimate of the reverse KL ---------------------------------------------
def _wrong_rkl_no_entropy(q_mean, q_std, log_p, n, generator):
    x = q_mean + q_std * torch.randn(n, generator=generator)
    return float(-log_p(x).mean())                          # forgets E_q[log q]


def _wrong_rkl_sign(q_mean, q_std, log_p, n, generator):
    x = q_mean + q_std * torch.randn(n, generator=generator)
    log_q = -0.5 * ((x - q_mean) / q_std) ** 2 - math.log(q_std) - 0.5 * math.log(2 * math.pi)
    return float((log_p(x) - log_q).mean())                 # sign flipped


def _route_rkl(q_mean, q_std, log_p, n, generator):                      # the library's Gaussian log density
    from emd_lib.divergences import gaussian_log_prob

    x = q_mean + q_std * torch.randn(n, generator=generator)
    log_q = gaussian_log_prob(x[:, None], q_mean.reshape(1), (q_std**2).reshape(1, 1))
    return float((log_q - log_p(x)).mean())


@register("2.2", title="Monte-Carlo reverse KL", wrong=[_wrong_rkl_no_entropy, _wrong_rkl_sign],
          points=1, minutes=10, kind="derivation", route=_route_rkl,
          forbid=["emd_lib.divergences:kl_monte_carlo", "emd_lib.divergences:gaussian_log_prob",
                  "emd_lib.teachers:GaussianMixture.log_prob", "emd_lib.divergences:reverse_kl_gaussian_fit"])
def check_reverse_kl(fn):
    # KL(N(a, s^2) || N(0, 1)) = -log s + (s^2 + a^2 - 1) / 2
    for a, s in ((1.0, 0.5), (-0.5, 1.5), (0.0, 1.0)):
        def log_p(x):
            return -0.5 * x**2 - 0.5 * math.log(2 * math.pi)
        est = float(fn(torch.tensor(a), torch.tensor(s), log_p, 40000, torch.Generator().manual_seed(0)))
        exact = -math.log(s) + (s**2 + a**2 - 1) / 2
        if not abs(est - exact) <= 0.03:   # also false for NaN
            raise ExerciseFailed(f"for q = N({a}, {s}^2) and p = N(0, 1) the reverse KL is {exact:.3f}, your estimate "
                                 f"is {est:.3f}; average log q(x) - log p(x) over x ~ q")


# ---- shared: a random generator and student score facing the exact ring ---------------------------

def _networks(seed):
    return ring_networks(seed, 64, 1)


_grads = functools.partial(flat_grad, retain_graph=True)     # the flat gradient of a loss in a module's weights


def _scalar_loss(out, what):
    loss = out[0] if isinstance(out, (tuple, list)) else out
    loss = torch.as_tensor(loss)
    if loss.ndim != 0 and loss.numel() != 1:
        raise ExerciseFailed(f"return the {what} as a scalar (the mean over the batch), got shape {tuple(loss.shape)}")
    if not loss.requires_grad:
        raise ExerciseFailed(f"the {what} must keep its graph: the check differentiates it")
    return loss.reshape(())


# ---- 2.3: the Diff-Instruct surrogate for a network generator --------------------------------------

def _di_ref(gen, teacher, student, z, eps, lam):
    return di_generator_loss(gen, teacher, student, z, eps, lam, "sigma2")[0]


def _wrong_di_sign(gen, teacher, student, z, eps, lam):               # moves g away from the teacher
    return -_di_ref(gen, teacher, student, z, eps, lam)


def _wrong_di_no_alpha(gen, teacher, student, z, eps, lam):           # drops the alpha of d x_t / d x
    a, s = teacher.schedule.alpha_sigma(lam)
    x = gen(z)
    x_t = a[:, None] * x.detach() + s[:, None] * eps
    with torch.no_grad():
        ds = (student.eps(x_t, lam) - teacher.eps(x_t, lam)) / s[:, None]
    return -((s**2)[:, None] * ds * x).sum(1).mean()


def _wrong_di_grad_through_gap(gen, teacher, student, z, eps, lam):   # the score gap not held fixed
    a, s = teacher.schedule.alpha_sigma(lam)
    x = gen(z)
    x_t = a[:, None] * x + s[:, None] * eps
    ds = (student.eps(x_t, lam) - teacher.eps(x_t, lam)) / s[:, None]
    return -((s**2 * a)[:, None] * ds * x).sum(1).mean()


def _route_di(gen, teacher, student, z, eps, lam):
    from emd_lib.distill import di_generator_loss

    return di_generator_loss(gen, teacher, student, z, eps, lam)[0]


_LOSSES = ["emd_lib.distill:di_generator_loss", "emd_lib.distill:emd_generator_loss",
           "emd_lib.experiments.ch05:k1_gradients", "emd_lib.distill:Distiller"]


@register("2.3", title="the Diff-Instruct surrogate of a network generator",
          wrong=[_wrong_di_sign, _wrong_di_no_alpha, _wrong_di_grad_through_gap],
          points=3, minutes=25, kind="method", route=_route_di, forbid=_LOSSES)
def check_di_surrogate(fn):
    for seed in (0, 1):
        gen, teacher, student, z, eps, lam = _networks(seed)
        want = _grads(_di_ref(gen, teacher, student, z, eps, lam), gen)
        loss = _scalar_loss(fn(gen, teacher, student, z.clone(), eps.clone(), lam.clone()), "loss")
        got = _grads(loss, gen)
        if any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters()) or \
                float(_grads(loss, student).abs().max()) > 0:
            raise ExerciseFailed("the loss changes the student score's weights: the score gap is a constant "
                                 "(compute it under torch.no_grad())")
        if torch.allclose(got, -want, atol=1e-6, rtol=1e-4):
            raise ExerciseFailed("sign error: descending the loss must move g(z) along +ds (towards the teacher)")
        try:
            expect_close("the gradient with respect to the generator's weights", got, want, tol=1e-4)
        except ExerciseFailed as e:
            raise ExerciseFailed(f"{e}. The surrogate's gradient is -mean(w alpha ds^T dg/dtheta), w = sigma^2, "
                                 "ds = s_teacher - s_student at x_t = alpha g(z) + sigma eps, held fixed; the "
                                 "score of an eps-predictor is -epshat / sigma") from None


# ---- 2.4: the student score's denoising score-matching loss -------------------------------------------

def _dsm_ref(student, gen, z, eps, lam):
    return student_loss(student, gen, student.schedule, z, eps, lam)


def _wrong_dsm_not_detached(student, gen, z, eps, lam):             # trains the generator too
    a, s = student.schedule.alpha_sigma(lam)
    x_t = a[:, None] * gen(z) + s[:, None] * eps
    return ((student.eps(x_t, lam) - eps) ** 2).sum(1).mean()


def _wrong_dsm_mean(student, gen, z, eps, lam):                     # the mean over coordinates, not their sum
    return _dsm_ref(student, gen, z, eps, lam) / z.shape[1]


def _wrong_dsm_x0(student, gen, z, eps, lam):                       # regresses the clean sample on eps's output
    a, s = student.schedule.alpha_sigma(lam)
    with torch.no_grad():
        x = gen(z)
    x_t = a[:, None] * x + s[:, None] * eps
    return ((student.eps(x_t, lam) - x) ** 2).sum(1).mean()


def _route_dsm(student, gen, z, eps, lam):
    from emd_lib.distill import student_loss

    return student_loss(student, gen, student.schedule, z, eps, lam)


@register("2.4", title="the student score's denoising score-matching loss",
          wrong=[_wrong_dsm_not_detached, _wrong_dsm_mean, _wrong_dsm_x0],
          points=2, minutes=15, kind="method", route=_route_dsm,
          forbid=["emd_lib.distill:student_loss", "emd_lib.distill:Distiller"])
def check_dsm(fn):
    for seed in (2, 3):
        gen, teacher, student, z, eps, lam = _networks(seed)
        want = _dsm_ref(student, gen, z, eps, lam)
        loss = _scalar_loss(fn(student, gen, z.clone(), eps.clone(), lam.clone()), "loss")
        if float(_grads(loss, gen).abs().max()) > 0:
            raise ExerciseFailed("the loss trains the generator too: the student score learns from detached "
                                 "generator samples (compute g(z) under torch.no_grad())")
        try:
            expect_close("the loss", loss.detach(), want.detach(), tol=1e-4)
            expect_close("its gradient with respect to the student's weights", _grads(loss, student),
                         _grads(want, student), tol=1e-4)
        except ExerciseFailed as e:
            raise ExerciseFailed(f"{e}. Noise the generator's sample, x_t = alpha g(z) + sigma eps, and average "
                                 "||epshat(x_t, lam) - eps||^2 over the batch (a sum over coordinates)") from None


# ---- 2.5: an experiment: the light mode's basin under Diff-Instruct ------------------------------------

LIGHT, HEAVY = 3.0, -1.0


def _experiment_teacher():
    from ..teachers import GaussianMixture

    return GaussianMixture([0.8, 0.2], [[HEAVY], [LIGHT]], [0.3, 0.3])


def _di_gaussian_ref(teacher, m0, lam_min, lam_max, steps, lr, generator):
    """Diff-Instruct for x = m + s z (one fit per entry of m0) with the exact student score, plain
    gradient descent on (m, log s)."""
    m = m0.clone().double().requires_grad_(True)
    ls = torch.zeros_like(m).requires_grad_(True)
    S, B = m.shape[0], 128
    for _ in range(steps):
        z = torch.randn(S, B, generator=generator, dtype=torch.float64)
        eps = torch.randn(S, B, generator=generator, dtype=torch.float64)
        lam = lam_min + (lam_max - lam_min) * torch.rand(S, B, generator=generator, dtype=torch.float64)
        a2, s2 = torch.sigmoid(lam), torch.sigmoid(-lam)
        a = a2.sqrt()
        x = m[:, None] + ls.exp()[:, None] * z
        x_t = a * x.detach() + s2.sqrt() * eps
        with torch.no_grad():
            sp = teacher.score(x_t.reshape(-1, 1).float(), lam.reshape(-1).float()).reshape(S, B).double()
            sq = -(x_t - a * m[:, None]) / (a2 * (2 * ls).exp()[:, None] + s2)     # q_t = N(alpha m, alpha^2 s^2 + sigma^2)
        loss = -(s2 * a * (sp - sq) * x).mean(1).sum()
        gm, gl = torch.autograd.grad(loss, (m, ls))
        with torch.no_grad():
            m -= lr * gm
            ls -= lr * gl
    return m.detach(), ls.exp().detach()


def _wrong_fit_forward(teacher, m0, lam_min, lam_max, steps, lr, generator):    # the forward KL: moments
    mean = 0.8 * HEAVY + 0.2 * LIGHT
    var = 0.09 + 0.8 * HEAVY**2 + 0.2 * LIGHT**2 - mean**2
    return torch.full_like(m0, mean), torch.full_like(m0, math.sqrt(var))


def _wrong_fit_no_student(teacher, m0, lam_min, lam_max, steps, lr, generator):   # ds = teacher score only
    m = m0.clone().double().requires_grad_(True)
    ls = torch.zeros_like(m).requires_grad_(True)
    for _ in range(steps):
        z = torch.randn(m.shape[0], 128, generator=generator, dtype=torch.float64)
        lam = lam_min + (lam_max - lam_min) * torch.rand(m.shape[0], 128, generator=generator, dtype=torch.float64)
        a, s = torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()
        x = m[:, None] + ls.exp()[:, None] * z
        x_t = a * x.detach() + s * torch.randn(x.shape, generator=generator, dtype=torch.float64)
        with torch.no_grad():
            sp = teacher.score(x_t.reshape(-1, 1).float(), lam.reshape(-1).float()).reshape(x.shape).double()
        gm, gl = torch.autograd.grad(-(s**2 * a * sp * x).mean(1).sum(), (m, ls))
        with torch.no_grad():
            m -= lr * gm
            ls -= lr * gl
    return m.detach(), ls.exp().detach()


def _route_fit(teacher, m0, lam_min, lam_max, steps, lr, generator):
    from emd_lib.divergences import reverse_kl_gaussian_fit

    fits = [reverse_kl_gaussian_fit(teacher, [float(m)], 1.0, steps=steps, lams=torch.linspace(lam_min, lam_max, 13),
                                    generator=generator) for m in m0]
    return torch.stack([f["mean"][0] for f in fits]), torch.stack([f["cov"][0, 0].sqrt() for f in fits])


#: the bands: the light mode's share of the starts, measured with the reference fit (3 seeds: 7/17 and 0/17)
BANDS = {2.0: (0.25, 0.55), -6.0: (0.0, 0.07)}


@register("2.5", title="experiment: the light mode's basin under Diff-Instruct",
          wrong=[_wrong_fit_forward, _wrong_fit_no_student],
          points=3, minutes=30, kind="experiment", route=_route_fit,
          forbid=["emd_lib.divergences:reverse_kl_gaussian_fit", "emd_lib.distill:Distiller",
                  "emd_lib.distill:di_generator_loss", "emd_lib.experiments.ch02:run_one"])
def check_light_mode_basin(fn):
    teacher = _experiment_teacher()
    m0 = torch.linspace(-3.0, 5.0, 17)
    for lam_min, (lo, hi) in BANDS.items():
        out = fn(teacher, m0.clone(), lam_min, 6.0, 400, 0.5, torch.Generator().manual_seed(25))
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            raise ExerciseFailed("return a pair (final means, final standard deviations), one per start")
        m, s = (torch.as_tensor(v, dtype=torch.float64).detach().flatten() for v in out)
        if m.shape != m0.shape or s.shape != m0.shape:
            raise ExerciseFailed(f"return one mean and one standard deviation per start ({len(m0)} each)")
        off = ((m - HEAVY).abs() > 0.5) & ((m - LIGHT).abs() > 0.5)
        if not torch.isfinite(m).all() or off.any():
            raise ExerciseFailed(f"with lam in [{lam_min:g}, 6] some fits end at {m[off].tolist()[:3]}, on no mode: "
                                 "the reverse KL is mode seeking, each fit should settle on one mode (check the "
                                 "sign and the student score of q_t = N(alpha m, alpha^2 s^2 + sigma^2))")
        if not ((s > 0.15) & (s < 0.8)).all():
            raise ExerciseFailed(f"the fitted standard deviations {s.min():.3g} to {s.max():.3g} are not a mode's "
                                 "width (0.3): did you drop the student score's term?")
        frac = float(((m - LIGHT).abs() <= 0.5).double().mean())
        if not lo <= frac <= hi:
            raise ExerciseFailed(f"with lam in [{lam_min:g}, 6], {frac:.2f} of the starts end on the light mode; the "
                                 f"measured band is [{lo}, {hi}]. Plain gradient descent on (m, log s) with the "
                                 "given steps and learning rate, w = sigma^2, lam uniform in the range")
