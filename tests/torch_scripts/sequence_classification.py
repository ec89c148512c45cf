"""Sequence classification of variable-length token sequences: embedding, pack_padded_sequence (unsorted,
enforce_sorted=False), a bidirectional recurrent encoder whose final states and mean-pooled outputs
(pad_packed_sequence) feed a linear classifier, cross-entropy and Adam over shuffled minibatches.

The task is synthetic (does a sequence contain more "positive" than "negative" tokens?) so that the script
needs no download. Run as a script, or call main(); tests swap `nn` for a namespace whose recurrent classes are
rnnfast's.
"""
import argparse

import torch
import torch.nn as nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


def make_dataset(n, vocab, max_len, generator):
    lengths = torch.randint(1, max_len + 1, (n,), generator=generator)
    tokens = torch.randint(1, vocab, (n, max_len), generator=generator)
    mask = torch.arange(max_len)[None, :] < lengths[:, None]
    tokens = tokens * mask  # 0 is padding
    positive = ((tokens > 0) & (tokens < vocab // 2)).sum(1)
    negative = (tokens >= vocab // 2).sum(1)
    return tokens, lengths, (positive > negative).long()


class Classifier(nn.Module):
    def __init__(self, vocab, emb, hidden, classes, rnn="GRU", layers=1):
        super().__init__()
        self.embedding = nn.Embedding(vocab, emb, padding_idx=0)
        self.rnn = getattr(nn, rnn)(emb, hidden, num_layers=layers, batch_first=True, bidirectional=True)
        self.is_lstm = rnn == "LSTM"
        self.fc = nn.Linear(4 * hidden, classes)

    def forward(self, tokens, lengths):
        emb = self.embedding(tokens)
        packed = pack_padded_sequence(emb, lengths, batch_first=True, enforce_sorted=False)
        out, h_n = self.rnn(packed)
        if self.is_lstm:
            h_n = h_n[0]
        padded, out_lengths = pad_packed_sequence(out, batch_first=True)
        mean = padded.sum(1) / out_lengths[:, None].to(padded.dtype)
        final = torch.cat([h_n[-2], h_n[-1]], dim=1)  # last layer, both directions
        return self.fc(torch.cat([final, mean], dim=1))


def main(rnn="GRU", layers=1, epochs=3, n=96, batch_size=16, vocab=20, max_len=12, seed=0):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    tokens, lengths, labels = make_dataset(n, vocab, max_len, gen)
    model = Classifier(vocab, 8, 12, 2, rnn, layers)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    criterion = nn.CrossEntropyLoss()
    losses = []
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n, batch_size):
            idx = perm[start:start + batch_size]
            optimizer.zero_grad()
            logits = model(tokens[idx], lengths[idx])
            loss = criterion(logits, labels[idx])
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        logits = model(tokens, lengths)
    accuracy = (logits.argmax(1) == labels).double().mean().item()
    print(f"final loss {losses[-1]:.4f}, training accuracy {accuracy:.3f}")
    return dict(model=model, losses=losses, logits=logits, accuracy=accuracy)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--rnn", default="GRU")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    main(rnn=args.rnn, epochs=args.epochs)
