"""A small encoder-decoder Transformer, the non-recurrent baseline of the study.

    model = Transformer(source_vocab_size=19, target_vocab_size=19, units=128)
    logits, weights = model.teacher_forced(source_ids, decoder_inputs)
    # logits: (batch, T, vocab); weights: (batch, T, S), the last decoder layer's
    # cross-attention averaged over heads

Vaswani et al. 2017 in miniature: token embeddings scaled by sqrt(d) plus
sinusoidal positions, `layers` post-norm encoder and decoder blocks built from
Keras' MultiHeadAttention (source padding masked in every attention, causal mask
in the decoder's self-attention), no dropout.  With the study's `units` = U the
model width is d = U / 2 and the feed-forward width U, which at U = 128 gives
about the parameter count of the GRU models.  Greedy decoding keeps each
decoder layer's self-attention keys and values of the positions decoded so far
(a key/value cache) and projects the encoder memory for cross-attention once,
so a step costs one position's work, inside the same compiled loop as the RNNs;
the consistency test checks it against the teacher-forced model.
"""

from __future__ import annotations

from study.backend import start_backend_unless_started

start_backend_unless_started()  # before Keras imports the backend: TensorFlow without its start-up notices

import keras
from keras import ops

from study.models.base import EncoderDecoder
from study.models.layers.attention import MASKED_SCORE
from study.vocab import PAD


