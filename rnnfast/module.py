"""Parameters and the module base class: named parameters, state dicts, train/eval, gradients."""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from ._core.bf16 import BFLOAT16, add_into, as_bfloat16
from ._core.checks import check_array  # noqa: F401 - its home before the engine's checks; code may import it from here
from ._core.checks import is_float_dtype


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

    def accumulate(self, g) -> None:
        """grad += g, for a gradient computed in the module's compute dtype (float32 for a bf16 parameter: the sum
        is formed in float32 and rounded to bf16 once, as torch accumulates bf16 gradients)."""
        if self.grad.dtype == BFLOAT16:
            add_into(self.grad, g)
        else:
            self.grad += g


def _to_numpy(value, name: str) -> np.ndarray:
    """A NumPy array from a NumPy array or a torch tensor (any device), without importing torch."""
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # torch.Tensor
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":  # NumPy has no bf16 of its own: exactly, through float32
            return as_bfloat16(value.float().numpy())
        return value.numpy()
    raise TypeError(f"state_dict[{name!r}]: expected a numpy array or a torch tensor, got {type(value).__name__}")


class Module:
    """Base class of every rnnfast model part, composed as torch.nn composes modules.

    Parameters (``Parameter``) and sub-modules (``Module``) assigned as attributes are registered, so
    ``named_parameters()`` (dotted names such as ``"encoder.weight_ih_l0"``), ``parameters()``,
    ``state_dict()``/``load_state_dict()``, ``train()``/``eval()``, ``zero_grad()`` and ``to()`` cover the
    whole tree. Reading a registered parameter as an attribute gives its array (``layer.weight_hh_l0`` is
    ``layer._params["weight_hh_l0"].data``), reading a sub-module gives the module.

    A model is a subclass that builds its parts in ``__init__`` (after ``super().__init__()``) and defines
    ``forward`` and ``backward`` in the order its data flows (see README, "Training"). The constructor's
    arguments are recorded (``_init_args``) so that ``rnnfast.save``/``load`` can rebuild the model; a class
    whose arguments are not plain JSON values (numbers, strings, bools, None, lists, dicts, dtypes, modules)
    defines ``get_config()`` returning the keyword arguments to rebuild it with.
    """

    def __new__(cls, *args, **kwargs):
        self = super().__new__(cls)
        # Recorded before __init__ runs: what rnnfast.save needs to rebuild the model (see get_config).
        object.__setattr__(self, "_init_args", (args, dict(kwargs)))
        return self

    def __init__(self):
        object.__setattr__(self, "_params", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        self.training = True

    # -------------------------------------------------------------------------------- registration
    def __setattr__(self, name, value):
        d = self.__dict__
        params, modules = d.get("_params"), d.get("_modules")
        if isinstance(value, (Parameter, Module)):
            registry = params if isinstance(value, Parameter) else modules
            if registry is None:
                raise AttributeError(f"cannot assign {type(value).__name__} {name!r} before Module.__init__() call")
            for reg in (params, modules):
                if reg is not None:
                    reg.pop(name, None)
            d.pop(name, None)
            registry[name] = value
            return
        if params is not None and name in params:
            if value is not None:
                raise TypeError(f"cannot assign {type(value).__name__!r} as parameter {name!r} "
                                "(rnnfast.Parameter or None expected)")
            del params[name]
        elif modules is not None and name in modules:
            if value is not None:
                raise TypeError(f"cannot assign {type(value).__name__!r} as child module {name!r} "
                                "(rnnfast.Module or None expected)")
            del modules[name]
        object.__setattr__(self, name, value)

    def __getattr__(self, name):
        # Only called when normal lookup fails: registered parameters (their arrays) and sub-modules.
        d = self.__dict__
        params = d.get("_params")
        if params is not None and name in params:
            return params[name].data
        modules = d.get("_modules")
        if modules is not None and name in modules:
            return modules[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name):
        for reg in (self.__dict__.get("_params"), self.__dict__.get("_modules")):
            if reg is not None and name in reg:
                del reg[name]
                return
        object.__delattr__(self, name)

    def __setstate__(self, state):
        # Objects pickled before sub-module registration existed have no _modules.
        state.setdefault("_modules", OrderedDict())
        self.__dict__.update(state)

    def register_module(self, name: str, module) -> None:
        """Registers a sub-module under a name that need not be an identifier (as torch's add_module)."""
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(f"name must be a non-empty str without '.', got {name!r}")
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"module: expected an rnnfast.Module or None, got {type(module).__name__}")
        self.__dict__["_modules"][name] = module

    # -------------------------------------------------------------------------------- the tree
    def named_children(self):
        """(name, module) for each direct sub-module, in registration order."""
        return [(k, m) for k, m in self.__dict__.get("_modules", {}).items() if m is not None]

    def children(self):
        return [m for _, m in self.named_children()]

    def named_modules(self, prefix: str = ""):
        """(dotted name, module) for this module ("" for itself) and every module below it, each once."""
        out, seen = [], set()

        def walk(m, pre):
            if id(m) in seen:
                return
            seen.add(id(m))
            out.append((pre, m))
            for k, c in m.named_children():
                walk(c, f"{pre}.{k}" if pre else k)

        walk(self, prefix)
        return out

    def modules(self):
        return [m for _, m in self.named_modules()]

    def named_parameters(self, prefix: str = "", recurse: bool = True):
        """(dotted name, Parameter) for every parameter of the tree (each shared Parameter once)."""
        out, seen = [], set()
        tree = self.named_modules(prefix) if recurse else [(prefix, self)]
        for pre, m in tree:
            for k, p in m._params.items():
                if id(p) not in seen:
                    seen.add(id(p))
                    out.append((f"{pre}.{k}" if pre else k, p))
        return out

    def parameters(self, recurse: bool = True):
        return [p for _, p in self.named_parameters(recurse=recurse)]

    # -------------------------------------------------------------------------------- calling
    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} defines no forward()")

    def backward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} defines no backward()")

    def train(self, mode: bool = True):
        """Sets training mode (True) or inference mode (False) on this module and every sub-module."""
        for m in self.modules():
            m.training = bool(mode)
        return self

    def eval(self):
        return self.train(False)

    def get_config(self) -> dict:
        """The keyword arguments that rebuild this module (``type(self)(**config)``), for rnnfast.save.
        By default the arguments the constructor was called with; override it where they are not plain
        JSON values or where the constructor changes them."""
        import inspect

        args, kwargs = self.__dict__.get("_init_args", ((), {}))
        try:
            bound = inspect.signature(type(self).__init__).bind(None, *args, **kwargs)
            bound.apply_defaults()  # recorded explicitly: a later default must not change a saved model
        except TypeError as e:  # pragma: no cover - the constructor accepted these arguments
            raise TypeError(f"{type(self).__name__}: cannot name its constructor arguments ({e}); "
                            "define get_config()") from None
        out = {}
        params = inspect.signature(type(self).__init__).parameters
        for k, v in list(bound.arguments.items())[1:]:
            if params[k].kind is inspect.Parameter.VAR_KEYWORD:
                out.update(v)
            elif params[k].kind is inspect.Parameter.VAR_POSITIONAL:
                out["*" + k] = list(v)  # rebuilt as positional arguments
            else:
                out[k] = v
        return out

    def _drop_caches(self) -> None:
        """Forgets whatever this module keeps derived from its parameters or from the last forward (packed
        weights, saved activations), e.g. when ``to()`` moves it. Subclasses with other caches override it."""
        if "_packed" in self.__dict__:
            self.__dict__["_packed"] = {}
        self.__dict__["_saved"] = None

    def to(self, device: str):
        """Moves every parameter (and its gradient) to "cuda" (CuPy arrays: the layer then runs on the CUDA
        kernels) or back to "cpu" (NumPy). Returns self. Needs CuPy for "cuda"."""
        if device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        if device == "cuda" and any(p.dtype == BFLOAT16 for p in self.parameters()):
            raise TypeError("to('cuda'): bfloat16 modules run on the CPU only (CuPy has no bfloat16 arrays); "
                            "rnnfast.torch runs bf16 modules on CUDA")
        try:
            import cupy
        except ImportError:
            if device == "cuda":
                raise RuntimeError("to('cuda') needs CuPy (pip install 'rnnfast[cuda]') and a CUDA GPU") from None
            return self  # without CuPy every parameter is already a NumPy array
        convert = cupy.asarray if device == "cuda" else cupy.asnumpy
        for p in self.parameters():
            p.data, p.grad = convert(p.data), convert(p.grad)
        for m in self.modules():
            m._drop_caches()
        return self

    def zero_grad(self):
        """Sets every parameter's gradient of the tree to zero (in place)."""
        for p in self.parameters():
            p.grad[...] = 0

    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """Copies of every parameter of the tree under its dotted name."""
        return OrderedDict((k, p.data.copy()) for k, p in self.named_parameters())

    def load_state_dict(self, state_dict) -> None:
        """Loads every parameter from a mapping of NumPy arrays or torch tensors (e.g. a torch.nn module's
        state_dict), converted to each parameter's dtype. All entries are checked first; on any error
        (missing or unexpected keys, a wrong shape, an array that is not real numbers: bool, complex,
        datetime64, timedelta64, object) ValueError names the keys and nothing is changed."""
        if not hasattr(state_dict, "keys"):
            raise TypeError(f"state_dict: expected a mapping, got {type(state_dict).__name__}")
        params = OrderedDict(self.named_parameters())
        missing = [k for k in params if k not in state_dict]
        unexpected = [k for k in state_dict.keys() if k not in params]
        problems = []
        if missing:
            problems.append(f"missing keys {missing}")
        if unexpected:
            problems.append(f"unexpected keys {unexpected}")
        arrays = {}
        for k, p in params.items():
            if k not in state_dict:
                continue
            a = _to_numpy(state_dict[k], k)
            if a.dtype.kind not in "iu" and not is_float_dtype(a.dtype):  # timedelta64 is of NumPy's integer kind
                problems.append(f"{k}: expected a real (float or integer) array, got dtype {a.dtype}")
            elif a.shape != p.data.shape:
                problems.append(f"{k}: expected shape {p.data.shape}, got {a.shape}")
            else:
                arrays[k] = a
        if problems:
            raise ValueError("load_state_dict: " + "; ".join(problems))
        for k, a in arrays.items():
            params[k].data[...] = a

    def extra_repr(self) -> str:
        return ""

    def __repr__(self):
        children = self.named_children()
        if not children:
            return f"{type(self).__name__}({self.extra_repr()})"
        lines = [f"  ({k}): " + repr(m).replace("\n", "\n  ") for k, m in children]
        return f"{type(self).__name__}(\n" + "\n".join(lines) + "\n)"
