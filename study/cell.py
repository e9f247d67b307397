"""One cell of a study: its data, model, training, greedy evaluation and record.

    record = run_cell(cell, config)          # trains and evaluates; status "ok" or "failed"
    record = run_cell_safely(cell, config)   # any error inside the cell becomes a failed record
    rescore(Path("results/standard"))        # every record's test metrics from its saved model

Executors run `run_cell_safely` wherever cells run (this process, worker
processes, Ray tasks); the runner writes the records.  A cell's id hashes
everything its result depends on (`cell_identity`).  The records, the results folder's
layout (`cell_paths`) and the saved models are read and written through `study.results`.

Rescoring regenerates each cell's test sets from their keys (`study.data`), decodes them with
the current metric code and rewrites the record with the new `metrics_version`, so a change of
metric definitions does not cost a new study.  It lives here, beside the evaluation it repeats,
rather than in `study.results`, which this module and `study.data` import.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from study.config import StudyConfig, TaskPlan, TrainConfig, config_to_dict
from study.models import effective_model_config
from study.results import (
    DISTINCT_ITEMS,
    RECORD_SCHEMA,
    StudyLock,
    TrainedModelError,
    cell_paths,
    in_training_range,
    json_digest,
    load_cell_model,
    load_records,
    record_task,
    write_json_atomic,
)

if TYPE_CHECKING:
    from study.tasks import Task


@dataclasses.dataclass(frozen=True)
class Cell:
    """One trained model: a task plan, a model name, a seed and the lengths it trains on."""

    task: TaskPlan
    model: str
    seed: int
    train_lengths: tuple[int, ...]

    def describe(self) -> str:
        lengths = (
            f"{self.train_lengths[0]}..{self.train_lengths[-1]}"
            if len(self.train_lengths) > 1
            else str(self.train_lengths[0])
        )
        return f"{self.task.name}/{self.model}/seed {self.seed}/train {lengths}"


# training settings added after studies had been run: left out of a cell's identity while at
# these values (the behaviour before they existed), so the cells of those studies keep their ids
IDENTITY_DEFAULTS = {
    "loss_normalisation": "token",
    "end_token": True,
    "accuracy_band": 1,
    "accuracy_z": 0.0,
    "adam_beta2": 0.999,
    "curriculum_examples": 0,
    "curriculum_share": 0.5,
}


def identity_train_config(train: TrainConfig) -> dict:
    """The training settings as a cell's identity holds them: every field of `train` except
    those at their `IDENTITY_DEFAULTS` value, and the curriculum's share when there is no curriculum."""
    held = {k: v for k, v in dataclasses.asdict(train).items() if IDENTITY_DEFAULTS.get(k, object()) != v}
    if not train.curriculum_examples:  # without a curriculum its share changes nothing
        held.pop("curriculum_share", None)
    return held


def cell_identity(cell: Cell, config: StudyConfig, task: "Task | None") -> dict:
    """Everything the cell's result depends on (JSON-serialisable).

    The task part comes from the built `task` (`study.tasks.get_task`): its version, its
    options as the task normalised them (canonical spelling, defaults filled in) and the
    versions of the outside data it uses (`Task.data_versions`), so the same task spelled
    two ways is one cell and the same cell made with other locale data is another.  `task`
    is None only for a cell whose task could not be built (its failed record keeps the
    options as written)."""
    return {
        "schema": RECORD_SCHEMA,
        "task": cell.task.name,
        "task_version": task.version if task is not None else None,
        "task_options": dict(sorted(task.options.items())) if task is not None else dict(cell.task.options),
        "task_data": dict(sorted(task.data_versions.items())) if task is not None else {},
        "model": cell.model,
        "seed": cell.seed,
        "regime": config.regime,
        "train_lengths": list(cell.train_lengths),
        "eval_lengths": list(cell.task.eval_lengths),
        "model_config": dataclasses.asdict(effective_model_config(cell.model, config.model)),
        "train_config": identity_train_config(config.train),
        "n_test": config.n_test,
        "backend": config.backend,
    }


