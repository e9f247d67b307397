"""The task registry: every synthetic task the study can run, by name.

    >>> import study.tasks as t
    >>> t.available_tasks()
    ['copy', 'date_format', 'reverse', 'sort']
    >>> task = t.get_task("copy", alphabet="abcdefgh")

Every module in this package is imported on first use, so a new task is one new
file here that decorates its class with `@register_task`.  A task file kept
elsewhere is loaded with `load_task_module("path/to/my_tasks.py")` (the command
line's `--task-module`).  `get_task` checks the task contract (see `base.py`)
the first time each configuration is built.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from study.registry import Registry, UnknownNameError, load_plugin
from study.tasks.base import Task, TaskContractError, check_task

__all__ = [
    "Task",
    "TaskContractError",
    "TaskModuleError",
    "TaskOptionError",
    "UnknownNameError",
    "available_tasks",
    "check_task",
    "get_task",
    "load_task_module",
    "register_task",
]

TASKS: Registry[type[Task]] = Registry("task")
_checked: set[str] = set()
_discovered = False
_plugins: list[str] = []  # modules loaded with load_task_module, for worker processes to load too


class TaskModuleError(ValueError):
    """A task plugin module could not be imported."""


class TaskOptionError(ValueError):
    """A task was given options it does not accept."""


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: registers a `Task` subclass under its `name` attribute."""
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise TaskContractError(f"@register_task expects a subclass of study.tasks.Task, got {cls!r}")
    name = getattr(cls, "name", None)
    if not isinstance(name, str):
        raise TaskContractError(f"task class {cls.__name__} violates the task contract: it must set a str `name`")
    return TASKS.register(name)(cls)


def _discover() -> None:
    """Imports every module of this package once, so their @register_task lines run."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name != "base" and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


def available_tasks() -> list[str]:
    """Names of every registered task, sorted."""
    _discover()
    return TASKS.names()


def _check_option_names(name: str, cls: type, options: dict) -> None:
    """Refuses, in the task's own terms, an option its constructor does not take: 'task 'copy' has
    no option 'alphabett'; did you mean 'alphabet'? (its options: alphabet)'.  A constructor that
    takes **kwargs is left to judge its options itself."""
    import difflib

    parameters = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    known = [n for n, p in parameters.items() if n != "self" and p.kind is not inspect.Parameter.VAR_POSITIONAL]
    for option in options:
        if option not in known:
            close = difflib.get_close_matches(str(option), known, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            listed = ", ".join(known) if known else "none"
            raise TaskOptionError(f"task {name!r} has no option {option!r}{hint} (its options: {listed})")


def get_task(name: str, **options: Any) -> Task:
    """Builds the task registered as `name` with its options, after checking its contract.

    Raises:
        UnknownNameError: no such task (the message suggests the closest name).
        TaskContractError: the task breaks a rule of the contract.
        TaskOptionError: options the task does not accept.
    """
    _discover()
    cls = TASKS.get(name)
    if inspect.isabstract(cls):
        missing = ", ".join(sorted(cls.__abstractmethods__))
        raise TaskContractError(f"task {name!r} violates the task contract: it does not implement {missing}")
    _check_option_names(name, cls, options)
    try:
        task = cls(**options)
    except (TypeError, ValueError) as exc:
        raise TaskOptionError(f"task {name!r}: bad options {options!r}: {exc}") from None
    try:
        key = repr(task.spec)
    except AttributeError:  # a missing contract attribute (version, ...): the contract's own one-line error
        check_task(task)
        raise
    if key not in _checked:
        check_task(task)
        if not cls.__module__.startswith(f"{__name__}.") and not os.environ.get(_IN_CHECK):  # a plugin's task
            check_process_independence(task)
        _checked.add(key)
    return task


_IN_CHECK = "STUDY_TASK_PROCESS_CHECK"  # set in the processes `check_process_independence` starts


def _data_digest(name: str, options: dict) -> str:
    """A digest of what the task registered as `name` draws with `options`: its alphabets and
    a sample of 8 examples at its minimum length from seed 0."""
    import hashlib

    import numpy as np

    task = TASKS.get(name)(**options)
    drawn = [task.input_alphabet, task.output_alphabet, task.sample(np.random.default_rng(0), 8, task.min_length)]
    # hashed here, not with study.results.json_digest: study.results builds tasks (`record_task`), so
    # importing it from here would make the two modules import each other; the digest never leaves this check
    return hashlib.sha256(json.dumps(drawn, sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_process_independence(task: Task) -> None:
    """Builds `task` from its options in two fresh processes with other hash seeds
    (PYTHONHASHSEED 1 and 2) and compares alphabets and a sample with this process's: a task
    whose data come from iterating a `set` (or anything else hashed) draws different data in
    every process, so workers, resumes and other machines would train and test on different
    sets under one cell id.  Raises `TaskContractError` saying so and how to fix it.  A task
    defined in `__main__` (a script or notebook, which no other process can import) is not
    checked."""
    cls = type(task)
    if cls.__module__ == "__main__":
        return
    module = sys.modules[cls.__module__]
    source = module.__file__ if cls.__module__.startswith("study_task_plugin_") else cls.__module__
    code = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r}); import json; from study import tasks; "
        f"tasks.load_task_module({source!r}); print(tasks._data_digest({task.name!r}, json.loads({json.dumps(task.options)!r})))"
    )
    children = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            encoding="utf-8",
            errors="replace",
            env={**os.environ, "PYTHONHASHSEED": seed, "PYTHONIOENCODING": "utf-8", _IN_CHECK: "1"},
        )
        for seed in ("1", "2")
    ]
    digests = {_data_digest(task.name, task.options)}
    for child in children:
        out, err = child.communicate(timeout=300)
        if child.returncode != 0:
            raise TaskContractError(
                f"task {task.name!r}: building it in a fresh process failed: {' '.join(err.strip().splitlines()[-1:])}"
            )
        digests.add(out.strip().splitlines()[-1])
    if len(digests) > 1:
        raise TaskContractError(
            f"task {task.name!r} violates the task contract: its alphabets or data differ between processes "
            "(Python's hash seed changes the order of a set or of a dict built from one); build them in a fixed "
            'order, e.g. "".join(sorted(set(...))) instead of "".join(set(...))'
        )


def load_task_module(path: str | Path) -> list[str]:
    """Imports a task plugin from a file or dotted module name; returns the task names it added.

    Raises `TaskModuleError` (one line, naming the module) when it cannot be imported.
    """
    _discover()
    before = set(TASKS.names())
    target = str(path)
    recorded = load_plugin(target, "task", TaskModuleError, keep=(TaskContractError,))
    added = sorted(set(TASKS.names()) - before)
    for name in added:
        get_task(name)
    if recorded not in _plugins:
        _plugins.append(recorded)
    return added


def loaded_plugins() -> list[str]:
    """The task modules loaded so far with `load_task_module`, in order."""
    return list(_plugins)
