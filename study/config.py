"""Typed configuration of models and training, with validation that names the bad value.

ModelConfig(units=128, heads=8)                # the [model] table: settings of the model families
TrainConfig(n_train=10000, max_examples=300000)  # a pool of 10,000, validated after every pass; at most 300,000 examples
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from study.fields import (
    BOOLEAN,
    COUNT,
    FACTOR,
    NON_NEGATIVE_NUMBER,
    POSITIVE_INTEGER,
    POSITIVE_NUMBER,
    SHARE,
    TOLERANCE,
    ConfigError,
    check_fields,
    one_of,
)
from study.text import comma_list

if TYPE_CHECKING:
    from study.tasks import Task


def _positive_int(owner: str, name: str, value: Any) -> None:
    check_fields(owner, type("Field", (), {name: value})(), {name: POSITIVE_INTEGER})


class ModelConfig(Mapping):
    """The `[model]` table: settings of the model families by name, e.g. ModelConfig(units=64, heads=8).

    Each setting reaches every family whose settings have a field of that name (`units` the
    RNNs and the Transformer, `cell` the RNNs, `heads` the Transformer; `study.models`); an
    empty table leaves every family at its defaults.  A name no registered family has is refused
    here; the values are checked by the settings of each family the study uses
    (`study.models.effective_model_config`).
    """

    def __init__(self, **settings: Any) -> None:
        if settings:
            from study.models import model_setting_names

            known = model_setting_names()
            unknown = sorted(set(settings) - set(known))
            if unknown:
                raise _unknown_setting(f"model.{unknown[0]}", known)
        self._settings = dict(sorted(settings.items()))

    def __getitem__(self, key: str) -> Any:
        return self._settings[key]

    def __iter__(self):
        return iter(self._settings)

    def __len__(self) -> int:
        return len(self._settings)

    def __hash__(self) -> int:
        return hash(tuple(self._settings.items()))

    def __repr__(self) -> str:
        return f"ModelConfig({', '.join(f'{k}={v!r}' for k, v in self._settings.items())})"


SCHEDULES = ("constant", "plateau")
LOSS_NORMALISATIONS = ("token", "sequence")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The training budget and optimiser, identical for every model in a comparison.

    n_train: the training pool (fixed and cached), drawn from in passes (each pass a new
        random order).
    epoch_examples: training examples per epoch, a consecutive stretch of a pass (n_train
        must be a multiple of it; default n_train); the validation set is decoded after
        every epoch.
    max_examples: the budget, in training examples (rounded up to whole epochs): a ceiling,
        the same for every model; a cell that reaches it has not converged.
    batch_size: examples per update.
    learning_rate, clipnorm: Adam's (peak) step size and gradient-norm clipping.
    adam_beta2: Adam's decay rate of the second-moment estimate (0.999 in Kingma and Ba 2015;
        0.98 in Vaswani et al. 2017: a shorter memory, so the step size follows changes in the
        gradient's scale sooner).
    warmup_examples: a linear warm-up of the learning rate over this many examples (0: none).
    curriculum_examples: a mixed length curriculum over the first this many examples (0: none;
        Zaremba and Sutskever 2014, whose curriculum helped only mixed with examples of every
        length): in each epoch that ends before it, a share `curriculum_share` of the examples
        is drawn from the shortest part of the pool, a part that grows linearly to the whole pool
        by `curriculum_examples` (and holds at least the examples it gives), and the rest from
        the whole pool as usual (`study.train.mixed_curriculum`); 0 or above `epoch_examples`.
    curriculum_share: the share of an epoch drawn from the curriculum's shortest part.
    schedule: the learning rate after the warm-up: "constant", or "plateau"
        (`keras.callbacks.ReduceLROnPlateau` on the validation loss: multiplied by
        `lr_factor` after `lr_patience_examples` without a fall of `loss_tolerance`, never
        below `min_learning_rate`).
    patience_examples: the stretch over which convergence is judged (rounded up to whole
        epochs): training stops as converged once, over the last stretch, neither the
        validation loss per target character fell by more than `loss_tolerance` (nats)
        nor validation exact match pooled over any band of `accuracy_band` consecutive
        training lengths rose by more than the larger of `accuracy_z` binomial standard
        errors of the difference and `accuracy_tolerance` (a share; above 0 when
        `accuracy_z` is); the best weights are kept (`study.stopping.StoppingRule`).  Band 1
        and z 0: a tolerance at every length, the rule's earlier form.
    target_accuracy: stop once validation exact match reaches it.
    n_validation: validation examples per training length (greedy-decoded after every
        epoch, with exact match per length kept in the history; 64 per length gives
        checkpoint selection a standard error of at most 6 points per length and much less
        over the whole set).
    pad_multiple: batches are padded to a multiple of this many steps, so the
        compiled step sees few distinct shapes.
    loss_normalisation: "token" (every target character weighs the same, the study's
        choice) or "sequence" (every example weighs the same: its mean cross-entropy per
        character, Sutskever et al. 2014's per-sentence log-likelihood), so short examples
        count as much as long ones; the validation loss stays per character either way.
    end_token: train the decoder to emit END after each target (True, the study's models), or
        leave END out of the targets (False): such a model is always decoded for exactly its
        target's length, the control of Newman et al. (2020) for the oracle-length diagnostic.
    """

    n_train: int = 10000
    epoch_examples: int | None = None
    max_examples: int = 100000
    batch_size: int = 64
    learning_rate: float = 2e-3
    clipnorm: float = 1.0
    adam_beta2: float = 0.999
    patience_examples: int = 30000
    loss_tolerance: float = 0.005
    accuracy_tolerance: float = 0.05
    target_accuracy: float = 1.0
    schedule: str = "constant"
    warmup_examples: int = 0
    curriculum_examples: int = 0
    curriculum_share: float = 0.5
    lr_patience_examples: int = 20000
    lr_factor: float = 0.5
    min_learning_rate: float = 1e-4
    n_validation: int = 64
    pad_multiple: int = 8
    loss_normalisation: str = "token"
    end_token: bool = True
    accuracy_band: int = 1
    accuracy_z: float = 0.0

    def __post_init__(self) -> None:
        if self.epoch_examples is None:
            object.__setattr__(self, "epoch_examples", self.n_train)
        check_fields("train", self, TRAIN_RULES)
        object.__setattr__(self, "accuracy_z", float(self.accuracy_z))  # 2 and 2.0: one setting, one cell id
        object.__setattr__(self, "curriculum_share", float(self.curriculum_share))
        if self.accuracy_z and not self.accuracy_tolerance:
            raise ConfigError(
                "train.accuracy_tolerance must be above 0 when train.accuracy_z is: at a band near 0% the standard "
                "error vanishes, and one lucky validation example would count as learning"
            )
        if self.n_train % self.epoch_examples:
            raise ConfigError(
                f"train.n_train ({self.n_train}) must be a multiple of train.epoch_examples ({self.epoch_examples})"
            )
        if self.schedule == "plateau" and self.min_learning_rate > self.learning_rate:
            raise ConfigError(
                f"train.min_learning_rate ({self.min_learning_rate}) must not exceed train.learning_rate ({self.learning_rate})"
            )
        if 0 < self.curriculum_examples <= self.epoch_examples:
            raise ConfigError(
                f"train.curriculum_examples must be 0 (none) or above train.epoch_examples ({self.epoch_examples}): "
                f"the curriculum shapes only the epochs that end before it, got {self.curriculum_examples!r}"
            )
        for field in ("warmup_examples", "curriculum_examples"):
            if not 0 <= getattr(self, field) < self.max_examples:
                raise ConfigError(
                    f"train.{field} must be an integer from 0 to below the budget max_examples ({self.max_examples}), "
                    f"got {getattr(self, field)!r}"
                )

    @property
    def max_epochs(self) -> int:
        """Epochs that the budget allows: max_examples / epoch_examples, rounded up."""
        return math.ceil(self.max_examples / self.epoch_examples)

    @property
    def patience(self) -> int:
        """Epochs over which convergence is judged (the stopping rule's `patience`)."""
        from study.stopping import StoppingRule

        return StoppingRule.from_config(self).patience

    @property
    def lr_patience(self) -> int:
        """Epochs without a fall of the validation loss before the learning rate drops (schedule
        "plateau"): lr_patience_examples / epoch_examples, rounded up."""
        return math.ceil(self.lr_patience_examples / self.epoch_examples)


