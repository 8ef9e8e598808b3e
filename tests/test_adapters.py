"""Teacher adapters on tiny stand-ins built in the test: an EDM pickle, an ADM checkpoint with a
stand-in of guided-diffusion's code, and a Stable Diffusion folder of tiny random diffusers and
transformers models. Nothing downloads."""
import math
import pickle
import sys
import textwrap

import pytest
import torch

from emd_lib.nets import TeacherInitGenerator
from emd_lib.scale import adapters as A
from emd_lib.distill import emd_generator_loss, student_loss
from emd_lib.langevin import LangevinConfig
from emd_lib.sampling import sample_ode

TINY_EDM = '''
import torch
from torch import nn


class TinyPrecond(nn.Module):
    """The call signature and attributes of NVlabs' EDMPrecond, on a two-layer net."""

    def __init__(self, img_resolution=8, img_channels=3, label_dim=5, sigma_data=0.5):
        super().__init__()
        self.img_resolution, self.img_channels, self.label_dim = img_resolution, img_channels, label_dim
        self.sigma_min, self.sigma_max, self.sigma_data = 0, float("inf"), sigma_data
        self.conv = nn.Conv2d(img_channels + 1, img_channels, 3, padding=1)
        self.label = nn.Linear(label_dim, img_channels)

    def forward(self, x, sigma, class_labels=None, force_fp32=False):
        sigma = sigma.to(torch.float32).reshape(-1, 1, 1, 1)
        sd = self.sigma_data
        c_in, c_skip = 1 / (sigma**2 + sd**2).sqrt(), sd**2 / (sigma**2 + sd**2)
        c_out = sigma * sd / (sigma**2 + sd**2).sqrt()
        h = torch.cat([c_in * x, (sigma.log() / 4).expand(-1, 1, *x.shape[2:])], 1)
        F = self.conv(h) + self.label(class_labels)[:, :, None, None]
        return c_skip * x + c_out * F


class TinyInner(nn.Module):
    """An inner model F(x; c_noise, class) whose layers run in the dtype of their input (weights cast to it)."""

    def __init__(self, channels=3, label_dim=5, width=8):
        super().__init__()
        self.conv_in = nn.Conv2d(channels, width, 3, padding=1)
        self.noise = nn.Linear(1, width)
        self.label = nn.Linear(label_dim, width, bias=False)
        self.conv_out = nn.Conv2d(width, channels, 3, padding=1)

    @staticmethod
    def _conv(conv, x):
        return nn.functional.conv2d(x, conv.weight.to(x.dtype), conv.bias.to(x.dtype), padding=1)

    def forward(self, x, noise_labels, class_labels):
        emb = self.noise(noise_labels.reshape(-1, 1).to(torch.float32)) + self.label(class_labels)
        h = self._conv(self.conv_in, x) + emb.to(x.dtype)[:, :, None, None]
        return self._conv(self.conv_out, nn.functional.silu(h))


class EDMPrecond(nn.Module):
    """The released EDM networks' contract, written for the tests: ``use_fp16`` picks float16 for the inner
    model on CUDA (float32 elsewhere), and the inner model must return exactly that dtype. Under bf16
    autocast it returns bfloat16, so calling this forward there fails, as NVlabs' does."""

    def __init__(self, img_resolution=8, img_channels=3, label_dim=5, use_fp16=True, sigma_data=0.5):
        super().__init__()
        self.img_resolution, self.img_channels, self.label_dim = img_resolution, img_channels, label_dim
        self.use_fp16, self.sigma_min, self.sigma_max, self.sigma_data = use_fp16, 0, float("inf"), sigma_data
        self.model = TinyInner(img_channels, label_dim)

    def forward(self, x, sigma, class_labels=None, force_fp32=False):
        x = x.to(torch.float32)
        sigma = sigma.to(torch.float32).reshape(-1, 1, 1, 1)
        if class_labels is None:
            class_labels = torch.zeros(1, self.label_dim, device=x.device)
        dtype = torch.float16 if self.use_fp16 and not force_fp32 and x.device.type == "cuda" else torch.float32
        sd = self.sigma_data
        c_skip, c_out = sd**2 / (sigma**2 + sd**2), sigma * sd / (sigma**2 + sd**2).sqrt()
        c_in, c_noise = 1 / (sigma**2 + sd**2).sqrt(), sigma.log() / 4
        F = self.model((c_in * x).to(dtype), c_noise.flatten(), class_labels=class_labels.to(torch.float32))
        if F.dtype != dtype:
            raise TypeError(f"the inner model returned {F.dtype}, the contract says {dtype}")
        return c_skip * x + c_out * F.to(torch.float32)
'''


