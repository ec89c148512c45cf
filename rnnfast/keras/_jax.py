"""The kernel call on Keras's JAX backend: ``jax.custom_vjp`` around ``jax.pure_callback`` into the CPU kernels,
so it runs under ``jax.jit`` (XLA calls back into the host, which also moves arrays off an accelerator) and
``jax.grad`` differentiates it.

The forward of a differentiated call runs the kernels in training mode and keeps their record (workspace) on the
host under a token, an int32 that the forward returns to JAX as a residual; the backward callback takes the record
of its token and runs BPTT. Where the record is gone (never kept past ``KEEP_BYTES`` of records, the oldest
dropped first, e.g. forwards whose backward never ran; or a token XLA handed to two backwards), the backward runs
the training forward again from the residual inputs: the same numbers (the kernels are deterministic for a thread
count), one forward slower. The records are copies: nothing aliases the buffers JAX lends a callback.
"""
from __future__ import annotations

import itertools
import threading
from collections import OrderedDict
from functools import partial

import jax
import numpy as np

from . import _engine

KEEP_BYTES = 1 << 30  # at most this much of forward records waits for its backward (the oldest go first)
_records: OrderedDict = OrderedDict()  # token -> (record, nbytes)
_tokens = itertools.count(1)
_lock = threading.Lock()


def _keep(record) -> int:
    nbytes = _engine.record_nbytes(record)
    with _lock:
        token = next(_tokens) % (1 << 31)
        _records[token] = (record, nbytes)
        total = sum(n for _, n in _records.values())
        while total > KEEP_BYTES and len(_records) > 1:
            _, (_, n) = _records.popitem(last=False)
            total -= n
    return token


def _take(token):
    with _lock:
        entry = _records.pop(int(token), None)
    return None if entry is None else entry[0]


def _split(cell, states):
    return states[0], (states[1] if cell == "lstm" else None)


# A call's static part, `spec`: (cell, which masks it has: (input, recurrent) bools); its dropout masks travel as
# a tuple of the present ones (JAX arrays cannot be None).
def _masks(spec, present):
    it = iter(present)
    return tuple(np.array(next(it)) if has else None for has in spec[1])


def _host_forward(spec, x, states, params, lengths, present):
    cell = spec[0]
    h0, c0 = _split(cell, states)
    y, h_n, c_n, _ = _engine.forward(cell, np.asarray(x), np.asarray(h0), None if c0 is None else np.asarray(c0),
                                     [np.asarray(p) for p in params], np.asarray(lengths), training=False,
                                     masks=_masks(spec, present))
    return (np.ascontiguousarray(y), (h_n, c_n) if c0 is not None else (h_n,))


def _training_forward(spec, x, states, params, lengths, present):
    """The kernels' training forward on copies of the callback's arguments (a record must not alias them)."""
    cell = spec[0]
    h0, c0 = _split(cell, states)
    return _engine.forward(cell, np.array(x), np.array(h0), None if c0 is None else np.array(c0),
                           [np.array(p) for p in params], np.asarray(lengths), training=True,
                           masks=_masks(spec, present))


def _host_forward_kept(spec, x, states, params, lengths, present):
    y, h_n, c_n, record = _training_forward(spec, x, states, params, lengths, present)
    token = _keep(record)
    return (np.ascontiguousarray(y), (h_n, c_n) if c_n is not None else (h_n,), np.int32(token))


def _host_backward(spec, token, x, states, params, lengths, present, dy, dstates):
    cell = spec[0]
    record = _take(token)
    if record is None:  # not kept (or already used): the same forward again
        record = _training_forward(spec, x, states, params, lengths, present)[3]
    dh_n, dc_n = _split(cell, dstates)
    dx, dh0, dc0, dparams = _engine.backward(record, np.asarray(dy), np.asarray(dh_n),
                                             None if dc_n is None else np.asarray(dc_n))
    return (np.ascontiguousarray(dx), (dh0, dc0) if dc0 is not None else (dh0,), tuple(dparams))


def _like(a):
    return jax.ShapeDtypeStruct(a.shape, a.dtype)


def _out_shapes(x, states, params):
    B, T, H = x.shape[0], x.shape[1], params[1].shape[1]
    return jax.ShapeDtypeStruct((B, T, H), x.dtype), tuple(_like(s) for s in states)


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _kernels(spec, x, states, params, lengths, present):
    return jax.pure_callback(partial(_host_forward, spec), _out_shapes(x, states, params), x, states, params,
                             lengths, present, vmap_method="sequential")


def _kernels_fwd(spec, x, states, params, lengths, present):
    shapes = (*_out_shapes(x, states, params), jax.ShapeDtypeStruct((), np.int32))
    y, states_n, token = jax.pure_callback(partial(_host_forward_kept, spec), shapes, x, states, params, lengths,
                                           present, vmap_method="sequential")
    return (y, states_n), (token, x, states, params, lengths, present)


def _kernels_bwd(spec, residuals, cotangents):
    token, x, states, params, lengths, present = residuals
    dy, dstates = cotangents
    shapes = (_like(x), tuple(_like(s) for s in states), tuple(_like(p) for p in params))
    dx, dstates0, dparams = jax.pure_callback(partial(_host_backward, spec), shapes, token, x, states, params,
                                              lengths, present, dy, dstates, vmap_method="sequential")
    # The lengths and the dropout masks are constants of the call.
    return (dx, dstates0, dparams, np.zeros(lengths.shape, dtype=jax.dtypes.float0),
            tuple(jax.numpy.zeros_like(m) for m in present))


_kernels.defvjp(_kernels_fwd, _kernels_bwd)


def run(cell, x, h0, c0, params, lengths, masks=(None, None)):
    """(y (B, T, H), h_n, c_n or None) of the kernels, differentiable w.r.t. x, h0, c0 and params (jit-able);
    masks: the dropout masks (_engine), constants."""
    states = (h0, c0) if c0 is not None else (h0,)
    spec = (cell, tuple(m is not None for m in masks))
    present = tuple(m for m in masks if m is not None)
    y, out = _kernels(spec, x, states, tuple(params), jax.numpy.asarray(lengths, dtype=jax.numpy.int32), present)
    return y, out[0], (out[1] if c0 is not None else None)
