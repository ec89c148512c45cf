"""The compiled modules, loaded in one place: ``_C`` (the CPU kernels, always built) and, on demand, the CUDA
kernels (``_cuda``, built where nvcc was found) or their host emulation (``_cuda_emu``, always built)."""
from __future__ import annotations

from _rnnfast import _C  # noqa: F401 - re-exported: every engine module reads the CPU kernels from here

__all__ = ["_C", "cuda_module", "CELLS"]

# Every cell's gate count, workspace slots and the facts the data flow asks, as the kernels define them
# (csrc/common/cells.h). "gru" is torch's GRU (linear_before_reset=True); "gru_original" the original form.
CELLS = _C.cell_info()


def cuda_module(emulated: bool):
    """rnnfast._cuda_emu (emulated=True) or rnnfast._cuda; RuntimeError saying why when it is missing."""
    try:
        if emulated:
            from _rnnfast import _cuda_emu as mod
        else:
            from _rnnfast import _cuda as mod
    except ImportError as e:
        what = "rnnfast._cuda_emu" if emulated else "rnnfast._cuda (built only where nvcc was found at install time)"
        raise RuntimeError(f"{what} is not available: {e}") from None
    return mod
