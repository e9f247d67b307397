"""Deterministic, cached train/validation/test splits for a task.

    task = get_task("copy")
    splits = make_splits(task, train_lengths=range(4, 33), eval_lengths=[8, 64],
                         n_train=20000, n_validation=512, n_test=1000, seed=0)
    splits.train.sources[0], splits.train.targets[0], splits.train.lengths[0]
    splits.test[64]          # a Dataset of 1000 examples of length 64

Every split is a pure function of (task name, task version, task options,
the versions of outside data the task uses, lengths, size, seed, split name):
the random generator is seeded from a SHA-256 of that key (outside-data
versions aside, `_rng`), so the same key gives byte-identical data in any
process.  Splits
are cached under `datasets/` as `.npz` files of plain string arrays (never
pickle); the file name and a copy of the key inside it include the task
version and outside-data versions (e.g. CLDR), so a changed generator or
locale database never reads a stale cache, and a checksum of
the contents catches a damaged file, which is then regenerated.

Test sets are per evaluation length.  No source string of a test set appears in
the validation or training split, and none of the validation split appears in
the training split, by a fixed partition of the space of sources rather than by
looking at the other splits: a source's SHA-256 puts it in the test region
(20% of all sources), the validation region (10%) or the training region (70%),
and each split keeps only the draws that fall in its own region.  So what is
evaluated (`eval_lengths`, `n_test`) never changes a training example.

Test and validation sets hold distinct sources (drawn without replacement): a repeated item
would count as several independent trials and narrow the intervals.  Where a length has fewer
distinct sources in the split's region than asked (copy over "ab" at length 3), the set holds
all of them and is shorter than asked; the records give each set's size (`n_examples`).  The
training split draws with replacement, as a training stream does.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import zipfile
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from study.results import DISTINCT_ITEMS, json_digest, write_atomic
from study.tasks import Task
from study.tasks.base import check_sample

log = logging.getLogger(__name__)

DATASETS_DIR = Path(__file__).resolve().parent.parent / "datasets"
FORMAT_VERSION = 2  # bump when the layout of cache files or the way splits are drawn changes
MAX_REDRAW_ROUNDS = 200
# a distinct split stops short of its count once this many times (sources found / its share of
# sources) draws in a row found nothing new: for sources about as likely as each other, the chance
# that one source of the share is still missing is then below e^-20
SATURATION_DRAWS = 20
# splits whose sources are distinct (drawn without replacement); their keys say so as records do
DISTINCT_SPLITS = ("test", "validation")
# split-key fields that name the cache file but do not seed the draws (`_rng`)
NOT_DRAWN = ("items", "saturation_draws")
# the share of the space of sources each split draws from: [start, end) of a source's hash in [0, 1)
REGIONS = {"test": (0.0, 0.2), "validation": (0.2, 0.3), "train": (0.3, 1.0)}


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Parallel lists of examples.

    sources, targets: lists of strings (one example each).
    lengths: int array of shape (n,), each example's length in the task's `length_unit`.
    """

    sources: list[str]
    targets: list[str]
    lengths: np.ndarray

    def __len__(self) -> int:
        return len(self.sources)

    def select(self, index: np.ndarray | Sequence[int]) -> "Dataset":
        """The examples at `index`, in that order."""
        return Dataset(
            [self.sources[i] for i in index],
            [self.targets[i] for i in index],
            self.lengths[np.asarray(index, dtype=int)],
        )


@dataclasses.dataclass(frozen=True)
class Splits:
    """The data of one study cell: a mixed-length training set, a validation set drawn
    from the training lengths, and one test set per evaluation length."""

    train: Dataset
    validation: Dataset
    test: dict[int, Dataset]


def split_key(task: Task, split: str, lengths: Iterable[int], n: int, seed: int) -> dict:
    """The identity of one split (JSON-serialisable): nothing but its own settings.  Test and
    validation keys carry `"items": "distinct"` (see the module docstring); it names the cache
    file and leaves the random draws alone (`_rng`), so a distinct set is the old draw with its
    repeats replaced by the next new sources."""
    key = {
        "format": FORMAT_VERSION,
        "task": task.spec,
        "split": split,
        "lengths": sorted(int(x) for x in lengths),
        "n": int(n),
        "seed": int(seed),
    }
    if split in DISTINCT_SPLITS:
        key["items"] = DISTINCT_ITEMS
        key["saturation_draws"] = SATURATION_DRAWS
    return key


