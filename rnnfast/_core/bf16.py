"""The boundary of bfloat16 modules (``dtype="bfloat16"``: ml_dtypes' bfloat16, the NumPy dtype JAX and TensorFlow
use; NumPy has none of its own). A bf16 module computes in float32 on its bf16 values: its kernels read float32
copies of the parameters and inputs, what it returns is rounded to bf16 once, and each parameter gradient is summed
in float32 and rounded into ``.grad`` once per backward, as torch's bf16 modules (and rnnfast.torch's) do. The
layers, the cells, rnnfast.nn's modules and the losses all cross the boundary here, so they round alike.

The conversions are the compiled module's (bf16_convert.h), which round as ml_dtypes' astype does, about ten times
faster than NumPy's cast through ml_dtypes.
"""
from __future__ import annotations

import ml_dtypes
import numpy as np

from .ext import _C

BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
_FLOAT32 = np.dtype(np.float32)


def compute_dtype(dtype) -> np.dtype:
    """The dtype a module of `dtype` computes in: float32 for bfloat16, else the dtype itself."""
    return _FLOAT32 if dtype == BFLOAT16 else np.dtype(dtype)


def _contiguous(a: np.ndarray) -> np.ndarray:
    return a if a.flags.c_contiguous else a.copy(order="C")


def as_float32(a: np.ndarray) -> np.ndarray:
    """A new float32 array holding a bf16 array's values (exact)."""
    out = np.empty(a.shape, _FLOAT32)
    _C.bf16_to_float32(_contiguous(a).view(np.uint16), out)
    return out


def as_bfloat16(a: np.ndarray) -> np.ndarray:
    """A new bf16 array: a float32 array rounded to nearest even (other dtypes through ml_dtypes' cast)."""
    if a.dtype != _FLOAT32:
        return a.astype(BFLOAT16)
    out = np.empty(a.shape, BFLOAT16)
    _C.float32_to_bf16(_contiguous(a), out.view(np.uint16))
    return out


def to_compute(dtype, *arrays):
    """The arrays (None kept) in `dtype`'s compute dtype: float32 copies of bf16 ones, the others as they are."""
    if dtype != BFLOAT16:
        return arrays
    return tuple(None if a is None else as_float32(a) for a in arrays)


def to_dtype(dtype, *arrays):
    """Results computed in the compute dtype, rounded to a bf16 module's dtype once (None kept)."""
    if dtype != BFLOAT16:
        return arrays
    return tuple(None if a is None else as_bfloat16(a) for a in arrays)


def add_into(grad: np.ndarray, g) -> None:
    """grad += g for a bf16 ``grad``: the sum formed in float32 and rounded once."""
    g = np.ascontiguousarray(np.broadcast_to(g, grad.shape), dtype=_FLOAT32)
    if grad.flags.c_contiguous and grad.flags.writeable:
        _C.bf16_add_float32(grad.view(np.uint16), g)
    else:  # a gradient array replaced by hand with a strided view: the same arithmetic, through NumPy
        grad[...] = (grad.astype(_FLOAT32) + g).astype(BFLOAT16)


def compute_values(params) -> dict:
    """name -> the value the kernels read: a bf16 parameter's as a float32 copy, any other's own array."""
    return {n: as_float32(p.data) if p.data.dtype == BFLOAT16 else p.data for n, p in params.items()}


def gradient_targets(params, record: bool = True):
    """(grads, grads32): name -> the array the kernels add a parameter's gradient into. A bf16 module's kernels add
    into float32 zeros (grads32, which its backward hands to flush_gradients; empty when nothing is recorded);
    other modules' into the parameters' own .grad (grads32 None)."""
    if not any(p.data.dtype == BFLOAT16 for p in params.values()):
        return {n: p.grad for n, p in params.items()}, None
    grads32 = {n: np.zeros(p.data.shape, _FLOAT32) for n, p in params.items()} if record else {}
    return grads32, grads32


def flush_gradients(params, grads32) -> None:
    """Adds a bf16 module's float32 gradients into its parameters' .grad (one rounding each) and zeroes them, so
    that a second backward of the same record (retain_graph) adds only its own."""
    for name, g in (grads32 or {}).items():
        params[name].accumulate(g)
        g[...] = 0
