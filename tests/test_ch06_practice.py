"""Chapter 6's library code: the sweeps' helpers (emd_lib.experiments.ch06)."""
import json

import pytest
import torch

from emd_lib.distill import Distiller
from emd_lib.experiments import ch06
from emd_lib.mixtures import grid25, ring8
from emd_lib.schedules import EDM, VP

TINY = dict(batch=32, init_steps=3, student_warmup=2, width=32, depth=2)


class _Counter:
    """Wrap a teacher-like object and count calls of ``eps`` (the chains' only use of it)."""

    def __init__(self, inner):
        self.inner, self.calls = inner, 0
        self.schedule, self.dim = inner.schedule, getattr(inner, "dim", None)

    def eps(self, *a, **k):
        self.calls += 1
        return self.inner.eps(*a, **k)

    def __getattr__(self, name):
        return getattr(self.inner, name)


@pytest.mark.parametrize("method,K,move_z", [("di", 1, False), ("emd", 1, False), ("emd", 4, False), ("emd", 3, True)])
def test_evals_per_step_matches_counted_calls(method, K, move_z):
    mix = ring8()
    cfg = ch06.variant_config({"method": method, "langevin": {"K": K, "move_z": move_z}}, steps=2, base=TINY)
    d = Distiller(mix, cfg)
    teacher, student = _Counter(mix), _Counter(d.student)
    d.teacher, d.student = teacher, student
    fwd = []
    h = d.generator.register_forward_hook(lambda *a: fwd.append(1))
    d.generator_step()
    h.remove()
    want = ch06.evals_per_step(method, K, move_z)
    assert (teacher.calls, student.calls, len(fwd)) == (want["teacher"], want["student"], want["generator_fwd"])


def test_init_target_vp_and_edm():
    z = torch.randn(20, 2, generator=torch.Generator().manual_seed(0))
    vp = ring8(VP)
    torch.testing.assert_close(ch06.init_target(vp, -2.0, z), vp.denoise(z, torch.full((20,), -2.0)))
    edm = ring8(EDM)
    s = float(torch.exp(torch.tensor(1.0)))        # sigma* = exp(-lam*/2) at lam* = -2
    torch.testing.assert_close(ch06.init_target(edm, -2.0, z), edm.denoise(s * z, torch.full((20,), -2.0)))
    # lower lam* collapses the start towards the data mean
    spread = [float(ch06.init_target(vp, ls, z).std(0).mean()) for ls in (0.0, -2.0, -6.0, -10.0)]
    assert spread == sorted(spread, reverse=True)


