"""rnnfast: fused C++ kernels for RNN, LSTM and GRU, forward and backpropagation through time,
behind a torch.nn-like NumPy API. See README.md."""

try:
    from . import _C  # noqa: F401 - the compiled kernels; everything below needs them
except ImportError as _e:  # say what happened, as NumPy does, instead of a "partially initialized module" error
    import os as _os

    raise ImportError(
        f"rnnfast's compiled extension rnnfast._C could not be imported from {_os.path.dirname(__file__)}. "
        "If that folder is rnnfast's source tree (you started Python in the repository root, so the "
        "source folder shadows the installed package), start Python from another directory; otherwise install "
        f"the package (pip install .), which builds the extension. (The import error was: {_e})") from None

from ._core.version import VERSION as __version__
from .backend import current_backend, get_num_threads, isa, matmul, set_num_threads, use_backend
from .cells import GRUCell, LSTMCell, RNNCell
from .grad_mode import is_grad_enabled, no_grad
from .layers import GRU, LSTM, RNN
from .io import load, save  # also makes rnnfast.io available
from .module import Module, Parameter
from . import data, datasets, losses, nn, optim, train  # noqa: E402 - the training utilities
from .clip import clip_grad_norm_, clip_grad_value_

__all__ = ["RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell", "Module", "Parameter", "set_num_threads",
           "get_num_threads", "matmul", "isa", "save", "load", "use_backend", "current_backend", "no_grad",
           "is_grad_enabled", "__version__", "nn", "losses", "optim", "data", "train", "datasets", "clip_grad_norm_",
           "clip_grad_value_"]
