"""Orchestration of a recurrent layer around the kernels: the only place where the data flow is written.

One layer, one direction (DESIGN.md, "Data flow"):

    forward:  xp = x W_ih^T                       one GEMM for all steps
              y, h_n, c_n, ws = recurrence(xp)     one kernel call for all T steps (adds the biases)
    backward: dxg, dhg, dh0, dc0, db = reverse recurrence(dy, dh_n, dc_n)
              dW_ih += dxg^T x;  dW_hh += dhg^T h_prev;  dx = dxg W_ih

Inputs here are already validated, T-major (T, B, I) and C-contiguous, of the layer's dtype.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import _C
from . import backend

GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}
# Per-unit workspace slots a training forward keeps for backward (see csrc/cpu/recurrence.h).
SLOTS = {"rnn_tanh": 0, "rnn_relu": 0, "lstm": 5, "gru": 4}

# Tests set this to fill every output with NaN before a kernel runs, so that an element the kernel
# forgets to write cannot pass unnoticed.
poison_outputs = False


def _empty(shape, dtype) -> np.ndarray:
    return np.full(shape, np.nan, dtype=dtype) if poison_outputs else np.empty(shape, dtype=dtype)


def packed_weights(w: np.ndarray, gates: int, cached: "_C.PackedWeights | None") -> "_C.PackedWeights":
    """A weight packed for the kernels (gates=G: a W_hh; gates=0: a W_ih for x @ W_ih^T). Reuses `cached`
    only while it still holds exactly these bytes, so an in-place update is never served stale."""
    if cached is not None and cached.matches(w, backend._threads_arg()):
        return cached
    return _C.PackedWeights(w, gates)


@dataclass
class Saved:
    """What a training forward keeps for backward."""

    cell: str
    x: np.ndarray  # (T, B, I), our own copy
    h0: np.ndarray
    c0: np.ndarray | None
    w_ih: np.ndarray  # our own copy: backward uses the weights of the forward it differentiates
    packed: "_C.PackedWeights"
    y: np.ndarray
    ws: np.ndarray | None


def layer_forward(cell, x, h0, c0, w_ih, b_ih, b_hh, packed_ih, packed, training):
    """One layer, one direction; packed_ih and packed are W_ih and W_hh from packed_weights().
    Returns (y, h_n, c_n, saved); saved is None unless training."""
    T, B, I = x.shape
    H = packed.hidden_size
    G = GATES[cell]
    dtype = x.dtype
    threads = backend._threads_arg()
    xp = _empty((T, B, G * H), dtype)
    if T:
        _C.gemm_packed(x.reshape(T * B, I), packed_ih, xp.reshape(T * B, G * H), False, threads)
    y = _empty((T, B, H), dtype)
    h_n = _empty((B, H), dtype)
    c_n = _empty((B, H), dtype) if cell == "lstm" else None
    ws = _empty((T, B, SLOTS[cell] * H), dtype) if training and SLOTS[cell] else None
    _C.forward(cell, xp, h0, c0, packed, b_ih, b_hh, y, h_n, c_n, ws, threads)
    saved = Saved(cell, x, h0, c0, w_ih.copy(), packed, y, ws) if training else None
    return y, h_n, c_n, saved


def layer_backward(saved: Saved, dy, dh_n, dc_n, grads):
    """BPTT through a training forward. `grads` maps w_ih, w_hh, b_ih, b_hh to the arrays the parameter
    gradients are added into (the biases may be None). Returns (dx, dh0, dc0)."""
    s = saved
    T, B, I = s.x.shape
    H = s.y.shape[2]
    G = GATES[s.cell]
    dtype = s.x.dtype
    dxg = _empty((T, B, G * H), dtype)
    dhg = _empty((T, B, G * H), dtype) if s.cell == "gru" else None
    dh0 = _empty((B, H), dtype)
    dc0 = _empty((B, H), dtype) if s.cell == "lstm" else None
    _C.backward(s.cell, s.packed, s.h0, s.c0, s.y, s.ws, dy, dh_n, dc_n, dxg, dhg, dh0, dc0,
                grads["b_ih"], grads["b_hh"], backend._threads_arg())
    dx = _empty((T, B, I), dtype)
    if T:
        dxg2 = dxg.reshape(T * B, G * H)
        dhg2 = (dhg if dhg is not None else dxg).reshape(T * B, G * H)
        backend.matmul(dxg2.T, s.x.reshape(T * B, I), out=grads["w_ih"], accumulate=True)
        # h_prev is h0 for the first step and y[t-1] after it: two GEMMs, no shifted copy of y.
        backend.matmul(dhg2[:B].T, s.h0, out=grads["w_hh"], accumulate=True)
        if T > 1:
            backend.matmul(dhg2[B:].T, s.y[:-1].reshape((T - 1) * B, H), out=grads["w_hh"], accumulate=True)
        backend.matmul(dxg2, s.w_ih, out=dx.reshape(T * B, I))
    return dx, dh0, dc0
