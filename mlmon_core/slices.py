"""Automatic discovery of weak and degraded slices: *why, and where exactly?*

Two questions, one machinery:

* **Weak slices** (``find_slices``): conjunctions of up to ``max_level`` conditions on the features
  (``purpose = small_business and term_months ≥ 60``) whose error is higher than the rest of the
  window's, with statistical evidence.
* **Degraded slices** (``find_degraded_slices``): slices whose error *rose* between a comparison
  window (by default the reference window) and the analysis window by more than the rest of the
  rows rose: the question a data scientist asks after an alert.

How it works, and why
---------------------
1. **Per-row error** (computed in DuckDB): misclassification 0/1 (``error_rate``) or log loss for
   classifiers, absolute or squared error for regression. Without labels, the *expected* error from
   the score: ``p`` when the prediction is negative and ``1 - p`` when it is positive (expected log
   loss: the entropy of ``p``). The raw score is used as the probability; ``metric_description``
   says so. Rows without an error value (no label, no score) are not analysed.
2. **Binning that cannot adapt to the errors.** Numerical features are cut at quantiles of the
   *reference* window (the comparison window in degraded mode), computed with ``quantile_disc`` on
   a fixed-seed reservoir sample of 50,000 of its rows (every edge is a logged value; edges are
   deduplicated, and one at the minimum is dropped), giving at most ``bins`` bins; a column with no
   values there is cut at quantiles of the analysis window, which still ignore the errors. Nulls are a bin of their own. Categorical and boolean features
   keep every value holding at least the minimum support in the window; rarer values share one
   "other" code (no slice on a rarer value could reach the minimum support anyway).
3. **One integer-coded matrix.** A single query returns, for the window's rows, one ``UTINYINT``
   code per feature and the error as ``FLOAT``: ``rows × (features + 4)`` bytes, the only thing that
   leaves DuckDB (never a rows × candidates matrix). The comparison window gets the same codes
   from the same edges and categories.
4. **Predicates.** Each feature offers predicates that are sets of its codes: the null bin, each
   single bin or category, the "other" categories and, for numerical features (``ranges=True``), the
   one-sided ranges ``x < edge`` and ``x ≥ edge``, because thresholds are how people define
   segments and a planted "age ≥ 60" rarely falls on a decile. A slice takes at most one predicate
   per feature. Every predicate compiles to conditions that select exactly its rows (``x < b``,
   ``x ≥ a``, ``between a and b - 1`` / ``== a`` on integer columns, ``x ≥ a`` plus ``x < b`` on
   others, ``is_null``, ``==``, ``not_in`` for "other"), so a reported slice opens as a segment with
   the same rows.
5. **Enumeration by counting, not by masks.** For each combination of 1..``max_level`` features,
   ``np.ravel_multi_index``-style combined codes and ``np.bincount`` give the rows, error sum (and
   sum of squares) of every cell at once; predicate statistics are sums of cells, obtained by
   multiplying the cell array by each feature's 0/1 predicate-membership matrix along its axis.
   For 0/1 errors the rows are ordered errors-first, so the error count is a bincount over a prefix.
6. **Safe pruning.** A slice is a subset of each of its parents, so its size is at most the
   smallest parent's: a feature combination is counted only if some cell could reach the minimum
   support given its parents' counts (this depends on the features only, never on the errors).
   SliceLine's score upper bound (from parents' sizes, error sums and maximal errors, maximised
   over the feasible sizes) is used only in the untested ``sliceline`` ranking mode, where it skips
   combinations that cannot enter the top-K. It is *not* used when testing: dropping candidates by
   a bound computed from the errors would make the family of hypotheses depend on the data being
   tested, and Benjamini–Hochberg over a data-selected family does not control the FDR. So every
   candidate that passes the support requirement (which the errors do not influence) is tested.
7. **Evidence.** For every candidate with at least the minimum support inside and outside it, a
   one-sided test that its mean error exceeds the complement's: for 0/1 errors the signed root of
   the likelihood-ratio (G) statistic of the 2×2 table, whose normal tail is accurate far into the
   tail where a Wald z-test is not (rare errors are skewed); for continuous errors Welch's t with
   Satterthwaite degrees of freedom, from per-cell sums and sums of squares. Degraded mode tests the
   *difference in differences*: the slice's rise minus the complement's rise, so that a global
   degradation flags nothing by itself (Agresti–Caffo adjusted proportions for 0/1 errors, Welch
   for continuous ones). Benjamini–Hochberg runs over *all* tested candidates (``candidates_tested``
   is m). Only p-values ≤ ``fdr`` are kept in memory: BH can never reject a larger one, and the
   q-values of the kept ones are exact given m.
8. **A global evidence gate.** Under errors that do not depend on the features, BH at 5 % still
   reports *something* in about 5 % of datasets (its false discovery rate equals its family-wise
   error rate then). Slices are therefore reported only when the strongest evidence passes
   ``evidence_gate`` (the smallest q-value ≤ 0.001, a Simes test of "errors do not depend on any
   feature" at 0.1 %); then every slice with q ≤ ``fdr`` is eligible. The gate can only remove
   discoveries, so the FDR stays ≤ ``fdr``, and on feature-independent errors something is reported
   in at most 0.1 % of datasets instead of 5 %.
9. **Ranking and redundancy.** Eligible slices are ranked by a size-aware score in the spirit of
   SliceLine: ``α·(slice error / mean error − 1) − (1 − α)·(n / slice rows − 1)`` (degraded: the
   excess rise over the mean error in place of the first ratio). ``α`` defaults to 0.99 so that a
   small slice with a high error ranks above a broad, mildly worse one. Walking down the ranking,
   a slice is skipped when it is not *productive* (not significantly worse than the rest of some
   eligible generalization: a condition dropped or a range widened, Bonferroni level fdr/m; this
   is what stops chance-lucky sub-slices of a weak segment from outranking it), when it is
   *explained* by the slices already chosen (its rows outside them are not significantly worse
   than the other rows outside them: a diluted copy), replaced by a simpler eligible
   sub-conjunction holding ≥ 90 % of its rows, and dropped when its rows overlap a chosen slice's
   with Jaccard ≥ 0.9. Details in ``_Selector``.
10. **Boundary refinement.** Decile edges rarely sit on the threshold that defines a real segment,
   so each numerical boundary of a *reported* slice is moved, within its two neighbouring bins, to
   the logged value where the slice's test statistic peaks (one GROUP BY per boundary; see
   ``_Refiner``). The q-value stays that of the tested binned slice; rows, value, p-value and score
   are the refined slice's, and its conditions still select exactly its rows.

Scale: the coded matrix is ``rows × features`` bytes (160 MB at 10 million rows and 16 features);
each feature combination costs two or three passes of ``np.bincount`` over the rows. The search
needs no statistics library beyond ``scipy.special``.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
from scipy import special

from mlmon_core import sql
from mlmon_core.config import Window
from mlmon_core.errors import MlmonError
from mlmon_core.sql import Condition, Fragment, Ident, Segment

Progress = Callable[[float, str], None]

METRICS = ("error_rate", "log_loss", "abs_error", "squared_error")
METRIC_WORDS = {"error_rate": "error rate", "log_loss": "log loss",
                "abs_error": "mean absolute error", "squared_error": "mean squared error"}
ERROR_SOURCES = ("auto", "labels", "estimate")
DEFAULT_TOP = 10
DEFAULT_MAX_LEVEL = 3
MAX_LEVEL_LIMIT = 4
DEFAULT_MIN_SUPPORT = 0.01
DEFAULT_ALPHA = 0.99
DEFAULT_FDR = 0.05
DEFAULT_EVIDENCE_GATE = 0.001
DEFAULT_BINS = 10
MAX_BINS = 64
MIN_SLICE_ROWS = 20           # a slice (and its complement) needs at least this many rows
MAX_CATEGORIES = 200          # codes must fit UTINYINT with null and "other"
DUPLICATE_JACCARD = 0.9
PROBABILITY_CLIP = 1e-15
EDGE_SAMPLE_ROWS = 50_000     # rows sampled (fixed seed) to place the quantile edges
MAX_RANKED_SCAN = 3000        # candidates looked at while filling the top-K with distinct slices
_INTEGER_TYPES = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT",
                  "UINTEGER", "UBIGINT", "UHUGEINT", "INT1", "INT2", "INT4", "INT8", "INT")


# ================================================================= results

@dataclass(frozen=True)
class Slice:
    """One reported slice; ``conditions`` open it as a segment (the searched segment included)."""

    conditions: tuple[Condition, ...]
    rows: int
    value: float
    reference_value: float | None
    score: float
    p_value: float
    q_value: float
    description: str
    level: int
    complement_value: float
    reference_rows: int | None = None
    complement_reference_value: float | None = None
    excess_rise: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON form of one slice (conditions as in segment filters)."""
        out: dict[str, Any] = {
            "conditions": [c.to_json() for c in self.conditions],
            "rows": self.rows, "value": self.value, "reference_value": self.reference_value,
            "score": self.score, "p_value": self.p_value, "q_value": self.q_value,
            "description": self.description, "level": self.level,
            "complement_value": self.complement_value,
        }
        if self.excess_rise is not None:
            out.update(reference_rows=self.reference_rows, excess_rise=self.excess_rise,
                       complement_reference_value=self.complement_reference_value)
        return out


@dataclass(frozen=True)
class SliceReport:
    """What ``find_slices``/``find_degraded_slices`` found, or why nothing could be computed."""

    mode: str                              # "weak" or "degraded"
    metric: str
    metric_description: str
    window: Window
    compare_to: Window | None
    segment: Segment
    rows: int
    overall: float | None
    reference_rows: int | None = None
    reference_overall: float | None = None
    slices: tuple[Slice, ...] = ()
    candidates_tested: int = 0
    significant: int = 0
    reason: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """``{metric, window, rows, overall, slices, ...}`` as plain JSON values."""
        return {
            "mode": self.mode, "metric": self.metric, "metric_description": self.metric_description,
            "window": self.window.to_json(),
            "compare_to": self.compare_to.to_json() if self.compare_to else None,
            "segment": [c.to_json() for c in self.segment],
            "rows": self.rows, "overall": self.overall,
            "reference_rows": self.reference_rows, "reference_overall": self.reference_overall,
            "slices": [s.to_json() for s in self.slices],
            "candidates_tested": self.candidates_tested, "significant": self.significant,
            "reason": self.reason, "settings": dict(self.settings),
        }

    def to_text(self) -> str:
        """A few plain lines for the terminal."""
        what = "weak slices" if self.mode == "weak" else "degraded slices"
        head = (f"{what} by {self.metric_description}, window {self.window}"
                + (f" vs {self.compare_to}" if self.compare_to else "")
                + f": {self.rows:,} rows"
                + (f", overall {_fmt(self.overall)}" if self.overall is not None else ""))
        lines = [head]
        if self.reason:
            lines.append(self.reason)
        lines += [f"{i}. {s.description}" for i, s in enumerate(self.slices, 1)]
        return "\n".join(lines)


