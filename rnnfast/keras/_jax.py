"""The kernel call on Keras's JAX backend: ``jax.custom_vjp`` around ``jax.pure_callback`` into the CPU kernels,
so it runs under ``jax.jit`` (XLA calls back into the host, which also moves arrays off an accelerator) and
``jax.grad`` differentiates it.

The backward callback runs the training forward again before BPTT: a host callback cannot hand the forward's
workspace (a Python object) to a later callback safely under XLA, which may drop, repeat or reorder calls whose
results it does not need. So a training step costs one more forward than rnnfast.torch's; results are identical
(the kernels are deterministic for a given thread count).
"""
from __future__ import annotations

from functools import partial

import jax
import numpy as np

from . import _engine


def _split(cell, states):
    return states[0], (states[1] if cell == "lstm" else None)


def _host_forward(cell, x, states, params, lengths):
    h0, c0 = _split(cell, states)
    y, h_n, c_n, _ = _engine.forward(cell, np.asarray(x), np.asarray(h0), None if c0 is None else np.asarray(c0),
                                     [np.asarray(p) for p in params], np.asarray(lengths), training=False)
    return (np.ascontiguousarray(y), (h_n, c_n) if c0 is not None else (h_n,))


def _host_backward(cell, x, states, params, lengths, dy, dstates):
    h0, c0 = _split(cell, states)
    params = [np.asarray(p) for p in params]
    _, _, _, record = _engine.forward(cell, np.asarray(x), np.asarray(h0), None if c0 is None else np.asarray(c0),
                                      params, np.asarray(lengths), training=True)
    dh_n, dc_n = _split(cell, dstates)
    dx, dh0, dc0, dparams = _engine.backward(record, np.asarray(dy), np.asarray(dh_n),
                                             None if dc_n is None else np.asarray(dc_n))
    return (np.ascontiguousarray(dx), (dh0, dc0) if c0 is not None else (dh0,), tuple(dparams))


def _like(a):
    return jax.ShapeDtypeStruct(a.shape, a.dtype)


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _kernels(cell, x, states, params, lengths):
    B, T = x.shape[0], x.shape[1]
    H = params[1].shape[1]
    shapes = (jax.ShapeDtypeStruct((B, T, H), x.dtype), tuple(_like(s) for s in states))
    return jax.pure_callback(partial(_host_forward, cell), shapes, x, states, params, lengths,
                             vmap_method="sequential")


def _kernels_fwd(cell, x, states, params, lengths):
    return _kernels(cell, x, states, params, lengths), (x, states, params, lengths)


def _kernels_bwd(cell, residuals, cotangents):
    x, states, params, lengths = residuals
    dy, dstates = cotangents
    shapes = (_like(x), tuple(_like(s) for s in states), tuple(_like(p) for p in params))
    dx, dstates0, dparams = jax.pure_callback(partial(_host_backward, cell), shapes, x, states, params, lengths, dy,
                                              dstates, vmap_method="sequential")
    return dx, dstates0, dparams, np.zeros(lengths.shape, dtype=jax.dtypes.float0)


_kernels.defvjp(_kernels_fwd, _kernels_bwd)


def run(cell, x, h0, c0, params, lengths):
    """(y (B, T, H), h_n, c_n or None) of the kernels, differentiable w.r.t. x, h0, c0 and params (jit-able)."""
    states = (h0, c0) if c0 is not None else (h0,)
    y, out = _kernels(cell, x, states, tuple(params), jax.numpy.asarray(lengths, dtype=jax.numpy.int32))
    return y, out[0], (out[1] if c0 is not None else None)
