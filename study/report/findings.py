"""Named quantities computed from a study's tables, and the report's "What this study found"
written from them, so that no number in prose is typed by hand.

    q = quantities(summary, comparisons, records)
    q["copy.none.exact_match@16"]      # Quantity(value=5.1, unit="%", caveat="still learning at the ceiling")
    q["copy.dot-none.difference@16"]   # Quantity(value=94.5, unit="points", caveat=...)
    q["study.wall_minutes"]            # Quantity(value=84.9, unit="min")
    findings_lines(q, summary, comparisons, records)   # the report's opening block

Names: `<task>.<series>.<measure>@<length>` with the series written `model` or `model/variant`
(`series_names`' "model · variant"); measures `exact_match` (mean over seeds), `exact_match_lowest`
and `exact_match_highest` (the seeds' range), `oracle_exact_match` (END held back until the
target's length); `<task>.<first>-<second>.difference@<length>` (the paired comparison's estimate,
in points) and `...separated@<length>` (1 when its family separates it, else 0); and
`study.cells`, `study.converged_cells`, `study.cell_minutes` (summed cell wall time) and
`study.wall_minutes` (the busiest worker's summed cell wall time: the study's run time without
start-up and report).  A quantity behind which a cell stopped at the example ceiling while its
measures still moved carries the caveat "still learning at the ceiling"; prose that quotes it
must say so (`tests/test_report.py` checks the README).
"""

from __future__ import annotations

import dataclasses
import re
from collections import defaultdict

import pandas as pd

from study.report.markdown import length_units, trained_on
from study.report.tables import series_names
from study.text import markdown_cell as md

STILL_LEARNING = "still learning at the ceiling"


@dataclasses.dataclass(frozen=True)
class Quantity:
    """One named number: its value (rounded as printed), its unit ("%", "points", "min" or "")
    and a caveat that every quotation must carry ("" for none)."""

    value: float
    unit: str = ""
    caveat: str = ""

    def text(self) -> str:
        """The value as prose prints it: one decimal ("5.1", "+94.5" for points), whole counts bare."""
        if self.unit == "points":
            return f"{self.value:+.1f}"
        return f"{self.value:.1f}" if self.unit in ("%", "min") else f"{self.value:g}"


def series_label(series: str) -> str:
    """A series as it appears in a quantity's name: "none · converged" -> "none/converged"."""
    return series.replace(" · ", "/").replace(" ", "_")


def _unconverged(records: list[dict]) -> set[tuple[str, str]]:
    """(task, series) pairs with a cell that reached the example ceiling without converging."""
    names = series_names(records)
    return {(r["task"], names[r["id"]]) for r in records if r["status"] == "ok" and r.get("stop_reason") == "budget"}


