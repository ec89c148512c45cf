"""CPU microbenchmark: rnnfast vs the NumPy reference vs torch.nn, same weights, same inputs.

Run from the repository root, against the installed package (`python -m bench.bench_cpu` would import the
source folder, which has no compiled kernels):

    python bench/bench_cpu.py                 # default case set, both modes
    python bench/bench_cpu.py --quick --cases "T=1000"
    python bench/bench_cpu.py --threads 1 --no-reference --json /tmp/bench.json

Modes:
  infer  eval() forward (torch: module.eval() under torch.no_grad()).
  train  train() forward + backward with a fixed random dy (torch: y.backward(dy), x.requires_grad).
         Gradients are zeroed before every run, outside the timed region.

FLOPs: forward = 2*T*B*G*H*(I+H) (G = 4 LSTM, 3 GRU, 1 RNN); train = 3 x forward.
"% of roofline" = case GFLOP/s / the best float32 GEMM rate (2048^3) measured at the start with
numpy.matmul, torch.matmul and rnnfast.matmul (where present).
"""

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
import traceback


# --------------------------------------------------------------------------------------------------
# Cases

# (cell, nonlinearity or None, T, B, I, H)
DEFAULT_CASES = [
    ("lstm", None, 100, 1, 64, 256),
    ("lstm", None, 100, 64, 256, 512),
    ("gru", None, 100, 64, 256, 512),
    ("rnn", "tanh", 100, 64, 256, 512),
    ("lstm", None, 1000, 1, 32, 64),
]

GATES = {"lstm": 4, "gru": 3, "rnn": 1}


def case_name(cell, nonlin, T, B, I, H):
    label = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}[cell]
    if cell == "rnn":
        label += " " + nonlin
    return f"{label} T={T} B={B} I={I} H={H}"


def ref_cell(cell, nonlin):
    return f"rnn_{nonlin}" if cell == "rnn" else cell


def forward_flops(cell, T, B, I, H):
    return 2.0 * T * B * GATES[cell] * H * (I + H)


# --------------------------------------------------------------------------------------------------
# Arguments (parsed before numpy is imported, so that --threads can size OpenBLAS's pool)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default=None,
                   help="comma-separated filters; a case runs if any filter is a substring of its name "
                        "(case-insensitive), e.g. 'T=1000' or 'GRU,RNN'")
    p.add_argument("--modes", default="infer,train", help="comma-separated subset of infer,train")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per measurement (default 7, 3 with --quick)")
    p.add_argument("--warmup", type=int, default=None, help="untimed warm-up runs (default 2, 1 with --quick)")
    p.add_argument("--ref-repeats", type=int, default=None,
                   help="timed runs of the NumPy reference (default: up to 3, 1 with --quick)")
    p.add_argument("--threads", type=int, default=None,
                   help="thread count for rnnfast, torch and OpenBLAS (default: rnnfast's default, else all cores)")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--no-reference", action="store_true", help="skip the NumPy reference")
    p.add_argument("--no-torch", action="store_true", help="skip torch.nn")
    p.add_argument("--no-rnnfast", action="store_true", help="skip rnnfast layers (weights are still drawn with numpy)")
    p.add_argument("--no-roofline", action="store_true", help="skip the 2048^3 GEMM roofline measurement")
    p.add_argument("--quick", action="store_true", help="fewer repeats")
    p.add_argument("--no-lengths", action="store_true", help="skip the variable-length comparison")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON to PATH")
    a = p.parse_args(argv)
    if a.repeats is None:
        a.repeats = 3 if a.quick else 7
    if a.warmup is None:
        a.warmup = 1 if a.quick else 2
    if a.ref_repeats is None:
        a.ref_repeats = 1 if a.quick else 3
    a.repeats = max(1, a.repeats)
    a.warmup = max(0, a.warmup)
    a.ref_repeats = max(1, a.ref_repeats)
    a.modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    for m in a.modes:
        if m not in ("infer", "train"):
            p.error(f"--modes: unknown mode {m!r} (expected infer and/or train)")
    if a.threads is not None and a.threads < 1:
        p.error("--threads must be >= 1")
    return a


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None and ARGS.threads is not None and "numpy" not in sys.modules:
    # OpenBLAS reads this once, when numpy loads it. rnnfast's time-parallel GEMMs go through numpy.matmul.
    os.environ["OPENBLAS_NUM_THREADS"] = str(ARGS.threads)

