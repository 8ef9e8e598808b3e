"""The scale benchmark's command line: ``python -m emd_lib bench`` (the library is :mod:`emd_lib.scale.bench`)."""
from __future__ import annotations
import argparse
import math
import sys
import time
import torch
from ..runs.checkpoint import write_json
from ..scale.train import ConfigError, load_config
from ..scale.bench import bench, format_table



def _ks(text: str) -> list[int]:
    try:
        ks = [int(k) for k in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected K or a list such as 1,2,4,8, got {text!r}") from None
    if any(k < 0 for k in ks):
        raise argparse.ArgumentTypeError(f"Langevin steps must be >= 0, got {text!r}")
    return ks


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m emd_lib bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True, help="toy, mnist, imagenet64, imagenet128, sd15 or a YAML file")
    ap.add_argument("--method", choices=["emd", "di"], help="one method (default: DI and EMD-1/2/4/8/16)")
    ap.add_argument("--langevin-steps", type=_ks, help="K for --method emd (default: the config's); a list such "
                    "as 1,2,4,8 times each of them (and Diff-Instruct, unless --method emd)")
    ap.add_argument("--batch", type=int, help="batch per step (default: 32 for the image configs)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per method")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per method")
    ap.add_argument("--sampler-steps", type=int, default=40, help="Heun steps of the teacher's sampler (2n-1 NFE)")
    ap.add_argument("--tiny", action="store_true", help="tiny random stand-ins (CPU)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the networks")
    ap.add_argument("--cuda-graphs", action="store_true", help="torch.compile mode='reduce-overhead' (CUDA graphs)")
    ap.add_argument("--channels-last", action="store_true", help="networks in NHWC memory (channels_last=true)")
    ap.add_argument("--passes", action="store_true",
                    help="also time one forward, input-VJP and training pass, and sum them per step")
    ap.add_argument("--no-peak", action="store_true", help="skip measuring the matrix rate")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--json", help="also write the results to this JSON file")
    ap.add_argument("--time-limit", type=float, metavar="SECONDS",
                    help="skip the rows (and the pass timings, the sampling comparison) that would not end within "
                         "this many seconds; they are named in the JSON's note")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. precision=fp32")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.time_limit is not None and not (math.isfinite(args.time_limit) and args.time_limit > 0):
        ap.error(f"--time-limit must be a number of seconds > 0, got {args.time_limit}")
    ks = args.langevin_steps
    methods = None
    if args.method == "di":
        methods = [("di", 1)]
    elif args.method == "emd":
        methods = [("emd", k) for k in (ks or [load_config(args.config).langevin.K])]
    elif ks is not None:
        methods = ([("di", 1)] if len(ks) > 1 else []) + [("emd", k) for k in ks]
    command = "python -m emd_lib bench " + " ".join(sys.argv[1:] if argv is None else argv)

    def write(info):
        if args.json:
            write_json(args.json, dict(info, command=command, date=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())),
                       indent=2)

    try:
        over = list(args.overrides) + (["channels_last=true"] if args.channels_last else [])
        info = bench(args.config, methods, args.batch, args.steps, args.warmup, args.tiny, args.compile,
                     args.cuda_graphs, args.sampler_steps, overrides=over, peak=not args.no_peak,
                     time_passes=args.passes, on_row=write, time_limit=args.time_limit)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_table(info))
    write(info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
