"""Weights in and out of rnnfast: Keras conversion and a file format of our own.

Keras
-----
``from_keras(weights, kind)`` builds an ``rnnfast.RNN`` / ``LSTM`` / ``GRU`` from what a Keras layer's
``get_weights()`` returns, and ``to_keras(module)`` gives back that list for ``set_weights()``::

    m = rnnfast.io.from_keras(keras_gru.get_weights(), "gru", reset_after=keras_gru.reset_after,
                              batch_first=True)      # Keras feeds (batch, time, features)
    keras_gru.set_weights(rnnfast.io.to_keras(m))

Keras stores ``[kernel (I, G*H), recurrent_kernel (H, G*H), bias]`` (the bias left out with
``use_bias=False``); torch.nn, and so rnnfast, stores ``weight_ih (G*H, I)``, ``weight_hh (G*H, H)`` and
two biases ``bias_ih``, ``bias_hh`` of ``(G*H,)``. Per kind:

==========  ==========================  ===========================  ====================================
kind        Keras layer                 gate order Keras -> rnnfast  bias
==========  ==========================  ===========================  ====================================
"rnn"       SimpleRNN (tanh or relu)    (one gate)                   (H,): bias_ih = bias, bias_hh = 0
"lstm"      LSTM                        i,f,c,o -> i,f,g,o (same)    (4H,): bias_ih = bias, bias_hh = 0
"gru"       GRU(reset_after=True)       z,r,h -> r,z,n               (2, 3H): row 0 input, row 1 recurrent
"gru"       GRU(reset_after=False)      z,r,h -> r,z,n               (3H,): bias_ih = bias, bias_hh = 0
==========  ==========================  ===========================  ====================================

Keras' ``GRU(reset_after=True)`` (the Keras 2.3+/3 default) is torch's GRU, n = tanh(W_in x + b_in +
r*(W_hn h + b_hn)); ``reset_after=False`` is the original GRU, n = tanh(W_in x + b_in + W_hn (r*h)),
which maps to ``rnnfast.GRU(..., linear_before_reset=False)``.

Only the standard activations are supported: activation "tanh" (SimpleRNN: "tanh" or "relu") and
recurrent_activation "sigmoid", the exact logistic function (Keras 3's default). Keras 2's old default
``recurrent_activation="hard_sigmoid"`` (a piecewise-linear approximation) is a different function, and
such a layer is refused with ValueError rather than converted into something that computes other
numbers. Settings that weights do not show are the caller's to match: ``go_backwards=False``,
``unroll`` (no effect on the numbers), ``stateful`` (carry the state yourself), ``dropout`` and
``recurrent_dropout`` (training-time only in Keras; not carried over), and the Keras input
layout, which is batch-first: pass ``batch_first=True`` to feed Keras-shaped (batch, time, features)
arrays. ``to_keras`` folds LSTM/RNN (and original-GRU) ``bias_ih + bias_hh`` into Keras' single bias,
which is exact in exact arithmetic; it refuses (ValueError) what a single Keras layer cannot express:
several layers, two directions, an LSTM projection.

Files
-----
``save`` and ``load`` live in ``rnnfast.serialization`` (see its doc); they are re-exported here.
"""
from __future__ import annotations

import numpy as np

from ._core.checks import check_dtype
from ._core.functional import gates
from .layers import GRU, LSTM, RNN
from .serialization import FORMAT_NAME, FORMAT_VERSION, METADATA_KEY, load, save  # noqa: F401 - re-exported

__all__ = ["from_keras", "to_keras", "save", "load", "METADATA_KEY", "FORMAT_NAME", "FORMAT_VERSION"]

# Gates per Keras layer kind, as the kernels define them (csrc/common/cells.h, through _core.functional.gates).
_KINDS = {"rnn": gates("rnn_tanh"), "lstm": gates("lstm"), "gru": gates("gru")}


# =========================================================================================== helpers


