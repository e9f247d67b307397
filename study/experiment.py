"""Everything that trains a model, the same for the study, the sweep and the bench: a task's
splits and vocabularies, the seed, the model, then `study.train.train_model`.

    run = prepare(get_task("copy"), "dot", range(4, 33), [32], ModelConfig(), TrainConfig(), n_test=1000, seed=0)
    result = train(run, TrainConfig(), seed=0)   # run.model is trained in place

A study cell (`study.cell.run_cell`; the recipe sweep's cells are study cells of a config with
recipe variants, `examples/sweep.toml`) and the bench's time to accuracy
(`study.bench.time_to_accuracy`) both go through these two functions, so the recipe the sweep
chooses and the time the bench reports are what the study runs.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, Iterable

from study.backend import set_random_seed, use_study_floatx
from study.config import ModelConfig, TrainConfig

if TYPE_CHECKING:
    from study.data import Splits
    from study.models.base import EncoderDecoder
    from study.tasks import Task
    from study.train import TrainResult
    from study.vocab import Vocabulary


@dataclasses.dataclass
class Prepared:
    """A task's splits, its vocabularies and a freshly built model, ready to train.

    data_seconds: time spent generating or loading the splits."""

    task: "Task"
    model_name: str
    splits: "Splits"
    source_vocab: "Vocabulary"
    target_vocab: "Vocabulary"
    model: "EncoderDecoder"
    data_seconds: float


def prepare(
    task: "Task",
    model_name: str,
    train_lengths: Iterable[int],
    eval_lengths: Iterable[int],
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    n_test: int,
    seed: int,
    memory_share: float = 1.0,
    what: str = "this cell",
) -> Prepared:
    """The splits (`study.data.make_splits`: `train_cfg.n_train` training and
    `train_cfg.n_validation` validation examples per training length, `n_test` test examples
    per evaluation length), the vocabularies, and the model `model_name` built after
    `keras.utils.set_random_seed(seed)`, so the same seed gives the same data and initial weights.

    Raises `study.train.MemoryBudgetError` when one training step on the longest batch would
    need more than 80% of `memory_share` of the free memory (`what` names the cell)."""

    from study.data import make_splits
    from study.models import build_model, training_bytes
    from study.train import check_memory
    from study.vocab import Vocabulary

    t0 = time.perf_counter()
    splits = make_splits(task, train_lengths, eval_lengths, train_cfg.n_train, train_cfg.n_validation, n_test, seed)
    data_seconds = time.perf_counter() - t0
    sv, tv = Vocabulary(task.input_alphabet), Vocabulary(task.output_alphabet)
    longest_source = max(len(s) for s in splits.train.sources)
    longest_target = max(len(t) for t in splits.train.targets)
    needed = training_bytes(model_name, model_cfg, train_cfg.batch_size, longest_source, longest_target, tv.size)
    check_memory(
        needed,
        share=memory_share,
        what=f"{what} (sources up to {longest_source} and targets up to {longest_target} characters)",
    )
    use_study_floatx()  # whatever keras.json says
    set_random_seed(seed)
    model = build_model(
        model_name, sv.size, tv.size, model_cfg, alphabets={"source": sv.alphabet, "target": tv.alphabet}
    )
    return Prepared(task, model_name, splits, sv, tv, model, data_seconds)


def train(run: Prepared, cfg: TrainConfig, seed: int, **kwargs) -> "TrainResult":
    """`study.train.train_model` on `run`'s model, training and validation sets (keyword
    arguments go to it: progress, between_batches, backup_dir, extra_callbacks)."""
    from study.train import train_model

    return train_model(
        run.model, run.splits.train, run.splits.validation, run.source_vocab, run.target_vocab, cfg, seed=seed, **kwargs
    )
