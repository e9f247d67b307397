"""The training loop: bucketed batches, a loss in which every target character weighs the same,
the best validation weights restored, each stop reason (target reached, convergence, budget) at
the epoch its definition gives, a learning rate that falls only on a plateau, and validation
exact match per length and validation loss in the history."""

import json
from pathlib import Path

import keras
import numpy as np
import pytest

from study.cell import identity_train_config
from study.config import ConfigError, ModelConfig, TrainConfig
from study.data import make_splits
from study.evaluate import evaluate
from study.models import build_model
from study.tasks import get_task
from study.train import BUCKET_POOL, BucketedBatches, EncodedSet, bucketed_batches, compile_model, train_model
from study.vocab import Vocabulary


def test_bucketed_batches_cover_every_example_once_with_similar_lengths():
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 100, size=5000)
    batches = bucketed_batches(sizes, 16, np.random.default_rng(1))
    order = np.concatenate(batches)
    assert sorted(order.tolist()) == list(range(5000))  # each example exactly once
    assert all(1 <= len(b) <= 16 for b in batches)
    spread = np.mean([np.ptp(sizes[b]) for b in batches])
    assert spread < 0.2 * np.ptp(sizes)  # a batch holds similar lengths (random batches: about 0.8)
    again = bucketed_batches(sizes, 16, np.random.default_rng(1))
    assert all((a == b).all() for a, b in zip(batches, again))  # a pure function of the generator
    other = bucketed_batches(sizes, 16, np.random.default_rng(2))
    assert any(len(a) != len(b) or (a != b).any() for a, b in zip(batches, other))
    assert len(batches) <= 5000 // 16 + 5000 // (16 * BUCKET_POOL) + 1  # only each pool's last batch is short


@pytest.fixture(scope="module")
def copy_data():
    task = get_task("copy", alphabet="abcd")
    splits = make_splits(task, [2, 3], [3], n_train=256, n_validation=32, n_test=8, seed=0, cache_dir=None)
    return splits, Vocabulary(task.input_alphabet), Vocabulary(task.output_alphabet)


def test_every_target_character_weighs_the_same_in_every_batch(copy_data):
    """A partial or short batch does not weigh its characters more: the loss of a batch is the
    sum of the losses of its parts, with one weight per target character for the whole run."""
    splits, sv, tv = copy_data
    encoded = EncodedSet.build(splits.train, sv, tv)
    per_batch = encoded.tokens_per_batch(32)
    assert per_batch == pytest.approx(32 * np.mean([len(t) + 1 for t in splits.train.targets]))
    keras.utils.set_random_seed(0)
    model = build_model("dot", sv.size, tv.size, ModelConfig(embedding_dim=8, units=16))
    compile_model(model, TrainConfig(batch_size=32))

    def loss(index):
        x, y, w = encoded.batch(np.asarray(index), 8, 1 / per_batch)
        assert set(np.unique(w[y != 0])) == {np.float32(1 / per_batch)} and (w[y == 0] == 0).all()
        return float(model.loss(y, model(x), sample_weight=w))

    order = np.argsort(splits.train.lengths, kind="stable")
    short, long, partial = order[:32], order[-32:], order[100:105]
    assert loss(np.concatenate([short, long, partial])) == pytest.approx(
        loss(short) + loss(long) + loss(partial), rel=1e-5
    )


