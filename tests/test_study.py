"""The command line end to end on the smoke profile: every results file, the report redrawn
from files alone, finished cells skipped, and bad input refused before anything is written."""

import dataclasses
import json

import pandas as pd
import pytest

from helpers import run_cli
from study.cell import cell_id, cell_identity
from study.config import ConfigError, ModelConfig, build_study_config
from study.runner import expand_grid
from study.tasks import get_task


@pytest.mark.slow
def test_smoke_study_writes_every_file(smoke_run):
    out, result = smoke_run
    assert f"report: {out / 'report.md'}" in result.stdout
    for name in ("metrics.csv", "summary.csv", "summary.md", "report.md", "study.json"):
        assert (out / name).is_file(), name
    for figure in (
        "accuracy_vs_length",
        "position_accuracy",
        "attention_maps",
        "training_curves",
        "learning_curves_by_length",
    ):
        assert (out / "figures" / f"{figure}.png").stat().st_size > 1000
        assert (out / "figures" / f"{figure}.svg").is_file()
    config = build_study_config("smoke")
    records = [json.loads(p.read_text()) for p in (out / "cells").glob("*.json")]
    assert len(records) == len(expand_grid(config)) == 8
    record = records[0]
    for key in (
        "task_version",
        "model_config",
        "train_config",
        "param_count",
        "history",
        "metrics",
        "versions",
        "backend",
        "device",
        "stop_reason",
        "converged",
        "last_stretch",
        "selected_by",
        "stop_learning_rate",
        "seconds",
        "wall_seconds",
    ):
        assert key in record, key
    assert record["versions"]["keras"].startswith("3.")
    metrics = pd.read_csv(out / "metrics.csv")
    assert len(metrics) == sum(len(p.eval_lengths) for p in config.tasks) * len(config.models) * len(config.seeds)
    for column in (
        "task",
        "model",
        "attention",
        "seed",
        "length",
        "in_training_range",
        "n_examples",
        "seq_acc",
        "char_acc",
        "mean_source_tokens",
        "mean_target_tokens",
    ):
        assert column in metrics.columns, column
    assert set(metrics.loc[metrics.length == 8, "in_training_range"]) == {False}
    report = (out / "report.md").read_text()
    assert "figures/accuracy_vs_length.png" in report and "95% interval" in report and "Clopper-Pearson" in report


