"""Checks for chapter 8 (scaling up)."""
from __future__ import annotations

import math

import torch
from torch import nn

from . import ExerciseFailed, expect_close, register


# ---- 8.1 an EDM network behind the teacher interface -------------------------------------------------

class _TinyEDM(nn.Module):
    """EDM's call signature D(x, sigma, class_labels (B, label_dim)) on a small conv net."""

    def __init__(self, label_dim=4):
        super().__init__()
        self.img_resolution, self.img_channels, self.label_dim = 8, 3, label_dim
        self.conv = nn.Conv2d(4, 3, 3, padding=1)
        self.label = nn.Linear(label_dim, 3)

    def forward(self, x, sigma, class_labels=None):
        sigma = sigma.reshape(-1, 1, 1, 1)
        c_in, c_skip = 1 / (sigma**2 + 0.25).sqrt(), 0.25 / (sigma**2 + 0.25)
        c_out = sigma * 0.5 / (sigma**2 + 0.25).sqrt()
        h = torch.cat([c_in * x, (sigma.log() / 4).expand(-1, 1, 8, 8)], 1)
        return c_skip * x + c_out * (self.conv(h) + self.label(class_labels)[:, :, None, None])


def _onehot(labels, n):
    return nn.functional.one_hot(labels, n).float()


def _vp_ref(net, x_t, lam, labels):
    """The EDM network read by a VP caller: y = x_t / alpha, EDM's sigma = sigma / alpha = exp(-lam / 2)."""
    alpha = torch.sigmoid(lam).sqrt()[:, None, None, None]
    return net(x_t / alpha, torch.exp(-lam / 2), _onehot(labels, net.label_dim))


def _vp_unscaled(net, x_t, lam, labels):                    # EDM's own call: x_t fed as if alpha = 1
    return net(x_t, torch.exp(-lam / 2), _onehot(labels, net.label_dim))


def _vp_sigma(net, x_t, lam, labels):                       # VP's sigma, not sigma / alpha
    alpha = torch.sigmoid(lam).sqrt()[:, None, None, None]
    return net(x_t / alpha, torch.sigmoid(-lam).sqrt(), _onehot(labels, net.label_dim))


def _vp_rescaled_output(net, x_t, lam, labels):             # scales the clean estimate back by alpha
    alpha = torch.sigmoid(lam).sqrt()[:, None, None, None]
    return alpha * _vp_ref(net, x_t, lam, labels)


def _route_vp(net, x_t, lam, labels):
    from emd_lib.scale.adapters import EDMTeacher

    alpha = torch.sigmoid(lam).sqrt()[:, None, None, None]
    return EDMTeacher(net).denoise(x_t / alpha, lam, labels)


@register("8.1", title="an EDM network behind a VP caller: D(x_t / alpha; sigma / alpha, one-hot class)",
          wrong=[_vp_unscaled, _vp_sigma, _vp_rescaled_output], points=2, minutes=15, kind="derivation",
          route=_route_vp,
          forbid=["emd_lib.scale.adapters:EDMTeacher.denoise", "emd_lib.scale.adapters:EDMTeacher.class_labels"])
def _check_8_1(vp_denoise):
    from ..scale.adapters import EDMTeacher

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(81)
        net = _TinyEDM().eval()
    g = torch.Generator().manual_seed(810)
    x = torch.randn(5, 3, 8, 8, generator=g)
    lam = torch.tensor([-8.0, -3.0, 0.0, 2.5, 9.0])
    labels = torch.tensor([0, 3, 1, 2, 3])
    alpha, sigma = torch.sigmoid(lam).sqrt()[:, None, None, None], torch.sigmoid(-lam).sqrt()[:, None, None, None]
    x_t = alpha * x + sigma * torch.randn(x.shape, generator=g)                  # a VP noisy batch
    with torch.no_grad():
        want = _vp_ref(net, x_t, lam, labels)
        # the same network at the same noise level, through the library's EDM teacher in y = x_t / alpha
        torch.testing.assert_close(EDMTeacher(net).denoise(x_t / alpha, lam, labels), want)
        got = vp_denoise(net, x_t.clone(), lam.clone(), labels.clone())
    try:
        expect_close("the denoised batch", torch.as_tensor(got).detach(), want, 1e-5)
    except ExerciseFailed as e:
        raise ExerciseFailed(f"{e}. A VP x_t = alpha x + sigma eps is y = x_t / alpha = x + (sigma / alpha) eps in EDM's "
                             "coordinates (chapter 1): which input and which sigma does the EDM network want, and does "
                             "its output, an estimate of x, need any rescaling? Labels as one-hot rows of length "
                             "net.label_dim") from None


# ---- 8.2 classifier-free guidance on the teacher ------------------------------------------------------

class _Out:
    def __init__(self, sample):
        self.sample = sample


