"""emd_lib.experiments.ch02: one tiny run end to end, JSON-ready output; reading stored sweeps back."""
import json

import numpy as np
import pytest
import torch

from emd_lib.experiments import ch02
from emd_lib.experiments.ch02 import _linear_generator, equal_time_steps, keeps, main, run_one


def test_run_one_linear_is_json_ready():
    r = run_one("bimodal", "di", seed=0, steps=4, generator="linear", eval_every=2, n_eval=200, n_final=300,
                keep_samples=10, student_warmup=2, width=16)
    json.dumps(r)
    assert r["history"]["step"] == [2, 4] and len(r["history"]["masses"][0]) == 2
    assert set(r["final"]) >= {"tv", "modes_covered", "recall", "precision", "masses"}
    assert len(r["samples"]) == 10 and len(r["b"]) == 2
    assert r["b0"] == _linear_generator(0).b.tolist()


def test_run_one_mlp_emd():
    r = run_one("ring8", "emd", seed=1, steps=2, generator="mlp", eval_every=0, n_eval=200, n_final=300,
                student_warmup=1, init_steps=2, width=16, depth=1)
    assert r["history"]["step"] == [2] and r["final"]["n_modes"] == 8


def test_a_shipped_sweep_run_reproduces_from_the_current_code():
    """Chapters 2 to 6 read their sweeps from data/results; this reruns one of them (chapter 2's EMD
    run on the bimodal mixture with a linear generator, seed 0, 500 updates) with today's code. It
    must learn (mode-mass TV from 0.70 to about 0.1) and follow the stored curve, so a change to
    the distillation loop, the E-step or the metrics that would silently change the shipped results
    fails here."""
    from emd_lib import DATA_DIR

    rec = json.loads((DATA_DIR / "results" / "ch02_gaussian.json").read_text())
    stored = next(r for r in rec["runs"] if (r["regime"], r["method"], r["seed"]) == ("default", "emd", 0))
    r = run_one("bimodal", "emd", seed=0, steps=stored["steps"], generator="linear", eval_every=50,
                **stored["overrides"])
    assert r["history"]["step"] == stored["history"]["step"]
    assert r["history"]["tv"][0] > 0.6 and r["final"]["tv"] < 0.2                # it learns ...
    for now, then in zip(r["history"]["tv"], stored["history"]["tv"]):          # ... as it did
        assert abs(now - then) < 0.02, (r["history"]["tv"], stored["history"]["tv"])
    assert abs(r["final"]["tv"] - stored["final"]["tv"]) < 0.02
    assert max(abs(a - b) for a, b in zip(r["b"], stored["b"])) < 0.05


def test_far_target_and_two_modes():
    from emd_lib.mixtures import far, get_mixture, two_modes
    from emd_lib.teachers import GaussianMixture
    from emd_lib import DATA_DIR

    m = far()
    assert m.weights.tolist() == pytest.approx([0.85, 0.15]) and m.means.tolist() == [[-1.0, 0.0], [4.0, 0.0]]
    shipped = GaussianMixture.from_json(DATA_DIR / "mixtures" / "far.json")
    torch.testing.assert_close(shipped.means, m.means)
    torch.testing.assert_close(shipped.weights, m.weights)
    torch.testing.assert_close(get_mixture("far").var, m.var)
    t = two_modes(5.0, 0.15)
    torch.testing.assert_close(t.means, m.means)
    torch.testing.assert_close(t.weights, m.weights)
    with pytest.raises(ValueError, match="weight"):
        two_modes(3.0, 1.0)
    with pytest.raises(ValueError, match="distance"):
        two_modes(-1.0, 0.2)


def test_keeps_and_equal_time_steps():
    assert keeps(0.08, 0.15) and not keeps(0.07, 0.15)
    timing = {"DI": {"median": 0.01}, "EMD-8": {"median": 0.02}, "EMD-1": {"median": 0.011}}
    assert equal_time_steps(timing, 800) == {"DI": 800, "EMD-8": 400, "EMD-1": 727}


def test_far_study_writes_runs_and_equal_time(tmp_path):
    out = tmp_path / "far.json"
    main(["--study", "far", "--labels", "DI", "EMD-2", "--seeds", "0", "--steps", "3", "--out", str(out)])
    rec = json.loads(out.read_text())
    assert rec["complete"] and rec["command"].startswith("python -m emd_lib experiment ch02 --study far")
    assert set(rec["equal_time_steps"]) == {"DI", "EMD-2"} and rec["equal_time_steps"]["DI"] == 3
    budgets = [(r["label"], r["budget"]) for r in rec["runs"]]
    assert budgets == [("DI", "equal_updates"), ("EMD-2", "equal_updates"), ("EMD-2", "equal_time")]
    r = rec["runs"][0]
    assert r["light_weight"] == pytest.approx(0.15) and r["kept"] == keeps(r["light_mass"], 0.15)
    assert r["history"]["step"][-1] == 3 and len(r["samples"]) == 400


