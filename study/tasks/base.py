"""The task contract: what every synthetic task declares and how it is checked.

A task turns a random generator and a *length* into pairs of strings::

    task = get_task("reverse")
    sources, targets = task.sample(np.random.default_rng(0), n=2, length=5)
    # sources == ["cahbf", "gdaae"], targets == ["fbhac", "eaadg"]   (for example)

`length` is measured in the task's own unit (`length_unit`: "symbols", "dates",
...), so one study can ask every task for "longer" inputs.  A task never touches
global randomness: everything it draws comes from the `rng` argument, which makes
datasets reproducible from a seed.

Subclass `Task`, fill in the class attributes, implement `input_alphabet`,
`output_alphabet` and `sample`, and decorate the class with
`study.tasks.register_task`.  `check_task` verifies the contract on a small
sample whenever a task is loaded.
"""

from __future__ import annotations

import abc
import inspect
import json
from typing import Any, ClassVar

import numpy as np


class TaskContractError(ValueError):
    """A task does not honour the contract of `Task`; the message names the task and the rule."""


class Task(abc.ABC):
    """Base class of every synthetic sequence-to-sequence task.

    Class attributes every task sets:
        name: unique registry name, e.g. "copy".
        version: integer, bumped whenever the generator's output changes for the
            same seed (it is part of every dataset cache key and results record).
        description: one line, shown by `run_study.py list`.
        length_unit: what `length` counts, e.g. "symbols" or "dates".
        min_length / max_length: the range of lengths the task supports
            (`max_length=None` means unbounded).

    Optional:
        output_unit_width: characters of output per length unit, separator included, when
            that is fixed (a date written as YYYY-MM-DD and a space: 11), so figures can mark
            where each unit of the output begins; None (the default) for tasks without.
        formats / formats_in: a task that writes its sources in several ways (date_format's
            date formats) names them, and tells which of them wrote a given example, so the
            tests can check that its generator uses every one.

    Options (e.g. an alphabet or a locale) are keyword arguments of the
    constructor.  The constructor records every one of them in `options` as plain
    JSON values, in its canonical spelling and with defaults filled in (`locale="EN_us"` is recorded
    as "en_US", a missing alphabet as the default one), so that one task has one
    identity in cache keys, cell ids and records; `check_task` verifies what it
    can (every named parameter recorded, a rebuild from `options` the same task),
    the canonical spelling is the task's own job.

    A task whose output depends on data outside its code (a locale database, a
    word list) names their versions in `data_versions`; they are part of its
    identity too, so data generated with other versions are never read from the
    cache nor merged with these results.
    """

    name: ClassVar[str]
    version: ClassVar[int]
    description: ClassVar[str]
    length_unit: ClassVar[str]
    min_length: ClassVar[int] = 1
    max_length: ClassVar[int | None] = None
    output_unit_width: ClassVar[int | None] = None

    def __init__(self, **options: Any) -> None:
        self.options: dict[str, Any] = dict(options)

    @property
    @abc.abstractmethod
    def input_alphabet(self) -> str:
        """Every character that may appear in a source string, without repeats."""

    @property
    @abc.abstractmethod
    def output_alphabet(self) -> str:
        """Every character that may appear in a target string, without repeats."""

    @abc.abstractmethod
    def sample(self, rng: np.random.Generator, n: int, length: int) -> tuple[list[str], list[str]]:
        """Draws `n` examples of the given length.

        Args:
            rng: the only source of randomness the task may use.
            n: number of examples (>= 0).
            length: size of each example in `length_unit`, within
                `[min_length, max_length]`.

        Returns:
            `(sources, targets)`: two lists of `n` non-empty strings.
        """

    @property
    def data_versions(self) -> dict[str, str]:
        """Versions of the data outside the task's code that shape its output, e.g.
        `{"cldr": "47"}` for a task whose strings come from the Unicode CLDR through
        Babel; empty for a task that depends on its code alone (the default)."""
        return {}

    @property
    def spec(self) -> dict[str, Any]:
        """Identity of the generator (JSON-serialisable): name, version, normalised options
        and, when the task has any, the versions of the outside data it uses (`data`)."""
        spec = {"name": self.name, "version": self.version, "options": dict(sorted(self.options.items()))}
        if self.data_versions:
            spec["data"] = dict(sorted(self.data_versions.items()))
        return spec

    @property
    def formats(self) -> tuple[str, ...]:
        """Names of the ways `sample` writes a source when it has several (date formats,
        sentence patterns), each to be drawn; () (the default): one way."""
        return ()

    def formats_in(self, source: str, target: str) -> set[str]:
        """The `formats` that certainly wrote parts of the example (`source`, `target`): those
        alone in writing a part as it is written (a date that two formats write alike names
        neither).

        Args:
            source, target: one example of `sample`.

        Returns:
            A subset of `formats` (empty for a task with one way of writing).
        """
        return set()

    def target_for(self, source: str) -> str | None:
        """The target of one source when the task can compute it; `predict` shows it beside
        the prediction.

        Args:
            source: a string in `input_alphabet`.

        Returns:
            The target string, or None when the task cannot compute it (the default, e.g. a
            task whose target is drawn with its source).
        """
        return None

    def check_length(self, length: int) -> None:
        """Checks that the task can draw examples of `length`.

        Args:
            length: a length in `length_unit`.

        Raises:
            ValueError: `length` is not an integer (a bool is refused too) or lies outside
                `min_length`..`max_length`.
        """
        if isinstance(length, bool) or not isinstance(length, (int, np.integer)):
            raise ValueError(f"task {self.name!r}: length must be an integer, got {length!r}")
        upper = "unbounded" if self.max_length is None else self.max_length
        if length < self.min_length or (self.max_length is not None and length > self.max_length):
            raise ValueError(
                f"task {self.name!r}: length {length} is outside the supported range "
                f"{self.min_length}..{upper} ({self.length_unit})"
            )

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in sorted(self.options.items()))
        return f"{type(self).__name__}({opts})"