import numpy as np  # noqa: E402

try:
    import torch  # noqa: E402
except Exception:  # torch is optional
    torch = None


def import_rnnfast():
    """Return (rnnfast or None, (reference or None, reference error), rnnfast error)."""
    try:
        import rnnfast
    except Exception:  # not installed: try the checkout this script lives in
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        if root not in sys.path:
            sys.path.insert(0, root)
        try:
            import rnnfast
        except Exception as e:
            return None, (None, f"{type(e).__name__}: {e}"), f"{type(e).__name__}: {e}"
    err = None
    if not hasattr(rnnfast, "LSTM"):
        where = getattr(rnnfast, "__file__", None) or list(getattr(rnnfast, "__path__", []))
        err = f"rnnfast imported from {where} has no LSTM (not built/installed yet?)"
    try:
        import rnnfast.reference as ref
        ref_err = None
    except Exception as e:
        ref, ref_err = None, f"{type(e).__name__}: {e}"
    return (rnnfast if err is None else None), (ref, ref_err), err


# --------------------------------------------------------------------------------------------------
# Timing


def time_runs(fn, setup=None, warmup=2, repeats=7, blocks=3):
    """Wall time (seconds) of fn(): the smallest of `blocks` block medians, each block `repeats` calls after
    `warmup` untimed ones, with a pause before each block.

    The pause lets the other library's idle OpenMP threads stop spinning (libgomp spins for a few ms after a
    parallel region), so neither library is timed against the other's busy-waiting threads. Taking the best
    block median discards a block that a noisy neighbour (this is a shared 2-core VM) slowed down, without
    taking the single luckiest run. setup() runs before every call, outside the timed region.
    Returns (time, all times, last result).
    """
    out = None
    all_times, block_medians = [], []
    for _ in range(blocks):
        time.sleep(0.05)
        for _ in range(warmup):
            if setup is not None:
                setup()
            out = fn()
        # Short runs are noisier (a preempted thread costs a whole step): take more of them.
        t0 = time.perf_counter()
        out = fn()
        n = max(repeats, 31) if time.perf_counter() - t0 < 0.005 else repeats
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


def time_reference(fn, max_repeats, budget_s=20.0):
    """The reference is slow: no warm-up, 1 to max_repeats runs, stop early when over budget."""
    times, out = [], None
    while len(times) < max_repeats:
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
        if sum(times) > budget_s:
            break
    return statistics.median(times), times, out


# --------------------------------------------------------------------------------------------------
# Machine info and roofline


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def physical_cores():
    try:
        pairs = set()
        phys = core = None
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("physical id"):
                    phys = line.split(":", 1)[1].strip()
                elif line.startswith("core id"):
                    core = line.split(":", 1)[1].strip()
                elif not line.strip():
                    if core is not None:
                        pairs.add((phys, core))
                    phys = core = None
        if core is not None:
            pairs.add((phys, core))
        return len(pairs) or None
    except OSError:
        return None


def loadavg():
    """1-minute load average at start: a busy machine makes every number here unreliable."""
    try:
        with open("/proc/loadavg") as f:
            return f.read().split()[0]
    except OSError:
        return None


