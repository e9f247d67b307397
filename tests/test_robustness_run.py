"""What a running study does with what it cannot control: a worker process killed mid-study, a
user's keras.json asking for float16, and the number of cells trained at once (--jobs)."""

import json
import signal
import textwrap
from types import SimpleNamespace

import pytest

from helpers import run_cli
from study.executors import ExecutorError, _after_a_dead_worker

DIES_AT_THREE = textwrap.dedent(
    """
    import os
    import signal

    from study.tasks import register_task
    from study.tasks.base import SymbolTask


    @register_task
    class DiesAtThree(SymbolTask):
        name = "dies_at_three"
        version = 1
        description = "copy, but the process drawing a training set of length 3 is killed (kill -9)"

        def __init__(self, tag: str = "", alphabet: str = "abcd") -> None:
            super().__init__(alphabet)
            self.options["tag"] = tag  # a fresh dataset cache key for each test run

        def transform(self, source):
            return source

        def sample(self, rng, n, length):
            if length == 3 and n > 8:  # not the contract check's 8 in the study's own process
                os.kill(os.getpid(), signal.SIGKILL)
            return super().sample(rng, n, length)
    """
)


def _records(out) -> dict:
    return {tuple(r["train_lengths"]): r for r in (json.loads(p.read_text()) for p in (out / "cells").glob("*.json"))}


@pytest.mark.slow
def test_a_killed_worker_fails_its_own_cell_and_the_study_goes_on(tmp_path):
    """Cells of training lengths 2, 3 and 4 on two workers; the worker that draws length 3 is
    killed (SIGKILL), which stops the other worker too.  The killed cell gets a failed record
    naming how its worker died, the other two are run (again) on new workers and recorded, and
    the study ends with exit 3 and a report, without a traceback."""
    plugin = tmp_path / "dies_at_three.py"
    plugin.write_text(DIES_AT_THREE)
    config = tmp_path / "study.toml"
    config.write_text(
        textwrap.dedent(f'''
        profile = "smoke"
        models = ["none"]
        seeds = [0]
        regime = "per_length"
        jobs = 2
        [tasks.dies_at_three]
        train_lengths = [2, 3, 4]
        eval_lengths = [4]
        options = {{ tag = "{tmp_path.name}" }}
        [train]
        n_train = 64
        max_examples = 64
        ''')
    )
    out = tmp_path / "out"
    result = run_cli("--config", str(config), "--task-module", str(plugin), "--out", str(out), "--quiet")
    assert result.returncode == 3, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    records = _records(out)
    assert {k: r["status"] for k, r in records.items()} == {(2,): "ok", (3,): "failed", (4,): "ok"}
    assert records[(3,)]["error"].startswith("WorkerDied: its worker process was killed by SIGKILL")
    assert "\n" not in records[(3,)]["error"]
    assert len(json.loads((out / "study.json").read_text())["cells"]) == 3
    assert "WorkerDied" in (out / "report.md").read_text()


def _process(exitcode):
    return SimpleNamespace(exitcode=exitcode)


def test_the_cell_of_the_worker_that_died_fails_and_the_others_run_again():
    """A broken pool of workers 10 and 11 (running cells 0 and 1) and a queued cell 2: the worker
    that ended other than by the pool's SIGTERM is the culprit; the rest run again."""
    killed = {10: _process(-signal.SIGKILL), 11: _process(-signal.SIGTERM)}
    failed = _after_a_dead_worker({0, 1, 2}, {10: 0, 11: 1}, killed, {})
    assert list(failed) == [0] and "killed by SIGKILL" in failed[0]
    exited = {10: _process(-signal.SIGTERM), 11: _process(1)}
    assert "exited with code 1" in _after_a_dead_worker({0, 1, 2}, {10: 0, 11: 1}, exited, {})[1]


def test_with_no_culprit_known_a_cell_fails_only_when_a_worker_dies_under_it_twice():
    unknown = {10: _process(-signal.SIGTERM), 11: _process(-signal.SIGTERM)}
    suspected: dict = {}
    assert _after_a_dead_worker({0, 1, 2}, {10: 0, 11: 1}, unknown, suspected) == {}  # both run again
    failed = _after_a_dead_worker({1, 2}, {10: 2, 11: 1}, unknown, suspected)
    assert list(failed) == [1] and "died twice" in failed[1]


def test_workers_that_die_before_any_cell_starts_end_the_study_in_one_line():
    suspected: dict = {}
    assert _after_a_dead_worker({0, 1}, {}, {10: _process(1)}, suspected) == {}  # once: tried again
    with pytest.raises(ExecutorError, match="die before they start a cell"):
        _after_a_dead_worker({0, 1}, {}, {10: _process(1)}, suspected)


@pytest.fixture(scope="module")
def alone(smoke_run, tmp_path_factory):
    """The smoke study's copy/dot seed-0 cell run again alone in the study's own process
    (--jobs 1), with a keras.json asking for float16 ($KERAS_HOME): (its record, the smoke
    study's record of the same cell, trained beside others on worker processes)."""
    tmp = tmp_path_factory.mktemp("alone")
    (tmp / "keras").mkdir()
    (tmp / "keras" / "keras.json").write_text(
        json.dumps(
            {"floatx": "float16", "epsilon": 1e-07, "backend": "tensorflow", "image_data_format": "channels_last"}
        )
    )
    out = tmp / "out"
    args = ("--profile", "smoke", "--tasks", "copy", "--models", "dot", "--seeds", "0", "--jobs", "1")
    result = run_cli(*args, "--out", str(out), "--quiet", env={"KERAS_HOME": str(tmp / "keras")})
    (record,) = [json.loads(p.read_text()) for p in (out / "cells").glob("*.json")]
    smoke = json.loads((smoke_run[0] / "cells" / f"{record['id']}.json").read_text())
    return result, record, smoke


def _results(record: dict) -> dict:
    """What a record says about the model, without timings."""
    untimed = lambda rows, clock: [{k: v for k, v in row.items() if k != clock} for row in rows]  # noqa: E731
    return {
        "stop": record["stop_reason"],
        "seen": record["examples_seen"],
        "best": (record["best_epoch"], record["best_val_seq_acc"]),
        "history": untimed(record["history"], "seconds"),
        "metrics": untimed(record["metrics"], "decode_seconds"),
    }


@pytest.mark.slow
def test_a_float16_keras_json_changes_nothing(alone):
    """The study computes in float32 whatever keras.json says, and its records say so."""
    result, record, smoke = alone
    assert result.returncode == 0, result.stderr[-3000:]
    assert record["status"] == "ok" and record["floatx"] == smoke["floatx"] == "float32"
    assert _results(record) == _results(smoke)


@pytest.mark.slow
def test_a_cell_gives_the_same_record_alone_and_beside_others(alone):
    """The same cell alone (--jobs 1) and in the smoke study (--jobs 0: one worker per core)
    trains with one thread layout, recorded, and gives the same history and metrics."""
    result, record, smoke = alone
    assert result.returncode == 0, result.stderr[-3000:]
    assert record["threads"] == smoke["threads"] == {"intra_op": 1, "inter_op": 1}
    assert record["config"]["jobs"] == 1 and smoke["config"]["jobs"] == 0
    assert _results(record) == _results(smoke)
