"""The one training function of the study, for every model and task: Keras `model.fit`.

    result = train_model(model, splits.train, splits.validation, source_vocab, target_vocab, TrainConfig(), seed=0,
                         backup_dir=Path("results/standard/backups/<cell id>"))
    result.stop_reason      # "target_reached", "no_improvement", "budget" or "diverged: ..."
    result.converged        # stopped by the target or patience, or still within a point at the budget
    result.history          # one dict per epoch: loss, val_seq_acc, val_char_acc, val_seq_acc_by_length,
                            # examples_seen, seconds

Teacher forcing with masked sparse cross-entropy, Adam with gradient clipping,
and a budget of at most `max_examples` examples, the same for every
model of a comparison; training stops earlier once the validation measure has not
improved for `patience_examples` (converged).  The loss is per target
character (END included) with one fixed weight for the whole run: each batch's
summed cross-entropy is divided by `tokens_per_batch` = batch_size x the
training set's mean target length, not by the batch's own count, so every
character weighs the same in every update whatever the length bucket or the
size of the epoch's last, partial batch (a batch's own average would weigh the
characters of short or small batches more, and change the objective with
`batch_size` and bucketing).  `loss_normalisation = "sequence"` weighs every
example the same instead (its mean cross-entropy per character, Sutskever et al.
2014's per-sentence log-likelihood), so short examples count as much as long ones.

Batches come from `BucketedBatches`, a `keras.utils.PyDataset`: each epoch
shuffles the examples, cuts the order into pools of `BUCKET_POOL` batches,
sorts each pool by length and cuts it into batches, so a batch holds examples
of similar length, padded to a multiple of `pad_multiple` steps; the order of
epoch e is a pure function of (seed, e).  With a length curriculum
(`curriculum_examples`) the early epochs draw their examples from the pool with
a growing length limit instead of passing over all of it (`curriculum_epoch`).

Callbacks do the rest, in this order: `GreedyValidation` decodes the
validation set greedily after every epoch and puts exact match, character
accuracy and their combination `val_selection` into the epoch's logs (exact
match per length goes into the history); `TargetReached` stops once exact
match reaches `target_accuracy`; `keras.callbacks.EarlyStopping` on
`val_selection` (exact match, character accuracy breaking ties: a model still
at 0% exact match but learning is not cut short, and never stopping is not
rewarded) stops after `patience` epochs without improvement and restores the
best weights; `Divergence` (a `keras.callbacks.TerminateOnNaN`) stops on a
non-finite loss and says where; `EpochBackup` saves the whole training state
after every epoch so that a killed run resumes from its last finished epoch
with the same result; `BetweenBatches` lets Ctrl-C stop between updates.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import keras
import numpy as np
from tqdm.auto import tqdm

from study.config import ModelConfig, TrainConfig
from study.data import Dataset
from study.evaluate import decode, decode_steps, score
from study.files import write_atomic, write_json_atomic
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


CONVERGENCE_TOLERANCE = 0.01  # a budget-stopped run whose last stretch gained more than this has not converged


@dataclasses.dataclass
class TrainResult:
    """What a training run did: per-epoch history, why it stopped, and its budget use.

    last_stretch_gain: how far the best validation exact match moved over the last
    `patience_examples` of training (best in that stretch minus best before it, in [-1, 1];
    None when training had no more epochs than that stretch: too short to judge).
    """

    history: list[dict]
    stop_reason: str
    examples_seen: int
    best_epoch: int
    best_val_seq_acc: float
    seconds: float
    last_stretch_gain: float | None = None

    @property
    def diverged(self) -> bool:
        return self.stop_reason.startswith("diverged")

    @property
    def converged(self) -> bool:
        """Stopped by the target or by patience, or at the budget with the last stretch
        gaining at most `CONVERGENCE_TOLERANCE` (one point) of exact match."""
        if self.stop_reason in ("target_reached", "no_improvement"):
            return True
        return self.stop_reason == "budget" and self.last_stretch_gain is not None and self.last_stretch_gain <= CONVERGENCE_TOLERANCE


def last_stretch_gain(history: list[dict], stretch_epochs: int) -> float | None:
    """Best validation exact match of the last `stretch_epochs` epochs minus the best before them."""
    if len(history) <= stretch_epochs:
        return None
    accuracies = [row["val_seq_acc"] for row in history]
    return max(accuracies[-stretch_epochs:]) - max(accuracies[:-stretch_epochs])


@dataclasses.dataclass(frozen=True)
class EncodedSet:
    """A dataset as id rows: sources without specials, targets with START prepended and END appended."""

    sources: list[list[int]]
    targets: list[list[int]]
    lengths: np.ndarray  # (n,) each example's task length (`Dataset.lengths`)

    @classmethod
    def build(cls, data: Dataset, source_vocab: Vocabulary, target_vocab: Vocabulary) -> "EncodedSet":
        return cls([source_vocab.encode(s) for s in data.sources], [[START, *target_vocab.encode(t), END] for t in data.targets], np.asarray(data.lengths))

    def tokens_per_batch(self, batch_size: int) -> float:
        """The loss normaliser: target characters (END included) in an average full batch."""
        return batch_size * self.mean_target_length()

    def batch(self, index: np.ndarray, multiple: int, token_weight: float = 1.0, per_sequence: bool = False) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray, np.ndarray]:
        """((source (B, S), decoder_inputs (B, T)), decoder_targets (B, T), weights (B, T)), padded to
        `multiple`; weights are `token_weight` on every target character and END, 0 on padding.
        With `per_sequence`, a row of n characters gets token_weight x mean length / n on each,
        so every example weighs the same whatever its length."""
        src = [self.sources[i] for i in index]
        tgt = [self.targets[i] for i in index]
        s_len = _round_up(max(map(len, src)), multiple)
        t_len = _round_up(max(map(len, tgt)) - 1, multiple)
        source = pad(src, s_len)
        decoder_inputs = pad([t[:-1] for t in tgt], t_len)
        decoder_targets = pad([t[1:] for t in tgt], t_len)
        weights = (decoder_targets != PAD).astype("float32") * np.float32(token_weight)
        if per_sequence:
            characters = np.array([len(t) - 1 for t in tgt], dtype="float32")
            weights *= (self.mean_target_length() / characters)[:, None]
        return (source, decoder_inputs), decoder_targets, weights

    @functools.cached_property
    def _mean_target_length(self) -> float:
        return float(np.mean([len(t) - 1 for t in self.targets]))

    def mean_target_length(self) -> float:
        """Target characters (END included) per example, on average."""
        return self._mean_target_length


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


def curriculum_epoch(lengths: np.ndarray, epoch: int, cfg: TrainConfig, rng: np.random.Generator) -> np.ndarray | None:
    """The `epoch_examples` examples (indices into the pool, drawn with replacement) of epoch
    `epoch` under the length curriculum, or None once it is over (plain passes from then on).

    Zaremba & Sutskever 2014's "combined" strategy: a `curriculum_share` of the draws come
    from the whole pool, the rest from examples no longer than a limit that grows linearly
    with the examples seen by the end of the epoch, from the shortest length (at 0) to the
    longest (at `curriculum_examples`).
    """
    if epoch * cfg.epoch_examples >= cfg.curriculum_examples:
        return None
    lo, hi = int(lengths.min()), int(lengths.max())
    limit = lo + (hi - lo) * (epoch + 1) * cfg.epoch_examples / cfg.curriculum_examples
    eligible = np.flatnonzero(lengths <= limit)
    n = cfg.epoch_examples
    whole = rng.random(n) < cfg.curriculum_share
    return np.where(whole, rng.integers(0, len(lengths), n), eligible[rng.integers(0, len(eligible), n)])


def epoch_examples(pool: int, epoch: int, cfg: TrainConfig, seed: int) -> np.ndarray:
    """The pool indices of epoch `epoch` without a curriculum: pass p = epoch // (n_train /
    epoch_examples) is a permutation of the pool seeded by (seed, p), and the epoch is its
    next consecutive stretch of `epoch_examples`."""
    per_pass = pool // cfg.epoch_examples
    order = np.random.default_rng([seed, epoch // per_pass, 1]).permutation(pool)
    start = (epoch % per_pass) * cfg.epoch_examples
    return order[start : start + cfg.epoch_examples]


def compile_model(model: EncoderDecoder, cfg: TrainConfig) -> None:
    """Adam with clipping and the config's learning-rate schedule (`learning_rate`), and
    cross-entropy summed with the batch's weights (`EncodedSet.batch` gives each target
    character 1 / tokens_per_batch)."""
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate(cfg), clipnorm=cfg.clipnorm),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="sum"),
    )


def learning_rate(cfg: TrainConfig):
    """`cfg.learning_rate` for schedule "constant"; for "cosine", a
    `keras.optimizers.schedules.CosineDecay` over the whole budget in updates (epoch_examples / batch_size
    per epoch, rounded up, times max_epochs) that decays to 0, after a linear warm-up from 0 over
    `warmup_examples` (Loshchilov & Hutter 2017; Goyal et al. 2017)."""
    if cfg.schedule == "constant":
        return cfg.learning_rate
    per_epoch = math.ceil(cfg.epoch_examples / cfg.batch_size)
    total = per_epoch * cfg.max_epochs
    warmup = math.ceil(cfg.warmup_examples / cfg.batch_size)
    if not warmup:
        return keras.optimizers.schedules.CosineDecay(cfg.learning_rate, total)
    return keras.optimizers.schedules.CosineDecay(0.0, total - warmup, warmup_target=cfg.learning_rate, warmup_steps=warmup)


class BucketedBatches(keras.utils.PyDataset):
    """The training batches of one epoch as ((source, decoder_inputs), decoder_targets, weights)
    (`EncodedSet.batch`); `set_epoch(e)` selects epoch e's order, a pure function of (seed, e)."""

    def __init__(self, encoded: EncodedSet, cfg: TrainConfig, seed: int) -> None:
        super().__init__()
        if len(encoded.targets) != cfg.n_train:
            raise ValueError(f"the training set holds {len(encoded.targets)} examples but train.n_train is {cfg.n_train}; "
                             "build the TrainConfig with the pool's size")
        self.encoded = encoded
        self.sizes = np.array([len(s) + len(t) for s, t in zip(encoded.sources, encoded.targets)])
        self.batch_size, self.pad_multiple, self.seed, self.cfg = cfg.batch_size, cfg.pad_multiple, seed, cfg
        self.token_weight = 1 / encoded.tokens_per_batch(cfg.batch_size)
        self.set_epoch(0)
        self.next_epoch = 0  # the epoch the next `tf.data` pass runs; `fit`'s initial_epoch on a resumed run

    def set_epoch(self, epoch: int) -> None:
        """Epoch `epoch` (0-based): its examples (`curriculum_epoch` or `epoch_examples`) in
        bucketed batches, all drawn from generators seeded by (seed, epoch)."""
        rng = np.random.default_rng([self.seed, epoch])
        drawn = curriculum_epoch(self.encoded.lengths, epoch, self.cfg, rng)
        if drawn is None:
            drawn = epoch_examples(len(self.sizes), epoch, self.cfg, self.seed)
        self.order = [drawn[i] for i in bucketed_batches(self.sizes[drawn], self.batch_size, rng)]

    def _one_epoch(self):
        """One pass for `tf.data` (one call per epoch, which may start before the epoch's callbacks)."""
        self.set_epoch(self.next_epoch)
        self.next_epoch += 1
        for i in range(len(self)):
            yield self[i]

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, index: int):
        return self.encoded.batch(self.order[index], self.pad_multiple, self.token_weight, self.cfg.loss_normalisation == "sequence")

    def for_fit(self):
        """What `model.fit` takes: this dataset, or on TensorFlow a `tf.data.Dataset` over it
        whose spec leaves batch and time free (Keras would infer the spec from the first two
        batches, and a later batch of another length would not fit it)."""
        if keras.backend.backend() != "tensorflow":
            return self
        import tensorflow as tf

        ids = tf.TensorSpec((None, None), tf.int32)
        spec = ((ids, ids), ids, tf.TensorSpec((None, None), tf.float32))
        data = tf.data.Dataset.from_generator(self._one_epoch, output_signature=spec)  # one call per epoch
        return data.apply(tf.data.experimental.assert_cardinality(len(self))).prefetch(2)