def gemm_rates(rnnfast, n=2048, repeats=5):
    """GFLOP/s of an n^3 float32 GEMM per library: {name: gflops or error string}."""
    rng = np.random.default_rng(1)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    flops = 2.0 * n * n * n
    rates = {}

    def record(name, fn):
        try:
            med, _, _ = time_runs(fn, warmup=1, repeats=repeats)
            rates[name] = flops / med / 1e9
        except Exception as e:
            rates[name] = f"{type(e).__name__}: {e}"

    c = np.empty((n, n), dtype=np.float32)
    record("numpy.matmul", lambda: np.matmul(a, b, out=c))
    if torch is not None:
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        tc = torch.empty((n, n), dtype=torch.float32)
        record("torch.matmul", lambda: torch.matmul(ta, tb, out=tc))
    if rnnfast is not None and hasattr(rnnfast, "matmul"):
        record("rnnfast.matmul", lambda: rnnfast.matmul(a, b, out=c))
        # The GEMM the layers run for their input projection: B packed once (as a layer caches W_ih^T).
        try:
            from rnnfast import _C
            packed = _C.PackedWeights(np.ascontiguousarray(b.T), 0)
            threads = rnnfast.get_num_threads()
            record("rnnfast packed", lambda: _C.gemm_packed(a, packed, c, False, threads))
        except (ImportError, AttributeError):
            pass
    return rates


# --------------------------------------------------------------------------------------------------
# One case


def short_err(e):
    return f"{type(e).__name__}: {e}"


def make_rnnfast(rnnfast, cell, nonlin, I, H, dtype, seed):
    if cell == "lstm":
        return rnnfast.LSTM(I, H, dtype=dtype, seed=seed)
    if cell == "gru":
        return rnnfast.GRU(I, H, dtype=dtype, seed=seed)
    return rnnfast.RNN(I, H, nonlinearity=nonlin, dtype=dtype, seed=seed)


def numpy_weights(cell, I, H, dtype, seed):
    """torch-style uniform(-1/sqrt(H), 1/sqrt(H)) weights, for when rnnfast is unavailable."""
    rng = np.random.default_rng(seed)
    G = GATES[cell]
    k = 1.0 / np.sqrt(H)
    shapes = {"weight_ih_l0": (G * H, I), "weight_hh_l0": (G * H, H), "bias_ih_l0": (G * H,), "bias_hh_l0": (G * H,)}
    return {n: rng.uniform(-k, k, size=s).astype(dtype) for n, s in shapes.items()}


def make_torch(cell, nonlin, I, H, dtype, state):
    tdtype = {np.float32: torch.float32, np.float64: torch.float64}[dtype]
    if cell == "lstm":
        m = torch.nn.LSTM(I, H, dtype=tdtype)
    elif cell == "gru":
        m = torch.nn.GRU(I, H, dtype=tdtype)
    else:
        m = torch.nn.RNN(I, H, nonlinearity=nonlin, dtype=tdtype)
    own = m.state_dict()
    missing = [k for k in own if k not in state]
    if missing:
        raise KeyError(f"rnnfast state_dict lacks {missing}")
    sd = {}
    for k, v in own.items():
        arr = np.ascontiguousarray(np.asarray(state[k]), dtype=dtype)
        if arr.shape != tuple(v.shape):
            raise ValueError(f"{k}: rnnfast shape {arr.shape} != torch shape {tuple(v.shape)}")
        sd[k] = torch.from_numpy(arr.copy())
    m.load_state_dict(sd, strict=True)
    return m


