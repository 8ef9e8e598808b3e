"""The benchmark command on tiny stand-ins (CPU)."""
import json

import torch
from torch.utils.flop_counter import FlopCounterMode

from emd_lib.bench import FlopCount, bench, format_table, main


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
