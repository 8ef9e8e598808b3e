"""Evaluation at scale, on features and tiny models the tests supply (no download)."""
import numpy as np
import pytest
import torch

from emd_lib import evaluate as E
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

    from emd_lib.adapters import _byte_level_tokenizer_files

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
    from emd_lib.train import Trainer, load_config

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
