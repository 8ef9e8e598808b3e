"""The image chapter's table: ``python -m emd_lib eval_images``.

    python -m emd_lib eval_images --n 500 --out data/results/ch07_table.json --annotate

For the teacher (many steps) and the one-step students (EMD, Diff-Instruct, and the
generator at its initialisation), generate ``n`` class-conditional digits (``n / 10`` per
class) and measure, against the 500 held-out real digits no model was trained on:
function evaluations per image (NFE), classifier Fréchet distance (Fréchet distance of the
project's MNIST classifier features; not FID), k-NN precision and recall in the same
features, class accuracy, classes covered, and images per second on this machine. A row of
real training digits gives the floor the metrics reach with real data. The test-time MCMC
correction is measured on the ``--emd`` student's samples. The JSON records the path and sha256
of every checkpoint measured; ``--annotate`` also copies each model's row into the card of the
checkpoint it measured (under ``"eval"``). Without ``--out`` the table goes to
``runs/ch07_table.json``, so the shipped results are only replaced when named.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from .. import DATA_DIR
from ..runs.checkpoint import CheckpointError, atomic_write_bytes, read_card, write_json
from ..images.metrics import image_report, load_classifier

__all__ = ["evaluate_images", "evaluate_rows", "correct_images", "main"]

_DATA = DATA_DIR


def evaluate_images(x01: torch.Tensor, labels: torch.Tensor, real01: torch.Tensor, classifier, **extra) -> dict:
    """:func:`~emd_lib.images.metrics.image_report` plus ``extra`` columns, rounded for a table."""
    rep = image_report(x01, labels, real01, classifier)
    rep.pop("class_shares")
    return {**extra, **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in rep.items()}}


@torch.no_grad()
def correct_images(gen, teacher, student, labels, lam: float, steps: int, gamma_eps: float = 0.1,
                   move_z: bool = False, gamma_z: float = 0.05, seed: int = 0, batch: int = 250):
    """Test-time MCMC correction of one-step samples on (eps[, z]); returns ``(before, after)`` in [-1, 1]."""
    from ..langevin import mcmc_correct

    g = torch.Generator().manual_seed(seed)
    before, after = [], []
    for i in range(0, len(labels), batch):
        c = labels[i:i + batch]
        z = torch.randn(len(c), *getattr(teacher, "shape", (1, 28, 28)), generator=g)
        before.append(gen(z, c))
        x, _, _ = mcmc_correct(gen, teacher, student, z, lam, steps=steps, gamma_eps=gamma_eps, gamma_z=gamma_z,
                               move_z=move_z, cond=c, rng=g)
        after.append(x)
    return torch.cat(before), torch.cat(after)


def student_name(card: dict) -> str:
    """A student's name in the table, from its card (:func:`emd_lib.distill.method_name`)."""
    from ..distill import method_name

    return method_name(card.get("method", "emd"), card["config"]["langevin"])


