"""Shadow-vs-production and A/B comparisons: the Models page, ``mlmon compare-models``, ``mlmon ab``.

**Shadow vs production** (``compare_models``). A shadow candidate predicts on the same inputs as the
production model; each of its rows is the twin of a production row. Twins are paired by a key:
``pair_on`` when given, else a column named ``request_id``, else the id column when the same ids
occur under both models in the window, else the timestamp plus every feature column (this last
one only works when both models log the very same timestamp; NULL matches NULL). Pairing happens
in DuckDB as one GROUP BY over the key (a pivot: per key, how many rows each model has and the
earliest row's prediction, score and label, via ``arg_min_null``), which also yields the unpaired
rows and the duplicated keys in the same pass. One query returns every count; only aggregates and
the bounded score sample below leave DuckDB.

* The window and the segment select the *requests* by their production row; their candidate twins
  are looked up among the candidate's rows in the window (so a segment on a column that only the
  production rows carry, such as the A/B arm, still finds the twins). A candidate row in the
  segment whose key has no production row in the window is an unpaired candidate row.
* ``rows``: the production rows of the requests, and the candidate rows that answer them or are
  unpaired / unpairable candidate rows in the segment (so rows = pairs + duplicates + unpaired +
  unpairable on each side).
* Rows whose pairing key is entirely missing (or whose timestamp is missing) cannot be paired and
  are counted as ``unpairable``. Keys that occur more than once for a model are counted as
  ``duplicated_keys``; the earliest row of each model is used.
* Agreement: share of pairs with equal predictions, Wilson 95 % interval, overall and per bucket
  (bucketed by the production row's time).
* Accuracy on labeled pairs (a pair is labeled when either twin carries the label), with Wilson
  intervals. McNemar's test on the discordant pairs, b = production right and candidate wrong,
  c = production wrong and candidate right: the exact binomial test (two-sided,
  ``min(1, 2·P[X ≤ min(b, c)])`` with X ~ Bin(b + c, ½), which is ``scipy.stats.binomtest``'s
  p-value) when b + c < 25, else the chi-square test with continuity correction,
  ``max(|b − c| − 1, 0)² / (b + c)`` on 1 degree of freedom. No discordant pair gives p = 1. The
  difference in accuracy (candidate − production) is (c − b)/n with the Agresti–Min interval
  (the Wald interval for matched proportions after adding ½ to each cell of the 2×2 table).
* AUC (binary, with a score column): on the labeled pairs with finite scores, or on a
  deterministic sample of at most ``auc_sample`` (200 000) of them, the smallest by a hash of the
  key (``sample_size``, ``sampled``): each model's AUC with its DeLong interval and the DeLong
  test for two correlated AUCs (exact on the pairs used), plus a paired bootstrap (pairs
  resampled with replacement, both models scored on the same resample, at most 50 000 pairs,
  200 replicates: percentile interval and two-sided p-value ≥ 1/replicates).
* Where they disagree: the disagreement rate of every category / bin of every feature (numerical
  bins at deciles of the reference window, falling back to the analysis window, read from a
  hashed sample of ≈500 000 rows; missing values are a group of their own), each against the
  rest of the pairs with a one-sided two-proportion z-test (the group disagrees *more*; Fisher's
  exact test when an expected cell count is below 5) and Benjamini–Hochberg q-values over all
  groups: one GROUP BY per feature over the materialised pairs. Above ≈200 000 requests the
  breakdown uses a hashed sample of ≈200 000 keys, paired in a second, small query
  (``disagreement_pairs``). ``slices.find_slices`` takes only per-row errors of the log, not a
  per-pair quantity, so this is a one-condition breakdown rather than a search of conjunctions.

**A/B test** (``ab_test``). Per arm: rows, labeled rows and each metric as a proportion with a
Wilson interval (accuracy = correct / labeled; precision = true positives / labeled predicted
positives; recall = true positives / labeled actual positives; positive_rate = predicted
positives / rows; actual_positive_rate = actual positives / labeled rows), all from one GROUP BY.
Each other arm is compared with the control (the given one, else the first arm by name): the
difference, its unpooled Wald interval, the pooled two-proportion z-test (the same p-value as a
2×2 chi-square test without continuity correction), the power of that test to detect the
observed difference at the observed sizes, and the minimum detectable effect at 80 % power.
Power uses the normal approximation: power = Φ((|δ| − z₁₋α/₂·σ₀)/σ₁) + Φ((−|δ| − z₁₋α/₂·σ₀)/σ₁)
with σ₀ the pooled and σ₁ the unpooled standard error; the MDE is the smallest |δ| at which that
power reaches 80 % from the control's rate (solved in both directions, the smaller kept; close to
the textbook (z₁₋α/₂ + z₀.₈)·√(p(1 − p)(1/n₁ + 1/n₂))). Power at the observed difference is a
function of the p-value; the MDE is the number to plan with. Several arms are each compared with
the control without a multiplicity correction. Sample ratio mismatch: ``scipy.stats.chisquare``
of the rows per arm against the expected split (equal by default), flagged when p < 0.001. Rows
without an arm are counted and left out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from mlmon_core import sql, windows
from mlmon_core.config import Window
from mlmon_core.errors import ConfigError, FilterError, NotComputableError
from mlmon_core.metrics import p_value_text
from mlmon_core.sql import Fragment, Ident, Segment

CONFIDENCE = 0.95
MCNEMAR_EXACT_BELOW = 25
SRM_ALPHA = 0.001
SIGNIFICANCE = 0.05
AUC_SAMPLE_PAIRS = 200_000
BOOTSTRAP_REPLICATES = 200
BOOTSTRAP_CHUNK = 8
BOOTSTRAP_MAX_PAIRS = 50_000
QUANTILE_BINS = 10
FISHER_BELOW_EXPECTED = 5
AB_METRICS = ("accuracy", "precision", "recall", "positive_rate", "actual_positive_rate")
DEFAULT_AB_METRICS = ("accuracy", "precision", "recall", "positive_rate")
BINARY_ONLY_METRICS = ("precision", "recall", "positive_rate", "actual_positive_rate")


# ---------------------------------------------------------------- statistics on counts

def _z(confidence: float) -> float:
    return float(stats.norm.ppf(0.5 + confidence / 2))


def wilson_interval(successes: int, trials: int,
                    confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion (``metrics.wilson_interval``); None without trials."""
    from mlmon_core.metrics import wilson_interval as wilson

    return wilson(successes, trials, confidence) if trials > 0 else None


@dataclass(frozen=True)
class Proportion:
    """A share with its Wilson interval; ``value`` is None (with ``reason``) without trials."""

    successes: int
    trials: int
    value: float | None
    low: float | None
    high: float | None
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Plain form."""
        out = {"successes": self.successes, "trials": self.trials, "value": self.value,
               "low": self.low, "high": self.high}
        if self.reason:
            out["reason"] = self.reason
        return out


_NOT_COMPUTABLE = "not computable because "


def proportion(successes: int, trials: int, empty_reason: str) -> Proportion:
    """``successes / trials`` with its Wilson interval, or None and ``empty_reason``."""
    successes, trials = int(successes), int(trials)
    interval = wilson_interval(successes, trials)
    if interval is None:
        why = empty_reason.removeprefix(_NOT_COMPUTABLE)
        return Proportion(successes, trials, None, None, None, _NOT_COMPUTABLE + why)
    return Proportion(successes, trials, successes / trials, interval[0], interval[1])


@dataclass(frozen=True)
class McNemar:
    """McNemar's test on the discordant pairs of two classifiers."""

    production_only_right: int
    candidate_only_right: int
    statistic: float
    p_value: float
    method: str

    def to_json(self) -> dict[str, Any]:
        """Plain form (b = production only right, c = candidate only right)."""
        return {"b": self.production_only_right, "c": self.candidate_only_right,
                "statistic": self.statistic, "p_value": self.p_value, "method": self.method}


def mcnemar_test(b: int, c: int) -> McNemar:
    """McNemar's test: exact binomial when b + c < 25, else chi-square with continuity correction.

    The exact statistic is min(b, c); the chi-square one max(|b − c| − 1, 0)² / (b + c).
    """
    b, c = int(b), int(c)
    discordant = b + c
    if discordant == 0:
        return McNemar(b, c, 0.0, 1.0, "no discordant pairs")
    if discordant < MCNEMAR_EXACT_BELOW:
        smaller = min(b, c)
        p_value = min(1.0, 2 * float(stats.binom.cdf(smaller, discordant, 0.5)))
        return McNemar(b, c, float(smaller), p_value, "exact binomial (b + c < 25)")
    statistic = max(abs(b - c) - 1, 0) ** 2 / discordant
    return McNemar(b, c, float(statistic), float(stats.chi2.sf(statistic, 1)),
                   "chi-square with continuity correction")