def _gru_swap(a, H):
    """Swap the first two gate blocks of the last axis: Keras z,r,h <-> torch r,z,n (its own inverse).
    Always a new array."""
    return np.concatenate([a[..., H:2 * H], a[..., :H], a[..., 2 * H:3 * H]], axis=-1)


def _check_bool(value, name):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return bool(value)


def _activation_name(value, name):
    """A Keras activation given as a name or as the function itself (e.g. keras.activations.tanh)."""
    if isinstance(value, str):
        return value
    if callable(value) and isinstance(getattr(value, "__name__", None), str):
        return value.__name__
    raise TypeError(f"{name} must be an activation name (str), got {type(value).__name__}")


def _real_array(value, name):
    """A NumPy view/array of a real-valued array-like (NumPy array, torch tensor, nested lists)."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor
        value = value.detach().cpu().numpy()
    try:
        a = np.asarray(value)
    except Exception as e:  # noqa: BLE001 - anything NumPy cannot turn into an array
        raise TypeError(f"{name}: expected an array, got {type(value).__name__} ({e})") from None
    if a.dtype == np.bool_ or a.dtype.kind not in "fiu":
        raise TypeError(f"{name}: expected a real (float or integer) array, got dtype {a.dtype}")
    return a


def _kind_of(module):
    """'rnn', 'lstm' or 'gru' for an rnnfast layer; TypeError for anything else."""
    # LSTM and GRU first: a subclass of one of them is that kind.
    for cls, kind in ((LSTM, "lstm"), (GRU, "gru"), (RNN, "rnn")):
        if isinstance(module, cls):
            return kind
    raise TypeError(f"module: expected an rnnfast RNN, LSTM or GRU, got {type(module).__name__}")


# =========================================================================================== Keras


def from_keras(weights, kind, *, reset_after=True, dtype=np.float32, batch_first=False, activation="tanh",
               recurrent_activation="sigmoid"):
    """A new ``rnnfast.RNN``/``LSTM``/``GRU`` holding a Keras layer's weights.

    weights: what ``layer.get_weights()`` returns, ``[kernel, recurrent_kernel, bias]``, or
        ``[kernel, recurrent_kernel]`` for a layer with ``use_bias=False`` (the result then has bias=False).
    kind: "rnn" (SimpleRNN), "lstm" or "gru".
    reset_after: the Keras GRU's ``reset_after`` (True: torch's GRU; False: the original form, which
        needs ``rnnfast.GRU(linear_before_reset=False)``). Only meaningful for kind="gru".
    dtype: float32, float64 or "bfloat16", the new layer's dtype (the weights are converted to it).
    batch_first: the new layer's ``batch_first``; Keras' own layout is batch-first.
    activation / recurrent_activation: the Keras layer's; only "tanh" / "sigmoid" are supported
        (SimpleRNN: activation "tanh" or "relu"; it has no recurrent_activation). Keras 2's
        ``hard_sigmoid`` is refused with ValueError.

    Nothing in ``weights`` is modified or aliased by the new layer.
    """
    kind = _check_kind(kind)
    reset_after = _check_bool(reset_after, "reset_after")
    batch_first = _check_bool(batch_first, "batch_first")
    dtype = check_dtype(dtype)
    if kind != "gru" and not reset_after:
        raise ValueError(f"reset_after=False applies to kind='gru' only, got kind={kind!r}")
    act = _check_activations(kind, activation, recurrent_activation)
    kernel, recurrent, bias = _keras_arrays(weights, kind, reset_after)
    I, H = kernel.shape[0], recurrent.shape[0]
    common = dict(bias=bias is not None, batch_first=batch_first, dtype=dtype, seed=0)
    if kind == "rnn":
        module = RNN(I, H, nonlinearity=act, **common)
    elif kind == "lstm":
        module = LSTM(I, H, **common)
    elif reset_after:
        module = GRU(I, H, **common)
    else:
        module = GRU(I, H, linear_before_reset=False, **common)
    module.load_state_dict(_torch_state(kind, kernel, recurrent, bias, reset_after, dtype))
    return module


def _check_kind(kind):
    """'rnn', 'lstm' or 'gru' (any case)."""
    if not isinstance(kind, str):
        raise TypeError(f"kind must be a str ('rnn', 'lstm' or 'gru'), got {type(kind).__name__}")
    if kind.lower() not in _KINDS:
        raise ValueError(f"kind must be 'rnn', 'lstm' or 'gru', got {kind!r}")
    return kind.lower()


def _check_activations(kind, activation, recurrent_activation):
    """The Keras layer's activation name, when it and the recurrent activation are ones rnnfast computes."""
    act = _activation_name(activation, "activation")
    rec_act = _activation_name(recurrent_activation, "recurrent_activation")
    allowed = ("tanh", "relu") if kind == "rnn" else ("tanh",)
    if act not in allowed:
        raise ValueError(f"activation must be {' or '.join(map(repr, allowed))} for kind={kind!r}, got {act!r} "
                         "(rnnfast implements only the standard activations)")
    if kind == "rnn":
        if rec_act != "sigmoid":
            raise ValueError(f"recurrent_activation: a SimpleRNN has none; leave it at 'sigmoid', got {rec_act!r}")
    elif rec_act != "sigmoid":
        hint = (" (Keras 2's old default hard_sigmoid is a piecewise-linear approximation that rnnfast does "
                "not implement; build the Keras layer with recurrent_activation='sigmoid')"
                if rec_act == "hard_sigmoid" else "")
        raise ValueError(f"recurrent_activation must be 'sigmoid' (the exact logistic function), got {rec_act!r}"
                         + hint)
    return act


