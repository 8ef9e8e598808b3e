"""Checkpoints: safetensors weights beside a JSON card, written atomically, checked by sha256.

A checkpoint is two files::

    NAME.safetensors   the tensors (no pickle: loading runs no code)
    NAME.json          the card: what the tensors are, how they were made, and the sha256
                       of the .safetensors file

Both are written to a temporary file in the same folder, flushed to disk and renamed into
place, weights first and card last, so a run killed mid-write leaves the previous complete
checkpoint readable. :func:`load_checkpoint` refuses a file whose sha256 does not match its
card, a card without weights, and truncated files, each with a message that says what to do.

Example::

    save_checkpoint("data/teachers/mnist", model.state_dict(), {"command": "...", "steps": 4000})
    state, card = load_checkpoint("data/teachers/mnist")
    model.load_state_dict(state)
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shlex
import sys
import tempfile
from pathlib import Path

import torch


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, corrupted or does not match what reads it."""


def _paths(path) -> tuple[Path, Path]:
    p = Path(path)
    if p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    return p.with_suffix(".safetensors"), p.with_suffix(".json")


def output_path_problem(path, make_folders: bool = False) -> str | None:
    """Why the file ``path`` cannot be written, or None when it can: checked by the commands before
    any work. ``make_folders``: the writer creates missing folders (as :func:`atomic_write` does), so
    the nearest existing folder must be writable; otherwise the file's folder must exist."""
    f = Path(path)
    if f.is_dir():
        return f"{f} is a folder; name a file in it"
    if f.exists() and not os.access(f, os.W_OK):
        return f"cannot write to {f} (permission denied); pick a writable place"
    folder = f.parent if str(f.parent) else Path(".")
    if make_folders:
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
    elif not folder.exists():
        return f"the folder {folder} does not exist; create it first"
    if not folder.is_dir():
        return f"{folder} is a file, not a folder; pick another path"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"cannot write to {folder} (permission denied); pick a writable place"
    return None


def exit_interrupted(out, steps: int = 0, horizon: int = 0):
    """Ctrl-C in a training command: say what was saved (``steps`` done of a ``horizon``-step
    learning-rate decay, in the checkpoint ``out``; 0: nothing) and how to repeat it; exit 130."""
    if steps:
        print(f"interrupted: saved {out}.safetensors after {steps} steps (\"complete\": false in its card); "
              f"--steps {steps} --horizon {horizon} repeats them", file=sys.stderr)
    else:
        print("interrupted before the first training step; nothing saved", file=sys.stderr)
    raise SystemExit(130)


def checkpoint_path_problem(path) -> str | None:
    """:func:`output_path_problem` of both files of the checkpoint ``path`` (its folders are made on saving)."""
    for f in _paths(path):
        if why := output_path_problem(f, make_folders=True):
            return why
    return None


def sha256_file(path, chunk: int = 1 << 20) -> str:
    """The sha256 hex digest of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def atomic_write(path, write) -> None:
    """``write(tmp_path)`` writes the file's content to a temporary file beside ``path``, which is then
    flushed to disk and renamed onto ``path``; on any failure the temporary file is removed and
    ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and an atomic rename."""
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def write_json(path, payload: dict, indent: int = 1) -> None:
    """Write ``payload`` as indented JSON, atomically (:func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, (json.dumps(payload, indent=indent) + "\n").encode())


def save_checkpoint(path, tensors: dict[str, torch.Tensor], card: dict | None = None) -> dict:
    """Save ``tensors`` to ``path.safetensors`` and ``card`` (plus its sha256) to ``path.json``.

    Non-finite values are refused (a run that blew up must not overwrite good weights).
    Returns the card as written.
    """
    from safetensors.torch import save_file

    weights, card_path = _paths(path)
    flat = {}
    for k, v in tensors.items():
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"checkpoint entry {k!r} is a {type(v).__name__}, not a tensor; "
                                  "put non-tensor values in the card")
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise CheckpointError(f"refusing to save {weights}: tensor {k!r} has NaN or inf values; "
                                  "the last good checkpoint is left as it was")
        flat[k] = v.detach().to("cpu").contiguous()
    # straight to the file, then hashed from it in blocks: the state is never held twice in memory
    atomic_write(weights, lambda tmp: save_file(flat, tmp))
    card = dict(card or {})
    card["weights"] = weights.name
    card["sha256"] = sha256_file(weights)
    card["bytes"] = weights.stat().st_size
    atomic_write_bytes(card_path, (json.dumps(card, indent=2, default=str) + "\n").encode())
    return card


