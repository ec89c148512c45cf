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

from . import backend, functional
from .module import Module, Parameter, check_array

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
        if self.proj_size > 0 and self.proj_size >= self.hidden_size:
            raise ValueError(f"proj_size must be smaller than hidden_size, got proj_size={self.proj_size} "
                             f"and hidden_size={self.hidden_size}")
        if seed is not None and not isinstance(seed, (np.random.Generator, numbers.Integral)):
            raise TypeError(f"seed must be None, an int or a numpy.random.Generator, got {type(seed).__name__}")
        self._cell = cell
        G = functional.GATES[cell]
        H = self.hidden_size
        D = 2 if self.bidirectional else 1
        # One generator for the initial weights and, later, the dropout masks: a seed reproduces both.
        self._rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        # torch.nn's initialisation: every parameter uniform in [-1/sqrt(H), 1/sqrt(H)], in torch's order.
        k = 1.0 / math.sqrt(H)
        S = self._state_size
        for layer in range(self.num_layers):
            in_size = self.input_size if layer == 0 else D * S
            for d in range(D):
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                shapes = [("weight_ih" + sfx, (G * H, in_size)), ("weight_hh" + sfx, (G * H, S))]
                if self.bias:
                    shapes += [("bias_ih" + sfx, (G * H,)), ("bias_hh" + sfx, (G * H,))]
                if self.proj_size:
                    shapes += [("weight_hr" + sfx, (self.proj_size, H))]
                for name, shape in shapes:
                    self._params[name] = Parameter(self._rng.uniform(-k, k, size=shape).astype(self.dtype))
        # W_ih and W_hh of every layer and direction packed for the kernels, revalidated at each call.
        self._packed = {}
        self._saved = None  # what the last training forward kept for backward
        self._layout = None  # (T, B, batched) of that forward, to check dy against

    @property
    def _directions(self):
        return 2 if self.bidirectional else 1

    @property
    def _state_size(self):
        """Features of h (and of each direction's output): proj_size when there is one, else hidden_size."""
        return self.proj_size or self.hidden_size

    def _layer_weights(self, pack=True):
        """[layer][direction] -> functional.LayerWeights over the live parameters (packing refreshed, for the
        CPU kernels; the CUDA kernels read the weights as they are)."""
        G = functional.GATES[self._cell]
        out = []
        for layer in range(self.num_layers):
            dirs = []
            for d in range(self._directions):
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                p = {n: self._params.get(n + sfx)
                     for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")}
                ih = hh = hr = None
                if pack:
                    ih = functional.packed_weights(p["weight_ih"].data, 0, self._packed.get("ih" + sfx))
                    hh = functional.packed_weights(p["weight_hh"].data, G, self._packed.get("hh" + sfx))
                    self._packed["ih" + sfx], self._packed["hh" + sfx] = ih, hh
                if pack and p["weight_hr"] is not None:
                    hr = functional.packed_weights(p["weight_hr"].data, 1, self._packed.get("hr" + sfx))
                    self._packed["hr" + sfx] = hr
                bias = self.bias
                dirs.append(functional.LayerWeights(
                    p["weight_ih"].data, p["weight_hh"].data,
                    p["bias_ih"].data if bias else None, p["bias_hh"].data if bias else None,
                    {"w_ih": p["weight_ih"].grad, "w_hh": p["weight_hh"].grad,
                     "b_ih": p["bias_ih"].grad if bias else None, "b_hh": p["bias_hh"].grad if bias else None,
                     "w_hr": p["weight_hr"].grad if p["weight_hr"] is not None else None},
                    ih, hh, hr, p["weight_hr"].data if p["weight_hr"] is not None else None))
            out.append(dirs)
        return out

    # -------------------------------------------------------------------------------- checks
    def _check_array(self, value, name):
        return check_array(value, name, self.dtype, "layer")

    def _check_input(self, x):
        """x as a T-major (T, B, I) array (a view where possible), and whether the call is batched."""
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

    def _check_lengths(self, lengths, T, B):
        """lengths as an int64 array of B values in [1, T], or None (every sequence T long)."""
        if lengths is None:
            return None
        if hasattr(lengths, "detach") and hasattr(lengths, "cpu"):  # a torch tensor
            lengths = lengths.detach().cpu().numpy()
        elif backend.is_cupy_array(lengths):  # the step table is host data: one small copy
            lengths = lengths.get()
        arr = np.asarray(lengths)
        if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(f"lengths: expected integers, got dtype {arr.dtype}")
        if arr.shape != (B,):
            raise ValueError(f"lengths: expected one length per batch element, shape ({B},), got {arr.shape}")
        if B and (arr.min() < 1 or arr.max() > T):
            raise ValueError(f"lengths: every length must be in [1, {T}] (T), got min {arr.min()} and max {arr.max()}")
        return arr.astype(np.int64)

    def _state_shape(self, B, batched, size):
        LD = self.num_layers * self._directions
        return (LD, B, size) if batched else (LD, size)

    def _check_state(self, value, name, B, batched, size):
        """A state argument (num_layers*num_directions, B, size), or (.., size) unbatched, as a (L*D, B, size)
        copy. size: proj_size or H for h, H for c."""
        if value is None:
            return None
        value = self._check_array(value, name)
        want = self._state_shape(B, batched, size)
        if value.shape != want:
            raise ValueError(f"{name}: expected shape {want}, got {value.shape}")
        return value.reshape(want[0], B, size).copy(order="C")

    def _check_grad_out(self, value, name, shape):
        """A gradient argument of the given user-facing shape, or None."""
        if value is None:
            return None
        value = self._check_array(value, name)
        if value.shape != shape:
            raise ValueError(f"{name}: expected shape {shape}, got {value.shape}")
        return value

    # -------------------------------------------------------------------------------- forward / backward
    def _forward(self, x, h0, c0, lengths):
        x_tm, batched = self._check_input(x)
        T, B, _ = x_tm.shape
        lengths = self._check_lengths(lengths, T, B)
        h0 = self._check_state(h0, "h0", B, batched, self._state_size)
        c0 = self._check_state(c0, "c0", B, batched, self.hidden_size) if self._cell == "lstm" else None
        plan = functional.Plan(T, B, lengths)
        device = backend.device_kernels(x_tm, h0, c0, *(p.data for p in self._params.values()))
        if self.training and plan.dense:
            x_tm = x_tm.copy(order="C")  # backward must see the input of this forward
        weights = self._layer_weights(pack=device is None)
        y, h_n, c_n, saved = functional.stack_forward(self._cell, x_tm, h0, c0, weights, plan, self._directions,
                                                      self.training, self.dropout, self._rng)
        if self.training:
            self._saved, self._layout = (saved, weights), (T, B, batched)
            # y is also the saved activation backward reads (last layer, forward direction, no lengths):
            # hand it out read-only instead of copying it.
            if isinstance(y, np.ndarray):
                y.flags.writeable = False
        return self._to_user(y, batched), self._state_out(h_n, batched), self._state_out(c_n, batched)

    def _to_user(self, a, batched):
        """(T, B, F) -> the caller's layout."""
        if not batched:
            return a[:, 0, :]
        return a.transpose(1, 0, 2).copy(order="C") if self.batch_first else a

    def _from_user(self, a, batched):
        """The caller's layout -> (T, B, F), C-contiguous."""
        if not batched:
            a = a[:, None, :]
        elif self.batch_first:
            a = a.transpose(1, 0, 2)
        return a.copy(order="C") if not a.flags.c_contiguous else a

    def _state_out(self, s, batched):
        if s is None:
            return None
        return s if batched else s[:, 0, :]

    def _backward(self, dy, dh_n, dc_n):
        if self._saved is None:
            raise RuntimeError("backward: no training-mode forward to differentiate (call the layer in train() mode first)")
        T, B, batched = self._layout
        S, H = self._state_size, self.hidden_size
        F = self._directions * S
        y_shape = ((B, T, F) if self.batch_first else (T, B, F)) if batched else (T, F)
        dy = self._check_grad_out(dy, "dy", y_shape)
        dh_n = self._check_grad_out(dh_n, "dh_n", self._state_shape(B, batched, S))
        dc_n = (self._check_grad_out(dc_n, "dc_n", self._state_shape(B, batched, H))
                if self._cell == "lstm" else None)
        dy = None if dy is None else self._from_user(dy, batched)
        LD = self.num_layers * self._directions
        dh_n = None if dh_n is None else np.ascontiguousarray(dh_n.reshape(LD, B, S))
        dc_n = None if dc_n is None else np.ascontiguousarray(dc_n.reshape(LD, B, H))
        saved, weights = self._saved
        dx, dh0, dc0 = functional.stack_backward(saved, weights, dy, dh_n, dc_n)
        return self._to_user(dx, batched), self._state_out(dh0, batched), self._state_out(dc0, batched)

    # RNN and GRU: one state. LSTM overrides both with (h, c) pairs.
    def __call__(self, x, h0=None, lengths=None):
        """y, h_n = layer(x, h0=None, lengths=None). lengths: one per batch element, 1 <= length <= T, any
        order (PackedSequence semantics: outputs past a sequence's end are zero, h_n is the state at each
        sequence's own last step, the reverse direction starts there)."""
        y, h_n, _ = self._forward(x, h0, None, lengths)
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
    """GRU. With linear_before_reset=True (default) it is torch.nn.GRU (and cuDNN's, Keras' reset_after=True):
    n = tanh(W_in x + b_in + r*(W_hn h + b_hn)). With False it is the original form (Keras reset_after=False):
    n = tanh(W_in x + b_in + W_hn (r*h) + b_hn). Gates r, z as torch; h' = (1-z)*n + z*h."""

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, dtype=np.float32, seed=None, linear_before_reset=True):
        if not isinstance(linear_before_reset, (bool, np.bool_)):
            raise TypeError(f"linear_before_reset must be a bool, got {type(linear_before_reset).__name__}")
        self.linear_before_reset = bool(linear_before_reset)
        super().__init__("gru" if self.linear_before_reset else "gru_original", input_size, hidden_size, num_layers,
                         bias, batch_first, dropout, bidirectional, 0, dtype, seed)

    def extra_repr(self):
        s = super().extra_repr()
        return s if self.linear_before_reset else s + ", linear_before_reset=False"


class LSTM(_RNNBase):
    """LSTM as torch.nn.LSTM: gates i, f, g, o; c' = f*c + i*g; h' = o*tanh(c')."""

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, proj_size=0, dtype=np.float32, seed=None):
        super().__init__("lstm", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         proj_size, dtype, seed)

    def __call__(self, x, hx=None, lengths=None):
        h0, c0 = self._split_pair(hx, "hx")
        y, h_n, c_n = self._forward(x, h0, c0, lengths)
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
