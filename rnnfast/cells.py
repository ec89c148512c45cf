"""The single-step cells RNNCell, LSTMCell and GRUCell: torch.nn's constructor, parameter names and calling
convention, NumPy arrays in and out, and an explicit step-wise ``backward`` for BPTT through a loop the user
writes.

    h = cell(x_t, h)                           h, c = lstm_cell(x_t, (h, c))
    dx_t, dh_prev = cell.backward(dh)          dx_t, (dh_prev, dc_prev) = lstm_cell.backward((dh, dc))

A call is one fused step of the layer kernels (``_core.functional.layer_forward`` with T=1). In training mode each
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

The record grows by one step per training-mode call until backward pops it: sampling loops should run the
cell in eval() mode or inside ``rnnfast.no_grad()``; past RECORD_WARN_BYTES a cell warns once.

This module validates and reshapes; the data flow is in rnnfast/_core/functional.py and the math in the kernels.
"""
from __future__ import annotations

import warnings
from typing import Optional, Tuple, Union

import numpy as np

from ._core import bf16, checks as _checks, dispatch, functional
from ._core.arrays import namespace
from ._core.pickling import DropsCachesWhenPickled
from .grad_mode import is_grad_enabled
from .module import Module, Parameter

__all__ = ["RNNCell", "LSTMCell", "GRUCell", "RECORD_WARN_BYTES"]

Array = np.ndarray
Seed = Union[None, int, np.random.Generator]
DType = Union[None, str, type, np.dtype]

# A cell in training mode keeps every step until backward pops it. When the record of one cell passes this
# many bytes it warns once (a ResourceWarning): a sampling loop left in training mode grows without bound
# (LSTMCell(64, 512) at batch 64: about 1.5 GB per 1,000 steps). Use eval(), rnnfast.no_grad(), reset() or
# backward to keep it small. Settable (e.g. ``rnnfast.cells.RECORD_WARN_BYTES = 2**32``).
RECORD_WARN_BYTES = 1 << 30

_ARGS_DOC = """
    Args:
        input_size: features of x_t (>= 1).
        hidden_size: features of the state (>= 0; 0 gives empty states, as torch).
        bias: whether the cell has b_ih and b_hh.
        dtype: float32, float64 or "bfloat16" of the parameters and of every array passed in and returned; None
            means float32 (torch's default dtype). bfloat16 cells compute in float32 on the bf16 values and round
            what they return once (see rnnfast.LSTM).
        seed: None, an int >= 0 or a numpy.random.Generator for the initial weights (torch's
            U(-1/sqrt(H), 1/sqrt(H))).
"""


class _Step:
    """One recorded training step: what layer_forward kept (None for an empty step: B=0 or hidden_size=0,
    which the kernels do not run), the caller's layout of that step, and the bytes it holds."""

    __slots__ = ("saved", "B", "batched", "nbytes")

    def __init__(self, saved, B, batched):
        self.saved, self.B, self.batched = saved, B, batched
        arrays = [] if saved is None else [v for v in vars(saved).values() if isinstance(v, np.ndarray)]
        self.nbytes = sum(a.nbytes for a in arrays)


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


