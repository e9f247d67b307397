"""Throughput of the study's training and greedy decoding beside a plain Keras baseline.

    python -m study.bench                          # copy at length 32, GRU 128, additive attention
    python -m study.bench --json --backend jax --attention dot --length 64
    python -m study.bench --length-curve 32,64,128,256 --attention none
    python -m study.bench --time-to-accuracy --json --repeats 3   # seconds and examples to 95% exact match, both sides

In one run on one machine it measures
  (a) the project's training throughput: `model.fit` on `study.train`'s bucketed
      batches (`BucketedBatches`), as a study trains;
  (b) the project's greedy decoding: the compiled `while_loop` decoder, batch 512;
  (c) a plain Keras baseline written the way public examples are: a functional
      model (Embedding, GRU encoder, GRU decoder, Keras AdditiveAttention or
      Attention on the decoder outputs, softmax), `model.fit` on numpy arrays at
      batch 64, and decoding with a one-step decoder model called once per output
      token with `predict_on_batch` on batches of 512;
and checks that the compiled decoder's outputs equal a per-token loop over the
same weights.  Tokens are source plus target positions without padding (training)
and generated tokens (decoding), after a warm-up.  With `--min-length` the training
examples mix lengths as in the study: the project buckets them, the baseline pads
every batch to the longest example as the public examples do.  `--json` prints one object;
`--time-to-accuracy` measures what matters instead (`time_to_accuracy`);
`--smoke-study` adds the wall time and peak memory of `run_study.py --profile smoke`.
Both sides see the same number of training examples.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import study.backend  # noqa: F401  (sets TensorFlow's log level before anything imports it)
from study.backend import set_random_seed
from study.text import comma_list


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m study.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="copy", help="the task whose data are timed (default copy)")
    p.add_argument(
        "--length", type=int, default=32, help="task length of every example (the longest with --min-length)"
    )
    p.add_argument("--min-length", type=int, help="mix lengths min-length..length, as the study's training sets do")
    p.add_argument(
        "--units", type=int, default=128, help="recurrent units of encoder and decoder (default 128, the study's)"
    )
    p.add_argument("--embedding", type=int, default=32, help="embedding size (default 32)")
    p.add_argument("--attention-size", type=int, default=64, help="size of the attention's projection (default 64)")
    p.add_argument(
        "--attention",
        help="model name, e.g. none, additive, dot, general, additive_recurrent (default: additive; dot with --time-to-accuracy)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=64,
        help="training batch size of the throughput benchmark (default 64, the batch of the BENCHMARKS tables; the standard recipe trains at 32)",
    )
    p.add_argument("--examples", type=int, default=4096, help="timed training examples (after warm-up)")
    p.add_argument("--decode-examples", type=int, default=2048, help="examples greedily decoded for the decoding speed")
    p.add_argument(
        "--backend",
        choices=["tensorflow", "jax"],
        default=os.environ.get("KERAS_BACKEND", "tensorflow"),
        help="Keras backend (default: $KERAS_BACKEND, else tensorflow)",
    )
    p.add_argument("--no-baseline", action="store_true", help="skip the plain Keras baseline")
    p.add_argument("--smoke-study", action="store_true", help="also time `run_study.py --profile smoke`")
    p.add_argument(
        "--time-to-accuracy",
        action="store_true",
        help="seconds and examples to a greedy exact-match target, project vs baseline",
    )
    p.add_argument(
        "--target",
        type=float,
        default=0.95,
        help="with --time-to-accuracy: the exact-match target on the held-out examples",
    )
    p.add_argument(
        "--max-examples",
        type=int,
        default=400_000,
        help="with --time-to-accuracy: the baseline gives up after this many training examples",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="with --time-to-accuracy: runs per side; the report gives the median and the spread",
    )
    p.add_argument(
        "--length-curve",
        help="comma-separated lengths: training cost and peak memory per length, each in its own process",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = _parser()
    args = p.parse_args(argv)
    args.attention = args.attention or ("dot" if args.time_to_accuracy else "additive")
    if args.repeats < 1:
        p.error(f"--repeats must be a positive integer, got {args.repeats}")
    return args


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _data(args):
    import numpy as np

    from study.data import load_split
    from study.tasks import get_task
    from study.vocab import Vocabulary

    task = get_task(args.task)
    lengths = range(args.min_length or args.length, args.length + 1)
    _, train = load_split(task, "bench", lengths, args.examples + 8 * args.batch_size, seed=0, cache_dir=None)
    train = train.select(np.random.default_rng(0).permutation(len(train)))  # mixed lengths in every stretch
    _, test = load_split(task, "bench_decode", [args.length], args.decode_examples, seed=1, cache_dir=None)
    return train, test, Vocabulary(task.input_alphabet), Vocabulary(task.output_alphabet)


def measure_project(args, train, test, sv, tv) -> dict:
    """Training and decoding throughput of the study's own code."""
    import numpy as np

    from study.config import ModelConfig, TrainConfig
    from study.evaluate import decode_steps
    from study.models import build_model
    from study.train import BucketedBatches, EncodedSet, compile_model

    set_random_seed(0)
    model = build_model(
        args.attention,
        sv.size,
        tv.size,
        ModelConfig(embedding_dim=args.embedding, units=args.units, attention_size=args.attention_size),
    )
    warm_examples = 8 * args.batch_size  # the first examples compile the step; the rest are timed
    cfg = TrainConfig(n_train=warm_examples, batch_size=args.batch_size)
    compile_model(model, cfg)
    warm = BucketedBatches(EncodedSet.build(train.select(np.arange(warm_examples)), sv, tv), cfg, seed=0)
    model.fit(warm.for_fit(), epochs=1, verbose=0, shuffle=False)
    # one epoch: the whole timed pool
    timed_cfg = TrainConfig(n_train=len(train) - warm_examples, batch_size=args.batch_size)
    timed = BucketedBatches(
        EncodedSet.build(train.select(np.arange(warm_examples, len(train))), sv, tv), timed_cfg, seed=0
    )
    tokens = sum(len(s) + len(t) - 1 for s, t in zip(timed.encoded.sources, timed.encoded.targets))
    started = time.perf_counter()
    model.fit(timed.for_fit(), epochs=1, verbose=0, shuffle=False)  # the study's training path
    train_seconds = time.perf_counter() - started

    source = sv.encode_batch(test.sources)
    steps = decode_steps(test.targets)
    decoder = model.greedy_decoder(steps)
    decoder.predict(source[:512], batch_size=512, verbose=0)  # warm-up: compile
    started = time.perf_counter()
    tokens_out = decoder.predict(source, batch_size=512, verbose=0)["tokens"]
    decode_seconds = time.perf_counter() - started
    return {
        "model": model,
        "train_tokens_per_s": tokens / train_seconds,
        "train_examples_timed": len(timed.encoded.targets),
        "decode_tokens_per_s": tokens_out.size / decode_seconds,
        "decoded": tokens_out,
        "param_count": int(model.count_params()),
    }


