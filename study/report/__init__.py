"""Tables, figures and report.md, drawn from the results files only.

    write_report(Path("results/standard"))   # reads study.json + cells/*.json, writes:
      metrics.csv            one row per cell x evaluation length (tidy: pandas/seaborn ready)
      summary.csv/.md        mean exact match per task x setting x model x length, its lowest and highest
                             seed and its 95% interval (INTERVAL_METHOD), the oracle-length and
                             right-length diagnostics; summary.md adds each attention model's
                             difference from `none`, paired by seed
      comparisons.csv        every pair of models at every length, in its declared family
                             (study.config.ComparisonFamily): paired over seeds (COMPARISON_METHOD),
                             Holm-corrected within the family, with intervals that agree with the verdicts
      quantities.csv         the named quantities (study.report.findings) that report.md's "What this
                             study found" and the README quote, with each one's caveat
      units.csv              per-unit accuracy (one date of date_format) and units written, for
                             tasks with an `output_unit_width`
      figures/accuracy_vs_length.{png,svg}   one panel per task, one line per model, trained range shaded;
                                             a second row with the oracle-length exact match
      figures/position_accuracy.{png,svg}    accuracy per output position at the longest trained
                                             length and the first length beyond it
      figures/attention_maps.{png,svg}       one test example's weights per task x attention model,
                                             inside the trained range (right where one is)
      figures/attention_maps_beyond.{png,svg}  the same at the first length beyond it (wrong where one is)
      figures/training_curves.{png,svg}      validation exact match, loss and learning rate vs examples seen
      figures/learning_curves_by_length.{png,svg}  validation exact match of each training length vs examples
      report.md                              all of the above with the configuration

The work is split by concern: `study.report.tables` (records to pandas tables),
`study.report.statistics` (intervals and tests over seeds), `study.report.figures` and
`study.report.markdown`.  Nothing here reads in-memory state of a run, so a report can be
redrawn at any time without retraining: `python run_study.py report results/standard`.
"""

from __future__ import annotations

from pathlib import Path

from study.config import parse_families
from study.fonts import use_fonts
from study.report.figures import (
    plot_accuracy_vs_length,
    plot_attention_maps,
    plot_learning_curves_by_length,
    plot_position_accuracy,
    plot_training_curves,
)
from study.report.findings import findings_lines, quantities
from study.report.markdown import (
    comparisons_markdown,
    hypotheses_lines,
    length_units,
    report_markdown,
    summary_markdown,
    units_markdown,
)
from study.report.tables import comparison_frame, difference_frame, metrics_frame, summary_frame, unit_frame
from study.results import load_records, read_manifest, write_text_atomic


def write_report(out: Path, every: bool = False) -> Path:
    """Writes metrics.csv, summary.csv/.md, the figures and report.md into `out` from the latest
    run's records (every record in `out/cells` with `every`); returns report.md's path."""
    import matplotlib
    import pandas as pd

    matplotlib.use("Agg")
    use_fonts()
    out = Path(out)
    records = load_records(out, every)
    manifest = read_manifest(out) or {}
    families = parse_families((manifest.get("config") or {}).get("families"))
    metrics = metrics_frame(records)
    write_csv(metrics, out / "metrics.csv")
    summary = summary_frame(metrics)
    write_csv(summary, out / "summary.csv")
    comparisons = comparison_frame(metrics, families)
    write_csv(comparisons, out / "comparisons.csv")
    table = summary_markdown(summary, difference_frame(comparisons), records)
    write_text_atomic(out / "summary.md", table)
    named = quantities(summary, comparisons, records)
    write_csv(
        pd.DataFrame([{"name": k, "value": v.value, "unit": v.unit, "caveat": v.caveat} for k, v in named.items()]),
        out / "quantities.csv",
    )
    units = unit_frame(records)
    if not units.empty:
        write_csv(units, out / "units.csv")
    figures = out / "figures"
    images = {
        "Accuracy vs length": plot_accuracy_vs_length(summary, records, figures),
        "Accuracy per output position": plot_position_accuracy(records, figures),
        "Attention maps": plot_attention_maps(records, figures),
        "Attention maps beyond the trained range": plot_attention_maps(records, figures, "attention_example_beyond"),
        "Training curves": plot_training_curves(records, figures),
        "Validation exact match per length over training": plot_learning_curves_by_length(records, figures),
    }
    write_text_atomic(
        out / "report.md",
        report_markdown(
            records,
            metrics,
            table,
            images,
            manifest,
            comparisons_markdown(comparisons, families, length_units(records)),
            units_markdown(units, records),
            findings_lines(named, summary, comparisons, records),
            hypotheses_lines(comparisons, families),
        ),
    )
    return out / "report.md"


def write_csv(frame, path: Path) -> None:
    """`frame` as UTF-8 CSV without its index, written atomically (`study.results`)."""
    write_text_atomic(path, frame.to_csv(index=False))