@pytest.fixture
def edm_clone(tmp_path, monkeypatch):
    """A folder shaped like a clone of NVlabs/edm, and a pickle whose network needs its torch_utils."""
    root = tmp_path / "edm"
    (root / "torch_utils").mkdir(parents=True)
    (root / "dnnlib").mkdir()
    (root / "torch_utils" / "__init__.py").write_text("")
    (root / "dnnlib" / "__init__.py").write_text("")
    (root / "torch_utils" / "tiny_edm.py").write_text(textwrap.dedent(TINY_EDM))
    sys.path.insert(0, str(root))
    try:
        from torch_utils.tiny_edm import TinyPrecond
        torch.manual_seed(0)
        net = TinyPrecond()
        path = tmp_path / "edm-tiny.pkl"
        with open(path, "wb") as f:
            pickle.dump({"ema": net, "augment_pipe": None}, f)
        from torch_utils.tiny_edm import EDMPrecond
        contract = EDMPrecond()
        with torch.no_grad():
            contract.model.conv_out.weight.mul_(4.0)          # an output well away from zero
        with open(tmp_path / "edm-contract.pkl", "wb") as f:
            pickle.dump({"ema": contract}, f)
    finally:
        sys.path.remove(str(root))
        for m in [m for m in sys.modules if m.split(".")[0] in ("torch_utils", "dnnlib")]:
            del sys.modules[m]
    yield root, path, net
    if str(root) in sys.path:
        sys.path.remove(str(root))
    for m in [m for m in sys.modules if m.split(".")[0] in ("torch_utils", "dnnlib")]:
        del sys.modules[m]


def test_edm_pickle_needs_trust_and_the_edm_code(edm_clone, tmp_path, monkeypatch):
    root, path, ref = edm_clone
    monkeypatch.delenv("EMD_EDM_ROOT", raising=False)
    with pytest.raises(A.AdapterError, match="trust_pickle=True"):
        A.load_edm_pickle(path)
    with pytest.raises(A.AdapterError, match="git clone https://github.com/NVlabs/edm"):
        A.load_edm_pickle(path, trust_pickle=True)
    with pytest.raises(A.AdapterError, match="not a clone of NVlabs/edm"):
        A.load_edm_pickle(path, trust_pickle=True, edm_root=tmp_path)
    net = A.load_edm_pickle(path, trust_pickle=True, edm_root=root)
    assert not any(p.requires_grad for p in net.parameters())

    # EDM: alpha = 1, sigma = exp(-lam / 2); integer labels become one-hot rows
    teacher = A.EDMTeacher(net)
    assert teacher.schedule.kind == "edm" and teacher.shape == (3, 8, 8) and teacher.label_dim == 5
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 8, 8, generator=g)
    lam = torch.tensor([-8.0, -2.0, 1.0, 6.0])
    y = torch.tensor([0, 1, 4, 2])
    want = ref(x, torch.exp(-lam / 2), torch.nn.functional.one_hot(y, 5).float())
    torch.testing.assert_close(teacher.denoise(x, lam, y), want)
    torch.testing.assert_close(teacher.eps(x, lam, y), (x - want) / torch.exp(-lam / 2)[:, None, None, None])
    out, nfe = sample_ode(teacher, 2, n_steps=3, shape=teacher.shape, cond=torch.tensor([1, 3]), generator=g)
    assert out.shape == (2, 3, 8, 8) and nfe == 5 and torch.isfinite(out).all()


