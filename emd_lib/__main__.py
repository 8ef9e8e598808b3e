"""The library's commands under one name: ``python -m emd_lib COMMAND [ARGS...]``.

    python -m emd_lib grade FILE_OR_FOLDER... [--timeout S] [--json OUT] [--gradescope OUT]

``grade`` is :mod:`emd_lib.grading`; the other commands are the modules' own
(``python -m emd_lib book`` is ``python -m emd_lib.book``), listed by ``python -m emd_lib --help``.
"""
from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "grade": ("emd_lib.grading", "grade submitted chapters, each exercise cell in its own process"),
    "student": ("emd_lib.student", "write the student edition into _build/student"),
    "notebooks": ("emd_lib.notebooks", "write the chapters as .ipynb into _build/ipynb"),
    "book": ("emd_lib.book", "execute the chapters and render the book"),
    "lab": ("emd_lib.lab", "JupyterLab on the repository"),
    "bench": ("emd_lib.bench", "the benchmarks"),
    "toy": ("emd_lib.toy", "distil a 2D mixture from the command line"),
    "train": ("emd_lib.train", "train from a config"),
    "sample": ("emd_lib.sample", "sample a trained generator"),
    "evaluate": ("emd_lib.evaluate", "evaluate a trained generator"),
    "train_teacher": ("emd_lib.train_teacher", "train the MNIST teacher"),
    "train_classifier": ("emd_lib.train_classifier", "train the MNIST evaluator"),
    "distill_images": ("emd_lib.distill_images", "distil the MNIST teacher"),
    "eval_images": ("emd_lib.eval_images", "evaluate MNIST students"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: python -m emd_lib COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {about}" for name, (_, about) in COMMANDS.items()]
    lines += ["", "python -m emd_lib COMMAND --help says more about each."]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"python -m emd_lib: unknown command {name!r}; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    if name == "grade":
        return module.main(rest)
    sys.argv = [f"python -m emd_lib {name}"] + rest
    out = module.main(rest)
    return out if isinstance(out, int) else 0


if __name__ == "__main__":
    sys.exit(main())
