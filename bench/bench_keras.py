"""One epoch of Keras ``fit`` with Keras's recurrent layers against rnnfast.keras's, per Keras backend, same run.

Models (issue 21): a forecaster, ``Sequential([Input((100, 32)), LSTM(128) or GRU(128), Dense(1)])`` on 1,024
sequences, and a sentiment classifier, ``Embedding(10000, 32, mask_zero=True) -> Bidirectional(LSTM(64)) ->
Dense(1, sigmoid)`` on 1,024 right-padded token sequences of 20 to 200 tokens; batch 64, Adam. Each model is built
twice from the same weights, once with ``keras.layers`` and once with ``rnnfast.keras`` (the one import a user
changes); after a warm-up epoch (compilation) the two are timed in alternating epochs (best of --repeats), and
their losses must agree (same start, same data, no shuffling). Each model runs without dropout and with
``recurrent_dropout`` (default 0.2; the layers get one seed, so both draw the same masks: the losses still agree).
Each backend runs in a subprocess of its own (Keras fixes its backend at import). Run from the repository root:

    python bench/bench_keras.py                    # torch, jax and tensorflow
    python bench/bench_keras.py --backends jax --repeats 5
    python bench/bench_keras.py --recurrent-dropout 0       # without the dropout rows
    python bench/bench_keras.py --quick            # seconds: small sizes, checks that everything runs
"""
import argparse
import json
import os
import subprocess
import sys
import time

if __package__ in (None, ""):  # run as a file: make the `bench` package importable (last: the installed rnnfast wins)
    sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.machine import cpu_model, loadavg  # noqa: E402

LOSS_RTOL = 1e-3  # the two epochs' mean losses (float32, same start and batches)


def models(quick, recurrent_dropout):
    """[(name, build(layers_module) -> compiled model, x, y)], each without dropout and, for recurrent_dropout > 0,
    with it; the data are seeded."""
    import keras
    import numpy as np

    rng = np.random.default_rng(0)
    n, T, F, H = (128, 20, 8, 16) if quick else (1024, 100, 32, 128)
    x = rng.standard_normal((n, T, F)).astype("float32")
    y = rng.standard_normal((n, 1)).astype("float32")
    Ts, V, E, Hs = (40, 500, 8, 16) if quick else (200, 10000, 32, 64)
    lengths = rng.integers(Ts // 10, Ts + 1, n)
    tokens = rng.integers(1, V, (n, Ts))
    tokens[np.arange(Ts)[None, :] >= lengths[:, None]] = 0
    labels = rng.integers(0, 2, (n, 1)).astype("float32")

    def forecaster(cls, kw):
        def build(layers):
            m = keras.Sequential([keras.Input((T, F)), getattr(layers, cls)(H, **kw), keras.layers.Dense(1)])
            m.compile(optimizer="adam", loss="mse")
            return m
        return build

    def sentiment(kw):
        def build(layers):
            m = keras.Sequential([keras.Input((Ts,), dtype="int32"), keras.layers.Embedding(V, E, mask_zero=True),
                                  keras.layers.Bidirectional(layers.LSTM(Hs, **kw)),
                                  keras.layers.Dense(1, activation="sigmoid")])
            m.compile(optimizer="adam", loss="binary_crossentropy")
            return m
        return build

    out = []
    for p in [0.0] + ([recurrent_dropout] if recurrent_dropout else []):
        kw, tag = (dict(recurrent_dropout=p, seed=1), f", recurrent_dropout={p}") if p else ({}, "")
        out += [(f"forecast LSTM({H}), T={T}{tag}", forecaster("LSTM", kw), x, y),
                (f"forecast GRU({H}), T={T}{tag}", forecaster("GRU", kw), x, y),
                (f"sentiment Bidirectional(LSTM({Hs})), T<={Ts}, masked{tag}", sentiment(kw), tokens, labels)]
    return out


def worker(args):
    """Runs in a subprocess under one backend: prints one JSON line per model."""
    import warnings

    import keras

    import rnnfast.keras

    for name, build, x, y in models(args.quick, args.recurrent_dropout):
        keras.utils.set_random_seed(0)
        built = {"keras": build(keras.layers)}
        built["rnnfast"] = build(rnnfast.keras)
        built["rnnfast"].set_weights(built["keras"].get_weights())
        times, losses = {"keras": [], "rnnfast": []}, {}
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # rnnfast's layers must not fall back to Keras's recurrence here
            for label, m in built.items():
                m.fit(x, y, batch_size=64, epochs=1, shuffle=False, verbose=0)  # warm-up: compilation
            for _ in range(args.repeats):
                for label, m in built.items():
                    t0 = time.perf_counter()
                    history = m.fit(x, y, batch_size=64, epochs=1, shuffle=False, verbose=0)
                    times[label].append(time.perf_counter() - t0)
                    losses.setdefault(label, float(history.history["loss"][0]))
        print(json.dumps({"backend": keras.backend.backend(), "model": name, "keras_s": min(times["keras"]),
                          "rnnfast_s": min(times["rnnfast"]), "keras_loss": losses["keras"],
                          "rnnfast_loss": losses["rnnfast"]}), flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backends", default="torch,jax,tensorflow")
    p.add_argument("--recurrent-dropout", type=float, default=0.2, metavar="P",
                   help="also run every model with recurrent_dropout=P (0: not)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="small sizes (seconds): checks that everything runs")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)
    rows, failed = [], []
    for backend in args.backends.split(","):
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", backend, "--repeats", str(args.repeats),
               "--recurrent-dropout", str(args.recurrent_dropout)]
        out = subprocess.run(cmd + (["--quick"] if args.quick else []), capture_output=True, text=True,
                             env=dict(os.environ, KERAS_BACKEND=backend))
        if out.returncode != 0:
            failed.append(f"{backend}: exit {out.returncode}\n{out.stderr[-3000:]}")
            continue
        rows += [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    print(f"# Keras fit, one epoch, batch 64: Keras's layers vs rnnfast.keras (best of {args.repeats})")
    print(f"CPU: {cpu_model()}, {os.cpu_count()} logical CPUs; load average {loadavg()}")
    print("\n| backend | model | Keras s | rnnfast s | speed-up | losses agree |")
    print("|---|---|---:|---:|---:|---|")
    disagree = []
    for r in rows:
        agree = abs(r["rnnfast_loss"] - r["keras_loss"]) <= LOSS_RTOL * max(abs(r["keras_loss"]), 1e-12)
        if not agree:
            disagree.append(r)
        print(f"| {r['backend']} | {r['model']} | {r['keras_s']:.2f} | {r['rnnfast_s']:.2f} | "
              f"{r['keras_s'] / r['rnnfast_s']:.1f}x | {'yes' if agree else 'NO'} "
              f"({r['keras_loss']:.5g} vs {r['rnnfast_loss']:.5g}) |")
    for f in failed:
        print(f"\nFAILED {f}")
    return 1 if failed or disagree else 0


if __name__ == "__main__":
    sys.exit(main())