def test_edm_generator_reads_the_teacher_at_lam_star():
    torch.manual_seed(0)
    teacher = A.EDMTeacher(A.edm_unet("tiny", num_classes=4).eval().requires_grad_(False))
    gen = TeacherInitGenerator(A.network_copy(teacher), -4.0, copy_weights=False)
    z = torch.randn(3, 3, 8, 8)
    y = torch.tensor([0, 1, 3])
    # EDM: g(z) = D(sigma* z, lam*), sigma* = exp(-lam*/2) = e^2
    want = teacher.denoise(math.exp(2.0) * z, torch.full((3,), -4.0), y)
    torch.testing.assert_close(gen(z, y), want)
    assert all(p.requires_grad for p in gen.parameters())
    assert not any(p.requires_grad for p in teacher.parameters())


class _TinyEpsNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 6, 3, padding=1)     # eps and ADM's variance channels
        self.emb = torch.nn.Embedding(10, 6)

    def forward(self, x, t, y=None):
        return self.conv(x) * (1 + t[:, None, None, None] / 1000) + self.emb(y)[:, :, None, None]


def test_discrete_vp_timesteps_and_predictions():
    ac = A.linear_alphas_cumprod(1000)
    teacher = A.DiscreteVPTeacher(_TinyEpsNet(), ac, (3, 8, 8), num_classes=10, eps_channels=3)
    lam_t = torch.log(ac / (1 - ac)).float()
    t = torch.tensor([0, 1, 17, 500, 998, 999])
    torch.testing.assert_close(teacher.t_of_lam(lam_t[t]), t.float(), atol=2e-3, rtol=0)
    # VP: alpha^2 = sigmoid(lam) reproduces alpha_bar_t
    a, _ = teacher.schedule.alpha_sigma(lam_t[t])
    torch.testing.assert_close(a**2, ac[t].float())
    x = torch.randn(2, 3, 8, 8)
    lam, y = torch.tensor([-3.0, 2.0]), torch.tensor([1, 7])
    eps = teacher.net(x, teacher.t_of_lam(lam), y)[:, :3]
    torch.testing.assert_close(teacher.eps(x, lam, y), eps)
    a, s = teacher.schedule.alpha_sigma(lam)
    torch.testing.assert_close(teacher.denoise(x, lam, y), (x - s[:, None, None, None] * eps) / a[:, None, None, None])
    # v-prediction: v = alpha eps - sigma x0 gives back eps
    x0, e = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    A4, S4 = a[:, None, None, None], s[:, None, None, None]
    v_teacher = A.DiscreteVPTeacher(lambda xt, t, c: A4 * e - S4 * x0, ac, (3, 8, 8), predicts="v")
    torch.testing.assert_close(v_teacher.eps(A4 * x0 + S4 * e, lam), e, atol=1e-5, rtol=1e-5)


def test_adm_loads_weights_with_the_guided_diffusion_code(tmp_path):
    with pytest.raises(A.AdapterError, match="git clone https://github.com/openai/guided-diffusion"):
        A.load_adm(tmp_path / "x.pt", code_root=None)
    root = tmp_path / "guided-diffusion"
    (root / "guided_diffusion").mkdir(parents=True)
    (root / "guided_diffusion" / "__init__.py").write_text("")
    (root / "guided_diffusion" / "script_util.py").write_text(textwrap.dedent('''
        import torch

        class Net(torch.nn.Module):
            def __init__(self, image_size):
                super().__init__()
                self.conv = torch.nn.Conv2d(3, 6, 3, padding=1)
                self.emb = torch.nn.Embedding(1000, 6)

            def forward(self, x, timesteps, y=None):
                return self.conv(x) + self.emb(y)[:, :, None, None] + timesteps[:, None, None, None] / 1000

        def create_model(image_size, **kw):
            return Net(image_size)
    '''))
    try:
        torch.manual_seed(3)
        sys.path.insert(0, str(root))
        from guided_diffusion.script_util import create_model
        ref = create_model(16)
        torch.save(ref.state_dict(), tmp_path / "adm.pt")
        teacher = A.load_adm(tmp_path / "adm.pt", code_root=root, flags=dict(A.ADM128_FLAGS, image_size=16))
    finally:
        sys.path.remove(str(root)) if str(root) in sys.path else None
        sys.modules.pop("guided_diffusion.script_util", None)
        sys.modules.pop("guided_diffusion", None)
    assert teacher.shape == (3, 16, 16) and teacher.schedule.kind == "vp"
    x, lam, y = torch.randn(2, 3, 16, 16), torch.tensor([-1.0, 4.0]), torch.tensor([3, 999])
    torch.testing.assert_close(teacher.eps(x, lam, y), ref(x, teacher.t_of_lam(lam), y)[:, :3])


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    folder = A.tiny_sd_folder(tmp_path_factory.mktemp("sd"))
    return A.load_sd(folder, guidance_scale=3.0)


