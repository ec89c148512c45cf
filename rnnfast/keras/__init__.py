"""rnnfast for Keras 3: ``LSTM``, ``GRU`` and ``SimpleRNN``, the Keras layers with the recurrence on rnnfast's kernels.

    from rnnfast.keras import LSTM          # instead of: from keras.layers import LSTM

The classes subclass ``keras.layers.LSTM`` / ``GRU`` / ``SimpleRNN`` (same arguments, defaults, weights, configs,
masks, states, ``Bidirectional``, saving) and are registered for Keras serialization as ``rnnfast>LSTM`` etc.
Forward and gradient run on the kernels on the torch and JAX backends (the numpy backend: inference); what the
kernels do not compute (other activations, dropout in training, mixed precision, other backends) runs Keras's own
recurrence, with a one-time warning. Needs ``keras>=3`` (``pip install 'rnnfast[keras]'``); imported only by
``import rnnfast.keras``.
"""
from ._layers import GRU, LSTM, SimpleRNN

__all__ = ["LSTM", "GRU", "SimpleRNN"]
