"""The layer classes RNN, LSTM and GRU: torch.nn's constructor, parameter names and calling convention,
NumPy arrays in and out, and an explicit ``backward`` for BPTT.

    y, h_n = gru(x, h0=None)              y, (h_n, c_n) = lstm(x, (h0, c0))
    dx, dh0 = gru.backward(dy, dh_n)      dx, (dh0, dc0) = lstm.backward(dy, (dh_n, dc_n))

This module validates and reshapes; the data flow is in functional.py and the math in the kernels.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from . import functional
from .module import Module, Parameter

__all__ = ["RNN", "LSTM", "GRU"]

_DTYPES = {np.dtype(np.float32), np.dtype(np.float64)}


def _check_size(name, value, minimum=1):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_dtype(dtype):
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from None
    if dt not in _DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    return dt


class _RNNBase(Module):
    _cell: str  # set by subclasses: "rnn_tanh", "rnn_relu", "lstm", "gru"

    def __init__(self, cell, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, proj_size=0, dtype=np.float32, seed=None):
        super().__init__()
        self.input_size = _check_size("input_size", input_size)
        self.hidden_size = _check_size("hidden_size", hidden_size)
        self.num_layers = _check_size("num_layers", num_layers)
        self.proj_size = _check_size("proj_size", proj_size, minimum=0)
        if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) or not 0 <= dropout < 1:
            raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
        self.dropout = float(dropout)
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.bidirectional = bool(bidirectional)
        self.dtype = _check_dtype(dtype)
        unsupported = [name for name, on in (("num_layers > 1", self.num_layers > 1),
                                             ("bidirectional=True", self.bidirectional),
                                             ("dropout > 0", self.dropout > 0),
                                             ("proj_size > 0", self.proj_size > 0)) if on]
        if unsupported:
            raise NotImplementedError(f"{type(self).__name__}: {', '.join(unsupported)} is not supported yet "
                                      "(this release has one layer, one direction)")
        self._cell = cell
        G = functional.GATES[cell]
        H, I = self.hidden_size, self.input_size
        # torch.nn's initialisation: every parameter uniform in [-1/sqrt(H), 1/sqrt(H)].
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        k = 1.0 / math.sqrt(H)
        shapes = [("weight_ih_l0", (G * H, I)), ("weight_hh_l0", (G * H, H))]
        if self.bias:
            shapes += [("bias_ih_l0", (G * H,)), ("bias_hh_l0", (G * H,))]
        for name, shape in shapes:
            self._params[name] = Parameter(rng.uniform(-k, k, size=shape).astype(self.dtype))
        # W_ih and W_hh packed for the kernels, revalidated against the live weights at each call.
        self._packed_ih = None
        self._packed = None
        self._saved = None  # what the last training forward kept for backward
        self._layout = None  # (T, B, batched) of that forward, to check dy against

    # -------------------------------------------------------------------------------- checks
    def _check_array(self, value, name):
        if not isinstance(value, np.ndarray):
            raise TypeError(f"{name}: expected a numpy.ndarray, got {type(value).__name__}")
        if value.dtype != self.dtype:
            raise TypeError(f"{name}: expected dtype {self.dtype} (the layer's dtype), got {value.dtype}")
        return value

    def _check_input(self, x):
        """x as a T-major, C-contiguous (T, B, I) array, and whether the call is batched."""
        x = self._check_array(x, "x")
        if x.ndim not in (2, 3):
            raise ValueError(f"x: expected a 3-D (batched) or 2-D (unbatched) array, got shape {x.shape}")
        if x.shape[-1] != self.input_size:
            raise ValueError(f"x: expected {self.input_size} input features (last dimension), got shape {x.shape}")
        batched = x.ndim == 3
        if not batched:
            x = x[:, None, :]
        elif self.batch_first:
            x = x.transpose(1, 0, 2)
        if x.shape[1] < 1:
            raise ValueError(f"x: batch size must be at least 1, got shape {x.shape}")
        return x, batched

    def _check_state(self, value, name, B, batched):
        """A state argument (num_layers*num_directions, B, H), or (1, H) unbatched, as a (B, H) copy."""
        H = self.hidden_size
        if value is None:
            return np.zeros((B, H), dtype=self.dtype)
        value = self._check_array(value, name)
        want = (self.num_layers, B, H) if batched else (self.num_layers, H)
        if value.shape != want:
            raise ValueError(f"{name}: expected shape {want}, got {value.shape}")
        return np.array(value.reshape(B, H), dtype=self.dtype, order="C", copy=True)

    def _check_grad_out(self, value, name, shape):
        """A gradient argument of the given user-facing shape, T-major and C-contiguous, or None."""
        if value is None:
            return None
        value = self._check_array(value, name)
        if value.shape != shape:
            raise ValueError(f"{name}: expected shape {shape}, got {value.shape}")
        return value

    # -------------------------------------------------------------------------------- forward / backward
    def _forward(self, x, h0, c0):
        x_tm, batched = self._check_input(x)
        T, B, _ = x_tm.shape
        h0 = self._check_state(h0, "h0", B, batched)
        c0 = self._check_state(c0, "c0", B, batched) if self._cell == "lstm" else None
        if self.training or not x_tm.flags.c_contiguous:
            x_tm = np.array(x_tm, order="C", copy=True)  # backward must see the input of this forward
        p = self._params
        w_ih = p["weight_ih_l0"].data
        self._packed_ih = functional.packed_weights(w_ih, 0, self._packed_ih)
        self._packed = functional.packed_weights(p["weight_hh_l0"].data, functional.GATES[self._cell], self._packed)
        b_ih = p["bias_ih_l0"].data if self.bias else None
        b_hh = p["bias_hh_l0"].data if self.bias else None
        y, h_n, c_n, saved = functional.layer_forward(self._cell, x_tm, h0, c0, w_ih, b_ih, b_hh, self._packed_ih,
                                                      self._packed, self.training)
        if self.training:
            self._saved, self._layout = saved, (T, B, batched)
            # y is also the saved activation backward reads: hand it out read-only instead of copying it.
            y.flags.writeable = False
        return self._to_user(y, batched), self._state_out(h_n, batched), self._state_out(c_n, batched)

    def _to_user(self, a, batched):
        """(T, B, F) -> the caller's layout."""
        if not batched:
            return a[:, 0, :]
        return np.ascontiguousarray(a.transpose(1, 0, 2)) if self.batch_first else a

    def _from_user(self, a, batched):
        """The caller's layout -> (T, B, F), C-contiguous."""
        if not batched:
            a = a[:, None, :]
        elif self.batch_first:
            a = a.transpose(1, 0, 2)
        return np.ascontiguousarray(a)

    def _state_out(self, s, batched):
        if s is None:
            return None
        return s[None] if batched else s

    def _backward(self, dy, dh_n, dc_n):
        if self._saved is None:
            raise RuntimeError("backward: no training-mode forward to differentiate (call the layer in train() mode first)")
        T, B, batched = self._layout
        H = self.hidden_size
        y_shape = ((B, T, H) if self.batch_first else (T, B, H)) if batched else (T, H)
        state_shape = (self.num_layers, B, H) if batched else (self.num_layers, H)
        dy = self._check_grad_out(dy, "dy", y_shape)
        dh_n = self._check_grad_out(dh_n, "dh_n", state_shape)
        dc_n = self._check_grad_out(dc_n, "dc_n", state_shape) if self._cell == "lstm" else None
        dy = None if dy is None else self._from_user(dy, batched)
        dh_n = None if dh_n is None else np.ascontiguousarray(dh_n.reshape(B, H))
        dc_n = None if dc_n is None else np.ascontiguousarray(dc_n.reshape(B, H))
        p = self._params
        grads = {"w_ih": p["weight_ih_l0"].grad, "w_hh": p["weight_hh_l0"].grad,
                 "b_ih": p["bias_ih_l0"].grad if self.bias else None,
                 "b_hh": p["bias_hh_l0"].grad if self.bias else None}
        dx, dh0, dc0 = functional.layer_backward(self._saved, dy, dh_n, dc_n, grads)
        return self._to_user(dx, batched), self._state_out(dh0, batched), self._state_out(dc0, batched)

    # RNN and GRU: one state. LSTM overrides both with (h, c) pairs.
    def __call__(self, x, h0=None):
        y, h_n, _ = self._forward(x, h0, None)
        return y, h_n

    def backward(self, dy, dh_n=None):
        """BPTT through the last training forward: returns (dx, dh0) and adds into every parameter's .grad."""
        dx, dh0, _ = self._backward(dy, dh_n, None)
        return dx, dh0

    def extra_repr(self):
        s = f"{self.input_size}, {self.hidden_size}"
        if not self.bias:
            s += ", bias=False"
        if self.batch_first:
            s += ", batch_first=True"
        return s + f", dtype={self.dtype}"

    def __repr__(self):
        return f"{type(self).__name__}({self.extra_repr()})"


