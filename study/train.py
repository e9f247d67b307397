"""The one training function of the study, for every model and task: Keras `model.fit`.

    result = train_model(model, splits.train, splits.validation, source_vocab, target_vocab, TrainConfig(), seed=0,
                         backup_dir=Path("results/standard/backups/<cell id>"))
    result.stop_reason      # "target_reached", "converged", "budget" or "diverged: ..."
    result.converged        # stopped by the target, or because learning stopped (see `Convergence`)
    result.last_stretch     # how far each convergence measure moved over the last patience stretch
    result.history          # one dict per epoch: loss, val_loss, val_seq_acc, val_char_acc,
                            # val_seq_acc_by_length, learning_rate, examples_seen, seconds

Teacher forcing with masked sparse cross-entropy, Adam with gradient clipping,
and a budget of at most `max_examples` examples, a ceiling that is the same for every
model of a comparison.  The loss is per target character (END included) with one fixed
weight for the whole run: each batch's summed cross-entropy is divided by
`tokens_per_batch` = batch_size x the training set's mean target length, not by the
batch's own count, so every character weighs the same in every update whatever the
length bucket or the size of the epoch's last, partial batch.  `loss_normalisation =
"sequence"` weighs every example the same instead (its mean cross-entropy per character,
Sutskever et al. 2014's per-sentence log-likelihood), so short examples count as much as
long ones.

Batches come from `BucketedBatches`, a `keras.utils.PyDataset`: each epoch draws its
examples (`epoch_examples`; with a length curriculum, `mixed_curriculum`), shuffles them,
cuts the order into pools of `BUCKET_POOL` batches, sorts each pool by length and cuts it
into batches, so a batch holds examples of similar length, padded to a multiple of
`pad_multiple` steps; the order of epoch e is a pure function of (seed, e).

The learning rate: a linear warm-up over `warmup_examples` (`Warmup`, Goyal et al. 2017),
then, with schedule "plateau", `keras.callbacks.ReduceLROnPlateau` on the validation loss
(halved after `lr_patience_examples` without a gain of `loss_tolerance`, never below
`min_learning_rate`), so the rate falls only when learning stalls and never because the
budget is running out.

Callbacks do the rest, in this order: `GreedyValidation` decodes the validation set
greedily after every epoch and puts exact match, character accuracy and the teacher-forced
validation loss per target character (`val_loss`, the training loss's weighting) into the
epoch's logs and its history row; `Convergence` applies the study's one stopping rule
(`study.stopping.StoppingRule`: the target reached, or neither the validation loss nor exact
match at any training length improved by more than its tolerance over the last
`patience_examples`) and restores the weights the rule keeps; `Divergence` (a
`keras.callbacks.TerminateOnNaN`) stops on a non-finite loss and says where; `EpochBackup`
saves the whole training state after every epoch so that a killed run resumes from its last
finished epoch with the same result; `BetweenBatches` lets Ctrl-C stop between updates;
`StepTimes` splits the time into update steps, the first update (mostly compilation) and
validation.
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

from study.config import TrainConfig
from study.data import Dataset
from study.evaluate import decode, decode_at_target_length, decode_steps, score
from study.models.base import EncoderDecoder
from study.results import read_text, write_atomic, write_json_atomic
from study.stopping import StoppingRule
from study.vocab import END, PAD, START, Vocabulary, pad

BUCKET_POOL = 32  # batches per sorting pool

# Bucketing compiles the step once per batch shape by design; TensorFlow's "retracing" warning
# about exactly that would only be noise in a study's output.
logging.getLogger("tensorflow").setLevel(logging.ERROR)


class MemoryBudgetError(MemoryError):
    """A cell would need more memory than the machine has free; the message says what to lower."""


def check_memory(needed: int, share: float = 1.0, what: str = "this cell") -> None:
    """Refuses a training step that would not fit in memory.

    Args:
        needed: bytes one training step is estimated to need.
        share: the fraction of the machine's free memory this process may use (e.g. one over
            the number of cells trained in parallel).
        what: what needs the memory, named in the message.

    Raises:
        MemoryBudgetError: `needed` exceeds 80% of this process's share of the free memory.
            Nothing is checked on a platform that does not report its free memory.
    """
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
    """What a training run did: per-epoch history, why it stopped, and its budget use.

    stop_reason: "target_reached", "converged" (`Convergence`), "budget" or "diverged: ...".
    last_stretch: how far each convergence measure moved over the last `patience` epochs
        (`study.stopping.last_stretch`); None when the run had no more epochs than that stretch.
    selected_by: "exact match" (best validation exact match, character accuracy breaking
        ties) or "validation loss" (a model whose exact match never rose above the tolerance).
    stop_learning_rate: the learning rate of the last epoch.
    times: seconds spent in update steps, in the first update (mostly tracing and
        compilation) and in greedy validation (`StepTimes`), all summed across resumes, and
        the training seconds spent before this run resumed ("before_resume").
    """

    history: list[dict]
    stop_reason: str
    examples_seen: int
    best_epoch: int
    best_val_seq_acc: float
    seconds: float
    last_stretch: dict | None = None
    selected_by: str = "exact match"
    stop_learning_rate: float | None = None
    times: dict = dataclasses.field(default_factory=dict)

    @property
    def diverged(self) -> bool:
        return self.stop_reason.startswith("diverged")

    @property
    def converged(self) -> bool:
        """Stopped because validation exact match reached the target, or because neither the
        validation loss nor exact match at any training length moved by more than its
        tolerance over the last patience stretch (`Convergence`); never at the budget."""
        return self.stop_reason in ("target_reached", "converged")


@dataclasses.dataclass(frozen=True)
class EncodedSet:
    """A dataset as id rows: sources without specials, targets with START prepended and END appended."""

    sources: list[list[int]]
    targets: list[list[int]]
    lengths: np.ndarray  # (n,) each example's task length (`Dataset.lengths`)

    @classmethod
    def build(
        cls, data: Dataset, source_vocab: Vocabulary, target_vocab: Vocabulary, end_token: bool = True
    ) -> "EncodedSet":
        """`end_token` False: targets without END (`TrainConfig.end_token`)."""
        end = [END] if end_token else []
        return cls(
            [source_vocab.encode(s) for s in data.sources],
            [[START, *target_vocab.encode(t), *end] for t in data.targets],
            np.asarray(data.lengths),
        )

    def tokens_per_batch(self, batch_size: int) -> float:
        """The loss normaliser: target characters (END included) in an average full batch."""
        return batch_size * self.mean_target_length()

    def batch(
        self, index: np.ndarray, multiple: int, token_weight: float = 1.0, per_sequence: bool = False
    ) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray, np.ndarray]:
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
    """The batches of one epoch: examples of similar `sizes` together, batch order shuffled.

    Args:
        sizes: (n,) int, each example's size (source plus target ids).
        batch_size: examples per batch.
        rng: draws the example order and the batch order.

    Returns:
        A list of int index arrays into `sizes`, each of at most `batch_size` examples (the
        last batch of each pool of `BUCKET_POOL` batches may be shorter); every example is in
        exactly one.
    """
    order = rng.permutation(len(sizes))
    batches = []
    pool = batch_size * BUCKET_POOL
    for start in range(0, len(order), pool):
        chunk = order[start : start + pool]
        chunk = chunk[np.argsort(sizes[chunk], kind="stable")]
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def epoch_examples(pool: int, epoch: int, cfg: TrainConfig, seed: int) -> np.ndarray:
    """The pool indices of epoch `epoch`: pass p = epoch // (n_train /
    epoch_examples) is a permutation of the pool seeded by (seed, p), and the epoch is its
    next consecutive stretch of `epoch_examples`.

    Args:
        pool: examples in the training pool, a multiple of `cfg.epoch_examples`
            (`TrainConfig` checks that for `n_train`).
        epoch: the epoch, 0-based.
        cfg: gives `epoch_examples`.
        seed: the run's seed.

    Returns:
        (cfg.epoch_examples,) int array of distinct indices into the pool.
    """
    per_pass = pool // cfg.epoch_examples
    order = np.random.default_rng([seed, epoch // per_pass, 1]).permutation(pool)
    start = (epoch % per_pass) * cfg.epoch_examples
    return order[start : start + cfg.epoch_examples]


def mixed_curriculum(drawn: np.ndarray, sizes: np.ndarray, epoch: int, cfg: TrainConfig, seed: int) -> np.ndarray:
    """Epoch `epoch`'s examples under a mixed length curriculum (`cfg.curriculum_examples` > 0):
    Zaremba and Sutskever (2014) found that a curriculum alone (short examples first) did not help
    an LSTM learn long inputs, and that mixing it with examples of every difficulty did.  Here the
    epoch keeps the first (1 - curriculum_share) of its uniform draw `drawn` and takes the rest
    uniformly from the shortest q of the pool by size, q = (epoch + 1) x epoch_examples /
    curriculum_examples (at most 1; the part holds at least the examples drawn from it, since
    they are drawn without replacement).  The part grows on this fixed schedule rather than on a
    validation plateau (their "naive" strategy), so an epoch's examples stay a pure function of
    (seed, epoch) and a resumed run is exact; from the first epoch with q = 1 the draw is
    `drawn` itself.

    Args:
        drawn: (epoch_examples,) int, the epoch's uniform draw (`epoch_examples`), in random order.
        sizes: (pool,) int, each pool example's size (source plus target ids).
        epoch: the epoch, 0-based.
        cfg: gives `curriculum_examples`, `curriculum_share` and `epoch_examples`.
        seed: the run's seed.

    Returns:
        (epoch_examples,) int indices into the pool; those of the short part are distinct from
        each other but may repeat an index of the uniform part.
    """
    seen = (epoch + 1) * cfg.epoch_examples
    if seen >= cfg.curriculum_examples:
        return drawn
    n_short = round(cfg.curriculum_share * len(drawn))
    part = -(-seen * len(sizes) // cfg.curriculum_examples)  # ceil(q x pool) in integers
    shortest = np.argsort(sizes, kind="stable")[: max(part, n_short)]
    short = np.random.default_rng([seed, epoch, 2]).choice(shortest, n_short, replace=False)
    return np.concatenate([drawn[: len(drawn) - n_short], short])


def compile_model(model: EncoderDecoder, cfg: TrainConfig) -> None:
    """Compiles `model` in place: Adam with clipping at `cfg.learning_rate` (`Warmup` and
    `ReduceLROnPlateau` move it during training) and second-moment decay `cfg.adam_beta2`, and
    cross-entropy from logits summed with the batch's weights (`EncodedSet.batch` gives each
    target character 1 / tokens_per_batch).

    Args:
        model: the model to compile; a model compiled before gets a fresh optimiser.
        cfg: gives `learning_rate`, `adam_beta2` and `clipnorm` (the gradient's largest norm).
    """
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=cfg.learning_rate, beta_2=cfg.adam_beta2, clipnorm=cfg.clipnorm),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="sum"),
    )


def warmup_updates(cfg: TrainConfig) -> int:
    """Updates of the linear warm-up.

    Args:
        cfg: gives `warmup_examples` and `batch_size`.

    Returns:
        warmup_examples / batch_size, rounded up (0: no warm-up).
    """
    return math.ceil(cfg.warmup_examples / cfg.batch_size)


class Warmup(keras.callbacks.Callback):
    """A linear warm-up of the learning rate from peak / n to `peak` over the first `n` updates
    (Goyal et al. 2017); afterwards it leaves the rate alone (a resumed run, already past
    the warm-up, keeps the rate it saved)."""

    def __init__(self, peak: float, updates: int) -> None:
        super().__init__()
        self.peak, self.updates = peak, updates

    def on_train_batch_begin(self, batch, logs=None):
        step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        if step < self.updates:
            self.model.optimizer.learning_rate = self.peak * (step + 1) / self.updates


class BucketedBatches(keras.utils.PyDataset):
    """The training batches of one epoch as ((source, decoder_inputs), decoder_targets, weights)
    (`EncodedSet.batch`); `set_epoch(e)` selects epoch e's order, a pure function of (seed, e)."""

    def __init__(self, encoded: EncodedSet, cfg: TrainConfig, seed: int) -> None:
        super().__init__()
        if len(encoded.targets) != cfg.n_train:
            raise ValueError(
                f"the training set holds {len(encoded.targets)} examples but train.n_train is {cfg.n_train}; "
                "build the TrainConfig with the pool's size"
            )
        self.encoded = encoded
        self.sizes = np.array([len(s) + len(t) for s, t in zip(encoded.sources, encoded.targets)])
        self.batch_size, self.pad_multiple, self.seed, self.cfg = cfg.batch_size, cfg.pad_multiple, seed, cfg
        self.token_weight = 1 / encoded.tokens_per_batch(cfg.batch_size)
        self.set_epoch(0)
        self.next_epoch = 0  # the epoch the next `tf.data` pass runs; `fit`'s initial_epoch on a resumed run

    def set_epoch(self, epoch: int) -> None:
        """Epoch `epoch` (0-based): its examples (`epoch_examples`) in bucketed batches, all drawn
        from generators seeded by (seed, epoch)."""
        rng = np.random.default_rng([self.seed, epoch])
        drawn = epoch_examples(len(self.sizes), epoch, self.cfg, self.seed)
        if self.cfg.curriculum_examples:
            drawn = mixed_curriculum(drawn, self.sizes, epoch, self.cfg, self.seed)
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
        return self.encoded.batch(
            self.order[index], self.pad_multiple, self.token_weight, self.cfg.loss_normalisation == "sequence"
        )

    def for_fit(self):
        """What `model.fit` takes: this dataset, or on TensorFlow a `tf.data.Dataset` over it
        whose spec leaves batch and time free (Keras would infer the spec from the first two
        batches, and a later batch of another length would not fit it), prefetching two batches
        and without tf.data's autotuning (`without_autotuning`)."""
        if keras.backend.backend() != "tensorflow":
            return self
        import tensorflow as tf

        ids = tf.TensorSpec((None, None), tf.int32)
        spec = ((ids, ids), ids, tf.TensorSpec((None, None), tf.float32))
        data = tf.data.Dataset.from_generator(self._one_epoch, output_signature=spec)  # one call per epoch
        return (
            data.apply(tf.data.experimental.assert_cardinality(len(self)))
            .prefetch(2)
            .with_options(without_autotuning())
        )


def without_autotuning():
    """`tf.data.Options` that turn off tf.data's autotuning.  Its model thread wakes up only now and
    then to see whether its pipeline is gone, and deleting the pipeline's iterator waits for it
    (`tensorflow::data::RootDataset::Iterator`'s destructor): with two cells training side by side
    that held up the first update of some epochs (while the previous epoch's iterator went) by
    8-10 s, and the end of `fit` by up to 30 s.  The batches are the same either way."""
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    return options


class GreedyValidation(keras.callbacks.Callback):
    """After every epoch: greedy decoding of the validation set, which puts `val_seq_acc` and
    `val_char_acc` into the epoch's logs, and the teacher-forced validation loss `val_loss` (cross-entropy per target character, END
    included, the training loss's weighting); appends the epoch's history row (with exact
    match per training length and the epoch's learning rate).

    The loss, and the greedy decoding of a model that writes END, run on the validation set
    sorted by target length in the same batches of `BATCH` rows: the loss's forward pass pads
    each batch to its own longest row rather than every row to the set's longest, and a batch of
    short rows ends its greedy loop when they have all emitted END.  The loss is still reduced
    over the whole set at once, and the predictions go back to the set's order.  On TensorFlow
    on a CPU, for the study's models (the 36 of `results/reference` and the bottleneck's), the
    loss and every prediction equal those of the whole set as one batch to the last bit, and a
    validation of a trained model takes less time; over a whole study the gain was within the
    machine's drift (BENCHMARKS.md, "Greedy validation in length-sorted batches")."""

    BATCH = 512  # validation rows per forward pass (the standard profile's sets: 1,856 or 256 rows)

    def __init__(
        self,
        batches: BucketedBatches,
        validation: Dataset,
        source_vocab: Vocabulary,
        target_vocab: Vocabulary,
        started: float,
    ) -> None:
        super().__init__()
        self.batches, self.validation = batches, validation
        self.vocabs = (source_vocab, target_vocab)
        self.started = started
        self.seconds = 0.0  # spent validating
        self.history: list[dict] = []
        # target characters and END per epoch (with "sequence", the loss is a mean over examples of their mean per character)
        self.characters = batches.cfg.epoch_examples * batches.encoded.mean_target_length()
        encoded = EncodedSet.build(validation, source_vocab, target_vocab, batches.cfg.end_token)
        # every target character weighing 1 / their number; the targets and weights of the whole
        # set, the model's inputs in batches of rows sorted by length (`validation_loss`)
        weight = 1 / sum(len(t) - 1 for t in encoded.targets)
        _, self.loss_targets, self.loss_weights = encoded.batch(
            np.arange(len(validation)), batches.pad_multiple, weight
        )
        self.order = np.argsort([len(t) for t in encoded.targets], kind="stable")
        self.loss_inputs = [
            (rows, encoded.batch(rows, batches.pad_multiple)[0])
            for rows in (self.order[i : i + self.BATCH] for i in range(0, len(self.order), self.BATCH))
        ]

    def on_epoch_begin(self, epoch, logs=None):
        self.batches.set_epoch(epoch)  # the PyDataset path (JAX): Keras reads the batches after this

    def validation_loss(self) -> float:
        """Teacher-forced cross-entropy per target character (END included) on the validation set:
        the predicted distributions (n, T, V) of each length-sorted batch, put back in their rows
        of the whole set (T its longest target, padded), are reduced by the model's loss at once."""
        predicted = None
        for rows, x in self.loss_inputs:
            p = keras.ops.convert_to_numpy(self.model.predict_on_batch(x))
            if predicted is None:  # positions past a batch's own width are padding, weighing 0
                predicted = np.zeros((*self.loss_targets.shape, p.shape[-1]), dtype=p.dtype)
            predicted[rows, : p.shape[1]] = p
        return float(
            keras.ops.convert_to_numpy(self.model.loss(self.loss_targets, predicted, sample_weight=self.loss_weights))
        )

    def on_epoch_end(self, epoch, logs=None):
        if not math.isfinite(float(logs.get("loss", 0.0))):  # diverged (`Divergence`): nothing to validate
            return
        t0 = time.perf_counter()
        v = self.validation
        if self.batches.cfg.end_token:  # in batches of rows sorted by length, at the whole set's width
            ordered, _ = decode(
                self.model, [v.sources[i] for i in self.order], *self.vocabs, decode_steps(v.targets), self.BATCH
            )
            predictions = [""] * len(ordered)
            for i, text in zip(self.order, ordered):
                predictions[i] = text
        else:  # trained without END: decoded for exactly each target's length
            predictions = decode_at_target_length(self.model, v.sources, v.targets, *self.vocabs)
        val = score(predictions, v.targets)
        right = np.array([p == t for p, t in zip(predictions, v.targets)])
        logs["val_seq_acc"], logs["val_char_acc"] = val["seq_acc"], val["char_acc"]
        logs["val_loss"] = self.validation_loss()
        self.seconds += time.perf_counter() - t0
        # Keras logs the batch losses' mean weighted by batch size; each batch's loss is its summed
        # cross-entropy / tokens_per_batch, so this is the epoch's cross-entropy per target
        # character up to the share of partial batches (under 1% here)
        per_batch = len(self.batches) * self.batches.encoded.tokens_per_batch(self.batches.batch_size)
        self.history.append(
            {
                "epoch": epoch + 1,
                "examples_seen": (epoch + 1) * self.batches.cfg.epoch_examples,
                "loss": float(logs["loss"])
                * per_batch
                / self.characters,  # mean cross-entropy per target character (per example's mean with "sequence")
                "val_loss": logs["val_loss"],
                "val_seq_acc": val["seq_acc"],
                "val_char_acc": val["char_acc"],
                "val_seq_acc_by_length": {
                    str(L): float(right[v.lengths == L].mean()) for L in np.unique(v.lengths)
                },  # JSON keys
                "learning_rate": float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)),
                "seconds": time.perf_counter() - self.started,
            }
        )


