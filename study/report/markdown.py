"""The report's text: Markdown tables of exact match by length, differences, comparisons,
per-unit accuracy, how each cell's training ended, and report.md itself.

Every string that comes from a task, a model, a record or an error goes through
`study.text.markdown_cell` before it enters a table.
"""

from __future__ import annotations

import json
import math
import re

import pandas as pd

from study.config import STANDARD_FAMILIES
from study.report.statistics import COMPARISON_METHOD, INTERVAL_CENTRE, INTERVAL_METHOD, few_seeds_note
from study.report.tables import SETTING_FIELDS, distinct_test_items, series_names, setting_key
from study.stopping import StoppingRule
from study.text import markdown_cell as md


def _points(x: float) -> str:
    """A difference in signed percentage points, one decimal ("+94.6"; never "-0.0")."""
    return f"{round(100 * x, 1) + 0.0:+.1f}"


def trained_on(lo: int, hi: int, unit: str | None = None) -> str:
    """'trained on 1..4 dates' in a task's own unit (a record's `length_unit`), or 'trained on
    lengths 4..32' when the unit is not known."""
    return f"trained on {lo}..{hi} {unit}" if unit else f"trained on lengths {lo}..{hi}"


def length_units(records: list[dict]) -> dict[str, str]:
    """Each task's unit of length ('symbols', 'dates'), as its records name it."""
    return {r["task"]: r["length_unit"] for r in records if r.get("length_unit")}


def hypotheses_lines(comparisons: pd.DataFrame, families=STANDARD_FAMILIES) -> list[str]:
    """The report's "Hypotheses declared before the data": the families of comparisons of the
    study's configuration, the primary first, each with its number of comparisons, how many it
    separates and the level of its intervals, then the method (results in "Which models differ")."""
    if comparisons.empty:
        return []
    lines = [
        "## Hypotheses: the comparison families",
        "",
        "The comparisons between models fall into the families declared in the study's configuration before it runs "
        "(a study run before families existed gets the standard ones), each corrected on its own "
        '(results in "Which models differ"; bold there: separated):',
        "",
    ]
    for family in sorted(families, key=lambda f: not f.primary):
        rows = comparisons[comparisons["family"] == family.name]
        role = "primary: the claim under test" if family.primary else "exploratory"
        level = (
            f", intervals at {100 * rows['level'].iloc[0]:.4g}%" if len(rows) and rows["level"].notna().any() else ""
        )
        lines.append(
            f"- **{md(family.name)}** ({role}): {len(rows)} comparisons, {int(rows['separated'].sum())} separated{level}"
        )
    outside = int((comparisons["family"] == "").sum())
    if outside:
        lines.append(f"- {outside} comparisons fit no declared family: shown without a verdict")
    return lines + [
        "",
        f"Method: {COMPARISON_METHOD}. Each family is corrected on its own by Holm's method at 5%; its intervals are at "
        "1 - 0.05 / (m - R) (m comparisons, R separated: the level at which Holm's procedure stopped), so a pair is "
        "separated exactly when its interval excludes 0. A difference is the meta-analysis's estimate of the mean "
        "difference over seeds (first minus second, in percentage points; each seed's difference is beside it in the "
        "primary family and in comparisons.csv).",
        "",
    ]


def comparisons_markdown(
    comparisons: pd.DataFrame, families=STANDARD_FAMILIES, units: dict[str, str] | None = None
) -> str:
    """The report's "Which models differ": the primary family as one row per comparison
    (interval, each seed's difference, corrected p, verdict), then each exploratory family as
    tables of differences per length (families and method: `hypotheses_lines`).  `units`: each
    task's unit of length (`length_units`)."""
    units = units or {}
    if comparisons.empty:
        return ""
    parts = []
    for family in sorted(families, key=lambda f: not f.primary):
        rows = comparisons[comparisons["family"] == family.name]
        if rows.empty:
            continue
        role = "Primary" if family.primary else "Exploratory"
        parts += [f"### {role}: {md(family.name)}", ""]
        parts += (_primary_table(rows) + [""]) if family.primary else _wide_tables(rows, units)
    outside = comparisons[comparisons["family"] == ""]
    if len(outside):
        parts += ["### In no declared family (no verdict)", ""] + _wide_tables(outside, units)
    return "\n".join(parts)


