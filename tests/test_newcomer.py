"""What a newcomer reads first: attention maps whose every label can be read, titles that say
which example they show, training curves labelled at both ends, figures of a one-epoch study,
one meaning per mark and units in the report, the console's numbers, a study grown by seeds,
and `predict` on a folder without models."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from study.results import load_records

RESULTS = Path(__file__).resolve().parent.parent / "results"


def _drawn(records: list[dict], *names: str) -> dict:
    """The figures `names` drawn from `records` but not saved: {figure name: matplotlib figure}."""
    import matplotlib

    matplotlib.use("Agg")
    from study import report

    figures = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(report.figures, "_save", lambda fig, folder, name: figures.setdefault(name, fig) and [])
        for name in names:
            if name == "attention_maps":
                report.figures.plot_attention_maps(records, Path("unused"))
            elif name == "attention_maps_beyond":
                report.figures.plot_attention_maps(records, Path("unused"), "attention_example_beyond")
            elif name == "accuracy_vs_length":
                summary = report.tables.summary_frame(report.tables.metrics_frame(records))
                report.figures.plot_accuracy_vs_length(summary, records, Path("unused"))
            else:
                getattr(report.figures, f"plot_{name}")(records, Path("unused"))
    return figures


@pytest.fixture(scope="module")
def reference_maps():
    """The committed reference's attention maps inside and beyond the trained range, drawn once."""
    figures = _drawn(load_records(RESULTS / "reference"), "attention_maps", "attention_maps_beyond")
    yield figures
    import matplotlib.pyplot as plt

    plt.close("all")


def _panels(fig) -> list:
    """The attention-map panels of `fig` (the axes with an image and a title)."""
    return [ax for ax in fig.axes if ax.get_images() and ax.get_title()]


def _quoted(title: str, word: str) -> str:
    """The text a panel title quotes after `word` ("target 'abc…'" -> "abc…"), its wrapped lines joined."""
    flat = title.replace("\n", " ")  # lines break at spaces, which wrapping drops
    pattern = r"predicted '(.*)' \((?:right|WRONG)\)" if word == "predicted" else rf"{word} '(.*?)' predicted"
    match = re.search(pattern, flat)
    assert match, (word, title)
    return match.group(1)


def _tick_boxes(fig) -> list:
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    return [
        t.get_window_extent(renderer)
        for ax in fig.axes
        for t in [*ax.get_xticklabels(), *ax.get_yticklabels()]
        if t.get_text() and t.get_visible()
    ]


@pytest.mark.parametrize("name", ["attention_maps", "attention_maps_beyond"])
def test_attention_maps_label_every_source_character_or_say_which_with_no_labels_overlapping(reference_maps, name):
    """Each panel labels every source character, or its axis label says which are labelled and
    its title writes the whole source; no two tick labels of the figure overlap (the date_format
    row's y labels printed over each other)."""
    from study.fonts import readable

    fig = reference_maps[name]
    records = {(r["task"], r["model"], r["seed"]): r for r in load_records(RESULTS / "reference")}
    key = "attention_example" if name == "attention_maps" else "attention_example_beyond"
    panels = _panels(fig)
    assert len(panels) == 9
    for ax in panels:
        task, model = ax.get_title().split(",")[0].split(" / ")
        seed = int(re.search(r"seed (\d+)", ax.get_title()).group(1))
        source = records[(task, model, seed)][key]["source"]
        labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
        assert len(labels) == len(source) or re.search(r"every \w+ of \d+ labelled", ax.get_xlabel()), ax.get_xlabel()
        assert f"source '{readable(source)}'" in ax.get_title().replace("\n", " ")
        rows = [t.get_text() for t in ax.get_yticklabels() if t.get_text()]
        assert len(rows) == len(ax.get_images()[0].get_array()) or "labelled" in ax.get_ylabel()
    boxes = _tick_boxes(fig)
    overlaps = [
        (a, b)
        for i, a in enumerate(boxes)
        for b in boxes[i + 1 :]
        if min(a.x1, b.x1) > max(a.x0, b.x0) and min(a.y1, b.y1) > max(a.y0, b.y0)
    ]
    assert not overlaps, overlaps[:3]


