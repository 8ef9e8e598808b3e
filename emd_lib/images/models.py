"""The MNIST models as the chapters and commands use them: the shipped teacher, the one-step students
(read and written), the Distiller that makes a student, and sampling from either.

:func:`load_teacher` and :func:`load_student` read the shipped checkpoints (sha256 checked).
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch

from .. import DATA_DIR, randn
from ..distill import DistillConfig, Distiller
from ..runs.checkpoint import CheckpointError, load_checkpoint, load_state_into, read_card, save_checkpoint
from ..schedules import get_schedule
from ..teachers import NetworkTeacher
from ..nets import TeacherInitGenerator
from .unet import unet_from_card

__all__ = ["TEACHER_PATH", "SHAPES", "load_teacher", "load_student", "make_distiller", "unconditional_problem", "save_student",
           "generate"]

TEACHER_PATH = DATA_DIR / "mnist_teacher"
SHAPES = {"mnist": (1, 28, 28), "digits8": (1, 8, 8)}


def load_teacher(path=None, device="cpu") -> NetworkTeacher:
    """A UNet teacher written by ``python -m emd_lib train_teacher`` (default: the shipped one) as a
    frozen :class:`NetworkTeacher` (``denoise(x_t, lam, cond)``), with its ``card``, ``shape`` and
    ``num_classes``; the schedule and what the network predicts are read from the card."""
    path = Path(path) if path is not None else TEACHER_PATH
    card = read_card(path)
    not_teacher = CheckpointError(f"{path} holds {card.get('what', 'something other than a model')!r}, not a "
                                  "diffusion teacher; pass a checkpoint written by python -m emd_lib train_teacher, "
                                  f"such as {TEACHER_PATH}")
    if "method" in card or not isinstance(card.get("arch"), dict):        # a student, the data, ...
        raise not_teacher
    try:
        net = unet_from_card(card)
    except TypeError:                                                    # another network (the classifier)
        raise not_teacher from None
    load_state_into(net, path, device=device)
    teacher = NetworkTeacher(net.to(device).eval(), get_schedule(card.get("schedule", "vp")),
                             predicts=card.get("predicts", "x0")).requires_grad_(False)
    teacher.card = card
    teacher.shape = tuple(card.get("shape", SHAPES[card.get("data", "mnist")]))
    teacher.num_classes = int(card["arch"].get("n_classes", 0))
    return teacher


def unconditional_problem(teacher: NetworkTeacher) -> str | None:
    """Why ``teacher`` cannot be distilled without labels (None when it can): its card must show a
    class-conditional network trained with label dropout, so that its "no class" label was learnt."""
    card = getattr(teacher, "card", {}) or {}
    if not getattr(teacher.net, "n_classes", 0):
        return "the teacher has no class labels; distil it without --unconditional"
    dropout = (card.get("settings") or {}).get("label_dropout")
    if not dropout:
        return (f"the teacher was trained with label dropout {dropout}, so its 'no class' label was never learnt; "
                "train one with python -m emd_lib train_teacher --label-dropout 0.1")
    return None


def make_distiller(teacher: NetworkTeacher, cfg: DistillConfig, device="cpu", unconditional: bool = False) -> Distiller:
    """A :class:`Distiller` for class-conditional images: generator and student score start as
    copies of the teacher (the generator read at ``cfg.lam_star``). ``unconditional``: no class
    labels are drawn; generator, teacher and student read the "no class" label (``cond=None``)."""
    if unconditional and (why := unconditional_problem(teacher)):
        raise ValueError(why)
    net = teacher.net
    gen = TeacherInitGenerator(teacher, cfg.lam_star).to(device).train()
    student = NetworkTeacher(copy.deepcopy(net).requires_grad_(True).train(), teacher.schedule, predicts=teacher.predicts)
    return Distiller(teacher, cfg, generator=gen, student=student, device=torch.device(device),
                     shape=getattr(teacher, "shape", None) or SHAPES[getattr(teacher, "card", {}).get("data", "mnist")],
                     n_classes=0 if unconditional else net.n_classes)


def save_student(path, d: Distiller, card: dict) -> dict:
    """Write the EMA generator and the student score, with the card."""
    tensors = {f"generator.{k}": v for k, v in d.ema.net.state_dict().items()}
    tensors.update({f"student.{k}": v for k, v in d.student.net.state_dict().items()})
    return save_checkpoint(path, tensors, card)


def load_student(path, device="cpu"):
    """``(generator, student, card)`` of a checkpoint written by :func:`save_student`; the
    generator maps ``(z, c)`` to images in [-1, 1] in one step. A student distilled with
    ``--unconditional`` (card ``"unconditional": true``) was trained on the "no class" label only:
    call it with ``c = None`` (or ``c = n_classes``); ``generator.unconditional`` says which."""
    state, card = load_checkpoint(path, device=device)
    nets = {}
    for part in ("generator", "student"):
        net = unet_from_card(card)
        net.load_state_dict({k[len(part) + 1:]: v for k, v in state.items() if k.startswith(part + ".")})
        nets[part] = net.to(device).eval().requires_grad_(False)
    schedule, predicts = get_schedule(card.get("schedule", "vp")), card.get("predicts", "x0")
    gen = TeacherInitGenerator(NetworkTeacher(nets["generator"], schedule, predicts=predicts), card["lam_star"],
                               copy_weights=False).eval().requires_grad_(False)
    gen.shape = tuple(card.get("shape", SHAPES[card.get("data", "mnist")]))      # one sample's shape
    gen.unconditional = bool(card.get("unconditional", False))
    student = NetworkTeacher(nets["student"], schedule, predicts=predicts)
    return gen, student.requires_grad_(False), card


@torch.no_grad()
def generate(checkpoint, n: int, cls: int | None = None, steps: int = 18, sde: bool = False, seed: int = 0,
             batch: int = 500, device="cpu") -> tuple[torch.Tensor, int]:
    """``(images (n, 1, H, W) in [0, 1], function evaluations per image)`` from a checkpoint's path, or
    from a model already loaded (a teacher from ``load_teacher``, a generator from ``load_student``)."""
    from .data import to_unit
    from ..sampling import sample_ode, sample_sde

    model = checkpoint
    if not isinstance(checkpoint, torch.nn.Module):
        card = read_card(checkpoint)
        if "method" not in card and "predicts" not in card:
            raise CheckpointError(f"{checkpoint} holds {card.get('what', 'something other than a model')!r}, not a "
                                  "diffusion teacher or a one-step student; sample from data/mnist_teacher, "
                                  "data/mnist_emd or data/mnist_di, or a checkpoint the training commands wrote")
        one_step = "method" in card
        model = load_student(checkpoint, device=device)[0] if one_step else load_teacher(checkpoint, device=device)
    g = torch.Generator().manual_seed(seed)
    labels = torch.full((n,), int(cls)) if cls is not None else torch.arange(n) % 10
    out, nfe = [], 1
    for c in labels.split(batch):
        if isinstance(model, NetworkTeacher):                       # the teacher: many steps
            x, nfe = (sample_sde if sde else sample_ode)(model, len(c), n_steps=steps, shape=model.shape,
                                                         cond=c.to(device), generator=g, device=device)
        else:                                                       # a distilled one-step generator
            x = model(randn((len(c), *model.shape), g, device), c.to(device))
        out.append(x.cpu())
    return to_unit(torch.cat(out)).float(), nfe
