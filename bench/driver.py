"""One run of the CPU bench, section by section: header, roofline, cases, tables, targets, agreement."""
import gc
import json
import os
import platform
import traceback

import numpy as np

from . import cases as case_sets, floor, machine, report, targets
from .lengths import lengths_section
from .load import Load
from .measure import Bench
from .onnx_models import engine_versions
from .roofline import gemm_rates, layers_gemms, roofline
from .timing import Timing


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
    torch, rnnfast = b.torch, b.rnnfast
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
    tuning = machine.rnnfast_tuning(rnnfast, b.dtype) if rnnfast is not None else None
    if tuning:
        info["rnnfast_tuning"] = tuning["dict"]
        print("\n".join(f"# {line}" for line in tuning["lines"]))
    if rnnfast is None and not b.args.no_rnnfast:
        print(f"# rnnfast unavailable: {rnnfast_err}")
    if rnnfast is not None:
        rt = machine.core_round_trip_ns()
        if rt is not None:
            print(f"# core-to-core round trip: {rt:.0f} ns (a step's barrier costs at least this; on a VM it moves "
                  "with the host's vCPU placement, and the batch-1 cases with it)")
    t = b.timing
    print(f"# timing: best of {t.blocks} block medians, each of {t.repeats} runs ({t.short_repeats} for runs under "
          f"5 ms) after {t.warmup} warm-up(s), one library at a time, the libraries taking turns block by block; reference: median of up to "
          f"{b.args.ref_repeats} run(s), no warm-up; train = forward + backward, grads zeroed outside the timed region")
    return info


def print_floor(b, roof):
    """The floor of each inference case (bench/floor.py), beside rnnfast's time."""
    if b.rnnfast is None or not roof or b.args.dtype != "float32":
        return
    from _rnnfast import _C
    fl = floor.Floor(_C, b.nthreads, roof, machine.core_round_trip_ns() if b.nthreads > 1 else 0.0)
    print("\nFloor of each inference run (bench/floor.py): per step, the busiest thread's W_hh bytes over its "
          "measured read bandwidth at that footprint (or its multiply-adds at the roofline, whichever is longer) "
          "plus one core-to-core round trip; plus the input GEMM at the roofline:")
    print(floor.table(b.rows, fl, report.markdown, report.fmt_ms))


def print_roofline(b):
    n = 256 if b.args.quick else 2048
    timing = b.timing if b.args.quick else Timing(warmup=1, repeats=5)
    rates = gemm_rates(n, timing, b.rnnfast, b.torch, b.nthreads, engines=not b.args.no_engines)
    print(f"\nRoofline: float32 GEMM {n}x{n}x{n} (best of {timing.blocks} block medians of {timing.repeats})")
    used = layers_gemms(b.rnnfast)
    for k, v in rates.items():
        note = f"   <- the layers' {used[k]}" if k in used else ""
        print(f"  {k:20s} " + (f"{v:8.1f} GFLOP/s" if isinstance(v, float) else f"ERR {v}") + note)
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


def print_sweep(b, roof):
    print()
    for cell in ("lstm", "gru"):
        rows = [r for r in b.rows if r["cell"] == cell]
        if not rows:
            continue
        grid, ratios = report.ratio_grid(rows, cell, ("torch",), b.args.modes)
        print(f"\n{cell.upper()}, T=100, I=H: torch time / rnnfast time ({b.nthreads} threads)\n{grid}")
        print(f"  {report.summary(ratios)}")
        if roof:
            for lib in ("torch", "rnnfast"):
                grid, _ = report.roofline_grid(rows, cell, lib, roof, b.args.modes)
                print(f"\n{cell.upper()}: {lib}'s GFLOP/s as a share of the roofline ({roof:.0f} GFLOP/s)\n{grid}")
        if "infer" in b.args.modes and any(r.get(f"{e}_s") for r in rows for e in ("onnxruntime", "openvino")):
            grid, ratios = report.ratio_grid(rows, cell, report.ENGINES, ["infer"])
            print(f"\n{cell.upper()} inference: fastest of torch/ONNX Runtime/OpenVINO time / rnnfast time\n{grid}")
            print(f"  {report.summary(ratios)}")


def print_targets(b):
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
        print("\nTargets (issues 8 and 22; information, not an exit code):")
        if b.args.quick:
            print("  (--quick sizes: these rows stand in for the named cases; the ratios mean nothing)")
        print("\n".join(lines))




def print_torch_step(b):
    """The sweep ends with what users of the drop-in get: bench/bench_torch_step.py's whole training steps, with
    the package's own choices, the same threads and the same load."""
    from . import bench_torch_step
    print("\nA whole torch training step through the drop-in (bench/bench_torch_step.py, same run):", flush=True)
    bench_torch_step.main(["--threads", str(b.nthreads)])


def run(args, blas_note=None):
    """The whole bench for parsed arguments, with args.load busy processes beside it: prints every section;
    returns the exit code."""
    with Load(args.load) as load:
        return _run(args, blas_note, load)


