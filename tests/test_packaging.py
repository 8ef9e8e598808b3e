"""The library as a wheel: built from the repository, installed (not editable) and run from a folder
outside the clone, with its configs as package data and the commands under ``python -m emd_lib``."""
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A wheel of the repository installed into a folder of its own: ``(site folder, wheel)``."""
    tmp = tmp_path_factory.mktemp("wheel")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                        "-w", str(tmp / "dist"), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    wheel = next((tmp / "dist").glob("emd_lib-*.whl"))
    site = tmp / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(site), str(wheel)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return site, wheel


def run_outside(site, tmp_path, *args):
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    env.pop("EMD_DATA", None)
    return subprocess.run([sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def test_the_wheel_holds_the_package_its_configs_and_the_licence(installed):
    _, wheel = installed
    names = zipfile.ZipFile(wheel).namelist()
    assert "emd_lib/configs/toy.yaml" in names and "emd_lib/configs/sd15.yaml" in names
    assert "emd_lib/commands/toy.py" in names and "emd_lib/scale/train.py" in names
    assert any(n.endswith("licenses/LICENSE") or n.endswith("/LICENSE") for n in names)
    assert not any(n.startswith(("chapters/", "tests/", "data/")) for n in names)


def test_installed_library_runs_its_commands_from_another_folder(installed, tmp_path):
    site, _ = installed
    r = run_outside(site, tmp_path, "-c", "import emd_lib; print(emd_lib.__file__)")
    assert r.returncode == 0 and r.stdout.strip().startswith(str(site)), (r.stdout, r.stderr)   # not the clone
    r = run_outside(site, tmp_path, "-m", "emd_lib", "--help")
    assert r.returncode == 0 and all(c in r.stdout for c in ("toy", "train", "bench", "evaluate", "book", "grade"))
    r = run_outside(site, tmp_path, "-m", "emd_lib", "train", "--config", "toy", "steps=3", "out=run",
                    "batch=64", "width=32", "depth=2", "init_steps=2", "student_warmup=1", "progress=false",
                    "tensorboard=false")
    assert r.returncode == 0, r.stderr[-2000:]
    assert any((tmp_path / "run" / "checkpoints").glob("step_00000003.json"))
    r = run_outside(site, tmp_path, "-m", "emd_lib", "toy", "--mixture", "ring8", "--steps", "20", "--init-steps", "5",
                    "--warmup", "5", "--n-samples", "200", "--samples", "out.npy", "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    assert np.load(tmp_path / "out.npy").shape == (200, 2)


def test_installed_library_names_the_data_folder_when_shipped_models_are_missing(installed, tmp_path):
    site, _ = installed
    r = run_outside(site, tmp_path, "-m", "emd_lib", "sample", "--checkpoint", str(site / "data" / "mnist_emd"),
                    "--n", "4", "--out", "x.npy")
    assert r.returncode != 0
    assert "EMD_DATA" in r.stderr and "data/" in r.stderr, r.stderr[-1000:]
