"""Typed configuration of models and training, with validation that names the bad value.

    ModelConfig(units=128, attention_size=64)      # sizes shared by every model of a comparison
    TrainConfig(n_train=20000, max_epochs=8)        # the budget: at most n_train * max_epochs examples
"""

from __future__ import annotations

import dataclasses
from typing import Any


class ConfigError(ValueError):
    """A configuration value that is not allowed; the message names the field and what is allowed."""


def _positive_int(owner: str, name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{owner}.{name} must be a positive integer, got {value!r}")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Sizes and variants of the encoder-decoder; identical for every attention type in a study.

    cell: "gru" or "lstm", for encoder and decoder alike.
    embedding_dim: size of the source and target character embeddings.
    units: hidden size of encoder and decoder (and of the attentional layer).
    attention_size: hidden size of the additive (Bahdanau) scorer.
    bidirectional: run the encoder in both directions (its outputs and final
        states are projected back to `units`).
    """

    cell: str = "gru"
    embedding_dim: int = 32
    units: int = 128
    attention_size: int = 64
    bidirectional: bool = False

    def __post_init__(self) -> None:
        if self.cell not in ("gru", "lstm"):
            raise ConfigError(f"model.cell must be 'gru' or 'lstm', got {self.cell!r}")
        for name in ("embedding_dim", "units", "attention_size"):
            _positive_int("model", name, getattr(self, name))
        if not isinstance(self.bidirectional, bool):
            raise ConfigError(f"model.bidirectional must be true or false, got {self.bidirectional!r}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The training budget and optimiser, identical for every model in a comparison.

    n_train: training examples per epoch (a fixed, cached pool).
    max_epochs: the budget is at most n_train * max_epochs examples.
    batch_size: examples per update.
    learning_rate, clipnorm: Adam's step size and gradient-norm clipping.
    patience: epochs without a better validation exact-match before stopping.
    target_accuracy: stop once validation exact-match reaches it.
    n_validation: validation examples (greedy-decoded after every epoch).
    pad_multiple: batches are padded to a multiple of this many steps, so the
        compiled step sees few distinct shapes.
    """

    n_train: int = 20000
    max_epochs: int = 10
    batch_size: int = 64
    learning_rate: float = 2e-3
    clipnorm: float = 1.0
    patience: int = 3
    target_accuracy: float = 1.0
    n_validation: int = 512
    pad_multiple: int = 8

    def __post_init__(self) -> None:
        for name in ("n_train", "max_epochs", "batch_size", "patience", "n_validation", "pad_multiple"):
            _positive_int("train", name, getattr(self, name))
        for name in ("learning_rate", "clipnorm"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"train.{name} must be a positive number, got {value!r}")
        if isinstance(self.target_accuracy, bool) or not isinstance(self.target_accuracy, (int, float)) or not 0 < self.target_accuracy <= 1:
            raise ConfigError(f"train.target_accuracy must be a number in (0, 1], got {self.target_accuracy!r}")
