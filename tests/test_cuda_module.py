"""The CUDA module: built whenever the build machine has nvcc, and it must load and report errors cleanly."""
import shutil

import pytest


def test_cuda_module_builds_where_nvcc_exists_and_reports_devices():
    try:
        from _rnnfast import _cuda
    except ImportError:
        if shutil.which("nvcc"):
            pytest.fail("nvcc is on PATH but _rnnfast._cuda was not built")
        pytest.skip("no CUDA compiler on this machine: the CPU-only package is the expected build")
    assert _cuda.runtime_version() >= 12000
    try:
        n = _cuda.device_count()
    except RuntimeError as e:  # no driver or no GPU: a clear Python error, not a crash
        assert "CUDA" in str(e)
    else:
        assert n >= 0
