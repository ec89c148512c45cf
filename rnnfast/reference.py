"""NumPy reference implementation of rnnfast's recurrent cells: the oracle.

Plain, obviously-correct NumPy for one layer, one direction: the forward pass and full
backpropagation through time (BPTT) of the Elman RNN (tanh or relu), the LSTM and the GRU,
written step by step from the equations in DESIGN.md, with a Python loop over time steps.
It is what the fused C++/CUDA kernels are tested against, so it is never optimised.

Conventions follow torch.nn (time-major, gate order, weight shapes):

    x (T, B, I), h0 / c0 (B, H), w_ih (G*H, I), w_hh (G*H, H), b_ih / b_hh (G*H,)

    rnn_tanh / rnn_relu  (G = 1):
        h' = act(W_ih x + b_ih + W_hh h + b_hh)
    lstm  (G = 4, rows [i; f; g; o]):
        i, f, g, o = sigmoid, sigmoid, tanh, sigmoid of (W_ih x + b_ih + W_hh h + b_hh)
        c' = f*c + i*g ;  h' = o*tanh(c')
    gru  (G = 3, rows [r; z; n], linear_before_reset=True, the torch/cuDNN form):
        r = sigmoid(W_ir x + b_ir + W_hr h + b_hr) ;  z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
        n = tanh(W_in x + b_in + r*(W_hn h + b_hn)) ;  h' = (1-z)*n + z*h
    gru_original  (G = 3, rows [r; z; n], linear_before_reset=False):
        r, z as for gru ;  n = tanh(W_in x + b_in + W_hn (r*h) + b_hn) ;  h' = (1-z)*n + z*h

All arithmetic is done in x.dtype (float32 or float64).

Dropout inside the layer (Keras's `dropout` and `recurrent_dropout`, one mask per gate, fixed for the whole
sequence): with input masks mi (B, G*I), gate k's input rows read x * mi[:, k*I:(k+1)*I]; with recurrent masks
mr (B, G*H), gate k's recurrent rows read h * mr[:, k*H:(k+1)*H] (the GRU's r*h: r * (h * mr of the candidate)).
Everything else reads h itself (the GRU's final mix z*h).
"""

import numpy as np

CELLS = ("rnn_tanh", "rnn_relu", "lstm", "gru", "gru_original")
NUM_GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3, "gru_original": 3}


# --------------------------------------------------------------------------- helpers


def _sigmoid(a):
    """Logistic function, without overflow for large |a|."""
    e = np.exp(-np.abs(a))
    return np.where(a >= 0, 1 / (1 + e), e / (1 + e))


def _check_cell(cell):
    if cell not in NUM_GATES:
        raise ValueError(f"cell: expected one of {CELLS}, got {cell!r}")


def _dropped(a, mask, G):
    """The G gates' copies of a (B, F) under their masks (B, G*F), or a itself for every gate."""
    if mask is None:
        return [a] * G
    F = a.shape[1]
    return [a * mask[:, k * F:(k + 1) * F] for k in range(G)]


def _gate_products(parts, w, gates):
    """The rows of `gates` of w times their own inputs: concat over k in gates of parts[k] @ w[k*H:(k+1)*H].T."""
    H = w.shape[0] // len(parts)
    return np.concatenate([parts[k] @ w[k * H:(k + 1) * H].T for k in gates], axis=1)


def _as(name, a, dtype, shape):
    """A private copy of `a` in `dtype`, checked to have `shape`."""
    a = np.array(a, dtype=dtype, copy=True)
    if a.shape != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {a.shape}")
    return a


# --------------------------------------------------------------------------- forward
# forward and backward are longer than a screen on purpose: each is the step loop with every cell's equations
# written out in the order docs/DESIGN.md states them, so that the oracle can be checked against the equations
# by reading it top to bottom; helpers would hide the order of the operations it exists to show.


