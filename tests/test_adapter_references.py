"""The scale adapters against references that do not share their code.

Each adapter is fed a stand-in network that returns the *exact* answer for Gaussian data
``N(mu, diag(s^2))`` in that adapter's own conventions (EDM: a denoiser in sigma with alpha = 1;
ADM: eps at a timestep of guided-diffusion's schedule; Stable Diffusion: eps at a timestep of
diffusers' scheduler), and the adapter's denoiser, eps and score are compared with
:class:`~emd_lib.teachers.GaussianMixture`'s closed forms. The schedules are computed here from
their definitions (NumPy, float64), the lam-to-timestep map is compared with ``np.interp``, and
Stable Diffusion's noising with diffusers' own ``DDPMScheduler.add_noise``.

The conventions were read beside the reference code: NVlabs/edm at commit
008a4e5316c8e3bfe61a62f874bddba254295afb (``training/networks.py``: ``EDMPrecond``) and
openai/guided-diffusion at commit 22e0df8183507e13a7813f8d38d51b072ca1e67c
(``gaussian_diffusion.py``: ``get_named_beta_schedule``; ``script_util.py``: ``create_model``).
Nothing here needs that code; nothing downloads.
"""
import math
import sys
import textwrap
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from emd_lib.scale import adapters as A
from emd_lib.schedules import EDM, Schedule
from emd_lib.teachers import GaussianMixture

SHAPE = (3, 4, 4)
D = math.prod(SHAPE)
GEN = torch.Generator().manual_seed(20)
MU = torch.randn(D, generator=GEN, dtype=torch.float64)                 # the data's mean (d,)
S = 0.3 + torch.rand(D, generator=GEN, dtype=torch.float64)             # and per-coordinate std (d,)
LABEL_SHIFT = torch.randn(5, D, generator=GEN, dtype=torch.float64)     # class y moves the mean by row y


def posterior_mean(x_t, alpha, sigma, mu):
    """``E[x | x_t]`` for ``x ~ N(mu, diag(S^2))``, ``x_t = alpha x + sigma eps``; x_t (B, d), alpha and sigma (B, 1)."""
    k = alpha * S**2 / (alpha**2 * S**2 + sigma**2)
    return mu + k * (x_t - alpha * mu)


def mixture(schedule, mu=MU):
    return GaussianMixture([1.0], mu[None], stds=S[None], schedule=schedule, dtype=torch.float64)


def assert_matches_mixture(teacher, ref, x_t, lam, cond=None, atol=2e-4):
    """Denoiser, eps and score of ``teacher`` against the exact mixture ``ref`` (flattened images)."""
    B = x_t.shape[0]
    for name in ("denoise", "eps", "score"):
        got = getattr(teacher, name)(x_t.float().reshape(B, *SHAPE), lam.float(), cond).double().reshape(B, D)
        want = getattr(ref, name)(x_t, lam)
        scale = float(want.abs().max())
        torch.testing.assert_close(got / scale, want / scale, atol=atol, rtol=0, msg=lambda m: f"{name}: {m}")


# ---- EDM: a denoiser in sigma, alpha = 1 ------------------------------------------------------------

class GaussEDMInner(nn.Module):
    """EDM's inner model F for Gaussian data: reads sigma and x back from ``c_noise = log(sigma) / 4`` and
    ``c_in x``, and returns ``F = (D(x; sigma) - c_skip x) / c_out`` with D the exact denoiser (Karras et
    al. 2022, Table 1). The class label vector moves the mean (the zero vector: no move)."""

    def __init__(self, sigma_data=0.5):
        super().__init__()
        self.sigma_data = sigma_data

    def forward(self, x_in, c_noise, class_labels=None):
        sd = self.sigma_data
        sigma = torch.exp(4 * c_noise.double())[:, None]                    # (B, 1)
        x = x_in.double().reshape(len(x_in), D) * torch.sqrt(sigma**2 + sd**2)
        mu = MU + (0 if class_labels is None else class_labels.double() @ LABEL_SHIFT)
        den = posterior_mean(x, 1.0, sigma, mu)
        c_skip, c_out = sd**2 / (sigma**2 + sd**2), sigma * sd / torch.sqrt(sigma**2 + sd**2)
        return ((den - c_skip * x) / c_out).to(x_in.dtype).reshape(x_in.shape)


