"""Bad input gets one clear error where it enters: mixtures, configs, samplers, metrics, the CLI.

Each case names the problem; valid input (the defaults, numpy numbers) is still accepted unchanged.
"""
import json
import math
import os

import numpy as np
import pytest
import torch

from emd_lib import ROOT

from emd_lib.commands import toy
from emd_lib.distill import DistillConfig, Distiller
from emd_lib.langevin import LangevinConfig
from emd_lib.metrics import knn_precision_recall, mixture_report, mmd, mode_masses, total_variation
from emd_lib.mixtures import ring8
from emd_lib.schedules import EDM, VP, get_schedule
from emd_lib.sampling import sample_ode, sample_sde, sigma_grid
from emd_lib.teachers import GaussianMixture, MixtureError

OK = {"weights": [0.5, 0.5], "means": [[0.0, 0.0], [1.0, 1.0]], "stds": [1.0, 0.5]}


def spec(**changes):
    out = {k: v for k, v in OK.items()}
    for k, v in changes.items():
        if v is ...:
            out.pop(k)
        else:
            out[k] = v
    return out


# ---- mixtures ------------------------------------------------------------------------------------
BAD_MIXTURES = [
    ("empty_lists", dict(weights=[], means=[], stds=[]), "non-empty"),
    ("weights_not_sum_1", dict(weights=[0.5, 0.6]), "sum to 1"),
    ("weights_negative", dict(weights=[1.5, -0.5]), "non-negative"),
    ("weights_nested", dict(weights=[[0.5, 0.5]]), "non-empty list of numbers"),
    ("weights_string", dict(weights="0.5, 0.5"), "only numbers"),
    ("weights_null", dict(weights=None), "only numbers"),
    ("weights_bool", dict(weights=[True, False]), "only numbers"),
    ("weights_inf", dict(weights=[math.inf, 0.5]), "NaN, infinite"),
    ("means_count", dict(means=[[0.0, 0.0]]), "'means' must be a list of 2 points"),
    ("means_ragged", dict(means=[[0.0, 0.0], [1.0]]), "regular shape"),
    ("means_3d", dict(means=[[[0.0]], [[1.0]]]), "'means'"),
    ("means_dim_0", dict(means=[[], []]), "dimension >= 1"),
    ("means_overflow_f32", dict(means=[[1e300, 0.0], [0.0, 0.0]]), "too large"),
    ("means_huge_int", dict(means=[[10**400, 0], [0, 0]]), "'means'"),
    ("stds_zero", dict(stds=[1.0, 0.0]), "positive"),
    ("stds_negative", dict(stds=[1.0, -1.0]), "positive"),
    ("stds_nan", dict(stds=[1.0, math.nan]), "NaN"),
    ("stds_count", dict(stds=[1.0, 1.0, 1.0]), "'stds' must hold 2 numbers"),
    ("stds_square_overflows", dict(stds=[1e20, 1.0]), "overflow"),
    ("stds_null", dict(stds=None), "'stds' is null"),
    ("stds_object", dict(stds={"a": 1}), "only numbers"),
    ("stds_and_covs", dict(covs=[np.eye(2).tolist()] * 2), "exactly one"),
    ("neither_stds_nor_covs", dict(stds=...), "exactly one"),
    ("covs_not_symmetric", dict(stds=..., covs=[[[1, 0.5], [0, 1]], [[1, 0], [0, 1]]]), "symmetric"),
    ("covs_not_pd", dict(stds=..., covs=[[[1, 2], [2, 1]], [[1, 0], [0, 1]]]), "positive definite"),
    ("covs_singular_f32", dict(stds=..., covs=[[[1, 1 - 1e-9], [1 - 1e-9, 1]], [[1, 0], [0, 1]]]),
     "positive definite"),
    ("covs_shape", dict(stds=..., covs=[[1, 0], [0, 1]]), "matrices of size 2x2"),
    ("missing_weights", dict(weights=...), "missing field 'weights'"),
    ("missing_means", dict(means=...), "missing field 'means'"),
    ("unknown_field", dict(colour="red"), "unknown field"),
    ("name_not_string", dict(name=3), "'name' must be a string"),
]


