"""The recipe sweep: a study of recipe variants run by the study's runner, and the tables that
`study.sweep` draws from its records (or from the run files of the sweep's earlier runner)."""

import dataclasses
import json
import subprocess
import sys

import pytest

from helpers import ROOT, run_cli
from study import sweep
from study.results import RECORD_SCHEMA

COMMITTED = ROOT / "results" / "sweep"


@pytest.mark.parametrize("folder", [COMMITTED, ROOT / "results" / "sweep-attention"], ids=lambda p: p.name)
def test_the_committed_sweeps_redraw_byte_for_byte(folder):
    """results/sweep holds runs of the sweep's earlier runner (`runs/*.json`), results/sweep-attention
    the records of a study of variants; each still draws its committed sweep.md, every per-run row
    and replayed stretch the same."""
    assert sweep.table(folder) == (folder / "sweep.md").read_text(encoding="utf-8")


def _as_record(run: dict) -> dict:
    """An old-format sweep run written as the study's record of the same cell (its recipe the
    variant's name), with the fields a study record has and the tables read."""
    task, model = run["probe"].split("/")
    return {
        "schema": RECORD_SCHEMA,
        "id": f"{task}-{model}-s{run['seed']}-{run['recipe']}",
        "status": "ok",
        "task": task,
        "model": model,
        "seed": run["seed"],
        "regime": "mixed",
        "profile": "standard",
        "config": {"variant": run["recipe"]},
        "train_config": run["train_config"],
        "train_lengths": run["train_lengths"],
        "eval_lengths": [],
        "metrics": [],
        "history": run["history"],
        "stop_reason": run["stop_reason"],
        "converged": run["converged"],
        "last_stretch": run["last_stretch"],
        "examples_seen": run["examples_seen"],
        "train_seconds": run["seconds"],
        "wall_seconds": run["seconds"] + 10.0,
    }


def test_a_study_folder_of_the_same_runs_draws_the_same_tables(tmp_path):
    """The committed runs written as a study's cell records (`cells/<id>.json`, named by
    `study.json`) draw the committed sweep.md: a variant is a recipe, a cell's task and model its
    probe, its training seconds (not its wall time, which includes test decoding) its seconds."""
    runs = [json.loads(p.read_text(encoding="utf-8")) for p in sorted((COMMITTED / "runs").glob("*.json"))]
    (tmp_path / "cells").mkdir()
    for run in runs:
        record = _as_record(run)
        (tmp_path / "cells" / f"{record['id']}.json").write_text(json.dumps(record), encoding="utf-8")
    failed = {**_as_record(runs[0]), "id": "copy-dot-s9-b64", "status": "failed", "seed": 9, "history": []}
    (tmp_path / "cells" / "copy-dot-s9-b64.json").write_text(json.dumps(failed), encoding="utf-8")
    ids = sorted(p.stem for p in (tmp_path / "cells").glob("*.json"))
    (tmp_path / "study.json").write_text(json.dumps({"cells": ids, "grid": ids}), encoding="utf-8")
    assert sweep.table(tmp_path) == (COMMITTED / "sweep.md").read_text(encoding="utf-8")
    one_length = sweep.run_from_record({**_as_record(runs[0]), "regime": "per_length", "train_lengths": [1]})
    assert one_length["probe"] == runs[0]["probe"] + "@1"


def test_a_folder_without_runs_is_a_one_line_error(tmp_path, capsys):
    assert sweep.main([str(tmp_path)]) == 2
    (tmp_path / "runs").mkdir()
    assert sweep.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("error: ") for line in err) and "no finished sweep runs" in err[1]
    assert not (tmp_path / "sweep.md").exists()


def test_the_sweep_config_is_recipes_over_one_probe_grid_with_small_test_sets(tmp_path):
    """examples/sweep.toml: every variant is the standard study but for its recipe (batch size,
    learning rate) and, for the learning rate of `none`, its models and tasks; test sets are
    few and small, since a sweep is judged on validation data."""
    import run_study
    from study.config import build_study_config

    args = run_study.build_parser().parse_args(["run", "--config", "examples/sweep.toml", "--out", str(tmp_path / "s")])
    studies, out = run_study.prepare(args)
    standard = build_study_config("standard")
    assert [folder for _, folder in studies] == [out / config.variant for config, _ in studies]
    recipes = {config.variant: config for config, _ in studies}
    assert {"b32", "b64", "b128", "b256"} <= set(recipes) and recipes["b32"].train == standard.train
    for config in recipes.values():
        assert dataclasses.replace(config.train, batch_size=32, learning_rate=0.0021) == standard.train
        assert config.n_test <= 100 and all(len(plan.eval_lengths) <= 2 for plan in config.tasks)
        assert [p.train_lengths for p in config.tasks] == [
            p.train_lengths for p in standard.tasks if p.name in {t.name for t in config.tasks}
        ]
    assert len({(c.models, c.seeds, c.tasks) for c in (recipes["b64"], recipes["b128"], recipes["b256"])}) == 1


