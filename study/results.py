"""The results folder, read and written in one place: atomic writes, the records and their
schema, the folder lock, merging folders, and the trained models a finished study saved.

    write_atomic(path, lambda f: f.write(b"..."))   # temporary file, fsync, rename
    write_json_atomic(out / "cells" / f"{record['id']}.json", record)
    write_text_atomic(path, "text")                    # UTF-8, whatever the locale
    read_text(path)                                    # UTF-8 whatever the locale, or NotUTF8Error
    check_writable(folder)                             # OutputError naming the folder and the cause
    json_digest({"a": 1}, 12)                          # 'f2b0...' (SHA-256 of sorted-key JSON)
    record = read_record(path)      # None when damaged, incomplete or of another schema
    records = load_records(out)     # the latest run's records (study.json), or every one
    manifest = read_manifest(out)   # study.json, or None
    with StudyLock(out): ...        # one study per folder
    cell_paths(out, cid)            # where a cell keeps its backup, model and logs
    merged, missing = merge_results([Path("results/full-0"), Path("results/full-1")], Path("results/full"))
    rows = predict(Path("results/standard"), "copy", "additive", 0, ["abcdefgh"])
    # [{"source": "abcdefgh", "prediction": "abcdefgh", "target": "abcdefgh", "exact": True}]

Files.  A file written atomically is either absent (or its previous version) or complete:
a process killed at any point leaves at most a `.<name>.*.tmp` file beside it,
which no reader takes for the real one. A file that cannot be written (no space left, a
read-only file system, no permission) raises `OutputError`, whose message names the file and
the cause, and leaves the previous version in place.  The data cache (`study.data`) and the
training backups (`study.train`) are written with the same helpers.

Every text file the study reads or writes is UTF-8, whatever the locale says.

Records.  A record (`cells/<id>.json`) holds one cell's full configuration, task version,
parameter count, training history, stop reason, per-length metrics (with the
`metrics_version` of `study.evaluate` that computed them), an attention map,
timings, package versions, backend, float dtype (`floatx`), thread layout (`threads`),
device and the worker that ran it.

Merging.  Cells are matched by id (a hash of everything a cell depends on).  The same
cell in two folders is fine when both records hold the same results (timings,
device and versions may differ); a finished record wins over a failed one;
two finished records with different results are a conflict, reported and
nothing is written.  Cells of the studies' grids that no folder holds are
returned as `missing` (a shard that was not run, or not finished).

Trained models.  Each finished cell saves its model as `<out>/models/<cell id>.keras`
(`cell_paths`), with its alphabets; `load_cell_model` loads one (`study.models.load_trained`)
and `predict` asks it about new inputs.  `study.cell.rescore` scores every saved model again
through this module (it regenerates each cell's test sets, so it sits above `study.data` and
`study.cell`, which import this module).

This module imports no other module of the study at its top; the few its functions import
(`study.tasks`, `study.models`, `study.evaluate`, `study.fonts`) import nothing from it, so
imports run one way.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

# Files: atomic writes, UTF-8 text, digests


class NotUTF8Error(ValueError):
    """A text file the study reads that is not UTF-8; the message names the file."""


class OutputError(OSError):
    """A file or folder of the study's output that cannot be written; the message names the path
    and the cause (no space left on device, read-only file system, ...)."""


def _cause(exc: OSError) -> str:
    return exc.strerror or str(exc)


def make_folder(folder: Path) -> None:
    """Creates `folder` and its parents; `OutputError` when it cannot (a symbolic link to
    nowhere on the way, a file in its place, a read-only file system, ...)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        link = next((p for p in (folder, *folder.parents) if p.is_symlink() and not p.exists()), None)
        if link is not None:
            raise OutputError(
                f"cannot create {folder}: {link} is a symbolic link to {os.readlink(link)}, which does not exist"
            ) from None
        raise OutputError(f"cannot create {folder}: {_cause(exc)}") from None


def check_writable(folder: Path) -> None:
    """`OutputError` naming `folder` and the cause when no file can be created in it (a read-only
    file system, no permission, no inode left): a probe file is created there and removed."""
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-check.", suffix=".tmp")
    except OSError as exc:
        raise OutputError(f"cannot write in {folder}: {_cause(exc)}") from None
    os.close(fd)
    os.unlink(probe)


def write_atomic(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Calls `write` on a temporary binary file in `path`'s folder, syncs it, then renames it
    over `path` with the mode any new file gets (0666 less the umask: 0644 under the usual 022,
    like every other output; a temporary file would keep 0600); on any error the temporary file
    is removed and the error raised, an `OSError` as `OutputError` naming `path`."""
    path = Path(path)
    make_folder(path.parent)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.fchmod(fd, new_file_mode())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, OutputError):
            raise OutputError(f"cannot write {path}: {_cause(exc)}") from exc
        raise


def new_file_mode() -> int:
    """The mode `open()` gives a new file: 0o666 less the process's umask (read from
    /proc/self/status where Linux gives it, so the umask is never changed, even briefly)."""
    try:
        for line in Path("/proc/self/status").read_text(encoding="utf-8").splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0)  # elsewhere: read it by setting it, and put it back at once
    os.umask(mask)
    return 0o666 & ~mask


def write_json_atomic(path: Path, payload: Any) -> None:
    """`payload` as indented JSON with sorted keys, written with `write_atomic`."""
    data = json.dumps(payload, indent=1, sort_keys=True, allow_nan=True).encode()
    write_atomic(path, lambda f: f.write(data))


def write_text_atomic(path: Path, text: str) -> None:
    """`text` encoded as UTF-8, written with `write_atomic`."""
    data = text.encode("utf-8")
    write_atomic(path, lambda f: f.write(data))


def read_text(path: Path) -> str:
    """The text of `path` decoded as UTF-8 (a leading byte-order mark dropped), whatever the
    locale; `NotUTF8Error` naming the file and the first byte that is not UTF-8."""
    try:
        return Path(path).read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise NotUTF8Error(
            f"{path} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); save it as UTF-8"
        ) from None


def remove_leftovers(folder: Path) -> None:
    """Removes the temporary files of writers killed before their rename."""
    for leftover in Path(folder).glob(".*.tmp"):
        leftover.unlink(missing_ok=True)


def json_digest(payload: Any, length: int = 16) -> str:
    """The first `length` hex digits of the SHA-256 of `payload` as JSON with sorted keys."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:length]


