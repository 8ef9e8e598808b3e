"""Chapter 7 without labels: which digits do unconditional students draw?

    python -m emd_lib experiment ch07 --students runs/mnist_u_emd4_s0 runs/mnist_u_di_steps_s0 ... \\
        --n 1000 --teacher-n 500 --threads 1 --out data/results/ch07_unconditional.json

The students are one-step generators distilled with ``python -m emd_lib distill_images
--unconditional``: the teacher, the generator and the student score read the teacher's "no class"
label, so nothing tells the generator which digit to draw. Mode coverage is then measurable: the
shipped classifier reads ``n`` samples of each student, and their class histogram is compared with
the uniform one (the held-out digits are 50 a class): total variation to uniform
``TV = 1/2 sum_c |share_c - 1/10|`` and the smallest class share. Beside it, the usual metrics
against the 500 held-out digits: classifier Fréchet distance, k-NN precision and recall.

Reference rows: real training digits (what a perfect generator would score), the teacher's own
unconditional samples (Heun ODE, ``--teacher-steps``; a student can only match the class balance
its teacher has) and the generator at its initialisation. Every student row copies its card's
method, Langevin chain, K, updates, wall time and command, and the sha256 of its checkpoint; a few
samples travel along as bytes (``samples``) so a reader sees them without the weights.
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time

import torch

from ..runs.checkpoint import CheckpointError, machine, output_path_problem, read_card, run_card, write_json
from ..distill import method_name
from ..langevin import chain_label

__all__ = ["class_balance", "chain_name", "chain_of_config", "budget_of", "group_of", "student_row", "reference_rows",
           "decode_samples", "unconditional_runs", "seed_summary", "unconditional_numbers", "tv_noise", "grid",
           "card_line", "row_with_card", "U_GROUPS", "main"]

#: the three groups of unconditional students, by the short name the chapter's numbers use
U_GROUPS = {"emd": "EMD-4", "upd": "Diff-Instruct, equal updates", "time": "Diff-Instruct, equal time"}

N_SHOWN = 8          # samples kept per row, as uint8 bytes


def class_balance(x01: torch.Tensor, classifier, n_classes: int = 10) -> dict:
    """The class histogram of digits ``x01`` (pixels in [0, 1]) under ``classifier``: counts, shares,
    total variation to the uniform histogram and the smallest share."""
    with torch.no_grad():
        pred = torch.cat([classifier(x01[i:i + 500]).argmax(1) for i in range(0, len(x01), 500)])
    counts = torch.bincount(pred, minlength=n_classes)
    shares = counts.double() / len(pred)
    return {"class_counts": counts.tolist(), "class_shares": [round(float(s), 4) for s in shares],
            "tv_uniform": round(float(0.5 * (shares - 1 / n_classes).abs().sum()), 4),
            "min_share": round(float(shares.min()), 4)}


def metrics_row(x01, real01, classifier, **extra) -> dict:
    """Class balance plus classifier Fréchet distance, precision and recall against ``real01``."""
    from ..images.metrics import image_report

    rep = image_report(x01, None, real01, classifier)
    out = {**extra, **class_balance(x01, classifier)}
    out.update({k: round(rep[k], 4) for k in ("classifier_frechet", "precision", "recall")})
    out["samples"] = (x01[:N_SHOWN].clamp(0, 1) * 255).round().to(torch.uint8).flatten(1).numpy().tobytes().hex()
    return out


def decode_samples(row: dict, shape=(1, 28, 28)) -> torch.Tensor:
    """The samples kept in a row, ``(N_SHOWN, *shape)`` in [0, 1]."""
    raw = torch.frombuffer(bytearray(bytes.fromhex(row["samples"])), dtype=torch.uint8)
    return raw.reshape(-1, *shape).float() / 255


def chain_name(card: dict) -> str:
    """The E-step's Langevin chain of a student, from its card: ``"(eps, -)"`` and the like, or
    ``"none"`` for Diff-Instruct."""
    return "none" if card.get("method") == "di" else chain_label(card["config"]["langevin"])


def chain_of_config(cfg):
    """The Langevin chain, its noise cancellation and K of a :class:`~emd_lib.distill.DistillConfig`
    (for a recorded command: ``emd_lib.commands.distill_images.config_from_command``):
    ``("none", None, None)`` for Diff-Instruct."""
    if cfg.method == "di":
        return "none", None, None
    return chain_label(cfg.langevin), cfg.langevin.cancel, cfg.langevin.K


def group_of(row: dict) -> str:
    """An unconditional student's group: EMD-4, or Diff-Instruct at equal updates / at equal wall time."""
    if row["method"] == "emd":
        return row["model"]
    return f"Diff-Instruct, equal {'time' if row['budget'] == 'wall time' else 'updates'}"


