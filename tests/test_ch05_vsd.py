"""Chapter 5's library code: the K = 1 identity and the K-sweep helpers (emd_lib.experiments.ch05)."""
import json

import pytest
import torch

from emd_lib.distill import DistillConfig
from emd_lib.experiments import ch05
from emd_lib.mixtures import grid25, ring8

TINY = dict(batch=32, init_steps=5, student_warmup=3, width=32, depth=2)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("weighting", ["sigma2", "one"])
def test_k1_identity_gamma_one_full_cancel(seed, weighting):
    g = ch05.k1_gradients(ring8(), gamma=1.0, cancel="full", weighting=weighting, seed=seed, batch=64)
    scale = float(g["di"].abs().max())
    assert scale > 0
    assert float((g["emd"] - g["di"]).abs().max()) <= 1e-5 * scale


@pytest.mark.parametrize("gamma", [0.1, 0.3, 0.7])
def test_other_gamma_scale_and_zero_mean_term(gamma):
    g = ch05.k1_gradients(ring8(), gamma=gamma, cancel="full", seed=3)
    assert torch.allclose(g["emd"], gamma * g["di"], atol=1e-6 * float(g["di"].abs().max()) + 1e-8)
    gi = ch05.k1_gradients(ring8(), gamma=gamma, cancel="injected", seed=3)
    pred = gamma * gi["di"] + (1 - gamma) * gi["eps0"]
    assert torch.allclose(gi["emd"], pred, atol=1e-5 * float(pred.abs().max()))
    # the eps0 term is really there (the identity is not trivially satisfied)
    assert float((gi["emd"] - gamma * gi["di"]).norm()) > 1e-3 * float(gi["emd"].norm())


def test_identity_fails_without_cancellation():
    g = ch05.k1_gradients(ring8(), gamma=1.0, cancel="none", seed=0)
    # with gamma = 1 and no cancellation the injected noise sqrt(2) n reaches the gradient
    assert float((g["emd"] - g["di"]).norm()) > 0.1 * float(g["di"].norm())


def test_eps0_term_has_zero_mean():
    gen, student = ch05.random_pair(ring8(), seed=0)
    single = ch05.k1_gradients(ring8(), gen, student, batch=64, seed=0)["eps0"]
    mean = torch.stack([ch05.k1_gradients(ring8(), gen, student, batch=64, seed=s)["eps0"] for s in range(20)]).mean(0)
    assert float(mean.norm()) < 0.5 * float(single.norm())


def test_label_config():
    assert ch05.label_config("DI").method == "di"
    c = ch05.label_config("EMD-16", seed=3, steps=7, batch=8)
    assert (c.method, c.langevin.K, c.seed, c.steps, c.batch) == ("emd", 16, 3, 7, 8)
    cz = ch05.label_config("EMD-4 (eps, z)")
    assert cz.langevin.move_z and cz.langevin.K == 4 and not ch05.label_config("EMD-4").langevin.move_z
    with pytest.raises(ValueError):
        ch05.label_config("VSD")


def test_run_one_paired_start_is_deterministic():
    mix = ring8()
    cfg = ch05.label_config("EMD-2", seed=0, steps=3, **TINY)
    start = ch05.prepare(mix, cfg)
    r1 = ch05.run_one(mix, cfg, n_eval=100, eval_every=2, start=start)
    r2 = ch05.run_one(mix, cfg, n_eval=100, eval_every=2, start=start)
    assert r1["metrics"]["tv"] == r2["metrics"]["tv"]
    assert r1["curves"]["step"] == [2, 3]
    assert set(r1["curves"]) >= {"tv", "mmd", "recall"}
    s = ch05.summarise({"EMD-2": [r1, r2]})
    assert s["EMD-2"]["tv"]["std"] == 0.0 and len(s["EMD-2"]["masses"]["mean"]) == mix.n_components