def paired_difference_interval(b: int, c: int, n: int,
                               confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """Agresti–Min interval for p_candidate − p_production = (c − b)/n over n matched pairs."""
    if n <= 0:
        return None
    z = _z(confidence)
    b_adj, c_adj, n_adj = b + 0.5, c + 0.5, n + 2.0
    centre = (c_adj - b_adj) / n_adj
    spread = max(b_adj + c_adj - (c_adj - b_adj) ** 2 / n_adj, 0.0)
    half = z * math.sqrt(spread) / n_adj
    return max(-1.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class TwoProportionTest:
    """Pooled two-proportion z-test of p2 − p1 with the unpooled Wald interval."""

    difference: float
    low: float
    high: float
    z: float
    p_value: float


def two_proportion_test(x1: int, n1: int, x2: int, n2: int,
                        confidence: float = CONFIDENCE) -> TwoProportionTest | str:
    """Test p2 = p1; returns the result, or the reason it cannot be computed."""
    if n1 <= 0 or n2 <= 0:
        return "one side has no rows"
    p1, p2 = x1 / n1, x2 / n2
    pooled = (x1 + x2) / (n1 + n2)
    null_se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if null_se == 0:
        return f"every row on both sides has the same outcome (rate {pooled:g}): nothing varies"
    z = (p2 - p1) / null_se
    half = _z(confidence) * math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    return TwoProportionTest(p2 - p1, p2 - p1 - half, p2 - p1 + half, z,
                             float(2 * stats.norm.sf(abs(z))))


def power_two_proportions(p1: float, n1: int, p2: float, n2: int,
                          alpha: float = SIGNIFICANCE) -> float | None:
    """Power of the pooled two-sided z-test to detect p2 − p1 at sizes n1, n2 (normal approx.)."""
    if n1 <= 0 or n2 <= 0:
        return None
    pooled = (p1 * n1 + p2 * n2) / (n1 + n2)
    null_se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    alt_se = math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    if alt_se == 0:
        return None
    critical = _z(1 - alpha)
    delta = abs(p2 - p1)
    return float(stats.norm.cdf((delta - critical * null_se) / alt_se)
                 + stats.norm.cdf((-delta - critical * null_se) / alt_se))


def minimum_detectable_effect(p1: float, n1: int, n2: int, alpha: float = SIGNIFICANCE,
                              power: float = 0.8) -> float | None:
    """Smallest |p2 − p1| that the two-sided z-test detects with ``power`` at sizes n1, n2.

    Solves ``power_two_proportions(p1, n1, p1 ± δ, n2) = power`` for δ in both directions and
    returns the smaller δ (None when neither direction can reach the power).
    """
    from scipy.optimize import brentq

    if n1 <= 0 or n2 <= 0 or not 0 <= p1 <= 1:
        return None
    found = []
    for direction, room in ((1, 1 - p1), (-1, p1)):
        def shortfall(delta: float) -> float:
            achieved = power_two_proportions(p1, n1, p1 + direction * delta, n2, alpha)
            return (achieved if achieved is not None else 0.0) - power
        upper = room - 1e-9          # at p2 = 0 or 1 with p1 at the other end nothing varies
        if upper <= 1e-12 or shortfall(upper) < 0:
            continue
        found.append(brentq(shortfall, 1e-12, upper, xtol=1e-12))
    return float(min(found)) if found else None


# ---------------------------------------------------------------- AUC: DeLong and bootstrap

def _placements(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's placement values (ties count ½): per positive, the share of negatives it beats;
    per negative, the share of positives that beat it (fast midrank form of Sun & Xu)."""
    ranks = stats.rankdata(scores)
    positive_count, negative_count = int(positive.sum()), int((~positive).sum())
    v10 = (ranks[positive] - stats.rankdata(scores[positive])) / negative_count
    v01 = 1 - (ranks[~positive] - stats.rankdata(scores[~positive])) / positive_count
    return v10, v01


@dataclass(frozen=True)
class DeLong:
    """Two correlated AUCs, their DeLong intervals and the test of their difference."""

    auc_production: float
    auc_candidate: float
    interval_production: tuple[float, float]
    interval_candidate: tuple[float, float]
    difference: float
    low: float
    high: float
    z: float | None
    p_value: float


def delong_test(positive: np.ndarray, production: np.ndarray, candidate: np.ndarray,
                confidence: float = CONFIDENCE) -> DeLong | str:
    """DeLong's test for the AUCs of two scores on the same rows; or why it cannot run."""
    positive = np.asarray(positive, dtype=bool)
    m, n = int(positive.sum()), int((~positive).sum())
    if m < 2 or n < 2:
        return f"needs at least 2 positive and 2 negative labeled pairs (has {m} and {n})"
    v10_p, v01_p = _placements(np.asarray(production, dtype=float), positive)
    v10_c, v01_c = _placements(np.asarray(candidate, dtype=float), positive)
    z_crit = _z(confidence)

    def interval(auc: float, v10: np.ndarray, v01: np.ndarray) -> tuple[float, float]:
        half = z_crit * math.sqrt(np.var(v10, ddof=1) / m + np.var(v01, ddof=1) / n)
        return max(0.0, auc - half), min(1.0, auc + half)

    auc_p, auc_c = float(v10_p.mean()), float(v10_c.mean())
    variance = float(np.var(v10_c - v10_p, ddof=1) / m + np.var(v01_c - v01_p, ddof=1) / n)
    difference = auc_c - auc_p
    if variance <= 0:
        z, p_value, half = None, 1.0 if difference == 0 else 0.0, 0.0
    else:
        z = difference / math.sqrt(variance)
        p_value, half = float(2 * stats.norm.sf(abs(z))), z_crit * math.sqrt(variance)
    return DeLong(auc_p, auc_c, interval(auc_p, v10_p, v01_p), interval(auc_c, v10_c, v01_c),
                  difference, difference - half, difference + half, z, p_value)


class _WeightedAuc:
    """AUC of one score under many row weightings, after a single sort (ties count ½)."""

    def __init__(self, scores: np.ndarray, positive: np.ndarray):
        self.order = np.argsort(scores, kind="stable")
        ordered = scores[self.order]
        self.positive = positive[self.order]
        starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
        self.starts = starts if len(starts) < len(scores) else None  # None: no ties

    def __call__(self, weights: np.ndarray) -> np.ndarray:
        """One AUC per row of ``weights`` (replicates × rows); NaN when a class has no weight."""
        weighted = weights[:, self.order]
        positives = np.where(self.positive, weighted, 0.0)
        negatives = weighted - positives
        if self.starts is not None:
            positives = np.add.reduceat(positives, self.starts, axis=1)
            negatives = np.add.reduceat(negatives, self.starts, axis=1)
        below = np.cumsum(negatives, axis=1) - negatives
        wins = (positives * (below + 0.5 * negatives)).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return wins / (positives.sum(axis=1) * negatives.sum(axis=1))


@dataclass(frozen=True)
class Bootstrap:
    """Paired bootstrap of AUC(candidate) − AUC(production)."""

    replicates: int
    pairs: int
    low: float
    high: float
    p_value: float

    def to_json(self) -> dict[str, Any]:
        """Plain form."""
        return {"replicates": self.replicates, "pairs": self.pairs, "low": self.low,
                "high": self.high, "p_value": self.p_value}


def paired_bootstrap_auc(positive: np.ndarray, production: np.ndarray, candidate: np.ndarray,
                         replicates: int = BOOTSTRAP_REPLICATES, seed: int = 0,
                         confidence: float = CONFIDENCE) -> Bootstrap | str:
    """Resample pairs with replacement; both models are scored on the same resample.

    At most ``BOOTSTRAP_MAX_PAIRS`` pairs (a random subset of them) are resampled, to bound the time.

    The interval is the percentile interval of the replicate differences; the two-sided p-value is
    2·min(share ≤ 0, share ≥ 0), at least 1/replicates.
    """
    positive = np.asarray(positive, dtype=bool)
    production, candidate = np.asarray(production, dtype=float), np.asarray(candidate, dtype=float)
    if positive.sum() < 1 or (~positive).sum() < 1 or replicates < 1:
        return "needs labeled pairs of both classes"
    rng = np.random.default_rng(seed)
    if len(positive) > BOOTSTRAP_MAX_PAIRS:
        kept = rng.choice(len(positive), BOOTSTRAP_MAX_PAIRS, replace=False)
        positive, production, candidate = positive[kept], production[kept], candidate[kept]
    rows = len(positive)
    auc_production = _WeightedAuc(np.asarray(production, dtype=float), positive)
    auc_candidate = _WeightedAuc(np.asarray(candidate, dtype=float), positive)
    differences = []
    for start in range(0, replicates, BOOTSTRAP_CHUNK):
        size = min(BOOTSTRAP_CHUNK, replicates - start)
        drawn = rng.integers(0, rows, size=(size, rows)) + (np.arange(size) * rows)[:, None]
        weights = np.bincount(drawn.ravel(), minlength=size * rows).reshape(size, rows)
        weights = weights.astype(float)
        differences.append(auc_candidate(weights) - auc_production(weights))
    values = np.concatenate(differences)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return "no resample held both classes"
    tail = (1 - confidence) / 2
    low, high = np.quantile(values, [tail, 1 - tail])
    p_value = min(1.0, max(2 * min(np.mean(values <= 0), np.mean(values >= 0)), 1 / len(values)))
    return Bootstrap(len(values), rows, float(low), float(high), float(p_value))


# ---------------------------------------------------------------- result types

@dataclass(frozen=True)
class AccuracyComparison:
    """Both models' accuracy on the labeled pairs, their difference and McNemar's test."""

    labeled_pairs: int
    production: Proportion
    candidate: Proportion
    difference: float | None = None
    low: float | None = None
    high: float | None = None
    mcnemar: McNemar | None = None
    both_right: int = 0
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Plain form."""
        out = {"labeled_pairs": self.labeled_pairs, "production": self.production.to_json(),
               "candidate": self.candidate.to_json(), "both_right": self.both_right,
               "difference": self.difference, "low": self.low, "high": self.high,
               "mcnemar": self.mcnemar.to_json() if self.mcnemar else None}
        if self.reason:
            out["reason"] = self.reason
        return out


@dataclass(frozen=True)
class AucComparison:
    """Both models' AUC on the labeled pairs (or a sample of them), DeLong and bootstrap tests."""

    labeled_pairs: int
    sample_size: int
    delong: DeLong | None = None
    bootstrap: Bootstrap | None = None
    reason: str | None = None

    @property
    def sampled(self) -> bool:
        """Whether a sample of the labeled pairs was used rather than all of them."""
        return self.sample_size < self.labeled_pairs

    def to_json(self) -> dict[str, Any]:
        """Plain form."""
        out: dict[str, Any] = {"labeled_pairs": self.labeled_pairs, "sample_size": self.sample_size,
                               "sampled": self.sampled}
        if self.delong is not None:
            d = self.delong
            out.update({
                "production": {"auc": d.auc_production, "low": d.interval_production[0],
                               "high": d.interval_production[1]},
                "candidate": {"auc": d.auc_candidate, "low": d.interval_candidate[0],
                              "high": d.interval_candidate[1]},
                "difference": d.difference, "low": d.low, "high": d.high,
                "delong": {"z": d.z, "p_value": d.p_value},
            })
        out["bootstrap"] = self.bootstrap.to_json() if self.bootstrap else None
        if self.reason:
            out["reason"] = self.reason
        return out


@dataclass
class ModelComparison:
    """Shadow (candidate) against production on the same requests."""

    production: str
    candidate: str
    window: Window
    segment: Segment
    pair_on: tuple[str, ...]
    pairing: str
    rows: dict[str, int]
    pairs: int
    unpaired: dict[str, int]
    unpairable: dict[str, int]
    duplicated_keys: int
    agreement: Proportion
    by_bucket: pd.DataFrame
    accuracy: AccuracyComparison | None
    auc: AucComparison | None
    disagreement: pd.DataFrame
    disagreement_pairs: int = 0
    positive_rate: dict[str, Proportion] = field(default_factory=dict)
    mean_absolute_difference: float | None = None
    summary: str = ""
    reason: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The ``mlmon compare-models --json`` object."""
        out = {
            "production": self.production, "candidate": self.candidate,
            "window": self.window.to_json(), "segment": sql.segment_to_json(self.segment),
            "segment_text": sql.describe_segment(self.segment),
            "pair_on": list(self.pair_on), "pairing": self.pairing,
            "rows": self.rows, "pairs": self.pairs, "unpaired": self.unpaired,
            "unpairable": self.unpairable, "duplicated_keys": self.duplicated_keys,
            "agreement": self.agreement.to_json(),
            "positive_rate": {k: v.to_json() for k, v in self.positive_rate.items()},
            "mean_absolute_difference": self.mean_absolute_difference,
            "accuracy": self.accuracy.to_json() if self.accuracy else None,
            "auc": self.auc.to_json() if self.auc else None,
            "by_bucket": self.by_bucket.to_dict(orient="records"),
            "disagreement": self.disagreement.to_dict(orient="records"),
            "disagreement_pairs": self.disagreement_pairs,
            "summary": self.summary, "notes": self.notes,
        }
        if self.reason:
            out["reason"] = self.reason
        return out


@dataclass(frozen=True)
class ArmDifference:
    """One metric of one arm against the control arm."""

    metric: str
    arm: str
    control: str
    difference: float | None = None
    low: float | None = None
    high: float | None = None
    z: float | None = None
    p_value: float | None = None
    power: float | None = None
    minimum_detectable_effect: float | None = None
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Plain form."""
        out = {"metric": self.metric, "arm": self.arm, "control": self.control,
               "difference": self.difference, "low": self.low, "high": self.high, "z": self.z,
               "p_value": self.p_value, "power": self.power,
               "minimum_detectable_effect": self.minimum_detectable_effect}
        if self.reason:
            out["reason"] = self.reason
        return out


@dataclass(frozen=True)
class SampleRatio:
    """The sample ratio mismatch check of the traffic split."""

    observed: dict[str, int]
    expected_share: dict[str, float]
    statistic: float | None = None
    p_value: float | None = None
    mismatch: bool | None = None
    message: str = ""
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Plain form."""
        out = {"observed": self.observed, "expected_share": self.expected_share,
               "statistic": self.statistic, "p_value": self.p_value, "mismatch": self.mismatch,
               "alpha": SRM_ALPHA, "message": self.message}
        if self.reason:
            out["reason"] = self.reason
        return out


@dataclass(frozen=True)
class Arm:
    """One arm's traffic and metrics."""

    name: str
    rows: int
    labeled_rows: int
    metrics: dict[str, Proportion]

    def to_json(self) -> dict[str, Any]:
        """Plain form."""
        return {"arm": self.name, "rows": self.rows, "labeled_rows": self.labeled_rows,
                "metrics": {k: v.to_json() for k, v in self.metrics.items()}}


@dataclass
class ABResult:
    """An A/B test read from the log: arms, differences against the control, SRM."""

    window: Window
    segment: Segment
    arm_column: str
    control: str | None
    arms: list[Arm]
    differences: list[ArmDifference]
    srm: SampleRatio
    rows_without_arm: int
    metrics: tuple[str, ...]
    alpha: float = SIGNIFICANCE
    summary: str = ""
    reason: str | None = None

    def arm(self, name: str) -> Arm:
        """One arm by name."""
        for item in self.arms:
            if item.name == name:
                return item
        raise KeyError(name)

    def to_json(self) -> dict[str, Any]:
        """The ``mlmon ab --json`` object."""
        out = {"window": self.window.to_json(), "segment": sql.segment_to_json(self.segment),
               "segment_text": sql.describe_segment(self.segment), "arm_column": self.arm_column,
               "control": self.control, "metrics": list(self.metrics), "alpha": self.alpha,
               "rows_without_arm": self.rows_without_arm,
               "arms": [a.to_json() for a in self.arms],
               "differences": [d.to_json() for d in self.differences],
               "srm": self.srm.to_json(), "summary": self.summary}
        if self.reason:
            out["reason"] = self.reason
        return out


# ---------------------------------------------------------------- SQL helpers

def _column_or_null(name: str | None) -> Fragment:
    return sql.render("{c}", c=Ident(name)) if name else Fragment("NULL")


def _equal(view, left: Fragment, right: Fragment, left_column: str, right_column: str) -> Fragment:
    """``left = right``, comparing as text when the two columns' types differ (e.g. 1 vs '1')."""
    types = view.column_types
    left_type, right_type = types.get(left_column, ""), types.get(right_column, "")
    if left_type == right_type or (sql.is_numeric_type(left_type) and sql.is_numeric_type(right_type)):
        return sql.render("({a} = {b})", a=left, b=right)
    return sql.render("(CAST({a} AS VARCHAR) = CAST({b} AS VARCHAR))", a=left, b=right)


# ---------------------------------------------------------------- which models

_MODEL_COUNTS = """
SELECT {model} AS model, count(*) AS total, count(*) FILTER (WHERE {window}) AS in_window,
    count(*) FILTER (WHERE {window} AND {segment}) AS in_segment
FROM {log} WHERE {model} IS NOT NULL GROUP BY 1
"""


def _require_model_column(view) -> str:
    if not view.roles.model:
        raise ConfigError(f"{view.config.path or 'config'}: comparing models needs a model column; "
                          "set [columns] model (e.g. model = \"model_version\")")
    return view.roles.model


def _resolve_models(view, window: Window, segment: Segment, production: str | None,
                    candidate: str | None) -> tuple[Any, Any, dict[str, tuple[int, int, int]]]:
    """The production and candidate values of the model column (defaults explained in the doc),
    and every model's rows: (in the log, in the window, in the window and segment)."""
    column = _require_model_column(view)
    query = sql.render(_MODEL_COUNTS, model=Ident(column), log=view.relation,
                       window=view.where(window), segment=view.where(None, segment))
    rows = view.fetchall(query)
    sizes = {str(value): (int(total), int(in_window), int(in_segment))
             for value, total, in_window, in_segment in rows}
    counts = sorted(((value, int(total), int(in_window)) for value, total, in_window, _ in rows),
                    key=lambda row: (-row[2], -row[1], str(row[0])))
    by_name = {str(value): value for value, _, _ in counts}
    shown = ", ".join(by_name) or "none"
    if len(counts) < 2:
        raise NotComputableError(f"the model column {column!r} holds only one model ({shown}); "
                                 "comparing needs two")
    for given, what in ((production, "production"), (candidate, "candidate")):
        if given is not None and str(given) not in by_name:
            raise FilterError(f"{what} model {given!r} is not in column {column!r}; "
                              f"it holds {shown}")
    if production is None and counts[0][1:] == counts[1][1:]:
        raise FilterError(f"{counts[0][0]!s} and {counts[1][0]!s} have the same number of rows, so "
                          f"which one is in production is ambiguous (models: {shown}); name it "
                          "(--production)")
    chosen = by_name[str(production)] if production is not None else counts[0][0]
    if candidate is not None:
        if str(candidate) == str(chosen):
            raise FilterError(f"the candidate and the production model are both {candidate!r}")
        return chosen, by_name[str(candidate)], sizes
    others = [value for value, _, in_window in counts if str(value) != str(chosen) and in_window]
    if not others:
        others = [value for value, _, _ in counts if str(value) != str(chosen)]
    if len(others) > 1:
        raise FilterError(f"several models besides {chosen!s} ({', '.join(map(str, others))}); "
                          "name the candidate (--candidate)")
    return chosen, others[0], sizes


# ---------------------------------------------------------------- how to pair

_IDS_REPEAT = """
SELECT count(*) > 0 FROM (
    SELECT 1 FROM {log} WHERE {model} = {production} AND {window}
    AND {id} IN (SELECT {id} FROM {log} WHERE {model} = {candidate} AND {window}) LIMIT 1)
"""


def _pairing(view, window: Window, production: Any, candidate: Any,
             pair_on: Sequence[str] | None) -> tuple[tuple[str, ...], str]:
    """The pairing key columns and the name of the strategy that chose them."""
    roles = view.roles
    if pair_on:
        columns = tuple(pair_on)
        for column in columns:
            sql.check_column(column, view.column_types)
            if column == roles.model:
                raise FilterError(f"pair_on cannot include the model column {column!r}: twins "
                                  "differ in it by definition")
        return columns, "given"
    lowered = {name.lower(): name for name in view.columns}
    if "request_id" in lowered and lowered["request_id"] != roles.model:
        return (lowered["request_id"],), "request_id"
    if roles.id:
        query = sql.render(_IDS_REPEAT, log=view.relation, model=Ident(roles.model),
                           production=sql.param(production), candidate=sql.param(candidate),
                           window=view.where(window), id=Ident(roles.id))
        if view.fetchall(query)[0][0]:
            return (roles.id,), "id"
    return (roles.timestamp, *roles.features), "timestamp+features"


# ---------------------------------------------------------------- the paired rows

# One row per pairing key: how many rows each model has there, and the earliest row's prediction,
# score, label (and, for the breakdown, the production row's features). Column-wise
# arg_min_null rather than one arg_min over a struct: a struct aggregate is 2–3× slower in DuckDB.
_PAIRED = """
WITH keyed AS (
    SELECT {keys}, CASE WHEN {model} = {production} THEN 0 ELSE 1 END AS __side,
        {ts} AS __ts, coalesce({in_segment}, FALSE) AS __in_segment, ({unpairable}) AS __lost,
        hash({key_columns}) AS __hash,
        {prediction} AS __pred, {score} AS __score, {target} AS __target{features}
    FROM {log}
    WHERE {window} AND {model} IN ({models}) AND {kept}
), marked AS (
    SELECT *, __side = 0 AND __in_segment AND {sampled} AS __described FROM keyed
), pairs AS (
    SELECT __lost, __hash,
        count(*) FILTER (WHERE __side = 0 AND __in_segment) AS p_rows,
        count(*) FILTER (WHERE __side = 0) AS p_window_rows,
        count(*) FILTER (WHERE __side = 1) AS c_rows,
        count(*) FILTER (WHERE __side = 1 AND __in_segment) AS c_segment_rows,
        arg_min_null(__pred, __ts) FILTER (WHERE __side = 0 AND __in_segment) AS p_pred,
        arg_min_null(__pred, __ts) FILTER (WHERE __side = 1) AS c_pred,
        arg_min_null(__score, __ts) FILTER (WHERE __side = 0 AND __in_segment) AS p_score,
        arg_min_null(__score, __ts) FILTER (WHERE __side = 1) AS c_score,
        arg_min_null(__target, __ts) FILTER (WHERE __side = 0 AND __in_segment) AS p_target,
        arg_min_null(__target, __ts) FILTER (WHERE __side = 1) AS c_target,
        min(__ts) FILTER (WHERE __side = 0 AND __in_segment) AS p_ts{feature_values}
    FROM marked GROUP BY {key_names}, __lost, __hash
    HAVING count(*) FILTER (WHERE __in_segment) > 0
), judged AS (
    SELECT *, NOT __lost AND p_rows > 0 AND c_rows > 0 AS paired,
        coalesce(p_target, c_target) AS target_value,
        date_trunc({bucket}, p_ts) AS start
    FROM pairs
), scored AS MATERIALIZED (
    SELECT start, __lost, __hash, paired, p_rows, p_window_rows, c_rows, c_segment_rows,
        paired AND p_pred IS NOT NULL AND c_pred IS NOT NULL AS comparable,
        paired AND p_pred IS NOT NULL AND c_pred IS NOT NULL AND target_value IS NOT NULL
            AS evaluable,
        paired AND p_pred IS NOT NULL AS p_predicted, paired AND c_pred IS NOT NULL AS c_predicted,
        paired AND p_pred = {positive} AS p_positive, paired AND c_pred = {positive} AS c_positive,
        {p_right} AS p_right, {c_right} AS c_right, {agree} AS agree, {difference} AS difference,
        CASE WHEN paired AND target_value IS NOT NULL THEN CAST(p_score AS DOUBLE) END AS p_score,
        CASE WHEN paired AND target_value IS NOT NULL THEN CAST(c_score AS DOUBLE) END AS c_score,
        {positive_target} AS positive_target, {in_sample} AS in_breakdown{bins}
    FROM judged
)
"""

_COUNTS = """
    count(*) FILTER (WHERE paired) AS pairs,
    count(*) FILTER (WHERE comparable) AS comparable,
    count(*) FILTER (WHERE comparable AND agree) AS agree,
    count(*) FILTER (WHERE evaluable) AS labeled_pairs,
    count(*) FILTER (WHERE evaluable AND isfinite(p_score) AND isfinite(c_score)) AS scored_pairs,
    count(*) FILTER (WHERE evaluable AND p_right) AS production_right,
    count(*) FILTER (WHERE evaluable AND c_right) AS candidate_right,
    count(*) FILTER (WHERE evaluable AND p_right AND c_right) AS both_right,
    count(*) FILTER (WHERE evaluable AND p_right AND NOT c_right) AS only_production_right,
    count(*) FILTER (WHERE evaluable AND c_right AND NOT p_right) AS only_candidate_right,
    count(*) FILTER (WHERE p_predicted) AS production_predicted,
    count(*) FILTER (WHERE c_predicted) AS candidate_predicted,
    count(*) FILTER (WHERE p_positive) AS production_positive,
    count(*) FILTER (WHERE c_positive) AS candidate_positive,
    coalesce(sum(p_rows), 0) AS production_rows,
    coalesce(sum(c_rows) FILTER (WHERE NOT __lost AND p_rows > 0), 0)
        + coalesce(sum(c_segment_rows) FILTER (WHERE __lost OR p_window_rows = 0), 0)
        AS candidate_rows,
    coalesce(sum(p_rows) FILTER (WHERE NOT __lost AND c_rows = 0), 0) AS unpaired_production,
    coalesce(sum(c_segment_rows) FILTER (WHERE NOT __lost AND p_window_rows = 0), 0)
        AS unpaired_candidate,
    coalesce(sum(p_rows) FILTER (WHERE __lost), 0) AS unpairable_production,
    coalesce(sum(c_segment_rows) FILTER (WHERE __lost), 0) AS unpairable_candidate,
    count(*) FILTER (WHERE paired AND (p_rows > 1 OR c_rows > 1)) AS duplicated_keys,
    avg(difference) FILTER (WHERE comparable) AS mean_absolute_difference
"""

# __set: 0 = every pair, 1 = per bucket, 2 = the score sample, 3 + i = groups of feature i.
_TOTALS = """
{paired}
SELECT 0 AS __set, {counts} FROM scored
UNION ALL BY NAME
SELECT 1 AS __set, start, {counts} FROM scored WHERE start IS NOT NULL GROUP BY start
UNION ALL BY NAME
SELECT 2 AS __set, list(p_score) AS p_scores, list(c_score) AS c_scores,
    list(positive_target) AS positives
FROM (SELECT p_score, c_score, positive_target FROM scored
      WHERE evaluable AND isfinite(p_score) AND isfinite(c_score)
      ORDER BY hash(__hash, {seed}) LIMIT {limit})
{feature_sets}
"""

_FEATURE_SET = """
SELECT {set} AS __set, CAST({bin} AS VARCHAR) AS __group,
    count(*) FILTER (WHERE comparable) AS comparable,
    count(*) FILTER (WHERE comparable AND agree) AS agree
FROM scored WHERE in_breakdown GROUP BY {bin}
"""

_DECILES = "SELECT {deciles} FROM {log} WHERE (({reference}) OR ({window})) AND {thinned}"
HASH_BUCKETS = 1_000_000
BREAKDOWN_PAIRS = 200_000
DECILE_ROWS = 500_000


@dataclass(frozen=True)
class _Plan:
    """Everything the paired-rows query needs."""

    production: Any
    candidate: Any
    keys: tuple[str, ...]
    window: Window
    segment: Segment
    bucket: str
    features: tuple[str, ...]
    breakdown_share: float = 1.0


def _hash_share(hashed: Fragment, share: float) -> Fragment:
    """A deterministic share of rows, chosen by a hash (TRUE when the share is 1)."""
    if share >= 1:
        return Fragment("TRUE")
    return sql.render("({h} % {buckets} < {kept})", h=hashed, buckets=HASH_BUCKETS,
                      kept=max(1, math.ceil(share * HASH_BUCKETS)))


def _unpairable(view, plan: _Plan) -> Fragment:
    every_key_missing = sql.join((sql.render("{c} IS NULL", c=Ident(c)) for c in plan.keys), " AND ")
    return sql.render("({keys}) OR {ts} IS NULL", keys=every_key_missing,
                      ts=Ident(view.roles.timestamp))


def _listed(parts: Sequence[Fragment]) -> Fragment:
    """``, a, b`` (with the leading comma) or nothing."""
    return sql.render(", {parts}", parts=sql.join(parts)) if parts else Fragment("")


def _paired_query(view, plan: _Plan, binnings: Sequence["_Binning"],
                  kept: Fragment = Fragment("TRUE")) -> Fragment:
    """The WITH clause ending in ``scored``: one row per key, both twins' predictions judged."""
    roles = view.roles
    aliases = [Ident(f"__k{i}") for i in range(len(plan.keys))]
    features = [Ident(f"__f{i}") for i in range(len(plan.features))]
    classification = view.task != "regression" and roles.prediction is not None
    if classification and roles.target:
        p_right = _equal(view, Fragment("p_pred"), Fragment("target_value"), roles.prediction,
                         roles.target)
        c_right = _equal(view, Fragment("c_pred"), Fragment("target_value"), roles.prediction,
                         roles.target)
    else:
        p_right = c_right = Fragment("NULL::BOOLEAN")
    regression = view.task == "regression" and roles.prediction is not None
    binary = view.task == "binary"
    sampled = _hash_share(Fragment("__hash"), plan.breakdown_share)
    return sql.render(
        _PAIRED,
        keys=sql.join(sql.render("{c} AS {a}", c=Ident(c), a=a) for c, a in zip(plan.keys, aliases)),
        key_names=sql.join(sql.render("{a}", a=a) for a in aliases),
        model=Ident(roles.model), production=sql.param(plan.production),
        models=sql.value_list([plan.production, plan.candidate]),
        ts=Ident(roles.timestamp), in_segment=view.where(None, plan.segment),
        unpairable=_unpairable(view, plan),
        prediction=_column_or_null(roles.prediction), score=_column_or_null(roles.score),
        target=_column_or_null(roles.target),
        features=_listed([sql.render("{c} AS {a}", c=Ident(c), a=a)
                          for c, a in zip(plan.features, features)]),
        key_columns=sql.join(sql.render("{c}", c=Ident(c)) for c in plan.keys),
        feature_values=_listed([sql.render("first({a}) FILTER (WHERE __described) AS {a}", a=a)
                                for a in features]),
        sampled=sampled, kept=kept,
        in_sample=sampled,
        log=view.relation, window=view.where(plan.window), bucket=sql.param(plan.bucket),
        positive=sql.param(view.positive_label if binary else None),
        p_right=p_right, c_right=c_right,
        agree=Fragment("(p_pred = c_pred)") if classification else Fragment("NULL::BOOLEAN"),
        difference=Fragment("abs(CAST(p_pred AS DOUBLE) - CAST(c_pred AS DOUBLE))") if regression
        else Fragment("NULL::DOUBLE"),
        positive_target=sql.render("target_value = {p}", p=sql.param(view.positive_label))
        if binary else Fragment("NULL::BOOLEAN"),
        bins=_listed([sql.render("{e} AS {b}", e=b.expression(Ident(f"__f{i}")), b=Ident(f"__b{i}"))
                      for i, b in enumerate(binnings)]),
    )


# ---------------------------------------------------------------- disagreement breakdown

@dataclass(frozen=True)
class _Binning:
    """How one feature is grouped: categories as text, or numbers by reference deciles."""

    column: str
    edges: tuple[float, ...] | None  # None: categorical

    def expression(self, value: Ident) -> Fragment:
        """The group of a value: its text, or the number of edges below it (NULL when missing)."""
        if self.edges is None:
            return sql.render("CAST({v} AS VARCHAR)", v=value)
        number = sql.render("CAST({v} AS DOUBLE)", v=value)
        steps = sql.join((sql.render("CAST({x} > {e} AS INTEGER)", x=number, e=sql.param(edge))
                          for edge in self.edges), " + ") if self.edges else Fragment("0")
        return sql.render("CASE WHEN {x} IS NULL OR isnan({x}) THEN NULL ELSE {steps} END",
                          x=number, steps=steps)

    def describe(self, key: str | None) -> tuple[str, list[dict[str, Any]]]:
        """Plain words and the segment (JSON conditions) of one group key."""
        if key is None:
            return f"{self.column} is missing", [{"column": self.column, "op": "is_null"}]
        if self.edges is None:
            return f"{self.column} = {key}", [{"column": self.column, "op": "==", "value": key}]
        index = int(key)
        low = self.edges[index - 1] if index > 0 else None
        high = self.edges[index] if index < len(self.edges) else None
        if low is None and high is None:
            return f"{self.column} is present", [{"column": self.column, "op": "not_null"}]
        conditions = []
        if low is not None:
            conditions.append({"column": self.column, "op": ">", "value": low})
        if high is not None:
            conditions.append({"column": self.column, "op": "<=", "value": high})
        if low is None:
            words = f"{self.column} ≤ {high:g}"
        elif high is None:
            words = f"{self.column} > {low:g}"
        else:
            words = f"{self.column} {low:g}–{high:g}"
        return words, conditions


def _binnings(view, plan: _Plan, log_rows: int) -> list[_Binning]:
    """Categorical features as they are; numerical ones by deciles of the reference window
    (of the analysis window when the reference holds no value), read from a hashed sample of
    about ``DECILE_ROWS`` rows of the log's ``log_rows``."""
    numerical = [f for f in plan.features if view.columns[f].kind == "numerical"]
    edges: dict[str, tuple[float, ...]] = {}
    if numerical:
        reference = view.where(windows.reference_window(view))
        current = view.where(plan.window)
        fractions = sql.join(sql.param(k / QUANTILE_BINS) for k in range(1, QUANTILE_BINS))
        deciles = []
        for name in numerical:
            value = sql.render("CAST({c} AS DOUBLE)", c=Ident(name))
            for scope in (reference, current):
                deciles.append(sql.render(
                    "quantile_disc({v}, [{fractions}]) FILTER (WHERE ({scope}) AND isfinite({v}))",
                    v=value, fractions=fractions, scope=scope))
        thinned = _hash_share(sql.render("hash({ts})", ts=Ident(view.roles.timestamp)),
                              DECILE_ROWS / max(log_rows, 1))
        row = view.fetchall(sql.render(_DECILES, deciles=sql.join(deciles), log=view.relation,
                                       reference=reference, window=current, thinned=thinned))[0]
        for i, name in enumerate(numerical):
            found = row[2 * i] if row[2 * i] is not None else row[2 * i + 1]
            edges[name] = tuple(sorted({float(e) for e in found or ()}))
    return [_Binning(f, edges.get(f)) for f in plan.features]


def _greater_p(x1: int, n1: int, x2: int, n2: int) -> float | None:
    """One-sided p-value that x1/n1 exceeds x2/n2: pooled z-test, or Fisher's exact test when an
    expected cell count is below 5."""
    if n1 <= 0 or n2 <= 0:
        return None
    table = np.array([[x1, n1 - x1], [x2, n2 - x2]], dtype=float)
    expected = table.sum(axis=1)[:, None] * table.sum(axis=0)[None, :] / table.sum()
    if expected.min() < FISHER_BELOW_EXPECTED:
        return float(stats.fisher_exact(table.astype(int), alternative="greater")[1])
    result = two_proportion_test(x2, n2, x1, n1)
    return float(stats.norm.sf(result.z)) if isinstance(result, TwoProportionTest) else 1.0


_DISAGREEMENT_COLUMNS = ["feature", "group", "segment", "pairs", "disagreements",
                         "disagreement_rate", "rest_rate", "difference", "p_value", "q_value",
                         "significant"]


def _disagreement_table(totals: pd.DataFrame, binnings: list[_Binning]) -> pd.DataFrame:
    """One row per feature group, its disagreement rate against the rest, tests and BH q-values."""
    records = []
    for index, binning in enumerate(binnings):
        rows = totals[totals["__set"] == 3 + index]
        total_pairs = int(rows["comparable"].sum())
        total_disagreements = total_pairs - int(rows["agree"].sum())
        for key, pairs, agree in zip(rows["__group"], rows["comparable"], rows["agree"]):
            pairs, disagreements = int(pairs), int(pairs) - int(agree)
            if pairs == 0:
                continue
            rest_pairs = total_pairs - pairs
            rest_disagreements = total_disagreements - disagreements
            words, segment = binning.describe(None if pd.isna(key) else str(key))
            rate = disagreements / pairs
            rest = rest_disagreements / rest_pairs if rest_pairs else None
            records.append({
                "feature": binning.column, "group": words, "segment": segment, "pairs": pairs,
                "disagreements": disagreements, "disagreement_rate": rate, "rest_rate": rest,
                "difference": rate - rest if rest is not None else None,
                "p_value": _greater_p(disagreements, pairs, rest_disagreements, rest_pairs),
            })
    table = pd.DataFrame.from_records(records, columns=_DISAGREEMENT_COLUMNS[:-2])
    tested = table["p_value"].notna()
    table["q_value"] = np.nan
    if tested.any():
        table.loc[tested, "q_value"] = stats.false_discovery_control(
            table.loc[tested, "p_value"].astype(float).to_numpy())
    table["significant"] = table["q_value"] < SIGNIFICANCE
    table = table.sort_values(["significant", "difference", "pairs"],
                              ascending=[False, False, False], na_position="last", kind="stable")
    return table.reset_index(drop=True)[_DISAGREEMENT_COLUMNS]


# ---------------------------------------------------------------- compare_models

def compare_models(view, window: Window | None, segment: Segment = (), production: str | None = None,
                   candidate: str | None = None, pair_on: Sequence[str] | None = None,
                   bucket: str = "day", breakdown: bool = True, auc_sample: int = AUC_SAMPLE_PAIRS,
                   bootstrap_replicates: int = BOOTSTRAP_REPLICATES,
                   seed: int = 0) -> ModelComparison:
    """Compare a shadow candidate with production on the requests both answered (see the module doc).

    ``production`` defaults to the model with most rows in the window (then in the log),
    ``candidate`` to the only other model (in the window, else in the log); raises when the model
    column is missing, holds one model, or either choice is ambiguous (a tie, several others).
    ``pair_on`` names the pairing key columns. ``breakdown`` adds the disagreement rate by feature
    group; ``auc_sample`` bounds the labeled pairs pulled for the AUC tests. Queries: the model
    counts, the pairing totals, and for the breakdown the deciles (and the sampled groups).
    """
    windows.check_bucket(bucket)
    window = window or Window(None, None)
    production_value, candidate_value, sizes = _resolve_models(view, window, segment, production,
                                                               candidate)
    keys, strategy = _pairing(view, window, production_value, candidate_value, pair_on)
    classification = view.task != "regression" and view.roles.prediction is not None
    features = tuple(view.roles.features) if breakdown and classification else ()
    requests = sizes[str(production_value)][2]
    plan = _Plan(production_value, candidate_value, keys, window, tuple(segment), bucket, features,
                 breakdown_share=min(1.0, BREAKDOWN_PAIRS / max(requests, 1)))
    log_rows = sum(total for total, _, _ in sizes.values())
    binnings = _binnings(view, plan, log_rows) if features else []
    inline = plan.breakdown_share >= 1
    totals = _fetch_totals(view, plan if inline else replace(plan, features=()),
                           binnings if inline else [], auc_sample, seed)
    overall_rows = totals[totals["__set"] == 0]
    overall = overall_rows.iloc[0] if len(overall_rows) else None
    result = _comparison(view, plan, strategy, overall, totals)
    if binnings and result.agreement.trials:
        if not inline:
            totals = pd.concat([totals, _fetch_sampled_groups(view, plan, binnings)],
                               ignore_index=True)
        result.disagreement = _disagreement_table(totals, binnings)
        result.disagreement_pairs = int(totals.loc[totals["__set"] == 3, "comparable"].sum())
        if result.disagreement_pairs < result.agreement.trials:
            result.notes.append(f"the breakdown by feature uses a hashed sample of "
                                f"{result.disagreement_pairs:,} of the {result.agreement.trials:,} "
                                "pairs")
    result.auc = _auc(view, result, totals, bootstrap_replicates, seed)
    result.summary = _comparison_summary(result)
    return result


def _feature_sets(binnings: Sequence[_Binning]) -> Fragment:
    """The per-feature GROUP BYs, each ``UNION ALL BY NAME`` after what precedes them."""
    return sql.join((sql.render("UNION ALL BY NAME {part}",
                                part=sql.render(_FEATURE_SET, set=3 + i, bin=Ident(f"__b{i}")))
                     for i in range(len(binnings))), "\n")


def _fetch_totals(view, plan: _Plan, binnings: list[_Binning], limit: int,
                  seed: int) -> pd.DataFrame:
    """Totals (``__set`` 0), per bucket (1), the score sample (2) and per feature group (3 + i)."""
    query = sql.render(_TOTALS, paired=_paired_query(view, plan, binnings),
                       counts=Fragment(_COUNTS), seed=int(seed), limit=max(int(limit), 1),
                       feature_sets=_feature_sets(binnings))
    return view.fetch_df(query)


def _fetch_sampled_groups(view, plan: _Plan, binnings: list[_Binning]) -> pd.DataFrame:
    """Feature groups (``__set`` 3 + i) of a hashed sample of the keys, paired on their own: far
    cheaper than carrying every feature through the pivot of every row."""
    key = sql.render("hash({keys})", keys=sql.join(sql.render("{c}", c=Ident(c)) for c in plan.keys))
    sampled = _paired_query(view, plan, binnings, kept=_hash_share(key, plan.breakdown_share))
    return view.fetch_df(sql.render("{paired} SELECT NULL::INTEGER AS __set WHERE FALSE {sets}",
                                    paired=sampled, sets=_feature_sets(binnings)))


def _count(row: pd.Series | None, name: str) -> int:
    if row is None or pd.isna(row[name]):
        return 0
    return int(row[name])


def _comparison(view, plan: _Plan, strategy: str, overall: pd.Series | None,
                totals: pd.DataFrame) -> ModelComparison:
    """The result object from the totals (everything but the AUC and the breakdown)."""
    rows = {"production": _count(overall, "production_rows"),
            "candidate": _count(overall, "candidate_rows")}
    unpairable = {"production": _count(overall, "unpairable_production"),
                  "candidate": _count(overall, "unpairable_candidate")}
    production, candidate = str(plan.production), str(plan.candidate)
    pairs = _count(overall, "pairs")
    reason = _no_pairs_reason(plan, rows, pairs, unpairable)
    classification = view.task != "regression" and view.roles.prediction is not None
    agreement = (proportion(_count(overall, "agree"), _count(overall, "comparable"),
                            "no pair has both predictions" if pairs else reason or "no pairs")
                 if classification else Proportion(0, 0, None, None, None, _not_classification(view)))
    positive_rate = {}
    if view.task == "binary" and view.roles.prediction:
        positive_rate = {
            name: proportion(_count(overall, f"{side}_positive"), _count(overall, f"{side}_predicted"),
                             "no pairs")
            for name, side in ((production, "production"), (candidate, "candidate"))}
    difference = overall["mean_absolute_difference"] if overall is not None else None
    result = ModelComparison(
        production=production, candidate=candidate, window=plan.window, segment=plan.segment,
        pair_on=plan.keys, pairing=strategy, rows=rows, pairs=pairs,
        unpaired={"production": _count(overall, "unpaired_production"),
                  "candidate": _count(overall, "unpaired_candidate")},
        unpairable=unpairable, duplicated_keys=_count(overall, "duplicated_keys"),
        agreement=agreement, by_bucket=_by_bucket(totals, view),
        accuracy=_accuracy(view, overall, pairs, reason),
        auc=None, disagreement=pd.DataFrame(columns=_DISAGREEMENT_COLUMNS),
        positive_rate=positive_rate,
        mean_absolute_difference=None if difference is None or pd.isna(difference)
        else float(difference),
        reason=reason,
    )
    if result.duplicated_keys:
        result.notes.append(f"{result.duplicated_keys:,} pairing keys occur more than once for a "
                            "model; the earliest row of each model was used")
    if strategy == "timestamp+features":
        result.notes.append("paired on the timestamp and every feature: twins must log the very "
                            "same timestamp; pass pair_on (--pair-on) to pair on a request key")
    return result


def _not_classification(view) -> str:
    if view.roles.prediction is None:
        return "not computable because the log has no prediction column"
    return ("not computable because predictions are continuous (regression): see "
            "mean_absolute_difference")


def _no_pairs_reason(plan: _Plan, rows: dict[str, int], pairs: int,
                     unpairable: dict[str, int]) -> str | None:
    if pairs:
        return None
    production, candidate = str(plan.production), str(plan.candidate)
    where = f"window {plan.window}" + (f" and segment {sql.describe_segment(plan.segment)}"
                                       if plan.segment else "")
    if rows["production"] == 0 and rows["candidate"] == 0:
        return f"not computable because neither {production} nor {candidate} has rows in {where}"
    if rows["production"] == 0:
        return f"not computable because {production} has no rows in {where}"
    if rows["candidate"] == 0 and not plan.segment:
        return f"not computable because {candidate} has no rows in {where}"
    if unpairable["production"] == rows["production"]:
        return (f"not computable because every {production} row lacks the pairing key "
                f"({', '.join(plan.keys)})")
    return (f"not computable because no {production} row in {where} has a {candidate} twin with "
            f"the same {', '.join(plan.keys)}")


def _accuracy(view, overall: pd.Series | None, pairs: int,
              reason: str | None) -> AccuracyComparison | None:
    """Accuracy of both models on the labeled pairs, McNemar and the paired difference."""
    roles = view.roles
    if view.task == "regression" or roles.prediction is None:
        return None
    labeled = _count(overall, "labeled_pairs")
    why = (reason or "no pairs") if not pairs else (
        "the log has no target column" if not roles.target else "no pair is labeled yet")
    production = proportion(_count(overall, "production_right"), labeled, why)
    candidate = proportion(_count(overall, "candidate_right"), labeled, why)
    if labeled == 0:
        return AccuracyComparison(0, production, candidate, reason=production.reason)
    b, c = _count(overall, "only_production_right"), _count(overall, "only_candidate_right")
    low, high = paired_difference_interval(b, c, labeled)
    return AccuracyComparison(labeled, production, candidate, difference=(c - b) / labeled,
                              low=low, high=high, mcnemar=mcnemar_test(b, c),
                              both_right=_count(overall, "both_right"))


def _by_bucket(totals: pd.DataFrame, view) -> pd.DataFrame:
    """Agreement and both accuracies per bucket, with Wilson intervals."""
    columns = ["start", "pairs", "comparable", "agree", "agreement", "low", "high",
               "labeled_pairs", "production_accuracy", "candidate_accuracy"]
    frame = totals[(totals["__set"] == 1) & (totals["pairs"] > 0)].sort_values("start")
    records = []
    for row in frame.itertuples(index=False):
        interval = wilson_interval(int(row.agree), int(row.comparable))
        labeled = int(row.labeled_pairs)
        records.append({
            "start": row.start, "pairs": int(row.pairs), "comparable": int(row.comparable),
            "agree": int(row.agree),
            "agreement": row.agree / row.comparable if row.comparable else None,
            "low": interval[0] if interval else None, "high": interval[1] if interval else None,
            "labeled_pairs": labeled,
            "production_accuracy": row.production_right / labeled if labeled else None,
            "candidate_accuracy": row.candidate_right / labeled if labeled else None,
        })
    if view.task == "regression":
        for record in records:
            record.update(agree=None, agreement=None, low=None, high=None)
    return pd.DataFrame.from_records(records, columns=columns)


def _auc(view, result: ModelComparison, totals: pd.DataFrame, replicates: int,
         seed: int) -> AucComparison | None:
    """DeLong and paired bootstrap on the labeled pairs' scores (a hashed sample when many)."""
    roles = view.roles
    if view.task != "binary":
        return None
    if not roles.score or not roles.target:
        missing = "score" if not roles.score else "target"
        return AucComparison(0, 0, reason=f"not computable because the log has no {missing} column")
    overall = totals[totals["__set"] == 0]
    labeled = _count(overall.iloc[0] if len(overall) else None, "scored_pairs")
    sample = totals[totals["__set"] == 2]
    positives = sample["positives"].iloc[0] if len(sample) else None
    if not isinstance(positives, (list, np.ndarray)) or len(positives) == 0:
        why = result.accuracy.reason if result.accuracy and result.accuracy.reason else \
            "not computable because no labeled pair has both scores"
        return AucComparison(labeled, 0, reason=why)
    positive = np.asarray(positives, dtype=bool)
    production = np.asarray(sample["p_scores"].iloc[0], dtype=float)
    candidate = np.asarray(sample["c_scores"].iloc[0], dtype=float)
    size = len(positive)
    delong = delong_test(positive, production, candidate)
    if isinstance(delong, str):
        return AucComparison(labeled, size, reason=f"not computable because the AUC test {delong}")
    bootstrap = paired_bootstrap_auc(positive, production, candidate, replicates, seed)
    return AucComparison(labeled, size, delong=delong,
                         bootstrap=bootstrap if isinstance(bootstrap, Bootstrap) else None)


def _comparison_summary(result: ModelComparison) -> str:
    """Plain words: agreement, accuracy with McNemar, AUC with DeLong, what was left unpaired."""
    production, candidate = result.production, result.candidate
    if result.pairs == 0:
        return f"{candidate} and {production} cannot be compared: " + (
            (result.reason or "no pairs").removeprefix("not computable because "))
    parts = []
    if result.agreement.value is not None:
        parts.append(f"{candidate} agrees with {production} on {result.agreement.value:.1%} of "
                     f"{result.pairs:,} paired requests")
    else:
        parts.append(f"{result.pairs:,} requests were answered by both {production} and {candidate}")
        if result.mean_absolute_difference is not None:
            parts[-1] += (f"; their predictions differ by {result.mean_absolute_difference:.4g} "
                          "on average")
    accuracy = result.accuracy
    if accuracy is not None and accuracy.labeled_pairs:
        parts.append(f"on {accuracy.labeled_pairs:,} labeled pairs its accuracy is "
                     f"{accuracy.candidate.value:.3f} vs {accuracy.production.value:.3f} "
                     f"(McNemar {p_value_text(accuracy.mcnemar.p_value)})")
    elif accuracy is not None:
        parts.append("no pair is labeled yet, so accuracy cannot be compared")
    text = "; ".join(parts)
    if result.auc is not None and result.auc.delong is not None:
        d = result.auc.delong
        sampled = f", on a sample of {result.auc.sample_size:,} pairs" if result.auc.sampled else ""
        text += (f". AUC {d.auc_candidate:.3f} vs {d.auc_production:.3f} "
                 f"(DeLong {p_value_text(d.p_value)}{sampled})")
    unpaired = result.unpaired["production"] + result.unpairable["production"]
    if unpaired:
        text += f". {unpaired:,} {production} requests had no {candidate} twin"
    if result.unpaired["candidate"]:
        text += f"; {result.unpaired['candidate']:,} {candidate} rows had no {production} twin"
    return text + "."


# ---------------------------------------------------------------- A/B test

_ARMS = """
SELECT {arm} AS arm, count(*) AS rows, count({target}) AS labeled,
    count({prediction}) AS predicted,
    count(*) FILTER (WHERE {prediction} = {positive}) AS predicted_positive,
    count(*) FILTER (WHERE {prediction} IS NOT NULL AND {target} IS NOT NULL) AS evaluated,
    count(*) FILTER (WHERE {prediction} IS NOT NULL AND {target} IS NOT NULL AND {right})
        AS correct,
    count(*) FILTER (WHERE {prediction} IS NOT NULL AND {target} = {positive}) AS actual_positive,
    count(*) FILTER (WHERE {target} IS NOT NULL AND {prediction} = {positive}) AS flagged_labeled,
    count(*) FILTER (WHERE {target} = {positive} AND {prediction} = {positive}) AS true_positive,
    count(*) FILTER (WHERE {target} = {positive}) AS positive_labels
FROM {log} WHERE {where}
GROUP BY 1
"""

# metric: (successes, trials, what is missing when there are no trials)
_AB_COUNTS = {
    "accuracy": ("correct", "evaluated", "no labeled rows"),
    "precision": ("true_positive", "flagged_labeled", "no labeled rows predicted positive"),
    "recall": ("true_positive", "actual_positive", "no labeled positive rows"),
    "positive_rate": ("predicted_positive", "predicted", "no predictions"),
    "actual_positive_rate": ("positive_labels", "labeled", "no labeled rows"),
}


def _check_metrics(view, metrics: Sequence[str]) -> tuple[str, ...]:
    unknown = [m for m in metrics if m not in AB_METRICS]
    if unknown:
        raise ConfigError(f"unknown A/B metric(s) {', '.join(map(repr, unknown))}; "
                          f"choose from {', '.join(AB_METRICS)}")
    if not metrics:
        raise ConfigError(f"name at least one A/B metric ({', '.join(AB_METRICS)})")
    return tuple(metrics)


def _metric_reason(view, metric: str) -> str | None:
    """Why a metric cannot be computed on this log at all (None when it can)."""
    roles = view.roles
    if view.task == "regression":
        return "not computable because the model is a regression (A/B metrics are proportions)"
    if roles.prediction is None:
        return "not computable because the log has no prediction column"
    if metric in BINARY_ONLY_METRICS and view.task != "binary":
        return f"not computable because {metric} is defined for binary classification only"
    if metric != "positive_rate" and roles.target is None:
        return "not computable because the log has no target column"
    return None


def _expected_shares(arms: list[str], expected_split: Mapping[str, float] | None) -> dict[str, float]:
    """Expected share per arm: equal by default; a given split is checked and normalised."""
    if expected_split is None:
        return {arm: 1 / len(arms) for arm in arms} if arms else {}
    split = {str(k): v for k, v in expected_split.items()}
    bad = {k: v for k, v in split.items() if isinstance(v, bool) or not isinstance(v, (int, float))
           or not math.isfinite(v) or not v > 0}
    if bad:
        raise ConfigError(f"expected_split: shares must be positive numbers, got {bad}")
    missing = [arm for arm in arms if arm not in split]
    if missing:
        raise ConfigError(f"expected_split has no share for arm(s) {', '.join(missing)} found in the "
                          f"data (it names {', '.join(split)})")
    total = sum(split.values())
    return {arm: share / total for arm, share in split.items()}


def sample_ratio_mismatch(observed: Mapping[str, int],
                          expected_share: Mapping[str, float]) -> SampleRatio:
    """Chi-square goodness of fit of rows per arm against the expected split; flag at p < 0.001."""
    observed = {arm: int(observed.get(arm, 0)) for arm in expected_share}
    total = sum(observed.values())
    shares = dict(expected_share)
    if len(shares) < 2:
        return SampleRatio(observed, shares, reason="not computable because there is only one arm",
                           message="Only one arm has traffic: there is no split to check.")
    if total == 0:
        return SampleRatio(observed, shares, reason="not computable because no row has an arm",
                           message="No traffic in the window.")
    expected = np.array([shares[arm] * total for arm in shares])
    statistic, p_value = stats.chisquare(np.array(list(observed.values()), dtype=float), expected)
    mismatch = bool(p_value < SRM_ALPHA)
    split = ", ".join(f"{arm} {observed[arm] / total:.1%} (expected {shares[arm]:.1%})"
                      for arm in shares)
    if mismatch:
        message = (f"Sample ratio mismatch: {split} of {total:,} rows (chi-square "
                   f"{p_value_text(float(p_value))}). The traffic split is not what it should be, so "
                   "the arms may differ in who they serve; fix the assignment before trusting the "
                   "comparison.")
    else:
        message = (f"The traffic split matches the expected one: {split} of {total:,} rows "
                   f"({p_value_text(float(p_value))}).")
    return SampleRatio(observed, shares, float(statistic), float(p_value), mismatch, message)


def ab_test(view, window: Window | None, segment: Segment = (), arm_column: str | None = None,
            expected_split: Mapping[str, float] | None = None,
            metrics: Sequence[str] = DEFAULT_AB_METRICS, control: str | None = None,
            alpha: float = SIGNIFICANCE, power: float = 0.8) -> ABResult:
    """Read an A/B test from the log: per arm metrics, differences against the control, SRM.

    ``arm_column`` defaults to the log's variant column; ``control`` to the first arm in sorted
    order; ``expected_split`` (arm → share) to an equal split. Raises when there is no arm column.
    """
    window = window or Window(None, None)
    metrics = _check_metrics(view, metrics)
    column = arm_column or view.roles.variant
    if not column:
        raise ConfigError(f"{view.config.path or 'config'}: an A/B test needs an arm column; set "
                          "[columns] variant (e.g. variant = \"variant\") or pass --arm-column")
    sql.check_column(column, view.column_types)
    frame = view.fetch_df(_arms_query(view, column, window, segment))
    without_arm = int(frame.loc[frame["arm"].isna(), "rows"].sum())
    frame = frame[frame["arm"].notna()]
    frame = frame.assign(name=frame["arm"].astype(str)).sort_values("name")
    names = list(frame["name"])
    if control is not None and str(control) not in names:
        raise FilterError(f"control arm {control!r} has no rows in column {column!r} in window "
                          f"{window}; arms found: {', '.join(names) or 'none'}")
    chosen = str(control) if control is not None else (min(names) if names else None)
    arms = [_arm(view, name, row, metrics) for name, row in zip(names, frame.to_dict("records"))]
    ordered = sorted(arms, key=lambda a: (a.name != chosen, a.name))
    shares = _expected_shares(names, expected_split)
    srm = sample_ratio_mismatch({a.name: a.rows for a in arms}, shares)
    differences = [_arm_difference(metric, arm, ordered[0], alpha, power)
                   for arm in ordered[1:] for metric in metrics]
    reason = None
    if not arms:
        reason = f"not computable because no row in window {window} has a value in {column!r}"
    elif len(arms) == 1:
        reason = f"not computable because only arm {arms[0].name} has rows in window {window}"
    result = ABResult(window, tuple(segment), column, chosen, ordered, differences, srm, without_arm,
                      metrics, alpha=alpha, reason=reason)
    result.summary = _ab_summary(result)
    return result


def _arms_query(view, column: str, window: Window, segment: Segment) -> Fragment:
    roles = view.roles
    prediction, target = _column_or_null(roles.prediction), _column_or_null(roles.target)
    right = (_equal(view, prediction, target, roles.prediction, roles.target)
             if roles.prediction and roles.target else Fragment("FALSE"))
    positive = view.positive_label if view.task == "binary" else None
    return sql.render(_ARMS, arm=Ident(column), target=target, prediction=prediction,
                      positive=sql.param(positive), right=right, log=view.relation,
                      where=view.where(window, segment))


def _arm(view, name: str, row: dict[str, Any], metrics: tuple[str, ...]) -> Arm:
    values = {}
    for metric in metrics:
        successes, trials, empty = _AB_COUNTS[metric]
        reason = _metric_reason(view, metric)
        if reason:
            values[metric] = Proportion(0, 0, None, None, None, reason)
        else:
            values[metric] = proportion(row[successes], row[trials], f"arm {name} has {empty}")
    return Arm(name, int(row["rows"]), int(row["labeled"]), values)


def _arm_difference(metric: str, arm: Arm, control: Arm, alpha: float, power: float) -> ArmDifference:
    """Arm − control for one metric: z-test, Wald interval, power and MDE."""
    treated, base = arm.metrics[metric], control.metrics[metric]
    if treated.value is None or base.value is None:
        why = treated.reason if treated.value is None else base.reason
        return ArmDifference(metric, arm.name, control.name, reason=why)
    test = two_proportion_test(base.successes, base.trials, treated.successes, treated.trials,
                               confidence=1 - alpha)
    mde = minimum_detectable_effect(base.value, base.trials, treated.trials, alpha, power)
    if isinstance(test, str):
        return ArmDifference(metric, arm.name, control.name, difference=treated.value - base.value,
                             minimum_detectable_effect=mde, reason=f"not computable because {test}")
    return ArmDifference(
        metric, arm.name, control.name, difference=test.difference, low=test.low, high=test.high,
        z=test.z, p_value=test.p_value,
        power=power_two_proportions(base.value, base.trials, treated.value, treated.trials, alpha),
        minimum_detectable_effect=mde)


def _ab_summary(result: ABResult) -> str:
    """Plain words: each arm against the control on the first readable metric, the metrics that
    differ significantly, and the traffic split."""
    if result.reason:
        text = result.reason.replace("not computable because", "The A/B test cannot be read:")
        return text + ("" if not result.arms else f". {result.srm.message}")
    level = f"{1 - result.alpha:.0%}"
    control = result.arms[0]
    lines = []
    for arm in result.arms[1:]:
        readable = [d for d in result.differences if d.arm == arm.name and d.p_value is not None]
        if not readable:
            lines.append(f"{arm.name} vs {result.control}: no metric can be compared yet")
            continue
        first = readable[0]
        treated, base = arm.metrics[first.metric], control.metrics[first.metric]
        lines.append(
            f"{arm.name} vs {result.control}: {first.metric.replace('_', ' ')} {treated.value:.3f} "
            f"vs {base.value:.3f} (difference {first.difference:+.3f}, {level} CI "
            f"{first.low:+.3f} to {first.high:+.3f}, {p_value_text(first.p_value)}, "
            f"n = {treated.trials:,} and {base.trials:,})")
        significant = [d for d in readable[1:] if d.p_value < result.alpha]
        if significant:
            lines.append(f"Also significant for {arm.name}: " + ", ".join(
                f"{d.metric.replace('_', ' ')} {d.difference:+.3f} ({p_value_text(d.p_value)})"
                for d in significant))
    lines.append(result.srm.message)
    return " ".join(line if line.endswith(".") else line + "." for line in lines)
