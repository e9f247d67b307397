"""Shared test set-up: quiet TensorFlow logs, the TensorFlow backend unless a test picks another,
and one smoke study shared by every test that reads it (markers and warnings: pyproject.toml;
helpers: tests/helpers.py).

    python -m pytest -q -rs -n 2 --dist loadgroup                 # everything (what CI runs)
    python -m pytest -q -rs -n 2 --dist loadgroup -m "not slow"   # the fast tier: no training runs or end-to-end studies
"""

import gc
import os

import pytest

from helpers import run_cli

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

# session- or module-scoped, each costing seconds to minutes
SHARED_FIXTURES = (
    "smoke_run",
    "reference",
    "trained",
    "drawn",
)


def pytest_sessionfinish(session):
    """On a pytest-xdist worker, freezes the heap (`gc.freeze`) once the tests are done, so the
    garbage collections that pytest runs on its way out take milliseconds instead of the seconds
    that a heap of TensorFlow and JAX objects takes on a busy machine: execnet sends a worker still
    busy 5 s after the end a SIGINT, which landed in hypothesis's garbage-collector callback and
    printed a KeyboardInterrupt traceback under a green run."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        gc.freeze()


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


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """The smoke profile run once on the local executor: (results folder, CompletedProcess)."""
    out = tmp_path_factory.mktemp("study") / "smoke"
    result = run_cli("--profile", "smoke", "--out", str(out), "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result