def evaluate_rows(n: int = 500, teacher_steps=(18, 4), correction_steps: int = 20, correction_lam: float = 0.0,
                  seed: int = 0, paths: dict | None = None, progress=print) -> list[dict]:
    """Every row of the table as a list of dicts (see the module docstring).

    ``paths``: ``{"teacher", "emd", "di"}`` checkpoint paths (default: the shipped ones); a student
    whose path is None, or whose default checkpoint is absent, gets no rows. The rows measured
    from a checkpoint say which in ``"checkpoint"``.
    """
    from ..images.data import to_unit
    from ..images.models import load_student, load_teacher
    from ..images.models import generate
    from ..images.data import load_images
    from ..nets import TeacherInitGenerator

    paths = {**default_paths(), **(paths or {})}
    clf = load_classifier()
    x_tr, y_tr, x_ev, y_ev = load_images("mnist")
    real = to_unit(x_ev)
    labels = torch.arange(n) % 10
    rows = []
    idx = torch.randperm(len(x_tr), generator=torch.Generator().manual_seed(seed))[:len(real)]
    rows.append(evaluate_images(to_unit(x_tr[idx]), y_tr[idx], real, clf, model="real training digits", nfe=None,
                                images_per_s=None))
    progress(rows[-1])
    teacher = load_teacher(paths["teacher"])                       # each model is read (and hashed) once
    for steps in teacher_steps:
        t0 = time.perf_counter()
        x, nfe = generate(teacher, n, steps=steps, seed=seed)
        rows.append(evaluate_images(x, labels, real, clf, model=f"teacher, Heun ODE {steps} steps", nfe=nfe,
                                    images_per_s=round(n / (time.perf_counter() - t0), 1), checkpoint="teacher"))
        progress(rows[-1])
    lam_star = None
    for key in ("emd", "di"):
        if paths[key] is None:
            continue
        gen, student, card = load_student(paths[key])
        lam_star = card["lam_star"]
        name = student_name(card)
        t0 = time.perf_counter()
        x, _ = generate(gen, n, seed=seed)
        rows.append(evaluate_images(x, labels, real, clf, model=f"{name}, one step", nfe=1,
                                    images_per_s=round(n / (time.perf_counter() - t0), 1), train_steps=card["steps"],
                                    train_minutes=round(card["wall_time_s"] / 60, 1), checkpoint=key))
        progress(rows[-1])
        # the correction, and its zero-step baseline (noise to lam, one teacher denoise)
        for steps in ((0, correction_steps) if key == "emd" and correction_steps > 0 else ()):
            t0 = time.perf_counter()
            _, after = correct_images(gen, teacher, student, labels, correction_lam, steps, seed=seed)
            what = f"MCMC correction ({steps} steps at lam={correction_lam:g})" if steps else \
                f"teacher denoise at lam={correction_lam:g} (0 steps)"
            rows.append(evaluate_images(to_unit(after), labels, real, clf, model=f"{name} + {what}",
                                        nfe=1 + 2 * steps + 1, images_per_s=round(n / (time.perf_counter() - t0), 1),
                                        checkpoint=key))
            progress(rows[-1])
    if lam_star is not None:
        gen0 = TeacherInitGenerator(teacher, lam_star).eval()
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            t0 = time.perf_counter()
            x = torch.cat([gen0(torch.randn(len(c), *teacher.shape, generator=g), c) for c in labels.split(250)])
        rows.append(evaluate_images(to_unit(x), labels, real, clf, model=f"generator at init (lam* = {lam_star:g})",
                                    nfe=1, images_per_s=round(n / (time.perf_counter() - t0), 1)))
        progress(rows[-1])
    return rows


def default_paths() -> dict:
    """The shipped checkpoints; a student that is not there is left out (None)."""
    paths = {"teacher": _DATA / "mnist_teacher", "emd": _DATA / "mnist_emd", "di": _DATA / "mnist_di"}
    return {k: (p if k == "teacher" or p.with_suffix(".json").exists() else None) for k, p in paths.items()}


def annotate_cards(table: dict) -> list[Path]:
    """Copy each checkpoint's main row into that checkpoint's card under ``"eval"`` (the weights, and
    so the card's sha256, are unchanged): the row with the most network evaluations, which for the
    teacher is its longest sampler and for a student its one-step row (corrections are rows of their
    own checkpoint only when they name it). ``table["checkpoints"]`` names the checkpoints measured;
    a row's ``"checkpoint"`` says which one it measured. Returns the cards written."""
    written = []
    for key, info in table["checkpoints"].items():
        rows = [r for r in table["rows"] if r.get("checkpoint") == key]
        if not rows:
            continue
        row = rows[0] if key != "teacher" else max(rows, key=lambda r: r.get("nfe") or 0)
        path = Path(info["path"])
        card = read_card(path)
        if card.get("sha256") != info["sha256"]:
            raise CheckpointError(f"{path} changed since it was measured (sha256 {card.get('sha256', '?')[:12]}... "
                                  f"!= {info['sha256'][:12]}...); measure it again")
        row = {k: v for k, v in row.items() if k != "checkpoint"}
        card["eval"] = {**row, "measured_by": table["command"], "date": table["date"], "reference": table["reference"]}
        card_path = (path.with_suffix("") if path.suffix in (".safetensors", ".json") else path).with_suffix(".json")
        atomic_write_bytes(card_path, (json.dumps(card, indent=2, default=str) + "\n").encode())
        written.append(card_path)
    return written


