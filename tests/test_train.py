"""The training entry point: configs, exact resume, faults, signals (CPU, tiny settings, no download)."""
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from emd_lib import distill as D
from emd_lib.scale import train as T
from emd_lib.commands.train import main
from emd_lib.scale.train import ConfigError, Trainer, TrainingFault, load_config

ROOT = Path(__file__).resolve().parent.parent
TINY = ["batch=32", "width=32", "depth=2", "init_steps=10", "student_warmup=5", "langevin.K=2",
        "progress=false", "tensorboard=false", "log_every=1"]


def toy(out, *extra):
    return load_config("toy", TINY + [f"out={out}", *extra])


def final_tensors(out):
    cards = sorted((Path(out) / "checkpoints").glob("step_*.json"))
    return load_file(str(cards[-1].with_suffix(".safetensors"))), json.loads(cards[-1].read_text())


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


# a tiny random ImageNet-64 stand-in: two steps, a checkpoint after each
TINY_IMAGE = ["teacher.kind=random", "teacher.arch=tiny-edm", "steps=2", "batch=4", "progress=false",
              "tensorboard=false", "lam_min=-5", "lam_max=5", "lam_star=-4", "langevin.K=2", "lam_dist=uniform",
              "ckpt_every=1"]


def image_runs(tmp_path, key):
    """Train the tiny image stand-in with ``key=false`` and ``key=true`` (each in tmp_path/VALUE); return
    the two trainers and their (generator loss, student loss) per step, keyed by the value."""
    runs, trainers = {}, {}
    for v in ("false", "true"):
        trainers[v] = tr = Trainer(load_config("imagenet64", TINY_IMAGE + [f"out={tmp_path / v}", f"{key}={v}"]))
        runs[v] = [x for h in tr.run() for x in (h["loss_g"], h["loss_s"])]
    return trainers, runs


def env1():
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT))


def test_every_config_loads_and_names_its_teacher():
    names = sorted(p.stem for p in (ROOT / "emd_lib" / "configs").glob("*.yaml"))
    assert names == ["imagenet128", "imagenet64", "mnist", "sd15", "toy"]
    kinds = {n: load_config(n).teacher.kind for n in names}
    assert kinds == {"imagenet128": "adm", "imagenet64": "edm", "mnist": "checkpoint", "sd15": "sd", "toy": "mixture"}


