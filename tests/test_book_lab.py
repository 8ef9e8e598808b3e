"""``make lab``: a real Jupyter server on localhost serves the chapters as notebooks."""
import json
import os
import secrets
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from emd_lib.book import lab

ROOT = Path(__file__).resolve().parent.parent


def test_overrides_make_jupytext_the_default_viewer_of_python_files(tmp_path):
    path = lab.write_overrides(tmp_path)
    assert path == tmp_path / "share/jupyter/lab/settings/overrides.json"
    data = json.loads(path.read_text())
    assert data["@jupyterlab/docmanager-extension:plugin"]["defaultViewers"] == {"python": "Jupytext Notebook"}
    # other settings already there are kept
    data["@jupyterlab/apputils-extension:themes"] = {"theme": "JupyterLab Dark"}
    path.write_text(json.dumps(data))
    again = json.loads(lab.write_overrides(tmp_path).read_text())
    assert again["@jupyterlab/apputils-extension:themes"] == {"theme": "JupyterLab Dark"}


def test_lab_command_allows_root_only_as_root():
    cmd = lab.lab_command(["--no-browser"])
    assert cmd[1:4] == ["-m", "jupyter", "lab"] and cmd[-1] == "--no-browser"
    assert ("--allow-root" in cmd) == (os.geteuid() == 0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url, token, timeout=10):
    req = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.load(r)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    lab.write_overrides()  # what `make lab` does, in this environment
    port, token = _free_port(), secrets.token_hex(16)
    home = tmp_path_factory.mktemp("jupyter")
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(home / "runtime"), JUPYTER_CONFIG_DIR=str(home / "config"),
               JUPYTER_DATA_DIR=str(home / "data"))
    cmd = lab.lab_command(["--no-browser", "--ip=127.0.0.1", f"--port={port}", "--ServerApp.port_retries=0",
                           f"--IdentityProvider.token={token}", "--LabApp.extension_manager=readonly",
                           "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"])
    log = open(home / "server.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while True:
        try:
            _get(f"{base}/api/status", token, timeout=2)
            break
        except (urllib.error.URLError, ConnectionError, OSError):
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                pytest.fail("jupyter lab did not start:\n" + (home / "server.log").read_text()[-3000:])
            time.sleep(0.3)
    yield base, token
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def test_contents_api_returns_a_chapter_as_a_notebook(server):
    base, token = server
    chapter = sorted((ROOT / "chapters").glob("[0-9][0-9]_*.py"))[0].name
    model = _get(f"{base}/api/contents/chapters/{chapter}", token)
    assert model["type"] == "notebook", model["type"]
    cells = model["content"]["cells"]
    assert cells[0]["cell_type"] == "markdown" and cells[0]["source"].startswith("# ")
    assert any(c["cell_type"] == "code" for c in cells)


def test_lab_settings_open_python_files_with_jupytext(server):
    base, token = server
    plugin = _get(f"{base}/lab/api/settings/@jupyterlab/docmanager-extension:plugin", token)
    assert plugin["schema"]["properties"]["defaultViewers"]["default"] == {"python": "Jupytext Notebook"}


def test_requests_without_the_token_are_refused(server):
    base, _ = server
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"{base}/api/contents/chapters", timeout=10)
    assert e.value.code == 403