# Records: schema, validation on read, the manifest, where a cell keeps its files

RECORD_SCHEMA = 1
# a record's `test_items` when its test and validation sets held distinct sources (`study.data`);
# records made before that was so lack the field: their sets were drawn with replacement
DISTINCT_ITEMS = "distinct"


def in_training_range(length: int, train_lengths) -> bool:
    """Whether an evaluation length lies inside the range a cell was trained on."""
    return min(train_lengths) <= length <= max(train_lengths)


def read_record(path: Path) -> dict | None:
    """A record, or None when the file is unreadable, belongs to another id, or is incomplete."""
    try:
        record = json.loads(read_text(path))
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


class NoResultsError(ValueError):
    """A results folder without any readable cell record."""


def read_manifest(out: Path) -> dict | None:
    """`<out>/study.json` (config, the cells of the latest run, the whole grid, the shard), or None
    when it is missing or unreadable."""
    try:
        manifest = json.loads(read_text(Path(out) / "study.json"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and isinstance(manifest.get("cells"), list) else None


def load_records(out: Path, every: bool = False) -> list[dict]:
    """The records of the latest study in `out` (those study.json names: its cells, then the
    records of its settings under other seeds that earlier runs left), or every record in
    `out/cells` (`every`, or when study.json is missing)."""
    out = Path(out)
    cells_dir = out / "cells"
    if not cells_dir.is_dir():
        variants = sorted(p.parent.name for p in out.glob("*/cells"))
        if variants:  # a config file's variants, each in its own folder, reported together once all finish
            raise NoResultsError(
                f"{out} holds the folders of variants ({', '.join(variants)}), not yet reported together; "
                f"run the same command again to finish the study, or give one variant's folder, e.g. {out / variants[0]}"
            )
        raise NoResultsError(f"{out} holds no study results (no cells/ folder); run a study with --out {out} first")
    manifest = read_manifest(out)
    paths = (
        [cells_dir / f"{i}.json" for i in [*manifest["cells"], *(manifest.get("other_seeds") or [])]]
        if manifest is not None and not every
        else sorted(cells_dir.glob("*.json"))
    )
    records = [r for r in (read_record(p) for p in paths if p.exists()) if r is not None]
    if not records:
        raise NoResultsError(f"{out} holds no finished cell records; run a study with --out {out} first")
    return records


def cell_paths(out: Path | None, cid: str) -> dict[str, Path | None]:
    """Where a cell keeps its files under the results folder `out` (None: nowhere): its training
    backup (`backups/<id>/`, removed once its record is written), its trained model
    (`models/<id>.keras`) and, on request, its TensorBoard logs (`logs/<id>/`)."""
    if out is None:
        return {"backup": None, "model": None, "logs": None}
    out = Path(out)
    return {"backup": out / "backups" / cid, "model": out / "models" / f"{cid}.keras", "logs": out / "logs" / cid}


# The folder lock: one study per results folder


class StudyLockedError(RuntimeError):
    """The results folder cannot be locked: another process is running a study in it, or its
    file system has no `flock` (Lustre, some NFS mounts)."""


class StudyLock:
    """An exclusive `flock` on `<out>/.lock`: the kernel drops it when its process dies,
    so a crashed study never leaves the folder locked."""

    def __init__(self, out: Path) -> None:
        self.path = Path(out) / ".lock"
        self.file = None

    def __enter__(self) -> "StudyLock":
        import fcntl

        make_folder(self.path.parent)
        created = not os.path.lexists(self.path)
        try:
            self.file = open(self.path, "a+", encoding="utf-8")
        except OSError as exc:
            raise OutputError(f"cannot write {self.path}: {_cause(exc)}") from None
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip() or "unknown"
            self.file.close()
            raise StudyLockedError(
                f"results folder {self.path.parent} is in use by another study (pid {holder}); wait for it or choose another --out"
            ) from None
        except OSError as exc:  # ENOSYS, EOPNOTSUPP, ENOLCK: a file system without flock (Lustre, some NFS)
            self.file.close()
            if created:
                self.path.unlink(missing_ok=True)
            raise StudyLockedError(
                f"results folder {self.path.parent} cannot be locked: flock does not work on its file system "
                f"({_cause(exc)}); give a folder on a local disk (--out), then copy it where you want it"
            ) from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(str(os.getpid()))
        self.file.flush()
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()  # closing releases the lock


# Merging the results folders of several shards or machines into one folder


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
    between folders, and NoResultsError for a folder without records.
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


# Trained models of a finished study: found, loaded and asked about new inputs


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
    path = Path(out) / record["model_file"] if "model_file" in record else cell_paths(out, record["id"])["model"]
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
