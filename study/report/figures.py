"""The report's figures, drawn with matplotlib and seaborn from the records and the tables.

    plot_accuracy_vs_length(summary, records, out / "figures")   # each returns the PNG paths it wrote

Every figure is saved as PNG and SVG under `figures/` with no date stamp, so a
redraw of the same records gives the same files.  One colour and marker per model
in every figure (`model_palette`, `model_markers`); a task run under several settings
draws one series per setting (`study.report.tables.series_names`).
"""

from __future__ import annotations

import itertools
import math
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

from study.fonts import add_marks_note, character_ticks, readable, use_fonts
from study.report.statistics import few_seeds_note
from study.report.tables import MODEL_ORDER, distinct_test_items, output_shape, series_names
from study.results import write_atomic


def _save(fig, figures: Path, name: str) -> list[str]:
    import matplotlib

    matplotlib.rcParams["svg.hashsalt"] = "seq2seq-length-study"  # stable element ids
    for ext in ("png", "svg"):  # no date stamp, so a redraw of the same results gives the same files
        metadata = {"Date": None} if ext == "svg" else None
        write_atomic(
            figures / f"{name}.{ext}",
            lambda f, ext=ext, metadata=metadata: fig.savefig(
                f, format=ext, dpi=130, bbox_inches="tight", metadata=metadata
            ),
        )
    import matplotlib.pyplot as plt

    plt.close(fig)
    return [f"figures/{name}.png"]


def suptitle(fig, text: str, chars_per_inch: float = 11.0) -> None:
    """`text` as the figure's title, each of its lines wrapped to the figure's width (about
    `chars_per_inch` characters of the default title font per inch), so that a title never
    makes the saved image wider than its panels."""
    width = max(40, int(fig.get_figwidth() * chars_per_inch))
    fig.suptitle("\n".join(textwrap.fill(line, width) for line in text.split("\n")))


def log_scale(ax, which: str) -> None:
    """Puts the `which` ("x" or "y") axis of `ax` on a log scale with plain tick labels
    (0.001, 3e-05, 10,000): matplotlib writes log ticks in mathtext, which the study's figures
    turn off (`study.fonts.use_fonts`), so its own labels would print as raw `$...$` markup.
    Which ticks get a label stays matplotlib's choice (every decade; some minor ticks when
    the axis spans few decades)."""
    from matplotlib.ticker import LogFormatter

    class PlainLogFormatter(LogFormatter):
        def _num_to_string(self, x, vmin, vmax):  # the hook LogFormatter formats each value with
            return f"{x:,.0f}" if x >= 1 and float(x).is_integer() else f"{x:g}"

    axis = ax.xaxis if which == "x" else ax.yaxis
    (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    axis.set_major_formatter(PlainLogFormatter(labelOnlyBase=False))
    axis.set_minor_formatter(PlainLogFormatter(labelOnlyBase=False))


MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "p", "h", "8"]


def model_markers(models: list[str]) -> dict:
    """One marker per model in the registry's order, like `model_palette`'s colours, so that models are
    told apart without colour too."""
    from study.models import available_models

    order = list(dict.fromkeys([*MODEL_ORDER, *available_models(), *sorted(models)]))
    return {m: MARKERS[order.index(m) % len(MARKERS)] for m in models}


def model_palette(models: list[str]) -> dict:
    """One colour per model, the same in every figure of every report: seaborn's colour-blind
    palette in the registry's order (`study.models.available_models`), extra names after it;
    past its ten colours, seaborn's dark palette (the full profile's thirteen models all differ)."""
    import seaborn as sns

    from study.models import available_models

    order = list(dict.fromkeys([*MODEL_ORDER, *available_models(), *sorted(models)]))
    colours = sns.color_palette("colorblind", 10) + sns.color_palette("dark", 10)[::-1]  # 20 before any repeats
    return {m: colours[order.index(m) % len(colours)] for m in models}


def seeds_and_examples(records: list[dict]) -> str:
    """'3 seeds, 1,000 test examples per length and seed' for the records shown: the size of their
    largest test set ('up to' where a length holds fewer distinct sources than that)."""
    seeds = len({r["seed"] for r in records})
    sizes = {m["n_examples"] for r in records for m in r.get("metrics", []) if m.get("n_examples")}
    examples = ""
    if sizes:
        distinct = "distinct " if distinct_test_items(records) else ""
        examples = f", {'up to ' if len(sizes) > 1 else ''}{max(sizes):,} {distinct}test examples per length and seed"
    return f"{seeds} seed{'s' if seeds != 1 else ''}{examples}"


