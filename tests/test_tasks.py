"""The task contract over every registered task, and each generator's invariants."""

import datetime as dt

import numpy as np
import pytest
from dateutil import parser as date_parser
from hypothesis import given, settings
from hypothesis import strategies as st

import study.tasks as tasks
from study.tasks import TaskContractError, UnknownNameError, check_task, get_task, register_task
from study.tasks.base import Task
from study.tasks.date_format import FIRST_DATE, FORMATS, LAST_DATE, SEPARATOR

ALL_TASKS = tasks.available_tasks()


def test_core_and_example_tasks_are_registered():
    assert {"copy", "reverse", "date_format", "sort"} <= set(ALL_TASKS)


@pytest.mark.parametrize("name", ALL_TASKS)
def test_contract(name):
    task = get_task(name)
    check_task(task)
    assert isinstance(task.version, int) and task.description and task.length_unit
    for length in (task.min_length, task.min_length + 2):
        sources, targets = task.sample(np.random.default_rng(7), 5, length)
        assert len(sources) == len(targets) == 5
        assert all(set(s) <= set(task.input_alphabet) for s in sources)
        assert all(set(t) <= set(task.output_alphabet) for t in targets)
        # same seed, same data; another seed, other data
        assert task.sample(np.random.default_rng(7), 5, length) == (sources, targets)
        assert task.sample(np.random.default_rng(8), 5, length) != (sources, targets)


def _lengths(task, count: int) -> list[int]:
    """The task's first `count` lengths, and its longest when it has one."""
    first = list(range(task.min_length, task.min_length + count))
    return sorted({min(length, task.max_length or length) for length in first} | {task.max_length or first[-1]})


@pytest.mark.parametrize("name", ALL_TASKS)
def test_generator_uses_every_symbol_of_its_alphabets(name):
    """What a task declares it can write, its samples write: no symbol of either alphabet is
    left out (a generator drawing from part of its alphabet, or from one format of several)."""
    task = get_task(name)
    sources, targets = [], []
    for length in _lengths(task, 3):
        drawn = task.sample(np.random.default_rng(length), 400, length)
        sources += drawn[0]
        targets += drawn[1]
    for label, written, alphabet in (
        ("source", sources, task.input_alphabet),
        ("target", targets, task.output_alphabet),
    ):
        unused = set(alphabet) - set("".join(written))
        assert not unused, f"{name}: {label}s never hold {''.join(sorted(unused))!r}"


@pytest.mark.parametrize("name", ALL_TASKS)
def test_generator_makes_every_length_it_is_asked_for(name):
    """Sources grow with the length asked, over the first twelve lengths (and the longest, for a
    bounded task): a generator that caps, ignores or repeats a length is caught."""
    task = get_task(name)
    lengths = _lengths(task, 12)
    means = [np.mean([len(s) for s in task.sample(np.random.default_rng(k), 50, k)[0]]) for k in lengths]
    assert all(a < b for a, b in zip(means, means[1:])), dict(zip(lengths, means))


@pytest.mark.parametrize("name", ALL_TASKS)
def test_generator_writes_every_format_it_declares(name):
    task = get_task(name)
    length = _lengths(task, 2)[-1]
    sources, targets = task.sample(np.random.default_rng(0), 300, length)
    written = set().union(*(task.formats_in(s, t) for s, t in zip(sources, targets)))
    assert written == set(task.formats), f"{name}: never written in {sorted(set(task.formats) - written)}"


def test_date_format_tells_each_of_its_formats_apart():
    """`formats_in` names the one format that wrote a date (so the test above checks each
    format), and none where two formats write a date alike."""
    task = get_task("date_format")
    assert len(task.formats) == len(FORMATS)
    for i, name in enumerate(task.formats):
        assert task.formats_in(task.format(dt.date(2021, 3, 3), i), "2021-03-03") == {name}
    assert task.formats_in("11/12/2021", "2021-11-12") == set()  # skeleton and padded yMd alike


