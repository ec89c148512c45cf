"""The NumPy oracle of the bfloat16 inference weights (layers' set_inference_weights), shared by
tests/test_bf16.py and the subprocess checks of other builds (instruction sets, emulated CPUs).

What the mode computes per step: W_hh and h_{t-1} rounded to bf16 (round to nearest even, denormals to zero),
their product summed in float32, everything else float32. The oracle does the same in float64 with the
*teacher-forced* state: each step starts from the kernel's own output of the step before (its y, which is
exactly the float32 value the kernel rounded), so both round the same numbers to bf16 and the comparison is
at float32-accumulation level (~1e-6), while the product in float32 weights differs by ~1e-3: a tight check
of the kernel, not "close to float32".

The original GRU also rounds r*h_{t-1} (its W_hn product reads that), which the kernel computes in float32:
where that value sits within a few float32 ulps of a bf16 rounding midpoint the two may round it apart, so
the oracle widens its tolerance there by what one bf16 ulp of that term can change.
"""
import numpy as np


def bf16(a):
    """a rounded to bf16 as the kernels round (nearest even; denormals to signed zero), as float32."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    exponent = (u >> 23) & 0xFF
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
    r = np.where(exponent == 0, u & 0x80000000, r)
    quiet = np.where((u & 0x7FFFFF) != 0, np.uint64(0x400000), np.uint64(0))
    r = np.where(exponent == 0xFF, (u & 0xFFFF0000) | quiet, r)
    return r.astype(np.uint32).view(np.float32)


def _sigmoid(a):
    return 1 / (1 + np.exp(-a))


def _bf16_ulp(v):
    """One bf16 ulp of each value of v (float64), 2^(exponent - 7)."""
    m = np.abs(v)
    return np.where(m > 0, 2.0 ** (np.floor(np.log2(np.where(m > 0, m, 1))) - 7), 0)


def _near_midpoint(v, ulps=64):
    """Where float32(v) is within `ulps` float32 ulps of a bf16 rounding midpoint."""
    low = np.ascontiguousarray(v, dtype=np.float32).view(np.uint32) & 0xFFFF
    return np.abs(low.astype(np.int64) - 0x8000) <= ulps


def teacher_forced(layer, x, y, h0=None, c0=None, lengths=None, rounded=True):
    """The oracle's outputs for one unidirectional single-layer float32 `layer` (RNN, LSTM with or without a
    projection, GRU of either form) run on x (T, B, I) (time-major, batched) with outputs y (T, B, S), from
    h0 (B, S) / c0 (B, H) (None: zeros) and lengths (None: all T).

    Returns (y_ref, c_last, extra): y_ref (T, B, S) for t < lengths (zeros past), the cell state at each row's
    last step (LSTM; else None) and an extra tolerance (T, B, S) (nonzero only for the original GRU).
    rounded=False: the same with float32 weights and state (what the tests check the oracle against).
    """
    cell = layer._cell
    T, B, _ = x.shape
    H = layer.hidden_size
    S = layer.proj_size or H
    p = {k: v.astype(np.float64) for k, v in layer.state_dict().items()}
    w_hh = (bf16(layer.state_dict()["weight_hh_l0"]) if rounded else layer.state_dict()["weight_hh_l0"])
    w_hh = w_hh.astype(np.float64)
    rnd = (lambda a: bf16(a).astype(np.float64)) if rounded else (lambda a: np.asarray(a, np.float64))
    zero = np.zeros(layer.state_dict()["weight_hh_l0"].shape[0])
    b_ih, b_hh = p.get("bias_ih_l0", zero), p.get("bias_hh_l0", zero)
    lengths = np.full(B, T) if lengths is None else np.asarray(lengths)
    h_prev = np.zeros((B, S), np.float32) if h0 is None else np.asarray(h0, np.float32)
    c = np.zeros((B, H)) if c0 is None else np.asarray(c0, np.float64)
    y_ref = np.zeros((T, B, S))
    extra = np.zeros((T, B, S))
    c_last = np.zeros((B, H))
    for t in range(T):
        active = t < lengths
        hp = h_prev.astype(np.float64)
        xg = x[t].astype(np.float64) @ p["weight_ih_l0"].T + b_ih
        if cell == "gru_original":
            hg = rnd(h_prev) @ w_hh[:2 * H].T + b_hh[:2 * H]
            r = _sigmoid(xg[:, :H] + hg[:, :H])
            z = _sigmoid(xg[:, H:2 * H] + hg[:, H:])
            rh = r * hp
            n = np.tanh(xg[:, 2 * H:] + rnd(rh) @ w_hh[2 * H:].T + b_hh[2 * H:])
            h = (1 - z) * n + z * hp
            if rounded:
                extra[t] = (_near_midpoint(rh) * _bf16_ulp(rh)) @ np.abs(w_hh[2 * H:]).T
        else:
            pre = xg + rnd(h_prev) @ w_hh.T + b_hh
            if cell == "rnn_tanh":
                h = np.tanh(pre)
            elif cell == "rnn_relu":
                h = np.maximum(pre, 0)
            elif cell == "gru":
                hg = rnd(h_prev) @ w_hh.T + b_hh
                r = _sigmoid(xg[:, :H] + hg[:, :H])
                z = _sigmoid(xg[:, H:2 * H] + hg[:, H:2 * H])
                n = np.tanh(xg[:, 2 * H:] + r * hg[:, 2 * H:])
                h = (1 - z) * n + z * hp
            else:
                i, f, g, o = (pre[:, k * H:(k + 1) * H] for k in range(4))
                c = np.where(active[:, None], _sigmoid(f) * c + _sigmoid(i) * np.tanh(g), c)
                h = _sigmoid(o) * np.tanh(c)
                if layer.proj_size:
                    h = h @ p["weight_hr_l0"].T
        y_ref[t] = np.where(active[:, None], h, 0)
        # Teacher forcing: the next step starts from the kernel's output of this one.
        h_prev = np.where(active[:, None], y[t], h_prev).astype(np.float32)
        c_last = np.where(active[:, None], c, c_last) if cell == "lstm" else None
    return y_ref, c_last, extra


def check(layer, x, h0=None, c0=None, lengths=None):
    """Runs `layer` (set to bfloat16, in eval mode) and returns its worst error against the oracle, beyond
    the original GRU's extra tolerance, over y, h_n and c_n, and the same of float32 weights (which must be
    far larger for the check to mean anything)."""
    hx = None if h0 is None else h0[None]
    if layer._cell == "lstm":
        y, (h_n, c_n) = layer(x, (hx, None if c0 is None else c0[None]), lengths=lengths)
    else:
        y, h_n = layer(x, hx, lengths=lengths)
        c_n = None
    y_ref, c_last, extra = teacher_forced(layer, x, y, h0, c0, lengths)
    T = x.shape[0]
    last = (np.full(x.shape[1], T) if lengths is None else np.asarray(lengths)) - 1
    errors = [np.abs(y - y_ref) - extra, np.abs(h_n[0] - y[last, np.arange(x.shape[1])])]
    if c_n is not None:
        errors.append(np.abs(c_n[0] - c_last))
    # A NaN (an output the kernel never wrote, with poisoned outputs) is an infinite error.
    err = max(float(np.max(np.where(np.isfinite(e), e, np.inf))) for e in errors)
    y32, _, _ = teacher_forced(layer, x, y, h0, c0, lengths, rounded=False)
    return err, float(np.max(np.abs(y - y32)))