def test_linear_knob_and_moment_match():
    from emd_lib.divergences import mixture_moments
    from emd_lib.mixtures import bimodal

    m, C = mixture_moments(bimodal(), torch.float64)
    # weights 0.7 / 0.3 at -1.5 / +1.5, std 0.4: mean -0.6, variance 0.16 + 0.7 * 0.9^2 + 0.3 * 2.1^2
    assert abs(float(m[0]) + 0.6) < 1e-6 and abs(float(C[0, 0]) - (0.16 + 0.7 * 0.81 + 0.3 * 4.41)) < 1e-5
    r = ch05.linear_knob(bimodal(), "DI", steps=60, batch=128, lr=3e-2)
    assert r["b"][0] < -0.2 and r["std"][0] > 0.6          # moved from b = 0, std 0.5 towards the mixture
    rz = ch05.linear_knob(bimodal(), "EMD-2 (eps, z)", steps=3, batch=32)
    assert len(rz["std"]) == 2 and all(v > 0 for v in rz["std"])
    rn = ch05.linear_knob(bimodal(), "EMD-2 (eps, z)", steps=3, batch=32, cancel="none")   # reaches the E-step
    assert rn["C"] != rz["C"] and ch05.linear_knob(bimodal(), "EMD-2 (eps, z)", steps=3, batch=32)["C"] == rz["C"]


def test_linear_sweep_records_its_settings(tmp_path):
    out = tmp_path / "lin.json"
    ch05.main(["--sweep", "linear", "--labels", "EMD-1", "--seeds", "0", "--steps", "2", "--cancel", "none",
               "--out", str(out)])
    rec = json.loads(out.read_text())
    assert rec["settings"] == {"batch": 256, "lr": 1e-2, "lam_min": -6.0, "lam_max": 6.0, "gamma_eps": 0.3,
                               "cancel": "none"}
    assert rec["command"].endswith("--cancel none --out " + str(out))


def test_time_per_step_orders_k():
    t = ch05.time_per_step(ring8(), ["DI", "EMD-8"], steps=2, reps=2, batch=64, width=32, depth=2,
                           configs={"EMD-2 z": DistillConfig(width=32, depth=2)})
    assert set(t) == {"DI", "EMD-8", "EMD-2 z"}
    assert all(v["median"] > 0 for v in t.values())
    assert t["EMD-8"]["median"] > t["DI"]["median"]


def test_cli_writes_json(tmp_path):
    out = tmp_path / "k.json"
    ch05.main(["--mixture", "grid25", "--labels", "DI", "EMD-1", "--seeds", "0", "--steps", "2", "--eval-every", "1",
               "--n-eval", "60", "--timing-reps", "1", "--batch", "16", "--init-steps", "2", "--student-warmup", "1",
               "--out", str(out)])
    d = json.loads(out.read_text())
    assert {"command", "date", "machine", "wall_s", "summary", "timing", "runs"} <= set(d)
    assert d["command"].startswith("python -m emd_lib experiment ch05")
    assert set(d["summary"]) == {"DI", "EMD-1"} and d["mixture"] == "grid25"
    assert len(d["summary"]["DI"]["masses"]["mean"]) == grid25().n_components


def test_linear_sweep_without_full_cancellation_never_overwrites_the_full_one(tmp_path, monkeypatch):
    monkeypatch.setattr(ch05, "DATA_DIR", tmp_path)
    (tmp_path / "results").mkdir()
    ch05.main(["--sweep", "linear", "--labels", "EMD-1", "--seeds", "0", "--steps", "2", "--cancel", "none"])
    assert [p.name for p in (tmp_path / "results").iterdir()] == ["ch05_linear_bimodal_cancel_none.json"]
    with pytest.raises(SystemExit):
        ch05.main(["--labels", "EMD-1", "--cancel", "none"])          # the networks sweep has no --cancel


def test_linear_knob_weighting_and_chain_settings_reach_the_run():
    from emd_lib.mixtures import bimodal

    base = ch05.linear_knob(bimodal(), "DI", steps=3, batch=32)
    assert base["weighting"] == "sigma2"
    one = ch05.linear_knob(bimodal(), "DI", steps=3, batch=32, weighting="one")
    assert one["weighting"] == "one" and one["C"] != base["C"]
    z = ch05.linear_knob(bimodal(), "EMD-2 (eps, z)", steps=3, batch=32, cancel="none")
    zp = ch05.linear_knob(bimodal(), "EMD-2 (eps, z)", steps=3, batch=32, cancel="none",
                          langevin={"z_precondition": "none", "gamma_z": 0.05})
    assert zp["C"] != z["C"]
    with pytest.raises(ValueError, match="weighting"):
        ch05.linear_knob(bimodal(), "DI", steps=1, batch=8, weighting="flat")