# built-in tasks: the contract does not fix a target's length
@pytest.mark.parametrize("name", ["copy", "reverse", "sort"])
def test_built_in_symbol_tasks_write_targets_as_long_as_sources(name):
    sources, targets = get_task(name).sample(np.random.default_rng(0), 10, 13)
    assert all(len(s) == 13 for s in sources) and all(len(t) == 13 for t in targets)


def test_date_format_has_length_dates():
    task = get_task("date_format")
    sources, targets = task.sample(np.random.default_rng(0), 20, 3)
    assert all(len(t.split(" ")) == 3 for t in targets)
    assert all(len(s.split(SEPARATOR)) == 3 for s in sources)


@given(seed=st.integers(0, 2**32 - 1), length=st.integers(1, 40))
@settings(max_examples=30, deadline=None)
def test_reverse_and_copy_invariants(seed, length):
    src, tgt = get_task("reverse").sample(np.random.default_rng(seed), 4, length)
    assert [t[::-1] for t in tgt] == src
    src, tgt = get_task("copy").sample(np.random.default_rng(seed), 4, length)
    assert tgt == src


@given(seed=st.integers(0, 2**32 - 1), length=st.integers(1, 20))
@settings(max_examples=20, deadline=None)
def test_sort_target_is_sorted_permutation(seed, length):
    task = get_task("sort")
    src, tgt = task.sample(np.random.default_rng(seed), 4, length)
    for s, t in zip(src, tgt):
        assert sorted(s) == sorted(t)
        assert [task.alphabet.index(c) for c in t] == sorted(task.alphabet.index(c) for c in t)


@pytest.mark.parametrize("locale,dayfirst", [("en", False), ("en_GB", True)])
@given(seed=st.integers(0, 2**32 - 1))
@settings(max_examples=25, deadline=None)
def test_date_sources_parse_back_to_targets(locale, dayfirst, seed):
    """dateutil, which shares no code or tables with Babel, reads every source date back."""
    task = get_task("date_format", locale=locale)
    sources, targets = task.sample(np.random.default_rng(seed), 5, 4)
    for source, target in zip(sources, targets):
        parsed = [date_parser.parse(part, dayfirst=dayfirst).date().isoformat() for part in source.split(SEPARATOR)]
        assert " ".join(parsed) == target, source


def test_every_format_is_used_and_parses_back():
    task = get_task("date_format")
    day = dt.date(1987, 11, 9)
    written = [task.format(day, i) for i in range(len(FORMATS))]
    assert len(FORMATS) >= 10 and len(set(written)) >= 10
    assert all(date_parser.parse(w).date() == day for w in written)


@pytest.mark.parametrize("locale", ["ko", "ja", "de"])
def test_other_locales_work_and_use_full_years(locale):
    task = get_task("date_format", locale=locale)
    sources, targets = task.sample(np.random.default_rng(1), 30, 2)
    for source, target in zip(sources, targets):
        for part, iso in zip(source.split(SEPARATOR), target.split(" ")):
            assert iso[:4] in part  # the four-digit year is written out
    if locale == "ko":
        assert "월" in task.input_alphabet  # month names come from CLDR, not an English table


def test_dates_cover_both_centuries_uniformly():
    task = get_task("date_format")
    _, targets = task.sample(np.random.default_rng(0), 2000, 1)
    years = np.array([int(t[:4]) for t in targets])
    assert years.min() >= FIRST_DATE.year and years.max() <= LAST_DATE.year
    assert 0.4 < np.mean(years < 2000) < 0.6


def test_unknown_task_suggests_closest_name():
    with pytest.raises(UnknownNameError, match=r"unknown task 'revrese'; did you mean 'reverse'\?.*available: .*copy"):
        get_task("revrese")


