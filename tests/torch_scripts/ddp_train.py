"""Data-parallel training of a model with rnnfast.torch layers under DistributedDataParallel (the README's
recipe), and the same training in one process on the whole batch, for tests/test_torch_ddp.py.

    python ddp_train.py RANK WORLD_SIZE PORT OUT.pt      one rank of the gloo group on 127.0.0.1:PORT
    python ddp_train.py single OUT.pt                    one process, the concatenated batch (and the
                                                         initial weights in OUT.pt.initial)
"""
import datetime
import sys

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP

import rnnfast
import rnnfast.torch as rt

BATCH, T, VOCAB, STEPS = 8, 6, 11, 3


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, 5)
        self.rnn = rt.LSTM(5, 7, num_layers=2, batch_first=True, bidirectional=True)
        self.cell = rt.GRUCell(14, 7)
        self.head = nn.Linear(7, VOCAB)

    def forward(self, tokens):
        y, _ = self.rnn(self.embedding(tokens))
        return self.head(self.cell(y.mean(1), y[:, -1, :7]))


def data():
    gen = torch.Generator().manual_seed(0)
    return (torch.randint(0, VOCAB, (STEPS, BATCH, T), generator=gen),
            torch.randint(0, VOCAB, (STEPS, BATCH), generator=gen))


def train(model, rows):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    tokens, targets = data()
    for step in range(STEPS):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(tokens[step, rows]), targets[step, rows])  # mean over its rows
        loss.backward()
        optimizer.step()


def fresh_model():
    torch.manual_seed(0)
    return Model().double()


def main(argv):
    torch.set_num_threads(1)
    rnnfast.set_num_threads(1)
    if argv[0] == "single":
        model = fresh_model()
        torch.save(model.state_dict(), argv[1] + ".initial")
        train(model, slice(None))
        torch.save(model.state_dict(), argv[1])
        return
    rank, world, port, out = int(argv[0]), int(argv[1]), int(argv[2]), argv[3]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    try:
        model = DDP(fresh_model())  # DDP averages the gradients of the ranks' equal shares of the batch
        share = BATCH // world
        train(model, slice(rank * share, (rank + 1) * share))
        if rank == 0:
            torch.save(model.module.state_dict(), out)
        # Both ranks reach the teardown together: a rank destroying its gloo group while the other still used
        # the connection aborted now and then ("terminate called without an active exception", seen once in
        # CI here; a known gloo teardown race).
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
