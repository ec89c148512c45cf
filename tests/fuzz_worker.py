"""The fuzz suite's worker process (see test_fuzz.py): runs one case per input line, answers one line each.

Protocol: each stdin line is a JSON case {"entry": name, ...}; each stdout line is a JSON answer
{"outcome": ..., "detail": ...}. Outcomes:

    ok-checked      returned, and the result equals rnnfast.reference's (or NumPy's) within tolerance
    ok              returned a result of the right shapes (no cheap oracle for this case)
    raised-<Type>   ValueError/TypeError/RuntimeError/MemoryError whose message names an argument
    BAD-...         a disallowed outcome: a wrong result, an exception of another type, a message naming no
                    argument, a caller's array modified

A crash of this process, or a case past the time bound, is counted by the parent.
Each entry point is one function `run_<entry>(case) -> outcome`; to fuzz a new entry point (the training
utilities, the torch adapter), add a run_ function here and a strategy in test_fuzz.py.
"""
import faulthandler
import json
import os
import re
import sys
import traceback
import warnings

import numpy as np

import rnnfast
from rnnfast import reference

ALLOWED = (ValueError, TypeError, RuntimeError, MemoryError)


class Bad(Exception):
    """A disallowed outcome found by a check."""


# --------------------------------------------------------------------------- arrays from their descriptions
FILLS = {"normal": lambda rng, n: rng.standard_normal(n), "zero": lambda rng, n: np.zeros(n),
         "big": lambda rng, n: rng.standard_normal(n) * 1e15}


