"""Distribution drift of every feature, the prediction, the score and the target between two windows.

The default test per column follows Evidently's data-drift convention, so verdicts read the same
for people who know that tool (its ``_get_default_stattest`` and stat-test functions):

* Values are cleaned first: missing values and ±infinity (and NaN) are dropped, per column.
  "Reference rows" and "distinct values" below count what is left.
* At most 1000 reference rows: a numerical column with more than 5 distinct values (counted over
  both windows together) gets the two-sample Kolmogorov–Smirnov test; a column with 3–5 values,
  or a categorical one with more than 2, gets the chi-square goodness-of-fit test; a column with
  at most 2 values gets the two-proportion z-test. Drift when p < 0.05 (KS: p ≤ 0.05, as there).
* More than 1000 reference rows: a numerical column with more than 5 distinct values gets the
  Wasserstein distance divided by the reference's population standard deviation (floored at
  0.001); every other column gets the Jensen–Shannon distance (base 2). Drift when ≥ 0.1.
* Dataset drift when the share of drifted columns is ≥ 0.5 (``[drift] dataset_share``). The share
  counts only the columns whose test could be computed.
* ``[drift.columns.NAME] test = ..., threshold = ...`` overrides the test and threshold of a column.
* Beside every distance (jensenshannon, psi, wasserstein) a sampling-noise level: the 95th
  percentile of the same distance between two windows of the same sizes drawn from one
  distribution (the pooled one), see "Sampling noise" below. The verdict stays Evidently's;
  ``beyond_noise`` says whether the distance exceeds what chance alone reaches, and alerts act
  only on columns that drifted beyond noise (distances with many values and few rows are biased
  far above 0.1 with no drift at all).

How each test reads the two windows (all from SQL aggregates over every row, never a sample):

* Every query reads the log directly: the predictions alone, and the label join only for the
  target (or for every column when the segment reads the target).
* A first scan counts the rows per window and each column's distinct values (approximately: it
  only picks the algorithm). Columns with few values (text, or numerical with at most ~20 000
  distinct values) then come back, all in one scan of grouping sets, as exact frequency tables
  (value, reference count, current count, missing and non-finite rows included), from which
  their counts, min, max and reference standard deviation follow exactly.
* ECDFs of many-valued numerical columns are exact without sorting every row: values are grouped
  into 65 536 ordered buckets (equal widths of asinh((x − median)/IQR)); per bucket and window
  the count, the sum of offsets, min and max. Where F_ref − F_cur cannot change sign inside a
  bucket its integral is closed-form; the "mixed" buckets (and, for KS, those that could hold
  a larger gap than any seen) are fetched value by value in one more query, which reads only
  the values inside at most 16 ranges of whole buckets.
* ks: D and the cumulative counts where it is reached; the p-value is what
  ``scipy.stats.ks_2samp`` (method "auto") returns for samples of those sizes and that D (exact
  distribution up to 10 000 rows per side, else ``kstwo`` with the effective size, as scipy does).
* wasserstein: ∫|F_ref − F_cur| dx over the merged support of the exact ECDFs, as
  ``scipy.stats.wasserstein_distance`` computes it, divided by ``max(np.std(reference), 0.001)``.
* chisquare: ``scipy.stats.chisquare(current counts, reference counts × n_cur / n_ref)`` over the
  union of values (a value absent from the reference makes the statistic infinite, p = 0).
* z: the values are sorted; the first is coded 0 and every other 1; pooled two-proportion z with
  a two-sided normal p-value (``2·norm.sf(|z|)``, the precise form of Evidently's
  ``2·(1 − cdf)``). One value in both windows gives z = 0, p = 1.
* jensenshannon / psi: shares per value over the union of values; for a numerical column with more
  than 20 distinct reference values, shares per bin instead, the bins being
  ``np.histogram_bin_edges(reference ∪ current, "sturges")`` (equal width from the union's min to
  max). JS is ``scipy.spatial.distance.jensenshannon(ref, cur, base=2)``. PSI is
  Σ (ref − cur)·ln(ref / cur) after Evidently's zero fill: an empty share becomes 0.0001, or a
  millionth of the smallest non-empty share when that is ≤ 0.0001.

Sampling noise (a parametric bootstrap on the same aggregates, never on rows): the pooled counts
of the two windows (per value, per Sturges bin, or, for bucketed many-valued columns, per bucket
at its mean value, coarsened to at most 2 048 groups of adjacent buckets of about equal mass) are
the one distribution; 200 pairs of windows of n_ref and n_cur values are drawn from it at once
(numpy, fixed seed) and the statistic is computed on each pair as above (Wasserstein divided by
the same reference std). Cells expected to hold fewer than 20 values are drawn exactly
(multinomial); the total of the other cells is drawn exactly too, and their split among them
from the multinomial's normal approximation (same means and covariances), which keeps the
noise estimate cheap on millions of rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from mlmon_core import sql, windows
from mlmon_core.config import DRIFT_TESTS, Window
from mlmon_core.errors import ConfigError
from mlmon_core.sql import Fragment, Ident, Segment

P_VALUE_TESTS = ("ks", "chisquare", "z")
DEFAULT_THRESHOLDS = {"ks": 0.05, "chisquare": 0.05, "z": 0.05,
                      "wasserstein": 0.1, "jensenshannon": 0.1, "psi": 0.1}
NUMERICAL_ONLY_TESTS = ("ks", "wasserstein")
SMALL_REFERENCE_ROWS = 1000
FEW_VALUES = 5
TWO_VALUES = 2
BINNED_ABOVE_VALUES = 20
WASSERSTEIN_MIN_STD = 0.001
KS_EXACT_MAX_N = 10_000
MAX_FREQUENCY_VALUES = 100_000
SUPPORTED_KINDS = ("numerical", "categorical", "boolean")
DISTANCE_TESTS = ("wasserstein", "jensenshannon", "psi")
# Sampling noise: draws, quantile, seed, how finely a many-valued column is kept, below which
# expected count a cell is drawn exactly, and how many cells (draws × values) one batch holds.
NOISE_DRAWS = 200
NOISE_QUANTILE = 95
NOISE_SEED = 20_240_601
NOISE_GROUPS = 2048
NOISE_EXACT_BELOW = 20
NOISE_BATCH_CELLS = 2_000_000

TEST_NAMES = {
    "ks": "two-sample Kolmogorov–Smirnov test",
    "chisquare": "chi-square test",
    "z": "two-proportion z-test",
    "wasserstein": "Wasserstein distance / reference std",
    "jensenshannon": "Jensen–Shannon distance",
    "psi": "population stability index",
}

METHOD = (
    "Per column, missing and infinite values dropped. Default test (Evidently's convention): "
    "with at most 1000 reference values, KS for numerical columns with more than 5 distinct "
    "values, chi-square for other columns with more than 2 values, z-test for two-valued ones "
    "(drift at p < 0.05); above 1000 reference values, Wasserstein distance over the reference "
    "standard deviation for numerical columns with more than 5 distinct values and "
    "Jensen-Shannon distance for the rest (drift at distance >= 0.1). Dataset drift when the "
    "share of drifted columns reaches the dataset share."
)


@dataclass
class ColumnDrift:
    """The drift verdict of one column. ``statistic`` is None (with ``reason``) when not computable.

    For p-value tests (ks, chisquare, z) ``statistic`` is the test statistic and ``p_value`` decides;
    for distances (wasserstein, jensenshannon, psi) ``statistic`` is the distance and decides.
    """

    column: str
    role: str
    kind: str
    test: str | None
    threshold: float | None
    statistic: float | None = None
    p_value: float | None = None
    drifted: bool | None = None
    reason: str | None = None
    note: str | None = None
    reference_values: int = 0
    current_values: int = 0
    distinct_values: int | None = None
    method: str = ""
    noise_level: float | None = None
    beyond_noise: bool | None = None

    @property
    def computable(self) -> bool:
        """Whether the test produced a verdict."""
        return self.drifted is not None

    @property
    def score(self) -> float | None:
        """The number compared with the threshold: the p-value or the distance."""
        return self.p_value if self.test in P_VALUE_TESTS else self.statistic

    @property
    def drifted_beyond_noise(self) -> bool:
        """Drifted, and not by sampling noise alone: a distance above its noise level, or a p-value
        test (which accounts for the sample sizes itself). A distance whose noise level could not
        be estimated keeps its verdict."""
        return bool(self.drifted) and self.beyond_noise is not False

    @property
    def drifted_within_noise(self) -> bool:
        """Drifted by the verdict, but by no more than sampling noise reaches."""
        return bool(self.drifted) and not self.drifted_beyond_noise

    def to_json(self) -> dict[str, Any]:
        """Plain form for the CLI and the app."""
        out = {
            "column": self.column, "role": self.role, "kind": self.kind, "test": self.test,
            "statistic": _plain_float(self.statistic), "p_value": _plain_float(self.p_value),
            "threshold": self.threshold, "drifted": self.drifted,
            "reference_values": self.reference_values, "current_values": self.current_values,
            "distinct_values": self.distinct_values, "method": self.method,
            "noise_level": _plain_float(self.noise_level), "beyond_noise": self.beyond_noise,
        }
        if self.reason:
            out["reason"] = self.reason
        if self.note:
            out["note"] = self.note
        return out


@dataclass
class DriftResult:
    """Drift of every analysed column plus the dataset verdict."""

    reference: Window
    current: Window
    reference_rows: int
    current_rows: int
    segment: Segment
    columns: list[ColumnDrift]
    dataset_share: float
    drift_share: float | None = None
    dataset_drift: bool | None = None
    reason: str | None = None
    method: str = METHOD

    @property
    def drifted_columns(self) -> list[str]:
        """Names of the columns whose test says drift."""
        return [c.column for c in self.columns if c.drifted]

    @property
    def drifted_beyond_noise(self) -> list[str]:
        """Names of the drifted columns whose drift is more than sampling noise (see
        ``ColumnDrift.drifted_beyond_noise``): the columns to act on."""
        return [c.column for c in self.columns if c.drifted_beyond_noise]

    @property
    def drifted_within_noise(self) -> list[str]:
        """Names of the columns whose verdict says drift but whose distance chance explains."""
        return [c.column for c in self.columns if c.drifted_within_noise]

    @property
    def drift_share_beyond_noise(self) -> float | None:
        """Share of the tested columns that drifted beyond sampling noise."""
        if self.drift_share is None:
            return None
        return len(self.drifted_beyond_noise) / sum(1 for c in self.columns if c.computable)

    def column(self, name: str) -> ColumnDrift:
        """The result of one column by name."""
        for item in self.columns:
            if item.column == name:
                return item
        raise KeyError(name)

    def to_json(self) -> dict[str, Any]:
        """The ``mlmon drift --json`` object."""
        computable = [c for c in self.columns if c.computable]
        out = {
            "reference": {**self.reference.to_json(), "rows": self.reference_rows},
            "current": {**self.current.to_json(), "rows": self.current_rows},
            "segment": sql.segment_to_json(self.segment),
            "segment_text": sql.describe_segment(self.segment),
            "drift_share": self.drift_share,
            "dataset_drift": self.dataset_drift,
            "dataset_share": self.dataset_share,
            "number_of_columns": len(self.columns),
            "number_of_computable_columns": len(computable),
            "number_of_drifted_columns": len(self.drifted_columns),
            "number_of_drifted_columns_beyond_noise": len(self.drifted_beyond_noise),
            "drift_share_beyond_noise": self.drift_share_beyond_noise,
            "drifted_beyond_noise": self.drifted_beyond_noise,
            "columns": [c.to_json() for c in self.columns],
            "method": self.method,
        }
        if self.reason:
            out["reason"] = self.reason
        return out


# ---------------------------------------------------------------- which columns, which test

def drift_columns(view) -> list[str]:
    """Columns analysed by default: the features, then prediction, score and target, then any other
    column named in ``[drift.columns]``."""
    roles = view.roles
    names = list(roles.features)
    names += [c for c in (roles.prediction, roles.score, roles.target) if c and c not in names]
    for name in view.config.drift.columns:
        if name not in view.columns:
            raise ConfigError(f"{view.config.path or 'config'}: [drift.columns.{name}] names a "
                              f"column the log does not have")
        if name not in names:
            names.append(name)
    return names


def default_test(numerical: bool, reference_values: int, distinct_values: int) -> str:
    """Evidently's default test for a column from its kind and counts (after dropping missing)."""
    if reference_values <= SMALL_REFERENCE_ROWS:
        if numerical and distinct_values > FEW_VALUES:
            return "ks"
        return "chisquare" if distinct_values > TWO_VALUES else "z"
    if numerical and distinct_values > FEW_VALUES:
        return "wasserstein"
    return "jensenshannon"


