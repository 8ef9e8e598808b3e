"""Chapter 7's library code: data, UNet teacher, image metrics, distillation on images, the CLIs."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from emd_lib.images import data as D
from emd_lib.runs.checkpoint import CheckpointError
from emd_lib.distill import DistillConfig, di_generator_loss, emd_generator_loss
from emd_lib.images.metrics import (DigitClassifier, class_accuracy, class_coverage, frechet_distance,
                                   gaussian_stats, image_report, inception_extractor, inception_fid)
from emd_lib.langevin import LangevinConfig, estep, mcmc_correct
from emd_lib.schedules import VP
from emd_lib.teachers import NetworkTeacher
from emd_lib.images.unet import UNet
from emd_lib.nets import TeacherInitGenerator

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"


def tiny_unet(seed=0, **kw):
    torch.manual_seed(seed)
    net = UNet(channels=(8, 16), emb_dim=16, n_freq=4, attention=True, **kw)
    with torch.no_grad():                         # a non-trivial F: the zero-initialised layers get weights
        for p in net.parameters():
            if not p.any():
                p.normal_(0, 0.1)
    return net


# ---- data ------------------------------------------------------------------------------------------

def test_mnist_cache_is_checked_balanced_and_split():
    images, labels = D.mnist5k()
    assert images.shape == (5000, 28, 28) and images.dtype == torch.uint8
    assert torch.equal(torch.bincount(labels), torch.full((10,), 500))
    tr, ev = D.split(labels)
    assert len(ev) == 500 and len(tr) == 4500 and not set(tr.tolist()) & set(ev.tolist())
    assert torch.equal(torch.bincount(labels[ev]), torch.full((10,), 50))
    x = D.to_model(images[:3])
    assert x.shape == (3, 1, 28, 28) and x.min() >= -1 and x.max() <= 1
    torch.testing.assert_close(D.to_unit(x), images[:3, None].float() / 255)


def _tampered_copy(name, dst, offset):
    """Copy a shipped checkpoint (weights and card) to ``dst`` and flip one byte of its weights."""
    for ext in (".safetensors", ".json"):
        shutil.copy(DATA / f"{name}{ext}", dst.with_suffix(ext))
    p = dst.with_suffix(".safetensors")
    raw = bytearray(p.read_bytes())
    raw[offset] ^= 0xFF
    p.write_bytes(bytes(raw))


def test_corrupted_mnist_cache_is_refused(tmp_path):
    _tampered_copy("mnist5k", tmp_path / "mnist5k", offset=-10)
    with pytest.raises(CheckpointError, match="does not match"):
        D.mnist5k(tmp_path / "mnist5k")


def test_digits8_fast_path():
    x, y = D.digits8()
    assert x.shape == (1797, 1, 8, 8) and 0 <= x.min() and x.max() <= 1 and set(y.tolist()) == set(range(10))


def test_shipped_files_have_cards_with_commands_and_data_is_small():
    for name in ("mnist5k", "mnist_teacher", "mnist_classifier", "mnist_emd", "mnist_di", "mnist_emd_z"):
        card = json.loads((DATA / f"{name}.json").read_text())
        assert len(card["sha256"]) == 64 and card["command"].startswith("python")
        if name != "mnist5k":
            assert card["machine"] and card["date"] and card["wall_time_s"] > 0 and card.get("complete", True)
        if name in ("mnist_teacher", "mnist_emd", "mnist_di", "mnist_emd_z"):
            assert 0 < card["eval"]["classifier_frechet"] < 200 and card["eval"]["classes_covered"] == 10
    total = sum(f.stat().st_size for f in DATA.rglob("*") if f.is_file())
    assert total < 30e6, f"data/ holds {total / 1e6:.1f} MB"


# ---- the UNet denoiser ----------------------------------------------------------------------------

def test_unet_preconditioning_limits_and_conditioning():
    net = tiny_unet().eval()
    x_t = torch.randn(4, 1, 8, 8)
    c = torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        # at very high log-SNR the denoiser passes the (rescaled) input through: c_skip -> 1, c_out -> 0
        lam_hi = torch.full((4,), 14.0)
        torch.testing.assert_close(net(x_t, lam_hi, c), x_t / VP.alpha_sigma(lam_hi)[0][:, None, None, None],
                                   atol=5e-3, rtol=0)
        lam = torch.zeros(4)
        assert not torch.allclose(net(x_t, lam, c), net(x_t, lam, c.flip(0)))       # the class matters
        assert net(x_t, lam).shape == x_t.shape                                      # cond=None: no class
    # the loss is the preconditioned regression: zero when D returns x, and the error / c_out squared
    eps = torch.randn_like(x_t)
    x0 = x_t.tanh()
    with torch.no_grad():
        got = net.loss(x0, c, lam, eps)
        d = net(VP.alpha_sigma(lam)[0][:, None, None, None] * x0 + VP.alpha_sigma(lam)[1][:, None, None, None] * eps,
                lam, c)
    c_out = net.sigma_data / (1 + net.sigma_data**2) ** 0.5          # lam = 0: s = 1
    torch.testing.assert_close(got, (((d - x0) / c_out) ** 2).mean())
    orig = type(net).forward
    try:
        type(net).forward = lambda self, x_t, lam, cond=None: x0
        assert float(net.loss(x0, c, lam, eps)) == 0.0
    finally:
        type(net).forward = orig


def test_teacher_init_generator_is_the_denoiser_at_lam_star():
    net = tiny_unet()
    teacher = NetworkTeacher(net, VP, predicts="x0")
    gen = TeacherInitGenerator(teacher, lam_star=-6.0)
    z, c = torch.randn(5, 1, 8, 8), torch.arange(5)
    with torch.no_grad():
        torch.testing.assert_close(gen(z, c), teacher.denoise(z, torch.full((5,), -6.0), c))
    assert gen.net is not net and all(p.requires_grad for p in gen.parameters())   # a trainable copy


# ---- the library on (B, C, H, W) with cond -----------------------------------------------------------

def _image_setup(seed=0):
    teacher = NetworkTeacher(tiny_unet(seed).eval(), VP, predicts="x0").requires_grad_(False)
    student = NetworkTeacher(tiny_unet(seed + 1), VP, predicts="x0")
    gen = TeacherInitGenerator(teacher, -4.0)
    g = torch.Generator().manual_seed(seed)
    z, eps = torch.randn(6, 1, 8, 8, generator=g), torch.randn(6, 1, 8, 8, generator=g)
    lam = torch.linspace(-4, 4, 6)
    return teacher, student, gen, z, eps, lam, torch.arange(6) % 10


def _grads(loss, gen):
    gen.zero_grad()
    loss.backward()
    return torch.cat([p.grad.flatten() for p in gen.parameters()])


def test_k1_identity_holds_on_images_with_classes():
    teacher, student, gen, z, eps, lam, c = _image_setup()
    lc = LangevinConfig(K=1, gamma_eps=1.0, cancel="full")
    g_emd = _grads(emd_generator_loss(gen, teacher, student, z, eps, lam, lc, "sigma2", cond=c)[0], gen)
    g_di = _grads(di_generator_loss(gen, teacher, student, z, eps, lam, "sigma2", cond=c)[0], gen)
    torch.testing.assert_close(g_emd, g_di, rtol=1e-4, atol=1e-6)
    # and the class labels reach the networks: other labels, other gradient
    g_other = _grads(di_generator_loss(gen, teacher, student, z, eps, lam, "sigma2", cond=(c + 1) % 10)[0], gen)
    assert not torch.allclose(g_di, g_other)


def test_estep_and_correction_on_images_move_eps_and_z():
    teacher, student, gen, z, eps, lam, c = _image_setup(3)
    res = estep(gen, teacher, student, z, eps, lam, LangevinConfig(K=2, move_z=True), cond=c,
                rng=torch.Generator().manual_seed(0))
    assert res.z.shape == z.shape and res.eps.shape == eps.shape
    assert torch.isfinite(res.eps).all() and not torch.allclose(res.z_chain, z)
    assert not torch.allclose(res.eps_chain, eps)            # the chain moved eps too (eps_chain: before cancelling)
    x, z2, e2 = mcmc_correct(gen, teacher, student, z, 0.0, steps=3, cond=c, rng=torch.Generator().manual_seed(0))
    assert x.shape == z.shape and torch.isfinite(x).all()
    assert not torch.allclose(z2, z) and not torch.allclose(x, gen(z, c))     # the correction moved the samples


def test_distiller_trains_on_images(tmp_path):
    from emd_lib.images.models import load_student, make_distiller, save_student

    teacher = NetworkTeacher(tiny_unet().eval(), VP, predicts="x0").requires_grad_(False)
    teacher.card = {"data": "digits8", "arch": teacher.net.config}
    for method in ("emd", "di"):
        cfg = DistillConfig(method=method, steps=2, batch=4, student_warmup=1, init_steps=0, lam_star=-4.0,
                            langevin=LangevinConfig(K=2))
        d = make_distiller(teacher, cfg)
        before = [p.clone() for p in d.generator.parameters()]
        d.train(progress=False)
        assert all(np.isfinite(d.history["loss_g"]))
        assert any(not torch.equal(a, b) for a, b in zip(before, d.generator.parameters()))
        x = d.sample(3, cond=torch.tensor([1, 2, 3]))
        assert x.shape == (3, 1, 8, 8)
    card = save_student(tmp_path / "s", d, {"arch": teacher.net.config, "lam_star": -4.0, "command": "python x"})
    gen, student, card2 = load_student(tmp_path / "s")
    z = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(gen(z, torch.tensor([0, 1])), d.ema(z, torch.tensor([0, 1])))
    assert card2["sha256"] == card["sha256"]


# ---- metrics ---------------------------------------------------------------------------------------------

def test_frechet_distance_closed_forms():
    mu1, mu2 = torch.tensor([0.0, 1.0]), torch.tensor([1.0, -1.0])
    c1, c2 = torch.diag(torch.tensor([1.0, 4.0])), torch.diag(torch.tensor([4.0, 1.0]))
    # diagonal covariances: |dmu|^2 + sum (sqrt(a) - sqrt(b))^2
    assert frechet_distance(mu1, c1, mu2, c2) == pytest.approx(5.0 + 1.0 + 1.0, abs=1e-9)
    assert frechet_distance(mu1, c1, mu1, c1) == pytest.approx(0.0, abs=1e-9)
    f = torch.randn(400, 3, generator=torch.Generator().manual_seed(0))
    assert frechet_distance(*gaussian_stats(f), *gaussian_stats(f + 2)) == pytest.approx(12.0, abs=1e-6)


def test_class_metrics_with_a_known_classifier():
    class ByMean(torch.nn.Module):        # "class" = brightness bucket, features = mean and std
        def forward(self, x):
            m = x.mean((1, 2, 3))
            return torch.nn.functional.one_hot((m * 10).long().clamp(0, 9), 10).float()

        def features(self, x):
            return torch.stack([x.mean((1, 2, 3)), x.std((1, 2, 3))], 1)

    clf = ByMean()
    x = torch.arange(10).float().add(0.5).div(10)[:, None, None, None].expand(10, 1, 4, 4).repeat(3, 1, 1, 1)
    labels = torch.arange(30) % 10
    assert class_accuracy(x, labels, clf) == 1.0
    assert class_accuracy(x, (labels + 1) % 10, clf) == 0.0
    assert class_coverage(x, clf)[0] == 10
    assert class_coverage(x[:3], clf)[0] == 3
    rep = image_report(x, labels, x + 0.0, clf, k=2)
    assert rep["classifier_frechet"] == pytest.approx(0.0, abs=1e-6) and rep["precision"] == 1.0
    # a reference sorted by class and larger than the sample must not be cut to its first classes
    ref = x[torch.argsort(labels, stable=True)].repeat_interleave(10, 0)     # (300, ...) sorted: 0,0,...,9,9
    assert image_report(x[:20], labels[:20], ref, clf, k=2)["precision"] > 0.7


def test_shipped_classifier_reads_held_out_digits():
    from emd_lib.images.metrics import load_classifier
    from emd_lib.images.data import load_images

    clf = load_classifier()
    _, _, x_ev, y_ev = load_images("mnist")
    assert class_accuracy(D.to_unit(x_ev), y_ev, clf) > 0.95
    assert isinstance(clf, DigitClassifier)


def test_inception_fid_path_with_a_supplied_extractor(monkeypatch):
    proj = torch.randn(64, 5, generator=torch.Generator().manual_seed(0))
    extractor = lambda x: x.flatten(1).double() @ proj.double()  # noqa: E731
    g = torch.Generator().manual_seed(1)
    real, fake = torch.rand(50, 1, 8, 8, generator=g), torch.rand(40, 1, 8, 8, generator=g) * 0.5
    want = frechet_distance(*gaussian_stats(extractor(real)), *gaussian_stats(extractor(fake)))
    assert inception_fid(real, fake, extractor=extractor, batch=7) == pytest.approx(want, rel=1e-9)
    assert inception_fid(real, real, extractor=extractor) == pytest.approx(0.0, abs=1e-6)
    # neither torch-fidelity nor clean-fid: a clear ImportError, no download attempted
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)
    monkeypatch.setitem(sys.modules, "torch_fidelity.feature_extractor_inceptionv3", None)
    monkeypatch.setitem(sys.modules, "cleanfid", None)
    monkeypatch.setitem(sys.modules, "cleanfid.features", None)
    with pytest.raises(ImportError, match="torch-fidelity or clean-fid"):
        inception_extractor()


# ---- the command-line tools and the shipped students --------------------------------------------------

def test_sample_cli_writes_unit_range_digits_of_the_asked_class(tmp_path):
    out = tmp_path / "threes.npy"
    r = subprocess.run([sys.executable, "-m", "emd_lib.commands.sample", "--checkpoint", str(DATA / "mnist_emd"),
                        "--class", "3", "--n", "20", "--out", str(out)], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    x = np.load(out)
    assert x.shape == (20, 1, 28, 28) and x.dtype == np.float32 and x.min() >= 0 and x.max() <= 1
    from emd_lib.images.metrics import load_classifier
    assert class_accuracy(torch.from_numpy(x), torch.full((20,), 3), load_classifier()) >= 0.5


def test_sample_cli_refuses_a_tampered_checkpoint(tmp_path):
    _tampered_copy("mnist_di", tmp_path / "di", offset=-3)
    r = subprocess.run([sys.executable, "-m", "emd_lib.commands.sample", "--checkpoint", str(tmp_path / "di"), "--n", "2",
                        "--out", str(tmp_path / "x.npy")], capture_output=True, text=True)
    assert r.returncode == 2 and "does not match" in r.stderr and not (tmp_path / "x.npy").exists()


@pytest.mark.parametrize("args, words", [
    (["--steps", "0"], "--steps must be >= 1"),
    (["--out", "{tmp}/missing/x.npy"], "does not exist; create it first"),
    (["--out", "{tmp}"], "is a folder; name a file in it"),
    (["--checkpoint", str(DATA / "mnist5k")], "not a diffusion teacher or a one-step student"),
    (["--checkpoint", str(DATA / "mnist_classifier")], "not a diffusion teacher or a one-step student"),
])
def test_sample_cli_bad_input_is_one_line_before_any_sampling(tmp_path, capsys, args, words):
    from emd_lib.commands.sample import main

    argv = ["--checkpoint", str(DATA / "mnist_emd"), "--n", "2", "--out", str(tmp_path / "x.npy")]
    argv += [a.format(tmp=tmp_path) for a in args]
    try:
        code = main(argv)
    except SystemExit as e:                            # argparse's own error exit
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and words in err and "Traceback" not in err and not (tmp_path / "x.npy").exists()


def test_train_teacher_cli_tiny_run_writes_a_card(tmp_path):
    from emd_lib.commands.train_teacher import main

    card = main(["--data", "digits8", "--channels", "8", "16", "--emb-dim", "16", "--steps", "3", "--batch", "8",
                 "--out", str(tmp_path / "t"), "--quiet"])
    assert card["steps"] == 3 and card["complete"]
    assert card["command"].startswith("python -m emd_lib train_teacher --data digits8")
    assert all(np.isfinite(v) for v in card["metrics"].values())


def test_evaluation_rows_of_the_shipped_models():
    from emd_lib import DATA_DIR
    from emd_lib.commands.eval_images import evaluate_rows

    rows = {r["model"]: r for r in evaluate_rows(n=20, teacher_steps=(2,), correction_steps=1, progress=lambda r: None)}
    table = json.loads((DATA_DIR / "results" / "ch07_table.json").read_text())
    real = next(r for r in table["rows"] if r["model"] == "real training digits")
    assert abs(rows["real training digits"]["classifier_frechet"] - real["classifier_frechet"]) < 1e-3
    assert rows["teacher, Heun ODE 2 steps"]["nfe"] == 3 and rows["EMD-4, one step"]["nfe"] == 1
    assert {"Diff-Instruct, one step", "EMD-4 + MCMC correction (1 steps at lam=0)"} <= set(rows)
    assert all(r["classes_covered"] >= 1 for r in rows.values())


def test_class_balance_of_a_known_histogram():
    from emd_lib.experiments.ch07 import class_balance

    class ByFirstPixel(torch.nn.Module):         # reads the class from the first pixel: value c / 10
        def forward(self, x):
            return torch.nn.functional.one_hot((x[:, 0, 0, 0] * 10).round().long(), 10).float()

    classes = torch.tensor([0] * 5 + [1] * 3 + [2] * 2)                       # 10 samples, 3 classes
    x = torch.zeros(10, 1, 28, 28)
    x[:, 0, 0, 0] = classes / 10
    out = class_balance(x, ByFirstPixel())
    assert out["class_counts"] == [5, 3, 2] + [0] * 7 and out["min_share"] == 0
    assert out["tv_uniform"] == pytest.approx(0.5 * (0.4 + 0.2 + 0.1 + 7 * 0.1))
    uniform = torch.arange(20) % 10 / 10
    x = torch.zeros(20, 1, 28, 28)
    x[:, 0, 0, 0] = uniform
    out = class_balance(x, ByFirstPixel())
    assert out["tv_uniform"] == 0 and out["min_share"] == 0.1


def test_shipped_unconditional_table_pairs_its_runs_and_its_histograms_add_up():
    from emd_lib.commands.distill_images import args_from_command
    from emd_lib import DATA_DIR

    t = json.loads((DATA_DIR / "results" / "ch07_unconditional.json").read_text())
    assert "--out data/results/ch07_unconditional.json" in t["command"]
    runs = [r for r in t["rows"] if "method" in r]
    assert {r["model"] for r in t["rows"] if "method" not in r} >= {"real training digits"}
    assert any(r["model"].startswith("teacher, no class") for r in t["rows"])
    for r in t["rows"]:
        shares = np.array(r["class_counts"]) / sum(r["class_counts"])
        assert r["tv_uniform"] == pytest.approx(0.5 * np.abs(shares - 0.1).sum(), abs=1e-3)
        assert r["min_share"] == pytest.approx(shares.min(), abs=1e-3)
    by = {}
    for r in runs:
        args = args_from_command(r["command"])
        assert args.unconditional and args.method == r["method"] and args.seed == r["seed"]
        assert (r["budget"] == "wall time") == (args.minutes > 0) and sum(r["class_counts"]) == r["n"]
        by[(r["method"], r["budget"], r["seed"])] = (r, args)
    seeds = {s for _, _, s in by}
    assert len(seeds) >= 2 and len(by) == 3 * len(seeds)
    for s in seeds:                   # equal updates: Diff-Instruct repeats EMD's updates and learning-rate horizon
        (e, _), (d, d_args) = by[("emd", "wall time", s)], by[("di", "updates", s)]
        assert d["updates"] == e["updates"] == d_args.steps and d_args.horizon == e["horizon"] == d["horizon"]
        assert by[("emd", "wall time", s)][1].minutes == by[("di", "wall time", s)][1].minutes


def test_chain_of_config_reads_the_chain_of_a_recorded_command():
    from emd_lib.commands.distill_images import config_from_command
    from emd_lib.experiments.ch07 import chain_of_config

    mala = json.loads((Path(__file__).resolve().parents[1] / "data" / "mnist_emd_mala.json").read_text())
    name, cancel, K = chain_of_config(config_from_command(mala["command"]))
    assert (cancel, K) == ("none", 4) and "z" in name
    assert chain_of_config(config_from_command("python -m emd_lib distill_images --method di --out x")) == ("none", None, None)
    name, cancel, K = chain_of_config(config_from_command("python -m emd_lib distill_images --method emd --K 8 --out x"))
    assert K == 8 and "z" not in name


def test_tv_noise_is_seeded_and_leaves_the_global_random_state():
    from emd_lib.experiments.ch07 import tv_noise

    torch.manual_seed(5)
    before = torch.get_rng_state()
    a = tv_noise(1000, trials=200)
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(a, tv_noise(1000, trials=200)) and a.shape == (200,) and (a >= 0).all() and (a <= 1).all()
