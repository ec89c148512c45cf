"""Real-style PyTorch training scripts (tests/torch_scripts/) run unchanged, once with torch.nn and once with
`nn` swapped for a namespace whose recurrent classes are rnnfast.torch's: the training curves and results must
match torch.nn's to tolerance, and nothing may break."""
import importlib.util
import os

import numpy as np
import pytest

from conftest import require_torch

torch = require_torch()
import rnnfast.torch as rt  # noqa: E402

SCRIPTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_scripts")
RECURRENT = ("RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell")


class DropIn:
    """torch.nn with its recurrent classes replaced by rnnfast.torch's: what `nn` means in a script after the
    one-line swap."""

    def __getattr__(self, name):
        return getattr(rt, name) if name in RECURRENT else getattr(torch.nn, name)


def run(script, drop_in, **kwargs):
    spec = importlib.util.spec_from_file_location(f"script_{script}_{drop_in}", os.path.join(SCRIPTS, script + ".py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # a fresh copy of the script: nothing is shared between the two runs
    if drop_in:
        mod.nn = DropIn()
    return mod.main(**kwargs)


def recurrent_modules(model):
    return [m for m in model.modules() if type(m).__name__ in RECURRENT]


def check_swapped(result_ours, result_torch):
    ours, theirs = recurrent_modules(result_ours["model"]), recurrent_modules(result_torch["model"])
    assert ours and all(type(m).__module__ == "rnnfast.torch" for m in ours), "the swap did not take"
    assert all(type(m).__module__.startswith("torch.nn") for m in theirs)


@pytest.mark.parametrize("model_type", ["LSTM", "GRU", "RNN_TANH"])
def test_word_language_model_matches_torch_nn(model_type):
    kw = dict(model_type=model_type, epochs=2)
    ours, theirs = run("word_language_model", True, **kw), run("word_language_model", False, **kw)
    check_swapped(ours, theirs)
    # float32 training with clipping and SGD: allow for reassociation drifting over the steps
    np.testing.assert_allclose(ours["train_losses"], theirs["train_losses"], rtol=2e-4)
    np.testing.assert_allclose(ours["val_losses"], theirs["val_losses"], rtol=2e-4)
    assert ours["train_losses"][-1] < ours["train_losses"][0]


def test_word_language_model_with_recurrent_dropout_trains():
    """Inter-layer dropout draws its own masks (not torch's), so only the behaviour is compared."""
    ours = run("word_language_model", True, rnn_dropout=0.3, epochs=2)
    assert ours["model"].rnn.dropout == 0.3
    assert np.isfinite(ours["val_losses"]).all()
    assert np.mean(ours["train_losses"][-5:]) < np.mean(ours["train_losses"][:5])


def test_time_sequence_prediction_with_lbfgs_matches_torch_nn():
    ours, theirs = run("time_sequence_prediction", True, steps=2), run("time_sequence_prediction", False, steps=2)
    check_swapped(ours, theirs)
    assert len(ours["losses"]) == len(theirs["losses"]), "LBFGS took a different number of closure calls"
    np.testing.assert_allclose(ours["losses"], theirs["losses"], rtol=1e-8)
    np.testing.assert_allclose(ours["prediction"], theirs["prediction"], rtol=1e-7, atol=1e-9)
    assert ours["losses"][-1] < ours["losses"][0]


@pytest.mark.parametrize("rnn,layers", [("GRU", 1), ("LSTM", 2)])
def test_sequence_classification_with_packed_sequences_matches_torch_nn(rnn, layers):
    kw = dict(rnn=rnn, layers=layers)
    ours, theirs = run("sequence_classification", True, **kw), run("sequence_classification", False, **kw)
    check_swapped(ours, theirs)
    np.testing.assert_allclose(ours["losses"], theirs["losses"], rtol=1e-4)
    np.testing.assert_allclose(ours["logits"].numpy(), theirs["logits"].numpy(), rtol=1e-3, atol=1e-4)
    assert ours["losses"][-1] < ours["losses"][0]
