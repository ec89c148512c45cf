"""Sequence classification, many-to-one, variable lengths: a GRU reads each sequence and a linear head on its
last valid step names the class; accuracy against the majority-class baseline.

Data: scikit-learn's bundled 8x8 digits read row by row (8 steps of 8 pixels, each image cut after its last
non-blank row, so lengths vary) when scikit-learn is installed; otherwise (or with --data waves) four kinds of
noisy waveforms (sine, square, sawtooth, triangle) of random frequency, phase and length 12..40 steps.
Sequences are padded into one array with their lengths (rnnfast.data.pad_sequences) and the GRU skips the
padding (lengths=...).

    python examples/classification.py [--quick] [--data digits|waves]
"""
from __future__ import annotations

import sys
import time

import numpy as np

import rnnfast
from rnnfast import data, losses, nn, optim, train

try:
    from common import parse_args, plot_one, report
except ImportError:
    sys.path.insert(0, __import__("os").path.dirname(__file__))
    from common import parse_args, plot_one, report


def waves(n, rng):
    """n noisy waveforms of 4 kinds, lengths 12..40: (list of (L, 1) arrays, labels)."""
    seqs, labels = [], rng.integers(0, 4, n)
    for k in labels:
        L = int(rng.integers(12, 41))
        phase = rng.uniform(0, 1) + np.arange(L) * rng.uniform(0.05, 0.2)
        frac = phase % 1.0
        shape = [np.sin(2 * np.pi * phase), np.sign(np.sin(2 * np.pi * phase)), 2 * frac - 1,
                 4 * np.abs(frac - 0.5) - 1][k]
        seqs.append((shape + 0.3 * rng.standard_normal(L))[:, None])
    return seqs, labels


def digits():
    """scikit-learn's 8x8 digits as rows, each image cut after its last non-blank row."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = d.images / 16.0
    seqs = [img[:max(1, int(np.flatnonzero(img.sum(axis=1) > 0).max()) + 1)] for img in images]
    return seqs, d.target


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    kind = None
    if "--data" in argv:
        i = argv.index("--data")
        kind = argv[i + 1]
        del argv[i:i + 2]
    args = parse_args(__doc__.split("\n\n")[0], argv, "classification.png")
    rng = np.random.default_rng(args.seed)
    if kind is None:
        try:
            import sklearn  # noqa: F401
            kind = "digits"
        except ImportError:
            kind = "waves"
    seqs, labels = digits() if kind == "digits" else waves(600 if args.quick else 3000, rng)
    x, lengths = data.pad_sequences(seqs, batch_first=True)
    order = rng.permutation(len(labels))  # no time order here: a random split
    x, lengths, labels = x[order], lengths[order], labels[order]
    (tr, te) = data.time_split(x, labels, lengths, val_fraction=0.25)
    classes = int(labels.max()) + 1
    hidden = 24 if args.quick else 64
    # GRU over the padded batch (lengths skip the padding) -> each sequence's last valid step -> class logits.
    model = nn.ManyToOne(rnnfast.GRU(x.shape[2], hidden, batch_first=True, dtype=np.float64, seed=args.seed),
                         nn.Linear(hidden, classes, dtype=np.float64, seed=args.seed))
    opt = optim.Adam(model.parameters(), lr=1e-2 if args.quick else 5e-3)
    epochs = 12 if args.quick else 30
    t0 = time.perf_counter()
    train.fit(model, losses.cross_entropy, (tr[0], tr[1], tr[2]), optimizer=opt, epochs=epochs, batch_size=32,
              seed=args.seed, clip_norm=1.0, progress=not args.no_progress, desc=kind)
    seconds = time.perf_counter() - t0
    pred = train.predict(model, te[0], te[2]).argmax(axis=1)
    acc = float(np.mean(pred == te[1]))
    majority = float(np.max(np.bincount(tr[1], minlength=classes)) / len(tr[1]))
    majority_test = float(np.mean(te[1] == np.argmax(np.bincount(tr[1], minlength=classes))))
    print(f"{kind}: {len(tr[1])} training and {len(te[1])} test sequences, lengths {lengths.min()}..{lengths.max()}; "
          f"trained {epochs} epochs in {seconds:.1f} s (majority share in training {majority:.2f})")
    better = report(kind, "test accuracy", acc, "majority-class accuracy", majority_test, lower_is_better=False)
    conf = np.zeros((classes, classes), int)  # the confusion matrix
    np.add.at(conf, (te[1], pred), 1)
    plot_one(args.plot, (5, 4.5), lambda ax: ax.imshow(conf, cmap="Blues"), "predicted", "true",
             f"{kind}: accuracy {acc:.3f}")
    return {"metric": acc, "baseline": majority_test, "better": better, "seconds": seconds}


if __name__ == "__main__":
    main()
