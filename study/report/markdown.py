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

from study.report.statistics import COMPARISON_METHOD, DIFFERENCE_METHOD, INTERVAL_CENTRE, INTERVAL_METHOD
from study.report.tables import SETTING_FIELDS, distinct_test_items, series_names, setting_key
from study.text import markdown_cell as md


def _seed_range(need: pd.Series) -> str:
    """'51 seeds', or '6-51 seeds (median 12)' for several comparisons."""
    low, high = int(need.min()), int(need.max())
    return f"{low} seeds" if low == high else f"{low}-{high} seeds (median {int(need.median())})"


def trained_on(lo: int, hi: int, unit: str | None = None) -> str:
    """'trained on 1..4 dates' in a task's own unit (a record's `length_unit`), or 'trained on
    lengths 4..32' when the unit is not known."""
    return f"trained on {lo}..{hi} {unit}" if unit else f"trained on lengths {lo}..{hi}"


def length_units(records: list[dict]) -> dict[str, str]:
    """Each task's unit of length ('symbols', 'dates'), as its records name it."""
    return {r["task"]: r["length_unit"] for r in records if r.get("length_unit")}


def comparisons_markdown(comparisons: pd.DataFrame, units: dict[str, str] | None = None) -> str:
    """One table per task, setting and training range: a row per pair of models, a column per
    length (* marks trained lengths), each cell the mean difference in points and the corrected
    p-value, in bold where the pair is separated; then how many comparisons separate and how many
    seeds the others would need.  `units`: each task's unit of length (`length_units`)."""
    if comparisons.empty:
        return ""
    parts = [
        f"Every pair of models at every length ({COMPARISON_METHOD}). A cell gives the first model's exact match minus the "
        f"second's, in points (mean over seeds), and the corrected p; bold: separated. {int(comparisons['separated'].sum())} of "
        f"{len(comparisons)} comparisons are separated; * = inside the trained range.",
        "",
    ]
    for (task, setting, lo, hi), group in comparisons.groupby(
        ["task", "setting", "train_min", "train_max"], sort=False
    ):
        lengths = sorted(group["length"].unique())
        lines = [
            f"#### {md(task)} ({trained_on(lo, hi, (units or {}).get(task))})",
            "",
            "| first - second | " + " | ".join(f"{L}{'*' if lo <= L <= hi else ''}" for L in lengths) + " |",
            "|---" * (len(lengths) + 1) + "|",
        ]
        for (a, b), rows in group.groupby(["first", "second"], sort=False):
            by_length = rows.set_index("length")
            cells = []
            for L in lengths:
                if L not in by_length.index or math.isnan(by_length.loc[L, "diff_mean"]):
                    cells.append("n/a")
                    continue
                r = by_length.loc[L]
                diff = f"{round(100 * r['diff_mean'], 1) + 0.0:+.1f}"  # + 0.0: no "-0.0"
                text = f"{diff} (p {r['p_holm']:.2g})" if not math.isnan(r["p_holm"]) else diff
                cells.append(f"**{text}**" if r["separated"] else text)
            lines.append(f"| {md(a)} - {md(b)} | " + " | ".join(cells) + " |")
        open_pairs = group[~group["separated"] & group["in_training_range"] & group["seeds_needed"].notna()]
        if len(open_pairs):
            need = open_pairs["seeds_needed"]
            lines += [
                "",
                f"Not separated inside the trained range: {len(open_pairs)} comparison{'s' if len(open_pairs) != 1 else ''} "
                "with a nonzero spread; at their observed "
                f"mean and spread a paired t-test would need {_seed_range(need)} "
                "to separate them with 80% power at 5% before correction.",
            ]
        parts += lines + [""]
    return "\n".join(parts)


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
) -> list[str]:
    """Markdown rows: one per model with the seeds behind it, one column per length (* marks
    trained lengths), each cell 'mean [low, high]' in percent from the columns `<prefix>_mean`,
    `_ci_low`, `_ci_high` ('mean' alone without `interval`, or for a one-seed row with
    `signed`, whose interval holds sampling error only and is still shown); with `spread`,
    'mean (lowest-highest seed) [low, high]' from `_min` and `_max` too."""
    pattern = "{:+.1f} [{:+.1f}, {:+.1f}]" if signed else "{:.1f} [{:.1f}, {:.1f}]"
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
            parts = ("mean", "ci_low", "ci_high") if interval else ("mean",)
            values = [round(100 * by_length.loc[L, f"{prefix}_{part}"], 1) + 0.0 for part in parts]  # + 0.0: no "-0.0"
            cell = pattern.format(*values) if interval else f"{values[0]:.1f}"
            if spread and by_length.loc[L, "seeds"] > 1:  # every seed visible: the lowest and highest
                low, high = (100 * by_length.loc[L, f"{prefix}_{part}"] for part in ("min", "max"))
                cell = cell.replace(" [", f" ({low:.1f}-{high:.1f}) [", 1)
            cells.append(cell)
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
            f"### {md(task)} ({trained_on(lo, hi, units.get(task))}{label}; exact match %, mean [95% interval] over seeds)",
            "",
        ]
        lines += _length_table(group, lengths, lo, hi, "seq_acc", signed=False, missing="failed", spread=True)
        lines += [
            "",
            f"Mean over seeds (lowest-highest seed) [95% interval]; {_examples_note(group, distinct)}; {INTERVAL_METHOD}; {INTERVAL_CENTRE}; "
            "* = inside the trained range.",
            "",
        ]
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
                    f"Difference from `none` in exact match (percentage points, mean over seeds, paired by seed; {DIFFERENCE_METHOD}):",
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