def per_token_decode(model, source, steps: int):
    """Greedy decoding of the same weights one step at a time, eagerly, with the compiled
    decoder's rules (PAD and START never chosen; a row ends at END): the reference the compiled
    decoder must match.  Returns (tokens (batch, steps) int32, logits (batch, steps, vocab)),
    both zero after a row has ended."""
    import keras
    import numpy as np

    from study.vocab import END, PAD, START

    context, state = model.start_decoding(source, steps)
    previous = np.full((len(source),), START, dtype="int32")
    finished = np.zeros(len(source), dtype=bool)
    out = np.zeros((len(source), steps), dtype="int32")
    all_logits = np.zeros((len(source), steps, model.target_vocab_size), dtype="float32")
    for t in range(steps):
        logits, _, state = model.decode_step(t, previous, state, context)
        logits = keras.ops.convert_to_numpy(logits)
        allowed = logits.copy()
        allowed[:, [PAD, START]] = -np.inf
        token = np.where(finished, PAD, allowed.argmax(axis=-1)).astype("int32")
        all_logits[~finished, t] = logits[~finished]
        out[:, t] = token
        finished |= token == END
        previous = token
    return out, all_logits


def decoder_agreement(model, source, steps: int) -> dict:
    """Compares the compiled decoder with `per_token_decode` row by row.  Where a row's tokens
    differ, it looks at the first step where they do: a tie is a step at which the compiled
    path's two largest allowed logits are closer than the largest difference between the two
    paths' logits so far (float32 rounding of the same arithmetic done in another order), so
    either choice is the same model's; anything else is a decoder bug.

    Returns {"rows", "identical_rows", "ties", "not_ties", "largest_logit_difference",
    "first_differences": [{"row", "step", "margin", "logit_difference"}, ...] (up to 10)}."""
    import numpy as np

    from study.vocab import PAD, START

    compiled = model.greedy_decoder(steps, with_logits=True).predict(source, batch_size=512, verbose=0)
    tokens, logits = compiled["tokens"], compiled["logits"]
    eager_tokens, eager_logits = per_token_decode(model, source, steps)
    differing = np.flatnonzero((tokens != eager_tokens).any(axis=1))
    rows, ties = [], 0
    for row in differing:
        step = int(np.flatnonzero(tokens[row] != eager_tokens[row])[0])
        allowed = np.delete(logits[row, step], [PAD, START])
        top = np.sort(allowed)[-2:]
        margin = float(top[1] - top[0])
        drift = float(np.abs(logits[row, : step + 1] - eager_logits[row, : step + 1]).max())
        ties += margin <= drift
        rows.append({"row": int(row), "step": step, "margin": margin, "logit_difference": drift})
    same = ~np.isin(np.arange(len(source)), differing)  # rows whose tokens agree throughout
    return {
        "rows": len(source),
        "identical_rows": int(same.sum()),
        "ties": int(ties),
        "not_ties": int(len(differing) - ties),
        "largest_logit_difference": float(np.abs(logits[same] - eager_logits[same]).max()) if same.any() else None,
        "first_differences": rows[:10],
    }