def test_greedy_validation_in_length_sorted_batches_equals_the_whole_set_as_one_batch(monkeypatch):
    """The validation loss and every prediction of `GreedyValidation`, which runs the set sorted by
    length in batches each padded to its own longest row, equal those of the whole set as one
    batch padded to its longest: the batches' outputs go back to their own rows before the loss is
    reduced (lengths 3 and 9 interleaved, batches of 8 rows, widths 8 and 16)."""
    from study.evaluate import decode, decode_steps, score
    from study.train import GreedyValidation

    task = get_task("copy", alphabet="abcdefgh")
    splits = make_splits(task, [3, 9], [9], n_train=64, n_validation=16, n_test=4, seed=0, cache_dir=None)
    sv, tv = Vocabulary(task.input_alphabet), Vocabulary(task.output_alphabet)
    cfg = TrainConfig(n_train=64, batch_size=16, epoch_examples=64, n_validation=16)
    keras.utils.set_random_seed(0)
    model = build_model("dot", sv.size, tv.size, ModelConfig(embedding_dim=8, units=16))
    compile_model(model, cfg)
    monkeypatch.setattr(GreedyValidation, "BATCH", 8)
    v = splits.validation.select(np.random.default_rng(0).permutation(32))  # lengths interleaved
    assert len(set(v.lengths[:8])) == 2
    validating = GreedyValidation(BucketedBatches(EncodedSet.build(splits.train, sv, tv), cfg, 0), v, sv, tv, 0.0)
    validating.set_model(model)
    assert [x[0].shape[1] for _, x in validating.loss_inputs] == [8, 8, 16, 16]
    scored = []  # what the callback scores, in the set's order
    monkeypatch.setattr(
        "study.train.score", lambda predictions, targets: scored.append(predictions) or score(predictions, targets)
    )
    logs = {"loss": 1.0}
    validating.on_epoch_end(0, logs)

    encoded = EncodedSet.build(v, sv, tv)
    x, y, w = encoded.batch(np.arange(len(v)), 8, 1 / sum(len(t) - 1 for t in encoded.targets))
    assert logs["val_loss"] == pytest.approx(float(model.loss(y, model.predict_on_batch(x), sample_weight=w)), rel=1e-6)
    whole, _ = decode(model, v.sources, sv, tv, decode_steps(v.targets))
    assert scored == [whole] and len(set(whole)) > 1
    assert logs["val_seq_acc"] == score(whole, v.targets)["seq_acc"]
    assert logs["val_char_acc"] == pytest.approx(score(whole, v.targets)["char_acc"], abs=0)
    right = np.array([p == t for p, t in zip(whole, v.targets)])
    assert validating.history[-1]["val_seq_acc_by_length"] == {
        str(L): float(right[v.lengths == L].mean()) for L in (3, 9)
    }


def test_adams_second_moment_decay_is_a_setting_that_old_cells_do_not_name():
    model = build_model("dot", 5, 6, ModelConfig(embedding_dim=8, units=16))
    compile_model(model, TrainConfig(adam_beta2=0.98))
    assert model.optimizer.beta_2 == 0.98
    with pytest.raises(ConfigError, match=r"train.adam_beta2 must be a number in \(0, 1\), got 1.0"):
        TrainConfig(adam_beta2=1.0)
    assert "adam_beta2" not in identity_train_config(TrainConfig())  # cells made before it keep their ids
    assert identity_train_config(TrainConfig(adam_beta2=0.98))["adam_beta2"] == 0.98