def plot_accuracy_vs_length(summary: pd.DataFrame, records: list[dict], figures: Path) -> list[str]:
    """Top row: exact match per length, mean over seeds with its 95% interval
    (`accuracy_interval`) as error bars and each seed's own as an open circle; bottom row: the
    oracle-length exact match diagnostic, mean over seeds with the range over seeds as bars.  One
    colour and marker per model (`model_palette`, `model_markers`); ticks at the measured lengths only;
    a solid line joins lengths inside the trained range, a dotted one the lengths beyond it
    (nothing was measured in between); the trained lengths, side-by-side points included, are
    shaded and named above each panel."""
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(summary["task"]))
    models = list(dict.fromkeys(summary["series"]))  # a model, or a model under one of several settings
    series = series_names(records)
    seeds = _seed_accuracy(records, series)
    style = model_palette(models), model_markers(models)
    units = {r["task"]: r.get("length_unit", "length") for r in records}
    per_length = {
        series[r["id"]] for r in records if r.get("regime") == "per_length"
    }  # series of one model per training length
    fig, axes = plt.subplots(2, len(tasks), figsize=(4.6 * len(tasks), 7.6), squeeze=False, sharex="col")
    for j, task in enumerate(tasks):
        _accuracy_column(
            [axes[0][j], axes[1][j]],
            summary[summary["task"] == task],
            seeds[seeds["task"] == task],
            models,
            per_length,
            style,
            task,
            units.get(task, "length"),
        )
    _model_legend(fig, axes)
    suptitle(fig, _accuracy_title(records, models, per_length))
    fig.tight_layout()
    return _save(fig, figures, "accuracy_vs_length")


def _seed_accuracy(records: list[dict], series: dict) -> pd.DataFrame:
    """Each seed's exact match and oracle-length exact match per task, series and length, with the
    longest length it was trained on."""
    return pd.DataFrame(
        [
            {
                "task": r["task"],
                "series": series[r["id"]],
                "length": m["length"],
                "train_max": max(r["train_lengths"]),
                "seq_acc": m["seq_acc"],
                "oracle_seq_acc": m.get("oracle_seq_acc", math.nan),
            }
            for r in records
            if r["status"] == "ok"
            for m in r["metrics"]
        ],
        columns=["task", "series", "length", "train_max", "seq_acc", "oracle_seq_acc"],
    )


def _accuracy_column(
    axes: list,
    data: pd.DataFrame,
    points: pd.DataFrame,
    models: list[str],
    per_length: set,
    style: tuple[dict, dict],
    task: str,
    unit: str,
) -> None:
    """One task's column of the accuracy figure: exact match above, the oracle-length diagnostic
    below, each series at its lengths (a series of one model per length only at each model's own
    training length), side by side, over the shaded trained lengths; `style` holds each series'
    colour and marker."""
    lo, hi = data["train_min"].min(), data["train_max"].max()
    # a series of one model per length: each model at its own training length; the others at every length
    data = data[~data["series"].isin(per_length) | (data["length"] == data["train_max"])]
    points = points[~points["series"].isin(per_length) | (points["length"] == points["train_max"])]
    lengths = sorted(set(data["length"]))
    dodge = 0.012 * (max(lengths) - min(lengths) or 1)  # error bars side by side, not on top of each other
    offsets = {model: (k - (len(models) - 1) / 2) * dodge for k, model in enumerate(models)}
    reach = max(map(abs, offsets.values()), default=0.0)
    palette, markers = style
    for i, (column, label) in enumerate(
        (("seq_acc", "exact match (%)"), ("oracle_seq_acc", "oracle-length exact match (%)"))
    ):
        ax = axes[i]
        _trained_span(ax, lo - 0.5 - reach, hi + 0.5 + reach, (lo + hi) / 2)  # holds every dodged point
        for model in models:
            d = data[data["series"] == model].groupby("length").mean(numeric_only=True).sort_index()
            mean = d[f"{column}_mean"] if len(d) else pd.Series(dtype=float)
            if d.empty or mean.isna().all():
                continue
            here = points[(points["series"] == model) & points["length"].isin(d.index)]
            _accuracy_series(ax, d, mean, here, column, offsets[model], (lo, hi), palette[model], markers[model], model)
        ax.set(xlabel=f"input length ({unit})" if i == 1 else "", ylabel=label, ylim=(-3, 105))
        ax.set_title(task if i == 0 else "", pad=16)  # above the "trained lengths" label
        ax.set_xticks(lengths)  # only what was measured


def _trained_span(ax, start: float, end: float, middle: float) -> None:
    """The trained lengths of a panel, shaded from `start` to `end` and named above the panel at `middle`."""
    from matplotlib import transforms

    ax.axvspan(start, end, color="0.93", zorder=0, gid="trained")
    above = transforms.blended_transform_factory(ax.transData, ax.transAxes)
    ax.text(middle, 1.01, "trained lengths", transform=above, ha="center", va="bottom", fontsize=8, color="0.35")


