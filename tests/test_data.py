"""Vocabulary round trips, deterministic splits, held-out deduplication and the dataset cache."""

import itertools
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from study import data
from study.tasks import get_task
from study.vocab import END, INVALID, PAD, START, Vocabulary, pad


@given(st.text(alphabet="abcdefgh-0123 ", max_size=30))
def test_vocab_round_trip(text):
    vocab = Vocabulary("abcdefgh-0123 ")
    assert vocab.decode(vocab.encode(text)) == text + INVALID  # no END: never a clean prediction
    assert vocab.decode(vocab.encode(text) + [END, 5, 6]) == text


def test_vocab_batches_are_right_padded():
    vocab = Vocabulary("abc")
    batch = vocab.encode_batch(["ab", "c"], start=True, end=True)
    assert batch.tolist() == [[START, 3, 4, END], [START, 5, END, PAD]]
    assert batch.dtype == np.int32
    assert vocab.decode_batch(batch[:, 1:]) == ["ab", "c"]
    assert pad([[3], [4, 5]], 4).tolist() == [[3, 0, 0, 0], [4, 5, 0, 0]]
    with pytest.raises(ValueError, match="not in the vocabulary"):
        vocab.encode("abz")
    assert Vocabulary(get_task("date_format").output_alphabet).size == 12 + 3


def _splits(task, cache_dir, seed=0):
    return data.make_splits(
        task,
        train_lengths=[1, 2, 3],
        eval_lengths=[2, 5],
        n_train=600,
        n_validation=60,
        n_test=100,
        seed=seed,
        cache_dir=cache_dir,
    )


@pytest.mark.parametrize("name", ["copy", "date_format"])
def test_splits_are_deterministic_and_disjoint(tmp_path, name):
    task = get_task(name)
    a = _splits(task, None)
    b = _splits(task, tmp_path)
    assert a.train.sources == b.train.sources and a.test[5].targets == b.test[5].targets
    assert _splits(task, None, seed=1).train.sources != a.train.sources
    held_out = set(a.validation.sources) | set(a.test[2].sources) | set(a.test[5].sources)
    assert not held_out & set(a.train.sources)
    assert not set(a.test[2].sources) & set(a.validation.sources)
    assert sorted(set(a.train.lengths.tolist())) == [1, 2, 3] and len(a.train) == 600
    assert sorted(set(a.validation.lengths.tolist())) == [1, 2, 3]
    assert (a.validation.lengths == 3).sum() == 60 and len(a.validation) <= 3 * 60  # copy: fewer exist at 1 and 2
    assert set(a.test[5].lengths.tolist()) == {5} and len(a.test[5]) == 100


@pytest.mark.parametrize("split", ["test", "validation"])
def test_held_out_sets_hold_distinct_items_and_all_of_them_where_fewer_exist(split):
    """50 test examples of copy over "ab" at length 3 were 50 copies of one source; now the set
    holds each source of its share once.  Where enough exist the set has the size asked, and its
    items are the old draw's with repeats replaced, so long lengths keep their data."""
    tiny = get_task("copy", alphabet="ab")
    _, few = data.load_split(tiny, split, [3], 50, 0, cache_dir=None)
    region = data.REGIONS[split]
    every = {"".join(s) for s in itertools.product("ab", repeat=3)}
    assert sorted(few.sources) == sorted(s for s in every if region[0] <= data.source_region(s) < region[1])
    # a few more asked than exist: every one found, not a coin toss near the end (819 in the test share)
    copy = get_task("copy")
    share = [
        s
        for s in map("".join, itertools.product(copy.input_alphabet, repeat=3))
        if region[0] <= data.source_region(s) < region[1]
    ]
    _, short = data.load_split(copy, split, [3], len(share) + 10, 0, cache_dir=None)
    assert sorted(short.sources) == sorted(share)
    _, enough = data.load_split(get_task("copy"), split, [4], 1000, 0, cache_dir=None)
    assert len(set(enough.sources)) == len(enough) == 1000
    with_repeats = data._generate(
        get_task("copy"),
        {k: v for k, v in data.split_key(get_task("copy"), split, [4], 1000, 0).items() if k not in data.NOT_DRAWN},
    )
    first_new = list(dict.fromkeys(with_repeats.sources))
    assert enough.sources[: len(first_new)] == first_new