def _train(copy_data, cfg, sabotage_from_epoch=None, backup_dir=None):
    """Trains a tiny `dot` model; from `sabotage_from_epoch` on, its weights are zeroed before
    every update and the learning rate set to 0 (a model that got worse and stays so: all-zero
    logits, so greedy decoding emits END at once)."""
    splits, sv, tv = copy_data
    keras.utils.set_random_seed(0)
    model = build_model("dot", sv.size, tv.size, ModelConfig(embedding_dim=8, units=16))
    batches_per_epoch = -(-cfg.n_train // cfg.batch_size)
    seen = [0]

    def between_batches():
        seen[0] += 1
        if sabotage_from_epoch is not None and seen[0] > (sabotage_from_epoch - 1) * batches_per_epoch:
            model.set_weights([np.zeros_like(w) for w in model.get_weights()])
            model.optimizer.learning_rate.assign(0.0)

    result = train_model(
        model,
        splits.train,
        splits.validation,
        sv,
        tv,
        cfg,
        seed=0,
        progress=False,
        between_batches=between_batches,
        backup_dir=backup_dir,
    )
    return model, result


@pytest.mark.slow
def test_a_backup_restores_the_whole_training_state(copy_data, tmp_path):
    """A run that finds the backup of a finished last epoch trains no further and reports what
    the first run did: history, best epoch (early-stopping state) and the best weights."""
    cfg = TrainConfig(n_train=256, max_examples=512, batch_size=32, learning_rate=1e-2, patience_examples=1280)
    model, first = _train(copy_data, cfg, backup_dir=tmp_path)
    assert first.best_epoch == 2 and sorted(p.name for p in tmp_path.iterdir()) == [
        "best-loss-2.npz",
        "best-selection-2.npz",
        "epoch-2.weights.h5",
        "state.json",
    ]
    again_model, again = _train(copy_data, cfg, backup_dir=tmp_path)
    assert (again.history, again.best_epoch, again.stop_reason, again.examples_seen) == (
        first.history,
        first.best_epoch,
        first.stop_reason,
        first.examples_seen,
    )
    # times add up across a resume
    assert again.seconds == first.seconds and again.times["train_steps"] == first.times["train_steps"]
    assert all((a == b).all() for a, b in zip(model.get_weights(), again_model.get_weights()))


@pytest.mark.slow
def test_best_validation_weights_are_restored(copy_data):
    splits, sv, tv = copy_data
    cfg = TrainConfig(n_train=256, max_examples=1024, batch_size=32, learning_rate=1e-2, patience_examples=1024)
    model, result = _train(copy_data, cfg, sabotage_from_epoch=3)
    assert [row["epoch"] for row in result.history] == [1, 2, 3, 4] and result.stop_reason == "budget"
    assert result.history[-1]["val_char_acc"] == 0.0  # the zeroed model emits END at once
    assert result.best_epoch in (1, 2) and result.history[result.best_epoch - 1]["val_char_acc"] > 0
    again = evaluate(model, splits.validation.sources, splits.validation.targets, sv, tv)
    best = result.history[result.best_epoch - 1]
    assert (again["seq_acc"], again["char_acc"]) == (best["val_seq_acc"], best["val_char_acc"])
    assert result.best_val_seq_acc == best["val_seq_acc"]
    splits, sv, tv = copy_data
    for row in result.history:  # exact match per training length, consistent with the whole
        by_length = row["val_seq_acc_by_length"]
        assert sorted(by_length) == ["2", "3"]
        weights = [np.sum(splits.validation.lengths == L) for L in (2, 3)]
        assert np.average([by_length["2"], by_length["3"]], weights=weights) == pytest.approx(row["val_seq_acc"])


@pytest.mark.slow
def test_a_model_that_stops_learning_stops_as_converged(copy_data):
    """From epoch 2 on the model is zeroed and its learning rate 0: nothing moves, so after the
    patience stretch (2 epochs) it stops as converged, keeping epoch 1's weights."""
    cfg = TrainConfig(n_train=256, max_examples=2048, batch_size=32, learning_rate=1e-2, patience_examples=512)
    _, result = _train(copy_data, cfg, sabotage_from_epoch=2)
    assert result.best_epoch == 1
    assert result.stop_reason == "converged" and result.converged and len(result.history) == 1 + 2
    assert result.examples_seen == 3 * 256
    assert (
        result.last_stretch["val_loss"] <= cfg.loss_tolerance
        and result.last_stretch["val_seq_acc_by_length"] <= cfg.accuracy_tolerance
    )


@pytest.mark.slow
def test_a_model_still_learning_at_the_budget_is_flagged_not_converged(copy_data):
    """A model whose validation loss still falls when the budget ends has not converged, and its
    record says by how much the loss fell over the last stretch."""
    cfg = TrainConfig(n_train=256, max_examples=1024, batch_size=32, learning_rate=3e-3, patience_examples=512)
    _, result = _train(copy_data, cfg)
    losses = [row["val_loss"] for row in result.history]
    assert losses[-1] < losses[-3] - cfg.loss_tolerance, losses  # still learning
    assert result.stop_reason == "budget" and not result.converged
    assert result.last_stretch["val_loss"] == pytest.approx(min(losses[:2]) - min(losses[2:]))


@pytest.mark.slow
def test_reaching_the_target_accuracy_stops_training(copy_data):
    cfg = TrainConfig(
        n_train=256, max_examples=2560, batch_size=32, learning_rate=1e-2, patience_examples=2560, target_accuracy=0.05
    )
    _, result = _train(copy_data, cfg)
    accuracies = [row["val_seq_acc"] for row in result.history]
    assert result.stop_reason == "target_reached" and result.converged, accuracies
    assert accuracies[-1] >= 0.05 and all(a < 0.05 for a in accuracies[:-1])  # the first epoch that reached it


@pytest.mark.slow
def test_the_budget_is_max_examples(copy_data):
    cfg = TrainConfig(n_train=256, max_examples=512, batch_size=32, learning_rate=1e-6, patience_examples=1280)
    _, result = _train(copy_data, cfg)
    assert result.stop_reason == "budget" and result.examples_seen == 2 * 256 and len(result.history) == 2


def test_the_learning_rate_warms_up_then_halves_only_on_a_plateau_of_the_validation_loss(copy_data):
    """Warm-up: linear over the first updates; "plateau": `keras.callbacks.ReduceLROnPlateau` on
    the validation loss, with the config's factor, patience, tolerance and floor."""
    from study.train import Warmup, warmup_updates

    splits, sv, tv = copy_data
    cfg = TrainConfig(n_train=256, batch_size=32, max_examples=512, learning_rate=0.002, warmup_examples=64)
    assert warmup_updates(cfg) == 2
    keras.utils.set_random_seed(0)
    model = build_model("dot", sv.size, tv.size, ModelConfig(embedding_dim=8, units=16))
    compile_model(model, cfg)
    warm = Warmup(cfg.learning_rate, warmup_updates(cfg))
    warm.set_model(model)
    seen = []
    for step in range(3):
        warm.on_train_batch_begin(step)
        seen.append(float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)))
        model.optimizer.iterations.assign(step + 1)
    assert seen == pytest.approx([0.001, 0.002, 0.002])

    from study.config import ConfigError

    assert TrainConfig(n_train=1000, lr_patience_examples=1500).lr_patience == 2
    for bad, message in (
        (dict(schedule="cosine"), "train.schedule must be one of constant, plateau"),
        (dict(warmup_examples=10**9), "below the budget"),
        (dict(curriculum_examples=10**9), "train.curriculum_examples must be an integer from 0 to below the budget"),
        (dict(curriculum_share=0), "train.curriculum_share must be a number in"),
        (dict(n_train=1000, epoch_examples=500, curriculum_examples=500), "must be 0 \\(none\\) or above"),
        (dict(schedule="plateau", min_learning_rate=1.0), "must not exceed train.learning_rate"),
        (dict(lr_factor=1.5), "lr_factor must be a number in"),
        (dict(loss_tolerance=-1), "loss_tolerance must be a number in"),
    ):
        with pytest.raises(ConfigError, match=message):
            TrainConfig(**bad)


