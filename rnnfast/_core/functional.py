"""The data flow of recurrent layers around the kernels: the only place where it is written.

One layer, one direction (docs/DESIGN.md, "Data flow"), over packed tokens (see `Plan`):

    forward:  x_proj = x W_ih^T                      one GEMM for all tokens
              y, h_n, c_n, ws = recurrence(x_proj)    one kernel call for all steps (adds the biases)
    backward: dxg, dhg, dh0, dc0, db = reverse recurrence(dy, dh_n, dc_n)
              dW_ih += dxg^T x;  dW_hh += dhg^T h_prev;  dx = dxg W_ih

Dropout inside a layer (`Dropouts`, Keras's `dropout` and `recurrent_dropout`): masks drawn once per sequence,
one per gate. The input masks are applied to x per gate before its share of the input GEMM; the recurrent masks
inside the recurrence (the kernels' rec_mask), where gate g's product reads h_prev under mask g (the kernels keep
those products' inputs in h_drop, which dW_hh then pairs with). At batch 1 the recurrent masks are folded
into W_hh's columns instead (`_fold_recurrent_mask`): the plain recurrence then computes the same numbers.

A stack (`stack_forward` / `stack_backward`) runs layers bottom-up and, for a bidirectional layer, a forward and
a reverse direction whose outputs are concatenated per token; dropout sits between layers. Every function takes
the kernels object that runs it (kernels.py; dispatch.kernels_for chooses it) and the weights as that object
built them (LayerWeights); what differs between cells is asked of the kernels' cell descriptors (ext.CELLS).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from .arrays import namespace
from .ext import CELLS
from .kernels import LayerWeights


def gates(cell: str) -> int:
    return CELLS[cell]["gates"]


def has_cell_state(cell: str) -> bool:
    """Whether the cell carries c beside h (the LSTM)."""
    return CELLS[cell]["cell_state"]


def workspace_slots(cell: str, projection: bool) -> int:
    """Per-unit values a training forward keeps for backward (the workspace is (N, slots * H))."""
    return CELLS[cell]["proj_slots" if projection else "slots"]


def ws_slot(ws, cell: str, name: str, H: int):
    """The (N, H) view of one named slot of a workspace (the Slot enums of csrc/common/cells.h)."""
    k = CELLS[cell]["slot_names"].index(name)
    return ws[:, k * H:(k + 1) * H]


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
        out = namespace(tokens).zeros((self.T, self.B, F), dtype=tokens.dtype)
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
class Dropouts:
    """One layer-direction's dropout masks, in the kernels' row order, scaled (0 or 1/(1-p)): `inputs` (B, G*I),
    gate g's input read as x * inputs[:, g*I:(g+1)*I]; `recurrent` (B, G*H), gate g's product read as
    h_prev * recurrent[:, g*H:(g+1)*H]. Either may be None."""

    inputs: np.ndarray | None = None
    recurrent: np.ndarray | None = None


def token_rows(batch_sizes: np.ndarray) -> np.ndarray:
    """The kernels' batch row of every packed token (step t's tokens are rows 0..batch_sizes[t]-1)."""
    bs = np.asarray(batch_sizes, dtype=np.int64)
    start = np.repeat(np.cumsum(bs) - bs, bs)
    return np.arange(int(bs.sum()), dtype=np.int64) - start


def _gate_slices(G, n):
    return [slice(g * n, (g + 1) * n) for g in range(G)]


def _project_dropped(kernels, x, lw: LayerWeights, mask, rows, out):
    """out = x W_ih^T with gate g's rows reading x under its own mask (Keras's per-gate input dropout)."""
    G, I = mask.shape[1] // x.shape[1], x.shape[1]
    H = lw.w_ih.shape[0] // G
    if not x.shape[0]:
        return
    for gx, gh in zip(_gate_slices(G, I), _gate_slices(G, H)):
        kernels.matmul(x * mask[rows, gx], lw.w_ih[gh].T, out=out[:, gh])


@dataclass
class Saved:
    """What a training forward of one layer, one direction keeps for backward."""

    kernels: object  # what ran it (kernels.CpuKernels or CudaKernels)
    cell: str
    shape3: tuple | None  # (T, B) when the forward took x as (T, B, I): backward answers in that form
    batch_sizes: np.ndarray
    prev_index: np.ndarray | None  # see Plan.prev_index; None when rows never end early
    x: np.ndarray  # (N, I) tokens, our own copy
    h0: np.ndarray
    c0: np.ndarray | None
    w_ih: np.ndarray  # our own copy: backward uses the weights of the forward it differentiates
    recurrent_hh: object  # what the backward call takes: the packed W_hh (CPU, immutable) or a copy (CUDA)
    recurrent_hr: object  # the same for an LSTM's projection W_hr, or None
    y: np.ndarray
    ws: np.ndarray | None
    H: int
    drop: Dropouts = field(default_factory=Dropouts)  # the masks the forward applied (Dropouts() for none)
    h_drop: np.ndarray | None = None  # what each gate's product read, with recurrent dropout (see ForwardCall)
    folded: bool = False  # the recurrent masks are in the saved W_hh's columns (batch 1)


def layer_forward(kernels, cell, x, h0, c0, lw: LayerWeights, training, batch_sizes=None, prev_index=None,
                  drop: Dropouts | None = None):
    """One layer, one direction, on `kernels` with the weights `lw` they built.

    x is (T, B, I) (every sequence T long) or, with batch_sizes, packed tokens (N, I); y comes back in the
    same form. h0 (B, S) and c0 (B, H) are in the kernels' row order, S = proj_size or H; drop: the masks.
    Returns (y, h_n, c_n, saved); saved is None unless training.
    """
    call, finish = _forward_setup(kernels, cell, x, h0, c0, lw, training, batch_sizes, prev_index, drop=drop)
    kernels.run_forward([call])
    return finish()


def _as_tokens(x, batch_sizes):
    """x (T, B, I), every sequence T long, as tokens (T*B, I) with their batch sizes and (T, B); tokens
    (N, I) with batch_sizes pass through, with None."""
    if x.ndim != 3:
        return x, batch_sizes, None
    T, B, I = x.shape
    return x.reshape(T * B, I), np.full(T, B, dtype=np.int64), (T, B)


def _forward_setup(kernels, cell, x, h0, c0, lw: LayerWeights, training, batch_sizes, prev_index, direction=0,
                   drop: Dropouts | None = None):
    """The input GEMM and the outputs of a forward: returns (the kernel call, finish() -> layer_forward's
    result). Split so that the two directions of a layer can run in one kernel call."""
    x, batch_sizes, shape3 = _as_tokens(x, batch_sizes)
    N, B, S = x.shape[0], h0.shape[0], h0.shape[1]
    G = gates(cell)
    H = lw.w_ih.shape[0] // G
    dtype = x.dtype
    drop = drop or Dropouts()
    x_proj = kernels.scratch(("x_proj", direction), (N, G * H), dtype)
    if drop.inputs is not None:
        _project_dropped(kernels, x, lw, drop.inputs, kernels.xp.asarray(token_rows(batch_sizes)), x_proj)
    else:
        kernels.project(x, lw, x_proj)
    rec_mask = h_drop = None
    folded = drop.recurrent is not None and _fold_pays(B, N, S)
    if folded:
        lw = _fold_recurrent_mask(kernels, cell, lw, drop.recurrent)
    elif drop.recurrent is not None:
        rec_mask = drop.recurrent
        h_drop = kernels.workspace((B + N, G * S), dtype)
        h_drop[:B] = kernels.xp.tile(h0, (1, G)) * rec_mask
    y = kernels.empty((N, S), dtype)
    h_n = kernels.empty((B, S), dtype)
    c_n = kernels.empty((B, H), dtype) if has_cell_state(cell) else None
    slots = workspace_slots(cell, lw.projection)
    ws = kernels.workspace((N, slots * H), dtype) if training and slots else None
    call = kernels.forward_call(cell=cell, batch_sizes=batch_sizes, x_proj=x_proj, h0=h0, c0=c0,
                                weight_hh=lw.recurrent_hh, b_ih=lw.b_ih, b_hh=lw.b_hh, y=y, h_n=h_n, c_n=c_n, ws=ws,
                                weight_hr=lw.recurrent_hr, **_drop_args(rec_mask, h_drop=h_drop))

    def finish():
        saved = None
        if training:
            saved = Saved(kernels, cell, shape3, batch_sizes, prev_index, x, h0, c0, lw.w_ih.copy(),
                          *kernels.saved_weights(lw), y, ws, H, drop, h_drop, folded)
            kernels.keep(saved, ws)  # no one else holds ws
            kernels.keep(saved, h_drop)
        return (y.reshape(*shape3, S) if shape3 else y), h_n, c_n, saved

    return call, finish


def _fold_pays(B, N, S) -> bool:
    """Whether a call's recurrent masks go into W_hh's columns (_fold_recurrent_mask) rather than into per-step
    copies of h: only at batch 1 can they, and there folding costs a few passes over W_hh per call while the copies
    cost a little every step. Measured (AMD EPYC Zen 3, 2 threads, torch training step, cost over no dropout,
    folded / copies): LSTM T=1000 H=64 +8% / +19%; T=100 H=64 +19% / +18%; T=100 H=256 +23% / +10%; GRU T=100
    H=256 +24% / +10%. So: fold where the steps outnumber twice the state size."""
    return B == 1 and N >= 2 * S


def _fold_recurrent_mask(kernels, cell, lw: LayerWeights, mask) -> LayerWeights:
    """The weights of a batch-1 call with recurrent dropout: gate g's product (h * m_g) W_g^T is h (W_g diag(m_g))^T,
    so the kernels run the plain recurrence on W_hh with each gate's columns scaled by its mask (the original GRU's
    W_hn too: (r*h*m) W_hn^T = (r*h) (W_hn diag(m))^T), and dW_hh is the plain gradient with the same columns
    scaled (_weight_grads). No copies of h to write or read each step: at batch 1 those cost 10-15% of a call."""
    G = gates(cell)
    H = lw.w_hh.shape[0] // G
    w = (lw.w_hh.reshape(G, H, -1) * mask.reshape(G, 1, -1)).reshape(lw.w_hh.shape)
    return replace(lw, recurrent_hh=kernels.recurrent_weight(w, G))


def _drop_args(rec_mask, **buffers):
    """The kernels' recurrent-dropout arguments: none at all without a mask (so that calls without dropout read
    as before)."""
    return {} if rec_mask is None else dict(rec_mask=rec_mask, **buffers)


def layer_backward(saved: Saved, dy, dh_n, dc_n, grads):
    """BPTT through a training forward of one layer, one direction. dy is None or in the form of the
    forward's y; `grads` maps w_ih, w_hh, b_ih, b_hh (and w_hr) to the arrays the parameter gradients are
    added into (biases may be None). Returns (dx, dh0, dc0), dx in the form of the forward's x."""
    call, finish = _backward_setup(saved, dy, dh_n, dc_n, grads)
    saved.kernels.run_backward([call])
    return finish()