@pytest.mark.parametrize("name", ["attention_maps", "attention_maps_beyond"])
def test_attention_map_titles_print_target_and_prediction_up_to_their_first_difference(reference_maps, name):
    """A wrong prediction's title prints target and prediction up to and including the first
    character where they differ, so the two never print alike (beyond the range the date panels
    cut both with '...' at the same place); a right one prints them whole."""
    records = {(r["task"], r["model"], r["seed"]): r for r in load_records(RESULTS / "reference")}
    key = "attention_example" if name == "attention_maps" else "attention_example_beyond"
    wrong = 0
    for ax in _panels(reference_maps[name]):
        task, model = ax.get_title().split(",")[0].split(" / ")
        ex = records[(task, model, int(re.search(r"seed (\d+)", ax.get_title()).group(1)))][key]
        target, prediction = _quoted(ax.get_title(), "target"), _quoted(ax.get_title(), "predicted")
        if ex["target"] == ex["prediction"]:
            assert target == ex["target"] and prediction == ex["prediction"] and "(right)" in ax.get_title()
            continue
        wrong += 1
        first = next((k for k, (a, b) in enumerate(zip(ex["target"], ex["prediction"])) if a != b), None)
        first = min(len(ex["target"]), len(ex["prediction"])) if first is None else first
        for printed, whole in ((target, ex["target"]), (prediction, ex["prediction"])):  # whole, or cut after it
            assert printed == whole or (printed.endswith("…") and printed[:-1] == whole[: first + 1]), (printed, whole)
        assert f"first difference: character {first + 1}" in ax.get_title().replace("\n", " ")
        assert target != prediction and "(WRONG)" in ax.get_title()
    assert wrong or name == "attention_maps"


def _one_example(record: dict, index: int, right: bool) -> dict:
    """`record` whose inside-range attention example is test example `index`, right or wrong."""
    ex = dict(record["attention_example"])
    ex.update(index=index, prediction=ex["target"] if right else ex["target"][::-1] + "x")
    return {**record, "attention_example": ex}


def test_attention_map_titles_say_which_example_they_show():
    """The figure's title names the rule for the length ('nearest its middle', not a promised
    mid-range length) and each panel which test example it shows and why: the first right one,
    or the first of all when none is right, said in words."""
    records = [r for r in load_records(RESULTS / "reference") if r["task"] == "copy" and r["seed"] == 0]
    by_model = {r["model"]: r for r in records}
    length = by_model["dot"]["attention_example"]["length"]
    none_right = _one_example(by_model["dot"], 0, right=False)
    none_right["metrics"] = [{**m, "seq_acc": 0.0} if m["length"] == length else m for m in none_right["metrics"]]
    shown = [_one_example(by_model["additive"], 6, right=True), none_right, by_model["none"]]
    fig = _drawn(shown, "attention_maps")["attention_maps"]
    caption = fig._suptitle.get_text().replace("\n", " ")
    assert "nearest its middle" in caption and "mid-range" not in caption and "the first where none is" not in caption
    titles = {ax.get_title().split(",")[0]: ax.get_title().replace("\n", " ") for ax in _panels(fig)}
    assert "test example 7 of 1,000, the first the model gets right" in titles["copy / additive"]
    assert "test example 1 of 1,000: it gets none right, so the first" in titles["copy / dot"]
    assert f"length {length} symbols (trained 4..32; exact match 0%)" in titles["copy / dot"]
    import matplotlib.pyplot as plt

    plt.close(fig)


@pytest.fixture(scope="module")
def curves():
    """The committed reference's training curves, drawn once."""
    fig = _drawn(load_records(RESULTS / "reference"), "training_curves")["training_curves"]
    fig.canvas.draw()
    yield fig
    import matplotlib.pyplot as plt

    plt.close(fig)


