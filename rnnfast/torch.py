"""rnnfast as torch.nn modules: RNN, LSTM, GRU, RNNCell, LSTMCell, GRUCell, drop-in replacements for torch.nn's.

    from rnnfast.torch import LSTM          # instead of torch.nn.LSTM: same arguments, parameters and results

Each module holds ``nn.Parameter``s with torch.nn's names, shapes and initialisation (the same draws from torch's
generator, so ``torch.manual_seed`` gives the same weights as torch.nn), and ``load_state_dict`` works both ways
with torch.nn modules. A call runs rnnfast's fused kernels through one ``torch.autograd.Function``: CPU tensors are
handed to the CPU kernels as NumPy views (no copies of contiguous float32/float64 tensors), CUDA tensors to the
CUDA kernels as CuPy arrays through DLPack, on torch's current stream. This module is imported only by
``import rnnfast.torch``; the core package never imports torch.

bfloat16 modules (``module.to(torch.bfloat16)``, or ``dtype=torch.bfloat16``) hold bf16 parameters, take and return
bf16 tensors and get bf16 gradients, as torch.nn's; the kernels compute in float32 on those values (the products
accumulate in float32, and the states h and c and the gate math stay float32 from step to step) and the results
are rounded to bf16 once, when returned. Why float32 inside: a state rounded to bf16 at every step drifts over a
long sequence, and on processors without AVX512_BF16 or AMX bf16 arithmetic is float32 arithmetic plus roundings
anyway (README, "bfloat16").

Inside ``torch.autocast("cpu", dtype=torch.bfloat16)``, float32 modules of the classes whose torch.nn counterparts
compute in bf16 there (LSTM, RNN, RNNCell) do the same: inputs, states and parameters rounded to bf16, the bf16
path above, bf16 results, and float32 parameter gradients through the casts (as torch's autocast gives them).
GRU, GRUCell and LSTMCell return float32 under autocast, as torch.nn's do (torch rounds their products' results to
bf16 there; rnnfast computes them in float32, within bf16's precision of torch's). CUDA autocast (float16) changes
nothing: the kernels run float32.

Beyond torch.nn, RNN, LSTM and GRU take ``recurrent_dropout=p`` (keyword only; Keras's recurrent dropout, fused
into the kernels: in training mode each gate's recurrent product reads h_{t-1} under a mask of its own, drawn once
per call from torch's generator and kept for every step; see rnnfast.layers for the details).
"""
from __future__ import annotations

import contextlib
import math
import numbers
import warnings
from dataclasses import replace

import numpy as np
import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from ._core import checks as _checks, dispatch, functional
from ._core.checks import check_lengths as _check_lengths, check_size as _check_size

__all__ = ["RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell", "from_torch", "to_torch", "SAFE_GLOBALS"]

_KERNEL_DTYPES = (torch.float32, torch.float64)
_MODULE_DTYPES = (torch.float32, torch.float64, torch.bfloat16)  # bfloat16: float32 kernels on bf16 values
_PARAM_KINDS = tuple(dispatch.KINDS)  # weight_ih, weight_hh, bias_ih, bias_hh, weight_hr


def _check_recurrent_dropout(module) -> float:
    """The module's recurrent_dropout (an attribute: it may be changed after construction), checked."""
    return _checks.check_recurrent_dropout(getattr(module, "recurrent_dropout", 0.0), module._cell,
                                           getattr(module, "proj_size", 0))


def _check_dropout(dropout) -> float:
    """torch.nn's rule and message: a number in [0, 1] (1 drops every inter-layer activation), checked at
    construction and again at each forward, since scripts set the attribute afterwards."""
    if isinstance(dropout, bool) or not isinstance(dropout, numbers.Number) or not 0 <= dropout <= 1:
        raise ValueError("dropout should be a number in range [0, 1] representing the probability of an "
                         f"element being zeroed, got {dropout!r}")
    return float(dropout)