def cell_id(identity: dict) -> str:
    """`<task>-<model>-s<seed>-<12 hex digits of the identity's hash>`."""
    return f"{identity['task']}-{identity['model']}-s{identity['seed']}-{json_digest(identity, 12)}"


def versions() -> dict:
    """Versions of the packages that decide the numbers."""
    import babel
    import keras
    import numpy

    out = {
        "python": platform.python_version(),
        "keras": keras.__version__,
        "numpy": numpy.__version__,
        "babel": babel.__version__,
    }
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow

        out["tensorflow"] = tensorflow.__version__
    elif backend == "jax":
        import jax

        out["jax"] = jax.__version__
    return out


def thread_layout() -> dict:
    """The threads this process's backend computes with, as a record keeps them: TensorFlow's
    intra- and inter-op thread pools (0: TensorFlow's default, every core), or for JAX the
    intra-op threads its XLA_FLAGS ask for (0: XLA's default)."""
    import re

    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return {
            "intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
        }
    asked = re.search(r"intra_op_parallelism_threads=(\d+)", os.environ.get("XLA_FLAGS", ""))
    return {"intra_op": int(asked.group(1)) if asked else 0}


def device_name() -> str:
    """The accelerator Keras runs on, or the CPU."""
    import keras

    try:
        if keras.backend.backend() == "jax":
            import jax

            return str(jax.devices()[0])
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        return gpus[0].name if gpus else f"CPU ({os.cpu_count()} cores)"
    except Exception:  # a device query is informative only
        return "unknown"


def attention_example_lengths(plan: TaskPlan, lengths: tuple[int, ...]) -> dict[str, int]:
    """The evaluation lengths whose test examples a record keeps with their attention weights, by
    record key: "attention_example", the evaluation length inside the training range nearest its
    middle (the longer of two equally near: a longer example shows more of the alignment; absent
    when no evaluation length lies inside the range), and
    "attention_example_beyond", the first evaluation length beyond the training range (absent when
    none is evaluated), where the map shows how the model fails."""
    middle = (min(lengths) + max(lengths)) / 2
    inside = [length for length in plan.eval_lengths if min(lengths) <= length <= max(lengths)]
    chosen = {}
    if inside:  # absent when no evaluation length lies inside the training range
        chosen["attention_example"] = min(inside, key=lambda length: (abs(length - middle), -length))
    beyond = [length for length in plan.eval_lengths if length > max(lengths)]
    if beyond:
        chosen["attention_example_beyond"] = min(beyond)
    return chosen


def example_index(predictions: list[str], targets: list[str], kept: int, right: bool = True) -> int:
    """The index of the first of the first `kept` examples (those whose attention weights were
    kept) whose prediction equals its target (`right`) or differs from it (not `right`); 0 when
    none does."""
    return next((k for k in range(min(kept, len(predictions))) if (predictions[k] == targets[k]) == right), 0)


