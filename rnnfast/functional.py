"""Orchestration of recurrent layers around the kernels: the only place where the data flow is written.

One layer, one direction (DESIGN.md, "Data flow"), over packed tokens (see `Plan`):

    forward:  xp = x W_ih^T                       one GEMM for all tokens
              y, h_n, c_n, ws = recurrence(xp)     one kernel call for all steps (adds the biases)
    backward: dxg, dhg, dh0, dc0, db = reverse recurrence(dy, dh_n, dc_n)
              dW_ih += dxg^T x;  dW_hh += dhg^T h_prev;  dx = dxg W_ih

A stack (`stack_forward` / `stack_backward`) runs layers bottom-up and, for a bidirectional layer, a
forward and a reverse direction whose outputs are concatenated per token; dropout sits between layers.
"""
from __future__ import annotations

import collections
import math
import threading
import weakref
from dataclasses import dataclass, field

import numpy as np

from . import _C, backend
from ._backends import kernels_for

# Every cell's gate count and workspace slots, as the kernels define them (csrc/common/cells.h).
# "gru" is torch's GRU (linear_before_reset=True); "gru_original" the original form (False).
CELLS = _C.cell_info()
GATES = {name: info["gates"] for name, info in CELLS.items()}

# Tests set this to fill every output with NaN before a kernel runs, so that an element the kernel
# forgets to write cannot pass unnoticed.
poison_outputs = False


def workspace_slots(cell: str, projection: bool) -> int:
    """Per-unit values a training forward keeps for backward (the workspace is (N, slots * H))."""
    return CELLS[cell]["proj_slots" if projection else "slots"]


def slot(ws, cell: str, name: str, H: int):
    """The (N, H) view of one named slot of a workspace (the Slot enums of csrc/common/cells.h)."""
    k = CELLS[cell]["slot_names"].index(name)
    return ws[:, k * H:(k + 1) * H]


def _aligned_empty(shape, dtype, align=64):
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


def _empty(kernels, shape, dtype):
    xp = kernels.xp
    a = _aligned_empty(shape, dtype) if xp is np else xp.empty(shape, dtype=dtype)
    if poison_outputs:
        a.fill(np.nan)
    return a


_scratch_local = threading.local()


def _scratch(kernels, key, shape, dtype):
    """An internal buffer reused from call to call (per thread, per key) where the backend allows it (the
    CPU): the input projection and the gate gradients, which no caller ever sees and nothing keeps after the
    call. Fresh large arrays cost a page fault per 4 KB on first touch (measured here: 3 ms for the 52 MB
    input projection of an LSTM at B=64, H=512, T=100, 6% of its forward); the pool keeps the last buffer
    of each key alive instead."""
    if not kernels.reuses_scratch:
        return _empty(kernels, shape, dtype)
    pool = _scratch_local.__dict__.setdefault("pool", {})
    a = pool.get(key)
    if a is None or a.shape != tuple(shape) or a.dtype != dtype:
        a = pool[key] = _aligned_empty(shape, dtype)
    if poison_outputs:
        a.fill(np.nan)
    return a


def _xp(a):
    """The array namespace of a (NumPy, or CuPy for device arrays)."""
    if backend.is_cupy_array(a):
        import cupy
        return cupy
    return np


def packed_weights(w: np.ndarray, gates: int, cached: "_C.PackedWeights | None",
                   bfloat16: bool = False) -> "_C.PackedWeights":
    """A weight packed for the kernels (gates=G: a W_hh; gates=0: a W_ih for x @ W_ih^T; bfloat16: a float32
    W_hh rounded to bf16 for inference forwards, see layers' set_inference_weights). Reuses `cached` only
    while it is of that kind and still holds exactly these bytes, so an in-place update is never served
    stale."""
    if cached is not None and cached.bfloat16 == bfloat16 and cached.matches(w, backend._threads_arg()):
        return cached
    return _C.PackedWeights(w, gates, bfloat16)


