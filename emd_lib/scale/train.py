"""One training entry point for every scale, from the 2D toy to Stable Diffusion.

    python -m emd_lib train --config NAME [key=value ...]   # a name in emd_lib/configs/ or a YAML file
    torchrun --nproc_per_node 8 -m emd_lib train --config imagenet64 [key=value ...]

``--config`` takes a YAML file or the name of one in ``emd_lib/configs/`` (toy, mnist, imagenet64,
imagenet128, sd15); ``key=value`` overrides any setting, dotted for nested ones
(``langevin.K=4``, ``teacher.path=/data/edm.pkl``). The step follows
:class:`emd_lib.distill.Distiller`'s (student-score updates, then one generator update) and calls
the same loss functions (``student_loss``, ``emd_generator_loss``, ``di_generator_loss``); it is
its own loop, drawing the randomness on the device and slicing a global batch per process, so a
run here and a Distiller run with the same seed draw different numbers. What this module adds is
what a long run on real networks needs:

* teachers from :mod:`emd_lib.scale.adapters` (EDM pickles, ADM, Stable Diffusion, random
  stand-ins), with the generator and the student score copied from the teacher's network;
* bf16 autocast on CUDA, an EMA of the generator, a cosine-decayed generator learning rate;
* checkpoints (safetensors + JSON card, written atomically) every ``ckpt_every`` steps and
  exact resume: weights, EMA, both optimisers, the random-number generators and the step.
  A run killed at any moment, even while writing, resumes from the newest complete
  checkpoint, and on the CPU ends bitwise equal to a run that was never interrupted;
* a non-finite loss or gradient stops the run before the optimiser step, naming the step and
  the last good checkpoint (bad weights are never written); any other exception ends in one
  line naming the step and the last good checkpoint (the traceback goes to
  ``OUT/traceback.txt``); SIGINT and SIGTERM save a checkpoint and exit;
* several GPUs through ``torchrun`` and DistributedDataParallel. Every process draws the
  whole global batch's randomness from the same generator and keeps its own rows, so a step
  on N processes equals the single-process step on the same global batch;
* a progress bar, logs as JSON lines (``OUT/log.jsonl``), TensorBoard when it is installed.
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .. import ROOT, randn
from ..runs.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ..distill import Distiller, mlp_networks, unwrap_parallel
from ..langevin import call_generator
from ..schedules import sample_lam
from .config import (CONFIG_DIR, DEFAULT_PROMPTS, RESUMABLE_CHANGES, ConfigError, TeacherConfig, TrainConfig,  # noqa: F401
                     TrainingFault, config_dict, load_config, resolve_config_path)

__all__ = ["TeacherConfig", "TrainConfig", "ConfigError", "TrainingFault", "load_config", "build_problem",
           "Trainer", "CONFIG_DIR"]


# ============================================================================================
# the problem: teacher, generator, student score, conditioning
# ============================================================================================

@dataclass
class Problem:
    teacher: nn.Module
    generator: nn.Module              # g(z) or g(z, cond)
    student: nn.Module                # a teacher-like wrapper whose .net trains
    shape: tuple                      # one sample's shape
    cond: str = "none"                # "none", "class" or "text"
    num_classes: int = 0
    prompts: list = field(default_factory=list)

    _prompt_emb: dict = field(default_factory=dict, repr=False)     # device -> (P, L, D), encoded once

    #: prompt files up to this many lines are encoded once and kept on the device (about 0.24 MB a
    #: prompt for SD 1.5's 77 x 768 embeddings); a larger file (a caption set) is encoded per draw
    PROMPT_CACHE = 2048

    def make_cond(self, idx, device):
        """Turn drawn indices (class labels or prompt numbers) into the networks' conditioning."""
        if self.cond == "none":
            return None
        if self.cond == "class":
            return idx
        if len(self.prompts) > self.PROMPT_CACHE:          # only the drawn prompts, each once
            uniq, inverse = torch.unique(idx.cpu(), return_inverse=True)
            emb = self.teacher.encode_prompts([self.prompts[i] for i in uniq.tolist()], device=device)
            return emb[inverse.to(emb.device)]
        key = str(device)
        if key not in self._prompt_emb:
            self._prompt_emb[key] = self.teacher.encode_prompts(self.prompts, device=device)
        emb = self._prompt_emb[key]
        return emb[idx.to(emb.device)]


