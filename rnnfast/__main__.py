"""``python -m rnnfast``: train a small LSTM forecaster on the bundled sunspot series (NumPy only, well under a
minute) and print its test error against the naive last-value baseline.

    python -m rnnfast            the forecasting demo (``--epochs N``, ``--no-progress``)
    python -m rnnfast info       version, build, SIMD ISA, threads, the choices the tuner made here, CUDA

The microbenchmarks are tooling of the repository, not part of the package: ``python bench/bench_cpu.py`` (or
``python -m bench.bench_cpu``) from a checkout.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

import rnnfast
from rnnfast import data, datasets, losses, nn, optim, train


def demo(epochs=60, progress=True, window=20, seed=0):
    """Trains the forecaster on yearly sunspots (1700-2008, the last 20% held out in time order); returns
    (test MAE, baseline MAE, seconds per epoch)."""
    years, spots = datasets.load_sunspots()
    train_part, test_part = data.time_split(spots, val_fraction=0.2)
    scale = data.Standardizer().fit(train_part)
    z = scale.transform(spots)
    x, y = data.sliding_windows(z, window)
    y = y[:, 0]  # (N, 1): the next year
    n_train = len(train_part) - window
    (x_tr, y_tr), (x_te, y_te) = (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:])
    model = nn.ManyToOne(rnnfast.LSTM(1, 32, batch_first=True, dtype=np.float64, seed=seed),
                         nn.Linear(32, 1, dtype=np.float64, seed=seed))
    opt = optim.Adam(model.parameters(), lr=1e-2)
    sched = optim.CosineAnnealingLR(opt, T_max=epochs)
    t0 = time.perf_counter()
    train.fit(model, losses.mse, (x_tr, y_tr), optimizer=opt, epochs=epochs, batch_size=32, seed=seed,
              clip_norm=1.0, scheduler=sched, progress=progress, desc="sunspots")
    per_epoch = (time.perf_counter() - t0) / max(epochs, 1)
    pred = scale.inverse(train.predict(model, x_te))[:, 0]
    truth = scale.inverse(y_te)[:, 0]
    naive = scale.inverse(x_te[:, -1])[:, 0]
    return float(np.mean(np.abs(pred - truth))), float(np.mean(np.abs(naive - truth))), per_epoch


def _cpu_budget():
    """Where the default thread count comes from: the affinity mask and the cgroup CPU quota."""
    from rnnfast._core import cpus
    q = cpus.quota_limit()
    return (f"{cpus.affinity_count()} CPUs in the affinity mask, cgroup CPU quota "
            f"{'none' if q is None else f'{q:g} CPUs'}")


def info():
    """Lines describing this build."""
    from rnnfast import backend
    from rnnfast._core.ext import cuda_module

    try:
        import cupy  # noqa: F401
        cuda = "CuPy importable"
        try:
            cuda += f", {cupy.cuda.runtime.getDeviceCount()} GPU(s)"
        except Exception as e:  # noqa: BLE001 - no driver or no device
            cuda += f", no usable GPU ({type(e).__name__})"
    except ImportError:
        cuda = "not available (CuPy is not installed; pip install 'rnnfast[cuda]')"
    try:
        cuda_module(emulated=False)
        kernels = "compiled"
    except Exception:  # noqa: BLE001 - built without nvcc
        kernels = "not compiled in this build"
    return [f"rnnfast {rnnfast.__version__} ({os.path.dirname(rnnfast.__file__)})",
            f"python {sys.version.split()[0]}, numpy {np.__version__}",
            f"CPU kernels: SIMD ISA {rnnfast.isa()}, {rnnfast.get_num_threads()} threads ({_cpu_budget()}); "
            f"bfloat16 inference "
            f"weights {'on AVX512_BF16' if backend.bf16_native() else 'emulated (no AVX512_BF16)'}",
            *backend.tuning_lines(np.float32),
            f"CUDA kernels: {kernels}; CUDA: {cuda}"]


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "info":
        print("\n".join(info()))
        return 0
    if argv and argv[0] == "bench":
        print("The microbenchmark is tooling of the repository, not part of the package: from a checkout of "
              "rnnfast, run python bench/bench_cpu.py (torch and the engines: pip install torch==2.13.0 "
              "'.[bench]').", file=sys.stderr)
        return 2
    p = argparse.ArgumentParser(prog="python -m rnnfast", description=__doc__.split("\n\n")[0],
                                epilog="subcommand: info")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    mae, naive, per_epoch = demo(args.epochs, progress=not args.no_progress)
    print(f"Sunspots, next-year forecast on the last 20% of 1700-2008 (LSTM(1, 32) + Linear, {args.epochs} epochs):")
    print(f"  test MAE {mae:.2f}   naive last-value baseline MAE {naive:.2f}   "
          f"({'beats' if mae < naive else 'does not beat'} the baseline, {per_epoch * 1000:.0f} ms per epoch)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
