"""Greedy decoding of whole datasets and the metrics of the study, all defined here.

    predictions = decode(model, sources, source_vocab, target_vocab, max_steps=decode_steps(targets))
    metrics = score(predictions, targets)
    # {"n_examples": 1000, "seq_acc": 0.93, "char_acc": 0.99, "length_acc": 0.97, ...}
    metrics = evaluate(model, sources, targets, source_vocab, target_vocab)   # both, plus
    # "oracle_seq_acc" (exact match when END is held back until the target's length)

Every metric comes from greedy decoding of the model's own outputs; teacher-forced
numbers are never reported as accuracy here.  The decoder may run to
`decode_steps(targets)` = twice the longest target plus 2 steps, so a model that
does not stop is seen producing extra characters rather than cut off at the
target's length.  A prediction decoded from ids holds U+FFFD where a special id
stood or END was missing (`study.vocab.INVALID`), which matches no character.

- `seq_acc` (exact match, the headline): share of predictions equal to their
  target, every character and the END in place.
- `char_acc`: characters right at their position over the positions either
  string fills (sum of max(len(prediction), len(target))), so wrong, missing and
  extra characters all count as errors.
- `position_acc[i]`: share of examples whose character i is right, among those
  whose target is longer than i.
- `length_acc`, `too_short`, `too_long`: shares of predictions of exactly the
  target's length, shorter, longer; `mean_prediction_length` in characters.
- `oracle_seq_acc` (a diagnostic, Newman et al. 2020, "The EOS Decision and Length
  Extrapolation"): exact match when END is not allowed before the target's length
  and decoding stops there.  Beside `seq_acc` it separates "knows the content but
  not where to stop" (high oracle, low exact match) from "lost the content" (both low).
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Sequence

import numpy as np

from study.vocab import END, INVALID, PAD, Vocabulary

if TYPE_CHECKING:  # Keras is imported by whoever built the model (`study.models.load_trained` starts it quietly)
    from study.models.base import EncoderDecoder

# bump whenever a metric's definition changes; every record names the version that computed it
# (1: before the decode cap, length shares, oracle-length exact match and extra-character counting)
METRICS_VERSION = 2


def decode_steps(targets: Sequence[str]) -> int:
    """The decode cap for `targets`: twice the longest target plus 2 (room for END and for
    over-generation to show).

    Args:
        targets: the target strings the predictions will be scored against.

    Returns:
        The number of decoder steps, in characters (END included).

    Raises:
        ValueError: `targets` is empty.
    """
    return 2 * max(len(t) for t in targets) + 2


def decode(
    model: EncoderDecoder,
    sources: Sequence[str],
    source_vocab: Vocabulary,
    target_vocab: Vocabulary,
    max_steps: int,
    batch_size: int = 1024,
    with_attention: bool = False,
    first_steps: int | None = None,
) -> tuple[list[str], np.ndarray | None]:
    """Greedy-decodes `sources` with the model's compiled decoder (`greedy_decoder`).

    The decoding loop runs for a whole batch until its last row has emitted END, so a few rows
    that never do (common beyond the training lengths) hold the other rows' computation to
    `max_steps`.  With `first_steps`, every row is decoded for at most `first_steps` steps, and
    only the rows still without END are decoded again, from the start, for `max_steps`: the
    same predictions, on 40-55% fewer row-steps of the study's test sets.  As in the
    oracle-length re-decoding (`oracle_exact_match`), those rows are decoded in another batch
    (and, for the Transformer, with a key/value cache of another width), so a near-tie between
    two logits could in principle fall the other way by float rounding.

    Args:
        model: a trained model.
        sources: n source strings.
        source_vocab: encodes the sources, right-padded to the longest (S ids).
        target_vocab: decodes the predicted ids.
        max_steps: the most decoder steps, END included (`decode_steps`).
        batch_size: examples per `predict` batch.
        with_attention: also return the attention weights.
        first_steps: steps of the first pass (None or >= `max_steps`: one pass); the study's
            evaluation uses the longest target plus 2 (`evaluate_with_predictions`).

    Returns:
        `(predictions, attention)`: n strings, each the characters before the row's first END,
        with `study.vocab.INVALID` where END never came; and, when `with_attention` is set and
        the model has attention, float array (n, max_steps, S) of the weights over the source
        positions, zero after the step that emitted END; otherwise None.

    Raises:
        ValueError: a source holds a character outside `source_vocab`.
    """
    source_ids = source_vocab.encode_batch(sources)

    def run(rows: np.ndarray, steps: int) -> dict:
        return model.greedy_decoder(steps, with_attention=with_attention).predict(rows, batch_size=batch_size)

    if first_steps is None or first_steps >= max_steps:
        out = run(source_ids, max_steps)
    else:
        first = run(source_ids, first_steps)
        widen = ((0, 0), (0, max_steps - first_steps))
        # after END a row holds PAD and zero weights, as one pass of `max_steps` would give it
        out = {
            key: np.pad(value, widen + ((0, 0),) * (value.ndim - 2), constant_values=PAD if key == "tokens" else 0)
            for key, value in first.items()
        }
        going = np.flatnonzero(~(first["tokens"] == END).any(axis=1))
        if len(going):
            for key, value in run(source_ids[going], max_steps).items():
                out[key][going] = value
    return target_vocab.decode_batch(out["tokens"]), out.get("attention")


def score(predictions: Sequence[str], targets: Sequence[str]) -> dict:
    """Exact-match, character and per-position accuracy of predictions against targets
    (definitions in the module docstring).

    Args:
        predictions: n predicted strings.
        targets: the n target strings, in the same order.

    Returns:
        A dict: "n_examples" (n); "seq_acc", "char_acc", "length_acc", "too_short" and
        "too_long", shares in [0, 1]; "mean_prediction_length" in characters; and
        "position_acc", a list with one share per position of the longest target.

    Raises:
        ValueError: the two lists differ in length, or are empty.
    """
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
    n = len(targets)
    length_gap = np.array([len(p) - len(t) for p, t in zip(predictions, targets)])
    return {
        "n_examples": n,
        "seq_acc": exact / n,
        "char_acc": float(right_chars / positions),
        "length_acc": float(np.mean(length_gap == 0)),
        "too_short": float(np.mean(length_gap < 0)),
        "too_long": float(np.mean(length_gap > 0)),
        "mean_prediction_length": float(np.mean([len(p) for p in predictions])),
        "position_acc": (hits / counts).tolist(),
    }


def decode_at_target_length(
    model: EncoderDecoder,
    sources: Sequence[str],
    targets: Sequence[str],
    source_vocab: Vocabulary,
    target_vocab: Vocabulary,
    batch_size: int = 1024,
) -> list[str]:
    """Greedy predictions of exactly len(target) characters each: END is held back for that many
    steps and decoding stops there (Newman et al. 2020); targets of each length are decoded
    together.  The decoding of a model trained without END (`TrainConfig.end_token`), and the
    oracle-length diagnostic of one trained with it.

    Args:
        model: a trained model.
        sources: the n source strings.
        targets: their n targets; only their lengths (in characters) are used.
        source_vocab, target_vocab: the task's vocabularies.
        batch_size: examples per `predict` batch.

    Returns:
        n strings in the order of `targets`, prediction i of exactly len(targets[i]) characters.

    Raises:
        ValueError: a source holds a character outside `source_vocab`.
    """
    by_length: dict[int, list[int]] = defaultdict(list)
    for i, t in enumerate(targets):
        by_length[len(t)].append(i)
    predictions = [""] * len(targets)
    for length, index in by_length.items():
        source_ids = source_vocab.encode_batch([sources[i] for i in index])
        tokens = model.greedy_decoder(length, min_steps=length).predict(source_ids, batch_size=batch_size, verbose=0)[
            "tokens"
        ]
        # the decoder was stopped here
        ended = np.concatenate([tokens, np.full((len(tokens), 1), END, dtype=tokens.dtype)], axis=1)
        for i, text in zip(index, target_vocab.decode_batch(ended)):
            predictions[i] = text
    return predictions


def oracle_exact_match(
    model: EncoderDecoder,
    sources: Sequence[str],
    targets: Sequence[str],
    source_vocab: Vocabulary,
    target_vocab: Vocabulary,
    batch_size: int = 1024,
    greedy: Sequence[str] | None = None,
) -> float:
    """Share of examples whose first len(target) greedy characters equal the target when END
    is held back for exactly that many steps (`decode_at_target_length`).

    Holding END back changes nothing before the step at which greedy decoding chose END: at
    every earlier step the argmax was a character, and it stays the argmax without END (END's
    id is below every character's, and argmax keeps the first of equal values, so a character
    chosen over END beat it outright).  So with the model's greedy predictions (`greedy`, from
    `decode`) at hand, a row that did not end before its target's length already holds its
    oracle-length prediction, its first len(target) characters, and only the rows that ended
    early (or whose greedy decoding stopped short of the target's length without END) are
    decoded again.  Those rows are decoded in other batches than when every row is, so a
    near-tie between two logits could in principle fall the other way by float rounding.

    Args:
        model, sources, targets, source_vocab, target_vocab, batch_size: as for
            `decode_at_target_length`.
        greedy: the n greedy predictions of `model` for `sources` (`decode`), or None to decode
            every row with END held back.

    Returns:
        The oracle-length exact match, a share in [0, 1].

    Raises:
        ValueError: a source holds a character outside `source_vocab`, or `greedy` does not
            hold one prediction per target.
        ZeroDivisionError: `targets` is empty.
    """
    if greedy is not None and len(greedy) != len(targets):
        raise ValueError(f"need one greedy prediction per target, got {len(greedy)} for {len(targets)}")

    # a row holds its oracle-length prediction when its greedy prediction reaches the target's
    # length with characters (INVALID there: the decoder stopped without END)
    held = [
        greedy is not None and len(greedy[i]) >= len(t) and INVALID not in greedy[i][: len(t)]
        for i, t in enumerate(targets)
    ]
    early = [i for i, h in enumerate(held) if not h]
    right = sum(greedy[i][: len(t)] == t for i, (t, h) in enumerate(zip(targets, held)) if h)
    if early:
        decoded = decode_at_target_length(
            model, [sources[i] for i in early], [targets[i] for i in early], source_vocab, target_vocab, batch_size
        )
        right += sum(p == targets[i] for i, p in zip(early, decoded))
    return right / len(targets)


def evaluate_with_predictions(
    model: EncoderDecoder,
    sources: Sequence[str],
    targets: Sequence[str],
    source_vocab: Vocabulary,
    target_vocab: Vocabulary,
    batch_size: int = 1024,
    end_token: bool = True,
    with_attention: bool = False,
) -> tuple[dict, list[str], np.ndarray | None]:
    """Decodes `sources` greedily and scores the predictions against `targets` (`score`), with
    the oracle-length exact match beside (`oracle_exact_match`).  A model trained without END
    (`end_token` False) is decoded at the target's length (`decode_at_target_length`), so its
    exact match and oracle-length exact match are one number.

    Args:
        model: a trained model.
        sources: n source strings.
        targets: their n targets.
        source_vocab, target_vocab: the task's vocabularies.
        batch_size: examples per `predict` batch.
        end_token: whether the model was trained to write END (`TrainConfig.end_token`).
        with_attention: also return attention weights.

    Returns:
        `(metrics, predictions, attention)`: `score`'s dict plus "oracle_seq_acc" (a share in
        [0, 1]); the n predicted strings; and, with `with_attention` on an attention model,
        the weights over the source positions: float array (n, decode_steps(targets), S), S the
        longest source, or with `end_token` False those of the first example alone,
        (1, len(targets[0]), len(sources[0])); otherwise None.

    Raises:
        ValueError: `targets` is empty, a source holds a character outside `source_vocab`, or
            (with `end_token`) `sources` and `targets` differ in number.
    """
    if not end_token:
        predictions = decode_at_target_length(model, sources, targets, source_vocab, target_vocab, batch_size)
        scored = score(predictions, targets)
        steps = len(targets[0])
        weights = (
            model.greedy_decoder(steps, with_attention=True, min_steps=steps)
            .predict(source_vocab.encode_batch(sources[:1]), verbose=0)
            .get("attention")
            if with_attention
            else None
        )
        return {**scored, "oracle_seq_acc": scored["seq_acc"]}, predictions, weights
    # a row still going after the longest target's END and one more step is wrong, and is decoded
    # again for the whole cap; where each step count compiles a program of its own (JAX), the two
    # passes are not used (not measured)
    from study.models.base import one_graph_for_every_step_count

    longest = max(len(t) for t in targets)
    predictions, weights = decode(
        model,
        sources,
        source_vocab,
        target_vocab,
        decode_steps(targets),
        batch_size,
        with_attention=with_attention,
        first_steps=longest + 2 if one_graph_for_every_step_count() else None,
    )
    scored = score(predictions, targets)
    return (
        {
            **scored,
            "oracle_seq_acc": oracle_exact_match(
                model, sources, targets, source_vocab, target_vocab, batch_size, greedy=predictions
            ),
        },
        predictions,
        weights,
    )


def evaluate(
    model: EncoderDecoder,
    sources: Sequence[str],
    targets: Sequence[str],
    source_vocab: Vocabulary,
    target_vocab: Vocabulary,
    batch_size: int = 1024,
    end_token: bool = True,
) -> dict:
    """The metrics of `evaluate_with_predictions` alone (what the study records per test set).

    Args:
        model, sources, targets, source_vocab, target_vocab, batch_size, end_token: as for
            `evaluate_with_predictions`.

    Returns:
        `score`'s dict plus "oracle_seq_acc".

    Raises:
        ValueError: as `evaluate_with_predictions`.
    """
    return evaluate_with_predictions(model, sources, targets, source_vocab, target_vocab, batch_size, end_token)[0]
