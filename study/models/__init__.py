"""The model registry: model families, each one file, and the model names a study grid uses.

    >>> from study.models import available_models, build_model
    >>> available_models()
    ['additive', 'additive_bidirectional', 'additive_lstm', 'additive_recurrent', 'dot', 'dot_recurrent', 'general',
     'general_recurrent', 'none', 'none_bidirectional', 'none_context', 'none_lstm', 'transformer']
    >>> model = build_model("additive", source_vocab_size=19, target_vocab_size=19)

A model family is one file: every module of this package except `base` (and the Keras
building blocks in `layers/`) is imported when the package is, and a file kept elsewhere is
loaded with `load_model_module("path/to/my_model.py")` (the command line's `--model-module`).
The file calls `register_family` with

    a frozen dataclass of its settings, every field with a default; the study's `[model]` table
        gives each family the values of its own fields (`units` reaches every family that has it,
        `heads` only the Transformer), and the dataclass, as `dataclasses.asdict`, is the model
        part of each cell's identity;
    build(spec, settings, source_vocab_size, target_vocab_size) -> an `EncoderDecoder`
        (`study.models.base`), its weights not yet created;
    training_bytes(spec, settings, batch_size, source_len, target_len, vocab_size) -> int, the
        peak memory of one training step, checked against the free memory before a cell trains;
    keras_classes() -> the Keras classes its saved models hold, imported (and so registered
        with Keras) when it is called, so that `load_trained` can load them;
    and its models, `ModelSpec`s: a name, the attention it uses (a column of metrics.csv), a
        description, keyword options for `build` and `variant`, settings it overrides.

Family files import Keras only inside those functions, so names are listed and checked without
starting the backend (a command line refuses a typo before it starts, and the report never
starts it).  The registration order is the models' order in tables and figures (`MODEL_ORDER`).
"""

from __future__ import annotations

import dataclasses
import pkgutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from study.registry import DuplicateNameError, Registry, UnknownNameError, check_csv_name, load_plugin

if TYPE_CHECKING:
    from study.models.base import EncoderDecoder


class ModelContractError(ValueError):
    """A model family that breaks the family contract; the message names the family and the rule."""


