"""Trained models of a finished study: ask them about new inputs, or score them again.

    rows = predict(Path("results/standard"), "copy", "additive", 0, ["abcdefgh"])
    # [{"source": "abcdefgh", "prediction": "abcdefgh", "target": "abcdefgh", "exact": True}]
    rescore(Path("results/standard"))   # every record's test metrics from its saved model

Each finished cell saves its model as `<out>/models/<cell id>.keras` (`study.cell.cell_paths`),
with its alphabets; `study.models.load_trained` loads one.  Rescoring regenerates each cell's
test sets from their keys (`study.data`), decodes them with the current metric code and
rewrites the record with the new `metrics_version`, so a change of metric definitions does not
cost a new study.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from study.files import write_atomic, write_json_atomic
from study.records import DISTINCT_ITEMS, StudyLock, load_records


class TrainedModelError(ValueError):
    """No such trained model in a results folder, or an input it cannot read; one line."""


def find_record(out: Path, task: str, model: str, seed: int | None) -> dict:
    """The finished record of (task, model, seed) in `out` (the lowest seed when None)."""
    records = [r for r in load_records(out) if r["status"] == "ok"]

    def available(key: str, rows: list[dict]) -> str:
        return ", ".join(str(v) for v in sorted({r[key] for r in rows}))

    rows = [r for r in records if r["task"] == task]
    if not rows:
        raise TrainedModelError(
            f"no finished cell of task {task!r} in {out}; tasks there: {available('task', records)}"
        )
    chosen = [r for r in rows if r["model"] == model]
    if not chosen:
        raise TrainedModelError(
            f"no finished cell of model {model!r} for task {task!r} in {out}; models there: {available('model', rows)}"
        )
    if seed is not None:
        if not [r for r in chosen if r["seed"] == seed]:
            raise TrainedModelError(
                f"no finished cell of {task}/{model} with seed {seed} in {out}; seeds there: {available('seed', chosen)}"
            )
        chosen = [r for r in chosen if r["seed"] == seed]
    # of a seed, one this machine can rebuild
    return min(chosen, key=lambda r: (r["seed"], not _usable_here(r), r["id"]))


def record_task(record: dict):
    """The task a record was made with, built here; raises TrainedModelError when this machine's
    outside data (e.g. Babel's CLDR release) differ from the record's, since the task would then
    write other sources than the model was trained and tested on."""
    from study.tasks import UnknownNameError, get_task

    try:
        task = get_task(record["task"], **record["task_options"])
    except UnknownNameError as exc:  # most often a plugin's task, its file not loaded
        raise TrainedModelError(
            f"cell {record['id']}: {exc}; if it comes from a task file of your own, load it with --task-module PATH"
        ) from None
    except ValueError as exc:  # options it refuses, a broken contract
        raise TrainedModelError(f"cell {record['id']}: {exc}") from None
    recorded = record.get("task_data") or {}
    if recorded and recorded != task.data_versions:
        raise TrainedModelError(
            f"cell {record['id']} was made with task data {recorded}, this machine has {task.data_versions}; "
            "install the package versions of the record's `versions` (e.g. its Babel) to use it here"
        )
    return task


def _usable_here(record: dict) -> bool:
    """Whether this machine can rebuild the record's task as it was (`record_task`)."""
    try:
        record_task(record)
    except TrainedModelError:
        return False
    return True


NO_MODEL_HINT = (
    "trained models stay out of git, so the committed results folders hold records only; to ask a model, "
    "train one into a folder of your own, e.g. `python run_study.py --profile smoke --out results/smoke` "
    "(about two minutes), then `python run_study.py predict results/smoke --task copy --model dot abcd`"
)


def cell_model_path(out: Path, record: dict) -> Path:
    """Where `record`'s saved model is, or TrainedModelError (with how to get a model) when the
    study saved none there; loads nothing, so it is checked before the backend starts."""
    path = Path(out) / record.get("model_file", f"models/{record['id']}.keras")
    if not path.is_file():
        raise TrainedModelError(f"cell {record['id']} has no saved model ({path} is missing): {NO_MODEL_HINT}")
    return path


def load_cell_model(out: Path, record: dict):
    """The saved model of `record`, or TrainedModelError when the study did not save one."""
    from study.models import MODELS, load_trained

    if record["model"] not in MODELS:
        raise TrainedModelError(
            f"cell {record['id']}: {MODELS.unknown_message(record['model'])}; "
            "if it comes from a model file of your own, load it with --model-module PATH"
        )
    return load_trained(cell_model_path(out, record))


def predict(
    out: Path, task: str, model: str, seed: int | None, sources: list[str], attention_map: Path | None = None
) -> list[dict]:
    """Greedy predictions of the (task, model, seed) cell's model for `sources`; each row has the
    source, the prediction and, when the task can compute it, the target and whether they match.
    With `attention_map`, draws the first source's attention weights there (PNG)."""
    record, definition, targets, end_token = check_prediction(out, task, model, seed, sources, attention_map)
    trained = load_cell_model(out, record)
    from study.evaluate import decode, decode_at_target_length, decode_steps

    sv, tv = trained.vocabularies()
    if end_token:
        steps = decode_steps([*sources, *(t for t in targets if t)])  # room beyond the longest source or known target
        predictions, weights = decode(trained, sources, sv, tv, steps, with_attention=attention_map is not None)
    else:
        predictions, weights = decode_at_target_length(trained, sources, targets, sv, tv), None
    if attention_map is not None:
        _draw_attention(
            weights[0, : len(predictions[0]) + 1, : len(sources[0])],
            sources[0],
            predictions[0],
            targets[0],
            f"{task} / {model} / seed {record['seed']}",
            attention_map,
        )
    return [
        {"source": s, "prediction": p, "target": t, "exact": None if t is None else p == t, "cell": record["id"]}
        for s, p, t in zip(sources, predictions, targets)
    ]


def check_prediction(
    out: Path, task: str, model: str, seed: int | None, sources: list[str], attention_map: Path | None = None
) -> tuple[dict, object, list, bool]:
    """Everything `predict` refuses, checked without Keras (so before the backend starts, which
    takes seconds): the folder's record of (task, model, seed), its task as this machine builds
    it, the sources in its alphabet, a saved model, and an attention map only where one can be
    drawn.  Returns (record, task, targets (None where the task cannot compute one), whether the
    model was trained with END); raises TrainedModelError."""
    record = find_record(out, task, model, seed)
    definition = record_task(record)
    for source in sources:
        bad = sorted(set(source) - set(definition.input_alphabet))
        if not source or bad:
            raise TrainedModelError(
                f"source {source!r} {'is empty' if not source else f'has characters outside the alphabet of {task}: {bad}'}; "
                f"allowed: {definition.input_alphabet!r}"
            )
    if attention_map is not None and record["attention"] == "none":
        raise TrainedModelError(f"model {model!r} has no attention to draw")
    targets = [definition.target_for(s) for s in sources]
    end_token = record["train_config"].get("end_token", True)
    if not end_token and (None in targets or attention_map is not None):
        raise TrainedModelError(
            f"cell {record['id']} was trained without END (train.end_token = false): it is decoded for its target's length, "
            f"which task {task!r} cannot give for these inputs"
            if None in targets
            else "attention maps are drawn for models trained with END"
        )
    cell_model_path(out, record)
    return record, definition, targets, end_token


def _draw_attention(weights, source: str, prediction: str, target: str | None, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from study.fonts import add_marks_note, character_ticks, readable, use_fonts

    use_fonts()
    rows = (list(prediction) + ["END"])[: weights.shape[0]]
    # readable for a short input too
    fig, ax = plt.subplots(
        figsize=(max(4.5, 0.3 * len(source) + 1.5), max(4.0, 0.3 * len(rows) + 1.2)), layout="constrained"
    )
    image = ax.imshow(weights, cmap="viridis", vmin=0, vmax=1, aspect="equal")
    character_ticks(ax, "x", list(source), fontsize=8)
    character_ticks(ax, "y", rows, fontsize=8)
    verdict = "" if target is None else (" (right)" if prediction == target else f" (target '{readable(target)}')")
    ax.set(
        title=f"{title}\npredicted '{readable(prediction)}'{verdict}",
        xlabel="source character",
        ylabel="predicted character",
    )
    add_marks_note(fig, source + prediction + (target or ""))
    fig.colorbar(image, ax=ax, label="attention weight")  # the constrained layout keeps it clear of the title
    write_atomic(Path(path), lambda f: fig.savefig(f, format=Path(path).suffix[1:], dpi=150, bbox_inches="tight"))
    plt.close(fig)


WARNINGS_SHOWN = 3  # skipped cells named one by one by `rescore`


def rescore(out: Path, warn: Callable[[str], None] = print) -> tuple[int, int]:
    """Recomputes the test metrics of every finished record in `out` from its saved model with
    the current metric code and rewrites the record; returns (rescored, skipped): a record is
    skipped, with a warning, when its model is missing or this machine cannot rebuild its task
    as it was (`record_task`); past `WARNINGS_SHOWN` such warnings, one line counts the rest."""
    import time

    from study.cell import attention_example_lengths, test_metrics
    from study.config import TaskPlan
    from study.data import test_splits
    from study.evaluate import METRICS_VERSION

    out = Path(out)
    done = skipped = 0
    with StudyLock(out):
        for record in load_records(out):
            if record["status"] != "ok":
                continue
            try:
                task = record_task(record)
                trained = load_cell_model(out, record)
            except TrainedModelError as exc:
                skipped += 1
                if skipped <= WARNINGS_SHOWN:
                    warn(f"warning: {exc}; its metrics are left as they are")
                continue
            sv, tv = trained.vocabularies()
            tests = test_splits(task, record["eval_lengths"], record["n_test"], record["seed"])
            plan = TaskPlan(record["task"], tuple(record["train_lengths"]), tuple(record["eval_lengths"]))
            started = time.perf_counter()
            metrics, examples = test_metrics(
                trained,
                tests,
                record["train_lengths"],
                attention_example_lengths(plan, tuple(record["train_lengths"])),
                sv,
                tv,
                record["train_config"].get("end_token", True),
            )
            record.update(
                metrics=metrics,
                metrics_version=METRICS_VERSION,
                eval_seconds=time.perf_counter() - started,
                test_items=DISTINCT_ITEMS,
                **examples,
            )
            write_json_atomic(out / "cells" / f"{record['id']}.json", record)
            done += 1
    if skipped > WARNINGS_SHOWN:
        warn(
            f"warning: {skipped - WARNINGS_SHOWN} more cells skipped for the same kinds of reason; their metrics are left as they are"
        )
    return done, skipped
