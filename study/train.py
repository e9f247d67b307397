"""The one training loop of the study, for every model and task.

    result = train_model(model, splits.train, splits.validation, source_vocab, target_vocab, TrainConfig(), seed=0)
    result.stop_reason      # "converged", "no_improvement", "budget" or "diverged: ..."
    result.history          # one dict per epoch: loss, val_seq_acc, val_char_acc, examples_seen, seconds

Teacher forcing with masked sparse cross-entropy, Adam with gradient
clipping, and a budget of at most `n_train * max_epochs` examples, the same for
every model of a comparison.  The loss is per target character (END included)
with one fixed weight for the whole run: each batch's summed cross-entropy is
divided by `tokens_per_batch` = batch_size x the training set's mean target
length, not by the batch's own count, so every character weighs the same in
every update whatever the length bucket or the size of the epoch's last,
partial batch (a batch's own average would weigh the characters of short or
small batches more, and change the objective with `batch_size` and bucketing).
After every epoch the validation set is decoded
greedily; the weights with the best validation exact-match (character
accuracy breaking ties, so a model still at 0% exact match but learning is not
cut short) are kept and restored at the end, and training stops early when
exact match reaches `target_accuracy` or neither has improved for `patience`
epochs.

Batches are bucketed: each epoch shuffles the examples, cuts the order into
pools of `BUCKET_POOL` batches, sorts each pool by length and cuts it into
batches, so a batch holds examples of similar length, and pads them to a
multiple of `pad_multiple` steps so the compiled step sees few shapes.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Callable

import keras
import numpy as np
from tqdm.auto import tqdm

from study.config import ModelConfig, TrainConfig
from study.data import Dataset
from study.evaluate import decode, decode_steps, score
from study.models.base import EncoderDecoder
from study.vocab import END, PAD, START, Vocabulary, pad

BUCKET_POOL = 32  # batches per sorting pool

# Bucketing compiles the step once per batch shape by design; TensorFlow's "retracing" warning
# about exactly that would only be noise in a study's output.
logging.getLogger("tensorflow").setLevel(logging.ERROR)


class MemoryBudgetError(MemoryError):
    """A cell would need more memory than the machine has free; the message says what to lower."""


def estimate_training_bytes(model_cfg: ModelConfig, train_cfg: TrainConfig, source_len: int, target_len: int, vocab_size: int, attention: str) -> int:
    """Rough peak activation memory of one training step on the longest batch (float32, forward
    activations kept for the backward pass, about 3 copies of the largest tensors)."""
    b, s, t, u = train_cfg.batch_size, source_len, target_len + 1, model_cfg.units
    directions = 2 if model_cfg.bidirectional else 1
    floats = b * (s * directions + t) * 8 * u  # recurrent gates and states per step
    floats += 3 * b * t * vocab_size  # logits, softmax, gradient
    if attention != "none":
        floats += 3 * b * t * s  # scores, weights, gradient
        floats += 2 * b * t * (2 * u)  # context and attentional state
        if attention == "additive":
            floats += 2 * b * t * s * model_cfg.attention_size  # tanh(W1 h + W2 s) and its gradient
    return 4 * floats


def check_memory(needed: int, share: float = 1.0, what: str = "this cell") -> None:
    """Raises MemoryBudgetError when `needed` bytes exceed 80% of this process's share of free memory."""
    import os

    try:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") * share
    except (ValueError, OSError, AttributeError):
        return  # unknown platform: no check
    if needed > 0.8 * free:
        raise MemoryBudgetError(
            f"{what} needs about {needed / 2**30:.1f} GiB for one training step but about {free / 2**30:.1f} GiB is free; "
            "lower train.batch_size, model.attention_size or the lengths"
        )


@dataclasses.dataclass
class TrainResult:
    """What a training run did: per-epoch history, why it stopped, and its budget use."""

    history: list[dict]
    stop_reason: str
    examples_seen: int
    best_epoch: int
    best_val_seq_acc: float
    seconds: float

    @property
    def diverged(self) -> bool:
        return self.stop_reason.startswith("diverged")


@dataclasses.dataclass(frozen=True)
class EncodedSet:
    """A dataset as id rows: sources without specials, targets with START prepended and END appended."""

    sources: list[list[int]]
    targets: list[list[int]]

    @classmethod
    def build(cls, data: Dataset, source_vocab: Vocabulary, target_vocab: Vocabulary) -> "EncodedSet":
        return cls([source_vocab.encode(s) for s in data.sources], [[START, *target_vocab.encode(t), END] for t in data.targets])

    def tokens_per_batch(self, batch_size: int) -> float:
        """The loss normaliser: target characters (END included) in an average full batch."""
        return batch_size * float(np.mean([len(t) - 1 for t in self.targets]))

    def batch(self, index: np.ndarray, multiple: int, token_weight: float = 1.0) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray, np.ndarray]:
        """((source (B, S), decoder_inputs (B, T)), decoder_targets (B, T), weights (B, T)), padded to
        `multiple`; weights are `token_weight` on every target character and END, 0 on padding."""
        src = [self.sources[i] for i in index]
        tgt = [self.targets[i] for i in index]
        s_len = _round_up(max(map(len, src)), multiple)
        t_len = _round_up(max(map(len, tgt)) - 1, multiple)
        source = pad(src, s_len)
        decoder_inputs = pad([t[:-1] for t in tgt], t_len)
        decoder_targets = pad([t[1:] for t in tgt], t_len)
        return (source, decoder_inputs), decoder_targets, (decoder_targets != PAD).astype("float32") * np.float32(token_weight)