def quantities(summary: pd.DataFrame, comparisons: pd.DataFrame, records: list[dict]) -> dict[str, Quantity]:
    """Every named quantity of a study (see the module docstring), from its summary table,
    its comparisons (`comparison_frame`) and its records."""
    still = _unconverged(records)
    ranges = summary.groupby(["task", "series"])["train_max"].nunique() if not summary.empty else pd.Series(dtype=int)
    caveat = lambda task, *series: STILL_LEARNING if any((task, s) in still for s in series) else ""  # noqa: E731
    out: dict[str, Quantity] = {}
    for r in summary.itertuples():
        several = ranges.get((r.task, r.series), 1) > 1  # one model per training length (regime per_length)
        base = f"{r.task}.{series_label(r.series)}" + (f"~{r.train_min}..{r.train_max}" if several else "")
        note = caveat(r.task, r.series)
        for measure, column in (
            ("exact_match", "seq_acc_mean"),
            ("exact_match_lowest", "seq_acc_min"),
            ("exact_match_highest", "seq_acc_max"),
            ("oracle_exact_match", "oracle_seq_acc_mean"),
        ):
            value = getattr(r, column, float("nan"))
            if pd.notna(value):
                _add(out, f"{base}.{measure}@{r.length}", Quantity(round(100 * value, 1) + 0.0, "%", note))
    for r in comparisons.itertuples() if not comparisons.empty else ():
        if not r.family or pd.isna(r.diff_mean):
            continue
        base = f"{r.task}.{series_label(r.first)}-{series_label(r.second)}"
        note = caveat(r.task, r.first, r.second)
        if ranges.get((r.task, r.first), 1) > 1:
            base += f"~{r.train_min}..{r.train_max}"
        _add(out, f"{base}.difference@{r.length}", Quantity(round(100 * r.diff_mean, 1) + 0.0, "points", note))
        _add(out, f"{base}.separated@{r.length}", Quantity(float(bool(r.separated)), "", note))
    ok = [r for r in records if r["status"] == "ok"]
    workers: dict = defaultdict(float)
    for r in ok:
        workers[(r.get("worker") or {}).get("pid")] += r.get("wall_seconds", 0.0)
    out["study.cells"] = Quantity(len(records))
    out["study.converged_cells"] = Quantity(sum(bool(r.get("converged")) for r in ok))
    out["study.cell_minutes"] = Quantity(round(sum(workers.values()) / 60, 1), "min")
    out["study.wall_minutes"] = Quantity(round(max(workers.values(), default=0.0) / 60, 1), "min")
    return out


def _add(out: dict[str, Quantity], name: str, quantity: Quantity) -> None:
    """Adds a quantity; a name given twice (two rows the names cannot tell apart) is an error."""
    if name in out:
        raise ValueError(f"two quantities named {name!r}")
    out[name] = quantity


def quote(q: dict[str, Quantity], name: str, suffix: str = "", caveat: bool = True) -> str:
    """`name`'s value as prose quotes it: '5.1% (`copy.none.exact_match@16`; still learning at the
    ceiling)'; `caveat` False leaves the caveat to the sentence around it."""
    quantity = q[name]
    unit = {"%": "%", "points": " points", "min": " min"}.get(quantity.unit, "")
    notes = "; ".join(n for n in (quantity.caveat if caveat else "", suffix) if n)
    return f"{quantity.text()}{unit} (`{name}`{'; ' + notes if notes else ''})"


def _task_lines(
    q: dict[str, Quantity], task: str, rows: pd.DataFrame, comparisons: pd.DataFrame, unit: str | None
) -> list[str]:
    """The findings of one task: each series at the shortest, middle and longest evaluated trained
    length and at the first length beyond, and where the primary family separates the other
    models from `none`."""
    lo, hi = int(rows["train_min"].iloc[0]), int(rows["train_max"].iloc[0])
    lengths = sorted(int(L) for L in rows["length"].unique())
    inside = [L for L in lengths if lo <= L <= hi] or [lo, hi]
    beyond = [L for L in lengths if L > hi]
    middle = min(inside, key=lambda L: (abs(2 * L - lo - hi), L))  # where a collapse shows
    shown = list(dict.fromkeys([inside[0], middle, inside[-1]]))
    parts = []
    for series in dict.fromkeys(rows["series"]):
        base = f"{task}.{series_label(series)}.exact_match"
        at = [(f"at {L}", f"{base}@{L}") for L in shown] + [
            (f"at {L}, beyond the range", f"{base}@{L}") for L in beyond[:1]
        ]
        values = [f"{where}, {quote(q, name, caveat=False)}" for where, name in at if name in q]
        caveat = next((q[name].caveat for _, name in at if name in q and q[name].caveat), "")
        parts.append(f"  - {md(series)}{', ' + caveat if caveat else ''}: " + "; ".join(values))
    setting = rows["setting"].iloc[0]
    primary = (
        comparisons[(comparisons["task"] == task) & (comparisons["setting"] == setting) & comparisons["primary"]]
        if not comparisons.empty
        else []
    )
    if len(primary):
        separated = primary[primary["separated"]]
        by_length = separated.groupby("length")["first"].apply(lambda s: ", ".join(s))
        where = "; ".join(f"at {L}: {names}" for L, names in by_length.items()) or "at no length"
        parts.append(
            f"  - separated from `{primary['second'].iloc[0]}` by the primary test {where} "
            f"({len(separated)} of {len(primary)} comparisons; the others are not separated with "
            f"{int(primary['seeds'].max())} seeds)"
        )
    return [f"- **{md(task)}** ({trained_on(lo, hi, unit)}), exact match:", *parts]