# A training forward's workspace is kept by its Saved until backward is done with it; then the next forward may
# take it. Fresh, it costs a page fault per 4 KB on first touch (an LSTM at B=64, H=512, T=100: 78 MB, 3 ms of
# a 150 ms training step). At most _WS_KEEP dead workspaces wait, the most recent first.
#
# No lock: _recycle runs from a weakref finalizer, which the garbage collector may call at any allocation, also
# inside _workspace on the same thread (a record kept alive by a reference cycle). With a lock around the list
# that deadlocked (seen in CI). A bounded deque's appendleft and remove are atomic under the GIL; the arrays sit
# in slots that compare by identity, since deque.remove compares with ==.
_WS_KEEP = 2


class _Slot:
    __slots__ = ("array",)

    def __init__(self, array):
        self.array = array


_ws_free: collections.deque = collections.deque(maxlen=_WS_KEEP)


def _workspace(kernels, shape, dtype):
    """A (N, slots*H) workspace: one a dead Saved left, when one of this shape and dtype waits, else new."""
    if not kernels.reuses_scratch:
        return _empty(kernels, shape, dtype)
    shape = tuple(shape)
    for slot in list(_ws_free):  # a snapshot: a finalizer may add to the deque meanwhile
        a = slot.array
        if a.shape == shape and a.dtype == dtype:
            try:
                _ws_free.remove(slot)
            except ValueError:  # another thread took it first
                continue
            if poison_outputs:
                a.fill(np.nan)
            return a
    return _empty(kernels, shape, dtype)


def _recycle(ws):
    _ws_free.appendleft(_Slot(ws))  # a full deque drops its oldest


# ----------------------------------------------------------------------------------------------- tokens
class Plan:
    """Where the kernels' tokens come from.

    The kernels take sequences packed like a torch PackedSequence: time-major, and at each step only the
    rows still running, longest sequences first, so that padded steps cost nothing. `batch_sizes[t]` is the
    number of rows running at step t. Token k of the forward direction is (src_t[k], src_b[k]) of the
    caller's (T, B) grid; the reverse direction runs each sequence from its own last step, and its token k
    is the forward token `reverse_index[k]`. Without lengths (every sequence T long) the tokens are the plain
    (T*B) grid in order and no gather is needed (`dense`).
    """

    def __init__(self, T: int, B: int, lengths: np.ndarray | None):
        self.T, self.B = T, B
        self.dense = lengths is None or bool(np.all(lengths == T))
        if self.dense:
            self.order = None
            self.batch_sizes = np.full(T, B, dtype=np.int64)
            self.N = T * B
            return
        order = np.argsort(-lengths, kind="stable")
        L = lengths[order]
        mask = np.arange(T)[:, None] < L[None, :]
        ts, js = np.nonzero(mask)  # t-major: the packed order
        self.order = order
        self.batch_sizes = np.ascontiguousarray(mask.sum(axis=1)[: int(L[0])], dtype=np.int64)
        self.N = int(ts.size)
        self.src_t, self.src_b = ts, order[js]
        off = np.concatenate(([0], np.cumsum(self.batch_sizes)))
        self._ts, self._js, self._off = ts, js, off

    @property
    def reverse_index(self) -> np.ndarray:
        """Token k of the reverse direction is forward token reverse_index[k]."""
        if not hasattr(self, "_rev"):
            if self.dense:
                t = np.arange(self.T)[::-1]
                self._rev = (t[:, None] * self.B + np.arange(self.B)[None, :]).reshape(-1)
            else:
                lengths_sorted = np.bincount(self._js, minlength=self.B)
                src_t = lengths_sorted[self._js] - 1 - self._ts
                self._rev = self._off[src_t] + self._js
        return self._rev

    @property
    def prev_index(self) -> np.ndarray | None:
        """For the tokens of steps 1.. (in order), the token of the same row one step earlier."""
        if self.dense:
            return None
        if not hasattr(self, "_prev"):
            later = self._ts > 0
            self._prev = self._off[self._ts[later] - 1] + self._js[later]
        return self._prev

    def gather(self, x_tm: np.ndarray) -> np.ndarray:
        """(T, B, F) -> tokens (N, F), C-contiguous."""
        if self.dense:
            return np.ascontiguousarray(x_tm).reshape(self.N, x_tm.shape[2])
        return np.ascontiguousarray(x_tm[self.src_t, self.src_b])

    def scatter(self, tokens: np.ndarray) -> np.ndarray:
        """tokens (N, F) -> (T, B, F), zeros where a sequence has ended."""
        F = tokens.shape[1]
        if self.dense:
            return tokens.reshape(self.T, self.B, F)
        out = _xp(tokens).zeros((self.T, self.B, F), dtype=tokens.dtype)
        out[self.src_t, self.src_b] = tokens
        return out

    def sort_rows(self, s: np.ndarray | None) -> np.ndarray | None:
        """A (B, H) state in the caller's batch order -> the kernels' (longest first), C-contiguous."""
        if s is None or self.order is None:
            return s
        return np.ascontiguousarray(s[self.order])

    def unsort_rows(self, s: np.ndarray | None) -> np.ndarray | None:
        if s is None or self.order is None:
            return s
        out = np.empty_like(s)
        out[self.order] = s
        return out


