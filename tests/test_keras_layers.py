"""rnnfast.keras against Keras itself: each layer with the same weights as Keras's own layer, forward and
gradients, masks, states, Bidirectional, stateful, fit, configs and saving.

Backend-neutral: the Keras backend is the one KERAS_BACKEND names when this module is imported (torch by default,
like tests/test_io.py). tests/test_keras_backends.py runs this file again in subprocesses under the JAX and
TensorFlow backends (everything) and the numpy backend (the inference tests, named test_forward_*). A spy on the kernel entry point
(rnnfast.keras._engine.forward) proves that the kernels computed each result that is meant to come from them.
"""
import os
import sys
import warnings
import zlib

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import assert_close  # noqa: E402

import keras  # noqa: E402 - the test extra's dependency; the backend is fixed above
from keras import ops  # noqa: E402

import rnnfast.keras as rk  # noqa: E402
from rnnfast.keras import _engine, _records  # noqa: E402

BACKEND = keras.backend.backend()
TRAINS = BACKEND in ("torch", "jax", "tensorflow")  # the numpy backend has no autograd: its run selects test_forward_*
FLOAT64 = BACKEND != "jax" or __import__("jax").config.jax_enable_x64
B, T, I, H = 4, 7, 3, 5
TOL = 2e-5  # float32, normwise relative (the kernels sum in another order than Keras)

VARIANTS = {
    "lstm": ("LSTM", {}),
    "gru": ("GRU", {}),
    "gru_reset_before": ("GRU", {"reset_after": False}),
    "simplernn_tanh": ("SimpleRNN", {}),
    "simplernn_relu": ("SimpleRNN", {"activation": "relu"}),
}
N_STATES = {"LSTM": 2, "GRU": 1, "SimpleRNN": 1}


# ------------------------------------------------------------------------------------------------ helpers
@pytest.fixture
def kernel_calls(monkeypatch):
    """Records every kernel forward: (cell, lengths, training, masks)."""
    calls = []
    real = _engine.forward

    def spy(cell, x, h0, c0, params, lengths, training, masks=(None, None)):
        calls.append((cell, np.array(lengths), training, masks))
        return real(cell, x, h0, c0, params, lengths, training, masks)

    monkeypatch.setattr(_engine, "forward", spy)
    return calls


def seed_of(*parts):
    return zlib.crc32(repr(parts).encode())


def np_(a):
    return np.asarray(ops.convert_to_numpy(a))


def as_list(out):
    return list(out) if isinstance(out, (list, tuple)) else [out]


def random_weights(layer, rng):
    """Keras's initial weights plus noise (so that biases and every gate block differ)."""
    return [(w + rng.uniform(-0.4, 0.4, w.shape)).astype(w.dtype) for w in layer.get_weights()]


def pair(variant, rng, dtype="float32", **kw):
    """(Keras's layer, rnnfast's layer) for a variant, built for (B, T, I), holding the same weights."""
    cls, extra = VARIANTS[variant]
    ref = getattr(keras.layers, cls)(H, dtype=dtype, **extra, **kw)
    ours = getattr(rk, cls)(H, dtype=dtype, **extra, **kw)
    assert isinstance(ours, getattr(keras.layers, cls))
    ref.build((B, T, I))
    ours.build((B, T, I))
    weights = random_weights(ref, rng)
    ref.set_weights(weights)
    ours.set_weights(weights)
    return ref, ours


def inputs(variant, rng, dtype="float32"):
    x = rng.standard_normal((B, T, I)).astype(dtype)
    states = [(0.5 * rng.standard_normal((B, H))).astype(dtype) for _ in range(N_STATES[VARIANTS[variant][0]])]
    return x, states


def masks():
    """Masks of every kind Keras accepts, over (B, T)."""
    right = np.arange(T)[None, :] < np.array([T, 3, 1, 5])[:, None]
    left = ~(np.arange(T)[None, :] < np.array([0, 4, 2, 6])[:, None])
    holes = right.copy()
    holes[0, [1, 4]] = False
    holes[3, 0] = False
    empty = right.copy()
    empty[2] = False  # a row with no step at all
    return {"right": right, "left": left, "holes": holes, "all_masked_row": empty}


def compare(got, ref, name, tol=TOL):
    got, ref = as_list(got), as_list(ref)
    assert len(got) == len(ref), f"{name}: {len(got)} outputs, Keras gives {len(ref)}"
    for k, (g, r) in enumerate(zip(got, ref)):
        assert_close(np_(g), np_(r), tol, f"{name} output {k}")