@pytest.mark.parametrize("changes, message", [c[1:] for c in BAD_MIXTURES], ids=[c[0] for c in BAD_MIXTURES])
def test_bad_mixture_spec_is_refused_with_its_field(changes, message):
    with pytest.raises(MixtureError, match=message) as info:
        GaussianMixture.from_dict(spec(**changes))
    assert isinstance(info.value, ValueError)
    assert "\n" not in str(info.value)


def test_mixture_spec_not_an_object():
    with pytest.raises(MixtureError, match="JSON object"):
        GaussianMixture.from_dict([0.5, 0.5])


def test_valid_mixtures_still_accepted():
    m = GaussianMixture.from_dict(spec(name="two"))
    assert m.n_components == 2 and m.dim == 2 and m.diagonal
    m = GaussianMixture(np.array([0.3, 0.7]), np.array([[0.0], [1.0]]), stds=np.array([0.2, 0.4]))
    assert m.dim == 1
    m = GaussianMixture([1.0], [[0.0, 0.0]], covs=[[[2.0, 0.5], [0.5, 1.0]]])
    assert not m.diagonal
    m = GaussianMixture([0.5, 0.5, 0.0], [[0.0], [1.0], [2.0]], stds=[1, 1, 1])  # a zero weight is fine
    assert m.n_components == 3


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    ("{not json", "not valid JSON"),
    ("", "not valid JSON"),
    (b"\xff\xfe\x00binary", "not a text file"),
    ("[" * 100_000 + "]" * 100_000, "nests lists too deeply"),
    ("folder", "is a folder"),
])
def test_mixture_file_problems(tmp_path, content, message):
    f = tmp_path / "m.json"
    if content == "folder":
        f.mkdir()
    elif isinstance(content, bytes):
        f.write_bytes(content)
    elif content is not None:
        f.write_text(content)
    with pytest.raises(MixtureError, match=message):
        GaussianMixture.from_json(f)


# ---- configs ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw, message", [
    (dict(K=-1), "K \\(Langevin steps\\) must be a whole number >= 0"),
    (dict(K=1.5), "K \\(Langevin steps\\)"),
    (dict(K=math.nan), "K \\(Langevin steps\\)"),
    (dict(K="8"), "K \\(Langevin steps\\)"),
    (dict(gamma_eps=0.0), "gamma_eps"),
    (dict(gamma_eps=-0.1), "gamma_eps"),
    (dict(gamma_z=math.inf), "gamma_z"),
    (dict(gamma_x=0.0), "gamma_x"),
    (dict(space="z"), "space must be 'eps' or 'x'"),
    (dict(cancel="all"), "cancel must be 'none', 'injected' or 'full'"),
    (dict(z_precondition="adam"), "z_precondition"),
])
def test_bad_langevin_config(kw, message):
    with pytest.raises(ValueError, match=message):
        LangevinConfig(**kw)


@pytest.mark.parametrize("kw, message", [
    (dict(method="vsd"), "method must be 'emd' or 'di'"),
    (dict(steps=0), "steps must be a whole number >= 1"),
    (dict(steps=-5), "steps"),
    (dict(steps=2.5), "steps"),
    (dict(batch=0), "batch"),
    (dict(width=0), "width"),
    (dict(student_warmup=-1), "student_warmup"),
    (dict(init_steps=-1), "init_steps"),
    (dict(lr_g=0.0), "lr_g \\(a learning rate\\)"),
    (dict(lr_s=-1e-3), "lr_s"),
    (dict(lr_g=math.nan), "lr_g"),
    (dict(ema=1.0), "ema must be in"),
    (dict(lr_decay=1.5), "lr_decay"),
    (dict(grad_clip=0.0), "grad_clip"),
    (dict(betas=(0.9,)), "betas"),
    (dict(lam_dist="normal"), "lam_dist"),
    (dict(weighting="sigma"), "weighting"),
    (dict(lam_min=2.0, lam_max=1.0), "lam_min < lam_max"),
    (dict(langevin=dict(K=-2)), "K \\(Langevin steps\\)"),
])
def test_bad_distill_config(kw, message):
    with pytest.raises(ValueError, match=message):
        DistillConfig(**kw)


