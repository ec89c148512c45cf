"""Word-level language model, after pytorch/examples/word_language_model (model.py and main.py): embedding,
a recurrent stack, a linear decoder, truncated BPTT over a batchified corpus with the hidden state carried
(and detached) from batch to batch, gradient clipping and plain SGD, then evaluation.

The corpus is synthetic (a random Markov chain over the vocabulary) so that the script needs no download.
Run as a script, or call main(); tests swap `nn` for a namespace whose recurrent classes are rnnfast's.
"""
import argparse
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class RNNModel(nn.Module):
    """Container module with an encoder, a recurrent module, and a decoder."""

    def __init__(self, rnn_type, ntoken, ninp, nhid, nlayers, dropout=0.5, rnn_dropout=0.0, tie_weights=False):
        super().__init__()
        self.ntoken = ntoken
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(ntoken, ninp)
        if rnn_type in ["LSTM", "GRU"]:
            self.rnn = getattr(nn, rnn_type)(ninp, nhid, nlayers, dropout=rnn_dropout)
        else:
            nonlinearity = {"RNN_TANH": "tanh", "RNN_RELU": "relu"}[rnn_type]
            self.rnn = nn.RNN(ninp, nhid, nlayers, nonlinearity=nonlinearity, dropout=rnn_dropout)
        self.decoder = nn.Linear(nhid, ntoken)
        if tie_weights:
            if nhid != ninp:
                raise ValueError("When using the tied flag, nhid must be equal to emsize")
            self.decoder.weight = self.encoder.weight
        self.init_weights()
        self.rnn_type = rnn_type
        self.nhid = nhid
        self.nlayers = nlayers

    def init_weights(self):
        initrange = 0.1
        nn.init.uniform_(self.encoder.weight, -initrange, initrange)
        nn.init.zeros_(self.decoder.bias)
        nn.init.uniform_(self.decoder.weight, -initrange, initrange)

    def forward(self, input, hidden):
        emb = self.drop(self.encoder(input))
        output, hidden = self.rnn(emb, hidden)
        output = self.drop(output)
        decoded = self.decoder(output)
        decoded = decoded.view(-1, self.ntoken)
        return F.log_softmax(decoded, dim=1), hidden

    def init_hidden(self, bsz):
        weight = next(self.parameters())
        if self.rnn_type == "LSTM":
            return (weight.new_zeros(self.nlayers, bsz, self.nhid), weight.new_zeros(self.nlayers, bsz, self.nhid))
        return weight.new_zeros(self.nlayers, bsz, self.nhid)


def synthetic_corpus(ntokens, length, generator):
    """Token ids from a sparse random Markov chain: learnable structure, no download."""
    successors = torch.randint(0, ntokens, (ntokens, 3), generator=generator)
    ids = torch.empty(length, dtype=torch.long)
    ids[0] = 0
    choice = torch.randint(0, 3, (length,), generator=generator)
    for i in range(1, length):
        ids[i] = successors[ids[i - 1], choice[i]]
    return ids


def batchify(data, bsz):
    nbatch = data.size(0) // bsz
    data = data.narrow(0, 0, nbatch * bsz)
    return data.view(bsz, -1).t().contiguous()


def repackage_hidden(h):
    """Wraps hidden states in new Tensors, to detach them from their history."""
    if isinstance(h, torch.Tensor):
        return h.detach()
    return tuple(repackage_hidden(v) for v in h)


def get_batch(source, i, bptt):
    seq_len = min(bptt, len(source) - 1 - i)
    data = source[i:i + seq_len]
    target = source[i + 1:i + 1 + seq_len].view(-1)
    return data, target


def evaluate(model, data_source, eval_batch_size, bptt, ntokens):
    model.eval()
    total_loss = 0.0
    hidden = model.init_hidden(eval_batch_size)
    with torch.no_grad():
        for i in range(0, data_source.size(0) - 1, bptt):
            data, targets = get_batch(data_source, i, bptt)
            output, hidden = model(data, hidden)
            hidden = repackage_hidden(hidden)
            total_loss += len(data) * F.nll_loss(output, targets).item()
    return total_loss / (len(data_source) - 1)


def main(model_type="LSTM", ntokens=50, emsize=16, nhid=16, nlayers=2, lr=5.0, clip=0.25, epochs=2, batch_size=4,
         bptt=8, dropout=0.2, rnn_dropout=0.0, tied=True, corpus_length=400, seed=1111):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    train_data = batchify(synthetic_corpus(ntokens, corpus_length, gen), batch_size)
    val_data = batchify(synthetic_corpus(ntokens, corpus_length // 4, gen), 2)
    model = RNNModel(model_type, ntokens, emsize, nhid, nlayers, dropout, rnn_dropout, tied)
    criterion = nn.NLLLoss()
    train_losses, val_losses = [], []
    for epoch in range(1, epochs + 1):
        model.train()
        hidden = model.init_hidden(batch_size)
        for batch, i in enumerate(range(0, train_data.size(0) - 1, bptt)):
            data, targets = get_batch(train_data, i, bptt)
            hidden = repackage_hidden(hidden)
            model.zero_grad()
            output, hidden = model(data, hidden)
            loss = criterion(output, targets)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            for p in model.parameters():
                p.data.add_(p.grad, alpha=-lr)
            train_losses.append(loss.item())
        val_losses.append(evaluate(model, val_data, 2, bptt, ntokens))
        print(f"| end of epoch {epoch:3d} | valid loss {val_losses[-1]:5.2f} | valid ppl {math.exp(val_losses[-1]):8.2f}")
    return dict(model=model, train_losses=train_losses, val_losses=val_losses)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="word-level language model on a synthetic corpus")
    parser.add_argument("--model", default="LSTM", help="RNN_TANH, RNN_RELU, LSTM or GRU")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    main(model_type=args.model, epochs=args.epochs)