class EDMPrecond(nn.Module):
    """Shaped like NVlabs' ``EDMPrecond`` (attributes and ``.model``); the adapter computes the
    preconditioning itself, so only ``.model`` is called."""

    def __init__(self, label_dim=5):
        super().__init__()
        self.img_channels, self.img_resolution, self.label_dim = SHAPE[0], SHAPE[1], label_dim
        self.sigma_min, self.sigma_max, self.sigma_data = 0.0, float("inf"), 0.5
        self.use_fp16 = True
        self.model = GaussEDMInner()

    def forward(self, *a, **k):
        raise AssertionError("the adapter calls the inner model, not EDMPrecond.forward")


class GaussEDMDenoiser(nn.Module):
    """A plain EDM denoiser ``D(x; sigma)`` (no ``.model``): the adapter calls it as it is."""

    img_channels, img_resolution, label_dim, sigma_min, sigma_max = SHAPE[0], SHAPE[1], 0, 0.002, 80.0

    def forward(self, x, sigma, class_labels=None):
        den = posterior_mean(x.double().reshape(len(x), D), 1.0, sigma.double()[:, None], MU)
        return den.reshape(x.shape).to(x.dtype)


LAMS = torch.tensor([-8.5, -6.0, -2.0, 0.0, 3.0, 8.0], dtype=torch.float64)


@pytest.mark.parametrize("net", [EDMPrecond, GaussEDMDenoiser])
def test_edm_adapter_is_exact_on_gaussian_data(net):
    teacher = A.EDMTeacher(net())
    assert teacher.schedule.kind == "edm"
    g = torch.Generator().manual_seed(1)
    lam = LAMS
    x0 = MU + S * torch.randn(len(lam), D, generator=g, dtype=torch.float64)
    # EDM: alpha = 1, sigma = exp(-lam / 2)
    x_t = x0 + torch.exp(-lam / 2)[:, None] * torch.randn(len(lam), D, generator=g, dtype=torch.float64)
    assert_matches_mixture(teacher, mixture(EDM), x_t, lam)


def test_edm_class_labels_are_one_hot_rows_and_none_is_the_zero_vector():
    teacher = A.EDMTeacher(EDMPrecond())
    g = torch.Generator().manual_seed(2)
    lam = torch.tensor([-3.0, 1.0, 4.0], dtype=torch.float64)
    x_t = MU + torch.randn(3, D, generator=g, dtype=torch.float64) * 2
    y = torch.tensor([4, 0, 2])
    for i in range(3):                                 # integer labels: the mean moves by row y
        assert_matches_mixture(teacher, mixture(EDM, MU + LABEL_SHIFT[y[i]]), x_t[i:i + 1], lam[i:i + 1],
                               y[i:i + 1])
    # no class: the zero label vector, so the mean does not move (class 0 would move it)
    assert_matches_mixture(teacher, mixture(EDM), x_t, lam, None)


# ---- ADM (guided-diffusion): eps at a timestep of a linear or cosine schedule -----------------------

def numpy_alphas_cumprod(kind, T=1000):
    """guided-diffusion's named schedules from their definitions (Ho et al. 2020; Nichol & Dhariwal 2021)."""
    if kind == "linear":
        betas = np.linspace(1e-4 * 1000 / T, 0.02 * 1000 / T, T, dtype=np.float64)
    else:
        f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
        betas = np.array([min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)])
    return np.cumprod(1 - betas)


class GaussEps(nn.Module):
    """``net(x_t, t, y) -> (eps, variance channels)`` for Gaussian data at a fractional timestep ``t``:
    its log-SNR is read from the schedule's table by ``np.interp`` (the piecewise-linear curve through
    ``(t, lam_t)``)."""

    def __init__(self, alphas_cumprod, learn_sigma=True):
        super().__init__()
        self.lam_t = np.log(alphas_cumprod / (1 - alphas_cumprod))              # falls with t
        self.learn_sigma = learn_sigma
        self.unused = nn.Parameter(torch.zeros(()))                            # a state dict to load

    def forward(self, x_t, t, y=None, **kw):
        lam = torch.as_tensor(np.interp(t.double().numpy(), np.arange(len(self.lam_t)), self.lam_t))[:, None]
        alpha, sigma = torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()   # VP: alpha^2 = sigmoid(lam)
        xt = x_t.double().reshape(len(x_t), -1)
        eps = (xt - alpha * posterior_mean(xt, alpha, sigma, MU)) / sigma
        eps = eps.reshape(x_t.shape).to(x_t.dtype)
        return torch.cat([eps, torch.full_like(eps, 7.0)], 1) if self.learn_sigma else eps