# ================================================================= features and predicates

@dataclass(frozen=True)
class Predicate:
    """A set of one feature's codes, with the conditions that select exactly those rows."""

    feature: str
    codes: tuple[int, ...]
    conditions: tuple[Condition, ...]
    text: str


@dataclass(frozen=True)
class FeatureCoding:
    """How one feature becomes a small integer code.

    Numerical: code 0 is null, code ``j`` (1-based) holds ``edges[j-2] ≤ x < edges[j-1]`` with
    open ends (NaN sorts above every number in DuckDB, so it falls in the top bin, consistently
    with the ``x ≥ edge`` condition). Categorical: 0 is null, ``j`` is ``categories[j-1]``, the last
    code is every other value.
    """

    name: str
    kind: str                       # "numerical" or "categorical"
    duck_type: str
    edges: tuple[Any, ...] = ()
    categories: tuple[Any, ...] = ()

    @property
    def n_codes(self) -> int:
        """Number of codes, null included."""
        return len(self.edges) + 2 if self.kind == "numerical" else len(self.categories) + 2

    def code_sql(self) -> Fragment:
        """``CAST(CASE ... END AS UTINYINT)``: this feature's code for every row."""
        column = Ident(self.name)
        if self.kind == "numerical":
            whens = [sql.render("WHEN {c} < {edge} THEN {code}", c=column, edge=sql.param(edge),
                                code=i + 1) for i, edge in enumerate(self.edges)]
            last = len(self.edges) + 1
        else:
            whens = [sql.render("WHEN {c} = {value} THEN {code}", c=column, value=sql.param(value),
                                code=i + 1) for i, value in enumerate(self.categories)]
            last = len(self.categories) + 1
        return sql.render(_CODE_TEMPLATE, c=column, whens=sql.join(whens, " "), last=last)

    def predicates(self, ranges: bool = True) -> list[Predicate]:
        """Every predicate this feature offers (see the module docstring)."""
        out = [Predicate(self.name, (0,), (Condition(self.name, "is_null"),),
                         f"{self.name} is missing")]
        if self.kind == "categorical":
            for i, value in enumerate(self.categories):
                out.append(Predicate(self.name, (i + 1,), (Condition(self.name, "==", value=value),),
                                     f"{self.name} = {show_value(value)}"))
            other = len(self.categories) + 1
            if self.categories:
                text = (f"{self.name} is another value (none of {_show_list(self.categories)})")
                conditions = (Condition(self.name, "not_in", values=tuple(self.categories)),)
            else:
                text, conditions = f"{self.name} is present", (Condition(self.name, "not_null"),)
            out.append(Predicate(self.name, (other,), conditions, text))
            return out
        bins = len(self.edges) + 1
        spans = [(j, j) for j in range(1, bins + 1)]
        if ranges:
            spans += [(1, j) for j in range(2, bins)] + [(j, bins) for j in range(2, bins)]
        for low, high in spans:
            conditions, text = self._range(low, high)
            out.append(Predicate(self.name, tuple(range(low, high + 1)), conditions, text))
        return out

    def bounds(self, low: int, high: int) -> tuple[Any, Any]:
        """The values ``lower ≤ x < upper`` of codes ``low..high`` (None for an open end)."""
        lower = self.edges[low - 2] if low >= 2 else None
        upper = self.edges[high - 1] if high <= len(self.edges) else None
        return lower, upper

    def _range(self, low: int, high: int) -> tuple[tuple[Condition, ...], str]:
        """Conditions selecting codes ``low..high`` exactly, and their plain words."""
        return range_conditions(self.name, self.duck_type, *self.bounds(low, high))


def range_conditions(name: str, duck_type: str, lower: Any, upper: Any) -> tuple[tuple[Condition, ...], str]:
    """Conditions selecting exactly ``lower ≤ x < upper`` (either end open), and plain words."""
    if lower is None and upper is None:
        return (Condition(name, "not_null"),), f"{name} is present"
    if lower is None:
        return (Condition(name, "<", value=upper),), f"{name} < {show_value(upper)}"
    if upper is None:
        return (Condition(name, ">=", value=lower),), f"{name} ≥ {show_value(lower)}"
    if _is_integer_type(duck_type):
        last = int(upper) - 1
        if last == int(lower):
            return (Condition(name, "==", value=int(lower)),), f"{name} = {int(lower)}"
        return ((Condition(name, "between", low=int(lower), high=last),),
                f"{name} {int(lower)}–{last}")
    return ((Condition(name, ">=", value=lower), Condition(name, "<", value=upper)),
            f"{show_value(lower)} ≤ {name} < {show_value(upper)}")




_CODE_TEMPLATE = "CAST(CASE WHEN {c} IS NULL THEN 0 {whens} ELSE {last} END AS UTINYINT)"


def membership_matrix(predicates: Sequence[Predicate], n_codes: int) -> np.ndarray:
    """0/1 matrix (predicates × codes): row ``i`` marks the codes predicate ``i`` selects."""
    matrix = np.zeros((len(predicates), n_codes), dtype=np.float64)
    for i, predicate in enumerate(predicates):
        matrix[i, list(predicate.codes)] = 1.0
    return matrix


def _is_integer_type(duck_type: str) -> bool:
    return duck_type.upper() in _INTEGER_TYPES


# ================================================================= the coded rows

