"""The E-step: both chains target rho; Langevin reproduces the exact posterior of a linear generator."""
import math

import pytest
import torch

from emd_lib.em import LinearGenerator, exact_em_step, exact_student, gaussian_teacher, rho_moments
from emd_lib.langevin import LangevinConfig, estep, log_rho_grads
from emd_lib.schedules import VP

A0 = torch.tensor([[0.8, 0.2], [-0.3, 0.5]])
B0 = torch.tensor([0.3, -0.2])
M = torch.tensor([1.0, -0.5])
C = torch.tensor([[1.0, 0.4], [0.4, 0.6]])


def setup(lam=0.0, n=8):
    gen = LinearGenerator(A0, B0)
    teacher, student = gaussian_teacher(M, C), exact_student(A0, B0)
    lam_b = torch.full((n,), lam)
    return gen, teacher, student, lam_b


def log_rho(x_t, z, lam):
    """Closed-form log rho(x_t, z) = log p_t + log N(x_t; a g(z), s^2) + log N(z) - log q_t (up to a constant)."""
    gen, teacher, student, lam_b = setup(lam, len(z))
    a, s = VP.alpha_sigma(lam_b)
    lik = -0.5 * ((x_t - a[:, None] * gen(z)) ** 2).sum(1) / s**2
    return teacher.log_prob(x_t, lam_b) + lik - 0.5 * (z**2).sum(1) - student.log_prob(x_t, lam_b)