def _read_prompts(path):
    if not path:
        return list(DEFAULT_PROMPTS)
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"teacher.prompts: {path} does not exist; give a text file with one prompt a line")
    lines = [ln.strip() for ln in p.read_text().splitlines() if ln.strip()]
    if not lines:
        raise ConfigError(f"teacher.prompts: {path} holds no prompt")
    return lines


def load_teacher(tc: TeacherConfig, seed: int = 0):
    """The teacher of a :class:`TeacherConfig` and its conditioning (``"none"``, ``"class"``, ``"text"``)."""
    from . import adapters as A

    if tc.kind == "mixture":
        from ..mixtures import MIXTURES, get_mixture
        from ..teachers import GaussianMixture

        if tc.path in MIXTURES:
            return get_mixture(tc.path), "none"
        p = Path(tc.path) if Path(tc.path).is_absolute() or Path(tc.path).exists() else ROOT / tc.path
        return GaussianMixture.from_json(p), "none"
    if tc.kind == "checkpoint":
        return _checkpoint_teacher(tc)
    if tc.kind == "edm":
        if not tc.path:
            raise ConfigError("teacher.path: give the EDM pickle (e.g. edm-imagenet-64x64-cond-adm.pkl)")
        t = A.EDMTeacher(A.load_edm_pickle(tc.path, trust_pickle=tc.trust_pickle, edm_root=tc.code_root or None))
        return t, "class" if t.label_dim else "none"
    if tc.kind == "adm":
        flags = A.ADM64_FLAGS if tc.arch == "adm64" else A.ADM128_FLAGS    # the schedule comes with them
        t = A.load_adm(tc.path, code_root=tc.code_root or None, flags=flags, num_classes=tc.num_classes or 1000)
        return t, "class"
    if tc.kind == "sd":
        return A.load_sd(tc.path, guidance_scale=tc.guidance_scale), "text"
    # random weights of a given architecture
    arch, res = tc.arch, tc.resolution or None
    if arch in ("tiny-edm", "adm64"):
        net = A.edm_unet("tiny" if arch == "tiny-edm" else "adm64", resolution=res,
                         num_classes=tc.num_classes or (10 if arch == "tiny-edm" else 1000), seed=seed)
        return A.EDMTeacher(net.eval().requires_grad_(False)), "class"
    if arch in ("tiny-adm", "adm128"):
        nc = tc.num_classes or (10 if arch == "tiny-adm" else 1000)
        net = A.adm_unet("tiny" if arch == "tiny-adm" else "adm128", resolution=res, num_classes=nc, seed=seed)
        r = net.unet.config.sample_size
        return A.DiscreteVPTeacher(net.eval().requires_grad_(False), A.linear_alphas_cumprod(1000), (3, r, r),
                                   num_classes=nc, eps_channels=3), "class"
    return A.random_sd("tiny" if arch == "tiny-sd" else "sd15", guidance_scale=tc.guidance_scale, seed=seed), "text"


def _checkpoint_teacher(tc: TeacherConfig):
    """A teacher saved by emd_lib: chapter 7's UNet denoiser (its card records ``arch``, ``schedule``,
    ``predicts`` and ``data``)."""
    from ..runs.checkpoint import read_card

    p = Path(tc.path)
    if not p.is_absolute() and not p.with_suffix(".json").exists():
        p = ROOT / tc.path
    if not p.with_suffix(".json").exists():
        raise ConfigError(f"teacher.path: the teacher checkpoint {p.with_suffix('.json')} is missing. Chapter 7 "
                          "trains it (python -m emd_lib train_teacher --out data/mnist_teacher; see data/README.md), "
                          "or pass teacher.path=PATH")
    card = read_card(p)
    if "arch" not in card:
        raise ConfigError(f"teacher.path: the card {p.with_suffix('.json')} has no 'arch'; it is not a teacher "
                          "written by python -m emd_lib train_teacher")
    from ..images.models import load_teacher as load_unet_teacher

    t = load_unet_teacher(p)
    return t, "class" if t.num_classes else "none"


