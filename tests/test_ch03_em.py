"""Chapter 3 helpers of emd_lib.em: Fisher's identity, the frozen-z target, exact and Langevin EM."""
import math

import pytest
import torch

from emd_lib.em import (LinearGenerator, exact_em, exact_student, fisher_grad, fit_error, frozen_z_moments,
                        gaussian_kl, gaussian_teacher, langevin_em, latent_posterior, marginal_log_prob,
                        rho_moments)
from emd_lib.exercises import ExerciseFailed, registry
from emd_lib.experiments.ch04 import level, linear_pair
from emd_lib.langevin import LangevinConfig, log_rho_grads

M, C, A, B = linear_pair()                   # chapter 3's linear-Gaussian pair


@pytest.mark.parametrize("lam", [-3.0, 0.0, 3.0])
def test_marginal_log_prob_matches_exact_student(lam):
    a, s = level(lam)
    x = torch.randn(7, 2, generator=torch.Generator().manual_seed(0))
    got = marginal_log_prob(LinearGenerator(A, B), x, a, s)
    want = exact_student(A, B).log_prob(x, torch.full((7,), lam))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("lam", [-2.0, 0.5, 4.0])
def test_fisher_identity_closed_form_equals_autograd(lam):
    a, s = level(lam)
    gen = LinearGenerator(A, B)
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(1)) * 2
    gA, gb = fisher_grad(A, B, x, a, s)
    for i in range(4):
        wa, wb = torch.autograd.grad(marginal_log_prob(gen, x[i:i + 1], a, s).sum(), (gen.A, gen.b))
        torch.testing.assert_close(gA[i].float(), wa, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(gb[i].float(), wb, rtol=1e-4, atol=1e-4)


def test_latent_posterior_is_rho_conditional():
    # under rho, z | x_t is the posterior q(z | x_t): check the regression of z on x_t
    a, s = level(0.7)
    mean, cov = rho_moments(A, B, M, C, a, s)
    Sxx, Szx = cov[:2, :2], cov[2:, :2]
    x = torch.tensor([[0.3, -1.0]], dtype=torch.float64)
    cond_mean = mean[2:] + (Szx @ torch.linalg.solve(Sxx, (x[0] - mean[:2])))
    cond_cov = cov[2:, 2:] - Szx @ torch.linalg.solve(Sxx, Szx.T)
    mu, S = latent_posterior(A, B, x, a, s)
    torch.testing.assert_close(mu[0], cond_mean)
    torch.testing.assert_close(S, cond_cov)
    # and, independently of rho_moments, Bayes' rule for the model z ~ N(0, I), x_t | z ~ N(a (A z + b), s^2 I):
    # E[z | x_t] = a A^T (a^2 A A^T + s^2 I)^{-1} (x_t - a b),  Cov = I - a^2 A^T (a^2 A A^T + s^2 I)^{-1} A
    A64, b64 = A.double(), B.double()
    Sx = a**2 * A64 @ A64.T + s**2 * torch.eye(2, dtype=torch.float64)
    torch.testing.assert_close(mu[0], a * A64.T @ torch.linalg.solve(Sx, x[0] - a * b64))
    torch.testing.assert_close(S, torch.eye(2, dtype=torch.float64) - a**2 * A64.T @ torch.linalg.solve(Sx, A64))


@pytest.mark.parametrize("lam", [-2.0, 1.0, 5.0])
def test_frozen_z_target_is_stationary_for_the_x_chain(lam):
    # at x_t = E[x_t | z] of the frozen-z target, grad_x log rho vanishes (a Gaussian's mode)
    a, s = level(lam)
    mean, cov = frozen_z_moments(A, B, M, C, a, s)
    z = torch.randn(5, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    L = cov[:2, 2:]                                   # Cov(x_t, z) = L since Cov(z) = I
    x_mode = (mean[:2] + z @ L.T).float()
    gx, _ = log_rho_grads(LinearGenerator(A, B), gaussian_teacher(M, C), exact_student(A, B), z.float(),
                          torch.full((5,), lam), x_t=x_mode)
    assert gx.abs().max() < 1e-4 / s**2          # float32 rounding of terms of size 1 / sigma^2
    torch.testing.assert_close(cov[2:, 2:], torch.eye(2, dtype=torch.float64))


def test_gaussian_kl_matches_torch():
    p = torch.distributions.MultivariateNormal(torch.tensor([0.1, 0.2]), torch.tensor([[1.0, 0.3], [0.3, 0.5]]))
    q = torch.distributions.MultivariateNormal(torch.tensor([-0.4, 1.0]), torch.tensor([[0.7, -0.1], [-0.1, 1.2]]))
    want = float(torch.distributions.kl_divergence(p, q))
    assert math.isclose(gaussian_kl(p.mean, p.covariance_matrix, q.mean, q.covariance_matrix), want, rel_tol=1e-5)
    assert abs(gaussian_kl(p.mean, p.covariance_matrix, p.mean, p.covariance_matrix)) < 1e-10


def test_exact_em_reaches_the_fit_and_is_fastest_mid_range():
    errs = {lam: exact_em(0.3 * torch.eye(2), torch.zeros(2), M, C, *level(lam), iters=40)[2] for lam in (-4, 0, 4)}
    assert errs[0][-1] < 1e-6
    assert errs[0][9] < errs[-4][9] and errs[0][9] < errs[4][9]




def test_langevin_em_decreases_the_error(one_thread):
    cfg = LangevinConfig(K=4, move_z=True, gamma_z=0.3, z_precondition="none", cancel="none")
    h = langevin_em(0.3 * torch.eye(2), torch.zeros(2), M, C, 0.0, cfg, iters=40, batch=256, seed=0)
    assert h["errors"][-1] < 0.3 * fit_error(0.3 * torch.eye(2), torch.zeros(2), M, C)
    assert len(h["losses"]) == 40 and all(math.isfinite(v) for v in h["losses"])


def test_ch03_exercise_checks_reject_their_wrong_answers():
    reg = registry()
    for ex_id in ("3.1", "3.2", "3.3"):
        ex = reg[ex_id]
        assert ex.wrong, ex_id
        for wrong in ex.wrong:
            with pytest.raises(ExerciseFailed):
                ex.fn(wrong)
