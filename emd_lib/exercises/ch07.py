"""Checks for chapter 7 (real images)."""
from __future__ import annotations

import torch

from . import ExerciseFailed, expect_close, register
from ..langevin import LangevinConfig, estep


# ---- 7.1 the teacher's training loss ------------------------------------------------------------------

def _loss_unweighted(denoise, x, cond, lam, eps):           # plain x0 regression: no 1 / c_out
    alpha, sigma = torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()
    x_t = alpha[:, None, None, None] * x + sigma[:, None, None, None] * eps
    return ((denoise(x_t, lam, cond) - x) ** 2).mean()


def _loss_swapped(denoise, x, cond, lam, eps):              # alpha and sigma swapped in x_t
    alpha, sigma = torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()
    x_t = sigma[:, None, None, None] * x + alpha[:, None, None, None] * eps
    s = torch.exp(-0.5 * lam)[:, None, None, None]
    c_out = s / (s**2 + 1).sqrt()
    return (((denoise(x_t, lam, cond) - x) / c_out) ** 2).mean()


def _route_teacher_loss(denoise, x, cond, lam, eps):
    return denoise.loss(x, cond, lam, eps)


@register("7.1", title="the teacher's preconditioned denoising loss", wrong=[_loss_unweighted, _loss_swapped],
          points=2, minutes=20, kind="method", route=_route_teacher_loss, forbid=["emd_lib.images.unet:UNet.loss"])
def _check_7_1(loss_fn):
    from ..images.unet import UNet

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(71)
        net = UNet(channels=(8, 16), emb_dim=16, n_freq=4, attention=False, sigma_data=1.0)
        with torch.no_grad():
            for p in net.parameters():                     # weights for the zero-initialised layers too
                if not p.any():
                    p.normal_(0, 0.1)
    g = torch.Generator().manual_seed(710)
    x = torch.rand(6, 1, 8, 8, generator=g) * 2 - 1
    eps = torch.randn(6, 1, 8, 8, generator=g)
    lam = torch.tensor([-6.0, -2.0, 0.0, 1.0, 3.0, 6.0])
    cond = torch.arange(6)
    with torch.no_grad():
        got = loss_fn(net, x.clone(), cond, lam.clone(), eps.clone())
        want = net.loss(x, cond, lam, eps)
    try:
        expect_close("the loss", torch.as_tensor(got).reshape(()), want, 1e-4)
    except ExerciseFailed as e:
        raise ExerciseFailed(f"{e}. Noise the data as x_t = alpha x + sigma eps (VP: alpha^2 = sigmoid(lam)), then "
                             "average ((D(x_t, lam, c) - x) / c_out)^2 over every pixel, with c_out = s sd / "
                             "sqrt(s^2 + sd^2), s = exp(-lam / 2), sd = 1") from None


# ---- 7.2 class coverage --------------------------------------------------------------------------------

def _coverage_any(pred, n_classes, cover_frac):            # counts every class that got a single sample
    return int((torch.bincount(pred, minlength=n_classes) > 0).sum())


def _coverage_no_share(pred, n_classes, cover_frac):       # compares the share with cover_frac itself
    share = torch.bincount(pred, minlength=n_classes).double() / len(pred)
    return int((share >= cover_frac).sum())


def _coverage_strict(pred, n_classes, cover_frac):         # a share exactly at the threshold is not counted
    share = torch.bincount(pred, minlength=n_classes).double() / len(pred)
    return int((share > cover_frac / n_classes).sum())


def _route_coverage(pred, n_classes, cover_frac):
    from emd_lib.images.metrics import class_coverage

    return class_coverage(pred, lambda x: torch.nn.functional.one_hot(x, n_classes).float(), n_classes, cover_frac)[0]


@register("7.2", title="classes covered", wrong=[_coverage_any, _coverage_no_share, _coverage_strict],
          points=1, minutes=10, kind="tool", route=_route_coverage,
          forbid=["emd_lib.images.metrics:class_coverage", "emd_lib.metrics:mixture_report"])