@pytest.mark.slow
def test_rerun_skips_finished_cells_and_report_redraws(smoke_run):
    out, _ = smoke_run
    before = {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")}
    metrics_before = (out / "metrics.csv").read_text()
    # a record of another grid (other settings) in the folder: said so, and `report --all` includes it
    record = json.loads(next(iter((out / "cells").glob("*.json"))).read_text())
    record.update(id="copy-none-s7-000000000000", seed=7, n_test=record["n_test"] + 1)
    (out / "cells" / "copy-none-s7-000000000000.json").write_text(json.dumps(record))
    again = run_cli("--profile", "smoke", "--out", str(out))  # output piped, as into a log file
    assert again.returncode == 0, again.stderr[-2000:]
    assert {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json") if "-s7-" not in p.name} == before
    assert "8 cells (2 tasks x 2 models x 2 seeds)" in again.stdout
    assert f"resuming: 8 of 8 cells done in {out}; 0 to run" in again.stdout
    assert "\r" not in again.stdout + again.stderr  # no progress-bar frames in a log
    assert "also holds 1 record(s) of other grids" in again.stderr and f"report {out} --all" in again.stderr
    everything = run_cli("report", str(out), "--all")
    assert everything.returncode == 0 and 7 in set(pd.read_csv(out / "metrics.csv")["seed"])
    (out / "cells" / "copy-none-s7-000000000000.json").unlink()
    (out / "metrics.csv").unlink()
    (out / "summary.md").unlink()
    redraw = run_cli("report", str(out))
    assert redraw.returncode == 0, redraw.stderr[-2000:]
    assert (out / "metrics.csv").read_text() == metrics_before
    assert (out / "summary.md").is_file()


def test_list_shows_tasks_models_profiles():
    result = run_cli("list")
    assert result.returncode == 0, result.stderr
    for word in ("copy", "reverse", "date_format", "sort", "additive", "general", "smoke", "standard", "full"):
        assert word in result.stdout


@pytest.mark.parametrize(
    "args,message",
    [
        (["--tasks", "copi"], "unknown task 'copi'; did you mean 'copy'?"),
        (["--models", "bahdanau,none"], "unknown model 'bahdanau'"),
        (["--lengths", "4,-2"], "must hold positive integers, got -2"),
        (["--lengths", "four"], "must be positive integers"),
        (["--seeds", "1,x"], "seeds must be comma-separated integers"),
        (["--seeds", "4294967296"], "seeds must be integers from 0 to 4294967295"),
        (["--seeds", "0", "1", "2"], "unrecognized arguments: 1 2; lists are comma-separated, e.g. --seeds 0,1,2"),
        (["--models", ""], "the study grid is empty: no models"),
        (["--profile", "smoky"], "unknown profile 'smoky'; did you mean 'smoke'?"),
        (["--train-lengths", "0..3"], "positive integers"),
        (["--train-lengths", "10..4"], "--train-lengths: the range '10..4' runs backwards; write '4..10'"),
    ],
)
def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path, args, message):
    out = tmp_path / "out"
    result = run_cli("--profile", "smoke", "--out", str(out), *args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_output_path_that_is_a_file_is_refused(tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("keep me")
    result = run_cli("--profile", "smoke", "--out", str(target))
    assert result.returncode == 2 and "is a file" in result.stderr
    assert target.read_text() == "keep me"


def test_report_of_empty_folder_is_refused(tmp_path):
    result = run_cli("report", str(tmp_path))
    assert result.returncode == 2 and "holds no study results" in result.stderr


def test_config_file_settings_and_errors(tmp_path):
    good = tmp_path / "study.toml"
    good.write_text(
        'profile = "smoke"\nmodels = ["none"]\n[train]\nmax_examples = 1024\n[tasks.reverse]\ntrain_lengths = "2..3"\neval_lengths = [3, 6]\n'
    )
    import tomllib

    config = build_study_config("smoke", tomllib.loads(good.read_text()))
    assert config.models == ("none",) and config.train.max_examples == 1024 and config.train.max_epochs == 1
    assert [t.name for t in config.tasks] == ["reverse"]  # a config file's tasks select
    with pytest.raises(ConfigError, match=r"unknown setting 'train.max_epoch' \(allowed: "):
        build_study_config("smoke", {"train": {"max_epoch": 3}})
    bad = tmp_path / "bad.toml"
    bad.write_text("models = [none\n")
    result = run_cli("--config", str(bad), "--out", str(tmp_path / "o"))
    assert result.returncode == 2 and "not valid TOML" in result.stderr


def test_tasks_flag_selects_tasks_rather_than_adding_to_the_profiles(tmp_path):
    import run_study

    toml = tmp_path / "study.toml"
    toml.write_text('[tasks.reverse]\ntrain_lengths = "2..3"\neval_lengths = [3]\n')
    for argv, expected in (
        (["--profile", "smoke", "--tasks", "copy"], ["copy"]),
        (["--profile", "smoke", "--tasks", "reverse", "--train-lengths", "2..4", "--lengths", "4"], ["reverse"]),
        (["--profile", "smoke", "--config", str(toml), "--tasks", "copy,reverse"], ["copy", "reverse"]),
        (["--profile", "smoke", "--config", str(toml)], ["reverse"]),  # a config file's tasks select too
    ):
        [(config, _)], _ = run_study.prepare(
            run_study.build_parser().parse_args(["run", *argv, "--out", str(tmp_path / "o")])
        )
        assert [t.name for t in config.tasks] == expected, argv


def test_a_config_file_with_variants_runs_one_study_per_variant_in_its_own_folder(tmp_path):
    """Each `[variants.NAME]` table merges over the rest of the file; its `tasks` select (with
    the file's or profile's lengths unless it gives its own); the studies go to <out>/<NAME>."""
    import run_study

    toml = tmp_path / "study.toml"
    toml.write_text(
        'profile = "smoke"\nmodels = ["none"]\n[train]\nlearning_rate = 0.01\n'
        "[variants.slow]\ntrain = { learning_rate = 0.001 }\ntasks = { copy = {} }\n"
        '[variants.cho]\nmodels = ["none_context"]\ntasks = { date_format = { train_lengths = [1], eval_lengths = [1, 2] } }\n'
    )
    out = tmp_path / "o"
    studies, folder = run_study.prepare(
        run_study.build_parser().parse_args(["run", "--config", str(toml), "--out", str(out)])
    )
    assert folder == out and [f for _, f in studies] == [out / "slow", out / "cho"]
    (slow, _), (cho, _) = studies
    assert (slow.variant, slow.models, slow.train.learning_rate, [t.name for t in slow.tasks]) == (
        "slow",
        ("none",),
        0.001,
        ["copy"],
    )
    assert slow.tasks[0].train_lengths == build_study_config("smoke").tasks[0].train_lengths
    assert (cho.variant, cho.models, cho.train.learning_rate) == ("cho", ("none_context",), 0.01)
    assert [(t.name, t.train_lengths, t.eval_lengths) for t in cho.tasks] == [("date_format", (1,), (1, 2))]
    assert cell_id(_identity(expand_grid(slow)[0], slow)) == cell_id(
        _identity(expand_grid(slow)[0], dataclasses.replace(slow, variant=None))
    )
    toml.write_text('profile = "smoke"\n[variants."a b"]\nseeds = [1]\n')
    result = run_cli("--config", str(toml), "--out", str(out))
    assert (
        result.returncode == 2
        and "variant name 'a b'" in result.stderr
        and len(result.stderr.strip().splitlines()) == 1
    )


def test_top_level_help_names_the_run_options():
    """`run_study.py --help` lists subcommands; without a command the arguments are `run`'s, so
    its help names them too."""
    import run_study

    text = run_study.build_parser().format_help()
    assert (
        all(flag in text for flag in ("--profile", "--tasks", "--models", "--out", "--quiet"))
        and "COMMAND --help" in text
    )


def test_per_length_regime_makes_one_cell_per_training_length():
    config = build_study_config("smoke", overrides={"regime": "per_length"})
    cells = expand_grid(config)
    assert len(cells) == sum(len(p.train_lengths) for p in config.tasks) * len(config.models) * len(config.seeds)
    assert all(len(c.train_lengths) == 1 for c in cells)


BOUNDED_TASK = """
from study.tasks import Task, register_task

@register_task
class Short(Task):
    name = "short_only"
    version = 1
    description = "copy, for lengths up to 10"
    length_unit = "symbols"
    max_length = 10
    input_alphabet = "ab"
    output_alphabet = "ab"

    def sample(self, rng, n, length):
        self.check_length(length)
        s = ["".join("ab"[i] for i in row) for row in rng.integers(0, 2, size=(n, length))]
        return s, s
"""


@pytest.mark.parametrize(
    "plugin,extra,message",
    [
        ("def broken(:\n", [], "failed to import: SyntaxError"),
        (
            "from study.tasks import Task, register_task\n@register_task\nclass T(Task):\n    name = 'nameless'\n    version = '1'\n",
            [],
            "task 'nameless' violates the task contract: it does not implement input_alphabet, output_alphabet, sample",
        ),
        (
            BOUNDED_TASK,
            ["--tasks", "short_only", "--train-lengths", "5..20", "--lengths", "5"],
            "length 11 is outside the supported range 1..10",
        ),
    ],
    ids=["import-error", "contract", "length-range"],
)
def test_bad_task_plugins_are_one_line_exit_2(tmp_path, plugin, extra, message):
    module = tmp_path / "my_tasks.py"
    module.write_text(plugin)
    out = tmp_path / "out"
    result = run_cli("--profile", "smoke", "--task-module", str(module), "--out", str(out), *extra)
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize(
    "text,message",
    [
        (
            'seeds = ["a", 1]\n',
            "seeds must be integers from 0 to 4294967295 (the range of keras.utils.set_random_seed and numpy), got 'a'",
        ),
        ("seeds = [4294967296]\n", "seeds must be integers from 0 to 4294967295"),
        ("[train]\nlearning_rate = inf\n", "train.learning_rate must be a positive, finite number, got inf"),
        ("epochs = 3\n", "unknown setting 'epochs'"),
        ('modles = ["dot"]\n', "unknown setting 'modles'; did you mean 'models'? (allowed: backend, "),
        ("[tasks.sort]\ntrain_lengths = [4]\n", "tasks.sort.eval_lengths is missing"),
        ('[tasks.date_format.options]\nlocale = "xx_NOPE"\n', "unknown locale 'xx_NOPE'"),
        ('[tasks.copy.options]\nsymbols = "abc"\n', "task 'copy' has no option 'symbols'"),
        ('model = ["none"]\n', "did you mean 'models' (a list of model names)?"),
        ('[model]\ncell = "transformer"\n', "model.cell must be 'gru' or 'lstm'"),
        ("[train]\nbatch_size = 0\n", "train.batch_size must be a positive integer, got 0"),
    ],
)
def test_bad_config_files_are_one_line_exit_2(tmp_path, text, message):
    config = tmp_path / "bad.toml"
    config.write_text(text)
    out = tmp_path / "out"
    result = run_cli("--config", str(config), "--out", str(out))
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()


def _identity(cell, config, task=None):
    return cell_identity(cell, config, task or get_task(cell.task.name, **dict(cell.task.options)))


def _first_cell_id(config, **cell_changes):
    cell = dataclasses.replace(expand_grid(config)[0], **cell_changes)
    return cell_id(_identity(cell, config))


R = dataclasses.replace


@pytest.mark.parametrize(
    "config_change,cell_change",
    [
        (lambda c: c, {"seed": 5}),
        (lambda c: c, {"model": "dot"}),
        (lambda c: c, {"train_lengths": (2,)}),
        (lambda c: R(c, regime="per_length"), {}),
        (lambda c: R(c, n_test=c.n_test + 1), {}),
        (lambda c: R(c, backend="jax"), {}),
        (lambda c: R(c, model=ModelConfig(**{**c.model, "units": c.model["units"] + 1})), {}),
        (lambda c: R(c, model=ModelConfig(**{**c.model, "cell": "lstm"})), {}),
        (lambda c: R(c, train=R(c.train, learning_rate=c.train.learning_rate / 2)), {}),
        (lambda c: R(c, train=R(c.train, n_validation=c.train.n_validation + 1)), {}),
        (lambda c: R(c, train=R(c.train, pad_multiple=c.train.pad_multiple + 1)), {}),
        (lambda c: R(c, train=R(c.train, loss_normalisation="sequence")), {}),
        (lambda c: R(c, train=R(c.train, end_token=False)), {}),
    ],
    ids=[
        "seed",
        "model",
        "train_lengths",
        "regime",
        "n_test",
        "backend",
        "units",
        "cell",
        "learning_rate",
        "n_validation",
        "pad_multiple",
        "loss_normalisation",
        "end_token",
    ],
)
def test_a_cell_id_changes_with_every_setting_its_result_depends_on(config_change, cell_change):
    config = build_study_config("smoke")
    assert _first_cell_id(config_change(config), **cell_change) != _first_cell_id(config)


def test_a_setting_added_later_leaves_the_ids_of_earlier_cells_alone():
    """`loss_normalisation` and `end_token` came after studies had been run: at their defaults
    (what those cells did) they are not part of the identity, so their ids and resumes still hold."""
    config = build_study_config("smoke")
    identity = _identity(expand_grid(config)[0], config)
    assert {"loss_normalisation", "end_token"}.isdisjoint(identity["train_config"]) and "learning_rate" in identity[
        "train_config"
    ]


def test_a_cell_id_changes_with_its_task_plan_and_version_only():
    config = build_study_config("smoke")
    cell = expand_grid(config)[0]
    base = cell_id(_identity(cell, config))
    task = get_task(cell.task.name)

    class NextVersion(type(task)):
        version = task.version + 1

    assert cell_id(_identity(cell, config, NextVersion())) != base
    for plan in (
        R(cell.task, eval_lengths=(*cell.task.eval_lengths, 99)),
        R(cell.task, options=(("alphabet", "xyz"),)),
    ):
        assert cell_id(_identity(R(cell, task=plan), config)) != base
    for same in (
        R(config, jobs=7),
        R(config, cell_cpus=3),
        R(config, models=config.models[::-1]),
        R(config, seeds=(9, *config.seeds)),
    ):
        assert cell_id(_identity(cell, same)) == base  # how a study is run, not what a cell is
    # the default options written out are the same task, so the same cell
    default = R(cell.task, options=(("alphabet", task.options["alphabet"]),))
    assert cell_id(_identity(R(cell, task=default), config)) == base


@pytest.mark.parametrize(
    "argv,message",
    [
        (["repport", "results/smoke"], "unknown command 'repport'; did you mean 'report'?"),
        (["--task-module", "x.py", "list"], "the command goes first: python run_study.py list"),
        (["--profil", "smoke"], "unrecognized arguments: --profil smoke; --profil: did you mean --profile?"),
        (["--profile", "smoke", "--task", "copy"], "--task: did you mean --tasks?"),  # run's option
        (["predict", "results/reference", "--tasks", "copy", "abc"], "--tasks: did you mean --task?"),  # predict's
    ],
)
def test_a_misspelt_or_misplaced_command_or_option_is_named(argv, message, capsys):
    import run_study

    assert run_study.main(argv) == 2
    stderr = capsys.readouterr().err
    assert message in stderr and len(stderr.strip().splitlines()) == 1, stderr


def test_a_record_made_with_repeated_held_out_items_is_recomputed(tmp_path):
    """A finished record from before test and validation sets held distinct sources (no
    `test_items`) shares its cell id with the new one but not its data: a resumed run recomputes
    it and says why; a record with distinct sets counts as done."""
    from study.cell import cell_identity
    from study.results import RECORD_SCHEMA
    from study.runner import plan_run, study_cells

    config = build_study_config("smoke")
    (cell, cid), *_ = study_cells(config)
    (tmp_path / "cells").mkdir()
    identity = cell_identity(cell, config, cell.task.build())
    metrics = [{"length": length, "seq_acc": 1.0} for length in identity["eval_lengths"]]
    record = {"id": cid, **identity, "schema": RECORD_SCHEMA, "status": "ok", "metrics": metrics}
    (tmp_path / "cells" / f"{cid}.json").write_text(json.dumps(record))
    notes = []
    _, done, todo = plan_run(config, tmp_path, False, None, notes.append)
    assert not done and [c for _, c in todo][:1] == [cid] and "drawn with replacement; recomputing" in notes[0]
    (tmp_path / "cells" / f"{cid}.json").write_text(json.dumps({**record, "test_items": "distinct"}))
    _, done, todo = plan_run(config, tmp_path, False, None, notes.append)
    assert cid in done and cid not in [c for _, c in todo]
