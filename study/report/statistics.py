"""Intervals and paired comparisons over seeds, for proportions such as exact match.

    mean, low, high = accuracy_interval([0.98, 0.97, 1.0], 1000)   # per seed, test examples per seed
    test = paired_test(model_acc, baseline_acc, 1000)               # paired by seed: mean, se, df, p
    low, high = difference_bounds(test, alpha=0.05 / 42)            # at a family's corrected level

Each method's one-line description (`INTERVAL_METHOD`, `COMPARISON_METHOD`) is what the
report prints beside its numbers.  Student-t, normal and Clopper-Pearson quantiles from
scipy; the random-effects meta-analysis over seeds from statsmodels.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

CONFIDENCE = 0.95


INTERVAL_METHOD = (
    "95% interval: Student-t over seeds on the logit scale, its half-width at least the test-set sampling error "
    "(binomial, delta method), joined with the Clopper-Pearson interval of the pooled counts; one seed: Clopper-Pearson only"
)


FEW_SEEDS = (
    "with {seeds} seeds the interval's Student-t has {df} degree{s} of freedom: seeds that disagree give an interval "
    "as wide as their spread or wider, and only more seeds can narrow it"
)


def few_seeds_note(seeds: int) -> str:
    """What an interval over `seeds` seeds cannot do, for 2 seeds ('' for 1 or 3 and more: one seed's
    interval holds sampling error only, and three begin to tell spread from noise)."""
    return FEW_SEEDS.format(seeds=seeds, df=seeds - 1, s="" if seeds == 2 else "s") if seeds == 2 else ""


INTERVAL_CENTRE = (
    "the interval contains the printed mean but is not centred on it: its centre is the seeds' mean logit, "
    "which one seed near 0 or 100 pulls towards itself when the seeds disagree; read such a row by its seeds"
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


COMPARISON_METHOD = (
    "each pair compared on its per-seed differences in exact match (each seed's models share its data and test "
    "set): a random-effects meta-analysis over seeds (Paule-Mandel), each seed's difference weighted by its "
    "test-set sampling variance (binomial, over its test examples), with the modified Hartung-Knapp-Sidik-Jonkman "
    "standard error (never below the sampling error alone; Roever, Knapp & Friede 2015) and a Student-t with "
    "seeds - 1 degrees of freedom (statsmodels' combine_effects); two-sided; no test below 3 seeds (in simulation, "
    "2 seeds that either work or fail are separated 13% of the time under the null)"
)
MIN_SEEDS = 3  # `paired_test` tests nothing below this many seeds


def paired_test(first, second, n_examples) -> dict:
    """The paired comparison of two models over seeds (`COMPARISON_METHOD`).

    Args:
        first, second: exact match per seed (shares in [0, 1]; NaN: a failed cell, its seed dropped).
        n_examples: test examples per seed (a number or one per seed).

    Returns:
        {"mean": the random-effects estimate of the mean difference first - second (below
        `MIN_SEEDS` seeds their plain mean), "se": its standard error, "df": degrees of freedom
        (seeds - 1), "p": two-sided p-value,
        "seeds": seeds compared, "differences": the per-seed differences}.  Below `MIN_SEEDS`
        seeds p and the standard error are NaN (one seed's test set says nothing of the spread
        between seeds; two seeds leave the false-positive rate above 5%).
        `difference_bounds` turns it into an interval at any level that excludes 0 exactly
        when p is below that level's alpha.
    """
    from scipy import stats
    from statsmodels.stats.meta_analysis import combine_effects

    a, b = np.asarray(first, dtype=float), np.asarray(second, dtype=float)
    n = np.broadcast_to(np.asarray(n_examples, dtype=float), a.shape)
    keep = ~np.isnan(a) & ~np.isnan(b) & ~np.isnan(n)
    a, b, n = a[keep], b[keep], n[keep]
    d = a - b
    out = {"mean": math.nan, "se": math.nan, "df": None, "p": math.nan, "seeds": len(d), "differences": list(d)}
    if len(d) < MIN_SEEDS:
        return {**out, "mean": float(d.mean()) if len(d) else math.nan}
    # sampling variance of each seed's difference, the two models' errors taken as independent;
    # never below that of one example in 4n (a seed at 0 or 100% still has a finite test set)
    v = (np.maximum(a * (1 - a), 0.25 / n) + np.maximum(b * (1 - b), 0.25 / n)) / n
    with warnings.catch_warnings():  # its I-squared divides by zero when the seeds agree exactly; unused here
        warnings.simplefilter("ignore", RuntimeWarning)
        fit = combine_effects(d, v, method_re="pm", use_t=True)
    random_effects = 1 / np.sum(1 / (v + fit.tau2))
    se, df, mean = math.sqrt(max(fit.var_hksj_re, random_effects)), len(d) - 1, float(fit.mean_effect_re)
    p = 2 * stats.t.sf(abs(mean) / se, df)
    return {**out, "mean": mean, "se": se, "df": df, "p": float(p)}


def difference_bounds(test: dict, alpha: float) -> tuple[float, float]:
    """The (1 - alpha) interval of `paired_test`'s difference: the differences within the
    possible range [-1, 1] that its test does not reject at `alpha`, so it excludes 0 exactly
    when the test's p is below `alpha`."""
    from scipy import stats

    if math.isnan(test["se"]):
        return math.nan, math.nan
    quantile = stats.t.isf(alpha / 2, test["df"])
    half = quantile * test["se"]
    return max(-1.0, test["mean"] - half), min(1.0, test["mean"] + half)
