"""Greedy decoding of whole datasets and the metrics of the study.

    predictions = decode(model, sources, source_vocab, target_vocab, max_steps=33)
    metrics = score(predictions, targets)
    # {"n_examples": 1000, "seq_acc": 0.93, "char_acc": 0.99, "position_acc": [1.0, 0.99, ...]}

`seq_acc` (exact match) is the headline: a prediction counts only when every
character and its length are right.  `char_acc` is the number of characters
right at their position over the number of positions either string fills
(sum of max(len(prediction), len(target))), so missing and extra characters
both count as errors; `position_acc[i]` the share of examples whose character
i is right, among those with a target longer than i.  A prediction decoded
from ids holds U+FFFD where a special id stood or END was missing
(`study.vocab.INVALID`), which matches no target character.
All three come from greedy decoding of the model's own outputs; teacher-forced
numbers are never reported as accuracy here.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from study.models.base import EncoderDecoder
from study.vocab import Vocabulary


def decode_steps(targets: Sequence[str]) -> int:
    """Decoder steps needed to judge every target: its longest length plus one for END."""
    return max(len(t) for t in targets) + 1


def decode(
    model: EncoderDecoder,
    sources: Sequence[str],
    source_vocab: Vocabulary,
    target_vocab: Vocabulary,
    max_steps: int,
    batch_size: int = 1024,
    with_attention: bool = False,
) -> tuple[list[str], np.ndarray | None]:
    """Greedy-decodes `sources`; returns the predicted strings and, when asked and the
    model has attention, the weights as an array (n, max_steps, S)."""
    source_ids = source_vocab.encode_batch(sources)
    out = model.greedy_decoder(max_steps, with_attention=with_attention).predict(source_ids, batch_size=batch_size, verbose=0)
    return target_vocab.decode_batch(out["tokens"]), out.get("attention")


def score(predictions: Sequence[str], targets: Sequence[str]) -> dict:
    """Exact-match, character and per-position accuracy of predictions against targets
    (definitions in the module docstring); raises ValueError on unequal or empty lists."""
    if len(predictions) != len(targets) or not targets:
        raise ValueError(f"need as many predictions as targets (> 0), got {len(predictions)} and {len(targets)}")
    longest = max(len(t) for t in targets)
    hits = np.zeros(longest)
    counts = np.zeros(longest)
    exact = 0
    right_chars = 0
    positions = 0
    for p, t in zip(predictions, targets):
        exact += p == t
        match = np.array([i < len(p) and p[i] == c for i, c in enumerate(t)], dtype=float)
        right_chars += match.sum()
        positions += max(len(p), len(t))
        hits[: len(t)] += match
        counts[: len(t)] += 1
    return {
        "n_examples": len(targets),
        "seq_acc": exact / len(targets),
        "char_acc": float(right_chars / positions),
        "position_acc": (hits / counts).tolist(),
    }


def evaluate(model: EncoderDecoder, sources: Sequence[str], targets: Sequence[str], source_vocab: Vocabulary, target_vocab: Vocabulary, batch_size: int = 1024) -> dict:
    """Decodes `sources` greedily and scores the predictions against `targets` (see `score`)."""
    predictions, _ = decode(model, sources, source_vocab, target_vocab, decode_steps(targets), batch_size)
    return score(predictions, targets)
