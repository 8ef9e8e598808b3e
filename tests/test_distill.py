"""The distillation loop: the K = 1 identity with Diff-Instruct, repeatable seeds, a short run that learns."""
import pytest
import torch

from emd_lib.distill import DistillConfig, Distiller, di_generator_loss, emd_generator_loss
from emd_lib.langevin import LangevinConfig
from emd_lib.mixtures import ring8
from emd_lib.nets import MLPGenerator, MLPScore
from emd_lib.teachers import NetworkTeacher


def grads(loss, params):
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_emd_k1_equals_diff_instruct_gradient(seed):
    """K = 1, eps only, gamma_eps = 1, noise cancelled: the M-step gradient IS the VSD/DI gradient."""
    torch.manual_seed(seed)
    teacher = ring8()
    gen = MLPGenerator(2, 64, 2)
    student = NetworkTeacher(MLPScore(2, 64, 2), teacher.schedule)
    g = torch.Generator().manual_seed(seed)
    z, eps = torch.randn(128, 2, generator=g), torch.randn(128, 2, generator=g)
    lam = torch.rand(128, generator=g) * 12 - 6
    params = list(gen.parameters())
    di, _ = di_generator_loss(gen, teacher, student, z, eps, lam)
    cfg = LangevinConfig(K=1, gamma_eps=1.0, cancel="full", move_z=False)
    emd, _ = emd_generator_loss(gen, teacher, student, z, eps, lam, cfg, rng=g)
    g_di, g_emd = grads(di, params), grads(emd, params)
    assert g_di.norm() > 1e-3                       # a real, non-zero gradient
    torch.testing.assert_close(g_emd, g_di, rtol=1e-4, atol=1e-6)
    # other step sizes scale it (the zero-mean initial-noise term is cancelled too)
    emd3, _ = emd_generator_loss(gen, teacher, student, z, eps, lam, LangevinConfig(K=1, gamma_eps=0.3), rng=g)
    torch.testing.assert_close(grads(emd3, params), 0.3 * g_di, rtol=1e-4, atol=1e-6)
    # without cancellation it is not the DI gradient
    emd_n, _ = emd_generator_loss(gen, teacher, student, z, eps, lam, LangevinConfig(K=1, gamma_eps=1.0, cancel="none"),
                                  rng=g)
    assert (grads(emd_n, params) - g_di).norm() > 0.1 * g_di.norm()


def small_cfg(method, seed=0, **kw):
    return DistillConfig(method=method, steps=15, batch=64, width=32, depth=2, student_warmup=5, init_steps=10,
                         seed=seed, langevin=LangevinConfig(K=2, move_z=True, gamma_z=0.05), **kw)


@pytest.mark.parametrize("method", ["emd", "di"])
def test_same_seed_same_run(method):
    runs = []
    for _ in range(2):
        torch.manual_seed(123)  # global state must not matter; only cfg.seed does
        d = Distiller(ring8(), small_cfg(method, seed=7))
        h = d.train(progress=False)
        runs.append((h["loss_g"], d.sample(100, generator=torch.Generator().manual_seed(0))))
        torch.manual_seed(999)
    assert runs[0][0] == runs[1][0]
    assert torch.equal(runs[0][1], runs[1][1])
    d2 = Distiller(ring8(), small_cfg(method, seed=8))
    assert d2.train(progress=False)["loss_g"] != runs[0][0]


def test_history_and_eval_hook():
    d = Distiller(ring8(), small_cfg("emd"))
    h = d.train(progress=False, eval_every=5, eval_fn=lambda dd: {"mean_norm": float(dd.sample(50).norm(dim=1).mean())})
    assert len(h["loss_g"]) == 15 and h["eval_step"] == [5, 10, 15]
    for key in ("grad_norm", "estep_grad_data_norm", "estep_grad_z_norm", "estep_moved_data", "estep_moved_z"):
        assert key in h and len(h[key]) == 15
    assert all(v > 0 for v in h["estep_moved_z"])


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="method"):
        DistillConfig(method="gan")
    with pytest.raises(ValueError, match="lam_star"):
        Distiller(ring8(), DistillConfig(lam_star=-40.0))
    with pytest.raises(ValueError, match="lr_g"):
        DistillConfig(lr_g=0)


def test_a_nonfinite_generator_loss_stops_before_the_weights_change(monkeypatch):
    import emd_lib.distill as D
    from emd_lib.mixtures import ring8

    d = D.Distiller(ring8(), D.DistillConfig(steps=3, batch=64, width=16, depth=2, init_steps=0, student_warmup=0,
                                             ema=0.9, langevin=LangevinConfig(K=1)))
    before = [p.detach().clone() for p in list(d.generator.parameters()) + list(d.ema.parameters())]
    real = D.emd_generator_loss
    monkeypatch.setattr(D, "emd_generator_loss", lambda *a, **k: (real(*a, **k)[0] * float("nan"), {}))
    with pytest.raises(FloatingPointError, match="non-finite generator loss"):
        d.train(progress=False)
    after = list(d.generator.parameters()) + list(d.ema.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, after))


def test_whole_number_floats_are_used_as_ints():
    c = DistillConfig(steps=2.0, batch=8.0)
    assert c.steps == 2 and isinstance(c.steps, int) and isinstance(c.batch, int)