class GreedyValidation(keras.callbacks.Callback):
    """Greedy decoding of the validation set after every epoch: puts `val_seq_acc`,
    `val_char_acc` and `val_selection` = exact match + character accuracy / (n + 1) (exact
    match first, ties broken by character accuracy) into the epoch's logs and appends the
    epoch's history row (with exact match per training length)."""

    def __init__(self, batches: BucketedBatches, validation: Dataset, source_vocab: Vocabulary, target_vocab: Vocabulary, started: float) -> None:
        super().__init__()
        self.batches, self.validation = batches, validation
        self.vocabs = (source_vocab, target_vocab)
        self.started = started
        self.history: list[dict] = []
        # target characters and END per epoch (for "sequence", each example's mean cross-entropy: a mean over examples)
        self.characters = batches.cfg.epoch_examples * batches.encoded.mean_target_length()

    def on_epoch_begin(self, epoch, logs=None):
        self.batches.set_epoch(epoch)  # the PyDataset path (JAX): Keras reads the batches after this

    def on_epoch_end(self, epoch, logs=None):
        if not math.isfinite(float(logs.get("loss", 0.0))):  # diverged (`Divergence`): nothing to validate
            return
        v = self.validation
        predictions, _ = decode(self.model, v.sources, *self.vocabs, decode_steps(v.targets))
        val = score(predictions, v.targets)
        right = np.array([p == t for p, t in zip(predictions, v.targets)])
        logs["val_seq_acc"], logs["val_char_acc"] = val["seq_acc"], val["char_acc"]
        logs["val_selection"] = val["seq_acc"] + val["char_acc"] / (len(v) + 1)
        # Keras logs the batch losses' mean weighted by batch size; each batch's loss is its summed
        # cross-entropy / tokens_per_batch, so this is the epoch's cross-entropy per target
        # character up to the share of partial batches (under 1% here)
        per_batch = len(self.batches) * self.batches.encoded.tokens_per_batch(self.batches.batch_size)
        self.history.append({
            "epoch": epoch + 1,
            "examples_seen": (epoch + 1) * self.batches.cfg.epoch_examples,
            "loss": float(logs["loss"]) * per_batch / self.characters,  # mean cross-entropy per target character (per example's mean with "sequence")
            "val_seq_acc": val["seq_acc"],
            "val_char_acc": val["char_acc"],
            "val_seq_acc_by_length": {str(L): float(right[v.lengths == L].mean()) for L in np.unique(v.lengths)},  # JSON keys
            "seconds": time.perf_counter() - self.started,
        })


