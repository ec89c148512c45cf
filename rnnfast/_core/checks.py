"""The argument rules shared by the layers and the cells (torch.nn's rules where torch has them).

One place decides what a size, a dtype, a seed, a dropout probability and an input array may be, so that
``rnnfast.LSTM`` and ``rnnfast.LSTMCell`` accept and refuse the same things with the same messages:

* sizes are ints (not bools), bounded below as torch bounds them and above by :data:`MAX_SIZE` and
  :data:`MAX_LAYERS`; a module whose parameters could not fit in memory is refused (MemoryError) before
  anything is allocated;
* ``dtype=None`` means float32, torch's default dtype (``torch.get_default_dtype()``); "bfloat16" (or
  ``ml_dtypes.bfloat16``) gives bf16 parameters and arrays, computed in float32 (_core/bf16.py);
* ``seed`` is None, an int (not a bool) or a ``numpy.random.Generator``;
* ``dropout`` is a real number in [0, 1] (torch's range; 1 drops every inter-layer activation);
* an input array may be an ndarray subclass such as ``np.matrix`` (used as the plain array it holds), but
  not a masked array (the mask would be ignored silently).
"""
from __future__ import annotations

import math
import numbers
import os

import numpy as np

from .arrays import is_cupy_array
from .bf16 import BFLOAT16

# Each size of a layer or cell at most this: the kernels index rows with 32-bit counts in places, and no
# size near it could be allocated anyway.
MAX_SIZE = 2**31 - 1
# More layers than this is not a network anyone trains; it bounds the constructor's Python work (each layer
# is a few parameter objects) so that a typo such as num_layers=10**6 fails at once instead of hanging.
MAX_LAYERS = 10_000

_DTYPES = (np.dtype(np.float32), np.dtype(np.float64), BFLOAT16)
_DTYPE_NAMES = "float32, float64 or bfloat16"


def is_float_dtype(dtype) -> bool:
    """Whether arrays of `dtype` hold real floating-point numbers (NumPy's float kinds, and ml_dtypes' bfloat16,
    whose NumPy kind is "V")."""
    return np.dtype(dtype).kind == "f" or dtype == BFLOAT16


def check_array(value, name: str, dtype, owner: str = "layer") -> np.ndarray:
    """value must be a NumPy (or CuPy) array of the module's dtype: TypeError naming the argument otherwise.
    An ndarray subclass such as np.matrix is used as the plain ndarray it holds (its operators differ); a
    masked array is refused (its mask would be ignored)."""
    if isinstance(value, np.ndarray) and type(value) is not np.ndarray:
        if isinstance(value, np.ma.MaskedArray):
            raise TypeError(f"{name}: masked arrays are not supported (the mask would be ignored); pass "
                            f"{name}.filled(...) or a plain numpy.ndarray")
        value = np.asarray(value)  # np.matrix and friends: the same memory, as a plain ndarray
    if not isinstance(value, np.ndarray) and not is_cupy_array(value):
        raise TypeError(f"{name}: expected a numpy.ndarray (or a cupy.ndarray), got {type(value).__name__}")
    if value.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype} (the {owner}'s dtype), got {value.dtype}")
    return value


def check_size(name: str, value, minimum: int = 1, maximum: int = MAX_SIZE) -> int:
    """value as an int in [minimum, maximum]; TypeError (not an int, or a bool) or ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        what = "greater than zero" if minimum == 1 else f">= {minimum}"
        raise ValueError(f"{name} must be {what}, got {value}")
    if value > maximum:
        raise ValueError(f"{name} must be at most {maximum}, got {value}")
    return int(value)


def check_dtype(dtype) -> np.dtype:
    """float32, float64 or bfloat16 (the name, or ml_dtypes.bfloat16) as a numpy dtype; None means float32
    (torch's default dtype)."""
    if dtype is None:
        return _DTYPES[0]
    if isinstance(dtype, str) and dtype == "bfloat16":
        return BFLOAT16
    try:
        dt = np.dtype(dtype)
    except (TypeError, ValueError):
        raise TypeError(f"dtype must be {_DTYPE_NAMES}, got {dtype!r}") from None
    if dt not in _DTYPES:
        raise TypeError(f"dtype must be {_DTYPE_NAMES}, got {dt}")
    return dt


def check_seed(seed) -> np.random.Generator:
    """The generator a seed stands for: None (fresh entropy), an int >= 0 (not a bool) or a Generator."""
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is not None and (isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral)):
        raise TypeError(f"seed must be None, an int or a numpy.random.Generator, got {type(seed).__name__}")
    if seed is not None and seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return np.random.default_rng(None if seed is None else int(seed))


def check_dropout(value, name: str = "dropout") -> float:
    """A dropout probability: a real number in [0, 1] (torch's range), as a float."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number in [0, 1], got {type(value).__name__}")
    if not 0 <= value <= 1:  # also refuses NaN
        raise ValueError(f"{name} probability has to be between 0 and 1, but got {value!r}")
    return float(value)


def check_recurrent_dropout(value, cell: str, proj_size: int) -> float:
    """recurrent_dropout: a probability in [0, 1] (1 zeros every recurrent input, as dropout=1 does), for every
    cell but the LSTM with a projection (whose kernels have none)."""
    value = check_dropout(value, "recurrent_dropout")
    if value and proj_size:
        raise ValueError(f"recurrent_dropout: the kernels have no recurrent dropout for an LSTM with proj_size > 0; "
                         f"got recurrent_dropout={value!r}")
    return value


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not on a POSIX system
        return None


def check_parameter_memory(owner: str, count: int, dtype: np.dtype, sizes: str) -> None:
    """MemoryError, before anything is allocated, when `count` parameters (and as many gradients) of `dtype`
    cannot fit in the machine's memory. sizes: the arguments that decided it, for the message."""
    need = 2 * count * np.dtype(dtype).itemsize
    have = _memory_bytes()
    if have is not None and need > have:
        raise MemoryError(f"{owner}({sizes}): the parameters and their gradients would take "
                          f"{need / 2**30:.1f} GiB, more than this machine's {have / 2**30:.1f} GiB of memory")



def uniform_bound(hidden_size: int) -> float:
    """torch.nn's initialisation bound 1/sqrt(hidden_size) (0 for hidden_size=0, where nothing is drawn)."""
    return 1.0 / math.sqrt(hidden_size) if hidden_size else 0.0


def check_lengths(lengths, T: int, B: int):
    """lengths (any integer array, a torch tensor or a CuPy array) as an int64 NumPy array of B values in
    [1, T], or None (every sequence T long)."""
    if lengths is None:
        return None
    if hasattr(lengths, "detach") and hasattr(lengths, "cpu"):  # a torch tensor
        lengths = lengths.detach().cpu().numpy()
    elif is_cupy_array(lengths):  # the step table is host data: one small copy
        lengths = lengths.get()
    arr = np.asarray(lengths)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"lengths: expected integers, got dtype {arr.dtype}")
    if arr.shape != (B,):
        raise ValueError(f"lengths: expected one length per batch element, shape ({B},), got {arr.shape}")
    if B and (arr.min() < 1 or arr.max() > T):
        raise ValueError(f"lengths: every length must be in [1, {T}] (T), got min {arr.min()} and max {arr.max()}")
    return arr.astype(np.int64)
