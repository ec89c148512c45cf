"""rnnfast.io: Keras weight conversion (against the Keras equations written out below, and against real
Keras where it is installed) and save/load (round trips, atomic writes, damaged or foreign files)."""

import json
import os
import sys
import zipfile

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import assert_close  # noqa: E402

import rnnfast  # noqa: E402
from rnnfast import io as rio  # noqa: E402

T, B, I, H = 6, 3, 4, 5
TOL64 = 1e-10
TOL32 = 1e-5


# Keras layer variants: (from_keras kind, from_keras keyword arguments, pytest marks).
KERAS_KINDS = {
    "simplernn_tanh": ("rnn", dict(activation="tanh")),
    "simplernn_relu": ("rnn", dict(activation="relu")),
    "lstm": ("lstm", {}),
    "gru_reset_after": ("gru", dict(reset_after=True)),
    "gru_reset_before": ("gru", dict(reset_after=False)),
}


def keras_kind_params():
    out = []
    for name in KERAS_KINDS:
        marks = []
        out.append(pytest.param(name, id=name, marks=marks))
    return out


# ==================================================================== the Keras equations, in NumPy
# Keras conventions: batch-first x (B, T, I); x @ kernel with gate blocks as columns; LSTM gates i, f, c, o;
# GRU gates z, r, h; h' = z*h + (1-z)*hh.


def sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def keras_forward(name, weights, x, h0=None, c0=None):
    """Keras' forward for the layer variant `name`; returns (sequence (B,T,H), h_T, c_T or None)."""
    kernel, rec = weights[0], weights[1]
    Bx, Tx, _ = x.shape
    Hx = rec.shape[0]
    h = np.zeros((Bx, Hx)) if h0 is None else h0.copy()
    c = np.zeros((Bx, Hx)) if c0 is None else c0.copy()
    ys = []
    for t in range(Tx):
        xt = x[:, t, :]
        if name.startswith("simplernn"):
            bias = weights[2] if len(weights) == 3 else np.zeros(Hx)
            a = xt @ kernel + h @ rec + bias
            h = np.tanh(a) if name.endswith("tanh") else np.maximum(a, 0)
        elif name == "lstm":
            bias = weights[2] if len(weights) == 3 else np.zeros(4 * Hx)
            z = xt @ kernel + h @ rec + bias
            i = sigmoid(z[:, :Hx])
            f = sigmoid(z[:, Hx:2 * Hx])
            g = np.tanh(z[:, 2 * Hx:3 * Hx])
            o = sigmoid(z[:, 3 * Hx:])
            c = f * c + i * g
            h = o * np.tanh(c)
        elif name == "gru_reset_after":
            bias = weights[2] if len(weights) == 3 else np.zeros((2, 3 * Hx))
            xx = xt @ kernel + bias[0]
            hh = h @ rec + bias[1]
            z = sigmoid(xx[:, :Hx] + hh[:, :Hx])
            r = sigmoid(xx[:, Hx:2 * Hx] + hh[:, Hx:2 * Hx])
            n = np.tanh(xx[:, 2 * Hx:] + r * hh[:, 2 * Hx:])
            h = z * h + (1 - z) * n
        elif name == "gru_reset_before":
            bias = weights[2] if len(weights) == 3 else np.zeros(3 * Hx)
            xx = xt @ kernel + bias
            z = sigmoid(xx[:, :Hx] + h @ rec[:, :Hx])
            r = sigmoid(xx[:, Hx:2 * Hx] + h @ rec[:, Hx:2 * Hx])
            n = np.tanh(xx[:, 2 * Hx:] + (r * h) @ rec[:, 2 * Hx:])
            h = z * h + (1 - z) * n
        else:
            raise AssertionError(name)
        ys.append(h)
    return np.stack(ys, axis=1), h, (c if name == "lstm" else None)


def keras_weights(name, I_, H_, bias, rng, dtype=np.float64):
    """Random weights in Keras layout for the variant `name`."""
    G = {"rnn": 1, "lstm": 4, "gru": 3}[KERAS_KINDS[name][0]]
    w = [rng.uniform(-0.6, 0.6, (I_, G * H_)), rng.uniform(-0.6, 0.6, (H_, G * H_))]
    if bias:
        shape = (2, 3 * H_) if name == "gru_reset_after" else (G * H_,)
        w.append(rng.uniform(-0.5, 0.5, shape))
    return [a.astype(dtype) for a in w]


def from_keras(name, weights, **kw):
    kind, extra = KERAS_KINDS[name]
    return rio.from_keras(weights, kind, **extra, **kw)