# ----------------------------------------------------------------------------------------------- one layer
@dataclass
class Saved:
    """What a training forward of one layer, one direction keeps for backward."""

    kernels: object  # the backend that ran it (_backends.CpuKernels or CudaKernels)
    cell: str
    shape3: tuple | None  # (T, B) when the forward took x as (T, B, I): backward answers in that form
    batch_sizes: np.ndarray
    prev_index: np.ndarray | None  # see Plan.prev_index; None when rows never end early
    x: np.ndarray  # (N, I) tokens, our own copy
    h0: np.ndarray
    c0: np.ndarray | None
    w_ih: np.ndarray  # our own copy: backward uses the weights of the forward it differentiates
    weight_hh: object  # what the backward call takes: the packed W_hh (CPU, immutable) or a copy (CUDA)
    weight_hr: object  # the same for an LSTM's projection W_hr, or None
    y: np.ndarray
    ws: np.ndarray | None
    H: int


def layer_forward(cell, x, h0, c0, w_ih, b_ih, b_hh, packed_ih, packed, training, batch_sizes=None,
                  prev_index=None, packed_hr=None, w_hh=None, w_hr=None):
    """One layer, one direction; packed_ih, packed (and packed_hr, an LSTM's projection W_hr packed with
    gates=1) come from packed_weights().

    x is (T, B, I) (every sequence T long) or, with batch_sizes, packed tokens (N, I); y comes back in the
    same form. h0 (B, S) and c0 (B, H) are in the kernels' row order, S = proj_size or H.
    Returns (y, h_n, c_n, saved); saved is None unless training. On the CUDA backends (CuPy arrays, or
    use_backend("cuda_emu")) the packed weights are unused and w_hh is read as it is.
    """
    kernels = kernels_for(x, h0, c0, w_ih, w_hh, w_hr, b_ih, b_hh)
    call, finish = _forward_setup(kernels, cell, x, h0, c0, w_ih, b_ih, b_hh, packed_ih, packed, training,
                                  batch_sizes, prev_index, packed_hr, w_hh, w_hr)
    kernels.run_forward([call])
    return finish()


def _as_tokens(x, batch_sizes):
    """x (T, B, I), every sequence T long, as tokens (T*B, I) with their batch sizes and (T, B); tokens
    (N, I) with batch_sizes pass through, with None."""
    if x.ndim != 3:
        return x, batch_sizes, None
    T, B, I = x.shape
    return x.reshape(T * B, I), np.full(T, B, dtype=np.int64), (T, B)


def _forward_setup(kernels, cell, x, h0, c0, w_ih, b_ih, b_hh, packed_ih, packed, training, batch_sizes,
                   prev_index, packed_hr, w_hh, w_hr, slot=0):
    """The input GEMM and the outputs of a forward: returns (the kernel call, finish() -> layer_forward's
    result). Split so that the two directions of a layer can run in one kernel call."""
    x, batch_sizes, shape3 = _as_tokens(x, batch_sizes)
    N = x.shape[0]
    B = h0.shape[0]
    G = GATES[cell]
    H = w_ih.shape[0] // G
    S = h0.shape[1]
    projection = w_hr is not None or packed_hr is not None
    dtype = x.dtype
    weight_hh, weight_hr = kernels.recurrent_weights(packed, packed_hr, w_hh, w_hr)
    xp = kernels.project(x, w_ih, packed_ih, _scratch(kernels, ("xp", slot), (N, G * H), dtype))
    y = _empty(kernels, (N, S), dtype)
    h_n = _empty(kernels, (B, S), dtype)
    c_n = _empty(kernels, (B, H), dtype) if cell == "lstm" else None
    slots = workspace_slots(cell, projection)
    ws = _workspace(kernels, (N, slots * H), dtype) if training and slots else None
    call = kernels.forward_call(cell=cell, batch_sizes=batch_sizes, xp=xp, h0=h0, c0=c0, weight_hh=weight_hh,
                                b_ih=b_ih, b_hh=b_hh, y=y, h_n=h_n, c_n=c_n, ws=ws, weight_hr=weight_hr)

    def finish():
        saved = None
        if training:
            saved = Saved(kernels, cell, shape3, batch_sizes, prev_index, x, h0, c0, w_ih.copy(),
                          *kernels.saved_weights(weight_hh, weight_hr), y, ws, H)
            if ws is not None and kernels.reuses_scratch:
                weakref.finalize(saved, _recycle, ws)  # no one else holds ws: it is free when saved dies
        return (y.reshape(*shape3, S) if shape3 else y), h_n, c_n, saved

    return call, finish