def _accuracy_series(
    ax,
    d: pd.DataFrame,
    mean: pd.Series,
    points: pd.DataFrame,
    column: str,
    offset: float,
    trained: tuple,
    colour,
    marker: str,
    model: str,
) -> None:
    """One series in one accuracy panel: the mean per length with its bars (the 95% interval for
    exact match, the range over seeds for the oracle-length diagnostic), a solid line inside the
    trained lengths and a dotted one where it leaves them, and, for exact match, each seed's own
    value as an open circle."""
    lo, hi = trained
    if column == "seq_acc":
        bars = [100 * (mean - d["seq_acc_ci_low"]), 100 * (d["seq_acc_ci_high"] - mean)]
    else:  # the range over seeds
        spread = points.groupby("length")[column].agg(["min", "max"]).reindex(d.index)
        bars = [100 * (mean - spread["min"]), 100 * (spread["max"] - mean)]
    # a mean of equal seeds can land an ulp outside them ((0.7 + 0.7 + 0.7) / 3 < 0.7)
    bars = [b.clip(lower=0) for b in bars]
    x = d.index + offset
    ax.errorbar(
        x,
        100 * mean,
        yerr=bars,
        marker=marker,
        markersize=4.5,
        capsize=2.5,
        color=colour,
        linestyle="none",
        label=model,
    )
    xs, ys, measured = np.asarray(x), 100 * mean.to_numpy(), list(d.index)
    for a in range(len(xs) - 1):  # solid inside the trained range, dotted where a segment leaves it
        style = "-" if lo <= measured[a] and measured[a + 1] <= hi else ":"
        ax.plot(
            xs[a : a + 2],
            ys[a : a + 2],
            linestyle=style,
            linewidth=1.2,
            color=colour,
            gid="inside" if style == "-" else "beyond",
        )
    if column == "seq_acc":
        # every seed's own exact match
        ax.scatter(
            points["length"] + offset,
            100 * points["seq_acc"],
            s=14,
            facecolors="none",
            edgecolors=colour,
            linewidths=0.8,
            zorder=3,
            gid="seed",
        )


def _model_legend(fig, axes) -> None:
    """One legend for the whole figure, right of its panels: every series drawn in any panel, once."""
    handles, labels = [], []
    for ax in axes.flat:
        for handle, name in zip(*ax.get_legend_handles_labels()):
            if name not in labels:
                handles.append(handle)
                labels.append(name)
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), title="model")


def _accuracy_title(records: list[dict], models: list[str], per_length: set) -> str:
    """The accuracy figure's title: what its rows show, over how many seeds and examples, which
    series were trained one model per length, and a note when the seeds are too few for a test."""
    regime = (
        "; one model trained per length"
        if per_length == set(models)
        else f"; one model per length for {', '.join(sorted(per_length))}"
        if per_length
        else ""
    )
    return (
        f"Greedy-decoded exact match vs input length: mean and 95% interval over {seeds_and_examples(records)} (circles: each seed){regime};\n"
        "below, the oracle-length diagnostic: END held back until the target's length (mean, bars: range over seeds); "
        "dotted: beyond the trained lengths"
        + (f";\n{note}" if (note := few_seeds_note(len({r["seed"] for r in records}))) else "")
    )


