"""The parts around a recurrent layer: Linear, Embedding, Dropout, Conv1d, Sequential, activations, and the
many-to-one helpers ``last_step`` / ``last_step_backward``.

Protocol of every module here (as the recurrent layers): ``y = m(x)``; in training mode the call records
what its backward needs, and ``dx = m.backward(dy)`` consumes the most recent record (last in, first out,
so a module applied at every step of a loop is differentiated by calling backward in the reverse order),
returns the input gradient (Embedding: None) and adds the parameter gradients into ``.grad``. In eval mode
nothing is recorded. ``reset()`` forgets the records. Parameters load from the torch.nn module of the same
name: ``m.load_state_dict(torch_module.state_dict())``. Arrays are NumPy (or CuPy) arrays of the module's
dtype. bfloat16 modules (``dtype="bfloat16"``) compute in float32 on their bf16 values and round what they return
once, and sum each parameter gradient in float32 before one rounding into ``.grad``, as the recurrent layers do.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from ._core.arrays import namespace as _xp
from ._core.checks import check_dtype as _check_dtype, check_seed as _rng, check_size as _check_size
from .backend import matmul
from ._core.bf16 import BFLOAT16, add_into, to_compute, to_dtype
from ._core.checks import check_array
from .module import Module, Parameter

__all__ = ["Linear", "Embedding", "Dropout", "Conv1d", "Sequential", "Tanh", "ReLU", "Sigmoid", "LeakyReLU",
           "Identity", "ManyToOne", "last_step", "last_step_backward"]


class _Recorded(Module):
    """A module whose training forwards push a record that its backward pops."""

    def __init__(self):
        super().__init__()
        self._records = []

    @property
    def num_recorded(self) -> int:
        """How many training forwards are recorded and not yet consumed by backward."""
        return len(self._records)

    def reset(self):
        """Forgets every record (e.g. after an iteration that was not differentiated)."""
        self._records.clear()
        return self

    def _drop_caches(self) -> None:
        super()._drop_caches()
        self._records.clear()

    def _push(self, record):
        if self.training:
            self._records.append(record)

    def _pop(self):
        if not self._records:
            raise RuntimeError(f"{type(self).__name__}.backward: no recorded forward to differentiate (each "
                               "training-mode call records one, each backward consumes one)")
        return self._records.pop()

    def _init_weights(self, shape, fan_in, bias, seed):
        """weight of `shape` and, with bias, a bias of shape[0], both U(-1/sqrt(fan_in), 1/sqrt(fan_in)) as
        torch draws them. As torch's, .bias is then the bias array (None without one), not the flag."""
        self._has_bias = bool(bias)
        if not self._has_bias:
            self.bias = None
        rng = _rng(seed)
        k = 1.0 / math.sqrt(fan_in)
        self._params["weight"] = Parameter(rng.uniform(-k, k, shape).astype(self.dtype))
        if self._has_bias:
            self._params["bias"] = Parameter(rng.uniform(-k, k, (shape[0],)).astype(self.dtype))

    def _check_dy(self, dy, shape):
        dy = check_array(dy, "dy", self.dtype, "module")
        if dy.shape != shape:
            raise ValueError(f"dy: expected shape {shape} (the output of the forward being differentiated), "
                             f"got {dy.shape}")
        return dy


def _mm(a, b):
    """a @ b for 2-D arrays: NumPy arrays on rnnfast's GEMM, on rnnfast's threads (NumPy's BLAS would start its
    own thread pool, which keeps spinning after the call, beside the recurrent layers' team: see
    rnnfast/_core/tuning.py); CuPy arrays on CuPy's."""
    if isinstance(a, np.ndarray):
        return matmul(a, b)
    return a @ b


