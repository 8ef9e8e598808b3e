"""Checks for chapter 5 (the link to VSD)."""
from __future__ import annotations

import math

import torch

from . import ExerciseFailed, register


def _close(name, got, want, tol=1e-5):
    got = torch.as_tensor(got, dtype=torch.float64)
    want = torch.as_tensor(want, dtype=torch.float64)
    if got.shape != want.shape:
        raise ExerciseFailed(f"{name} should have shape {tuple(want.shape)}, got {tuple(got.shape)}")
    err = float((got - want).abs().max())
    scale = float(want.abs().max()) + 1e-12
    if not err <= tol * max(scale, 1.0):
        raise ExerciseFailed(f"{name} is off by up to {err:.3g}")


# ---- 5.1 the M-step's eps after one Langevin step ---------------------------------------------------

def _k1_no_cancel(eps0, sds, n, gamma):                  # hands over the chain's eps as it is
    return eps0 + gamma * (sds - eps0) + math.sqrt(2 * gamma) * n


def _k1_injected_only(eps0, sds, n, gamma):              # eta_0 = 0: the initial noise stays
    return (1 - gamma) * eps0 + gamma * sds


def _k1_forgets_gamma(eps0, sds, n, gamma):              # right only at gamma = 1
    return sds


@register("5.1", title="EMD-1's M-step eps with full noise cancellation",
          wrong=[_k1_no_cancel, _k1_injected_only, _k1_forgets_gamma])
def _check_5_1(k1_eps_tilde):
    g = torch.Generator().manual_seed(51)
    eps0, sds, n = (torch.randn(16, 2, generator=g) for _ in range(3))
    for gamma in (0.3, 1.0, 0.05):
        got = k1_eps_tilde(eps0.clone(), sds.clone(), n.clone(), gamma)
        try:
            _close(f"eps_tilde at gamma = {gamma}", got, gamma * sds)
        except ExerciseFailed as e:
            raise ExerciseFailed(f"{e}. Run the step eps1 = eps0 + gamma (sds - eps0) + sqrt(2 gamma) n, keep the "
                                 "record eta1 = (1 - gamma) eta0 + sqrt(2 gamma) n with eta0 = eps0, and return "
                                 "eps1 - eta1 (it should come out as gamma * sds)") from None


# ---- 5.2 the drift of K steps -------------------------------------------------------------------------

def _drift_no_decay(sds_list, gamma):                     # forgets that later steps shrink earlier ones
    return sum(gamma * s for s in sds_list)


def _drift_reversed(sds_list, gamma):                     # the decay applied to the wrong end
    return sum((1 - gamma) ** k * gamma * s for k, s in enumerate(sds_list))


def _drift_ref(sds_list, gamma):
    K = len(sds_list)
    return sum((1 - gamma) ** (K - 1 - k) * gamma * s for k, s in enumerate(sds_list))


@register("5.2", title="the pure drift that K Langevin steps hand to the M-step",
          wrong=[_drift_no_decay, _drift_reversed])
def _check_5_2(drift):
    g = torch.Generator().manual_seed(52)
    for K, gamma in ((1, 0.3), (4, 0.3), (8, 0.5)):
        sds_list = [torch.randn(5, 2, generator=g) for _ in range(K)]
        got = drift([s.clone() for s in sds_list], gamma)
        try:
            _close(f"drift for K = {K}, gamma = {gamma}", got, _drift_ref(sds_list, gamma))
        except ExerciseFailed as e:
            raise ExerciseFailed(f"{e}. With full cancellation eps_tilde follows d <- (1 - gamma) d + gamma sds_k "
                                 "from d = 0: the last step's gap enters with weight gamma, the first with "
                                 "(1 - gamma)^(K-1) gamma") from None
    # the weights of a constant gap add up to 1 - (1 - gamma)^K
    ones = [torch.ones(1, 1) for _ in range(6)]
    _close("drift of a constant gap", drift(ones, 0.3), torch.full((1, 1), 1 - 0.7**6))


# ---- 5.3 the Diff-Instruct gradient from scratch -----------------------------------------------------

def _setup_5_3():
    from ..mixtures import ring8
    from ..nets import MLPGenerator, MLPScore
    from ..schedules import sample_lam
    from ..teachers import NetworkTeacher

    teacher = ring8()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(53)
        gen = MLPGenerator(2, 32, 2)
        student = NetworkTeacher(MLPScore(2, 32, 2, schedule=teacher.schedule), teacher.schedule, predicts="eps")
    g = torch.Generator().manual_seed(530)
    z, eps = torch.randn(64, 2, generator=g), torch.randn(64, 2, generator=g)
    lam = sample_lam(64, "uniform", -6.0, 6.0, generator=g)
    return gen, teacher, student, z, eps, lam


def _di_ref(gen, teacher, student, z, eps, lam):
    from ..distill import di_generator_loss

    loss, _ = di_generator_loss(gen, teacher, student, z, eps, lam, "sigma2")
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(gen.parameters()))])


def _di_sign(gen, teacher, student, z, eps, lam):        # descends the wrong way (student minus teacher)
    return -_di_ref(gen, teacher, student, z, eps, lam)


def _di_no_alpha(gen, teacher, student, z, eps, lam):    # forgets d x_t / d g = alpha
    a, s = teacher.schedule.alpha_sigma(lam)
    a, s = a[:, None], s[:, None]
    x = gen(z)
    x_t = a * x.detach() + s * eps
    with torch.no_grad():
        ds = teacher.score(x_t, lam) - student.score(x_t, lam)
    loss = -(s**2 * ds * x).sum(1).mean()
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(gen.parameters()))])


@register("5.3", title="the Diff-Instruct / VSD generator gradient from scratch", wrong=[_di_sign, _di_no_alpha])
def _check_5_3(di_gradient):
    gen, teacher, student, z, eps, lam = _setup_5_3()
    want = _di_ref(gen, teacher, student, z, eps, lam)
    got = di_gradient(gen, teacher, student, z, eps, lam)
    got = torch.as_tensor(got).detach().flatten()
    if got.shape != want.shape:
        raise ExerciseFailed(f"return one flat vector of {want.numel()} numbers (every generator parameter), "
                             f"got {got.numel()}")
    cos = float(torch.nn.functional.cosine_similarity(got[None].double(), want[None].double()))
    if cos < -0.99:
        raise ExerciseFailed("your gradient points the opposite way: the gradient is -w alpha ds^T dg/dtheta with "
                             "ds = s_teacher - s_student (descending it moves samples up the teacher's score)")
    try:
        _close("the gradient", got, want, tol=1e-4)
    except ExerciseFailed as e:
        raise ExerciseFailed(f"{e} (cosine with the right answer {cos:.3f}). Use x_t = alpha g(z) + sigma eps with "
                             "g detached inside x_t, the weight w = sigma^2, and the factor alpha from "
                             "d x_t / d g") from None
