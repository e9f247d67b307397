"""Expand a study into cells, run the ones not yet done, and write one record per cell.

    cells = expand_grid(config)            # one Cell per (task, model, seed[, training length])
    run_study(config, Path("results/standard"))

A cell is trained and evaluated by `run_cell`, which returns its record: the
full configuration, task version, parameter count, training history, per-length
and per-position metrics from greedy decoding, one attention map, timings,
package versions, backend and device.  Records are written atomically to
`<out>/cells/<cell id>.json`; the id is a hash of everything the cell depends
on, so a finished cell is skipped on a re-run (unless `fresh`) and a changed
setting makes new cells instead of mixing with old ones.  `<out>/study.json`
names the cells of the latest run; `metrics.csv` and the report are drawn from
the records alone.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from study.config import StudyConfig, TaskPlan, config_to_dict
from study.models import effective_model_config

RECORD_SCHEMA = 1


@dataclasses.dataclass(frozen=True)
class Cell:
    """One trained model: a task plan, a model name, a seed and the lengths it trains on."""

    task: TaskPlan
    model: str
    seed: int
    train_lengths: tuple[int, ...]

    def describe(self) -> str:
        lengths = f"{self.train_lengths[0]}..{self.train_lengths[-1]}" if len(self.train_lengths) > 1 else str(self.train_lengths[0])
        return f"{self.task.name}/{self.model}/seed {self.seed}/train {lengths}"


def expand_grid(config: StudyConfig) -> list[Cell]:
    """Every cell of the study, in a stable order (task, training lengths, seed, model)."""
    cells = []
    for plan in config.tasks:
        groups = [plan.train_lengths] if config.regime == "mixed" else [(length,) for length in plan.train_lengths]
        for lengths in groups:
            for seed in config.seeds:
                for model in config.models:
                    cells.append(Cell(plan, model, seed, tuple(lengths)))
    return cells


def cell_identity(cell: Cell, config: StudyConfig, task_version: int) -> dict:
    """Everything the cell's result depends on (JSON-serialisable)."""
    return {
        "schema": RECORD_SCHEMA,
        "task": cell.task.name,
        "task_version": task_version,
        "task_options": dict(cell.task.options),
        "model": cell.model,
        "seed": cell.seed,
        "regime": config.regime,
        "train_lengths": list(cell.train_lengths),
        "eval_lengths": list(cell.task.eval_lengths),
        "model_config": dataclasses.asdict(effective_model_config(cell.model, config.model)),
        "train_config": dataclasses.asdict(config.train),
        "n_test": config.n_test,
        "backend": config.backend,
    }


def cell_id(identity: dict) -> str:
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
    return f"{identity['task']}-{identity['model']}-s{identity['seed']}-{digest}"


def versions() -> dict:
    """Versions of the packages that decide the numbers."""
    import babel
    import keras
    import numpy

    out = {"python": platform.python_version(), "keras": keras.__version__, "numpy": numpy.__version__, "babel": babel.__version__}
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow

        out["tensorflow"] = tensorflow.__version__
    elif backend == "jax":
        import jax

        out["jax"] = jax.__version__
    return out


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


def attention_example_length(plan: TaskPlan, lengths: tuple[int, ...]) -> int:
    """The evaluation length whose first test example is drawn as an attention map:
    the one nearest the middle of the training range."""
    middle = (min(lengths) + max(lengths)) / 2
    return min(plan.eval_lengths, key=lambda length: (abs(length - middle), length))