class _CellBase(DropsCachesWhenPickled, Module):
    """Pickling and copy.deepcopy (at any time) keep the parameters, their gradients and the arguments;
    the packed weights and the recorded steps are dropped."""

    _CACHES = ("_packed", "_record", "_record_bytes", "_warned")
    _cell: str  # "rnn_tanh", "rnn_relu", "lstm", "gru"

    def __init__(self, cell: str, input_size: int, hidden_size: int, bias: bool = True, dtype: DType = np.float32,
                 seed: Seed = None):
        super().__init__()
        self.input_size = _checks.check_size("input_size", input_size)
        self.hidden_size = _checks.check_size("hidden_size", hidden_size, minimum=0)
        self.bias = bool(bias)
        self.dtype = _checks.check_dtype(dtype)
        rng = _checks.check_seed(seed)
        self._cell = cell
        G = functional.gates(cell)
        H, I = self.hidden_size, self.input_size
        _checks.check_parameter_memory(type(self).__name__, G * H * (I + H + 2), self.dtype,
                                       f"input_size={I}, hidden_size={H}")
        # torch.nn's initialisation: every parameter uniform in [-1/sqrt(H), 1/sqrt(H)] (drawn in the same order
        # as the layers, so a cell and a layer built with the same seed hold the same weights).
        k = _checks.uniform_bound(H)
        shapes = [("weight_ih", (G * H, I)), ("weight_hh", (G * H, H))]
        if self.bias:
            shapes += [("bias_ih", (G * H,)), ("bias_hh", (G * H,))]
        for name, shape in shapes:
            self._params[name] = Parameter(rng.uniform(-k, k, size=shape).astype(self.dtype))
        self._drop_caches()

    # -------------------------------------------------------------------------------- caches and pickling
    def _drop_caches(self) -> None:
        """Forgets the packed weights and every recorded step (called by ``to()``, and for pickling: the packed
        weights are the kernels' objects and cannot be pickled)."""
        # W_ih and W_hh packed for the kernels, revalidated against the live weights at each call.
        self.__dict__["_packed"] = {}
        self.__dict__["_record"] = []  # the recorded training steps, most recent last
        self.__dict__["_record_bytes"] = 0
        self.__dict__["_warned"] = False

    # -------------------------------------------------------------------------------- the record
    @property
    def num_recorded(self) -> int:
        """How many training steps are recorded (and not yet popped by backward)."""
        return len(self._record)

    @property
    def recorded_bytes(self) -> int:
        """Bytes held by the recorded steps (see RECORD_WARN_BYTES)."""
        return self._record_bytes

    def reset(self):
        """Forgets every recorded step (e.g. after truncating BPTT, or to drop a sequence). Returns self."""
        self._record.clear()
        self._record_bytes = 0
        return self

    def _push(self, step: _Step) -> None:
        self._record.append(step)
        self._record_bytes += step.nbytes
        if self._record_bytes > RECORD_WARN_BYTES and not self._warned:
            self._warned = True
            warnings.warn(f"{type(self).__name__}: {len(self._record)} recorded training steps hold "
                          f"{self._record_bytes / 2**20:.0f} MiB (more than rnnfast.cells.RECORD_WARN_BYTES) and "
                          "keep growing until backward pops them: for sampling or evaluation call the cell in "
                          "eval() mode or inside rnnfast.no_grad(), or call reset()", ResourceWarning, stacklevel=4)

    # -------------------------------------------------------------------------------- checks
    def _check_array(self, value, name):
        return _checks.check_array(value, name, self.dtype, "cell")

    def _check_input(self, x):
        """x_t as a (1, B, I) view, B, and whether the call is batched."""
        x = self._check_array(x, "x_t")
        if x.ndim not in (1, 2):
            raise ValueError(f"x_t: expected a 2-D (batch, input_size) or 1-D (input_size,) array, got shape {x.shape}")
        if x.shape[-1] != self.input_size:
            raise ValueError(f"x_t: expected {self.input_size} input features (last dimension), got shape {x.shape}")
        batched = x.ndim == 2
        B = x.shape[0] if batched else 1  # B = 0 is an empty batch, as torch
        return x.reshape(1, B, self.input_size), B, batched

    def _want(self, B, batched):
        return (B, self.hidden_size) if batched else (self.hidden_size,)

    def _check_state(self, value, name, B, batched, like):
        """A state argument, (B, H) or (H,) unbatched, as our own C-contiguous (B, H) copy; None = zeros on the
        side (NumPy or CuPy) of `like`, the input."""
        if value is None:
            return namespace(like).zeros((B, self.hidden_size), dtype=self.dtype)
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
        training = self.training and is_grad_enabled()
        if B == 0 or self.hidden_size == 0:  # nothing for the kernels to run: empty or zero-width states
            h_n = namespace(x).zeros((B, self.hidden_size), dtype=self.dtype)
            if training:
                self._push(_Step(None, B, batched))
            return self._state_out(h_n, batched), self._state_out(h_n.copy() if lstm else None, batched)
        # The record must hold the input of this step, not the caller's array (which the caller may reuse).
        x = x.copy(order="C") if training or not x.flags.c_contiguous else x
        x, h0, c0 = bf16.to_compute(self.dtype, x, h0, c0)
        data = bf16.compute_values(self._params)
        kernels = dispatch.kernels_for(x, h0, c0, *data.values())
        # (backward names the arrays the gradients go into: _backward)
        [[lw]] = dispatch.stack_weights(kernels, self._cell, data, {}, [[""]], self._packed)
        _, h_n, c_n, saved = functional.layer_forward(kernels, self._cell, x, h0, c0, lw, training)
        if training:
            self._push(_Step(saved, B, batched))
            h_n, c_n = _private(h_n, saved), _private(c_n, saved)
        h_n, c_n = bf16.to_dtype(self.dtype, h_n, c_n)
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
        self._record_bytes -= step.nbytes
        if step.saved is None:  # an empty step: no parameter gradient, zero input and state gradients
            zeros = np.zeros((step.B, self.hidden_size), dtype=self.dtype)
            dx = np.zeros((step.B, self.input_size), dtype=self.dtype)
            return (dx if step.batched else dx[0], self._state_out(zeros, step.batched),
                    self._state_out(zeros.copy(), step.batched) if self._cell == "lstm" else None)
        dh, dc = bf16.to_compute(self.dtype, dh, dc)
        targets, grads32 = bf16.gradient_targets(self._params)
        grads = {kind: targets.get(name) for name, kind in dispatch.KINDS.items()}
        dx, dh0, dc0 = functional.layer_backward(step.saved, None, dh, dc, grads)
        bf16.flush_gradients(self._params, grads32)
        dx, dh0, dc0 = bf16.to_dtype(self.dtype, dx, dh0, dc0)
        dx = dx.reshape(step.B, self.input_size)  # dx comes as (1, B, I) or as tokens (B, I)
        dx = dx if step.batched else dx[0]
        return dx, self._state_out(dh0, step.batched), self._state_out(dc0, step.batched)

    @staticmethod
    def _state_out(s, batched):
        if s is None:
            return None
        return s if batched else s[0]

    # RNN and GRU: one state. LSTMCell overrides both with (h, c) pairs.
    def __call__(self, x_t: Array, hx: Optional[Array] = None) -> Array:
        """One step.

        Args:
            x_t: (B, input_size), B >= 0, or (input_size,) unbatched; the cell's dtype.
            hx: (B, hidden_size) or (hidden_size,), or None (zeros).

        Returns:
            The new hidden state (hx's shape), a fresh array. In training mode (outside ``rnnfast.no_grad()``)
            the step is recorded for backward.
        """
        h, _ = self._step(x_t, hx, None)
        return h

    def backward(self, dh: Optional[Array]) -> Tuple[Array, Array]:
        """Backward through the most recent recorded step, which it pops.

        Args:
            dh: gradient of the loss with respect to that step's output (its shape), or None (zeros).

        Returns:
            (dx_t, dh_prev) in the shapes of that step's x_t and hx; adds into every parameter's ``.grad``.
            RuntimeError when no step is recorded.
        """
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
    __doc__ = """Elman RNN cell as torch.nn.RNNCell: h' = act(W_ih x + b_ih + W_hh h + b_hh), act = tanh or relu.

        h = cell(x_t, hx=None)                   dx_t, dh_prev = cell.backward(dh)
    """ + _ARGS_DOC + """        nonlinearity: "tanh" or "relu".

    Parameters: weight_ih (H, input_size), weight_hh (H, H), bias_ih and bias_hh (H,).
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, nonlinearity: str = "tanh",
                 dtype: DType = np.float32, seed: Seed = None):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        super().__init__("rnn_" + nonlinearity, input_size, hidden_size, bias, dtype, seed)

    def extra_repr(self):
        s = super().extra_repr()
        return s if self.nonlinearity == "tanh" else s + ", nonlinearity='relu'"


class GRUCell(_CellBase):
    __doc__ = """GRU cell as torch.nn.GRUCell: r, z gates; n = tanh(W_in x + b_in + r*(W_hn h + b_hn));
    h' = (1-z)*n + z*h.

        h = cell(x_t, hx=None)                   dx_t, dh_prev = cell.backward(dh)
    """ + _ARGS_DOC + """
    Parameters (gate rows r, z, n): weight_ih (3H, input_size), weight_hh (3H, H), bias_ih and bias_hh (3H,).
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, dtype: DType = np.float32,
                 seed: Seed = None):
        super().__init__("gru", input_size, hidden_size, bias, dtype, seed)