def _labelled_ticks(axis) -> list[float]:
    lo, hi = axis.get_view_interval()
    return [t.get_position()[1 if axis.axis_name == "y" else 0] for t in axis.get_ticklabels() if t.get_text()]


def test_training_curves_label_each_log_axis_beyond_its_data_and_every_rate_reached(curves):
    """Every loss panel has a labelled tick at or above its highest value and at or below its
    lowest (date_format's loss panel had no label above 1 with values up to 1.1); every
    learning-rate panel labels each rate the runs reached, the lowest included."""
    records = load_records(RESULTS / "reference")
    for ax in curves.axes:
        if "loss" in ax.get_ylabel():
            values = np.concatenate([line.get_ydata() for line in ax.get_lines() if len(line.get_ydata())])
            ticks = [y for y in ax.get_yticks() if ax.get_ylim()[0] <= y <= ax.get_ylim()[1]]
            labelled = [y for y, t in zip(ax.get_yticks(), ax.get_yticklabels()) if t.get_text() and y in ticks]
            assert max(labelled) >= values.max() and min(labelled) <= values.min(), ax.get_title()
        elif "learning rate" in ax.get_ylabel():
            task = curves.axes[list(curves.axes).index(ax) % 3].get_title()
            rates = {h["learning_rate"] for r in records if r["task"] == task for h in r["history"]}
            texts = {t.get_text() for t in ax.get_yticklabels() if t.get_text()}
            assert {f"{rate:g}" for rate in rates} <= texts, (task, sorted(rates), texts)


def test_learning_rates_of_different_models_do_not_draw_on_top_of_each_other(curves):
    """At the first validation point every run has the same learning rate; each model's lines
    are drawn apart, so every colour shows (not only the last one drawn)."""
    for ax in curves.axes:
        if "learning rate" not in ax.get_ylabel():
            continue
        starts = {}
        for line in ax.get_lines():
            if len(line.get_ydata()):
                starts.setdefault(str(line.get_color()), set()).add(round(float(line.get_ydata()[0]), 9))
        assert len(starts) == 4
        for a, b in [(a, b) for a in starts for b in starts if a < b]:
            assert not starts[a] & starts[b], (a, b)


def _shows_a_point(ax) -> bool:
    """Whether `ax` draws at least one data point that can be seen: a line of two points or more,
    a marker, a filled or scattered collection, or an image."""
    for line in ax.get_lines():
        n = np.count_nonzero(np.isfinite(np.asarray(line.get_ydata(), dtype=float)))
        if (n >= 2 and line.get_linestyle() not in ("None", "", " ")) or (
            n >= 1 and line.get_marker() not in (None, "None", "", " ")
        ):
            return True
    return bool(ax.get_images()) or any(len(c.get_offsets()) for c in ax.collections if hasattr(c, "get_offsets"))


def test_a_one_epoch_study_draws_every_series_of_one_point(tmp_path):
    """A study validated once per cell and evaluated at one length draws a visible point in every
    panel of every figure, without tight_layout's divide-by-zero warnings (it drew a blank
    training_curves.png)."""
    import warnings

    records = load_records(RESULTS / "reference")
    for r in records:
        r["history"] = r["history"][:1]
        keep = [m for m in r["metrics"] if m["length"] == max(r["train_lengths"])]
        r["metrics"], r["eval_lengths"] = keep, [m["length"] for m in keep]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        figures = _drawn(
            records, "training_curves", "learning_curves_by_length", "accuracy_vs_length", "position_accuracy"
        )
    assert not [str(w.message) for w in caught if "divide" in str(w.message) or "singular" in str(w.message)]
    for name, fig in figures.items():
        drawn = [ax for ax in fig.axes if ax.axison and ax.get_ylabel() != "attention weight"]
        assert drawn and all(_shows_a_point(ax) for ax in drawn), (
            name,
            [ax.get_title() for ax in drawn if not _shows_a_point(ax)],
        )
    import matplotlib.pyplot as plt

    plt.close("all")


