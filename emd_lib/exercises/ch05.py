"""Checks for chapter 5 (the link to VSD)."""
from __future__ import annotations

import functools
import math

import torch

from ..distill import di_generator_loss, emd_generator_loss
from ..experiments.ch05 import eps0_gradient, flat_grad
from ..langevin import LangevinConfig
from . import ExerciseFailed, expect_close, register, ring_networks

_LOSSES = ["emd_lib.distill:emd_generator_loss", "emd_lib.distill:di_generator_loss", "emd_lib.langevin:estep",
           "emd_lib.langevin:log_rho_grads", "emd_lib.distill:Distiller", "emd_lib.experiments.ch05:k1_gradients",
           "emd_lib.experiments.ch05:eps0_gradient"]


def _networks(seed):
    return ring_networks(seed, 64, 3)


_flat_grad = functools.partial(flat_grad, retain_graph=True)     # the flat gradient of a loss in a module's weights


def _emd_ref(gen, teacher, student, z, eps, lam, K, gamma, cancel, noises):
    it = iter(noises)
    return emd_generator_loss(gen, teacher, student, z, eps, lam, LangevinConfig(K=K, gamma_eps=gamma, cancel=cancel),
                              rng=lambda like: next(it))[0]


def _di_ref(gen, teacher, student, z, eps, lam):
    return di_generator_loss(gen, teacher, student, z, eps, lam)[0]


def _loss_of(out):
    loss = torch.as_tensor(out[0] if isinstance(out, (tuple, list)) else out)
    if loss.numel() != 1:
        raise ExerciseFailed(f"return the loss as a scalar (the mean over the batch), got shape {tuple(loss.shape)}")
    if not loss.requires_grad:
        raise ExerciseFailed("the loss must keep its graph through g(z): the check differentiates it")
    return loss.reshape(())


# ---- 5.1 the EMD generator loss ------------------------------------------------------------------------

def _emd_target_not_fixed(gen, teacher, student, z, eps, lam, K, gamma, cancel, noises):   # target moves with theta
    a, s = teacher.schedule.alpha_sigma(lam)
    a, s = a[:, None], s[:, None]
    x = gen(z)
    target = a * x + s * _eps_used(gen, teacher, student, z, eps, lam, K, gamma, cancel, noises)   # not detached
    return (s**2 * (target - a * x) ** 2 / (2 * s**2)).sum(1).mean()


def _eps_used(gen, teacher, student, z, eps, lam, K, gamma, cancel, noises):
    a, s = teacher.schedule.alpha_sigma(lam)
    a, s = a[:, None], s[:, None]
    with torch.no_grad():
        x = gen(z)
        u = eps.clone()
        eta = eps.clone() if cancel == "full" else torch.zeros_like(eps)
        for n in noises[:K]:
            sds = student.eps(a * x + s * u, lam) - teacher.eps(a * x + s * u, lam)
            u = u + gamma * (sds - u) + math.sqrt(2 * gamma) * n
            eta = (1 - gamma) * eta + math.sqrt(2 * gamma) * n
    return u if cancel == "none" else u - eta


def _emd_full_as_injected(gen, teacher, student, z, eps, lam, K, gamma, cancel, noises):   # eta_0 = 0 always
    return _emd_ref(gen, teacher, student, z, eps, lam, K, gamma, "injected" if cancel == "full" else cancel, noises)


def _emd_no_weight(gen, teacher, student, z, eps, lam, K, gamma, cancel, noises):          # w = 1, not sigma^2
    a, s = teacher.schedule.alpha_sigma(lam)
    a, s = a[:, None], s[:, None]
    x = gen(z)
    target = (a * x.detach() + s * _eps_used(gen, teacher, student, z, eps, lam, K, gamma, cancel, noises)).detach()
    return ((target - a * x) ** 2 / (2 * s**2)).sum(1).mean()


def _route_emd(gen, teacher, student, z, eps, lam, K, gamma, cancel, noises):
    from emd_lib.distill import emd_generator_loss
    from emd_lib.langevin import LangevinConfig

    it = iter(noises)
    return emd_generator_loss(gen, teacher, student, z, eps, lam, LangevinConfig(K=K, gamma_eps=gamma, cancel=cancel),
                              rng=lambda like: next(it))[0]


@register("5.1", title="the EMD generator loss: E-step, then the M-step regression",
          wrong=[_emd_target_not_fixed, _emd_full_as_injected, _emd_no_weight],
          points=4, minutes=40, kind="method", route=_route_emd, forbid=_LOSSES)