CONVERGED_DEFINITION = (
    "A cell converged when validation exact match reached the target, or when over the last {patience} training "
    "examples neither its validation loss fell by more than {loss} nats per character nor its validation exact match "
    "at any training length rose by more than {acc:g} points, at a learning rate that only a plateau lowers; "
    "a cell that reached the {budget}-example budget did not converge."
)


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
    lines = [
        CONVERGED_DEFINITION.format(
            patience=cfg.get("patience_examples", "?"),
            loss=cfg.get("loss_tolerance", "?"),
            acc=100 * cfg.get("accuracy_tolerance", 0),
            budget=cfg.get("max_examples", "?"),
        ),
        "",
        f"{len(done) - len(open_cells)} of {len(done)} cells converged.",
    ]
    learning = [r for r in open_cells if r.get("last_stretch")]
    short = [r for r in open_cells if not r.get("last_stretch")]
    if learning:
        lines += [
            "",
            f"**Not converged** ({len(learning)}): stopped by the budget while still learning; their numbers are likely a lower bound.",
            "",
        ]
        for r in learning:
            stretch = r["last_stretch"]
            lines.append(
                f"- {md(r['task'])}/{md(r['model'])}/seed {r['seed']}: validation loss fell {stretch['val_loss']:.3f} nats per character "
                f"and exact match at length {stretch['length']} rose {100 * stretch['val_seq_acc_by_length']:.1f} points over the last "
                f"stretch, learning rate {r.get('stop_learning_rate', 0):.2g}"
            )
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
) -> str:
    first = next((r for r in records if r["status"] == "ok"), records[0])  # failed cells may lack device details
    config = first["config"]
    failed = [r for r in records if r["status"] != "ok"]
    lines = [
        f"# Sequence-length study: {first['profile']} profile",
        "",
        "Exact match is measured by greedy decoding of each model's own outputs on held-out test sets, one per length.",
        "",
        *_provenance(manifest, len(records)),
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
    lines += [
        "| task | model | seed | parameters | stopped | converged | examples seen | best val exact match | "
        "last stretch: val loss fall (nats/char) / largest exact-match rise (at length) | learning rate at the stop | wall time (s) | "
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
            f"{stretch['val_loss']:.4f} / {100 * stretch['val_seq_acc_by_length']:+.1f} ({stretch['length']})"
            if {"val_loss", "val_seq_acc_by_length", "length"} <= set(stretch)
            else "-"
        )
        rate = f"{r['stop_learning_rate']:.2g}" if isinstance(r.get("stop_learning_rate"), (int, float)) else "-"
        lines.append(
            f"| {md(r['task'])} | {md(series[r['id']])} | {r['seed']} | {r.get('param_count', '?')} | "
            f"{md(r.get('stop_reason', r.get('error')))} | {converged} | "
            f"{r.get('examples_seen', '?')} | {100 * r.get('best_val_seq_acc', 0):.1f}% | {moved} | {rate} | {r.get('wall_seconds', 0):.0f} | {split} |"
        )
    if failed:
        lines += ["", f"**{len(failed)} failed cells** (shown as missing in tables and figures):", ""]
        lines += [f"- {md(r['task'])}/{md(r['model'])}/seed {r['seed']}: {md(r.get('error'))}" for r in failed]
    total = sum(r.get("wall_seconds", 0) for r in records)
    lines += [
        "",
        "## Configuration",
        "",
        f"Backend {first['backend']} on {first.get('device', 'unknown device')}; versions: "
        + ", ".join(f"{k} {v}" for k, v in first.get("versions", {}).items())
        + ".",
        f"Summed cell wall time: {total / 60:.1f} min.",
        "",
        "```json",
        json.dumps(config, indent=1),
        "```",
        "",
    ]
    return "\n".join(lines)
