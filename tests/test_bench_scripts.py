"""The benchmark scripts run as shipped: the CPU bench end to end on tiny sizes (as a file and as a module, the
default cases and the sweep), the inference engines' models against torch, and the GPU bench on a machine
without a GPU."""
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import assert_close, require_torch  # noqa: E402


def run(args, cwd):
    return subprocess.run([sys.executable] + args, capture_output=True, text=True, timeout=300, cwd=cwd)


def script_table(args, cwd, prefixes):
    """Runs a bench script, which must exit 0; returns (its stdout, the table rows that start with `prefixes`)."""
    out = run(args, cwd)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout, [line for line in out.stdout.splitlines() if line.startswith(prefixes)]


def agreement_lines(stdout):
    lines = stdout.split("\nAgreement", 1)[1].split("\n\n", 1)[0].splitlines()[1:]
    assert lines, stdout
    return lines


def test_cpu_bench_quick_prints_its_tables_and_all_libraries_agree(tmp_path):
    require_torch()
    out = run([os.path.join(ROOT, "bench", "bench_cpu.py"), "--quick"], cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    for section in ("# CPU:", "Roofline:", "| case | mode | rnnfast ms |", "Inference engines",
                    "Variable lengths", "Targets (issues 8 and 22", "Floor of each inference run"):
        assert section in out.stdout, f"{section!r} missing:\n{out.stdout}"
    # Every default case, both modes, has a timed rnnfast and torch row.
    rows = [line for line in out.stdout.splitlines() if line.startswith(("| LSTM", "| GRU", "| RNN"))
            and ("| infer |" in line or "| train |" in line)]
    assert len(rows) == 10, out.stdout
    assert all("ERR" not in r for r in rows), out.stdout
    assert "Errors:" not in out.stdout, out.stdout
    lines = agreement_lines(out.stdout)
    assert len(lines) == 10 and not any("*" in line for line in lines), lines


def test_cpu_bench_sweep_runs_as_a_module_and_prints_the_ratio_grid():
    require_torch()
    out = run(["-m", "bench.bench_cpu", "--sweep", "--quick", "--cells", "gru", "--H", "64,128", "--B", "1,8",
               "--no-engines", "--no-roofline"], cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "GRU, T=100, I=H: torch time / rnnfast time" in out.stdout, out.stdout
    grid = out.stdout.split("torch time / rnnfast time", 1)[1]
    assert "| H | B=1 inf | B=1 train | B=8 inf | B=8 train |" in grid, grid
    assert "\n| 64 |" in grid and "\n| 128 |" in grid and "median" in grid, grid
    assert "LSTM" not in grid.split("Targets")[0], grid
    assert not any("*" in line for line in agreement_lines(out.stdout))


def test_cpu_bench_bf16_option_prints_its_own_table_only(tmp_path):
    """--bf16 adds rnnfast's opt-in bfloat16 weights in a table of their own, labelled, with a speed-up and a
    difference for every inference case; the float32 tables and agreement checks are those of a plain run."""
    require_torch()
    out = run([os.path.join(ROOT, "bench", "bench_cpu.py"), "--quick", "--bf16", "--no-engines", "--no-lengths",
               "--json", str(tmp_path / "b.json")], cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Opt-in reduced precision" in out.stdout, out.stdout
    table = out.stdout.split("Opt-in reduced precision", 1)[1].split("\n\n", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith(("| LSTM", "| GRU", "| RNN"))]
    assert len(rows) == 5, table
    for line in rows:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == 7 and cells[3].endswith("x") and cells[5].endswith("x"), line
        assert 1e-6 < float(cells[6]) < 1e-2, line  # bf16 differs from float32, and not by much
    main = out.stdout.split("| case | mode | rnnfast ms |", 1)[1].split("\n\n", 1)[0]
    assert "bf16" not in main
    assert not any("bf16" in line for line in agreement_lines(out.stdout))
    import json
    results = json.load(open(tmp_path / "b.json"))["results"]
    assert all(r["rnnfast_bf16_s"] for r in results if r["mode"] == "infer")
    assert all(r["rnnfast_bf16_s"] is None for r in results if r["mode"] == "train")
    bad = run([os.path.join(ROOT, "bench", "bench_cpu.py"), "--quick", "--bf16", "--dtype", "float64"], cwd=tmp_path)
    assert bad.returncode == 2 and "--bf16" in bad.stderr


def test_cpu_bench_bfloat16_times_both_libraries_in_bf16_and_fp32(tmp_path):
    require_torch()
    stdout, rows = script_table([os.path.join(ROOT, "bench", "bench_cpu.py"), "--quick", "--dtype", "bfloat16"],
                                tmp_path, ("| LSTM", "| GRU", "| RNN"))
    assert "| torch fp32 ms | rnnfast fp32 ms | torch bf16 ms | rnnfast bf16 ms |" in stdout, stdout
    assert "| NumPy API bf16 ms |" in stdout, stdout
    assert len(rows) == 12, stdout  # 3 cells, 2 batch sizes, 2 modes
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert all(float(c) > 0 for c in cells[2:6] + cells[-1:]), row
        assert 1e-4 < float(cells[-2]) < 2e-2, row  # bf16 against fp32: bf16's order of magnitude


def test_bf16_training_accuracy_script_trains_every_task_in_both_dtypes(tmp_path):
    require_torch()
    stdout, rows = script_table([os.path.join(ROOT, "bench", "bf16_training_accuracy.py"), "--quick"], tmp_path,
                                ("| adding", "| forecast", "| classify"))
    assert len(rows) == 3, stdout
    for row in rows:
        cells = row.strip("|").split("|")
        f32, b16, auto = float(cells[3]), float(cells[4]), float(cells[6])
        assert 0 <= f32 and 0 <= b16 and 0 <= auto and abs(b16 - f32) < 0.2 and abs(auto - f32) < 0.2, row


def test_bf16_accuracy_script_prints_its_table(tmp_path):
    stdout, rows = script_table([os.path.join(ROOT, "bench", "bf16_accuracy.py"), "--quick"], tmp_path,
                                ("| LSTM", "| GRU"))
    assert len(rows) == 6, stdout
    for line in rows:
        steps, max_abs, rel = (float(c) for c in line.strip("|").split("|")[2:5])
        # h0 = 0: the first step has no recurrent product; later ones differ, by bf16's order of magnitude.
        assert (max_abs == 0) if steps == 1 else (1e-6 < rel < 1e-2), line


def test_cpu_bench_reports_no_case_for_a_filter_that_matches_none(tmp_path):
    out = run([os.path.join(ROOT, "bench", "bench_cpu.py"), "--quick", "--cases", "no such case"], cwd=tmp_path)
    assert out.returncode == 2 and "no case matches" in out.stdout, out.stdout + out.stderr


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("cell,nonlin", [("lstm", None), ("gru", None), ("rnn", "tanh"), ("rnn", "relu")])
def test_engine_model_matches_torch(engine, cell, nonlin):
    if importlib.util.find_spec(engine) is None or importlib.util.find_spec("onnx") is None:
        pytest.skip(f"{engine} or onnx not installed (pip install '.[bench]')")
    torch = require_torch()
    sys.path.insert(0, ROOT)
    from bench.onnx_models import ENGINES, recurrent_model

    T, B, I, H = 6, 3, 5, 7
    torch.manual_seed(0)
    if cell == "rnn":
        m = torch.nn.RNN(I, H, nonlinearity=nonlin)
    else:
        m = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell](I, H)
    state = {k: v.numpy() for k, v in m.state_dict().items()}
    x = np.random.default_rng(1).standard_normal((T, B, I)).astype(np.float32)
    with torch.no_grad():
        want = m(torch.from_numpy(x))[0].numpy()
    got = np.asarray(ENGINES[engine](recurrent_model(cell, nonlin, state), 2)(x))
    assert got.shape == (T, 1, B, H)
    assert_close(got.reshape(T, B, H), want, 1e-5, f"{engine} {cell} y")


def test_engine_whose_output_differs_from_the_oracle_is_refused_before_timing():
    if importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None:
        pytest.skip("onnxruntime or onnx not installed (pip install '.[bench]')")
    sys.path.insert(0, ROOT)
    from bench.cases import case
    from bench.runners import EngineMismatch, EngineRunner, numpy_weights

    c = case("gru", 4, 2, 3, 5)
    wrong = ("a wrong oracle", lambda x: np.zeros((c.T, c.B, c.H), np.float32))
    runner = EngineRunner("onnxruntime", c, np.float32, numpy_weights(c, np.float32, 0), 1, wrong, 1e-3)
    x = np.ones((c.T, c.B, c.I), np.float32)
    with pytest.raises(EngineMismatch, match="a wrong oracle"):
        runner.job("infer", x, None)
    assert runner.job("train", x, None) is None  # the engines only infer


def test_gpu_benchmark_exits_cleanly_without_a_gpu(tmp_path):
    out = run([os.path.join(ROOT, "bench", "bench_gpu.py"), "--repeats", "1"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "bench_gpu" in out.stdout or "| case |" in out.stdout, out.stdout


def test_libraries_take_turns_block_by_block_and_a_failure_stops_only_its_own():
    """bench/timing.time_interleaved: round r times block r of every library (so a slow phase of the machine is
    spread over all of them), each block alone; each library gets its best block median; one that raises
    leaves the others timed."""
    sys.path.insert(0, ROOT)
    from bench.timing import Timing, time_interleaved

    order = []

    def job(name, fail_at=None):
        calls = {"n": 0}

        def fn():
            calls["n"] += 1
            if fail_at is not None and calls["n"] == fail_at:
                raise RuntimeError(f"{name} broke")
            order.append(name)
            return name
        return fn, None

    timing = Timing(warmup=1, repeats=2, blocks=3, short_repeats=2, pause_s=0.0)
    # 1 warm-up + 1 probe + 2 timed runs a block: "c" fails on its 2nd block's warm-up (call 5)
    res = time_interleaved({"a": job("a"), "b": job("b"), "c": job("c", fail_at=5)}, timing)
    blocks = [order[i:i + 4] for i in range(0, len(order), 4)]
    names = [blk[0] for blk in blocks]
    assert all(len(set(blk)) == 1 for blk in blocks), f"a block mixed libraries: {blocks}"
    assert names == ["a", "b", "c", "a", "b", "a", "b"], f"blocks ran in the order {names}"
    assert isinstance(res["c"], RuntimeError) and "c broke" in str(res["c"])
    for name in ("a", "b"):
        t, times, out = res[name]
        assert out == name and len(times) == 6, (name, len(times))
        assert t == min(t for t in [np.median(times[i:i + 2]) for i in range(0, 6, 2)])


def test_keras_bench_quick_times_every_model_on_every_backend_and_the_losses_agree(tmp_path):
    require_torch()
    stdout, rows = script_table([os.path.join(ROOT, "bench", "bench_keras.py"), "--quick", "--repeats", "1"],
                                tmp_path, ("| torch |", "| jax |", "| tensorflow |"))
    assert "| backend | model | Keras s | rnnfast s | speed-up | losses agree |" in stdout, stdout
    assert len(rows) == 18, stdout  # 3 models, without and with recurrent_dropout, 3 backends
    assert sum("recurrent_dropout=0.2" in row for row in rows) == 9, stdout
    assert all(row.rstrip(" |").split("| ")[-1].startswith("yes") for row in rows), stdout
    assert "FAILED" not in stdout, stdout