def read_card(path) -> dict:
    """The JSON card of a checkpoint."""
    _, card_path = _paths(path)
    if not card_path.exists():
        from .. import DATA_DIR, data_dir_hint

        if card_path.parent.resolve() == DATA_DIR.resolve():
            raise CheckpointError(f"no checkpoint card at {card_path}: {data_dir_hint()}")
        raise CheckpointError(f"no checkpoint card at {card_path}; pass the path of a checkpoint "
                              "written by emd_lib (NAME, NAME.safetensors or NAME.json)")
    try:
        card = json.loads(card_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"the checkpoint card {card_path} is not valid JSON ({e}); it was "
                              "probably cut off while writing: use the previous checkpoint") from None
    if not isinstance(card, dict):
        raise CheckpointError(f"the checkpoint card {card_path} holds a JSON {type(card).__name__}, not an "
                              "object; it is not a card written by emd_lib: use the previous checkpoint")
    return card


def load_checkpoint(path, device="cpu", verify: bool = True) -> tuple[dict[str, torch.Tensor], dict]:
    """Load ``(tensors, card)``, checking the weights' sha256 against the card.

    Raises :class:`CheckpointError` with a message naming the problem and the fix when a file
    is missing, truncated or does not match its card.
    """
    from safetensors import safe_open

    weights, _ = _paths(path)
    card = read_card(path)
    if not weights.exists():
        raise CheckpointError(f"the weights file beside the card, {weights}, is missing; "
                              "copy it next to the card or retrain")
    if verify and not isinstance(card.get("sha256"), str):
        raise CheckpointError(f"the card of {weights} records no sha256, so the weights cannot be checked; "
                              "use a card written by save_checkpoint, or pass verify=False if you trust the file")
    if verify:
        digest = sha256_file(weights)                  # read in blocks; the tensors are then mapped from the file
        if digest != card["sha256"]:
            raise CheckpointError(f"{weights} does not match its card (sha256 {digest[:12]}... != "
                                  f"{card['sha256'][:12]}...): the file is truncated, corrupted or "
                                  "from another run; restore it or retrain")
    try:
        with safe_open(str(weights), framework="pt") as f:   # copied out: nothing stays mapped to the file
            tensors = {k: f.get_tensor(k).clone() for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"{weights} is not a readable safetensors file ({e}); "
                              "restore it or retrain") from None
    return {k: v.to(device) for k, v in tensors.items()}, card


def load_state_into(module: torch.nn.Module, path, device="cpu") -> dict:
    """Load a checkpoint into ``module`` and return its card; mismatched keys or shapes get a
    message that lists them."""
    state, card = load_checkpoint(path, device=device)
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    shapes = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or extra or shapes:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}")
        if extra:
            parts.append(f"unexpected {extra[:5]}")
        if shapes:
            parts.append("shape mismatch " + ", ".join(
                f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in shapes[:5]))
        raise CheckpointError(f"checkpoint {path} does not fit {type(module).__name__}: "
                              + "; ".join(parts) + ". Build the network with the settings in the "
                              "checkpoint's card.")
    module.load_state_dict(state)
    return card


