"""How every library is timed: the same function for all of them, one library's block at a time, the libraries
taking turns block by block."""
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


def time_block(fn, timing, setup=None):
    """One timed block of fn(): a pause, warm-up runs, then `repeats` timed runs (more for runs under 5 ms).

    The pause lets the previous library's idle threads stop spinning (libgomp and ONNX Runtime spin for a
    while after a parallel region), so no library is timed against another's busy-waiting threads.
    setup() runs before every call, outside the timed region. Returns (median, times, last result).
    """
    time.sleep(timing.pause_s)
    out = None
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
    return statistics.median(times), times, out


def time_runs(fn, timing, setup=None):
    """Wall time (seconds) of fn(): the smallest of `blocks` block medians (time_block), one after the other.

    Taking the best block median discards a block that a noisy neighbour slowed down, without taking the
    single luckiest run. Returns (time, all times, last result); raises what fn() raised.
    """
    result = time_interleaved({"fn": (fn, setup)}, timing)["fn"]
    if isinstance(result, Exception):
        raise result
    return result


def time_interleaved(jobs, timing):
    """The best of `blocks` block medians (time_block) for several libraries at once, their blocks taking turns:
    round 1 times one block of each, round 2 the next, and so on. Each block still runs one library alone, after the pause. Timed one library
    after the other, a slow phase of the machine (on a VM it can last seconds: the core round trip of the
    development VM moved between 50 and 400 ns within a day) fell on every block of one library and moved
    the ratios between them by 20-30% from run to run; taking turns spreads it over all of them.
    jobs: {name: (fn, setup)}. Returns {name: (time, all times, last result)} or, for a job that raised,
    {name: the exception}, which ends that job's turns only.
    """
    medians = {k: [] for k in jobs}
    times = {k: [] for k in jobs}
    outs, failed = {}, {}
    for _ in range(timing.blocks):
        for name, (fn, setup) in jobs.items():
            if name in failed:
                continue
            try:
                med, t, outs[name] = time_block(fn, timing, setup)
            except Exception as e:  # the caller reports it with the library's name
                failed[name] = e
                continue
            medians[name].append(med)
            times[name] += t
    result = {k: (min(medians[k]), times[k], outs[k]) for k in jobs if k not in failed}
    result.update(failed)
    return result


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
