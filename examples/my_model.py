"""A model family kept outside the repository: multiplicative attention with learned projections.

    python run_study.py --profile smoke --models none,multiplicative --model-module examples/my_model.py --out results/mult-smoke
    python run_study.py predict results/mult-smoke --model-module examples/my_model.py --task copy --model multiplicative abcd

The decoder state s_t and every encoder output h_s are projected to `key_size` dimensions
and scored by their scaled product, score(s_t, h_s) = (W_q s_t) . (W_k h_s) / sqrt(key_size),
inside the study's RNN encoder-decoder (`Seq2Seq`, attention after the decoder RNN); only
the scorer is new.  `key_size`, like `units`, is set in a config file's `[model]` table.

The file is imported to list and check model names, before the Keras backend starts: Keras
is imported inside `build` and `keras_classes` only.
"""

from __future__ import annotations

import dataclasses
import functools

from study.config import ConfigError
from study.models import ModelFamily, ModelSpec, register_family


@dataclasses.dataclass(frozen=True)
class MultiplicativeSettings:
    """embedding_dim, units: as the RNNs'; key_size: the width of the projected queries and keys."""

    embedding_dim: int = 32
    units: int = 128
    key_size: int = 32

    def __post_init__(self) -> None:
        for name, value in dataclasses.asdict(self).items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"model.{name} must be a positive integer, got {value!r}")


@functools.cache  # the scorer is defined and registered once per process
def keras_classes():
    """Defines the scorer (registered as the attention "multiplicative") and returns the Keras
    class its models are saved as."""
    import keras
    from keras import ops

    from study.models.layers.attention import SCORERS, Scorer
    from study.models.layers.seq2seq import Seq2Seq

    @SCORERS.register("multiplicative")
    class MultiplicativeScorer(Scorer):
        def __init__(self, units: int, attention_size: int, **kwargs) -> None:
            super().__init__(units, attention_size, **kwargs)
            self.query = keras.layers.Dense(attention_size, use_bias=False, name="query")
            self.key = keras.layers.Dense(attention_size, use_bias=False, name="key")

        def keys(self, memory):  # (batch, S, units) -> (batch, S, key_size), once per sequence
            return self.key(memory)

        def score(self, queries, keys):  # (batch, T, units), (batch, S, key_size) -> (batch, T, S)
            return ops.einsum("bta,bsa->bts", self.query(queries), keys) / float(self.attention_size) ** 0.5

    return (Seq2Seq,)


def build(spec, settings: MultiplicativeSettings, source_vocab_size: int, target_vocab_size: int):
    """The study's GRU encoder-decoder with the multiplicative scorer."""
    (seq2seq,) = keras_classes()
    return seq2seq(
        source_vocab_size,
        target_vocab_size,
        attention="multiplicative",
        embedding_dim=settings.embedding_dim,
        units=settings.units,
        attention_size=settings.key_size,
        name=f"seq2seq_{spec.name}",
    )


def training_bytes(spec, settings: MultiplicativeSettings, batch_size, source_len, target_len, vocab_size) -> int:
    """The recurrent family's estimate for `dot` attention, plus the projected queries and keys."""
    from study.models.rnn import RNNSettings
    from study.models.rnn import training_bytes as rnn_bytes

    sizes = RNNSettings(embedding_dim=settings.embedding_dim, units=settings.units)
    dot = dataclasses.replace(spec, attention="dot")
    return (
        rnn_bytes(dot, sizes, batch_size, source_len, target_len, vocab_size)
        + 4 * 2 * batch_size * (source_len + target_len + 1) * settings.key_size
    )


register_family(
    ModelFamily("multiplicative", MultiplicativeSettings, build, training_bytes, keras_classes),
    ModelSpec(
        "multiplicative",
        "multiplicative",
        "scaled multiplicative scoring (W_q s)^T (W_k h) / sqrt(key_size), after the decoder RNN",
    ),
)