def _cpu_autocast_bf16() -> bool:
    """Whether the caller is inside ``torch.autocast("cpu", dtype=torch.bfloat16)`` (torch >= 2.4 asks by device
    type; older torch has the CPU-only functions)."""
    try:
        return torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    except TypeError:
        return torch.is_autocast_cpu_enabled() and torch.get_autocast_cpu_dtype() == torch.bfloat16


def _check_kernel_dtype(dtype, name):
    if dtype not in _KERNEL_DTYPES:
        raise TypeError(f"{name}: rnnfast's kernels run torch.float32 and torch.float64 (float32 only on CUDA), "
                        f"got {dtype}")


def _check_module_dtype(dtype, name):
    if dtype not in _MODULE_DTYPES:
        raise TypeError(f"{name}: rnnfast.torch modules hold torch.float32, torch.float64 or torch.bfloat16 "
                        f"parameters (float32 and bfloat16 on CUDA), got {dtype}")


# ------------------------------------------------------------------------------------------------ kernels
def _to_kernel(t):
    """A tensor as the array the kernels take: a NumPy view on the CPU, a CuPy view (DLPack) on CUDA."""
    if t is None:
        return None
    t = t.detach()
    if t.is_cuda:
        import cupy
        return cupy.from_dlpack(t)
    return t.numpy()


def _from_kernel(a):
    if a is None:
        return None
    return torch.from_numpy(a) if isinstance(a, np.ndarray) else torch.from_dlpack(a)


@contextlib.contextmanager
def _kernel_context(device):
    """On CUDA: CuPy on the tensors' device and on torch's current stream there, so that the kernels are ordered
    with torch's own work without synchronising."""
    if device.type == "cpu":
        yield
        return
    if device.type != "cuda":
        raise ValueError(f"input: rnnfast runs CPU and CUDA tensors, got a tensor on {device}")
    try:
        import cupy
    except ImportError:
        raise RuntimeError("rnnfast.torch: CUDA tensors need CuPy (pip install 'rnnfast[cuda]'), which is not "
                           "installed; move the model and its inputs to the CPU or install CuPy") from None
    index = device.index if device.index is not None else torch.cuda.current_device()
    stream = torch.cuda.current_stream(index)
    with cupy.cuda.Device(index), cupy.cuda.ExternalStream(stream.cuda_stream, index):
        yield


class _Call:
    """One call of a module: its configuration and the weights as the kernels take them. The autograd node of
    the call keeps it (with what the forward saved), so several forwards may precede one backward."""

    def __init__(self, module, names, plan, dropout, rng, recurrent_dropout=0.0):
        self.cell = module._cell
        self.hidden_size, self.num_layers = module.hidden_size, module.num_layers
        self.recurrent_dropout = recurrent_dropout
        self.directions = module._num_directions
        self.groups = module._groups  # [layer][direction] -> parameter names, in the order of `names`
        self.suffixes = module._suffixes  # [layer][direction] -> the parameter-name suffix
        self.names = names
        self.cache = module._packed
        self.plan, self.dropout, self.rng = plan, dropout, rng
        self.saved = self.weights = None

    def forward(self, x, h0, c0, params, keep):
        """Runs the stack; returns (y, h_n, c_n) tensors and keeps what backward needs when `keep`."""
        with _kernel_context(x.device):
            arrays = dict(zip(self.names, (_to_kernel(p) for p in params)))
            x_, h0_, c0_ = _to_kernel(x), _to_kernel(h0), _to_kernel(c0)
            kernels = dispatch.kernels_for(x_, h0_, c0_, *arrays.values())
            weights = dispatch.stack_weights(kernels, self.cell, arrays, {}, self.suffixes, self.cache)
            drops = functional.recurrent_dropouts(kernels.xp, self.rng, self.cell, self.num_layers, self.directions,
                                                  x_.shape[1], self.hidden_size, self.recurrent_dropout, x_.dtype)
            y, h_n, c_n, saved = functional.stack_forward(kernels, self.cell, x_, h0_, c0_, weights, self.plan,
                                                          self.directions, keep, self.dropout, self.rng, drops)
            out = _from_kernel(y), _from_kernel(h_n), _from_kernel(c_n)
        if keep:
            self.saved, self.weights = saved, weights
        return out

    def backward(self, device, dy, dh_n, dc_n):
        """Fresh gradients of (x, h0, c0, every parameter in `names` order) through the kept forward."""
        with _kernel_context(device):
            grads = {}
            weights = []
            for layer, groups in zip(self.weights, self.groups):
                dirs = []
                for lw, group in zip(layer, groups):
                    g = {}
                    for kind, name in zip(_PARAM_KINDS, group):
                        w = getattr(lw, dispatch.KINDS[kind])
                        g[dispatch.KINDS[kind]] = grads[name] = None if w is None else _zeros_like(w)
                    dirs.append(replace(lw, grads=g))
                weights.append(dirs)
            dx, dh0, dc0 = functional.stack_backward(self.saved, weights, _to_kernel(dy), _to_kernel(dh_n),
                                                     _to_kernel(dc_n))
            return (_from_kernel(dx), _from_kernel(dh0), _from_kernel(dc0),
                    [_from_kernel(grads[name]) for name in self.names])


