"""Vanishing and exploding gradients: the adding problem. Each sequence holds random values and two markers;
the target is the sum of the two marked values, the first of which lies in the first half of the sequence.
LSTM and GRU learn it (their gated state carries the early value across many steps); a vanilla tanh RNN's
gradient from the last step dies away within a few dozen steps, so it stays near the baseline of always
answering 1 (mean squared error 1/6).

Also shown: the gradient norm reaching each time step (||dL/dx_t||, from backward's dx), and what clipping
does when gradients explode (a vanilla RNN with its recurrent weights scaled up).

    python examples/gradients.py [--quick] [--plot gradients.png]
"""
from __future__ import annotations

import sys
import time

import numpy as np

import rnnfast
from rnnfast import losses, nn, optim, train

try:
    from common import parse_args, pyplot, report, save_figure
except ImportError:
    sys.path.insert(0, __import__("os").path.dirname(__file__))
    from common import parse_args, pyplot, report, save_figure


def adding_problem(n, T, rng):
    """(inputs (n, T, 2): value and marker channels, targets (n, 1))."""
    values = rng.uniform(0, 1, (n, T))
    marks = np.zeros((n, T))
    first, second = rng.integers(0, T // 2, n), rng.integers(T // 2, T, n)
    marks[np.arange(n), first] = marks[np.arange(n), second] = 1
    return np.stack([values, marks], axis=2), (values * marks).sum(axis=1, keepdims=True)


def model_of(kind, hidden, seed):
    layer = getattr(rnnfast, kind)(2, hidden, batch_first=True, dtype=np.float64, seed=seed)
    return nn.ManyToOne(layer, nn.Linear(hidden, 1, dtype=np.float64, seed=seed))


def gradient_per_step(model, x, y):
    """||dL/dx_t|| averaged over the batch, for each step t (dL from the loss on the last step)."""
    _, grad = losses.mse(model(x), y)
    dx = model.backward(grad)
    model.zero_grad()
    return np.linalg.norm(dx, axis=2).mean(axis=0)


def main(argv=None):
    args = parse_args(__doc__.split("\n\n")[0], argv, "gradients.png")
    rng = np.random.default_rng(args.seed)
    T, hidden, n_train = (20, 24, 3000) if args.quick else (100, 64, 20000)
    epochs = 10 if args.quick else 20
    x, y = adding_problem(n_train, T, rng)
    x_te, y_te = adding_problem(1000, T, rng)
    baseline = float(np.mean((y_te - 1.0) ** 2))
    results, norms = {}, {}
    for kind in ("RNN", "LSTM", "GRU"):
        model = model_of(kind, hidden, args.seed)
        norms[kind + " (initial)"] = gradient_per_step(model, x_te[:100], y_te[:100])
        t0 = time.perf_counter()
        train.fit(model, losses.mse, (x, y), optimizer=optim.Adam(model.parameters(), lr=1e-2 if args.quick else 3e-3), epochs=epochs,
                  batch_size=50, seed=args.seed, clip_norm=1.0, progress=not args.no_progress, desc=kind)
        mse = train.evaluate(model, losses.mse, (x_te, y_te))
        norms[kind + " (trained)"] = gradient_per_step(model, x_te[:100], y_te[:100])
        results[kind] = {"metric": mse, "seconds": time.perf_counter() - t0,
                         "better": report(f"adding problem T={T}, {kind}", "test MSE", mse,
                                          "always-1 baseline MSE", baseline)}

    # Exploding gradients: a vanilla RNN whose recurrent weights are scaled up, trained with plain SGD, with and
    # without clipping the gradient norm to 1. clip_grad_norm_ returns the norm before clipping.
    print("exploding gradients (RNN, W_hh x 4, SGD lr 0.05, 60 steps):")
    clip_runs = {}
    for clip in (None, 1.0):
        model = model_of("RNN", hidden, args.seed)
        model.rnn._params["weight_hh_l0"].data *= 4
        opt = optim.SGD(model.parameters(), lr=0.05)
        seen, losses_seen = [], []
        for idx in rnnfast.data.minibatches(len(x), 50, seed=args.seed)[:60]:
            value, grad = losses.mse(model(x[idx]), y[idx])
            model.backward(grad)
            seen.append(rnnfast.clip_grad_norm_(model.parameters(), clip if clip else np.inf))
            opt.step()
            opt.zero_grad()
            losses_seen.append(value)
        clip_runs[clip] = seen
        print(f"  clip_norm={clip}: gradient norm before clipping max {max(seen):.3g}, median {np.median(seen):.3g}; "
              f"final batch loss {losses_seen[-1]:.4g}")

    plt = pyplot() if args.plot else None
    if plt is not None:
        fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
        for k, v in norms.items():
            a.semilogy(np.arange(1, T + 1), v, label=k, ls="--" if "initial" in k else "-")
        a.set_xlabel("time step t")
        a.set_ylabel("mean ||dL/dx_t||")
        a.set_title(f"gradient reaching each step (adding problem, T={T})")
        a.legend(fontsize=7)
        for clip, seen in clip_runs.items():
            b.semilogy(seen, label=f"clip_norm={clip}")
        b.set_xlabel("SGD step")
        b.set_ylabel("gradient norm before clipping")
        b.set_title("exploding RNN (W_hh x 4)")
        b.legend()
        save_figure(fig, args.plot)
    return results


if __name__ == "__main__":
    main()
