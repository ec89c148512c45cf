"""The floor of an inference run, counted from rates measured in the same run (issue 8, item 3).

A step of the recurrence cannot be faster than its two limits: every thread reads its share of W_hh once (bytes
over that thread's cache read bandwidth at that footprint, measured by rnnfast's probe with the kernels' vector
loads), and does its share of the step's multiply-adds (FLOPs over the GEMM roofline). The threads then meet
once (the core-to-core round trip). Before the steps, the input projection is one GEMM at the roofline:

    floor = T * (max(bytes per thread / read bandwidth, step FLOPs per thread / (roofline / threads))
                 + round trip) + input-projection FLOPs / roofline

The pointwise cell math, the Python call and the staleness check of the packed weights are left out: the
floor is what the memory system and the FMA units allow, and the ratio measured / floor shows what is left.
"""
import math

import numpy as np

from .cases import GATES


def recurrence_threads(case, threads, panel_width, crossing_macs):
    """The team a forward of this case runs on: the thread count, capped by the NR-wide unit blocks and by the
    work per step (a mirror of threads_for in csrc/cpu/skeleton.h: a step needs crossing_macs multiply-adds, the
    value in force, per thread)."""
    G = GATES[case.cell]
    blocks = math.ceil(case.H / panel_width)
    by_work = max(1, int(case.B * G * case.H * case.H / crossing_macs))
    return max(1, min(threads, blocks, by_work))


class Floor:
    """Floors of inference cases; read bandwidths measured once per footprint and cached."""

    def __init__(self, C, threads, roofline_gflops, round_trip_ns, itemsize=4):
        self.C, self.threads, self.roof = C, threads, roofline_gflops
        self.rt = round_trip_ns or 0.0
        self.itemsize = itemsize
        self.nr = C.panel_width(np.dtype(np.float32 if itemsize == 4 else np.float64))
        self.crossing = C.crossing_macs()  # what the tuner put in force for the recurrences
        self._bw = {}

    def read_gbps(self, nbytes, team):
        """One thread's read bandwidth (GB/s) when `team` threads each read their own nbytes at once."""
        key = (nbytes, team)
        if key not in self._bw:
            self._bw[key] = max(self.C.read_bandwidth_gbps(nbytes, team, 50) for _ in range(3)) / team
        return self._bw[key]

    def of(self, case):
        """dict: team, bytes per thread, read GB/s, floor us/step, floor ms of the whole inference run."""
        G = GATES[case.cell]
        team = recurrence_threads(case, self.threads, self.nr, self.crossing)
        blocks = math.ceil(case.H / self.nr)
        width = math.ceil(blocks / team) * self.nr  # the busiest thread's units
        nbytes = G * width * case.H * self.itemsize
        gbps = self.read_gbps(nbytes, team)
        read_us = nbytes / (gbps * 1e3)
        fma_us = 2.0 * case.B * G * width * case.H / (self.roof / team * 1e3) if self.roof else 0.0
        step_us = max(read_us, fma_us) + self.rt / 1e3
        proj_ms = 2.0 * case.T * case.B * G * case.H * case.I / (self.roof * 1e6) if self.roof else 0.0
        return {"team": team, "bytes": nbytes, "gbps": gbps, "bound": "read" if read_us >= fma_us else "FMA",
                "step_us": step_us, "floor_ms": case.T * step_us / 1e3 + proj_ms}


def table(rows, floor, markdown, fmt_ms):
    """Markdown: each inference case's floor beside rnnfast's time."""
    out = []
    for r in rows:
        if r["mode"] != "infer" or r.get("rnnfast_s") is None:
            continue
        f = floor.of(r["case_obj"])
        ms = r["rnnfast_s"] * 1e3
        kb = f["bytes"] / 1024
        out.append([r["case"], str(f["team"]), f"{kb:.0f} KB", f"{f['gbps']:.0f}", f["bound"],
                    f"{f['step_us']:.2f}", f"{ms * 1e3 / r['T']:.2f}", f"{f['floor_ms']:.3f}", fmt_ms(r["rnnfast_s"]),
                    f"{ms / f['floor_ms']:.2f}x"])
    return markdown(["case", "threads", "W_hh per thread", "read GB/s per thread", "bound", "floor us/step",
                     "rnnfast us/step", "floor ms", "rnnfast ms", "rnnfast / floor"], out)
