"""Keras forecasting, many-to-one: a Keras LSTM reads 60 days of a stock-like price series and predicts the next
day's close; test error against the naive last-value forecast; prediction-vs-truth plot.

A plain Keras script (Sequential, compile, fit with early stopping, predict) in which one import line is changed
to run the LSTM on rnnfast's kernels: ``from rnnfast.keras import LSTM`` (was ``from keras.layers import LSTM``).
The series is synthetic (geometric random walk whose daily returns carry some momentum and a monthly cycle), so
there is something to learn beyond the last value, which a real stock would hardly offer. The model predicts the
next day's log-return from the window's standardised log-returns; the split is in time order.

    KERAS_BACKEND=jax python examples/keras_forecasting.py [--quick] [--plot keras_forecasting.png]
"""
from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "torch")  # or "jax": before Keras is first imported

import keras  # noqa: E402
import numpy as np  # noqa: E402

from rnnfast.keras import LSTM  # noqa: E402 - was: from keras.layers import LSTM

try:
    from common import parse_args, plot_forecast, report
except ImportError:  # run from elsewhere: examples/ is not on the path
    sys.path.insert(0, os.path.dirname(__file__))
    from common import parse_args, plot_forecast, report


def stock_like(days, seed):
    """A daily close price: log-returns r_t = 0.5 r_{t-1} + a 21-day cycle + noise, from 100."""
    rng = np.random.default_rng(seed)
    r = np.zeros(days)
    for t in range(1, days):
        r[t] = 0.5 * r[t - 1] + 0.003 * np.sin(2 * np.pi * t / 21) + 0.01 * rng.standard_normal()
    return 100 * np.exp(np.cumsum(r)), r


def main(argv=None):
    args = parse_args(__doc__.split("\n\n")[0], argv, "keras_forecasting.png")
    keras.utils.set_random_seed(args.seed)
    window = 60
    days = 2500 if args.quick else 6000
    price, r = stock_like(days, args.seed)
    scale = r[: int(0.7 * days)].std()
    x = np.stack([r[t - window:t] for t in range(window, days)])[..., None] / scale  # the window's returns
    y = r[window:][:, None] / scale  # the next day's return
    last_price, next_price = price[window - 1:-1], price[window:]
    n_tr, n_va = int(0.7 * len(x)), int(0.1 * len(x))
    te = slice(n_tr + n_va, None)

    model = keras.Sequential([keras.Input((window, 1)), LSTM(16 if args.quick else 32), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="mse")
    t0 = time.perf_counter()
    history = model.fit(x[:n_tr], y[:n_tr], validation_data=(x[n_tr:n_tr + n_va], y[n_tr:n_tr + n_va]),
                        epochs=6 if args.quick else 30, batch_size=32, verbose=0 if args.no_progress else 2,
                        callbacks=[keras.callbacks.EarlyStopping(patience=4, restore_best_weights=True)])
    seconds = time.perf_counter() - t0
    pred = last_price[te] * np.exp(model.predict(x[te], verbose=0)[:, 0] * scale)
    truth, naive = next_price[te], last_price[te]
    mae = float(np.mean(np.abs(pred - truth)))
    naive_mae = float(np.mean(np.abs(naive - truth)))
    print(f"Keras ({keras.backend.backend()} backend), rnnfast's LSTM: trained {len(history.history['loss'])} "
          f"epochs in {seconds:.1f} s")
    better = report("stock-like series, next day", "test MAE", mae, "naive last-value MAE", naive_mae)
    plot_forecast(args.plot, np.arange(len(truth)), truth, pred, naive, "Keras LSTM (rnnfast)", "price",
                  "Stock-like series, test period")
    return {"metric": mae, "baseline": naive_mae, "better": better, "seconds": seconds}


if __name__ == "__main__":
    main()
