"""The kernel call on Keras's JAX backend: ``jax.custom_vjp`` around ``jax.pure_callback`` into the CPU kernels,
so it runs under ``jax.jit`` (XLA calls back into the host, which also moves arrays off an accelerator) and
``jax.grad`` differentiates it.

The forward of a differentiated call runs the kernels in training mode and keeps their record (workspace) on the
host under a token (_records), an int32 that the forward returns to JAX as a residual; the backward callback takes
the record of its token and runs BPTT, or, where the record is gone, the training forward again from the residual
inputs. The records are copies: nothing aliases the buffers JAX lends a callback.
"""
from __future__ import annotations

from functools import partial

import jax
import numpy as np

from . import _engine, _records


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
    token = _records.keep(record)
    return (np.ascontiguousarray(y), (h_n, c_n) if c_n is not None else (h_n,), np.int32(token))


def _host_backward(spec, token, x, states, params, lengths, present, dy, dstates):
    cell = spec[0]
    record = _records.take(token)
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
