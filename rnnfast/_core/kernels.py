"""The kernels a layer call runs on, behind one interface: the CPU kernels (rnnfast._C) or the CUDA kernels
(rnnfast._cuda on CuPy arrays; rnnfast._cuda_emu, their host emulation, on NumPy arrays).

functional.py writes the data flow once against this interface:

    weights(cell, arrays, grads, cache, key)    one layer and direction as the kernels take it (LayerWeights):
                                                 packed and cached (CPU) or read as it is (CUDA)
    project(x, lw, out)                          out = x @ W_ih^T, the time-parallel input GEMM
    forward_call(...) / run_forward(calls)       the fused recurrence, every step in one call
    backward_call(...) / run_backward(calls)     its BPTT
    addmm(out, a, b), matmul(a, b, out)          the weight-gradient and dx GEMMs
    bias_grads(dxg, dhg, grads)                  what the kernels leave of the bias gradients
    saved_weights(lw)                            what a training forward keeps of W_hh / W_hr for its backward
    empty / scratch / workspace / keep           the buffers a call writes, and what a record keeps alive

Both backends validate every call in C++ (shapes, dtypes, contiguity, writability) with messages naming the
argument; these classes only allocate and route. Which of them runs a call is decided in dispatch.py.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np

from . import arrays, threads
from .ext import CELLS, _C


@dataclass
class LayerWeights:
    """One layer, one direction: the live parameter arrays, the arrays their gradients are added into, and the
    weights as the kernels take them."""

    w_ih: object
    w_hh: object
    b_ih: object  # None without biases
    b_hh: object
    w_hr: object  # an LSTM's projection, or None
    grads: dict  # w_ih, w_hh, b_ih, b_hh, w_hr -> gradient array or None
    packed_ih: object  # what project() reads: W_ih packed (CPU) or None (CUDA reads w_ih)
    recurrent_hh: object  # what the recurrence takes as W_hh: packed (CPU) or the array itself (CUDA)
    recurrent_hr: object = None  # likewise for W_hr, or None

    @property
    def projection(self) -> bool:
        return self.w_hr is not None


def packed_weights(w: np.ndarray, gates: int, cached: "_C.PackedWeights | None",
                   bfloat16: bool = False) -> "_C.PackedWeights":
    """A weight packed for the CPU kernels (gates=G: a W_hh; gates=0: a W_ih for x @ W_ih^T; gates=1: an LSTM's
    W_hr; bfloat16: a float32 W_hh rounded to bf16 for inference forwards). Reuses `cached` only while it is of
    that kind and still holds exactly these bytes, so an in-place update is never served stale."""
    if cached is not None and cached.bfloat16 == bfloat16 and cached.matches(w, threads.kernel_arg()):
        return cached
    return _C.PackedWeights(w, gates, bfloat16)


class CpuKernels:
    """The CPU kernels: weights packed once and cached until they change, the recurrence and the bias gradients
    in the kernels, the time-parallel GEMMs on rnnfast's own GEMM on rnnfast's own threads (no library's thread
    pool runs beside them: see tuning.py)."""

    xp = np
    name = "cpu"
    can_run_directions_together = True

    def __init__(self, thread_arg: int | None = None):
        self._thread_arg = thread_arg  # None: the process's setting (threads.kernel_arg()) at each call

    @property
    def thread_arg(self) -> int:
        return threads.kernel_arg() if self._thread_arg is None else self._thread_arg

    # ------------------------------------------------------------------ weights
    @staticmethod
    def weights(cell, arrays_, grads, cache, key, bfloat16=False) -> LayerWeights:
        """LayerWeights over `arrays_` (w_ih, w_hh, b_ih, b_hh, w_hr), packing through `cache` (a dict the
        caller owns, entries named by `key`); bfloat16: W_hh packed as bf16 for an inference forward, cached
        apart from its float32 packing."""
        w_hr = arrays_.get("w_hr")
        ih = _cached(cache, "ih" + key, arrays_["w_ih"], 0)
        hh = _cached(cache, ("hh_bf16" if bfloat16 else "hh") + key, arrays_["w_hh"], CELLS[cell]["gates"], bfloat16)
        hr = _cached(cache, "hr" + key, w_hr, 1) if w_hr is not None else None
        return LayerWeights(arrays_["w_ih"], arrays_["w_hh"], arrays_.get("b_ih"), arrays_.get("b_hh"), w_hr, grads,
                            ih, hh, hr)

    @staticmethod
    def recurrent_weight(w, gates):
        """A W_hh of the call only (not a parameter: no cache), as the recurrence takes it."""
        return packed_weights(w, gates, None)

    @staticmethod
    def saved_weights(lw: LayerWeights):
        """Packed weights are immutable (a changed parameter is packed anew), so backward keeps them as they are."""
        return lw.recurrent_hh, lw.recurrent_hr

    # ------------------------------------------------------------------ buffers
    @staticmethod
    def empty(shape, dtype):
        return arrays.empty(np, shape, dtype)

    @staticmethod
    def scratch(key, shape, dtype):
        return arrays.scratch(key, shape, dtype)

    @staticmethod
    def workspace(shape, dtype):
        return arrays.workspace(shape, dtype)

    @staticmethod
    def keep(record, ws):
        """ws belongs to `record` alone: offered to the next training forward once the record dies."""
        if ws is not None:
            weakref.finalize(record, arrays.recycle, ws)

    # ------------------------------------------------------------------ kernels
    def project(self, x, lw: LayerWeights, out):
        if x.shape[0]:
            _C.gemm_packed(x, lw.packed_ih, out, False, self.thread_arg)
        return out

    forward_call = staticmethod(_C.ForwardCall)

    @staticmethod
    def backward_call(*, dh_n, dc_n, dh0, dc0, **kw):
        return _C.BackwardCall(dh_n=dh_n, dc_n=dc_n, dh0=dh0, dc0=dc0, **kw)

    def run_forward(self, calls):
        _C.forward(calls, self.thread_arg)

    def run_backward(self, calls):
        _C.backward(calls, self.thread_arg)

    def addmm(self, out, a, b):
        _C.gemm(a, b, out, True, self.thread_arg)

    def matmul(self, a, b, out):
        _C.gemm(a, b, out, False, self.thread_arg)
        return out

    @staticmethod
    def bias_grads(dxg, dhg, grads):
        """The CPU kernels add the bias gradients themselves."""


def _cached(cache, name, w, gates, bfloat16=False):
    cache[name] = packed_weights(w, gates, cache.get(name), bfloat16)
    return cache[name]


class CudaKernels:
    """The CUDA kernels on CuPy arrays (or NumPy arrays, emulated): W_hh read as it is, the GEMMs and the
    bias-gradient column sums on the array library (cuBLAS), launches on the current stream."""

    can_run_directions_together = False

    def __init__(self, module, xp, options):
        self.module, self.xp, self.options = module, xp, options
        self.name = "cuda" if xp is not np else "cuda_emu"

    # ------------------------------------------------------------------ weights
    @staticmethod
    def weights(cell, arrays_, grads, cache, key, bfloat16=False) -> LayerWeights:
        if bfloat16:
            raise RuntimeError("bfloat16 inference weights are a mode of the CPU kernels; this layer runs on CUDA "
                               "(set_inference_weights('float32') to run it there)")
        a = arrays_
        return LayerWeights(a["w_ih"], a["w_hh"], a.get("b_ih"), a.get("b_hh"), a.get("w_hr"), grads, None,
                            a["w_hh"], a.get("w_hr"))

    @staticmethod
    def recurrent_weight(w, gates):
        """A W_hh of the call only, as the recurrence takes it (the array itself)."""
        return w

    @staticmethod
    def saved_weights(lw: LayerWeights):
        """The live parameters may change before backward: it keeps copies."""
        return lw.recurrent_hh.copy(), None if lw.recurrent_hr is None else lw.recurrent_hr.copy()

    # ------------------------------------------------------------------ buffers
    def empty(self, shape, dtype):
        return arrays.empty(self.xp, shape, dtype)

    def scratch(self, key, shape, dtype):
        """No reuse: a buffer of an earlier call may still be read by work queued on the stream."""
        return self.empty(shape, dtype)

    def workspace(self, shape, dtype):
        return self.empty(shape, dtype)

    @staticmethod
    def keep(record, ws):
        """The record holds ws; the array library frees it with the record."""

    # ------------------------------------------------------------------ kernels
    def project(self, x, lw: LayerWeights, out):
        if x.dtype != np.float32:
            raise TypeError(f"x: the CUDA kernels run float32, got {x.dtype}")
        return self.xp.matmul(x, lw.w_ih.T, out=out)

    def forward_call(self, **kw):
        return self.module.ForwardCall(**kw)

    def backward_call(self, *, dh_n, dc_n, dh0, dc0, db_ih, db_hh, **kw):
        # The CUDA kernels carry dh (and dc) in place: in, the gradient w.r.t. h_n; out, w.r.t. h0. The bias
        # gradients are left to bias_grads.
        dh0[...] = 0 if dh_n is None else dh_n
        if dc0 is not None:
            dc0[...] = 0 if dc_n is None else dc_n
        return self.module.BackwardCall(dh=dh0, dc=dc0, **kw)

    def _launch_options(self):
        stream = int(self.xp.cuda.get_current_stream().ptr) if self.xp is not np else 0
        o = self.options
        return dict(stream=stream, path=o["path"], units_per_block=o["units_per_block"], threads=o["threads"])

    def run_forward(self, calls):
        for call in calls:
            self.module.forward(call, **self._launch_options())

    def run_backward(self, calls):
        for call in calls:
            self.module.backward(call, **self._launch_options())

    @staticmethod
    def addmm(out, a, b):
        out += a @ b

    def matmul(self, a, b, out):
        return self.xp.matmul(a, b, out=out)

    @staticmethod
    def bias_grads(dxg, dhg, grads):
        """Column sums (a deterministic reduction; the kernels leave the bias gradients out)."""
        if grads["b_ih"] is not None:
            grads["b_ih"] += dxg.sum(axis=0)
            grads["b_hh"] += (dhg if dhg is not None else dxg).sum(axis=0)
