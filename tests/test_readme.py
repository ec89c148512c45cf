"""The README's Python examples run as written (so that the README stays true)."""
import os
import re


from conftest import require_torch

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def python_blocks():
    with open(README) as f:
        return re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)


def test_readme_has_examples():
    assert len(python_blocks()) >= 3


def test_readme_examples_run():
    namespace = {}
    for block in python_blocks():
        if "import cupy" in block:
            continue  # the GPU example: tests/test_cuda_emu.py runs the same path where CuPy sees a GPU
        if "import torch" in block:
            require_torch()
        exec(compile(block, README, "exec"), namespace)  # noqa: S102 - our own README