def layer_backward(saved: Saved, dy, dh_n, dc_n, grads):
    """BPTT through a training forward of one layer, one direction. dy is None or in the form of the
    forward's y; `grads` maps w_ih, w_hh, b_ih, b_hh (and w_hr) to the arrays the parameter gradients are
    added into (biases may be None). Returns (dx, dh0, dc0), dx in the form of the forward's x."""
    call, finish = _backward_setup(saved, dy, dh_n, dc_n, grads)
    saved.kernels.run_backward([call])
    return finish()


def _backward_setup(saved: Saved, dy, dh_n, dc_n, grads, slot=0):
    """The outputs of a backward and, in finish(), the time-parallel GEMMs after the kernel."""
    s, kernels = saved, saved.kernels
    N, I = s.x.shape
    H, S = s.H, s.y.shape[1]
    B = s.h0.shape[0]
    G = GATES[s.cell]
    dtype = s.x.dtype
    if dy is not None and dy.ndim == 3:
        dy = dy.reshape(N, S)
    if dy is not None and kernels.xp is not np:
        dy = kernels.xp.ascontiguousarray(dy)
    dxg = _scratch(kernels, ("dxg", slot), (N, G * H), dtype)
    dhg = _scratch(kernels, ("dhg", slot), (N, G * H), dtype) if s.cell == "gru" else None
    dh0 = _empty(kernels, (B, S), dtype)
    dc0 = _empty(kernels, (B, H), dtype) if s.cell == "lstm" else None
    dh_all = _scratch(kernels, ("dh_all", slot), (N, S), dtype) if s.weight_hr is not None else None
    call = kernels.backward_call(cell=s.cell, batch_sizes=s.batch_sizes, weight_hh=s.weight_hh, h0=s.h0, c0=s.c0,
                                 y=s.y, ws=s.ws, dy=dy, dh_n=dh_n, dc_n=dc_n, dxg=dxg, dhg=dhg, dh0=dh0, dc0=dc0,
                                 db_ih=grads["b_ih"], db_hh=grads["b_hh"], weight_hr=s.weight_hr, dh_all=dh_all)

    def finish():
        kernels.bias_grads(dxg, dhg, grads)
        _weight_grads(s, dxg, dhg, dh_all, grads)
        dx = _empty(kernels, (N, I), dtype)
        if N:
            kernels.matmul(dxg, s.w_ih, out=dx)
        return (dx.reshape(*s.shape3, I) if s.shape3 is not None else dx), dh0, dc0

    return call, finish


def _weight_grads(s: Saved, dxg, dhg, dh_all, grads):
    """The weight gradients after a backward kernel; dhg is None where it equals dxg, dh_all None without a
    projection."""
    N, B, H = s.x.shape[0], s.h0.shape[0], s.H
    if not N:
        return
    addmm = s.kernels.addmm
    dg = dhg if dhg is not None else dxg
    addmm(grads["w_ih"], dxg.T, s.x)
    # The recurrent product of a step read h_prev: h0 for the first step, then the same row's output one step
    # earlier. The original GRU's candidate gate (rows 2H:3H) read r*h_prev instead (its workspace slot
    # "rh"), and an LSTM projection's W_hr reads m_t (slot "m").
    rows = slice(0, 2 * H) if s.cell == "gru_original" else slice(None)
    dw_hh = grads["w_hh"][rows]
    addmm(dw_hh, dg[:B, rows].T, s.h0)
    if N > B:
        h_prev = s.y[: N - B] if s.prev_index is None else s.y[s.prev_index]
        addmm(dw_hh, dg[B:, rows].T, h_prev)
    if s.cell == "gru_original":
        addmm(grads["w_hh"][2 * H:], dg[:, 2 * H:].T, slot(s.ws, s.cell, "rh", H))
    if dh_all is not None:  # h_t = W_hr m_t
        addmm(grads["w_hr"], dh_all.T, slot(s.ws, s.cell, "m", H))


