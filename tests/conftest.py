"""Shared test set-up: quiet TensorFlow logs, the TensorFlow backend unless a test picks another,
the `slow` marker, the command line as a subprocess, and one smoke study shared by every test
that reads it.

    python -m pytest -q -rs -n 2 --dist loadgroup                 # everything (what CI runs)
    python -m pytest -q -rs -n 2 --dist loadgroup -m "not slow"   # the fast tier: no training runs or end-to-end studies
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

ROOT = Path(__file__).resolve().parent.parent


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: trains models or runs a study end to end (deselect with -m 'not slow')")
    config.addinivalue_line("markers", "xdist_group(name): tests that share an expensive fixture run in one pytest-xdist worker")
    # a Keras layer built without a build() of its own reads as a bug to anyone watching the tests: fail instead
    config.addinivalue_line("filterwarnings", "error:`build\\(\\)` was called on layer:UserWarning")


SHARED_FIXTURES = ("smoke_run", "reference", "trained", "drawn")  # session- or module-scoped, each costing seconds to minutes


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config, items):
    """Under `pytest -n N --dist loadgroup` (pytest-xdist) tests go to workers one by one, except
    that the tests sharing one of `SHARED_FIXTURES` (per module and parameter) stay in one worker,
    so it is computed once."""
    for item in items:
        for name in SHARED_FIXTURES:
            if name in item.fixturenames:
                param = getattr(item, "callspec", None) and item.callspec.params.get(name)
                where = "" if name == "smoke_run" else item.module.__name__
                item.add_marker(pytest.mark.xdist_group(f"{name}-{where}-{param!r}"))
                break


def run_cli(*args, cwd=ROOT, env=None):
    """`python run_study.py *args` in a subprocess; returns the CompletedProcess."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    return subprocess.run([sys.executable, str(ROOT / "run_study.py"), *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=900)


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """The smoke profile run once on the local executor: (results folder, CompletedProcess)."""
    out = tmp_path_factory.mktemp("study") / "smoke"
    result = run_cli("--profile", "smoke", "--out", str(out), "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result