def unconditional_runs(rec: dict):
    """The stored unconditional table ``rec`` split into its reference rows (by model), its student
    runs, and the runs by group (:func:`group_of`)."""
    ref = {r["model"]: r for r in rec["rows"] if "method" not in r}
    runs = [r for r in rec["rows"] if "method" in r]
    groups = {}
    for r in runs:
        groups.setdefault(group_of(r), []).append(r)
    return ref, runs, groups


def seed_summary(groups: dict, teacher: dict) -> dict:
    """Mean, min and max over the seeds of each group's numbers; each run also gets ``tv_teacher``, the
    total variation between its class histogram and the teacher's (the balance a student could reach)."""
    import numpy as np

    sh_teacher = np.array(teacher["class_shares"])
    out = {}
    for name, rs in groups.items():
        for r in rs:
            r["tv_teacher"] = float(0.5 * np.abs(np.array(r["class_shares"]) - sh_teacher).sum())
        out[name] = {k: (float(np.mean([r[k] for r in rs])), float(np.min([r[k] for r in rs])),
                         float(np.max([r[k] for r in rs])))
                     for k in ("tv_uniform", "min_share", "tv_teacher", "classifier_frechet", "precision", "recall",
                               "updates", "seconds_per_step")}
    return out


def tv_noise(n: int, trials: int = 2000, seed: int = 0, n_classes: int = 10) -> torch.Tensor:
    """The total variation to uniform of ``n`` draws from the uniform histogram itself, ``trials`` times.
    Seeded by ``seed``, leaving torch's global random state as it was."""
    even = torch.full((n_classes,), 1 / n_classes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return 0.5 * (torch.distributions.Multinomial(n, even).sample((trials,)) / n - 1 / n_classes).abs().sum(1)


def unconditional_numbers(runs: list, summary: dict, teacher: dict) -> dict:
    """The numbers chapter 7's text quotes about the unconditional students: ``{name: (value, format)}``
    (ranges over the runs, the teacher's class balance, in how many seeds each side of a pair is lower,
    the means and spreads over the seeds). A format of None leaves the format to the prose
    (``{glue:text}`name:.3f```)."""
    seeds = sorted({r["seed"] for r in runs})
    by = {(group_of(r), r["seed"]): r for r in runs}
    out = {"u_minutes": (sum(r["seconds"] for r in runs) / 60, ".0f")}
    for name, key, f in (("tv", "tv_uniform", None), ("fd", "classifier_frechet", ".0f"), ("min", "min_share", None)):
        v = [r[key] for r in runs]
        out[f"u_{name}_lo"], out[f"u_{name}_hi"] = (min(v), f), (max(v), f)
    for name in ("emd", "di"):                 # seconds per step, per method: an EMD-4 step costs more by design
        v = [r["seconds_per_step"] for r in runs if (group_of(r) == U_GROUPS["emd"]) == (name == "emd")]
        out[f"u_spd_{name}_lo"], out[f"u_spd_{name}_hi"] = (min(v), None), (max(v), None)
    ones = [r["class_shares"][1] for r in runs]
    out["u_one_lo"], out["u_one_hi"] = (min(ones), ".0%"), (max(ones), ".0%")
    out["u_min_n"] = (round(min(r["min_share"] for r in runs) * runs[0]["n"]), "d")
    out.update(t_tv=(teacher["tv_uniform"], None), t_min=(teacher["min_share"], None),
               t_one=(teacher["class_shares"][1], ".1%"), t_fd=(teacher["classifier_frechet"], ".0f"))
    emd = U_GROUPS["emd"]
    for g in ("upd", "time"):
        for k, short in (("tv_uniform", "tv"), ("classifier_frechet", "fd")):
            out[f"{g}_emd_{short}_wins"] = (sum(by[(emd, s)][k] < by[(U_GROUPS[g], s)][k] for s in seeds), "d")
            out[f"{g}_di_{short}_wins"] = (sum(by[(U_GROUPS[g], s)][k] < by[(emd, s)][k] for s in seeds), "d")
    for g, name in U_GROUPS.items():
        tv, fd = summary[name]["tv_uniform"], summary[name]["classifier_frechet"]
        out.update({f"u_{g}_tv": (tv[0], None), f"u_{g}_fd": (fd[0], ".0f"), f"u_{g}_tv_lo": (tv[1], None),
                    f"u_{g}_tv_hi": (tv[2], None)})
    more = [by[(U_GROUPS["time"], s)]["updates"] / by[(emd, s)]["updates"] for s in seeds]
    out["more_lo"], out["more_hi"] = (min(more), ".1f"), (max(more), ".1f")
    upd = sorted(by[(emd, s)]["updates"] for s in seeds)
    out["emd_u_upd"] = (", ".join(map(str, upd[:-1])) + f" and {upd[-1]}", "s")
    return out


def grid(x, nrow=10, ax=None, title=None):
    """Show images (n, 1, 28, 28) in [0, 1] as a grid with ``nrow`` columns."""
    import matplotlib.pyplot as plt

    x = torch.as_tensor(x).detach().float().clamp(0, 1)
    rows = (len(x) + nrow - 1) // nrow
    canvas = torch.ones(rows * 30, nrow * 30)
    for i in range(len(x)):
        r, c = divmod(i, nrow)
        canvas[r * 30 + 1:r * 30 + 29, c * 30 + 1:c * 30 + 29] = x[i, 0]
    ax = ax or plt.gca()
    ax.imshow(canvas.numpy(), cmap="gray_r", vmin=0, vmax=1)
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=9)