def plot_position_accuracy(records: list[dict], figures: Path) -> list[str]:
    """Per-position character accuracy at each task's longest trained length (top row) and its
    first length beyond the trained range (bottom row, when evaluated): mean over seeds
    (markers), the range over seeds (band), chance, a uniform guess over the output alphabet
    (dashed), and where each unit of the output begins for tasks with a fixed
    `output_unit_width` (grey lines: one per date)."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rows, chance = _position_rows(records)
    if not rows:
        return []
    data = pd.DataFrame(rows)
    tasks = list(dict.fromkeys(data["task"]))
    places = [w for w in ("longest trained", "first beyond") if w in set(data["where"])]
    models = list(dict.fromkeys(data["model"]))
    style = model_palette(models), model_markers(models)
    units = {r["task"]: r.get("length_unit", "length") for r in records}
    fig, axes = plt.subplots(len(places), len(tasks), figsize=(4.6 * len(tasks), 3.6 * len(places)), squeeze=False)
    for i, where in enumerate(places):
        for ax, task in zip(axes[i], tasks):
            d = data[(data["task"] == task) & (data["where"] == where)]
            if d.empty:
                ax.axis("off")
                continue
            d = d[d["length"] == d["length"].max()]  # one length per panel
            _position_panel(ax, d, models, style, chance.get(task, (None, None)))
            # positions count from 1
            ax.set(
                title=f"{task}, length {d['length'].max()} ({units.get(task, 'length')}), {where}",
                xlabel="output position (characters)",
                ylabel="character accuracy (%)",
                ylim=(-3, 103),
                xlim=(0.5, d["position"].max() + 0.5),
            )
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    handles, labels = max((ax.get_legend_handles_labels() for ax in axes.flat), key=lambda hl: len(hl[1]))
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), title="model")
    suptitle(
        fig,
        f"Where in the output greedy decoding goes wrong: mean over {seeds_and_examples(records)}; band: range over seeds; "
        "dashed: chance (a uniform guess over the output alphabet)"
        + "".join(
            f"; grey lines: where each {units.get(task, 'unit').rstrip('s')} of {task} begins"
            for task, (_, width) in chance.items()
            if width and width > 1
        ),
    )
    fig.tight_layout()
    return _save(fig, figures, "position_accuracy")


def _position_rows(records: list[dict]) -> tuple[list[dict], dict]:
    """Each seed's character accuracy per output position at its longest trained length and at
    its first length beyond the trained range, and each task's chance and output unit width
    (`output_shape`)."""
    rows = []
    series = series_names(records)
    chance = {}
    for r in records:
        if r["status"] != "ok":
            continue
        chance.setdefault(r["task"], output_shape(r))
        inside = [m for m in r["metrics"] if m["in_training_range"]] or r["metrics"]
        beyond = [m for m in r["metrics"] if not m["in_training_range"] and m["length"] > max(r["train_lengths"])]
        for where, m in (
            ("longest trained", max(inside, key=lambda m: m["length"])),
            ("first beyond", min(beyond, key=lambda m: m["length"]) if beyond else None),
        ):
            if m is None:
                continue
            for pos, acc in enumerate(m["position_acc"]):
                rows.append(
                    {
                        "task": r["task"],
                        "where": where,
                        "model": series[r["id"]],
                        "seed": r["seed"],
                        "length": m["length"],
                        "position": pos + 1,
                        "accuracy": 100 * acc,
                    }
                )
    return rows, chance


def _position_panel(ax, d: pd.DataFrame, models: list[str], style: tuple[dict, dict], shape: tuple) -> None:
    """One task at one length: each model's mean accuracy per position (markers) over the range
    over seeds (band), chance (dashed) and, for outputs made of fixed-width units, a grey line
    where each unit begins; `shape` is the task's chance and unit width."""
    palette, markers = style
    for model in models:
        by_position = d[d["model"] == model].groupby("position")["accuracy"]
        mean = by_position.mean()
        if mean.empty:
            continue
        ax.fill_between(mean.index, by_position.min(), by_position.max(), color=palette[model], alpha=0.12, linewidth=0)
        ax.plot(mean.index, mean.values, marker=markers[model], markersize=3, label=model, color=palette[model])
    guess, width = shape
    if guess:
        ax.axhline(100 * guess, color="0.4", linestyle="--", linewidth=0.8, gid="chance")
        ax.text(1.0, 100 * guess, " chance", transform=ax.get_yaxis_transform(), va="center", fontsize=7, color="0.4")
    if width and width > 1:  # where each unit of the output (a date) begins
        for start in range(width, int(d["position"].max()), width):
            ax.axvline(start + 0.5, color="0.75", linewidth=0.7, linestyle="-", zorder=0, gid="unit boundary")


ATTENTION_EXAMPLES = {  # record key: (figure name, which length the figure shows, which example it looks for)
    "attention_example": (
        "attention_maps",
        "at the evaluated length inside the trained range nearest its middle",
        "the first the model gets right",
    ),
    "attention_example_beyond": (
        "attention_maps_beyond",
        "at the first evaluated length beyond the trained range",
        "the first the model gets wrong",
    ),
}


def plot_attention_maps(records: list[dict], figures: Path, key: str = "attention_example") -> list[str]:
    """One test example per task x attention model (lowest seed), the one kept under the record's
    `key` (`ATTENTION_EXAMPLES`): attention weight of each output step (rows) on each source
    character (columns), with a colour bar.  Each panel names the example's length, seed and
    which test example it is (and why that one), prints its source, and its target and
    prediction up to and including their first difference, marked right or wrong.  Ticks label
    every character where the labels fit without overlapping, else every k-th, which the
    axis label then says (`_fit_character_ticks`)."""
    import matplotlib.pyplot as plt

    use_fonts()
    name, where, _ = ATTENTION_EXAMPLES[key]
    chosen: dict[tuple[str, str], dict] = {}
    for r in sorted(records, key=lambda r: r["seed"]):
        ex = r.get(key)
        if r["status"] == "ok" and ex and ex.get("weights") and (r["task"], r["model"]) not in chosen:
            chosen[(r["task"], r["model"])] = r
    if not chosen:
        return []
    tasks = list(dict.fromkeys(t for t, _ in chosen))
    models = list(dict.fromkeys(m for _, m in chosen))
    width = min(7.0, max(4.2, 0.07 * max(len(r[key]["source"]) for r in chosen.values())))  # inches a panel
    titles = {pair: _attention_title(r, key, int(width * 15)) for pair, r in chosen.items()}
    heights = [
        _attention_row_height([chosen[t, m] for m in models if (t, m) in chosen], key, titles, width) for t in tasks
    ]
    fig = plt.figure(figsize=(width * len(models) + 1.2, sum(heights)), layout="constrained")
    axes = fig.subplots(len(tasks), len(models), squeeze=False, gridspec_kw={"height_ratios": heights})
    image, shown_text, ticks = None, "", []
    for i, task in enumerate(tasks):
        for j, model in enumerate(models):
            ax, r = axes[i][j], chosen.get((task, model))
            if r is None:
                ax.axis("off")
                continue
            ex = r[key]
            w = np.asarray(ex["weights"])
            # square cells: a short example is small, not stretched
            image = ax.imshow(w, cmap="viridis", vmin=0, vmax=1, aspect="equal")
            ticks += [(ax, "x", list(ex["source"])), (ax, "y", (list(ex["prediction"]) + ["END"])[: w.shape[0]])]
            shown_text += ex["source"] + ex["prediction"] + ex["target"]
            right = ex["prediction"] == ex["target"]
            ax.set_title(titles[task, model], fontsize=8, color="black" if right else "#b2182b")
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.5, label="attention weight")
    _fit_character_ticks(fig, ticks)
    without = sorted(
        {r["model"] for r in records if r.get("attention") == "none"},
        key=lambda m: (m not in MODEL_ORDER, MODEL_ORDER.index(m) if m in MODEL_ORDER else 0, m),
    )
    note = f"; {', '.join(without)}: no attention, so no weights to show" if without else ""
    suptitle(
        fig,
        "Attention weights of one test example per model (rows: output steps, columns: source characters), "
        f"{where}; each panel says which test example it shows{note}",
    )
    add_marks_note(fig, shown_text)
    return _save(fig, figures, name)


