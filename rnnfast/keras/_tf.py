"""The kernel call on Keras's TensorFlow backend: ``tf.custom_gradient`` around ``tf.numpy_function`` calls into the
CPU kernels, eager and under ``tf.function`` (Keras's ``fit`` compiles its train step into one).

A forward keeps the kernels' record (_records) under a token, which the gradient function hands to the backward
callback, when it runs in training mode under a gradient tape (TensorFlow's ``could_possibly_record``, asked when
the call runs eagerly or when ``tf.function`` traces it: Keras's ``fit`` traces its step inside a tape). Otherwise
it keeps nothing (inference, or ``model(x, training=True)`` outside a tape, as Monte Carlo dropout samples do), and
a gradient asked of it anyway runs the training forward again from the inputs first: right, one forward slower.
Every callback works on copies: nothing aliases the buffers TensorFlow lends it.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from . import _engine, _records


def _tape_may_record() -> bool:
    """Whether a gradient tape could record this call (True where TensorFlow cannot tell)."""
    try:
        from tensorflow.python.eager import record
    except ImportError:  # a TensorFlow without this module: keep the record, the store bounds it
        return True
    return bool(record.could_possibly_record())


def _masks(which, present):
    it = iter(present)
    return tuple(np.array(next(it)) if has else None for has in which)


def _forward(cell, which, n_states, keep, x, *args):
    """Host forward: args = states, 4 params, lengths, present masks. Returns y, the final states, the token."""
    states, params, lengths = args[:n_states], args[n_states:n_states + 4], args[n_states + 4]
    masks = _masks(which, args[n_states + 5:])
    c0 = np.array(states[1]) if n_states == 2 else None
    y, h_n, c_n, record = _engine.forward(cell, np.array(x), np.array(states[0]), c0, [np.array(p) for p in params],
                                          np.asarray(lengths), training=keep, masks=masks)
    token = _records.keep(record) if keep else 0
    outs = [np.ascontiguousarray(y), h_n] + ([c_n] if n_states == 2 else [])
    return (*outs, np.int32(token))


def _backward(cell, which, n_states, token, x, *args):
    """Host backward: args = states, 4 params, lengths, present masks, dy, the final states' gradients."""
    n_masks = sum(which)
    inputs = args[:n_states + 5 + n_masks]
    dy, dstates = args[n_states + 5 + n_masks], args[n_states + 6 + n_masks:]
    record = _records.take(token) if token else None
    if record is None:  # an inference forward, or a record that is gone: the training forward again
        record = _engine.forward(cell, np.array(x), np.array(inputs[0]),
                                 np.array(inputs[1]) if n_states == 2 else None,
                                 [np.array(p) for p in inputs[n_states:n_states + 4]], np.asarray(inputs[n_states + 4]),
                                 training=True, masks=_masks(which, inputs[n_states + 5:]))[3]
    dx, dh0, dc0, dparams = _engine.backward(record, np.asarray(dy), np.asarray(dstates[0]),
                                             np.asarray(dstates[1]) if n_states == 2 else None)
    return (np.ascontiguousarray(dx), dh0, *([dc0] if n_states == 2 else []), *dparams)


def run(cell, x, h0, c0, params, lengths, masks=(None, None), training=False):
    """(y (B, T, H), h_n, c_n or None) of the kernels, differentiable w.r.t. x, h0, c0 and params; masks: the
    dropout masks (_engine), constants; training: keep the record for a backward (under a tape)."""
    states = [tf.convert_to_tensor(s) for s in ((h0,) if c0 is None else (h0, c0))]
    params = [tf.convert_to_tensor(p) for p in params]  # tensors, not variables: the gradient goes to them
    which = tuple(m is not None for m in masks)
    present = [tf.convert_to_tensor(m) for m in masks if m is not None]
    lengths = tf.cast(lengths, tf.int32)
    n = len(states)
    dtype = x.dtype
    keep = bool(training) and _tape_may_record()

    @tf.custom_gradient
    def call(x, *diff):
        args = [*diff, lengths, *present]
        *outs, token = tf.numpy_function(lambda *a: _forward(cell, which, n, keep, *a), [x, *args],
                                         [dtype] * (1 + n) + [tf.int32], stateful=True)
        outs[0].set_shape(x.shape[:2].concatenate(params[1].shape[1:]))
        for o, s in zip(outs[1:], diff[:n]):
            o.set_shape(s.shape)

        def grad(*upstream):
            upstream = [tf.zeros_like(o) if u is None else u for u, o in zip(upstream, outs)]
            got = tf.numpy_function(lambda *a: _backward(cell, which, n, *a), [token, x, *args, *upstream],
                                    [dtype] * (1 + n + 4), stateful=True)
            for g, like in zip(got, [x, *diff]):
                g.set_shape(like.shape)
            return got

        return tuple(outs), grad

    out = call(x, *states, *params)
    return out[0], out[1], (out[2] if c0 is not None else None)