def run_layer(m, x, h0=None, c0=None):
    """(y, h_n, c_n) of an rnnfast layer; h0/c0 (B, H) or None; c_n None unless LSTM."""
    if isinstance(m, rnnfast.LSTM):
        hx = None if h0 is None else (h0[None], c0[None])
        y, (h_n, c_n) = m(x, hx)
        return y, h_n[0], c_n[0]
    y, h_n = m(x, None if h0 is None else h0[None])
    return y, h_n[0], None


def make_module(name, dtype=np.float64, bias=True, batch_first=False, seed=0):
    """An rnnfast layer with random weights (nonzero bias_hh) for the variant `name`."""
    kind, extra = KERAS_KINDS[name]
    kw = dict(bias=bias, batch_first=batch_first, dtype=dtype, seed=seed)
    if kind == "rnn":
        return rnnfast.RNN(I, H, nonlinearity=extra["activation"], **kw)
    if kind == "lstm":
        return rnnfast.LSTM(I, H, **kw)
    if extra["reset_after"]:
        return rnnfast.GRU(I, H, **kw)
    return rnnfast.GRU(I, H, linear_before_reset=False, **kw)


def inputs(name, rng, dtype=np.float64):
    x = rng.standard_normal((B, T, I)).astype(dtype)
    h0 = (0.5 * rng.standard_normal((B, H))).astype(dtype)
    c0 = (0.5 * rng.standard_normal((B, H))).astype(dtype) if name == "lstm" else None
    return x, h0, c0


# ==================================================================== from_keras against the equations


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("name", keras_kind_params())
def test_from_keras_matches_keras_equations_float64(name, bias):
    rng = np.random.default_rng(1)
    w = keras_weights(name, I, H, bias, rng)
    w_before = [a.copy() for a in w]
    m = from_keras(name, w, dtype=np.float64, batch_first=True).eval()
    assert m.bias is bias and m.batch_first and m.dtype == np.float64
    assert (m.input_size, m.hidden_size) == (I, H)
    x, h0, c0 = inputs(name, rng)
    for with_state in (False, True):
        hs = (h0, c0) if with_state else (None, None)
        y_ref, h_ref, c_ref = keras_forward(name, w, x, *hs)
        y, h_n, c_n = run_layer(m, x, *hs)
        assert_close(y, y_ref, TOL64, f"{name} y (state={with_state})")
        assert_close(h_n, h_ref, TOL64, f"{name} h_n (state={with_state})")
        if c_ref is not None:
            assert_close(c_n, c_ref, TOL64, f"{name} c_n (state={with_state})")
    for a, b in zip(w, w_before):  # the caller's arrays are untouched...
        np.testing.assert_array_equal(a, b)
    for a in w:  # ...and not aliased by the new layer
        a[...] = 0
    y2, _, _ = run_layer(m, x, h0, c0)
    assert_close(y2, keras_forward(name, w_before, x, h0, c0)[0], TOL64, f"{name} y after zeroing the input arrays")


@pytest.mark.parametrize("name", keras_kind_params())
def test_from_keras_time_major_layer_matches_keras_equations(name):
    rng = np.random.default_rng(2)
    w = keras_weights(name, I, H, True, rng)
    m = from_keras(name, w, dtype=np.float64, batch_first=False).eval()
    assert not m.batch_first
    x, h0, c0 = inputs(name, rng)
    y_ref, h_ref, _ = keras_forward(name, w, x, h0, c0)
    y, h_n, _ = run_layer(m, np.ascontiguousarray(x.transpose(1, 0, 2)), h0, c0)
    assert_close(y, y_ref.transpose(1, 0, 2), TOL64, f"{name} y (T, B, H)")
    assert_close(h_n, h_ref, TOL64, f"{name} h_n")


@pytest.mark.parametrize("name", keras_kind_params())
def test_from_keras_float32_weights_to_float32_layer(name):
    rng = np.random.default_rng(3)
    w = keras_weights(name, I, H, True, rng, dtype=np.float32)
    m = from_keras(name, w, batch_first=True).eval()  # default dtype float32
    assert m.dtype == np.float32
    assert all(p.data.dtype == np.float32 for _, p in m.named_parameters())
    x, h0, c0 = inputs(name, rng, np.float32)
    y_ref, h_ref, _ = keras_forward(name, [a.astype(np.float64) for a in w], x.astype(np.float64),
                                    h0.astype(np.float64), None if c0 is None else c0.astype(np.float64))
    y, h_n, _ = run_layer(m, x, h0, c0)
    assert y.dtype == np.float32
    assert_close(y, y_ref, TOL32, f"{name} y float32")
    assert_close(h_n, h_ref, TOL32, f"{name} h_n float32")


