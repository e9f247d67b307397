"""A study survives being killed, refuses a second process, records divergence and memory
failures as failed cells, and resumes to the same metrics as an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY = textwrap.dedent(
    """
    profile = "smoke"
    models = ["none", "dot"]
    seeds = [0]
    jobs = 1
    [tasks.copy]
    train_lengths = "2..4"
    eval_lengths = [2, 4, 6]
    [tasks.date_format]
    train_lengths = [1]
    eval_lengths = [1]
    [train]
    n_train = 128
    max_epochs = 1
    """
)
DETERMINISTIC = ["seq_acc", "char_acc", "n_examples", "examples_seen", "param_count", "stop_reason", "cell_id"]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


def _config(tmp_path, text=TINY, name="tiny.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def run(*args, **kwargs):
    return subprocess.run([sys.executable, str(ROOT / "run_study.py"), *map(str, args)], capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=600, **kwargs)


def run_with_fault(mode, *args):
    """Runs the CLI in a process that dies (os._exit) at the second cell's record write:
    'before_write' dies just before it, 'torn_write' leaves a half-written file at the final path."""
    code = textwrap.dedent(
        f"""
        import json, os, sys
        sys.path.insert(0, {str(ROOT)!r})
        import study.runner as runner
        real = runner.write_json_atomic
        count = [0]
        def faulty(path, payload):
            if path.parent.name == "cells":
                count[0] += 1
                if count[0] == 2:
                    if {mode!r} == "torn_write":
                        path.write_text(json.dumps(payload)[:200])
                    os._exit(9)
            real(path, payload)
        runner.write_json_atomic = faulty
        import run_study
        sys.exit(run_study.main({[str(a) for a in args]!r}))
        """
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=600)


def metrics(out: Path) -> pd.DataFrame:
    frame = pd.read_csv(out / "metrics.csv")
    return frame[["task", "model", "seed", "length", *DETERMINISTIC]].sort_values(["task", "model", "seed", "length"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reference")
    out = tmp / "out"
    result = run("--config", _config(tmp), "--out", out, "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    return metrics(out)


def test_fresh_rerun_reproduces_metrics(tmp_path, reference):
    out = tmp_path / "out"
    assert run("--config", _config(tmp_path), "--out", out, "--quiet", "--fresh").returncode == 0
    pd.testing.assert_frame_equal(metrics(out), reference)


@pytest.mark.parametrize("mode", ["before_write", "torn_write"])
def test_crash_at_a_results_write_then_resume(tmp_path, reference, mode):
    out = tmp_path / "out"
    config = _config(tmp_path)
    crashed = run_with_fault(mode, "--config", config, "--out", out, "--quiet")
    assert crashed.returncode == 9
    assert len(list((out / "cells").glob("*.json"))) == (2 if mode == "torn_write" else 1)
    resumed = run("--config", config, "--out", out, "--quiet")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    if mode == "torn_write":
        assert "is damaged or incomplete; recomputing" in resumed.stderr
    pd.testing.assert_frame_equal(metrics(out), reference)


def test_sigkill_in_training_then_resume(tmp_path, reference):
    out = tmp_path / "out"
    config = _config(tmp_path)
    proc = subprocess.Popen([sys.executable, str(ROOT / "run_study.py"), "--config", str(config), "--out", str(out), "--quiet"], cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not list((out / "cells").glob("*.json")):
        time.sleep(0.1)
    time.sleep(1.0)  # into the next cell's training
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")}
    assert 1 <= len(finished) < 4
    resumed = run("--config", config, "--out", out, "--quiet")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert all((out / "cells" / name).stat().st_mtime_ns == mtime for name, mtime in finished.items())  # not recomputed
    pd.testing.assert_frame_equal(metrics(out), reference)


def test_ctrl_c_stops_cleanly_with_exit_130(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, str(ROOT / "run_study.py"), "--config", str(_config(tmp_path)), "--out", str(out), "--quiet"], cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not list((out / "cells").glob("*.json")):
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    assert "cells are done and saved in" in stderr and "run the same command again to resume" in stderr
    assert "Traceback" not in stderr


def test_second_study_on_same_folder_is_refused_and_lock_dies_with_its_process(tmp_path):
    out = tmp_path / "out"
    config = _config(tmp_path)
    first = subprocess.Popen([sys.executable, str(ROOT / "run_study.py"), "--config", str(config), "--out", str(out), "--quiet"], cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not ((out / ".lock").exists() and (out / ".lock").read_text().strip()):
            time.sleep(0.05)
        second = run("--config", config, "--out", out, "--quiet")
        assert second.returncode == 2
        assert f"is in use by another study (pid {first.pid})" in second.stderr
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    from study.runner import StudyLock

    with StudyLock(out):  # a killed study leaves no stale lock
        pass


def test_divergence_is_a_failed_cell_and_the_study_goes_on(tmp_path):
    out = tmp_path / "out"
    config = _config(tmp_path, TINY.replace("max_epochs = 1", "max_epochs = 1\nlearning_rate = 1e38"))
    result = run("--config", config, "--out", out, "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(p.read_text()) for p in (out / "cells").glob("*.json")]
    failed = [r for r in records if r["status"] == "failed"]
    assert failed and all("diverged: loss became" in r["error"] for r in failed)
    assert "FAILED (diverged: loss became" in result.stdout
    frame = pd.read_csv(out / "metrics.csv")
    assert frame.loc[frame.status == "failed", "seq_acc"].isna().all()
    assert "failed cells" in (out / "report.md").read_text()


def test_a_cell_too_big_for_memory_fails_alone(tmp_path):
    out = tmp_path / "out"
    big = TINY.replace('[tasks.date_format]\ntrain_lengths = [1]\neval_lengths = [1]', '[tasks.reverse]\ntrain_lengths = [20000]\neval_lengths = [20000]\noptions = { alphabet = "ab" }')
    big = big.replace('models = ["none", "dot"]', 'models = ["additive"]')
    result = run("--config", _config(tmp_path, big), "--out", out, "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    records = {r["task"]: r for r in (json.loads(p.read_text()) for p in (out / "cells").glob("*.json"))}
    assert records["copy"]["status"] == "ok"
    assert records["reverse"]["status"] == "failed"
    assert "MemoryBudgetError" in records["reverse"]["error"] and "lower train.batch_size" in records["reverse"]["error"]
    assert "MemoryBudgetError" in (out / "report.md").read_text()  # listed among the failed cells