def _checkpoint(parser, option: str, path) -> dict:
    """``{"path", "sha256"}`` of a checkpoint named on the command line, or a one-line error."""
    try:
        card = read_card(path)
    except CheckpointError as e:
        parser.error(f"{option} {path}: {e}")
    return {"path": str(path), "sha256": card.get("sha256")}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m emd_lib eval_images", description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=500, help="samples per model (at least 10: one a class)")
    p.add_argument("--teacher-steps", type=int, nargs="*", default=[18, 4], help="Heun steps of each teacher row "
                   "(none: no teacher rows)")
    p.add_argument("--teacher", default=str(_DATA / "mnist_teacher"))
    p.add_argument("--emd", default=None, help="EMD student checkpoint (default: the shipped data/mnist_emd, when "
                   "present; none: no row)")
    p.add_argument("--di", default=None, help="Diff-Instruct student checkpoint (default: the shipped data/mnist_di, "
                   "when present; none: no row)")
    p.add_argument("--annotate", action="store_true",
                   help="copy each model's row into the card of the checkpoint it measured")
    p.add_argument("--no-annotate", action="store_true", help="do not annotate the cards (the default)")
    p.add_argument("--correction-steps", type=int, default=20)
    p.add_argument("--correction-lam", type=float, default=0.0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--out", default="runs/ch07_table.json", help="the table (JSON)")
    args = p.parse_args(argv)
    if args.n < 10:
        p.error(f"--n must be >= 10 (one sample a class, and the k-NN precision and recall need more than 5), "
                f"got {args.n}")
    if any(s < 1 for s in args.teacher_steps) or args.correction_steps < 0:
        p.error("--teacher-steps must all be >= 1 and --correction-steps >= 0")
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    if args.annotate and args.no_annotate:
        p.error("--annotate and --no-annotate exclude each other")
    from ..images.metrics import CLASSIFIER_PATH
    from ..runs.checkpoint import output_path_problem

    if why := output_path_problem(args.out, make_folders=True):
        p.error(f"--out {args.out}: {why}")
    defaults = default_paths()
    paths = {"teacher": Path(args.teacher)}
    for key in ("emd", "di"):
        given = getattr(args, key)
        paths[key] = defaults[key] if given is None else None if given.lower() == "none" else Path(given)
    checkpoints = {key: _checkpoint(p, f"--{key}", path) for key, path in paths.items() if path is not None}
    checkpoints["classifier"] = _checkpoint(p, "classifier", CLASSIFIER_PATH)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    from ..runs.checkpoint import machine, run_card

    t0 = time.perf_counter()
    try:
        rows = evaluate_rows(args.n, tuple(args.teacher_steps), args.correction_steps, args.correction_lam,
                             paths=paths)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    out = run_card(argv, module=__spec__.name, machine=machine(), wall_time_s=round(time.perf_counter() - t0, 1), n=args.n,
                   reference="the 500 held-out MNIST digits (50 a class)", checkpoints=checkpoints, rows=rows)
    write_json(args.out, out)
    print(f"wrote {args.out}")
    if args.annotate:
        try:
            for card_path in annotate_cards(out):
                print(f"wrote its row into {card_path}")
        except CheckpointError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
    return out


if __name__ == "__main__":
    main()