class RNN(_RNNBase):
    """Elman RNN: h' = act(W_ih x + b_ih + W_hh h + b_hh), act = tanh or relu (torch.nn.RNN)."""

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, dtype=np.float32, seed=None):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        super().__init__("rnn_" + nonlinearity, input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, 0, dtype, seed)



class GRU(_RNNBase):
    """GRU as torch.nn.GRU (linear_before_reset form): r, z gates; n = tanh(W_in x + b_in + r*(W_hn h + b_hn))."""

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, dtype=np.float32, seed=None):
        super().__init__("gru", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, 0,
                         dtype, seed)


class LSTM(_RNNBase):
    """LSTM as torch.nn.LSTM: gates i, f, g, o; c' = f*c + i*g; h' = o*tanh(c')."""

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, proj_size=0, dtype=np.float32, seed=None):
        super().__init__("lstm", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         proj_size, dtype, seed)

    def __call__(self, x, hx=None):
        h0, c0 = self._split_pair(hx, "hx")
        y, h_n, c_n = self._forward(x, h0, c0)
        return y, (h_n, c_n)

    def backward(self, dy, dstate=None):
        """BPTT through the last training forward: returns (dx, (dh0, dc0)) and adds into every .grad."""
        dh_n, dc_n = self._split_pair(dstate, "dstate")
        dx, dh0, dc0 = self._backward(dy, dh_n, dc_n)
        return dx, (dh0, dc0)

    @staticmethod
    def _split_pair(pair, name):
        if pair is None:
            return None, None
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise TypeError(f"{name}: expected a pair (h, c) of arrays or None, got {type(pair).__name__}")
        return pair[0], pair[1]
