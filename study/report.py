"""Tables, figures and report.md, drawn from the results files only.

    write_report(Path("results/standard"))   # reads study.json + cells/*.json, writes:
      metrics.csv            one row per cell x evaluation length (tidy: pandas/seaborn ready)
      summary.csv/.md        mean exact match per task x setting x model x length, its lowest and highest
                             seed and its 95% interval (INTERVAL_METHOD), the oracle-length and
                             right-length diagnostics; summary.md adds each attention model's
                             difference from `none`, paired by seed
      comparisons.csv        every pair of models at every length: paired t-test over seeds,
                             Holm-corrected (COMPARISON_METHOD), and the seeds a separation would need
      figures/accuracy_vs_length.{png,svg}   one panel per task, one line per model, trained range shaded;
                                             a second row with the oracle-length exact match
      figures/position_accuracy.{png,svg}    accuracy per output position at the longest trained length
      figures/attention_maps.{png,svg}       one test example's weights per task x attention model
      figures/training_curves.{png,svg}      validation exact-match vs examples seen
      report.md                              all of the above with the configuration

Nothing here reads in-memory state of a run, so a report can be redrawn at any
time without retraining: `python run_study.py report results/standard`.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from study.files import json_digest
from study.fonts import add_marks_note, character_ticks, readable, use_fonts
from study.records import NoResultsError, in_training_range, load_records, read_manifest  # noqa: F401  (NoResultsError: part of the report's surface)
from study.text import markdown_cell as md

CONFIDENCE = 0.95
MODEL_ORDER = ["none", "none_context", "additive", "dot", "general"]


def series_names(records: list[dict]) -> dict[str, str]:
    """Record id -> the name its line, bar or panel carries in the figures: the model, or, for a
    task run under several settings, the model and its setting (the config file's variant name,
    else the setting's hash), so that figures keep apart what the tables keep apart."""
    settings: dict[str, set] = {}
    for r in records:
        settings.setdefault(r["task"], set()).add(_setting(r))
    names = {}
    for r in records:
        variant = (r.get("config") or {}).get("variant")
        names[r["id"]] = r["model"] if len(settings[r["task"]]) == 1 else f"{r['model']} · {variant or 'setting ' + _setting(r)}"
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
            "setting": _setting(r),
            "series": series[r["id"]],
        }
        if r["status"] != "ok":
            for length in r["eval_lengths"]:
                rows.append({**base, "length": length, "in_training_range": in_training_range(length, r["train_lengths"]), "seq_acc": math.nan, "char_acc": math.nan})
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
                    **{c: m.get(c, math.nan) for c in ("oracle_seq_acc", "length_acc", "too_short", "too_long", "mean_prediction_length")},
                    "mean_source_tokens": m["mean_source_tokens"],
                    "mean_target_tokens": m["mean_target_tokens"],
                }
            )
    frame = pd.DataFrame(rows)
    return frame.sort_values(["task", "model", "train_max", "seed", "length"], key=_model_sort_key).reset_index(drop=True)


def _model_sort_key(column: pd.Series) -> pd.Series:
    if column.name == "model":
        return column.map(lambda m: (MODEL_ORDER.index(m) if m in MODEL_ORDER else len(MODEL_ORDER), m))
    return column


INTERVAL_METHOD = (
    "95% interval: Student-t over seeds on the logit scale, its half-width at least the test-set sampling error "
    "(binomial, delta method), joined with the Clopper-Pearson interval of the pooled counts; one seed: Clopper-Pearson only"
)
INTERVAL_CENTRE = ("the interval contains the printed mean but is not centred on it: its centre is the seeds' mean logit, "
                   "which one seed near 0 or 100 pulls towards itself when the seeds disagree; read such a row by its seeds")
DIFFERENCE_METHOD = (
    "95% interval: Student-t over the per-seed differences on the logit scale of (difference + 1) / 2, its half-width "
    "at least the test-set sampling error of both models; one seed: that sampling error only"
)


def _logit_t(q: np.ndarray, v: np.ndarray) -> tuple[float, float]:
    """95% interval in (0, 1) for the centre of proportions q (per seed, inside (0, 1)) whose
    logits have test-set sampling variance v: a Student-t interval over seeds on the logit
    scale, its half-width never below the sampling error alone (normal quantile), mapped back."""
    from scipy import stats
    from scipy.special import expit, logit

    x = logit(q)
    m = len(x)
    sampling = stats.norm.ppf(0.5 + CONFIDENCE / 2) * math.sqrt(float(np.mean(v)) / m)
    spread = stats.t.ppf(0.5 + CONFIDENCE / 2, m - 1) * float(np.std(x, ddof=1)) / math.sqrt(m) if m > 1 else 0.0
    half = max(spread, sampling)
    return float(expit(x.mean() - half)), float(expit(x.mean() + half))


def accuracy_interval(accuracies, n_examples) -> tuple[float, float, float]:
    """Mean accuracy over seeds and its 95% interval (`INTERVAL_METHOD`), inside [0, 1] by
    construction.  accuracies, n_examples: per seed (NaN: a failed cell, dropped).

    Its coverage holds (92-100% in simulation) for seeds spread around one value; for seeds
    that either work or fail it cannot: a study whose m seeds all land on one side (probability
    (1 - q)^m + q^m when a share q fail) misses the mixture's mean, so read such rows by their
    seeds (the tables' lowest and highest)."""
    from scipy import stats

    p = np.asarray(accuracies, dtype=float)
    n = np.broadcast_to(np.asarray(n_examples, dtype=float), p.shape)
    keep = ~np.isnan(p) & ~np.isnan(n)
    p, n = p[keep], n[keep]
    if len(p) == 0:
        return math.nan, math.nan, math.nan
    k = np.round(p * n)
    total, trials = k.sum(), n.sum()
    alpha = 1 - CONFIDENCE
    lo = 0.0 if total == 0 else float(stats.beta.ppf(alpha / 2, total, trials - total + 1))
    hi = 1.0 if total == trials else float(stats.beta.ppf(1 - alpha / 2, total + 1, trials - total))
    if len(p) > 1:
        t_lo, t_hi = _logit_t((k + 0.5) / (n + 1), 1 / (k + 0.5) + 1 / (n - k + 0.5))
        lo, hi = min(lo, t_lo), max(hi, t_hi)
    return float(p.mean()), lo, hi