def check_task(task: Task, n: int = 8, seed: int = 0) -> None:
    """Checks the task contract on a small sample; raises `TaskContractError` naming the rule broken.

    Rules: declared metadata has the right types; `options` records every named
    constructor parameter (a `**kwargs` constructor must fill in its own defaults)
    and building the task again from its `options` gives the same identity, which
    survives a JSON round trip (the cache stores it as JSON);
    `data_versions` maps names to strings; alphabets are non-empty strings without
    repeats; `sample` returns two lists of `n` non-empty strings whose characters
    lie in the alphabets; the same seed gives the same data.

    Args:
        task: the task to check.
        n: examples drawn per sample, at the task's shortest length and the next one.
        seed: seeds the generator of each sample (each is drawn twice to check determinism).

    Raises:
        TaskContractError: a rule is broken; the message names the task and the rule.
            An exception that the task's own `sample` raises propagates unchanged.
    """
    name = getattr(task, "name", type(task).__name__)

    def fail(rule: str) -> TaskContractError:
        return TaskContractError(f"task {name!r} violates the task contract: {rule}")

    for attr, kind in (
        ("name", str),
        ("version", int),
        ("description", str),
        ("length_unit", str),
        ("min_length", int),
    ):
        value = getattr(task, attr, None)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise fail(f"{attr} must be of type {kind.__name__}, got {value!r}")
    _check_identity(task, fail)
    if task.min_length < 1:
        raise fail(f"min_length must be >= 1, got {task.min_length}")
    if task.max_length is not None and (not isinstance(task.max_length, int) or task.max_length < task.min_length):
        raise fail(f"max_length must be None or an integer >= min_length, got {task.max_length!r}")
    width = getattr(task, "output_unit_width", None)
    if width is not None and (not isinstance(width, int) or isinstance(width, bool) or width < 1):
        raise fail(f"output_unit_width must be None or a positive integer, got {width!r}")
    for attr in ("input_alphabet", "output_alphabet"):
        alphabet = getattr(task, attr)
        if not isinstance(alphabet, str) or not alphabet:
            raise fail(f"{attr} must be a non-empty string, got {alphabet!r}")
        if len(set(alphabet)) != len(alphabet):
            raise fail(f"{attr} repeats characters: {alphabet!r}")

    lengths = sorted(
        {task.min_length, task.min_length + 1 if task.max_length is None else min(task.min_length + 1, task.max_length)}
    )
    for length in lengths:
        first = task.sample(np.random.default_rng(seed), n, length)
        check_sample(task, first, n, length)
        again = task.sample(np.random.default_rng(seed), n, length)
        if again != first:
            raise fail("sample() is not deterministic for a fixed rng seed (does it use global randomness?)")


