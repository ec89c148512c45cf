"""python -m rnnfast: the demo beats its baseline quickly with NumPy only; info; bench's message."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(args, cwd, env=None, timeout=120):
    # -P: do not put the working directory first on sys.path: the installed package, as in this process.
    return subprocess.run([sys.executable, "-P", "-m", "rnnfast", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_demo_beats_the_baseline_without_torch(tmp_path):
    # A torch.py first on the path makes `import torch` fail: the demo must not need torch.
    (tmp_path / "torch.py").write_text("raise ImportError('torch is hidden for this test')\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    r = _run(["--epochs", "25", "--no-progress"], cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    assert "beats the baseline" in r.stdout, r.stdout
    assert "ms per epoch" in r.stdout


def test_info(tmp_path):
    r = _run(["info"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "rnnfast 0.1.0" in r.stdout and "SIMD ISA" in r.stdout and "CUDA" in r.stdout
    assert "affinity mask" in r.stdout and "cgroup CPU quota" in r.stdout


def test_bench_says_where_the_benchmark_lives(tmp_path):
    # The package never imports the checkout's bench/: the subcommand only says how to run it.
    r = _run(["bench"], cwd=tmp_path)
    assert r.returncode == 2 and "python bench/bench_cpu.py" in r.stderr