def difference_interval(model_acc, baseline_acc, n_examples) -> tuple[float, float, float]:
    """Mean per-seed difference model - baseline (paired by seed) and its 95% interval
    (`DIFFERENCE_METHOD`), inside [-1, 1] by construction."""
    a, b = np.asarray(model_acc, dtype=float), np.asarray(baseline_acc, dtype=float)
    n = np.broadcast_to(np.asarray(n_examples, dtype=float), a.shape)
    keep = ~np.isnan(a) & ~np.isnan(b) & ~np.isnan(n)
    a, b, n = a[keep], b[keep], n[keep]
    if len(a) == 0:
        return math.nan, math.nan, math.nan
    q = ((a - b + 1) / 2 * n + 0.5) / (n + 1)  # the difference as a proportion, kept off 0 and 1
    sampling = (np.maximum(a * (1 - a), 0.25 / n) + np.maximum(b * (1 - b), 0.25 / n)) / n  # variance of a - b
    lo, hi = _logit_t(q, sampling / 4 / (q * (1 - q)) ** 2)  # delta method: d logit(q) / d(a - b) = 1 / (2 q (1 - q))
    return float((a - b).mean()), 2 * lo - 1, 2 * hi - 1


SETTING_FIELDS = ("task", "task_version", "task_options", "task_data", "regime", "train_lengths", "eval_lengths", "train_config", "n_test", "backend")


def _setting(record: dict) -> str:
    """What defines a cell besides its seed and model, as a short hash ("s" and 8 hex digits, the
    letter first so that no CSV reader or spreadsheet takes it for a number: "6e196681" reads as
    infinity): rows of one setting are compared; different settings are never averaged together."""
    fields = {f: record.get(f) for f in SETTING_FIELDS}
    fields["model_size"] = {k: v for k, v in (record.get("model_config") or {}).items() if k not in ("cell", "bidirectional")}
    return "s" + json_digest(fields, 8)


def summary_frame(metrics: pd.DataFrame) -> pd.DataFrame:
    """Per task x setting x model x (training range) x length: the seeds behind the row, mean
    exact match, the lowest and highest seed's, its 95% interval (`accuracy_interval`), and the
    means of the diagnostics."""
    keys = ["task", "setting", "model", "series", "train_min", "train_max", "length", "in_training_range"]
    rows = []
    for key, group in metrics.groupby(keys, sort=False):
        n = group["n_examples"] if "n_examples" in group else pd.Series(np.nan, index=group.index)
        mean, lo, hi = accuracy_interval(group["seq_acc"], n)
        extra = {f"{c}_mean": float(group[c].mean()) if c in group and group[c].notna().any() else math.nan for c in ("oracle_seq_acc", "length_acc", "char_acc")}
        rows.append({**dict(zip(keys, key)), "seeds": int(group["seq_acc"].notna().sum()), "n_examples": n.max(),
                     "seq_acc_mean": mean, "seq_acc_min": group["seq_acc"].min(), "seq_acc_max": group["seq_acc"].max(),
                     "seq_acc_ci_low": lo, "seq_acc_ci_high": hi, **extra})
    return pd.DataFrame(rows)


def difference_frame(metrics: pd.DataFrame, baseline: str = "none") -> pd.DataFrame:
    """Per task x setting x training range x length x model: exact match minus the `baseline`
    model's, paired by seed (same data), with its mean and 95% interval (`difference_interval`)."""
    keys = ["task", "setting", "train_min", "train_max", "length"]
    rows = []
    for key, group in metrics.groupby(keys, sort=False):
        by_model = group.pivot_table(index="seed", columns="model", values="seq_acc", aggfunc="first", dropna=False)
        if baseline not in by_model.columns:
            continue
        n = group.groupby("seed")["n_examples"].max().reindex(by_model.index) if "n_examples" in group else pd.Series(np.nan, index=by_model.index)
        for model in by_model.columns:
            if model == baseline:
                continue
            mean, lo, hi = difference_interval(by_model[model], by_model[baseline], n)
            seeds = int((by_model[model].notna() & by_model[baseline].notna()).sum())
            rows.append({**dict(zip(keys, key)), "model": model, "seeds": seeds, "diff_mean": mean, "diff_ci_low": lo, "diff_ci_high": hi})
    return pd.DataFrame(rows)


COMPARISON_METHOD = ("paired t-test over seeds of the per-seed differences in exact match (each seed's models share its data and "
                     "test set), two-sided, their spread at least the test-set sampling error of a difference; p-values corrected for multiplicity by Holm's method over every comparison of the report; "
                     "a pair is separated when its corrected p is below 0.05")


SEED_COUNTS = np.arange(2, 100_001)  # the seed counts `comparison_frame` considers for a separation


def seeds_needed(effect_size: float) -> float:
    """The fewest seeds in `SEED_COUNTS` at which a two-sided paired t-test at 5% separates a
    mean difference of `effect_size` standard deviations with 80% power (statsmodels'
    `TTestPower`); NaN when not even the most seeds reach it.  The counts are tried in blocks of
    ten times the last (2-99, 100-999, ...), so a difference that a few seeds separate costs
    a hundred power evaluations, not 100,000."""
    from statsmodels.stats.power import TTestPower

    start = 0
    while start < len(SEED_COUNTS):
        block = SEED_COUNTS[start: np.searchsorted(SEED_COUNTS, max(100, 10 * SEED_COUNTS[start]))]
        enough = np.flatnonzero(TTestPower().power(effect_size=effect_size, nobs=block, alpha=0.05, alternative="two-sided") >= 0.8)
        if len(enough):
            return int(block[enough[0]])
        start += len(block)
    return math.nan