def test_distill_config_langevin_of_wrong_type():
    with pytest.raises(TypeError, match="LangevinConfig"):
        DistillConfig(langevin=8)


def test_valid_configs_unchanged():
    assert DistillConfig() == DistillConfig(langevin=LangevinConfig())
    cfg = DistillConfig(steps=np.int64(10), grad_clip=math.inf, ema=0.0, langevin={"K": np.int64(3)})
    assert cfg.steps == 10 and cfg.langevin.K == 3
    assert LangevinConfig(K=0, gamma_eps=np.float32(0.2)).K == 0


@pytest.mark.parametrize("name, value", [("lam_star", -12.0), ("lam_star", math.nan), ("lam_min", -11.0),
                                         ("lam_max", 10.5)])
def test_lam_outside_teacher_range(name, value):
    kw = {name: value}
    if name == "lam_min":
        kw["lam_max"] = 6.0
    with pytest.raises(ValueError, match=f"{name}=.*outside the teacher's log-SNR range"):
        Distiller(ring8(), DistillConfig(init_steps=0, **kw))


# ---- samplers ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("sampler", [sample_ode, sample_sde])
@pytest.mark.parametrize("kw, message", [
    (dict(n=4, n_steps=0), "n_steps must be a whole number >= 1"),
    (dict(n=4, n_steps=-3), "n_steps"),
    (dict(n=4, n_steps=2.5), "n_steps"),
    (dict(n=0, n_steps=5), "n \\(number of samples\\)"),
    (dict(n_steps=5), "n \\(number of samples\\)"),
    (dict(n=4, n_steps=5, s_min=2.0, s_max=1.0), "s_min <= s_max"),
    (dict(n=4, n_steps=5, s_min=0.0, s_max=1.0), "0 < s_min"),
])
def test_bad_sampler_arguments(sampler, kw, message):
    with pytest.raises(ValueError, match=message):
        sampler(ring8(), **kw)


def test_sigma_grid_needs_a_step():
    with pytest.raises(ValueError, match="n_steps must be >= 1"):
        sigma_grid(0, 0.01, 80.0)


# ---- empty batches and wrong shapes --------------------------------------------------------------
def test_teacher_on_empty_batch_returns_empty():
    """An empty batch is well defined for the teacher (chunked loops may pass one): empty in, empty out."""
    mix = ring8()
    x = torch.zeros(0, 2)
    assert mix.denoise(x, torch.zeros(0)).shape == (0, 2)
    assert mix.score(x, 0.0).shape == (0, 2)
    assert mix.responsibilities(x, 0.0).shape == (0, 8)
    assert mix.sample(0).shape == (0, 2)


def test_teacher_wrong_dimension():
    with pytest.raises(ValueError, match=r"expected points of shape \(batch, 2\).*got \(4, 3\)"):
        ring8().denoise(torch.zeros(4, 3), 0.0)
    with pytest.raises(ValueError, match=r"shape \(batch, 2\)"):
        ring8().score(torch.zeros(2), 0.0)


def test_schedules_by_name_and_a_clear_error_for_others():
    assert get_schedule("EDM") is EDM and get_schedule(VP) is VP
    assert ring8("edm").schedule is EDM                      # mixtures take the name as well
    with pytest.raises(ValueError, match="unknown schedule 'vpp'; give 'vp', 'edm'"):
        get_schedule("vpp")
    with pytest.raises(ValueError, match="unknown schedule 3"):
        ring8(3)


def test_log_prob_takes_one_noise_level_per_row():
    """lam = inf (the clean density) may sit anywhere in a batch of noise levels."""
    mix, x = ring8(), torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    lams = [math.inf, 0.0, math.inf, -2.0]
    each = torch.cat([mix.log_prob(x[i:i + 1], lam) for i, lam in enumerate(lams)])
    torch.testing.assert_close(mix.log_prob(x, torch.tensor(lams)), each)
    assert not torch.allclose(each[0], mix.log_prob(x[:1], 0.0)[0])


