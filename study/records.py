"""The results folder's records: schema, validation on read, and the folder lock.

    write_json_atomic(out / "cells" / f"{record['id']}.json", record)   # study.files
    record = read_record(path)      # None when damaged, incomplete or of another schema
    records = load_records(out)     # the latest run's records (study.json), or every one
    manifest = read_manifest(out)   # study.json, or None
    with StudyLock(out): ...        # one study per folder

A record (`cells/<id>.json`) holds one cell's full configuration, task version,
parameter count, training history, stop reason, per-length metrics (with the
`metrics_version` of `study.evaluate` that computed them), an attention map,
timings, package versions, backend, float dtype (`floatx`), thread layout (`threads`),
device and the worker that ran it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from study.files import OutputError, make_folder, read_text

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
            raise OutputError(f"cannot write {self.path}: {exc.strerror or exc}") from None
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
                f"({exc.strerror or exc}); give a folder on a local disk (--out), then copy it where you want it"
            ) from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(str(os.getpid()))
        self.file.flush()
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()  # closing releases the lock


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
