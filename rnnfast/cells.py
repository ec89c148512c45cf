"""The single-step cells RNNCell, LSTMCell and GRUCell: torch.nn's constructor, parameter names and calling
convention, NumPy arrays in and out, and an explicit step-wise ``backward`` for BPTT through a loop the user
writes.

    h = cell(x_t, h)                           h, c = lstm_cell(x_t, (h, c))
    dx_t, dh_prev = cell.backward(dh)          dx_t, (dh_prev, dc_prev) = lstm_cell.backward((dh, dc))

A call is one fused step of the layer kernels (``functional.layer_forward`` with T=1). In training mode each
call pushes what its backward needs onto a record (a stack); ``backward`` differentiates the most recent
recorded step, pops it and adds the parameter gradients into ``.grad``. So T calls followed by T backward
calls in reverse order, each fed dh_prev of the step after it plus the loss gradient of its own output, is
exact BPTT:

    hs = []
    for t in range(T):
        h = cell(x[t], h); hs.append(h)
    dh = np.zeros_like(h)
    for t in reversed(range(T)):
        dx_t, dh = cell.backward(dh + dloss_dh[t])

This module validates and reshapes; the data flow is in functional.py and the math in the kernels.
"""
from __future__ import annotations

import math

import numpy as np

from . import backend, functional
from .layers import _check_dtype, _check_size
from .module import Module, Parameter, check_array

__all__ = ["RNNCell", "LSTMCell", "GRUCell"]


class _Step:
    """One recorded training step: what layer_forward kept, and the caller's layout of that step."""

    __slots__ = ("saved", "B", "batched")

    def __init__(self, saved, B, batched):
        self.saved, self.B, self.batched = saved, B, batched


def _private(a, saved):
    """`a` itself if it shares no memory with what its step keeps for backward, else a copy of it: an array
    handed to the caller must not let the caller change the record."""
    if a is None:
        return None
    try:
        kept = [v for v in vars(saved).values() if isinstance(v, np.ndarray)]
    except TypeError:  # a record type without __dict__: be safe
        return a.copy()
    return a.copy() if any(np.may_share_memory(a, v) for v in kept) else a


