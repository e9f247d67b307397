"""Attention scoring functions and the masked softmax read-out they share.

Every scorer turns decoder states (queries) and encoder outputs (memory) into
scores, one per (output step, source position):

    keys   = scorer.keys(memory)              # (batch, S, K), computed once per sequence
    scores = scorer.score(queries, keys)      # (batch, T, S)
    context, weights = attend(scorer, queries, keys, memory, mask)
    # weights: (batch, T, S), softmax over S with padded source positions at exactly 0
    # context: (batch, T, units), the weights' sum of memory rows

Scorers (Luong et al. 2015 naming):
    additive: v^T tanh(W1 h_s + W2 s_t)   (Bahdanau et al. 2014), W1 h_s precomputed as keys
    dot:      s_t^T h_s
    general:  s_t^T W h_s,                W h_s precomputed as keys
"""

from __future__ import annotations

import keras
from keras import ops

from study.registry import Registry

SCORERS: Registry[type["Scorer"]] = Registry("attention scorer")
MASKED_SCORE = -1e9  # exp(MASKED_SCORE - max) underflows to exactly 0 in float32


class Scorer(keras.layers.Layer):
    """Base class: `keys(memory)` once per sequence, then `score(queries, keys)` per step."""

    def __init__(self, units: int, attention_size: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.units = units
        self.attention_size = attention_size
        self.built = True  # weights live in sublayers, which build on first use

    def keys(self, memory):
        """memory: (batch, S, units) -> keys: (batch, S, K)."""
        return memory

    def score(self, queries, keys):
        """queries: (batch, T, units), keys: (batch, S, K) -> scores: (batch, T, S)."""
        return ops.einsum("btu,bsu->bts", queries, keys)


@SCORERS.register("dot")
class DotScorer(Scorer):
    """s_t . h_s: no parameters."""


@SCORERS.register("general")
class GeneralScorer(Scorer):
    """s_t . (W h_s): one (units x units) matrix."""

    def __init__(self, units: int, attention_size: int, **kwargs) -> None:
        super().__init__(units, attention_size, **kwargs)
        self.w = keras.layers.Dense(units, use_bias=False, name="w")

    def keys(self, memory):
        return self.w(memory)


@SCORERS.register("additive")
class AdditiveScorer(Scorer):
    """v . tanh(W1 h_s + W2 s_t) with an attention size A: W1, W2 (units x A) and v (A)."""

    def __init__(self, units: int, attention_size: int, **kwargs) -> None:
        super().__init__(units, attention_size, **kwargs)
        self.w1 = keras.layers.Dense(attention_size, use_bias=False, name="w1")
        self.w2 = keras.layers.Dense(attention_size, use_bias=True, name="w2")
        self.v = keras.layers.Dense(1, use_bias=False, name="v")

    def keys(self, memory):
        return self.w1(memory)

    def score(self, queries, keys):
        # (batch, T, 1, A) + (batch, 1, S, A) -> (batch, T, S, A) -> (batch, T, S)
        hidden = ops.tanh(ops.expand_dims(self.w2(queries), 2) + ops.expand_dims(keys, 1))
        return ops.squeeze(self.v(hidden), -1)


def attend(scorer: Scorer, queries, keys, memory, mask):
    """Masked softmax attention.

    Args:
        queries: (batch, T, units) decoder states.
        keys: (batch, S, K) from `scorer.keys(memory)`.
        memory: (batch, S, units) encoder outputs.
        mask: (batch, S) bool, True on real source positions.

    Returns:
        context (batch, T, units) and weights (batch, T, S); weights on padded
        positions are exactly 0 and each row sums to 1.
    """
    scores = scorer.score(queries, keys)
    scores = ops.where(ops.expand_dims(mask, 1), scores, MASKED_SCORE)
    weights = ops.softmax(scores, axis=-1)
    return ops.einsum("bts,bsu->btu", weights, memory), weights