@pytest.mark.slow
def test_the_plateau_schedule_halves_the_rate_only_when_the_validation_loss_stalls(copy_data):
    plateau = dict(
        n_train=256,
        max_examples=1024,
        batch_size=32,
        patience_examples=1024,
        schedule="plateau",
        lr_patience_examples=256,
    )
    # too small a step to move the loss
    _, stalled = _train(copy_data, TrainConfig(learning_rate=1e-7, min_learning_rate=1e-8, **plateau))
    assert [row["learning_rate"] for row in stalled.history] == pytest.approx([1e-7, 1e-7, 5e-8, 2.5e-8])
    _, learning = _train(copy_data, TrainConfig(learning_rate=1e-2, **plateau))
    losses = [row["val_loss"] for row in learning.history]
    assert all(b < a - 0.005 for a, b in zip(losses, losses[1:3])), losses  # falling in the first epochs
    assert [row["learning_rate"] for row in learning.history[:3]] == pytest.approx([1e-2] * 3)


def test_patience_and_budget_are_counted_in_examples_rounded_up_to_epochs():
    cfg = TrainConfig(n_train=1000, max_examples=2500, patience_examples=1001)
    assert (cfg.epoch_examples, cfg.max_epochs, cfg.patience) == (1000, 3, 2)
    cfg = TrainConfig(n_train=4000, epoch_examples=1000, max_examples=2500, patience_examples=1001)
    assert (cfg.max_epochs, cfg.patience) == (3, 2)
    from study.config import ConfigError

    with pytest.raises(
        ConfigError, match=r"train.n_train \(4000\) must be a multiple of train.epoch_examples \(3000\)"
    ):
        TrainConfig(n_train=4000, epoch_examples=3000)


