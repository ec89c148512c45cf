"""CPU benchmark: rnnfast against torch.nn, ONNX Runtime, OpenVINO and the NumPy reference, same weights, same
inputs, same thread count, each library timed in its own block.

    python bench/bench_cpu.py                         # the default cases, both modes
    python -m bench.bench_cpu --cases "T=1000"        # a subset (also --cells, --H, --B)
    python bench/bench_cpu.py --sweep                 # issue 8's grid as ratio tables
    python bench/bench_cpu.py --quick                 # a smoke test on tiny sizes, a few seconds
    python bench/bench_cpu.py --threads 1 --no-reference --json /tmp/bench.json

Modes:
  infer  eval() forward (torch: module.eval() under torch.no_grad(); ONNX Runtime and OpenVINO: their native
         LSTM/GRU/RNN operator, float32, outputs checked against torch before they are timed).
  train  train() forward + backward with a fixed random dy (torch: y.backward(dy), x.requires_grad).
         Gradients are zeroed before every run, outside the timed region.

FLOPs: forward = 2*T*B*G*H*(I+H) (G = 4 LSTM, 3 GRU, 1 RNN); train = 3 x forward.
"% of roofline" = case GFLOP/s / the best float32 GEMM rate measured at the start (numpy.matmul, torch.matmul,
rnnfast.matmul, rnnfast's packed GEMM, ONNX Runtime's and OpenVINO's MatMul, where present).
"""
import argparse
import gc
import json
import os
import platform
import sys
import traceback

if __package__ in (None, ""):  # run as a file: make the `bench` package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SWEEP_HELP = ("issue 8's grid instead of the default cases: LSTM and GRU, H in 64..1024, B in 1, 8, 64, T=100, "
              "I=H, both modes; rnnfast, torch and (inference) the engines, 3 blocks of 5 runs after 1 warm-up, "
              "no reference, no variable lengths. Prints torch/rnnfast ratio grids with their median and min. "
              "About 5-10 minutes on 2 cores (the bench prints an estimate after the roofline)")