def test_total_variation_needs_two_vectors_of_one_length():
    w = torch.full((4,), 0.25)
    assert total_variation(w, torch.tensor([0.5, 0.5, 0.0, 0.0])) == pytest.approx(0.5)
    with pytest.raises(ValueError, match=r"1-D probability vectors of one length, got shapes \(4, 1\) and \(4,\)"):
        total_variation(w[:, None], w)
    with pytest.raises(ValueError, match="one length"):
        total_variation(w, w[:3])


def test_sample_negative_count():
    with pytest.raises(ValueError, match="n \\(number of samples\\)"):
        ring8().sample(-1)


def test_metrics_on_empty_or_tiny_batches():
    mix = ring8()
    empty = torch.zeros(0, 2)
    with pytest.raises(ValueError, match="need at least 1 sample"):
        mode_masses(mix, empty)
    with pytest.raises(ValueError, match="mmd: x: need at least 1 sample"):
        mmd(empty, torch.zeros(4, 2))
    with pytest.raises(ValueError, match="mmd: y must have shape"):
        mmd(torch.zeros(4, 2), torch.zeros(4, 3))
    with pytest.raises(ValueError, match="need at least 6 sample"):
        mixture_report(mix, torch.zeros(3, 2))
    with pytest.raises(ValueError, match="must have shape \\(n, 2\\)"):
        mixture_report(mix, torch.zeros(10, 3))
    with pytest.raises(ValueError, match="need more than k=5"):
        knn_precision_recall(empty, torch.zeros(10, 2))


# ---- the command line, in-process ------------------------------------------------------------------
RING8 = str(ROOT / "data/mixtures/ring8.json")


def assert_one_line(rc, err, *words):
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert "Traceback" not in err
    for w in words:
        assert w in lines[0], (w, err)


@pytest.mark.parametrize("args, words", [
    (["--steps", "-1"], ["--steps must be >= 1"]),
    (["--steps", "0"], ["--steps must be >= 1"]),
    (["-K", "-1"], ["--langevin-steps must be >= 0"]),
    (["--n-samples", "0"], ["--n-samples must be >= 6"]),
    (["--n-samples", "3"], ["--n-samples must be >= 6"]),
    (["--init-steps", "-1"], ["--init-steps"]),
    (["--warmup", "-1"], ["--warmup"]),
    (["--threads", "0"], ["--threads must be >= 1"]),
    (["--seed", str(2**64)], ["--seed"]),
    (["--steps", "ten"], ["invalid int value", "--help"]),
    (["--method", "vsd"], ["invalid choice", "--help"]),
    (["--no-such-flag"], ["unrecognized arguments"]),
])
def test_cli_bad_arguments(tmp_path, args, words, toy_cli):
    rc, _, err = toy_cli("--mixture", RING8, "--samples", tmp_path / "s.npy", *args)
    assert_one_line(rc, err, *words)


def test_cli_missing_required_argument(tmp_path, toy_cli):
    rc, _, err = toy_cli("--samples", tmp_path / "s.npy")
    assert_one_line(rc, err, "--mixture")


@pytest.mark.parametrize("content, words", [
    (None, ["does not exist"]),
    ("{not json", ["not valid JSON"]),
    (b"\x89PNG\r\n\x1a\n\x00\x00", ["not a text file"]),
    ('{"weights": [1.0], "means": [[0, 0]], "stds": [NaN]}', ["'stds'", "NaN"]),
])
def test_cli_bad_mixture_file(tmp_path, content, words, toy_cli):
    f = tmp_path / "m.json"
    if isinstance(content, bytes):
        f.write_bytes(content)
    elif content is not None:
        f.write_text(content)
    rc, _, err = toy_cli("--mixture", f, "--samples", tmp_path / "s.npy", "--check")
    assert_one_line(rc, err, str(f), *words)