def loss_of(outs):
    """A fixed, non-uniform weighting of every output (so that each element's gradient is tested)."""
    total = 0.0
    for k, o in enumerate(outs):
        n = int(np.prod(o.shape))
        if "bfloat16" in str(o.dtype):  # the weighting in float32: bf16 would round away most of its pattern
            o = ops.cast(o, "float32")
        w = ops.reshape(ops.cos(ops.arange(n, dtype=o.dtype) * 0.37 + k), o.shape)
        total = total + ops.sum(o * w)
    return total


def gradients(layer, x, states, mask=None, jit=False, **call_kw):
    """(outputs, gradients w.r.t. [x, *states], gradients w.r.t. layer.trainable_variables) through the backend's
    autograd: torch's backward, TensorFlow's GradientTape (jit=True: inside a tf.function), or jax.grad (jit=True:
    under jax.jit) of the layer's stateless call."""
    if BACKEND == "tensorflow":
        import tensorflow as tf

        def step(xs):
            with tf.GradientTape() as tape:
                tape.watch(xs)
                out = as_list(layer(xs[0], initial_state=list(xs[1:]) or None,
                                    mask=None if mask is None else tf.constant(mask), **call_kw))
                loss = loss_of(out)
            grads = tape.gradient(loss, list(xs) + list(layer.trainable_variables))
            return out, grads

        xs = [tf.constant(a) for a in [x, *states]]
        out, grads = (tf.function(step) if jit else step)(xs)
        return [np_(o) for o in out], [np_(g) for g in grads[:len(xs)]], [np_(g) for g in grads[len(xs):]]
    if BACKEND == "torch":
        import torch
        xs = [torch.tensor(a, requires_grad=True) for a in [x, *states]]
        out = as_list(layer(xs[0], initial_state=xs[1:] or None, mask=None if mask is None else torch.tensor(mask),
                            **call_kw))
        variables = [v.value for v in layer.trainable_variables]
        grads = torch.autograd.grad(loss_of(out), xs + variables)
        return [np_(o.detach()) for o in out], [np_(g) for g in grads[:len(xs)]], [np_(g) for g in grads[len(xs):]]
    import jax
    tv = [v.value for v in layer.trainable_variables]
    ntv = [v.value for v in layer.non_trainable_variables]

    def f(tv, xs):
        out, _ = layer.stateless_call(tv, ntv, xs[0], initial_state=list(xs[1:]) or None, mask=mask, **call_kw)
        out = as_list(out)
        return loss_of(out), out

    fn = jax.value_and_grad(f, argnums=(0, 1), has_aux=True)
    if jit:
        fn = jax.jit(fn)
    (_, out), (gw, gx) = fn(tv, [x, *states])
    return [np_(o) for o in out], [np_(g) for g in gx], [np_(g) for g in gw]


def assert_grads_close(got, ref, name):
    scale = max(float(np.max(np.abs(g))) for g in ref[1] + ref[2])
    for part, label in ((0, "outputs"), (1, "input/state grads"), (2, "weight grads")):
        for k, (g, r) in enumerate(zip(got[part], ref[part])):
            assert_close(g, r, TOL, f"{name} {label}[{k}]", scale=scale if part else None)