def test_duplicate_name_is_refused(tmp_path):
    with pytest.raises(
        ValueError, match=r"duplicate task name 'copy': already registered by study\.tasks\.copy\.CopyTask"
    ):

        @register_task
        class AnotherCopy(Task):  # noqa: F811
            name = "copy"

    # the same from a task module (a task file both in study/tasks/ and given to --task-module): one line naming both
    from study.tasks import TaskModuleError, load_task_module

    plugin = tmp_path / "again.py"
    plugin.write_text(
        "from study.tasks import register_task\nfrom study.tasks.copy import CopyTask\n\n"
        "@register_task\nclass Again(CopyTask):\n    name = 'copy'\n"
    )
    with pytest.raises(
        TaskModuleError, match=r"registers the task 'copy', which study\.tasks\.copy\.CopyTask .* rename one"
    ):
        load_task_module(plugin)


def test_bad_option_and_length_are_refused():
    with pytest.raises(ValueError, match="alphabet"):
        get_task("copy", alphabet="a")
    with pytest.raises(ValueError, match="unknown locale"):
        get_task("date_format", locale="xx_NOPE")
    with pytest.raises(ValueError, match="outside the supported range"):
        get_task("copy").sample(np.random.default_rng(0), 1, 0)


class _Broken(Task):
    name = "broken_for_test"
    version = 1
    description = "emits a character outside its alphabet"
    length_unit = "symbols"
    input_alphabet = "ab"
    output_alphabet = "ab"

    def sample(self, rng, n, length):
        return ["a" * length] * n, ["z" * length] * n


class _Nondeterministic(_Broken):
    name = "nondeterministic_for_test"

    def sample(self, rng, n, length):
        return ["ab"[np.random.randint(2)] * length for _ in range(n)], ["a" * length] * n


def test_contract_violations_name_task_and_rule():
    with pytest.raises(
        TaskContractError, match=r"task 'broken_for_test'.*target 'z+' has characters outside its alphabet"
    ):
        check_task(_Broken())
    np.random.seed(0)
    with pytest.raises(TaskContractError, match=r"task 'nondeterministic_for_test'.*not deterministic"):
        check_task(_Nondeterministic(), n=64)


@pytest.mark.parametrize("spelling", ["en_US", "en_us", "EN_us", "en-US", "en-us"])
def test_one_task_has_one_identity_however_its_options_are_spelled(spelling):
    """Options are normalised before they enter cache keys, cell ids and records: a locale in
    any spelling CLDR accepts, and default options left out or written out, are one task."""
    assert get_task("date_format", locale=spelling).spec == get_task("date_format", locale="en_US").spec
    assert get_task("date_format", locale=spelling).options == {"locale": "en_US"}
    assert get_task("date_format").spec == get_task("date_format", locale="en").spec
    assert get_task("copy").spec == get_task("copy", alphabet="abcdefghijklmnop").spec
    assert get_task("copy").options == {"alphabet": "abcdefghijklmnop"}


def test_one_study_cell_however_its_task_options_are_spelled():
    """Three spellings of one locale in three configs give the same grid of cell ids."""
    from study.config import build_study_config
    from study.runner import study_cells

    ids = []
    for spelling in ("en_US", "en_us", "EN_us"):
        plan = {"train_lengths": [1], "eval_lengths": [1, 2], "options": {"locale": spelling}}
        ids.append([cid for _, cid in study_cells(build_study_config("smoke", {"tasks": {"date_format": plan}}))])
    assert ids[0] == ids[1] == ids[2] and ids[0]


class _Unrecorded(Task):
    name, version, description, length_unit = "unrecorded_for_test", 1, "forgets its option", "symbols"
    output_alphabet = "ab"

    def __init__(self, letters: str = "ab") -> None:
        super().__init__()  # `letters` never reaches `options`, so never a cache key
        self.letters = letters

    @property
    def input_alphabet(self):
        return self.letters

    def sample(self, rng, n, length):
        return ["a" * length] * n, ["a" * length] * n


class _Unrebuildable(_Unrecorded):
    name = "unrebuildable_for_test"

    def __init__(self, letters: str = "ab") -> None:
        if not isinstance(letters, str):
            raise ValueError(f"letters must be a string, got {letters!r}")
        Task.__init__(self, letters=sorted(letters))  # recorded in a form its own constructor refuses
        self.letters = letters


class _Drifting(_Unrecorded):
    name = "drifting_for_test"

    def __init__(self, letters: str = "ab") -> None:
        Task.__init__(self, letters=letters + "b")  # each rebuild records another value
        self.letters = letters


