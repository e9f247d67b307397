"""What a running study does with what it cannot control: a user's keras.json asking for float16."""

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
