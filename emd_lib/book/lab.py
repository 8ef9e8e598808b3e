"""JupyterLab on the book, with the chapters opening as notebooks (``make lab``).

    python -m emd_lib lab [jupyter lab options...]

The chapters are py:percent text files. Jupytext (a requirement) lets Jupyter open them as
notebooks; this command makes that the default for Python files in JupyterLab, through a
settings override inside the environment (``<prefix>/share/jupyter/lab/settings/overrides.json``:
it touches no user settings), then starts ``jupyter lab`` in the repository, adding
``--allow-root`` when running as root. Outputs are not written back into the ``.py`` files.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from .. import ROOT

#: The settings JupyterLab reads as its defaults: double-clicking a ``.py`` file opens it
#: with jupytext's notebook view.
OVERRIDES = {
    "@jupyterlab/docmanager-extension:plugin": {
        "defaultViewers": {"python": "Jupytext Notebook"},
    },
}


def overrides_path(prefix: str | os.PathLike | None = None) -> Path:
    return Path(prefix or sys.prefix) / "share" / "jupyter" / "lab" / "settings" / "overrides.json"


def write_overrides(prefix: str | os.PathLike | None = None) -> Path:
    """Merge :data:`OVERRIDES` into the environment's ``overrides.json``; returns its path."""
    path = overrides_path(prefix)
    try:
        current = json.loads(path.read_text())
    except (OSError, ValueError):
        current = {}
    for plugin, settings in OVERRIDES.items():
        merged = dict(current.get(plugin, {}))
        for key, value in settings.items():
            merged[key] = {**merged.get(key, {}), **value} if isinstance(value, dict) else value
        current[plugin] = merged
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(current, indent=2) + "\n")
    return path


def lab_command(extra: list[str] | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "jupyter", "lab", f"--ServerApp.root_dir={ROOT}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    return cmd + list(extra or [])


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print("usage: python -m emd_lib lab [jupyter lab options ...]\n\n" + __doc__)
        return 0
    path = write_overrides()
    print(f"chapters open as notebooks (settings: {path})", flush=True)
    cmd = lab_command(argv)
    os.execv(cmd[0], cmd)  # replaces this process: Ctrl-C stops JupyterLab itself
    return 0  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