class TargetReached(keras.callbacks.Callback):
    """Stops training once validation exact match reaches `target`."""

    def __init__(self, target: float) -> None:
        super().__init__()
        self.target, self.reached = target, False

    def on_epoch_end(self, epoch, logs=None):
        if logs.get("val_seq_acc", -1.0) >= self.target:
            self.reached = True
            self.model.stop_training = True


class Divergence(keras.callbacks.TerminateOnNaN):
    """`TerminateOnNaN` that records where the loss stopped being finite (`reason`) instead of
    printing it; the examples seen include the batch that diverged."""

    def __init__(self, batches: BucketedBatches) -> None:
        super().__init__()
        self.batches, self.reason, self.examples_seen, self.epoch = batches, None, 0, 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = float((logs or {}).get("loss", 0.0))
        if not math.isfinite(loss):
            seen = self.epoch * self.batches.cfg.epoch_examples + sum(len(i) for i in self.batches.order[: batch + 1])
            self.reason = f"diverged: loss became {loss} at epoch {self.epoch + 1} after {seen} examples"
            self.examples_seen = seen
            self.model.stop_training = True


class BetweenBatches(keras.callbacks.Callback):
    """Calls `hook` before every update (it may raise, e.g. KeyboardInterrupt on Ctrl-C)."""

    def __init__(self, hook: Callable[[], None]) -> None:
        super().__init__()
        self.hook = hook

    def on_train_batch_begin(self, batch, logs=None):
        self.hook()


