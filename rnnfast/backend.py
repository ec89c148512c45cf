"""The CPU backend: the compiled kernels, the thread count and the GEMM the layers use.

The time-parallel GEMMs of a layer (input projection, dx, dW) run on rnnfast's own blocked AVX-512/AVX2 GEMM
(:func:`matmul`), in the variant measured fastest on this machine at the first GEMM, or on numpy.matmul where
NumPy's BLAS was measured clearly faster: :func:`tuning` says what was chosen and why (rnnfast/_tuning.py).
"""
from __future__ import annotations

import contextlib
import threading

import numpy as np

from . import _C, _checks, _cpus, _tuning

__all__ = ["set_num_threads", "get_num_threads", "matmul", "isa", "bf16_native", "tuning", "use_backend",
           "current_backend"]


def _default_threads() -> int:
    """The CPUs this process may use: its affinity, capped by its cgroup's CPU quota (rnnfast/_cpus.py)."""
    return _cpus.available()


_num_threads = _default_threads()
_exact = False


# With exact=True a test may ask for more threads than cores (to run the threaded split on a small machine),
# but not for more than this: every thread is started for each kernel call.
MAX_EXACT_THREADS = 256


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
    global _num_threads, _exact
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"set_num_threads: n must be an int, got {type(n).__name__}")
    if not isinstance(exact, (bool, np.bool_)):
        raise TypeError(f"set_num_threads: exact must be a bool, got {type(exact).__name__}")
    n = int(n)
    if n < 1:
        raise ValueError(f"set_num_threads: n must be >= 1, got {n}")
    if exact and n > MAX_EXACT_THREADS:
        raise ValueError(f"set_num_threads: n must be at most {MAX_EXACT_THREADS} with exact=True, got {n}")
    _num_threads, _exact = (n if exact else min(n, _default_threads())), bool(exact)


def get_num_threads() -> int:
    """The largest number of threads a kernel call may use."""
    return _num_threads


def _threads_arg() -> int:
    """The kernels' thread argument: n = at most n, -n = exactly n."""
    return -_num_threads if _exact else _num_threads


def isa() -> str:
    """The instruction-set build of the CPU kernels in use: 'avx512', 'avx2' or 'generic'."""
    return _C.isa()


def bf16_native() -> bool:
    """Whether the bfloat16 inference weights (a layer's set_inference_weights) run on AVX512_BF16's
    instructions here; False: on their exact emulation (the same results, slower products)."""
    return _C.bf16_native()


def tuning(dtype=np.float32) -> dict:
    """The GEMM choice of this process for a dtype, made at its first GEMM (now, if none ran yet).

    Returns a dict: ``gemm`` and ``step``, the variants (``"MRxNR"``, e.g. ``"12x32"``, with ``/big`` or
    ``/tiles`` for another cache blocking) of the time-parallel GEMMs and of the recurrences' per-step products;
    ``gemm_gflops`` / ``step_gflops``, each candidate's measured rate; ``library``, for each of the layers'
    time-parallel GEMMs (``project``, ``matmul`` = dx, ``addmm`` = dW) ``"rnnfast"`` or ``"numpy"``, with the
    rates measured for both in ``library_gflops`` (NumPy is considered only when rnnfast runs as many threads as
    there are cores, since it does not follow set_num_threads; ``library_note`` says when not); ``source`` (measured, cache, defaults, forced), ``cache``
    (the file, or why it was not written), ``cpu``, ``isa``, ``threads``, ``variants`` and ``tuning_ms``;
    ``round_trip_ns`` (the core round trip measured at the process's first GEMM, None when not measured) and
    ``crossing_macs``, the multiply-adds per thread a recurrence's step needs before it uses another thread.

    Every variant gives the same bits; the library choice changes the last bits, and is made once per process
    (and kept per CPU model in the cache file). RNNFAST_TUNE=0, RNNFAST_GEMM_TILE and RNNFAST_GEMM force the
    choices (see the README).
    """
    dt = np.dtype(dtype)
    if dt not in (np.float32, np.float64):
        raise TypeError(f"tuning: dtype must be float32 or float64, got {dt}")
    return _copy(_tuning.ensure(dt))


def _copy(d):
    return {k: (_copy(v) if isinstance(v, dict) else list(v) if isinstance(v, list) else v) for k, v in d.items()}


