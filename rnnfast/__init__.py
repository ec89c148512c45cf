"""rnnfast: fused C++ kernels for RNN, LSTM and GRU, forward and backpropagation through time,
behind a torch.nn-like NumPy API. See README.md."""

from . import _compiled

_compiled.check()  # the compiled kernels (the package _rnnfast): everything below needs them

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
