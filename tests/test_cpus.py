"""The default thread count (rnnfast/_core/cpus.py): the affinity mask capped by the cgroup CPU quota, read from
fake cgroup trees (v1 and v2, inside and outside a cgroup namespace)."""
import os

import pytest

import rnnfast
from rnnfast._core import cpus as _cpus


def _tree(tmp_path, proc_text, files):
    proc = tmp_path / "cgroup"
    proc.write_text(proc_text)
    root = tmp_path / "fs"
    for rel, text in files.items():
        f = root / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    root.mkdir(exist_ok=True)
    return str(root), str(proc)


@pytest.mark.parametrize("cpu_max, want", [("200000 100000", 2.0), ("150000 100000", 1.5), ("max 100000", None),
                                           ("garbage", None), ("0 100000", None)])
def test_v2_quota_in_a_container_namespace(tmp_path, cpu_max, want):
    root, proc = _tree(tmp_path, "0::/\n", {"cpu.max": cpu_max + "\n"})
    assert _cpus.quota_limit(root, proc) == want


def test_v2_quota_the_tightest_level_on_the_path_counts(tmp_path):
    root, proc = _tree(tmp_path, "0::/kubepods/pod1/box\n",
                       {"cpu.max": "max 100000", "kubepods/cpu.max": "800000 100000",
                        "kubepods/pod1/cpu.max": "250000 100000", "kubepods/pod1/box/cpu.max": "max 100000"})
    assert _cpus.quota_limit(root, proc) == 2.5


@pytest.mark.parametrize("controllers", ["cpu,cpuacct", "cpu"])
def test_v1_quota(tmp_path, controllers):
    root, proc = _tree(tmp_path, f"4:memory:/x\n3:{controllers}:/docker/abc\n",
                       {f"{controllers}/docker/abc/cpu.cfs_quota_us": "300000",
                        f"{controllers}/docker/abc/cpu.cfs_period_us": "100000",
                        f"{controllers}/cpu.cfs_quota_us": "-1", f"{controllers}/cpu.cfs_period_us": "100000"})
    assert _cpus.quota_limit(root, proc) == 3.0


def test_v1_without_quota_and_unreadable_files_mean_no_limit(tmp_path):
    root, proc = _tree(tmp_path, "1:cpu:/\n", {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"})
    assert _cpus.quota_limit(root, proc) is None
    assert _cpus.quota_limit(str(tmp_path / "absent"), str(tmp_path / "absent")) is None


def test_the_default_thread_count_is_the_affinity_capped_by_the_quota_rounded_up(monkeypatch):
    monkeypatch.setattr(_cpus, "affinity_count", lambda: 64)
    monkeypatch.setattr(_cpus, "quota_limit", lambda: 1.5)
    assert _cpus.available() == 2
    monkeypatch.setattr(_cpus, "quota_limit", lambda: 0.2)
    assert _cpus.available() == 1
    monkeypatch.setattr(_cpus, "quota_limit", lambda: None)
    assert _cpus.available() == 64
    monkeypatch.setattr(_cpus, "affinity_count", lambda: 2)
    monkeypatch.setattr(_cpus, "quota_limit", lambda: 8.0)
    assert _cpus.available() == 2


def test_set_num_threads_is_capped_at_the_quota(monkeypatch):
    from rnnfast._core import threads
    before = dict(threads._state)
    monkeypatch.setattr(_cpus, "affinity_count", lambda: 64)
    monkeypatch.setattr(_cpus, "quota_limit", lambda: 1.0)
    try:
        rnnfast.set_num_threads(16)
        assert rnnfast.get_num_threads() == 1
        rnnfast.set_num_threads(16, exact=True)  # exact is the caller's word: not capped
        assert rnnfast.get_num_threads() == 16
    finally:
        threads._state.update(before)  # set_num_threads would cap it by the patched quota


def test_this_machine_default_matches_its_affinity_and_quota():
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    q = _cpus.quota_limit()
    assert _cpus.available() == (min(n, -(-q // 1)) if q else n)