def test_stable_diffusion_from_a_folder_with_guidance_on_the_teacher_only(sd, tmp_path):
    assert sd.shape == (4, 8, 8) and sd.schedule.kind == "vp" and sd.predicts == "eps"
    # SD's scaled-linear schedule: alpha_bar from 0.99915 down to about 0.0047
    assert -5.5 < sd.schedule.lam_min < -5.2 and 7.0 < sd.schedule.lam_max < 7.2
    c = sd.encode_prompts(["a red cube", "two cats"])
    u = sd.encode_prompts(["", ""])
    assert c.shape == (2, 16, 32)
    x, lam = torch.randn(2, 4, 8, 8), torch.tensor([-2.0, 3.0])
    t = sd.t_of_lam(lam)
    e_c = sd.net(x, t, encoder_hidden_states=c).sample
    e_u = sd.net(x, t, encoder_hidden_states=u).sample
    torch.testing.assert_close(sd.eps(x, lam, c), e_u + 3.0 * (e_c - e_u), atol=1e-5, rtol=1e-4)
    # the student score and the generator start from the teacher's UNet without guidance
    student = A.network_copy(sd, guidance_scale=1.0)
    torch.testing.assert_close(student.eps(x, lam, c), e_c, atol=1e-5, rtol=1e-4)
    assert student.net is not sd.net and student.parts is sd.parts
    gen = TeacherInitGenerator(A.network_copy(sd, guidance_scale=1.0), -5.0, copy_weights=False)
    z = torch.randn(2, 4, 8, 8)
    torch.testing.assert_close(gen(z, c), student.denoise(z, torch.full((2,), -5.0), c), atol=1e-5, rtol=1e-4)
    img = sd.decode(gen(z, c))
    assert img.shape == (2, 3, 16, 16) and 0 <= float(img.min()) and float(img.max()) <= 1
    # one EMD step's losses run through it, with the text as cond
    lam_b = torch.tensor([-1.0, 2.0])
    loss_s = student_loss(student, gen, sd.schedule, z, torch.randn_like(z), lam_b, c)
    loss_g, diag = emd_generator_loss(gen, sd, student, z, torch.randn_like(z), lam_b, LangevinConfig(K=2), cond=c,
                                      rng=torch.Generator().manual_seed(0))
    loss_g.backward()
    assert math.isfinite(loss_s.item()) and math.isfinite(loss_g.item())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in gen.parameters())
    assert all(p.grad is None for p in sd.parameters())


def test_stable_diffusion_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(A.AdapterError, match="cannot load Stable Diffusion"):
        A.load_sd(tmp_path / "nothing-here")


