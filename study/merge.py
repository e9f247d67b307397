"""Merge the results folders of several shards or machines into one folder, then report on it.

    merged, missing = merge_results([Path("results/full-0"), Path("results/full-1")], Path("results/full"))

Cells are matched by id (a hash of everything a cell depends on).  The same
cell in two folders is fine when both records hold the same results (timings,
device and versions may differ); a finished record wins over a failed one;
two finished records with different results are a conflict, reported and
nothing is written.  Cells of the studies' grids that no folder holds are
returned as `missing` (a shard that was not run, or not finished).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from study.files import write_json_atomic
from study.records import StudyLock, load_records, read_manifest


class MergeConflictError(ValueError):
    """The same cell finished with different results in two folders."""


def result_fingerprint(record: dict) -> tuple:
    """What two runs of one cell must agree on: the status and every per-length metric."""
    metrics = tuple((m["length"], m["n_examples"], m["seq_acc"], m["char_acc"]) for m in record.get("metrics", []))
    return record["status"], metrics


def merge_results(sources: list[Path], out: Path, warn: Callable[[str], None] = print) -> tuple[list[dict], list[str]]:
    """Copies the records of `sources` into `out/cells/` and writes `out/study.json` naming them all.

    Returns (the merged records, ids of grid cells no folder holds).
    Raises MergeConflictError (nothing written) when a cell's results differ
    between folders, and records.NoResultsError for a folder without records.
    """
    chosen: dict[str, tuple[dict, Path]] = {}
    grid: dict[str, None] = {}  # ordered set of every source's grid
    conflicts = []
    config = None
    for source in map(Path, sources):
        manifest = read_manifest(source) or {}
        config = config or manifest.get("config")
        records = load_records(source)
        for cid in manifest.get("grid") or manifest.get("cells") or [r["id"] for r in records]:
            grid[cid] = None
        for record in records:
            grid[record["id"]] = None
            previous = chosen.get(record["id"])
            if previous is None or (previous[0]["status"] != "ok" and record["status"] == "ok"):
                chosen[record["id"]] = (record, source)
            elif record["status"] == "ok" and result_fingerprint(record) != result_fingerprint(previous[0]):
                conflicts.append(f"{record['id']} ({previous[1]} vs {source})")
    if conflicts:
        shown = "; ".join(conflicts[:3]) + (f"; and {len(conflicts) - 3} more" if len(conflicts) > 3 else "")
        raise MergeConflictError(
            f"{len(conflicts)} cell(s) finished with different results in different folders: {shown}; "
            "delete the record you do not trust (<folder>/cells/<id>.json) and merge again"
        )
    ids = [cid for cid in grid if cid in chosen]
    missing = [cid for cid in grid if cid not in chosen]
    out = Path(out)
    with StudyLock(out):
        for cid in ids:
            target = out / "cells" / f"{cid}.json"
            if chosen[cid][1].resolve() != out.resolve():
                write_json_atomic(target, chosen[cid][0])
        write_json_atomic(
            out / "study.json",
            {
                "config": config,
                "cells": ids,
                "grid": list(grid),
                "shard": None,
                "merged_from": [str(s) for s in sources],
            },
        )
    if missing:
        warn(
            f"warning: {len(missing)} of {len(grid)} cells of the grid have no record in any folder (a shard not run or not finished?): "
            + ", ".join(missing[:5])
            + (" ..." if len(missing) > 5 else "")
        )
    return [chosen[cid][0] for cid in ids], missing
