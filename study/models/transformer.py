"""The Transformer family: one encoder-decoder Transformer, the non-recurrent baseline
(`layers/transformer.py`).

    >>> build_model("transformer", 19, 19, ModelConfig(units=128, heads=8, layers=3))

Its settings come from the study's `[model]` table like the RNNs': `units` (U: model width
U / 2, feed-forward width U, about the GRU models' parameter count at U = 128) is shared with
them, `heads` and `layers` are its own.
"""

from __future__ import annotations

import dataclasses

from study.fields import POSITIVE_INTEGER, ConfigError, check_fields
from study.models import ModelFamily, ModelSpec, register_family


@dataclasses.dataclass(frozen=True)
class TransformerSettings:
    """Sizes of the Transformer.

    units: U; model width U / 2 (which `heads` must divide), feed-forward width U.
    heads: attention heads of every attention layer.
    layers: blocks in the encoder and in the decoder.
    """

    units: int = 128
    heads: int = 4
    layers: int = 2

    def __post_init__(self) -> None:
        check_fields("model", self, dict.fromkeys(("units", "heads", "layers"), POSITIVE_INTEGER))
        if (self.units // 2) % self.heads:
            raise ConfigError(
                f"model.heads must divide the Transformer's width units / 2 = {self.units // 2}, got heads = {self.heads}"
            )


def build(spec: ModelSpec, settings: TransformerSettings, source_vocab_size: int, target_vocab_size: int):
    """A `Transformer` of the given sizes.

    Args:
        spec: the registered model.
        settings: its sizes (`TransformerSettings`).
        source_vocab_size, target_vocab_size: vocabulary sizes, special ids included.

    Returns:
        The `Transformer` model, its weights not yet created.
    """
    from study.models.layers.transformer import Transformer

    return Transformer(
        source_vocab_size,
        target_vocab_size,
        units=settings.units,
        heads=settings.heads,
        layers=settings.layers,
        name=spec.name,
    )


def training_bytes(
    spec: ModelSpec,
    settings: TransformerSettings,
    batch_size: int,
    source_len: int,
    target_len: int,
    vocab_size: int,
) -> int:
    """Rough peak activation memory of one training step on the longest batch.

    Args:
        spec: the registered model.
        settings: its sizes.
        batch_size: examples per update.
        source_len, target_len: the longest source and target, in characters.
        vocab_size: the target vocabulary's size.

    Returns:
        Bytes: float32, forward activations kept for the backward pass (projections, norms and
        feed-forward per position, attention weights per head and pair of positions).
    """
    b, s, t, d, layers = batch_size, source_len, target_len + 1, settings.units // 2, settings.layers
    floats = layers * b * (s + 2 * t) * (6 * d + 2 * settings.units)  # per position, per layer
    floats += layers * 3 * b * settings.heads * (s * s + t * t + t * s)  # scores, weights, gradient
    floats += 3 * b * t * vocab_size  # logits, softmax, gradient
    return 4 * floats


def keras_classes() -> tuple[type, ...]:
    """The Keras class of this family's saved models (`Transformer`), registered with Keras."""
    from study.models.layers.transformer import Transformer

    return (Transformer,)


register_family(
    ModelFamily("transformer", TransformerSettings, build, training_bytes, keras_classes),
    ModelSpec(
        "transformer",
        "scaled_dot",
        "encoder-decoder Transformer (2+2 layers, 4 heads by default), width units/2, sinusoidal positions",
    ),
)