def _check_5_1(emd_loss):
    for seed, (K, gamma) in ((0, (3, 0.3)), (1, (1, 1.0))):
        gen, teacher, student, z, eps, lam = _networks(seed)
        noises = torch.randn(K, *z.shape, generator=torch.Generator().manual_seed(51 + seed))
        for cancel in ("none", "injected", "full"):
            want = _emd_ref(gen, teacher, student, z, eps, lam, K, gamma, cancel, noises)
            loss = _loss_of(emd_loss(gen, teacher, student, z.clone(), eps.clone(), lam.clone(), K, gamma, cancel,
                                     noises.clone()))
            try:
                expect_close(f"the loss (K = {K}, gamma = {gamma}, cancel = {cancel!r})", loss.detach(), want.detach(),
                             tol=1e-4)
                expect_close(f"its gradient with respect to the generator's weights (K = {K}, cancel = {cancel!r})",
                             _flat_grad(loss, gen), _flat_grad(want, gen), tol=1e-4)
            except ExerciseFailed as e:
                raise ExerciseFailed(f"{e}. E-step: K steps eps <- eps + gamma (sigma ds - eps) + sqrt(2 gamma) n_k "
                                     "with z frozen and the noise record eta of chapter 4 (eta_0 = 0 for 'injected', "
                                     "eps_0 for 'full'); M-step: w ||x_t^K - alpha g(z)||^2 / (2 sigma^2), w = sigma^2, "
                                     "with x_t^K = alpha g(z) + sigma (eps_K - eta_K) held fixed") from None


# ---- 5.2 the K = 1 identity, with your own losses ---------------------------------------------------

def _k1_ref(gen, teacher, student, z, eps, lam, gamma, n, cancel):
    return (_flat_grad(_emd_ref(gen, teacher, student, z, eps, lam, 1, gamma, cancel, n[None]), gen),
            _flat_grad(_di_ref(gen, teacher, student, z, eps, lam), gen))


def _k1_always_full(gen, teacher, student, z, eps, lam, gamma, n, cancel):     # ignores cancel
    return _k1_ref(gen, teacher, student, z, eps, lam, gamma, n, "full")


def _k1_di_sign(gen, teacher, student, z, eps, lam, gamma, n, cancel):
    ge, gd = _k1_ref(gen, teacher, student, z, eps, lam, gamma, n, cancel)
    return ge, -gd


def _k1_no_cancel(gen, teacher, student, z, eps, lam, gamma, n, cancel):       # hands over the chain's eps
    return _k1_ref(gen, teacher, student, z, eps, lam, gamma, n, "none")


def _route_k1(gen, teacher, student, z, eps, lam, gamma, n, cancel):
    from emd_lib.distill import di_generator_loss, emd_generator_loss
    from emd_lib.experiments.ch05 import flat_grad
    from emd_lib.langevin import LangevinConfig

    it = iter([n])
    emd, _ = emd_generator_loss(gen, teacher, student, z, eps, lam, LangevinConfig(K=1, gamma_eps=gamma, cancel=cancel),
                                rng=lambda like: next(it))
    return flat_grad(emd, gen, retain_graph=True), flat_grad(di_generator_loss(gen, teacher, student, z, eps, lam)[0], gen)


@register("5.2", title="the K = 1 identity, and what breaks it, with your own losses",
          wrong=[_k1_always_full, _k1_di_sign, _k1_no_cancel],
          points=3, minutes=25, kind="method", route=_route_k1, forbid=_LOSSES)