class ModelModuleError(ValueError):
    """A model file (`--model-module`) that could not be imported; one line naming it."""


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A registered model: its name, the attention it uses and a one-line description.

    Args:
        name: the model's name in grids, records and tables (identifier-like).
        attention: the attention it uses ("none" without), a column of metrics.csv.
        description: one line, shown by `run_study.py list`.
        options: keyword arguments its family's `build` reads, as (key, value) pairs.
        variant: settings of its family it overrides, as (field, value) pairs.
        family: the registering family's name (filled in by `register_family`).
    """

    name: str
    attention: str
    description: str
    options: tuple[tuple[str, Any], ...] = ()
    variant: tuple[tuple[str, Any], ...] = ()
    family: str = ""

    def __post_init__(self) -> None:  # `attention` is a column of metrics.csv beside the name
        check_csv_name("attention", self.attention)

    def option(self, key: str, default: Any = None) -> Any:
        """The build option `key`, or `default` when the spec does not set it."""
        return dict(self.options).get(key, default)


@dataclasses.dataclass(frozen=True)
class ModelFamily:
    """A family of models built by one function from one settings dataclass (see the module
    docstring for what each field receives and returns)."""

    name: str
    settings: type
    build: Callable[..., "EncoderDecoder"]
    training_bytes: Callable[..., int]
    keras_classes: Callable[[], Iterable[type]]


FAMILIES: Registry[ModelFamily] = Registry("model family")
MODELS: Registry[ModelSpec] = Registry("model")
_plugins: list[str] = []  # files and modules loaded with load_model_module, for worker processes


def _check_family(family: ModelFamily, specs: tuple[ModelSpec, ...]) -> None:
    """Raises ModelContractError for a family whose settings are not a frozen dataclass with a
    default for every field, whose functions are not callable, or whose variants name fields
    its settings lack."""
    where = f"model family {family.name!r}"
    settings = family.settings
    if not (isinstance(settings, type) and dataclasses.is_dataclass(settings)):
        raise ModelContractError(f"{where}: settings must be a dataclass, got {settings!r}")
    if not settings.__dataclass_params__.frozen:
        raise ModelContractError(f"{where}: settings must be a frozen dataclass (@dataclasses.dataclass(frozen=True))")
    fields = {f.name for f in dataclasses.fields(settings)}
    missing = [
        f.name
        for f in dataclasses.fields(settings)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ModelContractError(f"{where}: every setting needs a default; {', '.join(missing)} has none")
    for what in ("build", "training_bytes", "keras_classes"):
        if not callable(getattr(family, what)):
            raise ModelContractError(f"{where}: {what} must be a function")
    for spec in specs:
        if not isinstance(spec, ModelSpec):
            raise ModelContractError(f"{where}: models must be study.models.ModelSpec, got {spec!r}")
        unknown = sorted(set(dict(spec.variant)) - fields)
        if unknown:
            raise ModelContractError(f"{where}: model {spec.name!r} overrides {unknown[0]!r}, not one of its settings")


def register_family(family: ModelFamily, *specs: ModelSpec) -> ModelFamily:
    """Registers a model family and its models; the models keep the order given.

    Args:
        family: the family (`ModelFamily`).
        *specs: its models (`ModelSpec`; their `family` is set to `family.name`).

    Returns:
        `family`.

    Raises:
        ModelContractError: the family breaks the contract (see `_check_family`).
        DuplicateNameError: a family or model name is taken; names where it is registered.
        ValueError: a name that is not identifier-like or that CSV readers would not read back.
    """
    _check_family(family, specs)
    if family.name in FAMILIES and FAMILIES.get(family.name) != family:
        raise DuplicateNameError("model family", family.name, FAMILIES.get(family.name).build)
    for spec in specs:
        if spec.name in MODELS and MODELS.get(spec.name) != dataclasses.replace(spec, family=family.name):
            raise DuplicateNameError("model", spec.name, FAMILIES.get(MODELS.get(spec.name).family).build)
    FAMILIES.register(family.name)(family)
    for spec in specs:
        spec = dataclasses.replace(spec, family=family.name)
        MODELS.register(spec.name)(spec)
    return family


def available_models() -> list[str]:
    """Names of every registered model, sorted."""
    return MODELS.names()


class _RegistrationOrder(Sequence):
    """The registered model names in registration order, read at each use (a model file loaded
    later is in it)."""

    def __getitem__(self, index):
        return MODELS.in_order()[index]

    def __len__(self) -> int:
        return len(MODELS.in_order())

    def __repr__(self) -> str:
        return repr(MODELS.in_order())


MODEL_ORDER: Sequence[str] = _RegistrationOrder()


def get_model_spec(name: str) -> ModelSpec:
    """The registered spec of the model `name`.

    Raises:
        UnknownNameError: no such model (the message suggests the closest name).
    """
    return MODELS.get(name)


def get_family(name: str) -> ModelFamily:
    """The family of the registered model `name` (raises `UnknownNameError` as `get_model_spec`)."""
    return FAMILIES.get(MODELS.get(name).family)


def model_setting_names() -> list[str]:
    """Every setting name of every registered family, sorted: what a `[model]` table may set."""
    return sorted({f.name for family in FAMILIES for f in dataclasses.fields(FAMILIES.get(family).settings)})


def _family_settings(family: ModelFamily, table: Mapping[str, Any] | None, variant=()) -> Any:
    fields = {f.name for f in dataclasses.fields(family.settings)}
    values = {key: value for key, value in (table or {}).items() if key in fields}
    return family.settings(**{**values, **dict(variant)})


def effective_model_config(name: str, config: Mapping[str, Any] | None = None) -> Any:
    """The settings the model `name` is built with.

    Args:
        name: a registered model.
        config: the study's `[model]` table (`study.config.ModelConfig`, or any mapping of
            setting names to values); the family takes the values of its own fields.

    Returns:
        An instance of the family's settings dataclass: the table's values over the defaults,
        with the model's own `variant` applied.

    Raises:
        UnknownNameError: no such model.
        study.config.ConfigError: a value the family's settings refuse.
    """
    spec = MODELS.get(name)
    return _family_settings(FAMILIES.get(spec.family), config, spec.variant)


def model_settings_table(models: Iterable[str], config: Mapping[str, Any] | None = None) -> dict:
    """The `[model]` table as the families of `models` read it: every setting of theirs, given or
    at its default (no model's variant applied); names that are not registered are left out."""
    table: dict[str, Any] = {}
    for family in dict.fromkeys(MODELS.get(m).family for m in models if m in MODELS):
        table.update(dataclasses.asdict(_family_settings(FAMILIES.get(family), config)))
    return table


def build_model(
    name: str,
    source_vocab_size: int,
    target_vocab_size: int,
    config: Mapping[str, Any] | None = None,
    alphabets: dict | None = None,
) -> "EncoderDecoder":
    """Builds the registered model `name` and creates its weights.

    Args:
        name: a registered model.
        source_vocab_size, target_vocab_size: vocabulary sizes, special ids included.
        config: the study's `[model]` table (`effective_model_config`); None: the defaults.
        alphabets: {"source": ..., "target": ...}, saved with the model (`vocabularies()`).

    Returns:
        The model, an `EncoderDecoder`: called on (source (batch, S), decoder inputs
        (batch, T)) int ids it returns logits (batch, T, target_vocab_size).

    Raises:
        UnknownNameError: no such model.
        study.config.ConfigError: a setting the family refuses.
    """
    spec = MODELS.get(name)
    family = FAMILIES.get(spec.family)
    model = family.build(spec, effective_model_config(name, config), source_vocab_size, target_vocab_size)
    model.alphabets = dict(alphabets or {})
    model.create_weights()
    return model


def training_bytes(
    name: str,
    config: Mapping[str, Any] | None,
    batch_size: int,
    source_len: int,
    target_len: int,
    vocab_size: int,
) -> int:
    """The family's estimate of one training step's peak memory for the model `name`.

    Args:
        name: a registered model.
        config: the study's `[model]` table (`effective_model_config`).
        batch_size: examples per update.
        source_len, target_len: the longest source and target, in characters.
        vocab_size: the target vocabulary's size.

    Returns:
        Bytes (float32 activations kept for the backward pass).
    """
    spec = MODELS.get(name)
    settings = effective_model_config(name, config)
    return int(FAMILIES.get(spec.family).training_bytes(spec, settings, batch_size, source_len, target_len, vocab_size))


def keras_classes() -> list[type]:
    """Imports the Keras classes of every registered family (which registers them with Keras)
    and returns them; `keras.saving.load_model` loads a study's models after this call."""
    return [cls for name in FAMILIES.in_order() for cls in FAMILIES.get(name).keras_classes()]


def load_trained(path) -> "EncoderDecoder":
    """A model saved by a study (`<out>/models/<cell id>.keras`), with its alphabets.

    Starts the backend first ($KERAS_BACKEND; TensorFlow without its start-up notices) and
    registers the Keras classes of every family (`keras_classes`); a model of a family kept
    outside the repository needs its file loaded first (`load_model_module`).

    Args:
        path: the `.keras` file.

    Returns:
        The model (`EncoderDecoder`); `model.vocabularies()` gives its source and target
        vocabularies.

    Raises:
        TypeError, ValueError: from Keras, for a file it cannot load.
    """
    from study.backend import start_backend

    start_backend()
    import keras

    keras_classes()
    return keras.saving.load_model(path, compile=False)


def load_model_module(path: str | Path) -> list[str]:
    """Imports a model family file (or a dotted module name) kept outside this package.

    Args:
        path: a `.py` file, or an importable module name.

    Returns:
        The names of the models it registered, in registration order ([] when it was loaded
        before).

    Raises:
        ModelModuleError: it cannot be imported, breaks the family contract, registers a name
            that is taken or registers no model; one line naming the module.
    """
    target = str(path)
    before = set(MODELS.in_order())
    recorded = load_plugin(target, "model", ModelModuleError)
    added = [name for name in MODELS.in_order() if name not in before]
    if recorded in _plugins:
        return added
    if not added:
        raise ModelModuleError(f"model module {target!r} registers no model: call study.models.register_family")
    _plugins.append(recorded)
    return added


def loaded_model_modules() -> list[str]:
    """The model files and modules loaded so far with `load_model_module`, in order."""
    return list(_plugins)


def _discover() -> None:
    """Imports every family file of this package, in name order, so that they register."""
    import importlib

    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not info.ispkg and info.name != "base" and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


__all__ = [
    "FAMILIES",
    "MODELS",
    "MODEL_ORDER",
    "ModelContractError",
    "ModelFamily",
    "ModelModuleError",
    "ModelSpec",
    "UnknownNameError",
    "available_models",
    "build_model",
    "effective_model_config",
    "get_family",
    "get_model_spec",
    "keras_classes",
    "load_model_module",
    "load_trained",
    "loaded_model_modules",
    "model_setting_names",
    "model_settings_table",
    "register_family",
    "training_bytes",
]

_discover()