class Linear(_Recorded):
    """y = x W^T + b over the last axis (torch.nn.Linear); x (..., in_features) -> y (..., out_features).

    Args: in_features, out_features (ints >= 1), bias (bool), dtype (float32, float64 or "bfloat16"), seed (int or
    Generator, for the initial weights: torch's U(-1/sqrt(in_features), 1/sqrt(in_features))).
    Parameters: weight (out_features, in_features), bias (out_features,).
    """

    def __init__(self, in_features, out_features, bias=True, dtype=np.float32, seed=None):
        super().__init__()
        self.in_features = _check_size("in_features", in_features)
        self.out_features = _check_size("out_features", out_features)
        self.dtype = _check_dtype(dtype)
        self._init_weights((self.out_features, self.in_features), self.in_features, bias, seed)

    def forward(self, x):
        x = check_array(x, "x", self.dtype, "module")
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"x: expected {self.in_features} features in the last dimension, got shape {x.shape}")
        xc, w = to_compute(self.dtype, x, self._params["weight"].data)
        y = _mm(xc.reshape(-1, self.in_features), w.T)
        y = y.reshape(x.shape[:-1] + (self.out_features,))
        if self._has_bias:
            y += to_compute(self.dtype, self._params["bias"].data)[0]
        self._push(x.copy())
        return to_dtype(self.dtype, y)[0]

    def backward(self, dy):
        x = self._pop()
        dy = self._check_dy(dy, x.shape[:-1] + (self.out_features,))
        x, dy, w = to_compute(self.dtype, x, dy, self._params["weight"].data)
        x2, dy2 = x.reshape(-1, self.in_features), dy.reshape(-1, self.out_features)
        self._params["weight"].accumulate(_mm(dy2.T, x2))
        if self._has_bias:
            self._params["bias"].accumulate(dy2.sum(axis=0))
        return to_dtype(self.dtype, _mm(dy2, w).reshape(x.shape))[0]

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self._has_bias}"


class Embedding(_Recorded):
    """A lookup table (torch.nn.Embedding): integer indices (...) -> vectors (..., embedding_dim).

    Args: num_embeddings, embedding_dim (ints >= 1), padding_idx (None or an index; that row starts at zero
    and gets no gradient; negative counts from the end), dtype, seed (initial weights N(0, 1) as torch).
    Parameter: weight (num_embeddings, embedding_dim). backward(dy) returns None (indices have no gradient).
    """

    def __init__(self, num_embeddings, embedding_dim, padding_idx=None, dtype=np.float32, seed=None):
        super().__init__()
        self.num_embeddings = _check_size("num_embeddings", num_embeddings)
        self.embedding_dim = _check_size("embedding_dim", embedding_dim)
        self.dtype = _check_dtype(dtype)
        if padding_idx is not None:
            if isinstance(padding_idx, bool) or not isinstance(padding_idx, numbers.Integral):
                raise TypeError(f"padding_idx must be None or an int, got {type(padding_idx).__name__}")
            if not -self.num_embeddings <= padding_idx < self.num_embeddings:
                raise ValueError("padding_idx must be within num_embeddings")
            padding_idx = int(padding_idx) % self.num_embeddings
        self.padding_idx = padding_idx
        w = _rng(seed).standard_normal((self.num_embeddings, self.embedding_dim)).astype(self.dtype)
        if padding_idx is not None:
            w[padding_idx] = 0
        self._params["weight"] = Parameter(w)

    def forward(self, indices):
        xp = _xp(indices)
        if not hasattr(indices, "dtype") or indices.dtype == bool or indices.dtype.kind not in "iu":
            raise TypeError(f"indices: expected an integer array, got {getattr(indices, 'dtype', type(indices).__name__)}")
        if indices.size and (int(indices.min()) < 0 or int(indices.max()) >= self.num_embeddings):
            raise ValueError(f"indices: every index must be in [0, {self.num_embeddings}) (num_embeddings), got "
                             f"min {int(indices.min())} and max {int(indices.max())}")
        self._push(xp.array(indices, copy=True))
        return self._params["weight"].data[indices]

    def backward(self, dy):
        idx = self._pop()
        dy = self._check_dy(dy, idx.shape + (self.embedding_dim,))
        xp = _xp(dy)
        flat, d = idx.reshape(-1), dy.reshape(-1, self.embedding_dim)
        if self.padding_idx is not None:
            keep = flat != self.padding_idx
            flat, d = flat[keep], d[keep]
        if self.dtype == BFLOAT16:  # each touched row's sum in float32, rounded into .grad once
            rows, where = np.unique(flat, return_inverse=True)
            sums = np.zeros((len(rows), self.embedding_dim), np.float32)
            np.add.at(sums, where.reshape(-1), to_compute(self.dtype, d)[0])
            grad = self._params["weight"].grad
            touched = grad[rows]
            add_into(touched, sums)
            grad[rows] = touched
        else:
            xp.add.at(self._params["weight"].grad, flat, d)
        return None

    def extra_repr(self):
        s = f"{self.num_embeddings}, {self.embedding_dim}"
        return s if self.padding_idx is None else s + f", padding_idx={self.padding_idx}"


