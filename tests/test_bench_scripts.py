"""The GPU benchmark runs as is: on a machine without a GPU (or CuPy) it says so and exits cleanly."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gpu_benchmark_exits_cleanly_without_a_gpu(tmp_path):
    out = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "bench_gpu.py"), "--repeats", "1"],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "bench_gpu" in out.stdout or "| case |" in out.stdout, out.stdout