def vp_batch(lam, g):
    a, s = torch.sigmoid(lam).sqrt()[:, None], torch.sigmoid(-lam).sqrt()[:, None]
    x0 = MU + S * torch.randn(len(lam), D, generator=g, dtype=torch.float64)
    return a * x0 + s * torch.randn(len(lam), D, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_adm_schedules_and_timesteps_against_independent_references(kind):
    ac = numpy_alphas_cumprod(kind)
    torch.testing.assert_close(A.adm_alphas_cumprod(kind, 1000), torch.as_tensor(ac), atol=1e-12, rtol=1e-10)
    teacher = A.DiscreteVPTeacher(GaussEps(ac), torch.as_tensor(ac), SHAPE, eps_channels=3)
    lam_t = np.log(ac / (1 - ac))
    assert teacher.schedule.lam_min == pytest.approx(lam_t[-1], abs=1e-5)
    assert teacher.schedule.lam_max == pytest.approx(lam_t[0], abs=1e-5)
    # fractional timesteps: the inverse of the piecewise-linear curve, as np.interp computes it
    g = torch.Generator().manual_seed(3)
    lam = lam_t[-1] + (lam_t[0] - lam_t[-1]) * torch.rand(200, generator=g, dtype=torch.float64)
    want_t = np.interp(lam.numpy(), lam_t[::-1], np.arange(1000)[::-1].astype(np.float64))
    torch.testing.assert_close(teacher.t_of_lam(lam.float()).double(), torch.as_tensor(want_t), atol=2e-3, rtol=0)
    # denoiser, eps and score of Gaussian data, inside the trained range
    lam = torch.tensor([lam_t[-1] + 0.01, -6.0, -2.0, 0.0, 3.0, 8.0, lam_t[0] - 0.01], dtype=torch.float64)
    assert_matches_mixture(teacher, mixture(Schedule("vp", -20.0, 20.0)), vp_batch(lam, g), lam, atol=5e-4)


def test_a_lam_outside_the_trained_range_is_one_clear_error():
    ac = numpy_alphas_cumprod("linear")
    teacher = A.DiscreteVPTeacher(GaussEps(ac), torch.as_tensor(ac), SHAPE, eps_channels=3)
    x = torch.zeros(2, *SHAPE)
    lo, hi = teacher.schedule.lam_min, teacher.schedule.lam_max
    for bad in (lo - 0.5, hi + 0.5, float("nan")):
        with pytest.raises(A.LamRangeError) as e:
            teacher.denoise(x, torch.tensor([0.0, bad]))
        msg = str(e.value)
        assert "\n" not in msg and "outside the range this teacher was trained on" in msg and "lam_min" in msg
    teacher.denoise(x, torch.tensor([lo, hi]))                     # the ends themselves are fine


GD_STANDIN = '''
    """A stand-in for guided-diffusion's script_util: create_model builds the Gaussian eps network of
    the schedule the test sets in ALPHAS_CUMPROD (as a network trained on that schedule would be)."""
    ALPHAS_CUMPROD = None
    CALLS = []

    def create_model(image_size, learn_sigma=False, use_fp16=False, **kw):
        CALLS.append(dict(image_size=image_size, learn_sigma=learn_sigma, use_fp16=use_fp16, **kw))
        return NET(ALPHAS_CUMPROD, learn_sigma)
'''


@pytest.fixture
def gd_clone(tmp_path):
    root = tmp_path / "guided-diffusion"
    (root / "guided_diffusion").mkdir(parents=True)
    (root / "guided_diffusion" / "__init__.py").write_text("")
    (root / "guided_diffusion" / "script_util.py").write_text(textwrap.dedent(GD_STANDIN))
    yield root
    if str(root) in sys.path:
        sys.path.remove(str(root))
    for m in [m for m in sys.modules if m.split(".")[0] == "guided_diffusion"]:
        del sys.modules[m]


@pytest.mark.parametrize("kind, flags", [("cosine", A.ADM64_FLAGS), ("linear", A.ADM128_FLAGS)])
def test_load_adm_takes_the_schedule_from_its_flags(gd_clone, tmp_path, kind, flags):
    ac = numpy_alphas_cumprod(kind)
    torch.save(GaussEps(ac).state_dict(), tmp_path / "adm.pt")
    sys.path.insert(0, str(gd_clone))
    import guided_diffusion.script_util as su
    su.NET, su.ALPHAS_CUMPROD = GaussEps, ac
    f = dict(flags, image_size=SHAPE[1])
    teacher = A.load_adm(tmp_path / "adm.pt", code_root=gd_clone, flags=f)
    call = su.CALLS[-1]
    assert "noise_schedule" not in call and "diffusion_steps" not in call and call["use_fp16"] is False
    g = torch.Generator().manual_seed(4)
    lam = torch.tensor([-6.0, -1.0, 2.0, 6.0], dtype=torch.float64)
    assert_matches_mixture(teacher, mixture(Schedule("vp", -20.0, 20.0)), vp_batch(lam, g), lam, atol=5e-4)
    # the other schedule's flags read the same network at the wrong timesteps: far from exact
    other = dict(f, noise_schedule="linear" if kind == "cosine" else "cosine")
    wrong = A.load_adm(tmp_path / "adm.pt", code_root=gd_clone, flags=other)
    x = vp_batch(lam, g)
    err = (wrong.denoise(x.float().reshape(4, *SHAPE), lam.float()).double().reshape(4, D)
           - mixture(Schedule("vp", -20.0, 20.0)).denoise(x, lam)).abs().max()
    assert err > 0.05
    # flags without a schedule are refused rather than read as linear
    with pytest.raises(A.AdapterError, match="noise_schedule"):
        A.load_adm(tmp_path / "adm.pt", code_root=gd_clone, flags={k: v for k, v in f.items() if k != "noise_schedule"})


# ---- Stable Diffusion (diffusers): eps in latent space, guidance ----------------------------------

class GaussSDUNet(nn.Module):
    """``unet(x, t, encoder_hidden_states=e).sample``: the exact eps of Gaussian data whose mean moves with
    the text (the embedding's mean over tokens, times a fixed map), at a timestep of diffusers' scheduler."""

    def __init__(self, alphas_cumprod, proj):
        super().__init__()
        self.lam_t = np.log(alphas_cumprod / (1 - alphas_cumprod))
        self.proj = proj

    def mean(self, emb):
        return MU + emb.double().mean(1) @ self.proj                     # (B, d)

    def forward(self, x_t, t, encoder_hidden_states):
        lam = torch.as_tensor(np.interp(t.double().numpy(), np.arange(len(self.lam_t)), self.lam_t))[:, None]
        alpha, sigma = torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()
        xt = x_t.double().reshape(len(x_t), -1)
        eps = (xt - alpha * posterior_mean(xt, alpha, sigma, self.mean(encoder_hidden_states))) / sigma
        return SimpleNamespace(sample=eps.reshape(x_t.shape).to(x_t.dtype))


def test_stable_diffusion_against_diffusers_scheduler_and_gaussian_data():
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                          num_train_timesteps=1000, prediction_type="epsilon")
    ac = sched.alphas_cumprod.double().numpy()
    g = torch.Generator().manual_seed(5)
    proj = torch.randn(8, D, generator=g, dtype=torch.float64)
    net = GaussSDUNet(ac, proj)
    u = torch.randn(1, 6, 8, generator=g)                                # the empty prompt's embedding
    w = 3.0
    sd = A.StableDiffusionTeacher(net, sched.alphas_cumprod, SHAPE, guidance_scale=w, uncond=u)
    # the trained range: SD v1.5's table runs from lam = 7.07 (t = 0) down to -5.36 (t = 999)
    assert sd.schedule.lam_max == pytest.approx(7.07, abs=0.01) and sd.schedule.lam_min == pytest.approx(-5.36, abs=0.01)
    # noising at an integer timestep is diffusers' add_noise
    t = torch.tensor([0, 10, 250, 500, 999])
    lam_t = torch.as_tensor(np.log(ac / (1 - ac)))[t]
    torch.testing.assert_close(sd.t_of_lam(lam_t.float()), t.float(), atol=2e-3, rtol=0)
    x0, noise = torch.randn(5, *SHAPE, generator=g), torch.randn(5, *SHAPE, generator=g)
    alpha, sigma = sd.schedule.alpha_sigma(lam_t.float())
    ours = alpha[:, None, None, None] * x0 + sigma[:, None, None, None] * noise
    torch.testing.assert_close(ours, sched.add_noise(x0, noise, t), atol=1e-5, rtol=1e-5)
    # guided eps of Gaussian data: eps is affine in the mean, so eps_u + w (eps_c - eps_u) is the eps of
    # the data with mean mu_u + w (mu_c - mu_u)
    c = torch.randn(4, 6, 8, generator=g)
    lam = torch.tensor([-5.0, -1.0, 2.0, 6.5], dtype=torch.float64)
    x_t = vp_batch(lam, g)
    mu_u, mu_c = net.mean(u)[0], net.mean(c)
    for i in range(4):
        ref = mixture(Schedule("vp", -20.0, 20.0), mu_u + w * (mu_c[i] - mu_u))
        assert_matches_mixture(sd, ref, x_t[i:i + 1], lam[i:i + 1], c[i:i + 1], atol=5e-4)
