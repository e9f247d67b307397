"""The training loop: bucketed batches, a loss in which every target character weighs the same,
the best validation weights restored, each stop reason (target reached, patience, budget) at
the epoch its definition gives, and validation exact match per length in the history."""

import keras
import numpy as np
import pytest

from study.config import ModelConfig, TrainConfig
from study.data import make_splits
from study.evaluate import evaluate
from study.models import build_model
from study.tasks import get_task
from study.train import BUCKET_POOL, EncodedSet, bucketed_batches, compile_model, train_model
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
    assert loss(np.concatenate([short, long, partial])) == pytest.approx(loss(short) + loss(long) + loss(partial), rel=1e-5)


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

    result = train_model(model, splits.train, splits.validation, sv, tv, cfg, seed=0, progress=False, between_batches=between_batches, backup_dir=backup_dir)
    return model, result


@pytest.mark.slow
def test_a_backup_restores_the_whole_training_state(copy_data, tmp_path):
    """A run that finds the backup of a finished last epoch trains no further and reports what
    the first run did: history, best epoch (early-stopping state) and the best weights."""
    cfg = TrainConfig(n_train=256, max_examples=512, batch_size=32, learning_rate=1e-2, patience_examples=1280)
    model, first = _train(copy_data, cfg, backup_dir=tmp_path)
    assert first.best_epoch == 2 and sorted(p.name for p in tmp_path.iterdir()) == ["best-2.npz", "epoch-2.weights.h5", "state.json"]
    again_model, again = _train(copy_data, cfg, backup_dir=tmp_path)
    assert (again.history, again.best_epoch, again.stop_reason, again.examples_seen) == (first.history, first.best_epoch, first.stop_reason, first.examples_seen)
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
def test_patience_stops_after_that_many_epochs_without_improvement(copy_data):
    cfg = TrainConfig(n_train=256, max_examples=2048, batch_size=32, learning_rate=1e-2, patience_examples=512)
    _, result = _train(copy_data, cfg, sabotage_from_epoch=2)
    assert result.best_epoch == 1
    assert result.stop_reason == "no_improvement" and len(result.history) == 1 + 2
    assert result.examples_seen == 3 * 256


@pytest.mark.slow
def test_reaching_the_target_accuracy_stops_training(copy_data):
    cfg = TrainConfig(n_train=256, max_examples=2560, batch_size=32, learning_rate=1e-2, patience_examples=2560, target_accuracy=0.05)
    _, result = _train(copy_data, cfg)
    accuracies = [row["val_seq_acc"] for row in result.history]
    assert result.stop_reason == "target_reached" and result.converged, accuracies
    assert accuracies[-1] >= 0.05 and all(a < 0.05 for a in accuracies[:-1])  # the first epoch that reached it


@pytest.mark.slow
def test_the_budget_is_max_examples(copy_data):
    cfg = TrainConfig(n_train=256, max_examples=512, batch_size=32, learning_rate=1e-6, patience_examples=1280)
    _, result = _train(copy_data, cfg)
    assert result.stop_reason == "budget" and result.examples_seen == 2 * 256 and len(result.history) == 2


def test_learning_rate_schedules_come_from_keras():
    from study.config import ConfigError
    from study.train import learning_rate

    assert learning_rate(TrainConfig(learning_rate=0.003)) == 0.003
    cfg = TrainConfig(n_train=640, batch_size=64, max_examples=6400, learning_rate=0.002, schedule="cosine", warmup_examples=640)
    schedule = learning_rate(cfg)  # 100 updates, the first 10 warming up
    assert isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule)
    at = lambda step: float(schedule(step))  # noqa: E731
    assert at(0) == pytest.approx(0.0) and at(5) == pytest.approx(0.001) and at(10) == pytest.approx(0.002)
    assert at(55) == pytest.approx(0.001, rel=1e-3) and at(100) == pytest.approx(0.0, abs=1e-9)
    assert float(learning_rate(TrainConfig(n_train=640, batch_size=64, max_examples=6400, learning_rate=0.002, schedule="cosine"))(50)) == pytest.approx(0.001)
    for bad, message in ((dict(schedule="linear"), "train.schedule must be one of constant, cosine"),
                         (dict(warmup_examples=10), 'needs schedule = "cosine"'),
                         (dict(schedule="cosine", warmup_examples=10**9), "below the budget")):
        with pytest.raises(ConfigError, match=message):
            TrainConfig(**bad)


def test_patience_and_budget_are_counted_in_examples_rounded_up_to_epochs():
    cfg = TrainConfig(n_train=1000, max_examples=2500, patience_examples=1001)
    assert (cfg.epoch_examples, cfg.max_epochs, cfg.patience) == (1000, 3, 2)
    cfg = TrainConfig(n_train=4000, epoch_examples=1000, max_examples=2500, patience_examples=1001)
    assert (cfg.max_epochs, cfg.patience) == (3, 2)
    from study.config import ConfigError

    with pytest.raises(ConfigError, match=r"train.n_train \(4000\) must be a multiple of train.epoch_examples \(3000\)"):
        TrainConfig(n_train=4000, epoch_examples=3000)

    with pytest.raises(ConfigError, match="curriculum_share must be a number in"):
        TrainConfig(curriculum_share=1.5)
    with pytest.raises(ConfigError, match="curriculum_examples must be an integer from 0 to below the budget"):
        TrainConfig(max_examples=1000, curriculum_examples=1000)


