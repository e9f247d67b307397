"""Intervals and paired comparisons over seeds, for proportions such as exact match.

    mean, low, high = accuracy_interval([0.98, 0.97, 1.0], 1000)     # per seed, test examples per seed
    mean, low, high = difference_interval(model_acc, baseline_acc, 1000)  # paired by seed
    seeds_needed(0.8)                                                  # seeds a paired t-test needs at 80% power

Each method's one-line description (`INTERVAL_METHOD`, `DIFFERENCE_METHOD`,
`COMPARISON_METHOD`) is what the report prints beside its numbers.  Student-t and
Clopper-Pearson quantiles from scipy, the power of a paired t-test from statsmodels.
"""

from __future__ import annotations

import math

import numpy as np

CONFIDENCE = 0.95


INTERVAL_METHOD = (
    "95% interval: Student-t over seeds on the logit scale, its half-width at least the test-set sampling error "
    "(binomial, delta method), joined with the Clopper-Pearson interval of the pooled counts; one seed: Clopper-Pearson only"
)


INTERVAL_CENTRE = (
    "the interval contains the printed mean but is not centred on it: its centre is the seeds' mean logit, "
    "which one seed near 0 or 100 pulls towards itself when the seeds disagree; read such a row by its seeds"
)


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


COMPARISON_METHOD = (
    "paired t-test over seeds of the per-seed differences in exact match (each seed's models share its data and "
    "test set), two-sided, their spread at least the test-set sampling error of a difference; "
    "p-values corrected for multiplicity by Holm's method over every comparison of the report; "
    "a pair is separated when its corrected p is below 0.05"
)


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
        block = SEED_COUNTS[start : np.searchsorted(SEED_COUNTS, max(100, 10 * SEED_COUNTS[start]))]
        enough = np.flatnonzero(
            TTestPower().power(effect_size=effect_size, nobs=block, alpha=0.05, alternative="two-sided") >= 0.8
        )
        if len(enough):
            return int(block[enough[0]])
        start += len(block)
    return math.nan