def findings_lines(
    q: dict[str, Quantity], summary: pd.DataFrame, comparisons: pd.DataFrame, records: list[dict]
) -> list[str]:
    """The report's "What this study found": how many cells converged and what the study cost,
    then per task the exact match of every series where it matters and the primary family's
    verdicts; every number is a named quantity (its name beside it, `quantities`)."""
    if summary.empty:
        return []
    workers = len({(r.get("worker") or {}).get("pid") for r in records if r["status"] == "ok"})
    lines = [
        "## What this study found",
        "",
        "Every number below is a named quantity computed from this folder's tables (its name beside it); "
        f"'{STILL_LEARNING}' marks a number behind which a cell stopped at the example ceiling while still learning.",
        "",
        f"- Cells: {quote(q, 'study.cells')}, of which {quote(q, 'study.converged_cells')} converged; the busiest of "
        f"{workers} worker process{'es' if workers != 1 else ''} ran cells for "
        f"{quote(q, 'study.wall_minutes', 'the run time of a study run once')}, cell time in all {quote(q, 'study.cell_minutes')}.",
    ]
    for (task, _setting), rows in summary.groupby(["task", "setting"], sort=False):
        lines += _task_lines(q, task, rows, comparisons, length_units(records).get(task))
    return lines + [""]


UNITS = {"%": "%", "points": " points", "min": " min", "": None}
QUOTED = re.compile(r"([+-]?\d+(?:\.\d+)?)(%| points| min)?\s+\(`([A-Za-z_][^`]*[@.][^`]*)`([^)]*)\)")


SENTENCE_START = re.compile(r"(?<=[.!?])\s+(?=[A-Za-z*`(])|(?<=:)\s+(?=[A-Z*`(])|\n\s*\n|\n\s*- |\|")


def _carries(caveat: str, quotation: str, sentence: str) -> bool:
    """Whether a quotation carries `caveat`: in its own parentheses, or earlier in its sentence
    (a list scoped by the caveat), and not negated there ("not still learning ...")."""
    for text in (quotation, sentence):
        at = text.rfind(caveat)
        if at >= 0 and not re.search(r"\bnot\s+$", text[:at]):
            return True
    return False


def check_quotations(text: str, q: dict[str, Quantity], prefix: str = "") -> list[str]:
    """The problems of every quotation in `text` ('number (`name`...)' as `quote` writes it) of
    the quantities `q` whose names start with `prefix` (e.g. "reference:"): a name that does not
    exist, a number that differs from its quantity, a caveat missing from both the quotation and
    the sentence before it.  Returns one line per problem."""
    problems = []
    for match in QUOTED.finditer(text):
        number, unit, name, rest = match.groups()
        if not name.startswith(prefix):
            continue
        starts = [m.end() for m in SENTENCE_START.finditer(text, 0, match.start())]
        sentence = text[starts[-1] if starts else 0 : match.start()]
        quantity = q.get(name[len(prefix) :])
        if quantity is None:
            problems.append(f"{name}: no such quantity")
        elif number != quantity.text():
            problems.append(f"{name}: quoted {number}, the tables give {quantity.text()}")
        elif (unit or None) != UNITS.get(quantity.unit):
            problems.append(
                f"{name}: quoted in {unit or 'no unit'!r}, the quantity is in {quantity.unit or 'no unit'!r}"
            )
        elif quantity.caveat and not _carries(quantity.caveat, rest, " ".join(sentence.split())):
            problems.append(f"{name}: quoted without '{quantity.caveat}'")
    return problems