def test_metrics(
    model, tests: dict, train_lengths, map_lengths: dict[str, int], sv, tv, end_token: bool = True
) -> tuple[list[dict], dict[str, dict]]:
    """Greedy-decodes each test set of `tests` ({length: Dataset}) and scores it (`study.evaluate`);
    returns the per-length metric rows and the attention examples, {record key: example}, at the
    lengths of `map_lengths` ({record key: length}, `attention_example_lengths`).  Inside the
    training range the example is the first test example the model gets right among those whose
    attention weights were kept (every example; the first alone for a model trained without END),
    so that the map shows the mechanism where it works; beyond it, the first one it gets wrong,
    so that the map shows how it fails; else the first one.  A model trained without END
    (`end_token` False) is decoded at each target's length, so its exact match is its
    oracle-length exact match."""
    import numpy as np

    from study.evaluate import evaluate_with_predictions

    metrics, examples = [], {}
    for length, test in tests.items():
        Interrupt.check()
        t0 = time.perf_counter()
        keys = [key for key, at in map_lengths.items() if at == length]
        scored, predictions, weights = evaluate_with_predictions(
            model, test.sources, test.targets, sv, tv, end_token=end_token, with_attention=bool(keys)
        )
        metrics.append(
            {
                "length": length,
                "in_training_range": in_training_range(length, train_lengths),
                **scored,
                "mean_source_tokens": float(np.mean([len(s) for s in test.sources])),
                "mean_target_tokens": float(np.mean([len(t) for t in test.targets])),
                "decode_seconds": time.perf_counter() - t0,
            }
        )
        for key in keys:
            kept = len(weights) if weights is not None else 1
            i = example_index(predictions, test.targets, kept, right=in_training_range(length, train_lengths))
            examples[key] = {
                "length": length,
                "index": i,
                "source": test.sources[i],
                "target": test.targets[i],
                "prediction": predictions[i],
                # rows: output steps up to and including END; columns: source characters
                "weights": None
                if weights is None
                else np.round(weights[i, : len(predictions[i]) + 1, : len(test.sources[i])], 4).tolist(),
            }
    return metrics, examples


def run_cell(cell: Cell, config: StudyConfig, progress: bool = True, out: Path | None = None) -> dict:
    """Trains and evaluates one cell; returns its record (status "ok" or "failed").  With a
    results folder `out`, training keeps a backup there after every epoch (and resumes from
    one it finds), and the trained model is saved there (`cell_paths`)."""
    import keras

    from study.experiment import prepare, train

    started = time.perf_counter()
    task = cell.task.build()
    record = _record_start(cell, config, task)
    paths = cell_paths(out, record["id"])
    run = prepare(
        task,
        cell.model,
        cell.train_lengths,
        cell.task.eval_lengths,
        config.model,
        config.train,
        config.n_test,
        cell.seed,
        memory_share=1 / config.workers,
        what=cell.describe(),
    )
    model = run.model
    record["floatx"] = keras.config.floatx()  # `prepare` sets float32, whatever keras.json says
    record["param_count"] = int(model.count_params())
    record["n_validation_examples"] = len(run.splits.validation)  # distinct; fewer than asked where fewer exist
    extra = [keras.callbacks.TensorBoard(log_dir=str(paths["logs"]))] if config.tensorboard and paths["logs"] else []
    result = train(
        run,
        config.train,
        cell.seed,
        progress=progress,
        between_batches=Interrupt.check,
        backup_dir=paths["backup"],
        extra_callbacks=extra,
    )
    record.update(
        history=result.history,
        stop_reason=result.stop_reason,
        converged=result.converged,
        last_stretch=result.last_stretch,
        selected_by=result.selected_by,
        stop_learning_rate=result.stop_learning_rate,
        examples_seen=result.examples_seen,
        best_epoch=result.best_epoch,
        best_val_seq_acc=result.best_val_seq_acc,
        train_seconds=result.seconds,
        seconds={"data": run.data_seconds, **result.times},
    )
    if result.diverged:
        record.update(
            status="failed",
            error=result.stop_reason,
            metrics=[],
            wall_seconds=time.perf_counter() - started + result.times["before_resume"],
        )
        return record
    if paths["model"] is not None:
        paths["model"].parent.mkdir(parents=True, exist_ok=True)
        model.save(paths["model"])
        record["model_file"] = str(paths["model"].relative_to(Path(out)))
    _evaluate(record, model, run, cell, config)
    # a resumed cell's wall time includes the training done before the resume
    record["wall_seconds"] = time.perf_counter() - started + result.times["before_resume"]
    return record


def _record_start(cell: Cell, config: StudyConfig, task: "Task") -> dict[str, Any]:
    """A record before training: the cell's id and identity, its configuration, and what it runs
    on (package versions, device, thread layout, worker)."""
    from study.models import get_model_spec

    identity = cell_identity(cell, config, task)
    return {
        "id": cell_id(identity),
        **identity,
        "attention": get_model_spec(cell.model).attention,
        "length_unit": task.length_unit,
        "profile": config.profile,
        "config": config_to_dict(config),
        "versions": versions(),
        "device": device_name(),
        "threads": thread_layout(),  # float sums in another layout move where training stops
        "worker": {"host": platform.node(), "pid": os.getpid()},
        "status": "ok",
    }


