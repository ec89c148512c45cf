"""The kernel call the Keras adapters share, on NumPy arrays: one layer, one direction, batch-first.

    y, h_n, c_n, record = forward(cell, x, h0, c0, params, lengths, training, masks)
    dx, dh0, dc0, dparams = backward(record, dy, dh_n, dc_n)

x (B, T, I) batch-first (Keras's layout; the kernels' time-major view of it is a transpose, gathered into the
kernels' token order by the engine in one copy), h0 / c0 (B, H) (c0 None except for the LSTM), params the four
arrays (w_ih (G*H, I), w_hh (G*H, H), b_ih, b_hh (G*H,)) in torch's layout, lengths (B,) integers in 1..T,
masks (input mask (B, G*I) or None, recurrent mask (B, G*H) or None): Keras's dropout masks, per gate in the
kernels' gate order (functional.Dropouts); constants, not differentiated.
y (B, T, H) is zero past each sequence's end (a transposed view of the kernels' time-major output). Nothing
here imports Keras or a framework: the backend modules (_torch, _jax, _numpy) convert tensors to and from these
arrays and wire the two functions into their autograd.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from .._core import checks, dispatch, functional

_KINDS = ("w_ih", "w_hh", "b_ih", "b_hh")
_SUFFIXES = [[""]]  # one layer, one direction: the parameter names carry no suffix


def forward(cell, x, h0, c0, params, lengths, training, masks=(None, None)):
    """Runs the kernels; returns (y (B, T, H), h_n (B, H), c_n (B, H) or None, record or None)."""
    B, T = x.shape[0], x.shape[1]
    lengths = checks.check_lengths(lengths, T, B)
    # Copies of the (small) initial states: a training record reads h0 in backward, and Keras overwrites a
    # stateful layer's state variables in place right after the forward.
    h0 = np.array(h0, order="C")
    c0 = None if c0 is None else np.array(c0, order="C")
    params = [np.ascontiguousarray(p) for p in params]  # a transposed Keras kernel: one copy of the weights
    arrays = dict(zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh"), params))
    x_tm = x.transpose(1, 0, 2)
    kernels = dispatch.kernels_for(x, h0, c0, *params)
    weights = dispatch.stack_weights(kernels, cell, arrays, {}, _SUFFIXES, {})
    plan = functional.Plan(T, B, lengths)
    drops = None
    if any(m is not None for m in masks):
        drops = [[functional.Dropouts(*(None if m is None else np.ascontiguousarray(m, dtype=x.dtype)
                                        for m in masks))]]
    y, h_n, c_n, saved = functional.stack_forward(kernels, cell, x_tm, h0[None], None if c0 is None else c0[None],
                                                  weights, plan, 1, training, drops=drops)
    record = (saved, weights) if training else None
    return y.transpose(1, 0, 2), h_n[0], None if c_n is None else c_n[0], record


def backward(record, dy, dh_n, dc_n):
    """Gradients through a training forward's record: (dx (B, T, I), dh0, dc0 or None, [dw_ih, dw_hh, db_ih,
    db_hh]). dy (B, T, H), dh_n, dc_n may be None (zero)."""
    saved, weights = record
    lw = weights[0][0]
    grads = {k: np.zeros_like(getattr(lw, k)) for k in _KINDS}
    weights = [[replace(lw, grads=dict(grads, w_hr=None))]]
    dy_tm = None if dy is None else dy.transpose(1, 0, 2)
    dx, dh0, dc0 = functional.stack_backward(saved, weights, dy_tm, None if dh_n is None else dh_n[None],
                                             None if dc_n is None else dc_n[None])
    return dx.transpose(1, 0, 2), dh0[0], None if dc0 is None else dc0[0], [grads[k] for k in _KINDS]


def record_nbytes(record) -> int:
    """The memory a training forward's record holds (its token copy of x, y, the workspace and h_drop)."""
    s = record[0].layers[0][0]
    return sum(a.nbytes for a in (s.x, s.y, s.ws, s.h_drop) if a is not None)
