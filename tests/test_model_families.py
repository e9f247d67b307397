"""Model families as files: committed cells keep their ids, the `[model]` table reaches each
family's own settings, and a family file from outside is loaded or refused in one line.  (The
contract tests over every registered model, a family from outside included, are in test_models.)"""

import dataclasses
import json
from pathlib import Path

import pytest

from study.cell import cell_id
from study.config import ConfigError, ModelConfig, build_study_config
from study.models import (
    MODEL_ORDER,
    ModelModuleError,
    effective_model_config,
    load_model_module,
    model_settings_table,
    training_bytes,
)

ROOT = Path(__file__).resolve().parent.parent
IDENTITY = (
    "schema",
    "task",
    "task_version",
    "task_options",
    "task_data",
    "model",
    "seed",
    "regime",
    "train_lengths",
    "eval_lengths",
    "model_config",
    "train_config",
    "n_test",
    "backend",
)
COMMITTED = (
    sorted((ROOT / "results" / "reference" / "cells").glob("*.json"))[::6]
    + sorted(
        p
        for p in (ROOT / "results").glob("*/cells/*.json")
        if any(m in p.name for m in ("_lstm", "_bidirectional", "_recurrent", "none_context", "-none-s0"))
    )[:12]
)


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: f"{p.parent.parent.name}/{p.stem}")
def test_committed_recurrent_cells_keep_their_ids(path):
    """The model part of a cell's identity, recomputed from the study's `[model]` table as the
    record states it, is the recorded one, so the recomputed id is the record's: committed
    folders resume instead of retraining."""
    record = json.loads(path.read_text())
    identity = {key: record[key] for key in IDENTITY}
    table = ModelConfig(**record["config"]["model"])
    identity["model_config"] = dataclasses.asdict(effective_model_config(record["model"], table))
    assert identity["model_config"] == record["model_config"]
    assert cell_id(identity) == record["id"]


def test_the_model_table_reaches_each_family_and_refuses_what_none_has():
    config = build_study_config("smoke", {"models": ["dot", "transformer"], "model": {"units": 64, "heads": 8}})
    assert effective_model_config("transformer", config.model).heads == 8
    assert effective_model_config("dot", config.model).units == 64
    assert model_settings_table(config.models, config.model) == {
        "cell": "gru",
        "embedding_dim": 16,
        "units": 64,
        "attention_size": 16,
        "bidirectional": False,
        "heads": 8,
        "layers": 2,
    }
    with pytest.raises(ConfigError, match=r"unknown setting 'model.head'; did you mean 'heads'\?"):
        build_study_config("smoke", {"model": {"head": 8}})
    with pytest.raises(ConfigError, match="model.heads must divide"):
        build_study_config("smoke", {"models": ["transformer"], "model": {"heads": 5}})
    build_study_config("smoke", {"models": ["dot"], "model": {"heads": 5}})  # no Transformer in the grid


def test_each_family_estimates_its_own_memory():
    rnn = training_bytes("additive", None, 64, 32, 33, 20)
    assert rnn > training_bytes("dot", None, 64, 32, 33, 20) > 0
    assert training_bytes("transformer", ModelConfig(layers=4), 64, 32, 33, 20) > training_bytes(
        "transformer", None, 64, 32, 33, 20
    )


def test_the_registration_order_is_the_order_of_tables():
    order = list(MODEL_ORDER)
    assert order[:5] == ["none", "none_context", "additive", "dot", "general"]
    assert order.index("additive_recurrent") < order.index("transformer")


def test_a_bad_model_module_is_one_line(tmp_path):
    with pytest.raises(ModelModuleError, match="failed to import: FileNotFoundError"):
        load_model_module(tmp_path / "missing.py")
    broken = tmp_path / "broken_family.py"
    broken.write_text(
        "from study.models import ModelFamily, ModelSpec, register_family\n"
        "class Settings:\n    units = 3\n"
        "register_family(ModelFamily('broken', Settings, print, print, print), ModelSpec('broken', 'dot', 'x'))\n"
    )
    with pytest.raises(ModelModuleError, match="settings must be a dataclass"):
        load_model_module(broken)
    twice = tmp_path / "twice.py"
    twice.write_text(
        "from study.models import ModelFamily, ModelSpec, register_family\n"
        "from study.models.rnn import RNNSettings, build, keras_classes, training_bytes\n"
        "register_family(ModelFamily('again', RNNSettings, build, training_bytes, keras_classes), ModelSpec('dot', 'dot', 'x'))\n"
    )
    with pytest.raises(ModelModuleError, match=r"registers the model 'dot', which study\.models\.rnn"):
        load_model_module(twice)
    empty = tmp_path / "empty_family.py"
    empty.write_text("x = 1\n")
    with pytest.raises(ModelModuleError, match="registers no model"):
        load_model_module(empty)
