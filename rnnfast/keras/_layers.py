"""LSTM, GRU and SimpleRNN: Keras's own layers with the recurrence on rnnfast's kernels.

Each class subclasses the Keras layer of its name, so everything but the recurrence is Keras's: the constructor
and its defaults, ``get_config``, the weights (names, shapes, initializers, regularizers, constraints), ``build``,
serialization, ``stateful``, ``Bidirectional``, masks and the return conventions. The only override is
``inner_loop``, the hook Keras's RNN layer calls with the whole sequence (and Keras's own LSTM/GRU overrides to
reach their cuDNN path): it returns Keras's ``(last_output, outputs, states)``. Where the kernels compute exactly
what Keras would, the call goes to them; otherwise to Keras's own ``inner_loop`` (see ``_fallback_reason``).

Masks: Keras runs a masked step by keeping the state and repeating the previous output (before the first unmasked
step: zeros on the torch backend, the initial state on JAX and numpy unless ``unroll=True``; zeros at every masked
step with ``zero_output_for_mask=True``). That is the same as dropping the
masked steps from the sequence, so any mask (right-padded, left-padded, holes, all-masked rows) is computed
exactly: each row's unmasked steps are gathered to the front (``take_along_axis``), the kernels run them with
per-row lengths (skipping the padding), and the outputs are gathered back to the steps Keras reports them at.
Everything around the kernel call is written in ``keras.ops``, so the backend's autograd differentiates it; the
kernel call itself is the backend module's ``run`` (_torch, _jax, _numpy), differentiable on torch and JAX.

Dropout: Keras's RNN layer draws the cell's masks before it calls ``inner_loop`` (one per gate with
``implementation=1``, which ``recurrent_dropout > 0`` forces; one for all gates otherwise); in training the kernels
apply those very masks, the input masks before the input GEMM and the recurrent ones inside the step product
(rnnfast's recurrent dropout), so a seeded layer drops the same units as Keras's.

bfloat16 compute (the mixed_bfloat16 policy): the float32 kernels on the bf16 values, the results rounded once
(``_kernel_loop``), as rnnfast's bf16 modules; the casts are the backend's, so its autograd differentiates them.
"""
from __future__ import annotations

import functools

import keras
from keras import ops

from .._core.functional import gates

_BACKENDS = ("torch", "jax", "tensorflow", "numpy")
_KERNEL_DTYPES = ("float32", "float64")
# bfloat16 compute (Keras's "mixed_bfloat16" policy, or dtype="bfloat16"): the float32 kernels on the bf16 values
# (inputs, states and weights rounded to bf16), their results rounded to bf16 once, as rnnfast's bf16 modules do.
_BF16 = "bfloat16"


def _backend_module():
    name = keras.backend.backend()
    if name == "torch":
        from . import _torch as module
    elif name == "jax":
        from . import _jax as module
    elif name == "tensorflow":
        from . import _tf as module
    else:
        from . import _numpy as module
    return module


def _device(x) -> str:
    """Where a tensor lives, as the device type ("cpu", "cuda", ...); JAX: the default backend's platform."""
    backend = keras.backend.backend()
    if backend == "torch":
        return x.device.type
    if backend == "jax":
        import jax
        return jax.default_backend()
    return "cpu"


def _name(fn):
    return getattr(fn, "__name__", repr(fn))


def _swap_gates(a, H):
    """Keras's GRU gate order z, r, h <-> torch's r, z, n along the last axis."""
    return ops.concatenate([a[..., H:2 * H], a[..., :H], a[..., 2 * H:]], axis=-1)


