"""The kernels a layer runs on, behind one interface: the CPU kernels (rnnfast._C) or the CUDA kernels
(rnnfast._cuda on CuPy arrays, rnnfast._cuda_emu, their host emulation, under use_backend("cuda_emu")).

functional.py writes the data flow once against this interface:

    project(x, w_ih, packed_ih, out)       out = x @ W_ih^T, the time-parallel input GEMM
    forward_call(...) / run_forward(calls)      the fused recurrence, every step in one call
    backward_call(...) / run_backward(calls)    its BPTT
    addmm(out, a, b), matmul(a, b, out)          the weight-gradient and dx GEMMs
    bias_grads(dxg, dhg, grads)                  what the kernels leave of the bias gradients
    recurrent_weights(packed_hh, packed_hr, w_hh, w_hr)   what a call takes as W_hh / W_hr: packed (CPU) or
                                                           as is (CUDA)
    saved_weights(weight_hh, weight_hr)          what a training forward keeps of them for its backward

Both backends validate every call in C++ (shapes, dtypes, contiguity, writability) with messages naming the
argument; these classes only allocate and route.
"""
from __future__ import annotations

import numpy as np

from . import _C, _tuning, backend


class CpuKernels:
    """The CPU kernels: weights packed once and cached (functional.packed_weights), the recurrence and the
    bias gradients in the kernels, the time-parallel GEMMs on rnnfast's own threaded GEMM or, where the tuner
    measured NumPy's BLAS clearly faster on this machine (rnnfast/_tuning.py), on numpy.matmul."""

    xp = np
    can_run_directions_together = True
    reuses_scratch = True  # see functional._scratch

    @staticmethod
    def project(x, w_ih, packed_ih, out):
        if x.shape[0]:
            if _tuning.route("project", x.dtype) == "numpy":
                np.matmul(x, w_ih.T, out=out)
            else:
                _C.gemm_packed(x, packed_ih, out, False, backend._threads_arg())
        return out

    @staticmethod
    def recurrent_weights(packed_hh, packed_hr, w_hh, w_hr):
        return packed_hh, packed_hr

    @staticmethod
    def saved_weights(weight_hh, weight_hr):
        """Packed weights are immutable (a changed parameter is packed anew), so backward keeps them as they are."""
        return weight_hh, weight_hr

    forward_call = staticmethod(_C.ForwardCall)

    @staticmethod
    def backward_call(*, dh_n, dc_n, dh0, dc0, **kw):
        return _C.BackwardCall(dh_n=dh_n, dc_n=dc_n, dh0=dh0, dc0=dc0, **kw)

    @staticmethod
    def run_forward(calls):
        _C.forward(calls, backend._threads_arg())

    @staticmethod
    def run_backward(calls):
        _C.backward(calls, backend._threads_arg())

    @staticmethod
    def addmm(out, a, b):
        if _tuning.route("addmm", out.dtype) == "numpy":
            out += np.matmul(a, b)
        else:
            backend.matmul(a, b, out=out, accumulate=True)

    @staticmethod
    def matmul(a, b, out):
        if _tuning.route("matmul", out.dtype) == "numpy":
            return np.matmul(a, b, out=out)
        return backend.matmul(a, b, out=out)

    @staticmethod
    def bias_grads(dxg, dhg, grads):
        """The CPU kernels add the bias gradients themselves."""


class CudaKernels:
    """The CUDA kernels on CuPy arrays (or NumPy arrays, emulated): W_hh read as it is, the GEMMs and the
    bias-gradient column sums on the array library (cuBLAS), launches on the current stream."""

    can_run_directions_together = False
    reuses_scratch = False

    def __init__(self, module, xp):
        self.module, self.xp = module, xp

    def project(self, x, w_ih, packed_ih, out):
        if x.dtype != np.float32:
            raise TypeError(f"x: the CUDA kernels run float32, got {x.dtype}")
        return self.xp.matmul(x, w_ih.T, out=out)

    @staticmethod
    def recurrent_weights(packed_hh, packed_hr, w_hh, w_hr):
        if w_hh is None:
            raise ValueError("w_hh: the CUDA kernels need W_hh")
        return w_hh, w_hr

    @staticmethod
    def saved_weights(weight_hh, weight_hr):
        """The live parameters may change before backward: it keeps copies."""
        return weight_hh.copy(), None if weight_hr is None else weight_hr.copy()

    def forward_call(self, **kw):
        return self.module.ForwardCall(**kw)

    def backward_call(self, *, dh_n, dc_n, dh0, dc0, db_ih, db_hh, **kw):
        # The CUDA kernels carry dh (and dc) in place: in, the gradient w.r.t. h_n; out, w.r.t. h0. The bias
        # gradients are left to bias_grads.
        dh0[...] = 0 if dh_n is None else dh_n
        if dc0 is not None:
            dc0[...] = 0 if dc_n is None else dc_n
        return self.module.BackwardCall(dh=dh0, dc=dc0, **kw)

    def _options(self):
        o = backend.cuda_options
        stream = int(self.xp.cuda.get_current_stream().ptr) if self.xp is not np else 0
        return dict(stream=stream, path=o["path"], units_per_block=o["units_per_block"], threads=o["threads"])

    def run_forward(self, calls):
        for call in calls:
            self.module.forward(call, **self._options())

    def run_backward(self, calls):
        for call in calls:
            self.module.backward(call, **self._options())

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


_cpu = CpuKernels()


def kernels_for(*arrays):
    """The backend that runs these arrays: CUDA for CuPy arrays (or under use_backend("cuda_emu")), else
    the CPU. Mixed NumPy/CuPy arrays, or arrays on several devices, raise (backend.device_kernels)."""
    device = backend.device_kernels(*arrays)
    return _cpu if device is None else CudaKernels(*device)
