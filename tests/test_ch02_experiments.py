"""emd_lib.experiments.ch02: one tiny run end to end, JSON-ready output."""
import json

from emd_lib.experiments.ch02 import _linear_generator, run_one



def test_run_one_linear_is_json_ready():
    r = run_one("bimodal", "di", seed=0, steps=4, generator="linear", eval_every=2, n_eval=200, n_final=300,
                keep_samples=10, student_warmup=2, width=16)
    json.dumps(r)
    assert r["history"]["step"] == [2, 4] and len(r["history"]["masses"][0]) == 2
    assert set(r["final"]) >= {"tv", "modes_covered", "recall", "precision", "masses"}
    assert len(r["samples"]) == 10 and len(r["b"]) == 2
    assert r["b0"] == _linear_generator(0).b.tolist()


def test_run_one_mlp_emd():
    r = run_one("ring8", "emd", seed=1, steps=2, generator="mlp", eval_every=0, n_eval=200, n_final=300,
                student_warmup=1, init_steps=2, width=16, depth=1)
    assert r["history"]["step"] == [2] and r["final"]["n_modes"] == 8