def _zeros_like(a):
    if isinstance(a, np.ndarray):
        return np.zeros_like(a)
    import cupy
    return cupy.zeros_like(a)


def _contiguous(t):
    """t itself when C-contiguous (zero-copy), else a contiguous copy (the kernels read dense rows)."""
    return t if t is None or t.is_contiguous() else t.contiguous()


class _RecurrentFunction(torch.autograd.Function):
    """One module call: forward and BPTT through rnnfast's kernels."""

    @staticmethod
    def forward(ctx, call, x, h0, c0, *params):
        y, h_n, c_n = call.forward(x, h0, c0, params, keep=True)
        ctx.call = call
        ctx.has_h0, ctx.has_c0 = h0 is not None, c0 is not None
        # The kernels' saved activations are views of x, h0 and y (no copies): torch's version counters make an
        # in-place change of any of them before backward an error instead of a wrong gradient.
        ctx.save_for_backward(x, h0, c0, y)
        ctx.set_materialize_grads(False)
        return y, h_n, c_n

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dh_n, dc_n):
        x = ctx.saved_tensors[0]  # raises if an input or output was modified in place since the forward
        if ctx.call.saved is None:
            raise RuntimeError("rnnfast.torch: backward through a call whose saved state was freed (call backward "
                               "with retain_graph=True to run it twice)")
        dy, dh_n, dc_n = (_contiguous(g) for g in (dy, dh_n, dc_n))
        dx, dh0, dc0, dparams = ctx.call.backward(x.device, dy, dh_n, dc_n)
        return (None, dx, dh0 if ctx.has_h0 else None, dc0 if ctx.has_c0 else None, *dparams)


