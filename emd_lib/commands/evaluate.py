"""The evaluation command at scale: ``python -m emd_lib evaluate`` (the library is :mod:`emd_lib.scale.evaluate`)."""
from __future__ import annotations
import argparse
import json
import sys
from pathlib import Path
import torch
from ..images.data import to_unit
from ..scale.adapters import AdapterError
from ..runs.checkpoint import CheckpointError
from ..scale.evaluate import _extractor, _load_run, check_inputs, coco_eval, imagenet_eval, load_clip


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m emd_lib evaluate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="a training run's folder (OUT of python -m emd_lib train)")
    ap.add_argument("--task", choices=["imagenet", "coco"], required=True)
    ap.add_argument("--ref", help="reference statistics .npz (mu, sigma); required for coco")
    ap.add_argument("--real-features", help="imagenet: .npz with 'features' of real images, for precision/recall")
    ap.add_argument("--captions", help="coco: a text file, one caption a line (30,000 for COCO-30k)")
    ap.add_argument("--clip", default="openai/clip-vit-large-patch14", help="coco: CLIP model (folder or hub id)")
    ap.add_argument("--n", type=int, default=50_000, help="imagenet: number of samples")
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument("--json", help="write the metrics to this file")
    args = ap.parse_args(argv)
    try:
        # every input first, then the feature networks, and only then the run (the costly part)
        got = check_inputs(args)
        from .. import device as default_device
        dev = torch.device(default_device())
        if args.task == "imagenet":
            extractor = _extractor(dev, logits=True)
            tr = _load_run(args.run)

            def sample(labels):
                x = tr.sample(len(labels), cond=labels.to(tr.device) if tr.prob.cond == "class" else None)
                return to_unit(x.float())                                 # model pixels [-1, 1] -> [0, 1]
            res = imagenet_eval(sample, args.n, args.batch, got.get("ref"), extractor=extractor,
                                num_classes=tr.prob.num_classes or 1000, real_features=got.get("real_features"),
                                device=tr.device)
        else:
            clip = load_clip(args.clip, dev)
            extractor = _extractor(dev, backend="clean-fid")
            tr = _load_run(args.run)

            def sample(c):
                return tr.prob.teacher.decode(tr.sample(len(c), cond=tr.prob.teacher.encode_prompts(c, tr.device)))
            res = coco_eval(sample, got["captions"], got["ref"], extractor=extractor, clip=clip,
                            batch=min(args.batch, 50), device=tr.device)
    except (ImportError, FileNotFoundError, ValueError, AdapterError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(res, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