def test_released_edm_contract_runs_under_bf16_autocast_and_trains(edm_clone, tmp_path, capsys):
    """A network with the released EDM code's dtype contract (``use_fp16=True``; its forward rejects a
    bf16 inner output) gives the same denoiser through the adapter in float32 as its own forward, works
    under CPU bf16 autocast, and trains through the Trainer at precision=bf16 and fp32; the trainable
    copies have ``use_fp16`` off. Checked once against NVlabs/edm at commit
    008a4e5316c8e3bfe61a62f874bddba254295afb (``EDMPrecond`` around ``DhariwalUNet``, use_fp16=True)."""
    from emd_lib.commands.train import main
    from emd_lib.scale.train import Trainer, load_config

    root, _, _ = edm_clone
    path = tmp_path / "edm-contract.pkl"
    net = A.load_edm_pickle(path, trust_pickle=True, edm_root=root)
    assert net.use_fp16
    teacher = A.EDMTeacher(net)
    g = torch.Generator().manual_seed(0)
    x, lam, y = torch.randn(4, 3, 8, 8, generator=g), torch.tensor([-6.0, -1.0, 2.0, 7.0]), torch.tensor([0, 4, 2, 1])
    onehot = torch.nn.functional.one_hot(y, 5).float()
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(TypeError, match="bfloat16"):
        net(x, torch.exp(-lam / 2), onehot)                     # the contract bites under autocast
    d32 = teacher.denoise(x, lam, y)
    torch.testing.assert_close(d32, net(x, torch.exp(-lam / 2), onehot))   # same as its own forward in fp32
    torch.testing.assert_close(teacher.denoise(x, lam), net(x, torch.exp(-lam / 2)))   # no class: zero vector
    with torch.autocast("cpu", dtype=torch.bfloat16):
        d16 = teacher.denoise(x, lam, y)
    assert d16.dtype == torch.float32
    assert 0 < float((d16 - d32).norm() / d32.norm()) < 0.03

    common = ["teacher.kind=edm", f"teacher.path={path}", f"teacher.code_root={root}", "teacher.trust_pickle=true",
              "batch=2", "steps=2", "langevin.K=1", "device=cpu", "progress=false", "tensorboard=false", "ckpt_every=1"]
    for prec in ("bf16", "fp32"):
        tr = Trainer(load_config("imagenet64", common + [f"precision={prec}", f"out={tmp_path / prec}"]), quiet=True)
        assert tr.amp == (prec == "bf16")
        hist = tr.run()
        assert len(hist) == 2 and all(math.isfinite(h["loss_g"]) and math.isfinite(h["grad_norm"]) for h in hist)
        copies = [tr.prob.generator.copy.net.precond, tr.prob.student.net.precond]
        assert all(not c.use_fp16 for c in copies) and tr.prob.teacher.net.precond.use_fp16
        assert all(p.dtype == torch.float32 for c in copies for p in c.parameters())
    # the command line, as a user runs it
    rc = main(["--config", "imagenet64", *common, "precision=bf16", f"out={tmp_path / 'cli'}"])
    assert rc == 0, capsys.readouterr().err


def _rel(a, b):
    return float((a - b).norm() / b.norm())


#: bf16 keeps 8 significant bits (relative rounding 2^-9 to 2^-8); through the tiny networks' few layers
#: the rms error of one evaluation stays below this (measured: 0.02% to 1.3% for EDM and ADM, 1.5% for
#: SD's UNet without guidance)
BF16_RTOL = 0.03