def build_baseline(args, source_vocab: int, target_vocab: int):
    """The public-example seq2seq: functional training model plus one-step inference models."""
    import keras
    from keras import layers

    enc_in = keras.Input((None,), dtype="int32")
    dec_in = keras.Input((None,), dtype="int32")
    enc_emb = layers.Embedding(source_vocab, args.embedding, mask_zero=True)
    dec_emb = layers.Embedding(target_vocab, args.embedding, mask_zero=True)
    enc_gru = layers.GRU(args.units, return_sequences=True, return_state=True)
    dec_gru = layers.GRU(args.units, return_sequences=True, return_state=True)
    from study.models import get_model_spec

    scoring = get_model_spec(args.attention).attention  # the baseline has Keras' two layers only
    attention = layers.Attention() if scoring in ("dot", "general") else layers.AdditiveAttention()
    concat = layers.Concatenate()
    out = layers.Dense(target_vocab, activation="softmax")

    enc_out, enc_state = enc_gru(enc_emb(enc_in))
    dec_out, _ = dec_gru(dec_emb(dec_in), initial_state=enc_state)
    features = dec_out if scoring == "none" else concat([dec_out, attention([dec_out, enc_out])])
    model = keras.Model([enc_in, dec_in], out(features))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")

    encoder = keras.Model(enc_in, [enc_out, enc_state])
    tok_in = keras.Input((1,), dtype="int32")
    state_in = keras.Input((args.units,))
    memory_in = keras.Input((None, args.units))
    step_out, step_state = dec_gru(dec_emb(tok_in), initial_state=state_in)
    step_features = step_out if scoring == "none" else concat([step_out, attention([step_out, memory_in])])
    step = keras.Model([tok_in, state_in, memory_in], [out(step_features), step_state])
    return model, encoder, step


def measure_baseline(args, train, test, sv, tv) -> dict:
    from study.evaluate import decode_steps

    model, encoder, step = build_baseline(args, sv.size, tv.size)
    source = sv.encode_batch(train.sources)
    targets = tv.encode_batch(train.targets, start=True, end=True)
    x = [source, targets[:, :-1]]
    y = targets[:, 1:]
    warm = 8 * args.batch_size
    model.fit([a[:warm] for a in x], y[:warm], batch_size=args.batch_size, epochs=1, verbose=0)
    started = time.perf_counter()
    model.fit([a[warm:] for a in x], y[warm:], batch_size=args.batch_size, epochs=1, verbose=0, shuffle=True)
    train_seconds = time.perf_counter() - started
    tokens = sum(len(s) + len(t) + 1 for s, t in zip(train.sources[warm:], train.targets[warm:]))

    test_source = sv.encode_batch(test.sources)
    steps = decode_steps(test.targets)
    baseline_greedy(encoder, step, test_source[:512], steps, stop_when_ended=False)  # warm-up
    started = time.perf_counter()
    baseline_greedy(encoder, step, test_source, steps, stop_when_ended=False)
    decode_seconds = time.perf_counter() - started
    return {
        "baseline_train_tokens_per_s": tokens / train_seconds,
        "baseline_decode_tokens_per_s": len(test_source) * steps / decode_seconds,
        "baseline_param_count": int(model.count_params()),
    }