def _setup(args, blas_note, load):
    """(Bench, header info, rnnfast or None): the libraries imported, the header printed."""
    try:
        import torch
    except Exception:  # torch is optional
        torch = None

    rnnfast, ref, rnnfast_err = machine.import_rnnfast()
    if args.no_rnnfast:
        rnnfast = None
    # The libraries' own objects (torch's are many) never die: moved out of the collector's sight, the
    # collection before every timed block costs milliseconds instead of a tenth of a second.
    gc.collect()
    gc.freeze()
    versions = engine_versions()
    b = Bench(args, torch, rnnfast, ref, versions, thread_count(args, rnnfast, torch))
    info = header(b, rnnfast_err, versions)
    info["load"] = args.load
    for note in (blas_note, load.description()):
        if note:
            print(f"# {note}")
    return b, info, rnnfast


def _cases(args):
    """The cases the arguments select (None, with the list printed, when none does)."""
    full = case_sets.sweep_cases() if args.sweep else case_sets.DEFAULT_CASES
    specs = [case_sets.quick(c) for c in full] if args.quick else full
    subs = [s.strip() for s in args.cases.split(",") if s.strip()] if args.cases else None
    specs = case_sets.select(specs, subs, args.cells, args.H, args.B)
    if not specs:
        print("\nno case matches the filters; cases are: " + "; ".join(c.name for c in full))
        return None
    return specs


def _print_tables(b, args, roof):
    print()
    print(report.main_table(b.rows, roof))
    if "infer" in args.modes:
        print("\nInference engines (native LSTM/GRU/RNN operators, same weights, float32, "
              f"{b.nthreads} intra-op threads):")
        print(report.engine_table(b.rows))
        print_floor(b, roof)
    if args.bf16:
        print("\nOpt-in reduced precision: rnnfast with bfloat16 recurrent weights (set_inference_weights("
              "'bfloat16'): W_hh and h_{t-1} rounded to bf16, float32 sums and everything else float32), inference, "
              f"{b.nthreads} threads; not part of the float32 comparisons above:")
        print(report.bf16_table(b.rows) or "  (no inference row)")
    if args.sweep:
        print_sweep(b, roof)


def _lengths(b, args, rnnfast):
    """The variable-length section's rows (printed by lengths_section); a failure goes to b.errors."""
    if rnnfast is None or args.no_lengths:
        return []
    size = dict(T=10, B=4, I=16, H=32) if args.quick else {}
    try:
        return lengths_section(rnnfast, None if args.no_torch else b.torch, b.dtype, args.modes, b.timing,
                               args.seed, **size)
    except Exception:
        b.errors.append(("variable lengths", "-", "rnnfast", traceback.format_exc()))
        return []


def _write_json(b, args, info, roof, rates, lengths_rows):
    results = [{k: v for k, v in r.items() if k != "case_obj"} for r in b.rows]
    payload = {"machine": info, "roofline_gflops": roof, "gemm_gflops": rates, "args": vars(args),
               "results": results, "lengths": lengths_rows,
               "checks": [{"case": c[0], "mode": c[1], "what": c[2], "max_rel_diff": c[3]} for c in b.checks]}
    with open(args.json, "w") as f:
        json.dump(payload, f, indent=2, default=str)
    print(f"\nwrote {args.json}")


def _print_agreement(b):
    if b.checks:
        print(f"\nAgreement, max |a-b| / max(1, max|b|) (y for infer, dx and weight grads for train; "
              f"* = above {b.tol:g}):")
        print("\n".join(report.agreement(b.checks, b.tol)))
    if b.errors:
        print("\nErrors:")
        for name, mode, lib, tb in b.errors:
            print(f"--- {name} [{mode}] {lib}\n{tb.rstrip()}")


def _verdict(b):
    """Prints any disagreement; the exit code (1: the libraries disagree)."""
    bad = b.disagreements()
    if b.mismatches or bad:
        print("\nFAILED: libraries disagree, so the times above compare different computations:")
        for m in b.mismatches:
            print(f"  {m}")
        for name, mode, what, d in bad:
            print(f"  {name} [{mode}]: {what} {d}")
        return 1
    return 0


def _run(args, blas_note, load):
    b, info, rnnfast = _setup(args, blas_note, load)
    specs = _cases(args)
    if specs is None:
        return 2
    rates, roof = ({}, None) if args.no_roofline else print_roofline(b)
    if args.sweep and roof:
        est = sweep_estimate(b, specs, roof)
        print(f"\n# sweep: {len(specs)} cases; at the roofline rate its timed runs alone take {est / 60:.1f} min "
              "(expect about twice that: small batches run far below the roofline)")
    print("", flush=True)
    for case in specs:
        b.measure(case)
    _print_tables(b, args, roof)
    lengths_rows = _lengths(b, args, rnnfast)
    print_targets(b)
    if args.sweep and not args.quick and rnnfast is not None and b.torch is not None:
        print_torch_step(b)
    _print_agreement(b)
    if args.json:
        _write_json(b, args, info, roof, rates, lengths_rows)
    return _verdict(b)