# ------------------------------------------------------------------------------------------------ modules
class _Recurrent(nn.Module):
    _AUTOCAST_BF16 = False  # whether torch.nn's class computes in bf16 under CPU autocast (see _autocast)
    """What layers and cells share: parameters in torch.nn's order and initialisation, the call through the
    kernels, dtype checks on conversion, pickling without the packed-weight cache."""

    _cell: str
    _num_directions = 1
    num_layers = 1
    dropout = 0.0

    def _make_parameters(self, shapes, device, dtype):
        dtype = torch.get_default_dtype() if dtype is None else dtype
        _check_module_dtype(dtype, "dtype")
        for name, shape in shapes:
            self.register_parameter(name, nn.Parameter(torch.empty(shape, device=device, dtype=dtype)))
        self._packed = {}  # the CPU kernels' packed weights (dispatch.stack_weights), rebuilt when a weight changes
        self.reset_parameters()

    def reset_parameters(self):
        """torch.nn's initialisation: every parameter uniform in [-1/sqrt(hidden_size), 1/sqrt(hidden_size)]."""
        stdv = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0
        for weight in self.parameters():
            nn.init.uniform_(weight, -stdv, stdv)

    def _apply(self, fn, recurse=True):
        for p in self._parameters.values():  # refuse a dtype the kernels lack before anything changes
            _check_module_dtype(fn(p).dtype, f"{type(self).__name__}: parameters")
            break
        self._packed = {}
        return super()._apply(fn, recurse)

    def __getstate__(self):
        state = super().__getstate__().copy()
        state["_packed"] = {}  # the kernels' packed weights are a cache, rebuilt on the next call
        return state

    def _names(self):
        return [n for layer in self._groups for group in layer for n in group if n in self._parameters]

    def _autocast(self, like) -> bool:
        """Whether this call runs in bf16 under CPU autocast: only where torch.nn's own class does (LSTM, RNN and
        RNNCell, whose ops autocast lists; torch's GRU, GRUCell and LSTMCell stay float32 there), and only for
        float32 parameters on the CPU (autocast leaves float64 alone)."""
        return (self._AUTOCAST_BF16 and like.dtype == torch.float32 and not like.is_cuda
                and _cpu_autocast_bf16())

    def _check_tensor(self, t, name, like):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        # Under autocast torch.nn's class casts float32 and bf16 arguments alike: both are accepted there.
        autocast_bf16 = t.dtype == torch.bfloat16 and self._autocast(like)
        if t.dtype != like.dtype and not autocast_bf16:
            _check_module_dtype(t.dtype, name)
            raise TypeError(f"{name}: expected {like.dtype} (the dtype of the module's parameters), got {t.dtype}")
        if t.device != like.device:
            raise ValueError(f"{name}: expected a tensor on {like.device} (where the module's parameters are), "
                             f"got one on {t.device}")

    def _run(self, x, h0, c0, lengths):
        """x (T, B, I), h0 (L*D, B, S), c0 (L*D, B, H) or None, lengths an int64 array or None ->
        (y (T, B, D*S), h_n, c_n or None), differentiable."""
        names = self._names()
        for n in names:  # a parameter replaced by hand (not through .to()) must still suit the kernels
            _check_module_dtype(self._parameters[n].dtype, n)
        # A non-contiguous parameter (a strided view assigned by hand) is read through a differentiable copy.
        params = [_contiguous(self._parameters[n]) for n in names]
        autocast = self._autocast(params[0])
        if autocast or any(p.dtype == torch.bfloat16 for p in params):
            # bf16 values, float32 arithmetic (the module's docstring): differentiable casts on the way in and out,
            # so autograd hands back bf16 gradients (float32 ones, rounded to bf16 first, under autocast)
            up = [None if t is None else t.to(torch.bfloat16).float() for t in (x, h0, c0, *params)]
            with torch.autocast("cpu", enabled=False) if autocast else contextlib.nullcontext():
                out = self._run_kernels(names, *up[:3], up[3:], lengths)
            return tuple(None if t is None else t.to(torch.bfloat16) for t in out)
        return self._run_kernels(names, x, h0, c0, params, lengths)

    def _run_kernels(self, names, x, h0, c0, params, lengths):
        dropout = _check_dropout(self.dropout)
        drop = self.training and dropout > 0 and self.num_layers > 1
        rec_drop = _check_recurrent_dropout(self) if self.training else 0.0
        # Masks from a NumPy generator seeded from torch's, so that torch.manual_seed reproduces them.
        rng = np.random.default_rng(int(torch.randint(0, 2 ** 62, (1,)).item())) if drop or rec_drop else None
        T, B = x.shape[0], x.shape[1]
        call = _Call(self, names, functional.Plan(T, B, lengths), dropout if drop else 0.0, rng, rec_drop)
        x, h0, c0 = _contiguous(x), _contiguous(h0), _contiguous(c0)
        tensors = [x, h0, c0, *params]
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
            return _RecurrentFunction.apply(call, *tensors)
        with torch.no_grad():  # inference keeps no workspace (unless dropout needs its masks drawn)
            return call.forward(x, h0, c0, params, keep=drop)


