"""Where rnnfast's compiled modules come from, and a check that they fit the Python code beside them.

The build installs every compiled module into a private top-level package of its own, ``_rnnfast`` (``_C``,
``_cuda_emu``, ``_cuda`` where nvcc was found, and the kernel libraries ``_C`` opens), beside ``rnnfast`` in
site-packages; the package imports them as ``from _rnnfast import _C``. Python started in the root of a source
checkout therefore imports the checkout's pure-Python ``rnnfast/`` with the installed ``_rnnfast`` (the
checkout has no folder of that name), and nothing is built into the source tree (docs/DESIGN.md, "Where the
compiled modules live").

What could go wrong there is version skew: a checkout whose C++ changed since its last ``pip install .``.
CMakeLists.txt compiles a fingerprint of the sources into ``_C`` (``_C.source_fingerprint()``);
``check()``, run by ``import rnnfast``, computes the same from the checkout when rnnfast runs from one (a
``csrc/`` folder and a ``CMakeLists.txt`` beside ``rnnfast/``) and refuses a mismatch. An installed rnnfast
(no ``csrc/`` beside it) is not checked: pip installs both packages from one build.
"""
from __future__ import annotations

import hashlib
import os

# The files the fingerprint covers: CMakeLists.txt and these under csrc/ (CMakeLists.txt globs the same).
SOURCE_SUFFIXES = (".h", ".hpp", ".cpp", ".cc", ".cu", ".cuh")


def source_fingerprint(root: str) -> str:
    """SHA-256 (hex) of the lines ``"<path> <SHA-256 of the file>\\n"`` for CMakeLists.txt and every file under
    ``csrc/`` with a suffix of SOURCE_SUFFIXES, paths relative to ``root`` with ``/``, sorted: what
    CMakeLists.txt compiles into ``_C``. About 1 ms for this tree."""
    names = ["CMakeLists.txt"]
    for folder, _, files in os.walk(os.path.join(root, "csrc")):
        rel = os.path.relpath(folder, root).replace(os.sep, "/")
        names += [f"{rel}/{name}" for name in files if name.endswith(SOURCE_SUFFIXES)]
    lines = []
    for name in sorted(names):
        with open(os.path.join(root, name), "rb") as f:
            lines.append(f"{name} {hashlib.sha256(f.read()).hexdigest()}\n")
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def checkout_root() -> str | None:
    """The source checkout this rnnfast/ runs from (the folder holding it, csrc/ and CMakeLists.txt), or None
    for an installed package."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if os.path.isdir(os.path.join(root, "csrc")) and os.path.isfile(os.path.join(root, "CMakeLists.txt")):
        return root
    return None


def check() -> None:
    """Imports the compiled modules; ImportError, saying what to do, when they are missing or were built from
    other sources than the checkout this rnnfast/ runs from."""
    try:
        from _rnnfast import _C
    except ImportError as e:
        raise ImportError(
            "rnnfast's compiled modules (the package _rnnfast) could not be imported: install rnnfast with "
            "`pip install .` in its source checkout, which builds them (or `pip install rnnfast`). "
            f"(The import error was: {e})") from None
    root = checkout_root()
    if root is None:
        return
    built = getattr(_C, "source_fingerprint", lambda: "unknown")()
    checkout = source_fingerprint(root)
    if built != checkout:
        raise ImportError(
            f"rnnfast runs from the source checkout {root}, but the installed compiled modules "
            f"({os.path.dirname(_C.__file__)}) were built from other sources than this checkout's csrc/ and "
            f"CMakeLists.txt (fingerprint {built[:12]}, the checkout's {checkout[:12]}): run "
            f"`pip install .` in {root} again to rebuild them.")
