"""Stable Diffusion (diffusers): eps-prediction in the VAE's latent space, CLIP text, guidance on the teacher."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch

from .adm import DiscreteVPTeacher
from .base import AdapterError, _out_dtype, _quiet


# ============================================================================================
# Stable Diffusion (diffusers): eps-prediction in latent space, CLIP text, CFG on the teacher
# ============================================================================================

class StableDiffusionTeacher(DiscreteVPTeacher):
    """Stable Diffusion's UNet as a teacher on 4-channel latents; ``cond`` is the CLIP text
    embedding ``(B, L, D)`` from :meth:`encode_prompts`.

    Classifier-free guidance with weight ``guidance_scale`` (1 = none):
    ``eps = eps(x_t, empty) + w (eps(x_t, text) - eps(x_t, empty))``. The text encoder,
    tokenizer and VAE are kept beside the network (``self.parts``), not inside it, so the
    generator and student made from this teacher's UNet do not copy them.
    """

    def __init__(self, net, alphas_cumprod, shape, predicts="eps", guidance_scale: float = 1.0, parts=None,
                 uncond=None, num_classes: int = 0, eps_channels=None):
        super().__init__(net, alphas_cumprod, shape, predicts=predicts)
        self.guidance_scale = float(guidance_scale)
        self.parts = parts or SimpleNamespace(text_encoder=None, tokenizer=None, vae=None, scaling_factor=0.18215)
        self._uncond = uncond

    def _init_args(self):
        a = super()._init_args()
        a.update(guidance_scale=self.guidance_scale, parts=self.parts, uncond=self._uncond)
        return a

    def replace_net(self, net, guidance_scale: float | None = None):
        t = type(self)(net, **self._init_args())
        if guidance_scale is not None:
            t.guidance_scale = float(guidance_scale)
        return t

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str], device=None, chunk: int = 64) -> torch.Tensor:
        """CLIP text embeddings ``(B, L, D)`` of a list of prompts, in the encoder's own precision
        (autocast off, so the empty prompt and the prompts agree whether or not a bf16 step calls
        this) and ``chunk`` prompts at a time (the encoder's activations stay small)."""
        tok, enc = self.parts.tokenizer, self.parts.text_encoder
        if tok is None or enc is None:
            raise AdapterError("this Stable Diffusion teacher was built without its text encoder and tokenizer")
        dev = torch.device(device) if device is not None else next(enc.parameters()).device
        ids = tok(list(prompts), padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids.to(dev)
        with torch.autocast(dev.type, enabled=False):
            return torch.cat([enc(part)[0] for part in ids.split(chunk)])

    def uncond(self, like: torch.Tensor) -> torch.Tensor:
        if self._uncond is None:
            self._uncond = self.encode_prompts([""], device=like.device)
        return self._uncond.to(device=like.device, dtype=like.dtype).expand(like.shape[0], -1, -1)

    def call_net(self, x_t, t, cond):
        if cond is None:
            raise AdapterError("Stable Diffusion needs text: pass cond = teacher.encode_prompts(prompts)")
        w = self.guidance_scale
        if w == 1.0:
            return self.net(x_t, t, encoder_hidden_states=cond).sample
        # classifier-free guidance: eps_u + w (eps_c - eps_u), both halves in one batch
        out = self.net(torch.cat([x_t, x_t]), torch.cat([t, t]),
                       encoder_hidden_states=torch.cat([self.uncond(cond), cond])).sample
        e_u, e_c = out.to(_out_dtype(x_t)).chunk(2)               # the combination in float32
        return e_u + w * (e_c - e_u)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents to images in ``[0, 1]`` through the VAE, for viewing and evaluation."""
        vae = self.parts.vae
        if vae is None:
            raise AdapterError("this Stable Diffusion teacher was built without its VAE")
        img = vae.decode(latents.to(next(vae.parameters()).dtype) / self.parts.scaling_factor).sample
        return ((img.float() + 1) / 2).clamp(0, 1)


def load_sd(path_or_id: str = "stable-diffusion-v1-5/stable-diffusion-v1-5", *, guidance_scale: float = 1.75,
            dtype=torch.float32, device=None, local_files_only: bool | None = None) -> StableDiffusionTeacher:
    """Stable Diffusion (v1.5 layout: ``unet/ vae/ text_encoder/ tokenizer/ scheduler/``) from a local
    folder or a hub id. A hub id downloads only when ``local_files_only`` is False (default: False for
    a hub id, True for a folder)."""
    local = Path(path_or_id).expanduser().exists()
    if not local and str(path_or_id).startswith(("/", ".", "~")):
        raise AdapterError(f"cannot load Stable Diffusion from {path_or_id!r}: the folder does not exist; give a "
                           "local folder in the diffusers layout or a hub id such as stable-diffusion-v1-5/stable-diffusion-v1-5")
    if local_files_only is None:
        local_files_only = local
    kw = dict(local_files_only=local_files_only)
    src = str(Path(path_or_id).expanduser()) if local else path_or_id
    with _quiet():
        parts = _load_sd_parts(src, dtype, kw, path_or_id)
    unet, vae, text_encoder, tokenizer, sched = parts
    return _sd_from_parts(unet, vae, text_encoder, tokenizer, sched, guidance_scale, device)


def _load_sd_parts(src, dtype, kw, path_or_id):
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    try:
        unet = UNet2DConditionModel.from_pretrained(src, subfolder="unet", torch_dtype=dtype, **kw)
        vae = AutoencoderKL.from_pretrained(src, subfolder="vae", torch_dtype=dtype, **kw)
        text_encoder = CLIPTextModel.from_pretrained(src, subfolder="text_encoder", torch_dtype=dtype, **kw)
        tokenizer = CLIPTokenizer.from_pretrained(src, subfolder="tokenizer", **kw)
        sched = DDPMScheduler.from_pretrained(src, subfolder="scheduler", **kw)
    except (OSError, ValueError) as e:
        raise AdapterError(f"cannot load Stable Diffusion from {path_or_id!r} ({str(e).splitlines()[0]}); give a "
                           "local folder in the diffusers layout (unet/, vae/, text_encoder/, tokenizer/, "
                           "scheduler/) or a hub id with the network available") from None
    return unet, vae, text_encoder, tokenizer, sched


def _sd_from_parts(unet, vae, text_encoder, tokenizer, sched, guidance_scale, device):
    for m in (unet, vae, text_encoder):
        if m is None:
            continue
        m.eval().requires_grad_(False)
        if device is not None:
            m.to(device)
    pred = {"epsilon": "eps", "v_prediction": "v"}.get(sched.config.prediction_type)
    if pred is None:
        raise AdapterError(f"unsupported prediction type {sched.config.prediction_type!r}; use an eps- or "
                           "v-prediction model")
    c, s = unet.config.in_channels, unet.config.sample_size
    parts = SimpleNamespace(text_encoder=text_encoder, tokenizer=tokenizer, vae=vae,
                            scaling_factor=float(getattr(vae.config, "scaling_factor", 0.18215)) if vae is not None else 0.18215)
    return StableDiffusionTeacher(unet, sched.alphas_cumprod, (c, s, s), predicts=pred,
                                  guidance_scale=guidance_scale, parts=parts)


def sd_unet_config(size: str = "tiny") -> dict:
    """``UNet2DConditionModel`` settings: ``"sd15"`` is Stable Diffusion v1.5's UNet (about 860M
    parameters), ``"tiny"`` a test-sized one."""
    if size == "sd15":
        return dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                    block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
                    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
    if size == "tiny":
        return dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
                    cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8,
                    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    raise ValueError(f"unknown Stable Diffusion UNet size {size!r}; use 'tiny' or 'sd15'")


def _byte_level_tokenizer_files(folder: Path, max_length: int = 16):
    """A CLIP tokenizer whose vocabulary is the 256 byte symbols (no merges): no download needed."""
    import json

    # GPT-2's byte-to-symbol table (printable bytes map to themselves, the rest above 255)
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    syms = [chr(c) for c in cs]
    vocab = {s: i for i, s in enumerate(syms)}
    vocab.update({s + "</w>": 256 + i for i, s in enumerate(syms)})
    vocab.update({"<|startoftext|>": 512, "<|endoftext|>": 513})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": max_length,
                                                              "tokenizer_class": "CLIPTokenizer"}))
    (folder / "special_tokens_map.json").write_text(json.dumps({"bos_token": "<|startoftext|>",
                                                                "eos_token": "<|endoftext|>",
                                                                "unk_token": "<|endoftext|>",
                                                                "pad_token": "<|endoftext|>"}))


def _random_sd_parts(size: str = "tiny", seed: int = 0):
    """UNet, VAE (tiny only), CLIP text encoder, tokenizer and scheduler with random weights."""
    import tempfile

    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    ucfg = sd_unet_config(size)
    L = 77 if size == "sd15" else 16
    with torch.random.fork_rng(devices=[]), _quiet():
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**ucfg)
        vae = None
        if size == "tiny":
            vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                                down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                                layers_per_block=1, norm_num_groups=8, sample_size=16)
        width = ucfg["cross_attention_dim"]
        heads = 12 if size == "sd15" else 4
        tcfg = CLIPTextConfig(vocab_size=514, hidden_size=width, intermediate_size=4 * width,
                              num_hidden_layers=12 if size == "sd15" else 1, num_attention_heads=heads,
                              max_position_embeddings=L, bos_token_id=512, eos_token_id=513, pad_token_id=513)
        text_encoder = CLIPTextModel(tcfg)
        with tempfile.TemporaryDirectory() as d:
            _byte_level_tokenizer_files(Path(d), L)
            tokenizer = CLIPTokenizer.from_pretrained(d)
    sched = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                          prediction_type="epsilon")
    return unet, vae, text_encoder, tokenizer, sched


def random_sd(size: str = "tiny", guidance_scale: float = 1.75, seed: int = 0, device=None) -> StableDiffusionTeacher:
    """A Stable Diffusion teacher with random weights: ``"tiny"`` for tests (with a tiny VAE), ``"sd15"``
    with SD v1.5's UNet and a ViT-L-sized text encoder (no VAE) for the benchmark. Nothing downloads."""
    unet, vae, text_encoder, tokenizer, sched = _random_sd_parts(size, seed)
    return _sd_from_parts(unet, vae, text_encoder, tokenizer, sched, guidance_scale, device)


def tiny_sd_folder(folder, seed: int = 0) -> Path:
    """Write a Stable Diffusion folder in the diffusers layout (``unet/ vae/ text_encoder/ tokenizer/
    scheduler/``) with tiny random networks and a byte-level tokenizer: everything :func:`load_sd`
    reads, built offline."""
    folder = Path(folder)
    unet, vae, text_encoder, tokenizer, sched = _random_sd_parts("tiny", seed)
    with _quiet():
        unet.save_pretrained(folder / "unet")
        vae.save_pretrained(folder / "vae")
        text_encoder.save_pretrained(folder / "text_encoder")
        tokenizer.save_pretrained(folder / "tokenizer")
        sched.save_pretrained(folder / "scheduler")
    return folder