def source_region(source: str) -> float:
    """Where `source` falls in [0, 1): the first 8 bytes of its UTF-8 SHA-256, scaled."""
    return int.from_bytes(hashlib.sha256(source.encode()).digest()[:8], "big") / 2**64


def key_digest(key: dict) -> str:
    """A short stable hash of a split key."""
    return json_digest(key, 16)


def _rng(key: dict, *extra: int) -> np.random.Generator:
    """The generator of one split's draws: seeded by its key without the task's outside-data
    versions, so a locale whose dates two CLDR releases write alike gets the same data under
    both (the versions still tell the two datasets apart in the cache)."""
    draws = {**key, "task": {k: v for k, v in key["task"].items() if k != "data"}}
    for name in NOT_DRAWN:
        draws.pop(name, None)
    entropy = int.from_bytes(
        hashlib.sha256((json.dumps(draws, sort_keys=True) + repr(extra)).encode()).digest()[:16], "little"
    )
    return np.random.default_rng(entropy)


def _generate(task: Task, key: dict) -> Dataset:
    """Draws `key['n']` examples split evenly over `key['lengths']`, keeping only sources in the
    split's region (`REGIONS`; splits of other names draw from all sources).  A distinct split
    (`"items": "distinct"`) skips sources it already holds, and stops short of its count once
    `SATURATION_DRAWS` x (sources found / the region's share) draws in a row found nothing new:
    it then holds every source of that length in its region (each missed with a chance below
    e^-20 when the task draws its sources about equally often).

    Raises:
        ValueError: no source at all of some length falls in the split's region, or a split that
            allows repeats cannot be filled in `MAX_REDRAW_ROUNDS` rounds.
    """
    lengths = key["lengths"]
    n = key["n"]
    distinct = key.get("items") == DISTINCT_ITEMS
    lo, hi = REGIONS.get(key["split"], (0.0, 1.0))
    counts = [n // len(lengths) + (1 if i < n % len(lengths) else 0) for i in range(len(lengths))]
    sources: list[str] = []
    targets: list[str] = []
    example_lengths: list[int] = []
    for length, count in zip(lengths, counts):
        rng = _rng(key, length)
        got_s: list[str] = []
        got_t: list[str] = []
        seen: set[str] = set()
        rounds = idle_draws = 0
        while len(got_s) < count:
            if distinct and got_s:
                if idle_draws >= SATURATION_DRAWS * len(got_s) / (hi - lo):
                    break  # every source of the region found
            elif rounds >= MAX_REDRAW_ROUNDS:
                break
            draws = int((count - len(got_s)) / (hi - lo)) + 8  # about enough for one round
            sample = task.sample(rng, draws, length)
            check_sample(task, sample, draws, length, key["split"])  # every generated example keeps the task contract
            before = len(got_s)
            for src, tgt in zip(*sample):
                if lo <= source_region(src) < hi and not (distinct and src in seen):
                    seen.add(src)
                    got_s.append(src)
                    got_t.append(tgt)
            idle_draws = idle_draws + draws if len(got_s) == before else 0
            rounds += 1
        if not got_s or (len(got_s) < count and not distinct):
            found = "no source" if not got_s else f"only {len(got_s)} distinct sources"
            raise ValueError(
                f"task {task.name!r}: {found} of length {length} in the {100 * (hi - lo):.0f}% of sources reserved for "
                f"{key['split']} examples ({count} asked); use longer lengths or more symbols"
            )
        if len(got_s) < count:
            log.info(
                "task %r: %d distinct %s sources of length %d exist in that split's share (asked %d); the set holds all of them",
                task.name,
                len(got_s),
                key["split"],
                length,
                count,
            )
        sources += got_s[:count]
        targets += got_t[:count]
        example_lengths += [length] * min(count, len(got_s))
    return Dataset(sources, targets, np.asarray(example_lengths, dtype=np.int32))


def _checksum(sources: Sequence[str], targets: Sequence[str], lengths: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update("\x00".join(sources).encode())
    h.update(b"\x01")
    h.update("\x00".join(targets).encode())
    h.update(b"\x01")
    h.update(np.ascontiguousarray(lengths, dtype=np.int32).tobytes())
    return h.hexdigest()


def cache_path(task: Task, key: dict, cache_dir: Path) -> Path:
    """datasets/<task>-v<version>/<split>-<digest>.npz"""
    return Path(cache_dir) / f"{task.name}-v{task.version}" / f"{key['split']}-{key_digest(key)}.npz"


def _read_cache(path: Path, key: dict) -> Dataset | None:
    """The cached dataset, or None when the file is missing, damaged or belongs to another key."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            stored_key = json.loads(str(f["key"]))
            sources = f["sources"].tolist()
            targets = f["targets"].tolist()
            lengths = f["lengths"].astype(np.int32)
            checksum = str(f["checksum"])
        if stored_key != key:
            raise ValueError("its key does not match")
        size = {len(sources), len(targets), len(lengths)}
        if (
            len(size) != 1
            or not (0 < size.pop() <= key["n"])
            or (key.get("items") != DISTINCT_ITEMS and len(sources) != key["n"])
        ):
            raise ValueError("it holds the wrong number of examples")
        if _checksum(sources, targets, lengths) != checksum:
            raise ValueError("its checksum does not match its contents")
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        log.warning("dataset cache %s is damaged (%s); regenerating it", path, exc)
        return None
    return Dataset(sources, targets, lengths)


def _write_cache(path: Path, key: dict, data: Dataset) -> None:
    """Writes the split as a compressed .npz, atomically (`study.results.write_atomic`)."""
    write_atomic(
        path,
        lambda f: np.savez_compressed(
            f,
            key=np.asarray(json.dumps(key, sort_keys=True)),
            sources=np.asarray(data.sources, dtype=str),
            targets=np.asarray(data.targets, dtype=str),
            lengths=data.lengths.astype(np.int32),
            checksum=np.asarray(_checksum(data.sources, data.targets, data.lengths)),
        ),
    )


def load_split(
    task: Task, split: str, lengths: Iterable[int], n: int, seed: int, cache_dir: Path | str | None = DATASETS_DIR
) -> tuple[dict, Dataset]:
    """Returns (key, dataset) for one split, from the cache when it is there and sound.

    Args:
        split: "train", "validation" or "test" draw from their own regions of the sources
            (`REGIONS`); any other name draws from all of them.
        cache_dir: folder of the cache; None disables caching.
    """
    lengths = sorted(set(int(x) for x in lengths))
    if not lengths:
        raise ValueError(f"task {task.name!r}: a {split} split needs at least one length")
    for length in lengths:
        task.check_length(length)
    key = split_key(task, split, lengths, n, seed)
    path = cache_path(task, key, Path(cache_dir)) if cache_dir is not None else None
    data = _read_cache(path, key) if path is not None else None
    if data is None:
        data = _generate(task, key)
        if path is not None:
            _write_cache(path, key, data)
    return key, data


def make_splits(
    task: Task,
    train_lengths: Iterable[int],
    eval_lengths: Iterable[int],
    n_train: int,
    n_validation: int,
    n_test: int,
    seed: int,
    cache_dir: Path | str | None = DATASETS_DIR,
) -> Splits:
    """A training set of `n_train` examples over the training lengths, a validation set of
    `n_validation` examples per training length, and a test set of `n_test` examples per
    evaluation length; each depends only on its own settings (see the module docstring)."""
    train, validation = training_splits(task, train_lengths, n_train, n_validation, seed, cache_dir)
    return Splits(train=train, validation=validation, test=test_splits(task, eval_lengths, n_test, seed, cache_dir))


def training_splits(
    task: Task,
    train_lengths: Iterable[int],
    n_train: int,
    n_validation: int,
    seed: int,
    cache_dir: Path | str | None = DATASETS_DIR,
) -> tuple[Dataset, Dataset]:
    """(train, validation): `n_train` examples over the training lengths and `n_validation` per length."""
    train_lengths = sorted(set(train_lengths))
    _, train = load_split(task, "train", train_lengths, n_train, seed, cache_dir=cache_dir)
    _, validation = load_split(
        task, "validation", train_lengths, n_validation * len(train_lengths), seed, cache_dir=cache_dir
    )
    return train, validation


def test_splits(
    task: Task, eval_lengths: Iterable[int], n_test: int, seed: int, cache_dir: Path | str | None = DATASETS_DIR
) -> dict[int, Dataset]:
    """One test set of `n_test` distinct examples per evaluation length (all of them where a length
    has fewer), {length: Dataset}, in length order."""
    return {
        length: load_split(task, "test", [length], n_test, seed, cache_dir=cache_dir)[1]
        for length in sorted(set(eval_lengths))
    }