def _attention_row_height(panels: list[dict], key: str, titles: dict, width: float) -> float:
    """Inches for one task's row of attention maps `width` inches wide: the tallest image at
    square cells (at most 1.3 times as tall as wide), its title's lines, and the tick labels."""
    tallest = max(min(1.3, len(r[key]["weights"]) / max(1, len(r[key]["source"]))) for r in panels)
    lines = max(titles[r["task"], r["model"]].count("\n") + 1 for r in panels)
    return (width - 1.0) * tallest + 0.15 * lines + 0.9  # an inch of the width goes to the y labels


def _attention_title(r: dict, key: str, chars: int) -> str:
    """A panel's title, each line wrapped to `chars` characters: task, model, seed and length;
    which test example is shown; its source; its target and prediction up to and including
    their first difference, and the verdict."""
    ex = r[key]
    unit = r.get("length_unit", "")
    lengths = r.get("train_lengths")
    trained = f"trained {min(lengths)}..{max(lengths)}; " if lengths else ""
    at_length = next((m for m in r.get("metrics", []) if m["length"] == ex["length"]), None)
    accuracy = f"exact match {100 * at_length['seq_acc']:.0f}%" if at_length is not None else ""
    detail = f" ({trained}{accuracy})" if trained or accuracy else ""
    target, prediction, first = shown_up_to_difference(ex["target"], ex["prediction"])
    which = _which_example(r, key, at_length)
    if first is not None:
        cut = target.endswith("…") or prediction.endswith("…")
        which += f"; {'printed up to ' if cut else ''}their first difference: character {first + 1}"
    lines = [
        f"{r['task']} / {r['model']}, seed {r['seed']}, length {ex['length']}{' ' + unit if unit else ''}{detail}",
        which,
        f"source '{readable(ex['source'])}'",
        f"target '{target}'",
        f"predicted '{prediction}' ({'right' if first is None else 'WRONG'})",
    ]
    return "\n".join(textwrap.fill(line, chars, break_long_words=False, break_on_hyphens=False) for line in lines)


def _which_example(r: dict, key: str, at_length: dict | None) -> str:
    """Which test example a panel shows and why that one: 'test example 7 of 50, the first the
    model gets right', or the first example when none is right (or, beyond the range, none
    wrong), or when only the first one's weights were kept (a model trained without END)."""
    ex = r[key]
    if "index" not in ex:  # records made before the choice hold the first example
        return "the first test example of its length"
    n = f" of {at_length['n_examples']:,}" if at_length and at_length.get("n_examples") else ""
    looked_for = ATTENTION_EXAMPLES[key][2]
    wanted_right = key == "attention_example"
    if (ex["prediction"] == ex["target"]) == wanted_right:
        return f"test example {ex['index'] + 1}{n}, {looked_for}"
    if not (r.get("train_config") or {}).get("end_token", True):
        return f"test example 1{n}, the only one whose weights were kept (a model trained without END)"
    return f"test example 1{n}: it gets {'none' if wanted_right else 'every one'} {'right' if wanted_right else 'right'}, so the first"


def shown_up_to_difference(target: str, prediction: str, whole: int = 40) -> tuple[str, str, int | None]:
    """`target` and `prediction` as a title prints them (`study.fonts.readable`): whole when both
    have at most `whole` characters, else each cut after the first character where they differ
    ("…" marks a cut), so that two strings that differ never print alike; and the index of that
    character (None when they are equal).  A prediction that stops early differs where it ends:
    the target is printed one character past it."""
    first = next((k for k, (a, b) in enumerate(zip(target, prediction)) if a != b), min(len(target), len(prediction)))
    if target == prediction:
        return readable(target), readable(prediction), None
    if max(len(target), len(prediction)) <= whole:
        return readable(target), readable(prediction), first

    def cut(text: str) -> str:
        return readable(text[: first + 1]) + ("…" if len(text) > first + 1 else "")

    return cut(target), cut(prediction), first