class Convergence(keras.callbacks.Callback):
    """Stops training by the study's stopping rule (`study.stopping.StoppingRule`: the target
    reached, or neither the validation loss nor exact match at any training length moved by
    more than its tolerance over the last stretch) and keeps the weights of the epoch the rule
    keeps, restored when training ends.  It holds two candidates (the best exact match and the
    lowest validation loss) since which one is kept is known only at the end.

    `reason`: "target_reached", "converged" or None (the budget or divergence ended it).
    """

    def __init__(self, validation: GreedyValidation, rule: StoppingRule) -> None:
        super().__init__()
        self.validation, self.rule = validation, rule
        self.reset()

    def reset(self) -> None:
        self.reason: str | None = None
        self.best: dict[str, tuple[int, list | None]] = {"selection": (0, None), "loss": (0, None)}  # epoch, weights

    @property
    def stopped(self) -> bool:
        return self.reason is not None

    def on_train_begin(self, logs=None):
        self.reset()

    def _better(self, measure: str, row: dict) -> bool:
        epoch = self.best[measure][0]
        if not epoch:
            return True
        best = self.validation.history[epoch - 1]
        if measure == "loss":
            return row["val_loss"] < best["val_loss"]
        return self.rule.selection_key(row) > self.rule.selection_key(best)

    def on_epoch_end(self, epoch, logs=None):
        if "val_loss" not in logs:  # diverged
            return
        history = self.validation.history
        for measure in self.best:
            if self._better(measure, history[-1]):
                self.best[measure] = (len(history), self.model.get_weights())
        self.reason = self.rule.stop_reason(history)
        if self.reason:
            self.model.stop_training = True

    @property
    def selected_by(self) -> str:
        return self.rule.selected_by(self.validation.history)

    @property
    def best_epoch(self) -> int:
        """The epoch (1-based) whose weights are kept; 0 before the first."""
        return self.best["loss" if self.selected_by == "validation loss" else "selection"][0]

    def on_train_end(self, logs=None):
        weights = self.best["loss" if self.selected_by == "validation loss" else "selection"][1]
        if weights is not None:
            self.model.set_weights(weights)

    def get_state(self) -> dict:
        """What `EpochBackup` saves besides the weights: each candidate's epoch."""
        return {measure: [None, epoch] for measure, (epoch, _) in self.best.items()}

    def weights(self) -> dict[str, list]:
        return {measure: weights for measure, (_, weights) in self.best.items() if weights is not None}

    def set_state(self, state: dict, weights: dict[str, list]) -> None:
        """Restores `get_state`'s candidates (a backup's [value, epoch] pairs; the value is read
        from the history again)."""
        self.best = {measure: (epoch, weights.get(measure)) for measure, (_, epoch) in state.items()}


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


