"""The kernel call on Keras's torch backend: one ``torch.autograd.Function``, CPU tensors handed to the kernels as
NumPy views (no copies but the kernels' own time-major gather of x), results returned as tensors over the kernels'
arrays."""
from __future__ import annotations

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from . import _engine


def _np(t):
    return None if t is None else t.detach().numpy()


def _t(a):
    return None if a is None else torch.from_numpy(a)


class _Kernels(torch.autograd.Function):
    @staticmethod
    def forward(ctx, cell, lengths, masks, x, h0, c0, *params):
        y, h_n, c_n, record = _engine.forward(cell, _np(x), _np(h0), _np(c0), [_np(p) for p in params], lengths,
                                              training=True, masks=masks)
        ctx.record, ctx.has_c = record, c0 is not None
        y = _t(y)
        # The record reads y where it is (and its own copies of x and the states): torch's version counter turns
        # an in-place change of y before backward into an error instead of a wrong gradient.
        ctx.save_for_backward(y)
        ctx.set_materialize_grads(False)
        return (y, _t(h_n), _t(c_n)) if ctx.has_c else (y, _t(h_n))

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dh_n, dc_n=None):
        ctx.saved_tensors  # noqa: B018 - raises if y was modified in place since the forward
        if ctx.record is None:
            raise RuntimeError("rnnfast.keras: backward through a call whose saved state was freed (use "
                               "retain_graph=True to run backward twice)")
        dx, dh0, dc0, dparams = _engine.backward(ctx.record, _np(dy), _np(dh_n), _np(dc_n))
        return (None, None, None, _t(dx), _t(dh0), _t(dc0) if ctx.has_c else None, *map(_t, dparams))


def run(cell, x, h0, c0, params, lengths, masks=(None, None)):
    """(y (B, T, H), h_n, c_n or None) of the kernels, differentiable w.r.t. x, h0, c0 and params; masks: the
    dropout masks (_engine), constants."""
    for name, t in (("x", x), ("h0", h0), ("c0", c0), *zip(("w_ih", "w_hh", "b_ih", "b_hh"), params)):
        if t is not None and t.device.type != "cpu":
            raise ValueError(f"rnnfast.keras: {name} is on {t.device}; the torch backend path runs CPU tensors")
    lengths = np.asarray(lengths.detach().cpu().numpy() if isinstance(lengths, torch.Tensor) else lengths)
    masks = tuple(_np(m) for m in masks)
    tensors = [x, h0, c0, *params]
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        out = _Kernels.apply(cell, lengths, masks, *tensors)
        return (out[0], out[1], out[2]) if c0 is not None else (out[0], out[1], None)
    y, h_n, c_n, _ = _engine.forward(cell, _np(x), _np(h0), _np(c0), [_np(p) for p in params], lengths,
                                     training=False, masks=masks)
    return _t(y), _t(h_n), _t(c_n)
