"""Expand a study into cells, run the ones not yet done, and write one record per cell.

    cells = expand_grid(config)            # one Cell per (task, model, seed[, training length])
    run_study(config, Path("results/standard"))

A cell is trained and evaluated by `study.cell.run_cell`, which returns its
record (`study.results`), saves its model under `<out>/models/` and keeps a
training backup under `<out>/backups/` until its record is written (a killed
study resumes a cell from its last finished epoch).  Records are written atomically to
`<out>/cells/<cell id>.json`; the id is a hash of everything the cell depends
on, so a finished cell is skipped on a re-run (unless `fresh`) and a changed
setting makes new cells instead of mixing with old ones.  `<out>/study.json`
names the cells of the latest run; `metrics.csv` and the report are drawn from
the records alone.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
from pathlib import Path
from typing import Callable

from study.cell import Cell, Interrupt, cell_id, cell_identity, failed_record
from study.config import StudyConfig, config_to_dict
from study.executors import run_cells
from study.results import (
    DISTINCT_ITEMS,
    StudyLock,
    cell_paths,
    json_digest,
    make_folder,
    read_record,
    remove_leftovers,
    write_json_atomic,
)
from study.text import one_line


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


def study_cells(config: StudyConfig) -> list[tuple[Cell, str]]:
    """(cell, id) for every cell of the grid; each task is built once."""
    return [(cell, cell_id(identity)) for cell, identity in _identities(config)]


def _identities(config: StudyConfig) -> list[tuple[Cell, dict]]:
    """(cell, identity) for every cell of the grid (`study.cell.cell_identity`); each task is built once."""
    tasks = {id(plan): plan.build() for plan in config.tasks}
    return [(cell, cell_identity(cell, config, tasks[id(cell.task)])) for cell in expand_grid(config)]


def settings_key(identity: dict, fields) -> str:
    """What a cell's identity (or its record, which holds it) says besides the seed, as a hash
    over `fields` (the identity's keys): records of one study under other seeds share it."""
    return json_digest({k: identity.get(k) for k in fields if k != "seed"}, 16)


def other_seeds(config: StudyConfig, cells_dir: Path, ids: list[str]) -> list[str]:
    """Of the record ids `ids` in `cells_dir` (records outside this run's grid), those of this
    study's settings under other seeds: a study re-run with `--seeds 2,3` after `0,1` is one
    study of four seeds.  Damaged records and records whose held-out sets were drawn with
    replacement (made before they held distinct sources) are left out."""
    identities = [identity for _, identity in _identities(config)]
    if not identities or not ids:
        return []
    fields = list(identities[0])
    ours = {settings_key(identity, fields) for identity in identities}
    found = []
    for cid in ids:
        record = read_record(cells_dir / f"{cid}.json")
        if record is None or (record["status"] == "ok" and record.get("test_items") != DISTINCT_ITEMS):
            continue
        if settings_key(record, fields) in ours:
            found.append(cid)
    return found


def _cell_key(task: str, model: str, seed: int, train_lengths) -> tuple:
    """What tells a grid's cells apart, as both a `Cell` and its record hold it."""
    return task, model, int(seed), tuple(int(x) for x in train_lengths)


class StudyInterrupted(KeyboardInterrupt):
    """Ctrl-C during a study; finished cells are saved."""

    def __init__(self, done: int, total: int) -> None:
        super().__init__(f"{done} of {total} cells done")
        self.done, self.total = done, total


def select_shard(grid: list[tuple[Cell, str]], shard: tuple[int, int] | None) -> list[tuple[Cell, str]]:
    """The cells of shard (I, N): those whose index i has i mod N == I, where i is the cell's rank
    among the grid's cells sorted by a hash of the cell as the command states it (task, lengths,
    options as written, model, seed).  Nothing of the machine enters it (cell ids hold the task's
    data versions, which another Babel changes), so the split is the same on every machine and
    run, whatever order the grid is listed in, and shards differ in size by at most one."""
    if shard is None:
        return grid
    index, count = shard
    keys = [json_digest(dataclasses.asdict(cell), 16) for cell, _ in grid]
    rank = {key: i for i, key in enumerate(sorted(keys))}
    return [pair for pair, key in zip(grid, keys) if rank[key] % count == index]


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
    each cell's record atomically as it finishes (`save_record`).  Finished cells are
    skipped unless `fresh`; a damaged record is reported through `warn` and recomputed;
    failed cells are retried.  `executor` "local" runs cells in this process or
    `config.workers` worker processes; "ray" runs them as Ray tasks (on the
    cluster at `address`, or on a local Ray instance): `study.executors.run_cells`.

    Raises:
        StudyLockedError: another study holds the folder.
        StudyInterrupted: Ctrl-C; every finished cell is saved.
        ExecutorError: the executor cannot start.
    """
    from tqdm.auto import tqdm

    with StudyLock(out):
        selected, records, todo = plan_run(config, out, fresh, shard, warn)
        if progress and records:
            print(f"resuming: {len(records)} of {len(selected)} cells done in {out}; {len(todo)} to run", flush=True)
        bar = tqdm(
            total=len(selected),
            initial=len(records),
            desc="study",
            unit="cell",
            disable=not progress or not sys.stderr.isatty(),
            dynamic_ncols=True,
        )
        asked = {
            _cell_key(cell.task.name, cell.model, cell.seed, cell.train_lengths): (cell, cid) for cell, cid in todo
        }

        def finish(record: dict) -> None:
            record = save_record(record, out, config, asked)
            records[record["id"]] = record
            bar.update(1)
            if on_record is not None:
                on_record(record)

        try:
            with Interrupt.handled():
                run_cells(
                    todo,
                    config,
                    finish,
                    executor,
                    address,
                    out,
                    progress,
                    starting=lambda cell: bar.set_postfix_str(cell.describe()),
                )
        except KeyboardInterrupt:
            raise StudyInterrupted(sum(r["status"] == "ok" for r in records.values()), len(selected)) from None
        finally:
            bar.close()
    return [records[cid] for _, cid in selected if cid in records]


def plan_run(
    config: StudyConfig, out: Path, fresh: bool, shard: tuple[int, int] | None, warn: Callable[[str], None]
) -> tuple[list[tuple[Cell, str]], dict[str, dict], list[tuple[Cell, str]]]:
    """What a run of `config` in `out` has to do: the (cell, id) pairs it covers, the records of
    those already finished (by id; none when `fresh`) and the pairs left to run.  Writes
    `<out>/study.json` (with the records of this study's settings under other seeds, which the
    report includes: `other_seeds`), removes half-written records and warns about damaged ones
    and about records of other grids in the folder."""
    cells_dir = out / "cells"
    make_folder(cells_dir)
    remove_leftovers(cells_dir)  # writers killed before their rename; never read as records
    grid = study_cells(config)
    selected = select_shard(grid, shard)
    others = sorted(set(p.stem for p in cells_dir.glob("*.json")) - {cid for _, cid in grid})
    seeds_before = other_seeds(config, cells_dir, others) if shard is None else []
    write_json_atomic(
        out / "study.json",
        {
            "config": config_to_dict(config),
            "cells": [cid for _, cid in selected],
            "grid": [cid for _, cid in grid],
            "shard": None if shard is None else f"{shard[0]}/{shard[1]}",
            "other_seeds": seeds_before,
        },
    )
    records: dict[str, dict] = {}
    todo = []
    for cell, cid in selected:
        path = cells_dir / f"{cid}.json"
        existing = None if fresh or not path.exists() else read_record(path)
        if path.exists() and not fresh and existing is None:
            warn(f"warning: record {path} is damaged or incomplete; recomputing {cell.describe()}")
        if existing is not None and existing.get("status") == "ok":
            if existing.get("test_items") == DISTINCT_ITEMS:
                records[cid] = existing
                continue
            # made before held-out sets held distinct sources: same id, other validation and test sets
            warn(
                f"note: record {path} was made with test and validation sets drawn with replacement; recomputing {cell.describe()}"
            )
        todo.append((cell, cid))
    if seeds_before:
        warn(
            f"note: {out} also holds {len(seeds_before)} record(s) of this study's settings under other seeds; "
            "the report covers them with this run's cells"
        )
    others = [cid for cid in others if cid not in set(seeds_before)]
    if others:
        warn(
            f"note: {out} also holds {len(others)} record(s) of other grids (earlier runs with other settings); "
            f"this run's report covers its own {len(selected) + len(seeds_before)} cells only; "
            f"`python run_study.py report {out} --all` reports every record"
        )
    return selected, records, todo


def save_record(record: dict, out: Path, config: StudyConfig, asked: dict[tuple, tuple[Cell, str]]) -> dict:
    """Writes a finished cell's record to `<out>/cells/<id>.json` (atomically) and returns it.

    `asked` maps each cell's key (task, model, seed, training lengths) to the (cell, id) this
    run expects.  A record under another id is written as a failed record of the expected cell:
    the worker could not build the task (its error is kept), or its package versions gave the
    cell another identity (e.g. another Babel's date data).  Once a record is ok, the cell's
    training backup is deleted, and `<out>/backups/` with it when no other cell is training.
    """
    cell, cid = asked.get(
        _cell_key(record["task"], record["model"], record["seed"], record["train_lengths"]), (None, record["id"])
    )
    if record["id"] != cid:
        unbuilt = record["status"] == "failed" and record.get("task_version") is None
        cause = (
            record["error"]
            if unbuilt
            else (
                f"the worker made cell {record['id']} (task data {record.get('task_data')}) instead of {cid}: its package versions "
                f"(e.g. Babel) differ from this machine's; run every worker with the same versions. {record.get('error') or ''}"
            ).strip()
        )
        record = failed_record(cell, config, cause, record.get("traceback", ""))
    write_json_atomic(out / "cells" / f"{record['id']}.json", record)
    if record["status"] == "ok":  # its record is safe: the training backup is no longer needed
        backup = cell_paths(out, record["id"])["backup"]
        shutil.rmtree(backup, ignore_errors=True)
        try:
            backup.parent.rmdir()  # only when empty: no cell in training, no backups/ folder
        except OSError:
            pass  # another cell is training (or the folder was never made)
    return record


def summary_line(record: dict) -> str:
    """One line per finished cell: where it stopped, and its exact match at its longest trained
    length and at the first length beyond the trained range, numbers the report's per-length
    tables and metrics.csv hold for that seed ('copy/dot/seed 0: exact-match 59.0% at 5
    symbols (longest trained), 0.0% at 8 (first beyond) (budget, ...)')."""
    if record["status"] != "ok":
        return f"{record['task']}/{record['model']}/seed {record['seed']}: FAILED ({one_line(record.get('error'))})"
    inside = [m for m in record["metrics"] if m["in_training_range"]]
    beyond = [m for m in record["metrics"] if m["length"] > max(record["train_lengths"])]
    unit = record.get("length_unit", "")
    parts = [f"{record['task']}/{record['model']}/seed {record['seed']}: exact-match"]
    shown = []
    if inside:
        longest = max(inside, key=lambda m: m["length"])
        shown.append(
            f"{100 * longest['seq_acc']:.1f}% at {longest['length']}{' ' + unit if unit else ''} (longest trained)"
        )
    if beyond:
        first = min(beyond, key=lambda m: m["length"])
        shown.append(f"{100 * first['seq_acc']:.1f}% at {first['length']} (first beyond)")
    parts.append(", ".join(shown) or "not evaluated")
    unfinished = ", not converged" if record.get("converged") is False else ""
    parts.append(
        f"({record['stop_reason']}{unfinished} after {record['examples_seen']} examples, {record['wall_seconds']:.0f}s)"
    )
    return " ".join(parts)