def baseline_greedy(encoder, step, source, steps: int, stop_when_ended: bool = True):
    """The public-example decoding loop: one `predict_on_batch` of the one-step model per output
    token, argmax over every id, in batches of 512; rows are cut after their first END (PAD from
    there).  source: int array (n, source_len); returns int array (n, steps).  With
    `stop_when_ended=False` every batch runs all `steps` (the throughput measurement's fixed
    token count)."""
    import numpy as np

    from study.vocab import END, PAD, START

    out = np.full((len(source), steps), PAD, dtype="int32")
    for i in range(0, len(source), 512):
        memory, state = encoder.predict_on_batch(source[i : i + 512])
        token = np.full((len(memory), 1), START, dtype="int32")
        finished = np.zeros(len(memory), dtype=bool)
        for t in range(steps):
            probs, state = step.predict_on_batch([token, state, memory])
            token = probs.argmax(-1).astype("int32")
            out[i : i + len(memory), t] = np.where(finished, PAD, token[:, 0])
            finished |= token[:, 0] == END
            if stop_when_ended and finished.all():
                break
    return out


class _Clock:
    """Training seconds: wall time since construction minus the time spent in `uncounted` calls."""

    def __init__(self) -> None:
        self.started, self.excluded = time.perf_counter(), 0.0

    def elapsed(self) -> float:
        return time.perf_counter() - self.started - self.excluded

    def uncounted(self, measure):
        """`measure()`, its time left out of `elapsed`."""
        t0 = time.perf_counter()
        result = measure()
        self.excluded += time.perf_counter() - t0
        return result


def bench_recipe():
    """The standard profile's recipe with convergence stopping off (patience = the budget), so
    the held-out target, the budget or 100% validation exact match ends a time-to-accuracy run."""
    import dataclasses

    from study.config import PROFILES, TrainConfig

    standard = TrainConfig(**PROFILES["standard"]["train"])
    return dataclasses.replace(standard, patience_examples=standard.max_examples, target_accuracy=1.0)


def time_to_accuracy(args) -> dict:
    """Seconds and training examples until greedy exact match (END included, `study.evaluate.score`)
    on 500 held-out examples at the longest length reaches `args.target`, for
    (a) the project: `study.train.train_model` with the standard profile's recipe and budget
        (its own validation after every epoch counts as training time; patience is off, so
        the held-out target, the budget or the recipe's own stop at 100% validation exact
        match ends it), and
    (b) the plain baseline (`build_baseline`: functional model, Keras attention, `model.fit` on
        arrays padded to the longest example, batch 64, Adam 1e-3), trained for up to
        `--max-examples` examples.
    Both train on the same pool (the standard profile's `n_train` examples over lengths
    min-length..length, the training split of the study's data) in epochs of the same size and
    are checked on the same held-out examples (the study's test split at the longest length)
    after every epoch; the check's own time is not counted."""
    from study.config import ModelConfig
    from study.evaluate import decode_steps
    from study.experiment import prepare
    from study.tasks import get_task

    task = get_task(args.task)
    lengths = range(args.min_length or 4, args.length + 1)
    cfg = bench_recipe()
    model_cfg = ModelConfig(embedding_dim=args.embedding, units=args.units, attention_size=args.attention_size)
    run = prepare(task, args.attention, lengths, [args.length], model_cfg, cfg, n_test=500, seed=0)
    held_out = run.splits.test[args.length]
    steps = decode_steps(held_out.targets)
    ours = _project_to_target(args, run, cfg, held_out, steps)
    base = _baseline_to_target(args, run, cfg, held_out, steps)
    return _time_to_accuracy_report(args, cfg, lengths, len(run.splits.train), ours, base)


def _project_to_target(args, run, cfg, held_out, steps: int) -> tuple[dict | None, list[dict]]:
    """The project's side of `time_to_accuracy`: `study.experiment.train` with a held-out check
    after every epoch that stops it at `args.target`.  Returns (the first curve row at the
    target or None, the curve: examples, training seconds and held-out exact match per epoch)."""
    import keras

    from study.evaluate import decode, score
    from study.experiment import train

    sv, tv = run.source_vocab, run.target_vocab

    class HeldOut(keras.callbacks.Callback):
        def __init__(self, clock):
            super().__init__()
            self.clock, self.curve, self.reached = clock, [], None

        def on_epoch_end(self, epoch, logs=None):
            acc = self.clock.uncounted(
                lambda: score(decode(self.model, held_out.sources, sv, tv, steps)[0], held_out.targets)["seq_acc"]
            )
            seen = (epoch + 1) * cfg.epoch_examples
            self.curve.append({"examples": seen, "seconds": self.clock.elapsed(), "held_out_seq_acc": acc})
            if acc >= args.target and self.reached is None:
                self.reached = self.curve[-1]
                self.model.stop_training = True

    clock = _Clock()
    ours = HeldOut(clock)
    train(run, cfg, seed=0, progress=False, extra_callbacks=[ours])
    return ours.reached, ours.curve


