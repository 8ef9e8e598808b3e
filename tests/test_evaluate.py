"""Evaluation at scale, on features and tiny models the tests supply (no download)."""
import numpy as np
import pytest
import torch

from emd_lib.scale import evaluate as E
from emd_lib.commands import evaluate as evaluate_command
from emd_lib.metrics import knn_precision_recall


def test_inception_score_bounds():
    # uninformative predictions: IS = 1; confident and balanced over 10 classes: IS = 10
    assert E.inception_score(torch.zeros(1000, 10))[0] == pytest.approx(1.0)
    logits = 50 * torch.nn.functional.one_hot(torch.arange(1000) % 10, 10).float()
    assert E.inception_score(logits, splits=4)[0] == pytest.approx(10.0, rel=1e-6)
    # confident but all one class: 1 again
    assert E.inception_score(50 * torch.nn.functional.one_hot(torch.zeros(500, dtype=torch.long), 10).float())[0] \
        == pytest.approx(1.0)


def test_fid_from_supplied_features_matches_the_gaussian_formula(tmp_path):
    g = torch.Generator().manual_seed(0)
    d, n = 6, 200_000
    s1, s2 = torch.linspace(0.5, 2.0, d), torch.linspace(1.5, 0.7, d)
    mu2 = torch.full((d,), 0.3)
    f = torch.randn(n, d, generator=g, dtype=torch.float64) * s1
    np.savez(tmp_path / "ref.npz", mu=mu2.numpy(), sigma=torch.diag(s2**2).numpy())
    # diagonal covariances: |mu1 - mu2|^2 + sum (s1 - s2)^2
    want = float((mu2**2).sum() + ((s1 - s2) ** 2).sum())
    got = E.fid_from_features(f, *E.load_reference_stats(tmp_path / "ref.npz"))
    assert got == pytest.approx(want, rel=2e-2)
    with pytest.raises(FileNotFoundError, match="imagenet-64x64.npz"):
        E.load_reference_stats(tmp_path / "missing.npz")


def test_batched_precision_recall_equals_the_dense_one():
    g = torch.Generator().manual_seed(1)
    real = torch.randn(300, 5, generator=g)
    fake = 1.3 * torch.randn(250, 5, generator=g) + 0.4
    assert knn_precision_recall(real, fake, k=3, batch=64) == pytest.approx(knn_precision_recall(real, fake, k=3, batch=10_000))


def test_imagenet_eval_with_a_supplied_extractor():
    torch.manual_seed(0)
    W = torch.randn(3 * 8 * 8, 16)
    H = torch.randn(16, 10)

    logits = []

    def extractor(x):
        f = x.flatten(1) @ W
        logits.append(f @ H)
        return f, logits[-1]

    def sample(labels):                     # a "generator" whose images depend on the class
        return torch.sigmoid(torch.randn(len(labels), 3, 8, 8) + labels[:, None, None, None] / 5)

    real = extractor(sample(torch.arange(400) % 10))[0]
    mu, sigma = real.double().mean(0), torch.cov(real.double().T)
    res = E.imagenet_eval(sample, n=400, batch=100, ref=(mu, sigma), extractor=extractor, num_classes=10,
                          real_features=real, progress=False)
    assert set(res) == {"n", "fid", "inception_score", "inception_score_std", "precision", "recall"}
    assert 0 <= res["fid"] < 50 and 0 < res["precision"] <= 1
    # the Inception Score of the generated images' logits (the last four calls), not of the real ones or the features
    assert res["inception_score"] == pytest.approx(E.inception_score(torch.cat(logits[-4:]).double())[0])
    # an extractor that returns bare features: no Inception Score
    res = E.imagenet_eval(sample, n=200, batch=100, extractor=lambda x: extractor(x)[0], num_classes=10,
                          real_features=real, progress=False)
    assert set(res) == {"n", "precision", "recall"}


def test_precision_recall_subsets_are_random_not_the_first_rows():
    from emd_lib.metrics import equal_random_subsets

    real = torch.arange(1000)[:, None].float() // 100                 # sorted by "class" 0..9
    fake = torch.zeros(200, 1)
    r, f = equal_random_subsets(real, fake)
    assert len(r) == len(f) == 200 and set(r.flatten().tolist()) == set(range(10))
    assert torch.equal(equal_random_subsets(real, fake)[0], r)                    # seeded