@pytest.mark.parametrize("name", ["copy", "date_format"])
def test_training_data_do_not_depend_on_what_is_evaluated(name):
    task = get_task(name)
    base = data.make_splits(task, [1, 2, 3], [3], n_train=300, n_validation=20, n_test=50, seed=0, cache_dir=None)
    for eval_lengths, n_test in (([3, 8], 50), ([3], 51), ([1, 2, 3, 4, 6], 200)):
        other = data.make_splits(
            task, [1, 2, 3], eval_lengths, n_train=300, n_validation=20, n_test=n_test, seed=0, cache_dir=None
        )
        assert other.train.sources == base.train.sources and other.train.targets == base.train.targets
        assert other.validation.sources == base.validation.sources
        assert not set(other.train.sources) & set().union(*(set(d.sources) for d in other.test.values()))


def test_copy_at_length_one_cannot_escape_the_held_out_set(tmp_path):
    task = get_task("copy", alphabet="ab")  # 2 sources of length 1: too few for three regions
    with pytest.raises(ValueError, match="no source of length 1 in the .* use longer lengths or more symbols"):
        data.make_splits(task, [1], [1], n_train=10, n_validation=2, n_test=50, seed=0, cache_dir=None)


def test_cache_hit_version_miss_and_corruption(tmp_path, monkeypatch, caplog):
    task = get_task("reverse")
    key, first = data.load_split(task, "test", [6], 50, seed=3, cache_dir=tmp_path)
    path = data.cache_path(task, key, tmp_path)
    assert path.exists() and path.suffix == ".npz"

    calls = []
    real_generate = data._generate
    monkeypatch.setattr(data, "_generate", lambda *a: calls.append(1) or real_generate(*a))
    _, again = data.load_split(task, "test", [6], 50, seed=3, cache_dir=tmp_path)
    assert calls == [] and again.sources == first.sources  # read from the cache

    monkeypatch.setattr(type(task), "version", task.version + 1)
    key2, _ = data.load_split(task, "test", [6], 50, seed=3, cache_dir=tmp_path)
    assert calls == [1] and data.cache_path(task, key2, tmp_path) != path  # a new version misses
    monkeypatch.undo()

    path.write_bytes(path.read_bytes()[:100])  # truncate: a damaged file
    monkeypatch.setattr(data, "_generate", lambda *a: calls.append(2) or real_generate(*a))
    _, repaired = data.load_split(task, "test", [6], 50, seed=3, cache_dir=tmp_path)
    assert calls[-1] == 2 and repaired.sources == first.sources
    assert "damaged" in caplog.text


def test_tampered_cache_contents_are_detected(tmp_path, caplog):
    task = get_task("copy")
    key, first = data.load_split(task, "test", [4], 20, seed=0, cache_dir=tmp_path)
    path = data.cache_path(task, key, tmp_path)
    with np.load(path) as f:
        arrays = dict(f)
    arrays["targets"] = np.asarray(["zzzz"] * 20)
    np.savez(path, **arrays)
    _, loaded = data.load_split(task, "test", [4], 20, seed=0, cache_dir=tmp_path)
    assert loaded.targets == first.targets and "checksum" in caplog.text