class EpochProgress(keras.callbacks.Callback):
    """A tqdm bar per epoch over its batches, with the loss."""

    def __init__(self, epochs: int, batches_per_epoch: int) -> None:
        super().__init__()
        self.epochs, self.total, self.bar = epochs, batches_per_epoch, None

    def on_epoch_begin(self, epoch, logs=None):
        self.bar = tqdm(total=self.total, desc=f"epoch {epoch + 1}/{self.epochs}", unit="batch", leave=False, disable=not sys.stderr.isatty())  # no frames in a log

    def on_train_batch_end(self, batch, logs=None):
        self.bar.update(1)
        if batch % 20 == 0 and logs:
            self.bar.set_postfix(loss=f"{float(logs['loss']):.3f}")

    def on_epoch_end(self, epoch, logs=None):
        self.bar.close()


class EpochBackup(keras.callbacks.Callback):
    """Saves the training state after every epoch under `folder` and restores it when a run
    starts: weights with the optimizer's state (`model.save_weights`), the best weights and
    counters of `early_stopping`, and the history so far, with the epoch in `state.json`
    (written last and atomically, so a backup is complete or the previous one stands).
    `resume_epoch()` tells `fit` where to start."""

    def __init__(self, folder: Path, early_stopping: keras.callbacks.EarlyStopping, validation: GreedyValidation) -> None:
        super().__init__()
        self.folder, self.early_stopping, self.validation = Path(folder), early_stopping, validation

    def _state(self) -> dict | None:
        try:
            return json.loads((self.folder / "state.json").read_text())
        except (OSError, ValueError):
            return None

    def resume_epoch(self) -> int:
        state = self._state()
        return state["epoch"] if state else 0

    def on_train_begin(self, logs=None):  # after EarlyStopping's own reset
        state = self._state()
        if not state:
            return
        if not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        self.model.load_weights(self.folder / f"epoch-{state['epoch']}.weights.h5")
        es = self.early_stopping
        es.wait, es.best, es.best_epoch = state["wait"], state["best"], state["best_epoch"]
        with np.load(self.folder / f"best-{state['epoch']}.npz") as f:
            es.best_weights = [f[f"w{i}"] for i in range(len(f.files))]
        self.validation.history[:] = state["history"]

    def on_epoch_end(self, epoch, logs=None):
        es = self.early_stopping
        done = epoch + 1
        if "val_selection" not in logs:  # a diverged epoch is not worth resuming from
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        self.model.save_weights(self.folder / f"epoch-{done}.weights.h5")
        write_atomic(self.folder / f"best-{done}.npz", lambda f: np.savez(f, **{f"w{i}": w for i, w in enumerate(es.best_weights)}))
        write_json_atomic(self.folder / "state.json", {"epoch": done, "wait": es.wait, "best": es.best, "best_epoch": es.best_epoch, "history": self.validation.history})
        for old in self.folder.glob("*-*.*"):
            if old.name not in (f"epoch-{done}.weights.h5", f"best-{done}.npz"):
                old.unlink(missing_ok=True)