def _backward_setup(saved: Saved, dy, dh_n, dc_n, grads, direction=0):
    """The outputs of a backward and, in finish(), the time-parallel GEMMs after the kernel."""
    s, kernels = saved, saved.kernels
    N, I = s.x.shape
    H, S, B, G = s.H, s.y.shape[1], s.h0.shape[0], gates(s.cell)
    dtype = s.x.dtype
    if dy is not None and dy.ndim == 3:
        dy = dy.reshape(N, S)
    if dy is not None and kernels.xp is not np:
        dy = kernels.xp.ascontiguousarray(dy)
    dxg = kernels.scratch(("dxg", direction), (N, G * H), dtype)
    dhg = kernels.scratch(("dhg", direction), (N, G * H), dtype) if CELLS[s.cell]["recurrent_grads"] else None
    dh0 = kernels.empty((B, S), dtype)
    dc0 = kernels.empty((B, H), dtype) if has_cell_state(s.cell) else None
    dh_all = kernels.scratch(("dh_all", direction), (N, S), dtype) if s.recurrent_hr is not None else None
    call = kernels.backward_call(cell=s.cell, batch_sizes=s.batch_sizes, weight_hh=s.recurrent_hh, h0=s.h0,
                                 c0=s.c0, y=s.y, ws=s.ws, dy=dy, dh_n=dh_n, dc_n=dc_n, dxg=dxg, dhg=dhg, dh0=dh0,
                                 dc0=dc0, db_ih=grads["b_ih"], db_hh=grads["b_hh"], weight_hr=s.recurrent_hr,
                                 dh_all=dh_all, **_drop_args(s.drop.recurrent if s.h_drop is not None else None))

    def finish():
        kernels.bias_grads(dxg, dhg, grads)
        _weight_grads(s, dxg, dhg, dh_all, grads)
        dx = kernels.empty((N, I), dtype)
        if N and s.drop.inputs is not None:
            _input_grads_dropped(s, dxg, grads, dx)
        elif N:
            kernels.addmm(grads["w_ih"], dxg.T, s.x)
            kernels.matmul(dxg, s.w_ih, out=dx)
        return (dx.reshape(*s.shape3, I) if s.shape3 is not None else dx), dh0, dc0

    return call, finish


