"""rnnfast in a source checkout (issue 18): the compiled modules live in their own package, _rnnfast, installed
beside rnnfast, so Python started in the repository root imports the checkout's rnnfast/ with them; a checkout
whose C++ sources differ from those the installed modules were built from is refused with a message that says
to reinstall (rnnfast/_compiled.py).

The tests that need a checkout (csrc/ beside tests/) skip without one.
"""
import importlib.metadata
import os
import shutil
import subprocess
import sys
import time

import pytest

from rnnfast import _compiled
from _rnnfast import _C

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _need_checkout():
    if not (os.path.isdir(os.path.join(ROOT, "csrc")) and os.path.isfile(os.path.join(ROOT, "CMakeLists.txt"))):
        pytest.skip("not run from a source checkout")


def _python(code, cwd, **env):
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, **env))


def test_import_from_the_repository_root_takes_the_checkout_with_the_installed_modules():
    _need_checkout()
    r = _python("import rnnfast, _rnnfast, numpy as np\n"
                "y = rnnfast.GRU(3, 4)(np.ones((2, 1, 3), np.float32))[0]\n"
                "print(rnnfast.__file__); print(_rnnfast.__file__); print(y.shape)", cwd=ROOT)
    assert r.returncode == 0, r.stderr
    ours, compiled, shape = r.stdout.splitlines()
    assert ours == os.path.join(ROOT, "rnnfast", "__init__.py"), ours
    # The installation's (a venv may lie inside the checkout, as .ci/run's .ci-venv does), never a folder of the tree.
    assert not os.path.exists(os.path.join(ROOT, "_rnnfast")), "a _rnnfast folder in the checkout"
    assert os.path.dirname(compiled) != os.path.join(ROOT, "_rnnfast"), compiled
    assert shape == "(2, 1, 4)"


def test_the_installed_modules_were_built_from_this_checkout():
    """What the suite tests is this checkout's C++: reinstall (pip install .) after changing csrc/."""
    _need_checkout()
    assert _C.source_fingerprint() == _compiled.source_fingerprint(ROOT), \
        "the installed _rnnfast was built from other sources than this checkout's: run pip install . again"


def test_fingerprint_is_cheap():
    _need_checkout()
    best = min(_timed(lambda: _compiled.source_fingerprint(ROOT)) for _ in range(5))
    assert best < 0.02, f"source_fingerprint took {best * 1e3:.1f} ms; import rnnfast pays it in a checkout"


def _timed(f):
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0


def _copy_checkout(dest):
    """The parts of the checkout the fingerprint and the import read: rnnfast/, csrc/, CMakeLists.txt."""
    for name in ("rnnfast", "csrc"):
        shutil.copytree(os.path.join(ROOT, name), os.path.join(dest, name),
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(os.path.join(ROOT, "CMakeLists.txt"), dest)
    return str(dest)


def test_a_checkout_with_other_sources_is_refused(tmp_path):
    _need_checkout()
    root = _copy_checkout(tmp_path)
    r = _python("import rnnfast; print(rnnfast.__file__)", cwd=root)
    assert r.returncode == 0 and r.stdout.startswith(root), r.stderr  # the same sources: imports, wherever
    with open(os.path.join(root, "csrc", "cpu", "simd.h"), "a") as f:
        f.write("// changed since the last build\n")
    r = _python("import rnnfast", cwd=root)
    assert r.returncode != 0
    assert "ImportError" in r.stderr and "built from other sources" in r.stderr and "pip install ." in r.stderr, \
        r.stderr[-800:]


def test_fingerprint_covers_the_sources_and_only_them(tmp_path):
    _need_checkout()
    root = _copy_checkout(tmp_path)
    before = _compiled.source_fingerprint(root)
    with open(os.path.join(root, "csrc", "notes.txt"), "w") as f:
        f.write("not a source\n")
    assert _compiled.source_fingerprint(root) == before
    with open(os.path.join(root, "csrc", "cuda", "new.cuh"), "w") as f:
        f.write("// a new header\n")
    assert _compiled.source_fingerprint(root) != before
    os.remove(os.path.join(root, "csrc", "cuda", "new.cuh"))
    with open(os.path.join(root, "CMakeLists.txt"), "a") as f:
        f.write("# changed\n")
    assert _compiled.source_fingerprint(root) != before


def test_missing_compiled_modules_say_to_install(tmp_path):
    r = _python("import sys; sys.modules['_rnnfast'] = None\nimport rnnfast", cwd=tmp_path)
    assert r.returncode != 0
    assert "_rnnfast" in r.stderr and "pip install ." in r.stderr and "import error was" in r.stderr, r.stderr[-800:]


def test_the_installation_holds_both_packages_and_nothing_compiled_in_rnnfast():
    files = [str(f) for f in importlib.metadata.files("rnnfast")]
    compiled = [f for f in files if f.endswith(".so")]
    assert compiled and all(f.startswith("_rnnfast/") for f in compiled), compiled
    for want in ("_rnnfast/__init__.py", "_rnnfast/rnnfast_cpu_generic.so", "rnnfast/py.typed",
                 "rnnfast/_compiled.py"):
        assert want in files, f"{want} is not installed"
    assert any(f.startswith("_rnnfast/_C.") for f in files) and any(f.startswith("_rnnfast/_cuda_emu.") for f in files)