def verify_file(path, sha256: str) -> Path:
    """Check a shipped file against its expected sha256; raise :class:`CheckpointError` if not."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} is missing; restore it from the repository (git checkout -- {path})")
    digest = sha256_file(path)
    if digest != sha256:
        raise CheckpointError(f"{path} has sha256 {digest[:12]}..., expected {sha256[:12]}...; "
                              "restore it from the repository or rebuild it with the command in data/README.md")
    return path


def load_pickle(path, trust: bool = False):
    """Load a pickle (a ``.pkl``, or a ``.pt`` written by ``torch.save``) **only** with ``trust=True``.

    Unpickling runs whatever code the file names: a crafted file can run any command with your
    permissions the moment it is loaded. Safetensors (:func:`load_checkpoint`) and
    ``torch.load(path, weights_only=True)`` cannot; use them whenever the file holds tensors only.
    Pass ``trust=True`` for a file you made yourself or whose source you trust (the EDM pickles,
    for instance, hold the network's code).
    """
    path = Path(path)
    if not trust:
        raise CheckpointError(f"refusing to unpickle {path}: unpickling runs code named in the file, so an "
                              "untrusted file can take over this machine. If you made the file or trust its "
                              "source, call load_pickle(path, trust=True); for tensors only, use safetensors "
                              "(load_checkpoint) or torch.load(path, weights_only=True)")
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; check the path")
    import zipfile

    if zipfile.is_zipfile(path):  # torch.save's format: trusted by the caller, so full unpickling
        return torch.load(path, map_location="cpu", weights_only=False)
    import pickle

    with open(path, "rb") as f:
        return pickle.load(f)


def shipped_checksums(data_dir) -> dict[Path, str]:
    """Every file under ``data_dir`` with a recorded sha256: the weights named by a checkpoint card
    (``{"weights": ..., "sha256": ...}``), and each ``README.md`` table row that names a file in
    backquotes next to a 64-digit hex sha256."""
    import re

    data_dir = Path(data_dir)
    out: dict[Path, str] = {}
    for card_path in sorted(data_dir.rglob("*.json")):
        try:
            card = json.loads(card_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{card_path} is not valid JSON ({e}); restore it from the repository") from None
        if isinstance(card, dict) and isinstance(card.get("sha256"), str) and isinstance(card.get("weights"), str):
            out[card_path.parent / card["weights"]] = card["sha256"]
    for readme in sorted(data_dir.rglob("README.md")):
        for line in readme.read_text().splitlines():
            digests = re.findall(r"\b[0-9a-f]{64}\b", line)
            names = [n for n in re.findall(r"`([^`\s]+)`", line) if not re.fullmatch(r"[0-9a-f]{64}", n)
                     and not any(c in n for c in "*?[")]
            if len(digests) == 1 and names:
                out[readme.parent / names[0]] = digests[0]
    return out


def verify_shipped(data_dir=None) -> list[Path]:
    """Check every file under ``data_dir`` (default: ``emd_lib.DATA_DIR``) that has a recorded sha256
    (see :func:`shipped_checksums`); raise :class:`CheckpointError` on the first mismatch or
    missing file. Returns the files checked."""
    if data_dir is None:
        from .. import DATA_DIR as data_dir
    checked = []
    for path, digest in shipped_checksums(data_dir).items():
        checked.append(verify_file(path, digest))
    return checked


def machine(dev=None) -> str:
    """The machine in words for a card: ``"2-core CPU (2 torch threads), torch 2.13.0+cpu"``, or on a
    GPU its name and the torch version."""
    dev = torch.device(dev or "cpu")
    if dev.type == "cuda":
        return f"{torch.cuda.get_device_name(dev)}, torch {torch.__version__}"
    return f"{os.cpu_count()}-core CPU ({torch.get_num_threads()} torch threads), torch {torch.__version__}"


def run_card(argv=None, module: str | None = None, **extra) -> dict:
    """The common part of every card: the exact command (``python -m module args``) and the date (UTC)."""
    argv = sys.argv[1:] if argv is None else argv
    if module:                       # as the user types it: python -m emd_lib COMMAND
        if module.startswith("emd_lib.commands."):
            module = "emd_lib " + module.rsplit(".", 1)[1]
        elif module.startswith("emd_lib.experiments."):
            module = "emd_lib experiment " + module.rsplit(".", 1)[1]
    cmd = f"python -m {module} " if module else "python " + (sys.argv[0] + " " if sys.argv else "")
    return {"command": (cmd + shlex.join(argv)).strip(),
            "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), **extra}