class StepTimes(keras.callbacks.Callback):
    """Seconds spent in update steps (from a batch's start to its end, data included), the first
    update of this process apart (it traces and compiles the step)."""

    def __init__(self) -> None:
        super().__init__()
        self.steps, self.first, self.t0 = 0.0, None, 0.0

    def on_train_batch_begin(self, batch, logs=None):
        self.t0 = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        seconds = time.perf_counter() - self.t0
        if self.first is None:
            self.first = seconds
        else:
            self.steps += seconds


class EpochProgress(keras.callbacks.Callback):
    """A tqdm bar per epoch over its batches, with the loss."""

    def __init__(self, epochs: int, batches_per_epoch: int) -> None:
        super().__init__()
        self.epochs, self.total, self.bar = epochs, batches_per_epoch, None

    def on_epoch_begin(self, epoch, logs=None):
        self.bar = tqdm(
            total=self.total,
            desc=f"epoch {epoch + 1}/{self.epochs}",
            unit="batch",
            leave=False,
            disable=not sys.stderr.isatty(),  # no frames in a log
        )

    def on_train_batch_end(self, batch, logs=None):
        self.bar.update(1)
        if batch % 20 == 0 and logs:
            self.bar.set_postfix(loss=f"{float(logs['loss']):.3f}")

    def on_epoch_end(self, epoch, logs=None):
        self.bar.close()


