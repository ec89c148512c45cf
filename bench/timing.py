"""How every library is timed: the same function for all of them, one library's block at a time."""
import gc
import statistics
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Timing:
    warmup: int = 2  # untimed runs before each block
    repeats: int = 7  # timed runs per block
    blocks: int = 3
    short_repeats: int = 31  # timed runs per block when one run takes under 5 ms
    pause_s: float = 0.05


def time_runs(fn, timing, setup=None):
    """Wall time (seconds) of fn(): the smallest of `blocks` block medians, with a pause before each block.

    The pause lets the previous library's idle threads stop spinning (libgomp and ONNX Runtime spin for a
    while after a parallel region), so no library is timed against another's busy-waiting threads. Taking the
    best block median discards a block that a noisy neighbour slowed down, without taking the single luckiest
    run. setup() runs before every call, outside the timed region.
    Returns (time, all times, last result).
    """
    out = None
    all_times, block_medians = [], []
    for _ in range(timing.blocks):
        time.sleep(timing.pause_s)
        for _ in range(timing.warmup):
            if setup is not None:
                setup()
            out = fn()
        # Short runs are noisier (a preempted thread costs a whole step): take more of them.
        if setup is not None:
            setup()
        t0 = time.perf_counter()
        out = fn()
        n = max(timing.repeats, timing.short_repeats) if time.perf_counter() - t0 < 0.005 else timing.repeats
        times = []
        gc_was_enabled = gc.isenabled()
        gc.collect()
        gc.disable()
        try:
            for _ in range(n):
                if setup is not None:
                    setup()
                t0 = time.perf_counter()
                out = fn()
                times.append(time.perf_counter() - t0)
        finally:
            if gc_was_enabled:
                gc.enable()
        block_medians.append(statistics.median(times))
        all_times += times
    return min(block_medians), all_times, out


def time_slow(fn, max_repeats, budget_s=20.0):
    """For the NumPy reference, which is slow: no warm-up, 1 to max_repeats runs, stop early when over budget."""
    times, out = [], None
    while len(times) < max_repeats:
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
        if sum(times) > budget_s:
            break
    return statistics.median(times), times, out