def test_far_map_and_bad_input(tmp_path):
    out = tmp_path / "map.json"
    main(["--study", "far_map", "--distances", "2", "--weights", "0.3", "--labels", "DI", "--seeds", "0",
          "--steps", "2", "--out", str(out)])
    rec = json.loads(out.read_text())
    assert [(r["distance"], r["weight"], r["label"]) for r in rec["runs"]] == [(2.0, 0.3, "DI")]
    for bad in (["--weights", "1.5"], ["--distances", "0"], ["--labels", "EMD-x"]):
        with pytest.raises(SystemExit):
            main(["--study", "far_map", "--seeds", "0", "--steps", "1", "--out", str(tmp_path / "x.json"), *bad])
    assert not (tmp_path / "x.json").exists()


# ---------------------------------------------------------------------------------------------
# reading stored sweeps back (what chapters 2 and 10 show): small records made up here

def _run(mixture="ring8", regime="sigma2", method="di", seed=0, tv=0.1, masses=(0.5, 0.5), tv0=0.3, **extra):
    return {"mixture": mixture, "regime": regime, "method": method, "seed": seed, "true_weights": [0.5, 0.5],
            "final": {"tv": tv, "modes_covered": 2, "recall": 0.9, "precision": 0.8, "masses": list(masses)},
            "history": {"step": [100, 200], "tv": [tv0, tv]}, **extra}


def test_group_runs_reads_stored_results_by_key_and_seed(tmp_path, monkeypatch, capsys):
    import emd_lib

    (tmp_path / "results").mkdir()
    runs = [_run(method="emd", seed=1), _run(method="di", seed=1), _run(method="di", seed=0),
            _run(mixture="irregular", method="di", seed=0)]
    (tmp_path / "results" / "x.json").write_text(json.dumps({"command": "python -m emd_lib experiment ch02", "runs": runs}))
    monkeypatch.setattr(emd_lib, "DATA_DIR", tmp_path)
    rows = ch02.group_runs("x")
    assert capsys.readouterr().out.startswith("x.json: `python -m emd_lib experiment ch02`")
    assert list(rows) == [("ring8", "sigma2", "di"), ("ring8", "sigma2", "emd"), ("irregular", "sigma2", "di")]
    assert [r["seed"] for r in rows[("ring8", "sigma2", "di")]] == [0, 1]
    assert list(ch02.group_runs("x", keys=("method",), quiet=True)) == [("di",), ("emd",)]
    assert capsys.readouterr().out == ""


def test_stat_is_mean_and_std_over_runs():
    assert ch02.stat([_run(tv=0.1), _run(tv=0.3)], "tv") == pytest.approx((0.2, 0.1))


def test_gaussian_table_lists_each_seed():
    runs = [dict(_run(seed=s), b0=[0.5 + s, 0.0], b=[-0.6, 0.0], cov=[[1.44, 0.0], [0.0, 1.0]]) for s in (0, 1)]
    t = ch02.gaussian_table({("default", "di"): runs})
    assert t.columns[0] == "regime" and t.rows == [["default", "DI", "+0.50, +1.50", "-0.60, -0.60", "1.20, 1.20", "2, 2"]]


def test_mlp_summary_table_and_compare():
    rows = {("ring8", "sigma2", "di"): [_run(tv=0.1, masses=(0.5, 0.25)), _run(seed=1, tv=0.3)],
            ("ring8", "sigma2", "emd"): [_run(method="emd", tv=0.2), _run(method="emd", seed=1, tv=0.2)]}
    s = ch02.mlp_summary(rows)
    d, e = s[("ring8", "sigma2", "di")], s[("ring8", "sigma2", "emd")]
    assert d["n"] == 2 and d["tv"] == pytest.approx((0.2, 0.1)) and d["min_ratio"] == pytest.approx((0.75, 0.25))
    v = ch02.compare(d, e)
    assert set(v) == set(ch02.METRICS) and v["tv"] == pytest.approx((0.0, 0.1))   # std 0.1 with ddof 1: 0.141 / sqrt 2
    t = ch02.mlp_table(s)
    assert len(t) == 2 and t.rows[0][:5] == ["ring8", "sigma2", "DI", "2", "0.200 ± 0.100"]


