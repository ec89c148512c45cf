"""Measuring one case: every library's runner built from one set of weights, each timed in its own blocks (the
libraries taking turns block by block), their outputs compared."""
import traceback

import numpy as np

from .report import LIBRARIES, progress
from .runners import (EngineMismatch, EngineRunner, ReferenceRunner, RnnfastBf16Runner, RnnfastRunner, TorchRunner,
                      max_rel_diff, numpy_weights)
from .timing import Timing, time_interleaved, time_slow


class Bench:
    """What every case of one run shares: the libraries, the thread count, the timing, the tolerance."""

    def __init__(self, args, torch, rnnfast, ref, engines, nthreads):
        self.args, self.torch, self.rnnfast, self.ref = args, torch, rnnfast, ref
        self.engines, self.nthreads = engines, nthreads
        self.dtype = {"float32": np.float32, "float64": np.float64}[args.dtype]
        self.tol = 1e-3 if args.dtype == "float32" else 1e-9
        blocks = dict(blocks=1, short_repeats=1) if args.quick else {}
        self.timing = Timing(warmup=args.warmup, repeats=args.repeats, **blocks)
        self.rows, self.checks, self.errors = [], [], []
        self.mismatches = []

    def libraries(self):
        """The libraries of this run: LIBRARIES, and rnnfast_bf16 with --bf16 (its own table, never compared
        with the float32 ones)."""
        return LIBRARIES + (("rnnfast_bf16",) if self.args.bf16 else ())

    def skipped(self, lib):
        """Why `lib` does not run in this bench at all, or None."""
        a = self.args
        if lib == "rnnfast_bf16":
            return None if a.bf16 and self.rnnfast else "skipped"
        if lib == "rnnfast":
            return "skipped" if a.no_rnnfast else None if self.rnnfast else "n/a"
        if lib == "torch":
            return "skipped" if a.no_torch else None if self.torch else "n/a"
        if lib == "reference":
            return "skipped" if a.no_reference else None if self.ref else "n/a"
        if a.no_engines:
            return "skipped"
        if not self.engines.get(lib):
            return "not installed"
        return "float32 only" if a.dtype != "float32" else None

    def build(self, case):
        """{library: runner, or the text of why there is none}, built from one set of weights."""
        runs = {lib: self.skipped(lib) for lib in self.libraries()}

        def make(lib, fn):
            if runs[lib] is None:
                try:
                    runs[lib] = fn()
                except Exception as e:
                    runs[lib] = f"{type(e).__name__}: {e}"
                    self.errors.append((case.name, "setup", lib, traceback.format_exc()))

        make("rnnfast", lambda: RnnfastRunner(self.rnnfast, case, self.dtype, self.args.seed))
        if "rnnfast_bf16" in runs:
            make("rnnfast_bf16", lambda: RnnfastBf16Runner(self.rnnfast, case, self.dtype, self.args.seed))
        rf = runs["rnnfast"]
        state = rf.state() if not isinstance(rf, (str, type(None))) else \
            numpy_weights(case, self.dtype, self.args.seed)
        make("torch", lambda: TorchRunner(self.torch, case, self.dtype, state))
        make("reference", lambda: ReferenceRunner(self.ref, case, self.dtype, state))
        oracle = self.oracle(case, runs, state)
        for engine in ("onnxruntime", "openvino"):
            make(engine, lambda: EngineRunner(engine, case, self.dtype, state, self.nthreads, oracle,
                                                      self.tol))
        return runs

    def oracle(self, case, runs, state):
        """(name, fn(x) -> y) the engines are checked against: torch, else the NumPy reference."""
        if hasattr(runs["torch"], "forward"):
            return "torch", runs["torch"].forward
        if self.ref is not None:
            return "the NumPy reference", ReferenceRunner(self.ref, case, self.dtype, state).forward

        def nothing(x):
            raise RuntimeError("neither torch nor the NumPy reference is here to check the engine against")
        return "nothing", nothing

    def measure(self, case):
        rng = np.random.default_rng(self.args.seed + 12345)
        x = rng.standard_normal((case.T, case.B, case.I)).astype(self.dtype)
        dy = rng.standard_normal((case.T, case.B, case.H)).astype(self.dtype)
        runs = self.build(case)
        for mode in self.args.modes:
            row = {"case": case.name, "case_obj": case, "cell": case.cell, "nonlinearity": case.nonlin,
                   "T": case.T, "B": case.B, "I": case.I, "H": case.H, "mode": mode, "dtype": self.args.dtype,
                   "threads": self.nthreads, "flops": case.flops(mode)}
            outs, grads, jobs = {}, {}, {}

            def record(lib, job, timed):
                med, times, out = timed
                outs[lib], g = job.result(out)
                if g:
                    grads[lib] = g
                row[f"{lib}_s"], row[f"{lib}_times"] = med, times

            def failed(lib, e):
                row[f"{lib}_err"] = f"{type(e).__name__}: {e}"
                self.errors.append((case.name, mode, lib, "".join(traceback.format_exception(e))))
                if isinstance(e, EngineMismatch):
                    self.mismatches.append(f"{case.name} [{mode}]: {e}")

            for lib, runner in runs.items():
                row[f"{lib}_s"] = row[f"{lib}_times"] = row[f"{lib}_err"] = None
                if isinstance(runner, str) or runner is None:
                    row[f"{lib}_err"] = runner
                    continue
                try:
                    job = runner.job(mode, x, dy)
                    if job is None:
                        row[f"{lib}_err"] = "n/a"
                    elif job.slow:
                        record(lib, job, time_slow(job.fn, self.args.ref_repeats))
                    else:
                        jobs[lib] = job
                except Exception as e:
                    failed(lib, e)
            # The libraries' blocks take turns (timing.time_interleaved); each block runs one library alone.
            timed = time_interleaved({lib: (job.fn, job.setup) for lib, job in jobs.items()}, self.timing)
            for lib, job in jobs.items():
                if isinstance(timed[lib], Exception):
                    failed(lib, timed[lib])
                    continue
                try:
                    record(lib, job, timed[lib])
                except Exception as e:
                    failed(lib, e)
            self.agreement(case, mode, outs, grads)
            if "rnnfast_bf16" in outs and "rnnfast" in outs:  # reported with its times, not as an agreement
                row["rnnfast_bf16_diff"] = max_rel_diff(outs["rnnfast_bf16"], outs["rnnfast"])
            self.rows.append(row)
            progress(row, [lib for lib in runs if runs[lib] not in ("skipped", "not installed")])

    def agreement(self, case, mode, outs, grads):
        what = "y" if mode == "infer" else "dx"
        for a, b in (("rnnfast", "torch"), ("rnnfast", "reference"), ("torch", "reference"),
                     ("onnxruntime", "torch"), ("openvino", "torch")):
            if a in outs and b in outs:
                self.checks.append((case.name, mode, f"{what} {a} vs {b}", max_rel_diff(outs[a], outs[b])))
        if "rnnfast" in grads and "torch" in grads:
            diffs = [max_rel_diff(grads["rnnfast"][n], g) for n, g in grads["torch"].items() if n in grads["rnnfast"]]
            if diffs:
                worst = next((d for d in diffs if isinstance(d, str)), None) or max(diffs)
                self.checks.append((case.name, mode, "weight grads rnnfast vs torch", worst))

    def disagreements(self):
        return [c for c in self.checks if isinstance(c[3], str) or c[3] > self.tol]