def row_with_card(row: dict, card: dict, name: str | None = None) -> tuple:
    """A measured row beside its student's card: model, updates, minutes, classifier Fréchet distance,
    precision, recall, class accuracy and classes covered."""
    return (name or row["model"], card["steps"], card["wall_time_s"] / 60, row["classifier_frechet"], row["precision"],
            row["recall"], row["class_accuracy"], row["classes_covered"])


def card_line(card: dict) -> str:
    """A model card in two lines: its steps, minutes, machine and date, and the command that made it."""
    return (f"{card['steps']} steps, {card['wall_time_s'] / 60:.0f} min on {card['machine']} ({card['date']})\n"
            f"  made by: {card['command']}")


def budget_of(card: dict) -> str:
    """``"wall time"`` when the run was stopped by ``--minutes``, else ``"updates"``."""
    return "wall time" if "--minutes" in shlex.split(card["command"]) else "updates"


def student_row(path, n: int, real01, classifier, seed: int = 0) -> dict:
    """One unconditional student, read from ``path``, measured on ``n`` samples."""
    from ..images.models import load_student
    from ..images.models import generate

    gen, _, card = load_student(path)
    if not card.get("unconditional"):
        raise CheckpointError(f"{path} is a class-conditional student; this table measures students distilled with "
                              "python -m emd_lib distill_images --unconditional")
    t0 = time.perf_counter()
    x, _ = generate(gen, n, cls=gen.n_classes, seed=seed)       # the "no class" label
    lcfg = card["config"]["langevin"]
    return metrics_row(x, real01, classifier, model=method_name(card["method"], lcfg),
                       method=card["method"], chain=chain_name(card),
                       cancel=lcfg.get("cancel") if card["method"] == "emd" else None,
                       K=lcfg["K"] if card["method"] == "emd" else None, seed=card["config"]["seed"],
                       budget=budget_of(card), updates=card["steps"], horizon=card["horizon"],
                       seconds=card["wall_time_s"], seconds_per_step=card.get("seconds_per_step"),
                       complete=card.get("complete"), command=card["command"], checkpoint=str(path),
                       sha256=card["sha256"], n=n, eval_seconds=round(time.perf_counter() - t0, 1))


