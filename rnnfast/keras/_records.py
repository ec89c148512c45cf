"""Training forwards' records waiting for their backward, for the adapters whose autograd cannot hold a host object
(JAX, TensorFlow): a record is kept on the host under a token, an int32 the framework carries from the forward to
its backward as an ordinary tensor. At most ``KEEP_BYTES`` of records wait (the oldest dropped first, e.g. forwards
whose backward never ran); a backward whose record is gone (dropped, or a token handed to two backwards) runs the
training forward again from its inputs: the same numbers (the kernels are deterministic for a thread count), one
forward slower."""
from __future__ import annotations

import itertools
import threading
from collections import OrderedDict

from . import _engine

KEEP_BYTES = 1 << 30  # at most this much of forward records waits for its backward (the oldest go first)
records: OrderedDict = OrderedDict()  # token -> (record, nbytes)
_tokens = itertools.count(1)
_lock = threading.Lock()


def keep(record) -> int:
    """A token for the record (never 0: 0 marks a forward that kept none)."""
    nbytes = _engine.record_nbytes(record)
    with _lock:
        token = next(_tokens) % (1 << 31) or next(_tokens)
        records[token] = (record, nbytes)
        total = sum(n for _, n in records.values())
        while total > KEEP_BYTES and len(records) > 1:
            _, (_, n) = records.popitem(last=False)
            total -= n
    return token


def take(token):
    """The record of a token, removed from the store; None where it is gone."""
    with _lock:
        entry = records.pop(int(token), None)
    return None if entry is None else entry[0]