# ------------------------------------------------------------------------------------------------ forward
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("config", ["last", "sequences_states", "go_backwards", "initial_state", "no_bias"])
def test_forward_matches_keras(variant, config, kernel_calls):
    rng = np.random.default_rng(seed_of(variant, config))
    kw = {"last": {}, "sequences_states": dict(return_sequences=True, return_state=True),
          "go_backwards": dict(return_sequences=True, return_state=True, go_backwards=True),
          "initial_state": dict(return_sequences=True, return_state=True),
          "no_bias": dict(return_sequences=True, use_bias=False)}[config]
    ref, ours = pair(variant, rng, **kw)
    x, states = inputs(variant, rng)
    call = dict(initial_state=states) if config == "initial_state" else {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning: the kernels run it
        got = ours(x, **call)
    compare(got, ref(x, **call), f"{variant} {config}")
    assert [c[0] for c in kernel_calls] == [{"lstm": "lstm", "gru": "gru", "gru_reset_before": "gru_original",
                                             "simplernn_tanh": "rnn_tanh", "simplernn_relu": "rnn_relu"}[variant]]
    assert list(kernel_calls[0][1]) == [T] * B


@pytest.mark.parametrize("variant", ["lstm", "gru", "gru_reset_before", "simplernn_tanh"])
@pytest.mark.parametrize("kind", list(masks()))
@pytest.mark.parametrize("config", ["forward", "go_backwards", "zero_output_for_mask", "last_only", "unroll"])
def test_forward_masked_matches_keras(variant, kind, config, kernel_calls):
    # unroll=True: Keras's unrolled loop reports zeros, not the initial state, before a row's first unmasked step
    # on JAX and numpy too
    rng = np.random.default_rng(seed_of(variant, kind, config))
    kw = dict(return_sequences=config != "last_only", return_state=True, go_backwards=config == "go_backwards",
              zero_output_for_mask=config == "zero_output_for_mask", unroll=config == "unroll")
    ref, ours = pair(variant, rng, **kw)
    x, states = inputs(variant, rng)
    mask = masks()[kind]
    compare(ours(x, mask=mask, initial_state=states), ref(x, mask=mask, initial_state=states),
            f"{variant} {kind} {config}")
    assert len(kernel_calls) == 1
    assert list(kernel_calls[0][1]) == list(np.maximum(mask.sum(axis=1), 1))  # token cost: the unmasked steps


def test_forward_embedding_mask_zero_runs_the_tokens_only(kernel_calls):
    rng = np.random.default_rng(5)
    lengths = np.array([7, 3, 1, 5])
    tokens = rng.integers(1, 20, (B, T))
    tokens[np.arange(T)[None, :] >= lengths[:, None]] = 0
    tokens[1] = 0  # and a row with no token at all
    models = []
    for module in (keras.layers, rk):
        inp = keras.Input((T,), dtype="int32")
        emb = keras.layers.Embedding(20, I, mask_zero=True)(inp)
        y = module.LSTM(H, return_sequences=True)(emb)
        models.append(keras.Model(inp, y))
    models[1].set_weights(random_weights(models[0], rng))
    models[0].set_weights(models[1].get_weights())
    compare(models[1](tokens), models[0](tokens), "Embedding(mask_zero=True) -> LSTM")
    assert list(kernel_calls[0][1]) == [7, 1, 1, 5]


@pytest.mark.parametrize("merge_mode", ["concat", "sum", "mul", "ave", None])
def test_forward_bidirectional_matches_keras(merge_mode, kernel_calls):
    rng = np.random.default_rng(11)
    ref = keras.layers.Bidirectional(keras.layers.GRU(H, return_sequences=True), merge_mode=merge_mode)
    ours = keras.layers.Bidirectional(rk.GRU(H, return_sequences=True), merge_mode=merge_mode)
    assert isinstance(ours.forward_layer, rk.GRU) and isinstance(ours.backward_layer, rk.GRU)
    assert ours.backward_layer.go_backwards
    ref.build((B, T, I))
    ours.build((B, T, I))
    ours.set_weights(random_weights(ref, rng))
    ref.set_weights(ours.get_weights())
    x = rng.standard_normal((B, T, I)).astype("float32")
    mask = masks()["right"]
    compare(ours(x, mask=mask), ref(x, mask=mask), f"Bidirectional merge_mode={merge_mode}")
    assert len(kernel_calls) == 2


def test_forward_stateful_across_two_batches(kernel_calls):
    rng = np.random.default_rng(12)
    ref, ours = pair("lstm", rng, stateful=True, return_sequences=True)
    for step in range(2):
        x = rng.standard_normal((B, T, I)).astype("float32")
        compare(ours(x), ref(x), f"stateful batch {step}")
        for a, b in zip(ours.states, ref.states):
            assert_close(np_(a.value), np_(b.value), TOL, f"stateful states after batch {step}")
    assert np.abs(np_(ours.states[0].value)).max() > 0.01  # the state really carried
    ours.reset_states()
    ref.reset_states()
    x = rng.standard_normal((B, T, I)).astype("float32")
    compare(ours(x), ref(x), "stateful after reset_states")
    assert len(kernel_calls) == 3


if FLOAT64:  # JAX has float64 only with jax_enable_x64
    @pytest.mark.parametrize("variant", list(VARIANTS))
    def test_forward_float64_against_the_keras_equations(variant):
        from test_io import keras_forward
        rng = np.random.default_rng(13)
        cls, extra = VARIANTS[variant]
        ours = getattr(rk, cls)(H, dtype="float64", return_sequences=True, return_state=True, **extra)
        ours.build((B, T, I))
        weights = [(w + rng.uniform(-0.4, 0.4, w.shape)) for w in ours.get_weights()]
        ours.set_weights(weights)
        x, states = inputs(variant, rng, "float64")
        got = as_list(ours(x, initial_state=states))
        assert all(np_(g).dtype == np.float64 for g in got)
        name = {"gru": "gru_reset_after"}.get(variant, variant)
        y, h, c = keras_forward(name, weights, x, *states)
        assert_close(np_(got[0]), y, 1e-12, f"{variant} float64 y")
        assert_close(np_(got[1]), h, 1e-12, f"{variant} float64 h")
        if c is not None:
            assert_close(np_(got[2]), c, 1e-12, f"{variant} float64 c")


def test_forward_inference_with_dropout_runs_the_kernels(kernel_calls):
    # dropout acts in training only: inference of a layer with dropout is the kernels' plain forward
    rng = np.random.default_rng(14)
    ref, ours = pair("gru", rng, dropout=0.3, recurrent_dropout=0.2, return_sequences=True)
    x, _ = inputs("gru", rng)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = ours(x, training=False)
    compare(got, ref(x, training=False), "GRU with dropout, inference")
    assert len(kernel_calls) == 1


DROPOUT_CASES = [
    ("lstm", dict(dropout=0.3, recurrent_dropout=0.4)),
    ("gru", dict(dropout=0.3, recurrent_dropout=0.4)),
    ("simplernn_tanh", dict(dropout=0.3, recurrent_dropout=0.4)),
    ("simplernn_relu", dict(recurrent_dropout=0.4)),
    ("lstm", dict(recurrent_dropout=0.4)),
    ("gru", dict(dropout=0.3)),  # implementation 2: one input mask for every gate
    # one input mask per gate; use_cudnn=False: Keras 3.15.1's own default path on JAX and TensorFlow breaks
    # here (it broadcasts the list of masks as one); rnnfast's layer accepts and ignores the argument
    ("lstm", dict(dropout=0.3, implementation=1, use_cudnn=False)),
    ("gru_reset_before", dict(dropout=0.3)),
    ("gru_reset_before", dict(dropout=0.3, recurrent_dropout=0.4)),
]


def expected_masks(kw):
    """Which masks the kernels must get: (input, recurrent)."""
    return (kw.get("dropout", 0) > 0, kw.get("recurrent_dropout", 0) > 0)


@pytest.mark.parametrize("variant,kw", DROPOUT_CASES)
def test_forward_training_with_dropout_matches_keras_with_the_same_seed(variant, kw, kernel_calls):
    # Keras's layer draws the masks (from the layer's seed) and the kernels apply them: the same units drop out
    rng = np.random.default_rng(seed_of("dropout", variant, sorted(kw.items())))
    ref, ours = pair(variant, rng, return_sequences=True, return_state=True, seed=11, **kw)
    x, states = inputs(variant, rng)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no fallback
        for call in range(2):  # new masks at each call, the same as Keras's
            got = ours(x, initial_state=states, training=True)
            compare(got, ref(x, initial_state=states, training=True), f"{variant} {kw} training call {call}")
    plain = ours(x, initial_state=states, training=False)
    assert not np.allclose(np_(got[0]), np_(plain[0]), atol=1e-3)  # the masks dropped something
    dropped = [c for c in kernel_calls if any(m is not None for m in c[3])]
    assert len(dropped) == 2 and len(kernel_calls) == 3
    assert tuple(m is not None for m in dropped[0][3]) == expected_masks(kw)


@pytest.mark.parametrize("variant,kw,reason", [
    ("lstm", dict(activation="relu"), "activation=relu"),
    ("gru", dict(recurrent_activation="hard_sigmoid"), "recurrent_activation=hard_sigmoid"),
    ("simplernn_tanh", dict(activation="sigmoid"), "activation=sigmoid"),
])
def test_forward_other_activations_fall_back_to_keras_with_one_warning(variant, kw, reason, kernel_calls):
    rng = np.random.default_rng(15)
    ref, ours = pair(variant, rng, return_sequences=True, **kw)
    x, _ = inputs(variant, rng)
    with pytest.warns(UserWarning, match=reason):
        got = ours(x)
    compare(got, ref(x), f"{variant} {kw} (Keras's recurrence)")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per layer
        ours(x)
    assert kernel_calls == []


def test_forward_fallback_reasons():
    layer = rk.GRU(H, dropout=0.2)
    layer.build((B, T, I))
    x = ops.convert_to_tensor(np.zeros((B, T, I), "float32"))
    assert layer._fallback_reason(x, None, training=False) is None
    assert layer._fallback_reason(x, None, training=True) is None  # dropout runs on the kernels
    everything = rk.LSTM(H, dropout=1.0)
    everything.build((B, T, I))
    assert "rate of 1" in everything._fallback_reason(x, None, training=True)

    assert "mask of shape" in layer._fallback_reason(x, ops.ones((B, T, 1), "bool"), training=False)
    if BACKEND == "torch":
        import torch
        assert "meta" in layer._fallback_reason(torch.empty((B, T, I), device="meta"), None, training=False)
    half = rk.LSTM(H, dtype="mixed_float16")
    half.build((B, T, I))
    assert "float16" in half._fallback_reason(x, None, training=False)


# ------------------------------------------------------------------------------------------------ bfloat16
BF16_TOL = 2.0 ** -7  # a few roundings to bf16, normwise
KERAS_BF16_TOL = 5e-2  # Keras's own bf16 layer rounds after every op; the kernels round once


def as_float32(a):
    return np_(ops.cast(a, "float32"))


def bf16_values(a):
    import ml_dtypes
    return np.asarray(a).astype(ml_dtypes.bfloat16).astype(np.float32)


def bf16_trio(variant, rng):
    """(Keras's layer under the mixed_bfloat16 policy, ours under it, ours in float32 with the weights rounded to
    bf16), all holding the same weights."""
    ref, ours = pair(variant, rng, dtype="mixed_bfloat16", return_sequences=True, return_state=True)
    cls, extra = VARIANTS[variant]
    f32 = getattr(rk, cls)(H, return_sequences=True, return_state=True, **extra)
    f32.build((B, T, I))
    f32.set_weights([bf16_values(w) for w in ours.get_weights()])
    return ref, ours, f32


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_forward_bf16_policy_runs_the_kernels_and_rounds_their_float32_result_once(variant, kernel_calls):
    """Under Keras's mixed_bfloat16 policy (bf16 compute, float32 variables) the kernels run float32 on the bf16
    values of the inputs, states and weights and the results are rounded to bf16 once: bit for bit the float32
    layer's on those values, rounded; near Keras's own bf16 layer, which rounds after every op."""
    rng = np.random.default_rng(seed_of("bf16", variant))
    ref, ours, f32 = bf16_trio(variant, rng)
    x, states = inputs(variant, rng)
    assert ours._fallback_reason(ops.convert_to_tensor(x), None, training=False) is None
    got = as_list(ours(x, initial_state=states))
    assert kernel_calls, "the bf16 call did not run on the kernels"
    want = as_list(f32(bf16_values(x), initial_state=[bf16_values(s) for s in states]))
    keras_own = as_list(ref(x, initial_state=states))
    for k, (g, w, r) in enumerate(zip(got, want, keras_own)):
        assert "bfloat16" in str(g.dtype), (k, g.dtype)
        assert np.array_equal(as_float32(g), bf16_values(np_(w))), f"{variant} output {k}"
        assert_close(as_float32(g), as_float32(r), KERAS_BF16_TOL, f"{variant} output {k} against Keras's bf16")


if TRAINS:
    @pytest.mark.parametrize("variant", ["lstm", "gru", "simplernn_tanh"])
    def test_gradients_bf16_policy_match_float32_on_the_bf16_values_and_kerass_bf16(variant, kernel_calls):
        rng = np.random.default_rng(seed_of("bf16 grads", variant))
        ref, ours, f32 = bf16_trio(variant, rng)
        x, states = inputs(variant, rng)
        got = gradients(ours, x, states)
        want = gradients(f32, bf16_values(x), [bf16_values(s) for s in states])
        # Keras 3.15's own GRU cannot be differentiated under this policy on JAX (its scan's carry comes out float32
        # from a bf16 state): there ours is checked against the float32 path alone.
        keras_own = None if BACKEND == "jax" and variant == "gru" else gradients(ref, x, states)
        assert any(training for _, _, training, _ in kernel_calls), "no training forward ran on the kernels"
        scale = max(float(np.max(np.abs(g))) for g in want[1] + want[2])
        for part in (1, 2):
            for k, (g, w) in enumerate(zip(got[part], want[part])):
                g, w = np.asarray(g, np.float32), np.asarray(w, np.float32)
                assert_close(g, w, BF16_TOL, f"{variant} grads {part}[{k}]", scale=scale)
                if keras_own is not None:
                    r = np.asarray(keras_own[part][k], np.float32)
                    assert_close(g, r, KERAS_BF16_TOL, f"{variant} grads {part}[{k}] against Keras's bf16", scale=scale)


def test_gradients_fitting_a_bidirectional_model_warns_of_no_fallback(kernel_calls):
    # Keras infers the output shapes of Bidirectional's sub-layers by a call on symbolic tensors (on the torch
    # backend: tensors of the "meta" device, which Keras's own loop handles); that is no slow path to warn of.
    # Recorded, not raised: Keras catches an exception of its shape inference and tries another way.
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        model = keras.Sequential([keras.Input((T,), dtype="int64"), keras.layers.Embedding(20, I, mask_zero=True),
                                  keras.layers.Bidirectional(rk.LSTM(H)), keras.layers.Dense(1)])
        model.compile(optimizer="sgd", loss="mse")
        model.fit(np.ones((B, T), "int64"), np.ones((B, 1), "float32"), epochs=1, verbose=0)
    fallbacks = [str(w.message) for w in seen if "Keras's own recurrence" in str(w.message)]
    assert not fallbacks, fallbacks
    assert kernel_calls  # the real calls ran the kernels


def test_forward_keras_only_arguments_are_accepted(kernel_calls):
    # implementation, unroll and zero_output_for_mask change nothing else; use_cudnn=True, which Keras's own layer
    # refuses on a CPU with a mask, runs the kernels here.
    rng = np.random.default_rng(16)
    for variant, kw in [("lstm", dict(implementation=1, use_cudnn=True, unroll=True)),
                        ("gru", dict(implementation=2, use_cudnn=False)),
                        ("simplernn_tanh", dict(unroll=True))]:
        ref, _ = pair(variant, rng, return_sequences=True, zero_output_for_mask=True)
        cls, extra = VARIANTS[variant]
        ours = getattr(rk, cls)(H, return_sequences=True, zero_output_for_mask=True, **extra, **kw)
        ours.build((B, T, I))
        ours.set_weights(ref.get_weights())
        assert all(ours.get_config().get(k, v) == v for k, v in kw.items() if k != "implementation")
        x, _ = inputs(variant, rng)
        mask = masks()["holes"]
        compare(ours(x, mask=mask), ref(x, mask=mask), f"{variant} {kw}")
    assert len(kernel_calls) == 3


def test_forward_bad_arguments_raise_kerass_errors():
    with pytest.raises(ValueError, match="use_cudnn"):
        rk.LSTM(H, use_cudnn="sometimes")
    with pytest.raises(ValueError, match="units"):
        rk.GRU(0)
    layer = rk.LSTM(H)
    layer.build((B, T, I))
    with pytest.raises(ValueError, match="4 features per step, but the layer was built for 3"):
        layer(np.zeros((B, T, I + 1), "float32"))
    with pytest.raises(ValueError, match="ndim"):
        layer(np.zeros((B, I), "float32"))


def test_forward_engine_refuses_bad_lengths():
    x = np.zeros((2, 3, 1), np.float32)
    params = [np.zeros((4, 1), np.float32), np.zeros((4, 1), np.float32), np.zeros(4, np.float32),
              np.zeros(4, np.float32)]
    h0 = np.zeros((2, 1), np.float32)
    with pytest.raises(ValueError, match="lengths"):
        _engine.forward("lstm", x, h0, h0, params, [3, 0], training=False)
    with pytest.raises(ValueError, match="lengths"):
        _engine.forward("lstm", x, h0, h0, params, [4, 1], training=False)


# ------------------------------------------------------------------------------------------------ config, saving
def test_forward_config_round_trip_and_registration():
    layer = rk.GRU(H, reset_after=False, return_sequences=True, go_backwards=True, dropout=0.1, seed=3,
                   kernel_regularizer="l2", name="g")
    config = layer.get_config()
    assert config == keras.layers.GRU.from_config(config).get_config()
    again = rk.GRU.from_config(config)
    assert type(again) is rk.GRU and again.get_config() == config
    assert keras.saving.get_registered_name(rk.LSTM) == "rnnfast>LSTM"
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(restored) is rk.GRU and restored.get_config() == config


def _model(module, return_sequences=False):
    return keras.Sequential([keras.Input((T, I)), module.LSTM(H, return_sequences=return_sequences),
                             keras.layers.Dense(1)])


def test_forward_save_load_model_round_trip(tmp_path, kernel_calls):
    rng = np.random.default_rng(17)
    model = _model(rk)
    model.set_weights(random_weights(model, rng))
    x = rng.standard_normal((B, T, I)).astype("float32")
    want = np_(model(x))
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert type(loaded.layers[0]) is rk.LSTM
    compare(loaded(x), want, "load_model")
    assert len(kernel_calls) == 2


def test_forward_load_weights_saved_by_kerass_layers(tmp_path, kernel_calls):
    rng = np.random.default_rng(18)
    theirs = _model(keras.layers)
    theirs.set_weights(random_weights(theirs, rng))
    theirs.save_weights(tmp_path / "w.weights.h5")
    ours = _model(rk)
    ours.load_weights(tmp_path / "w.weights.h5")
    x = rng.standard_normal((B, T, I)).astype("float32")
    compare(ours(x), theirs(x), "load_weights")
    assert [v.path for v in ours.weights] != [] and len(kernel_calls) == 1


# ------------------------------------------------------------------------------------------------ gradients
GRAD_CASES = [(v, m) for v in VARIANTS for m in (None, "holes")] + [("lstm", "all_masked_row"), ("gru", "left")]


@pytest.mark.parametrize("variant,mask_kind", GRAD_CASES)
def test_gradients_match_keras(variant, mask_kind, kernel_calls):
    rng = np.random.default_rng(seed_of(variant, mask_kind))
    ref, ours = pair(variant, rng, return_sequences=True, return_state=True, go_backwards=mask_kind == "left")
    x, states = inputs(variant, rng)
    mask = None if mask_kind is None else masks()[mask_kind]
    got = gradients(ours, x, states, mask)
    assert_grads_close(got, gradients(ref, x, states, mask), f"{variant} mask={mask_kind}")
    assert any(training for _, _, training, _ in kernel_calls), "no training forward ran on the kernels"


if BACKEND == "jax":  # defined only where it runs (no empty or skipped test elsewhere)
    @pytest.mark.parametrize("variant", ["lstm", "gru_reset_before"])
    def test_gradients_under_jit_match_keras(variant, kernel_calls):
        rng = np.random.default_rng(19)
        ref, ours = pair(variant, rng, return_sequences=True, return_state=True)
        x, states = inputs(variant, rng)
        mask = masks()["all_masked_row"]
        assert_grads_close(gradients(ours, x, states, mask, jit=True), gradients(ref, x, states, mask, jit=True),
                           f"{variant} under jit")
        # one training forward, whose record the backward took (nothing left behind, no second forward)
        assert [c[2] for c in kernel_calls] == [True]
        assert not _records.records

    def test_gradients_jax_backward_without_its_record_runs_the_forward_again(kernel_calls, monkeypatch):
        rng = np.random.default_rng(21)
        ref, ours = pair("lstm", rng, return_sequences=True, return_state=True)
        x, states = inputs("lstm", rng)
        mask = masks()["holes"]
        monkeypatch.setattr(_records, "take", lambda token: _records.records.pop(int(token)) and None)
        assert_grads_close(gradients(ours, x, states, mask, jit=True), gradients(ref, x, states, mask, jit=True),
                           "LSTM, backward from a recomputed forward")
        assert [c[2] for c in kernel_calls] == [True, True]
        assert not _records.records

    def test_gradients_jax_records_are_bounded(monkeypatch):
        rng = np.random.default_rng(22)
        _, ours = pair("gru", rng, return_sequences=True)
        x, _ = inputs("gru", rng)
        import jax
        tv = [v.value for v in ours.trainable_variables]
        ntv = [v.value for v in ours.non_trainable_variables]
        monkeypatch.setattr(_records, "KEEP_BYTES", 1)
        for _ in range(3):  # forwards whose backward never runs
            jax.vjp(lambda xx: ours.stateless_call(tv, ntv, xx)[0], x)
        assert len(_records.records) == 1  # the newest only
        _records.records.clear()


if BACKEND == "tensorflow":  # defined only where it runs
    @pytest.mark.parametrize("variant", ["lstm", "gru"])
    def test_gradients_inside_tf_function_match_keras(variant, kernel_calls):
        rng = np.random.default_rng(seed_of("tf.function", variant))
        ref, ours = pair(variant, rng, return_sequences=True, return_state=True, seed=4, recurrent_dropout=0.3)
        x, states = inputs(variant, rng)
        mask = masks()["holes"]
        before = dict(_records.records)
        assert_grads_close(gradients(ours, x, states, mask, jit=True, training=True),
                           gradients(ref, x, states, mask, jit=True, training=True), f"{variant} in tf.function")
        # one training forward, whose record the backward took
        assert [c[2] for c in kernel_calls] == [True]
        assert dict(_records.records) == before

    def test_forward_training_calls_outside_a_tape_keep_no_record(kernel_calls):
        # model(x, training=True) without a gradient tape (Monte Carlo dropout): nothing is kept for a backward
        rng = np.random.default_rng(34)
        _, ours = pair("lstm", rng, return_sequences=True, recurrent_dropout=0.3, seed=2)
        x, _ = inputs("lstm", rng)
        before = len(_records.records)
        for _ in range(3):
            ours(x, training=True)
        assert len(_records.records) == before and [c[2] for c in kernel_calls] == [False] * 3

    def test_gradients_of_a_tf_inference_call_run_the_training_forward_again(kernel_calls):
        # TensorFlow cannot tell a forward that a gradient follows: an inference call keeps no record, and a
        # GradientTape around it gets its gradients from a training forward run again
        rng = np.random.default_rng(33)
        ref, ours = pair("lstm", rng, return_sequences=True, return_state=True)
        x, states = inputs("lstm", rng)
        assert_grads_close(gradients(ours, x, states, training=False), gradients(ref, x, states, training=False),
                           "LSTM, training=False under a GradientTape")
        assert [c[2] for c in kernel_calls] == [False, True]


@pytest.mark.parametrize("variant", ["lstm", "gru", "gru_reset_before", "simplernn_tanh"])
@pytest.mark.parametrize("mask_kind", [None, "holes"])
def test_gradients_with_dropout_match_keras(variant, mask_kind, kernel_calls):
    rng = np.random.default_rng(seed_of("dropout grads", variant, mask_kind))
    ref, ours = pair(variant, rng, return_sequences=True, return_state=True, seed=5, dropout=0.25,
                     recurrent_dropout=0.35)
    x, states = inputs(variant, rng)
    mask = None if mask_kind is None else masks()[mask_kind]
    got = gradients(ours, x, states, mask, training=True)
    assert_grads_close(got, gradients(ref, x, states, mask, training=True), f"{variant} dropout mask={mask_kind}")
    assert any(training and all(m is not None for m in ms) for _, _, training, ms in kernel_calls)


@pytest.mark.parametrize("cls,kw", [("LSTM", {}), ("GRU", {}),
                                    ("LSTM", dict(dropout=0.2, recurrent_dropout=0.3, seed=9)),
                                    ("GRU", dict(recurrent_dropout=0.3, seed=9))])
def test_gradients_fit_matches_keras(cls, kw, kernel_calls):
    """One epoch of fit (Bidirectional over a masked Embedding, SGD) ends at Keras's weights (with dropout: the
    same masks, drawn from the same seeds)."""
    rng = np.random.default_rng(20)
    tokens = rng.integers(1, 20, (16, T))
    tokens[np.arange(T)[None, :] >= rng.integers(1, T + 1, 16)[:, None]] = 0
    target = rng.standard_normal((16, 1)).astype("float32")
    models = []
    for module in (keras.layers, rk):
        models.append(keras.Sequential([
            keras.Input((T,), dtype="int32"), keras.layers.Embedding(20, I, mask_zero=True),
            keras.layers.Bidirectional(getattr(module, cls)(H, **kw)), keras.layers.Dense(1)]))
    weights = random_weights(models[0], rng)
    for m in models:
        m.set_weights(weights)
        m.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        m.fit(tokens, target, batch_size=8, epochs=1, shuffle=False, verbose=0)
    for k, (a, b) in enumerate(zip(models[1].get_weights(), models[0].get_weights())):
        assert_close(a, b, TOL, f"{cls} weight {k} after fit", scale=1.0)
    assert not np.allclose(models[1].get_weights()[1], weights[1])  # training moved them
    assert kernel_calls


@pytest.mark.parametrize("cls", ["LSTM", "SimpleRNN"])
def test_gradients_stateful_fit_matches_keras(cls, kernel_calls):
    """fit of a stateful model: the state the layer writes back after each batch is the next batch's initial state
    (and, on torch, the tensor Keras updates in place after the forward)."""
    rng = np.random.default_rng(23)
    x = rng.standard_normal((3 * B, T, I)).astype("float32")
    target = rng.standard_normal((3 * B, 1)).astype("float32")
    models = []
    for module in (keras.layers, rk):
        # Keras's reference with use_cudnn=False: its default path (backend.lstm) cannot train a stateful LSTM on
        # the torch backend (Keras 3.15.1 overwrites the state it saved for backward: RuntimeError in backward).
        kw = dict(use_cudnn=False) if cls == "LSTM" and module is keras.layers else {}
        models.append(keras.Sequential([keras.Input((T, I), batch_size=B),
                                        getattr(module, cls)(H, stateful=True, **kw), keras.layers.Dense(1)]))
    weights = random_weights(models[0], rng)
    for m in models:
        m.set_weights(weights)
        m.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        m.fit(x, target, batch_size=B, epochs=1, shuffle=False, verbose=0)
    for k, (a, b) in enumerate(zip(models[1].get_weights(), models[0].get_weights())):
        assert_close(a, b, TOL, f"{cls} stateful weight {k} after fit", scale=1.0)
    for a, b in zip(models[1].layers[0].states, models[0].layers[0].states):
        assert_close(np_(a.value), np_(b.value), TOL, f"{cls} state after fit")
    assert sum(training for _, _, training, _ in kernel_calls) == 3