def test_early_tv_and_compare_table():
    rows = {("ring8", "one", m): [_run(method=m, tv0=0.4), _run(method=m, seed=1, tv0=0.6)] for m in ("di", "emd")}
    early = ch02.early_tv(rows)
    assert early[("ring8", "one", "di")] == pytest.approx(0.5)
    s = ch02.mlp_summary(rows)
    t = ch02.compare_table({("ring8", "one"): ch02.compare(s[("ring8", "one", "di")], s[("ring8", "one", "emd")])},
                           early, 100)
    assert t.columns[-2:] == ["TV at step 100, DI", "EMD"] and t.rows[0][-1] == "0.500"
    assert t.rows[0][2] == "+0.000 ± 0.000"


def test_mode_losses_marks_a_mass_below_a_fifth_of_the_weight():
    rows = {("irregular", w, m): [_run("irregular", w, m, masses=(0.95, 0.05) if (w, m) == ("one", "emd") else (0.5, 0.5))]
            for w in ("sigma2", "one") for m in ("di", "emd")}
    out = ch02.mode_losses(rows, "irregular", [0.5, 0.5])
    assert out["n_di"] == {"sigma2": 1, "one": 1}
    assert out["lost"]["one"].tolist() == [[False, False], [False, True]] and not out["lost"]["sigma2"].any()
    assert out["mean"][("one", "emd")] == pytest.approx([0.95, 0.05])


def _far_rec():
    runs = []
    for seed in (0, 1):
        for lab, mass in (("DI", 0.0 if seed else 0.15), ("EMD-8", 0.16)):
            light = [0.005 if lab == "EMD-8" and seed == 0 else mass, mass]
            runs.append({"label": lab, "seed": seed, "steps": 4, "budget": "equal_updates", "light_mass": mass,
                         "kept": keeps(mass, 0.15), "final": {"tv": 0.1}, "history": {"step": [2, 4], "light": light}})
        runs.append({"label": "EMD-8", "seed": seed, "steps": 2, "budget": "equal_time", "light_mass": 0.2,
                     "kept": True, "final": {"tv": 0.2}, "history": {"step": [2], "light": [0.2]}})
    return {"labels": ["DI", "EMD-8"], "equal_time_reference": "DI", "steps": 4, "runs": runs,
            "timing": {"DI": {"median": 0.01}, "EMD-8": {"median": 0.02}}, "equal_time_steps": {"DI": 4, "EMD-8": 2}}


def test_far_study_and_its_table():
    rec = _far_rec()
    eq, tm = ch02.far_study(rec, "equal_updates"), ch02.far_study(rec, "equal_time")
    assert (eq["DI"]["kept"], eq["DI"]["n"], eq["EMD-8"]["kept"]) == (1, 2, 2)
    assert tm["DI"]["steps"] == 4 and tm["EMD-8"]["steps"] == 2 and tm["EMD-8"]["mass"].tolist() == [0.2, 0.2]
    t = ch02.far_table(eq, 0.15, title="equal updates")
    assert t.title == "equal updates" and t.rows[0] == ["DI", "4", "1/2", "0.075 ± 0.075", "0.150, 0.000"]


def test_far_timing_table_and_losses():
    rec = _far_rec()
    t = ch02.far_timing_table(rec)
    assert t.rows[1] == ["EMD-8", "20.0", "2.00", "2"] and t.columns[2] == "/ DI"
    fl = ch02.far_losses(rec, at_step=2)
    assert fl["at"] == 0 and [(r["label"], r["seed"]) for r in fl["lost"]] == [("DI", 1)]
    assert len(fl["kept"]) == 3 and [(r["label"], r["seed"]) for r in fl["came_back"]] == [("EMD-8", 0)]


def test_far_map_grid():
    runs = [{"label": lab, "distance": d, "weight": w, "seed": s, "kept": lab == "EMD-8" or s == 0,
             "light_mass": w if lab == "EMD-8" else 0.0} for lab in ("DI", "EMD-8") for d in (2.0, 5.0)
            for w in (0.1, 0.3) for s in (0, 1)]
    kept, mass = ch02.far_map_grid({"distances": [2.0, 5.0], "weights": [0.1, 0.3], "labels": ["DI", "EMD-8"],
                                    "runs": runs})
    assert kept["DI"].shape == (2, 2) and (kept["DI"] == 0.5).all() and (kept["EMD-8"] == 1).all()
    np.testing.assert_allclose(mass["EMD-8"], 1.0)
    np.testing.assert_allclose(mass["DI"], 0.0)
