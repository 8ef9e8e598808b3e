"""Teacher adapters on tiny stand-ins built in the test: an EDM pickle, an ADM checkpoint with a
stand-in of guided-diffusion's code, and a Stable Diffusion folder of tiny random diffusers and
transformers models. Nothing downloads."""
import math
import pickle
import sys
import textwrap

import pytest
import torch

from emd_lib import adapters as A
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
    gen = A.TeacherGenerator(teacher, lam_star=-4.0)
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
    gen = A.TeacherGenerator(sd, lam_star=-5.0, guidance_scale=1.0)
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