def test_same_data_in_another_process(tmp_path):
    code = (
        "from study import data; from study.tasks import get_task;"
        "k, d = data.load_split(get_task('date_format'), 'train', [1, 2], 40, seed=5, cache_dir=None);"
        "print(repr(d.sources))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    _, here = data.load_split(get_task("date_format"), "train", [1, 2], 40, seed=5, cache_dir=None)
    assert out == repr(here.sources)


@pytest.mark.parametrize(
    "bad,rule",
    [
        (lambda n: ([""] * n, ["a"] * n), "every source must be a non-empty str, got ''"),
        (lambda n: (["ab"] * n, ["Z"] * n), "target 'Z' has characters outside its alphabet: 'Z'"),
        (lambda n: (["ab"] * (n - 1), ["a"] * (n - 1)), "must return a list of"),
    ],
)
def test_every_generated_split_keeps_the_task_contract_at_every_length(bad, rule):
    """A task that is sound at its two shortest lengths (all the start-up check samples) and
    breaks the contract from length 3 on is stopped where it breaks, naming task, length and rule."""
    from study.tasks import TaskContractError, check_task
    from study.tasks.base import SymbolTask

    class BreaksAtThree(SymbolTask):
        name, version, description = "breaks_at_3", 1, "copy, broken from length 3"

        def sample(self, rng, n, length):
            if length >= 3:
                return bad(n)
            sources = ["".join(rng.choice(list(self.alphabet), length)) for _ in range(n)]
            return sources, list(sources)

    task = BreaksAtThree()
    check_task(task)  # the start-up check sees lengths 1 and 2 only
    data.load_split(task, "train", [1, 2], 20, seed=0, cache_dir=None)
    with pytest.raises(
        TaskContractError, match=r"task 'breaks_at_3' violates the task contract at length 3 \(train split\): "
    ) as error:
        data.load_split(task, "train", [2, 3], 20, seed=0, cache_dir=None)
    assert rule in str(error.value)


def test_the_cldr_version_is_part_of_a_date_task_identity(tmp_path, monkeypatch, request):
    """Babel releases ship different CLDR data (Korean `y. M. d.` became `y/M/d`): a dataset
    written under one CLDR is never read under another, the random draws stay the same, and cells
    made with the two are different cells that a merge keeps apart."""
    import dataclasses

    from study.cell import cell_id, cell_identity
    from study.config import TaskPlan, build_study_config
    from study.report.tables import setting_key
    from study.runner import expand_grid
    from study.tasks import date_format

    here = get_task("date_format", locale="ko")
    key, ours = data.load_split(here, "test", [2], 40, seed=1, cache_dir=tmp_path)
    # another Babel's formatting
    monkeypatch.setattr(date_format, "format_date", lambda d, pattern, locale: d.strftime("%Y/%m/%d"))
    date_format._leap_year_rendering.cache_clear()
    request.addfinalizer(date_format._leap_year_rendering.cache_clear)  # later tests see this Babel's rendering again
    same_cldr = get_task("date_format", locale="ko")
    monkeypatch.setattr(date_format, "get_cldr_version", lambda: "1")  # and its CLDR release
    there = get_task("date_format", locale="ko")
    # changed formatting code alone is another identity
    assert same_cldr.cldr == here.cldr and same_cldr.spec != here.spec
    assert there.spec["data"]["cldr"] == "1" and here.spec["data"] != there.spec["data"]
    other_key, theirs = data.load_split(there, "test", [2], 40, seed=1, cache_dir=tmp_path)
    assert data.cache_path(there, other_key, tmp_path) != data.cache_path(here, key, tmp_path)
    assert theirs.sources != ours.sources and all("/" in s for s in theirs.sources)  # not the other CLDR's cache
    # the same draws, written differently
    assert data._rng(key, 2).integers(2**62) == data._rng(other_key, 2).integers(2**62)

    config = build_study_config("smoke")
    cell = dataclasses.replace(expand_grid(config)[0], task=TaskPlan("date_format", (1,), (1, 2), (("locale", "ko"),)))
    mine, yours = cell_identity(cell, config, here), cell_identity(cell, config, there)
    assert cell_id(mine) != cell_id(yours) and mine["task_data"] != yours["task_data"]
    assert setting_key(mine) != setting_key(yours)  # a report never averages the two together