def _override(view, column: str) -> tuple[str | None, float | None]:
    settings = view.config.drift.columns.get(column)
    if settings is None:
        return None, None
    if settings.test is not None and settings.test not in DRIFT_TESTS:
        raise ConfigError(f"[drift.columns.{column}] test {settings.test!r} is not one of "
                          f"{', '.join(DRIFT_TESTS)}")
    if settings.test in NUMERICAL_ONLY_TESTS and view.kind(column) != "numerical":
        raise ConfigError(f"{view.config.path or 'config'}: [drift.columns.{column}] test = "
                          f"{settings.test!r} needs a numerical column; {column} is "
                          f"{view.kind(column)} (use chisquare, z, jensenshannon or psi)")
    return settings.test, settings.threshold


# ---------------------------------------------------------------- aggregates in SQL

@dataclass
class _Profile:
    """What the aggregate queries found for one column (values = non-missing, finite)."""

    numeric: bool
    reference_values: int = 0
    current_values: int = 0
    reference_missing: int = 0
    current_missing: int = 0
    reference_nonfinite: int = 0
    current_nonfinite: int = 0
    approx_distinct: int = 0
    minimum: float | None = None
    maximum: float | None = None
    reference_std: float | None = None
    quantiles: list[float] | None = None
    # Frequency path: every distinct value with its counts (exact distinct counts).
    values: list | None = None
    reference_counts: np.ndarray | None = None
    current_counts: np.ndarray | None = None
    # ECDF results: largest |F_ref - F_cur| with the cumulative counts there, and ∫|F_ref - F_cur|.
    ks_gap: float | None = None
    ks_counts: tuple[int, int] | None = None
    wasserstein: float | None = None
    histogram: tuple[np.ndarray, np.ndarray] | None = None
    # Bucketed columns: each bucket's mean value and rows of both windows (for the noise level).
    bucket_support: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def distinct(self) -> int | None:
        """Exact number of distinct values over both windows (None when not counted exactly)."""
        return None if self.values is None else len(self.values)

    @property
    def distinct_reference(self) -> int | None:
        """Exact number of distinct reference values (None when not counted exactly)."""
        return None if self.values is None else int(np.count_nonzero(self.reference_counts))


# Only columns with at most this many distinct values (approximately) are grouped by value;
# numerical columns above it take the bucketed ECDF path.
LOW_CARDINALITY = 20_000
# Buckets of the bucketed ECDF: equal widths of asinh((x − median) / IQR), fine near the centre
# and logarithmic in the tails; 65 536 of them keep the rows in buckets where F_ref − F_cur may
# change sign to a few percent.
BUCKETS = 65_536
QUANTILE_SAMPLE = 1024

# Every query reads the log itself (the predictions alone unless a column or the segment needs
# the label join), with each column cast once (DOUBLE or VARCHAR) and the window flags computed
# per row: copying both windows into a scratch table first cost more time and memory than the
# repeated scans it saved.
_BASE = ("SELECT {in_reference} AS __ref, {in_current} AS __cur, {values} FROM {log} "
         "WHERE ({in_reference_again}) OR ({in_current_again})")

_SUMMARY_QUERY = ("SELECT count(CASE WHEN __ref THEN 1 END), count(CASE WHEN __cur THEN 1 END), "
                  "{aggregates} FROM (" + _BASE + ")")

# Aggregates take CASE expressions rather than FILTER clauses: with many FILTERed aggregates in
# one query DuckDB slows down far more than linearly.
_NUMBER_SUMMARY = """
count(CASE WHEN __ref AND isfinite({x}) THEN 1 END), count(CASE WHEN __cur AND isfinite({x}) THEN 1 END),
count(CASE WHEN __ref THEN {x} END), count(CASE WHEN __cur THEN {x} END),
approx_count_distinct(CASE WHEN isfinite({x}) THEN {x} END),
min(CASE WHEN isfinite({x}) THEN {x} END), max(CASE WHEN isfinite({x}) THEN {x} END),
stddev_pop(CASE WHEN __ref AND isfinite({x}) THEN {x} END),
reservoir_quantile(CASE WHEN isfinite({x}) THEN {x} END, [0.25, 0.5, 0.75], {sample}), NULL, NULL
"""

_TEXT_SUMMARY = """
count(CASE WHEN __ref THEN {x} END), count(CASE WHEN __cur THEN {x} END),
count(CASE WHEN __ref THEN {x} END), count(CASE WHEN __cur THEN {x} END),
approx_count_distinct({x}), NULL, NULL, NULL, NULL, NULL, NULL
"""
_SUMMARY_WIDTH = 11

# The sketch steers each column to an algorithm: an approximate distinct count per column and
# the rows per window, in one scan that reads no more than the columns.
_SKETCH_QUERY = ("SELECT count(CASE WHEN __ref THEN 1 END), count(CASE WHEN __cur THEN 1 END), "
                 "{aggregates} FROM (" + _BASE + ")")

# Few-valued columns: every distinct value (NULL, NaN and infinities included) with its rows per
# window, for many columns in one scan. One grouping set per column; grouping_id tells the sets
# apart. (A branch per column read the window flags once per column: twice the time. DuckDB's
# histogram() aggregate cost several times the memory.)
_FREQUENCY_SETS = ("SELECT __ref, __cur, {stored}, grouping_id({stored}) AS __g, count(*) AS __n "
                   "FROM (" + _BASE + ") GROUP BY GROUPING SETS ({sets})")
# Each query's result has a row per (column, value) and a column per column: a query holds at
# most this many columns and (by the sketch) this many values in all.
FREQUENCY_SETS_PER_QUERY = 32
FREQUENCY_VALUES_PER_QUERY = 250_000