def int_list(text):
    return [int(v) for v in text.split(",") if v.strip()]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sweep", action="store_true", help=SWEEP_HELP)
    p.add_argument("--quick", action="store_true",
                   help="smoke test: every case shrunk to tiny sizes, one block of one run, a 256^3 roofline; "
                        "the ratios mean nothing")
    p.add_argument("--cases", default=None,
                   help="comma-separated filters; a case runs if any is a substring of its name (case-insensitive), "
                        "e.g. 'T=1000' or 'GRU,RNN'")
    p.add_argument("--cells", default=None, help="comma-separated subset of lstm,gru,rnn")
    p.add_argument("--H", type=int_list, default=None, help="comma-separated hidden sizes to keep, e.g. 64,256")
    p.add_argument("--B", type=int_list, default=None, help="comma-separated batch sizes to keep, e.g. 1,8")
    p.add_argument("--modes", default="infer,train", help="comma-separated subset of infer,train")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed runs per block (default 7; 5 with --sweep; 1 with --quick)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed runs before each block (default 2; 1 with --sweep or --quick)")
    p.add_argument("--ref-repeats", type=int, default=None,
                   help="timed runs of the NumPy reference (default: up to 3, 1 with --quick)")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for every library (default: rnnfast's default, else all cores)")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                   help="the engines run float32 only")
    p.add_argument("--no-reference", action="store_true", help="skip the NumPy reference")
    p.add_argument("--no-torch", action="store_true", help="skip torch.nn")
    p.add_argument("--no-rnnfast", action="store_true", help="skip rnnfast layers (weights are drawn with numpy)")
    p.add_argument("--no-engines", action="store_true", help="skip ONNX Runtime and OpenVINO")
    p.add_argument("--no-roofline", action="store_true", help="skip the GEMM roofline")
    p.add_argument("--no-lengths", action="store_true", help="skip the variable-length comparison")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON to PATH")
    a = p.parse_args(argv)
    if a.repeats is None:
        a.repeats = 1 if a.quick else 5 if a.sweep else 7
    if a.warmup is None:
        a.warmup = 1 if a.quick or a.sweep else 2
    if a.ref_repeats is None:
        a.ref_repeats = 1 if a.quick else 3
    a.repeats, a.warmup, a.ref_repeats = max(1, a.repeats), max(0, a.warmup), max(1, a.ref_repeats)
    if a.sweep:
        a.no_reference = a.no_lengths = True
    a.modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    for m in a.modes:
        if m not in ("infer", "train"):
            p.error(f"--modes: unknown mode {m!r} (expected infer and/or train)")
    a.cells = [c.strip().lower() for c in a.cells.split(",")] if a.cells else None
    for c in a.cells or []:
        if c not in ("lstm", "gru", "rnn"):
            p.error(f"--cells: unknown cell {c!r} (expected lstm, gru and/or rnn)")
    if a.threads is not None and a.threads < 1:
        p.error("--threads must be >= 1")
    return a


class Bench:
    """What every case of one run shares: the libraries, the thread count, the timing, the tolerance."""

    def __init__(self, args, np, torch, rnnfast, ref, engines, nthreads):
        from bench.timing import Timing
        self.args, self.np, self.torch, self.rnnfast, self.ref = args, np, torch, rnnfast, ref
        self.engines, self.nthreads = engines, nthreads
        self.dtype = {"float32": np.float32, "float64": np.float64}[args.dtype]
        self.tol = 1e-3 if args.dtype == "float32" else 1e-9
        self.timing = (Timing(warmup=args.warmup, repeats=args.repeats, blocks=1, short_repeats=1)
                       if args.quick
                       else Timing(warmup=args.warmup, repeats=args.repeats))
        self.rows, self.checks, self.errors = [], [], []
        self.mismatches = []

    def libraries(self):
        return ["rnnfast", "torch", "onnxruntime", "openvino", "reference"]

    def skipped(self, lib):
        """Why `lib` does not run in this bench at all, or None."""
        a = self.args
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
        from bench import runners
        runs = {lib: self.skipped(lib) for lib in self.libraries()}

        def make(lib, fn):
            if runs[lib] is None:
                try:
                    runs[lib] = fn()
                except Exception as e:
                    runs[lib] = f"{type(e).__name__}: {e}"
                    self.errors.append((case.name, "setup", lib, traceback.format_exc()))

        make("rnnfast", lambda: runners.RnnfastRunner(self.rnnfast, case, self.dtype, self.args.seed))
        rf = runs["rnnfast"]
        state = rf.state() if not isinstance(rf, (str, type(None))) else \
            runners.numpy_weights(case, self.dtype, self.args.seed)
        make("torch", lambda: runners.TorchRunner(self.torch, case, self.dtype, state))
        make("reference", lambda: runners.ReferenceRunner(self.ref, case, self.dtype, state))
        oracle = self.oracle(case, runs, state)
        for engine in ("onnxruntime", "openvino"):
            make(engine, lambda: runners.EngineRunner(engine, case, self.dtype, state, self.nthreads, oracle,
                                                      self.tol))
        return runs

    def oracle(self, case, runs, state):
        """(name, fn(x) -> y) the engines are checked against: torch, else the NumPy reference."""
        from bench import runners
        if hasattr(runs["torch"], "forward"):
            return "torch", runs["torch"].forward
        if self.ref is not None:
            return "the NumPy reference", runners.ReferenceRunner(self.ref, case, self.dtype, state).forward
        return "nothing", lambda x: (_ for _ in ()).throw(RuntimeError("no torch nor reference to check against"))

    def measure(self, case):
        from bench import report, runners
        from bench.timing import time_runs, time_slow
        np = self.np
        rng = np.random.default_rng(self.args.seed + 12345)
        x = rng.standard_normal((case.T, case.B, case.I)).astype(self.dtype)
        dy = rng.standard_normal((case.T, case.B, case.H)).astype(self.dtype)
        runs = self.build(case)
        for mode in self.args.modes:
            row = {"case": case.name, "case_obj": case, "cell": case.cell, "nonlinearity": case.nonlin,
                   "T": case.T, "B": case.B, "I": case.I, "H": case.H, "mode": mode, "dtype": self.args.dtype,
                   "threads": self.nthreads, "flops": case.flops(mode)}
            outs, grads = {}, {}
            for lib, runner in runs.items():
                row[f"{lib}_s"] = row[f"{lib}_times"] = row[f"{lib}_err"] = None
                if isinstance(runner, str) or runner is None:
                    row[f"{lib}_err"] = runner
                    continue
                try:
                    job = runner.job(mode, x, dy)
                    if job is None:
                        row[f"{lib}_err"] = "n/a"
                        continue
                    if job.slow:
                        med, times, out = time_slow(job.fn, self.args.ref_repeats)
                    else:
                        med, times, out = time_runs(job.fn, self.timing, setup=job.setup)
                    outs[lib], g = job.result(out)
                    if g:
                        grads[lib] = g
                    row[f"{lib}_s"], row[f"{lib}_times"] = med, times
                except Exception as e:
                    row[f"{lib}_err"] = f"{type(e).__name__}: {e}"
                    self.errors.append((case.name, mode, lib, traceback.format_exc()))
                    if isinstance(e, runners.EngineMismatch):
                        self.mismatches.append(f"{case.name} [{mode}]: {e}")
            self.agreement(case, mode, outs, grads)
            self.rows.append(row)
            report.progress(row, [lib for lib in self.libraries() if runs[lib] not in ("skipped", "not installed")])

    def agreement(self, case, mode, outs, grads):
        from bench.runners import max_rel_diff
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


def set_blas_threads(args):
    """numpy.matmul (the roofline's OpenBLAS row and the NumPy reference) runs on OpenBLAS, which reads its
    thread count once, when numpy loads it: set it before numpy is imported, if it is not yet."""
    if args.threads is not None and "numpy" not in sys.modules:
        os.environ["OPENBLAS_NUM_THREADS"] = str(args.threads)
        return None
    if args.threads is not None:
        return "numpy was loaded before the bench: OpenBLAS keeps its own thread count"
    return None


def thread_count(args, rnnfast, torch):
    n = args.threads
    if n is None and rnnfast is not None:
        n = int(rnnfast.get_num_threads())
    n = n or os.cpu_count() or 1
    if rnnfast is not None:
        rnnfast.set_num_threads(n)
    if torch is not None:
        torch.set_num_threads(n)
    return n


def header(b, rnnfast_err, versions):
    from bench import machine
    np, torch, rnnfast = b.np, b.torch, b.rnnfast
    info = {
        "cpu": machine.cpu_model(), "logical_cpus": os.cpu_count(), "physical_cores": machine.physical_cores(),
        "threads": b.nthreads, "python": platform.python_version(), "numpy": np.__version__,
        "torch": torch.__version__ if torch is not None else None,
        "rnnfast": getattr(rnnfast, "__version__", "unknown") if rnnfast is not None else None,
        "rnnfast_info": machine.rnnfast_info(rnnfast) if rnnfast is not None else None,
        **versions,
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
        "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS"),
        "dtype": b.args.dtype, "loadavg": machine.loadavg(),
    }
    na = "not installed"
    print(f"# CPU: {info['cpu']} | cores: {info['physical_cores'] or '?'} physical / {info['logical_cpus']} logical"
          f" | threads: {b.nthreads} | python {info['python']} | numpy {info['numpy']}"
          f" | torch {info['torch'] or na} | rnnfast {info['rnnfast'] or 'not available'}"
          f" | onnxruntime {info['onnxruntime'] or na} | openvino {info['openvino'] or na}"
          f" | OPENBLAS_CORETYPE={info['OPENBLAS_CORETYPE'] or '(unset)'}"
          f" | dtype {b.args.dtype} | loadavg {info['loadavg'] or '?'}")
    if info["rnnfast_info"]:
        print(f"# rnnfast kernels: {info['rnnfast_info']}")
    if rnnfast is None and not b.args.no_rnnfast:
        print(f"# rnnfast unavailable: {rnnfast_err}")
    if rnnfast is not None:
        rt = machine.core_round_trip_ns()
        if rt is not None:
            print(f"# core-to-core round trip: {rt:.0f} ns (a step's barrier costs at least this; on a VM it moves "
                  "with the host's vCPU placement, and the batch-1 cases with it)")
    t = b.timing
    print(f"# timing: best of {t.blocks} block medians, each of {t.repeats} runs ({t.short_repeats} for runs under "
          f"5 ms) after {t.warmup} warm-up(s), one library at a time; reference: median of up to "
          f"{b.args.ref_repeats} run(s), no warm-up; train = forward + backward, grads zeroed outside the timed region")
    return info