def test_from_keras_lstm_puts_bias_into_bias_ih_and_zeros_bias_hh():
    w = keras_weights("lstm", I, H, True, np.random.default_rng(4))
    m = rio.from_keras(w, "lstm", dtype=np.float64)
    np.testing.assert_array_equal(m.bias_ih_l0, w[2])
    np.testing.assert_array_equal(m.bias_hh_l0, np.zeros(4 * H))
    np.testing.assert_array_equal(m.weight_ih_l0, w[0].T)  # same gate order i, f, g(c), o
    np.testing.assert_array_equal(m.weight_hh_l0, w[1].T)


def test_from_keras_gru_reorders_gates_z_r_h_to_r_z_n():
    w = keras_weights("gru_reset_after", I, H, True, np.random.default_rng(5))
    m = rio.from_keras(w, "gru", dtype=np.float64)
    kz, kr, kh = np.split(w[0], 3, axis=1)
    np.testing.assert_array_equal(m.weight_ih_l0, np.concatenate([kr, kz, kh], axis=1).T)
    bz, br, bh = np.split(w[2][1], 3)
    np.testing.assert_array_equal(m.bias_hh_l0, np.concatenate([br, bz, bh]))


# ==================================================================== to_keras and round trips


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("name", keras_kind_params())
def test_to_keras_weights_satisfy_keras_equations(name, bias):
    m = make_module(name, bias=bias, seed=6).eval()
    if bias:  # make sure bias_hh is far from zero, so that folding it is exercised
        m._params["bias_hh_l0"].data[...] = np.random.default_rng(7).uniform(-0.5, 0.5, m.bias_hh_l0.shape)
    before = m.state_dict()
    w = rio.to_keras(m)
    assert len(w) == (3 if bias else 2)
    assert all(a.dtype == np.float64 for a in w)
    x, h0, c0 = inputs(name, np.random.default_rng(8))
    y_ref, h_ref, c_ref = keras_forward(name, w, x, h0, c0)
    y, h_n, c_n = run_layer(m, np.ascontiguousarray(x.transpose(1, 0, 2)), h0, c0)
    assert_close(y, y_ref.transpose(1, 0, 2), TOL64, f"{name} y")
    assert_close(h_n, h_ref, TOL64, f"{name} h_n")
    if c_ref is not None:
        assert_close(c_n, c_ref, TOL64, f"{name} c_n")
    # The module is unchanged and the returned arrays are its own copies.
    for a in w:
        a[...] = 7
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


