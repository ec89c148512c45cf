"""``rnnfast.no_grad()``: run layers and cells in training mode without recording anything for backward.

Like ``torch.no_grad()`` it is a context manager and a decorator, and it is per thread. Inside it a
training-mode layer still applies dropout (as torch does) but keeps nothing, and its previous record is
dropped, so that a ``backward`` afterwards raises instead of differentiating an older forward; a cell
records no step (its earlier steps stay recorded). Use it for sampling and evaluation loops that should not
switch the module to ``eval()``.
"""
from __future__ import annotations

import functools
import threading

__all__ = ["no_grad", "is_grad_enabled"]

_local = threading.local()


def is_grad_enabled() -> bool:
    """Whether layers and cells called in this thread record what backward needs (False inside no_grad)."""
    return getattr(_local, "enabled", True)


class no_grad:
    """Context manager and decorator: layers and cells called inside it record nothing for backward.

        with rnnfast.no_grad():
            for t in range(steps):
                h = cell(x_t, h)          # no step is recorded, however long the loop

        @rnnfast.no_grad()
        def sample(model, ...): ...
    """

    def __enter__(self) -> "no_grad":
        self._previous = is_grad_enabled()
        _local.enabled = False
        return self

    def __exit__(self, *exc) -> None:
        _local.enabled = self._previous

    def __call__(self, func):
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            with no_grad():
                return func(*args, **kwargs)

        return wrapper
