"""The recipe sweep: runs train on training and validation data only, and the table says what they did."""

import pytest

from study import sweep

TINY_STANDARD = {
    "tasks": {"date_format": {"train_lengths": "1..2", "eval_lengths": [1, 2]}},
    "models": ["dot"],
    "seeds": [0],
    "n_test": 8,
    "model": {"embedding_dim": 8, "units": 16, "attention_size": 8},
    "train": {
        "n_train": 512,
        "epoch_examples": 256,
        "max_examples": 768,
        "patience_examples": 512,
        "batch_size": 32,
        "learning_rate": 0.003,
        "schedule": "plateau",
        "warmup_examples": 64,
        "lr_patience_examples": 256,
        "n_validation": 16,
    },
}


@pytest.mark.slow
def test_a_sweep_probe_trains_exactly_what_a_study_cell_trains(tmp_path, monkeypatch):
    """The sweep, the bench and the study train through `study.experiment`: a probe run with the
    standard recipe and the study's cell of the same task, model and seed have the same history
    (losses, validation, learning rates, stop) to the last digit.  The sweep's run file holds
    the recipe and tabulates."""
    import dataclasses

    from study.bench import bench_recipe
    from study.cell import identity_train_config, run_cell
    from study.config import PROFILES, TrainConfig, build_study_config
    from study.runner import expand_grid

    monkeypatch.setitem(PROFILES, "standard", TINY_STANDARD)
    monkeypatch.setitem(sweep.RECIPES, "standard", {})
    monkeypatch.setitem(sweep.PROBES, "date_format/dot", ("date_format", "dot", None))
    run = sweep.run_probe("standard", "date_format/dot", 0, str(tmp_path))
    (cell,) = expand_grid(build_study_config("standard"))
    record = run_cell(cell, build_study_config("standard"), progress=False)
    drop = lambda rows: [{k: v for k, v in row.items() if k != "seconds"} for row in rows]  # noqa: E731
    assert drop(run["history"]) == drop(record["history"]) and len(run["history"]) == 3
    assert (run["stop_reason"], run["examples_seen"]) == (record["stop_reason"], record["examples_seen"])
    # the run file: every setting
    assert run["train_config"] == dataclasses.asdict(build_study_config("standard").train)
    assert identity_train_config(TrainConfig(**run["train_config"])) == record["train_config"]
    # the bench's recipe: the study's, patience off
    assert dataclasses.replace(bench_recipe(), patience_examples=512) == build_study_config("standard").train
    assert "| date_format/dot | standard | 0 |" in sweep.table(tmp_path)


def test_the_sweep_table_reports_convergence_and_the_longest_length():
    history = [
        {
            "examples_seen": 10,
            "seconds": 3.0,
            "val_loss": 0.5,
            "val_seq_acc": 0.5,
            "val_seq_acc_by_length": {"4": 0.9, "8": 0.1},
        },
        {
            "examples_seen": 20,
            "seconds": 6.0,
            "val_loss": 0.2,
            "val_seq_acc": 0.95,
            "val_seq_acc_by_length": {"4": 1.0, "8": 0.9},
        },
        {
            "examples_seen": 30,
            "seconds": 9.0,
            "val_loss": 0.3,
            "val_seq_acc": 0.9,
            "val_seq_acc_by_length": {"4": 0.85, "8": 0.95},
        },
    ]
    run = {
        "recipe": "r",
        "probe": "copy/dot",
        "seed": 0,
        "train_lengths": [4, 8],
        "stop_reason": "converged",
        "converged": True,
        "last_stretch": {"val_loss": 0.001, "val_seq_acc_by_length": 0.0, "length": 4},
        "examples_seen": 30,
        "seconds": 9.0,
        "history": history,
    }
    row = sweep.summarize(run)
    assert row["best_val_seq_acc"] == 0.95 and row["best_val_seq_acc_longest"] == 0.95 and row["best_val_loss"] == 0.2
    assert row["converged"] and row["last_stretch_loss"] == 0.001


def test_unknown_recipes_and_probes_are_one_line_errors(capsys):
    assert sweep.main(["--recipes", "nope"]) == 2
    assert "unknown recipe 'nope'" in capsys.readouterr().err
    assert sweep.main(["--probes", "copy/nope"]) == 2
    assert "unknown probe 'copy/nope'" in capsys.readouterr().err


def test_replaying_a_shorter_convergence_stretch_stops_where_the_rule_would_have():
    losses = [0.9, 0.5, 0.498, 0.497, 0.496, 0.2]
    history = [
        {
            "examples_seen": 10000 * (i + 1),
            "seconds": float(i + 1),
            "val_loss": v,
            "val_seq_acc": 0.1 * i,
            "val_char_acc": 0.5,
            "val_seq_acc_by_length": {"4": 0.0, "8": 0.0},
        }
        for i, v in enumerate(losses)
    ]
    run = {
        "probe": "copy/dot",
        "recipe": "r",
        "train_lengths": [4, 8],
        "converged": False,
        "history": history,
        "train_config": {
            "epoch_examples": 10000,
            "patience_examples": 30000,
            "loss_tolerance": 0.005,
            "accuracy_tolerance": 0.05,
            "target_accuracy": 1.0,
            "max_examples": 60000,
        },
    }
    two, three = sweep.replay_stop(run, 20000), sweep.replay_stop(run, 30000)
    assert (two["examples"], two["converged"], two["val_seq_acc"]) == (40000, True, pytest.approx(0.3))
    assert (three["examples"], three["converged"]) == (50000, True)
    table = sweep.patience_table([run])
    # no replay beyond the run's own stretch
    assert "| copy/dot | r | 20000 | 1 of 1 | 40000 |" in table and "| r | 40000 |" not in table
