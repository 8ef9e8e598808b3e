"""One distillation loop for EMD-K and for Diff-Instruct / VSD (reverse KL).

Each iteration:

1. **Student score** (``student_updates`` times): denoising score matching on detached
   generator samples, ``|| epshat_psi(alpha g(z) + sigma eps, lam) - eps ||^2``.
2. **Generator**, by ``method``:

   * ``"di"`` (Diff-Instruct / VSD, reverse KL): gradient ``-w alpha ds(x_t)^T dg/dtheta`` at
     ``x_t = alpha g(z) + sigma eps``, written as the surrogate ``-w alpha <ds, g(z)>``.
   * ``"emd"`` (forward KL): E-step (K Langevin steps on rho, :mod:`emd_lib.langevin`), then
     the M-step regression ``w || x_t^K - alpha g_theta(z^K) ||^2 / (2 sigma^2)`` with the
     E-step's samples held fixed.

With K = 1, eps only, ``gamma_eps = 1`` and full noise cancellation the two gradients are
identical (the tests check it to float tolerance).

3. EMA of the generator, cosine-decayed generator learning rate.
"""
from __future__ import annotations

import contextlib
import copy
import math
import numbers
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .langevin import LangevinConfig, call_generator, chain_label, estep, score_gap_eps
from .nets import MLPGenerator, MLPScore, ema_update, init_generator_from_teacher
from .schedules import bcast, sample_lam, weight

__all__ = ["DistillConfig", "Distiller", "emd_generator_loss", "di_generator_loss", "student_loss", "evals_per_step",
           "unwrap_parallel", "method_name", "grad_norm", "mlp_networks"]


def set_cosine_lr(opt: torch.optim.Optimizer, lr: float, decay: float, frac: float) -> float:
    """Cosine decay from ``lr`` at ``frac = 0`` to ``lr * decay`` at ``frac >= 1``; sets and returns it."""
    frac = min(frac, 1.0)
    value = lr * (decay + (1 - decay) * 0.5 * (1 + math.cos(math.pi * frac)))
    for group in opt.param_groups:
        group["lr"] = value
    return value