def test_convergence_sees_learning_at_zero_exact_match_and_ignores_one_lucky_example():
    """`Convergence` on scripted epochs: a model at 0% exact match whose loss still falls is not
    stopped, however flat its exact match; one lucky validation example (1 of 64 at a length)
    neither chooses its weights nor keeps it training (a model whose exact match never rose
    above the tolerance keeps the weights of its lowest validation loss); a loss that stops
    falling stops it."""
    from study.stopping import StoppingRule, last_stretch
    from study.train import Convergence, TrainResult

    class Model:  # what the callback touches of a Keras model: weights and stop_training
        stop_training = False

        def __init__(self):
            self.epoch = 0

        def get_weights(self):
            return [np.array(self.epoch)]

        def set_weights(self, weights):
            self.kept = int(weights[0])

    class History:
        history: list = []

    def run(losses, accuracies, patience=2):
        validation = History()
        validation.history = []
        model = Model()
        rule = StoppingRule(
            patience_examples=patience * 10,
            epoch_examples=10,
            loss_tolerance=0.005,
            accuracy_tolerance=0.05,
            target_accuracy=1.0,
            max_examples=100,
        )
        callback = Convergence(validation, rule)
        callback.set_model(model)
        callback.on_train_begin()
        for epoch, (loss, acc) in enumerate(zip(losses, accuracies)):
            model.epoch = epoch + 1
            validation.history.append(
                {
                    "val_loss": loss,
                    "val_seq_acc": acc,
                    "val_char_acc": acc,
                    "val_seq_acc_by_length": {"4": acc, "8": 0.0},
                }
            )
            callback.on_epoch_end(epoch, {"val_loss": loss})
            if model.stop_training:
                break
        callback.on_train_end()
        return callback, model

    falling = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]
    lucky = [0.0, 1 / 64, 0.0, 0.0, 0.0, 0.0]
    callback, model = run(falling, lucky)
    assert not callback.stopped and model.epoch == 6  # the loss falls 0.2 per stretch: still learning
    assert callback.selected_by == "validation loss" and model.kept == 6  # not epoch 2, picked by one example
    callback, model = run(falling, [0.0, 0.1, 0.2, 0.3, 0.2, 0.1])
    assert callback.selected_by == "exact match" and model.kept == 4
    callback, model = run([0.9, 0.5, 0.498, 0.497, 0.499, 0.3], [0.0, 1 / 64, 0.0, 1 / 64, 0.0, 0.0])
    assert callback.stopped and model.epoch == 4  # 0.003 nats over two epochs and one example: converged
    assert last_stretch(
        [{"val_loss": v, "val_seq_acc_by_length": {"4": 0.0}} for v in (0.9, 0.5, 0.498, 0.497)], 2, 1, 0.0, 0.0, 64
    )["val_loss"] == pytest.approx(0.003)
    assert last_stretch([{"val_loss": 0.5, "val_seq_acc_by_length": {"4": 0.0}}], 2, 1, 0.0, 0.0, 64) is None
    result = lambda reason: TrainResult([], reason, 0, 0, 0.0, 0.0)  # noqa: E731
    assert result("converged").converged and result("target_reached").converged
    assert not result("budget").converged and not result("diverged: x").converged


