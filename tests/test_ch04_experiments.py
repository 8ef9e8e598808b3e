"""Chapter 4: the sweep module (configs, curvature, one tiny run, the CLI) and the exercise checks."""
import json
import math

import pytest
import torch

from emd_lib import DATA_DIR
from emd_lib.distill import DistillConfig
from emd_lib.em import LinearGenerator, exact_student, gaussian_teacher
from emd_lib.exercises import ExerciseFailed, registry
from emd_lib.experiments import ch04
from emd_lib.mixtures import irregular
from emd_lib.schedules import VP

M = torch.tensor([1.0, -0.5])
C = torch.tensor([[1.0, 0.6], [0.6, 0.8]])
A = torch.tensor([[0.5, 0.0], [0.2, 0.4]])
B = torch.tensor([0.3, 0.2])




def test_fixed_x_step_is_stable_at_the_least_noisy_level():
    gx = ch04.gamma_x_fixed(0.3, 6.0)
    sigma2 = float(torch.sigmoid(torch.tensor(-6.0)))
    assert math.isclose(gx, 0.3 * sigma2, rel_tol=1e-6)   # so the x-chain's linear part 1 - gx / sigma^2 contracts


def test_every_variant_builds_a_config():
    for name, spec in ch04.SWEEPS.items():
        assert name in ch04.DEFAULT_STEPS
        for label, ov in spec.items():
            cfg = ch04.variant_config(ov, seed=1, steps=10)
            assert isinstance(cfg, DistillConfig) and cfg.seed == 1 and cfg.steps == 10
            if cfg.method == "emd" and cfg.langevin.space == "x" and "sigma^2" not in label:
                assert cfg.langevin.gamma_x == pytest.approx(ch04.GX)
            if label.startswith("(eps, z)") or label.startswith("(x, z)"):
                assert cfg.langevin.move_z
    lc = ch04.variant_config(ch04.SWEEPS["cancel"]["(eps, z) full + z"]).langevin
    assert lc.cancel == "full" and lc.cancel_z and lc.move_z


@pytest.mark.parametrize("lam", [-4.0, 0.0, 3.0])
def test_z_curvature_matches_the_linear_closed_form(lam):
    a, s = (float(v) for v in VP.alpha_sigma(torch.tensor(lam)))
    got = ch04.z_curvature(LinearGenerator(A, B), gaussian_teacher(M, C), exact_student(A, B), lam, n=6)
    Pp = torch.linalg.inv(a**2 * C + s**2 * torch.eye(2))
    Pq = torch.linalg.inv(a**2 * A @ A.T + s**2 * torch.eye(2))
    want = torch.linalg.eigvalsh(torch.eye(2) - a**2 * A.T @ (Pq - Pp) @ A)[-1]
    torch.testing.assert_close(got, want.expand(6), rtol=1e-4, atol=1e-5)


TINY = dict(width=16, batch=32, init_steps=5, student_warmup=5, K=2)


def test_run_variant_and_summary(one_thread):
    res = ch04.run_sweep("cancel", seeds=(0, 1), steps=4, variants=["(eps, -) none", "(eps, z) full + z"],
                         n_eval=300, progress=False, **TINY)
    for runs in res["runs"].values():
        assert len(runs) == 2
        for r in runs:
            assert not r["diverged"] and r["steps_done"] == 4
            assert 0 <= r["metrics"]["tv"] <= 1 and len(r["grad_norm"]) == 1
    assert res["runs"]["(eps, z) full + z"][0]["mean_moved_z"] > 0
    table = ch04.summarize(res)
    mean, std = table["(eps, -) none"]["tv"]
    assert 0 <= mean <= 1 and std >= 0 and table["(eps, -) none"]["n"] == 2


def test_a_diverging_run_is_reported_not_raised(monkeypatch, one_thread):
    def boom(self, *a, **k):
        raise FloatingPointError("non-finite generator loss")
    monkeypatch.setattr(ch04.Distiller, "train", boom)
    cfg = ch04.variant_config(ch04.SWEEPS["space"]["(eps, -)"], steps=3, **{k: v for k, v in TINY.items() if k != "K"})
    r = ch04.run_variant(irregular(), cfg, n_eval=300)
    assert r["diverged"] and "non-finite" in r["error"] and r["steps_done"] == 0


