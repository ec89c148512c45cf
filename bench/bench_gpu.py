"""GPU microbenchmark: rnnfast's CUDA kernels vs torch.nn (cuDNN) on the same weights and inputs, in the same
table as bench/bench_cpu.py. Needs a CUDA GPU, CuPy (pip install 'rnnfast[cuda]') and torch with CUDA; prints
what is missing and exits otherwise.

    python bench/bench_gpu.py [--repeats 20] [--cases LSTM] [--path auto|persistent|per-step]
"""
import argparse
import os
import statistics
import sys
import time

if __package__ in (None, ""):  # run as a file: make the `bench` package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.cases import DEFAULT_CASES, case, select  # noqa: E402

CASES = DEFAULT_CASES + [case("lstm", 100, 16, 512, 1024)]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--cases", default=None, help="comma-separated substrings of case names")
    p.add_argument("--path", choices=["auto", "persistent", "per-step"], default="auto")
    return p.parse_args(argv)


def timed(fn, sync, warmup, repeats):
    """Median wall time of fn() with the device synchronised around each call."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None):
    args = parse_args(argv)
    from bench.machine import import_rnnfast
    rnnfast, _, rnnfast_err = import_rnnfast()
    try:
        import cupy
        import torch
        if rnnfast is None:
            raise ImportError(rnnfast_err)
        from rnnfast import backend
    except ImportError as e:
        print(f"bench_gpu: needs CuPy, torch and rnnfast ({e})")
        return 0
    if not torch.cuda.is_available() or cupy.cuda.runtime.getDeviceCount() < 1:
        print("bench_gpu: no CUDA device visible; nothing to measure")
        return 0
    try:
        from _rnnfast import _cuda  # noqa: F401
    except ImportError:
        print("bench_gpu: rnnfast was built without CUDA (no nvcc at install time)")
        return 0
    backend.cuda_options["path"] = {"auto": 0, "persistent": 1, "per-step": 2}[args.path]
    props = cupy.cuda.runtime.getDeviceProperties(0)
    print(f"# GPU: {props['name'].decode()} | SMs: {props['multiProcessorCount']} | torch {torch.__version__} "
          f"(cuDNN {torch.backends.cudnn.version()}) | cupy {cupy.__version__} | rnnfast {rnnfast.__version__} | "
          f"kernel path: {args.path}")
    n = 4096
    a = cupy.random.standard_normal((n, n), dtype=cupy.float32)
    roof = 2 * n ** 3 / timed(lambda: a @ a, cupy.cuda.Device().synchronize, 2, 5) / 1e9
    print(f"# roofline: float32 GEMM {n}^3 with cuBLAS: {roof:.0f} GFLOP/s\n")
    print("| case | mode | rnnfast ms | us/step | GFLOP/s | % of roofline | torch ms | speedup vs torch |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    sync = cupy.cuda.Device().synchronize
    for c in select(CASES, args.cases.split(",") if args.cases else None):
        name, T, B, I, H = c.name, c.T, c.B, c.I, c.H
        if c.cell == "rnn":
            m, tm = rnnfast.RNN(I, H, nonlinearity=c.nonlin, seed=0), torch.nn.RNN(I, H, nonlinearity=c.nonlin)
        else:
            m = {"lstm": rnnfast.LSTM, "gru": rnnfast.GRU}[c.cell](I, H, seed=0)
            tm = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[c.cell](I, H)
        tm = tm.cuda()
        tm.load_state_dict({k: torch.from_numpy(v) for k, v in m.state_dict().items()})
        m.to("cuda")
        x = cupy.random.standard_normal((T, B, I), dtype=cupy.float32)
        dy = cupy.random.standard_normal((T, B, H), dtype=cupy.float32)
        tx = torch.as_tensor(x, device="cuda")
        tdy = torch.as_tensor(dy, device="cuda")
        for mode in ("infer", "train"):
            if mode == "infer":
                m.eval()
                rf = timed(lambda: m(x), sync, args.warmup, args.repeats)

                def torch_fn():
                    with torch.no_grad():
                        tm(tx)
            else:
                m.train()
                rf = timed(lambda: (m(x), m.backward(dy)), sync, args.warmup, args.repeats)
                txg = tx.clone().requires_grad_(True)

                def torch_fn():
                    tm.zero_grad()
                    tm(txg)[0].backward(tdy)
            tt = timed(torch_fn, torch.cuda.synchronize, args.warmup, args.repeats)
            flops = c.flops(mode)
            print(f"| {name} | {mode} | {rf * 1e3:.3f} | {rf / T * 1e6:.2f} | {flops / rf / 1e9:.1f} | "
                  f"{100 * flops / rf / 1e9 / roof:.1f}% | {tt * 1e3:.3f} | {tt / rf:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