class _RNNBase(_Recurrent):
    def __init__(self, cell, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, proj_size=0, device=None, dtype=None, recurrent_dropout=0.0):
        super().__init__()
        self._cell = cell
        self.input_size = _check_size("input_size", input_size)
        self.hidden_size = _check_size("hidden_size", hidden_size)
        self.num_layers = _check_size("num_layers", num_layers)
        self.proj_size = _check_size("proj_size", proj_size, minimum=0)
        _check_dropout(dropout)
        if dropout > 0 and num_layers == 1:
            warnings.warn("dropout option adds dropout after all but last recurrent layer, so non-zero dropout "
                          f"expects num_layers greater than 1, but got dropout={dropout} and num_layers={num_layers}")
        if self.proj_size and self.proj_size >= self.hidden_size:
            raise ValueError("proj_size has to be smaller than hidden_size")
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.dropout = float(dropout)
        self.bidirectional = bool(bidirectional)
        self.recurrent_dropout = recurrent_dropout
        _check_recurrent_dropout(self)
        G, H = functional.gates(cell), self.hidden_size
        S = self.proj_size or H
        D = self._num_directions
        shapes, self._groups = [], []
        self._suffixes = [[dispatch.suffix(layer, d) for d in range(D)] for layer in range(self.num_layers)]
        for layer in range(self.num_layers):
            in_size = self.input_size if layer == 0 else D * S
            dirs = []
            for d in range(D):
                group = [k + self._suffixes[layer][d] for k in _PARAM_KINDS]
                shapes += [(group[0], (G * H, in_size)), (group[1], (G * H, S))]
                if self.bias:
                    shapes += [(group[2], (G * H,)), (group[3], (G * H,))]
                if self.proj_size:
                    shapes += [(group[4], (self.proj_size, H))]
                dirs.append(group)
            self._groups.append(dirs)
        self._make_parameters(shapes, device, dtype)

    @property
    def _num_directions(self):
        return 2 if self.bidirectional else 1

    @property
    def _all_weights(self):
        """Parameter names per layer and direction, as torch.nn's attribute of that name."""
        return [[n for n in group if n in self._parameters] for layer in self._groups for group in layer]

    @property
    def all_weights(self):
        return [[self._parameters[n] for n in names] for names in self._all_weights]

    def flatten_parameters(self):
        """A no-op: the kernels read the parameters where they are (torch.nn compacts them for cuDNN here)."""

    def _state_size(self):
        return self.proj_size or self.hidden_size

    def _check_state(self, value, name, like, size, B, batched):
        """A state tensor as (L*D, B, size)."""
        self._check_tensor(value, name, like)
        LD = self.num_layers * self._num_directions
        want = (LD, B, size) if batched else (LD, size)
        if tuple(value.shape) != want:
            raise ValueError(f"{name}: Expected hidden size {want}, got {list(value.shape)}")
        return value if batched else value.unsqueeze(1)

    def _split_hx(self, hx):
        return hx, None

    def forward(self, input, hx=None, lengths=None):
        """input: (T, B, input_size) ((B, T, input_size) with batch_first), (T, input_size) unbatched, or a
        PackedSequence. hx: (num_layers*num_directions, B, S) (LSTM: a pair (h0, c0), c0 with hidden_size), or
        None for zeros. lengths: one per batch element, 1 <= length <= T, any order (PackedSequence semantics on
        a padded input: outputs past each end are zero). Returns (output, h_n) (LSTM: (output, (h_n, c_n))),
        output packed when the input was."""
        packed = isinstance(input, PackedSequence)
        if packed:
            if lengths is not None:
                raise ValueError("lengths: a PackedSequence carries its own lengths; pass lengths only with a padded "
                                 "tensor")
            self._check_tensor(input.data, "input", self.weight_ih_l0)
            x, lengths = pad_packed_sequence(input)
            batched = True
        else:
            self._check_tensor(input, "input", self.weight_ih_l0)
            if input.dim() not in (2, 3):
                raise ValueError(f"{type(self).__name__}: Expected input to be 2D or 3D, got {input.dim()}D tensor")
            batched = input.dim() == 3
            x = input.unsqueeze(1) if not batched else (input.transpose(0, 1) if self.batch_first else input)
        if x.shape[-1] != self.input_size:
            raise ValueError(f"input.size(-1) must be equal to input_size. Expected {self.input_size}, "
                             f"got {x.shape[-1]}")
        T, B = x.shape[0], x.shape[1]
        if T < 1 or B < 1:
            raise ValueError(f"input: expected at least one step and one sequence, got shape {tuple(input.shape)}")
        lengths = _check_lengths(lengths, T, B)
        h0, c0 = self._split_hx(hx)
        like = self.weight_ih_l0
        if h0 is not None:
            h0 = self._check_state(h0, "hx" if c0 is None and self._cell != "lstm" else "hx[0]", like,
                                   self._state_size(), B, batched)
        if c0 is not None:
            c0 = self._check_state(c0, "hx[1]", like, self.hidden_size, B, batched)
        y, h_n, c_n = self._run(x, h0, c0, lengths)
        if packed:
            t_idx, b_idx = _packed_index(input)
            y = PackedSequence(y[t_idx, b_idx], input.batch_sizes, input.sorted_indices, input.unsorted_indices)
        elif not batched:
            y, h_n = y.squeeze(1), h_n.squeeze(1)
            c_n = None if c_n is None else c_n.squeeze(1)
        elif self.batch_first:
            y = y.transpose(0, 1)
        return self._output(y, h_n, c_n)

    def _output(self, y, h_n, c_n):
        return y, h_n

    def extra_repr(self):
        s = f"{self.input_size}, {self.hidden_size}"
        if self.proj_size:
            s += f", proj_size={self.proj_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if not self.bias:
            s += ", bias=False"
        if self.batch_first:
            s += ", batch_first=True"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if self.bidirectional:
            s += ", bidirectional=True"
        if getattr(self, "recurrent_dropout", 0.0):
            s += f", recurrent_dropout={self.recurrent_dropout}"
        return s


