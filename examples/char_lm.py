"""One-to-many generation: a character-level language model (Embedding -> LSTM -> Linear) trained with
truncated BPTT on text that ships with Python (the standard library's docstrings), then sampled with a
temperature one character at a time through the single-step LSTMCell, which takes the trained layer's
weights. Metric: bits per character on held-out text against a unigram (character frequency) model.

    python examples/char_lm.py [--quick]
"""
from __future__ import annotations

import importlib
import inspect
import sys
import time

import numpy as np

import rnnfast
from rnnfast import losses, nn, optim, train

try:
    from common import parse_args, report
except ImportError:
    sys.path.insert(0, __import__("os").path.dirname(__file__))
    from common import parse_args, report

MODULES = ["collections", "json", "argparse", "functools", "itertools", "textwrap", "string", "re", "os",
           "pathlib", "random", "statistics", "datetime", "fractions", "decimal", "heapq", "bisect", "csv",
           "logging", "subprocess", "threading", "shutil", "tempfile", "zipfile", "tarfile", "unittest"]


def stdlib_text(limit):
    """Docstrings of standard-library modules and their public members, ASCII, up to `limit` characters."""
    parts = []
    for name in MODULES:
        mod = importlib.import_module(name)
        for obj in [mod] + [getattr(mod, a) for a in sorted(dir(mod)) if not a.startswith("_")]:
            doc = inspect.getdoc(obj) if (obj is mod or getattr(obj, "__module__", None) == name) else None
            if doc:
                parts.append(doc.encode("ascii", "ignore").decode())
    return "\n\n".join(parts)[:limit]


class CharLM(rnnfast.Module):
    """Character ids (B, T) -> logits (B, T, vocab); pred, state = model(x, state) carries the LSTM state."""

    def __init__(self, vocab, embed=32, hidden=128, seed=0):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed, dtype=np.float32, seed=seed)
        self.lstm = rnnfast.LSTM(embed, hidden, batch_first=True, dtype=np.float32, seed=seed)
        self.head = nn.Linear(hidden, vocab, dtype=np.float32, seed=seed)

    def forward(self, ids, state=None):
        y, state = self.lstm(self.embed(ids), state)
        return self.head(y), state

    def backward(self, dlogits):
        dx, _ = self.lstm.backward(self.head.backward(dlogits))
        self.embed.backward(dx)


def bits_per_char(model, ids, chunk=200):
    """Cross-entropy (bits per character) of model on one long id sequence, state carried across chunks."""
    model.eval()
    state, total = None, 0.0
    for s in range(0, len(ids) - 1, chunk):
        x, y = ids[None, s:min(s + chunk, len(ids) - 1)], ids[None, s + 1:s + chunk + 1]
        logits, state = model(x, state)
        total += losses.cross_entropy(logits, y)[0] * y.size
    model.train()
    return total / (len(ids) - 1) / np.log(2)


def sample(model, alphabet, start, n, temperature, rng):
    """n characters drawn one at a time through an LSTMCell holding the trained layer's weights."""
    cell = rnnfast.LSTMCell(model.lstm.input_size, model.lstm.hidden_size, dtype=np.float32)
    cell.load_state_dict({k[:-3]: v for k, v in model.lstm.state_dict().items()})  # weight_ih_l0 -> weight_ih
    cell.eval()  # inference: nothing recorded, so the memory stays flat however long the sample
    model.eval()
    index = {c: i for i, c in enumerate(alphabet)}
    state, out = None, list(start)
    for ch in start[:-1]:
        state = cell(model.embed(np.array([index[ch]])), state)
    ch = start[-1]
    for _ in range(n):
        state = cell(model.embed(np.array([index[ch]])), state)
        logits = model.head(state[0])[0].astype(np.float64) / temperature
        p = np.exp(logits - logits.max())
        ch = alphabet[rng.choice(len(alphabet), p=p / p.sum())]
        out.append(ch)
    model.train()
    return "".join(out)


def main(argv=None):
    args = parse_args(__doc__.split("\n\n")[0], argv, None)
    rng = np.random.default_rng(args.seed)
    text = stdlib_text(40_000 if args.quick else 1_500_000)
    alphabet = sorted(set(text))
    ids = np.array([alphabet.index(c) for c in text]) if args.quick else \
        np.searchsorted(np.array(alphabet), np.array(list(text)))
    split = int(0.9 * len(ids))
    train_ids, val_ids = ids[:split], ids[split:]
    streams, T, k = (32, 100, 25) if args.quick else (64, 400, 50)
    n = len(train_ids) // (T + 1)
    seqs = train_ids[:n * (T + 1)].reshape(n, T + 1)
    x, y = seqs[:, :-1], seqs[:, 1:]
    model = CharLM(len(alphabet), 16 if args.quick else 32, 64 if args.quick else 256, seed=args.seed)
    opt = optim.Adam(model.parameters(), lr=1e-2 if args.quick else 3e-3)
    epochs = 4 if args.quick else 20
    t0 = time.perf_counter()
    train.fit(model, losses.cross_entropy, (x, y), optimizer=opt, epochs=epochs, batch_size=streams,
              seed=args.seed, clip_norm=1.0, tbptt=k, progress=not args.no_progress, desc="char-lm")
    seconds = time.perf_counter() - t0
    bpc = bits_per_char(model, val_ids[:20_000])
    freq = np.bincount(train_ids, minlength=len(alphabet)) + 1.0
    unigram = float(-np.mean(np.log2(freq[val_ids[:20_000]] / freq.sum())))
    print(f"{len(text)} characters, {len(alphabet)} symbols; trained {epochs} epochs in {seconds:.1f} s")
    better = report("char LM", "held-out bits/char", bpc, "unigram bits/char", unigram)
    for temp in (0.5, 1.0):
        print(f"--- sample, temperature {temp}:\n{sample(model, alphabet, 'Return the ', 200, temp, rng)}")
    return {"metric": bpc, "baseline": unigram, "better": better, "seconds": seconds}


if __name__ == "__main__":
    main()
