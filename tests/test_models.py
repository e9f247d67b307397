"""The models: decoding matches the trained model, padding changes nothing, a saved model loads
back the same, shapes and sizes, and a small run that shows attention's effect.

The contract tests run over the whole registry, with the example family kept outside the
repository (`examples/my_model.py`) loaded first: a new family is tested without a test of its own.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest

from study.config import ModelConfig, TrainConfig
from study.data import make_splits
from study.evaluate import evaluate
from study.models import (
    available_models,
    build_model,
    effective_model_config,
    get_model_spec,
    load_model_module,
    load_trained,
)
from study.models.rnn import RNNSettings
from study.registry import UnknownNameError
from study.tasks import get_task
from study.train import EncodedSet, compile_model, train_model
from study.vocab import END, PAD, START, Vocabulary

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "my_model.py"
EXAMPLE_MODELS = load_model_module(EXAMPLE)  # [] when another test module loaded it first
TINY = ModelConfig(embedding_dim=8, units=16, attention_size=8, key_size=8)
VARIANTS = [(name, TINY) for name in available_models()] + [
    ("none", ModelConfig(cell="lstm", embedding_dim=8, units=16, bidirectional=True)),
    ("dot_recurrent", ModelConfig(cell="lstm", embedding_dim=8, units=16, attention_size=8)),
    ("general_recurrent", ModelConfig(embedding_dim=8, units=16, attention_size=8, bidirectional=True)),
]
IDS = available_models() + ["none-lstm-bi", "dot_recurrent-lstm", "general_recurrent-bi"]


def test_the_registry_wide_tests_cover_a_family_loaded_from_outside():
    assert "multiplicative" in available_models() and get_model_spec("multiplicative").family == "multiplicative"
    assert "multiplicative" in IDS


def test_registered_variants_change_only_their_own_fields():
    assert effective_model_config("additive_lstm", TINY) == RNNSettings(
        cell="lstm", embedding_dim=8, units=16, attention_size=8
    )
    assert effective_model_config("none_bidirectional", TINY).bidirectional is True
    assert effective_model_config("additive", TINY) == RNNSettings(embedding_dim=8, units=16, attention_size=8)
    assert effective_model_config("transformer", ModelConfig(units=16, heads=2)).heads == 2


def _task_data():
    task = get_task("reverse", alphabet="abcdefgh")
    splits = make_splits(task, [3, 4, 5, 6], [7], n_train=256, n_validation=16, n_test=32, seed=0, cache_dir=None)
    return task, splits, Vocabulary(task.input_alphabet), Vocabulary(task.output_alphabet)


@pytest.fixture(scope="module", params=VARIANTS, ids=IDS)
def trained(request):
    """A tiny model after a few updates, so its outputs depend on the input."""
    name, config = request.param
    task, splits, sv, tv = _task_data()
    keras.utils.set_random_seed(1)
    model = build_model(name, sv.size, tv.size, config)
    compile_model(model, TrainConfig())
    model.run_eagerly = True  # 8 updates: faster than compiling the training step
    encoded = EncodedSet.build(splits.train, sv, tv)
    for start in range(0, 256, 32):
        x, y, w = encoded.batch(np.arange(start, start + 32), 1)
        model.train_on_batch(x, y, sample_weight=w)
    return name, model, splits, sv, tv


STEPS = 9  # decoder steps: the test targets' 7 characters, END, and one more


def _teacher_forced_on(model, source, tokens):
    """Teacher-forced logits (n, T, vocab) when the decoder is fed START and then `tokens`."""
    decoder_inputs = np.concatenate([np.full((len(source), 1), START), tokens[:, :-1]], axis=1).astype("int32")
    return keras.ops.convert_to_numpy(model.teacher_forced(source, decoder_inputs)[0])


def test_greedy_decoder_equals_teacher_forcing_at_every_step(trained):
    """Evaluation matches training over whole sequences: with END held back (`min_steps`), the
    decoder runs all STEPS steps on every row, and the teacher-forced model fed the decoder's own
    tokens gives the same logits at every step of every row, and the same choices."""
    name, model, splits, sv, tv = trained
    source = sv.encode_batch(splits.test[7].sources)
    out = model.greedy_decoder(STEPS, with_logits=True, min_steps=STEPS).predict(source, verbose=0)
    tokens, logits = out["tokens"], out["logits"]
    assert tokens.shape == (len(source), STEPS) and (tokens >= 3).all()  # characters only: every step compared
    forced = _teacher_forced_on(model, source, tokens)
    np.testing.assert_allclose(logits, forced, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(tokens, forced[:, :, 3:].argmax(-1) + 3)  # argmax over the characters


def test_greedy_decoder_stops_at_end_and_matches_teacher_forcing_up_to_it(trained):
    """Without `min_steps`: up to each row's END the logits are the teacher-forced ones and the
    tokens their argmax over characters and END; after it only PAD."""
    name, model, splits, sv, tv = trained
    source = sv.encode_batch(splits.test[7].sources)
    out = model.greedy_decoder(STEPS, with_logits=True).predict(source, verbose=0)
    tokens, logits = out["tokens"], out["logits"]
    ended = np.cumsum(tokens == END, axis=1)
    alive = (ended - (tokens == END)) == 0  # up to and including the first END
    forced = _teacher_forced_on(model, source, tokens)
    np.testing.assert_allclose(logits[alive], forced[alive], rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(tokens[alive], forced[alive][:, 2:].argmax(-1) + 2)  # END or a character
    assert (tokens[~alive] == PAD).all() and (logits[~alive] == 0).all()
    assert not np.isin(tokens[alive], [PAD, START]).any()


def test_one_tensorflow_graph_decodes_every_step_count(trained):
    """On TensorFlow the step counts are inputs of one decoder per set of flags: several step
    counts and source widths trace it at most twice (Keras' `reduce_retracing`), and a shorter
    run, END held back, gives the first columns of a longer one."""
    if keras.backend.backend() != "tensorflow":
        pytest.skip("XLA compiles a program per step count")
    name, model, splits, sv, tv = trained
    source = sv.encode_batch(splits.test[7].sources[:8])
    shared = model.greedy_decoder(STEPS, min_steps=STEPS).decoder
    assert model.greedy_decoder(3).decoder is shared and model.greedy_decoder(5, min_steps=2).decoder is shared
    shared.make_predict_function()
    before = shared.predict_function.experimental_get_tracing_count()
    full = model.greedy_decoder(STEPS, min_steps=STEPS).predict(source)["tokens"]
    for steps, width in ((3, 0), (5, 1), (STEPS - 1, 2), (4, 3)):
        wide = np.pad(source, ((0, 0), (0, width)))
        out = model.greedy_decoder(steps, min_steps=steps).predict(wide)["tokens"]
        np.testing.assert_array_equal(out, full[:, :steps])
    assert shared.predict_function.experimental_get_tracing_count() - before <= 2


def test_padding_changes_nothing(trained):
    """Extra source padding, and a short example decoded beside a long one, change no logit,
    token or attention weight at any of the STEPS steps (END held back so every step runs)."""
    name, model, splits, sv, tv = trained
    sources = splits.test[7].sources[:8]
    source = sv.encode_batch(sources)
    padded = np.pad(source, ((0, 0), (0, 6)))
    decoder = model.greedy_decoder(STEPS, with_logits=True, with_attention=True, min_steps=STEPS)
    a = decoder.predict(source, verbose=0)
    b = decoder.predict(padded, verbose=0)
    assert (a["tokens"] >= 3).all()  # every step was decoded
    chunked = decoder.predict(source, batch_size=3)  # 8 rows as 3 + 3 + 2: the same rows, in order
    assert chunked.keys() == a.keys()
    np.testing.assert_array_equal(chunked["tokens"], a["tokens"])
    for key in set(a) - {"tokens"}:
        np.testing.assert_allclose(chunked[key], a[key], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(a["tokens"], b["tokens"])
    np.testing.assert_allclose(a["logits"], b["logits"], rtol=1e-5, atol=1e-5)
    # one short example decoded beside a long one (more padding) gives the same output
    short = sv.encode_batch([sources[0][:3]])
    mixed = sv.encode_batch([sources[0][:3], sources[1] + sources[2]])
    alone = decoder.predict(short, verbose=0)
    beside = decoder.predict(mixed, verbose=0)
    np.testing.assert_array_equal(alone["tokens"][0], beside["tokens"][0])
    np.testing.assert_allclose(alone["logits"][0], beside["logits"][0], rtol=1e-5, atol=1e-5)
    if get_model_spec(name).attention == "none":
        assert "attention" not in a
        return
    np.testing.assert_allclose(a["attention"], b["attention"][:, :, :7], rtol=1e-5, atol=1e-6)
    assert (b["attention"][:, :, 7:] == 0).all()  # padded source positions get exactly zero weight
    np.testing.assert_allclose(a["attention"].sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(alone["attention"][0, :, :3], beside["attention"][0, :, :3], rtol=1e-5, atol=1e-6)
    assert (beside["attention"][0, :, 3:] == 0).all()


def test_teacher_forced_attention_is_masked(trained):
    name, model, splits, sv, tv = trained
    if get_model_spec(name).attention == "none":
        pytest.skip("no attention weights without attention")
    source = sv.encode_batch(["abc", "abcdefg"])
    decoder_inputs = np.full((2, 4), START, dtype="int32")
    _, weights = model.teacher_forced(source, decoder_inputs)
    weights = keras.ops.convert_to_numpy(weights)
    assert weights.shape == (2, 4, 7)
    assert (weights[0, :, 3:] == 0).all()
    np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-5)


def test_a_saved_model_loads_back_and_decodes_the_same(trained, tmp_path):
    """Save and load round trip: `load_trained` (no import list: each family registers its own
    Keras classes) gives a model with the same alphabets, logits and greedy output."""
    name, model, splits, sv, tv = trained
    model.alphabets = {"source": sv.alphabet, "target": tv.alphabet}
    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = load_trained(path)
    assert type(loaded) is type(model) and loaded.vocabularies()[1].alphabet == tv.alphabet
    source = sv.encode_batch(splits.test[7].sources[:8])
    a = model.greedy_decoder(STEPS, with_logits=True).predict(source, verbose=0)
    b = loaded.greedy_decoder(STEPS, with_logits=True).predict(source, verbose=0)
    np.testing.assert_array_equal(a["tokens"], b["tokens"])
    np.testing.assert_allclose(a["logits"], b["logits"], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name,config", VARIANTS, ids=IDS)
def test_shapes_and_parameter_counts(name, config):
    model = build_model(name, 11, 13, config)
    logits = model((np.ones((3, 5), "int32"), np.ones((3, 4), "int32")))
    assert tuple(logits.shape) == (3, 4, 13)
    spec = get_model_spec(name)
    if spec.family == "transformer":  # sized to the GRU models' parameter count, not to a formula
        additive = build_model("additive", 11, 13, config).count_params()
        assert 0.8 < model.count_params() / additive < 1.25
        assert 0.9 < build_model(name, 19, 19).count_params() / build_model("additive", 19, 19).count_params() < 1.1
        return
    if spec.family != "rnn":  # a family of its own: the output shape is its contract here
        return
    config = effective_model_config(name, config)  # a registered variant's own cell / encoder
    e, u, a = config.embedding_dim, config.units, config.attention_size
    gates = 3 if config.cell == "gru" else 4
    rnn = lambda n_in: gates * (n_in * u + u * u + (2 * u if config.cell == "gru" else u))  # noqa: E731
    attention = spec.attention
    placement = spec.option("placement", "output")
    decoder_input = e + u if placement in ("recurrent", "every_step") else e  # the context is fed into the cell
    expected = 11 * e + 13 * e + rnn(e) * (2 if config.bidirectional else 1) + rnn(decoder_input) + u * 13 + 13
    n_states = 2 if config.cell == "lstm" else 1
    if config.bidirectional:
        expected += n_states * (2 * u * u + u)
        if attention != "none":
            expected += 2 * u * u + u
    # read-out of [c; s] or s
    expected += (2 * u * u + u) if attention != "none" or placement == "every_step" else (u * u + u)
    expected += {"none": 0, "dot": 0, "general": u * u, "additive": 2 * u * a + a + a}[attention]
    assert model.count_params() == expected


def test_the_context_at_every_step_is_for_a_model_without_attention():
    from study.models.layers.seq2seq import Seq2Seq

    with pytest.raises(ValueError, match="every_step"):
        Seq2Seq(11, 13, attention="dot", placement="every_step")


def test_unknown_model_suggests_a_name():
    with pytest.raises(UnknownNameError, match=r"unknown model 'aditive'; did you mean 'additive'\?"):
        build_model("aditive", 5, 5)


@pytest.mark.slow
def test_attention_learns_copy_where_no_attention_fails():
    """The harness can show the effect: with the same data and budget, attention copies
    16 symbols; the plain encoder-decoder does clearly worse."""
    task = get_task("copy", alphabet="abcdefgh")
    splits = make_splits(task, [16], [16], n_train=3000, n_validation=64, n_test=200, seed=0, cache_dir=None)
    sv, tv = Vocabulary(task.input_alphabet), Vocabulary(task.output_alphabet)
    cfg = TrainConfig(n_train=3000, max_examples=9000, batch_size=32, learning_rate=5e-3, patience_examples=9000)
    scores = {}
    for name in ("dot", "none"):
        keras.utils.set_random_seed(0)
        model = build_model(name, sv.size, tv.size, ModelConfig(embedding_dim=16, units=64))
        train_model(model, splits.train, splits.validation, sv, tv, cfg, seed=0, progress=False)
        scores[name] = evaluate(model, splits.test[16].sources, splits.test[16].targets, sv, tv)
    assert scores["dot"]["char_acc"] > 0.9, scores
    assert scores["dot"]["seq_acc"] > 0.5, scores
    assert scores["none"]["seq_acc"] < scores["dot"]["seq_acc"] - 0.4, scores


def test_on_jax_a_decoding_batch_is_padded_to_a_power_of_two_and_cut_back(monkeypatch):
    """XLA compiles once per batch shape: on JAX, `GreedyDecoder.predict` sends 5 rows as 8 (copies
    of the first), at most the batch size, and returns 5."""
    from study.models.base import GreedyDecoder

    seen = []

    def fake_predict_on_batch(self, inputs):
        rows, steps = inputs
        assert steps.shape == (len(rows), 2) and (steps == [0, 7]).all()
        seen.append(rows.copy())
        return {"tokens": rows * 10}

    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    monkeypatch.setattr(GreedyDecoder, "predict_on_batch", fake_predict_on_batch)
    decoder = GreedyDecoder.__new__(GreedyDecoder)
    decoder.static_steps = (0, 7)
    source = np.arange(15).reshape(5, 3)
    out = decoder.predict(source, batch_size=64, max_steps=7)
    assert [len(rows) for rows in seen] == [8] and (seen[0][5:] == source[0]).all()
    np.testing.assert_array_equal(out["tokens"], source * 10)
    seen.clear()
    decoder.predict(np.arange(27).reshape(9, 3), batch_size=6, max_steps=7)  # 6 + 3 rows: 6 (the batch size), then 4
    assert [len(rows) for rows in seen] == [6, 4]


@pytest.mark.slow
def test_decoding_on_jax_backend_matches_teacher_forcing():
    """On JAX too, greedy decoding's logits are the teacher-forced ones up to each row's END, and
    a batch padded to a power of two (`GreedyDecoder._predict_rows`) gives each row what it gives
    in another batch."""
    pytest.importorskip("jax")
    code = textwrap.dedent(
        """
        import keras, numpy as np
        assert keras.backend.backend() == "jax"
        from study.config import ModelConfig
        from study.models import build_model
        from study.vocab import START
        from study.backend import set_random_seed
        for name in ("additive", "transformer"):  # the RNN step and the Transformer's key/value cache
            set_random_seed(0)  # seeds TensorFlow too, importing it: its start-up notices filtered
            model = build_model(name, 11, 11, ModelConfig(embedding_dim=8, units=16, attention_size=8))
            source = np.random.default_rng(0).integers(3, 11, size=(5, 6)).astype("int32")
            source[0, 4:] = 0
            out = model.greedy_decoder(7, with_logits=True).predict(source, verbose=0)  # 5 rows, padded to 8
            part = model.greedy_decoder(7, with_logits=True).predict(source[:3], verbose=0)  # padded to 4
            np.testing.assert_array_equal(part["tokens"], out["tokens"][:3])
            np.testing.assert_allclose(part["logits"], out["logits"][:3], rtol=1e-5, atol=1e-6)
            inputs = np.concatenate([np.full((5, 1), START), out["tokens"][:, :-1]], 1).astype("int32")
            forced = keras.ops.convert_to_numpy(model.teacher_forced(source, inputs)[0])
            np.testing.assert_allclose(out["logits"][:, 0], forced[:, 0], rtol=1e-4, atol=1e-4)
            first_end = [next((i for i, t in enumerate(r) if t in (0, 2)), 7) for r in out["tokens"]]
            for row, stop in enumerate(first_end):
                np.testing.assert_allclose(out["logits"][row, : stop + 1], forced[row, : stop + 1], rtol=1e-4, atol=1e-4)
        print("ok")
        """
    )
    result = _run_without_notices(code, {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"})
    assert result.stdout.strip().endswith("ok")


def _run_without_notices(code: str, env: dict) -> subprocess.CompletedProcess:
    """Runs `code` in a fresh Python process from the repository root; asserts that it succeeded
    and that its stderr holds none of TensorFlow's start-up notices."""
    from study.backend import START_UP_NOTICES

    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        cwd=os.path.dirname(os.path.dirname(__file__)),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert not [line for line in result.stderr.splitlines() if any(n in line for n in START_UP_NOTICES)], result.stderr
    return result


def test_keras_load_model_after_importing_the_model_modules_is_quiet(tmp_path):
    """The README's second route to a saved model, `keras.saving.load_model` once every family's
    Keras classes are imported, starts TensorFlow without its start-up notices, as `load_trained` does."""
    code = textwrap.dedent(
        f"""
        from study.models import keras_classes
        keras_classes()
        import keras
        from study.config import ModelConfig
        from study.models import build_model

        path = {str(tmp_path / "m.keras")!r}
        build_model("dot", 9, 9, ModelConfig(embedding_dim=4, units=8, attention_size=4)).save(path)
        print(type(keras.saving.load_model(path)).__name__)
        """
    )
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "KERAS_BACKEND")}
    assert _run_without_notices(code, env).stdout.strip() == "Seq2Seq"