def test_cli_writes_json(tmp_path, one_thread):
    out = tmp_path / "sweep.json"
    ch04.main(["--sweep", "gamma_z", "--seeds", "1", "--steps", "2", "--width", "16", "--K", "2", "--batch", "32",
               "--init-steps", "3", "--student-warmup", "3", "--variants", "snr 0.1", "--out", str(out)])
    res = json.loads(out.read_text())
    assert res["meta"]["command"].startswith("python -m emd_lib experiment ch04 --sweep gamma_z")
    assert res["meta"]["wall_seconds"] > 0 and "machine" in res["meta"] and "date" in res["meta"]
    assert list(res["summary"]) == ["snr 0.1"]
    # --merge adds a variant and keeps both commands
    ch04.main(["--sweep", "gamma_z", "--seeds", "1", "--steps", "2", "--width", "16", "--K", "2", "--batch", "32",
               "--init-steps", "3", "--student-warmup", "3", "--variants", "none 0.01", "--out", str(out), "--merge"])
    res = json.loads(out.read_text())
    assert list(res["runs"]) == ["snr 0.1", "none 0.01"] and set(res["summary"]) == {"snr 0.1", "none 0.01"}
    assert res["meta"]["command"].count("--sweep gamma_z") == 2 and len(res["meta"]["parts"]) == 2


@pytest.mark.parametrize("name", ["space", "space_x", "gamma_z", "cancel"])
def test_shipped_results_have_what_the_chapter_reads(name):
    res = json.loads((DATA_DIR / "results" / f"ch04_{name}.json").read_text())
    assert set(res["runs"]) == set(ch04.SWEEPS[name])
    assert len(res["seeds"]) >= 3
    for runs in res["runs"].values():
        assert len(runs) == len(res["seeds"])
        for r in runs:
            assert {"tv", "mmd", "precision", "recall", "modes_covered", "within_3sd"} <= set(r["metrics"])
            assert r["grad_norm"] and r["grad_norm_every"] > 0
    for key in ("command", "date", "machine", "wall_seconds"):
        assert key in res["meta"]


def test_ch04_exercise_checks_reject_their_wrong_answers():
    reg = registry()
    for ex_id in ("4.1", "4.2", "4.3"):
        ex = reg[ex_id]
        assert ex.wrong, ex_id
        for wrong in ex.wrong:
            with pytest.raises(ExerciseFailed):
                ex.fn(wrong)


def test_a_stored_sweep_loads_with_its_summary_and_shows_as_a_table(capsys):
    from emd_lib.experiments import ch04

    res = ch04.load_sweep("zstep_grid25")
    assert "zstep_grid25: `python" in capsys.readouterr().out
    tab = ch04.sweep_table(res, keys=("tv", "recall"))
    assert tab.columns == ["variant", "TV", "recall", "diverged"] and len(tab.rows) == len(res["runs"])
    plain = next(r for r in tab.rows if r[0] == "(eps, z) none 0.05")
    assert plain[-1] == "3/3" and "nan" in plain[1]                   # every run of the plain step diverged
    assert "<table" in tab._repr_html_() and "(eps, -)" in str(tab)


