"""emd_lib.experiments.ch02: one tiny run end to end, JSON-ready output."""
import json

import pytest
import torch

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
