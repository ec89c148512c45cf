"""Many-to-many with different lengths: an encoder-decoder that reverses digit strings. The encoder is an
LSTM layer over the embedded source (variable lengths); the decoder is an LSTMCell started from the encoder's
final state, trained with teacher forcing (it reads the true previous digit) and decoded greedily at test
time (it reads its own previous answer). The training loop is written out by hand, to show the pieces
``rnnfast.train.fit`` otherwise runs: forward, loss, backward through the decoder steps in reverse and into
the encoder, clipping, the optimizer step. Metric: digit accuracy of the decoded strings against copying the
source unchanged.

    python examples/seq2seq.py [--quick]
"""
from __future__ import annotations

import sys
import time

import numpy as np

import rnnfast
from rnnfast import data, losses, nn, optim

try:
    from common import parse_args, plot_one, report
except ImportError:
    sys.path.insert(0, __import__("os").path.dirname(__file__))
    from common import parse_args, plot_one, report

BOS, EOS, VOCAB = 10, 11, 12  # digits 0-9, begin and end of a decoded string


class Seq2Seq(rnnfast.Module):
    def __init__(self, embed=16, hidden=96, seed=0):
        super().__init__()
        f32 = dict(dtype=np.float32, seed=seed)
        self.src_embed = nn.Embedding(VOCAB, embed, **f32)
        self.encoder = rnnfast.LSTM(embed, hidden, batch_first=True, **f32)
        self.tgt_embed = nn.Embedding(VOCAB, embed, **f32)
        self.decoder = rnnfast.LSTMCell(embed, hidden, **f32)
        self.out = nn.Linear(hidden, VOCAB, **f32)

    def encode(self, src, lengths):
        _, (h, c) = self.encoder(self.src_embed(src), lengths=lengths)
        return h[0], c[0]  # (B, H): the state at each source's own last digit

    def forward(self, src, lengths, dec_in):
        """Teacher forcing: logits (B, T_out, VOCAB) for decoder inputs dec_in (B, T_out)."""
        state = self.encode(src, lengths)
        logits = []
        for t in range(dec_in.shape[1]):
            state = self.decoder(self.tgt_embed(dec_in[:, t]), state)
            logits.append(self.out(state[0]))
        self._src_shape = (src.shape[0], src.shape[1], self.encoder.hidden_size)
        return np.stack(logits, axis=1)

    def backward(self, dlogits):
        dh = dc = None
        for t in reversed(range(dlogits.shape[1])):  # each module pops its most recent record
            d_out = self.out.backward(np.ascontiguousarray(dlogits[:, t]))
            dx, (dh, dc) = self.decoder.backward((d_out if dh is None else d_out + dh, dc))
            self.tgt_embed.backward(dx)
        # The encoder's outputs feed nothing; its final state received (dh, dc).
        dsrc, _ = self.encoder.backward(np.zeros(self._src_shape, np.float32), (dh[None], dc[None]))
        self.src_embed.backward(dsrc)

    def greedy(self, src, lengths, max_len):
        """Decoded digit lists, each up to EOS (or max_len digits)."""
        self.eval()
        state = self.encode(src, lengths)
        prev = np.full(len(src), BOS)
        out = np.zeros((len(src), max_len), dtype=np.int64)
        for t in range(max_len):
            state = self.decoder(self.tgt_embed(prev), state)
            prev = out[:, t] = self.out(state[0]).argmax(axis=1)
        self.train()
        return [list(row[:list(row).index(EOS)] if EOS in row else row) for row in out]


def make_pairs(n, max_digits, rng):
    """(source digit lists, their reverses)."""
    srcs = [list(rng.integers(0, 10, int(rng.integers(2, max_digits + 1)))) for _ in range(n)]
    return srcs, [s[::-1] for s in srcs]


def batch_arrays(srcs, tgts):
    src, lengths = data.pad_sequences([np.array(s) for s in srcs], batch_first=True)
    dec_in, _ = data.pad_sequences([np.array([BOS] + t) for t in tgts], batch_first=True)
    target, _ = data.pad_sequences([np.array(t + [EOS]) for t in tgts], batch_first=True, padding_value=-100)
    return src, lengths, dec_in, target


def digit_accuracy(pred, truth):
    return float(np.mean([p[i] == d if i < len(p) else False for p, t in zip(pred, truth) for i, d in enumerate(t)]))


def main(argv=None):
    args = parse_args(__doc__.split("\n\n")[0], argv, "seq2seq.png")
    rng = np.random.default_rng(args.seed)
    max_digits, n_train, epochs = (5, 2000, 4) if args.quick else (10, 20000, 15)
    srcs, tgts = make_pairs(n_train, max_digits, rng)
    test_srcs, test_tgts = make_pairs(1000, max_digits, rng)
    model = Seq2Seq(16, 64 if args.quick else 128, seed=args.seed)
    params = model.parameters()
    opt = optim.Adam(params, lr=1e-2 if args.quick else 3e-3)
    curve = []
    t0 = time.perf_counter()
    for epoch in range(1, epochs + 1):
        total = 0.0
        batches = data.minibatches(n_train, 64, seed=args.seed, epoch=epoch)
        for idx in batches:
            src, lengths, dec_in, target = batch_arrays([srcs[i] for i in idx], [tgts[i] for i in idx])
            loss, dlogits = losses.cross_entropy(model(src, lengths, dec_in), target)
            model.backward(dlogits)
            rnnfast.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad()
            total += loss
        curve.append(total / len(batches))
        if not args.no_progress:
            print(f"epoch {epoch}: loss {curve[-1]:.4f}")
    seconds = time.perf_counter() - t0
    src, lengths, _, _ = batch_arrays(test_srcs, test_tgts)
    pred = model.greedy(src, lengths, max_digits + 1)
    acc = digit_accuracy(pred, test_tgts)
    copy = digit_accuracy(test_srcs, test_tgts)
    exact = float(np.mean([p == t for p, t in zip(pred, test_tgts)]))
    print(f"reversing 2..{max_digits} digits: trained {epochs} epochs in {seconds:.1f} s; exact strings {exact:.3f}")
    for s, p in list(zip(test_srcs, pred))[:3]:
        print(f"  {''.join(map(str, s))} -> {''.join(map(str, p))}")
    better = report("seq2seq", "digit accuracy", acc, "copy-the-source accuracy", copy, lower_is_better=False)
    plot_one(args.plot, (5, 3.5), lambda ax: ax.plot(np.arange(1, epochs + 1), curve), "epoch",
             "training cross-entropy", f"reversing digit strings: digit accuracy {acc:.3f}")
    return {"metric": acc, "baseline": copy, "better": better, "seconds": seconds}


if __name__ == "__main__":
    main()
