"""The training-recipe sweep's tables: which batch size and learning rate train the study's models
fastest to convergence, judged on validation data only.

    python run_study.py --config examples/sweep.toml --out results/sweep-b   # the sweep: a study
    python -m study.sweep results/sweep-b                                  # -> results/sweep-b/sweep.md

A sweep is a study whose `[variants.NAME]` tables are the recipes (overrides of `[train]`), each
run over the same probe grid (tasks x models x seeds) by the study's runner, with its executors,
resume and records (`examples/sweep.toml`).  This module only reads what a sweep left: each run's
validation history, its training settings and where it stopped, and draws `<folder>/sweep.md`:
per recipe and probe (`task/model`, mean over seeds) and per run, the best validation exact match
over all training lengths and at the longest one, whether and after how many examples and
seconds the run converged, and how far its loss moved over the last stretch; each recipe against
the one named "standard", seed by seed; then the same runs replayed through
`study.stopping.StoppingRule` with other convergence stretches.

It reads two kinds of folder (`read_runs`): a study's results (`cells/*.json`, the records of
`study.results`; a variant's name is its recipe), and the run files of the sweep's earlier
runner (`runs/*.json` with keys recipe, probe, seed, train_config, train_lengths, stop_reason,
converged, last_stretch, examples_seen, seconds, times, history), which `results/sweep` holds.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from study.results import NoResultsError, load_records, read_text, write_text_atomic

PATIENCES = (20000, 30000, 40000)  # examples: the stretches `patience_table` replays (at most a run's own)


def run_from_record(record: dict) -> dict:
    """A study's cell record as a sweep run: its recipe is its variant's name (the profile's for
    a study without variants), its probe `task/model` (with `@length` in regime "per_length"),
    and its seconds those of training."""
    probe = f"{record['task']}/{record['model']}"
    if record.get("regime") == "per_length":
        probe += f"@{record['train_lengths'][0]}"
    return {
        "recipe": (record.get("config") or {}).get("variant") or record.get("profile"),
        "probe": probe,
        "seed": record["seed"],
        "train_config": record["train_config"],
        "train_lengths": record["train_lengths"],
        "stop_reason": record["stop_reason"],
        "converged": record["converged"],
        "last_stretch": record.get("last_stretch"),
        "examples_seen": record["examples_seen"],
        "seconds": record["train_seconds"],
        "history": record["history"],
    }


def read_runs(folder: Path) -> list[dict]:
    """The runs of the sweep in `folder`: its `runs/*.json` files when it has a `runs/` folder,
    else the finished cells of the study there (`study.results.load_records`: the latest run's,
    every variant's in a folder of variants) as `run_from_record` gives them.

    Raises:
        NoResultsError: `folder` holds no finished run.
    """
    folder = Path(folder)
    if (folder / "runs").is_dir():
        runs = [json.loads(read_text(p)) for p in sorted((folder / "runs").glob("*.json"))]
    else:
        runs = [run_from_record(r) for r in load_records(folder) if r["status"] == "ok"]
    if not runs:
        raise NoResultsError(f"{folder} holds no finished sweep runs")
    return runs


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


def standard_criterion() -> dict:
    """The standard profile's exact-match criterion (`accuracy_band`, `accuracy_z`,
    `accuracy_tolerance`, and the `n_validation` its thresholds assume), to replay runs of any
    rule with."""
    from study.config import PROFILES, TrainConfig

    train = TrainConfig(**PROFILES["standard"]["train"])
    return {k: getattr(train, k) for k in ("accuracy_band", "accuracy_z", "accuracy_tolerance", "n_validation")}


def replay_stop(run: dict, patience_examples: int, **criterion) -> dict:
    """When `run` would have stopped with another convergence stretch (and, given `criterion`,
    another exact-match criterion: `StoppingRule` fields), the rest of its rule unchanged:
    `study.stopping.StoppingRule.replay` on the recorded history (exact, since the rule only
    decides when to stop), and the validation exact match of the weights the rule keeps then.
    Only stretches up to the run's own can be replayed: a longer one would need epochs the run
    never trained."""
    from study.stopping import StoppingRule

    history = run["history"]
    rule = StoppingRule.from_config(run["train_config"], patience_examples=patience_examples, **criterion)
    replay = rule.replay(history)
    kept = history[replay["kept_epoch"] - 1]
    longest = str(max(run["train_lengths"]))
    return {
        "examples": history[replay["epoch"] - 1]["examples_seen"],
        "seconds": history[replay["epoch"] - 1]["seconds"],
        "converged": replay["stop_reason"] != "budget",
        "val_seq_acc": kept["val_seq_acc"],
        "val_seq_acc_longest": kept["val_seq_acc_by_length"][longest],
    }


def patience_table(runs: list[dict], **criterion) -> str:
    """Markdown: per probe, recipe and convergence stretch (`PATIENCES`), the mean examples,
    seconds and kept validation exact match (all lengths; longest) at the replayed stop
    (`replay_stop`, with `criterion`)."""
    import pandas as pd

    rows = pd.DataFrame(
        [
            {"probe": r["probe"], "recipe": r["recipe"], "patience": p, **replay_stop(r, p, **criterion)}
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


def paired_table(runs: list[dict], against: str = "standard") -> str:
    """Markdown: each recipe against recipe `against`, seed by seed on the same probe (the pair
    shares its data, validation set and initial weights, so the seed's own luck cancels): how
    many runs stopped on fewer, as many or more examples, the mean difference in examples, and in
    the validation exact match at the longest training length of the weights each run's rule
    kept (`replay_stop` at the run's own stretch: the record's own stop); per probe, then over
    every probe.  "" when no run has recipe `against`."""
    import pandas as pd

    rows = pd.DataFrame(
        [
            {
                "probe": r["probe"],
                "recipe": r["recipe"],
                "seed": r["seed"],
                "examples": r["examples_seen"],
                "longest": replay_stop(r, r["train_config"]["patience_examples"])["val_seq_acc_longest"],
            }
            for r in runs
        ]
    )
    base = rows[rows.recipe == against][["probe", "seed", "examples", "longest"]]
    pairs = rows[rows.recipe != against].merge(  # paired seeds only; two `against` runs of one seed: an error
        base, on=["probe", "seed"], suffixes=("", "_base"), validate="many_to_one"
    )
    if pairs.empty:
        return ""
    lines = [
        "| probe | recipe | pairs | fewer examples | as many | more | examples, mean difference | "
        "kept val exact match at the longest length, mean difference (points) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    groups = [*pairs.groupby(["probe", "recipe"], sort=True)]
    groups += [(("every probe", recipe), g) for recipe, g in pairs.groupby("recipe", sort=True)]
    for (probe, recipe), g in groups:
        gap = g.examples - g.examples_base
        lines.append(
            f"| {probe} | {recipe} | {len(g)} | {int((gap < 0).sum())} | {int((gap == 0).sum())} | {int((gap > 0).sum())} | "
            f"{gap.mean():+.0f} | {100 * (g.longest - g.longest_base).mean():+.1f} |"
        )
    return "\n".join(lines) + "\n"


def table(folder: Path) -> str:
    """Markdown for the sweep in `folder` (`read_runs`): one row per recipe and probe (means over
    its seeds), then every run, then each recipe against the standard one (`paired_table`), then
    the replayed stretches (`patience_table`)."""
    import pandas as pd

    runs = read_runs(folder)
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
    paired = paired_table(runs)
    if paired:
        lines += [
            "",
            "Each recipe against the standard recipe, seed by seed on the same probe (`paired_table`):",
            "",
            paired,
        ]
    replayed = patience_table(runs)
    if replayed:
        lines += [
            "",
            "The same runs replayed with a shorter or longer convergence stretch (`replay_stop`):",
            "",
            replayed,
        ]
        criterion = standard_criterion()
        lines += [
            "And with the standard profile's exact-match criterion (bands of "
            f"{criterion['accuracy_band']} training lengths, thresholds of {criterion['accuracy_z']:g} standard errors "
            f"for {criterion['n_validation']} validation examples per length, at least "
            f"{100 * criterion['accuracy_tolerance']:g} point(s)), whatever the run's own (thresholds as for the "
            "standard validation set, also for a run validated on more examples):",
            "",
            patience_table(runs, **criterion),
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """`python -m study.sweep FOLDER`: writes `FOLDER/sweep.md` (`table`) and prints it; a folder
    without finished runs is a one-line error with exit code 2."""
    parser = argparse.ArgumentParser(prog="python -m study.sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "folder", type=Path, help="the results folder of a sweep (a study of recipe variants, or runs/*.json)"
    )
    args = parser.parse_args(argv)
    try:
        text = table(args.folder)
    except NoResultsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    write_text_atomic(args.folder / "sweep.md", text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
