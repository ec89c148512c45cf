"""GPU microbenchmark: rnnfast's CUDA kernels vs torch.nn (cuDNN) and, if installed, flashrnn, on the same
weights and inputs, in the same table as bench/bench_cpu.py. Needs a CUDA GPU, CuPy (pip install
'rnnfast[cuda]') and torch with CUDA; prints what is missing and exits otherwise.

    python bench/bench_gpu.py [--repeats 20] [--cases LSTM] [--path auto|persistent|per-step]
"""
import argparse
import statistics
import sys
import time


CASES = [  # (cell, T, B, I, H)
    ("lstm", 100, 1, 64, 256),
    ("lstm", 100, 64, 256, 512),
    ("gru", 100, 64, 256, 512),
    ("rnn_tanh", 100, 64, 256, 512),
    ("lstm", 1000, 1, 32, 64),
    ("lstm", 100, 16, 512, 1024),
]
GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1}


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
    try:
        import cupy
        import torch
        import rnnfast
        from rnnfast import backend
    except ImportError as e:
        print(f"bench_gpu: needs CuPy, torch and rnnfast ({e})")
        return 0
    if not torch.cuda.is_available() or cupy.cuda.runtime.getDeviceCount() < 1:
        print("bench_gpu: no CUDA device visible; nothing to measure")
        return 0
    try:
        from rnnfast import _cuda  # noqa: F401
    except ImportError:
        print("bench_gpu: rnnfast was built without CUDA (no nvcc at install time)")
        return 0
    try:
        import flashrnn  # noqa: F401
        have_flash = True
    except ImportError:
        have_flash = False
    backend.cuda_options["path"] = {"auto": 0, "persistent": 1, "per-step": 2}[args.path]
    props = cupy.cuda.runtime.getDeviceProperties(0)
    print(f"# GPU: {props['name'].decode()} | SMs: {props['multiProcessorCount']} | torch {torch.__version__} "
          f"(cuDNN {torch.backends.cudnn.version()}) | cupy {cupy.__version__} | rnnfast {rnnfast.__version__} | "
          f"kernel path: {args.path} | flashrnn: {'yes' if have_flash else 'not installed'}")
    n = 4096
    a = cupy.random.standard_normal((n, n), dtype=cupy.float32)
    roof = 2 * n ** 3 / timed(lambda: a @ a, cupy.cuda.Device().synchronize, 2, 5) / 1e9
    print(f"# roofline: float32 GEMM {n}^3 with cuBLAS: {roof:.0f} GFLOP/s\n")
    print("| case | mode | rnnfast ms | us/step | GFLOP/s | % of roofline | torch ms | speedup vs torch |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    sync = cupy.cuda.Device().synchronize
    for cell, T, B, I, H in CASES:
        name = f"{cell.upper()} T={T} B={B} I={I} H={H}"
        if args.cases and not any(c.strip().lower() in name.lower() for c in args.cases.split(",")):
            continue
        cls = {"lstm": rnnfast.LSTM, "gru": rnnfast.GRU, "rnn_tanh": rnnfast.RNN}[cell]
        m = cls(I, H, seed=0)
        tcls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn_tanh": torch.nn.RNN}[cell]
        tm = tcls(I, H).cuda()
        tm.load_state_dict({k: torch.from_numpy(v) for k, v in m.state_dict().items()})
        m.to("cuda")
        x = cupy.random.standard_normal((T, B, I), dtype=cupy.float32)
        dy = cupy.random.standard_normal((T, B, H), dtype=cupy.float32)
        tx = torch.as_tensor(x, device="cuda")
        tdy = torch.as_tensor(dy, device="cuda")
        fwd = 2.0 * T * B * GATES[cell] * H * (I + H)
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
            flops = fwd * (1 if mode == "infer" else 3)
            print(f"| {name} | {mode} | {rf * 1e3:.3f} | {rf / T * 1e6:.2f} | {flops / rf / 1e9:.1f} | "
                  f"{100 * flops / rf / 1e9 / roof:.1f}% | {tt * 1e3:.3f} | {tt / rf:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
