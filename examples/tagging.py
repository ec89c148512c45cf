"""Bidirectional tagging, many-to-many with equal lengths, variable lengths: each token of a sequence gets a
tag that depends on both of its neighbours, tag_t = max(x_{t-1}, x_{t+1}) (0 beyond either end), so a
tagger must read the sequence in both directions. A bidirectional GRU (Embedding -> GRU(bidirectional=True)
-> Linear per step) against the same model reading forward only. Sequences of 5..15 tokens are padded, the
GRU skips the padding (lengths) and the padded tags are -100, which the loss ignores.

    python examples/tagging.py [--quick]
"""
from __future__ import annotations

import sys
import time

import numpy as np

import rnnfast
from rnnfast import data, losses, nn, optim, train

try:
    from common import parse_args, pyplot, report, save_figure
except ImportError:
    sys.path.insert(0, __import__("os").path.dirname(__file__))
    from common import parse_args, pyplot, report, save_figure

K = 5  # token and tag values 0..4


class Tagger(rnnfast.Module):
    """Token ids (B, T) with lengths -> tag logits (B, T, K)."""

    def __init__(self, hidden, bidirectional, seed=0):
        super().__init__()
        self.embed = nn.Embedding(K, 8, dtype=np.float64, seed=seed)
        self.gru = rnnfast.GRU(8, hidden, bidirectional=bidirectional, batch_first=True, dtype=np.float64, seed=seed)
        self.head = nn.Linear(2 * hidden if bidirectional else hidden, K, dtype=np.float64, seed=seed)

    def forward(self, ids, lengths):
        y, _ = self.gru(self.embed(ids), lengths=lengths)
        return self.head(y)

    def backward(self, dlogits):
        dx, _ = self.gru.backward(self.head.backward(dlogits))
        self.embed.backward(dx)


def make(n, rng):
    seqs = [rng.integers(0, K, int(rng.integers(5, 16))) for _ in range(n)]
    tags = [np.maximum(np.concatenate([[0], s[:-1]]), np.concatenate([s[1:], [0]])) for s in seqs]
    x, lengths = data.pad_sequences(seqs, batch_first=True)
    y, _ = data.pad_sequences(tags, batch_first=True, padding_value=-100)
    return x, y, lengths


def token_accuracy(model, x, y, lengths):
    pred = train.predict(model, x, lengths).argmax(axis=2)
    valid = y != -100
    return float(np.mean(pred[valid] == y[valid]))


def main(argv=None):
    args = parse_args(__doc__.split("\n\n")[0], argv, "tagging.png")
    rng = np.random.default_rng(args.seed)
    n, hidden, epochs = (1500, 24, 5) if args.quick else (20000, 64, 20)
    tr, te = make(n, rng), make(1000, rng)
    results = {}
    for bidirectional in (True, False):
        name = "bidirectional" if bidirectional else "forward only"
        model = Tagger(hidden, bidirectional, seed=args.seed)
        t0 = time.perf_counter()
        h = train.fit(model, losses.cross_entropy, tr, optimizer=optim.Adam(model.parameters(), lr=1e-2),
                      epochs=epochs, batch_size=32, seed=args.seed, clip_norm=1.0, progress=not args.no_progress,
                      desc=name)
        results[name] = {"metric": token_accuracy(model, *te), "seconds": time.perf_counter() - t0,
                         "curve": h["loss"]}
        print(f"{name}: token accuracy {results[name]['metric']:.4f} ({results[name]['seconds']:.1f} s)")
    better = report("tagging", "bidirectional token accuracy", results["bidirectional"]["metric"],
                    "forward-only accuracy", results["forward only"]["metric"], lower_is_better=False)
    plt = pyplot() if args.plot else None
    if plt is not None:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for name, r in results.items():
            ax.plot(np.arange(1, epochs + 1), r["curve"], label=f"{name} (accuracy {r['metric']:.3f})")
        ax.set_xlabel("epoch")
        ax.set_ylabel("training cross-entropy")
        ax.legend()
        save_figure(fig, args.plot)
    return {"metric": results["bidirectional"]["metric"], "baseline": results["forward only"]["metric"],
            "better": better, "seconds": sum(r["seconds"] for r in results.values())}


if __name__ == "__main__":
    main()
