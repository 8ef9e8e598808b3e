"""The command line: a short run writes (M, d) samples; bad files get one line, not a traceback."""
import json
import subprocess
import sys

import numpy as np
import pytest

from emd_lib import ROOT


def run(*args):
    return subprocess.run([sys.executable, "-m", "emd_lib.commands.toy", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)


def test_short_run_writes_samples(tmp_path):
    out, rep = tmp_path / "s.npy", tmp_path / "r.json"
    r = run("--mixture", str(ROOT / "data/mixtures/ring8.json"), "--steps", "20", "--n-samples", "500", "--init-steps", "20", "--warmup", "10",
            "--samples", str(out), "--report", str(rep), "--quiet", "-K", "2")
    assert r.returncode == 0, r.stderr
    x = np.load(out)
    assert x.shape == (500, 2) and x.dtype == np.float32 and np.isfinite(x).all()
    assert "modes covered" in r.stdout
    card = json.loads(rep.read_text())
    assert card["n_modes"] == 8 and 0 <= card["modes_hit"] <= 8
    # what reproduces the run: the command, the resolved settings and the machine
    assert card["config"]["langevin"]["K"] == 2 and card["config"]["method"] == "emd" and card["n_samples"] == 500
    assert "CPU" in card["machine"] and card["command"].startswith("python -m emd_lib toy --mixture")


def test_far_away_mixture_is_standardised(tmp_path):
    spec = {"weights": [0.5, 0.5], "means": [[1000.0, 0.0, 5.0], [1010.0, 0.0, 5.0]], "stds": [1.0, 1.0]}
    f = tmp_path / "m.json"
    f.write_text(json.dumps(spec))
    r = run("--mixture", str(f), "--steps", "30", "--n-samples", "300", "--init-steps", "20", "--warmup", "10", "--samples", str(tmp_path / "s.npy"),
            "--quiet", "--method", "di")
    assert r.returncode == 0, r.stderr
    x = np.load(tmp_path / "s.npy")
    assert x.shape == (300, 3) and abs(x[:, 0].mean() - 1005) < 5
    # mapped back to the mixture's scale too: the standardising scale here is about 3.05, so the
    # x-spread (5.1 in the mixture, about 2.6 after these 30 steps) would be under 1 without it
    assert 1.5 < x[:, 0].std() < 10


@pytest.mark.parametrize("content, field", [
    ("{not json", "not valid JSON"),
    ('{"weights": [0.5, 0.6], "means": [[0, 0], [1, 1]], "stds": [1, 1]}', "weights"),
    ('{"weights": [0.5, 0.5], "means": [[0, 0], [1, 1]], "stds": [1, 0]}', "stds"),
    ('{"weights": [0.5, 0.5], "means": [[0, 0]], "stds": [1, 1]}', "means"),
    ('[1, 2, 3]', "JSON object"),
])
def test_bad_mixture_file_gets_one_line(tmp_path, content, field):
    f = tmp_path / "bad.json"
    f.write_text(content)
    r = run("--mixture", str(f), "--samples", str(tmp_path / "s.npy"))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and field in lines[0], r.stderr


def test_missing_file(tmp_path):
    r = run("--mixture", str(tmp_path / "nope.json"), "--samples", str(tmp_path / "s.npy"))
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr


def test_knobs_reach_the_run_and_the_report(tmp_path):
    out, rep = tmp_path / "s.npy", tmp_path / "r.json"
    r = run("--mixture", str(ROOT / "data/mixtures/far.json"), "--steps", "5", "--n-samples", "200", "--init-steps", "5",
            "--warmup", "5", "--samples", str(out), "--report", str(rep), "--quiet", "-K", "2", "--weighting", "one",
            "--move-z", "--cancel", "none", "--gamma-z", "0.05", "--lam-star", "-4")
    assert r.returncode == 0, r.stderr
    assert "EMD-2 (eps, z)" in r.stdout
    card = json.loads(rep.read_text())
    assert card["weighting"] == "one" and card["lam_star"] == -4.0
    assert card["chain"] == {"K": 2, "move_z": True, "cancel": "none", "gamma_z": 0.05, "z_precondition": "jacobian",
                             "z_clip": None, "metropolis": True}
    lang = card["config"]["langevin"]
    assert lang["move_z"] is True and lang["cancel"] == "none" and lang["gamma_z"] == 0.05
    assert card["config"]["weighting"] == "one" and card["config"]["lam_star"] == -4.0
    assert "--gamma-z 0.05" in card["command"]


def test_move_z_takes_the_recommended_joint_chain_and_each_setting_can_be_changed(tmp_path):
    from emd_lib.langevin import JOINT_CHAIN

    rep = tmp_path / "r.json"
    common = ("--mixture", str(ROOT / "data/mixtures/far.json"), "--steps", "2", "--n-samples", "100", "--init-steps",
              "2", "--warmup", "2", "--samples", str(tmp_path / "s.npy"), "--report", str(rep), "--quiet", "-K", "2")
    assert run(*common, "--move-z").returncode == 0
    lang = json.loads(rep.read_text())["config"]["langevin"]
    assert {k: lang[k] for k in JOINT_CHAIN} == JOINT_CHAIN
    assert run(*common, "--move-z", "--z-clip", "0.3", "--cancel", "full").returncode == 0
    lang = json.loads(rep.read_text())["config"]["langevin"]
    assert lang["z_clip"] == 0.3 and lang["cancel"] == "full" and lang["gamma_z"] == JOINT_CHAIN["gamma_z"]
    assert run(*common).returncode == 0                                   # without --move-z: the (eps, -) chain
    lang = json.loads(rep.read_text())["config"]["langevin"]
    assert lang["move_z"] is False and lang["z_clip"] is None and lang["cancel"] == "full"


def test_defaults_are_recorded(tmp_path):
    rep = tmp_path / "r.json"
    r = run("--mixture", str(ROOT / "data/mixtures/far.json"), "--steps", "3", "--n-samples", "100", "--init-steps", "3",
            "--warmup", "3", "--samples", str(tmp_path / "s.npy"), "--report", str(rep), "--quiet", "--method", "di",
            "--weighting", "edm")
    assert r.returncode == 0, r.stderr
    card = json.loads(rep.read_text())
    assert card["chain"] is None and card["weighting"] == "edm" and card["lam_star"] == -2.0


@pytest.mark.parametrize("args, words", [
    (["--method", "di", "--move-z"], "--method di has none"),
    (["--method", "di", "--cancel", "none"], "--method di has none"),
    (["--gamma-z", "0.1"], "needs --move-z"),
    (["--move-z", "--gamma-z", "0"], "--gamma-z must be a finite number > 0"),
    (["--move-z", "--gamma-z", "nan"], "--gamma-z must be a finite number > 0"),
    (["--z-clip", "0.1"], "needs --move-z"),
    (["--move-z", "--z-clip", "-1"], "--z-clip must be a finite number > 0"),
    (["--method", "di", "--z-clip", "0.1"], "--method di has none"),
    (["--lam-star", "30"], "outside the teacher's log-SNR range"),
    (["--weighting", "cosine"], "invalid choice"),
    (["--cancel", "some"], "invalid choice"),
])
def test_bad_knobs_get_one_line(tmp_path, args, words):
    r = run("--mixture", str(ROOT / "data/mixtures/far.json"), "--samples", str(tmp_path / "s.npy"), *args)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], r.stderr
    assert not (tmp_path / "s.npy").exists()