def _fit_character_ticks(fig, ticks: list[tuple]) -> None:
    """Labels each (axes, "x" or "y", tokens) of `ticks` with every token where the labels fit
    without overlapping at the figure's drawn size, else with every k-th for the smallest k that
    fits; the axis label says which ("every 3rd of 110 labelled").  Measured on the renderer, so
    wide marks ("NNBSP", "END") and long sources count as drawn."""
    steps = [1] * len(ticks)
    for (ax, axis, tokens), step in zip(ticks, steps):
        _character_axis(ax, axis, tokens, step)
    for _ in range(8):  # the layout moves as labels change; a few rounds settle it
        fig.draw_without_rendering()
        renderer = fig.canvas.get_renderer()
        changed = False
        for k, (ax, axis, tokens) in enumerate(ticks):
            labels = ax.get_xticklabels() if axis == "x" else ax.get_yticklabels()
            boxes = [t.get_window_extent(renderer) for t in labels if t.get_text()]
            if not overlapping(boxes) or steps[k] >= len(tokens):
                continue
            origin, one = (ax.transData.transform(p) for p in ((0, 0), (1, 1)))
            per_token = abs(one[0] - origin[0]) if axis == "x" else abs(one[1] - origin[1])
            extent = max(b.width if axis == "x" else b.height for b in boxes) + 2  # 2 pixels between labels
            steps[k] = min(len(tokens), max(steps[k] + 1, math.ceil(extent / max(per_token, 1e-9))))
            _character_axis(ax, axis, tokens, steps[k])
            changed = True
        if not changed:
            return


def _character_axis(ax, axis: str, tokens: list[str], step: int) -> None:
    """Ticks every `step`-th token of an attention map's `axis` and names the axis, with how many
    of its characters are labelled when not all are."""
    character_ticks(ax, axis, tokens, step)
    what = "source character" if axis == "x" else "predicted character"
    if step > 1:
        ordinal = {2: "2nd", 3: "3rd"}.get(step, f"{step}th")
        written = "; the source is written above" if axis == "x" else ""
        what += f"\n(every {ordinal} of {len(tokens)} labelled{written})"
    (ax.set_xlabel if axis == "x" else ax.set_ylabel)(what)


def overlapping(boxes: list) -> bool:
    """Whether any two of the bounding boxes `boxes` (matplotlib `Bbox`, e.g. drawn tick labels)
    overlap, by however little."""
    for a, b in itertools.combinations(boxes, 2):
        if min(a.x1, b.x1) > max(a.x0, b.x0) and min(a.y1, b.y1) > max(a.y0, b.y0):
            return True
    return False