def run_cell(cell: Cell, config: StudyConfig, progress: bool = True) -> dict:
    """Trains and evaluates one cell; returns its record (status "ok" or "failed")."""
    import keras
    import numpy as np

    from study.data import make_splits
    from study.evaluate import decode, decode_steps, oracle_exact_match, score
    from study.models import build_model, get_model_spec
    from study.tasks import get_task
    from study.train import check_memory, estimate_training_bytes, train_model
    from study.vocab import Vocabulary

    started = time.perf_counter()
    task = get_task(cell.task.name, **dict(cell.task.options))
    identity = cell_identity(cell, config, task.version)
    record: dict[str, Any] = {
        "id": cell_id(identity),
        **identity,
        "attention": get_model_spec(cell.model).attention,
        "length_unit": task.length_unit,
        "profile": config.profile,
        "config": config_to_dict(config),
        "versions": versions(),
        "device": device_name(),
        "worker": {"host": platform.node(), "pid": os.getpid()},
        "status": "ok",
    }
    splits = make_splits(task, cell.train_lengths, cell.task.eval_lengths, config.train.n_train, config.train.n_validation, config.n_test, cell.seed)
    sv, tv = Vocabulary(task.input_alphabet), Vocabulary(task.output_alphabet)
    longest_source = max(len(s) for s in splits.train.sources)
    longest_target = max(len(t) for t in splits.train.targets)
    needed = estimate_training_bytes(effective_model_config(cell.model, config.model), config.train, longest_source, longest_target, tv.size, record["attention"])
    check_memory(needed, share=1 / config.workers, what=f"{cell.describe()} (sources up to {longest_source} and targets up to {longest_target} characters)")
    keras.utils.set_random_seed(cell.seed)
    model = build_model(cell.model, sv.size, tv.size, config.model)
    record["param_count"] = int(model.count_params())
    result = train_model(model, splits.train, splits.validation, sv, tv, config.train, seed=cell.seed, progress=progress, between_batches=_CtrlC.check)
    record.update(
        history=result.history,
        stop_reason=result.stop_reason,
        examples_seen=result.examples_seen,
        best_epoch=result.best_epoch,
        best_val_seq_acc=result.best_val_seq_acc,
        train_seconds=result.seconds,
    )
    if result.diverged:
        record.update(status="failed", error=result.stop_reason, metrics=[], wall_seconds=time.perf_counter() - started)
        return record
    eval_started = time.perf_counter()
    metrics = []
    map_length = attention_example_length(cell.task, cell.train_lengths)
    lo, hi = min(cell.train_lengths), max(cell.train_lengths)
    for length, test in splits.test.items():
        _CtrlC.check()
        t0 = time.perf_counter()
        predictions, weights = decode(model, test.sources, sv, tv, decode_steps(test.targets), with_attention=length == map_length)
        row = {
            "length": length,
            "in_training_range": lo <= length <= hi,
            **score(predictions, test.targets),
            "oracle_seq_acc": oracle_exact_match(model, test.sources, test.targets, sv, tv),
            "mean_source_tokens": float(np.mean([len(s) for s in test.sources])),
            "mean_target_tokens": float(np.mean([len(t) for t in test.targets])),
            "decode_seconds": time.perf_counter() - t0,
        }
        metrics.append(row)
        if length == map_length:
            record["attention_example"] = {
                "length": length,
                "source": test.sources[0],
                "target": test.targets[0],
                "prediction": predictions[0],
                # rows: output steps up to and including END; columns: source characters
                "weights": None if weights is None else np.round(weights[0, : len(predictions[0]) + 1, : len(test.sources[0])], 4).tolist(),
            }
    record.update(metrics=metrics, eval_seconds=time.perf_counter() - eval_started, wall_seconds=time.perf_counter() - started)
    return record


def write_json_atomic(path: Path, payload: Any) -> None:
    """Writes JSON to a temporary file in the same folder, syncs it, then renames it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=1, sort_keys=True, allow_nan=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_record(path: Path) -> dict | None:
    """A record, or None when the file is unreadable, belongs to another id, or is incomplete."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("schema") != RECORD_SCHEMA or record.get("id") != path.stem:
        return None
    if record.get("status") == "ok":
        lengths = [m.get("length") for m in record.get("metrics", []) if isinstance(m, dict)]
        if lengths != record.get("eval_lengths") or any("seq_acc" not in m for m in record["metrics"]):
            return None
    elif record.get("status") != "failed":
        return None
    return record