@dataclass
class DistillConfig:
    """Every setting of a distillation run, with the defaults that work on the 2D toys."""

    method: str = "emd"                 # "emd" or "di"
    steps: int = 3000                   # generator updates
    batch: int = 256
    lr_g: float = 2e-3
    lr_s: float = 1e-3
    betas: tuple = (0.0, 0.999)
    lr_decay: float = 0.05              # the generator lr decays (cosine) to lr_g * lr_decay
    student_updates: int = 2            # student-score updates per generator update
    student_warmup: int = 300           # student-only updates on the initial generator
    ema: float = 0.995                  # generator EMA decay (0 disables)
    lam_dist: str = "uniform"
    lam_min: float = -6.0
    lam_max: float = 6.0
    weighting: str = "sigma2"
    lam_star: float = -2.0              # generator initialisation g(z) = D_phi(z, lam*)
    init_steps: int = 400               # regression steps for that initialisation (0: random init)
    width: int = 256
    depth: int = 3
    grad_clip: float = 10.0             # generator gradient-norm clip (inf disables)
    seed: int = 0
    langevin: LangevinConfig = field(default_factory=LangevinConfig)

    def __post_init__(self):
        if self.method not in ("emd", "di"):
            raise ValueError(f"method must be 'emd' or 'di', got {self.method!r}")
        if isinstance(self.langevin, dict):
            self.langevin = LangevinConfig(**self.langevin)
        if not isinstance(self.langevin, LangevinConfig):
            raise TypeError(f"langevin must be a LangevinConfig (or a dict of its fields), got {type(self.langevin).__name__}")

        def whole(v):
            return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) and int(v) == v

        for names, low in ((("steps", "batch", "width", "depth"), 1),
                           (("student_updates", "student_warmup", "init_steps"), 0)):
            for name in names:
                v = getattr(self, name)
                if not whole(v) or v < low:
                    raise ValueError(f"{name} must be a whole number >= {low}, got {v!r}")
                setattr(self, name, int(v))                 # 2.0 is accepted and used as 2
        for name in ("lr_g", "lr_s"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} (a learning rate) must be a finite number > 0, got {v}")
        if not 0 <= self.ema < 1:
            raise ValueError(f"ema must be in [0, 1), got {self.ema}")
        if not 0 <= self.lr_decay <= 1:
            raise ValueError(f"lr_decay (final fraction of lr_g) must be in [0, 1], got {self.lr_decay}")
        if not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0 (inf disables clipping), got {self.grad_clip}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas (Adam's) must be two numbers in [0, 1), got {self.betas}")
        if self.lam_dist not in ("uniform", "cosine", "edm"):
            raise ValueError(f"lam_dist must be 'uniform', 'cosine' or 'edm', got {self.lam_dist!r}")
        if self.weighting not in ("sigma2", "one", "snr", "edm"):
            raise ValueError(f"weighting must be 'sigma2', 'one', 'snr' or 'edm', got {self.weighting!r}")
        if not (math.isfinite(self.lam_min) and math.isfinite(self.lam_max) and self.lam_min < self.lam_max):
            raise ValueError(f"need finite lam_min < lam_max, got {self.lam_min} and {self.lam_max}; the teacher's "
                             "schedule range is checked when the Distiller is built")

    def to_dict(self) -> dict:
        return asdict(self)


def method_name(method: str, langevin: "LangevinConfig | dict") -> str:
    """A run's name in tables and reports: ``"Diff-Instruct"``, ``"EMD-K"`` with the default
    ``(eps, -)`` chain, ``"EMD-K (eps, z)"`` (the chain named) with any other."""
    if method == "di":
        return "Diff-Instruct"
    lang = langevin if isinstance(langevin, dict) else langevin.__dict__
    chain = chain_label(lang)
    return f"EMD-{int(lang['K'])}" + ("" if chain == "(eps, -)" else f" {chain}")


def unwrap_parallel(module):
    """The network inside a ``DistributedDataParallel`` wrapper (any other module is returned as is)."""
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def student_loss(student, generator, schedule, z, eps, lam, cond=None):
    """Denoising score matching on detached generator samples (eps-prediction, unit weight)."""
    with torch.no_grad():                          # no gradient: the inner network of a parallel wrapper
        x = call_generator(unwrap_parallel(generator), z, cond)
    alpha, sigma = schedule.alpha_sigma(lam)
    x_t = bcast(alpha, x) * x + bcast(sigma, x) * eps
    pred = student.eps(x_t, lam, cond)
    return ((pred - eps) ** 2).flatten(1).sum(1).mean()


def di_generator_loss(generator, teacher, student, z, eps, lam, weighting="sigma2", cond=None):
    """Diff-Instruct / VSD surrogate whose gradient is ``-w alpha ds^T dg/dtheta`` (mean over the batch)."""
    x = call_generator(generator, z, cond)
    alpha, sigma = teacher.schedule.alpha_sigma(lam)
    a, s = bcast(alpha, x), bcast(sigma, x)
    w = bcast(weight(lam, teacher.schedule, weighting), x)
    x_t = a * x.detach() + s * eps
    with torch.no_grad():
        ds = score_gap_eps(teacher, student, x_t, lam, cond) / s          # s_phi - s_psi
    return -(w * a * ds * x).flatten(1).sum(1).mean(), {}


def emd_generator_loss(generator, teacher, student, z, eps, lam, lcfg: LangevinConfig, weighting="sigma2",
                       cond=None, rng=None):
    """E-step then the M-step regression ``w ||x_t^K - alpha g(z^K)||^2 / (2 sigma^2)`` (mean over the batch)."""
    alpha, sigma = teacher.schedule.alpha_sigma(lam)
    z_moves = lcfg.move_z and lcfg.K > 0
    # with z fixed the M-step reuses this forward pass; with z moving the E-step makes its own
    x0 = None if z_moves else call_generator(generator, z, cond)
    # the chain only reads g and its vector-Jacobian products in z: under DistributedDataParallel it
    # runs on the inner network, so that the M-step's forward is the only one the wrapper prepares
    # a gradient reduction for
    res = estep(unwrap_parallel(generator), teacher, student, z, eps, lam, lcfg, cond=cond, rng=rng,
                x0=None if x0 is None else x0.detach())
    x = x0 if not z_moves else call_generator(generator, res.z, cond)
    a, s = bcast(alpha, x), bcast(sigma, x)
    w = bcast(weight(lam, teacher.schedule, weighting), x)
    x_target = (a * x.detach() + s * res.eps).detach()                   # x_t^K, held fixed
    loss = (w * (x_target - a * x) ** 2 / (2 * s**2)).flatten(1).sum(1).mean()
    return loss, res.diagnostics


def evals_per_step(method: str, K: int = 8, move_z: bool = False, space: str = "eps") -> dict:
    """Network evaluations in one generator step (the student updates, equal for all methods, excluded).

    DI: one teacher and one student forward at ``x_t``, one generator forward and backward.
    EMD-K: ``K`` teacher and ``K`` student forwards (one per Langevin step), plus, when ``z`` moves,
    ``K`` generator forwards and ``K`` vector-Jacobian products (the first at ``z_0``); then the
    M-step's generator forward and backward (at ``z^K``; with ``z`` fixed this forward is also the
    chain's ``g(z)``). The ``"x"`` chain with ``z`` moving needs ``g(z)`` before and after the chain
    as well: two more generator forwards.
    """
    if method == "di":
        return {"teacher": 1, "student": 1, "generator_fwd": 1, "generator_bwd": 1}
    K = int(K)
    moves = move_z and K > 0
    extra = 2 if (moves and space == "x") else 0
    return {"teacher": K, "student": K, "generator_fwd": 1 + (K if moves else 0) + extra,
            "generator_bwd": 1 + (K if moves else 0)}


def mlp_networks(teacher, cfg: DistillConfig):
    """The generator and the student score for a low-dimensional teacher: MLPs of ``cfg.width`` x
    ``cfg.depth`` with weights drawn from ``cfg.seed`` (the one construction of both, for the
    Distiller and the training command's 2D config); the student wrapped as an eps-predicting teacher."""
    from .teachers import NetworkTeacher

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        gen = MLPGenerator(teacher.dim, cfg.width, cfg.depth)
        score_net = MLPScore(teacher.dim, cfg.width, cfg.depth, schedule=teacher.schedule)
    return gen, NetworkTeacher(score_net, teacher.schedule, predicts="eps")


def grad_norm(params) -> float:
    """The total 2-norm of the parameters' gradients (``inf`` or ``nan`` when any entry is not finite)."""
    norms = [q.grad.detach().float().norm() for q in params if q.grad is not None]
    return float(torch.stack(norms).norm()) if norms else 0.0


class Distiller:
    """Distil ``teacher`` into a one-step generator by EMD-K or Diff-Instruct.

    >>> d = Distiller(teacher, DistillConfig(method="emd", steps=2000))
    >>> hist = d.train()                 # progress bar; history of losses and E-step diagnostics
    >>> x = d.sample(10_000)             # samples of the EMA generator, (10000, d)
    """

    def __init__(self, teacher, cfg: DistillConfig | None = None, generator: nn.Module | None = None,
                 student: nn.Module | None = None, device=None, shape: tuple | None = None, n_classes: int = 0):

        self.cfg = cfg = cfg or DistillConfig()
        self.teacher = teacher
        self.device = device or torch.device("cpu")
        # the shape of one sample: (d,) for the toys, (C, H, W) for images; n_classes > 0 draws a
        # class label per sample and passes it as ``cond`` to the generator, teacher and student
        self.shape = tuple(shape) if shape is not None else (teacher.dim,)
        self.n_classes = int(n_classes)
        sch = teacher.schedule
        for name in ("lam_min", "lam_max", "lam_star"):
            sch.check_lam(getattr(cfg, name), name)
        if generator is None or student is None:
            if len(self.shape) != 1:
                raise ValueError(f"for data of shape {self.shape} pass the generator and the student score "
                                 "(e.g. emd_lib.nets.TeacherInitGenerator and a copy of the teacher)")
            gen_mlp, student_mlp = mlp_networks(teacher, cfg)
        self.generator = generator if generator is not None else gen_mlp
        self.student = student if student is not None else student_mlp
        self.rng = torch.Generator(device="cpu").manual_seed(cfg.seed)
        # the generator as the losses call it and the E-step's noise (a torch.Generator, or a function
        # like -> noise); the scale trainer sets its DistributedDataParallel wrapper and its own noise
        self.train_net, self.langevin_rng = self.generator, self.rng
        self.history: dict[str, list] = {}
        self.step_count = 0
        if cfg.init_steps > 0 and generator is None:
            self.init_losses = init_generator_from_teacher(self.generator, teacher, cfg.lam_star,
                                                           steps=cfg.init_steps, generator=self.rng)
        self.ema = copy.deepcopy(self.generator).requires_grad_(False) if cfg.ema > 0 else self.generator
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=cfg.lr_g, betas=cfg.betas)
        self.opt_s = torch.optim.Adam(self.student.parameters(), lr=cfg.lr_s, betas=cfg.betas)
        self._warm = False

    # ---- the hooks of one training step ---------------------------------------------------------
    # The scale trainer (emd_lib.scale.train.Trainer) subclasses Distiller and overrides these: it
    # draws on the device and keeps its process's rows, runs under bf16 autocast, averages losses
    # over processes and raises its own fault (its parallel wrapper and noise: train_net, langevin_rng).
    def _draw(self, n):
        cfg = self.cfg
        z = torch.randn(n, *self.shape, generator=self.rng)
        eps = torch.randn(n, *self.shape, generator=self.rng)
        lam = sample_lam(n, cfg.lam_dist, cfg.lam_min, cfg.lam_max, generator=self.rng)
        return z.to(self.device), eps.to(self.device), lam.to(self.device)

    def _draw_cond(self, n):
        """Class labels ``(n,)`` for a class-conditional teacher, else ``None``."""
        if not self.n_classes:
            return None
        return torch.randint(0, self.n_classes, (n,), generator=self.rng).to(self.device)

    def draw_batch(self):
        """``(z, eps, lam, cond)`` of one step's batch, all drawn from the run's seeded generator."""
        z, eps, lam = self._draw(self.cfg.batch)
        return z, eps, lam, self._draw_cond(self.cfg.batch)

    def autocast(self):
        """The context the losses run in (the scale trainer: bf16 autocast)."""
        return contextlib.nullcontext()

    def reduce_mean(self, value: float) -> float:
        """A loss averaged over processes (one process here)."""
        return value

    def fault(self, what: str):
        """Stop on a non-finite loss or gradient, before the optimiser step: the weights stay good."""
        raise FloatingPointError(f"{what} at step {self.step_count + 1}; lower the learning rate or the "
                                 "Langevin step size")

    def _check_finite(self, who: str, value: float, gnorm: float):
        if not (math.isfinite(value) and math.isfinite(gnorm)):
            self.fault(f"non-finite {who} {'loss' if not math.isfinite(value) else 'gradient'} "
                       f"(loss {value}, gradient norm {gnorm})")

    # ---- one update of each network: the only definitions of the two steps in the library -------
    def student_step(self) -> float:
        """One update of the student score on the generator's samples (denoising score matching)."""
        z, eps, lam, cond = self.draw_batch()
        with self.autocast():
            loss = student_loss(self.student, self.train_net, self.teacher.schedule, z, eps, lam, cond)
        self.opt_s.zero_grad(set_to_none=True)
        loss.backward()
        value = self.reduce_mean(loss.item())
        self._check_finite("student-score", value, grad_norm(self.student.parameters()))
        self.opt_s.step()
        return value

    def train_step(self) -> tuple[float, float, float, dict]:
        """One whole training step: ``cfg.student_updates`` student-score updates, then one generator
        update. Returns the mean student loss, the generator loss, its gradient norm and the E-step's
        diagnostics (what :meth:`train` logs; timings of a method's cost time this)."""
        n = self.cfg.student_updates
        ls = sum(self.student_step() for _ in range(n)) / max(n, 1)
        lg, gn, diag = self.generator_step()
        return ls, lg, gn, diag

    def generator_step(self) -> tuple[float, float, dict]:
        """One generator update: Diff-Instruct's surrogate, or EMD's E-step then M-step."""
        cfg = self.cfg
        z, eps, lam, cond = self.draw_batch()
        with self.autocast():
            if cfg.method == "di":
                loss, diag = di_generator_loss(self.train_net, self.teacher, self.student, z, eps, lam, cfg.weighting,
                                               cond=cond)
            else:
                loss, diag = emd_generator_loss(self.train_net, self.teacher, self.student, z, eps, lam, cfg.langevin,
                                                cfg.weighting, cond=cond, rng=self.langevin_rng)
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(self.generator.parameters(), cfg.grad_clip).item()
        value = self.reduce_mean(loss.item())
        self._check_finite("generator", value, gnorm)
        set_cosine_lr(self.opt_g, cfg.lr_g, cfg.lr_decay, self.step_count / max(cfg.steps, 1))
        self.opt_g.step()
        if cfg.ema > 0:
            ema_update(self.ema, self.generator, cfg.ema)
        return value, gnorm, diag

    def warmup(self):
        """Fit the student score to the initial generator (the teacher has no weights to copy)."""
        for _ in range(self.cfg.student_warmup):
            self.student_step()
        self._warm = True

    def _log(self, **kv):
        for k, v in kv.items():
            self.history.setdefault(k, []).append(v)

    def train(self, steps: int | None = None, progress: bool = True, eval_every: int = 0, eval_fn=None,
              desc: str | None = None) -> dict:
        """Run ``steps`` generator updates (default ``cfg.steps``); returns the history.

        ``eval_fn(distiller) -> dict`` is called every ``eval_every`` steps and at the end; its
        numbers go into the history under ``eval_*``.
        """
        cfg = self.cfg
        steps = cfg.steps if steps is None else steps
        if not self._warm:
            self.warmup()
        it = range(steps)
        if progress:
            from tqdm.auto import tqdm
            it = tqdm(it, desc=desc or f"{cfg.method.upper()}" + (f"-{cfg.langevin.K}" if cfg.method == "emd" else ""),
                      mininterval=1.0)
        t0 = time.perf_counter()
        for i in it:
            ls, lg, gn, diag = self.train_step()
            self.step_count += 1
            self._log(step=self.step_count, loss_g=lg, loss_s=ls, grad_norm=gn, seconds=time.perf_counter() - t0,
                      **{f"estep_{k}": v for k, v in diag.items()})
            if eval_fn is not None and ((eval_every and self.step_count % eval_every == 0) or i == steps - 1):
                for k, v in eval_fn(self).items():
                    self._log(**{f"eval_{k}": v})
                self._log(eval_step=self.step_count)
        return self.history

    @torch.no_grad()
    def sample(self, n: int, ema: bool = True, generator: torch.Generator | None = None, cond=None) -> torch.Tensor:
        """``n`` one-step samples ``g(z)`` (the EMA generator by default), ``(n, *shape)``; ``cond``:
        class labels ``(n,)`` for a class-conditional generator."""
        g = self.ema if ema else self.generator
        z = torch.randn(n, *self.shape, generator=generator).to(self.device)
        return call_generator(g, z, cond)
