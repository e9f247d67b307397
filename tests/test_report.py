"""The report layer: confidence intervals, and the committed reference redrawn from its records."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from study.report import t_interval, write_report

RESULTS = Path(__file__).resolve().parent.parent / "results"
REFERENCES = sorted(p.parent for p in RESULTS.glob("reference*/cells"))  # the committed reference studies


def test_t_interval_on_accuracies():
    mean, lo, hi = t_interval(np.array([0.90, 0.95, 1.00]))
    assert mean == pytest.approx(0.95)
    assert 0.0 <= lo < 0.95 < hi <= 1.0
    assert hi == 1.0  # clipped: an accuracy cannot exceed 1
    assert t_interval(np.array([0.5])) == (0.5, 0.5, 0.5)
    assert t_interval(np.array([0.2, np.nan, 0.2]))[1:] == (0.2, 0.2)  # failed cells are dropped
    assert np.isnan(t_interval(np.array([np.nan]))[0])


def test_a_reference_study_is_committed():
    assert RESULTS / "reference" in REFERENCES


@pytest.mark.parametrize("reference", REFERENCES, ids=lambda p: p.name)
def test_reference_report_redraws_to_the_committed_tables(tmp_path, reference):
    copy = tmp_path / "reference"
    shutil.copytree(reference, copy)
    for name in ("metrics.csv", "summary.csv", "summary.md", "report.md"):
        (copy / name).unlink()
    write_report(copy)
    for name in ("metrics.csv", "summary.csv", "summary.md", "report.md"):
        assert (copy / name).read_text() == (reference / name).read_text(), name
    assert (copy / "figures" / "accuracy_vs_length.png").stat().st_size > 10000


def test_differences_from_none_are_paired_by_seed():
    import pandas as pd

    from study.report import difference_frame

    rows = []
    for seed, (none, dot) in enumerate([(0.10, 0.60), (0.30, 0.70), (0.20, 0.80)]):
        for model, acc in (("none", none), ("dot", dot)):
            rows.append({"task": "copy", "train_min": 4, "train_max": 8, "length": 8, "model": model, "seed": seed, "seq_acc": acc})
    diff = difference_frame(pd.DataFrame(rows))
    assert list(diff["model"]) == ["dot"]
    row = diff.iloc[0]
    assert row.diff_mean == pytest.approx(0.5) and row.seeds == 3
    # paired: the per-seed differences (0.5, 0.4, 0.6) vary far less than either model
    assert row.diff_ci_high - row.diff_ci_low == pytest.approx(2 * 4.302653 * 0.1 / 3**0.5, rel=1e-4)


def test_report_with_a_failed_first_cell(tmp_path):
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