def comparison_frame(metrics: pd.DataFrame) -> pd.DataFrame:
    """Every pair of models (`series`) of a task, setting and training range, at every length:
    the mean, lowest and highest per-seed difference in exact match (first minus second, paired
    by seed), the paired t-test's p-value (the differences' standard deviation never below the
    binomial sampling error of one seed's difference, so seeds that agree to the example are not
    certainty), its Holm-corrected value over all rows
    (`COMPARISON_METHOD`), whether the pair is separated, and `seeds_needed`: the seeds a paired
    t-test would need to separate a difference of the observed mean and spread with 80% power
    at 5% (two-sided, before correction; NaN when the mean difference is 0, or
    beyond 100,000 seeds)."""
    import itertools

    from scipy import stats
    from statsmodels.stats.multitest import multipletests

    keys = ["task", "setting", "train_min", "train_max", "length", "in_training_range"]
    rows = []
    for key, group in metrics.groupby(keys, sort=False):
        by_model = group.pivot_table(index="seed", columns="series", values="seq_acc", aggfunc="first", dropna=False)
        order = list(dict.fromkeys(group["series"]))
        counts = group.pivot_table(index="seed", columns="series", values="n_examples", aggfunc="first", dropna=False) if "n_examples" in group else None
        for a, b in itertools.combinations([m for m in order if m in by_model.columns], 2):
            keep = (by_model[a] - by_model[b]).notna()
            pa, pb = by_model[a][keep].to_numpy(), by_model[b][keep].to_numpy()
            d = pa - pb
            row = {**dict(zip(keys, key)), "first": a, "second": b, "seeds": len(d), "diff_mean": d.mean() if len(d) else math.nan,
                   "diff_min": d.min() if len(d) else math.nan, "diff_max": d.max() if len(d) else math.nan, "p": math.nan, "seeds_needed": math.nan}
            if len(d) > 1:
                n = counts[a][keep].to_numpy(dtype=float) if counts is not None else np.full(len(d), np.nan)
                sa, sb = ((np.round(q * n) + 0.5) / (n + 1) for q in (pa, pb))  # smoothed: never exactly 0 or 1
                floor = math.sqrt(np.nanmean((sa * (1 - sa) + sb * (1 - sb)) / n)) if np.isfinite(n).all() else 0.0
                spread = max(float(np.std(d, ddof=1)), floor)  # seeds that agree to the example still carry test-set noise
                if spread > 0:
                    t = d.mean() / (spread / math.sqrt(len(d)))
                    row["p"] = float(2 * stats.t.sf(abs(t), len(d) - 1))
                    if d.mean() != 0:
                        row["seeds_needed"] = seeds_needed(abs(d.mean()) / spread)
                else:
                    row["p"] = 1.0  # no spread and no test-set sizes: nothing to test against
            rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    tested = frame["p"].notna()
    frame["p_holm"] = math.nan
    if tested.any():
        frame.loc[tested, "p_holm"] = multipletests(frame.loc[tested, "p"], method="holm")[1]
    frame["separated"] = frame["p_holm"] < 0.05
    return frame


def comparisons_markdown(comparisons: pd.DataFrame) -> str:
    """One table per task, setting and training range: a row per pair of models, a column per
    length, each cell the mean difference in points and the corrected p-value, in bold where
    the pair is separated; then how many comparisons separate and how many seeds the others
    would need."""
    if comparisons.empty:
        return ""
    parts = [f"Every pair of models at every length ({COMPARISON_METHOD}). A cell gives the first model's exact match minus the "
             f"second's, in points (mean over seeds), and the corrected p; bold: separated. {int(comparisons['separated'].sum())} of "
             f"{len(comparisons)} comparisons are separated.", ""]
    for (task, setting, lo, hi), group in comparisons.groupby(["task", "setting", "train_min", "train_max"], sort=False):
        lengths = sorted(group["length"].unique())
        lines = [f"#### {md(task)} (trained on lengths {lo}..{hi})", "",
                 "| first - second | " + " | ".join(f"{L}{'*' if lo <= L <= hi else ''}" for L in lengths) + " |", "|---" * (len(lengths) + 1) + "|"]
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
            lines += ["", f"Not separated inside the trained range: {len(open_pairs)} comparisons with a nonzero spread; at their observed "
                      f"mean and spread a paired t-test would need {int(need.min())}-{int(need.max())} seeds (median {int(need.median())}) "
                      "to separate them with 80% power at 5% before correction."]
        parts += lines + [""]
    return "\n".join(parts)


def _length_table(frame: pd.DataFrame, lengths: list, lo: int, hi: int, prefix: str, signed: bool, missing: str, interval: bool = True,
                  spread: bool = False) -> list[str]:
    """Markdown rows: one per model with the seeds behind it, one column per length (* marks
    trained lengths), each cell 'mean [low, high]' in percent from the columns `<prefix>_mean`,
    `_ci_low`, `_ci_high` ('mean' alone without `interval`, or for a one-seed row with
    `signed`, whose interval holds sampling error only and is still shown); with `spread`,
    'mean (lowest-highest seed) [low, high]' from `_min` and `_max` too."""
    pattern = "{:+.1f} [{:+.1f}, {:+.1f}]" if signed else "{:.1f} [{:.1f}, {:.1f}]"
    lines = ["| model | seeds | " + " | ".join(f"{L}{'*' if lo <= L <= hi else ''}" for L in lengths) + " |", "|---" * (len(lengths) + 2) + "|"]
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
        lines.append(f"| {md(model)} | {'-'.join(map(str, seeds[:: max(1, len(seeds) - 1)]))} | " + " | ".join(cells) + " |")
    return lines


def _examples_note(n: float) -> str:
    """How many test examples stand behind each number."""
    if math.isnan(n):
        return "? test examples per length and seed"
    return f"{int(n)} test examples per length and seed (standard error of one seed's exact match at most {50 / math.sqrt(n):.1f} points)"


