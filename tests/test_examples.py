"""Every example in examples/ runs in --quick mode, beats its baseline, and writes its figure."""
import importlib
import os
import sys
import time

import pytest

import rnnfast

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
NAMES = ["forecasting", "classification", "gradients", "char_lm", "seq2seq", "tagging", "cnn_rnn", "keras_forecasting",
         "keras_sentiment"]


@pytest.fixture
def example(monkeypatch):
    monkeypatch.syspath_prepend(EXAMPLES)
    # One kernel thread: these problems are tiny, and CI machines are shared (threads waiting at a per-step
    # barrier on a busy machine cost far more than they gain here).
    old = rnnfast.get_num_threads()
    rnnfast.set_num_threads(1)
    yield lambda name: importlib.import_module(name)
    rnnfast.set_num_threads(old)


def test_every_example_is_tested():
    found = sorted(f[:-3] for f in os.listdir(EXAMPLES) if f.endswith(".py") and f != "common.py")
    assert found == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_example_quick_run_beats_its_baseline(example, name, tmp_path, capsys):
    module = example(name)
    plot = tmp_path / f"{name}.png"
    t0 = time.perf_counter()
    result = module.main(["--quick", "--no-progress", "--plot", str(plot)])
    out = capsys.readouterr().out
    if name == "gradients":  # the gated cells must learn the adding problem; the vanilla RNN need not
        assert result["LSTM"]["better"] and result["GRU"]["better"], out
    else:
        assert result["better"], out
    assert "beats the baseline" in out
    try:
        import matplotlib  # noqa: F401 - the optional `plot` extra
    except ImportError:
        assert not plot.exists()  # without matplotlib: no figure, and no error
    else:
        if name != "char_lm":  # the language model prints samples instead of a figure
            assert plot.stat().st_size > 1000, f"{name} wrote no figure"
    print(f"{name}: {time.perf_counter() - t0:.1f} s")
