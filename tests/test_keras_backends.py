"""tests/test_keras_layers.py under the other Keras backends: Keras fixes its backend (KERAS_BACKEND) when it is first
imported, so `pytest tests` runs that file in this process on the torch backend and here again in a fresh
interpreter per backend: JAX (all of it: forward, jax.grad, jax.jit, fit), TensorFlow (all of it: GradientTape,
tf.function, fit) and numpy (the inference tests, test_forward_*; that backend does not train). Each run must pass
with nothing skipped."""
import os
import re
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


@pytest.mark.parametrize("backend,select", [("jax", None), ("tensorflow", None), ("numpy", "test_forward")])
def test_keras_layers_under_backend(backend, select):
    # keras, jax and tensorflow come with the test extra: a missing one fails here (in the subprocess), never skips
    env = dict(os.environ, KERAS_BACKEND=backend)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "ignore::DeprecationWarning",
           "-rfEs", os.path.join(HERE, "test_keras_layers.py")]
    if select:
        cmd += ["-k", select]
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    out = run.stdout + run.stderr
    assert run.returncode == 0, f"KERAS_BACKEND={backend}:\n{out[-6000:]}"
    summary = out.strip().splitlines()[-1]
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) >= 100, summary
    assert not re.search(r"skipped|xfailed|xpassed|error", summary), summary