def _setting_names(summary: pd.DataFrame, records_by_setting: dict[str, dict]) -> dict[str, str]:
    """A caption for each setting of a task that has more than one: the fields that differ."""
    names = {}
    for task, group in summary.groupby("task", sort=False):
        settings = list(dict.fromkeys(group["setting"]))
        if len(settings) < 2:
            continue
        flat = {s: _flatten({f: records_by_setting[s].get(f) for f in SETTING_FIELDS}) if s in records_by_setting else {} for s in settings}
        differing = sorted(k for k in set().union(*flat.values()) if len({json.dumps(flat[s].get(k), default=str) for s in settings}) > 1)
        for s in settings:
            variant = ((records_by_setting.get(s) or {}).get("config") or {}).get("variant")
            names[s] = md(f"{'variant ' + variant if variant else 'setting ' + s}: " + ", ".join(f"{k} = {flat[s].get(k)}" for k in differing[:4]))
    return names


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def summary_markdown(summary: pd.DataFrame, differences: pd.DataFrame | None = None, records: list[dict] | None = None) -> str:
    """Accuracy-vs-length tables, one per task and setting, each followed by the diagnostics and,
    when given, the differences from `none`.  A task run under several settings (a merge of
    different configurations) gets one table per setting, captioned with what differs."""
    names = _setting_names(summary, {_setting(r): r for r in records or []})
    parts = []
    for (task, setting, lo, hi), group in summary.groupby(["task", "setting", "train_min", "train_max"], sort=False):
        lengths = sorted(group["length"].unique())
        label = f"; {names[setting]}" if setting in names else ""
        lines = [f"### {md(task)} (trained on lengths {lo}..{hi}{label}; exact match %, mean [95% interval] over seeds)", ""]
        lines += _length_table(group, lengths, lo, hi, "seq_acc", signed=False, missing="failed", spread=True)
        n = group["n_examples"].max()
        lines += ["", f"Mean over seeds (lowest-highest seed) [95% interval]; {_examples_note(n)}; {INTERVAL_METHOD}; {INTERVAL_CENTRE}; "
                  "* = inside the trained range.", ""]
        if group["oracle_seq_acc_mean"].notna().any():
            lines += ["Diagnostics (means over seeds): oracle-length exact match %, END held back until the target's length "
                      "(Newman et al. 2020) / share of predictions of the right length %:", ""]
            oracle, right = (_length_table(group.assign(diag_mean=group[column]), lengths, lo, hi, "diag", signed=False, missing="failed", interval=False)
                             for column in ("oracle_seq_acc_mean", "length_acc_mean"))
            lines += _pair_rows(oracle, right) + [""]
        if differences is not None and len(differences):
            d = differences[(differences["task"] == task) & (differences["setting"] == setting) & (differences["train_min"] == lo) & (differences["train_max"] == hi)]
            if len(d):
                lines += [f"Difference from `none` in exact match (percentage points, mean over seeds, paired by seed; {DIFFERENCE_METHOD}):", ""]
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


def _save(fig, figures: Path, name: str) -> list[str]:
    figures.mkdir(parents=True, exist_ok=True)
    import matplotlib

    matplotlib.rcParams["svg.hashsalt"] = "seq2seq-length-study"  # stable element ids
    for ext in ("png", "svg"):  # no date stamp, so a redraw of the same results gives the same files
        fig.savefig(figures / f"{name}.{ext}", dpi=130, bbox_inches="tight", metadata={"Date": None} if ext == "svg" else None)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return [f"figures/{name}.png"]


MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "p", "h", "8"]


def _markers(models: list[str]) -> dict:
    """One marker per model in the registry's order, like `_palette`'s colours, so that models are
    told apart without colour too."""
    from study.models import available_models

    order = list(dict.fromkeys([*MODEL_ORDER, *available_models(), *sorted(models)]))
    return {m: MARKERS[order.index(m) % len(MARKERS)] for m in models}


def _palette(models: list[str]) -> dict:
    """One colour per model, the same in every figure of every report: seaborn's colour-blind
    palette in the registry's order (`study.models.available_models`), extra names after it;
    past its ten colours, seaborn's dark palette (the full profile's thirteen models all differ)."""
    import seaborn as sns

    from study.models import available_models

    order = list(dict.fromkeys([*MODEL_ORDER, *available_models(), *sorted(models)]))
    colours = sns.color_palette("colorblind", 10) + sns.color_palette("dark", 10)[::-1]  # 20 before any repeats
    return {m: colours[order.index(m) % len(colours)] for m in models}


def _seeds_and_examples(records: list[dict]) -> str:
    """'3 seeds, 1,000 test examples per length and seed' for the records shown."""
    seeds = len({r["seed"] for r in records})
    n_test = sorted({r.get("n_test") for r in records if r.get("n_test")})
    examples = f", {n_test[0]:,} test examples per length and seed" if len(n_test) == 1 else ""
    return f"{seeds} seed{'s' if seeds != 1 else ''}{examples}"


def plot_accuracy_vs_length(summary: pd.DataFrame, records: list[dict], figures: Path) -> list[str]:
    """Top row: exact match per length, mean over seeds with its 95% interval
    (`accuracy_interval`) as error bars and each seed's own as an open circle; bottom row: the
    oracle-length exact match diagnostic, mean over seeds with the range over seeds as bars.  One
    colour and marker per model (`_palette`, `_markers`); ticks at the measured lengths only;
    a solid line joins lengths inside the trained range, a dotted one the lengths beyond it
    (nothing was measured in between); the trained lengths, side-by-side points included, are
    shaded and named above each panel."""
    import matplotlib.pyplot as plt
    from matplotlib import transforms

    tasks = list(dict.fromkeys(summary["task"]))
    models = list(dict.fromkeys(summary["series"]))  # a model, or a model under one of several settings
    series = series_names(records)
    seeds = pd.DataFrame([{"task": r["task"], "series": series[r["id"]], "length": m["length"], "train_max": max(r["train_lengths"]),
                           "seq_acc": m["seq_acc"], "oracle_seq_acc": m.get("oracle_seq_acc", math.nan)}
                          for r in records if r["status"] == "ok" for m in r["metrics"]],
                         columns=["task", "series", "length", "train_max", "seq_acc", "oracle_seq_acc"])
    palette, markers = _palette(models), _markers(models)
    units = {r["task"]: r.get("length_unit", "length") for r in records}
    per_length = {series[r["id"]] for r in records if r.get("regime") == "per_length"}  # series of one model per training length
    fig, axes = plt.subplots(2, len(tasks), figsize=(4.6 * len(tasks), 7.6), squeeze=False, sharex="col")
    for j, task in enumerate(tasks):
        data = summary[summary["task"] == task]
        lo, hi = data["train_min"].min(), data["train_max"].max()
        points_here = seeds[seeds["task"] == task]
        # a series of one model per length: each model at its own training length; the others at every length
        data = data[~data["series"].isin(per_length) | (data["length"] == data["train_max"])]
        points_here = points_here[~points_here["series"].isin(per_length) | (points_here["length"] == points_here["train_max"])]
        lengths = sorted(set(data["length"]))
        dodge = 0.012 * (max(lengths) - min(lengths) or 1)  # error bars side by side, not on top of each other
        offsets = {model: (k - (len(models) - 1) / 2) * dodge for k, model in enumerate(models)}
        reach = max(map(abs, offsets.values()), default=0.0)
        for i, (column, label) in enumerate((("seq_acc", "exact match (%)"), ("oracle_seq_acc", "oracle-length exact match (%)"))):
            ax = axes[i][j]
            ax.axvspan(lo - 0.5 - reach, hi + 0.5 + reach, color="0.93", zorder=0, gid="trained")  # holds every dodged point
            above = transforms.blended_transform_factory(ax.transData, ax.transAxes)
            ax.text((lo + hi) / 2, 1.01, "trained lengths", transform=above, ha="center", va="bottom", fontsize=8, color="0.35")
            for model in models:
                d = data[data["series"] == model].groupby("length").mean(numeric_only=True).sort_index()
                mean = d[f"{column}_mean"] if len(d) else pd.Series(dtype=float)
                if d.empty or mean.isna().all():
                    continue
                x = d.index + offsets[model]
                points = points_here[(points_here["series"] == model) & points_here["length"].isin(d.index)]
                if i == 0:
                    bars = [100 * (mean - d["seq_acc_ci_low"]), 100 * (d["seq_acc_ci_high"] - mean)]
                else:  # the range over seeds
                    spread = points.groupby("length")[column].agg(["min", "max"]).reindex(d.index)
                    bars = [100 * (mean - spread["min"]), 100 * (spread["max"] - mean)]
                ax.errorbar(x, 100 * mean, yerr=bars, marker=markers[model], markersize=4.5, capsize=2.5, color=palette[model], linestyle="none", label=model)
                xs, ys, measured = np.asarray(x), 100 * mean.to_numpy(), list(d.index)
                for a in range(len(xs) - 1):  # solid inside the trained range, dotted where a segment leaves it
                    style = "-" if lo <= measured[a] and measured[a + 1] <= hi else ":"
                    ax.plot(xs[a:a + 2], ys[a:a + 2], linestyle=style, linewidth=1.2, color=palette[model], gid="inside" if style == "-" else "beyond")
                if i == 0:
                    ax.scatter(points["length"] + offsets[model], 100 * points["seq_acc"], s=14, facecolors="none",
                               edgecolors=palette[model], linewidths=0.8, zorder=3, gid="seed")  # every seed's own exact match
            ax.set(xlabel=f"input length ({units.get(task, 'length')})" if i == 1 else "", ylabel=label, ylim=(-3, 105))
            ax.set_title(task if i == 0 else "", pad=16)  # above the "trained lengths" label
            ax.set_xticks(lengths)  # only what was measured
    handles, labels = [], []
    for ax in axes.flat:
        for h, l in zip(*ax.get_legend_handles_labels()):
            if l not in labels:
                handles.append(h)
                labels.append(l)
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), title="model")
    regime = ("; one model trained per length" if per_length == set(models)
              else f"; one model per length for {', '.join(sorted(per_length))}" if per_length else "")
    fig.suptitle(f"Greedy-decoded exact match vs input length: mean and 95% interval over {_seeds_and_examples(records)} (circles: each seed){regime};\n"
                 "below, the oracle-length diagnostic: END held back until the target's length (mean, bars: range over seeds); "
                 "dotted: beyond the trained lengths")
    fig.tight_layout()
    return _save(fig, figures, "accuracy_vs_length")


