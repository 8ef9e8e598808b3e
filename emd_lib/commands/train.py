"""The training command of every scale: ``python -m emd_lib train`` (the library is :mod:`emd_lib.scale.train`)."""
from __future__ import annotations

import argparse
import shlex
import sys

from ..runs.checkpoint import CheckpointError
from ..scale.train import (ConfigError, Interrupted, Trainer, TrainingFault, describe_failure, init_distributed,
                           leave_process_group, load_config)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m emd_lib train", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="a YAML file or a name in configs/ "
                    "(toy, mnist, imagenet64, imagenet128, sd15)")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="override settings, e.g. steps=1000 langevin.K=4")
    args = ap.parse_args(argv)
    from ..scale.adapters import AdapterError

    started = False
    cfg = tr = None
    try:
        cfg = load_config(args.config, args.overrides)
        started = init_distributed()
        tr = Trainer(cfg)
        tr.command = shlex.join(["python", "-m", "emd_lib", "train", *(sys.argv[1:] if argv is None else argv)])
        tr.run()
        if tr.rank == 0 and not tr.quiet:
            print(f"done: {tr.step} steps; checkpoint {tr.last_good}; log {tr.out / 'log.jsonl'}", file=sys.stderr)
        return 0
    except Interrupted as e:
        return 128 + int(e.sig)
    except KeyboardInterrupt:                      # before the training loop: nothing to save yet
        print("interrupted before the first step; nothing was saved", file=sys.stderr)
        return 130
    except (ConfigError, AdapterError, CheckpointError, TrainingFault) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1 if isinstance(e, TrainingFault) else 2
    except Exception as e:                         # anything else: one line, the traceback in OUT
        print(f"error: {describe_failure(e, tr, cfg.out_dir if cfg is not None else None)}", file=sys.stderr)
        return 1
    finally:
        if started:
            leave_process_group(tr)


if __name__ == "__main__":
    sys.exit(main())