@pytest.mark.parametrize("batch_first", [False, True], ids=["tmajor", "bfirst"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("name", keras_kind_params())
def test_from_keras_of_to_keras_reproduces_module_outputs(name, bias, batch_first):
    m = make_module(name, bias=bias, batch_first=batch_first, seed=9).eval()
    m2 = from_keras(name, rio.to_keras(m), dtype=np.float64, batch_first=batch_first).eval()
    assert type(m2) is type(m)
    assert getattr(m2, "linear_before_reset", True) == getattr(m, "linear_before_reset", True)
    if isinstance(m, rnnfast.RNN):
        assert m2.nonlinearity == m.nonlinearity
    x, h0, c0 = inputs(name, np.random.default_rng(10))
    if not batch_first:
        x = np.ascontiguousarray(x.transpose(1, 0, 2))
    for got, ref, what in zip(run_layer(m2, x, h0, c0), run_layer(m, x, h0, c0), ("y", "h_n", "c_n")):
        if ref is not None:
            assert_close(got, ref, TOL64, f"{name} {what}")


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("name", keras_kind_params())
def test_to_keras_of_from_keras_returns_the_same_arrays(name, bias):
    w = keras_weights(name, I, H, bias, np.random.default_rng(11))
    kind, extra = KERAS_KINDS[name]
    back = rio.to_keras(rio.from_keras(w, kind, **extra, dtype=np.float64))
    assert len(back) == len(w)
    for a, b in zip(back, w):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


def test_to_keras_folds_lstm_bias_ih_plus_bias_hh():
    m = rnnfast.LSTM(I, H, dtype=np.float64, seed=12)
    w = rio.to_keras(m)
    assert w[2].shape == (4 * H,)
    np.testing.assert_array_equal(w[2], m.bias_ih_l0 + m.bias_hh_l0)


def test_to_keras_gru_keeps_two_bias_rows_in_keras_order():
    m = rnnfast.GRU(I, H, dtype=np.float64, seed=13)
    w = rio.to_keras(m)
    assert w[2].shape == (2, 3 * H)
    r, z, n = np.split(m.bias_ih_l0, 3)
    np.testing.assert_array_equal(w[2][0], np.concatenate([z, r, n]))
    r, z, n = np.split(m.bias_hh_l0, 3)
    np.testing.assert_array_equal(w[2][1], np.concatenate([z, r, n]))


def test_to_keras_original_gru_has_single_folded_bias():
    m = rnnfast.GRU(I, H, linear_before_reset=False, dtype=np.float64, seed=14)
    w = rio.to_keras(m)
    assert w[2].shape == (3 * H,)
    r, z, n = np.split(m.bias_ih_l0 + m.bias_hh_l0, 3)
    np.testing.assert_array_equal(w[2], np.concatenate([z, r, n]))


# ==================================================================== argument errors


def good_weights(name="lstm", bias=True):
    return keras_weights(name, I, H, bias, np.random.default_rng(15))


@pytest.mark.parametrize("kind", ["lstmx", "", "simple_rnn"])
def test_from_keras_unknown_kind_is_valueerror(kind):
    with pytest.raises(ValueError, match="kind"):
        rio.from_keras(good_weights(), kind)


def test_from_keras_kind_not_str_is_typeerror():
    with pytest.raises(TypeError, match="kind"):
        rio.from_keras(good_weights(), 4)


def test_from_keras_kind_is_case_insensitive():
    assert isinstance(rio.from_keras(good_weights(), "LSTM"), rnnfast.LSTM)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_from_keras_hard_sigmoid_is_refused_with_explanation(kind):
    name = "lstm" if kind == "lstm" else "gru_reset_after"
    with pytest.raises(ValueError, match="hard_sigmoid"):
        rio.from_keras(good_weights(name), kind, recurrent_activation="hard_sigmoid")


@pytest.mark.parametrize("kind,act", [("lstm", "relu"), ("gru", "sigmoid"), ("rnn", "sigmoid"), ("rnn", "gelu")])
def test_from_keras_unsupported_activation_is_valueerror(kind, act):
    name = {"lstm": "lstm", "gru": "gru_reset_after", "rnn": "simplernn_tanh"}[kind]
    with pytest.raises(ValueError, match="activation"):
        rio.from_keras(good_weights(name), kind, activation=act)


def test_from_keras_accepts_activation_functions_by_name():
    def tanh(a):  # stands in for keras.activations.tanh
        return np.tanh(a)

    def sigmoid(a):
        return a

    m = rio.from_keras(good_weights(), "lstm", activation=tanh, recurrent_activation=sigmoid)
    assert isinstance(m, rnnfast.LSTM)
    with pytest.raises(TypeError, match="activation"):
        rio.from_keras(good_weights(), "lstm", activation=3)


def test_from_keras_simplernn_recurrent_activation_other_than_default_is_valueerror():
    with pytest.raises(ValueError, match="recurrent_activation"):
        rio.from_keras(good_weights("simplernn_tanh"), "rnn", recurrent_activation="tanh")


@pytest.mark.parametrize("weights", [None, "abc", np.zeros((3, 3))], ids=["none", "str", "ndarray"])
def test_from_keras_weights_not_a_list_is_typeerror(weights):
    with pytest.raises(TypeError, match="weights"):
        rio.from_keras(weights, "lstm")


@pytest.mark.parametrize("n", [0, 1, 4])
def test_from_keras_wrong_number_of_arrays_is_valueerror(n):
    w = (good_weights() * 2)[:n]
    with pytest.raises(ValueError, match="weights"):
        rio.from_keras(w, "lstm")


def test_from_keras_non_real_array_is_typeerror():
    w = good_weights()
    w[0] = w[0].astype(complex)
    with pytest.raises(TypeError, match=r"weights\[0\]"):
        rio.from_keras(w, "lstm")
    w = good_weights()
    w[2] = np.array(["a"] * (4 * H))
    with pytest.raises(TypeError, match=r"weights\[2\]"):
        rio.from_keras(w, "lstm")


@pytest.mark.parametrize("which,shape,match", [
    (0, (I, 3 * H), r"weights\[0\] \(kernel\)"),
    (0, (4 * H,), r"weights\[0\] \(kernel\)"),
    (1, (H, 3 * H), r"weights\[1\] \(recurrent_kernel\)"),
    (1, (H + 1, 4 * H), r"weights\[1\] \(recurrent_kernel\)"),
    (2, (4 * H + 1,), r"weights\[2\] \(bias\)"),
    (2, (2, 4 * H), r"weights\[2\] \(bias\)"),
])
def test_from_keras_misshaped_array_is_valueerror_naming_it(which, shape, match):
    w = good_weights()
    w[which] = np.zeros(shape)
    with pytest.raises(ValueError, match=match):
        rio.from_keras(w, "lstm")


def test_from_keras_gru_bias_shape_must_match_reset_after():
    with pytest.raises(ValueError, match="reset_after=False"):
        rio.from_keras(keras_weights("gru_reset_before", I, H, True, np.random.default_rng(0)), "gru")
    with pytest.raises(ValueError, match="reset_after=True"):
        rio.from_keras(good_weights("gru_reset_after"), "gru", reset_after=False)


def test_from_keras_reset_after_false_for_lstm_is_valueerror():
    with pytest.raises(ValueError, match="reset_after"):
        rio.from_keras(good_weights(), "lstm", reset_after=False)


@pytest.mark.parametrize("arg,value", [("reset_after", 1), ("batch_first", "yes"), ("dtype", np.int32),
                                       ("dtype", "float16")])
def test_from_keras_bad_keyword_is_typeerror_naming_it(arg, value):
    with pytest.raises(TypeError, match=arg):
        rio.from_keras(good_weights(), "lstm", **{arg: value})


@pytest.mark.parametrize("module", [None, "lstm", object()], ids=["none", "str", "object"])
def test_to_keras_non_rnnfast_module_is_typeerror(module):
    with pytest.raises(TypeError, match="module"):
        rio.to_keras(module)


@pytest.mark.parametrize("attr,value", [("num_layers", 2), ("bidirectional", True), ("proj_size", 3)])
def test_to_keras_inexpressible_module_is_valueerror(attr, value):
    # rnnfast cannot build such layers yet; set the attribute to stand in for one.
    m = rnnfast.LSTM(I, H)
    setattr(m, attr, value)
    with pytest.raises(ValueError, match=attr):
        rio.to_keras(m)


# ==================================================================== real Keras, where installed


def _keras():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    return pytest.importorskip("keras")


def _np(a):
    import keras

    return np.asarray(keras.ops.convert_to_numpy(a), dtype=np.float64)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("name", keras_kind_params())
def test_real_keras_layer_matches_converted_layer(name, bias):
    # float32, Keras' default: with dtype="float64" Keras' torch backend still runs some products in
    # float32 (its ops.matmul promotes float64 x float64 to float32), so float64 would not be tighter.
    keras = _keras()
    kind, extra = KERAS_KINDS[name]
    common = dict(return_sequences=True, return_state=True, use_bias=bias)
    if kind == "rnn":
        layer = keras.layers.SimpleRNN(H, activation=extra["activation"], **common)
    elif kind == "lstm":
        layer = keras.layers.LSTM(H, **common)
    else:
        layer = keras.layers.GRU(H, reset_after=extra["reset_after"], **common)
    rng = np.random.default_rng(16)
    x, h0, c0 = inputs(name, rng, np.float32)
    layer(x)  # builds the layer
    layer.set_weights(keras_weights(name, I, H, bias, rng, np.float32))
    state = [h0, c0] if kind == "lstm" else [h0]
    outs = [_np(o) for o in layer(x, initial_state=state)]

    m = rio.from_keras(layer.get_weights(), kind, dtype=np.float32, batch_first=True, **extra,
                       **({} if kind == "rnn" else {"recurrent_activation": layer.recurrent_activation})).eval()
    y, h_n, c_n = run_layer(m, x, h0, c0)
    assert_close(y, outs[0], TOL32, f"{name} y vs keras")
    assert_close(h_n, outs[1], TOL32, f"{name} h_n vs keras")
    if kind == "lstm":
        assert_close(c_n, outs[2], TOL32, f"{name} c_n vs keras")

    # And back: Keras loaded with to_keras() of an rnnfast layer computes the same.
    m2 = make_module(name, dtype=np.float32, bias=bias, batch_first=True, seed=17).eval()
    layer.set_weights(rio.to_keras(m2))
    outs2 = [_np(o) for o in layer(x, initial_state=state)]
    y2, h2, _ = run_layer(m2, x, h0, c0)
    assert_close(y2, outs2[0], TOL32, f"{name} y of to_keras() in keras")
    assert_close(h2, outs2[1], TOL32, f"{name} h_n of to_keras() in keras")


# ==================================================================== save / load

SAVE_CASES = [(name, dtype, bias, bf)
              for name in ("simplernn_tanh", "simplernn_relu", "lstm", "gru_reset_after", "gru_reset_before")
              for dtype in (np.float32, np.float64)
              for bias in (True, False)
              for bf in (False, True)]


def _save_params():
    out = []
    for name, dtype, bias, bf in SAVE_CASES:
        marks = []
        cid = f"{name}-{np.dtype(dtype).name}-{'bias' if bias else 'nobias'}-{'bfirst' if bf else 'tmajor'}"
        out.append(pytest.param(name, dtype, bias, bf, id=cid, marks=marks))
    return out


def constructor_args(m):
    args = {k: getattr(m, k) for k in ("input_size", "hidden_size", "num_layers", "bias", "batch_first",
                                       "dropout", "bidirectional", "dtype")}
    for k in ("proj_size", "nonlinearity", "linear_before_reset"):
        if hasattr(m, k):
            args[k] = getattr(m, k)
    return args


@pytest.mark.parametrize("name,dtype,bias,batch_first", _save_params())
def test_save_load_round_trip_same_state_and_outputs(tmp_path, name, dtype, bias, batch_first):
    m = make_module(name, dtype=dtype, bias=bias, batch_first=batch_first, seed=18)
    path = tmp_path / "model.npz"
    rio.save(m, path)
    m2 = rio.load(path)
    assert type(m2) is type(m)
    assert constructor_args(m2) == constructor_args(m)
    sd, sd2 = m.state_dict(), m2.state_dict()
    assert list(sd2) == list(sd)
    for k in sd:
        assert sd2[k].dtype == sd[k].dtype and sd2[k].shape == sd[k].shape
        np.testing.assert_array_equal(sd2[k], sd[k])
    m.eval()
    m2.eval()
    x, h0, c0 = inputs(name, np.random.default_rng(19), dtype)
    if not batch_first:
        x = np.ascontiguousarray(x.transpose(1, 0, 2))
    for got, ref in zip(run_layer(m2, x, h0, c0), run_layer(m, x, h0, c0)):
        if ref is not None:
            np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("cls", [rnnfast.RNN, rnnfast.LSTM, rnnfast.GRU], ids=["rnn", "lstm", "gru"])
def test_save_load_round_trip_multilayer_bidirectional_dropout(tmp_path, cls):
    m = cls(I, H, num_layers=2, bidirectional=True, dropout=0.25, dtype=np.float64, seed=33)
    rio.save(m, tmp_path / "m.npz")
    m2 = rio.load(tmp_path / "m.npz")
    assert type(m2) is cls and constructor_args(m2) == constructor_args(m)
    sd, sd2 = m.state_dict(), m2.state_dict()
    assert list(sd2) == list(sd)
    for k in sd:
        np.testing.assert_array_equal(sd2[k], sd[k])
    m.eval()
    m2.eval()
    x = np.random.default_rng(34).standard_normal((T, B, I))
    out, out2 = m(x), m2(x)
    np.testing.assert_array_equal(out2[0], out[0])
    with pytest.raises(ValueError, match="num_layers=2"):
        rio.to_keras(m)


def test_save_load_accepts_str_path_and_writes_exactly_that_name(tmp_path):
    m = rnnfast.GRU(I, H, seed=20)
    path = str(tmp_path / "weights.bin")  # no .npz suffix is added
    rio.save(m, path)
    assert os.listdir(tmp_path) == ["weights.bin"]
    assert zipfile.is_zipfile(path)
    np.testing.assert_array_equal(rio.load(path).weight_hh_l0, m.weight_hh_l0)


def test_saved_file_metadata_records_format_and_constructor_arguments(tmp_path):
    m = rnnfast.LSTM(I, H, bias=False, batch_first=True, dtype=np.float64, seed=21)
    rio.save(m, tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz", allow_pickle=False) as z:
        assert sorted(z.files) == sorted(["weight_ih_l0", "weight_hh_l0", rio.METADATA_KEY])
        meta = json.loads(str(z[rio.METADATA_KEY][()]))
    assert meta["format"] == "rnnfast" and meta["format_version"] == 1 and meta["class"] == "LSTM"
    assert meta["args"] == {"input_size": I, "hidden_size": H, "num_layers": 1, "bias": False, "batch_first": True,
                            "dropout": 0.0, "bidirectional": False, "proj_size": 0, "dtype": "float64"}


def test_save_does_not_change_the_module(tmp_path):
    m = rnnfast.RNN(I, H, nonlinearity="relu", seed=22).eval()
    before = m.state_dict()
    rio.save(m, tmp_path / "m.npz")
    assert m.training is False
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_loaded_module_is_independent_and_trainable(tmp_path):
    m = rnnfast.GRU(I, H, dtype=np.float64, seed=23)
    rio.save(m, tmp_path / "m.npz")
    m2 = rio.load(tmp_path / "m.npz")
    assert m2.training
    x = np.random.default_rng(24).standard_normal((T, B, I))
    y, _ = m2(x)
    m2.backward(np.ones_like(y))
    assert all(np.any(p.grad != 0) for _, p in m2.named_parameters())
    m2._params["weight_ih_l0"].data[...] = 0
    assert np.any(m.weight_ih_l0 != 0)


def test_save_leaves_no_temp_files_and_fsyncs(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    rio.save(rnnfast.LSTM(I, H, seed=25), tmp_path / "m.npz")
    assert os.listdir(tmp_path) == ["m.npz"]
    assert synced, "save() never called os.fsync"


def test_save_over_existing_file_replaces_it(tmp_path):
    path = tmp_path / "m.npz"
    rio.save(rnnfast.GRU(I, H, seed=26), path)
    m2 = rnnfast.LSTM(I + 1, H + 1, dtype=np.float64, seed=27)
    rio.save(m2, path)
    assert os.listdir(tmp_path) == ["m.npz"]
    m3 = rio.load(path)
    assert isinstance(m3, rnnfast.LSTM) and m3.input_size == I + 1
    np.testing.assert_array_equal(m3.weight_hh_l0, m2.weight_hh_l0)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_save_over_existing_file_keeps_its_permissions(tmp_path):
    path = tmp_path / "m.npz"
    rio.save(rnnfast.GRU(I, H, seed=26), path)
    os.chmod(path, 0o640)
    rio.save(rnnfast.GRU(I, H, seed=27), path)
    assert os.stat(path).st_mode & 0o777 == 0o640


def test_failed_save_leaves_previous_file_intact_and_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "m.npz"
    rio.save(rnnfast.GRU(I, H, seed=28), path)
    before = path.read_bytes()

    def broken_savez(f, **arrays):
        f.write(b"PK\x03\x04 partial")  # a half-written archive
        raise RuntimeError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(RuntimeError, match="disk full"):
        rio.save(rnnfast.LSTM(I, H, seed=29), path)
    assert os.listdir(tmp_path) == ["m.npz"]
    assert path.read_bytes() == before
    assert isinstance(rio.load(path), rnnfast.GRU)


def test_failed_replace_removes_temp_file(tmp_path, monkeypatch):
    def broken_replace(src, dst):
        raise OSError("rename failed")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="rename failed"):
        rio.save(rnnfast.RNN(I, H, seed=30), tmp_path / "m.npz")
    assert os.listdir(tmp_path) == []


def test_save_bad_arguments(tmp_path):
    m = rnnfast.GRU(I, H)
    with pytest.raises(TypeError, match="module"):
        rio.save(object(), tmp_path / "m.npz")
    with pytest.raises(TypeError, match="path"):
        rio.save(m, 123)
    with pytest.raises(ValueError, match="path"):
        rio.save(m, "")
    with pytest.raises(ValueError, match="directory"):
        rio.save(m, tmp_path)
    with pytest.raises(TypeError, match="path"):
        rio.load(None)
    with pytest.raises(FileNotFoundError):
        rio.load(tmp_path / "missing.npz")
    assert os.listdir(tmp_path) == []


# -------------------------------------------------------------------- damaged and foreign files


@pytest.fixture
def saved(tmp_path):
    """A valid saved LSTM: (path, its bytes)."""
    path = tmp_path / "good.npz"
    rio.save(rnnfast.LSTM(I, H, dtype=np.float64, seed=31), path)
    return path, path.read_bytes()


def rewrite(path, edit_meta=None, edit_arrays=None):
    """Re-write a saved file with its metadata dict and/or its arrays dict edited in place."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays.pop(rio.METADATA_KEY)[()]))
    if edit_meta:
        edit_meta(meta)
    if edit_arrays:
        edit_arrays(arrays)
    arrays[rio.METADATA_KEY] = np.array(json.dumps(meta))
    np.savez(path, **arrays)


@pytest.mark.parametrize("keep", [0, 1, 10, 100, 0.5, -100, -1])
def test_load_truncated_file_is_valueerror(saved, tmp_path, keep):
    path, data = saved
    n = int(len(data) * keep) if isinstance(keep, float) else (keep if keep >= 0 else len(data) + keep)
    bad = tmp_path / "truncated.npz"
    bad.write_bytes(data[:n])
    with pytest.raises(ValueError, match="truncated.npz"):
        rio.load(bad)


def test_load_every_prefix_and_random_bit_flips_give_valueerror_or_intact_module(saved, tmp_path):
    path, data = saved
    want = rio.load(path).state_dict()
    bad = tmp_path / "damaged.npz"
    rng = np.random.default_rng(35)
    damaged = [data[:n] for n in range(0, len(data), 13)]
    for _ in range(300):
        b = bytearray(data)
        b[int(rng.integers(len(b)))] ^= 1 << int(rng.integers(8))
        damaged.append(bytes(b))
    for blob in damaged:
        bad.write_bytes(blob)
        try:
            m = rio.load(bad)
        except ValueError:
            continue
        # A flip the zip format does not detect (e.g. in a timestamp): the arrays are CRC-checked, so intact.
        for k, v in m.state_dict().items():
            np.testing.assert_array_equal(v, want[k])


def test_load_corrupted_member_is_valueerror(saved, tmp_path):
    path, data = saved
    i = data.index(b"weight_hh_l0") + 200  # inside that member's data
    bad = tmp_path / "corrupt.npz"
    bad.write_bytes(data[:i] + bytes(b ^ 0xFF for b in data[i:i + 16]) + data[i + 16:])
    with pytest.raises(ValueError):
        rio.load(bad)


def test_load_random_bytes_is_valueerror(tmp_path):
    bad = tmp_path / "random.npz"
    bad.write_bytes(np.random.default_rng(32).bytes(4096))
    with pytest.raises(ValueError, match="not an .npz archive"):
        rio.load(bad)


def test_load_npy_file_is_valueerror(tmp_path):
    bad = tmp_path / "a.npy"
    np.save(bad, np.zeros(3))
    with pytest.raises(ValueError, match="npy"):
        rio.load(bad)


def test_load_plain_npz_without_metadata_is_valueerror(tmp_path):
    bad = tmp_path / "plain.npz"
    np.savez(bad, **rnnfast.GRU(I, H).state_dict())
    with pytest.raises(ValueError, match="metadata"):
        rio.load(bad)


def test_load_pickled_object_array_is_refused_not_unpickled(tmp_path):
    bad = tmp_path / "pickle.npz"
    np.savez(bad, **{rio.METADATA_KEY: np.array([{"format": "rnnfast"}], dtype=object)})
    with pytest.raises(ValueError, match=rio.METADATA_KEY):
        rio.load(bad)


@pytest.mark.parametrize("edit,match", [
    (lambda m: m.update(format_version=2), "version 2"),
    (lambda m: m.update(format_version="1"), "version"),
    (lambda m: m.update(format="keras"), "format"),
    (lambda m: m.pop("format_version"), "version"),
    (lambda m: m.update({"class": "Transformer"}), "class"),
    (lambda m: m.pop("args"), "args"),
    (lambda m: m["args"].pop("hidden_size"), "hidden_size"),
    (lambda m: m["args"].update(hidden_size="5"), "hidden_size"),
    (lambda m: m["args"].update(hidden_size=0), "hidden_size"),
    (lambda m: m["args"].update(dtype="int8"), "dtype"),
    (lambda m: m["args"].update(nonlinearity="tanh"), "nonlinearity"),
    (lambda m: m["args"].update(num_layers=2), "num_layers|weight_ih_l1"),  # unbuildable, or arrays missing
], ids=["version2", "version_str", "format_name", "no_version", "class", "no_args", "missing_arg", "arg_type",
        "arg_value", "dtype", "foreign_arg", "two_layers_one_layer_arrays"])
def test_load_bad_metadata_is_valueerror(saved, edit, match):
    path, _ = saved
    rewrite(path, edit_meta=edit)
    with pytest.raises(ValueError, match=match):
        rio.load(path)


def test_load_metadata_not_json_is_valueerror(saved):
    path, _ = saved
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays[rio.METADATA_KEY] = np.array("{not json")
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match="JSON"):
        rio.load(path)


def test_load_missing_array_is_valueerror_naming_it(saved):
    path, _ = saved
    rewrite(path, edit_arrays=lambda a: a.pop("bias_hh_l0"))
    with pytest.raises(ValueError, match="missing arrays.*bias_hh_l0"):
        rio.load(path)


def test_load_unexpected_array_is_valueerror_naming_it(saved):
    path, _ = saved
    rewrite(path, edit_arrays=lambda a: a.update(weight_hr_l0=np.zeros((2, 2))))
    with pytest.raises(ValueError, match="weight_hr_l0"):
        rio.load(path)


def test_load_misshaped_array_is_valueerror_naming_it(saved):
    path, _ = saved
    rewrite(path, edit_arrays=lambda a: a.update(weight_ih_l0=a["weight_ih_l0"][:, :-1]))
    with pytest.raises(ValueError, match="weight_ih_l0.*shape"):
        rio.load(path)


def test_load_wrong_dtype_array_is_valueerror_naming_it(saved):
    path, _ = saved
    rewrite(path, edit_arrays=lambda a: a.update(bias_ih_l0=a["bias_ih_l0"].astype(np.float32)))
    with pytest.raises(ValueError, match="bias_ih_l0.*dtype"):
        rio.load(path)


# ==================================================================== package exports


def test_package_exports_save_load_and_io():
    if not hasattr(rnnfast, "save"):
        pytest.skip("rnnfast/__init__.py does not export save/load yet")
    assert rnnfast.save is rio.save and rnnfast.load is rio.load and rnnfast.io is rio
