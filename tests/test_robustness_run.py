"""What a running study does with what it cannot control: a user's keras.json asking for float16
and the number of cells trained at once (--jobs)."""

import json

import pytest

from helpers import run_cli


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


def test_a_thread_layout_other_than_one_makes_other_cells():
    """`cell_cpus` 1 (every committed study's) leaves cell ids as they were; 2 threads make other
    cells, whatever --jobs is."""
    import dataclasses

    from study.config import build_study_config
    from study.runner import study_cells

    one = build_study_config("smoke")
    ids = lambda config: [cid for _, cid in study_cells(config)]  # noqa: E731
    assert ids(one) == ids(dataclasses.replace(one, jobs=1))
    assert set(ids(one)).isdisjoint(ids(dataclasses.replace(one, cell_cpus=2)))