class EpochBackup(keras.callbacks.Callback):
    """Saves the training state after every epoch under `folder` and restores it when a run
    starts: weights with the optimizer's state (`model.save_weights`), the learning rate and
    the counters of `ReduceLROnPlateau`, the best weights and values of `Convergence`, and the
    history so far, with the epoch in `state.json` (written last and atomically, so a backup
    is complete or the previous one stands).  `resume_epoch()` tells `fit` where to start;
    a resumed run's clock continues from the saved history's."""

    def __init__(
        self,
        folder: Path,
        convergence: Convergence,
        validation: GreedyValidation,
        plateau: keras.callbacks.ReduceLROnPlateau | None,
        timing: StepTimes,
    ) -> None:
        super().__init__()
        self.folder, self.convergence, self.validation, self.plateau, self.timing = (
            Path(folder),
            convergence,
            validation,
            plateau,
            timing,
        )
        self.resumed_seconds = 0.0  # training seconds before this run resumed

    def _state(self) -> dict | None:
        try:
            return json.loads(read_text(self.folder / "state.json"))
        except (OSError, ValueError):
            return None

    def resume_epoch(self) -> int:
        state = self._state()
        return state["epoch"] if state else 0

    def on_train_begin(self, logs=None):  # after Convergence's and ReduceLROnPlateau's own resets
        state = self._state()
        if not state:
            return
        if not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        self.model.load_weights(self.folder / f"epoch-{state['epoch']}.weights.h5")
        self.model.optimizer.learning_rate = state["learning_rate"]
        if self.plateau is not None:
            self.plateau.best, self.plateau.wait, self.plateau.cooldown_counter = state["plateau"]
        weights = {}
        for measure in state["convergence"]:
            path = self.folder / f"best-{measure}-{state['epoch']}.npz"
            if path.exists():
                with np.load(path) as f:
                    weights[measure] = [f[f"w{i}"] for i in range(len(f.files))]
        self.convergence.set_state(state["convergence"], weights)
        self.validation.history[:] = state["history"]
        self.validation.seconds = state["validation_seconds"]
        self.timing.steps, self.timing.first = state["step_seconds"]
        self.resumed_seconds = state["history"][-1]["seconds"] if state["history"] else 0.0
        self.validation.started -= self.resumed_seconds

    def on_epoch_end(self, epoch, logs=None):
        done = epoch + 1
        if "val_loss" not in logs:  # a diverged epoch is not worth resuming from
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        self.model.save_weights(self.folder / f"epoch-{done}.weights.h5")
        keep = {f"epoch-{done}.weights.h5"}
        for measure, weights in self.convergence.weights().items():
            keep.add(f"best-{measure}-{done}.npz")
            write_atomic(
                self.folder / f"best-{measure}-{done}.npz",
                lambda f, weights=weights: np.savez(f, **{f"w{i}": w for i, w in enumerate(weights)}),
            )
        plateau = (
            [float(self.plateau.best), self.plateau.wait, self.plateau.cooldown_counter]
            if self.plateau is not None
            else None
        )
        write_json_atomic(
            self.folder / "state.json",
            {
                "epoch": done,
                "learning_rate": float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)),
                "plateau": plateau,
                "convergence": self.convergence.get_state(),
                "history": self.validation.history,
                "validation_seconds": self.validation.seconds,
                "step_seconds": [self.timing.steps, self.timing.first],
            },
        )
        for old in self.folder.glob("*-*.*"):
            if old.name not in keep:
                old.unlink(missing_ok=True)


