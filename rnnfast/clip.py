"""Gradient clipping as torch.nn.utils defines it: ``clip_grad_norm_`` and ``clip_grad_value_``."""
from __future__ import annotations

import math
import numbers

import numpy as np

from ._core.bf16 import to_compute
from .module import Module, Parameter

__all__ = ["clip_grad_norm_", "clip_grad_value_"]


def _grads(params):
    if isinstance(params, Parameter):
        params = [params]
    elif isinstance(params, Module):
        raise TypeError("parameters: expected Parameters (model.parameters()), got a Module")
    out = []
    for i, p in enumerate(params):
        if not isinstance(p, Parameter):
            raise TypeError(f"parameters[{i}]: expected an rnnfast.Parameter, got {type(p).__name__}")
        out.append(p.grad)
    return out


def clip_grad_norm_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False) -> float:
    """Scales the gradients in place so that their total norm (over all parameters together, as if one
    vector) is at most max_norm: each grad *= min(1, max_norm / (total + 1e-6)). Returns the total norm
    before clipping. norm_type: a p >= 1 or math.inf. error_if_nonfinite: RuntimeError when the total norm is
    NaN or inf (else the gradients become NaN, as torch's)."""
    grads = _grads(parameters)
    max_norm = float(max_norm)
    norm_type = float(norm_type)
    if not (norm_type >= 1 or math.isinf(norm_type)):
        raise ValueError(f"norm_type must be >= 1 or inf, got {norm_type}")
    if not grads:
        return 0.0
    if math.isinf(norm_type):
        total = max(float(np.max(np.abs(g))) if g.size else 0.0 for g in grads)
    else:
        # (bf16 gradients summed in float32: a sum in bf16 loses the small terms)
        total = float(sum(float((np.abs(to_compute(g.dtype, g)[0]) ** norm_type).sum()) for g in grads)
                      ** (1.0 / norm_type))
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(f"The total norm of order {norm_type} for gradients from `parameters` is non-finite, so "
                           "it cannot be clipped. To disable this error and scale the gradients by the non-finite "
                           "norm anyway, set `error_if_nonfinite=False`")
    coef = min(max_norm / (total + 1e-6), 1.0)
    for g in grads:
        g *= coef
    return total


def clip_grad_value_(parameters, clip_value) -> None:
    """Clamps every gradient element into [-clip_value, clip_value], in place."""
    if isinstance(clip_value, bool) or not isinstance(clip_value, numbers.Real):
        raise TypeError(f"clip_value must be a number, got {type(clip_value).__name__}")
    clip_value = float(clip_value)
    for g in _grads(parameters):
        np.clip(g, -clip_value, clip_value, out=g)