def plot_training_curves(records: list[dict], figures: Path) -> list[str]:
    """Over training examples (log scale), one line per model and seed (colour and dashes):
    validation exact match over all trained lengths pooled; the loss per target character on a
    log scale (validation, teacher-forced: the convergence measure; the training loss for
    records that predate it); and the learning rate (log scale, each rate reached a labelled
    tick, each model's lines nudged apart by a few percent so that equal rates stay visible).
    A run with one validation point draws it as a marker; every log axis labels a tick at or
    beyond each end of its data."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    data, with_validation_loss = _training_rows(records)
    if data.empty:
        return []
    tasks = list(dict.fromkeys(data["task"]))
    models = list(dict.fromkeys(data["model"]))
    seeds = sorted(set(data["seed"]))  # one dash pattern per seed, the same in every panel
    panels = [
        ("val_seq_acc", "validation exact match,\nall trained lengths pooled (%)"),
        ("loss", f"{'validation' if with_validation_loss else 'training'} loss\n(nats/char, teacher-forced)"),
    ]
    nudge = _nudges(models, seeds)
    if data["learning_rate"].notna().any():
        data["learning_rate_drawn"] = data["learning_rate"] * [nudge[m, s] for m, s in zip(data["model"], data["seed"])]
        spread = 100 * (max(nudge.values()) - 1)
        panels.append(("learning_rate_drawn", f"learning rate (lines nudged\napart, up to {spread:.0f}% off)"))
    fig, axes = plt.subplots(
        len(panels), len(tasks), figsize=(4.6 * len(tasks), 3.1 * len(panels)), squeeze=False, sharex="col"
    )
    for j, task in enumerate(tasks):
        d = data[data["task"] == task]
        for i, (column, label) in enumerate(panels):
            ax = axes[i][j]
            _training_panel(ax, d, column, models, seeds, legend=(i, j) == (0, len(tasks) - 1))
            ax.set(
                title=task if i == 0 else "",
                xlabel="training examples seen" if i == len(panels) - 1 else "",
                ylabel=label,
            )
    if axes[0][-1].get_legend() is not None:  # two sections, headed "model" and "seed"
        sns.move_legend(axes[0][-1], "center left", bbox_to_anchor=(1.02, 0.5))
    suptitle(
        fig,
        "Training: validation exact match (greedy), loss and learning rate, one line per seed "
        f"(colour: model, dashes: seed; {seeds_and_examples(records).split(',')[0]})",
    )
    fig.tight_layout()
    return _save(fig, figures, "training_curves")


def _training_panel(ax, d: pd.DataFrame, column: str, models: list[str], seeds: list[int], legend: bool) -> None:
    """One panel of the training curves: `column` of the rows `d` over examples seen (log), a line
    per model (colour) and seed (dashes); a run validated once drawn as a marker; the exact match
    on 0-100, the loss and the learning rate on labelled log axes."""
    import warnings

    import seaborn as sns

    with warnings.catch_warnings():  # one validation point: seaborn's limits are singular until set below
        warnings.filterwarnings("ignore", "Attempting to set identical", UserWarning)
        sns.lineplot(
            data=d,
            x="examples_seen",
            y=column,
            hue="model",
            hue_order=models,
            palette=model_palette(models),
            style="seed",
            style_order=seeds,
            estimator=None,
            linewidth=1.0,
            ax=ax,
            legend=legend,
        )
    for line in ax.get_lines():
        if len(line.get_xdata()) == 1:  # a run validated once: a point, not an invisible line
            line.set_marker("o")
            line.set_markersize(4)
    log_scale(ax, "x")
    _cover(ax, "x", d["examples_seen"])
    if column == "val_seq_acc":
        ax.set_ylim(-3, 103)
    elif column == "loss":
        log_scale(ax, "y")
        _label_log_ends(ax, d[column])
    else:
        log_scale(ax, "y")
        _label_rates(ax, d["learning_rate"], d[column])


def _training_rows(records: list[dict]) -> tuple[pd.DataFrame, bool]:
    """One row per record and validation point (task, model, seed, examples seen, validation
    exact match in %, loss, learning rate), and whether every point has a validation loss (else
    the training loss stands in for all)."""
    with_validation_loss = all("val_loss" in h for r in records for h in r.get("history", []))
    series = series_names(records)
    rows = [
        {
            "task": r["task"],
            "model": series[r["id"]],
            "seed": r["seed"],
            "examples_seen": h["examples_seen"],
            "val_seq_acc": 100 * h["val_seq_acc"],
            "loss": h.get("val_loss", h["loss"]) if with_validation_loss else h["loss"],
            "learning_rate": h.get("learning_rate", math.nan),
        }
        for r in records
        for h in r.get("history", [])
    ]
    return pd.DataFrame(rows), with_validation_loss


def _nudges(models: list[str], seeds: list[int]) -> dict[tuple[str, int], float]:
    """A factor near 1 per (model, seed): 5% apart between models, 1.5% between seeds, centred
    on 1, so that runs at one learning rate draw side by side on a log axis, not on top of
    each other."""
    return {
        (m, s): 1.05 ** (i - (len(models) - 1) / 2) * 1.015 ** (k - (len(seeds) - 1) / 2)
        for i, m in enumerate(models)
        for k, s in enumerate(seeds)
    }


def _cover(ax, which: str, values: pd.Series) -> None:
    """A log axis around a single value (one validation point) spans a factor of 2 each way
    instead of matplotlib's singular limits."""
    values = values.dropna()
    if len(values) and values.min() == values.max():
        x = float(values.min())
        (ax.set_xlim if which == "x" else ax.set_ylim)(x / 2, x * 2)


NICE = (1, 2, 3, 5)  # the mantissas of the end ticks a log axis gets


def _nice(value: float, up: bool) -> float:
    """The nearest of 1, 2, 3, 5 times a power of ten at or above (`up`) or at or below `value`."""
    power = math.floor(math.log10(value))
    candidates = [m * 10.0**p for p in (power - 1, power, power + 1) for m in NICE]
    return (
        min(c for c in candidates if c >= value * (1 - 1e-9))
        if up
        else max(c for c in candidates if c <= value * (1 + 1e-9))
    )