def _packed_index(packed):
    """(step, batch row) of every token of a PackedSequence, in its order: output[t_idx, b_idx] packs a padded
    (T, B, F) output exactly as the input was packed."""
    bs = packed.batch_sizes
    t_idx = torch.repeat_interleave(torch.arange(len(bs)), bs)
    j_idx = torch.cat([torch.arange(int(n)) for n in bs])
    b_idx = j_idx if packed.sorted_indices is None else packed.sorted_indices.cpu()[j_idx]
    device = packed.data.device
    return t_idx.to(device), b_idx.to(device)


class RNN(_RNNBase):
    """torch.nn.RNN on rnnfast's kernels: h' = act(W_ih x + b_ih + W_hh h + b_hh), act = tanh or relu."""

    _AUTOCAST_BF16 = True

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, device=None, dtype=None, *, recurrent_dropout=0.0):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")
        self.nonlinearity = nonlinearity
        super().__init__("rnn_" + nonlinearity, input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, 0, device, dtype, recurrent_dropout)

    def extra_repr(self):
        s = super().extra_repr()
        return s if self.nonlinearity == "tanh" else s + ", nonlinearity='relu'"


class LSTM(_RNNBase):
    """torch.nn.LSTM on rnnfast's kernels: gates i, f, g, o; c' = f*c + i*g; h' = o*tanh(c') (W_hr h' with
    proj_size)."""

    _AUTOCAST_BF16 = True

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, proj_size=0, device=None, dtype=None, *, recurrent_dropout=0.0):
        super().__init__("lstm", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         proj_size, device, dtype, recurrent_dropout)

    def _split_hx(self, hx):
        if hx is None:
            return None, None
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise TypeError(f"hx: expected a pair (h_0, c_0) of tensors, got {type(hx).__name__}")
        if hx[0] is None or hx[1] is None:
            raise TypeError("hx: expected a pair (h_0, c_0) of tensors, got None in it")
        return hx[0], hx[1]

    def _output(self, y, h_n, c_n):
        return y, (h_n, c_n)