class LSTMCell(_CellBase):
    __doc__ = """LSTM cell as torch.nn.LSTMCell: gates i, f, g, o; c' = f*c + i*g; h' = o*tanh(c').

        h, c = cell(x_t, (h, c))                 dx_t, (dh_prev, dc_prev) = cell.backward((dh, dc))
    """ + _ARGS_DOC + """
    Parameters (gate rows i, f, g, o): weight_ih (4H, input_size), weight_hh (4H, H), bias_ih and bias_hh (4H,).
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, dtype: DType = np.float32,
                 seed: Seed = None):
        super().__init__("lstm", input_size, hidden_size, bias, dtype, seed)

    def __call__(self, x_t: Array, hx: Optional[Tuple[Optional[Array], Optional[Array]]] = None
                 ) -> Tuple[Array, Array]:
        """One step: x_t (B, input_size) or (input_size,); hx = (h, c), each (B, hidden_size) or (hidden_size,),
        or None (zeros; either may be None). Returns (h', c'), fresh arrays; records the step in training
        mode."""
        h, c = self._split_pair(hx, "hx", "h", "c")
        return self._step(x_t, h, c)

    def backward(self, dstate: Optional[Tuple[Optional[Array], Optional[Array]]]
                 ) -> Tuple[Array, Tuple[Array, Array]]:
        """Backward through the most recent recorded step, which it pops: dstate = (dh, dc), the gradients of
        the loss with respect to that step's (h', c') (either may be None = zeros). Returns
        (dx_t, (dh_prev, dc_prev)) and adds into every .grad."""
        dh, dc = self._split_pair(dstate, "dstate", "dh", "dc")
        dx, dh_prev, dc_prev = self._backward(dh, dc)
        return dx, (dh_prev, dc_prev)