class _KernelPath:
    """What the three layers share: when the kernels apply, the weights in their layout, the masked call."""

    _activations = ("tanh",)

    def _kernel_cell(self) -> str:
        raise NotImplementedError

    def _fallback_reason(self, sequences, mask, training):
        """None when the kernels compute this call exactly as Keras's layer would; otherwise why not."""
        backend = keras.backend.backend()
        if backend not in _BACKENDS:
            return f"the {backend} backend (rnnfast.keras runs on {', '.join(_BACKENDS)})"
        device = _device(sequences)
        if device != "cpu":
            return f"the input is on {device} (rnnfast.keras runs the CPU kernels; Keras's layer runs cuDNN there)"
        cell = self.cell
        allowed = {getattr(keras.activations, a) for a in self._activations}
        if cell.activation not in allowed:
            return (f"activation={_name(cell.activation)} (the kernels have "
                    f"{' and '.join(self._activations)})")
        rec = getattr(cell, "recurrent_activation", None)
        if rec is not None and rec is not keras.activations.sigmoid:
            return f"recurrent_activation={_name(rec)} (the kernels have sigmoid)"
        if training and (cell.dropout >= 1 or cell.recurrent_dropout >= 1):
            return (f"dropout={cell.dropout}, recurrent_dropout={cell.recurrent_dropout} in training (a rate of 1, "
                    "which Keras's cells treat each their own way)")
        if cell.compute_dtype not in _KERNEL_DTYPES + (_BF16,):
            return f"compute dtype {cell.compute_dtype} (the kernels run float32 and float64, and bfloat16 through float32)"
        if mask is not None and len(mask.shape) != 2:
            return f"a mask of shape {tuple(mask.shape)} (expected (batch, time))"
        return None

    def _warn_fallback(self, reason):
        warned = self.__dict__.setdefault("_rnnfast_warned", set())  # not a tracked Keras attribute
        if reason not in warned:
            warned.add(reason)
            import warnings
            warnings.warn(f"rnnfast.keras.{type(self).__name__} '{self.name}': {reason}; this layer runs Keras's own "
                          "recurrence (slow) instead of rnnfast's kernels", stacklevel=3)

    def _kernel_params(self, dtype, values=None):
        """[w_ih (G*H, I), w_hh (G*H, H), b_ih, b_hh (G*H,)] in torch's layout, as differentiable tensors; values:
        what each weight goes through first (bf16: its rounding to bf16), or None."""
        cell, H = self.cell, self.cell.units
        values = values or (lambda w: w)
        kernel = ops.cast(values(cell.kernel), dtype)
        recurrent = ops.cast(values(cell.recurrent_kernel), dtype)
        gru = self._kernel_cell().startswith("gru")
        if gru:
            kernel, recurrent = _swap_gates(kernel, H), _swap_gates(recurrent, H)
        GH = recurrent.shape[1]
        zeros = ops.zeros((GH,), dtype=dtype)
        if not cell.use_bias:
            b_ih, b_hh = zeros, zeros
        else:
            bias = ops.cast(values(cell.bias), dtype)
            if gru and len(bias.shape) == 2:  # reset_after=True: input and recurrent biases
                b_ih, b_hh = _swap_gates(bias[0], H), _swap_gates(bias[1], H)
            else:
                b_ih, b_hh = (_swap_gates(bias, H) if gru else bias), zeros
        return [ops.transpose(kernel), ops.transpose(recurrent), b_ih, b_hh]

    def inner_loop(self, sequences, initial_state, mask, training=False):
        if isinstance(mask, (list, tuple)):
            mask = mask[0]
        reason = self._fallback_reason(sequences, mask, training)
        if reason is not None:
            # Keras's torch backend infers output shapes (Bidirectional, functional models) by a call on tensors of
            # the "meta" device, which hold no data: Keras's loop computes nothing there, so it is no slow path.
            if _device(sequences) != "meta":
                self._warn_fallback(reason)
            return super().inner_loop(sequences, initial_state, mask=mask, training=training)
        return self._kernel_loop(sequences, initial_state, mask, training)

    def _dropout_masks(self, sequences, h0, dtype, training):
        """(input mask (B, G*I), recurrent mask (B, G*H)), each None where nothing is dropped: the masks Keras's
        layer drew for this call (the cell caches them), per gate in the kernels' gate order."""
        if not training:
            return None, None
        cell, G = self.cell, gates(self._kernel_cell())

        def per_gate(mask):
            if mask is None:
                return None
            masks = list(mask) if isinstance(mask, (list, tuple)) else [mask] * G
            if G == 3:  # Keras's z, r, h -> the kernels' r, z, n
                masks = [masks[1], masks[0], masks[2]]
            return ops.concatenate([ops.cast(m, dtype) for m in masks], axis=-1)

        inputs = cell.get_dropout_mask(sequences[:, 0, :]) if cell.dropout > 0 else None
        recurrent = cell.get_recurrent_dropout_mask(h0) if cell.recurrent_dropout > 0 else None
        return per_gate(inputs), per_gate(recurrent)

    def _kernel_loop(self, sequences, initial_state, mask, training):
        if not isinstance(initial_state, (list, tuple)):
            initial_state = [initial_state]
        if self.cell.compute_dtype != _BF16:
            return self._kernels(sequences, initial_state, mask, training, self.cell.compute_dtype)

        def values(t):  # bf16 values, computed on in float32 (differentiable casts: bf16-rounded gradients)
            return ops.cast(ops.cast(t, _BF16), "float32")

        last, outputs, states = self._kernels(values(sequences), [values(s) for s in initial_state], mask,
                                              training, "float32", values)
        return ops.cast(last, _BF16), ops.cast(outputs, _BF16), [ops.cast(s, _BF16) for s in states]

    def _kernels(self, sequences, initial_state, mask, training, dtype, values=None):
        """_kernel_loop in `dtype` (float32 or float64); values: what each weight goes through first."""
        run = _backend_module().run
        if keras.backend.backend() == "tensorflow":  # the one autograd that cannot tell whether a backward follows
            run = functools.partial(run, training=training)
        cell = self._kernel_cell()
        lstm = cell == "lstm"
        features = self.cell.kernel.shape[0]
        if sequences.shape[-1] != features:
            raise ValueError(f"{self.name}: the input (sequences) has {sequences.shape[-1]} features per step, but the "
                             f"layer was built for {features} (input shape {tuple(sequences.shape)})")
        x = ops.cast(sequences, dtype)
        h0 = ops.cast(initial_state[0], dtype)
        c0 = ops.cast(initial_state[1], dtype) if lstm else None
        params = self._kernel_params(dtype, values)
        masks = self._dropout_masks(x, h0, dtype, training)
        B, T = ops.shape(x)[0], x.shape[1]
        if self.go_backwards:  # Keras reverses the steps (and the mask) and then runs forward
            x = ops.flip(x, axis=1)
            if mask is not None:
                mask = ops.flip(mask, axis=1)
        if mask is None:
            y, h_n, c_n = run(cell, x, h0, c0, params, ops.full((B,), T, dtype="int32"), masks)
            states = [h_n, c_n] if lstm else [h_n]
            return h_n, (y if self.return_sequences else h_n[:, None]), states
        mask = ops.cast(mask, "bool")
        steps = ops.arange(T, dtype="int32")[None, :]
        count = ops.sum(ops.cast(mask, "int32"), axis=1)
        # Each row's unmasked steps first, in their order (the keys are distinct: no sort stability needed).
        order = ops.argsort(ops.where(mask, steps, steps + T), axis=1)
        x_valid = ops.take_along_axis(x, ops.broadcast_to(order[:, :, None], ops.shape(x)), axis=1)
        y, h_n, c_n = run(cell, x_valid, h0, c0, params, ops.maximum(count, 1), masks)
        ran = (count > 0)[:, None]  # a row with no unmasked step keeps its initial state (its one run is dropped)
        h_n = ops.where(ran, h_n, h0)
        c_n = ops.where(ran, c_n, c0) if lstm else None
        states = [h_n, c_n] if lstm else [h_n]
        zero = ops.zeros((), dtype=dtype)
        # Before a row's first unmasked step Keras reports zeros on the torch backend (and with unroll=True), but
        # the initial state on JAX and numpy (their scan repeats states[0]): each backend's own rule.
        fill = h0 if keras.backend.backend() in ("jax", "numpy") and not self.unroll else ops.zeros_like(h0)
        if self.zero_output_for_mask:
            last = ops.where(mask[:, -1:], h_n, zero)
        else:
            last = ops.where(ran, h_n, fill)
        if not self.return_sequences:
            return last, last[:, None], states
        # Step t reports the output of the row's latest unmasked step up to t (index seen - 1 among them).
        seen = ops.cumsum(ops.cast(mask, "int32"), axis=1)
        H = ops.shape(y)[2]
        source = ops.broadcast_to(ops.maximum(seen - 1, 0)[:, :, None], (B, T, H))
        outputs = ops.take_along_axis(y, source, axis=1)
        if self.zero_output_for_mask:
            outputs = ops.where(mask[:, :, None], outputs, zero)
        else:
            outputs = ops.where((seen > 0)[:, :, None], outputs, fill[:, None, :])
        return last, outputs, states


@keras.saving.register_keras_serializable(package="rnnfast")
class LSTM(_KernelPath, keras.layers.LSTM):
    """``keras.layers.LSTM`` on rnnfast's kernels (same arguments, weights and results)."""

    def _kernel_cell(self):
        return "lstm"


@keras.saving.register_keras_serializable(package="rnnfast")
class GRU(_KernelPath, keras.layers.GRU):
    """``keras.layers.GRU`` on rnnfast's kernels; ``reset_after=True`` is torch's GRU, ``reset_after=False`` the
    original form (rnnfast's "gru_original" cell)."""

    def _kernel_cell(self):
        return "gru" if self.cell.reset_after else "gru_original"


@keras.saving.register_keras_serializable(package="rnnfast")
class SimpleRNN(_KernelPath, keras.layers.SimpleRNN):
    """``keras.layers.SimpleRNN`` on rnnfast's kernels (activation tanh or relu)."""

    _activations = ("tanh", "relu")

    def _kernel_cell(self):
        return "rnn_" + _name(self.cell.activation)
