"""Timing on a shared machine: functions timed in turns, so that a change of load falls on all of them alike."""
from __future__ import annotations

import statistics
import time

__all__ = ["time_round_robin"]


def time_round_robin(fns: dict, calls: int, rounds: int = 5, warmup: int = 1) -> dict:
    """Seconds per call of each function, timed round-robin: ``rounds`` rounds of ``calls`` calls
    each, so that a change of load on a shared machine hits them all alike. Returns
    ``{name: {"median": s, "all": [per-round means]}}``."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    per = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            per[k].append((time.perf_counter() - t0) / calls)
    return {k: {"median": statistics.median(v), "all": v} for k, v in per.items()}