def _output_shape(record: dict) -> tuple[float | None, int | None]:
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
        width = widths.setdefault(r["task"], _output_shape(r)[1])
        if not width or width < 2:
            continue
        for m in r["metrics"]:
            position = m.get("position_acc") or []
            for k in range(m["length"]):
                unit = position[k * width:(k + 1) * width]
                if unit:
                    rows.append({"task": r["task"], "model": series[r["id"]], "seed": r["seed"], "length": m["length"],
                                 "in_training_range": m["in_training_range"], "unit": k + 1, "char_acc": float(np.mean(unit)),
                                 "units_written": (m["mean_prediction_length"] + 1) / width})
    return pd.DataFrame(rows)


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
        out += [f"**{md(task)}**: character accuracy of each {unit.rstrip('s')} (%, mean over seeds), and {unit} written "
                f"(mean over seeds [min, max]); * marks lengths beyond the trained range.", "",
                "| model | length | " + " | ".join(f"{k}." for k in range(1, most + 1)) + f" | {unit} written |",
                "|---|---|" + "---|" * most + "---|"]
        for (model, length), d in by_task.groupby(["model", "length"], sort=False):
            accs = d.groupby("unit")["char_acc"].mean()
            cells = [f"{100 * accs[k]:.0f}" if k in accs.index else "" for k in range(1, most + 1)]
            written = d.groupby("seed")["units_written"].first()
            star = "" if d["in_training_range"].iloc[0] else "*"
            out.append(f"| {md(model)} | {length}{star} | " + " | ".join(cells) + f" | {written.mean():.2f} [{written.min():.2f}, {written.max():.2f}] |")
        out.append("")
    return "\n".join(out)