def print_roofline(b):
    from bench.roofline import gemm_rates, roofline
    from bench.timing import Timing
    n = 256 if b.args.quick else 2048
    timing = b.timing if b.args.quick else Timing(warmup=1, repeats=5)
    rates = gemm_rates(n, timing, b.rnnfast, b.torch, b.nthreads, engines=not b.args.no_engines)
    print(f"\nRoofline: float32 GEMM {n}x{n}x{n} (best of {timing.blocks} block medians of {timing.repeats})")
    for k, v in rates.items():
        print(f"  {k:20s} " + (f"{v:8.1f} GFLOP/s" if isinstance(v, float) else f"ERR {v}"))
    roof = roofline(rates)
    if roof:
        print(f"  {'roofline':20s} {roof:8.1f} GFLOP/s (max of the above)")
    if b.args.dtype == "float64" and roof:
        print("  (note: roofline is float32; float64 peak is about half)")
    return rates, roof


def sweep_estimate(b, cases, roof):
    """Seconds of timed work at the roofline rate: a floor for the sweep's length, printed so a run's length
    is known before it starts."""
    t = b.timing
    runs = t.blocks * (t.warmup + 1 + t.repeats)
    libs = 2 + sum(1 for e in ("onnxruntime", "openvino") if b.skipped(e) is None)
    flops = sum(c.flops(m) * (libs if m == "infer" else 2) for c in cases for m in b.args.modes)
    return flops * runs / (roof * 1e9)