def study_cells(config: StudyConfig) -> list[tuple[Cell, str]]:
    """(cell, id) for every cell of the grid."""
    from study.tasks import get_task

    out = []
    for cell in expand_grid(config):
        version = get_task(cell.task.name, **dict(cell.task.options)).version
        out.append((cell, cell_id(cell_identity(cell, config, version))))
    return out


class StudyLockedError(RuntimeError):
    """Another process is running a study in the same results folder."""


class StudyInterrupted(KeyboardInterrupt):
    """Ctrl-C during a study; finished cells are saved."""

    def __init__(self, done: int, total: int) -> None:
        super().__init__(f"{done} of {total} cells done")
        self.done, self.total = done, total


class StudyLock:
    """An exclusive `flock` on `<out>/.lock`: the kernel drops it when its process dies,
    so a crashed study never leaves the folder locked."""

    def __init__(self, out: Path) -> None:
        self.path = Path(out) / ".lock"
        self.file = None

    def __enter__(self) -> "StudyLock":
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip() or "unknown"
            self.file.close()
            raise StudyLockedError(f"results folder {self.path.parent} is in use by another study (pid {holder}); wait for it or choose another --out") from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(str(os.getpid()))
        self.file.flush()
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()  # closing releases the lock


class _CtrlC:
    """Ctrl-C during a study. Training in this process checks `requested` between batches and
    stops there: a KeyboardInterrupt raised at an arbitrary point can land in a garbage-collector
    callback inside TensorFlow and be swallowed. A second Ctrl-C, or one while this process only
    waits for worker processes (`raise_now`), raises at once."""

    requested = False
    raise_now = False

    @classmethod
    def handler(cls, signum, frame) -> None:
        if cls.requested or cls.raise_now:
            raise KeyboardInterrupt
        cls.requested = True

    @classmethod
    def check(cls) -> None:
        """Raises KeyboardInterrupt at a safe point once Ctrl-C was pressed."""
        if cls.requested:
            raise KeyboardInterrupt


def run_cell_safely(cell: Cell, config: StudyConfig, progress: bool = True) -> dict:
    """`run_cell`, with any error inside the cell turned into a failed record, so the study goes on."""
    import traceback

    try:
        return run_cell(cell, config, progress)
    except Exception as exc:  # a failing cell must not take the study down
        if _CtrlC.requested:  # an interrupt that library code turned into another error
            raise KeyboardInterrupt from exc
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return failed_record(cell, config, f"{type(exc).__name__}: {message}", traceback.format_exc())


def failed_record(cell: Cell, config: StudyConfig, error: str, traceback_text: str = "") -> dict:
    """The record of a cell that could not finish: its identity, configuration and the error."""
    from study.tasks import get_task

    try:
        version = get_task(cell.task.name, **dict(cell.task.options)).version
    except Exception:
        version = None
    identity = cell_identity(cell, config, version)
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


def select_shard(grid: list[tuple[Cell, str]], shard: tuple[int, int] | None) -> list[tuple[Cell, str]]:
    """The cells of shard (I, N): those whose index i has i mod N == I, where i is the cell's rank
    among the grid's cell ids sorted.  The ids hash each cell's whole configuration, so the
    split is the same on every machine and run, and shards differ in size by at most one."""
    if shard is None:
        return grid
    index, count = shard
    rank = {cid: i for i, cid in enumerate(sorted(cid for _, cid in grid))}
    return [(cell, cid) for cell, cid in grid if rank[cid] % count == index]


def run_study(
    config: StudyConfig,
    out: Path,
    fresh: bool = False,
    progress: bool = True,
    on_record: Callable[[dict], None] | None = None,
    warn: Callable[[str], None] = lambda message: print(message, file=sys.stderr),
    shard: tuple[int, int] | None = None,
    executor: str = "local",
    address: str | None = None,
) -> list[dict]:
    """Runs every unfinished cell of `config` (of one shard, when given) and returns their records.

    Holds `<out>/.lock` while it runs; writes `<out>/study.json` (the configuration,
    the cell ids this run covers, the whole grid's ids and the shard) first, then
    each cell's record atomically as it finishes.  Finished cells are skipped
    unless `fresh`; a damaged record is reported through `warn` and recomputed;
    failed cells are retried.  `executor` "local" runs cells in this process or
    `config.workers` worker processes; "ray" runs them as Ray tasks (on the
    cluster at `address`, or on a local Ray instance).

    Raises:
        StudyLockedError: another study holds the folder.
        StudyInterrupted: Ctrl-C; every finished cell is saved.
        ExecutorError: the executor cannot start.
    """
    with StudyLock(out):
        return _run_locked(config, out, fresh, progress, on_record, warn, shard, executor, address)


