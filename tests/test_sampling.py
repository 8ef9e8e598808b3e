"""ODE and SDE samplers on the exact teacher: many steps reach the target; NFE is counted."""
import pytest
import torch

from emd_lib.metrics import mixture_report
from emd_lib.mixtures import irregular
from emd_lib.sampling import sample_ode, sample_sde
from emd_lib.schedules import EDM, VP


@pytest.mark.parametrize("schedule", [VP, EDM], ids=["vp", "edm"])
def test_ode_sampler_reaches_the_mixture(schedule):
    mix = irregular(schedule)
    x, nfe = sample_ode(mix, 3000, n_steps=40, generator=torch.Generator().manual_seed(0))
    assert nfe == 2 * 40 - 1
    rep = mixture_report(mix, x)
    assert rep["tv"] < 0.05 and rep["modes_covered"] == 7 and rep["within_3sd"] > 0.95, rep


def test_sde_sampler_reaches_the_mixture_and_one_step_does_not():
    mix = irregular()
    x, nfe = sample_sde(mix, 3000, n_steps=200, generator=torch.Generator().manual_seed(0))
    assert nfe == 200
    good = mixture_report(mix, x)
    assert good["tv"] < 0.05 and good["within_3sd"] > 0.95, good
    x1, nfe1 = sample_sde(mix, 3000, n_steps=1, generator=torch.Generator().manual_seed(0))
    bad = mixture_report(mix, x1)
    assert nfe1 == 1 and bad["mmd"] > 5 * good["mmd"]


def test_metrics_on_exact_samples():
    from emd_lib.metrics import knn_precision_recall, mmd
    mix = irregular()
    a = mix.sample(2000, generator=torch.Generator().manual_seed(1))
    b = mix.sample(2000, generator=torch.Generator().manual_seed(2))
    p, r = knn_precision_recall(a, b)
    assert p > 0.9 and r > 0.9
    shifted = b + 1.0
    assert mmd(a, shifted) > 20 * mmd(a, b)
    p2, r2 = knn_precision_recall(a, b[b[:, 0] > 0])   # half the modes only: recall drops
    assert r2 < 0.7 and p2 > 0.85


def test_both_samplers_follow_their_generator():
    """The SDE's per-step noise comes from the caller's generator too, so a seed fixes the whole run."""
    t = irregular(VP)
    for sampler in (sample_ode, sample_sde):
        runs = [sampler(t, 64, n_steps=5, generator=torch.Generator().manual_seed(s))[0] for s in (1, 1, 2)]
        assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


def test_randn_draws_on_the_generators_device():
    from emd_lib import randn

    g = torch.Generator().manual_seed(0)
    a = randn((3, 2), g, "cpu")
    b = randn((3, 2), torch.Generator().manual_seed(0), torch.device("meta"))   # drawn on the CPU, then moved
    assert b.device.type == "meta" and b.shape == a.shape
    assert torch.equal(a, torch.randn(3, 2, generator=torch.Generator().manual_seed(0)))


def test_modes_hit_counts_only_samples_that_land_on_a_mode():
    """Stray samples lend mass to every mode through the nearest-component rule, so modes_covered
    can count modes no sample is near; modes_hit cannot."""
    from emd_lib.mixtures import grid25

    mix, g = grid25(), torch.Generator().manual_seed(0)
    x = mix.sample(20000, generator=g)
    k, _ = mix.assign(x)
    kept = x[k > 2][:5000]                                    # modes 0, 1 and 2 dropped
    strays = torch.rand(5000, 2, generator=g) * 5 - 2.5       # half the samples spread over the grid
    rep = mixture_report(mix, torch.cat([kept, strays]))
    assert rep["modes_covered"] == 25 and rep["modes_hit"] == 22
    exact = mixture_report(mix, mix.sample(4000, generator=g))
    assert exact["modes_covered"] == exact["modes_hit"] == 25
    assert mixture_report(mix, strays[:6] + 100)["modes_hit"] == 0       # nothing near any mode
