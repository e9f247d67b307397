"""The report layer: confidence intervals, and the committed reference redrawn from its records."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from study.report import t_interval, write_report

REFERENCE = Path(__file__).resolve().parent.parent / "results" / "reference"


def test_t_interval_on_accuracies():
    mean, lo, hi = t_interval(np.array([0.90, 0.95, 1.00]))
    assert mean == pytest.approx(0.95)
    assert 0.0 <= lo < 0.95 < hi <= 1.0
    assert hi == 1.0  # clipped: an accuracy cannot exceed 1
    assert t_interval(np.array([0.5])) == (0.5, 0.5, 0.5)
    assert t_interval(np.array([0.2, np.nan, 0.2]))[1:] == (0.2, 0.2)  # failed cells are dropped
    assert np.isnan(t_interval(np.array([np.nan]))[0])


@pytest.mark.skipif(not (REFERENCE / "cells").is_dir(), reason="no committed reference study")
def test_reference_report_redraws_to_the_committed_tables(tmp_path):
    copy = tmp_path / "reference"
    shutil.copytree(REFERENCE, copy)
    for name in ("metrics.csv", "summary.csv", "summary.md", "report.md"):
        (copy / name).unlink()
    write_report(copy)
    for name in ("metrics.csv", "summary.csv", "summary.md", "report.md"):
        assert (copy / name).read_text() == (REFERENCE / name).read_text(), name
    assert (copy / "figures" / "accuracy_vs_length.png").stat().st_size > 10000