def _evaluate(record: dict, model, run, cell: Cell, config: StudyConfig) -> None:
    """Greedy-decodes the trained `model` on `run`'s test sets into `record`: metrics per length,
    attention examples, the metrics version and the decoding time."""
    from study.evaluate import METRICS_VERSION

    eval_started = time.perf_counter()
    metrics, examples = test_metrics(
        model,
        run.splits.test,
        cell.train_lengths,
        attention_example_lengths(cell.task, cell.train_lengths),
        run.source_vocab,
        run.target_vocab,
        config.train.end_token,
    )
    record.update(examples, test_items=DISTINCT_ITEMS)  # records without it drew test sets with replacement
    record["seconds"]["test_decoding"] = time.perf_counter() - eval_started
    record.update(metrics=metrics, metrics_version=METRICS_VERSION, eval_seconds=record["seconds"]["test_decoding"])


class Interrupt:
    """Ctrl-C during a study. The handler only sets `requested`; training in this process checks
    it between batches, and the executors between waits for their workers. A KeyboardInterrupt
    raised at an arbitrary point can land in a garbage-collector callback inside TensorFlow and be
    swallowed, or cut a worker's spawn in half. A second Ctrl-C raises at once."""

    requested = False

    @classmethod
    def handler(cls, signum, frame) -> None:
        if cls.requested:
            raise KeyboardInterrupt
        cls.requested = True

    @classmethod
    def check(cls) -> None:
        """Raises KeyboardInterrupt at a safe point once Ctrl-C was pressed."""
        if cls.requested:
            raise KeyboardInterrupt

    @classmethod
    @contextlib.contextmanager
    def handled(cls) -> Iterator[None]:
        """Routes Ctrl-C to `handler` inside the block (main thread only: elsewhere Python
        delivers no signals) and puts the previous handler back after it; a request never
        outlives the block."""
        import signal
        import threading

        cls.requested = False
        in_main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, cls.handler) if in_main_thread else None
        try:
            yield
        finally:
            if in_main_thread:
                signal.signal(signal.SIGINT, previous)
            cls.requested = False


def run_cell_safely(cell: Cell, config: StudyConfig, progress: bool = True, out: Path | None = None) -> dict:
    """`run_cell`, with any error inside the cell turned into a failed record, so the study goes on."""
    import traceback

    try:
        return run_cell(cell, config, progress, out)
    except Exception as exc:  # a failing cell must not take the study down
        if Interrupt.requested:  # an interrupt that library code turned into another error
            raise KeyboardInterrupt from exc
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return failed_record(cell, config, f"{type(exc).__name__}: {message}", traceback.format_exc())


def failed_record(cell: Cell, config: StudyConfig, error: str, traceback_text: str = "") -> dict:
    """The record of a cell that could not finish: its identity, configuration and the error."""

    try:
        task = cell.task.build()
    except Exception:
        task = None
    identity = cell_identity(cell, config, task)
    return {
        "id": cell_id(identity),
        **identity,
        "attention": None,
        "profile": config.profile,
        "config": config_to_dict(config),
        "status": "failed",
        "error": error[:500],
        "traceback": traceback_text[-4000:],
        "metrics": [],
        "history": [],
    }


WARNINGS_SHOWN = 3  # skipped cells named one by one by `rescore`


def rescore(out: Path, warn: Callable[[str], None] = print) -> tuple[int, int]:
    """Recomputes the test metrics of every finished record in `out` from its saved model with
    the current metric code and rewrites the record; returns (rescored, skipped): a record is
    skipped, with a warning, when its model is missing or this machine cannot rebuild its task
    as it was (`record_task`); past `WARNINGS_SHOWN` such warnings, one line counts the rest."""
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