def test_sequence_normalisation_weighs_every_example_the_same(copy_data):
    """With loss_normalisation = "sequence" each example's weights sum to the same total,
    1 / batch_size, whatever its length; "token" gives every character the same weight."""
    splits, sv, tv = copy_data
    encoded = EncodedSet.build(splits.train, sv, tv)
    order = np.argsort(splits.train.lengths, kind="stable")
    index = np.concatenate([order[:16], order[-16:]])  # lengths 2 and 3
    _, y, w = encoded.batch(index, 8, 1 / encoded.tokens_per_batch(32), per_sequence=True)
    assert np.allclose(w.sum(axis=1), 1 / 32) and (w[y == 0] == 0).all()
    _, _, w_token = encoded.batch(index, 8, 1 / encoded.tokens_per_batch(32))
    assert not np.allclose(w_token.sum(axis=1), 1 / 32)
    from study.config import ConfigError

    with pytest.raises(ConfigError, match="train.loss_normalisation must be one of token, sequence"):
        TrainConfig(loss_normalisation="mean")


def test_epochs_walk_through_the_pool_in_passes_each_example_once_per_pass():
    from study.train import epoch_examples

    cfg = TrainConfig(n_train=1000, epoch_examples=250)
    passes = [np.concatenate([epoch_examples(1000, e, cfg, seed=5) for e in range(p * 4, p * 4 + 4)]) for p in range(2)]
    for indices in passes:
        assert sorted(indices) == list(range(1000))
    assert (passes[0] != passes[1]).any()  # a new order each pass
    assert (epoch_examples(1000, 6, cfg, seed=5) == epoch_examples(1000, 6, cfg, seed=5)).all()
    assert (epoch_examples(1000, 6, cfg, seed=5) != epoch_examples(1000, 6, cfg, seed=6)).any()


def test_a_mixed_curriculum_draws_a_share_from_a_shortest_part_that_grows_to_the_whole_pool():
    from study.train import epoch_examples, mixed_curriculum

    cfg = TrainConfig(n_train=1000, epoch_examples=250, max_examples=5000, curriculum_examples=1000)
    sizes = np.random.default_rng(0).permutation(np.repeat(np.arange(10, 20), 100))  # 100 examples of each size
    for epoch, longest in ((0, 12), (1, 14), (2, 17)):  # the shortest 25%, 50%, 75% of the pool
        drawn = epoch_examples(1000, epoch, cfg, seed=5)
        mixed = mixed_curriculum(drawn, sizes, epoch, cfg, seed=5)
        assert len(mixed) == 250 and (mixed[:125] == drawn[:125]).all()  # half the uniform draw kept
        short = mixed[125:]
        assert len(set(short)) == 125 and sizes[short].max() == longest
        assert (mixed == mixed_curriculum(drawn, sizes, epoch, cfg, seed=5)).all()  # a pure function of (seed, epoch)
        assert (mixed != mixed_curriculum(drawn, sizes, epoch, cfg, seed=6)).any()
    drawn = epoch_examples(1000, 3, cfg, seed=5)
    assert mixed_curriculum(drawn, sizes, 3, cfg, seed=5) is drawn  # the whole pool: the uniform draw itself
    from study.cell import identity_train_config

    assert "curriculum_share" not in identity_train_config(TrainConfig(curriculum_share=0.25))  # no curriculum
    assert identity_train_config(TrainConfig(**{**vars(cfg), "curriculum_share": 1}))["curriculum_share"] == 1.0
    few = TrainConfig(
        n_train=1000, epoch_examples=250, max_examples=5000, curriculum_examples=4000, curriculum_share=1.0
    )
    assert sorted(mixed_curriculum(drawn, sizes, 0, few, seed=5)) == sorted(np.argsort(sizes, kind="stable")[:250])


