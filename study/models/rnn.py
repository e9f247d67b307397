"""The recurrent family: RNN encoder-decoders with and without attention (`layers/seq2seq.py`).

    >>> build_model("additive", 19, 19, ModelConfig(units=64))   # Seq2Seq(attention="additive")

Every name maps to the one builder with a different `attention` and `placement`, so the models
of a comparison share the embedding, encoder, decoder, read-out layer and sizes, and differ only
in how the decoder reads the encoder.  The `_lstm` and `_bidirectional` names change their own
settings (`variant`), so a grid can hold GRU and LSTM, or one- and two-directional encoders,
side by side.  Placements: "output" (attention after the decoder RNN, Luong), "recurrent" (the
context fed into the cell, Bahdanau), "every_step" (no attention: the encoder's final state fed
into every step, Cho et al. 2014).
"""

from __future__ import annotations

import dataclasses

from study.fields import BOOLEAN, POSITIVE_INTEGER, ConfigError, check_fields
from study.models import ModelFamily, ModelSpec, register_family


@dataclasses.dataclass(frozen=True)
class RNNSettings:
    """Sizes of the recurrent encoder-decoders, the same for every attention type of a study.

    cell: "gru" or "lstm", for encoder and decoder alike.
    embedding_dim: size of the source and target character embeddings.
    units: hidden size of encoder and decoder (and of the attentional layer).
    attention_size: hidden size of the additive (Bahdanau) scorer.
    bidirectional: run the encoder in both directions (its outputs and final states are
        projected back to `units`).
    """

    cell: str = "gru"
    embedding_dim: int = 32
    units: int = 128
    attention_size: int = 64
    bidirectional: bool = False

    def __post_init__(self) -> None:
        if self.cell not in ("gru", "lstm"):
            raise ConfigError(f"model.cell must be 'gru' or 'lstm', got {self.cell!r}")
        check_fields("model", self, dict.fromkeys(("embedding_dim", "units", "attention_size"), POSITIVE_INTEGER))
        check_fields("model", self, {"bidirectional": BOOLEAN})


def build(spec: ModelSpec, settings: RNNSettings, source_vocab_size: int, target_vocab_size: int):
    """A `Seq2Seq` with the spec's attention and placement.

    Args:
        spec: the registered model.
        settings: its sizes (`RNNSettings`).
        source_vocab_size, target_vocab_size: vocabulary sizes, special ids included.

    Returns:
        The `Seq2Seq` model, its weights not yet created.
    """
    from study.models.layers.seq2seq import Seq2Seq

    return Seq2Seq(
        source_vocab_size,
        target_vocab_size,
        attention=spec.attention,
        placement=spec.option("placement", "output"),
        **dataclasses.asdict(settings),
        name=f"seq2seq_{spec.name}",
    )


def training_bytes(
    spec: ModelSpec, settings: RNNSettings, batch_size: int, source_len: int, target_len: int, vocab_size: int
) -> int:
    """Rough peak activation memory of one training step on the longest batch.

    Args:
        spec: the registered model (its attention).
        settings: its sizes.
        batch_size: examples per update.
        source_len, target_len: the longest source and target, in characters.
        vocab_size: the target vocabulary's size.

    Returns:
        Bytes: float32, forward activations kept for the backward pass, about 3 copies of the
        largest tensors.
    """
    b, s, t, u = batch_size, source_len, target_len + 1, settings.units
    directions = 2 if settings.bidirectional else 1
    floats = b * (s * directions + t) * 8 * u  # recurrent gates and states per step
    floats += 3 * b * t * vocab_size  # logits, softmax, gradient
    if spec.attention != "none":
        floats += 3 * b * t * s  # scores, weights, gradient
        floats += 2 * b * t * (2 * u)  # context and attentional state
        if spec.attention == "additive":
            floats += 2 * b * t * s * settings.attention_size  # tanh(W1 h + W2 s) and its gradient
    return 4 * floats


def keras_classes() -> tuple[type, ...]:
    """The Keras class of this family's saved models (`Seq2Seq`), registered with Keras."""
    from study.models.layers.seq2seq import Seq2Seq

    return (Seq2Seq,)


def _model(name: str, attention: str, description: str, placement: str = "output", **variant) -> ModelSpec:
    return ModelSpec(name, attention, description, (("placement", placement),), tuple(variant.items()))


# the study's models first, then their variants by name: the order of tables, colours and markers
register_family(
    ModelFamily("rnn", RNNSettings, build, training_bytes, keras_classes),
    _model("none", "none", "RNN encoder-decoder; the encoder's final state is the decoder's only view of the input"),
    _model(
        "none_context",
        "none",
        "Cho et al. (2014): no attention; the encoder's final state is fed to every decoder step and the read-out",
        "every_step",
    ),
    _model("additive", "additive", "Bahdanau scoring v^T tanh(W1 h + W2 s), attention after the decoder RNN"),
    _model("dot", "dot", "Luong dot scoring s^T h, attention after the decoder RNN"),
    _model("general", "general", "Luong general scoring s^T W h, attention after the decoder RNN"),
    _model(
        "additive_bidirectional",
        "additive",
        "`additive` with a bidirectional encoder (memory projected to `units`)",
        bidirectional=True,
    ),
    _model("additive_lstm", "additive", "`additive` with LSTM cells in encoder and decoder", cell="lstm"),
    _model(
        "additive_recurrent",
        "additive",
        "Bahdanau's model: additive scoring from the previous state, context fed into the decoder cell",
        "recurrent",
    ),
    _model(
        "dot_recurrent", "dot", "dot scoring from the previous state, context fed into the decoder cell", "recurrent"
    ),
    _model(
        "general_recurrent",
        "general",
        "general scoring from the previous state, context fed into the decoder cell",
        "recurrent",
    ),
    _model(
        "none_bidirectional",
        "none",
        "`none` with a bidirectional encoder (final states bridged to the decoder)",
        bidirectional=True,
    ),
    _model("none_lstm", "none", "`none` with LSTM cells in encoder and decoder", cell="lstm"),
)