def _baseline_to_target(args, run, cfg, held_out, steps: int) -> tuple[dict | None, list[dict]]:
    """The baseline's side of `time_to_accuracy`: `build_baseline` trained on the same pool in
    epochs of the project's size (a shuffled pass in stretches) until `args.target` or
    `args.max_examples`; returns what `_project_to_target` does."""
    import numpy as np

    from study.evaluate import score

    train_set, sv, tv = run.splits.train, run.source_vocab, run.target_vocab
    held_source = sv.encode_batch(held_out.sources)
    set_random_seed(0)
    model, encoder, step = build_baseline(args, sv.size, tv.size)
    x = [sv.encode_batch(train_set.sources), tv.encode_batch(train_set.targets, start=True)]
    y = tv.encode_batch(train_set.targets, end=True)
    clock = _Clock()
    base_curve, base_reached = [], None
    per_pass = len(train_set) // cfg.epoch_examples
    # epochs of the project's size: a shuffled pass in stretches
    for epoch in range(-(-args.max_examples // cfg.epoch_examples)):
        if epoch % per_pass == 0:
            order = np.random.default_rng(epoch).permutation(len(train_set))
        part = order[(epoch % per_pass) * cfg.epoch_examples : (epoch % per_pass + 1) * cfg.epoch_examples]
        model.fit([a[part] for a in x], y[part], batch_size=64, epochs=1, verbose=0, shuffle=True)
        acc = clock.uncounted(
            lambda: score(tv.decode_batch(baseline_greedy(encoder, step, held_source, steps)), held_out.targets)[
                "seq_acc"
            ]
        )
        base_curve.append(
            {"examples": (epoch + 1) * cfg.epoch_examples, "seconds": clock.elapsed(), "held_out_seq_acc": acc}
        )
        if acc >= args.target:
            base_reached = base_curve[-1]
            break
    return base_reached, base_curve


def _side(reached: dict | None, curve: list[dict], prefix: str = "") -> dict:
    """One side's seconds and examples to the target (None where it never got there) and its curve."""
    return {
        f"{prefix}seconds_to_target": reached and reached["seconds"],
        f"{prefix}examples_to_target": reached and reached["examples"],
        f"{prefix}curve": curve,
    }


def _time_to_accuracy_report(args, cfg, lengths: range, pool: int, ours: tuple, base: tuple) -> dict:
    """`time_to_accuracy`'s object from both sides' (reached, curve) and the settings they ran with."""
    import dataclasses

    ours_reached, base_reached = ours[0], base[0]
    report = {
        **_side(*ours),
        **_side(*base, "baseline_"),
        "target": args.target,
        "held_out": f"500 test examples of {args.task} at length {args.length}",
        "train_lengths": f"{lengths.start}..{lengths.stop - 1}",
        "pool": pool,
        "project_budget": cfg.max_examples,
        "baseline_budget": args.max_examples,
        "recipe": dataclasses.asdict(cfg),
    }
    if ours_reached and base_reached:
        report["speedup_seconds"] = base_reached["seconds"] / ours_reached["seconds"]
        report["speedup_examples"] = base_reached["examples"] / ours_reached["examples"]
    return report


def repeated(args, runs: list[dict]) -> dict:
    """The first time-to-accuracy run, with the median and range of each side's seconds to the
    target over all `runs` and the ratio of the medians (None where a side never reached it)."""
    import statistics

    report = dict(runs[0])
    report["repeats"] = len(runs)
    for prefix in ("", "baseline_"):
        seconds = [r[f"{prefix}seconds_to_target"] for r in runs]
        reached = None not in seconds
        report[f"{prefix}seconds_to_target_each_run"] = seconds
        report[f"{prefix}median_seconds_to_target"] = statistics.median(seconds) if reached else None
        report[f"{prefix}seconds_to_target_range"] = [min(seconds), max(seconds)] if reached else None
    if report["median_seconds_to_target"] and report["baseline_median_seconds_to_target"]:
        report["speedup_median_seconds"] = (
            report["baseline_median_seconds_to_target"] / report["median_seconds_to_target"]
        )
    return report


def smoke_study() -> dict:
    """Wall time and peak memory of the smoke study in a fresh results folder."""
    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, str(root / "run_study.py"), "--profile", "smoke", "--out", out, "--quiet"],
            check=True,
            capture_output=True,
        )
        wall = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"smoke_study_wall_s": wall, "smoke_study_peak_rss_mb": peak}