class GRU(_RNNBase):
    """torch.nn.GRU on rnnfast's kernels. linear_before_reset=True (default) is torch's form,
    n = tanh(W_in x + b_in + r*(W_hn h + b_hn)); False the original one, n = tanh(W_in x + b_in + W_hn (r*h) + b_hn)
    (Keras reset_after=False), with the same parameters."""

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, device=None, dtype=None, linear_before_reset=True, *, recurrent_dropout=0.0):
        if not isinstance(linear_before_reset, bool):
            raise TypeError(f"linear_before_reset must be a bool, got {type(linear_before_reset).__name__}")
        self.linear_before_reset = linear_before_reset
        super().__init__("gru" if linear_before_reset else "gru_original", input_size, hidden_size, num_layers, bias,
                         batch_first, dropout, bidirectional, 0, device, dtype, recurrent_dropout)

    def extra_repr(self):
        s = super().extra_repr()
        return s if self.linear_before_reset else s + ", linear_before_reset=False"


class _CellBase(_Recurrent):
    def __init__(self, cell, input_size, hidden_size, bias, device, dtype):
        super().__init__()
        self._cell = cell
        self.input_size = _check_size("input_size", input_size)
        self.hidden_size = _check_size("hidden_size", hidden_size)
        self.bias = bool(bias)
        G, H = functional.gates(cell), self.hidden_size
        self._groups = [[list(_PARAM_KINDS)]]
        self._suffixes = [[""]]
        shapes = [("weight_ih", (G * H, self.input_size)), ("weight_hh", (G * H, H))]
        if self.bias:
            shapes += [("bias_ih", (G * H,)), ("bias_hh", (G * H,))]
        self._make_parameters(shapes, device, dtype)

    def _check_state(self, value, name, B, batched):
        """A state tensor as (1, B, H)."""
        self._check_tensor(value, name, self.weight_ih)
        want = (B, self.hidden_size) if batched else (self.hidden_size,)
        if tuple(value.shape) != want:
            raise ValueError(f"{name}: expected shape {want} for an input of {'batch size ' + str(B) if batched else 'one sample'}, "
                             f"got {tuple(value.shape)}")
        return value.reshape(1, B, self.hidden_size)

    def _step(self, input, h, c):
        self._check_tensor(input, "input", self.weight_ih)
        if input.dim() not in (1, 2):
            raise ValueError(f"{type(self).__name__}: Expected input to be 1D or 2D, got {input.dim()}D instead")
        if input.shape[-1] != self.input_size:
            raise ValueError(f"input has inconsistent input_size: got {input.shape[-1]} expected {self.input_size}")
        batched = input.dim() == 2
        B = input.shape[0] if batched else 1
        if B < 1:
            raise ValueError(f"input: batch size must be at least 1, got shape {tuple(input.shape)}")
        lstm = self._cell == "lstm"
        h0 = None if h is None else self._check_state(h, "hx[0]" if lstm else "hx", B, batched)
        c0 = None if c is None else self._check_state(c, "hx[1]", B, batched)
        _, h_n, c_n = self._run(input.reshape(1, B, self.input_size), h0, c0, None)
        shape = (B, self.hidden_size) if batched else (self.hidden_size,)
        return h_n.reshape(shape), None if c_n is None else c_n.reshape(shape)

    def forward(self, input, hx=None):
        """input (B, input_size) or (input_size,); hx the state of the same batch shape or None (zeros).
        Returns the new state."""
        return self._step(input, hx, None)[0]

    def extra_repr(self):
        s = f"{self.input_size}, {self.hidden_size}"
        if not self.bias:
            s += ", bias=False"
        return s


class RNNCell(_CellBase):
    """torch.nn.RNNCell on rnnfast's kernels."""

    _AUTOCAST_BF16 = True

    def __init__(self, input_size, hidden_size, bias=True, nonlinearity="tanh", device=None, dtype=None):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"Unknown nonlinearity: {nonlinearity}")
        self.nonlinearity = nonlinearity
        super().__init__("rnn_" + nonlinearity, input_size, hidden_size, bias, device, dtype)

    def extra_repr(self):
        s = super().extra_repr()
        return s if self.nonlinearity == "tanh" else s + ", nonlinearity='relu'"