def test_jax_keeps_compiled_programs_between_runs(tmp_path):
    """With the JAX backend the persistent compilation cache is on: a compiled function lands
    under $XDG_CACHE_HOME/seq2seq-length-study/jax."""
    import os
    import subprocess
    import sys

    pytest.importorskip("jax")
    code = (
        "from study.backend import enable_jax_compilation_cache; enable_jax_compilation_cache()\n"
        "import jax, jax.numpy as jnp; jax.jit(lambda x: x * 3 - 1)(jnp.arange(5.0)).block_until_ready()"
    )
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path), "KERAS_BACKEND": "jax"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert any((tmp_path / "seq2seq-length-study" / "jax").iterdir())


def test_every_committed_records_id_settings_are_what_its_configuration_gives():
    """A training setting added later must be listed in `IDENTITY_DEFAULTS` at its former
    behaviour, or every committed cell's id would change: each committed record's identity
    settings equal those its own full configuration gives today."""
    import glob

    records = [
        json.loads(Path(f).read_text(encoding="utf-8")) for f in glob.glob("results/**/cells/*.json", recursive=True)
    ]
    records = [r for r in records if "config" in r]
    assert len(records) >= 100
    for r in records:
        assert identity_train_config(TrainConfig(**r["config"]["train"])) == r["train_config"], r["id"]


def test_the_training_data_pipeline_runs_without_tf_data_autotuning(copy_data):
    """Deleting an autotuned pipeline's iterator waits for its model thread (`without_autotuning`)."""
    if keras.backend.backend() != "tensorflow":
        pytest.skip("the tf.data pipeline is TensorFlow's")
    splits, sv, tv = copy_data
    batches = BucketedBatches(EncodedSet.build(splits.train, sv, tv), TrainConfig(n_train=256, batch_size=32), seed=0)
    assert batches.for_fit().options().autotune.enabled is False


def test_the_training_batches_follow_the_curriculum(copy_data):
    from study.train import epoch_examples, mixed_curriculum

    splits, sv, tv = copy_data
    cfg = TrainConfig(n_train=256, epoch_examples=64, batch_size=32, max_examples=1024, curriculum_examples=256)
    batches = BucketedBatches(EncodedSet.build(splits.train, sv, tv), cfg, seed=0)
    batches.set_epoch(1)
    drawn = mixed_curriculum(epoch_examples(256, 1, cfg, seed=0), batches.sizes, 1, cfg, seed=0)
    assert sorted(np.concatenate(batches.order)) == sorted(drawn)
    assert batches.sizes[np.concatenate(batches.order)].mean() < batches.sizes.mean()


def test_the_stopping_rule_replayed_on_every_committed_record_gives_the_record_its_own_stop():
    """`StoppingRule.replay` on each committed record's history stops at the same epoch, for the
    same reason, and keeps the same epoch's weights as training with that rule did: the rule that
    trains, the sweep's replay and the report's definition are one object."""
    import glob

    from study.stopping import StoppingRule

    records = [
        json.loads(Path(f).read_text(encoding="utf-8")) for f in glob.glob("results/**/cells/*.json", recursive=True)
    ]
    records = [r for r in records if r["status"] == "ok" and "loss_tolerance" in r["train_config"]]
    assert len(records) >= 100  # every committed study under the current rule
    for r in records:
        replay = StoppingRule.from_config(r["train_config"]).replay(r["history"])
        stopped_at = r["history"][replay["epoch"] - 1]["examples_seen"]
        assert (replay["stop_reason"], stopped_at, replay["kept_epoch"], replay["selected_by"]) == (
            r["stop_reason"],
            r["examples_seen"],
            r["best_epoch"],
            r["selected_by"],
        ), r["id"]
        assert replay["epoch"] == len(r["history"]), r["id"]
    rule = StoppingRule.from_config(records[0]["train_config"])
    assert f"{rule.patience_examples} training examples" in rule.definition()
    assert f"{rule.max_examples}-example budget" in rule.definition()


