"""rnnfast: fused C++ kernels for RNN, LSTM and GRU, forward and backpropagation through time,
behind a torch.nn-like NumPy API. See README.md."""
__version__ = "0.1.0"

from .backend import current_backend, get_num_threads, isa, matmul, set_num_threads, use_backend
from .cells import GRUCell, LSTMCell, RNNCell
from .layers import GRU, LSTM, RNN
from .io import load, save  # also makes rnnfast.io available
from .module import Module, Parameter
from . import data, datasets, losses, nn, optim, train  # noqa: E402 - the training utilities
from .clip import clip_grad_norm_, clip_grad_value_

__all__ = ["RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell", "Module", "Parameter", "set_num_threads",
           "get_num_threads", "matmul", "isa", "save", "load", "use_backend", "current_backend", "__version__",
           "nn", "losses", "optim", "data", "train", "datasets", "clip_grad_norm_", "clip_grad_value_"]
