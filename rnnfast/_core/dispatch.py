"""The one place that decides which kernels a call runs on: every front end (layers, cells, rnnfast.torch)
asks ``kernels_for`` with the arrays of its call and builds its weights through the object it gets
(``stack_weights``), so the device, the packing of W_hh and the first-use tuning are decided here alone.

Which kernels: "cpu" (the fused CPU kernels), "cuda" (rnnfast._cuda, chosen whenever the arrays are CuPy
arrays) or "cuda_emu" (the CUDA kernel sources compiled for the host, on NumPy arrays, for testing the CUDA
kernels without a GPU), chosen per thread with ``use_backend``.
"""
from __future__ import annotations

import contextlib
import threading

from . import tuning
from .arrays import is_cupy_array
from .ext import cuda_module
from .kernels import CpuKernels, CudaKernels, LayerWeights

BACKENDS = ("cpu", "cuda", "cuda_emu")

# Launch options of the CUDA kernels (rnnfast.backend.cuda_options is this dict): path 0 = automatic (persistent
# when W_hh's slice fits on chip and the grid can be co-resident), 1 = force persistent, 2 = force per-step;
# units_per_block 0 = one block per SM; threads per block.
cuda_options = {"path": 0, "units_per_block": 0, "threads": 128}

_local = threading.local()
_cpu = CpuKernels()


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
    if name not in BACKENDS:
        raise ValueError(f"use_backend: name must be one of {BACKENDS}, got {name!r}")
    if name == "cuda_emu":
        cuda_module(emulated=True)  # fail here, not inside a layer, when it is missing
    previous = current_backend()
    _local.name = name
    try:
        yield
    finally:
        _local.name = previous


def _cupy_kernels(present):
    import cupy
    devices = {a.device.id for a in present}
    if len(devices) > 1:
        raise ValueError(f"arrays on different CUDA devices {sorted(devices)}: the input, the states and the "
                         "layer's parameters must be on one device")
    if devices and cupy.cuda.Device().id not in devices:
        raise ValueError(f"the arrays are on CUDA device {devices.pop()} but the current device is "
                         f"{cupy.cuda.Device().id}: use `with cupy.cuda.Device(n):`")
    return CudaKernels(cuda_module(emulated=False), cupy, cuda_options)


def kernels_for(*arrays):
    """The kernels that run a call on these arrays (None entries are ignored): CUDA for CuPy arrays, the emulated
    CUDA kernels for NumPy arrays under use_backend("cuda_emu"), else the CPU kernels (tuned for the arrays'
    dtype at its first call). Mixed NumPy/CuPy arrays, or arrays on several devices, raise."""
    present = [a for a in arrays if a is not None]
    flags = {is_cupy_array(a) for a in present}
    if flags == {True, False}:
        raise TypeError("NumPy and CuPy arrays are mixed: the input, the states and the layer's parameters "
                        "must all live on the same side (move the layer with .to('cuda') or .to('cpu'))")
    if flags == {True}:
        return _cupy_kernels(present)
    name = current_backend()
    if name == "cuda_emu":
        import numpy as np
        return CudaKernels(cuda_module(emulated=True), np, cuda_options)
    if name == "cuda":
        raise TypeError("the cuda backend runs CuPy arrays: pass cupy arrays (and move the layer with .to('cuda'))")
    if present:
        tuning.ensure(present[0].dtype)
    return _cpu


def suffix(layer: int, direction: int) -> str:
    """torch.nn's parameter-name suffix of a layer and direction: _l0, _l0_reverse, _l1, ..."""
    return f"_l{layer}" + ("_reverse" if direction else "")


KINDS = {"weight_ih": "w_ih", "weight_hh": "w_hh", "bias_ih": "b_ih", "bias_hh": "b_hh", "weight_hr": "w_hr"}


def stack_weights(kernels, cell, arrays, grads, suffixes, cache, bfloat16=False) -> list:
    """[layer][direction] -> LayerWeights, as `kernels` take them.

    arrays / grads map torch.nn's parameter names (``weight_ih`` + suffix, ...) to the live arrays and to the
    arrays their gradients are added into (a missing name: None); suffixes[layer][direction] is the name suffix
    (``suffix(l, d)`` for layers, "" for a cell); cache is the caller's own dict of packed weights."""
    out = []
    for layer in suffixes:
        dirs = []
        for sfx in layer:
            a = {kind: arrays.get(name + sfx) for name, kind in KINDS.items()}
            g = {kind: grads.get(name + sfx) for name, kind in KINDS.items()}
            dirs.append(kernels.weights(cell, a, g, cache, sfx, bfloat16))
        out.append(dirs)
    return out


__all__ = ["BACKENDS", "cuda_options", "current_backend", "use_backend", "kernels_for", "suffix", "stack_weights",
           "LayerWeights"]