def make_array(spec, seed):
    """An array from a description {"shape", "dtype", "fill", "layout"}, or a non-array value."""
    if spec is None or not isinstance(spec, dict):
        return spec  # None, or a literal non-array (a list, a string, a number)
    rng = np.random.default_rng(seed)
    shape, dtype = tuple(spec["shape"]), np.dtype(spec["dtype"])
    n = int(np.prod(shape))
    fill = spec.get("fill", "normal")
    vals = FILLS.get(fill, FILLS["normal"])(rng, n)
    if fill in ("nan", "inf") and n:
        vals[rng.integers(0, n, size=max(1, n // 7))] = np.nan if fill == "nan" else np.inf * rng.choice([-1, 1])
    a = (vals * 3 if dtype.kind in "iu" else vals).astype(dtype).reshape(shape)
    layout = spec.get("layout", "c")
    if layout == "f":
        a = np.asfortranarray(a)
    elif layout == "reversed" and a.ndim:
        a = a[::-1].copy()[::-1]  # negative first stride, same values
    elif layout == "bytes" and a.ndim and dtype.kind == "f":
        # A view over a byte buffer whose strides are not whole items (one padding byte per row).
        item = dtype.itemsize
        row = (a.strides[0] if a.ndim > 1 else item) + 1
        buf = np.zeros(row * max(shape[0], 1) + item * n + 8, np.uint8)
        strides = (row,) + tuple(a.strides[1:])
        view = np.ndarray(shape, dtype, buf, offset=1, strides=strides)
        view[...] = a
        a = view
    elif layout == "matrix" and a.ndim == 2:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PendingDeprecationWarning)
            a = np.asmatrix(a)
    elif layout == "list":
        return a.tolist()
    return a


def _snapshot(values):
    return [(v, v.copy()) for v in values if isinstance(v, np.ndarray)]


def _check_unmodified(snap):
    for v, before in snap:
        if not np.array_equal(np.asarray(v), before, equal_nan=before.dtype.kind in "fc"):
            raise Bad("BAD-modified-caller-array")


def _same(got, want, tol, what):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        raise Bad(f"BAD-wrong-shape {what}: {got.shape} vs {want.shape}")
    if not np.array_equal(np.isnan(got), np.isnan(want)):
        raise Bad(f"BAD-wrong-nan-pattern {what}")
    fin = np.isfinite(want)
    if not np.array_equal(got[~fin & ~np.isnan(want)], want[~fin & ~np.isnan(want)]):
        raise Bad(f"BAD-wrong-inf {what}")
    if fin.any():
        scale = max(np.abs(want[fin]).max(), 1.0)
        err = np.abs(got[fin] - want[fin]).max() / scale
        if not err <= tol:
            raise Bad(f"BAD-wrong-result {what}: error {err:.2e}")


# --------------------------------------------------------------------------- layers
LAYER_ARGS = ("input_size", "hidden_size", "num_layers", "nonlinearity", "bias", "batch_first", "dropout",
              "bidirectional", "proj_size", "dtype", "seed", "linear_before_reset", "x", "h0", "c0", "hx",
              "lengths", "dy", "dh_n", "dc_n", "dstate", "layer")


def _layer(case):
    kind, ctor = case["kind"], dict(case["ctor"])
    cls = {"rnn_tanh": rnnfast.RNN, "rnn_relu": rnnfast.RNN, "lstm": rnnfast.LSTM, "gru": rnnfast.GRU,
           "gru_original": rnnfast.GRU}[kind]
    if kind.startswith("rnn"):
        ctor["nonlinearity"] = kind[4:]
    if kind == "gru_original":
        ctor["linear_before_reset"] = False
    return cls(**ctor)


def run_layer(case):
    m = _layer(case)
    if case.get("dropout_later") is not None:
        m.dropout = case["dropout_later"]
    seed = case["seed"]
    x = make_array(case["x"], seed)
    h0 = make_array(case.get("h0"), seed + 1)
    c0 = make_array(case.get("c0"), seed + 2)
    lengths = case.get("lengths")
    lengths = np.array(lengths) if isinstance(lengths, list) and case.get("lengths_array") else lengths
    m.train(case["training"])
    snap = _snapshot([x, h0, c0, lengths])
    lstm = case["kind"] == "lstm"
    if lstm:
        y, (h_n, c_n) = m(x, (h0, c0) if (h0 is not None or c0 is not None) else None, lengths=lengths)
    else:
        y, h_n = m(x, h0, lengths=lengths)
        c_n = None
    _check_unmodified(snap)
    outcome = _check_layer_result(case, m, x, h0, c0, lengths, y, h_n, c_n)
    if case["training"] and case.get("backward"):
        dy = make_array(case["dy"], seed + 3) if isinstance(case.get("dy"), dict) else np.ones_like(y)
        snap = _snapshot([dy])
        res = m.backward(dy, (None, None)) if lstm else m.backward(dy)
        _check_unmodified(snap)
        dx = res[0]
        if np.shape(dx) != np.shape(x):
            raise Bad(f"BAD-wrong-shape dx {np.shape(dx)} vs x {np.shape(x)}")
        if outcome == "ok-checked" and np.isfinite(np.asarray(x, np.float64)).all() and lengths is None:
            _check_layer_backward(case, m, dy, dx)
    return outcome


def _reference_inputs(case, m, x, h0, c0):
    """x as (T, B, I) float64 and h0, c0 as (B, H), when the layer is one layer, one direction."""
    x = np.asarray(x, np.float64)
    batched = x.ndim == 3
    if not batched:
        x = x[:, None, :]
    elif m.batch_first:
        x = x.transpose(1, 0, 2)
    B, H = x.shape[1], m.hidden_size
    h = np.zeros((B, H)) if h0 is None else np.asarray(h0, np.float64).reshape(B, H)
    c = np.zeros((B, H)) if c0 is None else np.asarray(c0, np.float64).reshape(B, H)
    return x, h, c, batched


def _weights(m):
    sd = {k: v.astype(np.float64) for k, v in m.state_dict().items()}
    return sd["weight_ih_l0"], sd["weight_hh_l0"], sd.get("bias_ih_l0"), sd.get("bias_hh_l0")


def _check_layer_result(case, m, x, h0, c0, lengths, y, h_n, c_n):
    if not (m.num_layers == 1 and not m.bidirectional and m.proj_size == 0 and lengths is None):
        return "ok"
    xr, h, c, batched = _reference_inputs(case, m, x, h0, c0)
    if xr.shape[1] == 0:
        if np.size(y) or np.size(h_n):
            raise Bad("BAD-nonempty-output-for-empty-batch")
        return "ok-checked"
    yr, hr, cr, _ = reference.forward(m._cell, xr, h, c if m._cell == "lstm" else None, *_weights(m))
    tol = 1e-4 if m.dtype == np.float32 else 1e-9
    yr = yr if not batched else (yr.transpose(1, 0, 2) if m.batch_first else yr)
    _same(y, yr[:, 0] if not batched else yr, tol, "y")
    _same(h_n, hr[None] if batched else hr, tol, "h_n")
    if c_n is not None:
        _same(c_n, cr[None] if batched else cr, tol, "c_n")
    return "ok-checked"


def _check_layer_backward(case, m, dy, dx):
    x = make_array(case["x"], case["seed"])
    xr, h, c, batched = _reference_inputs(case, m, x, make_array(case.get("h0"), case["seed"] + 1),
                                          make_array(case.get("c0"), case["seed"] + 2))
    if xr.shape[1] == 0:
        return
    _, _, _, cache = reference.forward(m._cell, xr, h, c if m._cell == "lstm" else None, *_weights(m))
    dyr = np.asarray(dy, np.float64)
    dyr = dyr[:, None] if not batched else (dyr.transpose(1, 0, 2) if m.batch_first else dyr)
    g = reference.backward(m._cell, cache, dyr)
    dxr = g["dx"][:, 0] if not batched else (g["dx"].transpose(1, 0, 2) if m.batch_first else g["dx"])
    _same(dx, dxr, 1e-3 if m.dtype == np.float32 else 1e-8, "dx")


# --------------------------------------------------------------------------- cells
CELL_ARGS = ("input_size", "hidden_size", "bias", "nonlinearity", "dtype", "seed", "x_t", "hx", "h", "c", "dh",
             "dc", "dstate", "cell")


def run_cell(case):
    kind, ctor = case["kind"], dict(case["ctor"])
    cls = {"rnn_tanh": rnnfast.RNNCell, "rnn_relu": rnnfast.RNNCell, "lstm": rnnfast.LSTMCell,
           "gru": rnnfast.GRUCell}[kind]
    if kind.startswith("rnn"):
        ctor["nonlinearity"] = kind[4:]
    m = cls(**ctor)
    m.train(case["training"])
    seed = case["seed"]
    x = make_array(case["x"], seed)
    h = make_array(case.get("h0"), seed + 1)
    c = make_array(case.get("c0"), seed + 2)
    snap = _snapshot([x, h, c])
    lstm = kind == "lstm"
    out = m(x, (h, c)) if lstm else m(x, h)
    _check_unmodified(snap)
    h_n = out[0] if lstm else out
    outcome = "ok"
    xa = np.asarray(x, np.float64)
    B = xa.shape[0] if xa.ndim == 2 else 1
    if B and m.hidden_size:
        H = m.hidden_size
        hr0 = np.zeros((B, H)) if h is None else np.asarray(h, np.float64).reshape(B, H)
        cr0 = np.zeros((B, H)) if c is None else np.asarray(c, np.float64).reshape(B, H)
        sd = {k: v.astype(np.float64) for k, v in m.state_dict().items()}
        _, hr, cr, _ = reference.forward(kind, xa.reshape(1, B, -1), hr0, cr0 if lstm else None,
                                         sd["weight_ih"], sd["weight_hh"], sd.get("bias_ih"), sd.get("bias_hh"))
        tol = 1e-4 if m.dtype == np.float32 else 1e-9
        _same(np.asarray(h_n).reshape(B, H), hr, tol, "h'")
        if lstm:
            _same(np.asarray(out[1]).reshape(B, H), cr, tol, "c'")
        outcome = "ok-checked"
    elif np.size(h_n):
        raise Bad("BAD-nonempty-state-for-empty-step")
    if case["training"] and case.get("backward"):
        dh = make_array(case["dy"], seed + 3) if isinstance(case.get("dy"), dict) else np.ones_like(h_n)
        res = m.backward((dh, None)) if lstm else m.backward(dh)
        if np.shape(res[0]) != np.shape(x):
            raise Bad("BAD-wrong-shape dx_t")
    return outcome


# --------------------------------------------------------------------------- matmul, set_num_threads
MATMUL_ARGS = ("a", "b", "out", "accumulate", "shapes", "matmul")


def run_matmul(case):
    seed = case["seed"]
    a, b = make_array(case["a"], seed), make_array(case["b"], seed + 1)
    out = make_array(case.get("out"), seed + 2)
    acc = case.get("accumulate", False)
    out_before = out.copy() if isinstance(out, np.ndarray) else None
    snap = _snapshot([a, b])
    got = rnnfast.matmul(a, b, out=out, accumulate=acc) if out is not None else rnnfast.matmul(a, b, accumulate=acc)
    _check_unmodified(snap)
    want = np.asarray(a, np.float64) @ np.asarray(b, np.float64)
    if acc:
        want = want + out_before
    if out is not None and got is not out:
        raise Bad("BAD-matmul-did-not-return-out")
    tol = 1e-4 if np.asarray(a).dtype == np.float32 else 1e-10
    _same(got, want, tol * max(1, np.asarray(a).shape[1]), "a @ b")
    return "ok-checked"


THREADS_ARGS = ("n", "exact", "set_num_threads")


def run_set_num_threads(case):
    old = rnnfast.get_num_threads()
    try:
        n = case["n"]
        n = {"np.int64": lambda v: np.int64(v), "np.int32": lambda v: np.int32(v), "float": float, "bool": bool,
             "str": str, "int": int}[case["n_type"]](n)
        rnnfast.set_num_threads(n, exact=case["exact"])
        got = rnnfast.get_num_threads()
        if not 1 <= got <= max(int(n), 1):
            raise Bad(f"BAD-thread-count {got} for n={n}")
        r = rnnfast.matmul(np.ones((3, 2)), np.ones((2, 3)))  # later kernel calls still work
        if not np.array_equal(r, np.full((3, 3), 2.0)):
            raise Bad("BAD-kernels-broken-after-set_num_threads")
        return "ok-checked"
    finally:
        rnnfast.set_num_threads(old)


# --------------------------------------------------------------------------- io (Keras)
KERAS_ARGS = ("weights", "kind", "reset_after", "dtype", "batch_first", "activation", "recurrent_activation",
              "module", "kernel", "recurrent_kernel", "bias")


def run_keras(case):
    seed = case["seed"]
    weights = case["weights"]
    weights = [make_array(w, seed + i) for i, w in enumerate(weights)] if isinstance(weights, list) else weights
    snap = _snapshot(weights if isinstance(weights, list) else [])
    m = rnnfast.io.from_keras(weights, case["kind"], **case["kw"])
    _check_unmodified(snap)
    back = rnnfast.io.to_keras(m)
    if len(back) != len(weights):
        raise Bad("BAD-keras-round-trip-length")
    for i, (w0, w1) in enumerate(zip(weights, back)):  # to_keras(from_keras(w)) == w in the layer's dtype
        _same(w1, np.asarray(w0).astype(m.dtype), 0.0, f"weights[{i}] round trip")
    return "ok-checked"


# --------------------------------------------------------------------------- training utilities
LOSS_ARGS = ("pred", "input", "logits", "target", "weight", "mask", "lengths", "loss")


def run_loss(case):
    """rnnfast.losses: (loss, grad) against the NumPy formula of torch's mean reduction, where well-formed."""
    seed = case["seed"]
    pred, target = make_array(case["pred"], seed), make_array(case["target"], seed + 1)
    if case["kind"] == "cross_entropy" and isinstance(target, np.ndarray) and target.dtype.kind == "f":
        target = np.abs(target * 2).astype(np.int64) if case.get("int_target", True) else target
    snap = _snapshot([pred, target])
    fn = getattr(rnnfast.losses, case["kind"])
    loss, grad = fn(pred, target)
    _check_unmodified(snap)
    p = np.asarray(pred, np.float64)
    if np.shape(grad) != p.shape:
        raise Bad(f"BAD-wrong-shape grad: {np.shape(grad)} vs {p.shape}")
    if not np.isfinite(p).all():
        return "ok"
    t = np.asarray(target, np.float64)
    if case["kind"] == "mse":
        want = np.mean((p - t) ** 2) if p.size else np.nan
    elif case["kind"] == "bce_with_logits":
        want = np.mean(np.logaddexp(0, p) - t * p) if p.size else np.nan
    else:
        if p.ndim != 2 or not p.size:
            return "ok"
        z = p - p.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        want = -np.mean(logp[np.arange(p.shape[0]), t.astype(int)])
    _same(loss, want, 1e-5 if np.asarray(pred).dtype == np.float32 else 1e-10, "loss")
    return "ok-checked"


LINEAR_ARGS = ("in_features", "out_features", "x", "dy", "dtype", "seed", "input")


def run_linear(case):
    """rnnfast.nn.Linear forward and backward against NumPy, any leading shape."""
    m = rnnfast.nn.Linear(case["in_features"], case["out_features"], dtype=case["dtype"], seed=case["seed"])
    x = make_array(case["x"], case["seed"] + 1)
    snap = _snapshot([x])
    y = m(x)
    _check_unmodified(snap)
    W, b = (np.asarray(v, np.float64) for v in (m.weight, m.bias))
    xa = np.asarray(x, np.float64)
    tol = 1e-5 if m.dtype == np.float32 else 1e-10
    _same(y, xa @ W.T + b, tol, "y")
    dy = make_array(case["dy"], case["seed"] + 2)
    dx = m.backward(dy)
    dya = np.asarray(dy, np.float64)
    _same(dx, dya @ W, tol, "dx")
    _same(m._params["weight"].grad, dya.reshape(-1, W.shape[0]).T @ xa.reshape(-1, W.shape[1]), tol * 10, "dW")
    return "ok-checked"


TORCH_ARGS = ("input", "hx", "x", "h0", "c0", "input_size", "hidden_size", "num_layers", "dtype", "batch_first",
              "bidirectional", "lengths", "float32", "float64")


def run_torch_lstm(case):
    """rnnfast.torch.LSTM against torch.nn.LSTM with the same weights: outputs and the input's gradient."""
    import torch
    import rnnfast.torch as rt
    dt = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
          "int64": torch.int64}[case["dtype"]]
    kw = dict(num_layers=case["num_layers"], batch_first=case["batch_first"], bidirectional=case["bidirectional"])
    torch.manual_seed(case["seed"])
    ours = rt.LSTM(case["input_size"], case["hidden_size"], **kw, dtype=torch.float64)
    ref = torch.nn.LSTM(case["input_size"], case["hidden_size"], **kw, dtype=torch.float64)
    ref.load_state_dict(ours.state_dict())
    x = torch.as_tensor(make_array(case["x"], case["seed"] + 1)).to(dt)
    if case["noncontiguous"] and x.dim() >= 2:
        x = x.transpose(0, 1).contiguous().transpose(0, 1)
    x.requires_grad_(x.is_floating_point())
    y = ours(x)[0]
    if dt != torch.float64:
        return "ok"
    xr = x.detach().clone().requires_grad_(True)
    yr = ref(xr)[0]
    _same(y.detach().numpy(), yr.detach().numpy(), 1e-9, "y")
    y.sum().backward()
    yr.sum().backward()
    _same(x.grad.numpy(), xr.grad.numpy(), 1e-9, "dx")
    return "ok-checked"


def run__selftest(case):
    """For test_fuzz's check of the harness itself: die as a crashing kernel would, or hang."""
    import time
    if case["what"] == "crash":
        os.abort()
    time.sleep(case["seconds"])
    return "ok"


ARGS = {"_selftest": (), "layer": LAYER_ARGS, "cell": CELL_ARGS, "matmul": MATMUL_ARGS, "set_num_threads": THREADS_ARGS,
        "keras": KERAS_ARGS, "loss": LOSS_ARGS, "linear": LINEAR_ARGS, "torch_lstm": TORCH_ARGS}


def run(case):
    entry = case["entry"]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return {"outcome": globals()["run_" + entry](case)}
    except Bad as e:
        return {"outcome": str(e).split(" ")[0], "detail": str(e)}
    except ALLOWED as e:
        msg = str(e)
        names = ARGS[entry]
        if not any(re.search(r"(?<![A-Za-z_])" + re.escape(n) + r"(?![A-Za-z_])", msg) for n in names):
            return {"outcome": f"BAD-unnamed-{type(e).__name__}", "detail": msg[:300]}
        return {"outcome": f"raised-{type(e).__name__}", "detail": msg[:200]}
    except Exception as e:  # noqa: BLE001 - any other type is the finding
        return {"outcome": f"BAD-{type(e).__name__}", "detail": traceback.format_exc()[-1500:]}


def main():
    # A case that hangs leaves the Python stacks of every thread on stderr shortly before the parent's time
    # bound kills this process (the case's "_dump_s"); the parent puts them in its failure message.
    for line in sys.stdin:
        case = json.loads(line)
        dump_after = float(case.pop("_dump_s", 0))
        if dump_after > 0:
            faulthandler.dump_traceback_later(dump_after, exit=False)
        answer = run(case)
        faulthandler.cancel_dump_traceback_later()
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
