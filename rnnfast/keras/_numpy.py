"""The kernel call on Keras's numpy backend (inference only: that backend does not train)."""
from __future__ import annotations

import numpy as np

from . import _engine


def run(cell, x, h0, c0, params, lengths, masks=(None, None)):
    """(y (B, T, H), h_n, c_n or None) of the kernels."""
    y, h_n, c_n, _ = _engine.forward(cell, np.asarray(x), np.asarray(h0), None if c0 is None else np.asarray(c0),
                                     [np.asarray(p) for p in params], np.asarray(lengths), training=False,
                                     masks=tuple(None if m is None else np.asarray(m) for m in masks))
    return y, h_n, c_n
