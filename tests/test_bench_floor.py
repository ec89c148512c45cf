"""The floor the bench counts inference against (bench/floor.py) and the read-bandwidth probe behind it."""
import math
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.append(ROOT)  # after the installed rnnfast, so the checkout's bench package is importable

from bench import floor  # noqa: E402
from bench.cases import case  # noqa: E402
from _rnnfast import _C  # noqa: E402


@pytest.mark.parametrize("threads", [1, 2])
def test_read_bandwidth_probe_reports_a_finite_positive_rate(threads):
    for nbytes in (1000, 64 * 1024, 3 * 1024 * 1024):
        gbps = _C.read_bandwidth_gbps(nbytes, threads, 3)
        assert math.isfinite(gbps) and gbps > 0.1, (nbytes, threads, gbps)


@pytest.mark.parametrize("kw, name", [(dict(bytes=0), "bytes"), (dict(bytes=100, threads=0), "threads"),
                                      (dict(bytes=100, threads=1000), "threads"), (dict(bytes=100, reps=0), "reps")])
def test_read_bandwidth_probe_rejects_bad_arguments_by_name(kw, name):
    with pytest.raises(ValueError, match=name):
        _C.read_bandwidth_gbps(**kw)


class FakeC:
    """A probe at a fixed 100 GB/s per thread, NR = 32: the floor's arithmetic can be checked by hand."""

    calls = []

    def panel_width(self, dtype):
        return 32

    def crossing_macs(self):
        return 8192

    def read_bandwidth_gbps(self, nbytes, threads, reps):
        self.calls.append((nbytes, threads))
        return 100.0 * threads


def test_floor_of_a_batch1_lstm_step_is_its_weight_share_over_bandwidth_plus_a_crossing():
    fl = floor.Floor(FakeC(), threads=2, roofline_gflops=400.0, round_trip_ns=100.0)
    f = fl.of(case("lstm", 100, 1, 64, 256))
    # 256 units = 8 blocks of 32: 4 per thread; the busiest thread reads 4 gates x 128 units x 256 x 4 bytes.
    assert f["team"] == 2 and f["bytes"] == 4 * 128 * 256 * 4 and f["bound"] == "read"
    step_us = 4 * 128 * 256 * 4 / (100.0 * 1e3) + 0.1
    assert f["step_us"] == pytest.approx(step_us)
    proj_ms = 2.0 * 100 * 1 * 4 * 256 * 64 / (400.0 * 1e6)
    assert f["floor_ms"] == pytest.approx(100 * step_us / 1e3 + proj_ms)


def test_floor_of_a_large_batch_is_bound_by_the_multiply_adds():
    fl = floor.Floor(FakeC(), threads=2, roofline_gflops=400.0, round_trip_ns=0.0)
    f = fl.of(case("gru", 100, 64, 512, 512))
    fma_us = 2.0 * 64 * 3 * 256 * 512 / (200.0 * 1e3)
    assert f["bound"] == "FMA" and f["step_us"] == pytest.approx(fma_us)


def test_floor_team_follows_the_kernels_rule_for_small_steps():
    # RNN H=32 B=1: one block of 32 units and 1*1*32*32/8192 < 1: one thread, no crossing counted as parallel.
    assert floor.recurrence_threads(case("rnn", 10, 1, 8, 32), 2, 32, 8192) == 1
    assert floor.recurrence_threads(case("lstm", 10, 1, 8, 64), 2, 32, 8192) == 2
    assert floor.recurrence_threads(case("lstm", 10, 1, 8, 64), 1, 32, 8192) == 1
    # A slow crossing (the tuner scaled it up): LSTM H=64 B=1 then runs on one thread, as the kernels do.
    assert floor.recurrence_threads(case("lstm", 10, 1, 8, 64), 2, 32, 24000) == 1