def _plateau_schedule(cfg: TrainConfig) -> keras.callbacks.ReduceLROnPlateau | None:
    """`ReduceLROnPlateau` on the validation loss for schedule "plateau" (None for any other)."""
    if cfg.schedule != "plateau":
        return None
    return keras.callbacks.ReduceLROnPlateau(
        monitor="val_loss",
        mode="min",
        factor=cfg.lr_factor,
        patience=cfg.lr_patience,
        min_delta=cfg.loss_tolerance,
        min_lr=cfg.min_learning_rate,
        verbose=0,
    )


@dataclasses.dataclass
class _RunCallbacks:
    """The callbacks of one `train_model` run that the result is read from after `fit`."""

    started: float  # `time.perf_counter()` when the run began
    rule: StoppingRule
    timing: StepTimes
    validating: GreedyValidation
    plateau: keras.callbacks.ReduceLROnPlateau | None
    convergence: Convergence
    diverging: Divergence
    backup: EpochBackup | None

    @classmethod
    def build(
        cls,
        batches: BucketedBatches,
        validation: Dataset,
        source_vocab: Vocabulary,
        target_vocab: Vocabulary,
        cfg: TrainConfig,
        backup_dir: Path | None,
        started: float,
    ) -> "_RunCallbacks":
        validating = GreedyValidation(batches, validation, source_vocab, target_vocab, started)
        rule = StoppingRule.from_config(cfg)
        convergence = Convergence(validating, rule)
        plateau = _plateau_schedule(cfg)
        diverging = Divergence(batches)
        timing = StepTimes()
        backup = None
        if backup_dir is not None:
            backup = EpochBackup(backup_dir, convergence, validating, plateau, timing)
        return cls(started, rule, timing, validating, plateau, convergence, diverging, backup)

    def in_order(
        self, cfg: TrainConfig, between_batches: Callable[[], None] | None, progress: bool, batches_per_epoch: int
    ) -> list[keras.callbacks.Callback]:
        """Every callback of the run in the order Keras calls them (the module docstring's)."""
        callbacks: list[keras.callbacks.Callback] = [
            self.timing,
            self.validating,
            *([self.plateau] if self.plateau else []),
            self.convergence,
            self.diverging,
        ]
        if cfg.warmup_examples:
            callbacks.append(Warmup(cfg.learning_rate, warmup_updates(cfg)))
        if self.backup is not None:
            callbacks.append(self.backup)
        if between_batches is not None:
            callbacks.append(BetweenBatches(between_batches))
        if progress:
            callbacks.append(EpochProgress(cfg.max_epochs, batches_per_epoch))
        return callbacks

    def result(self) -> TrainResult:
        """What the finished run did, read from its callbacks."""
        history, diverging, convergence = self.validating.history, self.diverging, self.convergence
        if diverging.reason:
            stop_reason, examples_seen = diverging.reason, diverging.examples_seen
        else:
            examples_seen = history[-1]["examples_seen"] if history else 0
            stop_reason = convergence.reason or "budget"
        best_epoch = convergence.best_epoch if history else 0
        best = history[best_epoch - 1]["val_seq_acc"] if best_epoch else 0.0
        if history and not diverging.reason:
            seconds = history[-1]["seconds"]
        else:
            seconds = time.perf_counter() - self.started
        times = {
            "train_steps": self.timing.steps,
            "first_update": self.timing.first or 0.0,
            "validation": self.validating.seconds,
            "before_resume": self.backup.resumed_seconds if self.backup else 0.0,
        }
        return TrainResult(
            history,
            stop_reason,
            examples_seen,
            best_epoch,
            best,
            seconds,
            self.rule.stretch(history),
            convergence.selected_by,
            history[-1]["learning_rate"] if history else None,
            times,
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
    between_batches: Callable[[], None] | None = None,
    backup_dir: Path | None = None,
    extra_callbacks: Sequence[keras.callbacks.Callback] = (),
) -> TrainResult:
    """Trains `model` in place with `model.fit` and returns what happened; the weights the
    stopping rule keeps (`Convergence`) are restored at the end.

    Args:
        model: a built `EncoderDecoder`; it is compiled here (`compile_model`).
        train: the training pool; it must hold `cfg.n_train` examples.
        validation: decoded greedily after every epoch (exact match, character accuracy)
            and scored teacher-forced (`val_loss`; `GreedyValidation`).
        source_vocab, target_vocab: the task's vocabularies; every character of `train` and
            `validation` must be in them.
        cfg: budget, optimiser, schedule and stopping; the same for every model of a comparison.
        seed: seeds the batch order (seed Keras with `keras.utils.set_random_seed` before
            building the model for reproducible initial weights; `study.experiment.prepare`
            does both).
        progress: show a progress bar over the batches of each epoch.
        between_batches: called before every update (it may raise to stop training,
            e.g. on Ctrl-C).
        backup_dir: where `EpochBackup` keeps the training state; a run that finds a backup
            there resumes from it (None: no backups).
        extra_callbacks: more Keras callbacks (e.g. `keras.callbacks.TensorBoard`), called
            after the study's own.

    Returns:
        A `TrainResult`: one history row per validated epoch, the stop reason, the training
        examples seen, the epoch whose weights were kept (1-based; 0 when no epoch was
        validated) and its validation exact match (a share in [0, 1]), and the run's wall
        seconds, training and validation, before a resume included.

    Raises:
        ValueError: `train` does not hold `cfg.n_train` examples, or a character of `train` or
            `validation` is not in its vocabulary.
        Exception: whatever `between_batches` raises (e.g. KeyboardInterrupt), unchanged.
    """
    started = time.perf_counter()
    batches = BucketedBatches(EncodedSet.build(train, source_vocab, target_vocab, cfg.end_token), cfg, seed)
    compile_model(model, cfg)
    run = _RunCallbacks.build(batches, validation, source_vocab, target_vocab, cfg, backup_dir, started)
    initial_epoch = run.backup.resume_epoch() if run.backup is not None else 0
    batches.next_epoch = initial_epoch
    model.fit(
        batches.for_fit(),
        epochs=cfg.max_epochs,
        initial_epoch=initial_epoch,
        callbacks=[*run.in_order(cfg, between_batches, progress, len(batches)), *extra_callbacks],
        verbose=0,
        shuffle=False,  # the order is BucketedBatches'
    )
    return run.result()
