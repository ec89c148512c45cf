"""How many threads a kernel call may use: the state behind rnnfast.set_num_threads / get_num_threads.

The kernels take one integer (``kernel_arg()``): n = at most n threads (a small problem uses fewer), -n = exactly
n (tests of the threaded paths on small shapes).
"""
from __future__ import annotations

import numpy as np

from . import cpus

# With exact=True a test may ask for more threads than cores (to run the threaded split on a small machine),
# but not for more than this: every thread is started for each kernel call.
MAX_EXACT_THREADS = 256


def default_threads() -> int:
    """The CPUs this process may use: its affinity, capped by its cgroup's CPU quota (cpus.py)."""
    return cpus.available()


_state = {"n": default_threads(), "exact": False}


def set_num_threads(n: int, exact: bool = False) -> None:
    """See rnnfast.set_num_threads."""
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"set_num_threads: n must be an int, got {type(n).__name__}")
    if not isinstance(exact, (bool, np.bool_)):
        raise TypeError(f"set_num_threads: exact must be a bool, got {type(exact).__name__}")
    n = int(n)
    if n < 1:
        raise ValueError(f"set_num_threads: n must be >= 1, got {n}")
    if exact and n > MAX_EXACT_THREADS:
        raise ValueError(f"set_num_threads: n must be at most {MAX_EXACT_THREADS} with exact=True, got {n}")
    _state["n"], _state["exact"] = (n if exact else min(n, default_threads())), bool(exact)


def get_num_threads() -> int:
    return _state["n"]


def kernel_arg() -> int:
    """The kernels' thread argument: n = at most n, -n = exactly n."""
    return -_state["n"] if _state["exact"] else _state["n"]