def _keras_arrays(weights, kind, reset_after):
    """(kernel (I, G*H), recurrent_kernel (H, G*H), bias or None) of a get_weights() list, shapes checked."""
    if isinstance(weights, (str, bytes, np.ndarray)) or not isinstance(weights, (list, tuple)):
        raise TypeError("weights: expected the list layer.get_weights() returns, [kernel, recurrent_kernel, bias] "
                        f"or [kernel, recurrent_kernel], got {type(weights).__name__}")
    if len(weights) not in (2, 3):
        raise ValueError("weights: expected 3 arrays [kernel, recurrent_kernel, bias] (or 2 for use_bias=False), "
                         f"got {len(weights)}")
    kernel = _real_array(weights[0], "weights[0] (kernel)")
    recurrent = _real_array(weights[1], "weights[1] (recurrent_kernel)")
    bias = _real_array(weights[2], "weights[2] (bias)") if len(weights) == 3 else None
    G = _KINDS[kind]
    if recurrent.ndim != 2 or recurrent.shape[0] < 1 or recurrent.shape[1] != G * recurrent.shape[0]:
        raise ValueError(f"weights[1] (recurrent_kernel): expected shape (H, {G}*H) for kind={kind!r}, "
                         f"got {recurrent.shape}")
    H = recurrent.shape[0]
    if kernel.ndim != 2 or kernel.shape[0] < 1 or kernel.shape[1] != G * H:
        raise ValueError(f"weights[0] (kernel): expected shape (input_size, {G * H}) for kind={kind!r} with "
                         f"H={H} (from recurrent_kernel), got {kernel.shape}")
    if bias is not None:
        _check_keras_bias(bias, kind, reset_after, G * H)
    return kernel, recurrent, bias


def _check_keras_bias(bias, kind, reset_after, GH):
    want = (2, GH) if kind == "gru" and reset_after else (GH,)
    if bias.shape == want:
        return
    hint = ""
    if kind == "gru" and bias.shape == (GH,) and reset_after:
        hint = " (a (3H,) bias is a reset_after=False GRU's: pass reset_after=False)"
    elif kind == "gru" and bias.shape == (2, GH) and not reset_after:
        hint = " (a (2, 3H) bias is a reset_after=True GRU's: pass reset_after=True)"
    raise ValueError(f"weights[2] (bias): expected shape {want} for kind={kind!r}"
                     + (f", reset_after={reset_after}" if kind == "gru" else "")
                     + f", got {bias.shape}{hint}")