@pytest.mark.parametrize("kind", ["edm", "adm", "sd"])
def test_bf16_and_fp32_agree_within_the_stated_tolerance(kind):
    g = torch.Generator().manual_seed(7)
    if kind == "edm":
        teacher, shape = A.EDMTeacher(A.perturb_weights(A.edm_unet("tiny", num_classes=4))), (4, 3, 8, 8)
        cond, lams = torch.tensor([0, 1, 2, 3]), (-6.0, 0.0, 4.0)
    elif kind == "adm":
        teacher = A.DiscreteVPTeacher(A.perturb_weights(A.adm_unet("tiny", num_classes=4)), A.linear_alphas_cumprod(1000),
                                      (3, 8, 8), num_classes=4, eps_channels=3)
        shape, cond, lams = (4, 3, 8, 8), torch.tensor([0, 1, 2, 3]), (-6.0, 0.0, 4.0)
    else:
        teacher = A.random_sd("tiny", guidance_scale=1.0)
        A.perturb_weights(teacher.net)
        shape, cond, lams = (4, 4, 8, 8), teacher.encode_prompts(["a", "b c", "d", ""]), (-5.0, 0.0, 4.0)
    for lv in lams:
        lam = torch.full((shape[0],), lv)
        alpha, sigma = teacher.schedule.alpha_sigma(lam)
        x = 0.5 * alpha[0] * torch.randn(shape, generator=g) + sigma[0] * torch.randn(shape, generator=g)
        e32, d32 = teacher.eps(x, lam, cond), teacher.denoise(x, lam, cond)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            e16, d16 = teacher.eps(x, lam, cond), teacher.denoise(x, lam, cond)
        assert e16.dtype == d16.dtype == torch.float32
        assert 0 < _rel(e16, e32) < BF16_RTOL, (kind, lv, _rel(e16, e32))
        if kind == "edm":
            assert _rel(d16, d32) < BF16_RTOL
        else:
            # VP: D = (x_t - sigma eps) / alpha in float32, so D's error is eps's times sigma / alpha exactly
            # (20x at lam = -6): the bf16 error of the network, not of the arithmetic
            ratio = (sigma / alpha)[0]
            torch.testing.assert_close(d16 - d32, -ratio * (e16 - e32), atol=1e-5 * float(ratio), rtol=1e-4)


def test_guidance_is_combined_in_float32_under_autocast():
    sd = A.random_sd("tiny", guidance_scale=3.0)
    A.perturb_weights(sd.net)
    c = sd.encode_prompts(["a red cube", "two cats"])
    x, lam = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(8)), torch.tensor([-2.0, 3.0])
    t = sd.t_of_lam(lam)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        guided = sd.eps(x, lam, c)
        halves = sd.net(torch.cat([x, x]), torch.cat([t, t]), encoder_hidden_states=torch.cat([sd.uncond(c), c])).sample
    assert halves.dtype == torch.bfloat16 and guided.dtype == torch.float32
    e_u, e_c = halves.float().chunk(2)
    torch.testing.assert_close(guided, e_u + 3.0 * (e_c - e_u), atol=1e-6, rtol=1e-6)


def test_the_e_step_and_losses_stay_float32_under_bf16_autocast():
    teacher = A.EDMTeacher(A.perturb_weights(A.edm_unet("tiny", num_classes=4)))
    gen = TeacherInitGenerator(A.network_copy(teacher), -4.0, copy_weights=False)
    student = A.network_copy(teacher)
    g = torch.Generator().manual_seed(9)
    z, eps = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)
    lam, y = torch.tensor([-2.0, 1.0]), torch.tensor([1, 3])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert gen(z, y).dtype == torch.float32
        loss_s = student_loss(student, gen, teacher.schedule, z, eps, lam, y)
        loss_g, diag = emd_generator_loss(gen, teacher, student, z, eps, lam, LangevinConfig(K=2, move_z=True),
                                          cond=y, rng=torch.Generator().manual_seed(0))
    assert loss_s.dtype == loss_g.dtype == torch.float32
    loss_g.backward()
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in gen.parameters())
    assert all(math.isfinite(v) for v in diag.values() if isinstance(v, float))


def test_trainable_copies_are_float32_whatever_the_teacher_was_loaded_in():
    """A teacher loaded in half precision (a diffusers UNet in float16, a released EDM pickle with
    ``use_fp16``) gives float32 trainable copies with ``use_fp16`` off; the teacher is left as it was."""
    sd = A.random_sd("tiny")
    sd.net.half()
    student = A.network_copy(sd, guidance_scale=1.0)
    assert all(p.dtype == torch.float32 for p in student.net.parameters())
    assert all(p.dtype == torch.float16 for p in sd.net.parameters())
    net = A.edm_unet("tiny", num_classes=4).eval().requires_grad_(False)
    net.use_fp16 = True
    gen = TeacherInitGenerator(A.network_copy(A.EDMTeacher(net)), -4.0, copy_weights=False)
    assert net.use_fp16 and not gen.copy.net.precond.use_fp16
    assert all(p.requires_grad and p.dtype == torch.float32 for p in gen.parameters())
