"""The layer classes RNN, LSTM and GRU: torch.nn's constructor, parameter names and calling convention,
NumPy arrays in and out, and an explicit ``backward`` for BPTT.

    y, h_n = gru(x, h0=None)              y, (h_n, c_n) = lstm(x, (h0, c0))
    dx, dh0 = gru.backward(dy, dh_n)      dx, (dh0, dc0) = lstm.backward(dy, (dh_n, dc_n))

This module validates and reshapes; the data flow is in rnnfast/_core/functional.py and the math in the kernels.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import numpy as np

from ._core import bf16, checks as _checks, dispatch, functional
from ._core.arrays import namespace
from ._core.pickling import DropsCachesWhenPickled
from .grad_mode import is_grad_enabled
from .module import Module, Parameter

__all__ = ["RNN", "LSTM", "GRU"]

Array = np.ndarray
Seed = Union[None, int, np.random.Generator]
DType = Union[None, str, type, np.dtype]

# What a training forward with an empty batch (B=0) keeps: there is nothing to differentiate.
_EMPTY_BATCH = "empty batch"

# The recurrent weights an inference forward may read (set_inference_weights).
INFERENCE_WEIGHTS = ("float32", "bfloat16")

_ARGS_DOC = """
    Args:
        input_size: features of x (>= 1).
        hidden_size: features of the hidden state h (>= 1).
        num_layers: stacked layers (>= 1); layer l > 0 reads layer l-1's output.
        bias: whether the layers have b_ih and b_hh.
        batch_first: x and y are (B, T, F) instead of (T, B, F). States are (num_layers*D, B, H) either way.
        dropout: probability in [0, 1] of zeroing each output of every layer but the last, in training mode
            (1 drops them all, as torch). May be changed later (``m.dropout = 0.2``); checked then too.
        bidirectional: a reverse direction per layer (D = 2); outputs are concatenated per step.
        dtype: float32, float64 or "bfloat16" (ml_dtypes.bfloat16) of the parameters and of every array passed
            in and returned; None means float32 (torch's default dtype). bfloat16 layers compute in float32 on
            the bf16 values (products accumulate in float32, h, c and the gate math stay float32 from step to
            step) and round what they return to bf16 once; parameter gradients are summed in float32 and
            rounded to bf16 once per backward (as torch's bf16 modules, and rnnfast.torch's). CPU only.
        seed: None, an int >= 0 or a numpy.random.Generator: draws the initial weights (torch's
            U(-1/sqrt(H), 1/sqrt(H))) and then the dropout masks.
        recurrent_dropout: probability in [0, 1] of zeroing each unit of h_{t-1} where a gate's recurrent
            product reads it, in training mode (beyond torch.nn: Keras's recurrent_dropout). One mask per
            layer, direction and gate, drawn once per call and the same at every step, scaled by 1/(1-p); the
            GRU's final mix z*h reads h undropped (with linear_before_reset=False, r*h reads h under the candidate's
            mask, as Keras's reset_after=False). Fused into the kernels' step product. Not for an LSTM with
            proj_size (ValueError). May be changed later.
"""


class _RNNBase(DropsCachesWhenPickled, Module):
    """Pickling and copy.deepcopy (at any time) keep the parameters, their gradients, the arguments, the
    generator and the choice of inference weights (``set_inference_weights``); the packed weights and the
    record of the last training forward are dropped."""

    _CACHES = ("_packed", "_saved", "_layout", "_last_call")
    _cell: str  # set by subclasses: "rnn_tanh", "rnn_relu", "lstm", "gru"

    def __init__(self, cell: str, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, proj_size: int = 0,
                 dtype: DType = np.float32, seed: Seed = None, recurrent_dropout: float = 0.0):
        super().__init__()
        self.input_size = _checks.check_size("input_size", input_size)
        self.hidden_size = _checks.check_size("hidden_size", hidden_size)
        self.num_layers = _checks.check_size("num_layers", num_layers, maximum=_checks.MAX_LAYERS)
        self.proj_size = _checks.check_size("proj_size", proj_size, minimum=0)
        self.dropout = dropout  # checked by the property
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.bidirectional = bool(bidirectional)
        self.dtype = _checks.check_dtype(dtype)
        if self.proj_size > 0 and self.proj_size >= self.hidden_size:
            raise ValueError(f"proj_size must be smaller than hidden_size, got proj_size={self.proj_size} "
                             f"and hidden_size={self.hidden_size}")
        # One generator for the initial weights and, later, the dropout masks: a seed reproduces both.
        self._rng = _checks.check_seed(seed)
        self._cell = cell
        self.recurrent_dropout = recurrent_dropout  # checked by the property, against the cell
        G = functional.gates(cell)
        H = self.hidden_size
        D = 2 if self.bidirectional else 1
        S = self._state_size
        per_direction = [G * H * ((self.input_size if layer == 0 else D * S) + S + 2 * self.bias)
                         + self.proj_size * H for layer in range(min(self.num_layers, 2))]
        count = D * (per_direction[0] + (self.num_layers - 1) * per_direction[-1])
        _checks.check_parameter_memory(type(self).__name__, count, self.dtype,
                                       f"input_size={self.input_size}, hidden_size={H}, "
                                       f"num_layers={self.num_layers}")
        # torch.nn's initialisation: every parameter uniform in [-1/sqrt(H), 1/sqrt(H)], in torch's order.
        k = _checks.uniform_bound(H)
        for layer in range(self.num_layers):
            in_size = self.input_size if layer == 0 else D * S
            for d in range(D):
                sfx = dispatch.suffix(layer, d)
                shapes = [("weight_ih" + sfx, (G * H, in_size)), ("weight_hh" + sfx, (G * H, S))]
                if self.bias:
                    shapes += [("bias_ih" + sfx, (G * H,)), ("bias_hh" + sfx, (G * H,))]
                if self.proj_size:
                    shapes += [("weight_hr" + sfx, (self.proj_size, H))]
                for name, shape in shapes:
                    self._params[name] = Parameter(self._rng.uniform(-k, k, size=shape).astype(self.dtype))
        self._drop_caches()

    # -------------------------------------------------------------------------------- caches and records
    def _drop_caches(self) -> None:
        """Forgets the packed weights and the record of the last training forward (called by ``to()``, and
        for pickling: the packed weights are the kernels' objects and cannot be pickled)."""
        # W_ih and W_hh of every layer and direction packed for the kernels, revalidated at each call.
        self.__dict__["_packed"] = {}
        self.__dict__["_saved"] = None  # what the last training forward kept for its backward
        self.__dict__["_layout"] = None  # (T, B, batched) of that forward, to check dy against
        self.__dict__["_last_call"] = None  # why there is no record: "eval", "no_grad", "backward" or None

    @property
    def dropout(self) -> float:
        """Probability in [0, 1] of zeroing each output of every layer but the last in training mode."""
        return self.__dict__["_dropout"]

    @dropout.setter
    def dropout(self, value) -> None:
        self.__dict__["_dropout"] = _checks.check_dropout(value)

    @property
    def recurrent_dropout(self) -> float:
        """Probability in [0, 1] of zeroing each unit of h_{t-1} in every gate's recurrent product (training)."""
        return self.__dict__.get("_recurrent_dropout", 0.0)

    @recurrent_dropout.setter
    def recurrent_dropout(self, value) -> None:
        self.__dict__["_recurrent_dropout"] = _checks.check_recurrent_dropout(value, self._cell, self.proj_size)

    @property
    def _directions(self):
        return 2 if self.bidirectional else 1

    @property
    def _has_c(self):
        """Whether the cell carries c beside h (the LSTM)."""
        return functional.has_cell_state(self._cell)

    @property
    def _state_size(self):
        """Features of h (and of each direction's output): proj_size when there is one, else hidden_size."""
        return self.proj_size or self.hidden_size

    # -------------------------------------------------------------------------------- inference weights
    @property
    def inference_weights(self) -> str:
        """The recurrent weights inference forwards read: "float32" (default) or "bfloat16" (see
        ``set_inference_weights``)."""
        return self.__dict__.get("_inference_weights", "float32")

    def set_inference_weights(self, dtype: str):
        """Chooses the recurrent weights W_hh that inference forwards read: "float32" (the default) or
        "bfloat16", an opt-in reduced-precision mode of float32 layers on the CPU. Returns the layer.

        With "bfloat16", every forward that records nothing for backward (in ``eval()`` mode, or inside
        ``rnnfast.no_grad()``) multiplies W_hh rounded to bfloat16 (round to nearest even) by h_{t-1} rounded
        to bfloat16 once per step, summing in float32; everything else stays float32: the input projection
        W_ih x, the biases, the gates and the states (and an LSTM projection W_hr). W_hh is read in half the
        bytes, which is what a small-batch step waits for: see README ("bfloat16 inference weights") for the
        speed and the error against float32 (about 1e-3 relative on the outputs of LSTM/GRU layers).
        A training forward (``train()`` mode, outside ``no_grad``) ignores the choice and runs float32, so its
        backward differentiates exactly what it computed. The parameters themselves stay float32: the bf16
        copy is packed from them at the first inference forward and again whenever they change.

        Processors with AVX512_BF16 (Intel Sapphire Rapids and later, AMD Zen 4 and later) run it with
        vdpbf16ps; the others compute the same sums exactly without it (same rounding, same order of
        operations), so the choice never fails and never changes numerics with the processor
        (``rnnfast.backend.bf16_native()`` tells which). The CUDA kernels do not have it: a layer on CUDA
        raises RuntimeError at an inference forward in this mode.

        Kept by pickling, copy.deepcopy and rnnfast.save / load.

        Raises TypeError when dtype is not a str or when the layer is not float32 (for "bfloat16"),
        ValueError for another name.
        """
        if not isinstance(dtype, str):
            raise TypeError(f"dtype: expected 'float32' or 'bfloat16' (a str), got {type(dtype).__name__}")
        if dtype not in INFERENCE_WEIGHTS:
            raise ValueError(f"dtype: expected 'float32' or 'bfloat16', got {dtype!r}")
        if dtype == "bfloat16" and self.dtype != np.float32:
            raise TypeError(f"dtype: bfloat16 inference weights are for float32 layers; this "
                            f"{type(self).__name__} is {self.dtype}")
        self.__dict__["_inference_weights"] = dtype
        return self

    def _layer_weights(self, kernels, bfloat16=False, record=True):
        """([layer][direction] -> LayerWeights over the live parameters, as `kernels` take them (packed and cached
        in self._packed for the CPU), the float32 gradients a bf16 layer's backward adds into .grad or None).
        bfloat16: W_hh packed as bf16 for an inference forward, cached apart from its float32 packing, which
        training forwards keep using."""
        suffixes = [[dispatch.suffix(layer, d) for d in range(self._directions)] for layer in range(self.num_layers)]
        data = bf16.compute_values(self._params)
        grads, grads32 = bf16.gradient_targets(self._params, record)
        return dispatch.stack_weights(kernels, self._cell, data, grads, suffixes, self._packed, bfloat16), grads32

    # -------------------------------------------------------------------------------- checks
    def _check_array(self, value, name):
        return _checks.check_array(value, name, self.dtype, "layer")

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
        if x.shape[0] < 1:  # torch raises too (RuntimeError there); an empty batch (B=0) is fine
            raise ValueError(f"x: Expected sequence length to be larger than 0 in RNN, got shape {x.shape}")
        return x, batched

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
        lengths = _checks.check_lengths(lengths, T, B)
        h0 = self._check_state(h0, "h0", B, batched, self._state_size)
        c0 = self._check_state(c0, "c0", B, batched, self.hidden_size) if self._has_c else None
        x_tm, h0, c0 = bf16.to_compute(self.dtype, x_tm, h0, c0)  # validated: bf16 values to float32
        kernels = dispatch.kernels_for(x_tm, h0, c0, *(p.data for p in self._params.values()))
        record = self.training and is_grad_enabled()
        bfloat16 = not record and self.inference_weights == "bfloat16"
        # This call replaces the record of the previous one (torch: each forward builds its own graph, and a
        # backward differentiates the forward whose outputs it is given, which here is the latest call).
        self._saved = self._layout = None
        self._last_call = None if record else ("no_grad" if self.training else "eval")
        if B == 0:  # the kernels need rows to run; an empty batch has nothing to compute
            y, h_n, c_n = self._empty_batch_outputs(x_tm, T)
            saved = _EMPTY_BATCH
        else:
            plan = functional.Plan(T, B, lengths)
            if record and plan.dense and self.dtype != bf16.BFLOAT16:  # (to_compute made bf16's a copy)
                x_tm = x_tm.copy(order="C")  # backward must see the input of this forward
            try:
                weights, grads32 = self._layer_weights(kernels, bfloat16, record)
            except RuntimeError as e:  # the kernels refuse the bf16 inference weights (CUDA)
                raise RuntimeError(f"{type(self).__name__}: {e}") from None
            # Training mode inside no_grad still drops out (as torch); what the kernels keep is then let go.
            drops = functional.recurrent_dropouts(kernels.xp, self._rng, self._cell, self.num_layers,
                                                  self._directions, B, self.hidden_size,
                                                  self.recurrent_dropout if self.training else 0.0,
                                                  bf16.compute_dtype(self.dtype))
            y, h_n, c_n, saved = functional.stack_forward(kernels, self._cell, x_tm, h0, c0, weights, plan,
                                                          self._directions, self.training, self.dropout, self._rng,
                                                          drops)
            saved = (saved, weights, grads32)
        if record:
            self._saved, self._layout = saved, (T, B, batched)
            # y is also the saved activation backward reads (last layer, forward direction, no lengths):
            # hand it out read-only instead of copying it.
            if isinstance(y, np.ndarray):
                y.flags.writeable = False
        y, h_n, c_n = bf16.to_dtype(self.dtype, y, h_n, c_n)
        return self._to_user(y, batched), self._state_out(h_n, batched), self._state_out(c_n, batched)

    def _empty_batch_outputs(self, x_tm, T):
        """y (T, 0, D*S), h_n (L*D, 0, S) and c_n (L*D, 0, H) or None, on the input's side (NumPy/CuPy)."""
        xpm = namespace(x_tm)
        LD = self.num_layers * self._directions
        y = xpm.zeros((T, 0, self._directions * self._state_size), dtype=self.dtype)
        h_n = xpm.zeros((LD, 0, self._state_size), dtype=self.dtype)
        c_n = xpm.zeros((LD, 0, self.hidden_size), dtype=self.dtype) if self._has_c else None
        return y, h_n, c_n

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

    def _backward(self, dy, dh_n, dc_n, retain_graph):
        if self._saved is None:
            raise RuntimeError(self._no_record_message())
        T, B, batched = self._layout
        S, H = self._state_size, self.hidden_size
        F = self._directions * S
        y_shape = ((B, T, F) if self.batch_first else (T, B, F)) if batched else (T, F)
        dy = self._check_grad_out(dy, "dy", y_shape)
        dh_n = self._check_grad_out(dh_n, "dh_n", self._state_shape(B, batched, S))
        dc_n = (self._check_grad_out(dc_n, "dc_n", self._state_shape(B, batched, H))
                if self._has_c else None)
        dy = None if dy is None else self._from_user(dy, batched)
        LD = self.num_layers * self._directions
        dh_n = None if dh_n is None else np.ascontiguousarray(dh_n.reshape(LD, B, S))
        dc_n = None if dc_n is None else np.ascontiguousarray(dc_n.reshape(LD, B, H))
        dy, dh_n, dc_n = bf16.to_compute(self.dtype, dy, dh_n, dc_n)
        record = self._saved
        if not retain_graph:  # validated: from here on this forward's record is consumed
            self._saved, self._layout, self._last_call = None, None, "backward"
        if record is _EMPTY_BATCH:
            dx = np.zeros((T, 0, self.input_size), dtype=self.dtype)
            dh0 = np.zeros((LD, 0, S), dtype=self.dtype)
            dc0 = np.zeros((LD, 0, H), dtype=self.dtype) if self._has_c else None
        else:
            saved, weights, grads32 = record
            dx, dh0, dc0 = functional.stack_backward(saved, weights, dy, dh_n, dc_n)
            bf16.flush_gradients(self._params, grads32)
            dx, dh0, dc0 = bf16.to_dtype(self.dtype, dx, dh0, dc0)
        return self._to_user(dx, batched), self._state_out(dh0, batched), self._state_out(dc0, batched)

    def _no_record_message(self) -> str:
        why = {None: "no training-mode forward has run yet (call the layer in train() mode first)",
               "eval": "the latest forward ran in eval() mode, which records nothing for backward",
               "no_grad": "the latest forward ran inside rnnfast.no_grad(), which records nothing for backward",
               "backward": "the latest training forward was already differentiated, and a backward consumes its "
                           "forward's record (run the forward again, or pass retain_graph=True to the first "
                           "backward to differentiate it twice)"}[self._last_call]
        return f"{type(self).__name__}.backward: nothing to differentiate: {why}"

    # RNN and GRU: one state. LSTM overrides both with (h, c) pairs.
    def __call__(self, x: Array, h0: Optional[Array] = None, lengths=None) -> Tuple[Array, Array]:
        """y, h_n = layer(x, h0=None, lengths=None).

        Args:
            x: (T, B, input_size), (B, T, input_size) with batch_first, or (T, input_size) unbatched; the
                layer's dtype; T >= 1, B >= 0.
            h0: (num_layers*D, B, S) or (num_layers*D, S) unbatched, or None (zeros); S = hidden_size.
            lengths: None, or B ints in [1, T] in any order (PackedSequence semantics: outputs past a
                sequence's end are zero, h_n is the state at each sequence's own last step, the reverse
                direction starts there).

        Returns:
            y: (T, B, D*S) in x's layout (read-only in training mode: backward reads it).
            h_n: the final states, h0's shape.

        In training mode (outside ``rnnfast.no_grad()``) the call records what ``backward`` needs,
        replacing any earlier record.
        """
        y, h_n, _ = self._forward(x, h0, None, lengths)
        return y, h_n

    def backward(self, dy: Optional[Array], dh_n: Optional[Array] = None, retain_graph: bool = False
                 ) -> Tuple[Array, Array]:
        """BPTT through the latest call, which must have been a training-mode forward.

        Args:
            dy: gradient of the loss with respect to y (y's shape), or None (zeros).
            dh_n: gradient with respect to h_n (h_n's shape), or None (zeros).
            retain_graph: keep the forward's record so that it can be differentiated again (as torch's
                ``retain_graph``); by default a backward consumes it.

        Returns:
            (dx, dh0) in the shapes of x and h0; every parameter's gradient is added into its ``.grad``.

        Raises RuntimeError when there is nothing to differentiate: no training forward yet, the latest
        forward ran in eval mode or inside ``rnnfast.no_grad()``, or its record was consumed by a backward.
        """
        dx, dh0, _ = self._backward(dy, dh_n, None, retain_graph)
        return dx, dh0

    def extra_repr(self):
        s = f"{self.input_size}, {self.hidden_size}"
        if not self.bias:
            s += ", bias=False"
        if self.batch_first:
            s += ", batch_first=True"
        if self.recurrent_dropout:
            s += f", recurrent_dropout={self.recurrent_dropout}"
        return s + f", dtype={self.dtype}"

    def __repr__(self):
        return f"{type(self).__name__}({self.extra_repr()})"


class RNN(_RNNBase):
    __doc__ = """Elman RNN as torch.nn.RNN: h' = act(W_ih x + b_ih + W_hh h + b_hh), act = tanh or relu.

        y, h_n = rnn(x, h0=None, lengths=None)          dx, dh0 = rnn.backward(dy, dh_n=None)
    """ + _ARGS_DOC + """        nonlinearity: "tanh" or "relu".

    Parameters (torch's names): weight_ih_l{k}[_reverse] (H, in), weight_hh_l{k}[_reverse] (H, H),
    bias_ih_l{k}[_reverse] and bias_hh_l{k}[_reverse] (H,).
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "tanh",
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 dtype: DType = np.float32, seed: Seed = None, *, recurrent_dropout: float = 0.0):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        super().__init__("rnn_" + nonlinearity, input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, 0, dtype, seed, recurrent_dropout)



class GRU(_RNNBase):
    __doc__ = """GRU. With linear_before_reset=True (default) it is torch.nn.GRU (and cuDNN's, Keras'
    reset_after=True): n = tanh(W_in x + b_in + r*(W_hn h + b_hn)). With False it is the original form (Keras
    reset_after=False): n = tanh(W_in x + b_in + W_hn (r*h) + b_hn). Gates r, z as torch; h' = (1-z)*n + z*h.

        y, h_n = gru(x, h0=None, lengths=None)          dx, dh0 = gru.backward(dy, dh_n=None)
    """ + _ARGS_DOC + """        linear_before_reset: see above.

    Parameters (torch's names, gate rows r, z, n): weight_ih_l{k}[_reverse] (3H, in), weight_hh_l{k}[_reverse]
    (3H, H), bias_ih_l{k}[_reverse] and bias_hh_l{k}[_reverse] (3H,).
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 dtype: DType = np.float32, seed: Seed = None, linear_before_reset: bool = True, *,
                 recurrent_dropout: float = 0.0):
        if not isinstance(linear_before_reset, (bool, np.bool_)):
            raise TypeError(f"linear_before_reset must be a bool, got {type(linear_before_reset).__name__}")
        self.linear_before_reset = bool(linear_before_reset)
        super().__init__("gru" if self.linear_before_reset else "gru_original", input_size, hidden_size, num_layers,
                         bias, batch_first, dropout, bidirectional, 0, dtype, seed, recurrent_dropout)

    def extra_repr(self):
        s = super().extra_repr()
        return s if self.linear_before_reset else s + ", linear_before_reset=False"


class LSTM(_RNNBase):
    __doc__ = """LSTM as torch.nn.LSTM: gates i, f, g, o; c' = f*c + i*g; h' = o*tanh(c') (then h' = W_hr h'
    with proj_size > 0).

        y, (h_n, c_n) = lstm(x, hx=None, lengths=None)  dx, (dh0, dc0) = lstm.backward(dy, dstate=None)
    """ + _ARGS_DOC + """        proj_size: 0, or the size S < hidden_size of a projection of h (then h and y have S features).

    Parameters (torch's names, gate rows i, f, g, o): weight_ih_l{k}[_reverse] (4H, in), weight_hh_l{k}[_reverse]
    (4H, S), bias_ih_l{k}[_reverse] and bias_hh_l{k}[_reverse] (4H,), weight_hr_l{k}[_reverse] (S, H).
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, proj_size: int = 0,
                 dtype: DType = np.float32, seed: Seed = None, *, recurrent_dropout: float = 0.0):
        super().__init__("lstm", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         proj_size, dtype, seed, recurrent_dropout)

    def __call__(self, x: Array, hx: Optional[Tuple[Optional[Array], Optional[Array]]] = None, lengths=None
                 ) -> Tuple[Array, Tuple[Array, Array]]:
        """y, (h_n, c_n) = lstm(x, hx=None, lengths=None).

        Args:
            x: (T, B, input_size), (B, T, input_size) with batch_first, or (T, input_size) unbatched.
            hx: (h0, c0) or None; h0 (num_layers*D, B, S), c0 (num_layers*D, B, hidden_size) (no B
                unbatched), either may be None (zeros). S = proj_size or hidden_size.
            lengths: as for RNN/GRU: None or B ints in [1, T].

        Returns:
            y (T, B, D*S) in x's layout, and (h_n, c_n) in the shapes of (h0, c0).
        """
        h0, c0 = self._split_pair(hx, "hx")
        y, h_n, c_n = self._forward(x, h0, c0, lengths)
        return y, (h_n, c_n)

    def backward(self, dy: Optional[Array], dstate: Optional[Tuple[Optional[Array], Optional[Array]]] = None,
                 retain_graph: bool = False) -> Tuple[Array, Tuple[Array, Array]]:
        """BPTT through the latest call, which must have been a training-mode forward.

        Args:
            dy: gradient with respect to y (y's shape) or None.
            dstate: (dh_n, dc_n), gradients with respect to (h_n, c_n), or None; either may be None (zeros).
            retain_graph: keep the forward's record for another backward (by default it is consumed).

        Returns:
            (dx, (dh0, dc0)); every parameter's gradient is added into its ``.grad``. RuntimeError when there is
            nothing to differentiate (see RNN.backward).
        """
        dh_n, dc_n = self._split_pair(dstate, "dstate")
        dx, dh0, dc0 = self._backward(dy, dh_n, dc_n, retain_graph)
        return dx, (dh0, dc0)

    @staticmethod
    def _split_pair(pair, name):
        if pair is None:
            return None, None
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise TypeError(f"{name}: expected a pair (h, c) of arrays or None, got {type(pair).__name__}")
        return pair[0], pair[1]
