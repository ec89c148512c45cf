"""Pickling and copy.deepcopy of layers and cells at any time: what a module caches is dropped, not copied.

The packed weights are the compiled kernels' objects (they cannot be pickled) and the records of training
forwards hold them; both are rebuilt or refilled by the next call, so a copy keeps only the parameters,
their gradients, the constructor's arguments and the generator.
"""
from __future__ import annotations


class DropsCachesWhenPickled:
    """Mixin for a Module: ``_CACHES`` names the attributes the subclass's ``_drop_caches()`` (re)creates;
    pickling leaves them out and unpickling calls ``_drop_caches()``."""

    _CACHES: tuple = ()

    def __getstate__(self):
        state = self.__dict__.copy()
        for key in self._CACHES:
            state.pop(key, None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._drop_caches()
