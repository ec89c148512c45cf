"""Forecasting, many-to-one: an LSTM reads a year of weekly Mauna Loa CO2 and predicts the value 8 weeks
ahead; test error against the naive last-value baseline; prediction-vs-truth plot.

The model predicts the change from the last observed week (the series' trend and seasonal cycle), which the
naive forecast assumes is zero. Train/validation/test are split in time order (the test part is the last
20% of 1958-2001); the standardiser is fitted on the training part only.

    python examples/forecasting.py [--quick] [--plot forecasting.png]
"""
from __future__ import annotations

import sys
import time

import numpy as np

import rnnfast
from rnnfast import data, datasets, losses, nn, optim, train

try:
    from common import parse_args, plot_forecast, report
except ImportError:  # run from elsewhere: examples/ is not on the path
    sys.path.insert(0, __import__("os").path.dirname(__file__))
    from common import parse_args, plot_forecast, report


def forecaster(hidden_size, seed):
    """(B, window, 1) -> LSTM -> the last step's output -> Linear -> (B, 1)."""
    return nn.ManyToOne(rnnfast.LSTM(1, hidden_size, batch_first=True, dtype=np.float64, seed=seed),
                        nn.Linear(hidden_size, 1, dtype=np.float64, seed=seed))


def main(argv=None):
    args = parse_args(__doc__.split("\n\n")[0], argv, "forecasting.png")
    window, horizon = 52, 8
    dates, co2 = datasets.load_co2()  # the 59 missing weeks interpolated
    x, y = data.sliding_windows(co2, window, horizon)
    x, target = x[:, :, 0], y[:, -1, 0]  # the value `horizon` weeks after the window
    last = x[:, -1]
    # The window relative to its last week: its shape (trend, season), not the level, which rises out of the
    # training range during the test years.
    rel = x - last[:, None]
    (x_tr, d_tr), (x_va, d_va), (x_te, d_te) = data.time_split(rel, target - last, val_fraction=0.1,
                                                               test_fraction=0.2)
    last_te = last[len(last) - len(d_te):]
    scale_x = data.Standardizer().fit(x_tr.reshape(-1))
    scale_d = data.Standardizer().fit(d_tr)
    prep = lambda xx, dd: (scale_x.transform(xx)[..., None], scale_d.transform(dd)[:, None])  # noqa: E731
    tr, va, te = prep(x_tr, d_tr), prep(x_va, d_va), prep(x_te, d_te)
    if args.quick:
        tr = (tr[0][::2], tr[1][::2])
    epochs = 8 if args.quick else 40
    model = forecaster(16 if args.quick else 32, args.seed)
    opt = optim.Adam(model.parameters(), lr=5e-3)
    t0 = time.perf_counter()
    history = train.fit(model, losses.mse, tr, va, optimizer=opt, epochs=epochs, batch_size=32, seed=args.seed,
                        clip_norm=1.0, scheduler=optim.CosineAnnealingLR(opt, epochs), early_stopping=8,
                        restore_best=True, progress=not args.no_progress, desc="co2")
    seconds = time.perf_counter() - t0
    pred = last_te + scale_d.inverse(train.predict(model, te[0])[:, 0])
    truth = last_te + d_te
    mae = float(np.mean(np.abs(pred - truth)))
    naive = float(np.mean(np.abs(last_te - truth)))
    print(f"trained {len(history['epoch'])} epochs in {seconds:.1f} s")
    better = report(f"CO2, {horizon} weeks ahead", "test MAE (ppm)", mae, "naive last-value MAE", naive)
    plot_forecast(args.plot, dates[len(dates) - len(truth):], truth, pred, last_te, f"LSTM, {horizon} weeks ahead",
                  "CO2 (ppm)", "Mauna Loa CO2, test period")
    return {"metric": mae, "baseline": naive, "better": better, "seconds": seconds}


if __name__ == "__main__":
    main()