def _check_7_2(coverage):
    g = torch.Generator().manual_seed(72)
    cases = [(torch.arange(100) % 10, 0.2),                                       # all ten, evenly
             (torch.cat([torch.zeros(91, dtype=torch.long), torch.arange(1, 10)]), 0.2),   # one sample each for 1..9
             (torch.randint(0, 4, (200,), generator=g), 0.2),                    # four classes
             (torch.cat([torch.randint(0, 10, (300,), generator=g), torch.zeros(700, dtype=torch.long)]), 0.2),
             # exactly on the threshold: 10 of 200 samples is a share of 0.05 = 0.5 / 10 (exact in floating point)
             (torch.cat([torch.full((10,), 0), torch.full((9,), 1), torch.full((11,), 2), torch.full((170,), 3)]), 0.5)]
    for pred, frac in cases:
        share = torch.bincount(pred, minlength=10).double() / len(pred)
        want = int((share >= frac / 10).sum())
        got = coverage(pred.clone(), 10, frac)
        if int(got) != want:
            raise ExerciseFailed(f"for predicted shares {[round(v, 3) for v in share.tolist()]} and cover_frac = "
                                 f"{frac} you count {got} classes, expected {want}. A class is covered when its share "
                                 "of the samples is at least cover_frac times an even share, cover_frac / n_classes")


# ---- 7.3 k-NN precision --------------------------------------------------------------------------------

def _precision_fake_radii(real, fake, k):                  # balls around the fake points: that is recall's manifold
    r = torch.cdist(fake, fake).kthvalue(k + 1, dim=1).values
    return float((torch.cdist(real, fake) <= r[None]).any(1).float().mean())


def _precision_self_neighbour(real, fake, k):              # forgets that the nearest neighbour of a point is itself
    r = torch.cdist(real, real).kthvalue(k, dim=1).values
    return float((torch.cdist(fake, real) <= r[None]).any(1).float().mean())


def _route_precision(real, fake, k):
    from emd_lib.metrics import knn_precision_recall

    return knn_precision_recall(real, fake, k=k)[0]


@register("7.3", title="k-NN precision in feature space", wrong=[_precision_fake_radii, _precision_self_neighbour],
          points=2, minutes=15, kind="tool", route=_route_precision,
          forbid=["emd_lib.metrics:knn_precision_recall"])
def _check_7_3(precision):
    from ..metrics import knn_precision_recall

    g = torch.Generator().manual_seed(73)
    real = torch.randn(200, 5, generator=g)
    for shift, spread in ((0.0, 1.0), (1.0, 0.5), (0.5, 2.0)):
        fake = shift + spread * torch.randn(150, 5, generator=g)
        want, _ = knn_precision_recall(real, fake, k=3)
        got = precision(real.clone(), fake.clone(), 3)
        if not abs(float(got) - want) <= 1e-6:   # also false for NaN
            raise ExerciseFailed(f"precision for fakes shifted by {shift} with spread {spread} is {float(got):.4f}, "
                                 f"expected {want:.4f}. The manifold is the union of balls around the REAL points, "
                                 "each with radius the distance to its k-th nearest real neighbour (not counting "
                                 "itself); precision is the fraction of fakes inside it")


# ---- 7.4 the E-step on class-conditional images ------------------------------------------------------

