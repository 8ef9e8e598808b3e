"""Checkpoints: round trip, every way a file can be damaged, safe loading, shipped files verified."""
import ast
import hashlib
import json
import pickle
import re

import pytest
import torch

from emd_lib import DATA_DIR, ROOT
from emd_lib.runs.checkpoint import (CheckpointError, load_checkpoint, load_pickle, load_state_into, read_card,
                                save_checkpoint, shipped_checksums, verify_file, verify_shipped)


def small_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))


@pytest.fixture
def ckpt(tmp_path):
    net = small_net()
    card = save_checkpoint(tmp_path / "net", net.state_dict(), {"command": "test", "steps": 7})
    return tmp_path / "net", net, card


def test_round_trip(ckpt):
    path, net, card = ckpt
    state, card2 = load_checkpoint(path)
    assert card2 == card and card2["steps"] == 7 and card2["weights"] == "net.safetensors"
    assert card2["sha256"] == hashlib.sha256(path.with_suffix(".safetensors").read_bytes()).hexdigest()
    for k, v in net.state_dict().items():
        torch.testing.assert_close(state[k], v, rtol=0, atol=0)
    fresh = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    assert load_state_into(fresh, path.with_suffix(".json")) == card   # NAME.json names it too
    x = torch.randn(5, 3)
    torch.testing.assert_close(fresh(x), net(x), rtol=0, atol=0)
    assert not list(path.parent.glob(".*.tmp"))                         # no temporary files left


def test_sha256_mismatch(ckpt):
    path, _, _ = ckpt
    w = path.with_suffix(".safetensors")
    data = bytearray(w.read_bytes())
    data[-1] ^= 0xFF                                                    # one flipped byte in the tensor data
    w.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match its card"):
        load_checkpoint(path)


def test_truncated_weights(ckpt):
    path, _, _ = ckpt
    w = path.with_suffix(".safetensors")
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_checkpoint(path, verify=False)


@pytest.mark.parametrize("card_text, message", [
    (None, "cut off"),                       # truncated card
    ("", "not valid JSON"),
    ('["a", "list"]', "not an object"),
    ('{"weights": "net.safetensors"}', "records no sha256"),
])
def test_truncated_or_invalid_card(ckpt, card_text, message):
    path, _, _ = ckpt
    c = path.with_suffix(".json")
    c.write_text(c.read_text()[:20] if card_text is None else card_text)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_missing_files(ckpt, tmp_path):
    path, _, _ = ckpt
    path.with_suffix(".safetensors").unlink()
    with pytest.raises(CheckpointError, match="weights file beside the card, .* is missing"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="no checkpoint card"):
        read_card(tmp_path / "other")


def test_nan_refused_and_previous_checkpoint_untouched(ckpt):
    path, net, card = ckpt
    before = {p: p.read_bytes() for p in (path.with_suffix(".safetensors"), path.with_suffix(".json"))}
    bad = {k: v.clone() for k, v in net.state_dict().items()}
    bad["0.weight"][0, 0] = float("nan")
    with pytest.raises(CheckpointError, match="NaN or inf"):
        save_checkpoint(path, bad, {"command": "blown up"})
    bad["0.weight"][0, 0] = float("inf")
    with pytest.raises(CheckpointError, match="NaN or inf"):
        save_checkpoint(path, bad, {"command": "blown up"})
    assert {p: p.read_bytes() for p in before} == before
    assert load_checkpoint(path)[1] == card
    assert not list(path.parent.glob(".*.tmp"))


def test_non_tensor_entry_refused(tmp_path):
    with pytest.raises(CheckpointError, match="not a tensor"):
        save_checkpoint(tmp_path / "x", {"step": 3})


def test_mismatched_keys_and_shapes(ckpt):
    path, _, _ = ckpt
    wider = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2))
    with pytest.raises(CheckpointError, match=r"shape mismatch 0.weight: \(4, 3\) vs \(5, 3\)"):
        load_state_into(wider, path)
    deeper = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2), torch.nn.Linear(2, 2))
    with pytest.raises(CheckpointError, match=r"missing \['3.bias', '3.weight'\]"):
        load_state_into(deeper, path)
    shallower = torch.nn.Sequential(torch.nn.Linear(3, 4))
    before = shallower[0].weight.detach().clone()
    with pytest.raises(CheckpointError, match=r"unexpected \['2.bias', '2.weight'\]"):
        load_state_into(shallower, path)
    torch.testing.assert_close(shallower[0].weight.detach(), before, rtol=0, atol=0)   # left as it was


