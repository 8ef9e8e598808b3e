"""The training command's configs: YAML files of ``emd_lib/configs/`` (or your own) with ``key=value``
overrides, typed and checked (:class:`TrainConfig`, :class:`TeacherConfig`).

``load_config("imagenet64", ["langevin.K=4", "teacher.path=/data/edm.pkl"])`` reads a config by
name or path; an unknown key, a wrong type or a value out of range is a :class:`ConfigError`
naming the key and what it takes.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path


from ..distill import DistillConfig
from ..langevin import LangevinConfig  # noqa: F401  (TrainConfig inherits annotations that name it)

__all__ = ["TeacherConfig", "TrainConfig", "ConfigError", "TrainingFault", "load_config", "config_dict",
           "resolve_config_path", "CONFIG_DIR", "RESUMABLE_CHANGES"]


CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_PROMPTS = ["a photograph of an astronaut riding a horse", "a red bicycle leaning against a wall",
                   "a bowl of fruit on a wooden table", "a lighthouse on a cliff at sunset",
                   "a cat sleeping on a windowsill", "a city street in the rain at night",
                   "a watercolor painting of a fox", "a mountain lake with pine trees"]


class ConfigError(ValueError):
    """A setting that cannot work; the message names the key and the fix."""


class TrainingFault(RuntimeError):
    """The run stopped because of a non-finite loss or gradient."""


# ============================================================================================
# configuration
# ============================================================================================

@dataclass
class TeacherConfig:
    """Which teacher to distil.

    kind: ``mixture`` (``path``: a name in :mod:`emd_lib.mixtures` or a mixture JSON),
        ``checkpoint`` (an emd_lib teacher checkpoint, e.g. chapter 7's MNIST teacher),
        ``edm`` (an NVlabs EDM pickle; needs ``trust_pickle`` and ``code_root``, a clone of
        NVlabs/edm), ``adm`` (guided-diffusion's ADM ``.pt``; ``code_root``: a clone of
        openai/guided-diffusion), ``sd`` (Stable Diffusion: a diffusers folder or hub id),
        ``random`` (random weights of architecture ``arch``: tiny-edm, adm64, tiny-adm, adm128,
        tiny-sd, sd15; for tests and the benchmark). For ``adm``, ``arch`` picks guided-diffusion's
        flags, and with them the noise schedule: ``adm128`` (the default, linear) or ``adm64`` (cosine).
    """

    kind: str = "mixture"
    path: str = "ring8"
    arch: str = ""
    trust_pickle: bool = False
    code_root: str = ""
    guidance_scale: float = 1.0
    prompts: str = ""
    num_classes: int = 0
    resolution: int = 0

    def __post_init__(self):
        kinds = ("mixture", "checkpoint", "edm", "adm", "sd", "random")
        if self.kind not in kinds:
            raise ValueError(f"teacher.kind must be one of {', '.join(kinds)}, got {self.kind!r}")
        archs = ("tiny-edm", "adm64", "tiny-adm", "adm128", "tiny-sd", "sd15")
        if self.kind == "random" and self.arch not in archs:
            raise ValueError(f"teacher.arch must be one of {', '.join(archs)} for teacher.kind=random, got {self.arch!r}")
        if self.kind == "adm" and self.arch not in ("", "adm64", "adm128"):
            raise ValueError(f"teacher.arch names the ADM checkpoint's flags for teacher.kind=adm: adm128 "
                             f"(128x128_diffusion.pt, the default) or adm64 (64x64_diffusion.pt), got {self.arch!r}")
        if not (math.isfinite(self.guidance_scale) and self.guidance_scale >= 1):
            raise ValueError(f"teacher.guidance_scale must be >= 1 (1: no guidance), got {self.guidance_scale}")


@dataclass
class TrainConfig(DistillConfig):
    """Every setting of a run: those of :class:`~emd_lib.distill.DistillConfig`, the teacher, and the
    run's bookkeeping. ``batch`` is the global batch (split across processes)."""

    name: str = "run"
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    out: str = ""                       # default: runs/NAME
    ckpt_every: int = 500
    keep: int = 2                       # newest complete checkpoints kept
    log_every: int = 10
    precision: str = "auto"             # auto: bf16 autocast on CUDA, fp32 on the CPU
    compile: bool = False
    channels_last: bool = False         # image networks in NHWC memory (cuDNN's fast convolution layout)
    progress: bool = True
    resume: bool = True
    device: str = ""                    # default: emd_lib.device()
    tensorboard: bool = True

    def __post_init__(self):
        if isinstance(self.teacher, dict):
            self.teacher = TeacherConfig(**self.teacher)
        super().__post_init__()
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be 'auto', 'fp32' or 'bf16', got {self.precision!r}")
        for name in ("ckpt_every", "keep", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def out_dir(self) -> Path:
        p = Path(self.out or f"runs/{self.name}")
        return p if p.is_absolute() else Path.cwd() / p


#: DistillConfig's settings of the 2D MLPs: a config with a network teacher may not set them.
MIXTURE_ONLY = ("width", "depth", "init_steps")

# settings that may change between a run and its resumption (the device within its type: the random
# stream is tied to it; a changed ``steps`` stretches the cosine learning-rate schedule from that step on)
RESUMABLE_CHANGES = {"steps", "out", "ckpt_every", "keep", "log_every", "progress", "resume", "device",
                     "tensorboard", "compile", "channels_last"}


def _fields(cls):
    return {f.name: f for f in dataclasses.fields(cls)}


def _coerce(key, value, typ):
    """Check (and gently convert) a YAML value against a field's type; raise ConfigError naming the key."""
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(typ)
        if value is None and type(None) in args:
            return None
        typ = next(a for a in args if a is not type(None))
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"bad value for {key!r}: {value!r}; write true or false")
    if typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"bad value for {key!r}: {value!r}; it must be a whole number")
    if typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)          # YAML 1.1 reads 1e-3 as a string
            except ValueError:
                pass
        raise ConfigError(f"bad value for {key!r}: {value!r}; it must be a number")
    if typ is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"bad value for {key!r}: {value!r}; it must be a string")
    if typ is tuple or origin is tuple:
        if isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) for v in value):
            return tuple(float(v) for v in value)
        raise ConfigError(f"bad value for {key!r}: {value!r}; it must be a list of numbers like [0.0, 0.999]")
    return value