def test_the_length_curriculum_grows_its_limit_and_keeps_a_share_from_the_whole_range():
    from study.train import curriculum_epoch

    lengths = np.repeat(np.arange(1, 11), 1000)  # 10,000 examples of lengths 1..10
    cfg = TrainConfig(n_train=10000, epoch_examples=10000, max_examples=100000, curriculum_examples=50000, curriculum_share=0.25)
    rng = np.random.default_rng(0)
    limits = []
    for epoch in range(5):
        drawn = curriculum_epoch(lengths, epoch, cfg, rng)
        assert drawn.shape == (10000,)
        limit = 1 + 9 * (epoch + 1) / 5
        beyond = np.mean(lengths[drawn] > limit)
        # only the whole-range share goes past the limit: 25% of draws, of which the part above it
        assert beyond == pytest.approx(0.25 * np.mean(lengths > limit), abs=0.02)
        limits.append(lengths[drawn].mean())
    assert limits == sorted(limits) and limits[0] < 3 < limits[-1]
    assert curriculum_epoch(lengths, 5, cfg, rng) is None  # over: plain passes from here
    assert curriculum_epoch(lengths, 0, TrainConfig(), rng) is None  # no curriculum


def test_the_curriculum_epoch_order_is_a_pure_function_of_seed_and_epoch():
    from study.data import Dataset
    from study.train import BucketedBatches

    lengths = np.repeat(np.arange(1, 5), 64)
    data = Dataset(["a" * int(n) for n in lengths], ["a" * int(n) for n in lengths], lengths)
    sv = Vocabulary("a")
    encoded = EncodedSet.build(data, sv, sv)
    cfg = TrainConfig(n_train=256, max_examples=2560, batch_size=16, curriculum_examples=1024)
    a, b = BucketedBatches(encoded, cfg, seed=3), BucketedBatches(encoded, cfg, seed=3)
    b.set_epoch(2)
    a.set_epoch(2)
    assert all((x == y).all() for x, y in zip(a.order, b.order))
    assert len(a) == len(BucketedBatches(encoded, TrainConfig(n_train=256, batch_size=16), seed=3))  # same batches per epoch
    a.set_epoch(0)  # the limit after 256 of 1,024 curriculum examples: 1 + 3 / 4 -> length 1, plus a quarter from everywhere
    drawn = lengths[np.concatenate(a.order)]
    assert 0.6 < np.mean(drawn == 1) < 0.9 and np.mean(drawn > 1) > 0.05


def test_a_run_that_ends_on_its_budget_while_still_improving_is_not_converged():
    from study.train import TrainResult, last_stretch_gain

    rows = lambda accs: [{"val_seq_acc": a} for a in accs]  # noqa: E731
    assert last_stretch_gain(rows([0.1, 0.5, 0.6, 0.62]), 2) == pytest.approx(0.12)
    assert last_stretch_gain(rows([0.1, 0.9, 0.6, 0.905]), 2) == pytest.approx(0.005)
    assert last_stretch_gain(rows([0.1, 0.5]), 2) is None
    result = lambda reason, gain: TrainResult([], reason, 0, 0, 0.0, 0.0, gain)  # noqa: E731
    assert not result("budget", 0.12).converged and result("budget", 0.005).converged
    assert not result("budget", None).converged and not result("diverged: x", 0.0).converged
    assert result("no_improvement", None).converged and result("target_reached", None).converged


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


def test_the_cosine_schedule_spans_the_budget_in_updates_whatever_the_pool():
    from study.train import learning_rate

    cfg = TrainConfig(n_train=100000, epoch_examples=10000, max_examples=150000, batch_size=64, learning_rate=0.003, schedule="cosine")
    schedule = learning_rate(cfg)  # 15 epochs of ceil(10000 / 64) = 157 updates
    assert float(schedule(15 * 157 // 2)) == pytest.approx(0.0015, rel=1e-2) and float(schedule(15 * 157)) == pytest.approx(0.0, abs=1e-9)


def test_jax_keeps_compiled_programs_between_runs(tmp_path):
    """With the JAX backend the persistent compilation cache is on: a compiled function lands
    under $XDG_CACHE_HOME/seq2seq-length-study/jax."""
    import os
    import subprocess
    import sys

    pytest.importorskip("jax")
    code = ("from study.executors import enable_jax_compilation_cache; enable_jax_compilation_cache()\n"
            "import jax, jax.numpy as jnp; jax.jit(lambda x: x * 3 - 1)(jnp.arange(5.0)).block_until_ready()")
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path), "KERAS_BACKEND": "jax"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert any((tmp_path / "seq2seq-length-study" / "jax").iterdir())