def _round_up(n: int, multiple: int) -> int:
    return int(math.ceil(n / multiple) * multiple)


def bucketed_batches(sizes: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Index arrays of one epoch: examples of similar `sizes` together, batch order shuffled."""
    order = rng.permutation(len(sizes))
    batches = []
    pool = batch_size * BUCKET_POOL
    for start in range(0, len(order), pool):
        chunk = order[start : start + pool]
        chunk = chunk[np.argsort(sizes[chunk], kind="stable")]
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def compile_model(model: EncoderDecoder, cfg: TrainConfig) -> None:
    """Adam with clipping, and cross-entropy summed with the batch's weights (`EncodedSet.batch`
    gives each target character the weight 1 / tokens_per_batch, padding 0)."""
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=cfg.learning_rate, clipnorm=cfg.clipnorm),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="sum"),
    )


def train_model(
    model: EncoderDecoder,
    train: Dataset,
    validation: Dataset,
    source_vocab: Vocabulary,
    target_vocab: Vocabulary,
    cfg: TrainConfig,
    seed: int,
    progress: bool = True,
    on_epoch: Callable[[dict], None] | None = None,
    between_batches: Callable[[], None] | None = None,
) -> TrainResult:
    """Trains `model` in place (best validation weights restored) and returns what happened.

    Args:
        train, validation: datasets of the task (validation is decoded greedily each epoch).
        cfg: budget and optimiser; the same for every model of a comparison.
        seed: seeds the batch order (seed Keras with `keras.utils.set_random_seed` before
            building the model for reproducible initial weights).
        progress: show a progress bar over the batches of each epoch.
        on_epoch: called with each epoch's history row.
        between_batches: called before every update (it may raise to stop training,
            e.g. on Ctrl-C).
    """
    started = time.perf_counter()
    compile_model(model, cfg)
    encoded = EncodedSet.build(train, source_vocab, target_vocab)
    sizes = np.array([len(s) + len(t) for s, t in zip(encoded.sources, encoded.targets)])
    tokens_per_batch = encoded.tokens_per_batch(cfg.batch_size)
    rng = np.random.default_rng(seed)
    history: list[dict] = []
    best_score, best_epoch, best_weights = (-1.0, -1.0), 0, None
    examples_seen = 0
    stop_reason = "budget"
    for epoch in range(1, cfg.max_epochs + 1):
        batches = bucketed_batches(sizes, cfg.batch_size, rng)
        losses, counts = [], []
        bar = tqdm(batches, desc=f"epoch {epoch}/{cfg.max_epochs}", unit="batch", leave=False, disable=not progress)
        for index in bar:
            if between_batches is not None:
                between_batches()
            x, y, w = encoded.batch(index, cfg.pad_multiple, 1 / tokens_per_batch)
            loss = float(model.train_on_batch(x, y, sample_weight=w, return_dict=True)["loss"])  # summed loss / tokens_per_batch
            examples_seen += len(index)
            if not math.isfinite(loss):
                stop_reason = f"diverged: loss became {loss} at epoch {epoch} after {examples_seen} examples"
                break
            losses.append(loss * tokens_per_batch)  # summed cross-entropy of the batch
            counts.append(int((y != PAD).sum()))
            if len(losses) % 20 == 0:
                bar.set_postfix(loss=f"{loss:.3f}")
        bar.close()
        if stop_reason.startswith("diverged"):
            break
        predictions, _ = decode(model, validation.sources, source_vocab, target_vocab, decode_steps(validation.targets))
        val = score(predictions, validation.targets)
        right = np.array([p == t for p, t in zip(predictions, validation.targets)])
        row = {
            "epoch": epoch,
            "examples_seen": examples_seen,
            "loss": float(np.sum(losses) / np.sum(counts)),  # mean cross-entropy per target character
            "val_seq_acc": val["seq_acc"],
            "val_char_acc": val["char_acc"],
            "val_seq_acc_by_length": {int(L): float(right[validation.lengths == L].mean()) for L in np.unique(validation.lengths)},
            "seconds": time.perf_counter() - started,
        }
        history.append(row)
        if on_epoch is not None:
            on_epoch(row)
        if (val["seq_acc"], val["char_acc"]) > best_score:  # exact match first, character accuracy breaks ties
            best_score, best_epoch, best_weights = (val["seq_acc"], val["char_acc"]), epoch, model.get_weights()
        if val["seq_acc"] >= cfg.target_accuracy:
            stop_reason = "converged"
            break
        if epoch - best_epoch >= cfg.patience:
            stop_reason = "no_improvement"
            break
    if best_weights is not None:
        model.set_weights(best_weights)
    return TrainResult(history, stop_reason, examples_seen, best_epoch, max(best_score[0], 0.0), time.perf_counter() - started)