def test_missing_inception_packages_say_what_to_install():
    try:
        import torch_fidelity  # noqa: F401
        pytest.skip("torch-fidelity is installed")
    except ImportError:
        pass
    with pytest.raises(ImportError, match="pip install torch-fidelity"):
        E.inception_extractor()


def tiny_clip(folder):
    """A random CLIP (16 px images) and a byte-level tokenizer, built offline."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    from emd_lib.scale.sd import _byte_level_tokenizer_files

    _byte_level_tokenizer_files(folder / "tok", 16)
    tok = CLIPTokenizer.from_pretrained(folder / "tok")
    torch.manual_seed(0)
    cfg = CLIPConfig(text_config=dict(vocab_size=514, hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                                      num_attention_heads=4, max_position_embeddings=16, bos_token_id=512,
                                      eos_token_id=513, pad_token_id=513),
                     vision_config=dict(image_size=16, patch_size=8, hidden_size=32, intermediate_size=37,
                                        num_hidden_layers=1, num_attention_heads=4), projection_dim=16)
    return CLIPModel(cfg).eval(), tok


def test_clip_score_with_a_tiny_random_clip(tmp_path):
    model, tok = tiny_clip(tmp_path)
    images = torch.rand(5, 3, 40, 40)
    texts = ["a cat", "a dog on a sofa", "red", "two birds", "a house"]
    got = E.clip_score(images, texts, model, tok, batch=2)
    # from scratch: an antialiased resize to 16 px, CLIP's normalisation, cosine of the projected embeddings
    px = torch.nn.functional.interpolate(images, size=(16, 16), mode="bicubic", align_corners=False,
                                         antialias=True).clamp(0, 1)
    px = (px - torch.tensor(E.CLIP_MEAN)[:, None, None]) / torch.tensor(E.CLIP_STD)[:, None, None]
    with torch.no_grad():
        fi = E._features(model.get_image_features(pixel_values=px))
        scores = []
        for t, f in zip(texts, fi):
            ft = E._features(model.get_text_features(**tok([t], return_tensors="pt")))
            scores.append(100 * max(float(torch.nn.functional.cosine_similarity(f[None], ft)), 0.0))
    assert got == pytest.approx(sum(scores) / len(scores), abs=1e-3)
    assert 0 <= got <= 100


def test_a_training_run_loads_for_evaluation(tmp_path):
    from emd_lib.scale.train import Trainer, load_config

    over = ["batch=16", "width=16", "depth=2", "init_steps=5", "student_warmup=2", "steps=3", "langevin.K=2",
            "progress=false", "tensorboard=false", f"out={tmp_path}"]
    tr = Trainer(load_config("toy", over))
    tr.run()
    back = E._load_run(tmp_path)
    assert back.step == 3
    for (k, v), (k2, v2) in zip(tr.ema.state_dict().items(), back.ema.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    assert back.sample(5).shape == (5, 2)


def test_coco_eval_scores_clip_on_the_generated_images_and_fid_on_the_resized_ones(tmp_path):
    model, tok = tiny_clip(tmp_path)
    g = torch.Generator().manual_seed(0)
    made, seen = [], []

    def sample(caps):                                  # "generated" 40 px images, one per caption
        made.append(torch.rand(len(caps), 3, 40, 40, generator=g))
        return made[-1]

    def extractor(x):                                  # a stand-in feature network: records what it is given
        seen.append(x.shape[-1])
        return x.mean((2, 3)).double()

    caps = ["a cat", "a dog on a sofa", "red", "two birds", "a house"]
    feats = torch.rand(50, 3, dtype=torch.float64, generator=g)
    ref = (feats.mean(0).numpy(), np.cov(feats.numpy(), rowvar=False))
    res = E.coco_eval(sample, caps, ref=ref, extractor=extractor, clip=(model, tok), batch=2, size=20, progress=False)
    assert res["n"] == 5 and seen == [20, 20, 20] and res["fid"] > 0
    assert res["clip_score"] == pytest.approx(E.clip_score(torch.cat(made), caps, model, tok), abs=1e-4)


def test_clean_fid_extractor_is_built_on_the_given_device_without_data_parallel(monkeypatch):
    """clean-fid wraps its network in DataParallel by default, which fails on a several-GPU machine
    when the network sits on another device: the extractor asks for one device, the run's."""
    import sys
    import types

    calls = []
    fake = types.ModuleType("cleanfid.features")

    def build_feature_extractor(mode, device, use_dataparallel=True):
        calls.append((mode, device, use_dataparallel))
        return lambda x: x.flatten(1)[:, :4]

    fake.build_feature_extractor = build_feature_extractor
    monkeypatch.setitem(sys.modules, "cleanfid", types.ModuleType("cleanfid"))
    monkeypatch.setitem(sys.modules, "cleanfid.features", fake)
    extract = E.inception_extractor("cpu", backend="clean-fid")
    assert calls == [("clean", torch.device("cpu"), False)]
    assert extract(torch.rand(2, 1, 8, 8)).shape == (2, 4)