def test_the_cancel_sweeps_numbers_are_read_from_its_runs(capsys):
    """Chapter 4, section 4.3 glues these: gradient norms, modes kept, the mode the cancelled runs lose."""
    res = ch04.load_sweep("cancel")
    curves = ch04.grad_norm_curves(res)
    assert set(curves) == set(res["runs"])
    steps, G = curves["(eps, -) full"]
    every = res["runs"]["(eps, -) full"][0]["grad_norm_every"]
    assert G.shape == (len(res["seeds"]), len(steps)) and steps[0] == every and steps[-1] == every * len(steps)
    nums = ch04.cancel_numbers(res)
    assert round(nums["gn_ratio_e"], 1) == 2.5 and round(nums["gn_ratio_z"], 1) == 3.1
    assert nums["kept_none"] == 6 and nums["kept_full"] == 3 and nums["lost"] == 6       # irregular's central mode
    assert round(nums["lost_none"], 3) == 0.025 and round(nums["lost_full"], 3) == 0.015
    assert nums["gn_full_20"] < nums["gn_full_10"] and nums["gn_full_lo"] <= nums["gn_full_hi"]
    assert nums["starved"] == 17 and nums["runs"] == 18       # one (eps, z) full seed gives it more than its weight
    kept = ch04.kept_all_modes(res)
    assert kept["(eps, -) none"] + kept["(eps, z) none"] == 6
    masses = ch04.mode_masses(res, 6)
    assert len(masses["(eps, -) none"]) == len(res["seeds"])


def test_divergence_table_and_stability_limits_of_the_z_step_sweep(capsys):
    res = ch04.load_sweep("gamma_z")
    tab = ch04.divergence_table(res)
    assert tab.columns == ["variant", "diverged", "at steps", "mean |z_K - z_0|"] and len(tab) == len(res["runs"])
    rows = {r[0]: r for r in tab.rows}
    assert rows["none 0.1"][1] == "3/3" and rows["none 0.1"][3] == "-"       # a chain that diverged ran off
    assert rows["none 0.01"][1] == "0/3" and rows["none 0.01"][2] == "-" and float(rows["none 0.01"][3]) > 0
    assert ch04.stability_limits(res) == {"snr": (0.3, 1.0), "none": (0.03, 0.1)}
    # without a summary the runs themselves are counted; a scheme with no such step gives NaN
    toy = {"runs": {"none 0.1": [{"diverged": True}], "none 0.01": [{"diverged": False}]}}
    lim = ch04.stability_limits(toy, schemes=("none", "snr"))
    assert lim["none"] == (0.01, 0.1) and all(math.isnan(v) for v in lim["snr"])


def test_light_masses_leave_out_the_runs_that_diverged(capsys):
    res = ch04.load_sweep("zstep_far")
    light = ch04.light_masses(res)
    assert light["(eps, z) none 0.05"] == []                                  # every run of the plain step diverged
    assert len(light["(eps, -)"]) == 3 and all(0 < v < 1 for v in light["(eps, -)"])
    assert ch04.per_seed(res, "(eps, -)", "steps_done").tolist() == [1000.0] * 3
    tab = ch04.sweep_table(res, keys=("tv",), title="far")
    assert tab.title == "far" and "<caption>far</caption>" in tab._repr_html_()


def test_seed_dots_draws_a_bar_and_the_seeds_per_variant(capsys):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = ch04.load_sweep("space")
    fig, ax = plt.subplots()
    ch04.seed_dots(ax, [res], "tv", "TV", log=True)
    assert len(ax.patches) == len(res["runs"]) and len(ax.lines) == len(res["runs"])
    assert [t.get_text() for t in ax.get_xticklabels()] == list(res["runs"]) and ax.get_yscale() == "log"
    plt.close(fig)


def test_the_linear_pair_is_chapter_3s_and_level_is_the_vp_schedule():
    """Chapters 4 and 9 load the pair that chapter 3 writes out: the same four tensors."""
    import re
    from pathlib import Path

    from emd_lib.experiments.ch04 import level, linear_pair
    from emd_lib.schedules import VP

    src = (Path(__file__).resolve().parents[1] / "chapters" / "03_em_derivation.py").read_text()
    written = [eval(re.search(rf"^{name} = (torch\.tensor\(.*\))$", src, re.M).group(1), {"torch": torch})
               for name in "mCAb"]
    assert all(torch.equal(u, v) for u, v in zip(written, linear_pair()))
    a, s = level(2.0)
    assert isinstance(a, float) and (a, s) == tuple(float(x) for x in VP.alpha_sigma(torch.tensor(2.0)))