def build_problem(cfg: TrainConfig, device) -> Problem:
    """Teacher, generator and student score of a config, on ``device``."""
    from . import adapters as A
    from ..nets import TeacherInitGenerator, init_generator_from_teacher

    teacher, cond = load_teacher(cfg.teacher, seed=cfg.seed)
    sch = teacher.schedule
    for name in ("lam_min", "lam_max", "lam_star"):
        try:
            sch.check_lam(getattr(cfg, name), name)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    if cfg.teacher.kind == "mixture":
        gen, student = mlp_networks(teacher, cfg)
        if cfg.init_steps > 0:
            init_generator_from_teacher(gen, teacher, cfg.lam_star, steps=cfg.init_steps,
                                        generator=torch.Generator().manual_seed(cfg.seed))
        prob = Problem(teacher, gen, student, (teacher.dim,))
    else:
        # the paper's initialisation: generator and student score start as copies of the teacher's
        # network; text-to-image: classifier-free guidance on the teacher only
        kw = {"guidance_scale": 1.0} if cond == "text" else {}
        gen = TeacherInitGenerator(A.network_copy(teacher, **kw), cfg.lam_star, copy_weights=False)
        student = A.network_copy(teacher, **kw)
        prob = Problem(teacher, gen, student, tuple(teacher.shape), cond, int(getattr(teacher, "num_classes", 0) or 0))
        if cond == "text":
            prob.prompts = _read_prompts(cfg.teacher.prompts)
    for m in (prob.teacher, prob.generator, prob.student):
        m.to(device)
    parts = getattr(teacher, "parts", None)
    if parts is not None:
        for m in (parts.text_encoder, parts.vae):
            if m is not None:
                m.to(device)
    return prob


# ============================================================================================
# checkpoints of the whole training state
# ============================================================================================

def _opt_flat(prefix, opt):
    sd = opt.state_dict()
    tensors, meta = {}, {"param_groups": sd["param_groups"], "state": {}}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{prefix}.state.{pid}.{k}"] = v
            else:
                meta["state"].setdefault(str(pid), {})[k] = v
    return tensors, meta


def _opt_load(opt, prefix, tensors, meta):
    state = {}
    head = f"{prefix}.state."
    for key, v in tensors.items():
        if key.startswith(head):
            pid, k = key[len(head):].split(".", 1)
            state.setdefault(int(pid), {})[k] = v
    for pid, d in meta["state"].items():
        state.setdefault(int(pid), {}).update(d)
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    opt.load_state_dict({"state": state, "param_groups": groups})


def _sub(tensors, prefix):
    n = len(prefix) + 1
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def networks(p) -> list[nn.Module]:
    """The teacher's, generator's and student's networks (what compiling and memory layout apply to)."""
    nets = []
    for m in (p.teacher, p.generator, p.student):
        net = getattr(m, "net", None) or getattr(getattr(m, "copy", None), "net", None)
        if isinstance(net, nn.Module):
            nets.append(net)
    return nets


# ============================================================================================
# the trainer
# ============================================================================================