# One branch per numerical column, each reading only its own column; both kinds return
# (column, bucket, value, ref count, cur count, ref offset sum, cur offset sum, min, max).
_FREQUENCY_BRANCH = """
SELECT {index} AS __col, CAST(NULL AS INTEGER) AS __bucket, __x AS __num,
       count(CASE WHEN __ref THEN 1 END) AS __r, count(CASE WHEN __cur THEN 1 END) AS __c,
       CAST(NULL AS DOUBLE) AS __sr, CAST(NULL AS DOUBLE) AS __sc,
       CAST(NULL AS DOUBLE) AS __min, CAST(NULL AS DOUBLE) AS __max
FROM (""" + _BASE + """) WHERE isfinite(__x) GROUP BY __x
"""

_BUCKETED = """
SELECT __ref, __cur, __x, {bucket} AS __b, __x - {centre} AS __o
FROM (""" + _BASE + """) WHERE isfinite(__x)
"""

_BUCKET_BRANCH = """
SELECT {index}, __b, NULL, count(CASE WHEN __ref THEN 1 END), count(CASE WHEN __cur THEN 1 END),
       sum(CASE WHEN __ref THEN __o END), sum(CASE WHEN __cur THEN __o END), min(__x), max(__x)
FROM (""" + _BUCKETED + """) GROUP BY __b
"""

# The exact pass reads only values inside a few ranges (whole buckets, found by the bucket scan):
# plain comparisons, no bucket arithmetic, so the scan costs little more than reading the column.
_EXACT_BRANCH = """
SELECT {index} AS __col, __x AS __num, count(CASE WHEN __ref THEN 1 END) AS __r,
       count(CASE WHEN __cur THEN 1 END) AS __c
FROM (""" + _BASE + """) WHERE {inside} GROUP BY __x
"""
EXACT_RANGES = 16

_HISTOGRAM_BRANCH = """
SELECT {index} AS __col,
       CASE WHEN __x < {edges}[__k + 1] THEN __k - 1
            WHEN __k < {last_bin} AND __x >= {edges}[__k + 2] THEN __k + 1 ELSE __k END AS __bin,
       count(CASE WHEN __ref THEN 1 END) AS __r, count(CASE WHEN __cur THEN 1 END) AS __c
FROM (SELECT __ref, __cur, __x, {estimate} AS __k FROM (""" + _BASE + """) WHERE isfinite(__x))
GROUP BY __bin
"""

# The bin of x among equal-width edges as numpy's searchsorted over the edges decides it
# (left-closed, the last bin closed): a floor estimate k, corrected by one against the real edges.
_BIN_ESTIMATE = "CAST(least(greatest(floor((__x - {first}) / {width}), 0), {last_bin}) AS INTEGER)"


def _window_conditions(view, reference: Window, current: Window, segment: Segment,
                       reference_segment: Segment | None = None, relation: Ident | None = None
                       ) -> dict:
    """The two sides' WHERE fragments; the reference side may have a segment of its own."""
    side = segment if reference_segment is None else reference_segment
    ref, cur = view.where(reference, side), view.where(current, segment)
    return {"in_reference": ref, "in_current": cur, "in_reference_again": ref,
            "in_current_again": cur, "log": relation or view.relation}


def _stored(position: int) -> Ident:
    return Ident(f"__x{position}")


def _cast(view, name: str) -> Fragment:
    cast = "DOUBLE" if sql.is_numeric_type(view.columns[name].duck_type) else "VARCHAR"
    return sql.render("CAST({c} AS " + cast + ")", c=Ident(name))


def _as_value(view, name: str) -> Fragment:
    """Column ``name`` cast for testing, as ``__x`` for a per-column branch."""
    return sql.render("{x} AS __x", x=_cast(view, name))


def _reading_groups(view, names: list[str], segment: Segment,
                    reference_segment: Segment | None) -> list[tuple[Ident, list[str]]]:
    """The columns grouped by the relation they are read from: the predictions alone when
    possible, the log with its label join for the target (or for all, if a segment reads it)."""
    target = view.roles.target
    if not view.config.source.labels:      # the target, if any, is in the predictions
        return [(view.predictions_relation, list(names))]
    conditions = tuple(segment) + tuple(reference_segment or ())
    if any(c.column == target for c in conditions):
        return [(view.relation, list(names))]
    plain = [n for n in names if n != target]
    joined = [n for n in names if n == target]
    # The join first: memory it frees is then reused by the wider scans that follow.
    groups = [(view.relation, joined)] if joined else []
    return groups + ([(view.predictions_relation, plain)] if plain or not joined else [])


def _union(branches: list[Fragment], order: str) -> Fragment:
    return sql.render("SELECT * FROM ({body}) ORDER BY " + order,
                      body=sql.join(branches, " UNION ALL "))


def _summaries(view, names: list[str], conditions: dict) -> tuple[dict[str, _Profile], int, int]:
    """One scan: per column counts, missing and non-finite counts, min, max, reference std, an
    approximate distinct count and sample quantiles (these two only steer the algorithm)."""
    aggregates = []
    for position, name in enumerate(names):
        numeric = sql.is_numeric_type(view.columns[name].duck_type)
        aggregates.append(sql.render(_NUMBER_SUMMARY, x=_stored(position),
                                     sample=QUANTILE_SAMPLE)
                          if numeric else sql.render(_TEXT_SUMMARY, x=_stored(position)))
    values = [sql.render("{x} AS {stored}", x=_cast(view, name), stored=_stored(position))
              for position, name in enumerate(names)]
    if not aggregates:
        aggregates.append(Fragment("NULL"))
        values.append(Fragment("NULL AS __x0"))
    query = sql.render(_SUMMARY_QUERY, **conditions, aggregates=sql.join(aggregates),
                       values=sql.join(values))
    row = view.fetchall(query)[0]
    reference_rows, current_rows = int(row[0]), int(row[1])
    profiles = {}
    for position, name in enumerate(names):
        part = row[2 + position * _SUMMARY_WIDTH: 2 + (position + 1) * _SUMMARY_WIDTH]
        (n_ref, n_cur, present_ref, present_cur, approx, minimum, maximum, std, quantiles,
         _, _) = part
        profiles[name] = _Profile(
            numeric=sql.is_numeric_type(view.columns[name].duck_type),
            reference_values=int(n_ref), current_values=int(n_cur),
            reference_missing=reference_rows - int(present_ref),
            current_missing=current_rows - int(present_cur),
            reference_nonfinite=int(present_ref) - int(n_ref),
            current_nonfinite=int(present_cur) - int(n_cur),
            approx_distinct=int(approx or 0), minimum=minimum, maximum=maximum,
            reference_std=None if std is None else float(std),
            quantiles=None if quantiles is None else [float(q) for q in quantiles])
    return profiles, reference_rows, current_rows


def _sketch(view, names: list[str], conditions: dict) -> tuple[dict[str, int], int, int]:
    """One scan: rows per window and each column's approximate distinct count (to steer)."""
    aggregates = [sql.render("approx_count_distinct({x})", x=_stored(position))
                  for position in range(len(names))] or [Fragment("NULL")]
    values = [sql.render("{x} AS {stored}", x=_cast(view, name), stored=_stored(position))
              for position, name in enumerate(names)] or [Fragment("NULL AS __x0")]
    row = view.fetchall(sql.render(_SKETCH_QUERY, **conditions, aggregates=sql.join(aggregates),
                                   values=sql.join(values)))[0]
    approx = {name: int(row[2 + position] or 0) for position, name in enumerate(names)}
    return approx, int(row[0]), int(row[1])


def _few_valued(view, name: str, approx: int) -> bool:
    numeric = sql.is_numeric_type(view.columns[name].duck_type)
    return approx <= (LOW_CARDINALITY if numeric else MAX_FREQUENCY_VALUES)


def frequency_chunks(names: list[str], approx: dict[str, int]) -> list[list[str]]:
    """Consecutive groups of at most FREQUENCY_SETS_PER_QUERY columns whose approximate distinct
    counts add up to at most FREQUENCY_VALUES_PER_QUERY (a larger column goes alone)."""
    chunks, values = [], 0
    for name in names:
        size = approx.get(name, 0)
        if (not chunks or len(chunks[-1]) >= FREQUENCY_SETS_PER_QUERY
                or values + size > FREQUENCY_VALUES_PER_QUERY):
            chunks.append([])
            values = 0
        chunks[-1].append(name)
        values += size
    return chunks


def _frequency_profiles(view, names: list[str], approx: dict[str, int], conditions: dict
                        ) -> tuple[dict[str, _Profile], int, int]:
    """Complete profiles of few-valued columns from their value counts: every distinct value with
    its rows per window, so counts, missing and non-finite rows, min, max and the reference
    standard deviation are exact. Also the rows per window."""
    profiles, rows = {}, (0, 0)
    for chunk in frequency_chunks(names, approx):
        stored = [_stored(position) for position in range(len(chunk))]
        query = sql.render(
            _FREQUENCY_SETS, **conditions, stored=sql.identifiers(x.name for x in stored),
            sets=sql.join([sql.render("(__ref, __cur, {x})", x=x) for x in stored]),
            values=sql.join([sql.render("{x} AS {stored}", x=_cast(view, name), stored=x)
                             for name, x in zip(chunk, stored)]))
        data = view.execute(query).fetchnumpy()
        in_reference = np.ma.filled(data["__ref"], False).astype(bool)
        in_current = np.ma.filled(data["__cur"], False).astype(bool)
        sets, counts = np.asarray(data["__g"]), np.asarray(data["__n"]).astype(np.int64)
        every = (1 << len(chunk)) - 1
        for position, name in enumerate(chunk):
            mine = sets == every ^ (1 << (len(chunk) - 1 - position))
            profiles[name] = _profile_from_counts(
                sql.is_numeric_type(view.columns[name].duck_type), data[stored[position].name][mine],
                in_reference[mine], in_current[mine], counts[mine])
            rows = (int(counts[mine][in_reference[mine]].sum()),
                    int(counts[mine][in_current[mine]].sum()))
    return profiles, *rows