@pytest.fixture(scope="module")
def reference_report(tmp_path_factory):
    """report.md of the committed reference, redrawn from its records into a copy (figures built, not saved)."""
    from study import report

    copy = tmp_path_factory.mktemp("reference") / "reference"
    shutil.copytree(RESULTS / "reference", copy)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(report.figures, "_save", lambda fig, folder, name: _close(fig) or [f"figures/{name}.png"])
        report.write_report(copy)
    return (copy / "report.md").read_text()


def _close(fig) -> None:
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_a_star_marks_trained_lengths_in_every_table(reference_report):
    """`*` marks the lengths inside the trained range in the exact-match, comparison and per-date
    tables alike (the per-date table marked the lengths beyond the range with it)."""
    assert "beyond the trained range." not in reference_report
    units = reference_report[reference_report.index("## Accuracy per output unit") :]
    rows = [line for line in units.splitlines() if re.match(r"\| \w+ \| \d+\*? \|", line)]
    dates = {int(re.match(r"\| \w+ \| (\d+)", line).group(1)): "*" in line.split("|")[2] for line in rows}
    assert dates == {1: True, 2: True, 3: True, 4: True, 5: False, 6: False, 7: False, 8: False}
    headers = re.findall(r"^\| (?:model \| seeds|first - second) \|.*$", reference_report, flags=re.M)
    for header in headers:
        cells = [c.strip() for c in header.split("|")[2:-1] if c.strip().rstrip("*").isdigit()]
        starred = [int(c.rstrip("*")) for c in cells if c.endswith("*")]
        beyond = [int(c) for c in cells if not c.endswith("*")]
        assert all(L <= 32 for L in starred) and (not starred or not beyond or max(starred) < min(beyond)), header
    assert reference_report.count("* = inside the trained range") >= 4


def test_the_report_names_each_tasks_trained_range_in_its_unit(reference_report):
    """'trained on 1..4 dates', '4..32 symbols': not 'lengths 1..4' for a task counted in dates."""
    assert "trained on lengths" not in reference_report
    assert "### date_format (trained on 1..4 dates;" in reference_report
    assert "#### date_format (trained on 1..4 dates;" in reference_report
    assert "### copy (trained on 4..32 symbols;" in reference_report


def test_the_console_line_of_a_cell_quotes_numbers_the_report_holds():
    """A finished cell's line gives its exact match at its longest trained length and the first
    length beyond, the numbers metrics.csv holds for it, not a mean over lengths printed nowhere."""
    import pandas as pd

    from study.runner import summary_line

    metrics = pd.read_csv(RESULTS / "reference" / "metrics.csv")
    for record in load_records(RESULTS / "reference")[:6]:
        line = summary_line(record)
        assert "in range" not in line
        rows = metrics[metrics["cell_id"] == record["id"]].set_index("length")["seq_acc"]
        longest, first = (
            max(record["train_lengths"]),
            min(L for L in record["eval_lengths"] if L > max(record["train_lengths"])),
        )
        unit = record["length_unit"]
        assert f"exact-match {100 * rows[longest]:.1f}% at {longest} {unit} (longest trained), " in line
        assert f"{100 * rows[first]:.1f}% at {first} (first beyond)" in line


def _fake_records(config, folder: Path) -> list[str]:
    """Finished records of every cell of `config` written into `folder/cells` (no training); their ids."""
    from study.cell import cell_identity
    from study.results import DISTINCT_ITEMS, RECORD_SCHEMA
    from study.runner import study_cells

    (folder / "cells").mkdir(parents=True, exist_ok=True)
    ids = []
    for cell, cid in study_cells(config):
        identity = cell_identity(cell, config, cell.task.build())
        metrics = [{"length": length, "seq_acc": 0.5} for length in identity["eval_lengths"]]
        record = {"id": cid, **identity, "schema": RECORD_SCHEMA, "status": "ok", "metrics": metrics}
        (folder / "cells" / f"{cid}.json").write_text(json.dumps({**record, "test_items": DISTINCT_ITEMS}))
        ids.append(cid)
    return ids


