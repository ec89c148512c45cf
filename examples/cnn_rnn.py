"""CNN+RNN hybrid: a Conv1d extracts local features from a window of the yearly sunspot series, an LSTM
reads the feature sequence, and a linear head on its last step predicts the next year; test error against the
naive last-value baseline (and the plain LSTM of `python -m rnnfast` for comparison, same split).

    python examples/cnn_rnn.py [--quick]
"""
from __future__ import annotations

import sys
import time

import numpy as np

import rnnfast
from rnnfast import data, datasets, losses, nn, optim, train

try:
    from common import parse_args, plot_forecast, report
except ImportError:
    sys.path.insert(0, __import__("os").path.dirname(__file__))
    from common import parse_args, plot_forecast, report


class ConvLSTM(rnnfast.Module):
    """(B, T, 1) -> Conv1d over time (B, C, T) -> ReLU -> LSTM over the T feature vectors -> Linear -> (B, 1)."""

    def __init__(self, channels=16, hidden=32, seed=0):
        super().__init__()
        f64 = dict(dtype=np.float64, seed=seed)
        self.conv = nn.Conv1d(1, channels, kernel_size=3, padding=1, **f64)
        self.act = nn.ReLU()
        self.rnn = nn.ManyToOne(rnnfast.LSTM(channels, hidden, batch_first=True, **f64), nn.Linear(hidden, 1, **f64))

    def forward(self, x):
        feats = self.act(self.conv(np.ascontiguousarray(x.transpose(0, 2, 1))))  # (B, C, T)
        return self.rnn(np.ascontiguousarray(feats.transpose(0, 2, 1)))          # (B, T, C) into the LSTM

    def backward(self, dpred):
        dfeats = self.rnn.backward(dpred).transpose(0, 2, 1)
        return self.conv.backward(self.act.backward(np.ascontiguousarray(dfeats))).transpose(0, 2, 1)


def main(argv=None):
    args = parse_args(__doc__.split("\n\n")[0], argv, "cnn_rnn.png")
    years, spots = datasets.load_sunspots()
    window = 20
    train_part, _ = data.time_split(spots, val_fraction=0.2)
    scale = data.Standardizer().fit(train_part)
    x, y = data.sliding_windows(scale.transform(spots), window)
    y = y[:, 0]
    n_train = len(train_part) - window
    model = ConvLSTM(8 if args.quick else 16, 16 if args.quick else 32, seed=args.seed)
    epochs = 25 if args.quick else 80
    opt = optim.Adam(model.parameters(), lr=1e-2)
    t0 = time.perf_counter()
    train.fit(model, losses.mse, (x[:n_train], y[:n_train]), optimizer=opt, epochs=epochs, batch_size=32,
              seed=args.seed, clip_norm=1.0, scheduler=optim.CosineAnnealingLR(opt, epochs),
              progress=not args.no_progress, desc="conv+lstm")
    seconds = time.perf_counter() - t0
    pred = scale.inverse(train.predict(model, x[n_train:]))[:, 0]
    truth = scale.inverse(y[n_train:])[:, 0]
    naive = scale.inverse(x[n_train:, -1])[:, 0]
    mae, naive_mae = float(np.mean(np.abs(pred - truth))), float(np.mean(np.abs(naive - truth)))
    print(f"trained {epochs} epochs in {seconds:.1f} s")
    better = report("sunspots, Conv1d+LSTM", "test MAE", mae, "naive last-value MAE", naive_mae)
    plot_forecast(args.plot, years[len(years) - len(truth):], truth, pred, naive, "Conv1d+LSTM", "sunspot activity",
                  "next-year forecast, test years")
    return {"metric": mae, "baseline": naive_mae, "better": better, "seconds": seconds}


if __name__ == "__main__":
    main()