def _profile_from_counts(numeric: bool, values: np.ndarray, in_reference: np.ndarray,
                         in_current: np.ndarray, counts: np.ndarray) -> _Profile:
    """A column's profile from its (window flags, value, rows) groups; NULL is missing."""
    missing = np.ma.getmaskarray(values)
    plain = np.ma.getdata(values)
    present = ~missing
    if numeric:
        plain = plain.astype(float)
        finite = present & np.isfinite(np.where(present, plain, 0.0))
    else:
        finite = present
    profile = _Profile(numeric=numeric)
    for side, flags in (("reference", in_reference), ("current", in_current)):
        setattr(profile, f"{side}_missing", int(counts[missing & flags].sum()))
        setattr(profile, f"{side}_nonfinite", int(counts[present & ~finite & flags].sum()))
    distinct, position = np.unique(plain[finite], return_inverse=True)
    kept = counts[finite]
    profile.reference_counts = np.bincount(position, kept * in_reference[finite],
                                           len(distinct)).astype(np.int64)
    profile.current_counts = np.bincount(position, kept * in_current[finite],
                                         len(distinct)).astype(np.int64)
    profile.reference_values = int(profile.reference_counts.sum())
    profile.current_values = int(profile.current_counts.sum())
    profile.values = [float(v) for v in distinct] if numeric else [str(v) for v in distinct]
    profile.approx_distinct = len(distinct)
    if numeric and len(distinct):
        profile.minimum, profile.maximum = float(distinct[0]), float(distinct[-1])
        profile.reference_std = _weighted_std(distinct, profile.reference_counts)
    return profile


def _weighted_std(values: np.ndarray, counts: np.ndarray) -> float | None:
    """Population standard deviation of ``values`` repeated ``counts`` times (two-pass)."""
    total = counts.sum()
    if not total:
        return None
    mean = float(np.dot(values, counts)) / total
    return math.sqrt(float(np.dot((values - mean) ** 2, counts)) / total)


# ---------------------------------------------------------------- bucketed exact ECDFs

@dataclass
class _Buckets:
    """How one numerical column's values are cut into ordered buckets: equal widths of
    t = asinh((x − centre) / spread), a monotone map that is linear near the centre and
    logarithmic in the tails, so buckets follow the data's mass and outliers cost nothing.

    Each bucket is then a run of the sorted values (checked on the result: a libm asinh that
    were not monotone at some point would send the column to the exact value-by-value path).
    Offsets ``x − centre`` keep per-bucket sums accurate whatever the values' magnitude.
    """

    centre: float
    inverse_spread: float
    start: float
    scale: float

    def parts(self) -> dict[str, Fragment]:
        """Template parts for ``_BUCKETED``."""
        return {"bucket": sql.render(
            "CAST(least(greatest(floor((asinh((__x - {centre}) * {inverse}) - {start}) * {scale}),"
            " 0), {last}) AS INTEGER)", centre=self.centre, inverse=self.inverse_spread,
            start=self.start, scale=self.scale, last=BUCKETS - 1),
            "centre": sql.render("{c}", c=self.centre)}


def _plan_buckets(profile: _Profile) -> _Buckets:
    """Centre = sample median, spread = sample IQR (or the range), over [min, max]."""
    low, high = float(profile.minimum), float(profile.maximum)
    first, centre, third = profile.quantiles or (low, (low + high) / 2, high)
    spread = (third - first) or (high - low) or 1.0
    if not (math.isfinite(centre) and math.isfinite(spread) and spread > 0):
        centre, spread = 0.0, 1.0
    start = math.asinh((low - centre) / spread)
    end = math.asinh((high - centre) / spread)
    scale = BUCKETS / (end - start) if end > start else 0.0
    return _Buckets(float(centre), 1.0 / spread, float(start), float(scale))


def _numeric_aggregates(view, frequency: dict[int, str], buckets: dict[int, tuple[str, _Buckets]],
                        conditions: dict) -> dict[int, dict[str, np.ndarray]]:
    """One query: every distinct value with its counts for few-valued numerical columns, and per
    bucket counts, offset sums, min and max for many-valued ones."""
    branches = [sql.render(_FREQUENCY_BRANCH, **conditions, index=index,
                           values=_as_value(view, name)) for index, name in frequency.items()]
    branches += [sql.render(_BUCKET_BRANCH, **conditions, index=index,
                            values=_as_value(view, name), **plan.parts())
                 for index, (name, plan) in buckets.items()]
    if not branches:
        return {}
    data = view.execute(_union(branches, "1, 2, 3")).fetchnumpy()
    return _split_by_column(data, list(data))


def _split_by_column(data: dict, keys: list[str]) -> dict[int, dict[str, np.ndarray]]:
    """Rows sorted by their first column (a column index) as one frame per index: views, not
    copies. NULLs become the masked arrays' underlying values (0 or NaN), as the callers expect."""
    arrays = {k: np.asarray(data[k]) for k in keys}
    column = arrays[keys[0]]
    if len(column) == 0:
        return {}
    bounds = np.r_[0, np.flatnonzero(np.diff(column)) + 1, len(column)]
    return {int(column[start]): {k: values[start:stop] for k, values in arrays.items()}
            for start, stop in zip(bounds[:-1], bounds[1:])}


@dataclass
class _BucketScan:
    """The bucket-level view of one column's two ECDFs, before the exact pass.

    Per bucket (in value order): its smallest and largest value, the cumulative counts before and
    after it, the signed integral of F_ref − F_cur over it (valid where the sign cannot change),
    and which buckets the exact pass must read: for Wasserstein the "mixed" ones, where the sign
    can change; for KS those that could hold a larger gap than any seen at a bucket's end.
    """

    lows: np.ndarray
    highs: np.ndarray
    starts: tuple[np.ndarray, np.ndarray]
    ends: tuple[np.ndarray, np.ndarray]
    inside: np.ndarray
    between: float
    mixed: np.ndarray
    best_gap: float
    best_counts: tuple[int, int]
    ks_candidates: np.ndarray


def _scan_buckets(frame: dict[str, np.ndarray], plan: _Buckets, n_ref: int,
                  n_cur: int) -> _BucketScan | None:
    """Integrate F_ref − F_cur over every bucket in closed form.

    Inside a bucket holding values in [lo, hi], with R0/C0 values before it:
    ∫ F_ref = R0·(hi − lo)/n_ref + Σ (hi − r)/n_ref over its reference values r (likewise F_cur),
    and when F_ref − F_cur cannot change sign there, ∫|F_ref − F_cur| = |∫ (F_ref − F_cur)|.
    Between consecutive buckets both ECDFs are flat. None when the buckets overlap (they must be
    runs of the sorted values).
    """
    keys = list(frame)
    ref, cur = frame[keys[3]].astype(np.int64), frame[keys[4]].astype(np.int64)
    ref_offsets, cur_offsets = frame[keys[5]].astype(float), frame[keys[6]].astype(float)
    lows, highs = frame[keys[7]].astype(float), frame[keys[8]].astype(float)
    if np.any(lows[1:] <= highs[:-1]):
        return None  # the buckets are not runs of the sorted values: use the exact path
    ref_offsets = np.nan_to_num(ref_offsets)
    cur_offsets = np.nan_to_num(cur_offsets)
    ref_end, cur_end = np.cumsum(ref), np.cumsum(cur)
    ref_start, cur_start = ref_end - ref, cur_end - cur
    end_gap = ref_end / n_ref - cur_end / n_cur
    upper = ref_end / n_ref - cur_start / n_cur
    lower = ref_start / n_ref - cur_end / n_cur
    anchors = plan.centre
    inside = ((ref_start / n_ref - cur_start / n_cur) * (highs - lows)
              + (ref * (highs - anchors) - ref_offsets) / n_ref
              - (cur * (highs - anchors) - cur_offsets) / n_cur)
    between = float(np.sum(np.abs(end_gap[:-1]) * (lows[1:] - highs[:-1])))
    best = int(np.argmax(np.abs(end_gap)))
    best_gap = float(abs(end_gap[best]))
    bound = np.maximum(np.abs(upper), np.abs(lower))
    return _BucketScan(lows, highs, (ref_start, cur_start), (ref_end, cur_end), inside, between,
                       (upper > 0) & (lower < 0), best_gap,
                       (int(ref_end[best]), int(cur_end[best])), bound > best_gap)