class _CellBase(Module):
    _cell: str  # "rnn_tanh", "rnn_relu", "lstm", "gru"

    def __init__(self, cell, input_size, hidden_size, bias=True, dtype=np.float32, seed=None):
        super().__init__()
        self.input_size = _check_size("input_size", input_size)
        self.hidden_size = _check_size("hidden_size", hidden_size)
        self.bias = bool(bias)
        self.dtype = _check_dtype(dtype)
        self._cell = cell
        G = functional.GATES[cell]
        H, I = self.hidden_size, self.input_size
        # torch.nn's initialisation: every parameter uniform in [-1/sqrt(H), 1/sqrt(H)] (drawn in the same order
        # as the layers, so a cell and a layer built with the same seed hold the same weights).
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        k = 1.0 / math.sqrt(H)
        shapes = [("weight_ih", (G * H, I)), ("weight_hh", (G * H, H))]
        if self.bias:
            shapes += [("bias_ih", (G * H,)), ("bias_hh", (G * H,))]
        for name, shape in shapes:
            self._params[name] = Parameter(rng.uniform(-k, k, size=shape).astype(self.dtype))
        # W_ih and W_hh packed for the kernels, revalidated against the live weights at each call.
        self._packed_ih = None
        self._packed_hh = None
        self._record = []  # the recorded training steps, most recent last

    # -------------------------------------------------------------------------------- the record
    @property
    def num_recorded(self) -> int:
        """How many training steps are recorded (and not yet popped by backward)."""
        return len(self._record)

    def reset(self):
        """Forgets every recorded step (e.g. after truncating BPTT, or to drop a sequence)."""
        self._record.clear()
        return self

    # -------------------------------------------------------------------------------- checks
    def _check_array(self, value, name):
        return check_array(value, name, self.dtype, "cell")

    def _check_input(self, x):
        """x_t as a (1, B, I) view, B, and whether the call is batched."""
        x = self._check_array(x, "x_t")
        if x.ndim not in (1, 2):
            raise ValueError(f"x_t: expected a 2-D (batch, input_size) or 1-D (input_size,) array, got shape {x.shape}")
        if x.shape[-1] != self.input_size:
            raise ValueError(f"x_t: expected {self.input_size} input features (last dimension), got shape {x.shape}")
        batched = x.ndim == 2
        B = x.shape[0] if batched else 1
        if B < 1:
            raise ValueError(f"x_t: batch size must be at least 1, got shape {x.shape}")
        return x.reshape(1, B, self.input_size), B, batched

    def _want(self, B, batched):
        return (B, self.hidden_size) if batched else (self.hidden_size,)

    def _check_state(self, value, name, B, batched, like):
        """A state argument, (B, H) or (H,) unbatched, as our own C-contiguous (B, H) copy; None = zeros on the
        side (NumPy or CuPy) of `like`, the input."""
        if value is None:
            return functional._xp(like).zeros((B, self.hidden_size), dtype=self.dtype)
        value = self._check_array(value, name)
        want = self._want(B, batched)
        if value.shape != want:
            raise ValueError(f"{name}: expected shape {want} ({'batched' if batched else 'unbatched'} x_t of shape "
                             f"{(B, self.input_size) if batched else (self.input_size,)}), got {value.shape}")
        return value.reshape(B, self.hidden_size).copy(order="C")

    def _check_grad(self, value, name, step):
        """A gradient with respect to a state of the recorded step, as a C-contiguous (B, H) array; None stays
        None (= zeros). Only read, never written."""
        if value is None:
            return None
        value = self._check_array(value, name)
        want = self._want(step.B, step.batched)
        if value.shape != want:
            raise ValueError(f"{name}: expected shape {want} (the shape of the state the most recent recorded step "
                             f"returned), got {value.shape}")
        value = value.reshape(step.B, self.hidden_size)
        return value if value.flags.c_contiguous else value.copy(order="C")

    @staticmethod
    def _split_pair(pair, name, first, second):
        if pair is None:
            return None, None
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise TypeError(f"{name}: expected a pair ({first}, {second}) of arrays (or None), "
                            f"got {type(pair).__name__}")
        return pair[0], pair[1]

    # -------------------------------------------------------------------------------- forward / backward
    def _step(self, x_t, h, c):
        """One step; returns (h', c') in the caller's layout (c' None except for the LSTM)."""
        lstm = self._cell == "lstm"
        x, B, batched = self._check_input(x_t)
        h0 = self._check_state(h, "h" if lstm else "hx", B, batched, x)
        c0 = self._check_state(c, "c", B, batched, x) if lstm else None
        training = self.training
        # The record must hold the input of this step, not the caller's array (which the caller may reuse).
        x = x.copy(order="C") if training or not x.flags.c_contiguous else x
        p = self._params
        w_ih, w_hh = p["weight_ih"].data, p["weight_hh"].data
        b_ih = p["bias_ih"].data if self.bias else None
        b_hh = p["bias_hh"].data if self.bias else None
        if backend.device_kernels(x, h0, c0, w_ih, w_hh, b_ih, b_hh) is None:  # the CPU kernels run packed W
            self._packed_ih = functional.packed_weights(w_ih, 0, self._packed_ih)
            self._packed_hh = functional.packed_weights(w_hh, functional.GATES[self._cell], self._packed_hh)
        _, h_n, c_n, saved = functional.layer_forward(self._cell, x, h0, c0, w_ih, b_ih, b_hh, self._packed_ih,
                                                      self._packed_hh, training, w_hh=w_hh)
        if training:
            self._record.append(_Step(saved, B, batched))
            h_n, c_n = _private(h_n, saved), _private(c_n, saved)
        return self._state_out(h_n, batched), self._state_out(c_n, batched)

    def _backward(self, dh, dc):
        """Backward through the most recent recorded step (popped); returns (dx_t, dh_prev, dc_prev)."""
        if not self._record:
            raise RuntimeError(f"{type(self).__name__}.backward: no recorded step to differentiate (each "
                               "training-mode call records one step and each backward pops one; call the cell "
                               "in train() mode first)")
        step = self._record[-1]
        dh = self._check_grad(dh, "dh", step)
        dc = self._check_grad(dc, "dc", step) if self._cell == "lstm" else None
        self._record.pop()  # validated: from here on this step is consumed (its gradients are added once)
        p = self._params
        grads = {"w_ih": p["weight_ih"].grad, "w_hh": p["weight_hh"].grad,
                 "b_ih": p["bias_ih"].grad if self.bias else None,
                 "b_hh": p["bias_hh"].grad if self.bias else None}
        dx, dh0, dc0 = functional.layer_backward(step.saved, None, dh, dc, grads)
        dx = dx.reshape(step.B, self.input_size)  # dx comes as (1, B, I) or as tokens (B, I)
        dx = dx if step.batched else dx[0]
        return dx, self._state_out(dh0, step.batched), self._state_out(dc0, step.batched)

    @staticmethod
    def _state_out(s, batched):
        if s is None:
            return None
        return s if batched else s[0]

    # RNN and GRU: one state. LSTMCell overrides both with (h, c) pairs.
    def __call__(self, x_t, hx=None):
        """One step: x_t (B, input_size) or (input_size,), hx (B, hidden_size) or (hidden_size,) or None
        (zeros). Returns the new hidden state, a fresh array."""
        h, _ = self._step(x_t, hx, None)
        return h

    def backward(self, dh):
        """Backward through the most recent recorded step, which it pops: dh is the gradient of the loss with
        respect to that step's output (None = zeros). Returns (dx_t, dh_prev) and adds into every .grad."""
        dx, dh_prev, _ = self._backward(dh, None)
        return dx, dh_prev

    def extra_repr(self):
        s = f"{self.input_size}, {self.hidden_size}"
        if not self.bias:
            s += ", bias=False"
        return s + f", dtype={self.dtype}"

    def __repr__(self):
        return f"{type(self).__name__}({self.extra_repr()})"