def _input_grads_dropped(s: Saved, dxg, grads, dx):
    """dW_ih and dx where gate g read x under input mask g: dW_ih[g] += dxg[g]^T (x m_g); dx = sum_g
    (dxg[g] W_ih[g]) m_g."""
    kernels, mask = s.kernels, s.drop.inputs
    I, G = s.x.shape[1], gates(s.cell)
    rows = kernels.xp.asarray(token_rows(s.batch_sizes))
    part = kernels.empty(dx.shape, dx.dtype)
    for g, (gx, gh) in enumerate(zip(_gate_slices(G, I), _gate_slices(G, s.H))):
        m = mask[rows, gx]
        kernels.addmm(grads["w_ih"][gh], dxg[:, gh].T, s.x * m)
        kernels.matmul(dxg[:, gh], s.w_ih[gh], out=part)
        if g == 0:
            dx[...] = part * m
        else:
            dx += part * m


def _weight_grads(s: Saved, dxg, dhg, dh_all, grads):
    """The recurrent weight gradients after a backward kernel; dhg is None where it equals dxg, dh_all None
    without a projection."""
    N, B, H = s.x.shape[0], s.h0.shape[0], s.H
    if not N:
        return
    addmm = s.kernels.addmm
    dg = dhg if dhg is not None else dxg
    if s.folded:  # the gradient w.r.t. the scaled columns, scaled again (_fold_recurrent_mask)
        G = gates(s.cell)
        target, grads = grads["w_hh"], dict(grads, w_hh=s.kernels.xp.zeros_like(grads["w_hh"]))
    # The recurrent product of a step read h_prev: h0 for the first step, then the same row's output one step
    # earlier (with recurrent dropout: under each gate's mask, kept in h_drop). Where the candidate's rows (the
    # last gate) read r*h_prev instead (the original GRU), they take it from the workspace slot "rh"; an LSTM
    # projection's W_hr reads m_t (slot "m").
    reset_first = CELLS[s.cell]["reset_before_product"]
    rows = slice(0, (gates(s.cell) - 1) * H) if reset_first else slice(0, gates(s.cell) * H)
    if s.h_drop is not None:
        if s.prev_index is None:  # rows B.. of h_drop follow the tokens: token r's product read row r
            read = s.h_drop[:N]
        else:
            read = s.h_drop[s.kernels.xp.asarray(np.concatenate((np.arange(B), B + s.prev_index)))]
        for gh in _gate_slices(rows.stop // H, H):
            addmm(grads["w_hh"][gh], dg[:, gh].T, read[:, gh])
    else:
        dw_hh = grads["w_hh"][rows]
        addmm(dw_hh, dg[:B, rows].T, s.h0)
        if N > B:
            h_prev = s.y[: N - B] if s.prev_index is None else s.y[s.prev_index]
            addmm(dw_hh, dg[B:, rows].T, h_prev)
    if reset_first:
        last = rows.stop
        addmm(grads["w_hh"][last:], dg[:, last:].T, ws_slot(s.ws, s.cell, "rh", H))
    if dh_all is not None:  # h_t = W_hr m_t
        addmm(grads["w_hr"], dh_all.T, ws_slot(s.ws, s.cell, "m", H))
    if s.folded:
        target += (grads["w_hh"].reshape(G, H, -1) * s.drop.recurrent.reshape(G, 1, -1)).reshape(target.shape)


# ----------------------------------------------------------------------------------------------- stacks
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
    8.8 | 16.5 vs 23.4; but H=256 B=1 (W_hh 1 MB) 1.05 vs 0.70 | 1.67 vs 1.30, and H=512 B=64 equal.
    Never where the two directions add into one gradient array (tied parameters): their bias sums would race."""
    if len(layer_weights) != 2 or not kernels.can_run_directions_together or abs(kernels.thread_arg) < 2:
        return False
    w = layer_weights[0].w_hh
    return w.size * w.itemsize <= 256 * 1024 and not _share_grads(*layer_weights)


def _share_grads(a: LayerWeights, b: LayerWeights) -> bool:
    """Whether two directions add into overlapping gradient arrays (parameters tied across directions)."""
    ga = [g for g in a.grads.values() if g is not None]
    gb = [g for g in b.grads.values() if g is not None]
    return any(np.may_share_memory(x, y) for x in ga for y in gb)


def _run(run, calls, together):
    """Runs a layer's calls: at once (one kernel call, a thread per direction) or one after the other."""
    if together:
        run(calls)
    else:
        for call in calls:
            run([call])


def stack_forward(kernels, cell, x_tm, h0, c0, weights, plan: Plan, directions, training, dropout=0.0, rng=None,
                  drops=None):
    """A multi-layer, optionally bidirectional stack on `kernels`.

    x_tm (T, B, I) in the caller's batch order; h0 (L*D, B, S), c0 (L*D, B, H) or None (S = proj_size or H);
    weights[l][d] LayerWeights; dropout: between layers; drops[l][d]: Dropouts inside layer l, direction d, rows in
    the caller's batch order (or drops None).
    Returns (y (T, B, D*S) zero past each sequence's end, h_n (L*D, B, S), c_n or None, saved or None).
    """
    L, B = len(weights), plan.B
    G = gates(cell)
    H, S = weights[0][0].w_hh.shape[0] // G, weights[0][0].w_hh.shape[1]
    dtype, xpm = x_tm.dtype, kernels.xp
    h_n = xpm.empty((L * directions, B, S), dtype=dtype)
    c_n = xpm.empty((L * directions, B, H), dtype=dtype) if has_cell_state(cell) else None
    saved = StackSaved(plan, directions) if training else None
    tokens = plan.gather(x_tm)
    for layer in range(L):
        dropped = training and dropout > 0 and layer < L - 1
        states = [_initial_states(xpm, plan, h0, c0, layer * directions + d, B, S, H, dtype, cell)
                  for d in range(directions)]
        layer_drops = [_sorted_drop(plan, drops[layer][d]) if drops else None for d in range(directions)]
        out, results = _layer_directions(kernels, cell, tokens, states, weights[layer], plan, training,
                                         copy=directions > 1 or dropped, drops=layer_drops)
        for d, (_, hn, cn, _) in enumerate(results):
            h_n[layer * directions + d] = plan.unsort_rows(hn)
            if c_n is not None:
                c_n[layer * directions + d] = plan.unsort_rows(cn)
        mask = _dropout_mask(xpm, rng, out.shape, dropout, dtype) if dropped else None
        if mask is not None:
            out *= mask
        if training:
            saved.layers.append([sv for _, _, _, sv in results])
            saved.masks.append(mask)
            saved.in_features.append(tokens.shape[1])
        tokens = out
    return plan.scatter(tokens), h_n, c_n, saved


def _initial_states(xpm, plan, h0, c0, k, B, S, H, dtype, cell):
    """(h0, c0) of stack entry k in the kernels' row order; zeros where the caller gave none."""
    h = plan.sort_rows(h0[k]) if h0 is not None else xpm.zeros((B, S), dtype=dtype)
    if not has_cell_state(cell):
        return h, None
    return h, plan.sort_rows(c0[k]) if c0 is not None else xpm.zeros((B, H), dtype=dtype)


def _sorted_drop(plan, drop: Dropouts | None) -> Dropouts | None:
    if drop is None:
        return None
    return Dropouts(plan.sort_rows(drop.inputs), plan.sort_rows(drop.recurrent))


def _layer_directions(kernels, cell, tokens, states, layer_weights, plan, training, copy, drops):
    """One layer's directions over the tokens; returns (the layer's output tokens (N, D*S), [(y, h_n, c_n,
    saved)] per direction). copy=False (one direction, nothing dropped): the output is the kernel's y itself."""
    xpm = kernels.xp
    setups = []
    for d, (lw, (h, c)) in enumerate(zip(layer_weights, states)):
        inp = tokens if d == 0 else xpm.ascontiguousarray(tokens[plan.reverse_index])
        setups.append(_forward_setup(kernels, cell, inp, h, c, lw, training, plan.batch_sizes, plan.prev_index,
                                     direction=d, drop=drops[d]))
    together = _directions_together(kernels, layer_weights)
    _run(kernels.run_forward, [call for call, _ in setups], together)
    results = [finish() for _, finish in setups]
    if not copy:
        return results[0][0], results
    S = results[0][0].shape[1]
    out = xpm.empty((plan.N, len(results) * S), dtype=tokens.dtype)
    for d, (y, _, _, _) in enumerate(results):
        if d == 0:
            out[:, :S] = y
        else:
            out[plan.reverse_index, S:] = y
    return out, results


def _dropout_mask(xpm, rng, shape, dropout, dtype):
    keep = (rng.random(shape) >= dropout).astype(dtype)
    # dropout=1 keeps nothing (torch's limit): all zeros, not the 0/0 of keep/(1-p)
    return xpm.asarray(keep / dtype.type(1.0 - dropout) if dropout < 1 else keep)


def recurrent_dropouts(xpm, rng, cell, layers, directions, B, H, p, dtype):
    """drops[l][d] for stack_forward: a recurrent mask (B, G*H) per layer, direction and gate, drawn from rng
    (numpy Generator), or None when p is 0."""
    if not p:
        return None
    G = gates(cell)
    return [[Dropouts(recurrent=_dropout_mask(xpm, rng, (B, G * H), p, np.dtype(dtype)))
             for _ in range(directions)] for _ in range(layers)]


def stack_backward(saved: StackSaved, weights, dy_tm, dh_n, dc_n):
    """BPTT through a stack's training forward. dy_tm (T, B, D*S) or None; dh_n (L*D, B, S), dc_n (L*D, B, H)
    or None. Adds into every parameter's gradient; returns (dx (T, B, I), dh0 (L*D, B, S), dc0 or None)."""
    plan, D = saved.plan, saved.directions
    first = saved.layers[0][0]
    kernels, cell, dtype = first.kernels, first.cell, first.x.dtype
    L, B = len(saved.layers), plan.B
    H, S = first.H, first.y.shape[1]
    xpm = kernels.xp
    dh0 = xpm.empty((L * D, B, S), dtype=dtype)
    dc0 = xpm.empty((L * D, B, H), dtype=dtype) if has_cell_state(cell) else None
    dtok = plan.gather(dy_tm) if dy_tm is not None else None
    for layer in reversed(range(L)):
        ks = range(layer * D, layer * D + D)
        dys = [_direction_grad(xpm, plan, dtok, d, S) for d in range(D)]
        dhns = [plan.sort_rows(dh_n[k]) if dh_n is not None else None for k in ks]
        dcns = [plan.sort_rows(dc_n[k]) if dc_n is not None and dc0 is not None else None for k in ks]
        setups = [_backward_setup(saved.layers[layer][d], dys[d], dhns[d], dcns[d], weights[layer][d].grads,
                                  direction=d) for d in range(D)]
        together = _directions_together(kernels, weights[layer])
        _run(kernels.run_backward, [call for call, _ in setups], together)
        dx = None
        for d, (dxd, dh0_k, dc0_k) in enumerate(finish() for _, finish in setups):
            dh0[layer * D + d] = plan.unsort_rows(dh0_k)
            if dc0 is not None:
                dc0[layer * D + d] = plan.unsort_rows(dc0_k)
            if d == 0:
                dx = dxd
            else:
                dx[plan.reverse_index] += dxd
        if layer > 0 and saved.masks[layer - 1] is not None:
            dx *= saved.masks[layer - 1]
        dtok = dx
    return plan.scatter(dtok), dh0, dc0


def _direction_grad(xpm, plan, dtok, d, S):
    """The gradient w.r.t. direction d's output tokens, in that direction's token order, or None."""
    if dtok is None:
        return None
    if d == 0:
        return xpm.ascontiguousarray(dtok[:, :S])
    return xpm.ascontiguousarray(dtok[plan.reverse_index, S:])
