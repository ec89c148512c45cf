"""Arrays for the kernels: the namespace of an array (NumPy or CuPy), cache-line aligned buffers, buffers reused
from call to call, and poisoned outputs for tests."""
from __future__ import annotations

import collections
import math
import threading

import numpy as np

# Tests set this to fill every output with NaN before a kernel runs, so that an element the kernel forgets to
# write cannot pass unnoticed.
poison_outputs = False


def is_cupy_array(a) -> bool:
    """Whether a is a CuPy array (checked without importing CuPy)."""
    if type(a) is np.ndarray:  # the common case, asked several times a layer call: no module-name lookup
        return False
    return type(a).__module__.split(".")[0] == "cupy"


def namespace(a):
    """The array namespace of a: NumPy, or CuPy for device arrays."""
    if is_cupy_array(a):
        import cupy
        return cupy
    return np


def aligned_empty(shape, dtype, align=64):
    """np.empty, but starting on a cache line where the array is large. NumPy's large arrays start 16 bytes
    past a page (malloc's header), so every 64-byte vector the kernels load or store would straddle two lines
    (measured here: the step walk of an LSTM backward at H=64 B=64 took 11 instead of 19 thousand TSC cycles a
    step once its buffers started on a line). Below 64 KB the few vectors do not pay for the 1-2 us the
    alignment costs in Python (a batch-1 call is tens of microseconds)."""
    dtype = np.dtype(dtype)
    n = math.prod(shape) * dtype.itemsize
    if n < 1 << 16:
        return np.empty(shape, dtype=dtype)
    buf = np.empty(n + align, dtype=np.uint8)
    off = -buf.ctypes.data % align
    return buf[off:off + n].view(dtype).reshape(shape)


def empty(xp, shape, dtype):
    """A new output buffer in namespace xp (aligned for NumPy), NaN-filled when poison_outputs is set."""
    a = aligned_empty(shape, dtype) if xp is np else xp.empty(shape, dtype=dtype)
    if poison_outputs:
        a.fill(np.nan)
    return a


_scratch_local = threading.local()


def scratch(key, shape, dtype):
    """A NumPy buffer reused from call to call (per thread, per key): the input projection and the gate
    gradients, which no caller ever sees and nothing keeps after the call. Fresh large arrays cost a page fault
    per 4 KB on first touch (measured here: 3 ms for the 52 MB input projection of an LSTM at B=64, H=512, T=100,
    6% of its forward); the pool keeps the last buffer of each key alive instead."""
    pool = _scratch_local.__dict__.setdefault("pool", {})
    a = pool.get(key)
    if a is None or a.shape != tuple(shape) or a.dtype != dtype:
        a = pool[key] = aligned_empty(shape, dtype)
    if poison_outputs:
        a.fill(np.nan)
    return a


# A training forward's workspace is kept by its record until backward is done with it; then the next forward may
# take it. Fresh, it costs a page fault per 4 KB on first touch (an LSTM at B=64, H=512, T=100: 78 MB, 3 ms of
# a 150 ms training step). At most _WS_KEEP dead workspaces wait, the most recent first.
#
# No lock: recycle runs from a weakref finalizer, which the garbage collector may call at any allocation, also
# inside workspace() on the same thread (a record kept alive by a reference cycle). With a lock around the list
# that deadlocked (seen in CI). A bounded deque's appendleft and remove are atomic under the GIL; the arrays sit
# in holders that compare by identity, since deque.remove compares with ==.
_WS_KEEP = 2


class _Held:
    __slots__ = ("array",)

    def __init__(self, array):
        self.array = array


_ws_free: collections.deque = collections.deque(maxlen=_WS_KEEP)


def workspace(shape, dtype):
    """A NumPy (N, slots*H) workspace: one a dead record left, when one of this shape and dtype waits, else new."""
    shape = tuple(shape)
    for held in list(_ws_free):  # a snapshot: a finalizer may add to the deque meanwhile
        a = held.array
        if a.shape == shape and a.dtype == dtype:
            try:
                _ws_free.remove(held)
            except ValueError:  # another thread took it first
                continue
            if poison_outputs:
                a.fill(np.nan)
            return a
    return empty(np, shape, dtype)


def recycle(ws):
    """Offers a workspace no one holds any more to the next training forward."""
    _ws_free.appendleft(_Held(ws))  # a full deque drops its oldest