class _Tupled(_Unrecorded):
    name = "tupled_for_test"

    def __init__(self, letters: str = "ab") -> None:
        Task.__init__(self, letters=tuple(letters))  # a tuple comes back from the JSON cache key as a list
        self.letters = "".join(letters)


def test_options_that_miss_identity_break_the_contract():
    with pytest.raises(
        TaskContractError, match=r"task 'unrecorded_for_test'.*record every constructor argument.*missing: letters"
    ):
        check_task(_Unrecorded())
    with pytest.raises(
        TaskContractError, match=r"task 'unrebuildable_for_test'.*cannot be built again from its own options"
    ):
        check_task(_Unrebuildable())
    with pytest.raises(TaskContractError, match=r"task 'drifting_for_test'.*options are not normalised"):
        check_task(_Drifting())
    with pytest.raises(TaskContractError, match=r"task 'tupled_for_test'.*plain JSON values"):
        check_task(_Tupled())


@pytest.mark.parametrize(
    "locale,message",
    [
        (
            "sr_RS@latin",
            r"locale 'sr_RS@latin': the modifier '@latin' is not honoured \(dates would be written as 'sr_Cyrl_RS'\); for the latin script write 'sr_Latn_RS'",
        ),
        (
            "th_TH@calendar=buddhist",
            r"the modifier '@calendar=buddhist' is not honoured \(dates would be written as 'th_TH'\)",
        ),
        ("de_DE_PREEURO", r"CLDR has no variant 'PREEURO' for it \(dates would be written as 'de_DE'\)"),
        ("en_Cyrl", r"CLDR has no script 'Cyrl' for it"),
        ("en_US.UTF-8", r"an encoding is not part of a CLDR locale; write 'en_US'"),
    ],
)
def test_a_locale_whose_meaning_would_change_is_refused_naming_what_would_be_used(locale, message):
    from study.tasks import TaskOptionError

    with pytest.raises(TaskOptionError, match=message):
        get_task("date_format", locale=locale)
    assert get_task("date_format", locale="sr_Latn_RS").options == {"locale": "sr_Latn_RS"}
    assert "ш" not in get_task("date_format", locale="sr_Latn_RS").input_alphabet  # Latin script: no Cyrillic letters


def test_a_task_missing_a_contract_attribute_gets_the_contracts_error(tmp_path):
    """A task file without `version` gets the same one-line contract error as one without
    `name` or `description`, not an AttributeError from deep inside."""
    from study.tasks import load_task_module

    plugin = tmp_path / "nover_task.py"
    plugin.write_text(
        "from study.tasks import Task, register_task\n\n@register_task\nclass NoVer(Task):\n    name = 'nover'\n"
        "    description = 'no version'\n    length_unit = 'symbols'\n    input_alphabet = output_alphabet = 'ab'\n\n"
        "    def sample(self, rng, n, length):\n        return ['a' * length] * n, ['a' * length] * n\n"
    )
    with pytest.raises(
        TaskContractError, match=r"task 'nover' violates the task contract: version must be of type int, got None"
    ):
        load_task_module(plugin)


@pytest.mark.parametrize("name", ["copy", "reverse", "sort"])
def test_symbol_tasks_give_predict_a_verdict(name):
    """`target_for` computes the target of any source, so `predict` says right or wrong."""
    task = get_task(name)
    sources, targets = task.sample(np.random.default_rng(3), 20, 9)
    assert [task.target_for(s) for s in sources] == targets


def test_an_unknown_task_option_is_named_with_the_closest_and_the_tasks_options():
    from study.tasks import TaskOptionError

    with pytest.raises(
        TaskOptionError,
        match=r"task 'copy' has no option 'alphabett'; did you mean 'alphabet'\? \(its options: alphabet\)",
    ):
        get_task("copy", alphabett="ab")
    with pytest.raises(TaskOptionError, match=r"task 'date_format' has no option 'colour' \(its options: "):
        get_task("date_format", colour="red")