def exact_ranges(needed: np.ndarray, sizes: np.ndarray, limit: int = EXACT_RANGES
                 ) -> list[tuple[int, int]]:
    """At most ``limit`` runs of consecutive bucket positions (first, last) covering every
    needed bucket: runs of needed buckets, then the closest runs merged (closest = fewest rows
    in the buckets between them) until at most ``limit`` remain."""
    flags = np.r_[False, needed.astype(bool), False]
    edges = np.flatnonzero(np.diff(flags.astype(np.int8)))
    runs = [[int(a), int(b) - 1] for a, b in zip(edges[::2], edges[1::2])]
    if len(runs) <= limit:
        return [tuple(run) for run in runs]
    cumulative = np.r_[0, np.cumsum(sizes)]
    gap_rows = np.array([cumulative[runs[i + 1][0]] - cumulative[runs[i][1] + 1]
                         for i in range(len(runs) - 1)])
    keep_gaps = np.sort(np.argsort(gap_rows, kind="stable")[len(runs) - limit:])
    merged, start = [], runs[0][0]
    for gap in keep_gaps:
        merged.append((start, runs[gap][1]))
        start = runs[gap + 1][0]
    merged.append((start, runs[-1][1]))
    return merged


def ecdf_statistics(values: np.ndarray, reference_counts: np.ndarray, current_counts: np.ndarray,
                    n_reference: int, n_current: int, reference_before: int = 0,
                    current_before: int = 0) -> tuple[float, float, tuple[int, int]]:
    """Over sorted distinct ``values`` with their counts: ∫|F_ref − F_cur| between the first and
    last value, the largest |F_ref − F_cur| at a value and the cumulative counts there."""
    ref_cum = reference_before + np.cumsum(reference_counts)
    cur_cum = current_before + np.cumsum(current_counts)
    gaps = np.abs(ref_cum / n_reference - cur_cum / n_current)
    integral = float(np.sum(gaps[:-1] * np.diff(values))) if len(values) > 1 else 0.0
    best = int(np.argmax(gaps))
    return integral, float(gaps[best]), (int(ref_cum[best]), int(cur_cum[best]))


def _exact_pass(view, scans: dict[int, tuple], conditions: dict
                ) -> tuple[dict[int, dict[str, np.ndarray]], dict[int, np.ndarray]]:
    """Every distinct value with its counts inside the ranges of buckets the bucket scan could
    not settle; also, per column, which buckets those ranges hold."""
    branches, included = [], {}
    for index, (name, plan, scan, test) in scans.items():
        needed = scan.mixed if test == "wasserstein" else scan.ks_candidates
        runs = exact_ranges(needed, (scan.ends[0] - scan.starts[0]) + (scan.ends[1] - scan.starts[1]))
        mask = np.zeros(len(needed), dtype=bool)
        for first, last in runs:
            mask[first:last + 1] = True
        included[index] = mask
        if not runs:
            continue
        inside = sql.join([sql.render("(__x >= {low} AND __x <= {high})",
                                      low=sql.param(float(scan.lows[first])),
                                      high=sql.param(float(scan.highs[last])))
                           for first, last in runs], " OR ")
        branches.append(sql.render(_EXACT_BRANCH, **conditions, index=index,
                                   values=_as_value(view, name), inside=inside))
    if not branches:
        return {}, included
    data = view.execute(_union(branches, "1, 2")).fetchnumpy()
    return _split_by_column(data, list(data)), included


def _finish_bucketed(profile: _Profile, scan: _BucketScan, exact: dict[str, np.ndarray] | None,
                     included: np.ndarray, test: str) -> None:
    """Combine the closed-form buckets with the exactly evaluated ones."""
    n_ref, n_cur = profile.reference_values, profile.current_values
    integral = float(np.sum(np.abs(scan.inside[~included]))) + scan.between
    best_gap, best_counts = scan.best_gap, scan.best_counts
    if exact is not None:
        keys = list(exact)
        values = exact[keys[1]].astype(float)
        ref, cur = exact[keys[2]].astype(np.int64), exact[keys[3]].astype(np.int64)
        position = np.searchsorted(scan.lows, values, side="right") - 1
        # Cumulative counts restart at each bucket from the counts before it.
        same = position[1:] == position[:-1]
        run_starts = np.where(np.r_[True, ~same], np.arange(len(position)), 0)
        first_of_run = np.maximum.accumulate(run_starts)
        ref_run, cur_run = np.cumsum(ref), np.cumsum(cur)
        ref_cum = scan.starts[0][position] + ref_run - (ref_run - ref)[first_of_run]
        cur_cum = scan.starts[1][position] + cur_run - (cur_run - cur)[first_of_run]
        gaps = np.abs(ref_cum / n_ref - cur_cum / n_cur)
        integral += float(np.sum(gaps[:-1][same] * np.diff(values)[same]))
        best = int(np.argmax(gaps))
        if gaps[best] > best_gap:
            best_gap, best_counts = float(gaps[best]), (int(ref_cum[best]), int(cur_cum[best]))
    profile.wasserstein = integral if test == "wasserstein" else None
    profile.ks_gap, profile.ks_counts = best_gap, best_counts


def _store_frequencies(profile: _Profile, frame: dict[str, np.ndarray] | None) -> None:
    """Keep a numerical column's distinct values (sorted) and their counts per window."""
    if frame is None:
        profile.values = []
        profile.reference_counts = profile.current_counts = np.zeros(0, np.int64)
        return
    keys = list(frame)
    profile.values = [float(v) for v in frame[keys[2]]]
    profile.reference_counts = frame[keys[3]].astype(np.int64)
    profile.current_counts = frame[keys[4]].astype(np.int64)


def _ecdf_from_frequencies(profile: _Profile) -> None:
    integral, gap, counts = ecdf_statistics(
        np.asarray(profile.values, dtype=float), profile.reference_counts, profile.current_counts,
        profile.reference_values, profile.current_values)
    profile.wasserstein, profile.ks_gap, profile.ks_counts = integral, gap, counts


def sturges_edges(size: int, minimum: float, maximum: float, integer: bool = False) -> np.ndarray:
    """``np.histogram_bin_edges(a, "sturges")`` from the array's size, min and max alone."""
    first, last = float(minimum), float(maximum)
    if first == last:
        first, last = first - 0.5, last + 0.5
    width = (float(maximum) - float(minimum)) / (np.log2(size) + 1.0)
    if width:
        if integer and width < 1:
            width = 1
        bins = int(np.ceil((last - first) / width))
    else:
        bins = 1
    return np.linspace(first, last, bins + 1, endpoint=True)


def _is_integer_type(duck_type: str) -> bool:
    upper = duck_type.upper()
    return sql.is_numeric_type(upper) and not any(
        word in upper for word in ("FLOAT", "DOUBLE", "REAL", "DECIMAL", "NUMERIC"))


def _edges(view, name: str, profile: _Profile) -> np.ndarray:
    return sturges_edges(profile.reference_values + profile.current_values, profile.minimum,
                         profile.maximum, _is_integer_type(view.columns[name].duck_type))


def _histograms(view, names: dict[int, str], profiles: dict[str, _Profile],
                conditions: dict) -> None:
    """Counts per Sturges bin of both windows together, for many-valued numerical columns tested
    by Jensen–Shannon or PSI (one query)."""
    if not names:
        return
    branches, edges_of = [], {}
    for index, name in names.items():
        edges = _edges(view, name, profiles[name])
        edges_of[index] = edges
        last_bin = len(edges) - 2
        estimate = sql.render(_BIN_ESTIMATE, first=float(edges[0]), last_bin=last_bin,
                              width=float((edges[-1] - edges[0]) / (last_bin + 1)))
        branches.append(sql.render(_HISTOGRAM_BRANCH, **conditions, index=index,
                                   values=_as_value(view, name), estimate=estimate,
                                   last_bin=last_bin, edges=sql.param([float(e) for e in edges])))
    counts = {index: (np.zeros(len(edges) - 1, np.int64), np.zeros(len(edges) - 1, np.int64))
              for index, edges in edges_of.items()}
    for index, bin_number, ref_count, cur_count in view.fetchall(_union(branches, "1, 2")):
        counts[index][0][bin_number] += ref_count
        counts[index][1][bin_number] += cur_count
    for index, name in names.items():
        profiles[name].histogram = counts[index]


# ---------------------------------------------------------------- the tests on aggregates

def ks_from_counts(n_reference: int, n_current: int, reference_cum: int,
                   current_cum: int) -> tuple[float, float]:
    """KS statistic and p-value exactly as ``scipy.stats.ks_2samp(method="auto")`` gives them for
    samples of these sizes whose ECDFs differ most where they hold ``reference_cum`` and
    ``current_cum`` values.

    The p-value depends only on the sizes and D, so up to 10 000 values per side scipy's own
    ``ks_2samp`` runs on two-valued samples with that gap (its exact path, with its own fallback);
    above, scipy's asymptotic path is ``kstwo.sf(D, round(n·m/(n+m)))``.
    """
    from scipy import stats

    if max(n_reference, n_current) <= KS_EXACT_MAX_N:
        first = np.repeat([0.0, 1.0], [reference_cum, n_reference - reference_cum])
        second = np.repeat([0.0, 1.0], [current_cum, n_current - current_cum])
        result = stats.ks_2samp(first, second, method="auto")
        return float(result.statistic), float(result.pvalue)
    d = abs(reference_cum / n_reference - current_cum / n_current)
    m, n = sorted([float(n_reference), float(n_current)], reverse=True)
    p = stats.kstwo.sf(d, np.round(m * n / (m + n)))
    return float(d), float(np.clip(p, 0.0, 1.0))


