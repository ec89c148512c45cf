"""Loss functions with their gradients: each returns ``(loss, grad)``, the loss a Python float with
torch's default mean reduction and ``grad`` its gradient with respect to the prediction (same shape and
dtype), ready for ``model.backward(grad)``. Computed stably (log-sum-exp, no overflow in exp).
"""
from __future__ import annotations

import numbers

import numpy as np

from ._core.arrays import namespace as _xp
from ._core.bf16 import to_compute
from ._core.checks import is_float_dtype

# bfloat16 predictions (ml_dtypes.bfloat16) are computed on in float32 and their gradients rounded to bf16 once.

__all__ = ["mse", "cross_entropy", "bce_with_logits"]


def _float_array(a, name):
    if not hasattr(a, "dtype") or not hasattr(a, "shape"):
        raise TypeError(f"{name}: expected a numpy (or cupy) array, got {type(a).__name__}")
    if not is_float_dtype(a.dtype):
        raise TypeError(f"{name}: expected a floating-point array, got dtype {a.dtype}")
    return a


def _same_shape(pred, target, pred_name="input", name="target"):
    """target must be a real-valued array of pred's shape: TypeError or ValueError naming it otherwise."""
    if not hasattr(target, "dtype") or not hasattr(target, "shape"):
        raise TypeError(f"{name}: expected a numpy (or cupy) array, got {type(target).__name__}")
    if target.dtype.kind not in "biu" and not is_float_dtype(target.dtype):
        raise TypeError(f"{name}: expected a real-valued array, got dtype {target.dtype}")
    if target.shape != pred.shape:
        raise ValueError(f"{name}: expected the shape of {pred_name} {pred.shape}, got {target.shape} "
                         "(mismatched batch sizes?)")


def mse(pred, target):
    """Mean squared error, mean((pred - target)**2) (torch.nn.functional.mse_loss).
    pred, target: float arrays of the same shape. Returns (loss, d loss / d pred)."""
    pred = _float_array(pred, "pred")
    _same_shape(pred, target, "pred")
    p, = to_compute(pred.dtype, pred)
    diff = p - target.astype(p.dtype, copy=False)
    n = max(diff.size, 1)
    loss = float((diff * diff).sum() / n) if diff.size else float("nan")
    return loss, ((2.0 / n) * diff).astype(pred.dtype, copy=False)


def _valid_mask(shape, mask, lengths, batch_first, xp):
    """A bool array of `shape` (the target's) marking the entries that count, or None (all)."""
    if mask is not None and lengths is not None:
        raise ValueError("pass mask or lengths, not both")
    if mask is not None:
        mask = xp.asarray(mask)
        if mask.dtype != bool or mask.shape != shape:
            raise ValueError(f"mask: expected a bool array of the target's shape {shape}, got "
                             f"{mask.dtype} {mask.shape}")
        return mask
    if lengths is None:
        return None
    if len(shape) != 2:
        raise ValueError(f"lengths: needs a (T, B) (or (B, T) with batch_first) target, got shape {shape}")
    T, B = (shape[1], shape[0]) if batch_first else shape
    lengths = np.asarray(lengths)
    if lengths.dtype.kind not in "iu" or lengths.shape != (B,) or (B and (lengths.min() < 0 or lengths.max() > T)):
        raise ValueError(f"lengths: expected {B} integers in [0, {T}], got {lengths!r}")
    m = np.arange(T)[:, None] < lengths[None, :]  # (T, B)
    return xp.asarray(m.T if batch_first else m)


def cross_entropy(logits, target, weight=None, *, ignore_index=-100, mask=None, lengths=None, batch_first=False):
    """Softmax cross-entropy against class indices (torch.nn.functional.cross_entropy with the class axis
    last): logits (..., C), target (...) integers in [0, C).

    weight: optional (C,) class weights; the mean is then sum(w[t] * nll) / sum(w[t]) as torch's.
    ignore_index: targets equal to it do not count (torch's default -100).
    mask: optional bool array of the target's shape, False where an entry does not count (padding), or
    lengths: (B,) valid lengths for a (T, B) target ((B, T) with batch_first=True).
    Returns (loss, d loss / d logits); entries that do not count get zero gradient. With no entry counting
    the loss is NaN, as torch's.
    """
    out_dtype = _float_array(logits, "logits").dtype
    logits, = to_compute(out_dtype, logits)
    xp = _xp(logits)
    if logits.ndim < 1:
        raise ValueError("logits: expected an array (..., C) with the classes last")
    C = logits.shape[-1]
    if not hasattr(target, "dtype") or target.dtype == bool or target.dtype.kind not in "iu":
        raise TypeError(f"target: expected integer class indices, got {getattr(target, 'dtype', type(target).__name__)}")
    if target.shape != logits.shape[:-1]:
        raise ValueError(f"target: expected shape {logits.shape[:-1]} (logits {logits.shape} without the class "
                         f"axis), got {target.shape} (mismatched batch sizes?)")
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
        raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")
    valid = target != ignore_index
    extra = _valid_mask(target.shape, mask, lengths, batch_first, xp)
    if extra is not None:
        valid = valid & extra
    t = xp.where(valid, target, 0)
    if t.size and (int(t.min()) < 0 or int(t.max()) >= C):
        bad = int(t.max()) if int(t.max()) >= C else int(t.min())
        raise ValueError(f"target: Target {bad} is out of bounds (classes 0..{C - 1})")
    if weight is not None:
        weight = _float_array(weight, "weight")
        if weight.shape != (C,):
            raise ValueError(f"weight: expected shape ({C},) (one per class), got {weight.shape}")
        w = weight.astype(logits.dtype, copy=False)[t] * valid
    else:
        w = valid.astype(logits.dtype)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    lse = xp.log(xp.exp(shifted).sum(axis=-1, keepdims=True))
    logp = shifted - lse
    nll = -xp.take_along_axis(logp, t[..., None], axis=-1)[..., 0]
    denom = w.sum()
    loss = float((w * nll).sum() / denom) if float(denom) != 0 else float("nan")
    grad = xp.exp(logp)
    xp.put_along_axis(grad, t[..., None], xp.take_along_axis(grad, t[..., None], axis=-1) - 1, axis=-1)
    scale = w / denom if float(denom) != 0 else w * 0
    return loss, (grad * scale[..., None]).astype(out_dtype, copy=False)


def bce_with_logits(logits, target, weight=None):
    """Binary cross-entropy on logits (torch.nn.functional.binary_cross_entropy_with_logits):
    mean(w * (max(x, 0) - x*t + log(1 + exp(-|x|)))). logits, target (and weight, if given) of one shape;
    target in [0, 1]. Returns (loss, d loss / d logits)."""
    out_dtype = _float_array(logits, "logits").dtype
    _same_shape(logits, target, "logits")
    x, = to_compute(out_dtype, logits)
    xp = _xp(x)
    t = target.astype(x.dtype, copy=False)
    n = max(x.size, 1)
    per = xp.maximum(x, 0) - x * t + xp.log1p(xp.exp(-xp.abs(x)))
    e = xp.exp(-xp.abs(x))
    sig = xp.where(x >= 0, 1 / (1 + e), e / (1 + e))
    grad = (sig - t) / n
    if weight is not None:
        _same_shape(x, weight, "logits", "weight")
        per, grad = per * weight, grad * weight
    return (float(per.sum() / n) if x.size else float("nan")), grad.astype(out_dtype, copy=False)
