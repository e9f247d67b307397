"""The study's records as tidy pandas tables: one row per cell and length, summaries per
setting, paired differences and comparisons between models, and per-unit accuracy.

    metrics = metrics_frame(load_records(out))   # one row per cell x evaluation length
    summary = summary_frame(metrics)             # per task x setting x model x length, with intervals
    comparisons = comparison_frame(metrics)      # every pair of models by family, Holm-corrected per family

Rows of different settings (`setting_key`) are never averaged together; the
statistics are `study.report.statistics`'.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from study.config import EACH_OTHER, STANDARD_FAMILIES
from study.models import MODEL_ORDER  # models in tables and figures: their registration order
from study.report.statistics import accuracy_interval, difference_bounds, paired_test
from study.results import DISTINCT_ITEMS, in_training_range, json_digest


def series_names(records: list[dict]) -> dict[str, str]:
    """Record id -> the name its line, bar or panel carries in the figures: the model, or, for a
    task run under several settings, the model and its setting (the config file's variant name,
    else the setting's hash), so that figures keep apart what the tables keep apart."""
    settings: dict[str, set] = {}
    for r in records:
        settings.setdefault(r["task"], set()).add(setting_key(r))
    names = {}
    for r in records:
        variant = (r.get("config") or {}).get("variant")
        names[r["id"]] = (
            r["model"] if len(settings[r["task"]]) == 1 else f"{r['model']} · {variant or 'setting ' + setting_key(r)}"
        )
    return names


def metrics_frame(records: list[dict]) -> pd.DataFrame:
    """One row per (cell, evaluation length); failed cells appear with NaN accuracies; `series`
    names the cell's model (and setting, `series_names`) as the figures show it."""
    rows = []
    series = series_names(records)
    for r in records:
        base = {
            "task": r["task"],
            "task_version": r["task_version"],
            "task_data": " ".join(f"{k}={v}" for k, v in sorted((r.get("task_data") or {}).items())),
            "model": r["model"],
            "attention": r["attention"],
            "seed": r["seed"],
            "regime": r["regime"],
            "train_min": min(r["train_lengths"]),
            "train_max": max(r["train_lengths"]),
            "cell_id": r["id"],
            "status": r["status"],
            "stop_reason": r.get("stop_reason"),
            "converged": r.get("converged"),
            "examples_seen": r.get("examples_seen"),
            "param_count": r.get("param_count"),
            "backend": r["backend"],
            "setting": setting_key(r),
            "series": series[r["id"]],
        }
        if r["status"] != "ok":
            for length in r["eval_lengths"]:
                rows.append(
                    {
                        **base,
                        "length": length,
                        "in_training_range": in_training_range(length, r["train_lengths"]),
                        "seq_acc": math.nan,
                        "char_acc": math.nan,
                    }
                )
            continue
        for m in r["metrics"]:
            rows.append(
                {
                    **base,
                    "length": m["length"],
                    "in_training_range": m["in_training_range"],
                    "n_examples": m["n_examples"],
                    "seq_acc": m["seq_acc"],
                    "char_acc": m["char_acc"],
                    **{
                        c: m.get(c, math.nan)
                        for c in ("oracle_seq_acc", "length_acc", "too_short", "too_long", "mean_prediction_length")
                    },
                    "mean_source_tokens": m["mean_source_tokens"],
                    "mean_target_tokens": m["mean_target_tokens"],
                }
            )
    frame = pd.DataFrame(rows)
    return frame.sort_values(["task", "model", "train_max", "seed", "length"], key=model_sort_key).reset_index(
        drop=True
    )


def model_sort_key(column: pd.Series) -> pd.Series:
    if column.name == "model":
        return column.map(lambda m: (MODEL_ORDER.index(m) if m in MODEL_ORDER else len(MODEL_ORDER), m))
    return column


SETTING_FIELDS = (
    "task",
    "task_version",
    "task_options",
    "task_data",
    "regime",
    "train_lengths",
    "eval_lengths",
    "train_config",
    "n_test",
    "backend",
)


def setting_key(record: dict) -> str:
    """What defines a cell besides its seed and model, as a short hash ("s" and 8 hex digits, the
    letter first so that no CSV reader or spreadsheet takes it for a number: "6e196681" reads as
    infinity): rows of one setting are compared; different settings are never averaged together.
    The model sizes are the study's `[model]` table (the RNN sizes always, another family's
    settings where they differ from their defaults), so the models of different families in one
    study share a setting, whichever families it ran."""
    fields = {f: record.get(f) for f in SETTING_FIELDS}
    fields["model_size"] = model_sizes(record)
    return "s" + json_digest(fields, 8)


RNN_SIZES = ("embedding_dim", "units", "attention_size")


def model_sizes(record: dict) -> dict:
    """The sizes that enter `setting_key`: of the study's `[model]` table (or, in records that
    lack it, the cell's own model settings), the RNN sizes and every other setting that differs
    from its family's default; the cell and direction of an RNN are its model's, not the setting's."""
    from study.models import available_models, model_settings_table

    defaults = model_settings_table(available_models())
    table = (record.get("config") or {}).get("model") or record.get("model_config") or {}
    return {
        k: v
        for k, v in table.items()
        if k not in ("cell", "bidirectional") and (k in RNN_SIZES or k not in defaults or v != defaults[k])
    }


def summary_frame(metrics: pd.DataFrame) -> pd.DataFrame:
    """Per task x setting x model x (training range) x length: the seeds behind the row, mean
    exact match, the lowest and highest seed's, its 95% interval (`accuracy_interval`), and the
    means of the diagnostics."""
    keys = ["task", "setting", "model", "series", "train_min", "train_max", "length", "in_training_range"]
    rows = []
    for key, group in metrics.groupby(keys, sort=False):
        n = group["n_examples"] if "n_examples" in group else pd.Series(np.nan, index=group.index)
        mean, lo, hi = accuracy_interval(group["seq_acc"], n)
        extra = {
            f"{c}_mean": float(group[c].mean()) if c in group and group[c].notna().any() else math.nan
            for c in ("oracle_seq_acc", "length_acc", "char_acc")
        }
        rows.append(
            {
                **dict(zip(keys, key)),
                "seeds": int(group["seq_acc"].notna().sum()),
                "n_examples": n.max(),
                "seq_acc_mean": mean,
                "seq_acc_min": group["seq_acc"].min(),
                "seq_acc_max": group["seq_acc"].max(),
                "seq_acc_ci_low": lo,
                "seq_acc_ci_high": hi,
                **extra,
            }
        )
    return pd.DataFrame(rows)


def family_of(first: str, second: str, in_range: bool, families) -> int | None:
    """The index of the first family in `families` (`study.config.ComparisonFamily`) that the
    pair (first, second) at a length inside (`in_range`) or beyond the trained range fits; None
    when it fits none."""
    named = {f.against for f in families if f.against != EACH_OTHER}
    for i, family in enumerate(families):
        if family.lengths != "all" and (family.lengths == "trained") != bool(in_range):
            continue
        if family.against == EACH_OTHER:
            if first not in named and second not in named:
                return i
        elif family.against in (first, second) and first != second:
            return i
    return None


def comparison_frame(metrics: pd.DataFrame, families=STANDARD_FAMILIES, alpha: float = 0.05) -> pd.DataFrame:
    """Every pair of models (`series`) of a task, setting and training range, at every length,
    compared over seeds (`paired_test`, `COMPARISON_METHOD`) and assigned to its family
    (`family_of`; a pair against a family's `against` model is written model - that model).

    Columns: the keys, `first`, `second`, `family` (its name; "" for none), `primary`, `seeds`,
    `diff_mean` (first - second, mean over seeds), `diff_min`, `diff_max`, `seed_differences`
    (each seed's, space-separated), `p`, `p_holm` (Holm-corrected within its family), `level`
    (the family's interval level) with `diff_ci_low`, `diff_ci_high`, and `separated`.

    Each family is corrected on its own with Holm's method at `alpha`; its intervals are at
    1 - alpha / (m - R) (m tests, R of them separated: the level at which Holm's procedure
    stopped), so a pair is separated exactly when its interval excludes 0 (the intervals of
    separated pairs are at the level of the step that failed, not simultaneous for them)."""
    import itertools

    from statsmodels.stats.multitest import multipletests

    keys = ["task", "setting", "train_min", "train_max", "length", "in_training_range"]
    rows = []
    for key, group in metrics.groupby(keys, sort=False):
        by_model = group.pivot_table(index="seed", columns="series", values="seq_acc", aggfunc="first", dropna=False)
        counts = (
            group.pivot_table(index="seed", columns="series", values="n_examples", aggfunc="first", dropna=False)
            if "n_examples" in group
            else by_model * np.nan  # only failed cells: nothing to compare
        )
        order = [m for m in dict.fromkeys(group["series"]) if m in by_model.columns]
        model_of = dict(zip(group["series"], group.get("model", group["series"])))  # "model" or "model · variant"
        for a, b in itertools.combinations(order, 2):
            index = family_of(model_of[a], model_of[b], key[-1], families)
            family = families[index] if index is not None else None
            if family is not None and family.against == model_of[a]:
                a, b = b, a  # the model against the family's reference
            test = paired_test(by_model[a], by_model[b], counts[a].fillna(counts[b]))
            d = np.asarray(test["differences"])
            rows.append(
                {
                    **dict(zip(keys, key)),
                    "first": a,
                    "second": b,
                    "second_model": model_of[b],
                    "family": family.name if family else "",
                    "primary": bool(family and family.primary),
                    "seeds": test["seeds"],
                    "diff_mean": test["mean"],
                    "diff_min": d.min() if len(d) else math.nan,
                    "diff_max": d.max() if len(d) else math.nan,
                    "seed_differences": " ".join(f"{x:.4f}" for x in d),
                    "p": test["p"],
                    "_test": test,
                }
            )
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    frame["p_holm"], frame["level"] = math.nan, math.nan
    for name, group in frame[(frame["family"] != "") & frame["p"].notna()].groupby("family", sort=False):
        frame.loc[group.index, "p_holm"] = multipletests(group["p"], alpha=alpha, method="holm")[1]
        rejected = int((frame.loc[group.index, "p_holm"] < alpha).sum())
        frame.loc[group.index, "level"] = 1 - alpha / max(1, len(group) - rejected)
    bounds = [
        difference_bounds(r["_test"], 1 - r["level"]) if not math.isnan(r["level"]) else (math.nan, math.nan)
        for _, r in frame.iterrows()
    ]
    frame["diff_ci_low"], frame["diff_ci_high"] = [b[0] for b in bounds], [b[1] for b in bounds]
    frame["separated"] = frame["p_holm"] < alpha
    return frame.drop(columns="_test")


def difference_frame(comparisons: pd.DataFrame, baseline: str = "none") -> pd.DataFrame:
    """Per task x setting x training range x length x model: exact match minus the `baseline`
    model's (paired by seed), from `comparison_frame`'s rows against the baseline, with the
    interval of each comparison's family (its level differs between families)."""
    if comparisons.empty:
        return pd.DataFrame()
    rows = comparisons[(comparisons["second_model"] == baseline) & (comparisons["family"] != "")]
    return rows.rename(columns={"first": "model"})[
        [
            "task",
            "setting",
            "train_min",
            "train_max",
            "length",
            "model",
            "seeds",
            "diff_mean",
            "diff_ci_low",
            "diff_ci_high",
        ]
    ].reset_index(drop=True)


def output_shape(record: dict) -> tuple[float | None, int | None]:
    """(chance, unit width) of the record's task: 1 / the size of its output alphabet (a uniform
    guess per position) and its `output_unit_width`; (None, None) when the task cannot be built
    here (a plugin not loaded)."""
    from study.tasks import get_task

    try:
        task = get_task(record["task"], **record.get("task_options", {}))
    except Exception:  # noqa: BLE001 - a task that cannot be rebuilt only loses these marks
        return None, None
    return 1 / len(task.output_alphabet), getattr(task, "output_unit_width", None)


def unit_frame(records: list[dict]) -> pd.DataFrame:
    """Per-unit accuracy for tasks whose output comes in units of a fixed width (a task's
    `output_unit_width`, separator included; on date_format one unit is one date, 11 characters):
    one row per cell x evaluation length x unit k = 1..length, with `char_acc` the mean of the
    per-position character accuracy over the unit's positions (fraction) and `units_written`
    the mean prediction length in units ((characters + 1) / width, the last unit having no
    separator). Empty when no task has a unit width. Built from the records' `position_acc`."""
    rows = []
    series = series_names(records)
    widths: dict[str, int | None] = {}
    for r in records:
        if r["status"] != "ok":
            continue
        width = widths.setdefault(r["task"], output_shape(r)[1])
        if not width or width < 2:
            continue
        for m in r["metrics"]:
            position = m.get("position_acc") or []
            for k in range(m["length"]):
                unit = position[k * width : (k + 1) * width]
                if unit:
                    rows.append(
                        {
                            "task": r["task"],
                            "model": series[r["id"]],
                            "seed": r["seed"],
                            "length": m["length"],
                            "in_training_range": m["in_training_range"],
                            "unit": k + 1,
                            "char_acc": float(np.mean(unit)),
                            "units_written": (m["mean_prediction_length"] + 1) / width,
                        }
                    )
    return pd.DataFrame(rows)


def distinct_test_items(records: list[dict]) -> bool:
    """Whether every record's test sets hold distinct sources (records made before that was so
    drew them with replacement and lack `test_items`)."""
    finished = [r for r in records if r.get("status") == "ok"]
    return bool(finished) and all(r.get("test_items") == DISTINCT_ITEMS for r in finished)
