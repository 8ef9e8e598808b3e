"""The exact mixture teacher: score, denoiser and schedules."""
import math

import pytest
import torch

from emd_lib.schedules import EDM, VP, Schedule, sample_lam, weight
from emd_lib.teachers import GaussianMixture, MixtureError



@pytest.fixture(autouse=True)
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def random_mixture(d=3, K=4, full=True, schedule=VP, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(K, generator=g) + 0.2
    w = (w / w.sum()).tolist()
    mu = torch.randn(K, d, generator=g) * 2
    if full:
        B = torch.randn(K, d, d, generator=g) * 0.4
        C = B @ B.transpose(1, 2) + 0.05 * torch.eye(d)
        return GaussianMixture(w, mu, covs=C, schedule=schedule, dtype=torch.float64)
    return GaussianMixture(w, mu, stds=torch.rand(K, d, generator=g) + 0.1, schedule=schedule, dtype=torch.float64)


@pytest.mark.parametrize("full", [True, False])
@pytest.mark.parametrize("schedule", [VP, EDM], ids=["vp", "edm"])
def test_score_is_autograd_of_log_density(full, schedule):
    mix = random_mixture(full=full, schedule=schedule)
    x = torch.randn(64, 3, dtype=torch.float64) * 2
    lam = torch.linspace(-6, 6, 64, dtype=torch.float64)
    x.requires_grad_(True)
    (g,) = torch.autograd.grad(mix.log_prob(x, lam).sum(), x)
    torch.testing.assert_close(mix.score(x.detach(), lam), g, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("schedule", [VP, EDM], ids=["vp", "edm"])
def test_denoiser_is_posterior_mean_by_quadrature(schedule):
    """E[x | x_t] by brute-force quadrature on a 1D grid equals the closed form (Tweedie's mean)."""
    mix = GaussianMixture([0.3, 0.5, 0.2], [[-2.0], [0.5], [2.5]], [0.3, 0.6, 0.2], schedule=schedule,
                          dtype=torch.float64)
    grid = torch.linspace(-8, 8, 40001, dtype=torch.float64)[:, None]
    p0 = mix.log_prob(grid).exp()                                     # (G,)
    for lam in (-4.0, 0.0, 3.0):
        alpha, sigma = (float(v) for v in schedule.alpha_sigma(torch.tensor(lam)))
        x_t = torch.tensor([[-1.0], [0.2], [1.7]], dtype=torch.float64)
        lik = torch.exp(-0.5 * ((x_t.T - alpha * grid) / sigma) ** 2)  # (G, 3)
        post_mean = (grid * p0[:, None] * lik).sum(0) / (p0[:, None] * lik).sum(0)
        D = mix.denoise(x_t, torch.full((3,), lam, dtype=torch.float64))
        torch.testing.assert_close(D[:, 0], post_mean, rtol=1e-6, atol=1e-6)
        # Tweedie: alpha D = x_t + sigma^2 score
        torch.testing.assert_close(alpha * D, x_t + sigma**2 * mix.score(x_t, torch.full((3,), lam)), rtol=1e-8,
                                   atol=1e-8)


def test_eps_is_minus_sigma_score_and_generic_interface_agrees():
    mix = random_mixture(full=True)
    x = torch.randn(16, 3, dtype=torch.float64)
    lam = torch.full((16,), 1.5, dtype=torch.float64)
    # the generic Teacher formulas (from the denoiser) agree with the closed-form score
    from emd_lib.teachers import Teacher
    torch.testing.assert_close(Teacher.score(mix, x, lam), mix.score(x, lam))
    torch.testing.assert_close(Teacher.eps(mix, x, lam), mix.eps(x, lam))


def test_sample_and_assign():
    mix = random_mixture(d=2, K=3, full=True)
    x, k = mix.sample(20000, generator=torch.Generator().manual_seed(1), return_labels=True)
    frac = torch.bincount(k, minlength=3) / len(k)
    assert torch.allclose(frac, mix.weights, atol=0.02)
    k_hat, maha = mix.assign(x)
    # chi^2_2: P(r <= 3) = 1 - exp(-4.5) = 0.989
    assert abs(float((maha <= 3).double().mean()) - (1 - math.exp(-4.5))) < 0.01


def test_schedules():
    lam = torch.linspace(-10, 10, 101)
    a, s = VP.alpha_sigma(lam)
    torch.testing.assert_close(a**2 + s**2, torch.ones_like(lam))
    torch.testing.assert_close(VP.lam(a, s), lam, rtol=1e-5, atol=1e-5)
    a, s = EDM.alpha_sigma(torch.tensor(-2 * math.log(80.0)))
    assert abs(float(s) - 80.0) < 1e-3 and float(a) == 1.0
    for kind in ("uniform", "cosine", "edm"):
        l = sample_lam(1000, kind, -6, 6, generator=torch.Generator().manual_seed(0))
        assert l.min() >= -6 - 1e-5 and l.max() <= 6 + 1e-5
    torch.testing.assert_close(weight(lam, VP, "sigma2"), VP.alpha_sigma(lam)[1] ** 2)
    with pytest.raises(ValueError, match="outside"):
        VP.check_lam(-12.0, "lam_star")
    with pytest.raises(ValueError):
        Schedule("ve")


@pytest.mark.parametrize("spec, field", [
    ({"weights": [0.5, 0.6], "means": [[0, 0], [1, 1]], "stds": [1, 1]}, "sum to 1"),
    ({"weights": [0.5, 0.5], "means": [[0, 0]], "stds": [1, 1]}, "means"),
    ({"weights": [0.5, 0.5], "means": [[0, 0], [1, 1]], "stds": [1, -1]}, "positive"),
    ({"weights": [0.5, 0.5], "means": [[0, 0], [1, 1]], "stds": [1, float("nan")]}, "NaN"),
    ({"weights": [0.5, 0.5], "means": [[0, 0], [1, 1]]}, "stds"),
    ({"weights": [1.5, -0.5], "means": [[0, 0], [1, 1]], "stds": [1, 1]}, "non-negative"),
    ({"weights": [1.0], "means": [[0, 0]], "covs": [[[1, 2], [2, 1]]]}, "positive definite"),
    ({"means": [[0, 0]], "stds": [1]}, "weights"),
])
def test_bad_mixtures_name_the_field(spec, field):
    with pytest.raises(MixtureError, match=field):
        GaussianMixture.from_dict(spec)


def test_z_in_scale_is_one_for_vp_and_sigma_star_for_edm():
    from emd_lib.schedules import EDM, VP

    assert VP.z_in_scale(-6.0) == 1.0
    assert abs(EDM.z_in_scale(-2.0) - float(EDM.alpha_sigma(torch.tensor(-2.0))[1])) == 0
    assert abs(EDM.z_in_scale(-2.0) - 2.718281828) < 1e-5          # sigma = exp(-lam / 2)