class Trainer(Distiller):
    """A distillation run: ``Trainer(cfg).run()``. ``run(until=N)`` stops after step N with a checkpoint.

    The step is :class:`~emd_lib.distill.Distiller`'s (``student_step``, ``generator_step``); this class
    builds the problem from a config and overrides the step's hooks (drawing on the device, bf16,
    DistributedDataParallel, averaged losses, its own fault), and adds what a long run needs:
    checkpoints, exact resume, signals, logs."""

    def __init__(self, cfg: TrainConfig, device=None, quiet: bool = False):      # noqa: D107 (its own build)
        from .. import device as default_device

        self.cfg = cfg
        self.dist = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.rank = torch.distributed.get_rank() if self.dist else 0
        self.world = torch.distributed.get_world_size() if self.dist else 1
        if cfg.batch % self.world:
            raise ConfigError(f"batch={cfg.batch} does not split over {self.world} processes; use a multiple of "
                              f"{self.world}")
        self.device = torch.device(device or cfg.device or default_device())
        if self.device.type == "cuda" and self.dist:
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", self.rank)))
            torch.cuda.set_device(self.device)
        self.quiet = quiet or self.rank != 0
        self.amp = cfg.precision == "bf16" or (cfg.precision == "auto" and self.device.type == "cuda")
        self.out = cfg.out_dir
        self.ckpt_dir = self.out / "checkpoints"
        self.prob = build_problem(cfg, self.device)
        p = self.prob
        if cfg.channels_last:
            for net in networks(p):
                net.to(memory_format=torch.channels_last)
        self.teacher, self.generator, self.student, self.shape = p.teacher, p.generator, p.student, p.shape
        self.ema = copy.deepcopy(p.generator).requires_grad_(False) if cfg.ema > 0 else p.generator
        self.opt_g = torch.optim.Adam(p.generator.parameters(), lr=cfg.lr_g, betas=cfg.betas)
        self.opt_s = torch.optim.Adam(p.student.net.parameters(), lr=cfg.lr_s, betas=cfg.betas)
        self.rng = torch.Generator(device=self.device).manual_seed(cfg.seed)
        self.command = ""                   # the command line, recorded in checkpoints (set by main)
        self.step = 0
        self._warm = False
        self.last_good: Path | None = None
        self.history: list[dict] = []
        self._stop = 0
        if cfg.compile:
            for net in networks(p):
                net.compile()
        # several processes: DistributedDataParallel around what trains. The networks' buffers are
        # constants (frequencies, schedule tables), equal on every process: no broadcast before each
        # forward. close() takes the wrappers off again.
        self.train_net, self.langevin_rng = p.generator, self._noise
        if self.dist:
            self.train_net = _parallel(p.generator, self.device)
            p.student.net = _parallel(p.student.net, self.device)
        # The only tensors this class hands to a collective, held as long as the trainer. The backend
        # releases a finished collective's tensors on a worker thread of its own; were the tensor a
        # temporary whose Python object had gone, that release would have to take the interpreter's
        # lock, and a worker that does so while the interpreter shuts down aborts the process
        # ("terminate called without an active exception") after a run that finished well.
        self._loss_sum = torch.zeros(1, dtype=torch.float64, device=self.device)
        self._stop_max = torch.zeros(1, dtype=torch.int64, device=self.device)

    def close(self):
        """Take the DistributedDataParallel wrappers off the generator and the student score, so that
        nothing of this trainer holds the process group (``leave_process_group`` calls it before the
        group is destroyed). Checkpoints and samples work as before; training can go on afterwards
        only on one process."""
        p = self.prob
        self.train_net = p.generator
        p.student.net = unwrap_parallel(p.student.net)

    # ---- the hooks of Distiller's step: the global batch on every process, this process's rows kept,
    # bf16 autocast, the DistributedDataParallel wrapper, losses averaged over processes ---------------
    @property
    def step_count(self) -> int:                 # what Distiller's step reads (the learning-rate schedule)
        return self.step

    def _rows(self, t):
        if self.world == 1:
            return t
        b = t.shape[0] // self.world
        return t[self.rank * b:(self.rank + 1) * b]

    def _noise(self, like):
        shape = (like.shape[0] * self.world, *like.shape[1:])
        return self._rows(torch.randn(shape, generator=self.rng, device=self.device, dtype=like.dtype))

    def draw_batch(self):
        cfg, B = self.cfg, self.cfg.batch
        z = self._rows(torch.randn((B, *self.prob.shape), generator=self.rng, device=self.device))
        eps = self._rows(torch.randn((B, *self.prob.shape), generator=self.rng, device=self.device))
        lam = self._rows(sample_lam(B, cfg.lam_dist, cfg.lam_min, cfg.lam_max, generator=self.rng, device=self.device))
        cond = None
        if self.prob.cond != "none":
            n = self.prob.num_classes if self.prob.cond == "class" else len(self.prob.prompts)
            idx = self._rows(torch.randint(0, n, (B,), generator=self.rng, device=self.device))
            cond = self.prob.make_cond(idx, self.device)
        return z, eps, lam, cond

    def autocast(self):
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def reduce_mean(self, v: float) -> float:
        if not self.dist:
            return v
        self._loss_sum.fill_(v)
        torch.distributed.all_reduce(self._loss_sum)
        return float(self._loss_sum) / self.world

    def fault(self, what):
        where = f"the last good checkpoint is {self.last_good}" if self.last_good else \
            "no checkpoint was written yet"
        raise TrainingFault(f"training stopped at step {self.step + 1}: {what}; the weights were not updated and "
                            f"{where}. Lower lr_g / lr_s or the Langevin step size, then resume from it")

    # ---- checkpoints -------------------------------------------------------------------------------
    def state(self) -> tuple[dict, dict]:
        p = self.prob
        t = {}
        nets = [("generator", p.generator), ("student", unwrap_parallel(p.student.net))]
        if self.cfg.ema > 0:
            nets.append(("ema", self.ema))
        for prefix, m in nets:
            t.update({f"{prefix}.{k}": v for k, v in m.state_dict().items()})
        og, mg = _opt_flat("opt_g", self.opt_g)
        os_, ms = _opt_flat("opt_s", self.opt_s)
        t.update(og)
        t.update(os_)
        t["rng"] = self.rng.get_state()
        t["torch_rng"] = torch.get_rng_state()
        card = {"what": "emd_lib training state (generator, EMA, student score, optimisers, random generators)",
                "step": self.step, "warm": self._warm, "config": config_dict(self.cfg), "opt_g": mg, "opt_s": ms,
                "world_size": self.world, "command": self.command, "rng_device": self.rng.device.type,
                "torch": torch.__version__, "time": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
        return t, card

    def save(self) -> Path | None:
        path = self.ckpt_dir / f"step_{self.step:08d}"
        if self.rank == 0:
            tensors, card = self.state()
            save_checkpoint(path, tensors, card)
            done = sorted(self.ckpt_dir.glob("step_*.json"))
            for old in done[:-self.cfg.keep]:
                for f in (old, old.with_suffix(".safetensors")):
                    f.unlink(missing_ok=True)
        if self.dist:
            torch.distributed.barrier()
        self.last_good = path
        return path

    def load(self, tensors, card):
        saved = card.get("rng_device", "cpu")
        if saved != self.rng.device.type:
            raise ConfigError(f"this run's random stream was saved on a {saved} device and cannot continue on "
                              f"{self.rng.device.type}; resume it with device={saved}, or start a new run with "
                              "out=ANOTHER_FOLDER")
        p = self.prob
        p.generator.load_state_dict(_sub(tensors, "generator"))
        if self.cfg.ema > 0:
            self.ema.load_state_dict(_sub(tensors, "ema"))
        unwrap_parallel(p.student.net).load_state_dict(_sub(tensors, "student"))
        _opt_load(self.opt_g, "opt_g", tensors, card["opt_g"])
        _opt_load(self.opt_s, "opt_s", tensors, card["opt_s"])
        self.rng.set_state(tensors["rng"].cpu())
        torch.set_rng_state(tensors["torch_rng"].cpu())
        self.step, self._warm = int(card["step"]), bool(card.get("warm", True))

    def try_resume(self) -> bool:
        """Load the newest complete checkpoint in ``OUT/checkpoints``; skip torn or corrupted ones."""
        cards = sorted(self.ckpt_dir.glob("step_*.json"), reverse=True)
        for c in cards:
            try:
                tensors, card = load_checkpoint(c.with_suffix(""))
            except CheckpointError as e:
                self._say(f"skipping checkpoint {c.with_suffix('')}: {e}")
                continue
            old = card.get("config", {})
            new = config_dict(self.cfg)
            diff = sorted(k for k in set(old) | set(new) if k not in RESUMABLE_CHANGES and old.get(k) != new.get(k))
            if diff:
                raise ConfigError(f"{self.out} holds a run with other settings ({', '.join(diff)} differ); resume "
                                  "it with its own settings, or start a new run with out=ANOTHER_FOLDER")
            self.load(tensors, card)
            self.last_good = c.with_suffix("")
            self._trim_log()
            self._say(f"resumed from {self.last_good} (step {self.step})")
            return True
        return False

    def _trim_log(self):
        """Drop log records of steps after the checkpoint (they will be run again)."""
        log = self.out / "log.jsonl"
        if self.rank != 0 or not log.exists():
            return
        keep = []
        for line in log.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= self.step:
                    keep.append(line)
            except json.JSONDecodeError:                 # a line cut short by a kill
                pass
        from ..runs.checkpoint import atomic_write_bytes
        atomic_write_bytes(log, ("\n".join(keep) + ("\n" if keep else "")).encode())

    # ---- the loop ------------------------------------------------------------------------------------
    def _say(self, msg):
        if not self.quiet:
            print(msg, file=sys.stderr, flush=True)

    def _on_signal(self, signum, frame):
        self._stop = signum

    def _stop_requested(self) -> int:
        s = self._stop
        if self.dist:
            self._stop_max.fill_(s)
            torch.distributed.all_reduce(self._stop_max, op=torch.distributed.ReduceOp.MAX)
            s = int(self._stop_max)
        return s

    def run(self, until: int | None = None) -> list[dict]:
        """Train to ``cfg.steps`` (or stop after step ``until``), resuming when a checkpoint exists."""
        cfg = self.cfg
        if cfg.resume and self.step == 0:
            self.try_resume()
        elif not cfg.resume and self.step == 0 and any(self.ckpt_dir.glob("step_*.json")):
            raise ConfigError(f"{self.ckpt_dir} already holds checkpoints and resume=false; resume them "
                              "(resume=true), or start the new run in another folder (out=...)")
        if not self._warm:
            self.warmup()
        end = cfg.steps if until is None else min(until, cfg.steps)
        log = writer = None
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            log = open(self.out / "log.jsonl", "a")
            writer = _tensorboard(self.out) if cfg.tensorboard else None
        bar = None
        if cfg.progress and not self.quiet:
            from tqdm.auto import tqdm
            bar = tqdm(total=end, initial=self.step, desc=cfg.name, mininterval=1.0)
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)} \
            if _main_thread() else {}
        try:
            t_last = time.perf_counter()
            while self.step < end:
                ls, lg, gn, diag = self.train_step()
                self.step += 1
                now = time.perf_counter()
                rec = {"step": self.step, "loss_g": lg, "loss_s": ls, "grad_norm": gn,
                       "lr_g": self.opt_g.param_groups[0]["lr"], "sec_per_step": now - t_last,
                       "img_per_s": cfg.batch / max(now - t_last, 1e-12),
                       **{f"estep_{k}": v for k, v in diag.items()}}
                t_last = now
                self.history.append(rec)
                if log is not None and (self.step % cfg.log_every == 0 or self.step == end):
                    log.write(json.dumps(rec) + "\n")
                    log.flush()
                    if writer is not None:
                        for k, v in rec.items():
                            if k != "step" and isinstance(v, (int, float)):
                                writer.add_scalar(k, v, self.step)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss_g=f"{lg:.4g}", loss_s=f"{ls:.4g}", refresh=False)
                if self.step % cfg.ckpt_every == 0 or self.step == end:
                    self.save()
                sig = self._stop_requested()
                if sig:
                    if self.step % cfg.ckpt_every and self.step != end:
                        self.save()
                    name = signal.Signals(sig).name
                    self._say(f"\n{name}: stopped at step {self.step}; checkpoint {self.last_good}. Run the same "
                              "command again to resume.")
                    raise Interrupted(sig)
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            if bar is not None:
                bar.close()
            if log is not None:
                log.close()
            if writer is not None:
                writer.close()
        return self.history

    @torch.no_grad()
    def sample(self, n: int, ema: bool = True, generator: torch.Generator | None = None, cond=None):
        """``n`` one-step samples of the (EMA) generator, drawn on the trainer's device;
        ``cond``: class labels or text embeddings. The arguments are :meth:`Distiller.sample`'s."""
        z = randn((n, *self.prob.shape), generator, self.device)
        return call_generator(self.ema if ema else self.prob.generator, z, cond)