def chisquare_from_counts(reference_counts: np.ndarray, current_counts: np.ndarray
                          ) -> tuple[float, float]:
    """Evidently's chi-square: current counts against reference counts scaled to the current size."""
    from scipy import stats

    expected = reference_counts * (current_counts.sum() / reference_counts.sum())
    with np.errstate(divide="ignore", invalid="ignore"):
        result = stats.chisquare(current_counts, expected)
    return float(result.statistic), float(result.pvalue)


def z_from_counts(values: list, reference_counts: np.ndarray, current_counts: np.ndarray
                  ) -> tuple[float, float]:
    """Pooled two-proportion z-test of 'not the smallest value' between the windows."""
    from scipy import stats

    if len(values) == 1:
        return 0.0, 1.0
    first = values.index(min(values))
    n1, n2 = float(reference_counts.sum()), float(current_counts.sum())
    p1 = (n1 - reference_counts[first]) / n1
    p2 = (n2 - current_counts[first]) / n2
    pooled = (p1 * n1 + p2 * n2) / (n1 + n2)
    z = (p1 - p2) / math.sqrt(pooled * (1 - pooled) * (1.0 / n1 + 1.0 / n2))
    return float(z), float(2 * stats.norm.sf(abs(z)))


def jensenshannon_from_counts(reference_counts: np.ndarray, current_counts: np.ndarray) -> float:
    """Jensen–Shannon distance (base 2) of the two share vectors, via scipy."""
    from scipy.spatial import distance

    reference = reference_counts / reference_counts.sum()
    current = current_counts / current_counts.sum()
    return float(distance.jensenshannon(reference, current, 2))


def _fill_zeros(shares: np.ndarray) -> np.ndarray:
    """Evidently's zero fill before PSI: 0.0001, or a millionth of the smallest share if that is
    ≤ 0.0001."""
    filled = shares.astype(float).copy()
    smallest = filled[filled != 0].min()
    filled[filled == 0] = smallest / 10**6 if smallest <= 0.0001 else 0.0001
    return filled


def psi_from_counts(reference_counts: np.ndarray, current_counts: np.ndarray) -> float:
    """PSI = Σ (ref − cur)·ln(ref / cur) over zero-filled shares."""
    reference = _fill_zeros(reference_counts / reference_counts.sum())
    current = _fill_zeros(current_counts / current_counts.sum())
    return float(np.sum((reference - current) * np.log(reference / current)))


def is_drifted(test: str, score: float, threshold: float) -> bool:
    """Evidently's comparison: KS p ≤ threshold, chi-square/z p < threshold, distances ≥."""
    if test == "ks":
        return score <= threshold
    if test in P_VALUE_TESTS:
        return score < threshold
    return score >= threshold


# ---------------------------------------------------------------- sampling noise

def _bucket_means(frame: dict[str, np.ndarray], plan: _Buckets) -> tuple[np.ndarray, np.ndarray]:
    """Each bucket's mean value and rows of both windows, from the bucket scan's offset sums."""
    keys = list(frame)
    rows = (frame[keys[3]] + frame[keys[4]]).astype(float)
    offsets = np.nan_to_num(frame[keys[5]].astype(float)) + np.nan_to_num(frame[keys[6]].astype(float))
    return plan.centre + offsets / np.maximum(rows, 1.0), rows


def coarsen(positions: np.ndarray, counts: np.ndarray, groups: int = NOISE_GROUPS
            ) -> tuple[np.ndarray, np.ndarray]:
    """At most ``groups`` runs of adjacent sorted positions of about equal mass, each at its
    count-weighted mean position (a value heavier than a group's share stays alone)."""
    counts = np.asarray(counts, dtype=float)
    positions = np.asarray(positions, dtype=float)
    if len(counts) <= groups:
        return positions, counts
    before = np.cumsum(counts) - counts
    group = np.floor(before * (groups / counts.sum())).astype(np.int64)
    mass = np.bincount(group, counts)
    weighted = np.bincount(group, counts * positions)
    kept = mass > 0
    return weighted[kept] / mass[kept], mass[kept]


def draw_counts(rng: np.random.Generator, size: int, shares: np.ndarray, draws: int) -> np.ndarray:
    """``draws`` multinomial draws of ``size`` values over ``shares`` (rows: draws). Cells expected
    to hold fewer than NOISE_EXACT_BELOW values and the total of the others are drawn exactly;
    the split of that total among the others follows the multinomial's normal approximation."""
    shares = np.asarray(shares, dtype=float)
    small = shares * size < NOISE_EXACT_BELOW
    if small.all():
        return rng.multinomial(size, shares / shares.sum(), size=draws).astype(float)
    large = shares[~small] / shares[~small].sum()
    in_small = np.zeros(draws, dtype=np.int64)
    if small.any() and shares[small].sum() > 0:
        in_small = rng.binomial(size, min(float(shares[small].sum() / shares.sum()), 1.0),
                                size=draws)
    rest = (size - in_small).astype(float)[:, None]
    # Covariance rest·(diag(q) − q qᵀ): independent normals of variance q minus q times their sum.
    drawn = rng.standard_normal((draws, len(large)))
    drawn *= np.sqrt(large)
    drawn -= large * drawn.sum(axis=1, keepdims=True)
    drawn *= np.sqrt(rest)
    drawn += rest * large
    np.maximum(drawn, 0.0, out=drawn)
    if not small.any():
        return drawn
    out = np.zeros((draws, len(shares)))
    out[:, ~small] = drawn
    if shares[small].sum() > 0:
        out[:, small] = rng.multinomial(in_small, shares[small] / shares[small].sum())
    return out


def _shares(counts: np.ndarray) -> np.ndarray:
    return counts / counts.sum(axis=1, keepdims=True)


def jensenshannon_rows(reference: np.ndarray, current: np.ndarray) -> np.ndarray:
    """``jensenshannon_from_counts`` of every row pair of two count matrices at once."""
    from scipy.special import rel_entr

    p, q = _shares(reference), _shares(current)
    middle = (p + q) / 2
    divergence = (rel_entr(p, middle).sum(axis=1) + rel_entr(q, middle).sum(axis=1)) / math.log(2)
    return np.sqrt(np.maximum(divergence, 0.0) / 2)


def _fill_zero_rows(shares: np.ndarray) -> np.ndarray:
    """``_fill_zeros`` of every row."""
    smallest = np.where(shares > 0, shares, np.inf).min(axis=1, keepdims=True)
    fill = np.where(smallest <= 0.0001, smallest / 10**6, 0.0001)
    return np.where(shares == 0, fill, shares)


def psi_rows(reference: np.ndarray, current: np.ndarray) -> np.ndarray:
    """``psi_from_counts`` of every row pair of two count matrices at once."""
    p, q = _fill_zero_rows(_shares(reference)), _fill_zero_rows(_shares(current))
    return np.sum((p - q) * np.log(p / q), axis=1)


def wasserstein_rows(positions: np.ndarray, reference: np.ndarray, current: np.ndarray,
                     std: float) -> np.ndarray:
    """∫|F_ref − F_cur| over sorted ``positions`` of every row pair, divided by
    ``max(std, WASSERSTEIN_MIN_STD)`` as the statistic is."""
    gaps = np.abs(np.cumsum(_shares(reference), axis=1) - np.cumsum(_shares(current), axis=1))
    return gaps[:, :-1] @ np.diff(positions) / max(std, WASSERSTEIN_MIN_STD)


