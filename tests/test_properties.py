"""Properties over random inputs (hypothesis): schedule conversions and the exact mixture's math.

Few examples each, so that the whole file runs in a few seconds on two cores.
"""
import math
from contextlib import contextmanager

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from emd_lib.schedules import EDM, VP, lam_from_sigma, sigma_from_lam
from emd_lib.teachers import GaussianMixture

FAST = settings(max_examples=25, deadline=None, derandomize=True)
lams = st.floats(-12.0, 12.0, allow_nan=False)
schedules = st.sampled_from([VP, EDM])


@contextmanager
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


# ---- schedules ----------------------------------------------------------------------------------------
@FAST
@given(lam=lams, sch=schedules)
def test_lam_alpha_sigma_round_trip(lam, sch):
    with float64():
        t = torch.tensor(lam, dtype=torch.float64)
        alpha, sigma = sch.alpha_sigma(t)
        assert alpha.dtype == torch.float64
        torch.testing.assert_close(sch.lam(alpha, sigma), t, rtol=1e-9, atol=1e-9)
        # both schedules share sigma / alpha = exp(-lam / 2)
        torch.testing.assert_close(sigma / alpha, torch.exp(-t / 2), rtol=1e-12, atol=0)


@FAST
@given(lam=lams)
def test_vp_preserves_variance(lam):
    with float64():
        alpha, sigma = VP.alpha_sigma(torch.tensor(lam))
        assert abs(float(alpha**2 + sigma**2) - 1.0) < 1e-12
        assert 0 < float(alpha) < 1 and 0 < float(sigma) < 1


@FAST
@given(lam=lams)
def test_edm_conventions(lam):
    with float64():
        alpha, sigma = EDM.alpha_sigma(torch.tensor(lam))
        assert float(alpha) == 1.0
        assert math.isclose(float(sigma), math.exp(-lam / 2), rel_tol=1e-12)
    # the float32 helpers: lam -> sigma -> lam
    assert math.isclose(float(lam_from_sigma(sigma_from_lam(lam))), lam, rel_tol=1e-5, abs_tol=1e-5)


@FAST
@given(a=lams, b=lams, sch=schedules)
def test_monotone_in_lam(a, b, sch):
    """More log-SNR is less noise: sigma (and sigma / alpha) fall, alpha does not fall, as lam grows."""
    lo, hi = min(a, b), max(a, b)
    with float64():
        (a_lo, s_lo), (a_hi, s_hi) = sch.alpha_sigma(torch.tensor(lo)), sch.alpha_sigma(torch.tensor(hi))
    assert float(s_hi) <= float(s_lo) and float(a_hi) >= float(a_lo)
    assert float(s_hi / a_hi) <= float(s_lo / a_lo)
    if hi - lo > 1e-6:
        assert float(s_hi / a_hi) < float(s_lo / a_lo)


# ---- random small mixtures --------------------------------------------------------------------------
@st.composite
def mixtures(draw, dim=None, schedule=None):
    K = draw(st.integers(1, 3))
    d = dim or draw(st.integers(1, 3))
    w = torch.tensor(draw(st.lists(st.floats(0.05, 1.0), min_size=K, max_size=K)), dtype=torch.float64)
    mu = torch.tensor(draw(st.lists(st.floats(-3.0, 3.0), min_size=K * d, max_size=K * d)),
                      dtype=torch.float64).reshape(K, d)
    sch = schedule or draw(schedules)
    if draw(st.booleans()):  # diagonal
        sd = draw(st.lists(st.floats(0.2, 2.0), min_size=K * d, max_size=K * d))
        return GaussianMixture(w / w.sum(), mu, stds=torch.tensor(sd, dtype=torch.float64).reshape(K, d),
                               schedule=sch, dtype=torch.float64)
    B = torch.tensor(draw(st.lists(st.floats(-1.0, 1.0), min_size=K * d * d, max_size=K * d * d)),
                     dtype=torch.float64).reshape(K, d, d)
    C = B @ B.transpose(1, 2) + 0.05 * torch.eye(d, dtype=torch.float64)
    return GaussianMixture(w / w.sum(), mu, covs=C, schedule=sch, dtype=torch.float64)


def points(mix, seed, n=16):
    return torch.randn(n, mix.dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 3


@FAST
@given(mix=mixtures(), lam=st.floats(-8.0, 8.0), seed=st.integers(0, 2**16))
def test_responsibilities_sum_to_one(mix, lam, seed):
    with float64():
        r = mix.responsibilities(points(mix, seed), lam)
    assert r.shape == (16, mix.n_components) and (r >= 0).all()
    torch.testing.assert_close(r.sum(1), torch.ones(16, dtype=torch.float64), rtol=0, atol=1e-12)


@FAST
@given(mix=mixtures(), lam=st.floats(-8.0, 8.0), seed=st.integers(0, 2**16))
def test_score_is_autograd_of_log_prob(mix, lam, seed):
    with float64():
        x = points(mix, seed).requires_grad_(True)
        lam_b = torch.full((16,), lam, dtype=torch.float64)
        (g,) = torch.autograd.grad(mix.log_prob(x, lam_b).sum(), x)
        torch.testing.assert_close(mix.score(x.detach(), lam_b), g, rtol=1e-7, atol=1e-7)


@FAST
@given(mix=mixtures(), lam=st.floats(-8.0, 8.0), seed=st.integers(0, 2**16))
def test_denoise_satisfies_tweedie(mix, lam, seed):
    """``alpha D(x_t) = x_t + sigma^2 grad log p_t(x_t)``, from the two closed forms computed separately."""
    with float64():
        x = points(mix, seed)
        lam_b = torch.full((16,), lam, dtype=torch.float64)
        alpha, sigma = mix.schedule.alpha_sigma(lam_b)
        lhs = alpha[:, None] * mix.denoise(x, lam_b)
        rhs = x + sigma[:, None] ** 2 * mix.score(x, lam_b)
        torch.testing.assert_close(lhs, rhs, rtol=1e-8, atol=1e-8 * max(1.0, float(sigma.max()) ** 2))
        # and eps-prediction is -sigma * score
        torch.testing.assert_close(mix.eps(x, lam_b), -sigma[:, None] * mix.score(x, lam_b))


@settings(max_examples=15, deadline=None, derandomize=True)
@given(mix=mixtures(dim=1, schedule=VP), lam=st.one_of(st.just(math.inf), st.floats(-6.0, 8.0)))
def test_log_prob_is_normalised_in_1d(mix, lam):
    """``int p_t(x) dx = 1`` by the trapezoid rule, for the clean (lam = inf) and the noisy marginals."""
    with float64():
        grid = torch.linspace(-20.0, 20.0, 20001, dtype=torch.float64)[:, None]
        lam_arg = lam if math.isinf(lam) else torch.full((len(grid),), lam, dtype=torch.float64)
        p = mix.log_prob(grid, lam_arg).exp()
        total = float(torch.trapezoid(p, grid[:, 0]))
    assert abs(total - 1.0) < 1e-6, total