TRAIN_RULES = {
    **dict.fromkeys(
        (
            "n_train",
            "epoch_examples",
            "max_examples",
            "batch_size",
            "patience_examples",
            "lr_patience_examples",
            "n_validation",
            "pad_multiple",
            "accuracy_band",
        ),
        POSITIVE_INTEGER,
    ),
    **dict.fromkeys(("warmup_examples", "curriculum_examples"), COUNT),
    "accuracy_z": NON_NEGATIVE_NUMBER,
    **dict.fromkeys(("learning_rate", "clipnorm", "min_learning_rate"), POSITIVE_NUMBER),
    **dict.fromkeys(("target_accuracy", "curriculum_share"), SHARE),
    **dict.fromkeys(("loss_tolerance", "accuracy_tolerance"), TOLERANCE),
    **dict.fromkeys(("lr_factor", "adam_beta2"), FACTOR),
    "end_token": BOOLEAN,
    "loss_normalisation": one_of(LOSS_NORMALISATIONS),
    "schedule": one_of(SCHEDULES),
}

MAX_SEED = 2**32 - 1  # keras.utils.set_random_seed (numpy's legacy seeding) accepts 0..2**32 - 1
REGIMES = ("mixed", "per_length")
BACKENDS = ("tensorflow", "jax")


