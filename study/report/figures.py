"""The report's figures, drawn with matplotlib and seaborn from the records and the tables.

    plot_accuracy_vs_length(summary, records, out / "figures")   # each returns the PNG paths it wrote

Every figure is saved as PNG and SVG under `figures/` with no date stamp, so a
redraw of the same records gives the same files.  One colour and marker per model
in every figure (`model_palette`, `model_markers`); a task run under several settings
draws one series per setting (`study.report.tables.series_names`).
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

from study.files import write_atomic
from study.fonts import add_marks_note, character_ticks, readable, use_fonts
from study.report.tables import MODEL_ORDER, distinct_test_items, output_shape, series_names


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
    from matplotlib import transforms

    tasks = list(dict.fromkeys(summary["task"]))
    models = list(dict.fromkeys(summary["series"]))  # a model, or a model under one of several settings
    series = series_names(records)
    seeds = pd.DataFrame(
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
    palette, markers = model_palette(models), model_markers(models)
    units = {r["task"]: r.get("length_unit", "length") for r in records}
    per_length = {
        series[r["id"]] for r in records if r.get("regime") == "per_length"
    }  # series of one model per training length
    fig, axes = plt.subplots(2, len(tasks), figsize=(4.6 * len(tasks), 7.6), squeeze=False, sharex="col")
    for j, task in enumerate(tasks):
        data = summary[summary["task"] == task]
        lo, hi = data["train_min"].min(), data["train_max"].max()
        points_here = seeds[seeds["task"] == task]
        # a series of one model per length: each model at its own training length; the others at every length
        data = data[~data["series"].isin(per_length) | (data["length"] == data["train_max"])]
        points_here = points_here[
            ~points_here["series"].isin(per_length) | (points_here["length"] == points_here["train_max"])
        ]
        lengths = sorted(set(data["length"]))
        dodge = 0.012 * (max(lengths) - min(lengths) or 1)  # error bars side by side, not on top of each other
        offsets = {model: (k - (len(models) - 1) / 2) * dodge for k, model in enumerate(models)}
        reach = max(map(abs, offsets.values()), default=0.0)
        for i, (column, label) in enumerate(
            (("seq_acc", "exact match (%)"), ("oracle_seq_acc", "oracle-length exact match (%)"))
        ):
            ax = axes[i][j]
            # holds every dodged point
            ax.axvspan(lo - 0.5 - reach, hi + 0.5 + reach, color="0.93", zorder=0, gid="trained")
            above = transforms.blended_transform_factory(ax.transData, ax.transAxes)
            ax.text(
                (lo + hi) / 2,
                1.01,
                "trained lengths",
                transform=above,
                ha="center",
                va="bottom",
                fontsize=8,
                color="0.35",
            )
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
                ax.errorbar(
                    x,
                    100 * mean,
                    yerr=bars,
                    marker=markers[model],
                    markersize=4.5,
                    capsize=2.5,
                    color=palette[model],
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
                        color=palette[model],
                        gid="inside" if style == "-" else "beyond",
                    )
                if i == 0:
                    # every seed's own exact match
                    ax.scatter(
                        points["length"] + offsets[model],
                        100 * points["seq_acc"],
                        s=14,
                        facecolors="none",
                        edgecolors=palette[model],
                        linewidths=0.8,
                        zorder=3,
                        gid="seed",
                    )
            ax.set(xlabel=f"input length ({units.get(task, 'length')})" if i == 1 else "", ylabel=label, ylim=(-3, 105))
            ax.set_title(task if i == 0 else "", pad=16)  # above the "trained lengths" label
            ax.set_xticks(lengths)  # only what was measured
    handles, labels = [], []
    for ax in axes.flat:
        for handle, name in zip(*ax.get_legend_handles_labels()):
            if name not in labels:
                handles.append(handle)
                labels.append(name)
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), title="model")
    regime = (
        "; one model trained per length"
        if per_length == set(models)
        else f"; one model per length for {', '.join(sorted(per_length))}"
        if per_length
        else ""
    )
    suptitle(
        fig,
        f"Greedy-decoded exact match vs input length: mean and 95% interval over {seeds_and_examples(records)} (circles: each seed){regime};\n"
        "below, the oracle-length diagnostic: END held back until the target's length (mean, bars: range over seeds); "
        "dotted: beyond the trained lengths",
    )
    fig.tight_layout()
    return _save(fig, figures, "accuracy_vs_length")


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
    if not rows:
        return []
    data = pd.DataFrame(rows)
    tasks = list(dict.fromkeys(data["task"]))
    places = [w for w in ("longest trained", "first beyond") if w in set(data["where"])]
    models = list(dict.fromkeys(data["model"]))
    palette, markers = model_palette(models), model_markers(models)
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
                ax.fill_between(
                    mean.index, by_position.min(), by_position.max(), color=palette[model], alpha=0.12, linewidth=0
                )
                ax.plot(mean.index, mean.values, marker=markers[model], markersize=3, label=model, color=palette[model])
            guess, width = chance.get(task, (None, None))
            if guess:
                ax.axhline(100 * guess, color="0.4", linestyle="--", linewidth=0.8, gid="chance")
                ax.text(
                    1.0,
                    100 * guess,
                    " chance",
                    transform=ax.get_yaxis_transform(),
                    va="center",
                    fontsize=7,
                    color="0.4",
                )
            if width and width > 1:  # where each unit of the output (a date) begins
                for start in range(width, int(d["position"].max()), width):
                    ax.axvline(start + 0.5, color="0.75", linewidth=0.7, linestyle="-", zorder=0, gid="unit boundary")
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


ATTENTION_EXAMPLES = {  # record key: (figure name, what the title says of the example)
    "attention_example": (
        "attention_maps",
        "inside the trained range (mid-range length): the first example the model gets right (the first where none is)",
    ),
    "attention_example_beyond": (
        "attention_maps_beyond",
        "at the first length beyond the trained range: the first example the model gets wrong (the first where none is)",
    ),
}


def plot_attention_maps(records: list[dict], figures: Path, key: str = "attention_example") -> list[str]:
    """One test example per task x attention model (lowest seed), the one kept under the record's
    `key` (`ATTENTION_EXAMPLES`): attention weight of each output step (rows) on each source
    character (columns), with a colour bar; each panel names the example's length, seed, target
    and prediction and marks the prediction right or wrong."""
    import matplotlib.pyplot as plt

    use_fonts()
    name, chosen_how = ATTENTION_EXAMPLES[key]
    chosen: dict[tuple[str, str], dict] = {}
    for r in sorted(records, key=lambda r: r["seed"]):
        ex = r.get(key)
        if r["status"] == "ok" and ex and ex.get("weights") and (r["task"], r["model"]) not in chosen:
            chosen[(r["task"], r["model"])] = r
    if not chosen:
        return []
    tasks = list(dict.fromkeys(t for t, _ in chosen))
    models = list(dict.fromkeys(m for _, m in chosen))
    fig, axes = plt.subplots(
        len(tasks),
        len(models),
        figsize=(4.2 * len(models) + 1.0, 4.4 * len(tasks)),
        squeeze=False,
        layout="constrained",
    )
    image = None
    shown_text = ""
    for i, task in enumerate(tasks):
        for j, model in enumerate(models):
            ax = axes[i][j]
            r = chosen.get((task, model))
            if r is None:
                ax.axis("off")
                continue
            ex = r[key]
            w = np.asarray(ex["weights"])
            # square cells: a short example is small, not stretched
            image = ax.imshow(w, cmap="viridis", vmin=0, vmax=1, aspect="equal")
            src = list(ex["source"])
            out = list(ex["prediction"]) + ["END"]
            out = out[: w.shape[0]]
            x_step, y_step = max(1, -(-len(src) // 24)), max(1, -(-len(out) // 24))  # at most 24 labels a side
            character_ticks(ax, "x", src, x_step)
            character_ticks(ax, "y", out, y_step)
            shown_text += ex["source"] + ex["prediction"] + ex["target"]
            right = ex["prediction"] == ex["target"]
            verdict = "right" if right else "WRONG"
            at_length = next((m["seq_acc"] for m in r.get("metrics", []) if m["length"] == ex["length"]), None)
            accuracy = f" (exact match {100 * at_length:.0f}%)" if at_length is not None else ""
            ax.set_title(
                f"{task} / {model}, length {ex['length']}{accuracy}, seed {r['seed']}\n"
                f"target {_shorten(ex['target'])}\npredicted {_shorten(ex['prediction'])} ({verdict})",
                fontsize=8,
                color="black" if right else "#b2182b",
            )
            ax.set(xlabel="source character", ylabel="predicted character")
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.5, label="attention weight")
    without = sorted(
        {r["model"] for r in records if r.get("attention") == "none"},
        key=lambda m: (m not in MODEL_ORDER, MODEL_ORDER.index(m) if m in MODEL_ORDER else 0, m),
    )
    note = f"; {', '.join(without)}: no attention, so no weights to show" if without else ""
    if not all("index" in r[key] for r in chosen.values()):  # records made before the choice hold the first example
        chosen_how = "the first test example of the length shown"
    suptitle(
        fig,
        "Attention weights of one test example per model (rows: output steps, columns: source characters): "
        f"{chosen_how}{note}",
    )
    add_marks_note(fig, shown_text)
    return _save(fig, figures, name)


def _shorten(text: str, most: int = 34) -> str:
    """`text` quoted for a title, cut to `most` characters, marks as `study.fonts.readable` writes them."""
    return "'" + readable(text if len(text) <= most else text[: most - 1] + "…") + "'"


def plot_training_curves(records: list[dict], figures: Path) -> list[str]:
    """Over training examples (log scale), one line per model and seed (colour and dashes):
    validation exact match over all trained lengths pooled; the loss per target character on a
    log scale (validation, teacher-forced: the convergence measure; the training loss for
    records that predate it); and the learning rate (log scale)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

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
    if not rows:
        return []
    data = pd.DataFrame(rows)
    tasks = list(dict.fromkeys(data["task"]))
    models = list(dict.fromkeys(data["model"]))
    seeds = sorted(set(data["seed"]))  # one dash pattern per seed, the same in every panel
    panels = [
        ("val_seq_acc", "validation exact match,\nall trained lengths pooled (%)"),
        ("loss", f"{'validation' if with_validation_loss else 'training'} loss\n(nats/char, teacher-forced)"),
    ]
    if data["learning_rate"].notna().any():
        panels.append(("learning_rate", "learning rate"))
    fig, axes = plt.subplots(
        len(panels), len(tasks), figsize=(4.6 * len(tasks), 3.1 * len(panels)), squeeze=False, sharex="col"
    )
    for j, task in enumerate(tasks):
        d = data[data["task"] == task]
        for i, (column, label) in enumerate(panels):
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
                ax=axes[i][j],
                legend=(i, j) == (0, len(tasks) - 1),
            )
            axes[i][j].set(
                title=task if i == 0 else "",
                xlabel="training examples seen" if i == len(panels) - 1 else "",
                ylabel=label,
            )
            log_scale(axes[i][j], "x")
            if column == "val_seq_acc":
                axes[i][j].set_ylim(-3, 103)
            else:
                log_scale(axes[i][j], "y")
    if axes[0][-1].get_legend() is not None:  # two sections, headed "model" and "seed"
        sns.move_legend(axes[0][-1], "center left", bbox_to_anchor=(1.02, 0.5))
    suptitle(
        fig,
        "Training: validation exact match (greedy), loss and learning rate, one line per seed "
        f"(colour: model, dashes: seed; {seeds_and_examples(records).split(',')[0]})",
    )
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
    if not rows:
        return []
    data = pd.DataFrame(rows)
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
            for length in shown:
                by_point = m[m["length"] == length].groupby("examples_seen")["val_seq_acc"]
                curve, present = by_point.mean(), by_point.count()
                every = present == seeds  # points every seed reached; later ones rest on the seeds still training
                ax.plot(
                    curve.index[every] / 1000,
                    curve.values[every],
                    color=colours[length],
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
                        color=colours[length],
                        linestyle=":",
                        linewidth=1.0,
                        gid="fewer seeds",
                    )
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
    n_validation = sorted({(r.get("train_config") or {}).get("n_validation") for r in records} - {None})
    per_point = (
        f"{n_validation[0]} validation examples per length and seed (standard error up to {50 / math.sqrt(n_validation[0]):.0f} points)"
        if len(n_validation) == 1
        else "validation examples per length and seed as configured"
    )
    suptitle(
        fig,
        "Does the gap close with training? Validation exact match (greedy) per training length, mean over seeds;\n"
        f"dotted: after the first seed stopped, the mean of those still training; {per_point}",
    )
    fig.tight_layout()
    return _save(fig, figures, "learning_curves_by_length")
