"""Getting data into batches: sliding windows over a series, padding variable-length sequences, seeded
shuffled mini-batches, a time-ordered split, and a standardiser fitted on the training part.
"""
from __future__ import annotations

import numbers

import numpy as np

__all__ = ["sliding_windows", "pad_sequences", "minibatches", "time_split", "Standardizer"]


def _int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def sliding_windows(series, window, horizon=1, step=1):
    """Input windows and the values that follow them, for forecasting.

    series: (T,) or (T, F). window: input length; horizon: how many next values form the target; step:
    the offset between consecutive windows. Returns (inputs (N, window, F), targets (N, horizon, F)), new
    arrays, with N = (T - window - horizon) // step + 1; a (T,) series gives F = 1.
    """
    s = np.asarray(series)
    if s.ndim not in (1, 2):
        raise ValueError(f"series: expected shape (T,) or (T, F), got {s.shape}")
    s = s[:, None] if s.ndim == 1 else s
    window, horizon, step = _int("window", window, 1), _int("horizon", horizon, 1), _int("step", step, 1)
    T = s.shape[0]
    if T < window + horizon:
        raise ValueError(f"series: {T} values are fewer than window + horizon = {window + horizon}")
    starts = np.arange(0, T - window - horizon + 1, step)
    x = s[starts[:, None] + np.arange(window)]
    y = s[starts[:, None] + window + np.arange(horizon)]
    return x, y


def pad_sequences(sequences, batch_first=False, padding_value=0, dtype=None):
    """Variable-length sequences (each (L_i, ...) with L_i >= 1) as one padded array and their lengths
    (torch.nn.utils.rnn.pad_sequence plus the lengths): (T, B, ...) or (B, T, ...) with batch_first,
    T = max L_i, and lengths (B,) int64."""
    seqs = [np.asarray(s) for s in sequences]
    if not seqs:
        raise ValueError("sequences: expected at least one sequence")
    trailing = seqs[0].shape[1:]
    for i, s in enumerate(seqs):
        if s.ndim < 1 or s.shape[0] < 1:
            raise ValueError(f"sequences[{i}]: expected a non-empty sequence (L, ...), got shape {s.shape}")
        if s.shape[1:] != trailing:
            raise ValueError(f"sequences[{i}]: trailing shape {s.shape[1:]} differs from sequences[0]'s {trailing}")
    lengths = np.array([s.shape[0] for s in seqs], dtype=np.int64)
    dtype = np.result_type(*seqs) if dtype is None else np.dtype(dtype)
    out = np.full((len(seqs), int(lengths.max())) + trailing, padding_value, dtype=dtype)
    for i, s in enumerate(seqs):
        out[i, :s.shape[0]] = s
    return (out if batch_first else np.ascontiguousarray(out.swapaxes(0, 1))), lengths


def minibatches(n, batch_size, shuffle=True, seed=0, epoch=0, drop_last=False):
    """Index arrays of the mini-batches of one epoch over n examples. With shuffle, the order is a
    permutation drawn from (seed, epoch) alone, so an epoch's batches can be reproduced (e.g. when a
    training run resumes from a checkpoint)."""
    n, batch_size = _int("n", n, 0), _int("batch_size", batch_size, 1)
    order = (np.random.default_rng([_int("seed", seed, 0), _int("epoch", epoch, 0)]).permutation(n)
             if shuffle else np.arange(n))
    stop = n - n % batch_size if drop_last else n
    return [order[i:i + batch_size] for i in range(0, stop, batch_size)]


def time_split(*arrays, val_fraction=0.2, test_fraction=0.0):
    """Splits arrays along axis 0 in time order (no shuffling, so the validation and test parts come after
    the training part, as a forecast would). Returns (train, val) or (train, val, test) when test_fraction
    > 0; each part is a tuple of the arrays' slices, or a single slice when one array was given."""
    if not arrays:
        raise ValueError("time_split: expected at least one array")
    n = len(arrays[0])
    for i, a in enumerate(arrays):
        if len(a) != n:
            raise ValueError(f"arrays[{i}]: length {len(a)} differs from arrays[0]'s {n}")
    for name, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if isinstance(f, bool) or not isinstance(f, numbers.Real) or not 0 <= f < 1:
            raise ValueError(f"{name} must be in [0, 1), got {f!r}")
    if val_fraction + test_fraction >= 1:
        raise ValueError("val_fraction + test_fraction must be < 1")
    n_test = int(round(n * test_fraction))
    n_val = int(round(n * val_fraction))
    cuts = [0, n - n_val - n_test, n - n_test, n]
    parts = [tuple(a[cuts[k]:cuts[k + 1]] for a in arrays) for k in range(3 if test_fraction else 2)]
    return tuple(p[0] if len(arrays) == 1 else p for p in parts)


class Standardizer:
    """(x - mean) / std with the statistics of the data it was fitted on (per feature, over axis 0).
    fit the training part only, so that nothing of the validation or test part leaks into training."""

    def fit(self, x):
        x = np.asarray(x, dtype=np.float64)
        self.mean = x.mean(axis=0)
        self.std = x.std(axis=0)
        self.std = np.where(self.std > 0, self.std, 1.0)
        return self

    def transform(self, x):
        return (np.asarray(x) - self.mean) / self.std

    def inverse(self, z):
        return np.asarray(z) * self.std + self.mean