def _label_log_ends(ax, values: pd.Series) -> None:
    """Labels a log y axis at every power of ten inside its data and at a round value (1, 2, 3 or
    5 times a power of ten) at or beyond each end, so that no drawn value lies above the highest
    label or below the lowest (a loss from 1.1 down to 0.0005: 0.0005, 0.001, ..., 1, 2)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    values = values[values > 0].dropna()
    if values.empty:
        return
    low, high = _nice(float(values.min()), up=False), _nice(float(values.max()), up=True)
    ticks = {low, high} | {10.0**p for p in range(math.ceil(math.log10(low)), math.floor(math.log10(high)) + 1)}
    ax.yaxis.set_major_locator(FixedLocator(sorted(ticks)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))  # every fixed tick labelled
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_ylim(low / 1.15, high * 1.15)


def _label_rates(ax, rates: pd.Series, drawn: pd.Series) -> None:
    """Labels a learning-rate axis (log) at every rate the runs reached, the lowest included
    (at most eight; more get `_label_log_ends`' ticks), its limits around the nudged lines."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    reached = sorted(set(rates.dropna().round(12)))
    if not reached:
        return
    if len(reached) > 8:
        _label_log_ends(ax, drawn)
        return
    ax.yaxis.set_major_locator(FixedLocator(reached))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_ylim(min(reached + [drawn.min()]) / 1.2, max(reached + [drawn.max()]) * 1.2)


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

    data = _learning_rows(records)
    if data.empty:
        return []
    tasks = list(dict.fromkeys(data["task"]))
    models = [m for m in MODEL_ORDER if m in set(data["model"])] + sorted(set(data["model"]) - set(MODEL_ORDER))
    units = {r["task"]: r.get("length_unit", "length") for r in records}
    fig, axes = plt.subplots(
        len(tasks), len(models), figsize=(3.4 * len(models) + 1.6, 2.9 * len(tasks)), squeeze=False, sharey=True
    )
    for i, task in enumerate(tasks):
        d = data[data["task"] == task]
        shown = _shown_lengths(sorted(set(d["length"])))
        colours = dict(zip(shown, sns.color_palette("viridis_r", len(shown))))
        # the row's y label goes there
        first_shown = min(j for j, model in enumerate(models) if model in set(d["model"]))
        for j, model in enumerate(models):
            ax = axes[i][j]
            m = d[d["model"] == model]
            if m.empty:  # a model (or variant) this task was not run with
                ax.axis("off")
                continue
            seeds = m["seed"].nunique()
            _learning_panel(ax, m, seeds, colours)
            ax.set(
                # one panel's width
                title=textwrap.fill(f"{task} / {model} ({seeds} seed{'s' if seeds != 1 else ''})", 36),
                ylim=(-3, 103),
                xlabel="training examples seen (thousands)" if i == len(tasks) - 1 else "",
                ylabel="validation exact match (%)" if j == first_shown else "",
            )
            if j == first_shown:  # shared y: only the first column has tick labels, and it may be empty
                ax.tick_params(labelleft=True)
            log_scale(ax, "x")
        handles, labels = max((ax.get_legend_handles_labels() for ax in axes[i]), key=lambda hl: len(hl[1]))
        axes[i][-1].legend(
            handles,
            labels,
            loc="center left",
            bbox_to_anchor=(1.02, 0.5),
            title=f"trained length\n({units.get(task, 'length')})",
            fontsize=8,
        )
    suptitle(
        fig,
        "Does the gap close with training? Validation exact match (greedy) per training length, mean over seeds;\n"
        f"dotted: after the first seed stopped, the mean of those still training; {_validation_size(records)}",
    )
    fig.tight_layout()
    return _save(fig, figures, "learning_curves_by_length")


def _learning_rows(records: list[dict]) -> pd.DataFrame:
    """Each seed's validation exact match per training length at every validation of its training
    (empty where no record kept one)."""
    series = series_names(records)
    rows = [
        {
            "task": r["task"],
            "model": series[r["id"]],
            "seed": r["seed"],
            "examples_seen": h["examples_seen"],
            "length": int(length),
            "val_seq_acc": 100 * acc,
        }
        for r in records
        for h in r.get("history", [])
        for length, acc in h.get("val_seq_acc_by_length", {}).items()
    ]
    return pd.DataFrame(rows)


def _learning_panel(ax, m: pd.DataFrame, seeds: int, colours: dict) -> None:
    """One task and model: a curve per shown training length (`colours`' keys), mean over the
    `seeds` while all of them train, dotted on from the first seed's stop."""
    for length, colour in colours.items():
        by_point = m[m["length"] == length].groupby("examples_seen")["val_seq_acc"]
        curve, present = by_point.mean(), by_point.count()
        every = present == seeds  # points every seed reached; later ones rest on the seeds still training
        ax.plot(
            curve.index[every] / 1000,
            curve.values[every],
            color=colour,
            marker=".",
            markersize=3,
            label=str(length),
            gid="all seeds",
        )
        if not every.all():
            tail = curve.index >= curve.index[every].max() if every.any() else np.ones(len(curve), bool)
            ax.plot(
                curve.index[tail] / 1000,
                curve.values[tail],
                color=colour,
                linestyle=":",
                linewidth=1.0,
                gid="fewer seeds",
            )


def _validation_size(records: list[dict]) -> str:
    """How many validation examples each point of the learning curves rests on, with the largest
    standard error that gives."""
    n_validation = sorted({(r.get("train_config") or {}).get("n_validation") for r in records} - {None})
    return (
        f"{n_validation[0]} validation examples per length and seed (standard error up to {50 / math.sqrt(n_validation[0]):.0f} points)"
        if len(n_validation) == 1
        else "validation examples per length and seed as configured"
    )