def _check_identity(task: Task, fail) -> None:
    """The identity rules of `check_task`: options complete and normalised, data versions strings."""
    options = getattr(task, "options", None)
    if not isinstance(options, dict):
        raise fail(f"options must be a dict, got {options!r}")
    params = [
        p
        for p in list(inspect.signature(type(task).__init__).parameters.values())[1:]
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    unrecorded = [p.name for p in params if p.name not in options]
    if unrecorded:
        raise fail(
            f"options must record every constructor argument, defaults included (they enter cache keys and "
            f"cell ids); missing: {', '.join(unrecorded)}"
        )
    try:
        stored = json.loads(json.dumps(task.spec))
    except (TypeError, ValueError) as exc:
        raise fail(
            f"options and data_versions must be JSON values (str, int, float, bool, None, lists, dicts): {exc}"
        ) from None
    if stored != task.spec:
        raise fail(
            f"options must be plain JSON values (no tuples or sets), so the identity read back from the cache is the "
            f"same: {task.spec!r} reads back as {stored!r}"
        )
    data = task.data_versions
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise fail(f"data_versions must map names to version strings, got {data!r}")
    try:
        again = type(task)(**options).spec
    except Exception as exc:  # any failure of the task's own constructor
        raise fail(f"the task cannot be built again from its own options {options!r}: {exc}") from None
    if again != task.spec:
        raise fail(
            f"options are not normalised: building the task from its options {options!r} gives the identity "
            f"{again!r}, not {task.spec!r}"
        )


def check_sample(task: Task, sample: object, n: int, length: int, split: str | None = None) -> None:
    """Checks one `task.sample(rng, n, length)` result: a (sources, targets) tuple of two lists of
    `n` non-empty strings whose characters lie in the task's alphabets.  The study runs it on
    every sample it draws, so a task that breaks the contract only at some lengths is caught
    where it does.

    Args:
        task: the task that drew `sample`.
        sample: what `task.sample` returned.
        n: the number of examples asked for.
        length: the length asked for (named in the message).
        split: the split the sample is for, named in the message (None: none named).

    Raises:
        TaskContractError: the sample breaks a rule; the message names the task, the length
            (and split) and the rule.
    """
    where = f"at length {length}" + (f" ({split} split)" if split else "")

    def fail(rule: str) -> TaskContractError:
        return TaskContractError(
            f"task {getattr(task, 'name', type(task).__name__)!r} violates the task contract {where}: {rule}"
        )

    if not (isinstance(sample, tuple) and len(sample) == 2):
        raise fail(f"sample() must return a (sources, targets) tuple, got {type(sample).__name__}")
    for label, strings, alphabet in (
        ("source", sample[0], task.input_alphabet),
        ("target", sample[1], task.output_alphabet),
    ):
        if not isinstance(strings, list) or len(strings) != n:
            raise fail(
                f"sample(n={n}) must return a list of {n} {label}s, got {type(strings).__name__} "
                f"of length {len(strings) if hasattr(strings, '__len__') else '?'}"
            )
        allowed = set(alphabet)
        for s in strings:
            if not isinstance(s, str) or not s:
                raise fail(f"every {label} must be a non-empty str, got {s!r}")
            stray = set(s) - allowed
            if stray:
                raise fail(f"{label} {s!r} has characters outside its alphabet: {''.join(sorted(stray))!r}")


DEFAULT_SYMBOLS = "abcdefghijklmnop"


class SymbolTask(Task):
    """A task over random strings of `length` symbols drawn uniformly from an alphabet.

    Subclasses implement `transform(source) -> target`.  Option `alphabet`
    (default: 16 letters a..p) sets the symbols; it needs at least 2 distinct
    characters and the study's tasks use at least 8.
    """

    length_unit = "symbols"

    def __init__(self, alphabet: str = DEFAULT_SYMBOLS) -> None:
        if not isinstance(alphabet, str) or len(alphabet) < 2 or len(set(alphabet)) != len(alphabet):
            raise ValueError(
                f"task {self.name!r}: alphabet must be a string of at least 2 distinct characters, got {alphabet!r}"
            )
        super().__init__(alphabet=alphabet)
        self.alphabet = alphabet

    @property
    def input_alphabet(self) -> str:
        return self.alphabet

    @property
    def output_alphabet(self) -> str:
        return self.alphabet

    def transform(self, source: str) -> str:
        """The target for one source string.

        Args:
            source: a string of the task's symbols.

        Returns:
            The target string.

        Raises:
            NotImplementedError: a subclass did not implement it.
        """
        raise NotImplementedError

    def target_for(self, source: str) -> str | None:
        return self.transform(source)

    def sample(self, rng: np.random.Generator, n: int, length: int) -> tuple[list[str], list[str]]:
        self.check_length(length)
        symbols = np.array(list(self.alphabet))
        draws = symbols[rng.integers(0, len(symbols), size=(n, length))]
        sources = ["".join(row) for row in draws]
        return sources, [self.transform(s) for s in sources]
