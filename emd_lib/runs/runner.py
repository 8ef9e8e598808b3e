"""The wall-time runner of the MNIST commands (``train_teacher``, ``distill_images``).

:func:`run_steps` runs a step function for ``--steps`` steps, or for ``--minutes`` of wall time,
saves every ``--save-every`` seconds, and saves on Ctrl-C before exiting with status 130. With
``--minutes`` and no ``--horizon``, the first step is timed and the learning-rate horizon is sized
from it (at most ``--steps``); the card records that ``horizon``, so that ``--steps STEPS --horizon
HORIZON`` (no ``--minutes``) repeats such a run step for step. At the end it saves the complete
checkpoint and says so.
"""
from __future__ import annotations

import time
from typing import Callable

from .checkpoint import exit_interrupted

__all__ = ["run_steps"]


def run_steps(step: Callable[[int, int], None], *, steps: int, horizon: int | None = None, minutes: float = 0.0,
              save: Callable[..., dict], save_every: float = 600.0, out=None, t0: float | None = None,
              desc: str = "steps", status: Callable[[], dict] | None = None, quiet: bool = False) -> dict:
    """Run ``step(i, horizon)`` for ``i = 0, 1, ...``; save the complete checkpoint and return its card.

    ``horizon``: the steps of the learning-rate decay (default ``steps``; with ``minutes`` and no
    ``horizon``, sized from the first step's time: ``(budget - time since t0) / first step + 1``).
    The run stops after ``steps`` steps, or with ``minutes`` after ``min(steps, horizon)`` steps or
    when the time is up. ``save(complete=..., horizon=..., **extra)`` writes the checkpoint ``out``
    and returns its card (with ``steps``, ``horizon`` and ``wall_time_s``); it is called every
    ``save_every`` seconds, on Ctrl-C (``interrupted=True``, then exit with status 130; a Ctrl-C
    before the first step propagates) and at the end (``complete=True``). ``t0``: when the wall
    clock started (default: now; a warm-up before the steps counts when the caller passes its
    start). ``status()`` gives the progress bar's numbers.
    """
    t0 = time.perf_counter() if t0 is None else t0
    budget = 60.0 * minutes
    sized = budget > 0 and horizon is None
    horizon = horizon or steps
    limit = min(steps, horizon) if budget else steps
    done, last = 0, time.perf_counter()
    bar = None
    try:
        while done < limit:
            t1 = time.perf_counter()
            step(done, horizon)
            done += 1
            now = time.perf_counter()
            if done == 1 and sized:
                # the first step's learning rate does not depend on the horizon, so a run with
                # --steps N --horizon H repeats this one step for step
                horizon = max(1, min(steps, int((budget - (now - t0)) / max(now - t1, 1e-9)) + 1))
                limit = min(steps, horizon)
            if not quiet:
                if bar is None:
                    from tqdm.auto import tqdm
                    bar = tqdm(total=limit, desc=desc, mininterval=2.0, initial=done)
                else:
                    bar.update()
                if status is not None and done % 10 == 0:
                    bar.set_postfix({k: f"{v:.4g}" for k, v in status().items()}, refresh=False)
            if budget and now - t0 >= budget:
                break
            if now - last > save_every and done < limit:
                save(complete=False, horizon=horizon)
                last = time.perf_counter()
    except KeyboardInterrupt:
        if bar is not None:
            bar.close()
        if done == 0:
            raise
        save(complete=False, horizon=horizon, interrupted=True)
        exit_interrupted(out, done, horizon)
    if bar is not None:
        bar.close()
    card = save(complete=True, horizon=horizon)
    if not quiet:
        print(f"saved {out}.safetensors after {card['steps']} steps of a {card['horizon']}-step horizon "
              f"({card['wall_time_s']:.0f} s)")
    return card