def _check_5_2(k1_gradients):
    for seed, gamma in ((2, 1.0), (3, 0.3)):
        gen, teacher, student, z, eps, lam = _networks(seed)
        n = torch.randn(z.shape, generator=torch.Generator().manual_seed(52 + seed))
        g_eps0 = _flat_grad(eps0_gradient(gen, teacher, z, eps, lam, "sigma2"), gen)
        for cancel in ("full", "injected"):
            want_e, want_d = _k1_ref(gen, teacher, student, z, eps, lam, gamma, n, cancel)
            out = k1_gradients(gen, teacher, student, z.clone(), eps.clone(), lam.clone(), gamma, n.clone(), cancel)
            if not (isinstance(out, (tuple, list)) and len(out) == 2):
                raise ExerciseFailed("return a pair of flat gradients (EMD-1, Diff-Instruct)")
            ge, gd = (torch.as_tensor(v).detach().flatten() for v in out)
            try:
                expect_close("your Diff-Instruct gradient", gd, want_d, tol=1e-4)
            except ExerciseFailed as e:
                raise ExerciseFailed(f"{e}: the surrogate of exercise 2.3, with w = sigma^2") from None
            try:
                expect_close(f"your EMD-1 gradient (gamma = {gamma}, cancel = {cancel!r})", ge, want_e, tol=1e-4)
            except ExerciseFailed as e:
                raise ExerciseFailed(f"{e}: your loss of exercise 5.1 with K = 1, this gamma and cancel, and the "
                                     "noise n") from None
            # the identity, and what the initial noise adds, on the student's own numbers
            extra = torch.zeros_like(gd) if cancel == "full" else (1 - gamma) * g_eps0
            expect_close(f"EMD-1 minus gamma times Diff-Instruct (gamma = {gamma}, cancel = {cancel!r})",
                         ge - gamma * gd, extra, tol=1e-4)


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
    return _flat(eps0_gradient(gen, teacher, z, eps0, lam, "sigma2"), gen)


def _eps0_sign(gen, teacher, z, eps0, lam):              # the regression pulls g towards the target, not away
    return -_eps0_ref(gen, teacher, z, eps0, lam)


def _eps0_no_sigma(gen, teacher, z, eps0, lam):          # forgets the 1 / sigma of the M-step
    a, s = teacher.schedule.alpha_sigma(lam)
    return _flat(-((s**2 * a)[:, None] * eps0 * gen(z)).sum(1).mean(), gen)


def _route_eps0(gen, teacher, z, eps0, lam):
    from emd_lib.experiments.ch05 import eps0_gradient, flat_grad

    return flat_grad(eps0_gradient(gen, teacher, z, eps0, lam, "sigma2"), gen)


@register("5.3", title="the zero-mean eps_0 term of injected-only cancellation", wrong=[_eps0_sign, _eps0_no_sigma],
          points=2, minutes=20, kind="method", route=_route_eps0, forbid=_LOSSES)
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


# ---- 5.4 how many steps for a given share of the drift -------------------------------------------

def _steps_ref(gamma, f):
    return math.ceil(math.log(1 - f) / math.log(1 - gamma))


def _steps_floor(gamma, f):
    return math.floor(math.log(1 - f) / math.log(1 - gamma))


def _steps_wrong_share(gamma, f):                            # solves (1 - gamma)^K = f instead of 1 - f
    return math.ceil(math.log(f) / math.log(1 - gamma))


def _steps_no_decay(gamma, f):                               # K gamma >= f: the weights without their decay
    return math.ceil(f / gamma)


def _route_steps(gamma, f):
    """Measured with the library's E-step: a constant score gap, K = 1, 2, ... until the share is reached."""
    from emd_lib.langevin import LangevinConfig as _C, estep as _estep
    from emd_lib.schedules import VP as _VP

    class Const:
        schedule = _VP

        def __init__(self, v):
            self.v = v

        def eps(self, x_t, lam, cond=None):
            return torch.full_like(x_t, self.v)

    for K in range(1, 10_000):
        res = _estep(torch.zeros_like, Const(0.0), Const(1.0), torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1),
                     _C(K=K, gamma_eps=gamma, cancel="full"))
        if float(res.eps) >= f:
            return K


@register("5.4", title="the Langevin steps EMD needs for a share of the score gap",
          wrong=[_steps_floor, _steps_wrong_share, _steps_no_decay],
          points=1, minutes=10, kind="derivation", route=_route_steps,
          forbid=["emd_lib.langevin:estep", "emd_lib.distill:emd_generator_loss"])
def _check_5_4(steps_for_share):
    for gamma, f in ((0.3, 0.9), (0.3, 0.5), (0.1, 0.99), (0.5, 0.8), (0.7, 0.95), (0.05, 0.6)):
        want = _steps_ref(gamma, f)
        got = steps_for_share(gamma, f)
        if not (isinstance(got, (int, float)) and not isinstance(got, bool)) or int(got) != want:
            raise ExerciseFailed(f"for gamma = {gamma} and a share f = {f} you gave {got!r}. With full cancellation "
                                 "and a constant gap, the M-step sees (1 - (1 - gamma)^K) sigma ds after K steps: "
                                 "return the smallest whole K with that weight >= f")