def _band_history(shares_per_epoch: list[list[float]], val_loss: float = 0.01) -> list[dict]:
    """Epoch rows over training lengths 4..11 (one band of 8), exact match per length as given."""
    return [
        {
            "val_loss": val_loss,
            "val_seq_acc": sum(shares) / len(shares),
            "val_char_acc": 0.99,
            "examples_seen": 10000 * (i + 1),
            "val_seq_acc_by_length": {str(L): s for L, s in zip(range(4, 12), shares)},
        }
        for i, shares in enumerate(shares_per_epoch)
    ]


@pytest.mark.parametrize(
    "plateau, last, learning",
    [
        # one length of eight rises 4 examples of 64 at 85%: noise for the banded rule (pooled +0.8
        # points against a threshold of 4.5), learning for the rule of one length (+6.2 > 5)
        (0.85, [0.85] * 7 + [0.85 + 4 / 64], False),
        # every length rises 4 examples: +6.2 points pooled, beyond 2 standard errors
        (0.85, [0.85 + 4 / 64] * 8, True),
        # near 100% one example more at one length is +0.2 points pooled, within the noise
        (63 / 64, [63 / 64] * 7 + [1.0], False),
        # near 0% the standard error vanishes; the 1-point floor keeps one lucky example from counting
        (0.0, [0.0] * 7 + [1 / 64], False),
        # ... but 2 examples at every length (+3.1 points) is learning
        (60 / 64, [62 / 64] * 8, True),
    ],
)
def test_the_banded_rule_tells_a_band_that_learns_from_noise_at_one_length(plateau, last, learning):
    """The standard profile's rule (bands of 8 lengths, 2 standard errors, at least 1 point)
    counts a rise as learning only when the band's pooled exact match rises beyond its binomial
    noise; the rule of one length at a time (band 1, z 0, 5 points) reads noise at one length
    as learning."""
    from study.stopping import StoppingRule

    history = _band_history([[plateau] * 8] * 3 + [last])
    common = dict(patience_examples=10000, epoch_examples=10000, loss_tolerance=0.005, target_accuracy=1.0)
    banded = StoppingRule(**common, accuracy_tolerance=0.01, max_examples=10**6, accuracy_band=8, accuracy_z=2.0)
    assert banded.converged(history) is not learning
    stretch = banded.stretch(history)
    assert stretch["lengths"] == [4, 11] and stretch["threshold"] >= 0.01
    assert banded.stop_reason(history) == (None if learning else "converged")
    one_length = StoppingRule(**common, accuracy_tolerance=0.05, max_examples=10**6)
    if not learning and 0.5 < plateau < 0.9:
        assert not one_length.converged(history)  # the rule of one length reads the noise as learning
    assert "band of 8 consecutive training lengths" in banded.definition()
    assert "and 1 point;" in banded.definition() or "and 1 point," in banded.definition()


def test_a_stop_at_the_learning_rate_floor_is_named_as_such():
    """`at_floor` is true for the plateau schedule's floor (stored in float32, so a hair below it)
    and never for the constant schedule, which has no floor."""
    from study.stopping import StoppingRule

    config = dict(TrainConfig().__dict__, schedule="plateau", min_learning_rate=1e-4)
    rule = StoppingRule.from_config(config)
    assert rule.at_floor(float(np.float32(1e-4))) and not rule.at_floor(2e-4)
    assert "schedule's floor (0.0001)" in rule.definition()
    with pytest.raises(TypeError, match="accuracy_bands"):
        StoppingRule.from_config(config, accuracy_bands=8)  # a misspelt override is not silently dropped
    constant = StoppingRule.from_config(dict(config, schedule="constant"))
    assert not constant.at_floor(1e-4) and "floor" not in constant.definition()