def describe_failure(e: BaseException, tr, out) -> str:
    """One line for an exception nobody foresaw: what it was, the step it stopped, the last good
    checkpoint, and where the full traceback was written (``OUT/traceback.txt``)."""
    import traceback

    first = (str(e).strip().splitlines() or ["no message"])[0]
    what = f"{type(e).__name__}: {first}"
    saved = ""
    if out is not None:
        try:
            Path(out).mkdir(parents=True, exist_ok=True)
            (Path(out) / "traceback.txt").write_text("".join(traceback.format_exception(e)))
            saved = f"; the full traceback is in {Path(out) / 'traceback.txt'}"
        except OSError:
            pass
    if tr is None:
        return f"the run stopped before its first step ({what}){saved}"
    where = f"the last good checkpoint is {tr.last_good}" if tr.last_good else "no checkpoint was written yet"
    return (f"training stopped at step {tr.step + 1} by an unexpected error ({what}); {where}{saved}. Fix the "
            "cause, then run the same command again to resume")


class Interrupted(Exception):
    def __init__(self, sig):
        super().__init__(sig)
        self.sig = sig


def _parallel(net, device):
    """``net`` in DistributedDataParallel, without the buffer broadcast before every forward (our
    networks' buffers are constants; the keyword was renamed in newer torch)."""
    import inspect

    DDP = nn.parallel.DistributedDataParallel
    quiet = "forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DDP).parameters \
        else "broadcast_buffers"
    ids = [device.index] if device.type == "cuda" else None
    return DDP(net, device_ids=ids, **{quiet: False})


def _main_thread():
    import threading

    return threading.current_thread() is threading.main_thread()


def _tensorboard(out):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard is optional
        return None
    return SummaryWriter(str(out / "tb"))


# ============================================================================================
# command line
# ============================================================================================

def init_distributed():
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":            # this process's GPU before the group exists: NCCL never guesses one
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        torch.distributed.init_process_group(backend)
        return True
    return False


def leave_process_group(trainer: "Trainer | None" = None):
    """End this process's part in the process group, the same way after success, error and signal.

    The trainer's DistributedDataParallel wrappers are taken off and collected, then the group is
    destroyed. No collective is issued here, so a process that failed alone cannot hang the others
    (on NCCL, ``destroy_process_group`` aborts the communicators instead of waiting for peers).
    The backend's worker threads end only when the last reference to the group goes; in torch 2.13
    DistributedDataParallel's reducer keeps one even after its wrapper is collected, so on gloo the
    workers live on to the interpreter's shutdown. That is harmless only because every tensor the
    trainer hands to a collective outlives it (``Trainer._loss_sum``, ``Trainer._stop_max``).
    """
    import gc

    if trainer is not None and trainer.dist:
        trainer.close()
    gc.collect()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
