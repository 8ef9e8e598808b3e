"""emd_lib.divergences: forward-KL (moment matching) and reverse-KL Gaussian fits, Monte-Carlo KL."""
import math

import pytest
import torch

from emd_lib.divergences import (forward_kl_gaussian_fit, gaussian, gaussian_log_prob, kl_monte_carlo,
                                 mixture_moments, reverse_kl_gaussian_fit)
from emd_lib.mixtures import bimodal, irregular
from emd_lib.schedules import VP



def _kl_gauss(m0, C0, m1, C1):
    """Closed-form KL(N(m0, C0) || N(m1, C1))."""
    d = len(m0)
    C1inv = torch.linalg.inv(C1)
    diff = (m1 - m0)
    return 0.5 * float(torch.trace(C1inv @ C0) + diff @ C1inv @ diff - d + torch.logdet(C1) - torch.logdet(C0))


def test_mixture_moments_match_samples():
    p = irregular()
    m, C = mixture_moments(p)
    x = p.sample(200_000, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(m, x.mean(0), atol=0.01, rtol=0)
    torch.testing.assert_close(C, torch.cov(x.T), atol=0.02, rtol=0)


def test_forward_fit_is_moment_matching_and_a_minimum():
    p = bimodal()
    m, C = forward_kl_gaussian_fit(p)
    torch.testing.assert_close(m, torch.tensor([-0.6, 0.0]), atol=1e-5, rtol=0)
    # Var_x = 0.16 + 0.7 * 0.3 * 3^2 = 2.05, Var_y = 0.16
    torch.testing.assert_close(C, torch.diag(torch.tensor([2.05, 0.16])), atol=1e-5, rtol=0)
    # from samples, the empirical moments
    x = p.sample(100_000, generator=torch.Generator().manual_seed(1))
    m_s, C_s = forward_kl_gaussian_fit(x)
    torch.testing.assert_close(m_s, m, atol=0.02, rtol=0)
    torch.testing.assert_close(C_s, C, atol=0.03, rtol=0)
    # a minimum: with common random numbers, every perturbation raises KL(p || q)
    best = kl_monte_carlo(p, gaussian(m, C), n=20000, generator=torch.Generator().manual_seed(2))[0]
    for dm, sc in (([0.3, 0.0], 1.0), ([0.0, 0.2], 1.0), ([0.0, 0.0], 1.3), ([0.0, 0.0], 0.7)):
        kl = kl_monte_carlo(p, gaussian(m + torch.tensor(dm), C * sc), n=20000,
                            generator=torch.Generator().manual_seed(2))[0]
        assert kl > best + 1e-3


def test_kl_monte_carlo_matches_closed_form_clean_and_noisy():
    m0, C0 = torch.tensor([0.5, -1.0]), torch.tensor([[1.0, 0.3], [0.3, 0.5]])
    m1, C1 = torch.tensor([0.0, 0.0]), torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    a, b = gaussian(m0, C0), gaussian(m1, C1)
    est, se = kl_monte_carlo(a, b, n=50000, generator=torch.Generator().manual_seed(3))
    exact = _kl_gauss(m0, C0, m1, C1)
    assert abs(est - exact) < 4 * se + 1e-3
    # noisy marginals at lam: N(alpha m, alpha^2 C + sigma^2 I)
    lam = -0.5
    al, si = VP.alpha_sigma(torch.tensor(lam))
    I = torch.eye(2)
    exact_t = _kl_gauss(al * m0, al**2 * C0 + si**2 * I, al * m1, al**2 * C1 + si**2 * I)
    est_t, se_t = kl_monte_carlo(a, b, n=50000, lam=lam, generator=torch.Generator().manual_seed(4))
    assert abs(est_t - exact_t) < 4 * se_t + 1e-3
    assert exact_t < exact       # noise shrinks every KL (data processing)


def test_gaussian_log_prob_matches_torch():
    m, C = torch.tensor([0.2, -0.1]), torch.tensor([[1.0, 0.4], [0.4, 0.8]])
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(5))
    ref = torch.distributions.MultivariateNormal(m, C).log_prob(x)
    torch.testing.assert_close(gaussian_log_prob(x, m, C), ref, atol=1e-5, rtol=1e-5)


def test_reverse_fit_recovers_a_gaussian_target():
    m, C = torch.tensor([1.0, -0.5]), torch.tensor([[0.5, 0.2], [0.2, 0.3]])
    r = reverse_kl_gaussian_fit(gaussian(m, C), [0.0, 0.0], std0=1.0, steps=400, n=512, lr=0.03,
                                generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(r["mean"], m, atol=0.05, rtol=0)
    torch.testing.assert_close(r["cov"], C, atol=0.05, rtol=0)
    assert abs(r["kl"]) < 0.02


def test_reverse_fit_seeks_the_mode_it_starts_near():
    p = bimodal()
    for start, mode, w in (([-1.0, 0.3], -1.5, 0.7), ([1.0, -0.3], 1.5, 0.3)):
        r = reverse_kl_gaussian_fit(p, start, steps=300, n=512, lr=0.05, generator=torch.Generator().manual_seed(7))
        assert abs(float(r["mean"][0]) - mode) < 0.08
        torch.testing.assert_close(r["cov"], 0.16 * torch.eye(2), atol=0.03, rtol=0)
        # well-separated modes: sitting on mode k costs KL(q || p) = -log w_k
        assert abs(r["kl"] - (-math.log(w))) < 0.03


def test_noise_averaged_reverse_fit_of_a_gaussian_is_the_gaussian():
    """For a Gaussian target every noisy marginal is matched by q = p, so the noise-averaged fit must
    return the target at noise levels where noise dominates (lam = -2: sigma^2 / alpha^2 = e^2): a q_t
    built without the noise's sigma^2 I, or without scaling its mean by alpha, lands far away."""
    from emd_lib.teachers import GaussianMixture

    C = torch.tensor([[0.5, 0.2], [0.2, 0.3]])
    p = GaussianMixture([1.0], [[1.0, -0.5]], covs=[C.tolist()])
    r = reverse_kl_gaussian_fit(p, [0.0, 0.0], steps=400, n=512, lr=0.05, lams=torch.tensor([-2.0, 0.0, 2.0]),
                                generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(r["mean"], torch.tensor([1.0, -0.5]), atol=0.08, rtol=0)
    torch.testing.assert_close(r["cov"], C, atol=0.06, rtol=0)


def test_noise_averaged_reverse_fit_options():
    p = bimodal()
    # only a very low noise level: still the mode-seeking fit
    r = reverse_kl_gaussian_fit(p, [1.0, 0.0], steps=200, n=256, lr=0.05, lams=torch.tensor([8.0]),
                                generator=torch.Generator().manual_seed(8))
    assert abs(float(r["mean"][0]) - 1.5) < 0.1
    with pytest.raises(ValueError):
        reverse_kl_gaussian_fit(p, [0.0, 0.0], steps=1, lams=torch.tensor([0.0, 1.0]), weights=torch.tensor([1.0]))
    with pytest.raises(ValueError):
        forward_kl_gaussian_fit(torch.zeros(1, 2))
