"""The README's set-up from the root of a fresh clone (issue 18): its main-job command, run verbatim in a fresh
venv, builds, installs and runs the demo there, and `python -c "import rnnfast"` works there too.

What is cloned is the committed HEAD of the checkout the tests run from: a clone sees committed files only. CI
runs this suite in a clean clone of main (.ci/run), where HEAD is exactly what is tested; on a developer's
machine, uncommitted changes are not in the clone (commit them first). The clone's venv is made from this
interpreter, with what the environment gives pip (its cache; PIP_FIND_LINKS, which .ci/run sets to /opt/wheels
where that exists); pip reaches PyPI for the build requirements.

The test builds the package once more (about two minutes on two cores), so it runs only where
RNNFAST_FRESH_CLONE=1: .ci/run sets it, so that in CI it runs and can never pass by being skipped; elsewhere it is
skipped. The checks that the README's commands and CI's agree run everywhere.
"""
import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
CI = os.path.join(ROOT, ".ci", "run")


def setup_commands():
    """The bash blocks of the README's set-up section: [main job, tests]."""
    with open(README) as f:
        text = f.read()
    section = text.split("\n## Set up", 1)[1].split("\n## ", 1)[0]
    blocks = [b.strip() for b in re.findall(r"```bash\n(.*?)```", section, flags=re.S)]
    assert len(blocks) >= 2, "README's set-up section: expected the main-job and the test command blocks"
    return blocks[:2]


def test_readme_commands_are_what_ci_runs():
    main_job, tests = setup_commands()
    assert main_job == "pip install . && python -m rnnfast", main_job
    with open(CI) as f:
        ci = f.read().splitlines()
    assert tests in ci, f"the README's test command {tests!r} is not a line of .ci/run"
    assert "export RNNFAST_FRESH_CLONE=1" in ci, ".ci/run must run tests/test_fresh_clone.py"


def _require():
    if os.environ.get("RNNFAST_FRESH_CLONE") != "1":
        pytest.skip("a full build in a fresh clone (minutes): runs where RNNFAST_FRESH_CLONE=1, as in CI")
    git = shutil.which("git")
    if git is None or not os.path.exists(os.path.join(ROOT, ".git")):
        pytest.fail("RNNFAST_FRESH_CLONE=1, but git or the checkout's .git is missing")
    return git


def _fresh_env(venv):
    """The environment a user's shell has after `python -m venv venv && . venv/bin/activate`."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RNNFAST_", "PYTHON")) and k not in ("VIRTUAL_ENV", "PIP_REQUIRE_VIRTUALENV")}
    env["VIRTUAL_ENV"] = venv
    env["PATH"] = os.path.join(venv, "bin") + os.pathsep + env.get("PATH", "")
    return env


def test_readme_main_job_runs_in_a_fresh_clone(tmp_path):
    git = _require()
    main_job, _ = setup_commands()
    clone, venv = str(tmp_path / "rnnfast"), str(tmp_path / "venv")
    head = subprocess.run([git, "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    subprocess.run([git, "clone", "--quiet", ROOT, clone], check=True, timeout=300)
    subprocess.run([git, "checkout", "--quiet", "--detach", head.strip()], cwd=clone, check=True)
    subprocess.run([sys.executable, "-m", "venv", venv], check=True, timeout=300)
    env = _fresh_env(venv)

    r = subprocess.run(["bash", "-c", main_job], cwd=clone, env=env, capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, f"{main_job!r} failed in a fresh clone:\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    assert re.search(r"test MAE [\d.]+ +naive last-value baseline MAE [\d.]+", r.stdout), r.stdout[-2000:]
    assert not os.path.exists(os.path.join(clone, "_rnnfast")), "the build wrote _rnnfast into the clone"

    python = os.path.join(venv, "bin", "python")
    r = subprocess.run([python, "-c", "import rnnfast; print(rnnfast.__file__)"], cwd=clone, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip() == os.path.join(clone, "rnnfast", "__init__.py"), r.stdout