def test_the_bench_recipe_is_the_standard_recipe_with_convergence_stopping_off():
    from study.bench import bench_recipe
    from study.config import build_study_config

    standard = build_study_config("standard").train
    assert bench_recipe() != standard
    assert dataclasses.replace(bench_recipe(), patience_examples=standard.patience_examples) == standard


TINY_SWEEP = """
profile = "smoke"
models = ["dot"]
seeds = [0]
n_test = 8
[tasks.date_format]
train_lengths = [1, 2]
eval_lengths = [2]
[train]
n_train = 512
epoch_examples = 256
max_examples = 1024
patience_examples = 512
n_validation = 16
[variants.b16]
train = { batch_size = 16 }
[variants.b32]
train = { batch_size = 32 }
"""


@pytest.mark.slow
def test_a_tiny_sweep_runs_as_a_study_and_its_tables_come_from_the_records(tmp_path, monkeypatch):
    """`run_study.py --config` with recipe variants trains one study per recipe (the batch size
    in each record), and `python -m study.sweep` tabulates their records into sweep.md: a row per
    recipe, each run's numbers its record's, and the record's own stretch replayed through the
    stopping rule stops where training did."""
    config = tmp_path / "sweep.toml"
    config.write_text(TINY_SWEEP, encoding="utf-8")
    out = tmp_path / "sweep"
    result = run_cli("--config", str(config), "--out", str(out), "--quiet", "--jobs", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    records = {p.parent.parent.name: json.loads(p.read_text()) for p in out.glob("b*/cells/*.json")}
    assert {name: r["train_config"]["batch_size"] for name, r in records.items()} == {"b16": 16, "b32": 32}
    drawn = subprocess.run(
        [sys.executable, "-m", "study.sweep", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert drawn.returncode == 0, drawn.stderr[-3000:]
    text = (out / "sweep.md").read_text(encoding="utf-8")
    assert text == drawn.stdout and (out / "report.md").exists()
    for name, r in records.items():
        best = 100 * max(row["val_seq_acc"] for row in r["history"])
        assert f"| date_format/dot | {name} | 0 | {best:.1f} |" in text
        assert f"| {r['stop_reason']} | {r['examples_seen']} | {r['train_seconds']:.0f} |" in text
    monkeypatch.setattr(sweep, "PATIENCES", (256, 512))
    runs = sweep.read_runs(out)
    assert sorted(run["recipe"] for run in runs) == ["b16", "b32"]
    for run in runs:
        assert sweep.replay_stop(run, 512)["examples"] == run["examples_seen"]
    assert "| date_format/dot | b16 | 256 |" in sweep.patience_table(runs)


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


def test_recipes_are_paired_with_the_standard_recipe_seed_by_seed():
    """`paired_table` compares each run with the standard recipe's run of the same probe and
    seed (an unpaired seed is left out) and counts fewer, as many and more examples."""
    runs = [json.loads(p.read_text(encoding="utf-8")) for p in sorted((COMMITTED / "runs").glob("*.json"))]
    base = [{**r, "recipe": "standard"} for r in runs if (r["probe"], r["recipe"]) == ("reverse/additive", "b64")]
    other = [r for r in runs if (r["probe"], r["recipe"]) == ("reverse/additive", "b128")]
    assert sorted(r["seed"] for r in base) == [0, 1, 2] and sorted(r["seed"] for r in other) == [0, 1]
    sooner = {**other[0], "examples_seen": other[0]["examples_seen"] - 20000}
    rows = sweep.paired_table(base + [sooner, other[1]]).splitlines()
    kept = {(r["recipe"], r["seed"]): sweep.replay_stop(r, 40000)["val_seq_acc_longest"] for r in base + other}
    gap = 100 * sum(kept["b128", s] - kept["standard", s] for s in (0, 1)) / 2
    assert rows[2] == f"| reverse/additive | b128 | 2 | 1 | 1 | 0 | -10000 | {gap:+.1f} |"
    assert rows[3] == f"| every probe | b128 | 2 | 1 | 1 | 0 | -10000 | {gap:+.1f} |"
    assert sweep.paired_table(other) == ""  # no standard recipe to pair with