def sinusoidal_positions(length, dim: int):
    """(length, dim) float: sin on the first half of the features, cos on the second."""
    position = ops.expand_dims(ops.arange(length, dtype="float32"), 1)
    index = ops.expand_dims(ops.arange(dim // 2, dtype="float32"), 0)
    angle = position / ops.power(10000.0, 2.0 * index / dim)
    return ops.concatenate([ops.sin(angle), ops.cos(angle)], axis=-1)


def _attend(attention, x, keys, values, visible):
    """One query position through a MultiHeadAttention layer's own projections.

    x: (batch, 1, d); keys, values: (batch, K, heads, head_dim), already projected by the
    layer; visible: (batch or 1, K) bool.  Returns the output (batch, 1, d) and the
    weights (batch, heads, 1, K), as the layer's `call` computes them.
    """
    query = attention._query_dense(x) * (1.0 / float(attention._key_dim) ** 0.5)
    scores = ops.einsum("bqhd,bkhd->bhqk", query, keys)
    weights = ops.softmax(ops.where(visible[:, None, None, :], scores, MASKED_SCORE), axis=-1)
    return attention._output_dense(ops.einsum("bhqk,bkhd->bqhd", weights, values)), weights


class _Block(keras.layers.Layer):
    """Post-norm block: self-attention, optional cross-attention, feed-forward."""

    def __init__(self, dim: int, heads: int, ff: int, cross: bool, **kwargs) -> None:
        super().__init__(**kwargs)
        self.self_attention = keras.layers.MultiHeadAttention(heads, dim // heads, name="self_attention")
        self.cross_attention = (
            keras.layers.MultiHeadAttention(heads, dim // heads, name="cross_attention") if cross else None
        )
        self.ff_in = keras.layers.Dense(ff, activation="relu", name="ff_in")
        self.ff_out = keras.layers.Dense(dim, name="ff_out")
        self.norms = [keras.layers.LayerNormalization(name=f"norm_{i}") for i in range(3 if cross else 2)]

    def call(self, x, self_mask, memory=None, cross_mask=None):
        x = self.norms[0](x + self.self_attention(x, x, attention_mask=self_mask))
        weights = None
        if self.cross_attention is not None:
            attended, weights = self.cross_attention(x, memory, attention_mask=cross_mask, return_attention_scores=True)
            x = self.norms[1](x + attended)
        return self.norms[-1](x + self.ff_out(self.ff_in(x))), weights

    def step(self, x, here, cache, visible, cross, cross_visible):
        """One decoder position: x (batch, 1, d) at position `here` (one-hot over the cache);
        cache: this layer's (keys, values) so far, (batch, T, heads, head_dim) each; cross:
        the encoder memory's projected (keys, values).  Returns the output, the updated cache
        and the cross-attention weights (batch, heads, 1, S)."""
        at = here[None, :, None, None]
        keys = cache[0] + at * self.self_attention._key_dense(x)
        values = cache[1] + at * self.self_attention._value_dense(x)
        attended, _ = _attend(self.self_attention, x, keys, values, visible)
        x = self.norms[0](x + attended)
        attended, weights = _attend(self.cross_attention, x, *cross, cross_visible)
        x = self.norms[1](x + attended)
        return self.norms[-1](x + self.ff_out(self.ff_in(x))), (keys, values), weights


@keras.saving.register_keras_serializable(package="study")
class Transformer(EncoderDecoder):
    """Encoder-decoder Transformer with the study's model interface.

    Args:
        source_vocab_size, target_vocab_size: vocabulary sizes (specials included).
        units: U; model width U / 2, feed-forward width U.
        heads: attention heads; layers: blocks in the encoder and in the decoder.
    """

    has_attention = True

    def __init__(
        self,
        source_vocab_size: int,
        target_vocab_size: int,
        units: int = 128,
        heads: int = 4,
        layers: int = 2,
        **kwargs,
    ) -> None:
        super().__init__(target_vocab_size, **kwargs)
        self.settings = dict(
            source_vocab_size=source_vocab_size,
            target_vocab_size=target_vocab_size,
            units=units,
            heads=heads,
            layers=layers,
        )
        self.dim = units // 2
        if self.dim % heads:
            raise ValueError(f"units / 2 = {self.dim} must be divisible by heads = {heads}")
        self.source_embedding = keras.layers.Embedding(source_vocab_size, self.dim, name="source_embedding")
        self.target_embedding = keras.layers.Embedding(target_vocab_size, self.dim, name="target_embedding")
        self.encoder_blocks = [_Block(self.dim, heads, units, cross=False, name=f"encoder_{i}") for i in range(layers)]
        self.decoder_blocks = [_Block(self.dim, heads, units, cross=True, name=f"decoder_{i}") for i in range(layers)]
        self.output_layer = keras.layers.Dense(target_vocab_size, name="output")

    def _embed(self, layer, ids):
        x = layer(ids) * (self.dim**0.5)
        return x + sinusoidal_positions(ops.shape(ids)[1], self.dim)[None]

    def encode(self, source):
        """source (batch, S) -> memory (batch, S, d), mask (batch, S) bool."""
        mask = ops.not_equal(source, PAD)
        pair_mask = ops.logical_and(mask[:, :, None], mask[:, None, :])
        x = self._embed(self.source_embedding, source)
        for block in self.encoder_blocks:
            x, _ = block(x, pair_mask)
        return x, mask

    def _decode(self, decoder_inputs, memory, mask):
        """decoder_inputs (batch, T) -> logits (batch, T, vocab), cross-attention (batch, T, S)."""
        t = ops.shape(decoder_inputs)[1]
        causal = ops.tril(ops.ones((t, t), dtype="bool"))[None]
        cross = ops.logical_and(ops.ones_like(decoder_inputs, dtype="bool")[:, :, None], mask[:, None, :])
        x = self._embed(self.target_embedding, decoder_inputs)
        for block in self.decoder_blocks:
            x, weights = block(x, causal, memory, cross)
        return self.output_layer(x), ops.mean(weights, axis=1)

    def teacher_forced(self, source, decoder_inputs):
        memory, mask = self.encode(source)
        return self._decode(decoder_inputs, memory, mask)

    def start_decoding(self, source, max_steps: int):
        """context: (per decoder layer the memory's cross-attention keys and values, source mask);
        state: per decoder layer the self-attention (keys, values) cache, (batch, max_steps,
        heads, head_dim) each, zero where nothing has been decoded yet."""
        memory, mask = self.encode(source)
        cross = [
            (b.cross_attention._key_dense(memory), b.cross_attention._value_dense(memory)) for b in self.decoder_blocks
        ]
        heads = self.settings["heads"]
        empty = ops.zeros((ops.shape(source)[0], max_steps, heads, self.dim // heads))
        return (cross, mask), [(empty, empty) for _ in self.decoder_blocks]

    def decode_step(self, i, previous, cache, context):
        """Embeds `previous` at position i, runs it through every decoder layer against the
        cache, and returns position i's logits, cross-attention and the grown cache."""
        cross, mask = context
        max_steps = ops.shape(cache[0][0])[1]
        here = ops.one_hot(i, max_steps)  # (max_steps,)
        position = ops.einsum("td,t->d", sinusoidal_positions(max_steps, self.dim), here)
        x = self.target_embedding(previous[:, None]) * (self.dim**0.5) + position[None, None, :]
        visible = (ops.arange(max_steps) <= i)[None, :]  # causal: positions 0..i
        grown = []
        for block, layer_cache, layer_cross in zip(self.decoder_blocks, cache, cross):
            x, layer_cache, weights = block.step(x, here, layer_cache, visible, layer_cross, mask)
            grown.append(layer_cache)
        return self.output_layer(x)[:, 0], ops.mean(weights, axis=1)[:, 0], grown

    def get_config(self):
        return {**super().get_config(), **self.settings}
