"""Checks for chapter 5 (the link to VSD)."""
from __future__ import annotations

import math

import torch

from . import ExerciseFailed, expect_close, register


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
            expect_close(f"eps_tilde at gamma = {gamma}", got, gamma * sds)
        except ExerciseFailed as e:
            raise ExerciseFailed(f"{e}. Run the step eps1 = eps0 + gamma (sds - eps0) + sqrt(2 gamma) n, keep the "
                                 "record eta1 = (1 - gamma) eta0 + sqrt(2 gamma) n with eta0 = eps0, and return "
                                 "eps1 - eta1 (simplify it: which terms cancel?)") from None


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
            expect_close(f"drift for K = {K}, gamma = {gamma}", got, _drift_ref(sds_list, gamma))
        except ExerciseFailed as e:
            raise ExerciseFailed(f"{e}. With full cancellation eps_tilde follows d <- (1 - gamma) d + gamma sds_k "
                                 "from d = 0: the last step's gap enters with weight gamma, the first with "
                                 "(1 - gamma)^(K-1) gamma") from None
    # the weights of a constant gap add up to 1 - (1 - gamma)^K
    ones = [torch.ones(1, 1) for _ in range(6)]
    expect_close("drift of a constant gap", drift(ones, 0.3), torch.full((1, 1), 1 - 0.7**6))


# ---- 5.3 the zero-mean term of injected-only cancellation --------------------------------------------

def _setup_5_3():
    from ..mixtures import ring8
    from ..nets import MLPGenerator
    from ..schedules import sample_lam

    teacher = ring8()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(53)
        gen = MLPGenerator(2, 32, 2)
    g = torch.Generator().manual_seed(530)
    z, eps0 = torch.randn(64, 2, generator=g), torch.randn(64, 2, generator=g)
    lam = sample_lam(64, "uniform", -6.0, 6.0, generator=g)
    return gen, teacher, z, eps0, lam


def _flat(loss, gen):
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(gen.parameters()))])


def _eps0_ref(gen, teacher, z, eps0, lam):
    from ..experiments.ch05 import eps0_gradient

    return _flat(eps0_gradient(gen, teacher, z, eps0, lam, "sigma2"), gen)


def _eps0_sign(gen, teacher, z, eps0, lam):              # the regression pulls g towards the target, not away
    return -_eps0_ref(gen, teacher, z, eps0, lam)


def _eps0_no_sigma(gen, teacher, z, eps0, lam):          # forgets the 1 / sigma of the M-step
    a, s = teacher.schedule.alpha_sigma(lam)
    return _flat(-((s**2 * a)[:, None] * eps0 * gen(z)).sum(1).mean(), gen)


@register("5.3", title="the zero-mean eps_0 term of injected-only cancellation", wrong=[_eps0_sign, _eps0_no_sigma])
def _check_5_3(eps0_term):
    gen, teacher, z, eps0, lam = _setup_5_3()
    want = _eps0_ref(gen, teacher, z, eps0, lam)
    got = torch.as_tensor(eps0_term(gen, teacher, z, eps0, lam)).detach().flatten()
    if got.shape != want.shape:
        raise ExerciseFailed(f"return one flat vector of {want.numel()} numbers (every generator parameter), "
                             f"got {got.numel()}")
    cos = float(torch.nn.functional.cosine_similarity(got[None].double(), want[None].double()))
    if cos < -0.99:
        raise ExerciseFailed("your gradient points the opposite way: the M-step loss w ||x_t - alpha g||^2 / "
                             "(2 sigma^2) has gradient -(w alpha / sigma^2) (x_t - alpha g)^T dg/dtheta")
    try:
        expect_close("the gradient", got, want, tol=1e-4)
    except ExerciseFailed as e:
        raise ExerciseFailed(f"{e} (cosine with the right answer {cos:.3f}). The M-step sees x_t - alpha g = "
                             "sigma eps_tilde, so the eps_0 part enters as -(w alpha / sigma) eps_0^T dg/dtheta "
                             "with w = sigma^2, averaged over the batch") from None