class _TinyEps(torch.nn.Module):
    """An eps-predictor ``net(x_t, lam, cond)`` on (B, 1, 8, 8) images with 4 classes."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)
        self.label = torch.nn.Embedding(4, 1)

    def forward(self, x, lam, cond):
        return self.conv(x) * (1 + lam[:, None, None, None] / 10) + self.label(cond)[:, :, None, None]


class _TinyGen(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)
        self.label = torch.nn.Embedding(4, 1)

    def forward(self, z, cond):
        return torch.tanh(self.conv(z) + self.label(cond)[:, :, None, None])


def _image_case(seed):
    from ..schedules import VP
    from ..teachers import NetworkTeacher

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        gen, t_net, s_net = _TinyGen(), _TinyEps(), _TinyEps()
    g = torch.Generator().manual_seed(seed + 1)
    z, eps = torch.randn(6, 1, 8, 8, generator=g), torch.randn(6, 1, 8, 8, generator=g)
    lam = -6 + 12 * torch.rand(6, generator=g)
    cond = torch.randint(0, 4, (6,), generator=g)
    return gen, NetworkTeacher(t_net, VP, "eps"), NetworkTeacher(s_net, VP, "eps"), z, eps, lam, cond


def _image_ref(gen, teacher, student, z, eps, lam, cond, K, gamma, noises, cancel="full"):
    it = iter(noises)
    return estep(gen, teacher, student, z, eps, lam, LangevinConfig(K=K, gamma_eps=gamma, cancel=cancel), cond=cond,
                 rng=lambda like: next(it)).eps


def _image_no_cancel(gen, teacher, student, z, eps, lam, cond, K, gamma, noises):
    return _image_ref(gen, teacher, student, z, eps, lam, cond, K, gamma, noises, cancel="none")


def _image_injected(gen, teacher, student, z, eps, lam, cond, K, gamma, noises):
    return _image_ref(gen, teacher, student, z, eps, lam, cond, K, gamma, noises, cancel="injected")


def _route_image_estep(gen, teacher, student, z, eps, lam, cond, K, gamma, noises):
    from emd_lib.langevin import LangevinConfig as _C, estep as _estep

    it = iter(noises)
    return _estep(gen, teacher, student, z, eps, lam, _C(K=K, gamma_eps=gamma, cancel="full"), cond=cond,
                  rng=lambda like: next(it)).eps


@register("7.4", title="the E-step on class-conditional images", wrong=[_image_no_cancel, _image_injected],
          points=2, minutes=20, kind="method", route=_route_image_estep,
          forbid=["emd_lib.langevin:estep", "emd_lib.distill:emd_generator_loss", "emd_lib.langevin:mcmc_correct",
                  "emd_lib.langevin:log_rho_grads"])
def _check_7_4(mstep_eps):
    for seed, (K, gamma) in ((74, (3, 0.3)), (75, (1, 1.0))):
        gen, teacher, student, z, eps, lam, cond = _image_case(seed)
        noises = torch.randn(K, *z.shape, generator=torch.Generator().manual_seed(seed + 2))
        want = _image_ref(gen, teacher, student, z, eps, lam, cond, K, gamma, noises)
        got = mstep_eps(gen, teacher, student, z.clone(), eps.clone(), lam.clone(), cond.clone(), K, gamma, noises.clone())
        try:
            expect_close(f"the M-step's eps (K = {K}, gamma = {gamma})", torch.as_tensor(got).detach(), want, 1e-4)
        except ExerciseFailed as e:
            raise ExerciseFailed(f"{e}. The eps-chain of chapter 4 on (B, C, H, W) tensors: alpha and sigma per sample "
                                 "shaped (B, 1, 1, 1), the class labels passed to the generator g(z, c) and to both "
                                 "scores, full cancellation (eta_0 = eps_0)") from None


# ---- 7.5 the Fréchet distance between Gaussians with diagonal covariances -------------------------------

def _fd_ref(mu1, var1, mu2, var2):
    from ..images.metrics import frechet_distance

    return frechet_distance(mu1, torch.diag(var1), mu2, torch.diag(var2))


def _fd_variances(mu1, var1, mu2, var2):                   # differences of variances, not of standard deviations
    return float(((mu1 - mu2) ** 2).sum() + ((var1 - var2) ** 2).sum())


def _fd_means_only(mu1, var1, mu2, var2):                  # the covariance term forgotten
    return float(((mu1 - mu2) ** 2).sum())


def _fd_no_square(mu1, var1, mu2, var2):                   # |s1 - s2| instead of (s1 - s2)^2
    return float(((mu1 - mu2) ** 2).sum() + (var1.sqrt() - var2.sqrt()).abs().sum())


def _route_fd(mu1, var1, mu2, var2):
    from emd_lib.images.metrics import frechet_distance

    return frechet_distance(mu1, torch.diag(var1), mu2, torch.diag(var2))


@register("7.5", title="the Fréchet distance of two Gaussians with diagonal covariances",
          wrong=[_fd_variances, _fd_means_only, _fd_no_square],
          points=1, minutes=10, kind="derivation", route=_route_fd,
          forbid=["emd_lib.images.metrics:frechet_distance", "emd_lib.images.metrics:classifier_frechet_distance"])
def _check_7_5(frechet_diagonal):
    g = torch.Generator().manual_seed(75)
    for d in (1, 3, 16):
        mu1, mu2 = torch.randn(d, generator=g, dtype=torch.float64), torch.randn(d, generator=g, dtype=torch.float64)
        var1 = 0.1 + 2 * torch.rand(d, generator=g, dtype=torch.float64)
        var2 = 0.1 + 2 * torch.rand(d, generator=g, dtype=torch.float64)
        got = float(frechet_diagonal(mu1.clone(), var1.clone(), mu2.clone(), var2.clone()))
        want = _fd_ref(mu1, var1, mu2, var2)
        if not abs(got - want) <= 1e-6 * max(abs(want), 1.0):
            raise ExerciseFailed(f"in {d} dimensions you gave {got:.6g}, expected {want:.6g}. Start from "
                                 "|mu1 - mu2|^2 + tr(C1 + C2 - 2 (C1 C2)^(1/2)); what is (C1 C2)^(1/2) when both are "
                                 "diagonal?")
