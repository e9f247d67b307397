"""The model registry: the names a study grid uses, each one configuration of `Seq2Seq`.

    >>> from study.models import available_models, build_model
    >>> available_models()
    ['additive', 'additive_bidirectional', 'additive_lstm', 'additive_recurrent', 'dot', 'dot_recurrent', 'general',
     'general_recurrent', 'none', 'none_bidirectional', 'none_context', 'none_lstm', 'transformer']
    >>> model = build_model("additive", source_vocab_size=19, target_vocab_size=19, config=ModelConfig())

Every RNN name maps to the one builder with a different `attention` argument, so the
models of a comparison share the embedding, encoder, decoder, read-out layer and
sizes, and differ only in how the decoder reads the encoder.  The `_lstm` and
`_bidirectional` names change the study's model config for that model alone
(`effective_model_config`), so a grid can hold GRU and LSTM, or one- and
two-directional encoders, side by side.

Names can be listed and checked without importing Keras (so a command line can
refuse a typo before the backend starts); Keras is imported on first build.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from study.config import ModelConfig
from study.registry import Registry, UnknownNameError, check_csv_name

if TYPE_CHECKING:
    from study.models.base import EncoderDecoder


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A registered model: its name, the attention it uses and a one-line description.

    placement: where an RNN decoder reads the context ("output": after the RNN,
        Luong; "recurrent": fed into the cell, Bahdanau; "every_step": without
        attention, the encoder's final state fed into every step, Cho et al. 2014).
    family: key of BUILDERS.
    variant: ModelConfig fields this model overrides, as (field, value) pairs.
    """

    name: str
    attention: str
    description: str
    placement: str = "output"
    family: str = "rnn"
    variant: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:  # `attention` is a column of metrics.csv beside the name
        check_csv_name("attention", self.attention)


MODELS: Registry[ModelSpec] = Registry("model")

for _spec in (
    ModelSpec("none", "none", "RNN encoder-decoder; the encoder's final state is the decoder's only view of the input"),
    ModelSpec(
        "none_context",
        "none",
        "Cho et al. (2014): no attention; the encoder's final state is fed to every decoder step and the read-out",
        "every_step",
    ),
    ModelSpec("additive", "additive", "Bahdanau scoring v^T tanh(W1 h + W2 s), attention after the decoder RNN"),
    ModelSpec("dot", "dot", "Luong dot scoring s^T h, attention after the decoder RNN"),
    ModelSpec("general", "general", "Luong general scoring s^T W h, attention after the decoder RNN"),
    ModelSpec(
        "additive_recurrent",
        "additive",
        "Bahdanau's model: additive scoring from the previous state, context fed into the decoder cell",
        "recurrent",
    ),
    ModelSpec(
        "dot_recurrent", "dot", "dot scoring from the previous state, context fed into the decoder cell", "recurrent"
    ),
    ModelSpec(
        "general_recurrent",
        "general",
        "general scoring from the previous state, context fed into the decoder cell",
        "recurrent",
    ),
    ModelSpec(
        "transformer",
        "scaled_dot",
        "encoder-decoder Transformer, 2+2 layers, 4 heads, width units/2, sinusoidal positions",
        "n/a",
        "transformer",
    ),
    ModelSpec("none_lstm", "none", "`none` with LSTM cells in encoder and decoder", variant=(("cell", "lstm"),)),
    ModelSpec(
        "additive_lstm", "additive", "`additive` with LSTM cells in encoder and decoder", variant=(("cell", "lstm"),)
    ),
    ModelSpec(
        "none_bidirectional",
        "none",
        "`none` with a bidirectional encoder (final states bridged to the decoder)",
        variant=(("bidirectional", True),),
    ),
    ModelSpec(
        "additive_bidirectional",
        "additive",
        "`additive` with a bidirectional encoder (memory projected to `units`)",
        variant=(("bidirectional", True),),
    ),
):
    MODELS.register(_spec.name)(_spec)


def available_models() -> list[str]:
    """Names of every registered model, sorted."""
    return MODELS.names()


def get_model_spec(name: str) -> ModelSpec:
    """The registered spec, or `UnknownNameError` with a suggestion."""
    return MODELS.get(name)


def effective_model_config(name: str, config: ModelConfig) -> ModelConfig:
    """The study's model config with the registered model's own variant applied."""
    return dataclasses.replace(config, **dict(MODELS.get(name).variant))


def _build_rnn(spec: ModelSpec, source_vocab_size: int, target_vocab_size: int, config: ModelConfig):
    from study.models.seq2seq import Seq2Seq

    return Seq2Seq(
        source_vocab_size,
        target_vocab_size,
        attention=spec.attention,
        placement=spec.placement,
        **dataclasses.asdict(config),
        name=f"seq2seq_{spec.name}",
    )


def _build_transformer(spec: ModelSpec, source_vocab_size: int, target_vocab_size: int, config: ModelConfig):
    from study.models.transformer import Transformer

    return Transformer(source_vocab_size, target_vocab_size, units=config.units, name=spec.name)


BUILDERS = {"rnn": _build_rnn, "transformer": _build_transformer}


def build_model(
    name: str,
    source_vocab_size: int,
    target_vocab_size: int,
    config: ModelConfig = ModelConfig(),
    alphabets: dict | None = None,
) -> "EncoderDecoder":
    """Builds (and creates the weights of) the registered model `name`; `alphabets`
    ({"source": ..., "target": ...}) are saved with it."""
    spec = MODELS.get(name)
    model = BUILDERS[spec.family](spec, source_vocab_size, target_vocab_size, effective_model_config(name, config))
    model.alphabets = dict(alphabets or {})
    model.create_weights()
    return model


def load_trained(path) -> "EncoderDecoder":
    """A model saved by a study (`<out>/models/<cell id>.keras`), with its alphabets
    (`model.vocabularies()`); `keras.saving.load_model` works as well once
    `study.models.seq2seq` and `study.models.transformer` are imported (they register the classes)."""
    from study.backend import start_backend

    start_backend()  # $KERAS_BACKEND, TensorFlow without its start-up notices
    import keras

    from study.models import seq2seq, transformer  # noqa: F401  (registers the classes)

    return keras.saving.load_model(path, compile=False)


__all__ = [
    "MODELS",
    "ModelSpec",
    "UnknownNameError",
    "available_models",
    "build_model",
    "effective_model_config",
    "get_model_spec",
    "load_trained",
]