class RNNCell(_CellBase):
    """Elman RNN cell: h' = act(W_ih x + b_ih + W_hh h + b_hh), act = tanh or relu (torch.nn.RNNCell)."""

    def __init__(self, input_size, hidden_size, bias=True, nonlinearity="tanh", dtype=np.float32, seed=None):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        super().__init__("rnn_" + nonlinearity, input_size, hidden_size, bias, dtype, seed)

    def extra_repr(self):
        s = super().extra_repr()
        return s if self.nonlinearity == "tanh" else s + ", nonlinearity='relu'"


class GRUCell(_CellBase):
    """GRU cell as torch.nn.GRUCell: r, z gates; n = tanh(W_in x + b_in + r*(W_hn h + b_hn)); h' = (1-z)*n + z*h."""

    def __init__(self, input_size, hidden_size, bias=True, dtype=np.float32, seed=None):
        super().__init__("gru", input_size, hidden_size, bias, dtype, seed)


class LSTMCell(_CellBase):
    """LSTM cell as torch.nn.LSTMCell: gates i, f, g, o; c' = f*c + i*g; h' = o*tanh(c')."""

    def __init__(self, input_size, hidden_size, bias=True, dtype=np.float32, seed=None):
        super().__init__("lstm", input_size, hidden_size, bias, dtype, seed)

    def __call__(self, x_t, hx=None):
        """One step: hx = (h, c), each (B, hidden_size) or (hidden_size,), or None (zeros; either may be None).
        Returns (h', c'), fresh arrays."""
        h, c = self._split_pair(hx, "hx", "h", "c")
        return self._step(x_t, h, c)

    def backward(self, dstate):
        """Backward through the most recent recorded step, which it pops: dstate = (dh, dc), the gradients of
        the loss with respect to that step's (h', c') (either may be None = zeros). Returns
        (dx_t, (dh_prev, dc_prev)) and adds into every .grad."""
        dh, dc = self._split_pair(dstate, "dstate", "dh", "dc")
        dx, dh_prev, dc_prev = self._backward(dh, dc)
        return dx, (dh_prev, dc_prev)