class Dropout(_Recorded):
    """Zeroes each element with probability p in training mode and scales the rest by 1/(1-p)
    (torch.nn.Dropout); the identity in eval mode. p in [0, 1]; seed for the masks."""

    def __init__(self, p=0.5, seed=None):
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0 <= p <= 1:
            raise ValueError(f"dropout probability has to be between 0 and 1, but got {p!r}")
        self.p = float(p)
        self._rng = _rng(seed)

    def forward(self, x):
        if not self.training or self.p == 0:
            self._push(None)
            return x
        xp = _xp(x)
        keep = self._rng.random(x.shape) >= self.p
        scale = 0.0 if self.p == 1 else 1.0 / (1.0 - self.p)
        mask = xp.asarray(keep * scale, dtype=to_compute(x.dtype, x[:0])[0].dtype)  # (bf16: a float32 mask)
        self._push(mask)
        return (x * mask).astype(x.dtype, copy=False)

    def backward(self, dy):
        mask = self._pop()
        return dy if mask is None else (dy * mask).astype(dy.dtype, copy=False)

    def extra_repr(self):
        return f"p={self.p}"


class Conv1d(_Recorded):
    """1-D convolution (cross-correlation) as torch.nn.Conv1d: x (N, C_in, L) -> y (N, C_out, L_out),
    L_out = (L + 2*padding - dilation*(kernel_size-1) - 1) // stride + 1. Zero padding.

    Args: in_channels, out_channels, kernel_size (ints >= 1), stride (>= 1), padding (>= 0), dilation (>= 1),
    bias, dtype, seed (torch's init: U(-1/sqrt(C_in*k), 1/sqrt(C_in*k))).
    Parameters: weight (C_out, C_in, kernel_size), bias (C_out,). Used for CNN+RNN hybrids: transpose the
    (N, C_out, L_out) features to (L_out, N, C_out) for a recurrent layer.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, bias=True,
                 dtype=np.float32, seed=None):
        super().__init__()
        self.in_channels = _check_size("in_channels", in_channels)
        self.out_channels = _check_size("out_channels", out_channels)
        self.kernel_size = _check_size("kernel_size", kernel_size)
        self.stride = _check_size("stride", stride)
        self.padding = _check_size("padding", padding, minimum=0)
        self.dilation = _check_size("dilation", dilation)
        self.dtype = _check_dtype(dtype)
        self._init_weights((self.out_channels, self.in_channels, self.kernel_size),
                           self.in_channels * self.kernel_size, bias, seed)

    def _taps(self, L):
        """(kernel_size, L_out) positions in the padded input that each output reads."""
        span = self.dilation * (self.kernel_size - 1) + 1
        L_out = (L + 2 * self.padding - span) // self.stride + 1
        if L_out < 1:
            raise ValueError(f"x: the padded input length {L + 2 * self.padding} is shorter than the kernel's span "
                             f"{span}")
        return (np.arange(self.kernel_size)[:, None] * self.dilation + np.arange(L_out)[None, :] * self.stride)

    def forward(self, x):
        x = check_array(x, "x", self.dtype, "module")
        if x.ndim != 3 or x.shape[1] != self.in_channels:
            raise ValueError(f"x: expected shape (N, {self.in_channels}, L) (in_channels={self.in_channels}), "
                             f"got {x.shape}")
        xp = _xp(x)
        taps = xp.asarray(self._taps(x.shape[2]))
        x, w = to_compute(self.dtype, x, self._params["weight"].data)
        xpad = xp.pad(x, ((0, 0), (0, 0), (self.padding, self.padding)))
        cols = xpad[:, :, taps]  # (N, C_in, k, L_out)
        y = xp.einsum("ock,nckl->nol", w, cols, optimize=True)
        if self._has_bias:
            y += to_compute(self.dtype, self._params["bias"].data)[0][:, None]
        self._push((cols, x.shape, taps))
        return to_dtype(self.dtype, y)[0]

    def backward(self, dy):
        cols, x_shape, taps = self._pop()
        dy = self._check_dy(dy, (x_shape[0], self.out_channels, taps.shape[1]))
        xp = _xp(dy)
        dy, w = to_compute(self.dtype, dy, self._params["weight"].data)
        self._params["weight"].accumulate(xp.einsum("nol,nckl->ock", dy, cols, optimize=True))
        if self._has_bias:
            self._params["bias"].accumulate(dy.sum(axis=(0, 2)))
        dcols = xp.einsum("ock,nol->nckl", w, dy, optimize=True)
        dxpad = xp.zeros((x_shape[0], x_shape[1], x_shape[2] + 2 * self.padding), dtype=dy.dtype)
        for j in range(self.kernel_size):  # one tap's positions are distinct, so += does not lose any
            dxpad[:, :, taps[j]] += dcols[:, :, j]
        return to_dtype(self.dtype, dxpad[:, :, self.padding:self.padding + x_shape[2]])[0]

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}")


class _Activation(_Recorded):
    """An elementwise function; backward multiplies by its derivative (from the recorded input or output)."""

    dtype = None  # any float dtype: the input's (bf16 computed in float32, the result rounded once)

    def forward(self, x):
        xc, = to_compute(x.dtype, x)
        y = self._f(xc)
        self._push((xc, y))
        return y.astype(x.dtype, copy=False)

    def backward(self, dy):
        x, y = self._pop()
        if getattr(dy, "shape", None) != x.shape:
            raise ValueError(f"dy: expected shape {x.shape} (the output of the forward being differentiated), "
                             f"got {getattr(dy, 'shape', type(dy).__name__)}")
        return (to_compute(dy.dtype, dy)[0] * self._df(x, y)).astype(dy.dtype, copy=False)


class Tanh(_Activation):
    """tanh, elementwise."""

    def _f(self, x):
        return _xp(x).tanh(x)

    def _df(self, x, y):
        return 1 - y * y


class Sigmoid(_Activation):
    """The logistic function 1 / (1 + exp(-x)), elementwise (computed without overflow)."""

    def _f(self, x):
        xp = _xp(x)
        e = xp.exp(-xp.abs(x))
        return xp.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)

    def _df(self, x, y):
        return y * (1 - y)


class ReLU(_Activation):
    """max(x, 0), elementwise (NaN stays NaN)."""

    def _f(self, x):
        return _xp(x).where(x < 0, 0, x).astype(x.dtype, copy=False)

    def _df(self, x, y):
        return (x > 0).astype(x.dtype)


class LeakyReLU(_Activation):
    """x for x >= 0, negative_slope * x otherwise (torch.nn.LeakyReLU)."""

    def __init__(self, negative_slope=0.01):
        super().__init__()
        self.negative_slope = float(negative_slope)

    def _f(self, x):
        return _xp(x).where(x < 0, self.negative_slope * x, x).astype(x.dtype, copy=False)

    def _df(self, x, y):
        return _xp(x).where(x > 0, 1.0, self.negative_slope).astype(x.dtype)


class Identity(_Activation):
    """y = x."""

    def _f(self, x):
        return x

    def _df(self, x, y):
        return 1


class Sequential(Module):
    """Modules applied in order: ``Sequential(Linear(8, 16), Tanh(), Linear(16, 1))``. backward runs them in
    reverse. Each part takes and returns one array; a recurrent layer (which returns (y, state)) belongs in a
    model class of its own (README, "Training")."""

    def __init__(self, *modules):
        super().__init__()
        for i, m in enumerate(modules):
            if not isinstance(m, Module):
                raise TypeError(f"modules[{i}]: expected an rnnfast.Module, got {type(m).__name__}")
            self.register_module(str(i), m)

    def __len__(self):
        return len(self._modules)

    def __getitem__(self, i):
        return self.children()[i]

    def __iter__(self):
        return iter(self.children())

    def forward(self, x):
        for m in self.children():
            x = m(x)
        return x

    def backward(self, dy):
        for m in reversed(self.children()):
            dy = m.backward(dy)
        return dy


# ============================================================================ many-to-one


class ManyToOne(Module):
    """A recurrent layer read to its end, then a head on each sequence's last valid step:
    x (T, B, I) (or (B, T, I) when the layer is batch_first) with optional lengths -> head(last output).
    E.g. ``ManyToOne(rnnfast.LSTM(1, 32, batch_first=True), Linear(32, 1))`` for forecasting, or a GRU and a
    Linear to class logits for classification. backward(dpred) returns dx."""

    def __init__(self, rnn, head):
        super().__init__()
        if not isinstance(rnn, Module) or not hasattr(rnn, "batch_first"):
            raise TypeError(f"rnn: expected an rnnfast RNN, LSTM or GRU, got {type(rnn).__name__}")
        if not isinstance(head, Module):
            raise TypeError(f"head: expected an rnnfast.Module, got {type(head).__name__}")
        self.rnn, self.head = rnn, head
        self._records = []

    def forward(self, x, lengths=None):
        y, _ = self.rnn(x, lengths=lengths)
        if self.training:
            self._records.append((y.shape, lengths))
        return self.head(last_step(y, lengths, self.rnn.batch_first))

    def backward(self, dpred):
        if not self._records:
            raise RuntimeError("ManyToOne.backward: no recorded forward to differentiate")
        shape, lengths = self._records.pop()
        dlast = self.head.backward(dpred)
        dx, _ = self.rnn.backward(last_step_backward(dlast, shape, lengths, self.rnn.batch_first))
        return dx

    def _drop_caches(self) -> None:
        super()._drop_caches()
        self._records.clear()



def last_step(y, lengths=None, batch_first=False):
    """Each sequence's output at its last valid step: y (T, B, F) (or (B, T, F) with batch_first) -> (B, F).
    lengths: (B,) ints in [1, T], or None (every sequence is T long)."""
    y_tm = y.transpose(1, 0, 2) if batch_first else y
    T, B = y_tm.shape[:2]
    if lengths is None:
        return y_tm[T - 1]
    idx = np.asarray(lengths, dtype=np.int64)
    if idx.shape != (B,) or (B and (idx.min() < 1 or idx.max() > T)):
        raise ValueError(f"lengths: expected {B} lengths in [1, {T}], got {np.asarray(lengths)!r}")
    xp = _xp(y)
    return y_tm[xp.asarray(idx - 1), xp.arange(B)]


def last_step_backward(dlast, shape, lengths=None, batch_first=False):
    """The upstream gradient dy of shape ``shape`` (the layer output's) for a loss on ``last_step``: dlast
    (B, F) placed at each sequence's last valid step, zero elsewhere."""
    xp = _xp(dlast)
    dy = xp.zeros(shape, dtype=dlast.dtype)
    dy_tm = dy.transpose(1, 0, 2) if batch_first else dy
    T, B = dy_tm.shape[:2]
    if dlast.shape != (B, dy_tm.shape[2]):
        raise ValueError(f"dlast: expected shape {(B, dy_tm.shape[2])}, got {dlast.shape}")
    if lengths is None:
        dy_tm[T - 1] = dlast
    else:
        idx = np.asarray(lengths, dtype=np.int64)
        dy_tm[xp.asarray(idx - 1), xp.arange(B)] = dlast
    return dy
