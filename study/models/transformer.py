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
about the parameter count of the GRU models.  Greedy decoding writes each
predicted character into a fixed buffer and re-runs the decoder over it (the
causal mask hides the empty tail), inside the same compiled loop as the RNNs.
"""

from __future__ import annotations

import keras
from keras import ops

from study.models.base import EncoderDecoder
from study.vocab import PAD


def sinusoidal_positions(length, dim: int):
    """(length, dim) float: sin on the first half of the features, cos on the second."""
    position = ops.expand_dims(ops.arange(length, dtype="float32"), 1)
    index = ops.expand_dims(ops.arange(dim // 2, dtype="float32"), 0)
    angle = position / ops.power(10000.0, 2.0 * index / dim)
    return ops.concatenate([ops.sin(angle), ops.cos(angle)], axis=-1)


class _Block(keras.layers.Layer):
    """Post-norm block: self-attention, optional cross-attention, feed-forward."""

    def __init__(self, dim: int, heads: int, ff: int, cross: bool, **kwargs) -> None:
        super().__init__(**kwargs)
        self.self_attention = keras.layers.MultiHeadAttention(heads, dim // heads, name="self_attention")
        self.cross_attention = keras.layers.MultiHeadAttention(heads, dim // heads, name="cross_attention") if cross else None
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


class Transformer(EncoderDecoder):
    """Encoder-decoder Transformer with the study's model interface.

    Args:
        source_vocab_size, target_vocab_size: vocabulary sizes (specials included).
        units: U; model width U / 2, feed-forward width U.
        heads: attention heads; layers: blocks in the encoder and in the decoder.
    """

    has_attention = True

    def __init__(self, source_vocab_size: int, target_vocab_size: int, units: int = 128, heads: int = 4, layers: int = 2, **kwargs) -> None:
        super().__init__(target_vocab_size, **kwargs)
        self.settings = dict(source_vocab_size=source_vocab_size, target_vocab_size=target_vocab_size, units=units, heads=heads, layers=layers)
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
        """context: (memory, mask); state: the decoder's input buffer (batch, max_steps), START first."""
        memory, mask = self.encode(source)
        buffer = ops.zeros((ops.shape(source)[0], max_steps), dtype="int32")
        return (memory, mask), buffer

    def decode_step(self, i, previous, buffer, context):
        """Writes `previous` at position i, re-reads the buffer, returns position i's outputs."""
        memory, mask = context
        max_steps = ops.shape(buffer)[1]
        here = ops.cast(ops.one_hot(i, max_steps), "int32")[None, :]
        buffer = buffer * (1 - here) + here * previous[:, None]
        logits, weights = self._decode(buffer, memory, mask)
        pick = ops.one_hot(i, max_steps)  # (max_steps,): selects row i
        return ops.einsum("btv,t->bv", logits, pick), ops.einsum("bts,t->bs", weights, pick), buffer

    def get_config(self):
        return {**super().get_config(), **self.settings}