class GRUCell(_CellBase):
    """torch.nn.GRUCell on rnnfast's kernels."""

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None):
        super().__init__("gru", input_size, hidden_size, bias, device, dtype)


class LSTMCell(_CellBase):
    """torch.nn.LSTMCell on rnnfast's kernels: hx = (h, c) or None; returns (h', c')."""

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None):
        super().__init__("lstm", input_size, hidden_size, bias, device, dtype)

    def forward(self, input, hx=None):
        if hx is None:
            h, c = None, None
        elif not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise TypeError(f"hx: expected a pair (h_0, c_0) of tensors, got {type(hx).__name__}")
        else:
            h, c = hx
        return self._step(input, h, c)


# What torch.load(..., weights_only=True) must be allowed to build for a whole model holding these modules.
SAFE_GLOBALS = [RNN, LSTM, GRU, RNNCell, LSTMCell, GRUCell]


# ------------------------------------------------------------------------------------------------ interop
_TORCH_DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}
_NUMPY_DTYPES = {v: k for k, v in _TORCH_DTYPES.items()}


def _kind(module):
    """('RNN' | 'LSTM' | 'GRU' | 'RNNCell' | 'LSTMCell' | 'GRUCell') of a torch.nn, rnnfast.torch or rnnfast
    recurrent module."""
    import rnnfast
    for name in ("RNNCell", "LSTMCell", "GRUCell", "RNN", "LSTM", "GRU"):
        if isinstance(module, (getattr(nn, name), globals()[name], getattr(rnnfast, name))):
            return name
    raise TypeError(f"module: expected an RNN, LSTM, GRU or one of their cells (torch.nn, rnnfast.torch or "
                    f"rnnfast), got {type(module).__name__}")


def _config(module, kind):
    """Constructor arguments shared by every implementation."""
    cfg = dict(input_size=module.input_size, hidden_size=module.hidden_size, bias=bool(module.bias))
    if not kind.endswith("Cell"):
        cfg.update(num_layers=module.num_layers, batch_first=bool(module.batch_first), dropout=float(module.dropout),
                   bidirectional=bool(module.bidirectional))
        if kind == "LSTM":
            cfg["proj_size"] = module.proj_size
    if kind in ("RNN", "RNNCell"):
        cfg["nonlinearity"] = module.nonlinearity
    return cfg


def from_torch(module):
    """The rnnfast NumPy layer or cell (rnnfast.LSTM, ...) with the configuration and a copy of the weights of a
    torch.nn (or rnnfast.torch) module; float32 or float64 as its parameters."""
    import rnnfast
    kind = _kind(module)
    if isinstance(module, getattr(rnnfast, kind)):
        raise TypeError(f"module: already an rnnfast NumPy {kind}")
    dtype = next(module.parameters()).dtype
    _check_kernel_dtype(dtype, "module's parameters")
    cfg = _config(module, kind)
    if kind == "GRU" and getattr(module, "linear_before_reset", True) is False:
        cfg["linear_before_reset"] = False
    layer = getattr(rnnfast, kind)(**cfg, dtype=_NUMPY_DTYPES[dtype])
    layer.load_state_dict(module.state_dict())
    layer.train(module.training)
    return layer


def to_torch(layer, drop_in=False):
    """A torch module with the configuration and a copy of the weights of an rnnfast NumPy layer or cell:
    torch.nn's class, or rnnfast.torch's with drop_in=True (always for GRU(linear_before_reset=False), which
    torch.nn lacks)."""
    import rnnfast
    kind = _kind(layer)
    if not isinstance(layer, getattr(rnnfast, kind)):
        raise TypeError(f"layer: expected an rnnfast NumPy layer or cell, got {type(layer).__name__}")
    cfg = _config(layer, kind)
    cls = globals()[kind] if drop_in else getattr(nn, kind)
    if kind == "GRU" and not layer.linear_before_reset:
        cls, cfg["linear_before_reset"] = GRU, False
    module = cls(**cfg, dtype=_TORCH_DTYPES[np.dtype(layer.dtype)])
    module.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in layer.state_dict().items()})
    module.train(layer.training)
    return module
