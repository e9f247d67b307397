"""The training-recipe sweep: which batch size and learning rate train the study's models fastest
to convergence, judged on validation data only.

    python -m study.sweep                    # every recipe x probe x seed, 2 in parallel, into results/sweep
    python -m study.sweep --recipes b64,b128 --probes copy/dot --seeds 0 --jobs 1
    python -m study.sweep --table            # redraw the tables from the runs already there
    python -m study.sweep --recipes b64-lr1e-3,b64,b64-lr1e-2 --probes copy/none,reverse/none --seeds 0,1
                                             # the learning rate of the model without attention

Each run trains one probe cell (task, model, training lengths and sizes of the standard
profile, seed) with one recipe (overrides of the standard profile's `[train]`) through
`study.experiment`, the path every study cell takes (validation after every epoch, the
plateau schedule, convergence stopping, best weights), and keeps its validation history
in `<out>/runs/<recipe>--<probe>--s<seed>.json`; the test sets are never generated or
decoded.  The tables (`<out>/sweep.md`) give per run and per recipe and probe (mean over
seeds) the best validation exact match over all training lengths and at the longest one,
whether and after how many examples and seconds the run converged, and how far its loss
moved over the last stretch.  Runs already in `<out>/runs` are kept, so an interrupted
sweep resumes.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import multiprocessing
import sys
import time
from pathlib import Path

import study.backend  # noqa: F401  (sets TensorFlow's log level before anything imports it)
from study.files import read_text, write_text_atomic
from study.text import comma_list

# name -> overrides of the standard profile's [train]: batch 64, 128 and 256 with the peak
# learning rate scaled by the square root of the batch size (Adam; Malladi et al. 2022)
RECIPES: dict[str, dict] = {
    "b64": {"batch_size": 64, "learning_rate": 3e-3},
    "b128": {"batch_size": 128, "learning_rate": 4.2e-3},
    "b256": {"batch_size": 256, "learning_rate": 6e-3},
    "b64-lr1e-3": {"batch_size": 64, "learning_rate": 1e-3},
    "b64-lr1e-2": {"batch_size": 64, "learning_rate": 1e-2},
    "b32": {"batch_size": 32, "learning_rate": 2.1e-3},
}
DEFAULT_RECIPES = ("b64", "b128", "b256")

# probe name -> (task, model, training lengths): the cells whose training decides the recipe,
# one per model of the standard grid; lengths None: the standard profile's; model sizes and
# validation sets are the standard profile's
PROBES: dict[str, tuple[str, str, tuple[int, ...] | None]] = {
    "copy/none": ("copy", "none", None),
    "reverse/none": ("reverse", "none", None),
    "copy/dot": ("copy", "dot", None),
    "reverse/additive": ("reverse", "additive", None),
    "date_format/general": ("date_format", "general", None),
    # a diagnostic: can the model without attention learn single dates when it sees nothing else?
    "date_format/none@1": ("date_format", "none", (1,)),
}
DEFAULT_PROBES = ("copy/none", "copy/dot", "reverse/additive", "date_format/general")


def recipe_config(recipe: str, max_examples: int | None = None, whole_history: bool = False, n_validation=None):
    """The standard profile's training settings with the recipe's overrides (and a budget of
    `max_examples`, if given).  `whole_history`: the convergence stretch is the whole budget, so
    only the target or the budget ends a run and any stopping rule can be replayed on its
    history (`study.stopping.StoppingRule.replay`); `n_validation`: validation examples per
    training length (None: the profile's)."""
    from study.config import PROFILES, TrainConfig

    settings = {**PROFILES["standard"]["train"], **RECIPES[recipe]}
    if max_examples is not None:
        settings["max_examples"] = max_examples
        settings["warmup_examples"] = min(settings.get("warmup_examples", 0), max_examples - 1)
    if whole_history:
        settings["patience_examples"] = settings.get("max_examples", TrainConfig.max_examples)
    if n_validation is not None:
        settings["n_validation"] = n_validation
    return TrainConfig(**settings)


def run_path(out: Path, recipe: str, probe: str, seed: int) -> Path:
    """`<out>/runs/<recipe>--<probe>--s<seed>.json` (the probe's "/" and "@" as "-")."""
    return out / "runs" / f"{recipe}--{probe.replace('/', '-').replace('@', '-')}--s{seed}.json"


def run_probe(recipe: str, probe: str, seed: int, out: str, max_examples: int | None = None, **settings) -> dict:
    """Trains one probe with one recipe (validation only: no test examples) and writes its run
    file; `settings`: `recipe_config`'s `whole_history` and `n_validation`."""
    from study.config import PROFILES, ModelConfig, parse_lengths
    from study.experiment import prepare, train
    from study.files import write_json_atomic
    from study.tasks import get_task

    task_name, model_name, lengths = PROBES[probe]
    cfg = recipe_config(recipe, max_examples, **settings)
    lengths = lengths or parse_lengths(PROFILES["standard"]["tasks"][task_name]["train_lengths"], "train_lengths")
    run = prepare(
        get_task(task_name),
        model_name,
        lengths,
        (),
        ModelConfig(**PROFILES["standard"]["model"]),
        cfg,
        n_test=1,
        seed=seed,
    )
    result = train(run, cfg, seed, progress=False)
    record = {
        "recipe": recipe,
        "probe": probe,
        "seed": seed,
        "train_config": dataclasses.asdict(cfg),
        "train_lengths": list(lengths),
        "stop_reason": result.stop_reason,
        "converged": result.converged,
        "last_stretch": result.last_stretch,
        "examples_seen": result.examples_seen,
        "seconds": result.seconds,
        "times": result.times,
        "history": result.history,
    }
    write_json_atomic(run_path(Path(out), recipe, probe, seed), record)  # a killed run leaves no half-written file
    return record


def _worker_init() -> None:
    from study.executors import limit_threads

    limit_threads("tensorflow", 1)


def summarize(run: dict) -> dict:
    """One table row: the best validation exact match (all lengths; longest length), whether it
    converged, after how many examples and seconds, and the loss's fall over the last stretch."""
    history = run["history"]
    longest = str(max(run["train_lengths"]))
    best = max(history, key=lambda row: row["val_seq_acc"])
    stretch = run.get("last_stretch") or {}
    return {
        "recipe": run["recipe"],
        "probe": run["probe"],
        "seed": run["seed"],
        "best_val_seq_acc": best["val_seq_acc"],
        "best_val_seq_acc_longest": max(row["val_seq_acc_by_length"][longest] for row in history),
        "best_val_loss": min(row["val_loss"] for row in history),
        "converged": run["converged"],
        "stop_reason": run["stop_reason"],
        "examples_seen": run["examples_seen"],
        "seconds": run["seconds"],
        "last_stretch_loss": stretch.get("val_loss"),
    }


PATIENCES = (20000, 30000, 40000)  # examples: the stretches `patience_table` replays (at most a run's own)


def replay_stop(run: dict, patience_examples: int) -> dict:
    """When `run` would have stopped with another convergence stretch, the rest of its rule
    unchanged: `study.stopping.StoppingRule.replay` on the recorded history (exact, since the
    rule only decides when to stop), and the validation exact match of the weights the rule
    keeps then.  Only stretches up to the run's own can be replayed: a longer one would need
    epochs the run never trained."""
    from study.stopping import StoppingRule

    history = run["history"]
    replay = StoppingRule.from_config(run["train_config"], patience_examples=patience_examples).replay(history)
    kept = history[replay["kept_epoch"] - 1]
    longest = str(max(run["train_lengths"]))
    return {
        "examples": history[replay["epoch"] - 1]["examples_seen"],
        "seconds": history[replay["epoch"] - 1]["seconds"],
        "converged": replay["stop_reason"] != "budget",
        "val_seq_acc": kept["val_seq_acc"],
        "val_seq_acc_longest": kept["val_seq_acc_by_length"][longest],
    }


def patience_table(runs: list[dict]) -> str:
    """Markdown: per probe, recipe and convergence stretch (`PATIENCES`), the mean examples,
    seconds and kept validation exact match (all lengths; longest) at the replayed stop."""
    import pandas as pd

    rows = pd.DataFrame(
        [
            {"probe": r["probe"], "recipe": r["recipe"], "patience": p, **replay_stop(r, p)}
            for r in runs
            for p in PATIENCES
            if p <= r["train_config"]["patience_examples"]
        ]
    )
    if rows.empty:
        return ""
    lines = [
        "| probe | recipe | stretch (examples) | converged | examples (mean) | seconds (mean) "
        "| kept val exact match % (mean) | at the longest length % (mean) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (probe, recipe, patience), g in rows.groupby(["probe", "recipe", "patience"], sort=True):
        lines.append(
            f"| {probe} | {recipe} | {patience} | {int(g.converged.sum())} of {len(g)} | {g.examples.mean():.0f} | {g.seconds.mean():.0f} | "
            f"{100 * g.val_seq_acc.mean():.1f} | {100 * g.val_seq_acc_longest.mean():.1f} |"
        )
    return "\n".join(lines) + "\n"


def table(out: Path) -> str:
    """Markdown: one row per recipe and probe (means over its seeds), then every run."""
    import pandas as pd

    runs = [json.loads(read_text(p)) for p in sorted((out / "runs").glob("*.json"))]
    rows = pd.DataFrame([summarize(r) for r in runs]).sort_values(["probe", "recipe", "seed"])
    pct = lambda v: f"{100 * v:.1f}"  # noqa: E731
    lines = [
        "| probe | recipe | seeds | best val exact match % (mean) | at the longest length % (mean) | converged | examples (mean) | seconds (mean) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (probe, recipe), g in rows.groupby(["probe", "recipe"], sort=True):
        lines.append(
            f"| {probe} | {recipe} | {len(g)} | {pct(g.best_val_seq_acc.mean())} | {pct(g.best_val_seq_acc_longest.mean())} | "
            f"{int(g.converged.sum())} of {len(g)} | {g.examples_seen.mean():.0f} | {g.seconds.mean():.0f} |"
        )
    lines += [
        "",
        "| probe | recipe | seed | best val exact match % | at the longest length % | best val loss (nats/char) "
        "| loss fall over the last stretch | stop | examples | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows.itertuples():
        fall = "-" if r.last_stretch_loss is None or pd.isna(r.last_stretch_loss) else f"{r.last_stretch_loss:.4f}"
        lines.append(
            f"| {r.probe} | {r.recipe} | {r.seed} | {pct(r.best_val_seq_acc)} | {pct(r.best_val_seq_acc_longest)} | {r.best_val_loss:.4f} | "
            f"{fall} | {r.stop_reason} | {r.examples_seen} | {r.seconds:.0f} |"
        )
    lines += [
        "",
        "The same runs replayed with a shorter or longer convergence stretch (`replay_stop`):",
        "",
        patience_table(runs),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m study.sweep", description=__doc__.split("\n\n")[0])
    p.add_argument("--recipes", default=",".join(DEFAULT_RECIPES), help=f"comma-separated, from: {', '.join(RECIPES)}")
    p.add_argument("--probes", default=",".join(DEFAULT_PROBES), help=f"comma-separated, from: {', '.join(PROBES)}")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    p.add_argument("--jobs", type=int, default=2, help="runs in parallel, one CPU thread each")
    p.add_argument(
        "--max-examples", type=int, default=None, help="the budget of every run (default: the standard profile's)"
    )
    p.add_argument(
        "--whole-history",
        action="store_true",
        help="train every run to its budget (or the target), so any stopping rule can be replayed on its history",
    )
    p.add_argument("--n-validation", type=int, default=None, help="validation examples per training length")
    p.add_argument("--out", default="results/sweep")
    p.add_argument("--table", action="store_true", help="only redraw the table")
    args = p.parse_args(argv)
    recipes, probes = comma_list(args.recipes), comma_list(args.probes)
    for option, values in (("--recipes", recipes), ("--probes", probes), ("--seeds", comma_list(args.seeds))):
        if not values:
            print(f"error: {option} needs at least one comma-separated value", file=sys.stderr)
            return 2
    for name, known, what in [(r, RECIPES, "recipe") for r in recipes] + [(q, PROBES, "probe") for q in probes]:
        if name not in known:
            print(f"error: unknown {what} {name!r} (known: {', '.join(known)})", file=sys.stderr)
            return 2
    try:
        seeds = [int(s) for s in comma_list(args.seeds)]
    except ValueError:
        print(f"error: --seeds must be comma-separated integers, got {args.seeds!r}", file=sys.stderr)
        return 2
    if args.jobs < 1 or (args.max_examples is not None and args.max_examples < 1):
        print("error: --jobs and --max-examples must be positive integers", file=sys.stderr)
        return 2
    out = Path(args.out)
    if not args.table:
        todo = [(r, q, s) for r in recipes for q in probes for s in seeds if not run_path(out, r, q, s).exists()]
        started = time.perf_counter()
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=context, initializer=_worker_init) as pool:
            settings = {"whole_history": args.whole_history, "n_validation": args.n_validation}
            futures = {
                pool.submit(run_probe, r, q, s, str(out), args.max_examples, **settings): (r, q, s) for r, q, s in todo
            }
            for future in concurrent.futures.as_completed(futures):
                run = future.result()
                row = summarize(run)
                print(
                    f"[{time.perf_counter() - started:5.0f}s] {row['probe']} {row['recipe']} s{row['seed']}: best {100 * row['best_val_seq_acc']:.1f}% "
                    f"(longest {100 * row['best_val_seq_acc_longest']:.1f}%), {row['stop_reason']} "
                    f"after {row['examples_seen']} examples, {row['seconds']:.0f}s",
                    flush=True,
                )
    text = table(out)
    write_text_atomic(out / "sweep.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