def plot_position_accuracy(records: list[dict], figures: Path) -> list[str]:
    """Per-position character accuracy at each task's longest trained length (top row) and its
    first length beyond the trained range (bottom row, when evaluated): mean over seeds
    (markers), the range over seeds (band), chance, a uniform guess over the output alphabet
    (dashed), and where each unit of the output begins for tasks with a fixed
    `output_unit_width` (grey lines: one per date)."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rows = []
    series = series_names(records)
    chance = {}
    for r in records:
        if r["status"] != "ok":
            continue
        chance.setdefault(r["task"], _output_shape(r))
        inside = [m for m in r["metrics"] if m["in_training_range"]] or r["metrics"]
        beyond = [m for m in r["metrics"] if not m["in_training_range"] and m["length"] > max(r["train_lengths"])]
        for where, m in (("longest trained", max(inside, key=lambda m: m["length"])), ("first beyond", min(beyond, key=lambda m: m["length"]) if beyond else None)):
            if m is None:
                continue
            for pos, acc in enumerate(m["position_acc"]):
                rows.append({"task": r["task"], "where": where, "model": series[r["id"]], "seed": r["seed"], "length": m["length"], "position": pos + 1, "accuracy": 100 * acc})
    if not rows:
        return []
    data = pd.DataFrame(rows)
    tasks = list(dict.fromkeys(data["task"]))
    places = [w for w in ("longest trained", "first beyond") if w in set(data["where"])]
    models = list(dict.fromkeys(data["model"]))
    palette, markers = _palette(models), _markers(models)
    units = {r["task"]: r.get("length_unit", "length") for r in records}
    fig, axes = plt.subplots(len(places), len(tasks), figsize=(4.6 * len(tasks), 3.6 * len(places)), squeeze=False)
    for i, where in enumerate(places):
        for ax, task in zip(axes[i], tasks):
            d = data[(data["task"] == task) & (data["where"] == where)]
            if d.empty:
                ax.axis("off")
                continue
            d = d[d["length"] == d["length"].max()]  # one length per panel
            for model in models:
                by_position = d[d["model"] == model].groupby("position")["accuracy"]
                mean = by_position.mean()
                if mean.empty:
                    continue
                ax.fill_between(mean.index, by_position.min(), by_position.max(), color=palette[model], alpha=0.12, linewidth=0)
                ax.plot(mean.index, mean.values, marker=markers[model], markersize=3, label=model, color=palette[model])
            guess, width = chance.get(task, (None, None))
            if guess:
                ax.axhline(100 * guess, color="0.4", linestyle="--", linewidth=0.8, gid="chance")
                ax.text(1.0, 100 * guess, " chance", transform=ax.get_yaxis_transform(), va="center", fontsize=7, color="0.4")
            if width and width > 1:  # where each unit of the output (a date) begins
                for start in range(width, int(d["position"].max()), width):
                    ax.axvline(start + 0.5, color="0.75", linewidth=0.7, linestyle="-", zorder=0, gid="unit boundary")
            ax.set(title=f"{task}, length {d['length'].max()} ({units.get(task, 'length')}), {where}", xlabel="output position (characters)",
                   ylabel="character accuracy (%)", ylim=(-3, 103), xlim=(0.5, d["position"].max() + 0.5))  # positions count from 1
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    handles, labels = max((ax.get_legend_handles_labels() for ax in axes.flat), key=lambda hl: len(hl[1]))
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), title="model")
    fig.suptitle(f"Where in the output greedy decoding goes wrong: mean over {_seeds_and_examples(records)}; band: range over seeds; "
                 "dashed: chance (a uniform guess over the output alphabet); grey lines: where each date begins")
    fig.tight_layout()
    return _save(fig, figures, "position_accuracy")


def plot_attention_maps(records: list[dict], figures: Path) -> list[str]:
    """One test example per task x attention model (lowest seed): attention weight of each
    output step (rows) on each source character (columns), with a colour bar; each panel names
    the example's length, seed, target and prediction and marks the prediction right or wrong."""
    import matplotlib.pyplot as plt

    use_fonts()
    chosen: dict[tuple[str, str], dict] = {}
    for r in sorted(records, key=lambda r: r["seed"]):
        ex = r.get("attention_example")
        if r["status"] == "ok" and ex and ex.get("weights") and (r["task"], r["model"]) not in chosen:
            chosen[(r["task"], r["model"])] = r
    if not chosen:
        return []
    tasks = list(dict.fromkeys(t for t, _ in chosen))
    models = list(dict.fromkeys(m for _, m in chosen))
    fig, axes = plt.subplots(len(tasks), len(models), figsize=(4.2 * len(models) + 1.0, 4.4 * len(tasks)), squeeze=False, layout="constrained")
    image = None
    shown_text = ""
    for i, task in enumerate(tasks):
        for j, model in enumerate(models):
            ax = axes[i][j]
            r = chosen.get((task, model))
            if r is None:
                ax.axis("off")
                continue
            ex = r["attention_example"]
            w = np.asarray(ex["weights"])
            image = ax.imshow(w, cmap="viridis", vmin=0, vmax=1, aspect="equal")  # square cells: a short example is small, not stretched
            src = list(ex["source"])
            out = list(ex["prediction"]) + ["END"]
            out = out[: w.shape[0]]
            x_step, y_step = max(1, -(-len(src) // 24)), max(1, -(-len(out) // 24))  # at most 24 labels a side
            character_ticks(ax, "x", src, x_step)
            character_ticks(ax, "y", out, y_step)
            shown_text += ex["source"] + ex["prediction"] + ex["target"]
            right = ex["prediction"] == ex["target"]
            verdict = "right" if right else "WRONG"
            ax.set_title(f"{task} / {model}, length {ex['length']}, seed {r['seed']}\n"
                         f"target {_shorten(ex['target'])}\npredicted {_shorten(ex['prediction'])} ({verdict})",
                         fontsize=8, color="black" if right else "#b2182b")
            ax.set(xlabel="source character", ylabel="predicted character")
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.5, label="attention weight")
    without = sorted({r["model"] for r in records if r.get("attention") == "none"}, key=lambda m: (m not in MODEL_ORDER, MODEL_ORDER.index(m) if m in MODEL_ORDER else 0, m))
    note = f"; {', '.join(without)}: no attention, so no weights to show" if without else ""
    fig.suptitle(f"Attention weights of one test example per model (rows: output steps, columns: source characters){note}")
    add_marks_note(fig, shown_text)
    return _save(fig, figures, "attention_maps")


def _shorten(text: str, most: int = 34) -> str:
    """`text` quoted for a title, cut to `most` characters, marks as `study.fonts.readable` writes them."""
    return "'" + readable(text if len(text) <= most else text[: most - 1] + "…") + "'"


def plot_training_curves(records: list[dict], figures: Path) -> list[str]:
    """Over training examples (log scale), one line per seed: validation exact match over all
    trained lengths pooled; the loss per target character on a log scale (validation,
    teacher-forced: the convergence measure; the training loss for records that predate it);
    and the learning rate (log scale)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    with_validation_loss = all("val_loss" in h for r in records for h in r.get("history", []))
    series = series_names(records)
    rows = [
        {"task": r["task"], "model": series[r["id"]], "seed": r["seed"], "examples_seen": h["examples_seen"], "val_seq_acc": 100 * h["val_seq_acc"],
         "loss": h.get("val_loss", h["loss"]) if with_validation_loss else h["loss"], "learning_rate": h.get("learning_rate", math.nan)}
        for r in records
        for h in r.get("history", [])
    ]
    if not rows:
        return []
    data = pd.DataFrame(rows)
    tasks = list(dict.fromkeys(data["task"]))
    models = list(dict.fromkeys(data["model"]))
    panels = [("val_seq_acc", "validation exact match,\nall trained lengths pooled (%)"),
              ("loss", f"{'validation' if with_validation_loss else 'training'} loss\n(nats/char, teacher-forced)")]
    if data["learning_rate"].notna().any():
        panels.append(("learning_rate", "learning rate"))
    fig, axes = plt.subplots(len(panels), len(tasks), figsize=(4.6 * len(tasks), 3.1 * len(panels)), squeeze=False, sharex="col")
    for j, task in enumerate(tasks):
        d = data[data["task"] == task]
        for i, (column, label) in enumerate(panels):
            sns.lineplot(data=d, x="examples_seen", y=column, hue="model", hue_order=models, palette=_palette(models), units="seed", estimator=None,
                         linewidth=1.0, ax=axes[i][j], legend=(i, j) == (0, len(tasks) - 1))
            axes[i][j].set(title=task if i == 0 else "", xlabel="training examples seen" if i == len(panels) - 1 else "", ylabel=label, xscale="log")
            if column == "val_seq_acc":
                axes[i][j].set_ylim(-3, 103)
            else:
                axes[i][j].set_yscale("log")
    legend = axes[0][-1].get_legend()
    if legend is not None:
        legend.set_title("model")
        sns.move_legend(axes[0][-1], "center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle(f"Training: validation exact match (greedy), loss and learning rate, one line per seed ({_seeds_and_examples(records).split(',')[0]})")
    fig.tight_layout()
    return _save(fig, figures, "training_curves")


def _shown_lengths(lengths: list[int], most: int = 6) -> list[int]:
    """Up to `most` of `lengths`, evenly spread, always with the shortest and the longest."""
    if len(lengths) <= most:
        return lengths
    picks = np.linspace(0, len(lengths) - 1, most).round().astype(int)
    return [lengths[i] for i in sorted(set(picks))]


def plot_learning_curves_by_length(records: list[dict], figures: Path) -> list[str]:
    """Validation exact match of each training length over training examples, one panel per
    task (rows) and model (columns), mean over seeds: whether a model's failure at long lengths
    shrinks with training or stays while its short lengths are learnt."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    series = series_names(records)
    rows = [
        {"task": r["task"], "model": series[r["id"]], "seed": r["seed"], "examples_seen": h["examples_seen"], "length": int(length), "val_seq_acc": 100 * acc}
        for r in records
        for h in r.get("history", [])
        for length, acc in h.get("val_seq_acc_by_length", {}).items()
    ]
    if not rows:
        return []
    data = pd.DataFrame(rows)
    tasks = list(dict.fromkeys(data["task"]))
    models = [m for m in MODEL_ORDER if m in set(data["model"])] + sorted(set(data["model"]) - set(MODEL_ORDER))
    units = {r["task"]: r.get("length_unit", "length") for r in records}
    fig, axes = plt.subplots(len(tasks), len(models), figsize=(3.4 * len(models) + 1.6, 2.9 * len(tasks)), squeeze=False, sharey=True)
    for i, task in enumerate(tasks):
        d = data[data["task"] == task]
        shown = _shown_lengths(sorted(set(d["length"])))
        colours = dict(zip(shown, sns.color_palette("viridis_r", len(shown))))
        for j, model in enumerate(models):
            ax = axes[i][j]
            m = d[d["model"] == model]
            if m.empty:  # a model (or variant) this task was not run with
                ax.axis("off")
                continue
            seeds = m["seed"].nunique()
            for length in shown:
                by_point = m[m["length"] == length].groupby("examples_seen")["val_seq_acc"]
                curve, present = by_point.mean(), by_point.count()
                every = present == seeds  # points every seed reached; later ones rest on the seeds still training
                ax.plot(curve.index[every] / 1000, curve.values[every], color=colours[length], marker=".", markersize=3, label=str(length), gid="all seeds")
                if not every.all():
                    tail = curve.index >= curve.index[every].max() if every.any() else np.ones(len(curve), bool)
                    ax.plot(curve.index[tail] / 1000, curve.values[tail], color=colours[length], linestyle=":", linewidth=1.0, gid="fewer seeds")
            ax.set(title=f"{task} / {model} ({seeds} seed{'s' if seeds != 1 else ''})", ylim=(-3, 103), xscale="log",
                   xlabel="training examples seen (thousands)" if i == len(tasks) - 1 else "", ylabel="validation exact match (%)" if j == 0 else "")
        handles, labels = max((ax.get_legend_handles_labels() for ax in axes[i]), key=lambda hl: len(hl[1]))
        axes[i][-1].legend(handles, labels, loc="center left", bbox_to_anchor=(1.02, 0.5), title=f"trained length\n({units.get(task, 'length')})", fontsize=8)
    n_validation = sorted({(r.get("train_config") or {}).get("n_validation") for r in records} - {None})
    per_point = f"{n_validation[0]} validation examples per length and seed (standard error up to {50 / math.sqrt(n_validation[0]):.0f} points)" if len(n_validation) == 1 else "validation examples per length and seed as configured"
    fig.suptitle("Does the gap close with training? Validation exact match (greedy) per training length, mean over seeds;\n"
                 f"dotted: after the first seed stopped, the mean of those still training; {per_point}")
    fig.tight_layout()
    return _save(fig, figures, "learning_curves_by_length")


CONVERGED_DEFINITION = ("A cell converged when validation exact match reached the target, or when over the last {patience} training "
                        "examples neither its validation loss fell by more than {loss} nats per character nor its validation exact match "
                        "at any training length rose by more than {acc:g} points, at a learning rate that only a plateau lowers; "
                        "a cell that reached the {budget}-example budget did not converge.")


def convergence_lines(records: list[dict]) -> list[str]:
    """The report's account of how training ended: the definition of converged, and each cell
    that was not, with how far its measures still moved over its last stretch."""
    done = [r for r in records if r["status"] == "ok" and "converged" in r]
    if not done:
        return []
    cfg = done[0]["train_config"]
    open_cells = [r for r in done if not r["converged"]]
    if "loss_tolerance" not in cfg:  # records of the earlier rule (exact match only; a budget stop within a point counted)
        lines = [f"These cells were trained under an earlier rule: converged meant no better validation exact match for "
                 f"{cfg.get('patience_examples', '?')} examples, the target reached, or at most a point gained over that "
                 f"stretch at the budget (with a learning rate decaying to 0 there). {len(done) - len(open_cells)} of {len(done)} "
                 "cells converged by that rule."]
        gain = lambda r: "too few epochs to judge" if r.get("last_stretch_gain") is None else f"+{100 * r['last_stretch_gain']:.1f} points of validation exact match over the last stretch"  # noqa: E731
        if open_cells:
            lines += ["", f"**Not converged** ({len(open_cells)}), by that rule:", "", *[f"- {r['task']}/{r['model']}/seed {r['seed']}: {gain(r)}" for r in open_cells]]
        return lines + [""]
    lines = [CONVERGED_DEFINITION.format(patience=cfg.get("patience_examples", "?"), loss=cfg.get("loss_tolerance", "?"),
                                         acc=100 * cfg.get("accuracy_tolerance", 0), budget=cfg.get("max_examples", "?")),
             "", f"{len(done) - len(open_cells)} of {len(done)} cells converged."]
    learning = [r for r in open_cells if r.get("last_stretch")]
    short = [r for r in open_cells if not r.get("last_stretch")]
    if learning:
        lines += ["", f"**Not converged** ({len(learning)}): stopped by the budget while still learning; their numbers are likely a lower bound.", ""]
        for r in learning:
            stretch = r["last_stretch"]
            lines.append(f"- {md(r['task'])}/{md(r['model'])}/seed {r['seed']}: validation loss fell {stretch['val_loss']:.3f} nats per character "
                         f"and exact match at length {stretch['length']} rose {100 * stretch['val_seq_acc_by_length']:.1f} points over the last "
                         f"stretch, learning rate {r.get('stop_learning_rate', 0):.2g}")
    if short:
        lines += ["", f"**Too short to judge** ({len(short)}): the budget ended before one convergence stretch of "
                  f"{cfg.get('patience_examples', '?')} examples had passed, so convergence was not measured: "
                  + ", ".join(f"{md(r['task'])}/{md(r['model'])}/seed {r['seed']}" for r in short) + "."]
    return lines + [""]


def time_lines(records: list[dict]) -> list[str]:
    """Where the cells' time went, summed over cells: data, the first update (mostly compilation),
    the other update steps, greedy validation, test decoding (seconds and shares)."""
    parts = {"data": "data", "first_update": "first update (compilation)", "train_steps": "update steps",
             "validation": "greedy validation", "test_decoding": "test decoding"}
    timed = [r["seconds"] for r in records if r["status"] == "ok" and isinstance(r.get("seconds"), dict)]
    if not timed:
        return []
    sums = {k: sum(t.get(k, 0.0) for t in timed) for k in parts}
    wall = sum(r.get("wall_seconds", 0.0) for r in records if r["status"] == "ok" and isinstance(r.get("seconds"), dict))
    other = max(wall - sum(sums.values()), 0.0)
    shares = ", ".join(f"{name} {sums[k]:.0f} s ({100 * sums[k] / wall:.0f}%)" for k, name in parts.items()) if wall else ""
    return [f"Where the time went, summed over {len(timed)} cells ({wall / 60:.1f} min): {shares}, other {other:.0f} s "
            "(building the model, saving it, the epoch loop).", ""]


def write_report(out: Path, every: bool = False) -> Path:
    """Writes metrics.csv, summary.csv/.md, the figures and report.md into `out` from the latest
    run's records (every record in `out/cells` with `every`); returns report.md's path."""
    import matplotlib

    matplotlib.use("Agg")
    use_fonts()
    out = Path(out)
    records = load_records(out, every)
    metrics = metrics_frame(records)
    metrics.to_csv(out / "metrics.csv", index=False)
    summary = summary_frame(metrics)
    summary.to_csv(out / "summary.csv", index=False)
    table = summary_markdown(summary, difference_frame(metrics), records)
    (out / "summary.md").write_text(table)
    comparisons = comparison_frame(metrics)
    comparisons.to_csv(out / "comparisons.csv", index=False)
    units = unit_frame(records)
    if not units.empty:
        units.to_csv(out / "units.csv", index=False)
    figures = out / "figures"
    images = {
        "Accuracy vs length": plot_accuracy_vs_length(summary, records, figures),
        "Accuracy per output position": plot_position_accuracy(records, figures),
        "Attention maps": plot_attention_maps(records, figures),
        "Training curves": plot_training_curves(records, figures),
        "Validation exact match per length over training": plot_learning_curves_by_length(records, figures),
    }
    (out / "report.md").write_text(_report_markdown(records, metrics, table, images, read_manifest(out) or {}, comparisons_markdown(comparisons),
                                                    units_markdown(units, records)))
    return out / "report.md"


def _provenance(manifest: dict, n_records: int) -> list[str]:
    """Where the records came from when they are not one whole run: a shard, or merged folders."""
    lines = []
    if manifest.get("shard"):
        lines.append(f"Shard {manifest['shard']} of the grid: {n_records} of its {len(manifest.get('grid', []))} cells.")
    if manifest.get("merged_from"):
        lines.append(f"Merged from {', '.join(f'`{p}`' for p in manifest['merged_from'])}: {n_records} of the grid's {len(manifest.get('grid', []))} cells; "
                     "each record carries its own configuration (below: the first folder's).")
    return lines + [""] if lines else []


def _report_markdown(records: list[dict], metrics: pd.DataFrame, table: str, images: dict[str, list[str]], manifest: dict, comparisons: str = "",
                     units: str = "") -> str:
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
    lines += ["| task | model | seed | parameters | stopped | converged | examples seen | best val exact match | "
              "last stretch: val loss fall (nats/char) / largest exact-match rise (at length) | learning rate at the stop | wall time (s) | "
              "update steps / compilation / validation / test decoding (s) |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    series = series_names(records)
    for r in records:
        converged = {True: "yes", False: "**no**"}.get(r.get("converged"), "-")
        t = r.get("seconds") if isinstance(r.get("seconds"), dict) else None
        split = " / ".join(f"{t.get(k, 0):.0f}" for k in ("train_steps", "first_update", "validation", "test_decoding")) if t else "-"
        stretch = r.get("last_stretch") or {}
        moved = (f"{stretch['val_loss']:.4f} / {100 * stretch['val_seq_acc_by_length']:+.1f} ({stretch['length']})"
                 if {"val_loss", "val_seq_acc_by_length", "length"} <= set(stretch) else "-")
        rate = f"{r['stop_learning_rate']:.2g}" if isinstance(r.get("stop_learning_rate"), (int, float)) else "-"
        lines.append(
            f"| {md(r['task'])} | {md(series[r['id']])} | {r['seed']} | {r.get('param_count', '?')} | {md(r.get('stop_reason', r.get('error')))} | {converged} | "
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
        f"Backend {first['backend']} on {first.get('device', 'unknown device')}; versions: " + ", ".join(f"{k} {v}" for k, v in first.get("versions", {}).items()) + ".",
        f"Summed cell wall time: {total / 60:.1f} min.",
        "",
        "```json",
        json.dumps(config, indent=1),
        "```",
        "",
    ]
    return "\n".join(lines)