def test_linear_starts():
    from emd_lib.divergences import mixture_moments
    from emd_lib.mixtures import bimodal

    A, b = ch05.linear_start(bimodal(), "narrow")
    assert torch.equal(A, 0.5 * torch.eye(2)) and torch.equal(b, torch.zeros(2))
    A, b = ch05.linear_start(bimodal(), "fit")
    m, C = mixture_moments(bimodal(), torch.float64)
    torch.testing.assert_close((A @ A.T).double(), C, atol=1e-5, rtol=0)
    torch.testing.assert_close(b.double(), m, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="start must be"):
        ch05.linear_start(bimodal(), "wide")


def test_moving_z_sweep_writes_every_cell(tmp_path):
    out = tmp_path / "mz.json"
    ch05.main(["--sweep", "moving_z", "--seeds", "0", "--steps", "2", "--batch", "16", "--out", str(out)])
    rec = json.loads(out.read_text())
    cells = {(r["weighting"], r["start"], r["method"]) for r in rec["runs"]}
    assert cells == {(w, s, m) for w in ("one", "sigma2") for s in ("narrow", "fit") for m in ch05.MOVING_Z}
    assert rec["methods"]["EMD-16 (eps, z), no cancel"]["langevin"]["cancel"] == "none"
    assert rec["command"].startswith("python -m emd_lib experiment ch05 --sweep moving_z")
    # the fit start begins at the forward-KL fit: two steps leave it near there
    fit = [r for r in rec["runs"] if r["start"] == "fit"]
    assert all(abs(r["std"][0] - rec["forward_kl_fit"]["std"][0]) < 0.2 for r in fit)


def test_time_per_step_whole_includes_the_student_updates(monkeypatch):
    from emd_lib.distill import Distiller

    calls = {"student": 0, "generator": 0}
    real_s, real_g = Distiller.student_step, Distiller.generator_step

    def count(name, real):
        def f(self):
            calls[name] += 1
            return real(self)
        return f

    monkeypatch.setattr(Distiller, "student_step", count("student", real_s))
    monkeypatch.setattr(Distiller, "generator_step", count("generator", real_g))
    t = ch05.time_per_step(ring8(), ["DI"], steps=3, reps=2, batch=32, width=16, depth=1, whole=True)
    assert t["DI"]["median"] > 0
    # one warm-up call and 2 rounds of 3, each with the config's 2 student updates
    assert calls == {"generator": 7, "student": 14}
    calls.update(student=0, generator=0)
    ch05.time_per_step(ring8(), ["DI"], steps=3, reps=2, batch=32, width=16, depth=1)
    assert calls == {"generator": 7, "student": 0}


def test_pm_formats_mean_and_std():
    entry = {"tv": {"mean": 0.0514, "std": 0.0071}, "recall": {"mean": 0.8, "std": 0.05}}
    assert ch05.pm(entry, "tv") == "0.051 ± 0.007"
    assert ch05.pm(entry, "recall", ".2f") == "0.80 ± 0.05"
    s = ch05.summarise({"a": [{"metrics": {**m, "masses": [0.5, 0.5]}, "seconds_train": 1.0}
                              for m in ({k: 1.0 for k in ch05._METRICS}, {k: 3.0 for k in ch05._METRICS})]})
    assert ch05.pm(s["a"], "tv", ".1f") == "2.0 ± 1.4"


def test_k_curve_reads_the_emd_rows_of_a_linear_summary():
    row = lambda s, e: {"std_mean": [s, 0.4], "std_std": [e, 0.01]}  # noqa: E731
    summary = {"DI": row(0.5, 0.0), "EMD-4 (eps, z)": row(0.7, 0.02), "EMD-16 (eps, z)": row(0.9, 0.03)}
    assert ch05.k_curve(summary) == ([4, 16], [0.7, 0.9], [0.02, 0.03])