@pytest.mark.parametrize("lam", [-3.0, 0.0, 2.5])
def test_both_chains_have_the_gradients_of_one_joint(lam):
    gen, teacher, student, lam_b = setup(lam)
    a, s = (float(v) for v in VP.alpha_sigma(torch.tensor(lam)))
    g = torch.Generator().manual_seed(0)
    z = torch.randn(8, 2, generator=g)
    eps = torch.randn(8, 2, generator=g)
    x_t = (a * gen(z) + s * eps).detach()
    # (x, z) chain against autograd of the closed form
    gx, gz = log_rho_grads(gen, teacher, student, z, lam_b, x_t=x_t)
    xr, zr = x_t.clone().requires_grad_(True), z.clone().requires_grad_(True)
    ax, az = torch.autograd.grad(log_rho(xr, zr, lam).sum(), (xr, zr))
    torch.testing.assert_close(gx, ax, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gz, az, rtol=1e-4, atol=1e-4)
    # (eps, z) chain: the same density after the change of variables x_t = a g(z) + s eps
    ge, gz2 = log_rho_grads(gen, teacher, student, z, lam_b, eps=eps)
    er, zr = eps.clone().requires_grad_(True), z.clone().requires_grad_(True)
    ae, az2 = torch.autograd.grad(log_rho(a * gen(zr) + s * er, zr, lam).sum(), (er, zr))
    torch.testing.assert_close(ge, ae, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gz2, az2, rtol=1e-4, atol=1e-4)
    # and the chain rule that ties them: grad_eps = s grad_x, grad_z^eps = grad_z^x + a J^T grad_x
    torch.testing.assert_close(ge, s * gx, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gz2, gz + a * gx @ A0, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("space", ["eps", "x"])
def test_langevin_reproduces_exact_posterior_moments(space):
    lam, n = 0.5, 3000
    gen, teacher, student, lam_b = setup(lam, n)
    a, s = (float(v) for v in VP.alpha_sigma(torch.tensor(lam)))
    g = torch.Generator().manual_seed(1)
    z0, eps0 = torch.randn(n, 2, generator=g), torch.randn(n, 2, generator=g)
    cfg = LangevinConfig(K=2000, space=space, move_z=True, gamma_eps=0.05, gamma_z=0.1, cancel="none")
    res = estep(gen, teacher, student, z0, eps0, lam_b, cfg, rng=g)
    with torch.no_grad():
        x_t = a * gen(res.z_chain) + s * res.eps_chain
    u = torch.cat([x_t, res.z_chain], 1).double()
    mean, cov = rho_moments(A0, B0, M, C, a, s)
    emp_cov = torch.cov(u.T)
    # Monte-Carlo error over 3000 draws is ~0.02 (means) to ~0.03 (covariances); ULA bias is O(gamma)
    assert (u.mean(0) - mean).abs().max() < 0.06, (u.mean(0), mean)
    assert (emp_cov - cov).abs().max() < 0.07, (emp_cov, cov)
    # and the chain did move away from the generator's own joint sample (whose moments differ)
    assert res.diagnostics["moved_data"] > 0.1


def test_exact_em_converges_to_the_maximum_likelihood_fit():
    A, b = torch.eye(2) * 0.3, torch.zeros(2)
    for _ in range(300):
        A, b = exact_em_step(A, b, M, C, 0.8, 0.6)
    torch.testing.assert_close(A @ A.T, C.double(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b, M.double(), rtol=1e-5, atol=1e-5)


def test_noise_cancellation_full_leaves_the_pure_drift():
    """With eta_0 = eps_0 the M-step eps is sum_k (1-g)^(K-1-k) g sigma ds_k; with z frozen and an exact
    student equal to the teacher, ds = 0 and the cancelled eps is exactly zero."""
    gen = LinearGenerator(A0, B0)
    same = exact_student(A0, B0)
    lam_b = torch.full((16,), 0.0)
    g = torch.Generator().manual_seed(2)
    res = estep(gen, same, same, torch.randn(16, 2, generator=g), torch.randn(16, 2, generator=g), lam_b,
                LangevinConfig(K=5, gamma_eps=0.3, cancel="full"), rng=g)
    assert res.eps.abs().max() < 1e-5
    assert res.eps_chain.abs().max() > 0.1         # the chain itself did move


def test_noise_cancellation_keeps_the_mean_only_with_z_frozen():
    """E[eps_used z_K] (the M-step gradient for the slope of g(z) = z; teacher N(0, 4), exact student,
    lam = 0, K = 8): with z frozen, cancel none and full agree in mean; with z moving they do not."""
    gen, teacher, student = LinearGenerator([[1.0]], [0.0]), gaussian_teacher([0.0], [[4.0]]), exact_student([[1.0]], [0.0])
    n = 20_000
    g = torch.Generator().manual_seed(0)
    z, eps = torch.randn(n, 1, generator=g), torch.randn(n, 1, generator=g)
    lam_b = torch.zeros(n)
    gaps = {}
    for move_z in (False, True):
        prods = {}
        for cancel in ("none", "full"):
            cfg = LangevinConfig(K=8, gamma_eps=0.3, move_z=move_z, gamma_z=0.3, z_precondition="none", cancel=cancel)
            r = estep(gen, teacher, student, z, eps, lam_b, cfg, rng=torch.Generator().manual_seed(1))
            prods[cancel] = (r.eps * r.z)[:, 0].double()
        d = prods["full"] - prods["none"]                      # paired: the same random numbers
        gaps[move_z] = (float(d.mean()), float(d.std() / math.sqrt(n)))
    (m_frozen, se_frozen), (m_moving, se_moving) = gaps[False], gaps[True]
    assert abs(m_frozen) < 4 * se_frozen                       # z frozen: only the variance changes
    assert m_moving < -10 * se_moving                          # z moving: the mean moves (about -0.19)


def test_bad_langevin_settings_are_rejected():
    with pytest.raises(ValueError, match="K"):
        LangevinConfig(K=-1)
    with pytest.raises(ValueError, match="gamma_eps"):
        LangevinConfig(gamma_eps=0.0)
    with pytest.raises(ValueError, match="cancel"):
        LangevinConfig(cancel="some")


def test_estep_calls_the_generator_once_per_step_with_its_weights_frozen():
    """(eps, z): one generator pass per Langevin step and none besides (the M-step makes its own);
    during the chain the weights do not require grad, afterwards they do again, and they get no grad."""
    from emd_lib.distill import emd_generator_loss
    from emd_lib.langevin import frozen_params

    gen, teacher, student, lam_b = setup(0.5, n=6)
    seen = []

    def spy(module, args):
        seen.append(all(p.requires_grad for p in module.parameters()))

    h = gen.register_forward_pre_hook(spy)
    g = torch.Generator().manual_seed(3)
    z, eps = torch.randn(6, 2, generator=g), torch.randn(6, 2, generator=g)
    cfg = LangevinConfig(K=3, move_z=True, gamma_z=0.05)
    loss, diag = emd_generator_loss(gen, teacher, student, z, eps, lam_b, cfg, rng=g)
    h.remove()
    assert seen == [False, False, False, True]               # three chain steps, then the M-step's pass
    assert all(p.requires_grad and p.grad is None for p in gen.parameters())
    assert all(isinstance(v, float) and math.isfinite(v) for v in diag.values())
    loss.backward()
    assert all(p.grad is not None for p in gen.parameters())
    with pytest.raises(RuntimeError), frozen_params(gen):
        assert not any(p.requires_grad for p in gen.parameters())
        raise RuntimeError("restored even when the block fails")
    assert all(p.requires_grad for p in gen.parameters())


# ---- the chains pinned down exactly ---------------------------------------------------------------

def _pair(seed, n=12):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, generator=g), torch.randn(n, 2, generator=g)


@pytest.mark.parametrize("cancel", ["none", "injected", "full"])
def test_x_chain_hands_the_m_step_the_eps_chains_eps(cancel):
    """With z frozen and gamma_x = gamma_eps sigma^2, the x chain is the eps chain in other units:
    under the same noise both hand the M-step the same eps (the x chain's noise record is in x units
    and must be divided by sigma), and the same chain eps."""
    gen = LinearGenerator(A0, B0)
    teacher, student = gaussian_teacher(M, C), exact_student(A0 * 0.7, B0 + 0.3)    # a student that is off
    z0, eps0 = _pair(0)
    lam = torch.linspace(-4, 4, len(z0))                                              # sigma from 0.14 to 0.99
    out = {}
    for space in ("eps", "x"):
        rng = torch.Generator().manual_seed(7)
        out[space] = estep(gen, teacher, student, z0, eps0, lam,
                           LangevinConfig(K=6, space=space, gamma_eps=0.3, cancel=cancel), rng=rng)
    torch.testing.assert_close(out["x"].eps_chain, out["eps"].eps_chain, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out["x"].eps, out["eps"].eps, rtol=1e-4, atol=1e-5)
    assert (out["eps"].eps - eps0).abs().max() > 0.1                                 # the chain moved


@pytest.mark.parametrize("g_z", [0.05, 0.3])
def test_with_no_score_gap_the_cancelled_chain_is_the_prior_contraction(g_z):
    """Student equal to the teacher: the score gap is zero, so the only force on z is the prior's -z and
    on eps the prior's -eps. With z moving (no preconditioning) and both noise records on, the M-step gets
    z = (1 - g_z)^K z0 (the z record must decay by 1 - g_z per step) and eps = 0 (the full record)."""
    gen = LinearGenerator(A0, B0)
    same = exact_student(A0, B0)
    z0, eps0 = _pair(1)
    lam = torch.linspace(-3, 3, len(z0))
    K = 7
    res = estep(gen, same, same, z0, eps0, lam,
                LangevinConfig(K=K, move_z=True, gamma_z=g_z, z_precondition="none", cancel="full", cancel_z=True),
                rng=torch.Generator().manual_seed(3))
    torch.testing.assert_close(res.z, (1 - g_z) ** K * z0, rtol=1e-5, atol=1e-5)
    assert res.eps.abs().max() < 1e-5
    assert (res.z_chain - res.z).abs().max() > 0.05                                    # noise did move z


def _mixture_score(x, lam, weights, means, stds):
    """Score of a noised isotropic Gaussian mixture, written out: components N(alpha mu_k, v_k I) with
    v_k = alpha^2 s_k^2 + sigma^2, responsibilities from their densities (float64)."""
    x = x.double()
    a, s = VP.alpha_sigma(lam.double())
    a, s = a[:, None, None], s[:, None, None]
    mu = torch.tensor(means, dtype=torch.float64)[None]                                # (1, K, d)
    v = a**2 * torch.tensor(stds, dtype=torch.float64)[None, :, None] ** 2 + s**2      # (B, K, 1)
    diff = x[:, None, :] - a * mu                                                       # (B, K, d)
    logp = torch.log(torch.tensor(weights, dtype=torch.float64)) - 0.5 * (diff**2 / v).sum(-1) \
        - 0.5 * x.shape[1] * torch.log(2 * math.pi * v[..., 0])
    r = torch.softmax(logp, dim=1)[..., None]                                          # (B, K, 1)
    return (r * (-diff / v)).sum(1)


def test_k1_identity_against_a_score_gap_written_out():
    """K = 1, gamma_eps = 1, full cancellation: the M-step eps is sigma (s_teacher - s_student) at the
    generator's noisy sample, and the Diff-Instruct gradient is -w alpha ds^T dg/dtheta. Both compared
    with scores computed here from the mixtures' formulas, so a sign error in the score gap that the
    E-step and the Diff-Instruct loss share cannot pass."""
    from emd_lib.distill import di_generator_loss
    from emd_lib.teachers import GaussianMixture

    tw, tm, ts = [0.3, 0.7], [[-1.0, 0.5], [1.5, -0.5]], [0.4, 0.6]
    sw, sm, ss = [1.0], [[0.2, 0.1]], [1.1]
    teacher, student = GaussianMixture(tw, tm, ts), GaussianMixture(sw, sm, ss)
    gen = LinearGenerator(A0, B0)
    z0, eps0 = _pair(2, n=32)
    lam = torch.linspace(-3, 3, len(z0))
    a, s = VP.alpha_sigma(lam)
    x_t = a[:, None] * gen(z0).detach() + s[:, None] * eps0
    ds = _mixture_score(x_t, lam, tw, tm, ts) - _mixture_score(x_t, lam, sw, sm, ss)   # (B, d), float64

    res = estep(gen, teacher, student, z0, eps0, lam, LangevinConfig(K=1, gamma_eps=1.0, cancel="full"),
                rng=torch.Generator().manual_seed(0))
    torch.testing.assert_close(res.eps.double(), s.double()[:, None] * ds, rtol=1e-4, atol=1e-5)

    gen.zero_grad()
    loss, _ = di_generator_loss(gen, teacher, student, z0, eps0, lam, weighting="one")
    loss.backward()
    v = (a.double()[:, None] * ds)                                                       # w alpha ds, w = 1
    torch.testing.assert_close(gen.A.grad.double(), -(v[:, :, None] * z0.double()[:, None, :]).mean(0),
                               rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gen.b.grad.double(), -v.mean(0), rtol=1e-4, atol=1e-6)


def test_z_clip_limits_each_samples_z_drift_and_nothing_else():
    """One z step with eps held still: z_1 = z_0 + drift + sqrt(2 g_z) n. The trust region scales a
    sample's drift down to z_clip * sqrt(d) when it is longer, and leaves shorter drifts and the noise
    as they are."""
    gen = LinearGenerator(A0 * 6, B0)                                   # a steep generator: large J^T ds
    teacher, student = gaussian_teacher(M, C * 0.05), exact_student(A0 * 6, B0)
    z0, eps0 = _pair(4, n=64)
    lam = torch.linspace(-2, 6, len(z0))
    g_z, clip = 0.05, 0.2

    def step(z_clip):
        cfg = LangevinConfig(K=1, move_data=False, move_z=True, z_precondition="none", gamma_z=g_z,
                             cancel="none", z_clip=z_clip)
        return estep(gen, teacher, student, z0, eps0, lam, cfg, rng=torch.Generator().manual_seed(9)).z_chain

    noise = math.sqrt(2 * g_z) * torch.randn(z0.shape, generator=torch.Generator().manual_seed(9))
    free, held = step(None) - z0 - noise, step(clip) - z0 - noise
    lim = clip * math.sqrt(2)
    long = free.norm(dim=1) > lim
    assert long.sum() >= 10 and (~long).sum() >= 5                      # both cases occur in the batch
    torch.testing.assert_close(held.norm(dim=1)[long], torch.full((int(long.sum()),), lim), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(held[long] / held[long].norm(dim=1, keepdim=True),
                               free[long] / free[long].norm(dim=1, keepdim=True), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(held[~long], free[~long], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="z_clip"):
        LangevinConfig(z_clip=0.0)


def test_runs_are_named_from_their_chain():
    from emd_lib.distill import method_name
    from emd_lib.langevin import JOINT_CHAIN, chain_label

    assert chain_label(LangevinConfig()) == "(eps, -)" and chain_label({"space": "x", "move_z": True}) == "(x, z)"
    assert chain_label(LangevinConfig(move_data=False, move_z=True)) == "(-, z)"
    assert method_name("emd", LangevinConfig(K=8)) == "EMD-8"
    assert method_name("emd", LangevinConfig(K=4, **JOINT_CHAIN)) == "EMD-4 (eps, z)"
    assert method_name("emd", {"K": 2, "space": "x"}) == "EMD-2 (x, -)" and method_name("di", {}) == "Diff-Instruct"


# ---- the Jacobian-scaled z step and the Metropolis-adjusted chain ---------------------------------

def test_jacobian_norm_is_the_spectral_norm_of_autograds_jacobian():
    from emd_lib.langevin import jacobian_norm
    from emd_lib.nets import MLPGenerator

    torch.manual_seed(0)
    net = MLPGenerator(2, 32, 2)
    z = torch.randn(6, 2, generator=torch.Generator().manual_seed(5)) * 2
    exact = torch.stack([torch.linalg.matrix_norm(torch.autograd.functional.jacobian(net, zi), ord=2) for zi in z])
    torch.testing.assert_close(jacobian_norm(net, z, iters=40), exact, rtol=1e-4, atol=1e-6)
    assert (jacobian_norm(net, z, iters=1) <= exact * (1 + 1e-5)).all()              # a lower bound on the way
    assert float((exact.max() - exact.min()) / exact.max()) > 0.05                   # the norm differs per sample


@pytest.mark.parametrize("gamma_z", [0.3, 1.0])
def test_jacobian_step_contracts_z_by_the_curvature_bound(gamma_z):
    """Student equal to the teacher (no score gap), a linear generator g(z) = A z + b: with the z step
    scaled by the Jacobian, each sample's step is g_z = gamma_z / (1 + alpha^2 ||A||_2^2 / sigma^2), and the
    noise-cancelled z is (1 - g_z)^K z0 per sample."""
    A = A0 * 3
    gen = LinearGenerator(A, B0)
    same = exact_student(A, B0)
    z0, eps0 = _pair(6)
    lam = torch.linspace(-4, 5, len(z0))
    a, s = VP.alpha_sigma(lam)
    g = gamma_z / (1 + a**2 * torch.linalg.matrix_norm(A, ord=2) ** 2 / s**2)
    K = 5
    res = estep(gen, same, same, z0, eps0, lam,
                LangevinConfig(K=K, move_z=True, gamma_z=gamma_z, z_precondition="jacobian", jac_iters=60,
                               cancel="full", cancel_z=True), rng=torch.Generator().manual_seed(3))
    torch.testing.assert_close(res.z, (1 - g[:, None]) ** K * z0, rtol=1e-4, atol=1e-6)
    assert g.max() / g.min() > 100                                                    # the step does vary
    torch.testing.assert_close(torch.tensor(res.diagnostics["jac_norm"]), torch.linalg.matrix_norm(A, ord=2),
                               rtol=1e-4, atol=0.0)


def test_metropolis_accepts_with_the_exact_hastings_ratio_on_a_gaussian_target():
    """One MALA step on (eps, z) with a linear generator and Gaussian teacher and student: rho is Gaussian,
    the trapezoid rule is exact, and each sample must be accepted exactly when log U < log rho(u') - log rho(u)
    + log q(u | u') - log q(u' | u), computed here from the closed-form log rho."""
    gen, teacher, _, _ = setup()
    student = exact_student(A0 * 0.6, B0 + 0.4)                  # off, so that the score gap is not zero
    n = 400
    z0, eps0 = _pair(8, n=n)
    lam = torch.linspace(-3, 4, n)
    g_eps, g_z = 0.8, 0.6                                        # large steps: many rejections
    cfg = LangevinConfig(K=1, move_z=True, gamma_eps=g_eps, gamma_z=g_z, z_precondition="none", cancel="none",
                         metropolis=True)
    res = estep(gen, teacher, student, z0, eps0, lam, cfg, rng=torch.Generator().manual_seed(11))
    # the same random numbers: eps noise, z noise, then one normal per sample for the uniform
    rng = torch.Generator().manual_seed(11)
    n_eps, n_z, n_u = torch.randn(n, 2, generator=rng), torch.randn(n, 2, generator=rng), torch.randn(n, 1, generator=rng)
    a, s = (t[:, None] for t in VP.alpha_sigma(lam))

    def logp(eps, z):                                              # log rho in (eps, z): x_t = a g(z) + s eps
        gm, tm, sm = LinearGenerator(A0, B0), gaussian_teacher(M, C), exact_student(A0 * 0.6, B0 + 0.4)
        x_t = a * gm(z) + s * eps
        return tm.log_prob(x_t, lam) - sm.log_prob(x_t, lam) - 0.5 * (eps**2).sum(1) - 0.5 * (z**2).sum(1)

    def grads(eps, z):
        e, zz = eps.clone().requires_grad_(True), z.clone().requires_grad_(True)
        return torch.autograd.grad(logp(e, zz).sum(), (e, zz))

    ge, gz = grads(eps0, z0)
    e1, z1 = eps0 + g_eps * ge + math.sqrt(2 * g_eps) * n_eps, z0 + g_z * gz + math.sqrt(2 * g_z) * n_z
    ge1, gz1 = grads(e1, z1)
    log_q_fwd = -((e1 - eps0 - g_eps * ge) ** 2).sum(1) / (4 * g_eps) - ((z1 - z0 - g_z * gz) ** 2).sum(1) / (4 * g_z)
    log_q_rev = -((eps0 - e1 - g_eps * ge1) ** 2).sum(1) / (4 * g_eps) - ((z0 - z1 - g_z * gz1) ** 2).sum(1) / (4 * g_z)
    log_alpha = (logp(e1, z1) - logp(eps0, z0) + log_q_rev - log_q_fwd).detach()
    unif = 0.5 * (1 + torch.erf(n_u[:, 0] / math.sqrt(2)))
    accept = torch.log(unif) < log_alpha.clamp(max=0)
    margin = (torch.log(unif) - log_alpha.clamp(max=0)).abs() > 1e-3                 # leave float ties out
    moved = (res.z_chain - z0).abs().sum(1) > 0
    assert 0.2 < accept.float().mean() < 0.9                                          # both outcomes occur
    assert torch.equal(moved[margin], accept[margin])
    torch.testing.assert_close(res.z_chain[accept & margin], z1[accept & margin].detach(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(res.eps_chain[~accept & margin], eps0[~accept & margin])
    assert abs(res.diagnostics["accept"] - accept.float().mean().item()) < 0.01


def test_metropolis_chain_keeps_a_stiff_z_step_finite_and_samples_rho():
    """A steep generator (g(z) = 5 A0 z + b) makes the plain z step of 0.1 overshoot and the unadjusted chain
    leaves for infinity; the Metropolis-adjusted chain with the same steps stays finite and its (x_t, z)
    has rho's exact moments."""
    A = A0 * 5
    gen, teacher, student = LinearGenerator(A, B0), gaussian_teacher(M, C), exact_student(A, B0)
    n, lam = 3000, 1.0
    g = torch.Generator().manual_seed(4)
    z0, eps0 = torch.randn(n, 2, generator=g), torch.randn(n, 2, generator=g)
    lam_b = torch.full((n,), lam)
    kw = dict(K=1000, move_z=True, gamma_eps=0.3, gamma_z=0.1, z_precondition="none", cancel="none")
    ula = estep(gen, teacher, student, z0, eps0, lam_b, LangevinConfig(**kw), rng=torch.Generator().manual_seed(5))
    assert not torch.isfinite(ula.z_chain).all() or ula.z_chain.abs().max() > 1e6
    res = estep(gen, teacher, student, z0, eps0, lam_b, LangevinConfig(**kw, metropolis=True),
                rng=torch.Generator().manual_seed(5))
    a, s = (float(v) for v in VP.alpha_sigma(torch.tensor(lam)))
    with torch.no_grad():
        x_t = a * gen(res.z_chain) + s * res.eps_chain
    u = torch.cat([x_t, res.z_chain], 1).double()
    mean, cov = rho_moments(A, B0, M, C, a, s)
    assert (u.mean(0) - mean).abs().max() < 0.08, (u.mean(0), mean)           # Monte Carlo error about 0.02
    assert ((torch.cov(u.T) - cov).abs() / cov.diagonal().sqrt().outer(cov.diagonal().sqrt())).max() < 0.12
    assert 0.1 < res.diagnostics["accept"] < 0.9


def test_new_chain_settings_are_checked():
    LangevinConfig(move_z=True, z_precondition="jacobian", jac_iters=3, metropolis=True, cancel="none")
    with pytest.raises(ValueError, match="jac_iters"):
        LangevinConfig(jac_iters=0)
    with pytest.raises(ValueError, match="z_precondition"):
        LangevinConfig(z_precondition="jac")
    for bad in ({"cancel": "full"}, {"cancel": "none", "z_clip": 0.1}, {"cancel": "none", "space": "x"},
                {"cancel": "none", "cancel_z": True}):
        with pytest.raises(ValueError, match="metropolis"):
            LangevinConfig(metropolis=True, **bad)
    with pytest.raises(ValueError, match="metropolis"):
        LangevinConfig(metropolis=1, cancel="none")
