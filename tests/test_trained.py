"""Trained models a user can question: saved with every finished cell, reloaded in a fresh
process with the same greedy outputs, asked with `predict`, and rescored with `rescore`."""

import json
import shutil
import subprocess
import sys
import textwrap

import pandas as pd
import pytest

from helpers import ROOT, run_cli

pytestmark = pytest.mark.slow  # reads the smoke study


def _record(out, task="copy", model="dot", seed=0):
    return next(
        r
        for r in (json.loads(p.read_text()) for p in (out / "cells").glob("*.json"))
        if (r["task"], r["model"], r["seed"]) == (task, model, seed)
    )


def test_every_finished_cell_saves_its_model_and_drops_its_backup(smoke_run):
    out, _ = smoke_run
    records = [json.loads(p.read_text()) for p in (out / "cells").glob("*.json")]
    assert all((out / r["model_file"]).is_file() for r in records) and len(records) == 8
    assert not list((out / "backups").glob("*"))  # training backups go once the record is written
    assert {r["metrics_version"] for r in records} == {2}


def test_a_saved_model_reloads_in_a_fresh_process_and_decodes_the_same(smoke_run):
    out, _ = smoke_run
    record = _record(out)
    code = textwrap.dedent(
        f"""
        import json, keras
        from study.models import keras_classes; keras_classes()  # register the model classes
        from study.evaluate import decode, decode_steps
        model = keras.saving.load_model({str(out / record["model_file"])!r}, compile=False)
        sv, tv = model.vocabularies()
        example = json.loads({json.dumps(json.dumps(record["attention_example"]))})
        predictions, _ = decode(model, [example["source"]], sv, tv, decode_steps([example["target"]]))
        print(predictions[0] == example["prediction"], repr(predictions[0]))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PATH": "", "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow"},
    )
    assert result.returncode == 0 and result.stdout.startswith("True"), result.stderr[-2000:]


def test_predict_prints_predictions_and_draws_an_attention_map(smoke_run, tmp_path):
    out, _ = smoke_run
    png = tmp_path / "map.png"
    result = run_cli(
        "predict",
        str(out),
        "--task",
        "copy",
        "--model",
        "dot",
        "--seed",
        "1",
        "abcd",
        "badc",
        "--attention-map",
        str(tmp_path / "map"),  # no suffix: .png added
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"attention map: {png}" in result.stdout
    lines = result.stdout.splitlines()
    assert lines[0].startswith("copy/dot, cell copy-dot-s1-")
    assert lines[1].startswith("  abcd -> ") and ("right" in lines[1] or "wrong (target abcd)" in lines[1])
    import matplotlib.image

    assert min(matplotlib.image.imread(png).shape[:2]) >= 500  # readable for a four-character input
    from study.backend import START_UP_NOTICES

    # as quiet as the study
    assert not [line for line in result.stderr.splitlines() if any(n in line for n in START_UP_NOTICES)], result.stderr


@pytest.mark.parametrize(
    "args,message",
    [
        (["--task", "copi", "--model", "dot", "ab"], "no finished cell of task 'copi'"),
        (["--task", "copy", "--model", "additive", "ab"], "models there: dot, none"),
        (["--task", "copy", "--model", "dot", "--seed", "7", "ab"], "seeds there: 0, 1"),
        (["--task", "copy", "--model", "dot", "a!b"], "characters outside the alphabet of copy: ['!']"),
        (["--task", "copy", "--model", "none", "--attention-map", "x.png", "ab"], "has no attention to draw"),
    ],
)
def test_predict_bad_input_is_one_line_exit_2(smoke_run, args, message, capsys):
    """The command line's own entry point, in this process (the subprocess path is the test above)."""
    import run_study

    out, _ = smoke_run
    code = run_study.main(["predict", str(out), *args])
    stderr = capsys.readouterr().err
    assert code == 2 and message in stderr, stderr[-2000:]
    assert len(stderr.strip().splitlines()) == 1


def test_predict_on_a_folder_without_results_is_one_line_exit_2(tmp_path, capsys):
    import run_study

    assert run_study.main(["predict", str(tmp_path / "nowhere"), "--task", "copy", "--model", "dot", "ab"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_rescore_reproduces_the_metrics_when_nothing_changed(smoke_run, tmp_path):
    """Every model rescored to the same metrics, except one made with other locale data: that one
    is left as it was, with a warning naming both versions."""
    copy = tmp_path / "smoke"
    shutil.copytree(smoke_run[0], copy)
    columns = ["cell_id", "length", "n_examples", "seq_acc", "char_acc"]
    before = pd.read_csv(copy / "metrics.csv")[columns].sort_values(["cell_id", "length"]).reset_index(drop=True)
    foreign = _record(copy, "date_format", "dot", 1)
    foreign["task_data"] = {**foreign["task_data"], "cldr": "1"}
    (copy / "cells" / f"{foreign['id']}.json").write_text(json.dumps(foreign))
    result = run_cli("rescore", str(copy))
    assert result.returncode == 0 and "rescored 7 cells (1 without a saved model or a task" in result.stdout, (
        result.stderr[-2000:]
    )
    assert f"cell {foreign['id']} was made with task data" in result.stderr
    after = pd.read_csv(copy / "metrics.csv")[columns].sort_values(["cell_id", "length"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(after, before)


def test_a_model_made_with_other_locale_data_is_refused_with_both_versions():
    """`predict` and `rescore` build the record's task here; with another CLDR release it would
    write other sources than the model saw, so the record is refused, naming both versions."""
    from study.results import TrainedModelError, record_task
    from study.tasks import get_task

    here = get_task("date_format", locale="ko")
    record = {"id": "date_format-dot-s0-x", "task": "date_format", "task_options": {"locale": "ko"}}
    assert record_task({**record, "task_data": here.data_versions}).spec == here.spec
    with pytest.raises(TrainedModelError) as refused:
        record_task({**record, "task_data": {"cldr": "1"}})
    assert f"made with task data {{'cldr': '1'}}, this machine has {here.data_versions}" in str(refused.value)


def test_a_model_of_a_task_not_loaded_names_the_flag_that_loads_it():
    from study.results import TrainedModelError, record_task

    with pytest.raises(TrainedModelError, match=r"unknown task 'rotate_plugin'.*load it with --task-module PATH"):
        record_task({"id": "rotate_plugin-dot-s0-x", "task": "rotate_plugin", "task_options": {}})


def test_predict_picks_a_record_this_machine_can_rebuild_and_refuses_one_it_cannot(smoke_run, tmp_path):
    """A merged folder may hold the same cell made under two CLDR releases: `predict` uses the
    one whose task this machine rebuilds as it was, and refuses, naming both, when none is."""
    out = tmp_path / "merged"
    shutil.copytree(smoke_run[0], out)
    own = _record(out, "date_format", "dot", 0)
    foreign = {**own, "id": own["id"][:-12] + "0" * 12, "task_data": {**own["task_data"], "cldr": "1"}}
    (out / "cells" / f"{foreign['id']}.json").write_text(json.dumps(foreign))  # sorts before the own record
    manifest = json.loads((out / "study.json").read_text())
    manifest["cells"].append(foreign["id"])  # as a merge of two folders names both
    (out / "study.json").write_text(json.dumps(manifest))
    result = run_cli("predict", str(out), "--task", "date_format", "--model", "dot", "3/17/2021")
    assert result.returncode == 0 and f"cell {own['id']}" in result.stdout, result.stderr[-2000:]
    (out / "cells" / f"{own['id']}.json").unlink()
    result = run_cli("predict", str(out), "--task", "date_format", "--model", "dot", "--seed", "0", "3/17/2021")
    assert result.returncode == 2 and "made with task data" in result.stderr and "this machine has" in result.stderr, (
        result.stderr[-2000:]
    )


@pytest.mark.parametrize(
    "where,message",
    [
        ("map.txt", "write it as .png, .svg, .pdf"),
        ("missing/map.png", "folder"),
    ],
)
def test_a_bad_attention_map_path_is_refused_before_anything_runs(tmp_path, where, message, capsys):
    """A format matplotlib would not write, or a folder that does not exist (never created), is a
    one-line error before the model loads; a path without a suffix gets .png (test above)."""
    import run_study

    code = run_study.main(
        ["predict", str(tmp_path), "--task", "copy", "--model", "dot", "--attention-map", str(tmp_path / where), "ab"]
    )
    stderr = capsys.readouterr().err
    assert code == 2 and message in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert not (tmp_path / "missing").exists()


def test_a_file_given_as_a_folder_is_called_a_file(tmp_path, capsys):
    import run_study

    (tmp_path / "notes.md").write_text("x")
    assert run_study.main(["report", str(tmp_path / "notes.md")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert run_study.main(["--config", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "is a folder, not a TOML file" in capsys.readouterr().err


def test_output_into_a_pipe_closed_early_ends_quietly():
    """`python run_study.py list | head -1`: no BrokenPipeError traceback, the shell's 141."""
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "run_study.py"), "list"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    proc.stdout.close()  # the reader is gone before anything is written
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and "Traceback" not in stderr and "Exception ignored" not in stderr, stderr


def test_rescoring_a_folder_without_models_says_so_in_a_few_lines(tmp_path, capsys):
    """The committed references hold no trained models: rescoring one names the first few cells,
    counts the rest in one line, changes nothing and exits 2."""
    import run_study

    copy = tmp_path / "reference"
    shutil.copytree(ROOT / "results" / "reference", copy)
    before = sorted((p.name, p.read_bytes()) for p in (copy / "cells").glob("*.json"))
    assert run_study.main(["rescore", str(copy)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 5 and all("has no saved model" in line for line in lines[:3]), lines
    assert (
        f"{len(before) - 3} more cells skipped" in lines[3]
        and "no cell of" in lines[4]
        and "nothing was changed" in lines[4]
    )
    assert sorted((p.name, p.read_bytes()) for p in (copy / "cells").glob("*.json")) == before