def _primary_table(rows: pd.DataFrame) -> list[str]:
    """One row per comparison of the primary family: its difference, interval, each seed's
    difference, the corrected p and the verdict."""
    lines = [
        "| task | length | first - second | difference [interval] | per seed | p (Holm) | separated |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows.itertuples():
        seeds = ", ".join(_points(float(x)) for x in str(r.seed_differences).split())
        tested = not math.isnan(r.p_holm)
        interval = _points(r.diff_mean) + (f" [{_points(r.diff_ci_low)}, {_points(r.diff_ci_high)}]" if tested else "")
        verdict = ("**yes**" if r.separated else "no") if tested else "no test (fewer than 3 seeds)"
        p = f"{r.p_holm:.2g}" if tested else "-"
        lines.append(
            f"| {md(r.task)} | {r.length} | {md(r.first)} - {md(r.second)} | {interval} | {seeds} | {p} | {verdict} |"
        )
    return lines


def _wide_tables(rows: pd.DataFrame, units: dict[str, str]) -> list[str]:
    """One table per task, setting and training range: a row per pair, a column per length
    (* = inside the trained range), each cell 'difference [interval]', bold where separated.
    `units`: each task's unit of length (`length_units`)."""
    lines = []
    for (task, _, lo, hi), group in rows.groupby(["task", "setting", "train_min", "train_max"], sort=False):
        lengths = sorted(group["length"].unique())
        lines += [
            f"#### {md(task)} ({trained_on(lo, hi, units.get(task))}; * = inside the trained range)",
            "",
            "| first - second | " + " | ".join(f"{L}{'*' if lo <= L <= hi else ''}" for L in lengths) + " |",
            "|---" * (len(lengths) + 1) + "|",
        ]
        for (a, b), pair in group.groupby(["first", "second"], sort=False):
            by_length = pair.set_index("length")
            cells = []
            for L in lengths:
                if L not in by_length.index or math.isnan(by_length.loc[L, "diff_mean"]):
                    cells.append("n/a")
                    continue
                r = by_length.loc[L]
                text = _points(r["diff_mean"])
                if not math.isnan(r["diff_ci_low"]):
                    text += f" [{_points(r['diff_ci_low'])}, {_points(r['diff_ci_high'])}]"
                cells.append(f"**{text}**" if r["separated"] else text)
            lines.append(f"| {md(a)} - {md(b)} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def _length_table(
    frame: pd.DataFrame,
    lengths: list,
    lo: int,
    hi: int,
    prefix: str,
    signed: bool,
    missing: str,
    interval: bool = True,
    spread: bool = False,
    mean: bool = True,
) -> list[str]:
    """Markdown rows: one per model with the seeds behind it, one column per length (* marks
    trained lengths), each cell 'mean [low, high]' in percent from the columns `<prefix>_mean`,
    `_ci_low`, `_ci_high` ('mean' alone without `interval`; '[low, high]' alone without `mean`);
    with `spread`, 'mean (lowest-highest seed)' from `_min` and `_max` too (one seed: its value)."""
    number = "{:+.1f}" if signed else "{:.1f}"
    lines = [
        "| model | seeds | " + " | ".join(f"{L}{'*' if lo <= L <= hi else ''}" for L in lengths) + " |",
        "|---" * (len(lengths) + 2) + "|",
    ]
    for model, rows in frame.groupby("model", sort=False):
        by_length = rows.set_index("length")
        cells = []
        for L in lengths:
            if L not in by_length.index or math.isnan(by_length.loc[L, f"{prefix}_mean"]):
                cells.append(missing)
                continue
            value = {
                part: number.format(round(100 * by_length.loc[L, f"{prefix}_{part}"], 1) + 0.0)  # + 0.0: no "-0.0"
                for part in ("mean", "ci_low", "ci_high")
                if f"{prefix}_{part}" in by_length.columns
            }
            shown = [value["mean"]] if mean else []
            if spread and by_length.loc[L, "seeds"] > 1:  # every seed visible: the lowest and highest
                low, high = (100 * by_length.loc[L, f"{prefix}_{part}"] for part in ("min", "max"))
                shown.append(f"({low:.1f}-{high:.1f})")
            if interval:
                shown.append(f"[{value['ci_low']}, {value['ci_high']}]")
            cells.append(" ".join(shown))
        seeds = sorted(set(int(x) for x in rows["seeds"]))
        lines.append(
            f"| {md(model)} | {'-'.join(map(str, seeds[:: max(1, len(seeds) - 1)]))} | " + " | ".join(cells) + " |"
        )
    return lines


def _examples_note(group: pd.DataFrame, distinct: bool) -> str:
    """How many test examples stand behind each number of one table (`group`: its summary rows),
    naming the lengths whose test sets hold fewer because fewer distinct sources exist;
    `distinct`: whether the records' test sets hold distinct sources (`distinct_test_items`)."""
    per_length = group.groupby("length")["n_examples"].max().dropna() if "n_examples" in group else pd.Series()
    if per_length.empty:
        return "? test examples per length and seed"
    n = int(per_length.max())
    kind = "distinct test examples" if distinct else "test examples (drawn with replacement: repeats possible)"
    note = f"{n} {kind} per length and seed (standard error of one seed's exact match at most {50 / math.sqrt(n):.1f} points)"
    short = per_length[per_length < n]
    if not short.empty:
        note += (
            " except at "
            + ", ".join(f"length {length} ({int(k)})" for length, k in short.items())
            + ", where that is every distinct source in the test share"
        )
    return note


def _setting_names(summary: pd.DataFrame, records_by_setting: dict[str, dict]) -> dict[str, str]:
    """A caption for each setting of a task that has more than one: the fields that differ."""
    names = {}
    for task, group in summary.groupby("task", sort=False):
        settings = list(dict.fromkeys(group["setting"]))
        if len(settings) < 2:
            continue
        flat = {
            s: _flatten({f: records_by_setting[s].get(f) for f in SETTING_FIELDS}) if s in records_by_setting else {}
            for s in settings
        }
        differing = sorted(
            k
            for k in set().union(*flat.values())
            if len({json.dumps(flat[s].get(k), default=str) for s in settings}) > 1
        )
        for s in settings:
            variant = ((records_by_setting.get(s) or {}).get("config") or {}).get("variant")
            names[s] = md(
                f"{'variant ' + variant if variant else 'setting ' + s}: "
                + ", ".join(f"{k} = {flat[s].get(k)}" for k in differing[:4])
            )
    return names


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def summary_markdown(
    summary: pd.DataFrame, differences: pd.DataFrame | None = None, records: list[dict] | None = None
) -> str:
    """Accuracy-vs-length tables, one per task and setting, each followed by the diagnostics and,
    when given, the differences from `none`.  A task run under several settings (a merge of
    different configurations) gets one table per setting, captioned with what differs."""
    names = _setting_names(summary, {setting_key(r): r for r in records or []})
    distinct = distinct_test_items(records or [])
    units = length_units(records or [])
    parts = []
    for (task, setting, lo, hi), group in summary.groupby(["task", "setting", "train_min", "train_max"], sort=False):
        lengths = sorted(group["length"].unique())
        label = f"; {names[setting]}" if setting in names else ""
        lines = [
            f"### {md(task)} ({trained_on(lo, hi, units.get(task))}{label}; exact match %, mean over seeds (lowest-highest seed))",
            "",
        ]
        lines += _length_table(
            group, lengths, lo, hi, "seq_acc", signed=False, missing="failed", spread=True, interval=False
        )
        lines += [
            "",
            f"{_examples_note(group, distinct)}; * = inside the trained range. Their 95% intervals:",
            "",
        ]
        lines += _length_table(group, lengths, lo, hi, "seq_acc", signed=False, missing="failed", mean=False)
        note = few_seeds_note(int(group["seeds"].max()))
        lines += ["", f"{INTERVAL_METHOD}; {INTERVAL_CENTRE}{'; ' + note if note else ''}.", ""]
        if group["oracle_seq_acc_mean"].notna().any():
            lines += [
                "Diagnostics (means over seeds): oracle-length exact match %, END held back until the target's length "
                "(Newman et al. 2020) / share of predictions of the right length %:",
                "",
            ]
            oracle, right = (
                _length_table(
                    group.assign(diag_mean=group[column]),
                    lengths,
                    lo,
                    hi,
                    "diag",
                    signed=False,
                    missing="failed",
                    interval=False,
                )
                for column in ("oracle_seq_acc_mean", "length_acc_mean")
            )
            lines += _pair_rows(oracle, right) + [""]
        if differences is not None and len(differences):
            d = differences[
                (differences["task"] == task)
                & (differences["setting"] == setting)
                & (differences["train_min"] == lo)
                & (differences["train_max"] == hi)
            ]
            if len(d):
                lines += [
                    "Difference from `none` in exact match (percentage points, mean over seeds, paired by seed), with the "
                    'interval of its family of comparisons (see "Which models differ"; the levels differ between families):',
                    "",
                ]
                lines += _length_table(d, lengths, lo, hi, "diff", signed=True, missing="n/a") + [""]
        parts.append("\n".join(lines))
    return "\n".join(parts)


def _pair_rows(first: list[str], second: list[str]) -> list[str]:
    """Two tables of the same shape as one, each cell 'a / b'."""
    out = first[:2]
    for a, b in zip(first[2:], second[2:]):
        ca, cb = (re.split(r"(?<!\\)\|", row.strip("|")) for row in (a, b))  # unescaped pipes only
        cells = ca[:2] + [f" {x.strip()} / {y.strip()} " for x, y in zip(ca[2:], cb[2:])]
        out.append("|" + "|".join(cells) + "|")
    return out


def units_markdown(units: pd.DataFrame, records: list[dict]) -> str:
    """The report's per-unit table: for each task with units, model and evaluation length, the
    character accuracy of the 1st, 2nd, ... unit (mean over seeds, %) and how many units the
    model wrote (mean over seeds, range over seeds), so a failure beyond the trained range reads
    as content lost (early units wrong) or as counting and stopping (early units right, the
    output too short or too long)."""
    if units.empty:
        return ""
    names = {r["task"]: r.get("length_unit", "unit") for r in records}
    out = []
    for task, by_task in units.groupby("task", sort=False):
        most = int(by_task["unit"].max())
        unit = names.get(task, "unit")
        out += [
            f"**{md(task)}**: character accuracy of each {unit.rstrip('s')} (%, mean over seeds), and {unit} written "
            f"(mean over seeds [min, max]); * = inside the trained range.",
            "",
            "| model | length | " + " | ".join(f"{k}." for k in range(1, most + 1)) + f" | {unit} written |",
            "|---|---|" + "---|" * most + "---|",
        ]
        for (model, length), d in by_task.groupby(["model", "length"], sort=False):
            accs = d.groupby("unit")["char_acc"].mean()
            cells = [f"{100 * accs[k]:.0f}" if k in accs.index else "" for k in range(1, most + 1)]
            written = d.groupby("seed")["units_written"].first()
            star = "*" if d["in_training_range"].iloc[0] else ""  # as in every table: * = trained
            out.append(
                f"| {md(model)} | {length}{star} | "
                + " | ".join(cells)
                + f" | {written.mean():.2f} [{written.min():.2f}, {written.max():.2f}] |"
            )
        out.append("")
    return "\n".join(out)


def convergence_lines(records: list[dict]) -> list[str]:
    """The report's account of how training ended: the definition of converged, and each cell
    that was not, with how far its measures still moved over its last stretch."""
    done = [r for r in records if r["status"] == "ok" and "converged" in r]
    if not done:
        return []
    cfg = done[0]["train_config"]
    open_cells = [r for r in done if not r["converged"]]
    # records of the earlier rule (exact match only; a budget stop within a point counted)
    if "loss_tolerance" not in cfg:
        lines = [
            f"These cells were trained under an earlier rule: converged meant no better validation exact match for "
            f"{cfg.get('patience_examples', '?')} examples, the target reached, or at most a point gained over that "
            f"stretch at the budget (with a learning rate decaying to 0 there). {len(done) - len(open_cells)} of {len(done)} "
            "cells converged by that rule."
        ]
        gain = lambda r: (
            "too few epochs to judge"
            if r.get("last_stretch_gain") is None
            else f"+{100 * r['last_stretch_gain']:.1f} points of validation exact match over the last stretch"
        )  # noqa: E731
        if open_cells:
            lines += [
                "",
                f"**Not converged** ({len(open_cells)}), by that rule:",
                "",
                *[f"- {r['task']}/{r['model']}/seed {r['seed']}: {gain(r)}" for r in open_cells],
            ]
        return lines + [""]
    rules = {r["id"]: StoppingRule.from_config(r["train_config"]) for r in done}
    definitions = list(dict.fromkeys(rule.definition() for rule in rules.values()))
    floored = sum(_stopped(r) == "converged at the floor" for r in done)
    lines = [
        *(definitions if len(definitions) == 1 else [f"The cells were trained under {len(definitions)} rules:", ""]),
        *([f"- {d}" for d in definitions] if len(definitions) > 1 else []),
        "",
        f"{len(done) - len(open_cells)} of {len(done)} cells converged"
        + (
            f", {floored} of them by the rule with the learning rate at the schedule's floor (below)."
            if floored
            else "."
        ),
    ]
    learning = [r for r in open_cells if r.get("last_stretch") and r.get("stop_reason") == "budget"]
    short = [r for r in open_cells if not r.get("last_stretch")]
    other = [r for r in open_cells if r.get("last_stretch") and r.get("stop_reason") != "budget"]
    if learning:
        lines += [
            "",
            f"**Not converged** ({len(learning)}): stopped by the budget while still learning; their numbers are likely a lower bound.",
            "",
        ]
        for r in learning:
            stretch = r["last_stretch"]
            moved = rules[r["id"]].still_moving(stretch)
            lines.append(
                f"- {md(r['task'])}/{md(r['model'])}/seed {r['seed']}: over the last stretch validation loss fell "
                f"{stretch['val_loss']:.3f} nats per character and exact match at {_stretch_lengths(stretch)} changed by "
                f"{100 * stretch['val_seq_acc_by_length']:+.1f} points{_threshold(stretch, ' (', ')')}, learning rate "
                f"{r.get('stop_learning_rate', 0):.2g}" + (f"; still moving: {' and '.join(moved)}" if moved else "")
            )
    if other:
        lines += [
            "",
            f"**Stopped otherwise** ({len(other)}): "
            + ", ".join(
                f"{md(r['task'])}/{md(r['model'])}/seed {r['seed']} ({md(r.get('stop_reason'))})" for r in other
            )
            + ".",
        ]
    lines += _floor_lines(done, rules)
    lowest = {r["id"]: min(r["history"], key=lambda row: row["val_loss"]) for r in done if r.get("history")}
    lines += _setback_lines(done, rules, lowest)
    lines += _sibling_lines(done, rules, lowest)
    if short:
        lines += [
            "",
            f"**Too short to judge** ({len(short)}): the budget ended before one convergence stretch of "
            f"{cfg.get('patience_examples', '?')} examples had passed, so convergence was not measured: "
            + ", ".join(f"{md(r['task'])}/{md(r['model'])}/seed {r['seed']}" for r in short)
            + ".",
        ]
    return lines + [""]


def time_lines(records: list[dict]) -> list[str]:
    """Where the cells' time went, summed over cells: data, the first update (mostly compilation),
    the other update steps, greedy validation, test decoding (seconds and shares)."""
    parts = {
        "data": "data",
        "first_update": "first update (compilation)",
        "train_steps": "update steps",
        "validation": "greedy validation",
        "test_decoding": "test decoding",
    }
    timed = [r["seconds"] for r in records if r["status"] == "ok" and isinstance(r.get("seconds"), dict)]
    if not timed:
        return []
    sums = {k: sum(t.get(k, 0.0) for t in timed) for k in parts}
    wall = sum(
        r.get("wall_seconds", 0.0) for r in records if r["status"] == "ok" and isinstance(r.get("seconds"), dict)
    )
    other = max(wall - sum(sums.values()), 0.0)
    shares = (
        ", ".join(f"{name} {sums[k]:.0f} s ({100 * sums[k] / wall:.0f}%)" for k, name in parts.items()) if wall else ""
    )
    return [
        f"Where the time went, summed over {len(timed)} cells ({wall / 60:.1f} min): {shares}, other {other:.0f} s "
        "(building the model, saving it, the epoch loop).",
        "",
    ]


def _provenance(manifest: dict, n_records: int) -> list[str]:
    """Where the records came from when they are not one whole run: a shard, or merged folders."""
    lines = []
    if manifest.get("shard"):
        lines.append(
            f"Shard {manifest['shard']} of the grid: {n_records} of its {len(manifest.get('grid', []))} cells."
        )
    if manifest.get("merged_from"):
        lines.append(
            f"Merged from {', '.join(f'`{p}`' for p in manifest['merged_from'])}: {n_records} of the grid's {len(manifest.get('grid', []))} cells; "
            "each record carries its own configuration (below: the first folder's)."
        )
    return lines + [""] if lines else []


def report_markdown(
    records: list[dict],
    metrics: pd.DataFrame,
    table: str,
    images: dict[str, list[str]],
    manifest: dict,
    comparisons: str = "",
    units: str = "",
    findings: list[str] = (),
    hypotheses: list[str] = (),
) -> str:
    """report.md: the title, where the records came from, the findings and hypotheses, the
    figures, the tables, every cell and how its training ended, the failed cells, and the
    configuration."""
    first = next((r for r in records if r["status"] == "ok"), records[0])  # failed cells may lack device details
    lines = [
        f"# Sequence-length study: {first['profile']} profile",
        "",
        "Exact match is measured by greedy decoding of each model's own outputs on held-out test sets, one per length.",
        "",
        *_provenance(manifest, len(records)),
        *findings,
        *hypotheses,
    ]
    for title, paths in images.items():
        if paths:
            lines += [f"## {title}", "", *[f"![{title}]({p})" for p in paths], ""]
    lines += ["## Exact match by length", "", table, ""]
    if comparisons:
        lines += ["## Which models differ", "", comparisons, ""]
    if units:
        lines += ["## Accuracy per output unit", "", units]
    lines += ["## Cells", "", *convergence_lines(records), *time_lines(records)]
    lines += _cells_table(records)
    lines += _configuration_lines(records, first)
    return "\n".join(lines)


def _band(stretch: dict) -> str:
    """Where exact match moved most over a last stretch: "12", or "4-11" for a band."""
    first, last = stretch.get("lengths", [stretch["length"]] * 2)
    return str(first) if first == last else f"{first}-{last}"


def _stretch_lengths(stretch: dict) -> str:
    """`_band` in words: "length 12", or "lengths 4-11"."""
    band = _band(stretch)
    return f"lengths {band}" if "-" in band else f"length {band}"


def _threshold(stretch: dict, before: str, after: str = "") -> str:
    """The band's threshold in points between `before` and `after` ("; threshold 3.1"), or ""
    for a record of the rule before bands."""
    return f"{before}threshold {100 * stretch['threshold']:.1f}{after}" if "threshold" in stretch else ""


def _floor_lines(done: list[dict], rules: dict[str, StoppingRule]) -> list[str]:
    """The cells whose learning rate was at the schedule's floor when they stopped (`rules`: each
    record's rule, by id), with their training and validation loss at the kept epoch side by side:
    a training loss as high as the validation loss is a model that under-fits its own training
    data, which the floor may cause."""
    floor = [r for r in done if rules[r["id"]].at_floor(r.get("stop_learning_rate")) and r.get("history")]
    if not floor:
        return []
    lines = [
        "",
        f"**At the learning-rate floor when they stopped** ({len(floor)}): the schedule had lowered the rate to its "
        "floor, so the schedule, not the model, may have ended the learning; loss at the kept epoch (training: "
        "the epoch's batches, per target character or, with per-example loss, per example; validation: "
        "teacher-forced, per target character):",
        "",
    ]
    for r in floor:
        kept = r["history"][max(r.get("best_epoch", len(r["history"])), 1) - 1]
        lines.append(
            f"- {md(r['task'])}/{md(r['model'])}/seed {r['seed']} ({md(r['stop_reason'])}, floor "
            f"{rules[r['id']].min_learning_rate:g}): training {kept['loss']:.4f}, validation {kept['val_loss']:.4f}"
        )
    return lines


def _setback_lines(done: list[dict], rules: dict[str, StoppingRule], best: dict[str, dict]) -> list[str]:
    """The cells called converged while their validation loss at the stop was more than the rule's
    loss tolerance above the best it had reached (`rules`: each record's rule, by id).  The rule
    judges the last stretch against the best before it, so a model still climbing back from a
    setback (a loss spike) within the stretch looks like one that has stopped learning; the kept
    weights are the best epoch's, and the cell may have had more to gain.  `best`: each record's
    history row of its lowest validation loss, by id (records with a history)."""
    behind = [
        r
        for r in done
        if r.get("stop_reason") == "converged"
        and r["id"] in best
        and r["history"][-1]["val_loss"] > best[r["id"]]["val_loss"] + rules[r["id"]].loss_tolerance
    ]
    if not behind:
        return []
    lines = [
        "",
        f"**Converged behind their best** ({len(behind)}): no gain over the last stretch, but the validation loss at "
        "the stop was above the best it had reached by more than the loss tolerance, as after a loss spike the model "
        "was still recovering from; such a cell may still have been learning:",
        "",
    ]
    for r in behind:
        kept = best[r["id"]]
        lines.append(
            f"- {md(r['task'])}/{md(r['model'])}/seed {r['seed']}: validation loss {r['history'][-1]['val_loss']:.4f} "
            f"at the stop ({r['examples_seen']} examples), {kept['val_loss']:.4f} at its best ({kept['examples_seen']})"
        )
    return lines


def _sibling_lines(done: list[dict], rules: dict[str, StoppingRule], best: dict[str, dict]) -> list[str]:
    """The cells called converged whose lowest validation loss lies above that of another seed of
    the same task, model and setting (`setting_key`) by more than the rule's loss tolerance
    (`rules`: each record's rule, by id).  The rule sees a plateau as convergence; when another
    seed got below the plateau's loss, the cell may have stopped at a poorer solution than its
    model reaches on this data.  Only the loss is compared: accuracy can differ by chance.
    `best`: as for `_setback_lines`."""
    lowest = {cid: row["val_loss"] for cid, row in best.items()}
    group_of = {r["id"]: (r["task"], r["model"], setting_key(r)) for r in done if r["id"] in lowest}
    siblings: dict[tuple, list[dict]] = {}
    for r in done:
        if r["id"] in group_of:
            siblings.setdefault(group_of[r["id"]], []).append(r)
    lines = []
    for r in done:
        if r.get("stop_reason") != "converged" or r["id"] not in lowest:
            continue
        group = siblings[group_of[r["id"]]]
        best = min((s for s in group if s is not r), key=lambda s: lowest[s["id"]], default=None)
        if best is not None and lowest[r["id"]] > lowest[best["id"]] + rules[r["id"]].loss_tolerance:
            lines.append(
                f"- {md(r['task'])}/{md(r['model'])}/seed {r['seed']} (converged after {r['examples_seen']} examples, "
                f"kept validation exact match {100 * r.get('best_val_seq_acc', 0):.1f}%): lowest validation loss "
                f"{lowest[r['id']]:.4f}; seed {best['seed']} ({md(best.get('stop_reason'))} after "
                f"{best['examples_seen']} examples, {100 * best.get('best_val_seq_acc', 0):.1f}%) reached "
                f"{lowest[best['id']]:.4f}"
            )
    if not lines:
        return []
    return [
        "",
        f"**Converged behind a sibling seed** ({len(lines)}): no gain over the last stretch, but another seed of the "
        "same model and setting reached a validation loss lower by more than the loss tolerance: the rule may have "
        "stopped this one on a plateau that the model can leave, and its numbers may be those of a stalled run:",
        "",
        *lines,
    ]


def _stopped(record: dict) -> str | None:
    """Why a cell stopped, as the cells table says it: its record's stop reason, "converged at the
    floor" for a cell called converged with its learning rate at the schedule's floor (the schedule,
    not the model, may have ended its learning), or the error of a failed cell."""
    reason = record.get("stop_reason", record.get("error"))
    cfg = record.get("train_config") or {}
    if reason == "converged" and "loss_tolerance" in cfg:
        if StoppingRule.from_config(cfg).at_floor(record.get("stop_learning_rate")):
            return "converged at the floor"
    return reason


def _cells_table(records: list[dict]) -> list[str]:
    """The table of cells: each cell's size, why and whether its training stopped, how far it
    got, how much its last stretch still moved, and where its time went; then the failed cells."""
    lines = [
        "| task | model | seed | parameters | stopped | converged | examples seen | best val exact match | "
        "last stretch: val loss fall (nats/char) / exact-match rise, points (at the length or band furthest above its "
        "threshold) | learning rate at the stop | wall time (s) | "
        "update steps / compilation / validation / test decoding (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    series = series_names(records)
    for r in records:
        converged = {True: "yes", False: "**no**"}.get(r.get("converged"), "-")
        t = r.get("seconds") if isinstance(r.get("seconds"), dict) else None
        split = (
            " / ".join(f"{t.get(k, 0):.0f}" for k in ("train_steps", "first_update", "validation", "test_decoding"))
            if t
            else "-"
        )
        stretch = r.get("last_stretch") or {}
        moved = (
            f"{stretch['val_loss']:.4f} / {100 * stretch['val_seq_acc_by_length']:+.1f} ({_band(stretch)}{_threshold(stretch, '; ')})"
            if {"val_loss", "val_seq_acc_by_length", "length"} <= set(stretch)
            else "-"
        )
        rate = f"{r['stop_learning_rate']:.2g}" if isinstance(r.get("stop_learning_rate"), (int, float)) else "-"
        lines.append(
            f"| {md(r['task'])} | {md(series[r['id']])} | {r['seed']} | {r.get('param_count', '?')} | "
            f"{md(_stopped(r))} | {converged} | "
            f"{r.get('examples_seen', '?')} | {100 * r.get('best_val_seq_acc', 0):.1f}% | {moved} | {rate} | {r.get('wall_seconds', 0):.0f} | {split} |"
        )
    failed = [r for r in records if r["status"] != "ok"]
    if failed:
        lines += ["", f"**{len(failed)} failed cells** (shown as missing in tables and figures):", ""]
        lines += [f"- {md(r['task'])}/{md(r['model'])}/seed {r['seed']}: {md(r.get('error'))}" for r in failed]
    return lines


def _configuration_lines(records: list[dict], first: dict) -> list[str]:
    """The report's "Configuration": the backend, device and versions of the `first` cell that
    ran, the summed wall time of all cells, and the first cell's configuration as JSON."""
    total = sum(r.get("wall_seconds", 0) for r in records)
    return [
        "",
        "## Configuration",
        "",
        f"Backend {first['backend']} on {first.get('device', 'unknown device')}; versions: "
        + ", ".join(f"{k} {v}" for k, v in first.get("versions", {}).items())
        + ".",
        f"Summed cell wall time: {total / 60:.1f} min.",
        "",
        "```json",
        json.dumps(first["config"], indent=1),
        "```",
        "",
    ]