def print_sweep(b):
    from bench import report
    print()
    for cell in ("lstm", "gru"):
        rows = [r for r in b.rows if r["cell"] == cell]
        if not rows:
            continue
        grid, ratios = report.ratio_grid(rows, cell, ("torch",), b.args.modes)
        print(f"\n{cell.upper()}, T=100, I=H: torch time / rnnfast time ({b.nthreads} threads)\n{grid}")
        print(f"  {report.summary(ratios)}")
        if "infer" in b.args.modes and any(r.get(f"{e}_s") for r in rows for e in ("onnxruntime", "openvino")):
            grid, ratios = report.ratio_grid(rows, cell, report.ENGINES, ["infer"])
            print(f"\n{cell.upper()} inference: fastest of torch/ONNX Runtime/OpenVINO time / rnnfast time\n{grid}")
            print(f"  {report.summary(ratios)}")


def print_targets(b):
    from bench import report, targets
    lines = [] if b.args.sweep else targets.headline_lines(b.rows)
    if b.args.sweep:
        per_cell = {}
        for cell in ("lstm", "gru"):
            rows = [r for r in b.rows if r["cell"] == cell]
            if rows:
                per_cell[cell] = report.ratio_grid(rows, cell, ("torch",), b.args.modes)[1]
                lines += targets.sweep_lines(cell.upper(), per_cell[cell])
        if len(per_cell) > 1:
            lines += targets.sweep_lines("LSTM and GRU", [r for ratios in per_cell.values() for r in ratios])
        lines += targets.sweep_engine_line(b.rows)
    if lines:
        print("\nTargets (issue 8; information, not an exit code):")
        if b.args.quick:
            print("  (--quick sizes: these rows stand in for the named cases; the ratios mean nothing)")
        print("\n".join(lines))


