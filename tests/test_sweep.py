"""The recipe sweep: runs train on training and validation data only, and the table says what they did."""

import json

import pytest

from study import sweep


@pytest.mark.slow
def test_a_sweep_run_trains_a_probe_on_validation_data_and_tabulates_it(tmp_path, monkeypatch):
    assert sweep.main(["--recipes", "base", "--probes", "date_format/dot", "--jobs", "1", "--max-examples", "10000", "--out", str(tmp_path)]) == 0
    (run_file,) = (tmp_path / "runs").glob("*.json")
    run = json.loads(run_file.read_text())
    assert run["train_config"]["max_examples"] == 10000 and run["train_config"]["learning_rate"] == sweep.RECIPES["base"]["learning_rate"]
    assert run["examples_seen"] == 10000 and len(run["history"]) == 1
    assert sorted(run["history"][0]["val_seq_acc_by_length"]) == ["1", "2", "3", "4"]  # the standard profile's training lengths
    table = (tmp_path / "sweep.md").read_text()
    assert "| date_format/dot | base | 0 |" in table
    # a second call finds the run and trains nothing (the file is not rewritten)
    before = run_file.stat().st_mtime_ns
    assert sweep.main(["--recipes", "base", "--probes", "date_format/dot", "--jobs", "1", "--max-examples", "10000", "--out", str(tmp_path)]) == 0
    assert run_file.stat().st_mtime_ns == before


def test_the_sweep_table_reports_time_to_90_percent_and_the_longest_length():
    run = {"recipe": "r", "probe": "copy/dot", "seed": 0, "train_lengths": [4, 8], "stop_reason": "no_improvement", "examples_seen": 30, "seconds": 9.0,
           "history": [{"examples_seen": 10, "seconds": 3.0, "val_seq_acc": 0.5, "val_seq_acc_by_length": {"4": 0.9, "8": 0.1}},
                       {"examples_seen": 20, "seconds": 6.0, "val_seq_acc": 0.95, "val_seq_acc_by_length": {"4": 1.0, "8": 0.9}},
                       {"examples_seen": 30, "seconds": 9.0, "val_seq_acc": 0.9, "val_seq_acc_by_length": {"4": 0.85, "8": 0.95}}]}
    row = sweep.summarize(run)
    assert row["best_val_seq_acc"] == 0.95 and row["best_val_seq_acc_longest"] == 0.95 and row["worst_length_at_best"] == 0.9
    assert (row["examples_to_90"], row["seconds_to_90"]) == (20, 6.0)


def test_unknown_recipes_and_probes_are_one_line_errors(capsys):
    assert sweep.main(["--recipes", "nope"]) == 2
    assert "unknown recipe 'nope'" in capsys.readouterr().err
    assert sweep.main(["--probes", "copy/nope"]) == 2
    assert "unknown probe 'copy/nope'" in capsys.readouterr().err