def length_curve(args, lengths: list[int]) -> list[dict]:
    """Training throughput and peak memory per length, each measured in a fresh process."""
    rows = []
    for length in lengths:
        cmd = [
            sys.executable,
            "-m",
            "study.bench",
            "--json",
            "--no-baseline",
            "--length",
            str(length),
            "--attention",
            args.attention,
            "--units",
            str(args.units),
            "--embedding",
            str(args.embedding),
            "--batch-size",
            str(args.batch_size),
            "--examples",
            str(max(512, args.examples * 32 // length)),
            "--decode-examples",
            "512",
            "--backend",
            args.backend,
        ]
        result = subprocess.run(
            cmd,
            capture_output=True,
            encoding="utf-8",
            errors="replace",
            env={**os.environ, "KERAS_BACKEND": args.backend, "PYTHONIOENCODING": "utf-8"},
        )
        if result.returncode != 0:
            rows.append(
                {
                    "length": length,
                    "error": result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "failed",
                }
            )
            continue
        r = json.loads(result.stdout)
        rows.append(
            {
                "length": length,
                "train_tokens_per_s": r["train_tokens_per_s"],
                "train_us_per_token": 1e6 / r["train_tokens_per_s"],
                "decode_tokens_per_s": r["decode_tokens_per_s"],
                "peak_rss_mb": r["peak_rss_mb"],
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    os.environ["KERAS_BACKEND"] = args.backend
    # first, while this process is small: a child's peak RSS includes what it inherited at fork
    smoke = smoke_study() if args.smoke_study else {}
    from study.backend import start_backend

    start_backend(args.backend)  # TensorFlow without its start-up notices; JAX with its compilation cache
    import keras

    from study.cell import device_name, versions

    if args.time_to_accuracy:
        report = repeated(args, [time_to_accuracy(args) for _ in range(args.repeats)])
        report.update(
            attention=args.attention, backend=keras.backend.backend(), versions=versions(), device=device_name()
        )
        if args.json:
            print(json.dumps(report, indent=1))
        else:
            for key, value in report.items():
                if not key.endswith("curve") and key != "recipe":
                    print(f"{key:>30}: {readable_number(value)}")
        return 0

    if args.length_curve:
        rows = length_curve(args, [int(x) for x in comma_list(args.length_curve)])
        report = {
            "length_curve": rows,
            "attention": args.attention,
            "backend": args.backend,
            "versions": versions(),
            "device": device_name(),
        }
        print(json.dumps(report, indent=1) if args.json else "\n".join(json.dumps(r) for r in rows))
        return 0

    train, test, sv, tv = _data(args)
    ours = measure_project(args, train, test, sv, tv)
    agreement = decoder_agreement(ours["model"], sv.encode_batch(test.sources[:256]), ours["decoded"].shape[1])
    report = {
        "train_tokens_per_s": ours["train_tokens_per_s"],
        "decode_tokens_per_s": ours["decode_tokens_per_s"],
        "decode_outputs_identical_to_per_token_loop": agreement["identical_rows"] == agreement["rows"],
        "decoder_agreement": agreement,
        "param_count": ours["param_count"],
    }
    if not args.no_baseline:
        base = measure_baseline(args, train, test, sv, tv)
        report.update(base)
        report["train_speedup"] = report["train_tokens_per_s"] / base["baseline_train_tokens_per_s"]
        report["decode_speedup"] = report["decode_tokens_per_s"] / base["baseline_decode_tokens_per_s"]
    report["peak_rss_mb"] = _peak_rss_mb()
    report.update(smoke)
    report.update(
        config={k: v for k, v in vars(args).items() if k not in ("json", "smoke_study", "length_curve")},
        training_examples_each_side=ours["train_examples_timed"],
        backend=keras.backend.backend(),
        versions=versions(),
        device=device_name(),
    )
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        for key, value in report.items():
            print(f"{key:>44}: {readable_number(value)}")
    return 0


def readable_number(value):
    """A measurement as a person reads it: floats to 3 significant digits with thousands
    separators (2.009338 -> '2.01', 123456.7 -> '123,457'); anything else as it is."""
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"
    return value


if __name__ == "__main__":
    sys.exit(main())
