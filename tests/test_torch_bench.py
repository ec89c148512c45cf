"""The training-step benchmark (bench/bench_torch_step.py) runs at tiny sizes, prints its table and finds
rnnfast.torch and torch.nn in agreement."""
import json
import os
import subprocess
import sys

from conftest import require_torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_training_step_benchmark_runs_at_tiny_sizes(tmp_path):
    require_torch()
    out = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "bench_torch_step.py"), "--tiny", "--json",
                          str(tmp_path / "r.json")], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "# CPU:" in out.stdout and "| case | torch.nn ms/step |" in out.stdout, out.stdout
    assert "check: rnnfast.torch and torch.nn agree" in out.stdout, out.stdout
    results = json.loads((tmp_path / "r.json").read_text())["results"]
    assert [r["case"] for r in results] == ["LSTM T=5 B=2 I=4 H=8", "GRU T=3 B=1 I=4 H=6"]
    assert all(r["torch_ms"] > 0 and r["rnnfast_ms"] > 0 for r in results)