def _whole_items(arr: np.ndarray) -> bool:
    """Whether every stride is a whole number of items: the kernels address elements in items."""
    return all(s % arr.itemsize == 0 for s in arr.strides)


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
    want = (a.shape[0], b.shape[1])
    if out is None:
        if accumulate:
            raise ValueError("matmul: accumulate=True needs out")
        out = np.empty(want, dtype=a.dtype)
    else:
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
    # Misaligned views (strides that are not whole items) are copied: the kernels would misread them.
    a = _checks.canonical(a if _whole_items(a) else a.copy())
    b = _checks.canonical(b if _whole_items(b) else b.copy())
    if out.size == 0:
        return out
    if 0 in a.shape:  # K = 0: the product is zeros
        if not accumulate:
            out[...] = 0
        return out
    _tuning.ensure(a.dtype)
    c = _checks.canonical(out)  # a view: the kernel writes into out's memory
    odd = out.strides[1] != out.itemsize or out.strides[0] < out.shape[1] * out.itemsize
    if odd:  # a single row or column with an unusual stride: the kernel writes a temporary in its layout
        c = np.empty(want, dtype=a.dtype)
        if accumulate:
            c[...] = out
    _C.gemm(a, b, c, accumulate, _threads_arg())
    if odd:
        out[...] = c
    return out


# ----------------------------------------------------------------------------------------------- backends
# Which kernels a layer call runs on: "cpu" (the fused CPU kernels), "cuda" (rnnfast._cuda on CuPy arrays,
# chosen automatically when the input is a CuPy array) or "cuda_emu" (the CUDA kernel sources compiled for
# the host, on NumPy arrays: for testing the CUDA kernels without a GPU).
_BACKENDS = ("cpu", "cuda", "cuda_emu")
_local = threading.local()

# Launch options of the CUDA kernels: path 0 = automatic (persistent when W_hh's slice fits on chip and the
# grid can be co-resident), 1 = force persistent, 2 = force per-step; units_per_block 0 = one block per SM;
# threads per block.
cuda_options = {"path": 0, "units_per_block": 0, "threads": 128}


def current_backend() -> str:
    """The backend layers called in this thread run on: "cpu", "cuda" or "cuda_emu" (see use_backend)."""
    return getattr(_local, "name", "cpu")


@contextlib.contextmanager
def use_backend(name: str):
    """Context manager: ``with rnnfast.use_backend("cuda_emu"):`` layers called in this thread run on the given
    backend.

    Args:
        name: "cpu" (the fused CPU kernels), "cuda" (the CUDA kernels; needs CuPy arrays) or "cuda_emu" (the
            CUDA kernel sources emulated on the CPU, on NumPy arrays; RuntimeError when it was not built).
    """
    if name not in _BACKENDS:
        raise ValueError(f"use_backend: name must be one of {_BACKENDS}, got {name!r}")
    if name == "cuda_emu":
        _cuda_module(emulated=True)  # fail here, not inside a layer, when it is missing
    previous = current_backend()
    _local.name = name
    try:
        yield
    finally:
        _local.name = previous


def _cuda_module(emulated: bool):
    try:
        if emulated:
            from . import _cuda_emu as mod
        else:
            from . import _cuda as mod
    except ImportError as e:
        what = "rnnfast._cuda_emu" if emulated else "rnnfast._cuda (built only where nvcc was found at install time)"
        raise RuntimeError(f"{what} is not available: {e}") from None
    return mod


def is_cupy_array(a) -> bool:
    """Whether a is a CuPy array (checked without importing CuPy)."""
    if type(a) is np.ndarray:  # the common case, asked several times a layer call: no module-name lookup
        return False
    return type(a).__module__.split(".")[0] == "cupy"


def device_kernels(*arrays):
    """(kernel module, array namespace) for the CUDA paths, or None for the CPU kernels.

    CuPy arrays select rnnfast._cuda whatever the backend; NumPy arrays select the emulation under
    use_backend("cuda_emu"). Mixing NumPy and CuPy arrays is an error.
    """
    present = [a for a in arrays if a is not None]
    cupy_flags = {is_cupy_array(a) for a in present}
    if cupy_flags == {True, False}:
        raise TypeError("NumPy and CuPy arrays are mixed: the input, the states and the layer's parameters "
                        "must all live on the same side (move the layer with .to('cuda') or .to('cpu'))")
    if cupy_flags == {True}:
        import cupy
        devices = {a.device.id for a in present}
        if len(devices) > 1:
            raise ValueError(f"arrays on different CUDA devices {sorted(devices)}: the input, the states and the "
                             "layer's parameters must be on one device")
        if devices and cupy.cuda.Device().id not in devices:
            raise ValueError(f"the arrays are on CUDA device {devices.pop()} but the current device is "
                             f"{cupy.cuda.Device().id}: use `with cupy.cuda.Device(n):`")
        return _cuda_module(emulated=False), cupy
    name = current_backend()
    if name == "cuda_emu":
        return _cuda_module(emulated=True), np
    if name == "cuda":
        raise TypeError("the cuda backend runs CuPy arrays: pass cupy arrays (and move the layer with .to('cuda'))")
    return None