def train_model(
    model: EncoderDecoder,
    train: Dataset,
    validation: Dataset,
    source_vocab: Vocabulary,
    target_vocab: Vocabulary,
    cfg: TrainConfig,
    seed: int,
    progress: bool = True,
    between_batches: Callable[[], None] | None = None,
    backup_dir: Path | None = None,
    extra_callbacks: Sequence[keras.callbacks.Callback] = (),
) -> TrainResult:
    """Trains `model` in place with `model.fit` (best validation weights restored) and returns
    what happened.

    Args:
        train, validation: datasets of the task (validation is decoded greedily each epoch).
        cfg: budget and optimiser; the same for every model of a comparison.
        seed: seeds the batch order (seed Keras with `keras.utils.set_random_seed` before
            building the model for reproducible initial weights).
        progress: show a progress bar over the batches of each epoch.
        between_batches: called before every update (it may raise to stop training,
            e.g. on Ctrl-C).
        backup_dir: where `EpochBackup` keeps the training state; a run that finds a backup
            there resumes from it (None: no backups).
        extra_callbacks: more Keras callbacks (e.g. `keras.callbacks.TensorBoard`).
    """
    started = time.perf_counter()
    batches = BucketedBatches(EncodedSet.build(train, source_vocab, target_vocab), cfg, seed)
    compile_model(model, cfg)
    validating = GreedyValidation(batches, validation, source_vocab, target_vocab, started)
    target = TargetReached(cfg.target_accuracy)
    early_stopping = keras.callbacks.EarlyStopping(monitor="val_selection", mode="max", patience=cfg.patience, restore_best_weights=True)
    diverging = Divergence(batches)
    callbacks: list[keras.callbacks.Callback] = [validating, target, early_stopping, diverging]
    initial_epoch = 0
    if backup_dir is not None:
        backup = EpochBackup(backup_dir, early_stopping, validating)
        initial_epoch = backup.resume_epoch()
        callbacks.append(backup)
    batches.next_epoch = initial_epoch
    if between_batches is not None:
        callbacks.append(BetweenBatches(between_batches))
    if progress:
        callbacks.append(EpochProgress(cfg.max_epochs, len(batches)))
    model.fit(batches.for_fit(), epochs=cfg.max_epochs, initial_epoch=initial_epoch, callbacks=[*callbacks, *extra_callbacks], verbose=0, shuffle=False)  # the order is BucketedBatches'
    history = validating.history
    if diverging.reason:
        stop_reason, examples_seen = diverging.reason, diverging.examples_seen
    else:
        examples_seen = history[-1]["examples_seen"] if history else 0
        if target.reached:
            stop_reason = "target_reached"
        elif early_stopping.stopped_epoch > 0:
            stop_reason = "no_improvement"
        else:
            stop_reason = "budget"
    best_epoch = early_stopping.best_epoch + 1 if history else 0
    best = history[best_epoch - 1]["val_seq_acc"] if history else 0.0
    return TrainResult(history, stop_reason, examples_seen, best_epoch, best, time.perf_counter() - started, last_stretch_gain(history, cfg.patience))