@dataclass
class CodedRows:
    """The integer-coded matrix of one window: codes (features × rows, uint8) and errors.

    When every error is 0 or 1 the rows are reordered errors-first, so that per-cell error counts
    are a bincount over the first ``n_errors`` positions.
    """

    codes: np.ndarray
    errors: np.ndarray
    binary: bool
    n_errors: int

    @classmethod
    def from_arrays(cls, codes: np.ndarray, errors: np.ndarray) -> "CodedRows":
        """Build from a (features × rows) code array and a row vector of errors."""
        codes = np.ascontiguousarray(codes, dtype=np.uint8)
        errors = np.asarray(errors, dtype=np.float64)
        binary = bool(np.all((errors == 0) | (errors == 1)))
        if binary:
            is_error = errors == 1
            order = np.concatenate([np.flatnonzero(is_error), np.flatnonzero(~is_error)])
            codes = np.ascontiguousarray(codes[:, order])
            errors = errors[order]
            return cls(codes, errors, True, int(is_error.sum()))
        return cls(codes, errors, False, -1)

    @property
    def rows(self) -> int:
        """Number of rows."""
        return int(self.errors.shape[0])

    @property
    def totals(self) -> tuple[float, float, float]:
        """Rows, error sum and sum of squared errors of the whole window."""
        total = float(self.errors.sum())
        squares = total if self.binary else float(np.dot(self.errors, self.errors))
        return float(self.rows), total, squares

    def cell_stats(self, index: np.ndarray, cells: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rows, error sums and squared-error sums of every cell of a combined code."""
        counts = np.bincount(index, minlength=cells).astype(np.float64)
        if self.binary:
            sums = np.bincount(index[:self.n_errors], minlength=cells).astype(np.float64)
            return counts, sums, sums
        sums = np.bincount(index, weights=self.errors, minlength=cells)
        squares = np.bincount(index, weights=self._squares, minlength=cells)
        return counts, sums, squares

    def __post_init__(self) -> None:
        self._squares = None if self.binary else self.errors * self.errors

    def occupied_codes(self, feature: int) -> int:
        """How many of a feature's codes hold at least one row."""
        return int(np.count_nonzero(np.bincount(self.codes[feature])))


# ================================================================= statistics

def sliceline_score(rows: np.ndarray, error_sums: np.ndarray, total_rows: float,
                    mean_error: float, alpha: float) -> np.ndarray:
    """SliceLine's score ``α·(ē_s/ē − 1) − (1 − α)·(n/|s| − 1)`` (−inf for empty slices)."""
    rows = np.asarray(rows, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        score = alpha * ((error_sums / rows) / mean_error - 1) - (1 - alpha) * (total_rows / rows - 1)
    return np.where(rows > 0, score, -np.inf)


def sliceline_upper_bound(size_bound: np.ndarray, error_bound: np.ndarray, max_error_bound: np.ndarray,
                          min_rows: float, total_rows: float, mean_error: float,
                          alpha: float) -> np.ndarray:
    """An upper bound of the SliceLine score of any slice within the given bounds.

    A slice of ``r`` rows (``min_rows ≤ r ≤ size_bound``) has an error sum of at most
    ``min(error_bound, r·max_error_bound)``; for that largest sum the score is monotone in ``r`` on
    each side of ``r = error_bound / max_error_bound``, so its maximum over ``r`` is at one of
    ``min_rows``, that point, or ``size_bound``.
    """
    size_bound = np.asarray(size_bound, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        knee = np.where(max_error_bound > 0, error_bound / max_error_bound, min_rows)
    probes = [np.full_like(size_bound, float(min_rows)),
              np.clip(knee, min_rows, np.maximum(size_bound, min_rows)), size_bound]
    best = np.full_like(size_bound, -np.inf)
    for rows in probes:
        errors = np.minimum(error_bound, rows * max_error_bound)
        best = np.maximum(best, sliceline_score(rows, errors, total_rows, mean_error, alpha))
    return np.where(size_bound >= min_rows, best, -np.inf)


def weak_p_values(rows, sums, squares, totals: tuple[float, float, float], binary: bool) -> np.ndarray:
    """One-sided p-values that each slice's mean error exceeds its complement's."""
    return _weak_test(rows, sums, squares, totals, binary)[1]


def _weak_test(rows, sums, squares, totals, binary) -> tuple[np.ndarray, np.ndarray]:
    """(signed statistic, one-sided p-value) of slice vs complement."""
    total_rows, total_sum, total_squares = totals
    if binary:
        root = _g_signed_root(sums, rows, total_sum, total_rows)
        return root, special.ndtr(-root)
    other_rows = total_rows - rows
    mean_in, var_in = _mean_var(rows, sums, squares)
    mean_out, var_out = _mean_var(other_rows, total_sum - sums, total_squares - squares)
    return _welch(mean_in - mean_out, [(var_in, rows), (var_out, other_rows)])


def rise_p_values(current: tuple[np.ndarray, ...], previous: tuple[np.ndarray, ...],
                  current_totals: tuple[float, float, float],
                  previous_totals: tuple[float, float, float], binary: bool) -> np.ndarray:
    """One-sided p-values that each slice's error rose more than its complement's (DiD > 0)."""
    return _rise_test(current, previous, current_totals, previous_totals, binary)[1]


def _rise_test(current, previous, current_totals, previous_totals, binary):
    """(signed statistic, one-sided p-value) of the difference in differences."""
    # Four groups: slice and rest, now and before.
    groups = []
    for (rows, sums, squares), (total_rows, total_sum, total_squares) in (
            (current, current_totals), (previous, previous_totals)):
        groups.append((rows, sums, squares))
        groups.append((total_rows - rows, total_sum - sums, total_squares - squares))
    signs = (1.0, -1.0, -1.0, 1.0)          # (slice now − slice before) − (rest now − rest before)
    if binary:
        # Agresti–Caffo: one error and one non-error added to each group.
        rates = [((s + 1) / (n + 2), n + 2) for n, s, _ in groups]
        rise = sum(sign * rate for sign, (rate, _) in zip(signs, rates))
        variance = sum(rate * (1 - rate) / rows for rate, rows in rates)
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.nan_to_num(rise / np.sqrt(variance))
        return z, special.ndtr(-z)
    moments = [_mean_var(n, s, q) for n, s, q in groups]
    rise = sum(sign * mean for sign, (mean, _) in zip(signs, moments))
    return _welch(rise, [(variance, group[0]) for (_, variance), group in zip(moments, groups)])


def excess_rise(current: tuple[np.ndarray, ...], previous: tuple[np.ndarray, ...],
                current_totals: tuple[float, ...], previous_totals: tuple[float, ...]) -> np.ndarray:
    """The slice's rise in mean error minus its complement's rise (raw means)."""
    n1, s1 = current[0], current[1]
    n0, s0 = previous[0], previous[1]
    with np.errstate(divide="ignore", invalid="ignore"):
        slice_rise = s1 / n1 - s0 / n0
        rest_rise = ((current_totals[1] - s1) / (current_totals[0] - n1)
                     - (previous_totals[1] - s0) / (previous_totals[0] - n0))
    return slice_rise - rest_rise


def _mean_var(rows, sums, squares) -> tuple[np.ndarray, np.ndarray]:
    rows = np.asarray(rows, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = sums / rows
        variance = np.maximum(squares - sums * mean, 0.0) / (rows - 1)
    return mean, variance


def _welch(difference, parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """(t, P(T ≥ t)) for a difference of means, Welch–Satterthwaite degrees of freedom."""
    with np.errstate(divide="ignore", invalid="ignore"):
        pieces = [variance / rows for variance, rows in parts]
        se2 = sum(pieces)
        df = se2 ** 2 / sum(piece ** 2 / (rows - 1) for piece, (_, rows) in zip(pieces, parts))
        t = np.nan_to_num(difference / np.sqrt(se2), nan=0.0)
    p = special.stdtr(np.where(np.isfinite(df) & (df > 0), df, 1.0), -t)
    # Constant errors on both sides: the difference is exact.
    exact = se2 <= 0
    return t, np.where(exact, np.where(difference > 0, 0.0, np.where(difference < 0, 1.0, 0.5)), p)


def _g_signed_root(errors_in, rows_in, total_errors: float, total_rows: float) -> np.ndarray:
    """Signed root of the likelihood-ratio (G) statistic of the slice-vs-rest 2×2 table."""
    a = np.asarray(errors_in, dtype=np.float64)
    n = np.asarray(rows_in, dtype=np.float64)
    b = n - a
    c = total_errors - a
    d = (total_rows - n) - c
    xlogx = special.xlogy
    g = 2 * (xlogx(a, a) + xlogx(b, b) + xlogx(c, c) + xlogx(d, d)
             - xlogx(n, n) - xlogx(total_rows - n, total_rows - n)
             - xlogx(total_errors, total_errors)
             - xlogx(total_rows - total_errors, total_rows - total_errors)
             + xlogx(total_rows, total_rows))
    with np.errstate(divide="ignore", invalid="ignore"):
        higher = a / n > c / (total_rows - n)
    return np.where(higher, 1.0, -1.0) * np.sqrt(np.maximum(g, 0.0))


def benjamini_hochberg(p_values: np.ndarray, total: int | None = None) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values (q-values), in the input order.

    ``total`` is the number of hypotheses tested when only the smallest p-values are given (every
    p-value left out is larger than every one given); the q-values of the given ones are then
    exact whenever they are below the smallest p-value left out.
    """
    p = np.asarray(p_values, dtype=np.float64)
    m = len(p) if total is None else int(total)
    if len(p) == 0:
        return p.copy()
    order = np.argsort(p, kind="stable")
    ranked = p[order] * m / np.arange(1, len(p) + 1)
    q_sorted = np.minimum.accumulate(ranked[::-1])[::-1]
    q = np.empty_like(p)
    q[order] = np.minimum(q_sorted, 1.0)
    return q


# ================================================================= the search on coded rows

@dataclass(frozen=True)
class SearchSettings:
    """Knobs of the search on coded rows (absolute row counts, already resolved)."""

    max_level: int = DEFAULT_MAX_LEVEL
    min_rows: int = MIN_SLICE_ROWS
    min_reference_rows: int = MIN_SLICE_ROWS
    alpha: float = DEFAULT_ALPHA
    fdr: float = DEFAULT_FDR
    evidence_gate: float = DEFAULT_EVIDENCE_GATE
    top: int = DEFAULT_TOP
    tested: bool = True          # False: SliceLine's top-K by score, no tests (for comparisons)


@dataclass
class Candidates:
    """Slices kept by the search: feature combinations, predicate indices and statistics."""

    combos: list[tuple[int, ...]]
    combo: np.ndarray             # index into ``combos``
    cell: np.ndarray              # flat index into the combination's predicate grid
    rows: np.ndarray
    sums: np.ndarray
    squares: np.ndarray
    score: np.ndarray
    p_value: np.ndarray
    reference: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    tested: int = 0
    skipped_combinations: int = 0
    evaluated_combinations: int = 0

    def __len__(self) -> int:
        return int(self.rows.shape[0])


class _Lattice:
    """Counts every feature combination's cells, extends them to predicates, tests and keeps."""

    def __init__(self, current: CodedRows, memberships: Sequence[np.ndarray],
                 settings: SearchSettings, previous: CodedRows | None = None) -> None:
        self.current, self.previous, self.settings = current, previous, settings
        self.memberships = [None if _is_identity(m) else m for m in memberships]
        self.shapes = [m.shape for m in memberships]          # (predicates, codes)
        self.totals = current.totals
        self.previous_totals = previous.totals if previous is not None else None
        self.mean_error = self.totals[1] / self.totals[0] if self.totals[0] else 0.0
        self.parent_rows: dict[tuple[int, ...], tuple[np.ndarray, ...]] = {}
        self.parent_sums: dict[tuple[int, ...], np.ndarray] = {}
        self._index_cache: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray | None]] = {}
        self.kept: list[tuple] = []
        self.tested = 0
        self.skipped = 0
        self.evaluated = 0
        self.top_scores = np.empty(0)
        if not settings.tested:
            self.max_errors = self._predicate_max_errors()

    # ---- counting
    def _index(self, combo: tuple[int, ...], rows: CodedRows, slot: int) -> np.ndarray:
        """Combined code of the combination for every row (prefix combinations cached)."""
        key = (slot,) + combo
        cached = self._index_cache.get(key)
        if cached is not None:
            return cached
        last = combo[-1]
        codes = rows.codes[last]
        if len(combo) == 1:
            index = codes.astype(np.intp)
        else:
            index = self._index(combo[:-1], rows, slot) * self.shapes[last][1] + codes
        if len(combo) < self.settings.max_level:
            # keep only the latest prefix of each length: combinations come in lexicographic order
            for other in [k for k in self._index_cache if k[0] == slot and len(k) == len(key)]:
                del self._index_cache[other]
            self._index_cache[key] = index
        return index

    def _stats(self, combo: tuple[int, ...], rows: CodedRows, slot: int) -> tuple[np.ndarray, ...]:
        """Rows, error sums and squares of every predicate cell of the combination."""
        base_shape = tuple(self.shapes[f][1] for f in combo)
        cells = int(np.prod(base_shape))
        stats = rows.cell_stats(self._index(combo, rows, slot), cells)
        mats = [self.memberships[f] for f in combo]
        extended = [_extend(x.reshape(base_shape), mats) for x in stats[:2]]
        if rows.binary:
            extended.append(extended[1])
        else:
            extended.append(_extend(stats[2].reshape(base_shape), mats))
        return tuple(extended)

    # ---- pruning
    def _size_bound(self, combo: tuple[int, ...], slot: int) -> np.ndarray:
        """Per cell, the smallest row count among its parents (an upper bound of its size)."""
        bound = None
        for axis in range(len(combo)):
            parent = combo[:axis] + combo[axis + 1:]
            counts = np.expand_dims(self.parent_rows[parent][slot], axis)
            bound = counts if bound is None else np.minimum(bound, counts)
        return bound

    def _may_have_support(self, combo: tuple[int, ...]) -> bool:
        if len(combo) == 1:
            return True
        if not (self._size_bound(combo, 0) >= self.settings.min_rows).any():
            return False
        if self.previous is not None:
            return bool((self._size_bound(combo, 1) >= self.settings.min_reference_rows).any())
        return True

    def _predicate_max_errors(self) -> list[np.ndarray]:
        """Largest error of each predicate's rows (for SliceLine's upper bound)."""
        out = []
        for f, (predicates, codes) in enumerate(self.shapes):
            per_code = np.zeros(codes)
            np.maximum.at(per_code, self.current.codes[f], self.current.errors)
            membership = self.memberships[f]
            if membership is None:
                out.append(per_code)
            else:
                out.append(np.where(membership > 0, per_code[None, :], 0.0).max(axis=1))
        return out

    def _score_bound(self, combo: tuple[int, ...]) -> np.ndarray:
        """SliceLine's upper bound of the score of every cell of the combination."""
        sizes = self._size_bound(combo, 0)
        sums = None
        max_errors = None
        for axis in range(len(combo)):
            parent = combo[:axis] + combo[axis + 1:]
            s = np.expand_dims(self.parent_sums[parent], axis)
            sums = s if sums is None else np.minimum(sums, s)
            shape = [1] * len(combo)
            shape[axis] = -1
            m = self.max_errors[combo[axis]].reshape(shape)
            max_errors = m if max_errors is None else np.minimum(max_errors, m)
        total_rows = self.totals[0]
        return sliceline_upper_bound(sizes, sums, max_errors, self.settings.min_rows, total_rows,
                                     self.mean_error, self.settings.alpha)

    # ---- the walk
    def run(self, progress: Progress | None = None) -> Candidates:
        """Visit every feature combination level by level; return the kept candidates."""
        features = len(self.shapes)
        levels = min(self.settings.max_level, features)
        combos_per_level = [math.comb(features, level) for level in range(1, levels + 1)]
        done, total = 0, max(sum(combos_per_level), 1)
        combos: list[tuple[int, ...]] = []
        for level in range(1, levels + 1):
            keep_parents = level < levels
            next_rows: dict[tuple[int, ...], tuple[np.ndarray, ...]] = {}
            next_sums: dict[tuple[int, ...], np.ndarray] = {}
            for combo in itertools.combinations(range(features), level):
                done += 1
                if progress is not None and done % 16 == 0:
                    progress(done / total, f"level {level}: {done:,} of {total:,} feature combinations")
                if not self._may_have_support(combo) or self._bound_prunes(combo):
                    self.skipped += 1
                    continue
                self.evaluated += 1
                current = self._stats(combo, self.current, 0)
                previous = self._stats(combo, self.previous, 1) if self.previous is not None else None
                if keep_parents:
                    next_rows[combo] = (current[0],) + ((previous[0],) if previous else ())
                    next_sums[combo] = current[1]
                combos.append(combo)
                self._consider(len(combos) - 1, current, previous)
            self.parent_rows, self.parent_sums = next_rows, next_sums
            self._index_cache.clear()
        return self._collect(combos)

    def _bound_prunes(self, combo: tuple[int, ...]) -> bool:
        if self.settings.tested or len(combo) == 1 or len(self.top_scores) < self.settings.top:
            return False
        return not (self._score_bound(combo) > self.top_scores.min()).any()

    def _consider(self, combo_id: int, current: tuple[np.ndarray, ...],
                  previous: tuple[np.ndarray, ...] | None) -> None:
        s = self.settings
        rows = current[0].ravel()
        total_rows = self.totals[0]
        if s.tested:
            valid = (rows >= s.min_rows) & (total_rows - rows >= s.min_rows)
            if previous is not None:
                ref_rows = previous[0].ravel()
                valid &= (ref_rows >= s.min_reference_rows)
                valid &= (self.previous_totals[0] - ref_rows >= s.min_reference_rows)
        else:   # SliceLine's own conditions
            valid = (rows >= s.min_rows) & (current[1].ravel() > 0)
        cells = np.flatnonzero(valid)
        if not len(cells):
            return
        cur = tuple(x.ravel()[cells] for x in current)
        prev = tuple(x.ravel()[cells] for x in previous) if previous is not None else None
        if prev is None:
            score = sliceline_score(cur[0], cur[1], total_rows, self.mean_error, s.alpha)
        else:
            rise = excess_rise(cur, prev, self.totals, self.previous_totals)
            score = s.alpha * rise / self.mean_error - (1 - s.alpha) * (total_rows / cur[0] - 1)
        if s.tested:
            self.tested += len(cells)
            if prev is None:
                # A slice no worse than the rest has p ≥ 0.5 > fdr: counted in m, never kept.
                worse = cur[1] * (total_rows - cur[0]) > (self.totals[1] - cur[1]) * cur[0]
                cells, score = cells[worse], score[worse]
                cur = tuple(x[worse] for x in cur)
                p = weak_p_values(*cur, self.totals, self.current.binary)
            else:
                p = rise_p_values(cur, prev, self.totals, self.previous_totals, self.current.binary)
            keep = p <= s.fdr
        else:
            p = np.full(len(cells), np.nan)
            keep = score > 0
            if keep.any():
                self.top_scores = _top_values(np.concatenate([self.top_scores, score[keep]]), s.top)
        if not keep.any():
            return
        self.kept.append((combo_id, cells[keep], *(x[keep] for x in cur), score[keep], p[keep],
                          tuple(x[keep] for x in prev) if prev is not None else None))

    def _collect(self, combos: list[tuple[int, ...]]) -> Candidates:
        parts = self.kept
        if not parts:
            empty_i, empty_f = np.empty(0, dtype=np.int64), np.empty(0)
            reference = (empty_f, empty_f, empty_f) if self.previous is not None else None
            return Candidates(combos, empty_i, empty_i, empty_f, empty_f, empty_f, empty_f, empty_f,
                              reference, self.tested, self.skipped, self.evaluated)
        combo = np.concatenate([np.full(len(p[1]), p[0], dtype=np.int64) for p in parts])
        columns = [np.concatenate([p[i] for p in parts]) for i in range(1, 7)]
        reference = None
        if self.previous is not None:
            reference = tuple(np.concatenate([p[7][i] for p in parts]) for i in range(3))
        found = Candidates(combos, combo, columns[0].astype(np.int64), *columns[1:], reference,
                           self.tested, self.skipped, self.evaluated)
        if not self.settings.tested:
            _keep_top(found, self.settings.top)
        return found


def _top_values(values: np.ndarray, k: int) -> np.ndarray:
    if len(values) <= k:
        return values
    return np.partition(values, len(values) - k)[-k:]


def _keep_top(found: Candidates, k: int) -> None:
    """Keep SliceLine's top-K (ties with the K-th score included), in place."""
    if len(found) > k:
        kth = np.sort(found.score)[::-1][k - 1]
        keep = found.score >= kth
        for name in ("combo", "cell", "rows", "sums", "squares", "score", "p_value"):
            setattr(found, name, getattr(found, name)[keep])


def _is_identity(matrix: np.ndarray) -> bool:
    return matrix.shape[0] == matrix.shape[1] and bool(np.array_equal(matrix, np.eye(matrix.shape[0])))


def _extend(cells: np.ndarray, memberships: Sequence[np.ndarray | None]) -> np.ndarray:
    """Cell statistics → predicate statistics: multiply by each membership matrix along its axis."""
    out = cells
    for axis, matrix in enumerate(memberships):
        if matrix is not None:
            out = np.moveaxis(np.tensordot(matrix, out, axes=([1], [axis])), 0, axis)
    return out


def search(current: CodedRows, memberships: Sequence[np.ndarray], settings: SearchSettings,
           previous: CodedRows | None = None, progress: Progress | None = None) -> Candidates:
    """Enumerate, count and (when ``settings.tested``) test every slice of the coded rows.

    ``memberships[f]`` is feature ``f``'s predicates × codes 0/1 matrix. With ``previous`` the
    candidates are tested for an excess rise from ``previous`` to ``current``. Tested mode keeps the
    candidates with p ≤ ``settings.fdr`` (and counts every test in ``tested``); untested mode keeps
    SliceLine's top-K by score, pruning combinations by SliceLine's score upper bound.
    """
    return _Lattice(current, memberships, settings, previous).run(progress)


def predicate_indices(found: Candidates, i: int, grid: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Feature indices and predicate indices of candidate ``i`` (``grid[f]`` = predicates of f)."""
    combo = found.combos[int(found.combo[i])]
    shape = tuple(grid[f] for f in combo)
    cell = np.unravel_index(int(found.cell[i]), shape)
    return combo, tuple(int(c) for c in cell)


# ================================================================= selection

@dataclass(frozen=True)
class Chosen:
    """One selected candidate: its position in ``Candidates`` and its q-value."""

    index: int
    q_value: float


class _Selector:
    """BH, the evidence gate, and the walk down the ranking that keeps distinct, productive slices.

    A slice ``B`` is *productive* when, for every eligible generalization ``A ⊋ B`` (a condition
    dropped, or one range widened), the rows of ``B`` are significantly worse than the rest of
    ``A`` (p ≤ fdr / m, Bonferroni over the m tested candidates); otherwise ``B`` only inherits
    ``A``'s problem, usually with a chance-lucky higher error on fewer rows, and ``A`` is the better
    answer. Without this, sub-slices of a weak segment outrank the segment itself.

    A slice that overlaps already chosen slices is shown only if its rows outside them are still
    significantly worse than the other rows outside them (same level): otherwise it is a chosen
    slice again, diluted ("age ≥ 50 and color = green" after "age ≥ 60 and color = green"). The
    row masks this needs are computed only for the candidates that reach this step.

    Candidates are identified by the integer key ``combination · 2⁴⁰ + cell``; the eligible keys
    are sorted once so that generalizations are looked up with ``np.searchsorted``.
    """

    def __init__(self, found: Candidates, current: CodedRows, previous: CodedRows | None,
                 memberships: Sequence[np.ndarray], settings: SearchSettings) -> None:
        self.found, self.current, self.previous, self.settings = found, current, previous, settings
        self.grid = [m.shape[0] for m in memberships]
        self.lookups = [m > 0 for m in memberships]
        self.wider = [_csr(_strict_supersets(m)) for m in memberships]
        self.combo_ids = {combo: k for k, combo in enumerate(found.combos)}
        self.covered = np.zeros(current.rows, dtype=bool)
        self.covered_stats = (0.0, 0.0, 0.0)
        if previous is not None:
            self.covered_before = np.zeros(previous.rows, dtype=bool)
            self.covered_before_stats = (0.0, 0.0, 0.0)

    def run(self) -> tuple[list[Chosen], int, float | None]:
        found, s = self.found, self.settings
        if not len(found):
            return [], 0, None
        tested = max(found.tested, len(found))
        q = benjamini_hochberg(found.p_value, total=tested)
        smallest = float(q.min())
        if smallest > s.evidence_gate:
            return [], 0, smallest
        eligible = np.flatnonzero(q <= s.fdr)
        significant = len(eligible)
        keys = found.combo[eligible] * _KEY_STRIDE + found.cell[eligible]
        if len(keys) > 1 and not bool(np.all(keys[1:] > keys[:-1])):
            # The search appends combinations in order and cells in order, so this is rare.
            by_key = np.argsort(keys)
            keys, eligible = keys[by_key], eligible[by_key]
        self.sorted_keys, self.sorted_index = keys, eligible
        self.productive_level = s.fdr / tested
        if len(eligible) > MAX_RANKED_SCAN:       # only the best scores can be reached
            best = np.argpartition(-found.score[eligible], MAX_RANKED_SCAN - 1)[:MAX_RANKED_SCAN]
            eligible = np.sort(eligible[best])
        level = self.levels[found.combo[eligible]]
        order = eligible[np.lexsort((-found.rows[eligible], level, -found.score[eligible]))]
        order = order[self._productive(order)]
        chosen: list[Chosen] = []
        shapes: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
        masks: list[np.ndarray | None] = []
        for i in order.tolist():
            if len(chosen) >= s.top:
                break
            combo, preds = predicate_indices(found, i, self.grid)
            if self._explained(i, combo, preds, chosen, shapes):
                continue
            i = self._simplest_equivalent(i, combo, preds)
            if any(c.index == i for c in chosen):
                continue
            combo, preds = predicate_indices(found, i, self.grid)
            if self._overlaps(i, combo, preds, chosen, shapes, masks):
                continue
            chosen.append(Chosen(i, float(q[i])))
            shapes.append((combo, preds))
            masks.append(None)
            self._cover(combo, preds)
        return chosen, significant, smallest

    @property
    def levels(self) -> np.ndarray:
        return np.array([len(c) for c in self.found.combos] or [0])

    def _key(self, combo: tuple[int, ...], preds: tuple[int, ...]) -> int | None:
        combo_id = self.combo_ids.get(combo)
        if combo_id is None:
            return None
        cell = 0
        for f, p in zip(combo, preds):
            cell = cell * self.grid[f] + p
        key = combo_id * _KEY_STRIDE + cell
        position = int(np.searchsorted(self.sorted_keys, key))
        if position < len(self.sorted_keys) and int(self.sorted_keys[position]) == key:
            return int(self.sorted_index[position])
        return None

    def _productive(self, order: np.ndarray) -> np.ndarray:
        """For each candidate in ``order``: productive against all its eligible generalizations."""
        f = self.found
        inner, outer = [], []
        for combo_id in np.unique(f.combo[order]).tolist():
            members = order[f.combo[order] == combo_id]
            combo = f.combos[combo_id]
            preds = np.unravel_index(f.cell[members], tuple(self.grid[g] for g in combo))
            for owners, keys in self._general_keys(combo_id, combo, members, preds):
                position = np.minimum(np.searchsorted(self.sorted_keys, keys), len(self.sorted_keys) - 1)
                hit = self.sorted_keys[position] == keys
                inner.append(owners[hit])
                outer.append(self.sorted_index[position[hit]])
        worst = np.zeros(len(f))
        if inner:
            i, j = np.concatenate(inner), np.concatenate(outer)
            inside = (f.rows[i], f.sums[i], f.squares[i])
            around = (f.rows[j], f.sums[j], f.squares[j])
            if f.reference is None:
                p = weak_p_values(*inside, around, self.current.binary)
            else:
                ref = f.reference
                p = rise_p_values(inside, tuple(r[i] for r in ref), around, tuple(r[j] for r in ref),
                                  self.current.binary)
            np.maximum.at(worst, i, p)
        return worst[order] <= self.productive_level

    def _general_keys(self, combo_id, combo, members, preds):
        """(candidate, key) arrays of every generalization: conditions dropped or one range widened."""
        for size in range(1, len(combo)):
            for positions in itertools.combinations(range(len(combo)), size):
                sub = tuple(combo[k] for k in positions)
                sub_id = self.combo_ids.get(sub)
                if sub_id is None:
                    continue
                cell = np.ravel_multi_index(tuple(preds[k] for k in positions),
                                            tuple(self.grid[g] for g in sub))
                yield members, sub_id * _KEY_STRIDE + cell
        shape = tuple(self.grid[g] for g in combo)
        for axis, feature in enumerate(combo):
            indptr, indices = self.wider[feature]
            counts = indptr[preds[axis] + 1] - indptr[preds[axis]]
            if not counts.any():
                continue
            owner = np.repeat(np.arange(len(members)), counts)
            offsets = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
            widened = indices[np.repeat(indptr[preds[axis]], counts) + offsets]
            new_preds = tuple(widened if k == axis else preds[k][owner] for k in range(len(combo)))
            yield members[owner], combo_id * _KEY_STRIDE + np.ravel_multi_index(new_preds, shape)

    def _explained(self, i: int, combo, preds, chosen: list[Chosen], shapes) -> bool:
        """Whether the slice overlaps chosen slices and is not significantly worse without them."""
        if not chosen:
            return False
        mask = self._mask(combo, preds, self.current)
        rest_now = mask & ~self.covered
        if int(np.count_nonzero(rest_now)) == int(self.found.rows[i]):
            return False                                   # no overlap at all
        now = _masked_stats(self.current, rest_now)
        if now[0] < self.settings.min_rows:
            return True
        totals = tuple(t - c for t, c in zip(self.current.totals, self.covered_stats))
        if self.previous is None:
            p = weak_p_values(*(np.array([v]) for v in now), totals, self.current.binary)
        else:
            before_mask = self._mask(combo, preds, self.previous) & ~self.covered_before
            before = _masked_stats(self.previous, before_mask)
            before_totals = tuple(t - c for t, c in zip(self.previous.totals,
                                                         self.covered_before_stats))
            p = rise_p_values(tuple(np.array([v]) for v in now), tuple(np.array([v]) for v in before),
                              totals, before_totals, self.current.binary)
        return bool(p[0] > self.productive_level)

    def _cover(self, combo, preds) -> None:
        """Add a chosen slice's rows to the covered rows of both windows."""
        self.covered |= self._mask(combo, preds, self.current)
        self.covered_stats = _masked_stats(self.current, self.covered)
        if self.previous is not None:
            self.covered_before |= self._mask(combo, preds, self.previous)
            self.covered_before_stats = _masked_stats(self.previous, self.covered_before)

    def _simplest_equivalent(self, i: int, combo, preds) -> int:
        """The simplest eligible sub-conjunction holding ≥ 90 % of the same rows, else ``i``."""
        rows = self.found.rows
        for size in range(1, len(combo)):
            best = None
            for positions in itertools.combinations(range(len(combo)), size):
                j = self._key(tuple(combo[k] for k in positions), tuple(preds[k] for k in positions))
                if j is not None and rows[i] >= DUPLICATE_JACCARD * rows[j]:
                    if best is None or self.found.score[j] > self.found.score[best]:
                        best = j
            if best is not None:
                return best
        return i

    def _mask(self, combo, preds, rows: CodedRows | None = None) -> np.ndarray:
        rows = rows or self.current
        mask = None
        for f, p in zip(combo, preds):
            member = self.lookups[f][p][rows.codes[f]]
            mask = member if mask is None else mask & member
        return mask

    def _overlaps(self, i, combo, preds, chosen: list[Chosen], shapes, masks: list) -> bool:
        """Whether the slice's rows overlap a chosen slice's with Jaccard ≥ 0.9."""
        rows = float(self.found.rows[i])
        mask = None
        for k, other in enumerate(chosen):
            other_rows = float(self.found.rows[other.index])
            if min(rows, other_rows) < DUPLICATE_JACCARD * max(rows, other_rows):
                continue        # Jaccard ≤ smaller / larger < 0.9: no need to look at rows
            if mask is None:
                mask = self._mask(combo, preds)
            if masks[k] is None:
                masks[k] = self._mask(*shapes[k])
            both = np.count_nonzero(mask & masks[k])
            if both >= DUPLICATE_JACCARD * (rows + other_rows - both):
                return True
        return False


_KEY_STRIDE = 1 << 40


def _masked_stats(rows: CodedRows, mask: np.ndarray) -> tuple[float, float, float]:
    """Rows, error sum and squared-error sum of the masked rows."""
    errors = rows.errors[mask]
    total = float(errors.sum())
    return float(errors.shape[0]), total, total if rows.binary else float(np.dot(errors, errors))


def _csr(rows: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """A ragged list of index arrays as (indptr, indices)."""
    indptr = np.zeros(len(rows) + 1, dtype=np.int64)
    indptr[1:] = np.cumsum([len(r) for r in rows])
    indices = np.concatenate(rows).astype(np.int64) if rows else np.empty(0, dtype=np.int64)
    return indptr, indices


def _strict_supersets(membership: np.ndarray) -> list[np.ndarray]:
    """For each predicate, the predicates of the same feature whose codes strictly contain its codes."""
    m = (membership > 0).astype(np.int64)
    sizes = m.sum(axis=1)
    shared = m @ m.T
    contains = (shared == sizes[:, None]) & (sizes[None, :] > sizes[:, None])
    return [np.flatnonzero(row) for row in contains]


def select(found: Candidates, current: CodedRows, memberships: Sequence[np.ndarray],
           settings: SearchSettings, previous: CodedRows | None = None
           ) -> tuple[list[Chosen], int, float | None]:
    """BH over all tested candidates, the evidence gate, ranking and redundancy removal.

    Returns the chosen candidates (best first), how many passed BH, and the smallest q-value.
    """
    return _Selector(found, current, previous, memberships, settings).run()


# ================================================================= from the log to coded rows

_COUNTS_TEMPLATE = ("SELECT count(*), count({target}), count({score}) FROM {log} WHERE {where}")
_CATEGORIES_TEMPLATE = ("SELECT {columns}, {groupings}, count(*) AS __rows FROM ({rows}) AS t "
                        "GROUP BY GROUPING SETS ({sets})")
# The sample is drawn from the filtered rows (DuckDB applies USING SAMPLE before WHERE).
_EDGES_TEMPLATE = ("SELECT {quantiles} FROM (SELECT * FROM (SELECT {columns} FROM {log} "
                   "WHERE {where}) USING SAMPLE reservoir({sample} ROWS) REPEATABLE (7)) AS s")
_QUANTILE_TEMPLATE = "quantile_disc({c}, [{positions}]), min({c})"
_ROWS_TEMPLATE = ("SELECT * FROM (SELECT {columns}, CAST({error} AS FLOAT) AS __error FROM {log} "
                  "WHERE {where}) AS t WHERE isfinite(__error)")


@dataclass(frozen=True)
class _ErrorPlan:
    metric: str
    source: str              # "labels" or "estimate"
    expression: Fragment
    description: str


def find_slices(view, window: Window | None = None, segment: Segment = (), *,
                metric: str | None = None, top: int = DEFAULT_TOP,
                max_level: int = DEFAULT_MAX_LEVEL, min_support: float = DEFAULT_MIN_SUPPORT,
                alpha: float = DEFAULT_ALPHA, fdr: float = DEFAULT_FDR,
                evidence_gate: float = DEFAULT_EVIDENCE_GATE, bins: int = DEFAULT_BINS,
                ranges: bool = True, refine: bool = True, features: Sequence[str] | None = None,
                error_source: str = "auto", progress: Progress | None = None) -> SliceReport:
    """Weak slices of ``window`` (default: the last 7 days) within ``segment``.

    ``min_support`` is a share of the window's rows when below 1, else a row count (never below
    ``MIN_SLICE_ROWS``). See the module docstring for the method; data conditions that prevent the
    search give a report with a ``reason`` and no slices.
    """
    return _run(view, window, segment, None, "weak", locals())


def find_degraded_slices(view, window: Window | None = None, compare_to: Window | None = None,
                         segment: Segment = (), *, metric: str | None = None,
                         top: int = DEFAULT_TOP, max_level: int = DEFAULT_MAX_LEVEL,
                         min_support: float = DEFAULT_MIN_SUPPORT, alpha: float = DEFAULT_ALPHA,
                         fdr: float = DEFAULT_FDR, evidence_gate: float = DEFAULT_EVIDENCE_GATE,
                         bins: int = DEFAULT_BINS, ranges: bool = True, refine: bool = True,
                         features: Sequence[str] | None = None, error_source: str = "auto",
                         progress: Progress | None = None) -> SliceReport:
    """Slices whose error rose from ``compare_to`` (default: the reference window) to ``window``
    by more than the rest of the rows' error rose (difference in differences)."""
    return _run(view, window, segment, compare_to, "degraded", locals())


def _check_options(options: dict[str, Any]) -> None:
    if not 1 <= int(options["max_level"]) <= MAX_LEVEL_LIMIT:
        raise MlmonError(f"max level {options['max_level']}: choose 1 to {MAX_LEVEL_LIMIT} conditions")
    if int(options["top"]) < 1:
        raise MlmonError(f"top {options['top']}: ask for at least one slice")
    support = float(options["min_support"])
    if not support > 0 or not math.isfinite(support):
        raise MlmonError(f"min support {options['min_support']}: give a share in (0, 1) or a row count")
    if not 0 < float(options["alpha"]) <= 1:
        raise MlmonError(f"alpha {options['alpha']}: must be in (0, 1]")
    if not 0 < float(options["fdr"]) < 1:
        raise MlmonError(f"fdr {options['fdr']}: must be in (0, 1)")
    if not 0 < float(options["evidence_gate"]) <= 1:
        raise MlmonError(f"evidence gate {options['evidence_gate']}: must be in (0, 1]")
    if not 2 <= int(options["bins"]) <= MAX_BINS:
        raise MlmonError(f"bins {options['bins']}: choose 2 to {MAX_BINS}")
    if options["error_source"] not in ERROR_SOURCES:
        raise MlmonError(f"error source {options['error_source']!r}: one of {', '.join(ERROR_SOURCES)}")


def _run(view, window, segment, compare_to, mode: str, options: dict[str, Any]) -> SliceReport:
    from mlmon_core.windows import default_window, reference_window

    _check_options(options)
    progress = options.get("progress")
    tell = progress or (lambda fraction, message: None)
    window = window or default_window(view)
    if mode == "degraded" and compare_to is None:
        compare_to = reference_window(view)
    segment = tuple(segment or ())
    metric = _resolve_metric(view, options["metric"])
    features = _feature_list(view, options["features"])
    settings_json = {k: options[k] for k in ("top", "max_level", "min_support", "alpha", "fdr",
                                             "evidence_gate", "bins", "ranges", "refine", "error_source")}
    report = dict(mode=mode, metric=metric, metric_description=METRIC_WORDS[metric],
                  window=window, compare_to=compare_to, segment=segment, rows=0, overall=None,
                  settings=settings_json)
    tell(0.0, "checking labels and scores")
    plan, why = _error_plan(view, metric, window, compare_to, segment, options["error_source"])
    if plan is None:
        return SliceReport(**report, reason=why)
    report["metric_description"] = plan.description
    if not features:
        return SliceReport(**report, reason="not computable because the log has no numerical or "
                                            "categorical feature columns to slice on")
    rows = _count_rows(view, plan, window, segment)
    report["rows"] = rows
    min_rows = _min_rows(options["min_support"], rows)
    if rows == 0:
        return SliceReport(**report, reason=f"not computable because the window {window} has no "
                                            f"rows with a {plan.description} value")
    if rows < 2 * min_rows:
        return SliceReport(**report, reason=(
            f"not computable because the window has {rows:,} rows with an error value: a slice and "
            f"the rest each need at least {min_rows:,} (minimum support), so at least "
            f"{2 * min_rows:,} rows are needed; lower --min-support or widen the window"))
    ref_rows, min_ref_rows = None, None
    if compare_to is not None:
        ref_rows = _count_rows(view, plan, compare_to, segment)
        report["reference_rows"] = ref_rows
        min_ref_rows = _min_rows(options["min_support"], ref_rows)
        if ref_rows < 2 * min_ref_rows:
            return SliceReport(**report, reason=(
                f"not computable because the comparison window {compare_to} has {ref_rows:,} rows "
                f"with an error value; at least {2 * min_ref_rows:,} are needed"))
    tell(0.05, "binning features")
    codings = _codings(view, features, plan, window, segment, min_rows, int(options["bins"]),
                       compare_to)
    tell(0.1, "reading the coded rows")
    current = _coded_rows(view, codings, plan, window, segment)
    previous = _coded_rows(view, codings, plan, compare_to, segment) if compare_to else None
    n, total, _ = current.totals
    report["rows"] = current.rows
    report["overall"] = total / n if n else None
    if previous is not None:
        report["reference_rows"] = previous.rows
        report["reference_overall"] = previous.totals[1] / previous.rows if previous.rows else None
    if total <= 0:
        return SliceReport(**report, reason=(
            f"nothing to find: the {plan.description} is 0 on all {current.rows:,} rows of the "
            f"window, so no slice is worse than the rest"))
    if all(current.occupied_codes(f) <= 1 for f in range(len(codings))):
        return SliceReport(**report, reason=(
            "nothing to find: every feature puts all rows of the window in a single bin (constant "
            "or missing columns), so no slice differs from the whole window"))
    predicates = [c.predicates(bool(options["ranges"])) for c in codings]
    memberships = [membership_matrix(p, c.n_codes) for p, c in zip(predicates, codings)]
    settings = SearchSettings(max_level=int(options["max_level"]), min_rows=min_rows,
                              min_reference_rows=min_ref_rows or MIN_SLICE_ROWS,
                              alpha=float(options["alpha"]), fdr=float(options["fdr"]),
                              evidence_gate=float(options["evidence_gate"]), top=int(options["top"]))

    def search_progress(fraction: float, message: str) -> None:
        tell(0.15 + 0.8 * fraction, message)

    found = search(current, memberships, settings, previous, search_progress)
    report["candidates_tested"] = found.tested
    tell(0.95, "ranking")
    chosen, significant, smallest_q = select(found, current, memberships, settings, previous)
    report["significant"] = significant if chosen else 0
    refiner = _Refiner(view, plan, window, compare_to, segment, codings, current, previous,
                       settings) if options["refine"] else None
    slices = [_slice_of(found, c, predicates, memberships, segment, current, previous,
                        plan, mode, refiner) for c in chosen]
    if refiner is not None:
        slices = refiner.distinct(slices)
    slices = tuple(slices)
    reason = None
    if found.tested == 0:
        reason = (f"no candidate slice has at least {min_rows:,} rows inside and outside it "
                  "(minimum support); lower --min-support or widen the window")
    elif not slices:
        what = ("has a significantly higher error than the rest" if mode == "weak"
                else "got significantly worse than the rest")
        strongest = f" (strongest evidence q = {smallest_q:.3g})" if smallest_q is not None else ""
        reason = (f"no slice {what} among {found.tested:,} candidates tested"
                  f"{strongest}: reporting needs q ≤ {settings.evidence_gate:g} for the strongest "
                  f"slice and q ≤ {settings.fdr:g} for each")
    tell(1.0, "done")
    return SliceReport(**report, slices=slices, reason=reason)


def _slice_of(found: Candidates, chosen: Chosen, predicates, memberships, segment, current,
              previous, plan: _ErrorPlan, mode: str, refiner: "_Refiner | None" = None) -> Slice:
    grid = [m.shape[0] for m in memberships]
    combo, preds = predicate_indices(found, chosen.index, grid)
    chosen_predicates = [predicates[f][p] for f, p in zip(combo, preds)]
    i = chosen.index
    now = (float(found.rows[i]), float(found.sums[i]), float(found.squares[i]))
    before = tuple(float(r[i]) for r in found.reference) if found.reference is not None else None
    p_value, score = float(found.p_value[i]), float(found.score[i])
    if refiner is not None:
        chosen_predicates, now, before, p_value, score = refiner.refine(
            [refiner.codings[f] for f in combo], chosen_predicates, now, before, p_value, score)
    conditions = tuple(segment) + tuple(c for p in chosen_predicates for c in p.conditions)
    where = " and ".join(p.text for p in chosen_predicates)
    rows, sums = now[0], now[1]
    total_rows, total_sum, _ = current.totals
    value = sums / rows
    rest = (total_sum - sums) / (total_rows - rows)
    q_text = "q<0.001" if chosen.q_value < 0.001 else f"q={chosen.q_value:.3f}"
    words = plan.description
    common = dict(conditions=conditions, rows=int(rows), value=value, score=score,
                  p_value=p_value, q_value=chosen.q_value, level=len(combo), complement_value=rest)
    if mode == "weak":
        description = (f"{where}: {words} {_fmt(value)} vs {_fmt(rest)} elsewhere "
                       f"(n={int(rows):,}, {q_text})")
        return Slice(**common, reference_value=rest, description=description)
    ref_rows, ref_sums = before[0], before[1]
    ref_total_rows, ref_total_sum, _ = previous.totals
    before = ref_sums / ref_rows
    rest_before = (ref_total_sum - ref_sums) / (ref_total_rows - ref_rows)
    excess = (value - before) - (rest - rest_before)
    description = (f"{where}: {words} rose from {_fmt(before)} to {_fmt(value)} (elsewhere "
                   f"{_fmt(rest_before)} → {_fmt(rest)}; n={int(rows):,}, {q_text})")
    return Slice(**common, reference_value=before, description=description,
                 reference_rows=int(ref_rows), complement_reference_value=rest_before,
                 excess_rise=excess)


def _min_rows(min_support: float, rows: int) -> int:
    support = float(min_support)
    wanted = math.ceil(support * rows) if support < 1 else int(math.ceil(support))
    return max(wanted, MIN_SLICE_ROWS)


def _resolve_metric(view, metric: str | None) -> str:
    task = view.task
    if metric is None:
        return "abs_error" if task == "regression" else "error_rate"
    if metric not in METRICS:
        raise MlmonError(f"metric {metric!r} is not one of {', '.join(METRICS)}")
    if task == "regression" and metric in ("error_rate", "log_loss"):
        raise MlmonError(f"metric {metric} is for classifiers; this log's task is regression "
                         "(use abs_error or squared_error)")
    if task != "regression" and metric in ("abs_error", "squared_error"):
        raise MlmonError(f"metric {metric} is for regression; this log's task is {task} "
                         "(use error_rate or log_loss)")
    if task == "multiclass" and metric == "log_loss":
        raise MlmonError("metric log_loss needs one probability per class; this multiclass log has "
                         "a single score column (use error_rate)")
    return metric


def _feature_list(view, features: Sequence[str] | None) -> list[str]:
    names = list(features) if features is not None else list(view.roles.features)
    for name in names:
        if name not in view.columns:
            raise MlmonError(f"feature {name!r} is not a column of the log")
    return [n for n in names if view.kind(n) in ("numerical", "categorical", "boolean")]


def _error_plan(view, metric, window, compare_to, segment, source) -> tuple[_ErrorPlan | None, str | None]:
    """Which error expression to use, from labels or from the score, or why none can be."""
    roles = view.roles
    target = Ident(roles.target) if roles.target else None
    score = Ident(roles.score) if roles.score else None
    windows = [window] + ([compare_to] if compare_to is not None else [])
    counts = []
    for w in windows:
        query = sql.render(_COUNTS_TEMPLATE, log=view.relation, where=view.where(w, segment),
                           target=target or Fragment("NULL"), score=score or Fragment("NULL"))
        counts.append(view.fetchall(query)[0])
    for name, w, c in zip(("window", "comparison window"), windows, counts):
        if c[0] == 0:
            return None, f"not computable because the {name} {w} has no rows"
    labeled = all(c[1] >= 2 * MIN_SLICE_ROWS for c in counts)
    scored = all(c[2] > 0 for c in counts)
    if source in ("auto", "labels") and labeled:
        expression = _label_error(view, metric)
        if expression is not None:
            return _ErrorPlan(metric, "labels", expression, METRIC_WORDS[metric]), None
        if source == "labels":
            return None, (f"not computable because the {metric} needs a prediction column "
                          "(set [columns] prediction)")
    if source == "labels":
        which = "window" if counts[0][1] < 2 * MIN_SLICE_ROWS else "comparison window"
        return None, (f"not computable because the {which} has too few labeled rows "
                      f"({min(c[1] for c in counts):,})")
    if not scored or score is None:
        why = "no labeled rows" if not labeled else "no labels"
        return None, (f"not computable because the window has {why} and the log has no score "
                      "column to estimate the error from (set [columns] score or add labels)")
    expression = _estimated_error(view, metric)
    if expression is None:
        return None, (f"not computable because the {metric} of a {view.task} model cannot be "
                      "estimated without labels, and the window has too few labeled rows")
    words = ("estimated " + METRIC_WORDS[metric] + " (expected from the uncalibrated score, "
             "labels missing)")
    return _ErrorPlan(metric, "estimate", expression, words), None


def _predicted_positive(view) -> Fragment | None:
    roles = view.roles
    if roles.prediction:
        return sql.render("({p} = {positive})", p=Ident(roles.prediction),
                          positive=sql.param(view.positive_label))
    if roles.score:
        return sql.render("({s} >= {threshold})", s=Ident(roles.score),
                          threshold=float(view.config.model.threshold))
    return None


def _label_error(view, metric: str) -> Fragment | None:
    roles = view.roles
    target = Ident(roles.target)
    if metric == "error_rate":
        if roles.prediction:
            return sql.render("CAST({p} <> {t} AS DOUBLE)", p=Ident(roles.prediction), t=target)
        if view.task == "binary" and roles.score:
            return sql.render("CAST({predicted} <> ({t} = {positive}) AS DOUBLE)",
                              predicted=_predicted_positive(view), t=target,
                              positive=sql.param(view.positive_label))
        return None
    if metric == "log_loss":
        if not roles.score:
            return None
        return sql.render(
            "-ln(CASE WHEN {t} = {positive} THEN greatest(least({s}, {high}), {low}) "
            "ELSE greatest(least(1 - {s}, {high}), {low}) END)",
            t=target, positive=sql.param(view.positive_label), s=Ident(roles.score),
            high=1 - PROBABILITY_CLIP, low=PROBABILITY_CLIP)
    if not roles.prediction:
        return None
    difference = sql.render("(CAST({p} AS DOUBLE) - CAST({t} AS DOUBLE))",
                            p=Ident(roles.prediction), t=target)
    if metric == "abs_error":
        return sql.render("abs({d})", d=difference)
    return sql.render("({d} * {d})", d=difference)


def _estimated_error(view, metric: str) -> Fragment | None:
    roles = view.roles
    if not roles.score or view.task == "regression":
        return None
    p = sql.render("greatest(least(CAST({s} AS DOUBLE), {high}), {low})", s=Ident(roles.score),
                   high=1 - PROBABILITY_CLIP, low=PROBABILITY_CLIP)
    if view.task == "multiclass":
        return sql.render("(1 - {p})", p=p) if metric == "error_rate" else None
    if metric == "error_rate":
        predicted = _predicted_positive(view)
        return sql.render("CASE WHEN {predicted} THEN 1 - {p} ELSE {p} END", predicted=predicted, p=p)
    return sql.render("-({p} * ln({p}) + (1 - {p}) * ln(1 - {p}))", p=p)


def _error_rows(view, plan: _ErrorPlan, window, segment, columns: Fragment) -> Fragment:
    return sql.render(_ROWS_TEMPLATE, columns=columns, error=plan.expression, log=view.relation,
                      where=view.where(window, segment))


def _labeled_count(view, plan: _ErrorPlan, window, conditions) -> int:
    """Rows with an error value in the window that satisfy the conditions."""
    return _count_rows(view, plan, window, tuple(conditions))


def _count_rows(view, plan: _ErrorPlan, window, segment) -> int:
    rows = _error_rows(view, plan, window, segment, Fragment("1 AS __one"))
    return int(view.fetchall(sql.render("SELECT count(*) FROM ({rows}) AS r", rows=rows))[0][0])


def _codings(view, features: list[str], plan: _ErrorPlan, window, segment, min_rows: int,
             bins: int, reference: Window | None) -> list[FeatureCoding]:
    """Edges for numerical features (reference quantiles) and kept categories for the others."""
    from mlmon_core.windows import reference_window

    numerical = [f for f in features if view.kind(f) == "numerical"]
    categorical = [f for f in features if f not in numerical]
    edges = _edges(view, numerical, reference or reference_window(view), window, segment, bins)
    categories = _frequent_categories(view, categorical, plan, window, segment, min_rows)
    types = view.column_types
    out = []
    for name in features:
        if name in edges:
            out.append(FeatureCoding(name, "numerical", types[name], edges=edges[name]))
        else:
            out.append(FeatureCoding(name, "categorical", types[name], categories=categories[name]))
    return out


def _edges(view, numerical: list[str], reference: Window, window: Window, segment,
           bins: int) -> dict[str, tuple[Any, ...]]:
    """Quantile edges of each numerical feature in the reference window (a fixed-seed sample of
    ``EDGE_SAMPLE_ROWS`` rows: bins need not be exact quantiles, and the cost stays flat at 10
    million rows), or in the analysis window for a feature the reference has no values of."""
    out: dict[str, tuple[Any, ...]] = {}
    missing = list(numerical)
    for w in (reference, window):
        if not missing:
            break
        found = _sample_edges(view, missing, w, segment, bins)
        out.update({name: edges for name, edges in found.items() if edges})
        missing = [name for name in missing if name not in out]
    out.update({name: () for name in missing})
    return out


def _sample_edges(view, columns: list[str], window: Window, segment, bins: int) -> dict[str, tuple]:
    positions = sql.join([sql.render("{p}", p=round(i / bins, 12)) for i in range(1, bins)])
    quantiles = sql.join([sql.render(_QUANTILE_TEMPLATE, c=Ident(c), positions=positions)
                          for c in columns])
    query = sql.render(_EDGES_TEMPLATE, quantiles=quantiles, log=view.relation,
                       columns=sql.join([sql.render("{c}", c=Ident(c)) for c in columns]),
                       where=view.where(window, segment), sample=EDGE_SAMPLE_ROWS)
    row = view.fetchall(query)[0]
    out = {}
    for i, name in enumerate(columns):
        edges, low = row[2 * i], row[2 * i + 1]
        # An edge at the minimum would leave an empty first bin: "x < min" holds nothing there.
        kept = [v for v in _finite_values(edges) if low is None or float(v) > float(low)]
        out[name] = tuple(_plain_number(v) for v in sorted(set(kept)))
    return out


def _finite_values(values) -> list[Any]:
    out = []
    for v in values or ():
        if v is None:
            continue
        number = float(v)
        if math.isfinite(number):
            out.append(v)
    return out


def _plain_number(value: Any) -> Any:
    if isinstance(value, (bool, int, float)):
        return value
    if hasattr(value, "item"):
        return value.item()
    number = float(value)             # Decimal and the like
    return int(number) if number.is_integer() else number


def _frequent_categories(view, categorical: list[str], plan: _ErrorPlan, window, segment,
                         min_rows: int) -> dict[str, tuple[Any, ...]]:
    if not categorical:
        return {}
    columns = sql.join([sql.render("{c}", c=Ident(c)) for c in categorical])
    rows = _error_rows(view, plan, window, segment, columns)
    groupings = sql.join([sql.render("grouping({c})", c=Ident(c)) for c in categorical])
    sets = sql.join([sql.render("({c})", c=Ident(c)) for c in categorical])
    query = sql.render(_CATEGORIES_TEMPLATE, columns=columns, groupings=groupings, rows=rows, sets=sets)
    found: dict[str, list[tuple[int, Any]]] = {c: [] for c in categorical}
    k = len(categorical)
    for record in view.fetchall(query):
        values, flags, count = record[:k], record[k:2 * k], int(record[-1])
        for name, value, flag in zip(categorical, values, flags):
            if flag == 0 and value is not None and count >= min_rows:
                found[name].append((count, value))
    out = {}
    for name, pairs in found.items():
        pairs.sort(key=lambda pair: (-pair[0], str(pair[1])))
        out[name] = tuple(_plain_number(v) if not isinstance(v, str) else v
                          for _, v in pairs[:MAX_CATEGORIES])
    return out


def _coded_rows(view, codings: list[FeatureCoding], plan: _ErrorPlan, window, segment) -> CodedRows:
    columns = sql.join([sql.render("{code} AS {alias}", code=c.code_sql(), alias=Ident(f"__c{i}"))
                        for i, c in enumerate(codings)])
    arrays = view.execute(_error_rows(view, plan, window, segment, columns)).fetchnumpy()
    rows = len(arrays["__error"])
    codes = np.empty((len(codings), rows), dtype=np.uint8)
    for i in range(len(codings)):
        codes[i] = np.asarray(arrays[f"__c{i}"], dtype=np.uint8)
    errors = np.asarray(arrays["__error"], dtype=np.float64)
    return CodedRows.from_arrays(codes, errors)


# ================================================================= boundary refinement

_VALUE_STATS_TEMPLATE = ("SELECT __x, count(*), sum(__error), sum(__error * __error) "
                         "FROM ({rows}) AS t GROUP BY __x ORDER BY __x")


class _Refiner:
    """Moves the bin edges of a reported slice's numerical conditions to where the evidence peaks.

    Quantile edges rarely fall on the threshold that defines a real segment ("age ≥ 60" between
    deciles 57 and 63). For each finite boundary of each numerical condition of a *reported* slice,
    one GROUP BY query returns the rows and error sums of every distinct value in the two
    neighbouring bins (other conditions held), and the boundary moves to the value that maximises
    the slice's test statistic (the same statistic as the search's). Only slices that already
    passed BH and the evidence gate are refined, so on feature-independent errors nothing is; the
    reported p-value and score are those of the refined slice, and the q-value stays that of the
    binned slice the search tested.
    """

    def __init__(self, view, plan, window, compare_to, segment, codings, current, previous,
                 settings: SearchSettings) -> None:
        self.view, self.plan, self.window, self.compare_to = view, plan, window, compare_to
        self.segment, self.codings, self.settings = tuple(segment), codings, settings
        self.totals = current.totals
        self.previous_totals = previous.totals if previous is not None else None
        self.binary = current.binary
        self.mean_error = self.totals[1] / self.totals[0]

    def refine(self, codings, predicates, now, before, p_value, score):
        predicates = list(predicates)
        bounds = [self._bounds(c, p) for c, p in zip(codings, predicates)]
        for axis, (coding, bound) in enumerate(zip(codings, bounds)):
            if bound is None:
                continue
            for side in ("lower", "upper"):
                lower, upper = bounds[axis]
                if (lower if side == "lower" else upper) is None:
                    continue
                others = tuple(c for k, p in enumerate(predicates) if k != axis for c in p.conditions)
                moved = self._move(coding, side, lower, upper, others, now, before)
                if moved is not None:
                    value, now, before = moved
                    bounds[axis] = (value, upper) if side == "lower" else (lower, value)
                    conditions, text = range_conditions(coding.name, coding.duck_type, *bounds[axis])
                    predicates[axis] = Predicate(coding.name, (), conditions, text)
        p_value, score = self._evidence(now, before)
        return predicates, now, before, p_value, score

    def distinct(self, found: list[Slice]) -> list[Slice]:
        """Drop a refined slice whose rows overlap an earlier one's with Jaccard ≥ 0.9."""
        kept: list[Slice] = []
        for candidate in found:
            duplicate = False
            for other in kept:
                small, large = sorted((candidate.rows, other.rows))
                if small < DUPLICATE_JACCARD * large:
                    continue
                both = _labeled_count(self.view, self.plan, self.window,
                                      candidate.conditions + other.conditions)
                if both >= DUPLICATE_JACCARD * (candidate.rows + other.rows - both):
                    duplicate = True
                    break
            if not duplicate:
                kept.append(candidate)
        return kept

    @staticmethod
    def _bounds(coding: FeatureCoding, predicate: Predicate):
        if coding.kind != "numerical" or not predicate.codes or 0 in predicate.codes:
            return None
        return coding.bounds(min(predicate.codes), max(predicate.codes))

    def _neighbours(self, coding: FeatureCoding, edge: Any) -> tuple[Any, Any]:
        """The edges just below and just above ``edge`` (None when open)."""
        edges = [float(e) for e in coding.edges]
        k = edges.index(float(edge))
        below = coding.edges[k - 1] if k >= 1 else None
        above = coding.edges[k + 1] if k + 1 < len(edges) else None
        return below, above

    def _move(self, coding, side, lower, upper, others, now, before):
        edge = lower if side == "lower" else upper
        below, above = self._neighbours(coding, edge)
        if side == "lower" and upper is not None and (above is None or float(above) > float(upper)):
            above = upper
        if side == "upper" and lower is not None and (below is None or float(below) < float(lower)):
            below = lower
        region = tuple(c for c in (
            Condition(coding.name, ">=", value=below) if below is not None else None,
            Condition(coding.name, "<", value=above) if above is not None else None) if c)
        tables = [self._values(self.window, others + region, coding.name)]
        if before is not None:
            tables.append(self._values(self.compare_to, others + region, coding.name))
        values = np.unique(np.concatenate([v for v, *_ in tables]))
        if len(values) < 2:
            return None
        candidates = values[np.isfinite(values)]
        stats_now = self._at(tables[0], values, candidates, float(edge), side, now)
        stats_before = (self._at(tables[1], values, candidates, float(edge), side, before)
                        if before is not None else None)
        strength, valid = self._strength(stats_now, stats_before)
        if not valid.any():
            return None
        best = int(np.argmax(np.where(valid, strength, -np.inf)))
        original = np.flatnonzero(candidates == float(edge))
        if len(original) and strength[original[0]] >= strength[best] - 1e-12:
            return None
        value = _plain_number(candidates[best])
        if _is_integer_type(coding.duck_type):
            value = int(value)
        pick = lambda stats: tuple(float(x[best]) for x in stats) if stats is not None else None
        return value, pick(stats_now), pick(stats_before)

    def _values(self, window, conditions, column):
        rows = _error_rows(self.view, self.plan, window, self.segment + conditions,
                           sql.render("{c} AS __x", c=Ident(column)))
        records = self.view.fetchall(sql.render(_VALUE_STATS_TEMPLATE, rows=rows))
        x = np.array([np.inf if r[0] is None or not math.isfinite(float(r[0])) else float(r[0])
                      for r in records])
        n = np.array([float(r[1]) for r in records])
        s = np.array([float(r[2] or 0) for r in records])
        q = np.array([float(r[3] or 0) for r in records])
        return x, n, s, q

    @staticmethod
    def _at(table, values, candidates, edge, side, stats):
        """The slice's statistics if its boundary on this feature moved to each candidate."""
        x, n, s, q = table
        out = []
        for column, total in zip((n, s, q), stats):
            if side == "lower":       # inside: x ≥ t; C(t) = sum of values ≥ t in the region
                suffix = np.concatenate([np.cumsum(column[::-1])[::-1], [0.0]])
                at = lambda v: suffix[np.searchsorted(x, v, side="left")]
            else:                     # inside: x < u; C(u) = sum of values < u in the region
                prefix = np.concatenate([[0.0], np.cumsum(column)])
                at = lambda v: prefix[np.searchsorted(x, v, side="left")]
            out.append(total - at(edge) + at(candidates))
        return tuple(out)

    def _strength(self, now, before):
        s = self.settings
        valid = (now[0] >= s.min_rows) & (self.totals[0] - now[0] >= s.min_rows)
        if before is None:
            return _weak_test(*now, self.totals, self.binary)[0], valid
        valid &= (before[0] >= s.min_reference_rows)
        valid &= (self.previous_totals[0] - before[0] >= s.min_reference_rows)
        return _rise_test(now, before, self.totals, self.previous_totals, self.binary)[0], valid

    def _evidence(self, now, before) -> tuple[float, float]:
        now_a = tuple(np.array([v]) for v in now)
        if before is None:
            p = weak_p_values(*now_a, self.totals, self.binary)
            score = sliceline_score(now_a[0], now_a[1], self.totals[0], self.mean_error,
                                    self.settings.alpha)
        else:
            before_a = tuple(np.array([v]) for v in before)
            p = rise_p_values(now_a, before_a, self.totals, self.previous_totals, self.binary)
            rise = excess_rise(now_a, before_a, self.totals, self.previous_totals)
            score = (self.settings.alpha * rise / self.mean_error
                     - (1 - self.settings.alpha) * (self.totals[0] / now_a[0] - 1))
        return float(p[0]), float(score[0])


# ================================================================= words

def _fmt(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def show_value(value: Any) -> str:
    """A bin edge or category as people read it (integers without decimals, large numbers grouped)."""
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return f"{value:,.6g}" if abs(value) >= 1000 else f"{value:.6g}"
    return str(value)


def _show_list(values: Sequence[Any], limit: int = 6) -> str:
    shown = ", ".join(show_value(v) for v in values[:limit])
    return shown + (f" and {len(values) - limit} more" if len(values) > limit else "")


# ================================================================= helpers for other modules
# The segment explorer (segments.py) reuses the slice finder's per-row errors and binning, so a
# breakdown cell and a found slice mean the same thing and open as the same rows.

_EVERY_ROW = _ErrorPlan("rows", "labels", Fragment("0"), "rows")


def error_plan(view, metric: str | None, window: Window | None, segment: Segment = (),
               source: str = "auto") -> tuple[Any, str | None]:
    """The per-row error of ``metric`` as the slice finder defines it, or None and why not.

    The plan has ``expression`` (SQL, a number per row; NULL where undefined), ``description``
    (plain words, saying when the error is estimated from the score) and ``source`` ("labels" or
    "estimate": without enough labels in the window, the expected error from the score).
    """
    if source not in ERROR_SOURCES:
        raise MlmonError(f"error source {source!r}: one of {', '.join(ERROR_SOURCES)}")
    return _error_plan(view, _resolve_metric(view, metric), window, None, tuple(segment or ()),
                       source)


def predicted_positive(view) -> Fragment | None:
    """SQL that is true where a binary model predicted the positive class (None without a
    prediction or score column)."""
    return _predicted_positive(view)


def feature_coding(view, feature: str, window: Window | None, segment: Segment = (), *,
                   reference: Window | None = None, bins: int = DEFAULT_BINS,
                   max_categories: int = MAX_CATEGORIES) -> FeatureCoding:
    """How the slice finder bins ``feature``: quantile edges of the reference window for a
    numerical one, else its ``max_categories`` most frequent values in the window (the rest share
    one "other" code). Nulls are always code 0."""
    if feature not in view.columns:
        raise MlmonError(f"feature {feature!r} is not a column of the log")
    if not 2 <= int(bins) <= MAX_BINS:
        raise MlmonError(f"bins {bins}: choose 2 to {MAX_BINS}")
    coding = _codings(view, [feature], _EVERY_ROW, window, tuple(segment or ()), 1, int(bins),
                      reference)[0]
    if coding.kind == "categorical":
        limit = max(1, min(int(max_categories), MAX_CATEGORIES))
        coding = FeatureCoding(coding.name, coding.kind, coding.duck_type,
                               categories=coding.categories[:limit])
    return coding