def test_seeds_added_to_a_study_join_it_in_its_report(tmp_path):
    """`--seeds 2,3` run into a folder that holds seeds 0 and 1 of the same settings: those records
    are of this study, not 'of other grids', and the report reads all four seeds; a record of
    other settings (another test-set size) stays apart."""
    import dataclasses

    from study.config import build_study_config
    from study.runner import plan_run

    first = build_study_config("smoke", overrides={"seeds": [0, 1]})
    earlier = _fake_records(first, tmp_path)
    apart = _fake_records(
        dataclasses.replace(build_study_config("smoke", overrides={"seeds": [0]}), n_test=7), tmp_path
    )
    second = build_study_config("smoke", overrides={"seeds": [2, 3]})
    notes = []
    _, done, todo = plan_run(second, tmp_path, False, None, notes.append)
    assert not done and len(todo) == len(earlier)
    assert sorted(json.loads((tmp_path / "study.json").read_text())["other_seeds"]) == sorted(earlier)
    assert any("under other seeds" in n for n in notes)
    assert any(f"{len(apart)} record(s) of other grids" in n for n in notes)
    _fake_records(second, tmp_path)  # the run finishes its own cells
    assert sorted({r["seed"] for r in load_records(tmp_path)}) == [0, 1, 2, 3]
    assert not {r["id"] for r in load_records(tmp_path)} & set(apart)


def test_predict_on_a_folder_without_models_says_how_to_get_one_before_the_backend_starts(monkeypatch, capsys):
    """The committed reference holds no models: predict says how to train one (a smoke study into
    a folder of one's own), never to re-run the committed study with --fresh; a wrong task,
    model or seed is named too, each before the backend starts (it takes seconds)."""
    import run_study
    from study import backend

    def refuse(*args, **kwargs):
        raise AssertionError("the backend started before the input was checked")

    monkeypatch.setattr(backend, "start_backend", refuse)
    cases = [
        (["--task", "copy", "--model", "dot", "abcd"], "--profile smoke --out results/smoke"),
        (["--task", "copyy", "--model", "dot", "abcd"], "no finished cell of task 'copyy'"),
        (["--task", "copy", "--model", "dott", "abcd"], "models there: additive, dot, general, none"),
        (["--task", "copy", "--model", "dot", "--seed", "9", "abcd"], "seeds there: 0, 1, 2"),
        (["--task", "copy", "--model", "dot", "abcz"], "outside the alphabet"),
    ]
    for argv, message in cases:
        assert run_study.main(["predict", str(RESULTS / "reference"), *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and "--fresh" not in err and len(err.strip().splitlines()) == 1, err


def test_the_readme_predicts_with_a_folder_a_newcomer_can_make_in_minutes():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    commands = re.findall(r"python run_study.py predict (\S+)", readme)
    assert "results/smoke" in commands and all(folder.endswith("smoke") for folder in commands), commands
    assert "--profile smoke --out results/smoke" in readme  # how to make it, beside the example


def test_a_two_seed_interval_says_why_it_is_wide():
    """With two seeds an interval over seeds that disagree cannot be narrow (a Student-t with one
    degree of freedom): the bottleneck's 2-seed tables say so; the reference's 3-seed ones do not."""
    from study.report.statistics import few_seeds_note

    assert few_seeds_note(2) and not few_seeds_note(3) and not few_seeds_note(1)
    assert few_seeds_note(2) in (RESULTS / "bottleneck" / "summary.md").read_text(encoding="utf-8")
    assert few_seeds_note(2) not in (RESULTS / "reference" / "summary.md").read_text(encoding="utf-8")
