"""Every command of the library under one name: ``python -m emd_lib COMMAND [ARGS...]`` (or ``emd COMMAND``).

    python -m emd_lib --help                  # the commands
    python -m emd_lib toy --mixture ring8     # distil a 2D mixture
    python -m emd_lib train --config toy      # the training command of every scale
    python -m emd_lib COMMAND --help          # one command's options

Each command is a module's ``main``: the command lines live in :mod:`emd_lib.commands`, the book's
tools in :mod:`emd_lib.book`, the chapters' sweeps in :mod:`emd_lib.experiments`
(``python -m emd_lib experiment ch04 --sweep zstep``). The older spelling
``python -m emd_lib.toy`` became ``python -m emd_lib toy`` (see data/README.md).
"""
from __future__ import annotations

import importlib
import sys

#: command -> (module whose ``main(argv)`` runs it, what it does)
COMMANDS = {
    "toy": ("emd_lib.commands.toy", "distil a 2D mixture (EMD-K or Diff-Instruct) and report its modes"),
    "train": ("emd_lib.commands.train", "train from a config: toy, mnist, imagenet64, imagenet128, sd15"),
    "sample": ("emd_lib.commands.sample", "sample the MNIST teacher or a one-step student"),
    "evaluate": ("emd_lib.commands.evaluate", "FID, IS, precision/recall, CLIP score of a trained run (weights needed)"),
    "bench": ("emd_lib.commands.bench", "seconds, memory and TFLOP/s per training step at scale"),
    "bench_toy": ("emd_lib.commands.bench_toy", "seconds per step of the 2D loop (make bench)"),
    "train_teacher": ("emd_lib.commands.train_teacher", "train the MNIST teacher"),
    "train_classifier": ("emd_lib.commands.train_classifier", "train the MNIST classifier the image metrics use"),
    "distill_images": ("emd_lib.commands.distill_images", "distil the MNIST teacher into a one-step student"),
    "eval_images": ("emd_lib.commands.eval_images", "evaluate MNIST students (classifier Frechet distance, not FID)"),
    "experiment": ("emd_lib.experiments", "rerun a chapter's sweep: experiment chNN [ARGS...]"),
    "book": ("emd_lib.book.build", "execute the chapters and render the book (make book)"),
    "lab": ("emd_lib.book.lab", "JupyterLab on the repository (make lab)"),
    "notebooks": ("emd_lib.book.notebooks", "the chapters as .ipynb for Colab"),
    "student": ("emd_lib.book.student", "the student edition (solutions stubbed)"),
    "grade": ("emd_lib.book.grading", "grade submitted chapters, each exercise cell in its own process"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: python -m emd_lib COMMAND [ARGS...]   (or: emd COMMAND [ARGS...])", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {about}" for name, (_, about) in COMMANDS.items()]
    lines += ["", "python -m emd_lib COMMAND --help says more about each."]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    name = name.replace("-", "_") if name.replace("-", "_") in COMMANDS else name
    if name not in COMMANDS:
        print(f"python -m emd_lib: unknown command {name!r}; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    sys.argv = [f"python -m emd_lib {name}"] + rest
    out = module.main(rest)
    return out if isinstance(out, int) else 0


if __name__ == "__main__":
    sys.exit(main())
