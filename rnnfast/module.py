"""Parameters and the module base class: named parameters, state dicts, train/eval, gradients."""
from __future__ import annotations

from collections import OrderedDict

import numpy as np


class Parameter:
    """A trainable array: ``data`` holds the value, ``grad`` the accumulated gradient (same shape/dtype).

    Both are plain NumPy arrays that may be updated in place (``p.data -= lr * p.grad``); kernels never
    serve weights packed from an older value.
    """

    __slots__ = ("data", "grad")

    def __init__(self, data: np.ndarray):
        self.data = data
        self.grad = np.zeros_like(data)

    @property
    def shape(self):
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    def __repr__(self):
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype})"


def _to_numpy(value, name: str) -> np.ndarray:
    """A NumPy array from a NumPy array or a torch tensor (any device), without importing torch."""
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # torch.Tensor
        return value.detach().cpu().numpy()
    raise TypeError(f"state_dict[{name!r}]: expected a numpy array or a torch tensor, got {type(value).__name__}")


def check_array(value, name: str, dtype, owner: str = "layer") -> np.ndarray:
    """value must be a NumPy (or CuPy) array of the module's dtype: TypeError naming the argument otherwise."""
    if not isinstance(value, np.ndarray) and type(value).__module__.split(".")[0] != "cupy":
        raise TypeError(f"{name}: expected a numpy.ndarray (or a cupy.ndarray), got {type(value).__name__}")
    if value.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype} (the {owner}'s dtype), got {value.dtype}")
    return value


class Module:
    """Base class: subclasses register parameters in ``self._params`` (an ordered name -> Parameter map)."""

    def __init__(self):
        self._params: OrderedDict[str, Parameter] = OrderedDict()
        self.training = True

    def named_parameters(self):
        return list(self._params.items())

    def parameters(self):
        return list(self._params.values())

    def __getattr__(self, name):
        params = self.__dict__.get("_params")
        if params is not None and name in params:
            return params[name].data
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def train(self, mode: bool = True):
        self.training = bool(mode)
        return self

    def eval(self):
        return self.train(False)

    def to(self, device: str):
        """Moves every parameter (and its gradient) to "cuda" (CuPy arrays: the layer then runs on the CUDA
        kernels) or back to "cpu" (NumPy). Returns self. Needs CuPy for "cuda"."""
        if device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        try:
            import cupy
        except ImportError:
            if device == "cuda":
                raise RuntimeError("to('cuda') needs CuPy (pip install 'rnnfast[cuda]') and a CUDA GPU") from None
            return self  # without CuPy every parameter is already a NumPy array
        convert = cupy.asarray if device == "cuda" else cupy.asnumpy
        for p in self._params.values():
            p.data, p.grad = convert(p.data), convert(p.grad)
        for cache in ("_packed", "_packed_ih", "_packed_hh"):
            if cache in self.__dict__:
                self.__dict__[cache] = {} if isinstance(self.__dict__[cache], dict) else None
        self.__dict__["_saved"] = None
        return self

    def zero_grad(self):
        for p in self._params.values():
            p.grad[...] = 0

    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        return OrderedDict((k, p.data.copy()) for k, p in self._params.items())

    def load_state_dict(self, state_dict) -> None:
        """Loads every parameter from a mapping of NumPy arrays or torch tensors (e.g. a torch.nn module's
        state_dict). All entries are checked first; on any error nothing is changed."""
        if not hasattr(state_dict, "keys"):
            raise TypeError(f"state_dict: expected a mapping, got {type(state_dict).__name__}")
        missing = [k for k in self._params if k not in state_dict]
        unexpected = [k for k in state_dict.keys() if k not in self._params]
        problems = []
        if missing:
            problems.append(f"missing keys {missing}")
        if unexpected:
            problems.append(f"unexpected keys {unexpected}")
        arrays = {}
        for k, p in self._params.items():
            if k not in state_dict:
                continue
            a = _to_numpy(state_dict[k], k)
            if a.shape != p.data.shape:
                problems.append(f"{k}: expected shape {p.data.shape}, got {a.shape}")
            elif not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
                problems.append(f"{k}: expected a real array, got dtype {a.dtype}")
            else:
                arrays[k] = a
        if problems:
            raise ValueError("load_state_dict: " + "; ".join(problems))
        for k, a in arrays.items():
            self._params[k].data[...] = a
