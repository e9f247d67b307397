"""The report layer: confidence intervals, and the committed reference redrawn from its records."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from study.report import write_report
from study.report.statistics import accuracy_interval, difference_bounds, paired_test
from study.results import load_records

RESULTS = Path(__file__).resolve().parent.parent / "results"
REFERENCES = sorted(p.parent for p in RESULTS.glob("reference*/cells")) + [
    RESULTS / "bottleneck",
    RESULTS / "end-control",
]  # the committed reference studies and experiments


def test_accuracy_intervals_stay_inside_0_100_and_include_sampling_error():
    mean, lo, hi = accuracy_interval([0.0, 0.0, 0.0], 1000)  # 0 of 1,000 in every seed
    assert mean == 0.0 and lo == 0.0 and 0.0005 < hi < 0.01  # not [0, 0]: the test set is finite
    mean, lo, hi = accuracy_interval([0.65, 0.84, 0.99], 1000)  # spread near 100: no clipping needed
    assert mean == pytest.approx(0.8267, abs=1e-4) and 0 < lo < 0.65 and 0.99 < hi < 1.0
    mean, lo, hi = accuracy_interval([0.5], 1000)  # one seed: test-set sampling only, not zero width
    assert (lo, hi) == pytest.approx((0.4685, 0.5315), abs=1e-3)
    assert accuracy_interval([0.2, np.nan, 0.2], 1000)[0] == pytest.approx(0.2)  # failed cells are dropped
    assert np.isnan(accuracy_interval([np.nan], 1000)[0])
    test = paired_test([1.0, 1.0, 0.98], [0.0, 0.0, 0.0], 1000)
    lo, hi = difference_bounds(test, 0.05)
    assert (
        test["mean"] == pytest.approx(0.9933, abs=2e-3) and 0 < lo < 0.98 and hi == 1.0
    )  # inside +-100 by construction


@pytest.mark.parametrize("seeds", [3, 5])
@pytest.mark.parametrize("accuracy", [0.001, 0.02, 0.5, 0.9, 0.99, 0.999])
@pytest.mark.parametrize("spread", [0.0, 0.3])
def test_accuracy_interval_coverage_by_simulation(seeds, accuracy, spread):
    """Seeds' true accuracies are logit-normal around `accuracy` (sd `spread` on the logit scale),
    each scored on 1,000 test examples; the interval must hold the mean true accuracy in about
    95% of 600 simulated studies (binomial noise of the estimate: about 1 point)."""
    from scipy.special import expit, logit

    rng = np.random.default_rng(int(1000 * accuracy) + seeds + int(10 * spread))
    target = expit(logit(accuracy) + spread * rng.standard_normal(200_000)).mean()
    covered = 0
    for _ in range(600):
        true = expit(logit(accuracy) + spread * rng.standard_normal(seeds))
        _, lo, hi = accuracy_interval(rng.binomial(1000, true) / 1000, 1000)
        covered += lo <= target <= hi
    assert 0.92 <= covered / 600 <= 1.0


@pytest.mark.parametrize("seeds,floor", [(3, 0.40), (5, 0.60)])
@pytest.mark.parametrize("good,bad,q", [(0.5, 0.01, 1 / 3), (0.99, 0.0, 1 / 3), (0.9, 0.05, 0.5), (0.99, 0.5, 0.2)])
def test_accuracy_interval_coverage_when_seeds_either_work_or_fail(seeds, floor, good, bad, q):
    """The stated limit (README, Metrics): a share q of seeds fail (true accuracy `bad`), the rest
    work (`good`); a study whose seeds all land on one side, with probability (1 - q)^m + q^m,
    cannot cover the mixture's mean, so coverage is about 1 - (1 - q)^m - q^m and no better
    than 47-77% with 3 seeds: the interval holds at least that, never the 95% of one mode."""
    rng = np.random.default_rng(seeds + int(100 * good) + int(100 * q))
    target = (1 - q) * good + q * bad
    covered = 0
    for _ in range(600):
        true = np.where(rng.random(seeds) < q, bad, good)
        _, lo, hi = accuracy_interval(rng.binomial(1000, true) / 1000, 1000)
        covered += lo <= target <= hi
    one_side = (1 - q) ** seeds + q**seeds
    assert floor <= covered / 600 <= 1 - one_side + 0.08  # the bound: every one-sided study missed


TABLES = ("metrics.csv", "summary.csv", "summary.md", "comparisons.csv", "quantities.csv", "report.md", "units.csv")


def test_a_reference_study_is_committed():
    assert RESULTS / "reference" in REFERENCES


@pytest.mark.parametrize("reference", REFERENCES, ids=lambda p: p.name)
def test_reference_report_redraws_to_the_committed_tables(tmp_path, reference, monkeypatch):
    """The tables and report.md redrawn from the committed records equal the committed ones (the
    figures of `reference` are drawn too; those of the larger merged reference are not saved,
    which the `drawn` fixture's figure tests cover)."""
    from study import report

    copy = tmp_path / "reference"
    shutil.copytree(reference, copy)
    for name in TABLES:
        (copy / name).unlink(missing_ok=True)
    if reference.name != "reference":
        monkeypatch.setattr(
            report.figures, "_save", lambda fig, folder, name: plt_close(fig) or [f"figures/{name}.png"]
        )
    write_report(copy)
    for name in TABLES:
        assert (copy / name).exists() == (reference / name).exists(), name
        if (copy / name).exists():
            assert (copy / name).read_text() == (reference / name).read_text(), name
    if reference.name == "reference":
        assert (copy / "figures" / "accuracy_vs_length.png").stat().st_size > 10000


def plt_close(fig) -> None:
    import matplotlib.pyplot as plt

    plt.close(fig)


@pytest.fixture
def figures_not_saved(monkeypatch):
    """Reports drawn with every figure built but none rendered to a file (the slow part), for
    tests about tables; the `drawn` fixture's tests check the saved figures."""
    from study import report

    monkeypatch.setattr(report.figures, "_save", lambda fig, folder, name: plt_close(fig) or [f"figures/{name}.png"])


def test_differences_from_none_are_paired_by_seed():
    import pandas as pd

    from study.report.tables import comparison_frame, difference_frame

    rows = []
    for seed, (none, dot) in enumerate([(0.10, 0.60), (0.30, 0.70), (0.20, 0.80)]):
        for model, acc in (("none", none), ("dot", dot)):
            rows.append(
                {
                    "task": "copy",
                    "setting": "s",
                    "train_min": 4,
                    "train_max": 8,
                    "length": 8,
                    "in_training_range": True,
                    "model": model,
                    "series": model,
                    "seed": seed,
                    "seq_acc": acc,
                    "n_examples": 1000,
                }
            )
    differences = lambda rows: difference_frame(comparison_frame(pd.DataFrame(rows)))  # noqa: E731
    diff = differences(rows)
    assert list(diff["model"]) == ["dot"]
    row = diff.iloc[0]
    assert row.diff_mean == pytest.approx(0.5, abs=0.02) and row.seeds == 3
    # paired: the per-seed differences (0.5, 0.4, 0.6) vary far less than either model (0.1-0.3, 0.6-0.8)
    assert 0.2 < row.diff_ci_low < 0.5 < row.diff_ci_high < 0.8
    unpaired = differences(
        [{**r, "seq_acc": r["seq_acc"] if r["model"] == "none" else [0.8, 0.6, 0.7][r["seed"]]} for r in rows]
    )
    assert unpaired.iloc[0].diff_ci_high - unpaired.iloc[0].diff_ci_low > row.diff_ci_high - row.diff_ci_low


def test_setting_keys_survive_a_csv_round_trip(tmp_path):
    """A setting key read back by `pandas.read_csv` with default options is the same string for
    every n_test of 1..399 (a bare hex digest such as "6e196681" reads as infinity), and so are
    the keys and ids of the committed reference's CSV files."""
    import pandas as pd

    from study import report

    record = json.loads(next((RESULTS / "reference" / "cells").glob("*.json")).read_text())
    for n in range(1, 400):  # one setting per file, as a study of one configuration writes it
        key = report.tables.setting_key({**record, "n_test": n})
        pd.DataFrame({"setting": [key, key]}).to_csv(tmp_path / "keys.csv", index=False)
        assert pd.read_csv(tmp_path / "keys.csv")["setting"].tolist() == [key, key], n
    for name in ("metrics.csv", "summary.csv", "comparisons.csv"):
        frame = pd.read_csv(RESULTS / "reference" / name)
        for column in {"setting", "cell_id"} & set(frame.columns):
            assert frame[column].map(type).eq(str).all(), (name, column)


def test_rows_of_different_settings_are_never_averaged(tmp_path, figures_not_saved):
    """Two folders with the same task and model under different budgets merge into two labelled
    tables, each with its own seeds, not into one row with twice the seeds."""
    import json

    copy = tmp_path / "two"
    shutil.copytree(RESULTS / "reference", copy)
    ids = json.loads((copy / "study.json").read_text())["cells"]
    for cid in ids[: len(ids) // 2]:  # half the cells, as if run with another learning rate
        path = copy / "cells" / f"{cid}.json"
        record = json.loads(path.read_text())
        original = record["train_config"]["learning_rate"]
        record["train_config"]["learning_rate"] = 0.5
        path.write_text(json.dumps(record))
    write_report(copy)
    summary = (copy / "summary.md").read_text()
    assert "train_config.learning_rate = 0.5" in summary and f"train_config.learning_rate = {original}" in summary
    import pandas as pd

    table = pd.read_csv(copy / "summary.csv")
    assert table.groupby(["task", "model", "length"])["setting"].nunique().max() == 2
    assert table["seeds"].max() == 3  # never 6
    # the figures keep them apart too: one line per model and setting, each at its own table's values
    import matplotlib

    matplotlib.use("Agg")
    from study import report

    records = report.load_records(copy)
    summary = report.tables.summary_frame(report.tables.metrics_frame(records))
    fig = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(report.figures, "_save", lambda f, folder, name: fig.setdefault(name, f) and [])
        report.figures.plot_accuracy_vs_length(summary, records, Path("unused"))
    labels = [t.get_text() for t in fig["accuracy_vs_length"].legends[0].get_texts()]
    assert len(labels) == summary["series"].nunique() and len(labels) > summary["model"].nunique()
    ax = fig["accuracy_vs_length"].axes[0]  # exact match of the first task
    task = summary["task"].iloc[0]
    drawn = {c.get_label(): c.lines[0] for c in ax.containers}  # errorbar containers: label -> data line
    assert len(drawn) == summary[summary["task"] == task]["series"].nunique()
    for label, line in drawn.items():
        rows = summary[(summary["task"] == task) & (summary["series"] == label)]
        np.testing.assert_allclose(
            np.asarray(line.get_ydata(), float), 100 * rows.sort_values("length")["seq_acc_mean"].to_numpy()
        )
    plt_close(fig["accuracy_vs_length"])
    with pytest.MonkeyPatch.context() as patch:  # the training curves: one line per model, setting and seed
        patch.setattr(report.figures, "_save", lambda f, folder, name: fig.setdefault(name, f) and [])
        report.figures.plot_training_curves(records, Path("unused"))
    series = report.tables.series_names(records)
    ax = fig["training_curves"].axes[0]
    lines = [line for line in ax.get_lines() if len(line.get_xdata()) > 0]
    assert len(lines) == len({(series[r["id"]], r["seed"]) for r in records if r["task"] == task and r.get("history")})
    plt_close(fig["training_curves"])


def _columns(row: str) -> int:
    import re

    return len(re.findall(r"(?<!\\)\|", row))


def test_text_with_markdown_table_syntax_keeps_every_table_in_shape(tmp_path, figures_not_saved):
    """A failed cell's error with pipes and a line break, and task options with a pipe: every row
    of every table in report.md has as many columns as its header."""
    copy = tmp_path / "odd"
    shutil.copytree(RESULTS / "reference", copy)
    ids = json.loads((copy / "study.json").read_text())["cells"]
    path = copy / "cells" / f"{ids[0]}.json"
    record = json.loads(path.read_text())
    record.update(status="failed", error="ValueError: target 'a|b' | not in the alphabet\nsecond line")
    path.write_text(json.dumps(record))
    path = copy / "cells" / f"{ids[1]}.json"
    record = json.loads(path.read_text())
    record["task_options"] = {
        **record.get("task_options", {}),
        "alphabet": "ab|$_",
    }  # another setting, captioned by its options
    path.write_text(json.dumps(record))
    text = write_report(copy).read_text()
    assert "target 'a\\|b' \\| not in the alphabet second line" in text
    header = None
    for line in text.splitlines():
        if line.startswith("|"):
            header = header or _columns(line)
            assert _columns(line) == header, line
        else:
            header = None


def test_a_failed_cell_is_one_terminal_line_whatever_its_error_says():
    from study.runner import summary_line

    line = summary_line(
        {"status": "failed", "task": "copy", "model": "dot", "seed": 0, "error": "ValueError: bad\ntarget\r\nhere"}
    )
    assert line == "copy/dot/seed 0: FAILED (ValueError: bad target here)"


def test_figure_text_is_drawn_as_written_not_as_mathtext():
    """Text from a task ("$" in an alphabet or a source) is drawn as it is; with mathtext on,
    "$_$" or "$\\frac$" fails to parse and saving the figure raises."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from study.fonts import character_ticks, use_fonts

    use_fonts()
    fig, ax = plt.subplots()
    character_ticks(ax, "x", ["$_$", "a", "$\\frac$"])  # tokens as a plugin's alphabet may hold them
    ax.set_title("copy, alphabet ab$_: source $_$ and $\\frac$")
    fig.savefig(io.BytesIO(), format="png")
    assert [t.get_text() for t in ax.get_xticklabels()] == ["$_$", "a", "$\\frac$"]
    plt_close(fig)


def test_report_with_a_failed_first_cell(tmp_path, figures_not_saved):
    """A cell that failed with an exception has no metrics or device details; the report still
    renders, shows it as missing and lists it."""
    import json

    import pandas as pd

    copy = tmp_path / "reference"
    shutil.copytree(RESULTS / "reference", copy)
    first = copy / "cells" / f"{json.loads((copy / 'study.json').read_text())['cells'][0]}.json"
    record = json.loads(first.read_text())
    for key in ("device", "versions", "attention_example"):
        record.pop(key)
    record.update(status="failed", error="RuntimeError: boom", metrics=[], history=[])
    first.write_text(json.dumps(record))
    write_report(copy)
    report = (copy / "report.md").read_text()
    assert f"- {record['task']}/{record['model']}/seed {record['seed']}: RuntimeError: boom" in report
    metrics = pd.read_csv(copy / "metrics.csv")
    assert metrics.loc[metrics.cell_id == record["id"], "seq_acc"].isna().all()


def test_cells_still_improving_at_the_budget_are_flagged_and_learning_curves_are_drawn(tmp_path):
    """The report counts converged cells, lists each one that hit its budget while still
    improving with its last-stretch gain (or says a run was too short to judge), and draws
    validation exact match per length over training."""
    import matplotlib

    matplotlib.use("Agg")
    from study.report.figures import plot_learning_curves_by_length
    from study.report.markdown import convergence_lines, report_markdown
    from study.report.tables import metrics_frame

    records = load_records(RESULTS / "reference")
    legacy = [
        {**r, "train_config": {k: v for k, v in r["train_config"].items() if k != "loss_tolerance"}} for r in records
    ]
    # records made before loss-based convergence
    assert "trained under an earlier rule" in "\n".join(convergence_lines(legacy))
    for i, record in enumerate(records):
        record["train_config"] = {**record["train_config"], "loss_tolerance": 0.005, "accuracy_tolerance": 0.05}
        record.update(
            converged=i > 1,
            last_stretch=[{"val_loss": 0.1234, "val_seq_acc_by_length": 0.123, "length": 16}, None][i]
            if i < 2
            else None,
            stop_learning_rate=0.0015,
            stop_reason="budget" if i < 2 else "converged",
        )
    lines = "\n".join(convergence_lines(records))
    assert f"{len(records) - 2} of {len(records)} cells converged" in lines and "A cell converged when" in lines
    first, second = records[0], records[1]
    assert (
        f"- {first['task']}/{first['model']}/seed {first['seed']}: over the last stretch validation loss fell 0.123 nats per character and "
        "exact match at length 16 changed by +12.3 points, learning rate 0.0015; still moving: the loss and exact match"
    ) in lines
    learning, short = lines.split("**Too short to judge** (1)")  # each under a heading that says what it is
    assert "still learning" in learning and f"{second['task']}/{second['model']}/seed {second['seed']}" not in learning
    assert f"convergence was not measured: {second['task']}/{second['model']}/seed {second['seed']}." in short
    report = report_markdown(records, metrics_frame(records), "", {}, {})
    assert "| budget | **no** |" in report and "| converged | yes |" in report
    assert plot_learning_curves_by_length(records, tmp_path / "figures") == ["figures/learning_curves_by_length.png"]
    assert (tmp_path / "figures" / "learning_curves_by_length.png").stat().st_size > 10000


def test_learning_curves_show_at_most_six_lengths_with_both_ends():
    from study.report.figures import _shown_lengths

    assert _shown_lengths([1, 2, 3]) == [1, 2, 3]
    shown = _shown_lengths(list(range(4, 33)))
    assert len(shown) == 6 and shown[0] == 4 and shown[-1] == 32


@pytest.fixture(scope="module")
def drawn():
    """Every figure of the committed reference, drawn once but not saved: {name: matplotlib figure}."""
    import matplotlib

    matplotlib.use("Agg")
    from study import report

    figures = {}

    def keep(fig, folder, name):
        figures[name] = fig
        return [f"figures/{name}.png"]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(report.figures, "_save", keep)
        records = report.load_records(RESULTS / "reference")
        summary = report.tables.summary_frame(report.tables.metrics_frame(records))
        report.figures.plot_accuracy_vs_length(summary, records, Path("unused"))
        report.figures.plot_position_accuracy(records, Path("unused"))
        report.figures.plot_attention_maps(records, Path("unused"))
        report.figures.plot_training_curves(records, Path("unused"))
        report.figures.plot_learning_curves_by_length(records, Path("unused"))
    yield figures
    import matplotlib.pyplot as plt

    plt.close("all")


def _integer_ticks(ax) -> bool:
    return all(float(t).is_integer() for t in ax.get_xticks())


def test_figures_say_what_they_show_with_axes_inside_the_metric(drawn):
    fig = drawn["accuracy_vs_length"]
    assert re.search(
        r"3 seeds, 1,000 distinct test examples per length and seed", fig._suptitle.get_text().replace("\n", " ")
    )
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["none", "additive", "dot", "general"]  # models only
    assert fig.legends[0].get_title().get_text() == "model"
    for ax in fig.axes:
        assert ax.get_ylim()[0] >= -5 and ax.get_ylim()[1] <= 110 and _integer_ticks(ax)
        assert any(t.get_text() == "trained lengths" for t in ax.texts)
    fig = drawn["position_accuracy"]
    caption = fig._suptitle.get_text().replace("\n", " ")
    assert (
        "where each date of date_format begins" in caption and "of copy begins" not in caption
    )  # only tasks with units
    titles = [ax.get_title() for ax in fig.axes]
    assert any("longest trained" in t for t in titles) and any("first beyond" in t for t in titles)
    for ax in fig.axes:
        assert _integer_ticks(ax) and ax.get_ylim() == (-3, 103) and "length" in ax.get_title()
        # positions count from 1
        assert (
            ax.get_xlim()[0] == 0.5
            and min(t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]) >= 1
        )
        chance = [line for line in ax.get_lines() if line.get_gid() == "chance"]
        assert len(chance) == 1 and chance[0].get_linestyle() == "--"
        if ax.get_title().startswith(("copy", "reverse")):
            assert chance[0].get_ydata()[0] == pytest.approx(100 / 16)  # 16 symbols
        bounds = [line.get_xdata()[0] for line in ax.get_lines() if line.get_gid() == "unit boundary"]
        assert bounds == (
            [11 * k + 0.5 for k in range(1, len(bounds) + 1)] if ax.get_title().startswith("date_format") else []
        )
        assert bounds or not ax.get_title().startswith("date_format")
        assert all(
            line.get_marker() not in (None, "None", "")
            for line in ax.get_lines()
            if line.get_gid() not in ("chance", "unit boundary")
        )
    fig = drawn["training_curves"]
    accuracy_axes = [ax for ax in fig.axes if "exact match" in ax.get_ylabel()]
    assert accuracy_axes and all(ax.get_ylim() == (-3, 103) and "pooled" in ax.get_ylabel() for ax in accuracy_axes)
    for name in ("loss", "learning rate"):  # both on log scales, over examples on a log scale
        shown = [ax for ax in fig.axes if name in ax.get_ylabel()]
        assert shown and all(ax.get_yscale() == "log" and ax.get_xscale() == "log" for ax in shown)
    legend = [ax.get_legend() for ax in fig.axes if ax.get_legend()]
    assert len(legend) == 1 and {"model", "seed"} <= {
        t.get_text() for t in legend[0].get_texts()
    }  # one legend, two sections
    records = load_records(RESULTS / "reference")
    task = accuracy_axes[0].get_title()
    drawn_lines = {
        (matplotlib_rgb(line.get_color()), str(line._dash_pattern))
        for line in accuracy_axes[0].get_lines()
        if len(line.get_xdata())
    }
    # seeds told apart
    assert len(drawn_lines) == len({(r["model"], r["seed"]) for r in records if r["task"] == task and r.get("history")})


def test_no_tick_label_prints_markup(drawn):
    """Log-scale axes (training curves, learning curves) label their ticks in plain numbers:
    with mathtext off, matplotlib's own log labels would print as raw `$\\mathdefault{10^{3}}$`."""
    logs = 0
    for name, fig in drawn.items():
        fig.canvas.draw()
        for ax in fig.axes:
            for axis in (ax.xaxis, ax.yaxis):
                labels = [t.get_text() for t in axis.get_ticklabels(which="both") if t.get_text()]
                logs += axis.get_scale() == "log" and bool(labels)
                assert not [t for t in labels if "$" in t or "mathdefault" in t], (name, labels)
    assert logs  # the log axes were checked


def test_no_title_is_wider_than_its_figure(drawn):
    for name, fig in drawn.items():
        renderer = fig.canvas.get_renderer()
        assert fig._suptitle.get_window_extent(renderer).width <= fig.bbox.width, name


def test_attention_maps_have_a_colour_bar_and_say_right_or_wrong(drawn):
    fig = drawn["attention_maps"]
    assert "none: no attention, so no weights to show" in fig._suptitle.get_text().replace("\n", " ")
    colour_bars = [ax for ax in fig.axes if ax.get_ylabel() == "attention weight"]
    assert len(colour_bars) == 1
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles and all(
        ("(right)" in t) != ("(WRONG)" in t) and "length" in t and "seed" in t and "target" in t for t in titles
    )


def test_one_colour_per_model_in_every_figure(drawn):
    from study.report.figures import model_palette

    assert model_palette(["dot"])["dot"] == model_palette(["none", "additive", "dot"])["dot"]
    colours = {}
    for name in ("accuracy_vs_length", "position_accuracy"):
        for ax in drawn[name].axes:
            for line in ax.get_lines():
                if line.get_label() in ("none", "additive", "dot", "general"):
                    colours.setdefault(line.get_label(), set()).add(
                        tuple(np.round(matplotlib_rgb(line.get_color()), 3))
                    )
    assert colours and all(len(c) == 1 for c in colours.values())


def matplotlib_rgb(colour):
    from matplotlib.colors import to_rgb

    return to_rgb(colour)


def test_every_character_of_the_advertised_locales_is_drawn_readably(tmp_path):
    """Attention maps of date_format examples in Korean, Japanese, Thai and Hindi draw every
    glyph from an installed font (matplotlib warns 'Glyph ... missing from font' otherwise), and
    characters that print nothing or that no font has are labelled marks, explained under the figure."""
    import io
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    from study import report
    from study.tasks import get_task

    records = []
    for i, locale in enumerate(["ko", "ja", "th", "hi"]):
        task = get_task("date_format", locale=locale)
        sources, targets = task.sample(np.random.default_rng(0), 40, 1)
        source = "".join(sorted(set("".join(sources))))  # every character the 40 dates use
        records.append(
            {
                "status": "ok",
                "seed": 0,
                "task": f"date_format ({locale})",
                "model": "dot",
                "attention_example": {
                    "source": source,
                    "target": targets[0],
                    "prediction": targets[0],
                    "length": 1,
                    "weights": np.full((len(targets[0]) + 1, len(source)), 1 / len(source)).tolist(),
                },
            }
        )
    # a narrow no-break space, a right-to-left mark, an Ethiopic letter no bundled font has
    odd = "7\u202f3\u200f\u1200"
    records.append(
        {
            "status": "ok",
            "seed": 0,
            "task": "odd",
            "model": "dot",
            "attention_example": {
                "source": odd,
                "target": "73",
                "prediction": "7\u1200",
                "length": 1,
                "weights": np.full((3, 4), 0.25).tolist(),
            },
        }
    )
    figures = {}
    with pytest.MonkeyPatch.context() as patch, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        patch.setattr(report.figures, "_save", lambda fig, folder, name: figures.setdefault(name, fig) and [])
        report.figures.plot_attention_maps(records, tmp_path)
        figures["attention_maps"].savefig(io.BytesIO(), format="png")
    missing = [str(w.message) for w in caught if "missing from font" in str(w.message)]
    assert not missing, missing[:3]
    fig = figures["attention_maps"]
    for ax in fig.axes:
        if ax.get_title().startswith("date_format"):  # Hangul, kana, kanji, Thai, Devanagari drawn as themselves
            assert not [t.get_text() for t in ax.get_xticklabels() if t.get_text().startswith("U+")], ax.get_title()
    odd_axis = next(ax for ax in fig.axes if ax.get_title().startswith("odd"))
    assert [t.get_text() for t in odd_axis.get_xticklabels()] == ["7", "NNBSP", "3", "RLM", "U+1200"]
    assert all(t.get_rotation() == 90 for t in odd_axis.get_xticklabels() if len(t.get_text()) > 1)
    assert "predicted '7[U+1200]'" in odd_axis.get_title()
    note = " ".join(t.get_text() for t in fig.texts)
    for expected in (
        "NNBSP = U+202F NARROW NO-BREAK SPACE",
        "RLM = U+200F RIGHT-TO-LEFT MARK",
        "U+1200 = ETHIOPIC SYLLABLE HA (no installed font has it)",
    ):
        assert expected in note
    import matplotlib.pyplot as plt

    plt.close("all")


def test_without_a_font_package_its_characters_become_labelled_code_points(monkeypatch, request):
    """A font package that is not installed is no error: the characters only it covers are drawn
    as code points, named under the figure, and matplotlib never draws a missing glyph."""
    import io
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from study import fonts

    def forget():
        fonts._register.cache_clear()
        fonts._coverage.cache_clear()

    monkeypatch.setattr(fonts, "FALLBACK_FONTS", (("NanumGothic", ("no_such_font_package", "fonts/NanumGothic.ttf")),))
    monkeypatch.setitem(matplotlib.rcParams, "font.family", ["sans-serif"])  # as in a fresh process
    forget()
    request.addfinalizer(forget)  # later tests register the real fonts again
    assert fonts.use_fonts()[-1] == "DejaVu Sans"  # nothing after it
    assert [fonts.label(c) for c in "3월"] == ["3", "U+C6D4"]
    assert fonts.marks_note("3월") == "U+C6D4 = HANGUL SYLLABLE WEOL (no installed font has it)"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fig, ax = plt.subplots()
        fonts.character_ticks(ax, "x", list("3월"))
        ax.set_title(fonts.readable("2021년 3월"))
        fig.savefig(io.BytesIO(), format="png")
        plt.close(fig)
    assert not [w for w in caught if "missing from font" in str(w.message)]


def test_every_seed_is_drawn_and_tabled():
    """Each seed's exact match is an open circle on the accuracy figure at its own value, and the
    tables give the lowest and highest seed beside the mean."""
    from study import report

    records = report.load_records(RESULTS / "reference")
    fig = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(report.figures, "_save", lambda f, folder, name: fig.setdefault(name, f) and [])
        report.figures.plot_accuracy_vs_length(
            report.tables.summary_frame(report.tables.metrics_frame(records)), records, Path("unused")
        )
    ax = fig["accuracy_vs_length"].axes[0]
    task = records and sorted({r["task"] for r in records}, key=[r["task"] for r in records].index)[0]
    circles = [c for c in ax.collections if c.get_gid() == "seed"]
    drawn = sorted(round(y, 6) for c in circles for y in c.get_offsets()[:, 1])
    expected = sorted(round(100 * m["seq_acc"], 6) for r in records if r["task"] == task for m in r["metrics"])
    assert drawn == expected
    plt_close(fig["accuracy_vs_length"])
    summary = (RESULTS / "reference" / "summary.md").read_text()
    assert "(lowest-highest seed)" in summary and "not centred on it" in summary


def test_per_unit_accuracy_splits_the_position_accuracy_at_the_unit_width():
    """On date_format (11 characters per date, separator included) the k-th date's accuracy is
    the mean position accuracy over characters 11(k-1) .. 11k-1, the dates written are
    (characters + 1) / 11, and tasks without a unit width have no rows."""
    from study import report

    records = report.load_records(RESULTS / "reference")
    units = report.tables.unit_frame(records)
    assert set(units["task"]) == {"date_format"}
    series = report.tables.series_names(records)
    record = next(r for r in records if r["task"] == "date_format" and r["status"] == "ok")
    for m in record["metrics"]:
        rows = units[
            (units["model"] == series[record["id"]])
            & (units["seed"] == record["seed"])
            & (units["length"] == m["length"])
        ]
        assert list(rows["unit"]) == list(range(1, m["length"] + 1))
        for k, acc in zip(rows["unit"], rows["char_acc"]):
            assert acc == pytest.approx(
                sum(m["position_acc"][11 * (k - 1) : 11 * k]) / len(m["position_acc"][11 * (k - 1) : 11 * k])
            )
        assert list(rows["units_written"]) == pytest.approx([(m["mean_prediction_length"] + 1) / 11] * m["length"])
    table = report.markdown.units_markdown(units, records)
    assert "| dates written |" in table and "| 4* |" in table and "| 5 |" in table


def _seed_row(seed: int, series: str, acc: float) -> dict:
    """One seed's exact match at one length of one task and setting, as `metrics_frame` writes it."""
    return {"task": "t", "setting": "s", "train_min": 1, "train_max": 4, "length": 4, "in_training_range": True,
            "seed": seed, "series": series, "seq_acc": acc, "n_examples": 1000}  # fmt: skip


def test_comparisons_separate_only_what_the_seeds_support():
    """A consistent gap over seeds is separated after Holm's correction; a gap the seeds disagree
    on is not; corrected p-values are never below the raw."""
    from study.report.tables import comparison_frame

    rows = []
    for seed, (a, b, c) in enumerate([(0.99, 0.10, 0.95), (0.98, 0.12, 0.60), (0.99, 0.11, 0.99)]):
        for model, acc in (("x", a), ("y", b), ("z", c)):
            rows.append(_seed_row(seed, model, acc))
    import pandas as pd

    frame = comparison_frame(pd.DataFrame(rows)).set_index(["first", "second"])
    assert frame.loc[("x", "y"), "separated"] and not frame.loc[("x", "z"), "separated"]
    assert (frame["p_holm"] >= frame["p"]).all()
    assert frame.loc[("x", "y"), "diff_mean"] == pytest.approx(np.mean([0.89, 0.86, 0.88]), abs=0.01)


def test_accuracy_figure_marks_what_was_measured_and_what_was_trained(drawn):
    """Ticks only at measured lengths; the shaded trained range holds every side-by-side point of
    a trained length and no other, and is named above the panel, not among the points; lines
    that leave the range are dotted; every model has its own marker; both rows have bars."""
    from study import report

    summary = report.tables.summary_frame(report.tables.metrics_frame(report.load_records(RESULTS / "reference")))
    tasks = list(dict.fromkeys(summary["task"]))
    panels = [ax for ax in drawn["accuracy_vs_length"].axes if ax.get_ylabel()]
    assert len(panels) == 2 * len(tasks)
    for n, ax in enumerate(panels):
        rows = summary[summary["task"] == tasks[n % len(tasks)]]
        first, last = rows["train_min"].min(), rows["train_max"].max()
        measured = sorted(rows["length"].unique())
        assert [round(t) for t in ax.get_xticks()] == measured
        box = next(p for p in ax.patches if p.get_gid() == "trained")
        lo, hi = box.get_x(), box.get_x() + box.get_width()
        for container in ax.containers:
            for x in container.lines[0].get_xdata():
                nearest = min(measured, key=lambda length: abs(length - x))
                assert (lo <= x <= hi) == (first <= nearest <= last)
        label = next(t for t in ax.texts if t.get_text() == "trained lengths")
        assert label.get_position()[1] >= 1.0  # in axes coordinates: above the data
        joins = [line for line in ax.get_lines() if line.get_gid() in ("inside", "beyond")]
        assert joins
        for line in joins:
            xs = line.get_xdata()
            leaves = max(min(measured, key=lambda length: abs(length - x)) for x in xs) > last
            assert line.get_linestyle() == (":" if leaves else "-")
        markers = {c.get_label(): c.lines[0].get_marker() for c in ax.containers}
        assert len(markers) == rows["series"].nunique() and len(set(markers.values())) == len(markers)
        assert all(c.has_yerr for c in ax.containers)


def test_learning_curves_average_only_the_seeds_still_training(drawn):
    """A solid curve point averages every seed; after the first seed stopped the curve goes on
    dotted, and the title says so and how many validation examples stand behind a point."""
    fig = drawn["learning_curves_by_length"]
    assert "dotted: after the first seed stopped" in fig._suptitle.get_text().replace(
        "\n", " "
    ) and "64 validation examples" in fig._suptitle.get_text().replace("\n", " ")
    records = [json.loads(p.read_text()) for p in sorted((RESULTS / "reference" / "cells").glob("*.json"))]
    ends = {}
    for r in records:
        ends.setdefault((r["task"], r["model"]), []).append(r["history"][-1]["examples_seen"])
    for ax in fig.axes:
        if " / " not in ax.get_title():
            continue
        task, model = ax.get_title().split(" (")[0].split(" / ")
        solid = [line for line in ax.get_lines() if line.get_gid() == "all seeds"]
        assert solid and all(max(line.get_xdata()) * 1000 <= min(ends[(task, model)]) for line in solid)
        if len(set(ends[(task, model)])) > 1:
            assert any(line.get_gid() == "fewer seeds" and line.get_linestyle() == ":" for line in ax.get_lines())


def _table_numbers(folder: Path) -> set[str]:
    """Every number the committed tables of `folder` hold, in percent with one decimal as the
    README writes them: means, seeds' extremes, intervals, diagnostics, per-seed values,
    differences between models, per-unit accuracy and each seed's units written."""
    import pandas as pd

    summary, metrics = pd.read_csv(folder / "summary.csv"), pd.read_csv(folder / "metrics.csv")
    values = [
        summary[c]
        for c in summary.columns
        if c.endswith(("_mean", "_min", "_max", "_ci_low", "_ci_high"))
        and c.startswith(("seq_acc", "oracle", "length_acc", "char_acc"))
    ]
    values += [metrics[c] for c in ("seq_acc", "oracle_seq_acc", "char_acc", "length_acc")]
    # empty: no two models to compare
    if (folder / "comparisons.csv").exists() and (folder / "comparisons.csv").stat().st_size > 1:
        values.append(pd.read_csv(folder / "comparisons.csv")["diff_mean"].abs())
    if (folder / "units.csv").exists():  # per-unit accuracy, mean over seeds
        units = pd.read_csv(folder / "units.csv")
        values.append(units.groupby(["task", "model", "length", "unit"])["char_acc"].mean())
        written = units.groupby(["task", "model", "length", "seed"])["units_written"].first()  # a count, not a share
        return {f"{100 * x:.1f}" for column in values for x in column.dropna()} | {f"{x:.1f}" for x in written}
    return {f"{100 * x:.1f}" for column in values for x in column.dropna()}


def _committed_quantities(folder: str) -> dict:
    """The named quantities of a committed results folder (its quantities.csv)."""
    import pandas as pd

    from study.report.findings import Quantity

    table = pd.read_csv(RESULTS / folder / "quantities.csv", keep_default_na=False)
    return {r.name: Quantity(float(r.value), r.unit, r.caveat) for r in table.itertuples()}


QUOTED_FOLDERS = ("reference", "reference-models", "reference-jax", "bottleneck", "end-control")


def test_every_number_the_readme_quotes_is_its_named_quantity_with_its_caveat():
    """Each quotation in the README ('98.6% (`reference:copy.additive.exact_match@32`)') names a
    quantity of a committed folder, gives its value as the tables do, and carries 'still learning
    at the ceiling' (in the quotation or its sentence) where a cell behind it did not converge; in
    the accounts of the reference studies and experiments every number with a decimal is such a
    quotation, so a regenerated study cannot leave a stale or unqualified claim behind."""
    from study.report.findings import QUOTED, check_quotations

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    problems = []
    for folder in QUOTED_FOLDERS:
        problems += check_quotations(readme, _committed_quantities(folder), prefix=f"{folder}:")
    prefixes = {name.split(":")[0] for _, _, name, _ in QUOTED.findall(readme)}
    assert prefixes <= set(QUOTED_FOLDERS) and problems == []
    quoted = {m.start(1) for m in QUOTED.finditer(readme)}
    for start, end in (
        (readme.index("## What the study shows"), readme.index("## Running a study")),
        (readme.index("[`results/reference-models/`]"), readme.index("The comparison is fair")),
    ):
        loose = [
            m.group(1)
            for m in re.finditer(r"(?<![\d.])([+-]?\d{1,3}\.\d)(?![\d.])", readme[start:end])
            if start + m.start(1) not in quoted
        ]
        assert loose == [], f"numbers without a named quantity: {loose}"
    assert "still learning at the ceiling" in readme


def test_a_quoted_number_that_differs_from_its_quantity_or_drops_its_caveat_is_found():
    from study.report.findings import check_quotations

    q = _committed_quantities("reference")
    right = f"{q['copy.additive.exact_match@32'].value:.1f}"  # a converged cell's number: no caveat
    wrong = f"{q['copy.additive.exact_match@32'].value - 0.1:.1f}"
    none16 = f"{q['copy.none.exact_match@16'].value:.1f}"  # still learning at the ceiling
    assert check_quotations(f"copy scores {right}% (`reference:copy.additive.exact_match@32`).", q, "reference:") == []
    assert check_quotations(f"copy scores {wrong}% (`reference:copy.additive.exact_match@32`).", q, "reference:")
    assert check_quotations(f"Copy/none: {none16}% (`reference:copy.none.exact_match@16`).", q, "reference:")
    assert not check_quotations(
        f"Copy/none, still learning at the ceiling: {none16}% (`reference:copy.none.exact_match@16`).", q, "reference:"
    )
    assert check_quotations("x 1.0% (`reference:copy.nope.exact_match@16`)", q, "reference:")
    assert check_quotations(f"copy scores {right} min (`reference:copy.additive.exact_match@32`).", q, "reference:")
    assert check_quotations(
        f"Copy/none is not still learning at the ceiling: {none16}% (`reference:copy.none.exact_match@16`).",
        q,
        "reference:",
    )
    assert check_quotations(
        f"| dot, still learning at the ceiling | 1 |\n| none | {none16}% (`reference:copy.none.exact_match@16`) |",
        q,
        "reference:",
    )


def test_seeds_that_agree_to_the_example_are_not_certainty():
    """Three seeds each one test example apart (99.9 against 100.0) have no spread, but the test
    set's sampling error remains: the pair is not separated."""
    import pandas as pd

    from study.report.tables import comparison_frame

    rows = [_seed_row(seed, model, acc) for seed in range(3) for model, acc in (("x", 0.999), ("y", 1.0))]
    frame = comparison_frame(pd.DataFrame(rows))
    assert not frame["separated"].any() and frame["p"].iloc[0] > 0.05


def test_every_row_of_the_learning_curves_names_its_axis_where_the_first_column_is_empty():
    """The bottleneck experiment's variants leave panels empty (date_format has no `converged`
    variant): each row's first drawn panel carries the y label and its tick labels, and no panel
    title is wider than its panel."""
    import matplotlib

    matplotlib.use("Agg")
    from study import report

    records = load_records(RESULTS / "bottleneck")
    fig = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(report.figures, "_save", lambda f, folder, name: fig.setdefault(name, f) and [])
        report.figures.plot_learning_curves_by_length(records, Path("unused"))
    figure = fig["learning_curves_by_length"]
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    rows = {}
    for ax in figure.axes:
        if ax.axison and ax.get_title():
            rows.setdefault(round(ax.get_position().y0, 3), []).append(ax)
    assert len(rows) == 3 and any(
        min(ax.get_position().x0 for ax in row) > 0.2 for row in rows.values()
    )  # an empty first column
    for row in rows.values():
        first = min(row, key=lambda ax: ax.get_position().x0)
        assert first.get_ylabel() and any(t.get_text() for t in first.get_yticklabels() if t.get_visible())
        for ax in row:
            assert ax.title.get_window_extent(renderer).width <= ax.get_window_extent(renderer).width * 1.15
    plt_close(figure)


def test_tables_state_how_many_distinct_items_each_length_tested():
    """A length whose test set holds fewer distinct sources than asked is named with its count;
    records made before test sets held distinct sources are said to allow repeats."""
    import pandas as pd

    from study.report.markdown import _examples_note

    group = pd.DataFrame({"length": [1, 1, 2, 4], "n_examples": [6, 6, 58, 1000]})
    note = _examples_note(group, distinct=True)
    assert note.startswith("1000 distinct test examples per length and seed")
    assert "except at length 1 (6), length 2 (58), where that is every distinct source" in note
    assert "repeats possible" in _examples_note(group.iloc[3:], distinct=False)
    assert "except" not in _examples_note(group.iloc[3:], distinct=True)


def test_the_paired_test_gives_no_verdict_below_three_seeds():
    """One seed's test set says nothing of the spread between seeds, and with two seeds that either
    work or fail a test separates null pairs far above 5% of the time: no p-value, no interval."""
    for seeds in (1, 2):
        test = paired_test([0.95] * seeds, [0.05] * seeds, 1000)
        assert np.isnan(test["p"]) and np.isnan(difference_bounds(test, 0.05)[0]) and test["mean"] == pytest.approx(0.9)


@pytest.mark.parametrize("seeds", [3, 5])
@pytest.mark.parametrize("null", ["same", "smooth", "bimodal"])
def test_the_paired_test_holds_its_false_positive_rate_on_null_data(seeds, null):
    """Two models whose runs are drawn from one distribution (the same accuracy for every run;
    logit-normal around 70%; runs that either work at 95% or fail at 5%, half and half), each
    run scored on 1,000 test examples: `paired_test` separates them in at most its nominal 5%
    of 1,500 simulated studies (plus twice the simulation's standard error), while a real gap
    of 30 points with the same spreads is separated often (always without a spread)."""
    from scipy.special import expit

    rng = np.random.default_rng(seeds * 10 + ["same", "smooth", "bimodal"].index(null))

    def runs(shift=0.0):
        if null == "same":
            p = np.full(seeds, 0.7)
        elif null == "smooth":
            p = expit(0.85 + 0.5 * rng.standard_normal(seeds))
        else:
            p = np.where(rng.random(seeds) < 0.5, 0.95, 0.05)
        return rng.binomial(1000, np.clip(p + shift, 0, 1)) / 1000

    studies = 1500
    false = np.mean([paired_test(runs(), runs(), 1000)["p"] < 0.05 for _ in range(studies)])
    assert false <= 0.05 + 2 * np.sqrt(0.05 * 0.95 / studies)
    if null != "bimodal":  # a shift of a bimodal mixture is not one gap
        found = np.mean([paired_test(runs(0.3), runs(), 1000)["p"] < 0.05 for _ in range(200)])
        assert found > {"same": 0.95, "smooth": 0.4}[null]  # 3 seeds of a 14-point spread: about half


def test_families_are_corrected_apart_and_their_intervals_agree_with_the_verdicts():
    """The standard families split the comparisons by the claim (attention against none at the
    trained lengths), beyond the range and the other pairs; each family is Holm-corrected on its
    own; in every family a pair is separated exactly when its interval excludes 0; pairs against
    `none` are written model - none."""
    from study import report
    from study.config import STANDARD_FAMILIES
    from study.report.tables import comparison_frame, metrics_frame

    frame = comparison_frame(metrics_frame(report.load_records(RESULTS / "reference")), STANDARD_FAMILIES)
    assert set(frame["family"]) == {f.name for f in STANDARD_FAMILIES}
    primary = frame[frame["primary"]]
    assert primary["in_training_range"].all() and (primary["second"] == "none").all()
    assert (
        len(primary) == 42 and not (frame[~frame["primary"]]["in_training_range"] & (frame["second"] == "none")).any()
    )
    excludes_zero = (frame["diff_ci_low"] > 0) | (frame["diff_ci_high"] < 0)
    assert (excludes_zero == frame["separated"]).all()
    assert ((frame["diff_ci_low"] >= -1) & (frame["diff_ci_high"] <= 1)).all()
    for _, family in frame.groupby("family"):  # Holm within the family: its size, not the report's
        from statsmodels.stats.multitest import multipletests

        assert family["p_holm"].to_numpy() == pytest.approx(multipletests(family["p"], method="holm")[1])
    # the claim's copy at 16 symbols (+94 points on every seed) is separated within its family
    copy16 = primary[(primary["task"] == "copy") & (primary["length"] == 16)]
    assert copy16["separated"].all()


def test_a_study_declares_its_own_families(tmp_path):
    """`[[families]]` in a config file replaces the standard families; a bad one is a one-line error."""
    from study.config import ConfigError, build_study_config

    config = build_study_config(
        "smoke", {"families": [{"name": "dot against none", "against": "none", "lengths": "all", "primary": True}]}
    )
    assert [f.name for f in config.families] == ["dot against none"] and config.families[0].primary
    with pytest.raises(ConfigError, match="families: lengths must be one of trained, beyond, all"):
        build_study_config("smoke", {"families": [{"name": "x", "lengths": "inside"}]})
    with pytest.raises(ConfigError, match="unknown setting 'families\\[0\\].agianst'"):
        build_study_config("smoke", {"families": [{"name": "x", "agianst": "none"}]})


def test_a_task_under_two_settings_keeps_its_claim_family():
    """A folder holding a task under two settings names its series "model · variant": the pairs
    against `none` still belong to the primary family by their models, written model - none, and
    the summary's differences from `none` keep them."""
    import pandas as pd

    from study.report.tables import comparison_frame, difference_frame

    rows = [
        {**_seed_row(seed, f"{model} · {variant}", acc), "model": model, "setting": variant}
        for variant in ("a", "b")
        for seed in range(3)
        for model, acc in (("none", 0.10 + 0.01 * seed), ("dot", 0.95 - 0.01 * seed))
    ]
    frame = comparison_frame(pd.DataFrame(rows))
    assert frame["primary"].all() and set(frame["first"]) == {"dot · a", "dot · b"}
    assert (frame["diff_mean"] > 0).all() and frame["separated"].all()
    assert len(difference_frame(frame)) == 2


@pytest.mark.parametrize("folder", QUOTED_FOLDERS)
def test_each_report_quotes_its_own_quantities_with_their_caveats(folder):
    """The opening block of every committed report passes the same check as the README."""
    from study.report.findings import check_quotations

    report_md = (RESULTS / folder / "report.md").read_text(encoding="utf-8")
    assert "## What this study found" in report_md
    assert check_quotations(report_md, _committed_quantities(folder)) == []


def test_cells_at_the_learning_rate_floor_are_listed_with_their_training_and_validation_loss():
    """A cell whose learning rate was at the plateau schedule's floor when it stopped is listed
    with its training loss beside its validation loss at the kept epoch, under its own rule; the
    committed reference, where no cell stopped at its floor, has no such list; a folder of
    variants (the bottleneck's budgets differ) lists each rule, and a cell still learning at the
    ceiling names the measure that still moved."""
    import copy

    from study.report.markdown import convergence_lines

    reference = [r for r in load_records(RESULTS / "reference") if r["status"] == "ok"]
    assert "At the learning-rate floor" not in "\n".join(convergence_lines(reference))
    at_floor = copy.deepcopy(reference)
    first = at_floor[0]
    first["stop_learning_rate"] = float(np.float32(first["train_config"]["min_learning_rate"]))
    text = "\n".join(convergence_lines(at_floor))
    assert "**At the learning-rate floor when they stopped** (1)" in text
    kept = first["history"][first["best_epoch"] - 1]
    assert (
        f"{first['task']}/{first['model']}/seed {first['seed']} ({first['stop_reason']}, floor 1e-05): "
        f"training {kept['loss']:.4f}, validation {kept['val_loss']:.4f}"
    ) in text
    bottleneck = "\n".join(convergence_lines([r for r in load_records(RESULTS / "bottleneck") if r["status"] == "ok"]))
    assert "The cells were trained under" in bottleneck and "1000000-example budget" in bottleneck
    assert "250000-example budget" in bottleneck and "still moving: the loss" in bottleneck


def test_a_cell_converged_behind_its_best_validation_loss_is_listed():
    """A cell called converged whose validation loss at the stop lies above its best by more than
    the loss tolerance (a model recovering from a loss spike) is listed with both losses; of the
    committed studies only the attention sweep has one, its reverse/additive seed 0 without a
    warm-up."""
    import copy

    from study.report.markdown import convergence_lines

    for folder in ("reference", "bottleneck", "end-control"):
        records = [r for r in load_records(RESULTS / folder) if r["status"] == "ok"]
        assert "behind their best" not in "\n".join(convergence_lines(records)), folder
    sweep = [r for r in load_records(RESULTS / "sweep-attention") if r["train_config"].get("warmup_examples") == 0]
    text = "\n".join(convergence_lines(sweep))
    assert "**Converged behind their best** (1)" in text
    assert (
        "reverse/additive/seed 0: validation loss 0.0476 at the stop (100000 examples), 0.0346 at its best (60000)"
        in text
    )
    reference = [r for r in load_records(RESULTS / "reference") if r["status"] == "ok"]
    behind = copy.deepcopy(reference)
    cell = next(r for r in behind if r["stop_reason"] == "converged")
    best = min(row["val_loss"] for row in cell["history"])
    cell["history"][-1]["val_loss"] = best + 0.0051
    text = "\n".join(convergence_lines(behind))
    assert "**Converged behind their best** (1)" in text
    assert (
        f"{cell['task']}/{cell['model']}/seed {cell['seed']}: validation loss {best + 0.0051:.4f} at the stop" in text
    )
    cell["history"][-1]["val_loss"] = best + 0.0049  # within the tolerance
    assert "behind their best" not in "\n".join(convergence_lines(behind))


def test_a_cell_converged_on_a_plateau_its_sibling_seed_got_past_is_listed():
    """A cell called converged whose lowest validation loss lies above another seed's of the same
    model and setting by more than the loss tolerance is listed with both: in the committed
    reference, date_format/none seed 1, converged at 0% on the plateau seed 0 left; a sibling
    within the tolerance lists nothing, and neither does a cell at the budget."""
    import copy

    from study.report.markdown import convergence_lines

    reference = [r for r in load_records(RESULTS / "reference") if r["status"] == "ok"]
    text = "\n".join(convergence_lines(reference))
    assert "**Converged behind a sibling seed** (1)" in text
    assert (
        "- date_format/none/seed 1 (converged after 130000 examples, kept validation exact match 0.0%): lowest "
        "validation loss 0.8272; seed 0 (budget after 200000 examples, 3.1%) reached 0.7237"
    ) in text
    close = copy.deepcopy(reference)
    stalled = next(r for r in close if (r["task"], r["model"], r["seed"]) == ("date_format", "none", 1))
    floor = min(row["val_loss"] for row in stalled["history"])
    for r in close:
        if (r["task"], r["model"]) == ("date_format", "none") and r is not stalled:
            for row in r["history"]:
                row["val_loss"] = max(row["val_loss"], floor - 0.0049)
    assert "behind a sibling seed" not in "\n".join(convergence_lines(close))
    at_budget = copy.deepcopy(reference)
    stalled = next(r for r in at_budget if (r["task"], r["model"], r["seed"]) == ("date_format", "none", 1))
    stalled["stop_reason"], stalled["converged"] = "budget", False  # only a converged cell is judged
    assert "behind a sibling seed" not in "\n".join(convergence_lines(at_budget))


def test_a_converged_cell_at_the_learning_rate_floor_is_marked_in_the_cells_table_and_counted_apart():
    """A cell the rule called converged with its learning rate at the floor is reported as stopped
    at the floor, not as converged at a working rate; a cell at the floor that ran out of budget
    keeps its own reason and is not counted; the committed reference has none, so its report
    says nothing."""
    import copy

    from study.report.markdown import _cells_table, convergence_lines

    reference = [r for r in load_records(RESULTS / "reference") if r["status"] == "ok"]
    assert "at the floor" not in "\n".join(_cells_table(reference))
    floored = copy.deepcopy(reference)
    cell = next(r for r in floored if r["stop_reason"] == "converged")
    cell["stop_learning_rate"] = float(np.float32(cell["train_config"]["min_learning_rate"]))
    rows = [line for line in _cells_table(floored) if "converged at the floor" in line]
    assert len(rows) == 1 and f"| {cell['task']} |" in rows[0]
    assert (
        "28 of 36 cells converged, 1 of them by the rule with the learning rate at the schedule's floor (below)."
        in ("\n".join(convergence_lines(floored)))
    )
    budget = next(r for r in floored if r["stop_reason"] == "budget")
    budget["stop_learning_rate"] = cell["stop_learning_rate"]
    assert len([line for line in _cells_table(floored) if "at the floor" in line]) == 1
    assert "1 of them by the rule" in "\n".join(convergence_lines(floored))


def test_an_accuracy_series_whose_mean_lands_an_ulp_outside_equal_seeds_is_drawn():
    """Three seeds at 0.7 average to 0.6999999999999998, below their own minimum: the range bars
    of the oracle-length panel must not go negative (matplotlib refuses them, and the report of
    results/end-control/no-end once ended in that traceback)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from study.report.figures import _accuracy_series

    points = pd.DataFrame({"length": [36, 36, 36], "oracle_seq_acc": [0.7, 0.7, 0.7]})
    mean = points.groupby("length")["oracle_seq_acc"].mean()
    assert mean.iloc[0] < 0.7  # the premise
    d = pd.DataFrame({"seq_acc_ci_low": [0.6], "seq_acc_ci_high": [0.8]}, index=pd.Index([36], name="length"))
    fig, ax = plt.subplots()
    _accuracy_series(ax, d, mean, points, "oracle_seq_acc", 0.0, (4, 32), "C0", "o", "dot")
    plt.close(fig)