def forward(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, input_mask=None, recurrent_mask=None):
    """Run one layer, one direction, over all T steps.

    x (T,B,I); h0 (B,H); c0 (B,H) for lstm else None; w_ih (G*H, I); w_hh (G*H, H);
    b_ih, b_hh (G*H,) or both None (bias=False); input_mask (B, G*I), recurrent_mask (B, G*H) or None (see the
    module's docstring). Computes in x.dtype (float32 or float64).
    Returns (y, h_n, c_n, cache): y (T,B,H), h_n (B,H), c_n (B,H) or None; cache is
    whatever backward needs.
    """
    _check_cell(cell)
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"x: expected dtype float32 or float64, got {x.dtype}")
    dtype = x.dtype
    if x.ndim != 3:
        raise ValueError(f"x: expected 3 dimensions (T, B, I), got shape {x.shape}")
    x = np.array(x, copy=True)
    T, B, I = x.shape
    G = NUM_GATES[cell]

    w_hh = np.asarray(w_hh)
    if w_hh.ndim != 2 or w_hh.shape[0] != G * w_hh.shape[1]:
        raise ValueError(f"w_hh: expected shape ({G}*H, H) for cell {cell!r}, got {w_hh.shape}")
    H = w_hh.shape[1]
    w_hh = _as("w_hh", w_hh, dtype, (G * H, H))
    w_ih = _as("w_ih", w_ih, dtype, (G * H, I))
    h0 = _as("h0", h0, dtype, (B, H))

    if cell == "lstm":
        if c0 is None:
            raise ValueError("c0: required for cell 'lstm', got None")
        c0 = _as("c0", c0, dtype, (B, H))
    elif c0 is not None:
        raise ValueError(f"c0: must be None for cell {cell!r}")

    if (b_ih is None) != (b_hh is None):
        raise ValueError("b_ih, b_hh: give both (bias=True) or neither (bias=False)")
    has_bias = b_ih is not None
    if has_bias:
        b_ih = _as("b_ih", b_ih, dtype, (G * H,))
        b_hh = _as("b_hh", b_hh, dtype, (G * H,))
    else:
        b_ih = np.zeros(G * H, dtype)
        b_hh = np.zeros(G * H, dtype)

    mi = None if input_mask is None else _as("input_mask", input_mask, dtype, (B, G * I))
    mr = None if recurrent_mask is None else _as("recurrent_mask", recurrent_mask, dtype, (B, G * H))
    y = np.empty((T, B, H), dtype)
    steps = []
    h = h0
    c = c0
    for t in range(T):
        if mi is None:
            gi = x[t] @ w_ih.T + b_ih  # (B, G*H): input part of every gate
        else:
            gi = _gate_products(_dropped(x[t], mi, G), w_ih, range(G)) + b_ih
        hd = _dropped(h, mr, G)  # what each gate's recurrent rows read

        if cell in ("rnn_tanh", "rnn_relu"):
            a = gi + (h @ w_hh.T if mr is None else _gate_products(hd, w_hh, range(G))) + b_hh
            h_new = np.tanh(a) if cell == "rnn_tanh" else np.maximum(a, 0)
            steps.append(dict(h_prev=h, hd=hd, h=h_new))

        elif cell == "lstm":
            a = gi + (h @ w_hh.T if mr is None else _gate_products(hd, w_hh, range(G))) + b_hh
            i = _sigmoid(a[:, 0 * H:1 * H])
            f = _sigmoid(a[:, 1 * H:2 * H])
            g = np.tanh(a[:, 2 * H:3 * H])
            o = _sigmoid(a[:, 3 * H:4 * H])
            c_new = f * c + i * g
            tanh_c = np.tanh(c_new)
            h_new = o * tanh_c
            steps.append(dict(h_prev=h, hd=hd, c_prev=c, i=i, f=f, g=g, o=o, tanh_c=tanh_c))
            c = c_new

        elif cell == "gru":
            gh = (h @ w_hh.T if mr is None else _gate_products(hd, w_hh, range(G))) + b_hh  # (B, 3H): hidden parts
            r = _sigmoid(gi[:, 0 * H:1 * H] + gh[:, 0 * H:1 * H])
            z = _sigmoid(gi[:, 1 * H:2 * H] + gh[:, 1 * H:2 * H])
            hn = gh[:, 2 * H:3 * H]  # W_hn h + b_hn
            n = np.tanh(gi[:, 2 * H:3 * H] + r * hn)
            h_new = (1 - z) * n + z * h
            steps.append(dict(h_prev=h, hd=hd, r=r, z=z, n=n, hn=hn))

        else:  # gru_original
            gh_rz = (h @ w_hh[:2 * H].T if mr is None else _gate_products(hd, w_hh, range(2))) + b_hh[:2 * H]
            r = _sigmoid(gi[:, 0 * H:1 * H] + gh_rz[:, 0 * H:1 * H])
            z = _sigmoid(gi[:, 1 * H:2 * H] + gh_rz[:, 1 * H:2 * H])
            rh = r * hd[2]
            n = np.tanh(gi[:, 2 * H:3 * H] + rh @ w_hh[2 * H:].T + b_hh[2 * H:])
            h_new = (1 - z) * n + z * h
            steps.append(dict(h_prev=h, hd=hd, r=r, z=z, n=n, rh=rh))

        y[t] = h_new
        h = h_new

    h_n = h.copy()
    c_n = c.copy() if cell == "lstm" else None
    cache = dict(cell=cell, dtype=dtype, T=T, B=B, I=I, H=H, G=G, x=x, w_ih=w_ih,
                 w_hh=w_hh, has_bias=has_bias, steps=steps, mi=mi, mr=mr)
    return y, h_n, c_n, cache


