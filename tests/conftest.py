"""Shared test set-up: quiet TensorFlow logs, the TensorFlow backend unless a test picks another,
the `slow` marker, the command line as a subprocess, and one smoke study shared by every test
that reads it.

    python -m pytest -q -rs                 # everything (what CI runs)
    python -m pytest -q -rs -m "not slow"   # the fast tier: no training runs or end-to-end studies
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