def max_rel_diff(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return f"shape {a.shape} vs {b.shape}"
    scale = max(1.0, float(np.max(np.abs(b))) if b.size else 1.0)
    return float(np.max(np.abs(a - b))) / scale if a.size else 0.0


def run_case(spec, args, rnnfast, ref, dtype, nthreads, results, checks, errors):
    cell, nonlin, T, B, I, H = spec
    name = case_name(*spec)
    rng = np.random.default_rng(args.seed + 12345)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    dy = rng.standard_normal((T, B, H)).astype(dtype)
    fwd = forward_flops(cell, T, B, I, H)

    # Model and weights (rnnfast draws them; torch and the reference get the same arrays).
    model, state = None, None
    rf_setup_err = None
    if rnnfast is not None and not args.no_rnnfast:
        try:
            model = make_rnnfast(rnnfast, cell, nonlin, I, H, dtype, args.seed)
            state = {k: np.array(v, copy=True) for k, v in model.state_dict().items()}
        except Exception as e:
            rf_setup_err = short_err(e)
            errors.append((name, "setup", "rnnfast", traceback.format_exc()))
    if state is None:
        state = numpy_weights(cell, I, H, dtype, args.seed)

    tmod, t_setup_err = None, None
    if torch is not None and not args.no_torch:
        try:
            tmod = make_torch(cell, nonlin, I, H, dtype, state)
        except Exception as e:
            t_setup_err = short_err(e)
            errors.append((name, "setup", "torch", traceback.format_exc()))

    for mode in args.modes:
        flops = fwd if mode == "infer" else 3.0 * fwd
        row = {"case": name, "cell": cell, "nonlinearity": nonlin, "T": T, "B": B, "I": I, "H": H,
               "mode": mode, "dtype": np.dtype(dtype).name, "threads": nthreads, "flops": flops,
               "rnnfast_s": None, "rnnfast_times": None, "rnnfast_err": None,
               "torch_s": None, "torch_times": None, "torch_err": None,
               "reference_s": None, "reference_times": None, "reference_err": None}
        outs = {}

        # ---- rnnfast
        if args.no_rnnfast:
            row["rnnfast_err"] = "skipped"
        elif rnnfast is None:
            row["rnnfast_err"] = "n/a"
        elif model is None:
            row["rnnfast_err"] = rf_setup_err
        else:
            try:
                if mode == "infer":
                    model.eval()
                    fn = lambda: model(x)[0]
                    med, times, y = time_runs(fn, warmup=args.warmup, repeats=args.repeats)
                    outs["rnnfast"] = np.array(y, copy=True)
                else:
                    model.train()

                    def fn():
                        model(x)
                        return model.backward(dy)[0]

                    med, times, dx = time_runs(fn, setup=model.zero_grad, warmup=args.warmup, repeats=args.repeats)
                    outs["rnnfast"] = np.array(dx, copy=True)
                    outs["rnnfast_grads"] = {n: np.array(p.grad, copy=True) for n, p in model.named_parameters()
                                             if getattr(p, "grad", None) is not None}
                row["rnnfast_s"], row["rnnfast_times"] = med, times
            except Exception as e:
                row["rnnfast_err"] = short_err(e)
                errors.append((name, mode, "rnnfast", traceback.format_exc()))

        # ---- torch
        if args.no_torch:
            row["torch_err"] = "skipped"
        elif torch is None:
            row["torch_err"] = "n/a"
        elif tmod is None:
            row["torch_err"] = t_setup_err
        else:
            try:
                if mode == "infer":
                    tmod.eval()
                    tx = torch.from_numpy(x)

                    def fn():
                        with torch.no_grad():
                            return tmod(tx)[0]

                    med, times, y = time_runs(fn, warmup=args.warmup, repeats=args.repeats)
                    outs["torch"] = y.detach().numpy().copy()
                else:
                    tmod.train()
                    tx = torch.from_numpy(x.copy()).requires_grad_(True)
                    tdy = torch.from_numpy(dy)

                    def setup():
                        tx.grad = None
                        tmod.zero_grad(set_to_none=True)

                    def fn():
                        y = tmod(tx)[0]
                        y.backward(tdy)
                        return tx.grad

                    med, times, dx = time_runs(fn, setup=setup, warmup=args.warmup, repeats=args.repeats)
                    outs["torch"] = dx.detach().numpy().copy()
                    outs["torch_grads"] = {n: p.grad.detach().numpy().copy() for n, p in tmod.named_parameters()
                                           if p.grad is not None}
                row["torch_s"], row["torch_times"] = med, times
            except Exception as e:
                row["torch_err"] = short_err(e)
                errors.append((name, mode, "torch", traceback.format_exc()))

        # ---- NumPy reference
        if args.no_reference:
            row["reference_err"] = "skipped"
        elif ref is None:
            row["reference_err"] = "n/a"
        else:
            try:
                rc = ref_cell(cell, nonlin)
                h0 = np.zeros((B, H), dtype=dtype)
                c0 = np.zeros((B, H), dtype=dtype) if cell == "lstm" else None
                w = (state["weight_ih_l0"], state["weight_hh_l0"], state["bias_ih_l0"], state["bias_hh_l0"])
                if mode == "infer":
                    fn = lambda: ref.forward(rc, x, h0, c0, *w)[0]
                else:
                    def fn():
                        cache = ref.forward(rc, x, h0, c0, *w)[3]
                        return ref.backward(rc, cache, dy)

                med, times, out = time_reference(fn, args.ref_repeats)
                row["reference_s"], row["reference_times"] = med, times
                if mode == "infer":
                    outs["reference"] = out
                elif isinstance(out, dict) and "dx" in out:
                    outs["reference"] = out["dx"]
            except Exception as e:
                row["reference_err"] = short_err(e)
                errors.append((name, mode, "reference", traceback.format_exc()))

        # ---- agreement (y for infer, dx and weight grads for train)
        what = "y" if mode == "infer" else "dx"
        for a, b in (("rnnfast", "torch"), ("rnnfast", "reference"), ("torch", "reference")):
            if a in outs and b in outs:
                checks.append((name, mode, f"{what} {a} vs {b}", max_rel_diff(outs[a], outs[b])))
        if "rnnfast_grads" in outs and "torch_grads" in outs:
            worst = None
            for n, g in outs["torch_grads"].items():
                if n in outs["rnnfast_grads"]:
                    d = max_rel_diff(outs["rnnfast_grads"][n], g)
                    if isinstance(d, str) or worst is None or (not isinstance(worst, str) and d > worst):
                        worst = d
            if worst is not None:
                checks.append((name, mode, "weight grads rnnfast vs torch", worst))

        results.append(row)
        print_progress(row)


# --------------------------------------------------------------------------------------------------
# Output


def fmt_ms(s):
    return f"{s * 1e3:.3f}" if s < 0.01 else f"{s * 1e3:.2f}" if s < 1 else f"{s * 1e3:.1f}"


def cell_text(s, err, width=48):
    if s is not None:
        return fmt_ms(s)
    if err in ("skipped", "n/a"):
        return err
    msg = "ERR " + (err or "unknown")
    msg = msg.replace("|", "/").replace("\n", " ")
    return msg if len(msg) <= width else msg[: width - 3] + "..."


def print_progress(row):
    parts = []
    for lib in ("rnnfast", "torch", "reference"):
        parts.append(f"{lib} {cell_text(row[lib + '_s'], row[lib + '_err'], 30)}")
    print(f"  .. {row['case']} [{row['mode']}]: " + ", ".join(parts), file=sys.stderr, flush=True)


def table(results, roofline):
    head = ["case", "mode", "rnnfast ms", "us/step", "GFLOP/s", "% of roofline", "torch ms",
            "speedup vs torch", "reference ms"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|"]
    for r in results:
        rs = r["rnnfast_s"]
        if rs is not None:
            us_v = rs / r["T"] * 1e6
            us = f"{us_v:.2f}" if us_v < 10 else f"{us_v:.1f}"
            gf = r["flops"] / rs / 1e9
            gfs = f"{gf:.1f}"
            roof = f"{100.0 * gf / roofline:.1f}%" if roofline else "n/a"
        else:
            us = gfs = roof = ""
        ts = r["torch_s"]
        speed = f"{ts / rs:.2f}x" if (rs and ts) else ""
        cells = [r["case"], r["mode"], cell_text(rs, r["rnnfast_err"]), us, gfs, roof,
                 cell_text(ts, r["torch_err"]), speed, cell_text(r["reference_s"], r["reference_err"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Variable lengths


def lengths_section(rnnfast, dtype, args, T=100, B=64, I=256, H=512):
    """LSTM at full length T vs the same batch with lengths uniform in [1, T] (mean about T/2): rnnfast's
    packed kernels should cost in proportion to the real tokens; torch runs a PackedSequence."""
    rng = np.random.default_rng(args.seed)
    lengths = rng.integers(1, T + 1, size=B)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    dy = rng.standard_normal((T, B, H)).astype(dtype)
    m = rnnfast.LSTM(I, H, dtype=dtype, seed=args.seed)
    tm = None
    if torch is not None and not args.no_torch:
        tm = torch.nn.LSTM(I, H).to(torch.float64 if dtype == np.float64 else torch.float32)
        tm.load_state_dict({k: torch.from_numpy(v) for k, v in m.state_dict().items()})
    tokens = int(lengths.sum())
    print(f"\nVariable lengths: LSTM T={T} B={B} I={I} H={H}, lengths uniform in [1, {T}] "
          f"({tokens} of {T * B} tokens, {tokens / (T * B):.2f})")
    print("| mode | rnnfast full ms | rnnfast lengths ms | ratio | torch full ms | torch packed ms | ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    rows = []
    for mode in args.modes:
        def rf(lens):
            if mode == "infer":
                m.eval()
                return lambda: m(x, lengths=lens)
            m.train()
            return lambda: (m(x, lengths=lens), m.backward(dy))
        full, _, _ = time_runs(rf(None), setup=m.zero_grad, warmup=args.warmup, repeats=args.repeats)
        part, _, _ = time_runs(rf(lengths), setup=m.zero_grad, warmup=args.warmup, repeats=args.repeats)
        tfull = tpart = None
        if tm is not None:
            tx, tdy, tl = torch.from_numpy(x), torch.from_numpy(dy), torch.from_numpy(lengths)

            def tf(packed):
                def run():
                    inp = torch.nn.utils.rnn.pack_padded_sequence(tx, tl, enforce_sorted=False) if packed else tx
                    if mode == "infer":
                        with torch.no_grad():
                            return tm(inp)
                    tm.zero_grad()
                    out = tm(inp)[0]
                    if packed:
                        out = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=T)[0]
                    out.backward(tdy)
                return run
            tfull, _, _ = time_runs(tf(False), warmup=args.warmup, repeats=args.repeats)
            tpart, _, _ = time_runs(tf(True), warmup=args.warmup, repeats=args.repeats)
        tcols = (f"{tfull * 1e3:.2f} | {tpart * 1e3:.2f} | {tpart / tfull:.2f}" if tfull else "n/a | n/a | n/a")
        print(f"| {mode} | {full * 1e3:.2f} | {part * 1e3:.2f} | {part / full:.2f} | {tcols} |")
        rows.append({"mode": mode, "rnnfast_full_s": full, "rnnfast_lengths_s": part,
                     "torch_full_s": tfull, "torch_packed_s": tpart, "token_fraction": tokens / (T * B)})
    return rows


def main(args=None):
    args = args or ARGS or parse_args()
    dtype = {"float32": np.float32, "float64": np.float64}[args.dtype]

    rnnfast, (ref, ref_err), rnnfast_err = import_rnnfast()
    if args.no_rnnfast:
        rnnfast = None

    # Threads: the same count for rnnfast and torch (and OpenBLAS, via the environment, when --threads is given).
    nthreads = args.threads
    if nthreads is None and rnnfast is not None and hasattr(rnnfast, "get_num_threads"):
        try:
            nthreads = int(rnnfast.get_num_threads())
        except Exception:
            nthreads = None
    if nthreads is None:
        nthreads = os.cpu_count() or 1
    thread_notes = []
    if rnnfast is not None and hasattr(rnnfast, "set_num_threads"):
        try:
            rnnfast.set_num_threads(nthreads)
        except Exception as e:
            thread_notes.append(f"rnnfast.set_num_threads failed: {short_err(e)}")
    if torch is not None:
        torch.set_num_threads(nthreads)

    rf_version = getattr(rnnfast, "__version__", None) if rnnfast is not None else None
    info = {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "physical_cores": physical_cores(),
        "threads": nthreads,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__ if torch is not None else None,
        "rnnfast": (rf_version or "unknown") if rnnfast is not None else None,
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
        "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS"),
        "dtype": args.dtype,
        "loadavg": loadavg(),
    }
    print(f"# CPU: {info['cpu']} | cores: {info['physical_cores'] or '?'} physical / {info['logical_cpus']} logical"
          f" | threads: {nthreads} | python {info['python']} | numpy {info['numpy']}"
          f" | torch {info['torch'] or 'not installed'} | rnnfast {info['rnnfast'] or 'not available'}"
          f" | OPENBLAS_CORETYPE={info['OPENBLAS_CORETYPE'] if info['OPENBLAS_CORETYPE'] is not None else '(unset)'}"
          f" | dtype {args.dtype} | loadavg {info['loadavg'] or '?'}")
    if rnnfast is None and not args.no_rnnfast:
        print(f"# rnnfast unavailable: {rnnfast_err}")
    if ref is None and not args.no_reference:
        print(f"# rnnfast.reference unavailable: {ref_err}")
    for n in thread_notes:
        print(f"# {n}")
    if rnnfast is not None:
        try:
            from rnnfast import _C
            rt = min(_C.core_round_trip_ns(100000) for _ in range(3))
            print(f"# core-to-core round trip: {rt:.0f} ns (a step's barrier costs at least this; on a VM it moves "
                  "with the host's vCPU placement, and the batch-1 cases with it)")
        except (ImportError, AttributeError):
            pass
    print(f"# timing: best of 3 block medians, each of {args.repeats} runs (31 for runs under 5 ms) after {args.warmup} warm-up(s); reference: median of up to "
          f"{args.ref_repeats} run(s), no warm-up; train = forward + backward, grads zeroed outside the timed region")

    specs = DEFAULT_CASES
    if args.cases:
        filters = [f.strip().lower() for f in args.cases.split(",") if f.strip()]
        specs = [s for s in specs if any(f in case_name(*s).lower() for f in filters)]
        if not specs:
            print(f"\nno case matches --cases {args.cases!r}; cases are: "
                  + "; ".join(case_name(*s) for s in DEFAULT_CASES))
            return 2

    roofline = None
    rates = {}
    if not args.no_roofline:
        rates = gemm_rates(rnnfast)
        print("\nRoofline: float32 GEMM 2048x2048x2048 (best of 3 block medians of 5)")
        for k, v in rates.items():
            print(f"  {k:15s} " + (f"{v:8.1f} GFLOP/s" if isinstance(v, float) else f"ERR {v}"))
        nums = [v for v in rates.values() if isinstance(v, float)]
        roofline = max(nums) if nums else None
        if roofline:
            print(f"  roofline       {roofline:8.1f} GFLOP/s (max of the above)")
    if args.dtype == "float64" and roofline:
        print("  (note: roofline is float32; float64 peak is about half)")

    results, checks, errors = [], [], []
    print("", flush=True)
    for spec in specs:
        run_case(spec, args, rnnfast, ref, dtype, nthreads, results, checks, errors)

    print()
    print(table(results, roofline))
    lengths_rows = []
    if rnnfast is not None and not args.no_lengths:
        try:
            lengths_rows = lengths_section(rnnfast, dtype, args)
        except Exception:
            errors.append(("variable lengths", "-", "rnnfast", traceback.format_exc()))

    if checks:
        tol = 1e-3 if dtype == np.float32 else 1e-9
        print(f"\nAgreement, max |a-b| / max(1, max|b|) (y for infer, dx and weight grads for train; "
              f"* = above {tol:g}):")
        grouped = {}
        for name, mode, what, d in checks:
            ds = d if isinstance(d, str) else f"{d:.1e}"
            flag = "*" if (isinstance(d, str) or d > tol) else ""
            grouped.setdefault((name, mode), []).append(f"{what} {ds}{flag}")
        for (name, mode), items in grouped.items():
            print(f"  {name} [{mode}]: " + "; ".join(items))
    if errors:
        print("\nErrors:")
        for name, mode, lib, tb in errors:
            print(f"--- {name} [{mode}] {lib}\n{tb.rstrip()}")

    if args.json:
        payload = {"machine": info, "roofline_gflops": roofline, "gemm_gflops": rates,
                   "args": {k: v for k, v in vars(args).items()}, "results": results, "lengths": lengths_rows,
                   "checks": [{"case": c[0], "mode": c[1], "what": c[2], "max_rel_diff": c[3]} for c in checks]}
        with open(args.json, "w") as f:
            json.dump(payload, f, indent=2, default=str)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
