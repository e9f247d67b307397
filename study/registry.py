"""A small name -> object registry shared by tasks and models.

MODELS = Registry("model")
@MODELS.register("none")
def build(...): ...
MODELS.get("nonee")   # UnknownNameError: unknown model 'nonee'; did you mean 'none'? (available: none)
MODELS.register("NA")  # ValueError: pandas.read_csv would read it back as a missing value

A name is an identifier that CSV readers read back as itself: it names the rows of metrics.csv
and summary.csv, so `NA`, `null`, `True` or `inf` would come back as missing values, booleans
or numbers and drop out of every grouping.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")

# pandas' default missing values (`keep_default_na`; a test compares this with pandas' own list)
CSV_MISSING_VALUES = frozenset(
    {"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A"}
    | {"NA", "NULL", "NaN", "None", "n/a", "nan", "null"}
)
CSV_NON_STRINGS = frozenset({"true", "false", "inf", "infinity"})  # as booleans and numbers, any case


def check_csv_name(kind: str, name: str) -> None:
    """`ValueError` saying why when `pandas.read_csv` with its defaults would read `name`
    back as a missing value, a boolean or a number instead of the string."""
    if name in CSV_MISSING_VALUES or name.lower() in CSV_NON_STRINGS:
        what = "a missing value" if name in CSV_MISSING_VALUES else "a boolean or a number"
        raise ValueError(
            f"{kind} name {name!r} cannot be used: pandas.read_csv and other CSV readers read it back as {what}, "
            "so its rows in metrics.csv and summary.csv would lose their name; choose another name"
        )


class UnknownNameError(ValueError):
    """A name that is not in a registry; the message lists what exists and suggests the closest."""


class DuplicateNameError(ValueError):
    """A second object registered under a name already taken; names where the first one lives."""

    def __init__(self, kind: str, name: str, existing: object) -> None:
        self.kind = kind
        self.name = name
        module = getattr(existing, "__module__", None)
        file = getattr(sys.modules.get(module), "__file__", None) if module else None
        where = f"{module}.{getattr(existing, '__qualname__', existing)}" if module else repr(existing)
        self.where = f"{where} ({file})" if file else where
        super().__init__(f"duplicate {kind} name {name!r}: already registered by {self.where}")


class Registry(Generic[T]):
    """Maps unique names to registered objects (task classes, model builders, ...)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers its argument under `name`; a duplicate name is an error."""
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"{self.kind} name must be an identifier-like string, got {name!r}")
        check_csv_name(self.kind, name)

        def decorate(obj: T) -> T:
            if name in self._entries and self._entries[name] is not obj:
                raise DuplicateNameError(self.kind, name, self._entries[name])
            self._entries[name] = obj
            return obj

        return decorate

    def get(self, name: str) -> T:
        """Returns the entry for `name`, or raises `UnknownNameError` with a suggestion."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise UnknownNameError(self.unknown_message(name)) from None

    def unknown_message(self, name: object) -> str:
        close = difflib.get_close_matches(str(name), self.names(), n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"unknown {self.kind} {name!r}{hint} (available: {', '.join(self.names())})"

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def in_order(self) -> list[str]:
        """Registered names in the order they were registered."""
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def import_plugin(target: str | Path, prefix: str) -> str:
    """Imports a plugin: a Python file (as the module `<prefix><file stem>`, once per process) or
    a dotted module name.  Returns what another process passes to load the same plugin: a file's
    absolute path, or the module name.  Errors inside the plugin propagate as they are; a file
    that is missing raises FileNotFoundError."""
    target = str(target)
    if not (target.endswith(".py") or Path(target).exists()):
        importlib.import_module(target)
        return target
    file = Path(target).resolve()
    if not file.is_file():
        raise FileNotFoundError(f"no such file: {target}")
    module_name = f"{prefix}{file.stem}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, file)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {target} as a Python module")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[module_name]
            raise
    return str(file)


def load_plugin(target: str, kind: str, error: type[Exception], keep: tuple[type[Exception], ...] = ()) -> str:
    """`import_plugin` of a `kind` ("task" or "model") module given on the command line, with every
    failure inside it as one `error` line naming the module (a name registered twice says where
    the first one lives); the errors in `keep` propagate as they are.  Returns what
    `import_plugin` returns."""
    try:
        return import_plugin(target, f"study_{kind}_plugin_")
    except keep:
        raise
    except DuplicateNameError as exc:
        raise error(
            f"{kind} module {target!r} registers the {exc.kind} {exc.name!r}, which {exc.where} already registers: "
            f"rename one of them (a {kind} file in study/{kind}s/ needs no --{kind}-module)"
        ) from exc
    except Exception as exc:  # any failure inside user code becomes one clear line
        raise error(f"{kind} module {target!r} failed to import: {type(exc).__name__}: {exc}") from exc