# ---- safe loading ------------------------------------------------------------------------------------
class _Boom:
    """Unpickling this object runs code (it creates a file): what a malicious file would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_load_pickle_refuses_without_trust(tmp_path):
    f, marker = tmp_path / "x.pkl", tmp_path / "code-ran"
    f.write_bytes(pickle.dumps(_Boom(marker)))
    with pytest.raises(CheckpointError, match="unpickling runs code.*trust=True"):
        load_pickle(f)
    assert not marker.exists()                                   # refused before reading a byte
    load_pickle(f, trust=True).close()
    assert marker.exists()                                       # and this is why


def test_load_pickle_trusted_files(tmp_path):
    f = tmp_path / "x.pkl"
    f.write_bytes(pickle.dumps({"a": [1, 2]}))
    assert load_pickle(f, trust=True) == {"a": [1, 2]}
    pt = tmp_path / "x.pt"
    torch.save({"w": torch.ones(2)}, pt)
    torch.testing.assert_close(load_pickle(pt, trust=True)["w"], torch.ones(2))
    with pytest.raises(CheckpointError, match="missing"):
        load_pickle(tmp_path / "nope.pkl", trust=True)


TRUST_ARGS = ("trust", "trust_pickle")


def _trust_gated(f: ast.FunctionDef) -> bool:
    """A function with a ``trust``/``trust_pickle`` argument that raises when it is false, as in
    ``if not trust: raise ...``: only such a function may unpickle."""
    args = {a.arg for a in f.args.args + f.args.kwonlyargs}
    for node in ast.walk(f):
        if isinstance(node, ast.If) and isinstance(node.test, ast.UnaryOp) and isinstance(node.test.op, ast.Not) \
                and isinstance(node.test.operand, ast.Name) and node.test.operand.id in args & set(TRUST_ARGS) \
                and any(isinstance(b, ast.Raise) for b in node.body):
            return True
    return False


def unsafe_loads(source: str, filename: str = "<src>") -> list[str]:
    """Calls that unpickle without ``weights_only=True`` outside a trust-gated function
    (``load_pickle(path, trust=False)`` and the like): ``torch.load`` under any spelling,
    ``pickle.load(s)``, ``from pickle import load``."""
    tree = ast.parse(source, filename)
    allowed = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
               and _trust_gated(f) for n in ast.walk(f)}
    bad = []
    for node in ast.walk(tree):
        if id(node) in allowed:
            continue
        if isinstance(node, ast.ImportFrom) and node.module in ("torch", "pickle", "dill", "cloudpickle") and \
                any(a.name in ("load", "loads", "Unpickler") for a in node.names):
            bad.append(f"{filename}:{node.lineno}: from {node.module} import load")
        if isinstance(node, ast.Attribute) and node.attr in ("load", "loads", "Unpickler") and \
                isinstance(node.value, ast.Name) and node.value.id in ("pickle", "dill", "cloudpickle", "cPickle"):
            bad.append(f"{filename}:{node.lineno}: {node.value.id}.{node.attr}")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" and \
                isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
            kw = {k.arg: k.value for k in node.keywords}
            ok = isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True
            if not ok:
                bad.append(f"{filename}:{node.lineno}: torch.load without weights_only=True")
    # torch.load used without being called (aliased, passed around)
    called = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    for node in ast.walk(tree):
        if id(node) not in allowed and isinstance(node, ast.Attribute) and node.attr == "load" and \
                isinstance(node.value, ast.Name) and node.value.id == "torch" and id(node) not in called:
            bad.append(f"{filename}:{node.lineno}: torch.load aliased")
    return bad


def test_the_scanner_catches_unsafe_loads():
    assert unsafe_loads("import torch\ntorch.load('x')\n")
    assert unsafe_loads("import torch\ntorch.load('x', weights_only=False)\n")
    assert unsafe_loads("import torch\nf = torch.load\n")
    assert unsafe_loads("import pickle\npickle.loads(b'')\n")
    assert unsafe_loads("from torch import load\n")
    assert not unsafe_loads("import torch\ntorch.load('x', map_location='cpu', weights_only=True)\n")
    assert unsafe_loads("def load_pickle(p, trust=False):\n    import pickle\n    return pickle.load(p)\n")
    gated = "def load_pickle(p, trust=False):\n    if not trust:\n        raise ValueError('no')\n" \
            "    import pickle\n    return pickle.load(p)\n"
    assert not unsafe_loads(gated)
    assert not unsafe_loads(gated.replace("trust", "trust_pickle"))
    assert unsafe_loads(gated.replace("if not trust", "if trust"))


def test_no_unsafe_loads_in_the_library():
    files = sorted((ROOT / "emd_lib").rglob("*.py"))
    assert len(files) > 10
    bad = [b for f in files for b in unsafe_loads(f.read_text(), str(f.relative_to(ROOT)))]
    assert bad == [], "unpickling without weights_only=True (use safetensors or load_pickle(..., trust=True)):\n" \
        + "\n".join(bad)
    # and the plain-text view agrees: every torch.load( passes weights_only=True or sits in a gated function
    for f in files:
        text = f.read_text()
        gated = [(fn.lineno, fn.end_lineno) for fn in ast.walk(ast.parse(text))
                 if isinstance(fn, ast.FunctionDef) and _trust_gated(fn)]
        for m in re.finditer(r"torch\.load\(", text):
            line = text.count("\n", 0, m.start()) + 1
            depth, end = 0, m.end() - 1
            for end in range(m.end() - 1, len(text)):          # to the matching parenthesis
                depth += {"(": 1, ")": -1}.get(text[end], 0)
                if depth == 0:
                    break
            call = text[m.start(): end + 1]
            assert "weights_only=True" in call or any(a <= line <= b for a, b in gated), f"{f}:{line}: {call}"


# ---- shipped files ----------------------------------------------------------------------------------
def test_shipped_files_match_their_sha256():
    recorded = shipped_checksums(DATA_DIR)
    checked = verify_shipped(DATA_DIR)
    assert sorted(checked) == sorted(recorded)
    for path, digest in recorded.items():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, path
    # every checkpoint card under data/ records a sha256, so every shipped checkpoint is among them
    for c in DATA_DIR.rglob("*.json"):
        card = json.loads(c.read_text())
        if isinstance(card, dict) and str(card.get("weights", "")).endswith(".safetensors"):
            assert isinstance(card.get("sha256"), str), f"{c} names weights but records no sha256"
            assert c.parent / card["weights"] in recorded


def test_shipped_check_catches_a_changed_file(tmp_path):
    save_checkpoint(tmp_path / "teacher", small_net().state_dict(), {"command": "test"})
    blob = tmp_path / "table.bin"
    blob.write_bytes(b"abc")
    digest = hashlib.sha256(b"abc").hexdigest()
    (tmp_path / "README.md").write_text(f"| path | sha256 |\n|---|---|\n| `table.bin` | `{digest}` |\n")
    assert sorted(p.name for p in verify_shipped(tmp_path)) == ["table.bin", "teacher.safetensors"]
    blob.write_bytes(b"abd")
    with pytest.raises(CheckpointError, match="table.bin has sha256"):
        verify_shipped(tmp_path)
    blob.unlink()
    with pytest.raises(CheckpointError, match="missing"):
        verify_file(blob, digest)


def test_loaded_tensors_do_not_share_memory_with_the_file(ckpt):
    """A resumed run deletes old checkpoints: the loaded state must be its own memory, not a mapping of
    the file (which would keep a deleted file's space and, elsewhere, refuse the deletion)."""
    path, net, _ = ckpt
    state, _ = load_checkpoint(path)
    before = {k: v.clone() for k, v in state.items()}
    weights = path.with_suffix(".safetensors")
    size = weights.stat().st_size
    with open(weights, "r+b") as f:                     # overwrite the file in place
        f.write(b"\0" * size)
    assert all(torch.equal(state[k], before[k]) for k in state)
