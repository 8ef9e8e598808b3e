"""The benchmark command on tiny stand-ins (CPU)."""
import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from emd_lib.commands.bench import main
from emd_lib.runs.timing import time_round_robin
from emd_lib.scale.bench import FlopCount, bench, bench_table, format_table, matmul_peak, pass_counts


def test_flop_count_matches_torch_flop_counter():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Flatten(), torch.nn.Linear(8 * 6 * 6, 5))
    x = torch.randn(4, 3, 8, 8)
    with FlopCounterMode(display=False) as a:
        net(x).sum().backward()
    with FlopCount() as b:
        net(x).sum().backward()
    assert a.get_total_flops() == b.total > 0


def test_bench_times_di_and_emd_and_sampling_on_a_tiny_image_teacher():
    info = bench("imagenet64", methods=[("di", 1), ("emd", 1), ("emd", 4)], tiny=True, steps=1, warmup=0,
                 sampler_steps=2, quiet=True)
    rows = {r["method"]: r for r in info["rows"]}
    assert list(rows) == ["Diff-Instruct", "EMD-1", "EMD-4"]
    for r in rows.values():
        assert r["sec_per_step"] > 0 and r["img_per_s"] > 0 and r["peak_mb"] > 0 and r["tflops"] > 0
    # each Langevin step adds a teacher and a student evaluation (and, with z moving, a VJP)
    assert rows["EMD-4"]["tflop_per_step"] > rows["EMD-1"]["tflop_per_step"] > 0
    assert info["sampling"]["teacher_nfe"] == 3 and info["sampling"]["generator_img_per_s"] > 0
    table = format_table(info)
    assert "EMD-4" in table and "TFLOP/s" in table and "NFE" in table


def test_bench_command_writes_json(tmp_path, capsys):
    out = tmp_path / "b.json"
    rc = main(["--config", "toy", "--method", "emd", "--langevin-steps", "2", "--batch", "64", "--steps", "2",
               "--warmup", "1", "--sampler-steps", "2", "--json", str(out), "width=32", "depth=2"])
    assert rc == 0
    info = json.loads(out.read_text())
    assert [r["method"] for r in info["rows"]] == ["EMD-2"] and "command" in info
    assert "EMD-2" in capsys.readouterr().out
    assert main(["--config", "toy", "--steps", "1", "bogus=1"]) == 2


def test_pass_counts_account_for_every_flop_of_a_step():
    # a step's counted FLOPs are exactly its passes' FLOPs: the E-step makes no pass it does not need
    for over, methods in (((), [("di", 1), ("emd", 1), ("emd", 3)]), (("langevin.move_z=false",), [("emd", 2)]),
                           (("langevin.space=x", "langevin.move_z=true"), [("emd", 2)]),
                           (("student_updates=2",), [("di", 1), ("emd", 2)])):
        info = bench("imagenet64", methods=methods, tiny=True, steps=1, warmup=0, sampler_steps=2, quiet=True,
                     time_passes=True, overrides=over, peak=False)
        pt = info["pass_times"]
        assert pt["vjp"]["tflop"] > pt["forward"]["tflop"] > 0 and pt["train"]["tflop"] > pt["vjp"]["tflop"]
        for r in info["rows"]:
            from_passes = sum(n * pt[k]["tflop"] for k, n in r["passes"].items())
            assert abs(from_passes / r["tflop_per_step"] - 1) < 1e-9, (over, r["method"])
            assert r["predicted_sec"] > 0
    assert pass_counts("emd", 8) == {"forward": 17, "vjp": 8, "train": 2}
    assert pass_counts("di") == {"forward": 3, "vjp": 0, "train": 2}
    assert pass_counts("emd", 2, move_z=False) == {"forward": 5, "vjp": 0, "train": 2}
    assert pass_counts("emd", 2, space="x") == {"forward": 7, "vjp": 2, "train": 2}
    assert pass_counts("emd", 2, student_updates=3) == {"forward": 7, "vjp": 2, "train": 4}
    assert pass_counts("emd", 2, guided=True) == {"forward": 7, "vjp": 2, "train": 2}     # 2 teacher calls, doubled