@dataclasses.dataclass(frozen=True)
class TaskPlan:
    """One task of a study: its options and the lengths it is trained and evaluated on.

    train_lengths: lengths the training and validation sets mix (regime "mixed"), or
        the lengths that each get a model of their own (regime "per_length").
    eval_lengths: one test set each; they may reach beyond the training range.
    """

    name: str
    train_lengths: tuple[int, ...]
    eval_lengths: tuple[int, ...]
    options: tuple[tuple[str, Any], ...] = ()

    def build(self) -> Task:
        """The task this plan names, built with its options (`study.tasks.get_task`: contract
        checked on first build; raises its UnknownNameError, TaskOptionError, TaskContractError)."""
        from study.tasks import get_task

        return get_task(self.name, **dict(self.options))

    def __post_init__(self) -> None:
        for field in ("train_lengths", "eval_lengths"):
            values = getattr(self, field)
            if not values:
                raise ConfigError(f"tasks.{self.name}.{field} must not be empty")
            for v in values:
                if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                    raise ConfigError(f"tasks.{self.name}.{field} must hold positive integers, got {v!r}")


FAMILY_LENGTHS = ("trained", "beyond", "all")
EACH_OTHER = "each other"


@dataclasses.dataclass(frozen=True)
class ComparisonFamily:
    """One family of paired comparisons between models, declared before the data and corrected
    together (Holm) in the report's "Which models differ".

    name: how the report heads it.
    against: a model name (each other model compared with it, at each length), or "each other":
        the pairs of models of which neither is named by a family's `against`.
    lengths: "trained" (the lengths a model was trained on), "beyond" (evaluation lengths past
        the trained range) or "all".
    primary: the claim under test; the other families are exploratory.
    A comparison belongs to the first family it fits; one that fits none gets no verdict.
    Raises ConfigError for an unknown `lengths`.
    """

    name: str
    against: str = EACH_OTHER
    lengths: str = "all"
    primary: bool = False

    def __post_init__(self) -> None:
        if self.lengths not in FAMILY_LENGTHS:
            raise ConfigError(f"families: lengths must be one of {', '.join(FAMILY_LENGTHS)}, got {self.lengths!r}")
        for name in ("name", "against"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ConfigError(f"families: {name} must be a non-empty string, got {getattr(self, name)!r}")
        if not isinstance(self.primary, bool):
            raise ConfigError(f"families: primary must be true or false, got {self.primary!r}")


# the claim under test (attention against the single context vector inside the trained range) and
# two exploratory families, each corrected on its own
STANDARD_FAMILIES = (
    ComparisonFamily("each other model against none, at the trained lengths", "none", "trained", primary=True),
    ComparisonFamily("each other model against none, beyond the trained range", "none", "beyond"),
    ComparisonFamily("the other pairs of models, at every length", EACH_OTHER, "all"),
)


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    """Everything a study run depends on; every results record carries all of it.

    tasks: the tasks and their lengths; models: registered model names;
    seeds: one cell per (task, model, seed) (and per training length in regime
    "per_length"); n_test: test examples per evaluation length (1000: the standard
    error of one seed's exact match is at most 50/sqrt(1000) = 1.6 points); backend: Keras
    backend; jobs: cells trained in parallel processes (0: one process per CPU
    core); cell_cpus: the threads each cell
    trains with, whatever `jobs` and the executor (a record reproduces under its own
    thread layout only), and the CPUs it asks of a Ray cluster; cell_gpus: the GPUs it
    asks of a Ray cluster (`--executor ray`);
    variant: the name of the config file's `[variants.NAME]` table this study runs (None when
    the file has none); it names the study in reports and is not part of any cell's identity;
    families: the families of comparisons the report tests (`ComparisonFamily`), declared
    before the data; not part of any cell's identity.
    """

    profile: str
    tasks: tuple[TaskPlan, ...]
    models: tuple[str, ...]
    seeds: tuple[int, ...]
    regime: str = "mixed"
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    n_test: int = 1000
    backend: str = "tensorflow"
    jobs: int = 0
    cell_cpus: int = 1
    cell_gpus: float = 0.0
    tensorboard: bool = False
    variant: str | None = None
    families: tuple[ComparisonFamily, ...] = STANDARD_FAMILIES

    def __post_init__(self) -> None:
        if self.regime not in REGIMES:
            raise ConfigError(f"regime must be one of {', '.join(REGIMES)}, got {self.regime!r}")
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if not self.tasks or not self.models or not self.seeds:
            empty = [n for n in ("tasks", "models", "seeds") if not getattr(self, n)]
            raise ConfigError(f"the study grid is empty: no {' and no '.join(empty)} selected")
        for s in self.seeds:
            if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s <= MAX_SEED:
                raise ConfigError(
                    f"seeds must be integers from 0 to {MAX_SEED} (the range of keras.utils.set_random_seed and numpy), got {s!r}"
                )
        _positive_int("study", "n_test", self.n_test)
        if isinstance(self.jobs, bool) or not isinstance(self.jobs, int) or self.jobs < 0:
            raise ConfigError(f"jobs must be a non-negative integer (0: one per CPU core), got {self.jobs!r}")
        _positive_int("study", "cell_cpus", self.cell_cpus)
        if (
            isinstance(self.cell_gpus, bool)
            or not isinstance(self.cell_gpus, (int, float))
            or not 0 <= self.cell_gpus < math.inf
        ):
            raise ConfigError(f"cell_gpus must be a number >= 0 (a fraction shares a GPU), got {self.cell_gpus!r}")
        if not isinstance(self.tensorboard, bool):
            raise ConfigError(f"tensorboard must be true or false, got {self.tensorboard!r}")

    @property
    def workers(self) -> int:
        """Parallel cell processes: `jobs`, or one per CPU core when `jobs` is 0."""
        return self.jobs or available_cores()


def available_cores() -> int:
    """The CPU cores this process may use (a batch scheduler's allocation, not the whole node)."""
    import os

    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # platforms without affinity masks
        return max(1, os.cpu_count() or 1)


PROFILES: dict[str, dict[str, Any]] = {
    # seconds: a tiny grid that still exercises every stage (used by the tests)
    "smoke": {
        "tasks": {
            "copy": {"train_lengths": "2..5", "eval_lengths": [2, 5, 8]},
            "date_format": {"train_lengths": "1..2", "eval_lengths": [1, 2, 3]},
        },
        "models": ["none", "dot"],
        "seeds": [0, 1],
        "n_test": 50,
        "model": {"embedding_dim": 16, "units": 32, "attention_size": 16},
        "train": {
            "n_train": 1024,
            "max_examples": 3072,
            "batch_size": 32,
            "learning_rate": 0.01,
            "n_validation": 16,
            "patience_examples": 3072,
        },
    },
    # the default: every core task and model, 3 seeds, evaluation beyond the trained range
    "standard": {
        "tasks": {
            # beyond the trained range every 4 symbols (every date), so the first untrained lengths are seen
            "copy": {"train_lengths": "4..32", "eval_lengths": [4, 8, 16, 24, 32, *range(36, 65, 4)]},
            "reverse": {"train_lengths": "4..32", "eval_lengths": [4, 8, 16, 24, 32, *range(36, 65, 4)]},
            "date_format": {"train_lengths": "1..4", "eval_lengths": [1, 2, 3, 4, 5, 6, 7, 8]},
        },
        "models": ["none", "additive", "dot", "general"],
        "seeds": [0, 1, 2],
        "n_test": 1000,
        "model": {},
        # the recipe chosen by the sweep (examples/sweep.toml, results/sweep-histories; BENCHMARKS.md):
        # a 100,000-example pool, validation every 10,000, Adam at 2.1e-3 on batches of 32 with a
        # 5,000-example warm-up, halved when the validation loss stalls for 20,000 examples (floor
        # 1e-5, below where any cell of the grid converges); converged when 40,000 examples gain
        # neither 0.005 nats per character nor, on any band of 8 training lengths (512 validation
        # examples), more exact match than 2 standard errors of the difference (at least 1 point);
        # the budget a ceiling
        "train": {
            "n_train": 100000,
            "epoch_examples": 10000,
            "max_examples": 200000,
            "patience_examples": 40000,
            "batch_size": 32,
            "learning_rate": 0.0021,
            "schedule": "plateau",
            "warmup_examples": 5000,
            "min_learning_rate": 1e-5,
            "accuracy_tolerance": 0.01,
            "accuracy_band": 8,
            "accuracy_z": 2.0,
        },
    },
    # hours on a CPU, meant for a GPU: longer lengths, 5 seeds, a larger budget
    "full": {
        "tasks": {
            "copy": {"train_lengths": "4..64", "eval_lengths": [4, 8, 16, 32, 48, 64, 96, 128]},
            "reverse": {"train_lengths": "4..64", "eval_lengths": [4, 8, 16, 32, 48, 64, 96, 128]},
            "date_format": {"train_lengths": "1..6", "eval_lengths": [1, 2, 3, 4, 6, 8, 10, 12]},
        },
        "models": [
            "none",
            "none_context",
            "additive",
            "dot",
            "general",
            "additive_recurrent",
            "dot_recurrent",
            "general_recurrent",
            "transformer",
            "none_lstm",
            "additive_lstm",
            "none_bidirectional",
            "additive_bidirectional",
        ],
        "seeds": [0, 1, 2, 3, 4],
        "n_test": 1000,
        "model": {},
        "train": {
            "n_train": 200000,
            "epoch_examples": 20000,
            "max_examples": 1000000,
            "patience_examples": 100000,
            "lr_patience_examples": 40000,
            "batch_size": 64,
            "learning_rate": 0.003,
            "schedule": "plateau",
            "warmup_examples": 5000,
            "min_learning_rate": 1e-5,
            "accuracy_tolerance": 0.01,
            "accuracy_band": 8,
            "accuracy_z": 2.0,
        },
    },
}

_STUDY_KEYS = {
    "tasks",
    "models",
    "seeds",
    "regime",
    "n_test",
    "backend",
    "jobs",
    "cell_cpus",
    "cell_gpus",
    "tensorboard",
    "model",
    "train",
    "families",
}
_TASK_KEYS = {"train_lengths", "eval_lengths", "options"}


def parse_lengths(value: Any, where: str) -> tuple[int, ...]:
    """A list of positive integers, or a range written "lo..hi" (inclusive) -> sorted tuple."""
    if isinstance(value, str):
        parts = value.split("..")
        if len(parts) == 2 and all(p.strip().isdigit() for p in parts) and int(parts[0]) > int(parts[1]) >= 1:
            raise ConfigError(f"{where}: the range {value!r} runs backwards; write '{int(parts[1])}..{int(parts[0])}'")
        try:
            if len(parts) == 2:
                lo, hi = int(parts[0]), int(parts[1])
                values = list(range(lo, hi + 1))
                if not values or lo < 1:
                    raise ValueError
            else:
                values = [int(p) for p in comma_list(value)]
        except ValueError:
            raise ConfigError(
                f"{where} must be positive integers, a list like 4,8,16 or a range like 4..32, got {value!r}"
            ) from None
    elif isinstance(value, (list, tuple)):
        values = list(value)
    else:
        raise ConfigError(f"{where} must be a list of positive integers or a range like '4..32', got {value!r}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"{where} must hold positive integers, got {v!r}")
    if not values:
        raise ConfigError(f"{where} must not be empty")
    return tuple(sorted(set(values)))


def file_task_plans(profile: str, file_tasks: dict) -> dict:
    """A config file's `[tasks.X]` tables, each merged over the profile's settings for X (a
    profile task keeps its lengths unless the file gives them); the file's tasks are the
    study's tasks, as `--tasks` and a variant's `tasks` select theirs."""
    profile_tasks = PROFILES[profile]["tasks"]
    return {
        name: merge_settings(profile_tasks.get(name, {}), plan) if isinstance(plan, dict) else plan
        for name, plan in file_tasks.items()
    }


def merge_settings(base: dict, override: dict) -> dict:
    """Recursive dict merge; `override` wins."""
    out = dict(base)
    for key, value in override.items():
        out[key] = (
            merge_settings(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


def _unknown_setting(name: str, allowed) -> ConfigError:
    """'unknown setting NAME; did you mean 'X'? (allowed: ...)' for a key of a config table
    (`name` with its table's path, e.g. "train.lerning_rate")."""
    import difflib

    close = difflib.get_close_matches(name.rpartition(".")[2], allowed, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"unknown setting {name!r}{hint} (allowed: {', '.join(sorted(allowed))})")


def _dataclass_from(cls, raw: Any, where: str):
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a table of settings, got {raw!r}")
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - fields)
    if unknown:
        raise _unknown_setting(f"{where}.{unknown[0]}", fields)
    try:
        return cls(**raw)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def build_study_config(
    profile: str = "standard", file_settings: dict | None = None, overrides: dict | None = None
) -> StudyConfig:
    """Profile settings, then a config file's, then command-line overrides, validated.

    Raises ConfigError with a one-line message naming the bad key or value.
    """
    raw = _merged_settings(profile, file_settings, overrides)
    unknown = sorted(set(raw) - _STUDY_KEYS - {"profile"})
    if unknown:
        raise _unknown_setting(unknown[0], _STUDY_KEYS | {"profile", "variants"})
    plans = _task_plans(raw["tasks"])
    models = raw["models"]
    if not isinstance(models, (list, tuple)) or not all(isinstance(m, str) for m in models):
        raise ConfigError(f"models must be a list of model names, got {models!r}")
    seeds = raw["seeds"]
    if not isinstance(seeds, (list, tuple)):
        raise ConfigError(f"seeds must be a list of integers, got {seeds!r}")
    return StudyConfig(
        profile=profile,
        tasks=tuple(plans),
        models=tuple(dict.fromkeys(models)),
        seeds=tuple(dict.fromkeys(seeds)),
        regime=raw.get("regime", "mixed"),
        model=_model_table(raw.get("model", {}), models),
        train=_dataclass_from(TrainConfig, raw.get("train", {}), "train"),
        n_test=raw.get("n_test", 1000),
        backend=raw.get("backend", "tensorflow"),
        jobs=raw.get("jobs", 0),
        cell_cpus=raw.get("cell_cpus", 1),
        cell_gpus=raw.get("cell_gpus", 0.0),
        tensorboard=raw.get("tensorboard", False),
        families=parse_families(raw.get("families")),
    )


def _merged_settings(profile: str, file_settings: dict | None, overrides: dict | None) -> dict:
    """The profile's settings, a config file's merged over them and the command line's over
    both, not yet validated; the file's `[tasks.X]` tables are the study's tasks
    (`file_task_plans`) and a command line's task list replaces them."""
    if profile not in PROFILES:
        import difflib

        close = difflib.get_close_matches(str(profile), PROFILES, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown profile {profile!r}{hint} (available: {', '.join(PROFILES)})")
    file_settings = dict(file_settings or {})
    file_tasks = file_settings.pop("tasks", None)
    raw = merge_settings(PROFILES[profile], file_settings)
    if file_tasks is not None:
        if not isinstance(file_tasks, dict):
            raise ConfigError(f"tasks must be a table of task name -> settings, got {file_tasks!r}")
        raw["tasks"] = file_task_plans(profile, file_tasks)
    overrides = dict(overrides or {})
    selected_tasks = overrides.pop("tasks", None)
    raw = merge_settings(raw, overrides)
    if selected_tasks is not None:  # a command line's task list selects; it does not add to the profile's
        raw["tasks"] = selected_tasks
    return raw


def _task_plans(tasks_raw: Any) -> list[TaskPlan]:
    """The `tasks` table (task name -> train_lengths, eval_lengths and options) as TaskPlans."""
    if not isinstance(tasks_raw, dict):
        raise ConfigError(f"tasks must be a table of task name -> settings, got {tasks_raw!r}")
    plans = []
    for name, settings in tasks_raw.items():
        if not isinstance(settings, dict):
            raise ConfigError(f"tasks.{name} must be a table of settings, got {settings!r}")
        bad = sorted(set(settings) - _TASK_KEYS)
        if bad:
            raise _unknown_setting(f"tasks.{name}.{bad[0]}", _TASK_KEYS)
        for key in ("train_lengths", "eval_lengths"):
            if key not in settings:
                raise ConfigError(f"tasks.{name}.{key} is missing")
        options = settings.get("options", {})
        if not isinstance(options, dict):
            raise ConfigError(f"tasks.{name}.options must be a table, got {options!r}")
        plans.append(
            TaskPlan(
                name=name,
                train_lengths=parse_lengths(settings["train_lengths"], f"tasks.{name}.train_lengths"),
                eval_lengths=parse_lengths(settings["eval_lengths"], f"tasks.{name}.eval_lengths"),
                options=tuple(sorted(options.items())),
            )
        )
    return plans


def _model_table(raw: Any, models: list[str]) -> ModelConfig:
    """The `[model]` table, its values checked by the families of `models` (names not registered
    are left to the grid's own check)."""
    if not isinstance(raw, dict):
        plural = "; did you mean 'models' (a list of model names)?" if isinstance(raw, list) else ""
        raise ConfigError(f"model must be a table of settings, got {raw!r}{plural}")
    from study.models import MODELS, effective_model_config

    table = ModelConfig(**raw)
    for name in models:
        if name in MODELS:
            effective_model_config(name, table)
    return table


def parse_families(raw: Any) -> tuple[ComparisonFamily, ...]:
    """A config file's `[[families]]` tables (None: `STANDARD_FAMILIES`); raises ConfigError."""
    if raw is None:
        return STANDARD_FAMILIES
    if not isinstance(raw, (list, tuple)) or not raw:
        raise ConfigError(f"families must be a non-empty list of tables ([[families]]), got {raw!r}")
    return tuple(
        f if isinstance(f, ComparisonFamily) else _dataclass_from(ComparisonFamily, f, f"families[{i}]")
        for i, f in enumerate(raw)
    )


def config_to_dict(config: StudyConfig) -> dict:
    """A JSON-serialisable copy of the configuration."""
    from study.models import model_settings_table

    out = dataclasses.asdict(config)
    out["model"] = model_settings_table(config.models, config.model)
    out["tasks"] = [{**t, "options": dict(t["options"])} for t in out["tasks"]]
    return out


# the command line's study settings (`study_configs`' `command_line`), besides tasks and lengths
COMMAND_LINE_SETTINGS = ("models", "seeds", "regime", "backend", "jobs", "tensorboard")
VARIANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def study_configs(profile: str | None, file_settings: dict, command_line: dict) -> list[StudyConfig]:
    """The validated configurations of one run, each setting taken from the first of: the command
    line, the config file's variant, the rest of the config file, the profile.

    Args:
        profile: the profile named on the command line (the file's `profile` wins; None: "standard").
        file_settings: a parsed config file (`{}` without one); each `[variants.NAME]` table is a
            study of its own, merged over the rest of the file and named by `variant`.
        command_line: settings given on the command line: `COMMAND_LINE_SETTINGS`, `tasks` (a list
            of names: it selects, it does not add), `train_lengths` and `eval_lengths` (strings as
            typed, applied to every selected task).

    Returns:
        One StudyConfig per variant in the file's order, or the one study.

    Raises:
        ConfigError: a one-line message naming the bad key or value (and the flag that gave it).
    """
    file_settings = dict(file_settings)
    profile = file_settings.pop("profile", None) or profile or "standard"
    if profile not in PROFILES:
        build_study_config(profile)  # raises the unknown-profile error
    variants = _variants(file_settings)
    if not variants:
        return [_one_study(profile, file_settings, command_line)]
    configs = []
    for name, settings in variants.items():
        settings = dict(settings)
        selected = settings.pop("tasks", None)
        config = _one_study(profile, merge_settings(file_settings, settings), command_line, selected)
        configs.append(dataclasses.replace(config, variant=name))
    return configs


def _variants(file_settings: dict) -> dict[str, dict]:
    """The config file's `[variants.NAME]` tables, taken out of `file_settings` ({} for none)."""
    variants = file_settings.pop("variants", None)
    if variants is None:
        return {}
    if not isinstance(variants, dict) or not variants:
        raise ConfigError("variants must be one or more tables [variants.NAME] of study settings")
    for name, settings in variants.items():
        if not VARIANT_NAME.fullmatch(name):
            raise ConfigError(f"variant name {name!r} must be letters, digits, '_', '.' or '-' (it names a folder)")
        if not isinstance(settings, dict):
            raise ConfigError(f"variants.{name} must be a table of settings, got {settings!r}")
        if "profile" in settings or "variants" in settings:
            raise ConfigError(f"variants.{name} cannot set profile or variants; set the profile at the top of the file")
    return variants


def _command_line_tasks(command_line: dict, base_tasks: dict) -> dict | None:
    """The command line's task plans ({name: settings}) from `tasks`, `eval_lengths` and
    `train_lengths` over `base_tasks` (the profile's and the file's), or None when it gives none."""
    from study.tasks import get_task

    lengths = {key: command_line.get(key) for key in ("train_lengths", "eval_lengths")}
    flags = {"train_lengths": "--train-lengths", "eval_lengths": "--lengths"}
    for key, value in lengths.items():
        if value:
            parse_lengths(value, flags[key])  # a bad value is named by the flag the user typed
    if command_line.get("tasks") is None and not any(lengths.values()):
        return None
    tasks = {}
    for name in command_line.get("tasks") or list(base_tasks):
        get_task(name)  # an unknown name fails here, with a suggestion
        plan = {**base_tasks.get(name, {}), **{key: value for key, value in lengths.items() if value}}
        missing = [flags[key] for key in flags if key not in plan]
        if missing:
            raise ConfigError(f"task {name!r} is not in the profile; give its lengths with {' and '.join(missing)}")
        tasks[name] = plan
    return tasks


def _one_study(profile: str, file_settings: dict, command_line: dict, selected_tasks: Any = None) -> StudyConfig:
    """One study's configuration (`study_configs`); `selected_tasks`, a variant's own tasks,
    replaces the task list unless the command line gives one.  Checks every model name and every
    length against its task."""
    file_settings = dict(file_settings)
    file_tasks = file_settings.get("tasks")
    plans = file_task_plans(profile, file_tasks) if isinstance(file_tasks, dict) else {}
    base_tasks = {**PROFILES[profile]["tasks"], **{n: p for n, p in plans.items() if isinstance(p, dict)}}
    if command_line.get("tasks") is not None:
        file_settings.pop("tasks", None)
    overrides = {name: command_line[name] for name in COMMAND_LINE_SETTINGS if command_line.get(name) is not None}
    tasks = _command_line_tasks(command_line, base_tasks)
    if tasks is not None:
        overrides["tasks"] = tasks
    elif selected_tasks is not None:
        if not isinstance(selected_tasks, dict):
            raise ConfigError(f"a variant's tasks must be a table of task name -> settings, got {selected_tasks!r}")
        overrides["tasks"] = {
            name: {**base_tasks.get(name, {}), **(plan or {})} for name, plan in selected_tasks.items()
        }
    config = build_study_config(profile, file_settings, overrides)
    from study.models import get_model_spec

    for model in config.models:
        get_model_spec(model)
    for plan in config.tasks:
        task = plan.build()
        for length in (*plan.train_lengths, *plan.eval_lengths):
            try:
                task.check_length(length)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
    return config