def _build(cls, data: dict, prefix: str = ""):
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'the config'} must be a mapping of key: value, got {data!r}")
    fields = _fields(cls)
    hints = typing.get_type_hints(cls)
    kw = {}
    for key, value in data.items():
        full = prefix + str(key)
        if key not in fields:
            known = sorted(prefix + k for k in fields)
            close = difflib.get_close_matches(full, known, n=2)
            hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
            raise ConfigError(f"unknown key {full!r}; {hint}known keys: {', '.join(known)}")
        typ = hints[key]
        if dataclasses.is_dataclass(typ):
            kw[key] = _build(typ, value, full + ".")
        else:
            kw[key] = _coerce(full, value, typ)
    try:
        return cls(**kw)
    except ValueError as e:
        raise ConfigError(f"bad value: {e}") from None


def resolve_config_path(name) -> Path:
    p = Path(name)
    for cand in (p, CONFIG_DIR / p, CONFIG_DIR / f"{name}.yaml"):
        if cand.is_file():
            return cand
    known = sorted(q.stem for q in CONFIG_DIR.glob("*.yaml"))
    raise ConfigError(f"no config {name!r}; give a YAML file or one of: {', '.join(known)}")


def load_config(name, overrides=()) -> TrainConfig:
    """Read a YAML config (a path or a name in ``emd_lib/configs/``) and apply ``key=value`` overrides."""
    import yaml

    path = resolve_config_path(name)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of key: value")
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"override {ov!r} is not key=value (e.g. steps=1000 or langevin.K=4)")
        key, raw = ov.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = data
        parts = key.strip().split(".")
        for p in parts[:-1]:
            if not isinstance(node.get(p, {}), dict):
                raise ConfigError(f"{p!r} is not a section, so {key!r} cannot be set")
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    kind = (data.get("teacher") or {}).get("kind", "mixture") if isinstance(data.get("teacher"), dict) else "mixture"
    mlp_only = [k for k in MIXTURE_ONLY if k in data]
    if kind != "mixture" and mlp_only:
        raise ConfigError(f"{', '.join(mlp_only)} set the 2D mixture's MLP generator and student score "
                          f"(teacher.kind=mixture); with teacher.kind={kind} both are copies of the teacher's "
                          "network: remove them")
    return _build(TrainConfig, data)


def config_dict(cfg: TrainConfig) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))
