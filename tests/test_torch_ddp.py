"""DistributedDataParallel over a model with rnnfast.torch layers: two processes (gloo over 127.0.0.1) training on
halves of each batch end with the parameters of one process trained on the whole batch."""
import os
import socket
import subprocess
import sys

from conftest import assert_close, require_torch

torch = require_torch()

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_scripts", "ddp_train.py")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_equals_one_process_on_the_whole_batch(tmp_path):
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
    run = dict(cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    port = free_port()
    ranks = [subprocess.Popen([sys.executable, SCRIPT, str(r), "2", str(port), str(tmp_path / "ddp.pt")], **run)
             for r in range(2)]
    single = subprocess.run([sys.executable, SCRIPT, "single", str(tmp_path / "single.pt")], timeout=120, **run)
    try:
        outputs = [p.communicate(timeout=120)[0] for p in ranks]
    finally:
        for p in ranks:
            if p.poll() is None:
                p.kill()
    assert single.returncode == 0, single.stdout
    for r, (p, out) in enumerate(zip(ranks, outputs)):
        assert p.returncode == 0, f"rank {r}: {out}"
    ddp, want = torch.load(tmp_path / "ddp.pt"), torch.load(tmp_path / "single.pt")
    assert list(ddp) == list(want)
    initial = torch.load(tmp_path / "single.pt.initial")
    for name in want:
        assert_close(ddp[name], want[name], 1e-10, f"parameter {name} after DDP training")
        assert not torch.equal(want[name], initial[name]), f"{name} did not train"
