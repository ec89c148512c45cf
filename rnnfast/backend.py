"""The kernels' settings and the GEMM, as users see them: the thread count, the instruction-set build, the
choices the tuner made, which kernels (CPU, CUDA, emulated CUDA) a call runs on, and rnnfast's own GEMM.

The engine behind these lives in rnnfast/_core (threads.py, tuning.py, dispatch.py); this module is its public face.
"""
from __future__ import annotations

import numpy as np

from ._core import threads, tuning as _tuning
from ._core.dispatch import cuda_options, current_backend, use_backend
from ._core.ext import _C

__all__ = ["set_num_threads", "get_num_threads", "matmul", "isa", "bf16_native", "tuning", "tuning_lines",
           "use_backend", "current_backend", "cuda_options", "MAX_EXACT_THREADS"]

MAX_EXACT_THREADS = threads.MAX_EXACT_THREADS


def set_num_threads(n: int, exact: bool = False) -> None:
    """Sets the largest number of threads a kernel call may use (default: the CPUs this process may run on, capped
    by its cgroup's CPU quota, as a container's --cpus sets it).

    Args:
        n: an int >= 1. More threads than the cores this process may run on cannot help (the threads of a
            kernel meet at a barrier every step), so n is capped at that count: ``get_num_threads()`` returns
            the number in force.
        exact: use exactly n threads even where a problem is too small to gain from them (for tests of the
            threaded paths on small shapes); n is then not capped, but must be at most MAX_EXACT_THREADS.

    Results are bit-for-bit reproducible from run to run with the same thread count. Different thread counts
    can differ in the last bits (the threads split the sums of the GEMMs and of the gradients differently).
    """
    threads.set_num_threads(n, exact)


def get_num_threads() -> int:
    """The largest number of threads a kernel call may use."""
    return threads.get_num_threads()


def isa() -> str:
    """The instruction-set build of the CPU kernels in use: 'avx512', 'avx2' or 'generic'."""
    return _C.isa()


def bf16_native() -> bool:
    """Whether the bfloat16 inference weights (a layer's set_inference_weights) run on AVX512_BF16's
    instructions here; False: on their exact emulation (the same results, slower products)."""
    return _C.bf16_native()


def tuning(dtype=np.float32) -> dict:
    """The choices of this process for a dtype, made at its first kernel call (now, if none ran yet), each timed
    inside a short training step of a layer (rnnfast/_core/tuning.py).

    Returns a dict: ``gemm`` and ``step``, the GEMM variants (``"MRxNR"``, e.g. ``"12x32"``, with ``/big`` or
    ``/tiles`` for another cache blocking) of the time-parallel GEMMs and of the recurrences' per-step products;
    ``gemm_ms`` / ``step_ms``, the training step's time with each candidate (``probe`` names the step);
    ``library``, always ``"rnnfast"`` (no BLAS library's thread pool runs in a layer call; ``library_note`` says
    why RNNFAST_GEMM=numpy is ignored where it is set); ``source`` (measured, cache, defaults, forced), ``cache``
    (the file, or why it was not written), ``cpu``, ``isa``, ``threads``, ``variants`` and ``tuning_ms``;
    ``crossing_macs``, the multiply-adds per thread a recurrence's step needs before it uses another thread, and
    ``crossing``, the step times it was measured from (None where it was not measured).

    Every variant and every crossing gives the same bits. RNNFAST_TUNE=0 and RNNFAST_GEMM_TILE force the choices
    (see the README).
    """
    dt = np.dtype(dtype)
    if dt not in (np.float32, np.float64):
        raise TypeError(f"tuning: dtype must be float32 or float64, got {dt}")
    return _copy(_tuning.ensure(dt))


def tuning_lines(dtype=np.float32) -> list:
    """tuning(dtype) as the lines ``python -m rnnfast info`` and the benchmarks print."""
    return _tuning.report_lines(tuning(dtype))