# ----------------------------------------------------------------------------------------------- stacks
@dataclass
class LayerWeights:
    """One layer, one direction: live parameter arrays, their gradients and the packed caches."""

    w_ih: np.ndarray
    w_hh: np.ndarray
    b_ih: np.ndarray | None
    b_hh: np.ndarray | None
    grads: dict
    packed_ih: "_C.PackedWeights | None"  # None on the CUDA backends, which read the weights as they are
    packed_hh: "_C.PackedWeights | None"
    packed_hr: "_C.PackedWeights | None" = None
    w_hr: np.ndarray | None = None  # the LSTM projection, if any


@dataclass
class StackSaved:
    plan: Plan
    directions: int
    layers: list = field(default_factory=list)  # per layer: list of Saved per direction
    masks: list = field(default_factory=list)  # per layer but the last: dropout mask or None
    in_features: list = field(default_factory=list)


def _directions_together(kernels, layer_weights) -> bool:
    """Whether the two directions of a layer run at once on the CPU, one thread each, rather than one after the
    other on every thread. A direction split over threads pays a barrier per step; run alone on one core it
    pays none but streams all of its W_hh from that core's L2, which pays while W_hh fits there. Measured
    (LSTM, 2 cores, best of alternating runs, ms, together vs one after the other, forward | backward):
    H=64 T=1000 B=1 0.70 vs 0.80 | 1.17 vs 2.03; H=128 B=1 0.27 vs 0.30 | 0.44 vs 0.49; H=128 B=64 9.0 vs
    8.8 | 16.5 vs 23.4; but H=256 B=1 (W_hh 1 MB) 1.05 vs 0.70 | 1.67 vs 1.30, and H=512 B=64 equal."""
    if len(layer_weights) != 2 or not kernels.can_run_directions_together or backend.get_num_threads() < 2:
        return False
    w = layer_weights[0].w_hh
    return w.size * w.itemsize <= 256 * 1024


def _run(run, calls, together):
    """Runs a layer's calls: at once (one kernel call, a thread per direction) or one after the other."""
    if together:
        run(calls)
    else:
        for call in calls:
            run([call])