def reference_rows(real01, train01, classifier, teacher_n: int, teacher_steps: int, lam_star: float, seed: int = 0):
    """Real training digits, the teacher's unconditional samples, the generator at initialisation."""
    from ..images.data import to_unit
    from ..images.models import load_teacher
    from ..images.models import generate
    from ..nets import TeacherInitGenerator

    rows = [metrics_row(train01, real01, classifier, model="real training digits", n=len(train01))]
    teacher = load_teacher()
    if teacher_n:
        t0 = time.perf_counter()
        x, nfe = generate(teacher, teacher_n, cls=teacher.num_classes, steps=teacher_steps, seed=seed)
        rows.append(metrics_row(x, real01, classifier, model=f"teacher, no class, Heun ODE {teacher_steps} steps",
                                nfe=nfe, n=teacher_n, eval_seconds=round(time.perf_counter() - t0, 1)))
    gen0 = TeacherInitGenerator(teacher, lam_star).eval().requires_grad_(False)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        x = to_unit(torch.cat([gen0(torch.randn(250, *teacher.shape, generator=g)) for _ in range(2)]))
    rows.append(metrics_row(x, real01, classifier, model=f"generator at init, no class (lam* = {lam_star:g})", n=500))
    return rows


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m emd_lib experiment ch07", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--students", nargs="+", required=True, help="checkpoints written by distill_images --unconditional")
    p.add_argument("--n", type=int, default=1000, help="samples per student")
    p.add_argument("--teacher-n", type=int, default=500, help="teacher samples (0: no teacher row)")
    p.add_argument("--teacher-steps", type=int, default=18, help="Heun steps of the teacher row")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default="runs/ch07_unconditional.json")
    args = p.parse_args(argv)
    if args.n < 10 or args.teacher_n < 0 or args.teacher_steps < 1:
        p.error(f"--n must be >= 10, --teacher-n >= 0 and --teacher-steps >= 1, got {args.n}, {args.teacher_n} "
                f"and {args.teacher_steps}")
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    if why := output_path_problem(args.out, make_folders=True):
        p.error(f"--out {args.out}: {why}")
    cards = {}
    for path in args.students:
        try:
            cards[path] = read_card(path)
        except CheckpointError as e:
            p.error(f"--students {path}: {e}")
        if not cards[path].get("unconditional"):
            p.error(f"--students {path}: a class-conditional student; distil one with "
                    "python -m emd_lib distill_images --unconditional")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    from ..images.data import load_images, to_unit
    from ..images.metrics import load_classifier

    t0 = time.perf_counter()
    clf = load_classifier()
    x_tr, _, x_ev, _ = load_images("mnist")
    real = to_unit(x_ev)
    idx = torch.randperm(len(x_tr), generator=torch.Generator().manual_seed(args.seed))[:len(real)]
    lam_star = next(iter(cards.values()))["lam_star"]
    rows = reference_rows(real, to_unit(x_tr[idx]), clf, args.teacher_n, args.teacher_steps, lam_star, args.seed)
    for r in rows:
        print({k: v for k, v in r.items() if k != "samples"}, flush=True)
    for path in args.students:
        try:
            rows.append(student_row(path, args.n, real, clf, seed=args.seed))
        except CheckpointError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
        print({k: v for k, v in rows[-1].items() if k != "samples"}, flush=True)
    out = run_card(argv, module=__spec__.name, machine=machine(), wall_time_s=round(time.perf_counter() - t0, 1),
                   reference="the 500 held-out MNIST digits (50 a class)", n=args.n, rows=rows)
    write_json(args.out, out)
    print(f"wrote {args.out}")
    return out


if __name__ == "__main__":
    main()