def main(argv=None):
    args = parse_args(argv)
    blas_note = set_blas_threads(args)
    import numpy as np
    try:
        import torch
    except Exception:  # torch is optional
        torch = None
    from bench import cases as case_sets, machine, report
    from bench.lengths import lengths_section
    from bench.onnx_models import engine_versions

    rnnfast, ref, rnnfast_err = machine.import_rnnfast()
    if args.no_rnnfast:
        rnnfast = None
    # The libraries' own objects (torch's are many) never die: moved out of the collector's sight, the
    # collection before every timed block costs milliseconds instead of a tenth of a second.
    gc.collect()
    gc.freeze()
    versions = engine_versions()
    b = Bench(args, np, torch, rnnfast, ref, versions, thread_count(args, rnnfast, torch))
    info = header(b, rnnfast_err, versions)
    if blas_note:
        print(f"# {blas_note}")

    full = case_sets.sweep_cases() if args.sweep else case_sets.DEFAULT_CASES
    specs = [case_sets.quick(c) for c in full] if args.quick else full
    subs = [s.strip() for s in args.cases.split(",") if s.strip()] if args.cases else None
    specs = case_sets.select(specs, subs, args.cells, args.H, args.B)
    if not specs:
        print("\nno case matches the filters; cases are: " + "; ".join(c.name for c in full))
        return 2

    rates, roof = ({}, None) if args.no_roofline else print_roofline(b)
    if args.sweep and roof:
        est = sweep_estimate(b, specs, roof)
        print(f"\n# sweep: {len(specs)} cases; at the roofline rate its timed runs alone take {est / 60:.1f} min "
              "(expect about twice that: small batches run far below the roofline)")

    print("", flush=True)
    for case in specs:
        b.measure(case)

    print()
    print(report.main_table(b.rows, roof))
    if "infer" in args.modes:
        print("\nInference engines (native LSTM/GRU/RNN operators, same weights, float32, "
              f"{b.nthreads} intra-op threads):")
        print(report.engine_table(b.rows))
    if args.sweep:
        print_sweep(b)

    lengths_rows = []
    if rnnfast is not None and not args.no_lengths:
        size = dict(T=10, B=4, I=16, H=32) if args.quick else {}
        try:
            lengths_rows = lengths_section(rnnfast, None if args.no_torch else torch, b.dtype, args.modes, b.timing,
                                           args.seed, **size)
        except Exception:
            b.errors.append(("variable lengths", "-", "rnnfast", traceback.format_exc()))

    print_targets(b)
    if b.checks:
        print(f"\nAgreement, max |a-b| / max(1, max|b|) (y for infer, dx and weight grads for train; "
              f"* = above {b.tol:g}):")
        print("\n".join(report.agreement(b.checks, b.tol)))
    if b.errors:
        print("\nErrors:")
        for name, mode, lib, tb in b.errors:
            print(f"--- {name} [{mode}] {lib}\n{tb.rstrip()}")

    if args.json:
        results = [{k: v for k, v in r.items() if k != "case_obj"} for r in b.rows]
        payload = {"machine": info, "roofline_gflops": roof, "gemm_gflops": rates, "args": vars(args),
                   "results": results, "lengths": lengths_rows,
                   "checks": [{"case": c[0], "mode": c[1], "what": c[2], "max_rel_diff": c[3]} for c in b.checks]}
        with open(args.json, "w") as f:
            json.dump(payload, f, indent=2, default=str)
        print(f"\nwrote {args.json}")

    bad = b.disagreements()
    if b.mismatches or bad:
        print("\nFAILED: libraries disagree, so the times above compare different computations:")
        for m in b.mismatches:
            print(f"  {m}")
        for name, mode, what, d in bad:
            print(f"  {name} [{mode}]: {what} {d}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