def _run_locked(config, out, fresh, progress, on_record, warn, shard, executor, address) -> list[dict]:
    from tqdm.auto import tqdm

    from study.executors import run_local, run_ray
    from study.tasks import loaded_plugins

    cells_dir = out / "cells"
    cells_dir.mkdir(parents=True, exist_ok=True)
    for leftover in cells_dir.glob(".*.tmp"):  # a writer killed before its rename; never read as a record
        leftover.unlink(missing_ok=True)
    grid = study_cells(config)
    selected = select_shard(grid, shard)
    write_json_atomic(out / "study.json", {
        "config": config_to_dict(config),
        "cells": [cid for _, cid in selected],
        "grid": [cid for _, cid in grid],
        "shard": None if shard is None else f"{shard[0]}/{shard[1]}",
    })
    records: dict[str, dict] = {}
    todo = []
    for cell, cid in selected:
        path = cells_dir / f"{cid}.json"
        existing = None if fresh or not path.exists() else read_record(path)
        if path.exists() and not fresh and existing is None:
            warn(f"warning: record {path} is damaged or incomplete; recomputing {cell.describe()}")
        if existing is not None and existing.get("status") == "ok":
            records[cid] = existing
        else:
            todo.append((cell, cid))

    bar = tqdm(total=len(selected), initial=len(selected) - len(todo), desc="study", unit="cell", disable=not progress, dynamic_ncols=True)

    def finish(record: dict) -> None:
        write_json_atomic(cells_dir / f"{record['id']}.json", record)
        records[record["id"]] = record
        bar.update(1)
        if on_record is not None:
            on_record(record)
        _CtrlC.check()

    import signal
    import threading

    workers = min(config.workers, max(len(todo), 1))
    in_parent_only = executor == "ray" or workers > 1  # this process only waits for others
    _CtrlC.requested, _CtrlC.raise_now = False, in_parent_only
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, _CtrlC.handler) if in_main_thread else None
    try:
        if executor == "ray":
            if todo:
                run_ray(todo, config, loaded_plugins(), finish, address)
        elif workers == 1:
            for cell, _ in todo:
                bar.set_postfix_str(cell.describe())
                finish(run_cell_safely(cell, config, progress=progress))
        else:
            run_local(todo, config, workers, loaded_plugins(), finish)
    except KeyboardInterrupt:
        bar.close()
        raise StudyInterrupted(sum(r["status"] == "ok" for r in records.values()), len(selected)) from None
    finally:
        if in_main_thread:
            signal.signal(signal.SIGINT, previous)
    bar.close()
    return [records[cid] for _, cid in selected if cid in records]


def summary_line(record: dict) -> str:
    """One line per finished cell: where it stopped and its accuracy inside/beyond the trained range."""
    if record["status"] != "ok":
        return f"{record['task']}/{record['model']}/seed {record['seed']}: FAILED ({record.get('error')})"
    inside = [m["seq_acc"] for m in record["metrics"] if m["in_training_range"]]
    beyond = [m["seq_acc"] for m in record["metrics"] if not m["in_training_range"]]
    parts = [f"{record['task']}/{record['model']}/seed {record['seed']}:"]
    parts.append(f"exact-match {100 * sum(inside) / max(len(inside), 1):.1f}% in range")
    if beyond:
        parts.append(f"{100 * sum(beyond) / len(beyond):.1f}% beyond")
    parts.append(f"({record['stop_reason']} after {record['examples_seen']} examples, {record['wall_seconds']:.0f}s)")
    return " ".join(parts)