def _copy(d):
    return {k: (_copy(v) if isinstance(v, dict) else list(v) if isinstance(v, list) else v) for k, v in d.items()}


def _whole_items(arr: np.ndarray) -> bool:
    """Whether every stride is a whole number of items: the kernels address elements in items."""
    return all(s % arr.itemsize == 0 for s in arr.strides)


def _check_operands(a, b, accumulate):
    for name, arr in (("a", a), ("b", b)):
        if not isinstance(arr, np.ndarray):
            raise TypeError(f"matmul: {name} must be a numpy.ndarray, got {type(arr).__name__}")
        if arr.ndim != 2:
            raise ValueError(f"matmul: {name} must be 2-D, got shape {arr.shape}")
        if arr.dtype not in (np.float32, np.float64):
            raise TypeError(f"matmul: {name} must be float32 or float64, got {arr.dtype}")
    if a.dtype != b.dtype:
        raise TypeError(f"matmul: a and b dtypes differ ({a.dtype} and {b.dtype})")
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"matmul: shapes {a.shape} and {b.shape} do not align")
    if not isinstance(accumulate, (bool, np.bool_)):
        raise TypeError(f"matmul: accumulate must be a bool, got {type(accumulate).__name__}")


def _check_out(out, want, a, b):
    if not isinstance(out, np.ndarray):
        raise TypeError(f"matmul: out must be a numpy.ndarray, got {type(out).__name__}")
    if out.dtype != a.dtype:
        raise TypeError(f"matmul: out must have dtype {a.dtype} (a's), got {out.dtype}")
    if out.shape != want:
        raise ValueError(f"matmul: out must have shape {want}, got {out.shape}")
    if not out.flags.writeable:
        raise ValueError("matmul: out is read-only")
    if not _whole_items(out) or (out.size and out.shape[1] > 1 and out.strides[1] != out.itemsize) \
            or (out.size and out.shape[0] > 1 and out.strides[0] < out.shape[1] * out.itemsize):
        raise ValueError(f"matmul: out's rows must be contiguous with whole-item strides, got strides "
                         f"{out.strides} for itemsize {out.itemsize}")
    if np.shares_memory(out, a) or np.shares_memory(out, b):
        raise ValueError("matmul: out overlaps an input")


def matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None, accumulate: bool = False) -> np.ndarray:
    """a @ b on rnnfast's threaded GEMM.

    Args:
        a: (M, K), float32 or float64, any strides (a view whose strides are not whole items, e.g. over a
            byte buffer, is copied first).
        b: (K, N), a's dtype, any strides.
        out: None, or an (M, N) array of a's dtype to write the product into: writable, rows contiguous
            (unit stride within a row, whole items between rows), not overlapping a or b.
        accumulate: add the product into ``out`` instead of overwriting it (needs ``out``).

    Returns:
        ``out``, or a new (M, N) array.
    """
    _check_operands(a, b, accumulate)
    want = (a.shape[0], b.shape[1])
    if out is None:
        if accumulate:
            raise ValueError("matmul: accumulate=True needs out")
        out = np.empty(want, dtype=a.dtype)
    else:
        _check_out(out, want, a, b)
    # Misaligned views (strides that are not whole items) are copied: the kernels would misread them.
    a = a if _whole_items(a) else a.copy()
    b = b if _whole_items(b) else b.copy()
    if out.size == 0:
        return out
    if 0 in a.shape:  # K = 0: the product is zeros
        if not accumulate:
            out[...] = 0
        return out
    _tuning.ensure(a.dtype)
    c = out  # the kernel writes into out's memory
    odd = out.strides[1] != out.itemsize or out.strides[0] < out.shape[1] * out.itemsize
    if odd:  # a single row or column with an unusual stride: the kernel writes a temporary in its layout
        c = np.empty(want, dtype=a.dtype)
        if accumulate:
            c[...] = out
    _C.gemm(a, b, c, accumulate, threads.kernel_arg())
    if odd:
        out[...] = c
    return out