def test_time_limit_skips_what_would_not_fit_and_says_so(tmp_path):
    # the first row always runs (nothing predicts it); with no time left, the rest are named, not timed
    out = tmp_path / "b.json"
    assert main(["--config", "toy", "--langevin-steps", "1,2", "--batch", "32", "--steps", "1", "--warmup", "0",
                 "--sampler-steps", "2", "--no-peak", "--passes", "--time-limit", "1e-6", "--json", str(out),
                 "width=16", "depth=2"]) == 0
    info = json.loads(out.read_text())
    assert [r["method"] for r in info["rows"]] == ["Diff-Instruct"]
    assert info["note"].endswith("not timed: EMD-1, EMD-2, the pass timings, the sampling comparison")
    assert "sampling" not in info and "pass_times" not in info and "--time-limit 1e-6" in info["command"]
    # a limit that is not reached changes nothing
    info = bench("toy", methods=[("di", 1), ("emd", 1)], batch=32, steps=1, warmup=0, sampler_steps=2, quiet=True,
                 peak=False, overrides=["width=16", "depth=2"], time_limit=3600)
    assert [r["method"] for r in info["rows"]] == ["Diff-Instruct", "EMD-1"] and "note" not in info
    assert info["sampling"]["teacher_nfe"] == 3
    for bad in ("0", "-5", "nan"):
        with pytest.raises(SystemExit):
            main(["--config", "toy", "--time-limit", bad])


def test_matmul_peak_and_table_extras():
    pk = matmul_peak("cpu", n=64, iters=2)
    assert pk["dtype"] == "float32" and pk["n"] == 64 and pk["tflops"] > 0
    info = {"config": "c", "arch": "a", "params_per_network": 1e6, "device_name": "d", "device": "cpu", "batch": 2,
            "precision": "fp32", "compile": False, "cuda_graphs": False, "peak": pk, "note": "stopped early",
            "rows": [{"method": "EMD-1", "sec_per_step": 1.0, "img_per_s": 2.0, "peak_mb": 3.0, "tflop_per_step": 1.0,
                      "tflops": 1.0}]}
    table = format_table(info)
    assert "note: stopped early" in table and "matrix rate" in table
    row = next(line for line in table.splitlines() if line.startswith("EMD-1"))
    assert row.split()[2] == "-"                              # no Diff-Instruct row: no ratio
    html = bench_table(info)._repr_html_()
    assert "<caption>" in html and "matrix rate" in html and html.count("<tr>") == 2


def test_bench_command_takes_a_list_of_k_and_rejects_a_bad_one(tmp_path, capsys):
    out = tmp_path / "b.json"
    assert main(["--config", "toy", "--langevin-steps", "1,2", "--batch", "32", "--steps", "1", "--warmup", "0",
                 "--sampler-steps", "2", "--no-peak", "--json", str(out), "width=16", "depth=2"]) == 0
    info = json.loads(out.read_text())
    assert [r["method"] for r in info["rows"]] == ["Diff-Instruct", "EMD-1", "EMD-2"]
    assert info["rows"][0]["ratio_to_di"] == 1.0 and info["rows"][2]["ratio_to_di"] > 0
    for bad in ("1,x", "-1"):
        with pytest.raises(SystemExit):
            main(["--config", "toy", "--langevin-steps", bad])
        assert "--langevin-steps" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_graphs_without_a_cuda_device_is_refused(capsys):
    assert main(["--config", "toy", "--cuda-graphs", "--steps", "1", "width=16", "depth=2"]) == 2
    assert "needs a CUDA device" in capsys.readouterr().err


def test_toy_cost_table_and_round_robin_timer(tmp_path):
    from emd_lib.commands import bench_toy

    t = time_round_robin({"a": lambda: None, "b": lambda: sum(range(2000))}, calls=3, rounds=3)
    assert len(t["a"]["all"]) == 3 and t["b"]["median"] > 0
    for move_z in (False, True):
        out = tmp_path / f"t{move_z}.json"
        bench_toy.main(["--steps", "5", "--batch", "32", "--ks", "1,2", "--threads", "1", "--json", str(out)]
                       + (["--move-z"] if move_z else []))
        d = json.loads(out.read_text())
        assert list(d["ratio_to_di"]) == ["Diff-Instruct", "EMD-1", "EMD-2"] and d["ratio_to_di"]["Diff-Instruct"] == 1
        assert d["predicted_ratio"]["EMD-2"] > d["predicted_ratio"]["EMD-1"] >= 1
        assert (d["pieces_s"]["generator fwd+VJP"] > 0) == move_z and d["command"].endswith(str(out) + (" --move-z" if move_z else ""))
