"""Keras sentiment classification, many-to-one over padded token sequences: Embedding(mask_zero=True) ->
Bidirectional(LSTM) -> Dense(sigmoid); test accuracy against always answering the majority class; the training
curve.

A plain Keras script (Sequential, compile, fit, evaluate) in which one import line is changed to run the LSTM on
rnnfast's kernels: ``from rnnfast.keras import LSTM`` (was ``from keras.layers import LSTM``). The reviews are
synthetic, so nothing is downloaded: sequences of 8-80 token ids, padded with 0 at the end (the Embedding's mask
hides the padding, and the kernels run only the real tokens), made of neutral filler, positive and negative
words and a "not" that flips the next sentiment word; a review is positive when its (flipped) positive words
outnumber its negative ones. The flips make word counts alone insufficient: the order matters.

    KERAS_BACKEND=jax python examples/keras_sentiment.py [--quick] [--plot keras_sentiment.png]
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
    from common import parse_args, plot_one, report
except ImportError:  # run from elsewhere: examples/ is not on the path
    sys.path.insert(0, os.path.dirname(__file__))
    from common import parse_args, plot_one, report

VOCAB = 200
NOT = 1  # token ids: 0 padding, 1 "not", 2-21 positive words, 22-41 negative words, the rest neutral filler
POSITIVE = np.arange(2, 22)
NEGATIVE = np.arange(22, 42)


def reviews(n, max_len, seed):
    """(tokens [n, max_len] right-padded with 0, labels [n] in {0, 1})."""
    rng = np.random.default_rng(seed)
    tokens = np.zeros((n, max_len), np.int64)
    labels = np.zeros(n, np.int64)
    for i in range(n):
        length = rng.integers(8, max_len + 1)
        words = rng.integers(42, VOCAB, length)  # filler
        kind = np.digitize(rng.random(length), [0.12, 0.24, 0.30])  # 0 positive, 1 negative, 2 "not", 3 filler
        words[kind == 0] = rng.choice(POSITIVE, (kind == 0).sum())
        words[kind == 1] = rng.choice(NEGATIVE, (kind == 1).sum())
        words[kind == 2] = NOT
        score, flip = 0, False
        for w in words:
            if w == NOT:
                flip = True
            elif w < 42:
                score += (1 if w < 22 else -1) * (-1 if flip else 1)
                flip = False
        tokens[i, :length] = words
        labels[i] = score > 0
    return tokens, labels


def main(argv=None):
    args = parse_args(__doc__.split("\n\n")[0], argv, "keras_sentiment.png")
    keras.utils.set_random_seed(args.seed)
    n, max_len = (3000, 40) if args.quick else (20000, 80)
    x, y = reviews(n, max_len, args.seed)
    n_tr, n_va = int(0.7 * n), int(0.1 * n)

    model = keras.Sequential([
        keras.Input((max_len,), dtype="int64"),
        keras.layers.Embedding(VOCAB, 16, mask_zero=True),
        keras.layers.Bidirectional(LSTM(16 if args.quick else 32)),
        keras.layers.Dense(1, activation="sigmoid"),
    ])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="binary_crossentropy", metrics=["accuracy"])
    t0 = time.perf_counter()
    history = model.fit(x[:n_tr], y[:n_tr], validation_data=(x[n_tr:n_tr + n_va], y[n_tr:n_tr + n_va]),
                        epochs=8 if args.quick else 20, batch_size=64, verbose=0 if args.no_progress else 2)
    seconds = time.perf_counter() - t0
    _, accuracy = model.evaluate(x[n_tr + n_va:], y[n_tr + n_va:], verbose=0)
    majority = float(max(y[n_tr + n_va:].mean(), 1 - y[n_tr + n_va:].mean()))
    print(f"Keras ({keras.backend.backend()} backend), rnnfast's LSTM: {len(history.history['loss'])} epochs in "
          f"{seconds:.1f} s")
    better = report("synthetic reviews", "test accuracy", accuracy, "majority-class accuracy", majority,
                    lower_is_better=False)
    epochs = np.arange(1, len(history.history["accuracy"]) + 1)
    plot_one(args.plot, (7, 4), lambda ax: (ax.plot(epochs, history.history["accuracy"], label="training"),
                                             ax.plot(epochs, history.history["val_accuracy"], label="validation"),
                                             ax.legend()),
             "epoch", "accuracy", "Bidirectional LSTM (rnnfast) on synthetic reviews")
    return {"metric": accuracy, "baseline": majority, "better": better, "seconds": seconds}


if __name__ == "__main__":
    main()