def _torch_state(kind, kernel, recurrent, bias, reset_after, dtype):
    """The layer-0 state_dict (torch's names and layouts, in dtype) of checked Keras arrays; new arrays."""
    H = recurrent.shape[0]
    # Keras computes x @ kernel (columns = gates), torch W_ih @ x (rows = gates): transpose, and for the
    # GRU put the gate blocks in torch's order. Every array below is a new one (astype copies).
    if kind == "gru":
        w_ih, w_hh = _gru_swap(kernel, H).T, _gru_swap(recurrent, H).T
    else:
        w_ih, w_hh = kernel.T, recurrent.T
    state = {"weight_ih_l0": np.array(w_ih, dtype=dtype, order="C", copy=True),
             "weight_hh_l0": np.array(w_hh, dtype=dtype, order="C", copy=True)}
    if bias is not None:
        if kind == "gru" and reset_after:
            b_ih, b_hh = _gru_swap(bias[0], H), _gru_swap(bias[1], H)
        else:
            b_ih = _gru_swap(bias, H) if kind == "gru" else bias
            b_hh = np.zeros(_KINDS[kind] * H)
        state["bias_ih_l0"] = np.array(b_ih, dtype=dtype, copy=True)
        state["bias_hh_l0"] = np.array(b_hh, dtype=dtype, copy=True)
    return state


def to_keras(module):
    """The weights of an rnnfast layer as Keras' ``get_weights()`` list (for ``set_weights()``).

    RNN -> SimpleRNN (activation = module.nonlinearity), LSTM -> LSTM, GRU -> GRU(reset_after=True), or
    GRU(reset_after=False) for a ``linear_before_reset=False`` GRU. Returns ``[kernel, recurrent_kernel, bias]``
    (``[kernel, recurrent_kernel]`` for bias=False, i.e. Keras ``use_bias=False``), new arrays in the module's
    dtype. Where Keras has a single bias, it is ``bias_ih + bias_hh``. Raises TypeError for a non-rnnfast module
    and ValueError for a layer one Keras layer cannot express (num_layers > 1, bidirectional, proj_size > 0).
    """
    kind = _kind_of(module)
    problems = []
    if getattr(module, "num_layers", 1) != 1:
        problems.append(f"num_layers={module.num_layers} (a Keras layer has one)")
    if getattr(module, "bidirectional", False):
        problems.append("bidirectional=True (a Keras RNN layer has one direction; use keras.layers.Bidirectional "
                        "with two converted layers)")
    if getattr(module, "proj_size", 0):
        problems.append(f"proj_size={module.proj_size} (Keras' LSTM has no projection)")
    if problems:
        raise ValueError(f"module: {type(module).__name__} cannot be expressed as one Keras layer: "
                         + "; ".join(problems))
    sd = module.state_dict()  # copies
    H = module.hidden_size
    w_ih, w_hh = sd["weight_ih_l0"], sd["weight_hh_l0"]
    if kind == "gru":
        kernel, recurrent = _gru_swap(w_ih.T, H), _gru_swap(w_hh.T, H)
    else:
        kernel, recurrent = w_ih.T, w_hh.T
    out = [np.array(kernel, order="C", copy=True), np.array(recurrent, order="C", copy=True)]
    if module.bias:
        b_ih, b_hh = sd["bias_ih_l0"], sd["bias_hh_l0"]
        if kind == "gru" and getattr(module, "linear_before_reset", True):
            out.append(np.stack([_gru_swap(b_ih, H), _gru_swap(b_hh, H)]))
        elif kind == "gru":
            # Original form: b_hn is added outside the reset product, so it folds into b_in like b_hr, b_hz.
            out.append(_gru_swap(b_ih + b_hh, H))
        else:
            out.append(b_ih + b_hh)
    return out
