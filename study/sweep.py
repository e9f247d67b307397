"""The training-recipe sweep: which learning rate, schedule, batch size and length curriculum
train the study's models fastest to convergence, judged on validation data only.

    python -m study.sweep                    # every recipe x probe, 2 in parallel, into results/sweep
    python -m study.sweep --recipes base,cosine3e-3 --probes copy/dot --jobs 1
    python -m study.sweep --table            # redraw the table from the runs already there

Each run trains one probe cell (task, model, training lengths of the standard profile, seed)
with one recipe (overrides of `SWEEP_BASE`), exactly as a study trains it
(`study.train.train_model`: validation after every epoch, patience, best weights), and keeps
its validation history in `<out>/runs/<recipe>--<probe>--s<seed>.json`; the test sets are
never generated or decoded.  The table (`<out>/sweep.md`) gives per run the
best validation exact match over all training lengths and at the longest one, the examples
and seconds it took to reach 90% validation exact match, why training stopped, and the
examples seen.  Runs already in `<out>/runs` are kept, so an interrupted sweep resumes.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import multiprocessing
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

SWEEP_BUDGET = 200000  # examples: the most any sweep run trains (`--max-examples`), so a sweep fits an afternoon

# The settings every recipe starts from: the standard profile's before the sweep (a pool of
# 10,000, validated after every pass, patience 30,000), so the sweep reruns as it was run.
SWEEP_BASE = {"n_train": 10000, "epoch_examples": 10000, "patience_examples": 30000, "batch_size": 64,
              "learning_rate": 2e-3, "schedule": "constant", "warmup_examples": 0}

# name -> overrides of SWEEP_BASE
RECIPES: dict[str, dict] = {
    "base": {"learning_rate": 2e-3, "schedule": "constant", "batch_size": 64},
    "lr1e-3": {"learning_rate": 1e-3, "schedule": "constant", "batch_size": 64},
    "cosine3e-3": {"learning_rate": 3e-3, "schedule": "cosine", "warmup_examples": 5000, "batch_size": 64},
    "cosine4e-3-b128": {"learning_rate": 4e-3, "schedule": "cosine", "warmup_examples": 5000, "batch_size": 128},
    "cosine3e-3-sequence": {"learning_rate": 3e-3, "schedule": "cosine", "warmup_examples": 5000, "batch_size": 64,
                            "loss_normalisation": "sequence"},
    "cosine3e-3-pool100k": {"learning_rate": 3e-3, "schedule": "cosine", "warmup_examples": 5000, "batch_size": 64,
                            "n_train": 100000, "epoch_examples": 10000},
    "cosine4e-3-b128-pool100k": {"learning_rate": 4e-3, "schedule": "cosine", "warmup_examples": 5000, "batch_size": 128,
                                 "n_train": 100000, "epoch_examples": 10000},
    "cosine3e-3-curriculum": {"learning_rate": 3e-3, "schedule": "cosine", "warmup_examples": 5000, "batch_size": 64,
                              "curriculum_examples": 60000},
}

# probe name -> (task, model, training lengths): the cells whose training decides the recipe;
# lengths None: the standard profile's; model sizes and validation sets are the standard profile's
PROBES: dict[str, tuple[str, str, tuple[int, ...] | None]] = {
    "copy/dot": ("copy", "dot", None),
    "reverse/additive": ("reverse", "additive", None),
    "date_format/dot": ("date_format", "dot", None),
    "date_format/none": ("date_format", "none", None),
    # a diagnostic: can the model without attention learn single dates when it sees nothing else?
    "date_format/none@1": ("date_format", "none", (1,)),
}
REACH = 0.9  # the table reports examples and seconds to this validation exact match


def recipe_config(recipe: str, max_examples: int = SWEEP_BUDGET):
    """`SWEEP_BASE` with the recipe's overrides and a budget of `max_examples` (a warm-up or
    curriculum longer than that is cut to fit)."""
    from study.config import TrainConfig

    settings = {**SWEEP_BASE, **RECIPES[recipe], "max_examples": max_examples}
    settings["curriculum_examples"] = min(settings.get("curriculum_examples", 0), max_examples - 1)
    settings["warmup_examples"] = min(settings.get("warmup_examples", 0), max_examples - 1)
    return TrainConfig(**settings)


def run_path(out: Path, recipe: str, probe: str, seed: int) -> Path:
    """`<out>/runs/<recipe>--<probe>--s<seed>.json` (the probe's "/" and "@" as "-")."""
    return out / "runs" / f"{recipe}--{probe.replace('/', '-').replace('@', '-')}--s{seed}.json"


def run_probe(recipe: str, probe: str, seed: int, out: str, max_examples: int = SWEEP_BUDGET) -> dict:
    """Trains one probe with one recipe (validation only) and writes its run file."""
    import keras

    from study.config import PROFILES, ModelConfig, parse_lengths
    from study.data import training_splits
    from study.models import build_model
    from study.files import write_json_atomic
    from study.tasks import get_task
    from study.train import train_model
    from study.vocab import Vocabulary

    task_name, model_name, lengths = PROBES[probe]
    cfg = recipe_config(recipe, max_examples)
    lengths = lengths or parse_lengths(PROFILES["standard"]["tasks"][task_name]["train_lengths"], "train_lengths")
    task = get_task(task_name)
    train, validation = training_splits(task, lengths, cfg.n_train, cfg.n_validation, seed)
    sv, tv = Vocabulary(task.input_alphabet), Vocabulary(task.output_alphabet)
    keras.utils.set_random_seed(seed)
    model = build_model(model_name, sv.size, tv.size, ModelConfig(**PROFILES["standard"]["model"]))
    result = train_model(model, train, validation, sv, tv, cfg, seed=seed, progress=False)
    run = {
        "recipe": recipe, "probe": probe, "seed": seed, "train_config": dataclasses.asdict(cfg),
        "train_lengths": list(lengths), "stop_reason": result.stop_reason, "converged": result.converged,
        "examples_seen": result.examples_seen, "seconds": result.seconds, "history": result.history,
    }
    write_json_atomic(run_path(Path(out), recipe, probe, seed), run)  # a killed run leaves no half-written file
    return run


def _worker_init() -> None:
    from study.executors import limit_threads

    limit_threads("tensorflow", 1)


def summarize(run: dict) -> dict:
    """One table row: the best validation exact match (all lengths; longest length), when 90%
    was first reached (examples, seconds), why training stopped."""
    history = run["history"]
    longest = str(max(run["train_lengths"]))
    best = max(history, key=lambda row: row["val_seq_acc"])
    reached = next((row for row in history if row["val_seq_acc"] >= REACH), None)
    return {
        "recipe": run["recipe"], "probe": run["probe"], "seed": run["seed"],
        "best_val_seq_acc": best["val_seq_acc"],
        "best_val_seq_acc_longest": max(row["val_seq_acc_by_length"][longest] for row in history),
        "worst_length_at_best": min(best["val_seq_acc_by_length"].values()),
        "examples_to_90": reached["examples_seen"] if reached else None,
        "seconds_to_90": reached["seconds"] if reached else None,
        "stop_reason": run["stop_reason"], "examples_seen": run["examples_seen"], "seconds": run["seconds"],
    }


def table(out: Path) -> str:
    """The markdown table of every run under `out/runs`, by probe then recipe."""
    runs = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))]
    rows = sorted((summarize(r) for r in runs), key=lambda r: (r["probe"], r["recipe"], r["seed"]))
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}"  # noqa: E731
    lines = [
        "| probe | recipe | seed | best val exact match % | at the longest length % | worst length at best % | examples to 90% | seconds to 90% | stop | examples | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['probe']} | {r['recipe']} | {r['seed']} | {pct(r['best_val_seq_acc'])} | {pct(r['best_val_seq_acc_longest'])} | "
            f"{pct(r['worst_length_at_best'])} | {r['examples_to_90'] or '-'} | {'-' if r['seconds_to_90'] is None else round(r['seconds_to_90'])} | "
            f"{r['stop_reason']} | {r['examples_seen']} | {r['seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m study.sweep", description=__doc__.split("\n\n")[0])
    p.add_argument("--recipes", default=",".join(RECIPES), help=f"comma-separated, from: {', '.join(RECIPES)}")
    p.add_argument("--probes", default=",".join(PROBES), help=f"comma-separated, from: {', '.join(PROBES)}")
    p.add_argument("--seeds", default="0", help="comma-separated seeds")
    p.add_argument("--jobs", type=int, default=2, help="runs in parallel, one CPU thread each")
    p.add_argument("--max-examples", type=int, default=SWEEP_BUDGET, help="the budget of every run (training examples)")
    p.add_argument("--out", default="results/sweep")
    p.add_argument("--table", action="store_true", help="only redraw the table")
    args = p.parse_args(argv)
    recipes, probes = args.recipes.split(","), args.probes.split(",")
    for name, known, what in [(r, RECIPES, "recipe") for r in recipes] + [(q, PROBES, "probe") for q in probes]:
        if name not in known:
            print(f"error: unknown {what} {name!r} (known: {', '.join(known)})", file=sys.stderr)
            return 2
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        print(f"error: --seeds must be comma-separated integers, got {args.seeds!r}", file=sys.stderr)
        return 2
    if args.jobs < 1 or args.max_examples < 1:
        print("error: --jobs and --max-examples must be positive integers", file=sys.stderr)
        return 2
    out = Path(args.out)
    if not args.table:
        todo = [(r, q, s) for r in recipes for q in probes for s in seeds
                if not run_path(out, r, q, s).exists()]
        started = time.perf_counter()
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=context, initializer=_worker_init) as pool:
            futures = {pool.submit(run_probe, r, q, s, str(out), args.max_examples): (r, q, s) for r, q, s in todo}
            for future in concurrent.futures.as_completed(futures):
                run = future.result()
                row = summarize(run)
                print(f"[{time.perf_counter() - started:5.0f}s] {row['probe']} {row['recipe']} s{row['seed']}: best {100 * row['best_val_seq_acc']:.1f}% "
                      f"(longest {100 * row['best_val_seq_acc_longest']:.1f}%), {row['stop_reason']} after {row['examples_seen']} examples, {row['seconds']:.0f}s", flush=True)
    text = table(out)
    (out / "sweep.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