# --------------------------------------------------------------------------- backward


def backward(cell, cache, dy, dh_n=None, dc_n=None):
    """Full BPTT through the steps recorded by forward().

    dy (T,B,H); dh_n, dc_n (B,H) or None (= zeros). Returns a dict with keys
    dx (T,B,I), dh0 (B,H), dc0 (B,H) or None for non-lstm, dw_ih, dw_hh, db_ih, db_hh
    (db_* None when the forward had no bias).
    """
    _check_cell(cell)
    if not isinstance(cache, dict) or cache.get("cell") != cell:
        raise ValueError(f"cache: expected a cache from forward({cell!r}, ...)")
    dtype = cache["dtype"]
    T, B, I, H, G = cache["T"], cache["B"], cache["I"], cache["H"], cache["G"]
    x, w_ih, w_hh, steps = cache["x"], cache["w_ih"], cache["w_hh"], cache["steps"]
    mi, mr = cache["mi"], cache["mr"]

    def recurrent_grads(dgh, hd, gates):
        """Adds gates' dW_hh rows (each paired with what its product read); returns their share of dh_prev."""
        if mr is None:
            rows = slice(gates[0] * H, (gates[-1] + 1) * H)
            dw_hh[rows] += dgh[:, rows].T @ hd[0]
            return dgh[:, rows] @ w_hh[rows]
        share = np.zeros((B, H), dtype)
        for k in gates:
            rows = slice(k * H, (k + 1) * H)
            dw_hh[rows] += dgh[:, rows].T @ hd[k]
            share += (dgh[:, rows] @ w_hh[rows]) * mr[:, rows]
        return share

    dy = _as("dy", dy, dtype, (T, B, H))
    dh = np.zeros((B, H), dtype) if dh_n is None else _as("dh_n", dh_n, dtype, (B, H))
    if cell == "lstm":
        dc = np.zeros((B, H), dtype) if dc_n is None else _as("dc_n", dc_n, dtype, (B, H))
    elif dc_n is not None:
        raise ValueError(f"dc_n: must be None for cell {cell!r}")

    dx = np.zeros((T, B, I), dtype)
    dw_ih = np.zeros((G * H, I), dtype)
    dw_hh = np.zeros((G * H, H), dtype)
    db_ih = np.zeros(G * H, dtype)
    db_hh = np.zeros(G * H, dtype)

    for t in reversed(range(T)):
        s = steps[t]
        h_prev = s["h_prev"]
        dh = dh + dy[t]  # total gradient w.r.t. h_t

        if cell in ("rnn_tanh", "rnn_relu"):
            h = s["h"]
            if cell == "rnn_tanh":
                da = dh * (1 - h * h)
            else:
                da = dh * (h > 0)
            dgi = da  # gradient w.r.t. W_ih x + b_ih
            dgh = da  # gradient w.r.t. W_hh h + b_hh
            dh_prev = recurrent_grads(dgh, s["hd"], [0])

        elif cell == "lstm":
            i, f, g, o, tanh_c, c_prev = s["i"], s["f"], s["g"], s["o"], s["tanh_c"], s["c_prev"]
            do = dh * tanh_c
            dc = dc + dh * o * (1 - tanh_c * tanh_c)  # total gradient w.r.t. c_t
            di = dc * g
            df = dc * c_prev
            dg = dc * i
            dc_prev = dc * f
            da = np.concatenate([di * i * (1 - i),
                                 df * f * (1 - f),
                                 dg * (1 - g * g),
                                 do * o * (1 - o)], axis=1)
            dgi = da
            dgh = da
            dh_prev = recurrent_grads(dgh, s["hd"], [0, 1, 2, 3])
            dc = dc_prev

        elif cell == "gru":
            r, z, n, hn = s["r"], s["z"], s["n"], s["hn"]
            dn = dh * (1 - z)
            dz = dh * (h_prev - n)
            dan = dn * (1 - n * n)  # gradient w.r.t. n's pre-activation
            dr = dan * hn
            dhn = dan * r  # gradient w.r.t. W_hn h + b_hn
            dar = dr * r * (1 - r)
            daz = dz * z * (1 - z)
            dgi = np.concatenate([dar, daz, dan], axis=1)
            dgh = np.concatenate([dar, daz, dhn], axis=1)
            dh_prev = dh * z + recurrent_grads(dgh, s["hd"], [0, 1, 2])

        else:  # gru_original
            r, z, n, rh = s["r"], s["z"], s["n"], s["rh"]
            dn = dh * (1 - z)
            dz = dh * (h_prev - n)
            dan = dn * (1 - n * n)  # gradient w.r.t. n's pre-activation
            hd = s["hd"]
            drh = dan @ w_hh[2 * H:]  # gradient w.r.t. r*h (h under the candidate's mask)
            dr = drh * hd[2]
            dar = dr * r * (1 - r)
            daz = dz * z * (1 - z)
            dgi = np.concatenate([dar, daz, dan], axis=1)
            dgh = np.concatenate([dar, daz, dan], axis=1)  # w.r.t. the W_hh rows' outputs + b_hh
            dw_hh[2 * H:] += dan.T @ rh
            drh_h = drh * r if mr is None else drh * r * mr[:, 2 * H:]
            dh_prev = dh * z + drh_h + recurrent_grads(dgh, hd, [0, 1])

        if mi is None:
            dx[t] = dgi @ w_ih
            dw_ih += dgi.T @ x[t]
        else:
            for k, xd in enumerate(_dropped(x[t], mi, G)):
                rows = slice(k * H, (k + 1) * H)
                dx[t] += (dgi[:, rows] @ w_ih[rows]) * mi[:, k * I:(k + 1) * I]
                dw_ih[rows] += dgi[:, rows].T @ xd
        db_ih += dgi.sum(axis=0)
        db_hh += dgh.sum(axis=0)
        dh = dh_prev

    has_bias = cache["has_bias"]
    return dict(dx=dx,
                dh0=dh,
                dc0=dc if cell == "lstm" else None,
                dw_ih=dw_ih,
                dw_hh=dw_hh,
                db_ih=db_ih if has_bias else None,
                db_hh=db_hh if has_bias else None)