def noise_level(test: str, pooled: np.ndarray, n_reference: int, n_current: int,
                positions: np.ndarray | None = None, std: float | None = None,
                draws: int = NOISE_DRAWS, seed: int = NOISE_SEED) -> float | None:
    """The 95th percentile of ``test`` (jensenshannon, psi or wasserstein) between windows of
    ``n_reference`` and ``n_current`` values both drawn from the distribution of ``pooled``
    counts (over sorted ``positions`` for wasserstein, divided by ``std``). None when there is
    nothing to draw."""
    pooled = np.asarray(pooled, dtype=float)
    total = pooled.sum()
    if test not in DISTANCE_TESTS or not total or n_reference < 1 or n_current < 1:
        return None
    if test == "wasserstein":
        positions, pooled = coarsen(positions, pooled)
    shares = pooled / pooled.sum()    # coarsening keeps the total
    rng = np.random.default_rng(seed)
    batch = max(1, min(draws, NOISE_BATCH_CELLS // max(len(shares), 1)))
    found = []
    for start in range(0, draws, batch):
        size = min(batch, draws - start)
        reference = draw_counts(rng, n_reference, shares, size)
        current = draw_counts(rng, n_current, shares, size)
        if test == "jensenshannon":
            found.append(jensenshannon_rows(reference, current))
        elif test == "psi":
            found.append(psi_rows(reference, current))
        else:
            found.append(wasserstein_rows(positions, reference, current, std or 0.0))
    values = np.concatenate(found)
    values = values[np.isfinite(values)]
    return float(np.percentile(values, NOISE_QUANTILE)) if len(values) else None


def _noise_inputs(result: ColumnDrift, profile: _Profile) -> dict | None:
    """The pooled counts (and positions) the column's statistic was computed over."""
    if result.test == "wasserstein":
        if profile.values is not None:
            positions = np.asarray(profile.values, dtype=float)
            pooled = profile.reference_counts + profile.current_counts
        elif profile.bucket_support is not None:
            positions, pooled = profile.bucket_support
        else:
            return None
        return {"pooled": pooled, "positions": positions, "std": profile.reference_std or 0.0}
    if profile.histogram is not None:
        return {"pooled": profile.histogram[0] + profile.histogram[1]}
    if profile.reference_counts is not None:
        return {"pooled": profile.reference_counts + profile.current_counts}
    return None


def _add_noise_level(result: ColumnDrift, profile: _Profile) -> None:
    """Set ``noise_level`` and ``beyond_noise`` of a tested distance, with a note when the
    verdict says drift but chance alone reaches such a distance."""
    if result.test not in DISTANCE_TESTS or result.statistic is None:
        return
    inputs = _noise_inputs(result, profile)
    if inputs is None:
        return
    level = noise_level(result.test, n_reference=profile.reference_values,
                        n_current=profile.current_values, **inputs)
    if level is None:
        return
    result.noise_level = level
    result.beyond_noise = bool(result.statistic > level)
    if result.drifted and not result.beyond_noise:
        result.note = _join_notes(result.note, (
            f"a distance this large arises by chance with these sample sizes "
            f"({result.reference_values:,} and {result.current_values:,} values; 95% of no-drift "
            f"draws reach {level:.3g}): likely sampling noise, not drift"))


# ---------------------------------------------------------------- per column

def _not_computable(result: ColumnDrift, why: str) -> ColumnDrift:
    result.reason = "not computable because " + why
    result.statistic = result.p_value = result.drifted = None
    return result


def _is_binned(view, name: str, profile: _Profile, test: str) -> bool:
    """JS and PSI bin a numerical column with more than 20 distinct reference values."""
    if test not in ("jensenshannon", "psi") or not _is_numerical(view, name, profile):
        return False
    distinct = profile.distinct_reference
    return distinct is None or distinct > BINNED_ABOVE_VALUES


def _is_numerical(view, name: str, profile: _Profile) -> bool:
    return view.kind(name) == "numerical" and profile.numeric


def _evaluate(result: ColumnDrift, profile: _Profile) -> ColumnDrift:
    """Run the column's test on its aggregates and set statistic, p-value and verdict."""
    test = result.test
    if test == "ks":
        result.statistic, result.p_value = ks_from_counts(
            profile.reference_values, profile.current_values, *profile.ks_counts)
    elif test == "wasserstein":
        std = profile.reference_std or 0.0
        result.statistic = profile.wasserstein / max(std, WASSERSTEIN_MIN_STD)
        if std < WASSERSTEIN_MIN_STD:
            result.note = _join_notes(result.note, (
                f"the reference standard deviation ({std:.3g}) is below {WASSERSTEIN_MIN_STD}, "
                f"so the distance is divided by {WASSERSTEIN_MIN_STD}"))
    elif profile.histogram is not None:
        ref, cur = profile.histogram
        result.statistic = (jensenshannon_from_counts(ref, cur) if test == "jensenshannon"
                            else psi_from_counts(ref, cur))
        result.note = _join_notes(result.note, f"{len(ref)} Sturges bins over both windows")
    else:
        ref, cur = profile.reference_counts, profile.current_counts
        if test == "chisquare":
            if len(profile.values) < 2:
                return _not_computable(result, (
                    f"{result.column} holds a single value ({_show(profile.values[0])}) in both "
                    "windows; chi-square needs at least two"))
            result.statistic, result.p_value = chisquare_from_counts(ref, cur)
            if math.isinf(result.statistic):
                result.note = _join_notes(result.note, (
                    "the chi-square statistic is infinite: the current window holds values the "
                    "reference never had"))
        elif test == "z":
            result.statistic, result.p_value = z_from_counts(profile.values, ref, cur)
        elif test == "jensenshannon":
            result.statistic = jensenshannon_from_counts(ref, cur)
        else:
            result.statistic = psi_from_counts(ref, cur)
    if math.isnan(result.score):
        return _not_computable(result, f"the {test} statistic is undefined on these values")
    result.drifted = bool(is_drifted(test, result.score, result.threshold))
    return result


def _join_notes(first: str | None, second: str) -> str:
    return f"{first}; {second}" if first else second


def _show(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _describe_method(result: ColumnDrift, chosen: str) -> str:
    rule = "p <= " if result.test == "ks" else ("p < " if result.test in P_VALUE_TESTS else ">= ")
    return (f"{TEST_NAMES[result.test]} ({chosen}) on {result.reference_values:,} reference and "
            f"{result.current_values:,} current values; drift when {rule}{result.threshold:g}")


def _shell(view, name: str, profile: _Profile | None) -> ColumnDrift:
    """The column's result before testing: override test and threshold, counts and notes."""
    kind = view.kind(name)
    override_test, override_threshold = _override(view, name)
    result = ColumnDrift(column=name, role=view.roles.role_of(name), kind=kind,
                         test=override_test, threshold=override_threshold)
    if kind not in SUPPORTED_KINDS:
        return _not_computable(result, f"{name} is a {kind} column; drift is computed for "
                                       "numerical, categorical and boolean columns")
    result.reference_values = profile.reference_values
    result.current_values = profile.current_values
    if profile.reference_nonfinite or profile.current_nonfinite:
        result.note = (f"ignored {profile.reference_nonfinite:,} reference and "
                       f"{profile.current_nonfinite:,} current infinite or NaN values")
    why = _empty_reason(name, profile, result.role)
    if why:
        _not_computable(result, why)
    elif kind == "numerical" and not profile.numeric:
        _not_computable(result, f"{name} is declared numerical but stored as "
                                f"{view.columns[name].duck_type}")
    return result


def _choose_test(view, result: ColumnDrift, profile: _Profile) -> None:
    """Set the default test (when not overridden) and the threshold."""
    numerical = _is_numerical(view, result.column, profile)
    if result.test is None:
        distinct = profile.distinct if profile.distinct is not None else LOW_CARDINALITY + 1
        result.test = default_test(numerical, profile.reference_values, distinct)
    if result.threshold is None:
        result.threshold = DEFAULT_THRESHOLDS[result.test]
    if profile.distinct == 1:
        result.note = _join_notes(result.note, "constant: both windows hold a single value")


def _empty_reason(name: str, profile: _Profile, role: str) -> str | None:
    for side, values, missing in (("reference", profile.reference_values,
                                   profile.reference_missing + profile.reference_nonfinite),
                                  ("current", profile.current_values,
                                   profile.current_missing + profile.current_nonfinite)):
        if values == 0:
            if role == "target" and missing:
                return f"the {side} window has no labels ({name} is missing in every row)"
            if missing:
                return f"{name} has no finite value in the {side} window (all missing or infinite)"
            return f"the {side} window has no rows"
    return None


# ---------------------------------------------------------------- entry points

def compute_drift(view, current: Window | None = None, reference: Window | None = None,
                  segment: Segment = (), columns: Sequence[str] | None = None,
                  reference_segment: Segment | None = None) -> DriftResult:
    """Drift of each column (default: ``drift_columns(view)``) between ``reference`` (default:
    ``windows.reference_window(view)``) and ``current`` (default: the last 7 days), both restricted
    to ``segment``. Never raises for data conditions: a column that cannot be tested carries
    ``reason``; a bad override or unknown column raises ``ConfigError``/``FilterError``.

    ``reference_segment`` gives the reference side a segment of its own (e.g. another model
    version over the same window); by default both sides use ``segment``."""
    current = current if current is not None else windows.default_window(view)
    reference = reference if reference is not None else windows.reference_window(view)
    segment = tuple(segment or ())
    names = list(columns) if columns is not None else drift_columns(view)
    for name in names:
        sql.check_column(name, view.column_types)
        _override(view, name)
    supported = [n for n in names if view.kind(n) in SUPPORTED_KINDS]
    reference_segment = None if reference_segment is None else tuple(reference_segment)
    profiles, shells, rows = {}, {}, None
    for relation, group in _reading_groups(view, supported, segment, reference_segment):
        conditions = _window_conditions(view, reference, current, segment, reference_segment,
                                        relation)
        found, group_rows = _profiles(view, group, conditions)
        profiles.update(found)
        rows = rows or group_rows
        shells.update({name: _shell(view, name, found[name]) for name in group})
        _compute_statistics(view, group, profiles, shells, conditions)
    shells.update({name: _shell(view, name, None) for name in names if name not in shells})
    reference_rows, current_rows = rows
    for result in shells.values():
        if result.reason is None:
            _evaluate(result, profiles[result.column])
        if result.reason is None:
            _add_noise_level(result, profiles[result.column])
        if result.reason is None:
            chosen = "override" if _override(view, result.column)[0] else "default"
            result.method = _describe_method(result, chosen)
        profile = profiles.get(result.column)
        result.distinct_values = profile.distinct if profile is not None else None
    return _summarise(view, reference, current, reference_rows, current_rows, segment,
                      [shells[name] for name in names])


def _profiles(view, names: list[str], conditions: dict
              ) -> tuple[dict[str, _Profile], tuple[int, int]]:
    """Every column's profile and the rows per window: few-valued columns (by the sketch) from
    their value counts, the others from the summary scan. A classification target read alone
    (through the label join) needs no sketch: its classes are few."""
    if names == [view.roles.target] and view.task in ("binary", "multiclass"):
        few, rows, approx = list(names), None, {}
    else:
        approx, *counted_rows = _sketch(view, names, conditions)
        few, rows = [n for n in names if _few_valued(view, n, approx[n])], tuple(counted_rows)
    profiles, *few_rows = _frequency_profiles(view, few, approx, conditions)
    if rows is None:
        rows = tuple(few_rows)
    rest = [n for n in names if n not in profiles]
    if rest:
        found, _, _ = _summaries(view, rest, conditions)
        profiles.update(found)
    return profiles, rows


def _compute_statistics(view, supported: list[str], profiles: dict[str, _Profile],
                        shells: dict[str, ColumnDrift], conditions: dict) -> None:
    """Route each testable column to its aggregates: value frequencies (few values; most columns
    already have them from the frequency pass), bucketed exact ECDFs (many-valued numerical
    columns under ks/wasserstein) or Sturges histograms (many-valued numerical columns under
    JS/PSI). Then one query for the remaining frequencies and buckets, one exact pass if needed,
    one for histograms if needed."""
    frequency, buckets, histograms, counted = {}, {}, {}, []
    for index, name in enumerate(supported):
        result, profile = shells[name], profiles[name]
        if result.reason is not None:
            continue
        if profile.values is not None:     # counted by the frequency pass
            counted.append(name)
        elif not profile.numeric:          # only text columns with too many values get here
            _not_computable(result, f"{name} has about {profile.approx_distinct:,} distinct "
                                    f"values; at most {MAX_FREQUENCY_VALUES:,} are compared")
        elif profile.approx_distinct <= LOW_CARDINALITY:
            frequency[index] = name
            counted.append(name)
        else:
            _route_many_valued(view, index, name, result, profile, buckets, histograms)
    frames = _numeric_aggregates(view, frequency, buckets, conditions)
    for index, name in frequency.items():
        _store_frequencies(profiles[name], frames.get(index))
    for name in counted:
        _from_frequencies(view, name, profiles[name], shells[name])
    if buckets:
        _bucketed(view, buckets, frames, profiles, shells, conditions)
    _histograms(view, histograms, profiles, conditions)


def _bucketed(view, buckets: dict, frames: dict, profiles: dict[str, _Profile],
              shells: dict[str, ColumnDrift], conditions: dict) -> None:
    """Finish the bucketed columns: closed form where possible, one exact pass for the rest."""
    scans, unordered = {}, {}
    for index, (name, plan) in buckets.items():
        profile = profiles[name]
        scan = _scan_buckets(frames[index], plan, profile.reference_values,
                             profile.current_values)
        if scan is None:
            unordered[index] = name
        else:
            scans[index] = (name, plan, scan, shells[name].test)
            profile.bucket_support = _bucket_means(frames[index], plan)
    exact, included = _exact_pass(view, scans, conditions)
    for index, (name, _, scan, test) in scans.items():
        _finish_bucketed(profiles[name], scan, exact.get(index), included[index], test)
    fallback = _numeric_aggregates(view, unordered, {}, conditions)
    for index, name in unordered.items():
        _store_frequencies(profiles[name], fallback.get(index))
        _ecdf_from_frequencies(profiles[name])


def _route_many_valued(view, index: int, name: str, result: ColumnDrift, profile: _Profile,
                       buckets: dict, histograms: dict) -> None:
    _choose_test(view, result, profile)
    if result.test in ("ks", "wasserstein"):
        buckets[index] = (name, _plan_buckets(profile))
    elif _is_binned(view, name, profile, result.test):
        histograms[index] = name
    else:
        _not_computable(result, f"{name} has about {profile.approx_distinct:,} distinct values; "
                                f"a {result.test} test compares values one by one and takes at "
                                f"most {LOW_CARDINALITY:,} (use ks, wasserstein, jensenshannon "
                                "or psi)")


def _from_frequencies(view, name: str, profile: _Profile, result: ColumnDrift) -> None:
    """Tests of a column whose every distinct value is known with its counts."""
    _choose_test(view, result, profile)
    if result.test in ("ks", "wasserstein"):
        _ecdf_from_frequencies(profile)
    elif _is_binned(view, name, profile, result.test):
        edges = _edges(view, name, profile)
        values = np.asarray(profile.values, dtype=float)
        profile.histogram = tuple(
            np.histogram(values, edges, weights=counts)[0].astype(np.int64)
            for counts in (profile.reference_counts, profile.current_counts))


def _summarise(view, reference, current, reference_rows, current_rows, segment,
               columns: list[ColumnDrift]) -> DriftResult:
    share_needed = view.config.drift.dataset_share
    result = DriftResult(reference, current, reference_rows, current_rows, segment, columns,
                         share_needed)
    computable = [c for c in columns if c.computable]
    if not reference_rows or not current_rows:
        side = "reference" if not reference_rows else "current"
        window = reference if side == "reference" else current
        where = f" in segment {sql.describe_segment(segment)}" if segment else ""
        result.reason = f"not computable because the {side} window ({window}) has no rows{where}"
    elif not computable:
        result.reason = "not computable because no column could be tested"
    else:
        drifted = sum(1 for c in computable if c.drifted)
        result.drift_share = drifted / len(computable)
        result.dataset_drift = result.drift_share >= share_needed
    return result


# ---------------------------------------------------------------- distributions for charts

_NUMERIC_DISTRIBUTION = """
WITH base AS (
    SELECT {in_reference} AS __ref, {in_current} AS __cur, CAST({c} AS DOUBLE) AS __x
    FROM {log} WHERE ({in_reference_again}) OR ({in_current_again})
), valid AS (SELECT * FROM base WHERE __x IS NOT NULL AND isfinite(__x)),
bounds AS (SELECT min(__x) AS lo, max(__x) AS hi FROM valid)
SELECT CASE WHEN hi = lo THEN 0
            ELSE CAST(least(floor((__x - lo) / (hi - lo) * {bins}), {bins} - 1) AS INTEGER) END
           AS __bin,
       count(CASE WHEN __ref THEN 1 END), count(CASE WHEN __cur THEN 1 END), any_value(lo), any_value(hi)
FROM valid, bounds GROUP BY 1 ORDER BY 1
"""

_CATEGORY_DISTRIBUTION = """
SELECT CAST({c} AS VARCHAR) AS __value,
       count(*) FILTER (WHERE {in_reference}), count(*) FILTER (WHERE {in_current})
FROM {log} WHERE (({in_reference_again}) OR ({in_current_again})) AND {c} IS NOT NULL
GROUP BY 1
"""


def distribution(view, column: str, reference: Window, current: Window, segment: Segment = (),
                 bins: int = 30, top: int = 10, reference_segment: Segment | None = None):
    """A tidy frame of one column's distribution in both windows, for overlaid charts.

    Numerical: ``bins`` equal-width bins from the smallest to the largest finite value of both
    windows; columns ``bin, left, right, reference_count, current_count, reference_share,
    current_share``. Otherwise: the ``top`` most frequent values over both windows and ``other``;
    columns ``value, reference_count, current_count, reference_share, current_share``. Shares are
    of the non-missing values of each window.
    """
    import pandas as pd

    sql.check_column(column, view.column_types)
    conditions = _window_conditions(view, reference, current, tuple(segment or ()),
                                    None if reference_segment is None else tuple(reference_segment))
    if view.kind(column) == "numerical":
        query = sql.render(_NUMERIC_DISTRIBUTION, **conditions, c=Ident(column), bins=int(bins))
        rows = view.fetchall(query)
        frame = pd.DataFrame(columns=["bin", "left", "right", "reference_count", "current_count"])
        if rows:
            lo, hi = rows[0][3], rows[0][4]
            edges = np.linspace(lo, hi, bins + 1) if hi > lo else np.array([lo, hi])
            ref = np.zeros(len(edges) - 1, np.int64)
            cur = np.zeros(len(edges) - 1, np.int64)
            for number, r, c, _, _ in rows:
                ref[number] += r
                cur[number] += c
            frame = pd.DataFrame({"bin": np.arange(len(ref)), "left": edges[:-1],
                                  "right": edges[1:], "reference_count": ref,
                                  "current_count": cur})
    else:
        query = sql.render(_CATEGORY_DISTRIBUTION, **conditions, c=Ident(column))
        counts = pd.DataFrame(view.fetchall(query),
                              columns=["value", "reference_count", "current_count"])
        frame = _top_categories(counts, top)
    for side in ("reference", "current"):
        total = frame[f"{side}_count"].sum()
        frame[f"{side}_share"] = frame[f"{side}_count"] / total if total else 0.0
    return frame


def _top_categories(counts, top: int):
    import pandas as pd

    if counts.empty:
        return counts.astype({"reference_count": "int64", "current_count": "int64"})
    shares = (counts["reference_count"] / max(counts["reference_count"].sum(), 1)
              + counts["current_count"] / max(counts["current_count"].sum(), 1))
    order = shares.sort_values(ascending=False, kind="stable").index
    kept = counts.loc[order[:top]]
    rest = counts.loc[order[top:]]
    if not rest.empty:
        other = pd.DataFrame({"value": ["other"], "reference_count": [rest["reference_count"].sum()],
                              "current_count": [rest["current_count"].sum()]})
        kept = pd.concat([kept, other], ignore_index=True)
    return kept.reset_index(drop=True)


def _plain_float(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None