# ---- the command line checks its inputs before anything loads -----------------------------------------

@pytest.fixture
def cli(tmp_path, monkeypatch):
    """A run folder with a checkpoint card, good inputs, and a ``run(*args) -> (rc, stderr lines)`` that
    fails the test if the run (the costly part) is ever loaded."""
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "step_00000001.json").write_text("{}")
    np.savez(tmp_path / "ref.npz", mu=np.zeros(4), sigma=np.eye(4))
    np.savez(tmp_path / "feats.npz", features=np.random.default_rng(0).normal(size=(10, 4)))
    (tmp_path / "caps.txt").write_text("a cat\n\na red bicycle\n")

    def no_run(*a, **k):
        raise AssertionError("the run was loaded before the inputs were checked")

    monkeypatch.setattr(E, "_load_run", no_run)

    def run(*args):
        return evaluate_command.main(["--run", str(tmp_path / "run"), *[a.replace("TMP", str(tmp_path)) for a in args]])

    return tmp_path, run


def _write_bad_inputs(tmp):
    (tmp / "text.npz").write_text("not a zip file")
    np.savez(tmp / "keys.npz", mean=np.zeros(4), cov=np.eye(4))
    np.savez(tmp / "shape.npz", mu=np.zeros(4), sigma=np.eye(3))
    np.savez(tmp / "nan.npz", mu=np.full(4, np.nan), sigma=np.eye(4))
    np.savez(tmp / "feats3.npz", features=np.zeros((10, 3)))
    np.savez(tmp / "feats1d.npz", features=np.zeros(10))
    (tmp / "empty.txt").write_text("\n  \n")
    (tmp / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))


@pytest.mark.parametrize("args, words", [
    (["--task", "coco", "--ref", "/nonexistent.npz", "--captions", "TMP/caps.txt"], ["--ref /nonexistent.npz", "no such file"]),
    (["--task", "coco", "--ref", "TMP/text.npz", "--captions", "TMP/caps.txt"], ["--ref", "not a readable .npz"]),
    (["--task", "imagenet", "--ref", "TMP/keys.npz"], ["--ref", "lacks 'mu', 'sigma'", "holds mean, cov"]),
    (["--task", "imagenet", "--ref", "TMP/shape.npz"], ["--ref", "sigma (d, d)"]),
    (["--task", "imagenet", "--ref", "TMP/nan.npz"], ["--ref", "NaN"]),
    (["--task", "coco", "--captions", "TMP/caps.txt"], ["--ref is required for --task coco"]),
    (["--task", "coco", "--ref", "TMP/ref.npz"], ["--captions is required"]),
    (["--task", "coco", "--ref", "TMP/ref.npz", "--captions", "TMP/none.txt"], ["--captions", "no such file"]),
    (["--task", "coco", "--ref", "TMP/ref.npz", "--captions", "TMP/empty.txt"], ["--captions", "holds no caption"]),
    (["--task", "coco", "--ref", "TMP/ref.npz", "--captions", "TMP/latin1.txt"], ["--captions", "not UTF-8"]),
    (["--task", "imagenet", "--real-features", "TMP/none.npz"], ["--real-features", "no such file"]),
    (["--task", "imagenet", "--real-features", "TMP/keys.npz"], ["--real-features", "lacks 'features'"]),
    (["--task", "imagenet", "--real-features", "TMP/feats1d.npz"], ["--real-features", "(n, d)"]),
    (["--task", "imagenet", "--ref", "TMP/ref.npz", "--real-features", "TMP/feats3.npz"], ["same Inception layer"]),
    (["--task", "imagenet", "--captions", "TMP/caps.txt"], ["--captions is for --task coco"]),
    (["--task", "imagenet", "--n", "0"], ["--n and --batch"]),
])
def test_bad_inputs_get_one_line_before_anything_loads(cli, args, words, capsys):
    tmp, run = cli
    _write_bad_inputs(tmp)
    rc = run(*args)
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    for w in words:
        assert w in err, (w, err)