def test_cli_scales_too_far_apart(tmp_path, toy_cli):
    f = tmp_path / "m.json"
    f.write_text(json.dumps({"weights": [0.5, 0.5], "means": [[0.0], [1e30]], "stds": [1e-20, 1e-20]}))
    rc, _, err = toy_cli("--mixture", f, "--samples", tmp_path / "s.npy", "--check")
    assert_one_line(rc, err, "standardise")


def test_cli_output_folder_missing(tmp_path, toy_cli):
    rc, _, err = toy_cli("--mixture", RING8, "--samples", tmp_path / "nope" / "s.npy")
    assert_one_line(rc, err, "--samples", "does not exist")
    rc, _, err = toy_cli("--mixture", RING8, "--samples", tmp_path / "s.npy", "--report", tmp_path / "nope" / "r.json")
    assert_one_line(rc, err, "--report", "does not exist")


def test_cli_output_is_a_folder(tmp_path, toy_cli):
    (tmp_path / "d.npy").mkdir()
    rc, _, err = toy_cli("--mixture", RING8, "--samples", tmp_path / "d.npy")
    assert_one_line(rc, err, "is a folder")


def test_cli_output_not_writable(tmp_path, monkeypatch, toy_cli):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o500)
    if os.access(out, os.W_OK):  # root ignores permission bits: simulate what an ordinary user sees
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(out) else real(p, mode))
    try:
        rc, _, err = toy_cli("--mixture", RING8, "--samples", out / "s.npy")
    finally:
        out.chmod(0o700)
    assert_one_line(rc, err, "cannot write", "permission denied")


def test_cli_suffix(tmp_path, toy_cli):
    rc, _, err = toy_cli("--mixture", RING8, "--samples", tmp_path / "s.csv")
    assert_one_line(rc, err, ".npy")


def test_cli_check_accepts_a_good_file(tmp_path, toy_cli):
    rc, out, err = toy_cli("--mixture", RING8, "--samples", tmp_path / "s.npy", "--check")
    assert rc == 0 and err == "" and "8 components in 2 dimensions" in out
    assert not (tmp_path / "s.npy").exists()


def test_cli_training_error_is_one_line(tmp_path, monkeypatch, toy_cli):
    def boom(*a, **k):
        raise ValueError("the Langevin step is too large for this noise level; use a smaller gamma_eps")
    monkeypatch.setattr(toy, "distil_mixture", boom)
    rc, _, err = toy_cli("--mixture", RING8, "--samples", tmp_path / "s.npy", "--quiet")
    assert_one_line(rc, err, "Langevin step is too large")


def test_cli_interrupt_is_one_line(tmp_path, monkeypatch, toy_cli):
    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(toy, "distil_mixture", interrupted)
    rc, _, err = toy_cli("--mixture", RING8, "--samples", tmp_path / "s.npy", "--quiet")
    assert rc == 130 and err.strip() == "error: interrupted"
    assert not (tmp_path / "s.npy").exists()


# ---- the reliability table names real tests ------------------------------------------------------------
def test_reliability_table_names_existing_tests():
    import re

    doc = (ROOT / "docs" / "reliability.md").read_text()
    named = set(re.findall(r"`(test_\w+)::(test_\w+)(?:\[[^\]`]*\])?`", doc))
    assert len(named) > 40
    for module, name in sorted(named):
        src = (ROOT / "tests" / f"{module}.py").read_text()
        assert re.search(rf"^def {name}\(", src, re.M), f"docs/reliability.md names {module}::{name}, which does not exist"
    # parametrised cases named in brackets exist too
    for case in re.findall(r"`test_validation::test_bad_mixture_spec_is_refused_with_its_field\[(\w+)\]`", doc):
        assert case in {c[0] for c in BAD_MIXTURES}, case
    assert re.search(r"…\[(\w+)\]", doc)
    for case in re.findall(r"`…\[(\w+)\]`", doc):
        assert case in {c[0] for c in BAD_MIXTURES}, case