def stack_forward(cell, x_tm, h0, c0, weights, plan: Plan, directions, training, dropout=0.0, rng=None):
    """A multi-layer, optionally bidirectional stack.

    x_tm (T, B, I) in the caller's batch order; h0 (L*D, B, S), c0 (L*D, B, H) or None (S = proj_size or H);
    weights[l][d] LayerWeights.
    Returns (y (T, B, D*S) zero past each sequence's end, h_n (L*D, B, S), c_n or None, saved or None).
    """
    L = len(weights)
    B = plan.B
    H, S = weights[0][0].w_hh.shape[0] // GATES[cell], weights[0][0].w_hh.shape[1]
    dtype = x_tm.dtype
    kernels = kernels_for(x_tm, h0, c0, *(v for lw in weights for w in lw for v in (w.w_ih, w.w_hh, w.w_hr)))
    xpm = kernels.xp
    lstm = cell == "lstm"
    h_n = xpm.empty((L * directions, B, S), dtype=dtype)
    c_n = xpm.empty((L * directions, B, H), dtype=dtype) if lstm else None
    saved = StackSaved(plan, directions) if training else None
    tokens = plan.gather(x_tm)
    prev_index = plan.prev_index
    for layer in range(L):
        dropped = training and dropout > 0 and layer < L - 1
        # One direction without dropout: the layer's output is the kernel's y itself (no copy).
        out = None if directions == 1 and not dropped else xpm.empty((plan.N, directions * S), dtype=dtype)
        saved_dirs = []
        setups = []
        for d in range(directions):
            k = layer * directions + d
            lw = weights[layer][d]
            inp = tokens if d == 0 else xpm.ascontiguousarray(tokens[plan.reverse_index])
            h0_k = plan.sort_rows(h0[k]) if h0 is not None else xpm.zeros((B, S), dtype=dtype)
            c0_k = (plan.sort_rows(c0[k]) if c0 is not None else xpm.zeros((B, H), dtype=dtype)) if lstm else None
            setups.append(_forward_setup(kernels, cell, inp, h0_k, c0_k, lw.w_ih, lw.b_ih, lw.b_hh, lw.packed_ih,
                                         lw.packed_hh, training, plan.batch_sizes, prev_index, lw.packed_hr,
                                         lw.w_hh, lw.w_hr, slot=d))
        _run(kernels.run_forward, [call for call, _ in setups], _directions_together(kernels, weights[layer]))
        results = [finish() for _, finish in setups]
        for d, (y, hn, cn, sv) in enumerate(results):
            k = layer * directions + d
            if out is None:
                out = y
            elif d == 0:
                out[:, :S] = y
            else:
                out[plan.reverse_index, S:] = y
            h_n[k] = plan.unsort_rows(hn)
            if lstm:
                c_n[k] = plan.unsort_rows(cn)
            saved_dirs.append(sv)
        mask = None
        if dropped:
            keep = (rng.random(out.shape) >= dropout).astype(dtype)
            # dropout=1 keeps nothing (torch's limit): all zeros, not the 0/0 of keep/(1-p)
            mask = xpm.asarray(keep / dtype.type(1.0 - dropout) if dropout < 1 else keep)
            out *= mask
        if training:
            saved.layers.append(saved_dirs)
            saved.masks.append(mask)
            saved.in_features.append(tokens.shape[1])
        tokens = out
    return plan.scatter(tokens), h_n, c_n, saved


def stack_backward(saved: StackSaved, weights, dy_tm, dh_n, dc_n):
    """BPTT through a stack's training forward. dy_tm (T, B, D*S) or None; dh_n (L*D, B, S), dc_n (L*D, B, H)
    or None. Adds into every parameter's gradient; returns (dx (T, B, I), dh0 (L*D, B, S), dc0 or None)."""
    plan, D = saved.plan, saved.directions
    L = len(saved.layers)
    B = plan.B
    cell = saved.layers[0][0].cell
    H, S = weights[0][0].w_hh.shape[0] // GATES[cell], weights[0][0].w_hh.shape[1]
    lstm = cell == "lstm"
    dtype = saved.layers[0][0].x.dtype
    kernels = saved.layers[0][0].kernels
    xpm = kernels.xp
    dh0 = xpm.empty((L * D, B, S), dtype=dtype)
    dc0 = xpm.empty((L * D, B, H), dtype=dtype) if lstm else None
    dtok = plan.gather(dy_tm) if dy_tm is not None else None
    for layer in reversed(range(L)):
        dx = None
        setups = []
        for d in range(D):
            k = layer * D + d
            if dtok is None:
                dyd = None
            elif d == 0:
                dyd = xpm.ascontiguousarray(dtok[:, :S])
            else:
                dyd = xpm.ascontiguousarray(dtok[plan.reverse_index, S:])
            dhn = plan.sort_rows(dh_n[k]) if dh_n is not None else None
            dcn = plan.sort_rows(dc_n[k]) if (dc_n is not None and lstm) else None
            setups.append(_backward_setup(saved.layers[layer][d], dyd, dhn, dcn, weights[layer][d].grads, slot=d))
        _run(kernels.run_backward, [call for call, _ in setups], _directions_together(kernels, weights[layer]))
        results = [finish() for _, finish in setups]
        for d, (dxd, dh0_k, dc0_k) in enumerate(results):
            k = layer * D + d
            dh0[k] = plan.unsort_rows(dh0_k)
            if lstm:
                dc0[k] = plan.unsort_rows(dc0_k)
            if d == 0:
                dx = dxd
            else:
                dx[plan.reverse_index] += dxd
        if layer > 0 and saved.masks[layer - 1] is not None:
            dx *= saved.masks[layer - 1]
        dtok = dx
    return plan.scatter(dtok), dh0, dc0