def test_a_run_without_checkpoints_is_one_line(tmp_path, capsys):
    assert evaluate_command.main(["--run", str(tmp_path), "--task", "imagenet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--run" in err and "no checkpoint" in err


def test_good_inputs_are_read_once():
    from types import SimpleNamespace

    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        (d / "checkpoints").mkdir()
        (d / "checkpoints" / "step_00000003.json").write_text("{}")
        np.savez(d / "ref.npz", mu=np.arange(3.0), sigma=2 * np.eye(3))
        (d / "caps.txt").write_text("one\n\n two \n")
        got = E.check_inputs(SimpleNamespace(run=str(d), task="coco", ref=str(d / "ref.npz"), real_features=None,
                                             captions=str(d / "caps.txt"), n=1, batch=1))
    assert got["captions"] == ["one", "two"]
    np.testing.assert_array_equal(got["ref"][0], np.arange(3.0))
    np.testing.assert_array_equal(got["ref"][1], 2 * np.eye(3))


def test_a_clip_model_that_cannot_load_offline_is_one_line_naming_clip(cli, monkeypatch, capsys):
    import time

    tmp, run = cli
    base = ["--task", "coco", "--ref", "TMP/ref.npz", "--captions", "TMP/caps.txt"]
    assert run(*base, "--clip", "/nonexistent/clip-folder") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--clip /nonexistent/clip-folder: no such folder" in err
    # a hub id that is not in the cache, offline: one line at once, no retries against the hub
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp / "hf"))
    t0 = time.perf_counter()
    assert run(*base, "--clip", "someone/no-such-clip-model") == 2
    err = capsys.readouterr().err
    assert time.perf_counter() - t0 < 20
    assert err.count("\n") == 1 and "cannot load the CLIP model 'someone/no-such-clip-model'" in err
    assert "--clip FOLDER" in err and "Traceback" not in err


def test_a_clip_folder_loads_offline(tmp_path):
    model, tok = tiny_clip(tmp_path)
    model.save_pretrained(tmp_path / "clip")
    tok.save_pretrained(tmp_path / "clip")
    back, back_tok = E.load_clip(tmp_path / "clip")
    images, texts = torch.rand(2, 3, 16, 16), ["a cat", "red"]
    assert E.clip_score(images, texts, back, back_tok) == pytest.approx(E.clip_score(images, texts, model, tok), abs=1e-4)


def test_an_inception_network_that_cannot_load_is_one_line(cli, monkeypatch, capsys):
    tmp, run = cli

    def offline(*a, **k):
        raise OSError("could not download pt_inception-2015-12-05-6726825d.pth\nmore")

    monkeypatch.setattr(E, "inception_extractor", offline)
    assert run("--task", "imagenet", "--ref", "TMP/ref.npz") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot load the Inception network (OSError: could not download" in err
    assert "torch-fidelity" in err

    def missing(*a, **k):
        raise ImportError("real FID needs torch-fidelity or clean-fid (`pip install torch-fidelity` or ...)")

    monkeypatch.setattr(E, "inception_extractor", missing)
    assert run("--task", "imagenet", "--ref", "TMP/ref.npz") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install torch-fidelity" in err