def test_resume_is_bitwise_exact_and_skips_a_torn_checkpoint(tmp_path):
    Trainer(toy(tmp_path / "a", "steps=12", "ckpt_every=4")).run()
    ref, card = final_tensors(tmp_path / "a")
    assert card["step"] == 12

    cfg = toy(tmp_path / "b", "steps=12", "ckpt_every=4")
    Trainer(cfg).run(until=6)                       # "interrupted" after step 6 (checkpoints at 4 and 6)
    ck = tmp_path / "b" / "checkpoints"
    assert sorted(p.stem for p in ck.glob("*.json")) == ["step_00000004", "step_00000006"]
    # a run killed while writing step 8: weights cut short, card from another write
    good = (ck / "step_00000006.safetensors").read_bytes()
    (ck / "step_00000008.safetensors").write_bytes(good[: len(good) // 2])
    (ck / "step_00000008.json").write_text((ck / "step_00000006.json").read_text().replace('"step": 6', '"step": 8'))
    tr = Trainer(cfg)
    tr.run()
    assert tr.step == 12
    out, _ = final_tensors(tmp_path / "b")
    assert_same_state(out, ref)
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 12
    with pytest.raises(ConfigError, match="resume=false"):
        Trainer(toy(tmp_path / "b", "steps=12", "resume=false")).run()


def test_a_killed_run_resumes_from_its_last_complete_checkpoint(tmp_path):
    """SIGKILL at an arbitrary moment (possibly mid-write); the resumed run matches an uninterrupted one."""
    args = TINY + ["steps=3000", "ckpt_every=7", f"out={tmp_path / 'k'}"]
    proc = subprocess.Popen([sys.executable, "-m", "emd_lib.commands.train", "--config", "toy", *args], env=env1(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ck = tmp_path / "k" / "checkpoints"
    t0 = time.time()
    while not any(int(p.stem[5:]) >= 21 for p in ck.glob("step_*.json")) and time.time() - t0 < 60:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    cfg = load_config("toy", args)
    tr = Trainer(cfg)
    assert tr.try_resume() and tr.step >= 21
    stop = tr.step + 9
    tr.run(until=stop)
    ref_cfg = load_config("toy", TINY + ["steps=3000", "ckpt_every=7", f"out={tmp_path / 'ref'}"])
    Trainer(ref_cfg).run(until=stop)
    a, _ = final_tensors(tmp_path / "k")
    b, _ = final_tensors(tmp_path / "ref")
    assert_same_state(a, b)


def test_sigint_saves_a_checkpoint_and_exits(tmp_path):
    args = TINY + ["steps=100000", "ckpt_every=1000", f"out={tmp_path / 's'}", "log_every=1"]
    proc = subprocess.Popen([sys.executable, "-m", "emd_lib.commands.train", "--config", "toy", *args], env=env1(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = tmp_path / "s" / "log.jsonl"
    t0 = time.time()
    while not (log.exists() and log.read_text().count("\n") >= 5) and time.time() - t0 < 60:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGINT, err
    assert "SIGINT: stopped at step" in err and "Traceback" not in err
    _, card = final_tensors(tmp_path / "s")
    assert card["step"] >= 5
    assert f"step_{card['step']:08d}" in err


def test_a_nonfinite_loss_stops_the_run_and_keeps_the_good_checkpoint(tmp_path, monkeypatch, capsys):
    real, calls = D.emd_generator_loss, {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        loss, diag = real(*a, **k)
        return (loss * float("nan") if calls["n"] == 5 else loss), diag

    monkeypatch.setattr(D, "emd_generator_loss", flaky)
    cfg = toy(tmp_path / "f", "steps=10", "ckpt_every=2")
    with pytest.raises(TrainingFault) as e:
        Trainer(cfg).run()
    msg = str(e.value)
    assert "step 5" in msg and "step_00000004" in msg
    ck = tmp_path / "f" / "checkpoints"
    assert sorted(p.stem for p in ck.glob("*.json")) == ["step_00000002", "step_00000004"]
    # the command line: one message, exit status 1, no traceback
    calls["n"] = 0
    rc = main(["--config", "toy", *TINY, "steps=10", "ckpt_every=2", f"out={tmp_path / 'g'}"])
    err = capsys.readouterr().err
    assert rc == 1 and "error: training stopped at step 5" in err and "Traceback" not in err


@pytest.mark.parametrize("override, words", [
    ("lr=3", ["unknown key 'lr'", "did you mean", "'lr_g'"]),
    ("langevin.gama_eps=0.1", ["unknown key 'langevin.gama_eps'", "'langevin.gamma_eps'"]),
    ("batch=abc", ["'batch'", "whole number"]),
    ("lr_g=-1", ["lr_g", "> 0"]),
    ("teacher.kind=edmm", ["teacher.kind", "edm"]),
    ("langevin.K=-2", ["K (Langevin steps)", ">= 0"]),
    ("progress=maybe", ["'progress'", "true or false"]),
    ("steps", ["not key=value"]),
])
def test_config_errors_get_one_clear_message(override, words, capsys):
    rc = main(["--config", "toy", override])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    for w in words:
        assert w in err, (w, err)


def test_config_error_from_the_shell_has_no_traceback():
    r = subprocess.run([sys.executable, "-m", "emd_lib.commands.train", "--config", "toy", "lr=3"], env=env1(),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "unknown key 'lr'" in r.stderr and "Traceback" not in r.stderr


def test_missing_teachers_fail_clearly(tmp_path, capsys):
    assert main(["--config", "mnist", f"teacher.path={tmp_path / 'none'}", f"out={tmp_path}"]) == 2
    assert "Chapter 7 trains it" in capsys.readouterr().err
    assert main(["--config", "imagenet64", f"out={tmp_path}"]) == 2
    assert "trust_pickle" in capsys.readouterr().err
    assert main(["--config", "sd15", f"teacher.path={tmp_path / 'nothing'}", "teacher.kind=sd", f"out={tmp_path}"]) == 2
    assert "cannot load Stable Diffusion" in capsys.readouterr().err


@pytest.mark.parametrize("arch, schedule", [("adm128", "linear"), ("adm64", "cosine"), ("", "linear")])
def test_an_adm_teacher_reads_the_flags_its_arch_names(arch, schedule, monkeypatch):
    """teacher.arch picks guided-diffusion's flags for an ADM checkpoint, and with them the schedule."""
    from emd_lib.scale import adapters
    from emd_lib.scale.train import load_teacher

    seen = {}

    def fake_load_adm(path, *, code_root=None, flags=None, num_classes=1000):
        seen.update(flags)
        raise adapters.AdapterError("stop here")
    monkeypatch.setattr(adapters, "load_adm", fake_load_adm)
    cfg = load_config("imagenet128", [f"teacher.arch={arch}"] if arch else ["teacher.arch="])
    with pytest.raises(adapters.AdapterError, match="stop here"):
        load_teacher(cfg.teacher)
    assert seen["noise_schedule"] == schedule and seen["image_size"] == (64 if arch == "adm64" else 128)


def test_an_adm_teacher_refuses_an_arch_it_has_no_flags_for(tmp_path, capsys):
    assert main(["--config", "imagenet128", "teacher.arch=adm256", f"out={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "teacher.arch" in err and "adm64" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("name, arch", [("imagenet64", "tiny-edm"), ("imagenet128", "tiny-adm"), ("sd15", "tiny-sd")])
def test_the_large_configs_train_on_tiny_random_stand_ins(name, arch, tmp_path):
    cfg = load_config(name, ["teacher.kind=random", f"teacher.arch={arch}", "steps=2", "batch=4",
                             f"out={tmp_path}", "progress=false", "tensorboard=false", "lam_min=-5", "lam_max=5",
                             "lam_star=-4", "langevin.K=2", "lam_dist=uniform"])
    tr = Trainer(cfg)
    hist = tr.run()
    assert len(hist) == 2 and all(torch.isfinite(torch.tensor(h["loss_g"])) for h in hist)
    x = tr.sample(3, cond=tr.prob.make_cond(torch.tensor([0, 1, 2]), tr.device))
    assert x.shape == (3, *tr.prob.shape)
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["step"] == 2


def test_resuming_with_other_settings_is_refused(tmp_path):
    Trainer(toy(tmp_path, "steps=2", "ckpt_every=1")).run()
    with pytest.raises(ConfigError, match="lr_g"):
        Trainer(toy(tmp_path, "steps=4", "lr_g=1e-4")).run()
    tr = Trainer(toy(tmp_path, "steps=4"))            # steps may change
    tr.run()
    assert tr.step == 4


def test_mnist_config_trains_on_a_chapter7_style_teacher_checkpoint(tmp_path):
    from emd_lib.runs.checkpoint import save_checkpoint
    from emd_lib.images.unet import UNet

    torch.manual_seed(0)
    net = UNet(in_ch=1, channels=(8, 16, 16))
    save_checkpoint(tmp_path / "teacher", net.state_dict(),
                    {"arch": net.config, "schedule": "vp", "predicts": "x0", "data": "mnist"})
    cfg = load_config("mnist", [f"teacher.path={tmp_path / 'teacher'}", "steps=2", "batch=4", "langevin.K=2",
                                f"out={tmp_path / 'run'}", "progress=false", "tensorboard=false"])
    tr = Trainer(cfg)
    assert tr.prob.shape == (1, 28, 28) and tr.prob.cond == "class" and tr.prob.num_classes == 10
    hist = tr.run()
    assert len(hist) == 2 and all(math.isfinite(h["loss_g"]) for h in hist)


def test_channels_last_runs_the_same_steps_and_checkpoints(tmp_path):
    """NHWC memory changes the layout of the image networks, not what a step computes."""
    trainers, runs = image_runs(tmp_path, "channels_last")
    for cl, tr in trainers.items():
        convs = [m.weight for net in T.networks(tr.prob) for m in net.modules()
                 if isinstance(m, torch.nn.Conv2d) and m.weight.shape[-1] > 1]      # (a 1x1 kernel is both)
        assert convs and all(w.is_contiguous(memory_format=torch.channels_last) == (cl == "true") for w in convs)
    assert runs["true"] == pytest.approx(runs["false"], rel=1e-4)
    a, _ = final_tensors(tmp_path / "false")
    b, _ = final_tensors(tmp_path / "true")
    assert a.keys() == b.keys() and all(torch.allclose(a[k].float(), b[k].float(), rtol=1e-3, atol=1e-4) for k in a)
    # resuming the NHWC run (checkpoints are saved contiguous) continues it
    tr = Trainer(load_config("imagenet64", TINY_IMAGE + [f"out={tmp_path / 'true'}", "channels_last=true", "steps=3"]))
    assert tr.try_resume() and tr.step == 2


def test_checkpoints_record_the_command_and_refuse_another_device_type(tmp_path):
    out = tmp_path / "r"
    assert main(["--config", "toy", *TINY, "steps=2", "ckpt_every=1", f"out={out}"]) == 0
    tensors, card = final_tensors(out)
    assert card["command"].startswith("python -m emd_lib train --config toy") and card["rng_device"] == "cpu"
    card["rng_device"] = "cuda"                       # as if saved on a GPU
    tr = Trainer(toy(out, "steps=3"))
    with pytest.raises(ConfigError, match="saved on a cuda device"):
        tr.load(tensors, card)


def test_prompts_are_encoded_once_and_indexed(tmp_path):
    cfg = load_config("sd15", ["teacher.kind=random", "teacher.arch=tiny-sd", "batch=4", f"out={tmp_path}",
                               "progress=false", "tensorboard=false", "lam_min=-5", "lam_max=5", "lam_star=-4",
                               "lam_dist=uniform"])
    p = Trainer(cfg).prob
    calls = []
    encode = p.teacher.encode_prompts
    p.teacher.encode_prompts = lambda prompts, device=None: calls.append(len(prompts)) or encode(prompts, device)
    idx = torch.tensor([2, 0, 2, 1])
    a, b = p.make_cond(idx, "cpu"), p.make_cond(idx.flip(0), "cpu")
    assert calls == [len(p.prompts)] and torch.equal(b, a.flip(0))
    torch.testing.assert_close(a, encode([p.prompts[i] for i in idx.tolist()], "cpu"))
    # a prompt file beyond the cache is encoded per draw, each drawn prompt once, to the same embeddings
    calls.clear()
    p.PROMPT_CACHE = 1
    torch.testing.assert_close(p.make_cond(idx, "cpu"), a)
    assert calls == [len(set(idx.tolist()))]
    # the empty prompt is encoded at the encoder's precision even from inside a bf16 step
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = encode([""], "cpu", chunk=1)
    assert inside.dtype == torch.float32 and torch.equal(inside, encode([""], "cpu"))


def test_compiled_networks_run_the_same_steps_and_checkpoints(tmp_path, monkeypatch):
    """compile=true traces the three networks with torch.compile (dynamo and AOT autograd, here with the
    "aot_eager" backend so the test needs no C++ compiler run): the E-step's autograd.grad to z with the
    generator's weights frozen, the student's DSM and the generator's update must compute what eager
    mode computes, and the checkpoints keep the plain key layout, so they resume without compiling."""
    compiled = []
    original = torch.nn.Module.compile

    def aot_eager(self, *args, **kw):
        compiled.append(type(self).__name__)
        return original(self, *args, **dict(kw, backend="aot_eager"))

    monkeypatch.setattr(torch.nn.Module, "compile", aot_eager)
    torch._dynamo.reset()
    _, runs = image_runs(tmp_path, "compile")
    assert len(compiled) == 3, compiled                  # teacher, student score, generator
    assert runs["true"] == pytest.approx(runs["false"], rel=1e-4)
    a, _ = final_tensors(tmp_path / "false")
    b, _ = final_tensors(tmp_path / "true")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=1e-3, atol=1e-5) for k in a)
    torch._dynamo.reset()
    tr = Trainer(load_config("imagenet64", TINY_IMAGE + [f"out={tmp_path / 'true'}", "steps=3"]))   # eager resume
    assert tr.try_resume() and tr.step == 2


@pytest.mark.parametrize("net", ["student", "generator"])
def test_a_nonfinite_gradient_with_a_finite_loss_stops_the_run(net, tmp_path, monkeypatch, capsys):
    """The loss stays finite, but its gradient is NaN (d sqrt(u)/du at u = 0 is infinite, times 0)."""
    name = "student_loss" if net == "student" else "emd_generator_loss"
    real, calls = getattr(D, name), {"n": 0}

    def nan_grad(*a, **k):
        calls["n"] += 1
        out = real(*a, **k)
        loss = out[0] if isinstance(out, tuple) else out
        if calls["n"] == 4:
            params = a[0].parameters()                 # the student score or the generator
            loss = loss + torch.sqrt(0 * sum(p.sum() for p in params))
            assert math.isfinite(loss.item())
        return (loss, out[1]) if isinstance(out, tuple) else loss

    monkeypatch.setattr(D, name, nan_grad)
    extra = ["student_warmup=0"] if net == "student" else []
    rc = main(["--config", "toy", *TINY, *extra, "steps=8", "ckpt_every=1", f"out={tmp_path}"])
    err = capsys.readouterr().err
    label = "student-score gradient" if net == "student" else "generator gradient"
    assert rc == 1 and f"non-finite {label}" in err and err.count("\n") <= 2 and "Traceback" not in err, err
    assert "the last good checkpoint is" in err


def test_an_unexpected_exception_ends_in_one_line_naming_the_step_and_checkpoint(tmp_path, monkeypatch, capsys):
    real, calls = D.emd_generator_loss, {"n": 0}

    def breaks(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("CUDA error: an illegal memory access was encountered\nmore detail")
        return real(*a, **k)

    monkeypatch.setattr(D, "emd_generator_loss", breaks)
    out = tmp_path / "run"
    rc = main(["--config", "toy", *TINY, "steps=6", "ckpt_every=1", f"out={out}"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert rc == 1 and len(err) == 1, err
    msg = err[0]
    assert "step 3" in msg and "step_00000002" in msg and "RuntimeError: CUDA error" in msg and "more detail" not in msg
    tb = (out / "traceback.txt").read_text()
    assert "Traceback" in tb and "more detail" in tb and str(out / "traceback.txt") in msg
    # the same command resumes from that checkpoint
    monkeypatch.setattr(D, "emd_generator_loss", real)
    assert main(["--config", "toy", *TINY, "steps=6", "ckpt_every=1", f"out={out}"]) == 0
    assert "resumed from" in capsys.readouterr().err


def test_an_unexpected_exception_before_the_first_step_is_one_line(tmp_path, monkeypatch, capsys):
    def broken(*a, **k):
        raise OSError("disk quota exceeded")

    monkeypatch.setattr(T, "build_problem", broken)
    rc = main(["--config", "toy", *TINY, f"out={tmp_path}"])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "before its first step (OSError: disk quota exceeded)" in err, err


def test_the_2d_mlp_settings_are_refused_for_a_network_teacher():
    with pytest.raises(ConfigError, match="width, depth set the 2D mixture's MLP"):
        load_config("imagenet64", ["width=64", "depth=2"])
    with pytest.raises(ConfigError, match="init_steps .*teacher.kind=random"):
        load_config("imagenet64", ["teacher.kind=random", "teacher.arch=tiny-edm", "init_steps=10"])
    assert load_config("toy", ["width=64"]).width == 64          # the toy's MLPs take them