def test_correct_baseline_and_chain():
    mix = grid25()
    d = Distiller(mix, ch06.variant_config({}, steps=1, base=TINY))
    z = torch.randn(50, 2, generator=torch.Generator().manual_seed(1))
    base = ch06.correct(d.generator, mix, d.student, z, lam=4.0, steps=0, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(base["generator"], d.generator(z))
    # the baseline is the teacher's denoiser at alpha g(z) + sigma eps with the seed's eps
    a, s = (float(v) for v in VP.alpha_sigma(torch.tensor(4.0)))
    eps = torch.randn(z.shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = mix.denoise(a * d.generator(z) + s * eps, torch.full((50,), 4.0))
    torch.testing.assert_close(base["denoised"], want)
    out = ch06.correct(d.generator, mix, d.student, z, lam=4.0, steps=5, seed=3)
    assert all(v.shape == (50, 2) and torch.isfinite(v).all() for v in out.values())
    assert not torch.allclose(out["generator"], base["generator"])           # z moved
    out_e = ch06.correct(d.generator, mix, d.student, z, lam=4.0, steps=5, move_z=False, seed=3)
    torch.testing.assert_close(out_e["generator"], base["generator"])         # z frozen
    with pytest.raises(ValueError):
        ch06.correct(d.generator, mix, d.student, z, lam=12.0, steps=0)


def test_run_sweep_shares_starts_and_summarises():
    mix = ring8()
    variants = {"a": {}, "b": {"langevin": {"gamma_eps": 0.1}}, "c": {"lam_star": -6.0}}
    runs = ch06.run_sweep("hparams", mix, seeds=[0], steps=2, n_eval=60, eval_every=1, variants=variants,
                          progress=False, base=TINY)
    # a and b share the start (same step-0 metrics); c starts elsewhere
    assert runs["a"][0]["init_metrics"]["mmd"] == runs["b"][0]["init_metrics"]["mmd"]
    assert runs["c"][0]["init_metrics"]["mmd"] != runs["a"][0]["init_metrics"]["mmd"]
    s = ch06.summarise(runs)
    assert set(s) == set(variants) and s["a"]["diverged"] == 0
    assert {"tv", "mmd", "recall", "init_tv"} <= set(s["a"])


def test_variant_config_layers():
    c = ch06.variant_config({"langevin": {"K": 2}, "batch": 64}, seed=4, steps=9, base={"batch": 16, "width": 8})
    assert (c.batch, c.width, c.seed, c.steps, c.langevin.K) == (64, 8, 4, 9, 2)
    assert set(ch06.SWEEPS) == {"lamstar", "weighting", "hparams"}


def test_cli_mcmc_writes_json(tmp_path):
    out = tmp_path / "m.json"
    ch06.MCMC_SETTINGS_BACKUP = dict(ch06.MCMC_SETTINGS)
    try:
        ch06.MCMC_SETTINGS.clear()
        ch06.MCMC_SETTINGS.update({"lam 6, denoise only": {"lam": 6.0, "steps": 0},
                                   "lam 6, 300 steps": {"lam": 6.0, "steps": 2}})
        ch06.main(["--sweep", "mcmc", "--seeds", "0", "--steps", "1", "--n-eval", "60", "--batch", "16",
                   "--init-steps", "2", "--student-warmup", "1", "--out", str(out)])
    finally:
        ch06.MCMC_SETTINGS.clear()
        ch06.MCMC_SETTINGS.update(ch06.MCMC_SETTINGS_BACKUP)
    d = json.loads(out.read_text())
    assert {"command", "date", "machine", "wall_s", "runs", "clouds"} <= set(d)
    row = d["runs"][0]["settings"]["lam 6, 300 steps"]
    assert {"denoised", "noisy", "generator"} <= set(row)
    assert len(d["clouds"]["before"]) == 60


def _stored_sweep():
    entry = lambda m, s: {"mean": m, "std": s}  # noqa: E731
    summ = {"a": {"tv": entry(0.05, 0.01), "mmd": entry(0.02, 0.001), "recall": entry(0.8, 0.05),
                  "init_tv": entry(0.2, 0.0), "diverged": 0, "n": 3},
            "b": {"tv": entry(0.15, 0.03), "mmd": entry(0.06, 0.002), "recall": entry(0.6, 0.1),
                  "init_tv": entry(0.2, 0.0), "diverged": 1, "n": 3}}
    runs = {"a": [{"clipped_frac": 0.0, "grad_norm_mean": 2.0}, {"clipped_frac": 0.0, "grad_norm_mean": 4.0}],
            "b": [{"clipped_frac": 0.5, "grad_norm_mean": 20.0}, {"clipped_frac": 1.0, "grad_norm_mean": 40.0}]}
    return {"sweep": "s", "mixture": "ring8", "steps": 5, "seeds": [0, 1, 2], "summary": summ, "runs": runs}


def test_summary_table_rows_and_columns():
    res = _stored_sweep()
    t = ch06.summary_table(res, first="start", init=True)
    assert t.columns == ["start", "TV at step 0", "TV", "MMD", "recall", "diverged"]
    assert t.rows[0] == ["a", "0.200", "0.050 ± 0.010", "0.0200 ± 0.0010", "0.80 ± 0.05", "0 of 3"]
    assert t.rows[1][-1] == "1 of 3" and "ring8, 5 generator steps" in t.title
    assert "<table" in t._repr_html_()
    res["summary"]["b"]["diverged"] = 0                # no diverged run: no such column
    t = ch06.summary_table(res, ch06.SUMMARY_METRICS[:1])
    assert t.columns == ["variant", "TV"] and t.rows[1] == ["b", "0.150 ± 0.030"]
    assert ch06.pm(res["summary"]["a"], "recall", ".2f") == "0.80 ± 0.05"


def test_clip_fractions():
    clip = ch06.clip_fractions(_stored_sweep())
    assert clip == {("s", "a"): (0.0, 3.0), ("s", "b"): (1.0, 30.0)}


def test_mcmc_mean_and_table():
    def setting(w3, sec):
        rep = {"within_3sd": w3, "mmd": 0.01, "recall": 0.9, "tv": 0.1}
        return {"denoised": rep, "generator": {**rep, "within_3sd": w3 / 2}, "seconds": sec}

    mc = {"mixture": "grid25", "steps": 4, "seeds": [0, 1],
          "runs": [{"settings": {"x": setting(0.4, 1.0), "y": setting(1.0, 2.0)}},
                   {"settings": {"x": setting(0.6, 3.0), "y": setting(0.8, 2.0)}}]}
    assert ch06.mcmc_mean(mc, "x") == pytest.approx(0.5)
    assert ch06.mcmc_mean(mc, "y", "generator") == pytest.approx(0.45)
    t = ch06.mcmc_table(mc)
    assert [r[0] for r in t.rows] == ["x", "y"]
    assert t.rows[0] == ["x", "0.500", "0.0100", "0.90", "0.100", "0.250", "2.0"]


def test_the_stored_sweeps_tabulate():
    from emd_lib.experiments import load_result

    for name in ("lamstar", "weighting", "hparams"):
        res = load_result(f"ch06_{name}", quiet=True)
        assert len(ch06.summary_table(res)) == len(res["summary"])
    mc = load_result("ch06_mcmc", quiet=True)
    assert len(ch06.mcmc_table(mc)) == len(mc["runs"][0]["settings"])