class _ToyCondUNet(nn.Module):
    """``unet(x, t, encoder_hidden_states=e).sample`` like diffusers' UNet2DConditionModel."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.txt = nn.Linear(8, 4)

    def forward(self, x, t, encoder_hidden_states):
        h = self.txt(encoder_hidden_states.mean(1))[:, :, None, None]
        return _Out(self.conv(x) * (1 + t[:, None, None, None] / 1000) + h * x.tanh())


def _cfg_plus_one(unet, x_t, t, text, empty, w):           # eps_c + w (eps_c - eps_u): another convention
    e_c = unet(x_t, t, encoder_hidden_states=text).sample
    e_u = unet(x_t, t, encoder_hidden_states=empty).sample
    return e_c + w * (e_c - e_u)


def _cfg_swapped(unet, x_t, t, text, empty, w):            # guides away from the text
    e_c = unet(x_t, t, encoder_hidden_states=text).sample
    e_u = unet(x_t, t, encoder_hidden_states=empty).sample
    return e_c + w * (e_u - e_c)


def _route_cfg(unet, x_t, t, text, empty, w):
    from emd_lib.scale.adapters import StableDiffusionTeacher, linear_alphas_cumprod

    teacher = StableDiffusionTeacher(unet, linear_alphas_cumprod(1000, 0.00085, 0.012, scaled=True), tuple(x_t.shape[1:]),
                                     guidance_scale=w, uncond=empty[:1])
    return teacher.call_net(x_t, t, text)


@register("8.2", title="classifier-free guidance of the teacher's eps", wrong=[_cfg_plus_one, _cfg_swapped],
          points=2, minutes=15, kind="tool", route=_route_cfg,
          forbid=["emd_lib.scale.adapters:StableDiffusionTeacher.call_net"])
def _check_8_2(guided_eps):
    from ..scale.adapters import StableDiffusionTeacher, linear_alphas_cumprod

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(82)
        unet = _ToyCondUNet().eval()
    g = torch.Generator().manual_seed(820)
    empty = torch.randn(1, 6, 8, generator=g)
    text = torch.randn(3, 6, 8, generator=g)
    x = torch.randn(3, 4, 8, 8, generator=g)
    lam = torch.tensor([-4.0, 0.5, 5.0])
    ac = linear_alphas_cumprod(1000, 0.00085, 0.012, scaled=True)
    for w in (1.0, 2.0, 7.5):
        teacher = StableDiffusionTeacher(unet, ac, (4, 8, 8), guidance_scale=w, uncond=empty)
        t = teacher.t_of_lam(lam)
        with torch.no_grad():
            got = guided_eps(unet, x.clone(), t, text.clone(), empty.expand(3, -1, -1).clone(), w)
            want = teacher.eps(x, lam, text)
        try:
            expect_close(f"eps with guidance scale {w:g}", torch.as_tensor(got).detach(), want, 1e-5)
        except ExerciseFailed as e:
            raise ExerciseFailed(f"{e}. Evaluate the network with the text and with the empty prompt; the guided eps "
                                 "is eps_empty + w (eps_text - eps_empty), so w = 1 is the plain conditional model") \
                from None


# ---- 8.3 what a guided teacher asks the student to learn -----------------------------------------------

def _tilt_ref(mu_c, v_c, mu_u, v_u, w):
    """p(x | c)^w p(x)^(1 - w) for 1D Gaussians: (mean, variance); its score is the guided score."""
    prec = w / v_c + (1 - w) / v_u
    return (w * mu_c / v_c + (1 - w) * mu_u / v_u) / prec, 1 / prec


def _tilt_linear(mu_c, v_c, mu_u, v_u, w):               # mixes the moments, not the scores
    return w * mu_c + (1 - w) * mu_u, w * v_c + (1 - w) * v_u


def _tilt_mean_unweighted(mu_c, v_c, mu_u, v_u, w):      # the mean without the precisions
    return w * mu_c + (1 - w) * mu_u, _tilt_ref(mu_c, v_c, mu_u, v_u, w)[1]


def _tilt_precision(mu_c, v_c, mu_u, v_u, w):            # returns the precision for the variance
    m, v = _tilt_ref(mu_c, v_c, mu_u, v_u, w)
    return m, 1 / v


def _route_tilt(mu_c, v_c, mu_u, v_u, w):
    """Read off the guided score of the library's exact teachers at an almost clean level: a line in x."""
    import torch as _t

    from emd_lib.teachers import GaussianMixture

    p_c = GaussianMixture([1.0], [[mu_c]], [math.sqrt(v_c)], dtype=_t.float64)
    p_u = GaussianMixture([1.0], [[mu_u]], [math.sqrt(v_u)], dtype=_t.float64)
    x, lam = _t.tensor([[0.0], [1.0]], dtype=_t.float64), _t.full((2,), 10.0, dtype=_t.float64)
    s = p_u.score(x, lam) + w * (p_c.score(x, lam) - p_u.score(x, lam))
    v = float(-1 / (s[1] - s[0]))
    return float(s[0]) * v, v


@register("8.3", title="the distribution a guided teacher asks the student to learn",
          wrong=[_tilt_linear, _tilt_mean_unweighted, _tilt_precision],
          points=2, minutes=20, kind="derivation", route=_route_tilt,
          forbid=[f"emd_lib.teachers:GaussianMixture.{m}" for m in ("score", "eps", "denoise", "log_prob")])
def _check_8_3(guided_target):
    for mu_c, v_c, mu_u, v_u, w in ((1.0, 0.5, 0.0, 2.0, 1.0), (1.0, 0.5, 0.0, 2.0, 3.0), (2.0, 1.0, -1.0, 4.0, 7.5),
                                    (0.5, 0.2, 0.3, 0.25, 2.0)):
        want_m, want_v = _tilt_ref(mu_c, v_c, mu_u, v_u, w)
        out = guided_target(mu_c, v_c, mu_u, v_u, w)
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            raise ExerciseFailed("return a pair (mean, variance)")
        m, v = float(out[0]), float(out[1])
        if not (math.isclose(m, want_m, rel_tol=1e-6, abs_tol=1e-9) and math.isclose(v, want_v, rel_tol=1e-6)):
            raise ExerciseFailed(f"for p(x | c) = N({mu_c:g}, {v_c:g}), p(x) = N({mu_u:g}, {v_u:g}) and w = {w:g} you gave "
                                 f"mean {m:.5g}, variance {v:.5g}. The guided score s_u + w (s_c - s_u) is the score of "
                                 "one Gaussian: add the two scores' slopes and intercepts (a score of N(m, v) is "
                                 "-(x - m) / v)")
