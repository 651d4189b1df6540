"""The segment explorer: a segment against the rest of the rows, breakdowns of a metric by one or
two features, and the segment's share of traffic and quality over time.

A segment is data (a tuple of ``sql.Condition``); everything here is a pure function of a
``LogView``, a window, a segment and options, and every aggregate is one DuckDB statement: a
GROUP BY over an in-segment flag, a time bucket or feature codes, never a query per cell.

Segment vs rest
    ``segment_vs_rest`` runs ``metrics.compute_metrics`` three times (the segment, the rest of the
    window's rows, the whole window): every metric of the task with its CI (see ``metrics``). The
    *rest* is ``NOT coalesce(segment, FALSE)``, so a row the segment's conditions cannot decide (a
    null under ``age >= 60``) belongs to the rest, and segment + rest = overall. The difference
    segment − rest is tested with ``health.compare_metric`` (a z test from the two standard errors;
    the two sides are disjoint rows, hence independent). When the window has too few labels, the
    error estimated from the score (the slice finder's definition) is compared as well, and named
    "estimated".

Per-row metrics (breakdowns and trends)
    Breakdowns need metrics that are means of a per-row value, so a cell's value and its
    complement's follow from counts, sums and variances: error rate and accuracy (0/1 per row),
    log loss, absolute and squared error are the slice finder's error definitions
    (``slices.error_plan``), so a breakdown cell and a found slice agree; when the window has too
    few labels (fewer than 40 in the window and segment), the error is the *expected* error from
    the score, and the metric's description says "estimated". Also: actual and predicted positive
    rate, mean score, mean error (bias) and mean prediction. Rows whose value is null or not
    finite do not count in that metric's ``n`` (they still count in ``rows`` and ``share``).

Bins and cells
    Features are coded exactly as the slice finder codes them (``slices.feature_coding``):
    numerical features are cut at quantiles of the *reference* window (so the bins cannot adapt
    to the errors being compared, and stay put from one window to the next), nulls are a cell of
    their own, categorical features keep their most frequent values (``max_categories``; the rest
    share an "other" cell). Each cell carries the conditions that select exactly its rows, so it
    opens as a segment.

Statistics of a cell
    - Value and 95 % CI: Wilson score interval for 0/1 metrics; for means, the t interval
      ``mean ± t(n-1)·s/√n``.
    - Test of the cell against the *rest of the rows* (not against the overall value, which
      contains the cell): for 0/1 metrics the two-proportion z-test with the pooled proportion
      (identical to the chi-square test of the 2×2 table without continuity correction); for
      means Welch's t-test (Satterthwaite degrees of freedom). Two-sided p-values. The rest's
      variance comes from the whole's and the cell's (Chan's parallel-variance formula).
    - ``difference`` is cell − overall, as shown; ``difference_vs_rest`` is cell − rest.
    - Sort order (``SORT_BY``): by ``distance``, the near end of the 95 % CI of |cell − rest| (how
      far from the rest the cell is *at least*): it is the difference discounted by its
      uncertainty, so a tiny cell with a noisy extreme value does not outrank a large cell that is
      clearly off. Ties (distance 0) by |statistic|, then by size. Cells with fewer than
      ``min_rows`` rows with a value get no test and sort last.

Nothing here raises for data conditions (an empty window or segment, a segment holding every row,
no labels and no score, every row in one bin, no error anywhere): results carry ``reason`` or
``notes`` in plain words. Unknown columns, metrics or bucket names are ``MlmonError``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlmon_core import sql
from mlmon_core.config import Window
from mlmon_core.errors import FilterError, MlmonError
from mlmon_core.metrics import LEVEL, MetricValue, p_value_text, wilson_interval
from mlmon_core.slices import show_value
from mlmon_core.sql import Condition, Fragment, Ident, Segment

ROW_METRICS = {
    "binary": ("error_rate", "accuracy", "log_loss", "positive_rate", "predicted_positive_rate",
               "mean_score"),
    "multiclass": ("error_rate", "accuracy", "mean_score"),
    "regression": ("abs_error", "squared_error", "mean_error", "mean_prediction"),
}
METRIC_WORDS = {
    "error_rate": "error rate", "accuracy": "accuracy", "log_loss": "log loss",
    "positive_rate": "actual positive rate", "predicted_positive_rate": "predicted positive rate",
    "mean_score": "mean score", "abs_error": "mean absolute error",
    "squared_error": "mean squared error", "mean_error": "mean error (bias)",
    "mean_prediction": "mean prediction",
}
LOWER_IS_BETTER = {"error_rate", "log_loss", "abs_error", "squared_error"}
DEFAULT_BINS = 10
DEFAULT_BINS_2D = 5
DEFAULT_MAX_CATEGORIES = 30
DEFAULT_MAX_CATEGORIES_2D = 12
MIN_CELL_ROWS = 20
DEFAULT_ROW_LIMIT = 5000
MAX_ROW_LIMIT = 100_000
SORT_BY = ("distance: the near end of the 95% CI of |cell − rest| (the difference discounted by "
           "its uncertainty), then |statistic|, then rows")
_ESTIMATE_NOTE = "expected from the uncalibrated score, labels missing"


# ================================================================= per-row metrics

@dataclass(frozen=True)
class RowMetric:
    """A metric that is the mean of a per-row value (SQL), and how it was obtained."""

    name: str
    expression: Fragment | None     # None when it cannot be computed (see ``reason``)
    description: str
    source: str                     # "labels", "estimate" or "predictions"
    proportion: bool                # per-row values are 0/1: Wilson CI, two-proportion z-test
    reason: str | None = None

    @property
    def estimated(self) -> bool:
        """Whether the values are expected errors from the score rather than observed ones."""
        return self.source == "estimate"


def row_metrics(view) -> tuple[str, ...]:
    """The per-row metrics the view's task offers (for pickers), the default first."""
    names = ROW_METRICS[view.task]
    roles = view.roles
    out = []
    for name in names:
        if name in ("mean_score", "log_loss") and not roles.score:
            continue
        if name in ("mean_prediction",) and not roles.prediction:
            continue
        if name == "predicted_positive_rate" and not (roles.prediction or roles.score):
            continue
        if name == "positive_rate" and not roles.target:
            continue  # nothing to measure it from (errors, unlike it, are estimated from scores)
        out.append(name)
    return tuple(out)


def default_row_metric(view) -> str:
    """Error rate for classifiers, absolute error for regression."""
    return "abs_error" if view.task == "regression" else "error_rate"


def row_metric(view, metric: str | None, window: Window | None, segment: Segment = ()) -> RowMetric:
    """The per-row SQL value of ``metric``; errors come from ``slices.error_plan``."""
    from mlmon_core import slices

    metric = metric or default_row_metric(view)
    if metric not in ROW_METRICS[view.task]:
        raise MlmonError(f"metric {metric!r} is not one of {', '.join(ROW_METRICS[view.task])} "
                         f"(the per-row metrics of a {view.task} model)")
    words = METRIC_WORDS[metric]
    roles = view.roles
    if metric in ("error_rate", "accuracy", "log_loss", "abs_error", "squared_error"):
        base = "error_rate" if metric == "accuracy" else metric
        plan, why = slices.error_plan(view, base, window, segment)
        if plan is None:
            return RowMetric(metric, None, words, "labels", False, why)
        expression = plan.expression if metric != "accuracy" else sql.render(
            "(1 - {e})", e=plan.expression)
        estimated = plan.source == "estimate"
        description = f"estimated {words} ({_ESTIMATE_NOTE})" if estimated else words
        proportion = metric in ("error_rate", "accuracy") and not estimated
        return RowMetric(metric, expression, description, plan.source, proportion)
    if metric == "positive_rate":
        if not roles.target:
            return RowMetric(metric, None, words, "labels", True,
                             "not computable because the log has no target column")
        expression = sql.render("CAST({t} = {p} AS DOUBLE)", t=Ident(roles.target),
                                p=sql.param(view.positive_label))
        return RowMetric(metric, expression, words, "labels", True)
    if metric == "predicted_positive_rate":
        predicted = slices.predicted_positive(view)
        if predicted is None:
            return RowMetric(metric, None, words, "predictions", True,
                             "not computable because the log has no prediction or score column")
        return RowMetric(metric, sql.render("CAST({p} AS DOUBLE)", p=predicted), words,
                         "predictions", True)
    if metric == "mean_score":
        if not roles.score:
            return RowMetric(metric, None, words, "predictions", False,
                             "not computable because the log has no score column")
        return RowMetric(metric, _numeric(view, roles.score, "score"), words, "predictions", False)
    if metric == "mean_prediction":
        if not roles.prediction:
            return RowMetric(metric, None, words, "predictions", False,
                             "not computable because the log has no prediction column")
        return RowMetric(metric, _numeric(view, roles.prediction, "prediction"), words,
                         "predictions", False)
    # mean_error: prediction − target, labels only
    if not roles.target or not roles.prediction:
        return RowMetric(metric, None, words, "labels", False,
                         "not computable because the log needs a prediction and a target column")
    expression = sql.render("({p} - {t})", p=_numeric(view, roles.prediction, "prediction"),
                            t=_numeric(view, roles.target, "target"))
    return RowMetric(metric, expression, words, "labels", False)


def _numeric(view, column: str, role: str) -> Fragment:
    if not sql.is_numeric_type(view.columns[column].duck_type):
        raise MlmonError(f"the {role} column {column!r} has type "
                         f"{view.columns[column].duck_type}; it must hold numbers")
    return sql.render("CAST({c} AS DOUBLE)", c=Ident(column))


def _value_sql(metric: RowMetric) -> Fragment:
    """The per-row value, NULL where undefined or not finite."""
    if metric.expression is None:
        return Fragment("CAST(NULL AS DOUBLE)")
    return sql.render("CASE WHEN isfinite(CAST({e} AS DOUBLE)) THEN CAST({e} AS DOUBLE) END",
                      e=metric.expression)


# ================================================================= statistics on aggregates

@dataclass(frozen=True)
class _Moments:
    """Count of values, their sum, mean and sum of squared deviations (M2)."""

    n: np.ndarray
    total: np.ndarray
    m2: np.ndarray

    @property
    def mean(self) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.n > 0, self.total / np.maximum(self.n, 1), np.nan)

    @property
    def variance(self) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.n > 1, self.m2 / np.maximum(self.n - 1, 1), np.nan)

    @classmethod
    def of(cls, n, total, variance) -> "_Moments":
        n = np.asarray(n, dtype=np.float64)
        total = np.nan_to_num(np.asarray(total, dtype=np.float64))
        variance = np.nan_to_num(np.asarray(variance, dtype=np.float64))
        return cls(n, total, np.where(n > 1, variance * (n - 1), 0.0))

    def minus(self, part: "_Moments") -> "_Moments":
        """The moments of the whole without ``part`` (Chan's parallel formula, solved for the rest)."""
        n = self.n - part.n
        total = self.total - part.total
        with np.errstate(divide="ignore", invalid="ignore"):
            rest_mean = np.where(n > 0, total / np.maximum(n, 1), 0.0)
            delta = np.where((n > 0) & (part.n > 0), part.mean - rest_mean, 0.0)
            shift = np.where(self.n > 0, delta * delta * part.n * n / np.maximum(self.n, 1), 0.0)
        m2 = np.maximum(self.m2 - part.m2 - shift, 0.0)
        return _Moments(n, total, np.where(n > 1, m2, 0.0))


def _z(level: float) -> float:
    from scipy import stats

    return float(stats.norm.ppf(0.5 + level / 2))


def metric_value(n: int, total: float, variance: float | None, proportion: bool,
                 level: float = LEVEL, empty_reason: str | None = None) -> MetricValue:
    """A mean with its CI: Wilson for 0/1 values, else the t interval; ``se`` set for tests."""
    from scipy import stats

    n = int(n)
    if n <= 0:
        return MetricValue(None, n=0, reason=empty_reason or "not computable because no row has "
                                                             "a value")
    mean = float(total) / n
    if proportion:
        successes = int(round(float(total)))
        low, high = wilson_interval(successes, n, level)
        p = successes / n
        return MetricValue(p, low, high, n, se=math.sqrt(p * (1 - p) / n))
    if n < 2 or variance is None or not math.isfinite(float(variance)):
        return MetricValue(mean, n=n, reason="no confidence interval from a single row")
    se = math.sqrt(max(float(variance), 0.0) / n)
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * se
    return MetricValue(mean, mean - half, mean + half, n, se=se)


def compare_to_rest(cell: _Moments, rest: _Moments, proportion: bool,
                    level: float = LEVEL) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(statistic, two-sided p-value, distance) of each cell against the rest of the rows.

    0/1 values: pooled two-proportion z-test; means: Welch's t-test. ``distance`` is the near end
    of the CI of |cell − rest| (0 when the CI covers 0); NaN where a side has too few values.
    """
    from scipy import stats

    n1, n2 = cell.n, rest.n
    difference = cell.mean - rest.mean
    with np.errstate(divide="ignore", invalid="ignore"):
        if proportion:
            pooled = (cell.total + rest.total) / (n1 + n2)
            se_test = np.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
            p1, p2 = cell.mean, rest.mean
            se_diff = np.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
            statistic = difference / se_test
            p_value = 2 * stats.norm.sf(np.abs(statistic))
            quantile = np.full_like(difference, _z(level))
            valid = (n1 > 0) & (n2 > 0)
        else:
            a, b = cell.variance / n1, rest.variance / n2
            se_test = se_diff = np.sqrt(a + b)
            df = (a + b) ** 2 / (a * a / (n1 - 1) + b * b / (n2 - 1))
            statistic = difference / se_test
            safe_df = np.where(np.isfinite(df) & (df > 0), df, 1.0)
            p_value = 2 * stats.t.sf(np.abs(statistic), safe_df)
            quantile = stats.t.ppf(0.5 + level / 2, safe_df)
            valid = (n1 > 1) & (n2 > 1)
        # No spread on either side: the difference is exact.
        exact = valid & (se_test == 0)
        statistic = np.where(exact, np.where(difference == 0, 0.0, np.sign(difference) * np.inf),
                             statistic)
        p_value = np.where(exact, np.where(difference == 0, 1.0, 0.0), p_value)
        distance = np.maximum(np.abs(difference) - quantile * np.nan_to_num(se_diff), 0.0)
    nan = np.full_like(difference, np.nan)
    return (np.where(valid, statistic, nan), np.where(valid, p_value, nan),
            np.where(valid, distance, nan))


# ================================================================= segment vs rest

@dataclass(frozen=True)
class Side:
    """One side of the comparison: the segment, the rest of the window's rows, or all of them."""

    name: str
    rows: int
    labeled_rows: int
    share: float | None
    share_ci: tuple[float | None, float | None]
    metrics: dict[str, MetricValue]

    def to_json(self) -> dict[str, Any]:
        """Plain form."""
        return {"rows": self.rows, "labeled_rows": self.labeled_rows, "share": self.share,
                "share_ci_low": self.share_ci[0], "share_ci_high": self.share_ci[1],
                "metrics": {k: v.to_json() for k, v in self.metrics.items()}}


@dataclass(frozen=True)
class MetricComparison:
    """One metric in the segment, the rest and overall; the segment − rest difference and its test."""

    name: str
    segment: MetricValue
    rest: MetricValue
    overall: MetricValue
    difference: float | None
    p_value: float | None
    worse: bool | None
    sentence: str
    estimated: bool = False

    def to_json(self) -> dict[str, Any]:
        """Plain form."""
        return {"metric": self.name, "segment": self.segment.to_json(),
                "rest": self.rest.to_json(), "overall": self.overall.to_json(),
                "difference": self.difference, "p_value": self.p_value, "worse": self.worse,
                "estimated": self.estimated, "sentence": self.sentence}


@dataclass(frozen=True)
class SegmentComparison:
    """What ``segment_vs_rest`` returns."""

    task: str
    window: Window
    segment: Segment
    segment_text: str
    sides: dict[str, Side]
    comparisons: list[MetricComparison]
    headline: list[str]
    summary: str
    notes: tuple[str, ...] = ()
    test: str = "z test from the two standard errors (health.compare_metric)"

    def to_json(self) -> dict[str, Any]:
        """The ``mlmon segment --json`` object (without the breakdown)."""
        return {"task": self.task, "window": self.window.to_json(),
                "segment": sql.segment_to_json(self.segment), "segment_text": self.segment_text,
                "where": sql.segment_to_text(self.segment),
                "sides": {k: v.to_json() for k, v in self.sides.items()},
                "comparisons": [c.to_json() for c in self.comparisons],
                "headline": list(self.headline), "summary": self.summary,
                "notes": list(self.notes), "test": self.test}

    def to_text(self) -> str:
        """A few plain lines for the terminal."""
        lines = [self.summary]
        by_name = {c.name: c for c in self.comparisons}
        headline = [by_name[n] for n in self.headline if n in by_name]
        shown = [c for c in headline if c.segment.value is not None and c.rest.value is not None]
        if headline and not shown:
            lines.append(f"  {headline[0].sentence}")       # why the metrics are missing
        shown += [c for c in self.comparisons if c.estimated]
        lines += [f"  {c.sentence}" for c in shown]
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


def segment_vs_rest(view, window: Window | None, segment: Segment = (), within: Segment = (),
                    level: float = LEVEL) -> SegmentComparison:
    """The segment's metrics vs the rest of the rows vs all of them, with CIs and tests.

    ``within`` narrows all three sides first (e.g. the model the sidebar picked): the rest is then
    ``within`` and not ``segment``, and overall is ``within``.
    """
    from mlmon_core.health import compare_metric
    from mlmon_core.metrics import compute_metrics, headline_metrics

    window = window or Window(None, None)
    segment, within = tuple(segment or ()), tuple(within or ())
    text = sql.describe_segment(segment)
    inside = compute_metrics(view, window, within + segment, level=level)
    overall = compute_metrics(view, window, within, level=level)
    notes: list[str] = []
    if segment:
        rest = compute_metrics(view, window, within, level=level, exclude=segment)
        rest_rows, rest_labeled, rest_metrics = rest.rows, rest.labeled_rows, rest.metrics
    else:
        notes.append("no segment is set, so the segment is every row and the rest is empty: "
                     "build a segment to compare it with the rest")
        empty = "not computable because the segment holds every row, so the rest is empty"
        rest_rows, rest_labeled = 0, 0
        rest_metrics = {name: MetricValue(None, n=0, reason=empty) for name in inside.metrics}
    sides = {
        "segment": _side("segment", inside.rows, inside.labeled_rows, overall.rows, inside.metrics,
                         level),
        "rest": _side("rest", rest_rows, rest_labeled, overall.rows, rest_metrics, level),
        "overall": _side("overall", overall.rows, overall.labeled_rows, overall.rows,
                         overall.metrics, level),
    }
    comparisons = []
    for name, value in inside.metrics.items():
        change = compare_metric(name, value, rest_metrics.get(name, MetricValue(None)))
        comparisons.append(MetricComparison(
            name, value, change.reference, overall.metrics.get(name, MetricValue(None)),
            change.difference, change.p_value, change.worse,
            _versus_sentence(name, value, change.reference, change.difference, change.p_value)))
    comparisons += _estimated_comparisons(view, window, segment, within, inside, level)
    if overall.rows == 0:
        notes.append(f"the window {window} holds no rows")
    elif inside.rows == 0:
        notes.append(f"the segment ({text}) holds no rows in the window {window}")
    elif segment and rest_rows == 0:
        notes.append("the segment holds every row of the window, so there is no rest to compare "
                     "with")
    if inside.rows and inside.labeled_rows == 0 and not any(c.estimated for c in comparisons):
        notes.append("no row of the segment has a label and the log has no score to estimate "
                     "errors from, so only the share of traffic and predicted rates compare")
    return SegmentComparison(
        task=view.task, window=window, segment=segment, segment_text=text, sides=sides,
        comparisons=comparisons, headline=headline_metrics(inside)[:4],
        summary=_summary(text, window, sides), notes=tuple(notes))


def _side(name: str, rows: int, labeled: int, total: int, metrics, level: float) -> Side:
    if total <= 0:
        return Side(name, rows, labeled, None, (None, None), dict(metrics))
    low, high = wilson_interval(rows, total, level)
    return Side(name, rows, labeled, rows / total, (low, high), dict(metrics))


def _summary(text: str, window: Window, sides: dict[str, Side]) -> str:
    seg, total = sides["segment"], sides["overall"]
    share = f"{seg.share:.1%} of traffic" if seg.share is not None else "no traffic"
    return (f"segment {text}, window {window}: {seg.rows:,} of {total.rows:,} rows ({share}), "
            f"{seg.labeled_rows:,} labeled")


def _label(name: str) -> str:
    from mlmon_core.health import label

    if name.startswith("estimated_"):
        base = name[len("estimated_"):]
        return "estimated " + METRIC_WORDS.get(base, base.replace("_", " "))
    return label(name)


def _versus_sentence(name: str, segment: MetricValue, rest: MetricValue,
                     difference: float | None, p_value: float | None) -> str:
    """"accuracy is 0.842 in the segment vs 0.913 elsewhere (n=1,204 vs 30,112, p<0.001)"."""
    words = _label(name)
    if segment.value is None or rest.value is None:
        why = segment.reason if segment.value is None else rest.reason
        where = "in the segment" if segment.value is None else "for the rest"
        return f"{words}: {why or 'not computable'} ({where})"
    evidence = "" if p_value is None else f", {p_value_text(p_value)}"
    relation = "the same as" if difference == 0 else (
        "higher than" if difference > 0 else "lower than")
    return (f"{words} is {segment.value:.3f} in the segment vs {rest.value:.3f} elsewhere "
            f"({relation} the rest; n={segment.n:,} vs {rest.n:,}{evidence})")


_FLAGGED_TEMPLATE = """SELECT {bucket} AS bucket, coalesce(({inside}), FALSE) AS inside,
    count(*) AS rows, count(v) AS n, sum(v) AS total, var_samp(v) AS variance
FROM (SELECT *, {value} AS v FROM {log} WHERE {where}) AS t
GROUP BY ALL"""


def _flagged(view, window: Window, segment: Segment, within: Segment, metric: RowMetric,
             bucket: str | None = None) -> list[dict[str, Any]]:
    """Rows and value moments per (bucket, in segment): one GROUP BY over the window's rows
    ``within`` the population."""
    inside = sql.compile_segment(segment, view.column_types).fragment
    bucket_sql = (sql.render("date_trunc({b}, {ts})", b=sql.param(bucket),
                             ts=Ident(view.roles.timestamp))
                  if bucket else Fragment("CAST(NULL AS TIMESTAMP)"))
    query = sql.render(_FLAGGED_TEMPLATE, bucket=bucket_sql, inside=inside, value=_value_sql(metric),
                       log=view.relation, where=view.where(window, within))
    cursor = view.execute(query)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


def _side_values(records: list[dict[str, Any]], metric: RowMetric, level: float
                 ) -> dict[str, MetricValue]:
    """Segment, rest and overall values of a row metric from flagged records of one bucket."""
    parts = {True: _Moments.of([0], [0], [0]), False: _Moments.of([0], [0], [0])}
    for record in records:
        parts[bool(record["inside"])] = _Moments.of([record["n"] or 0], [record["total"] or 0],
                                                    [record["variance"] or 0])
    combined = _combine(parts[True], parts[False])
    out = {}
    for name, moments in (("segment", parts[True]), ("rest", parts[False]), ("overall", combined)):
        out[name] = metric_value(int(moments.n[0]), float(moments.total[0]),
                                 float(moments.variance[0]) if moments.n[0] > 1 else None,
                                 metric.proportion, level,
                                 empty_reason=f"not computable because no row of the {name} has "
                                              f"a {metric.description} value")
    return out


def _combine(a: _Moments, b: _Moments) -> _Moments:
    n = a.n + b.n
    total = a.total + b.total
    with np.errstate(divide="ignore", invalid="ignore"):
        delta = np.where((a.n > 0) & (b.n > 0), a.mean - b.mean, 0.0)
        shift = np.where(n > 0, delta * delta * a.n * b.n / np.maximum(n, 1), 0.0)
    return _Moments(n, total, a.m2 + b.m2 + shift)


def _estimated_comparisons(view, window, segment, within, inside,
                           level: float) -> list[MetricComparison]:
    """The error estimated from the score, when the segment's labels are too few for metrics."""
    from mlmon_core.health import compare_metric

    if view.task == "regression" or not view.roles.score or inside.rows == 0:
        return []
    metric = row_metric(view, "error_rate", window, within + segment)
    if not metric.estimated or metric.expression is None:
        return []
    values = _side_values(_flagged(view, window, segment, within, metric), metric, level)
    if not segment:
        values["rest"] = MetricValue(None, n=0, reason="not computable because the segment holds "
                                                        "every row, so the rest is empty")
    name = "estimated_error_rate"
    change = compare_metric("error_rate", values["segment"], values["rest"])
    return [MetricComparison(name, values["segment"], values["rest"], values["overall"],
                             change.difference, change.p_value, change.worse,
                             _versus_sentence(name, values["segment"], values["rest"],
                                              change.difference, change.p_value)
                             + f" — {_ESTIMATE_NOTE}", estimated=True)]


# ================================================================= breakdowns

@dataclass(frozen=True)
class Cell:
    """One cell of a breakdown: a bin or category (or a pair of them) and its metric."""

    label: str
    values: tuple[str, ...]          # the cell's part on each feature, in words
    codes: tuple[int, ...]           # bin codes (0 = missing), for ordering axes
    conditions: tuple[Condition, ...]
    rows: int
    share: float
    metric: MetricValue
    rest: MetricValue
    difference: float | None         # cell − overall
    difference_vs_rest: float | None
    statistic: float | None
    p_value: float | None
    distance: float | None
    note: str | None = None
    short: tuple[str, ...] = ()      # the cell's part on each feature without the feature name

    def to_json(self) -> dict[str, Any]:
        """Plain form (conditions as in segment filters)."""
        return {"label": self.label, "values": list(self.values), "short": list(self.short),
                "codes": list(self.codes),
                "conditions": sql.segment_to_json(self.conditions),
                "where": sql.segment_to_text(self.conditions), "rows": self.rows,
                "share": self.share, "metric": self.metric.to_json(), "rest": self.rest.to_json(),
                "difference": _finite(self.difference),
                "difference_vs_rest": _finite(self.difference_vs_rest),
                "statistic": _finite(self.statistic), "p_value": _finite(self.p_value),
                "distance": _finite(self.distance), "note": self.note}


@dataclass(frozen=True)
class Breakdown:
    """A metric broken down by one or two features, cells sorted by ``sort_by``."""

    features: tuple[str, ...]
    metric: str
    metric_description: str
    source: str
    window: Window
    segment: Segment
    rows: int
    overall: MetricValue
    cells: tuple[Cell, ...]
    bins: dict[str, dict[str, Any]] = field(default_factory=dict)
    reason: str | None = None
    notes: tuple[str, ...] = ()
    sort_by: str = SORT_BY
    ci_method: str = ""
    test: str = ""

    def to_json(self) -> dict[str, Any]:
        """Plain form."""
        return {"features": list(self.features), "metric": self.metric,
                "metric_description": self.metric_description, "source": self.source,
                "window": self.window.to_json(), "segment": sql.segment_to_json(self.segment),
                "rows": self.rows, "overall": self.overall.to_json(),
                "cells": [c.to_json() for c in self.cells], "bins": self.bins,
                "reason": self.reason, "notes": list(self.notes), "sort_by": self.sort_by,
                "ci_method": self.ci_method, "test": self.test}

    def frame(self):
        """The cells as a DataFrame (one row per cell, in the sorted order) for tables and charts."""
        import pandas as pd

        columns = ["label"] + [f"{part}_{i}" for part in ("value", "short", "order")
                               for i in range(len(self.features))] + [
            "rows", "share", "value", "ci_low", "ci_high", "n", "difference",
            "difference_vs_rest", "rest_value", "statistic", "p_value", "distance", "where", "note"]
        records = []
        for cell in self.cells:
            record = {"label": cell.label, "rows": cell.rows, "share": cell.share,
                      "value": cell.metric.value, "ci_low": cell.metric.ci_low,
                      "ci_high": cell.metric.ci_high, "n": cell.metric.n,
                      "difference": cell.difference, "difference_vs_rest": cell.difference_vs_rest,
                      "rest_value": cell.rest.value, "statistic": cell.statistic,
                      "p_value": cell.p_value, "distance": cell.distance,
                      "where": sql.segment_to_text(cell.conditions), "note": cell.note}
            for i, (value, short, code) in enumerate(zip(cell.values, cell.short, cell.codes)):
                record[f"value_{i}"] = value
                record[f"short_{i}"] = short
                record[f"order_{i}"] = code
            records.append(record)
        frame = pd.DataFrame.from_records(records, columns=columns)
        for column in ("value", "ci_low", "ci_high", "difference", "difference_vs_rest",
                       "rest_value", "statistic", "p_value", "distance", "share"):
            frame[column] = frame[column].astype("float64")
        return frame

    def to_text(self, limit: int = 15) -> str:
        """A few plain lines for the terminal."""
        by = " × ".join(self.features)
        overall = "n/a" if self.overall.value is None else f"{self.overall.value:.4g}"
        lines = [f"{self.metric_description} by {by} ({self.rows:,} rows, overall {overall})"]
        if self.reason:
            lines.append(f"  {self.reason}")
        for cell in self.cells[:limit]:
            value = "n/a" if cell.metric.value is None else f"{cell.metric.value:.4g}"
            ci = ("" if cell.metric.ci_low is None else
                  f" [{cell.metric.ci_low:.4g}, {cell.metric.ci_high:.4g}]")
            p = "" if cell.p_value is None or not math.isfinite(cell.p_value) else \
                f", {p_value_text(cell.p_value)}"
            lines.append(f"  {cell.label:<40} {value}{ci}  n={cell.metric.n:,} "
                         f"({cell.share:.1%} of rows{p})")
        if len(self.cells) > limit:
            lines.append(f"  ... {len(self.cells) - limit} more cells (use --json)")
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


_CELLS_TEMPLATE = """SELECT {codes}, grouping({first}) AS is_total,
    count(*) AS rows, count(v) AS n, sum(v) AS total, var_samp(v) AS variance
FROM (SELECT {code_columns}, {value} AS v FROM {log} WHERE {where}) AS t
GROUP BY GROUPING SETS (({codes}), ())"""


def breakdown(view, window: Window | None, feature: str, metric: str | None = None,
              segment: Segment = (), reference: Window | None = None, *,
              bins: int = DEFAULT_BINS, max_categories: int = DEFAULT_MAX_CATEGORIES,
              min_rows: int = MIN_CELL_ROWS, level: float = LEVEL) -> Breakdown:
    """``metric`` per bin/category of ``feature`` within ``segment``, sorted by ``SORT_BY``.

    Numerical features are cut at quantiles of ``reference`` (default: the reference window);
    nulls are a cell of their own. See the module docstring for the statistics.
    """
    return _breakdown(view, window, (feature,), metric, segment, reference, bins, max_categories,
                      min_rows, level)


def breakdown2(view, window: Window | None, feature_a: str, feature_b: str,
               metric: str | None = None, segment: Segment = (), reference: Window | None = None,
               *, bins: int = DEFAULT_BINS_2D, max_categories: int = DEFAULT_MAX_CATEGORIES_2D,
               min_rows: int = MIN_CELL_ROWS, level: float = LEVEL) -> Breakdown:
    """``metric`` per pair of cells of two features (a heat map), sorted like ``breakdown``."""
    if feature_a == feature_b:
        raise MlmonError(f"a two-feature breakdown needs two different features (got {feature_a!r} "
                         "twice)")
    return _breakdown(view, window, (feature_a, feature_b), metric, segment, reference, bins,
                      max_categories, min_rows, level)


def _check_feature(view, feature: str) -> None:
    if feature not in view.columns:
        close = [c for c in view.columns if c.lower() == str(feature).lower()]
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise FilterError(f"cannot break down by {feature!r}: no such column in the log{hint}")
    kind = view.kind(feature)
    if kind not in ("numerical", "categorical", "boolean", "text"):
        raise FilterError(f"cannot break down by {feature!r}: it is a {kind} column (use a "
                          "numerical, categorical or boolean feature; time has its own chart)")


def _breakdown(view, window, features: tuple[str, ...], metric_name, segment, reference, bins,
               max_categories, min_rows, level) -> Breakdown:
    from mlmon_core import slices
    from mlmon_core.windows import reference_window

    for feature in features:
        _check_feature(view, feature)
    if int(min_rows) < 1:
        raise MlmonError(f"min rows {min_rows}: must be at least 1")
    window = window or Window(None, None)
    segment = tuple(segment or ())
    metric = row_metric(view, metric_name, window, segment)
    reference = reference or reference_window(view)
    codings = [slices.feature_coding(view, f, window, segment, reference=reference, bins=bins,
                                     max_categories=max_categories) for f in features]
    names = [Ident(f"__code{i}") for i in range(len(codings))]
    codes = sql.join([sql.render("{n}", n=n) for n in names])
    code_columns = sql.join([sql.render("{code} AS {n}", code=c.code_sql(), n=n)
                             for c, n in zip(codings, names)])
    query = sql.render(_CELLS_TEMPLATE, codes=codes, first=names[0], code_columns=code_columns,
                       value=_value_sql(metric), log=view.relation,
                       where=view.where(window, segment))
    cursor = view.execute(query)
    columns = [d[0] for d in cursor.description]
    records = [dict(zip(columns, row)) for row in cursor.fetchall()]
    total = next((r for r in records if r["is_total"]), None)
    cell_records = [r for r in records if not r["is_total"]]
    base = dict(features=tuple(features), metric=metric.name,
                metric_description=metric.description, source=metric.source, window=window,
                segment=segment, bins={c.name: _bins_json(c) for c in codings},
                ci_method="Wilson" if metric.proportion else "t interval",
                test="two-proportion z-test (pooled), two-sided" if metric.proportion
                else "Welch's t-test, two-sided")
    rows = int(total["rows"]) if total else 0
    if rows == 0:
        where = f" for {sql.describe_segment(segment)}" if segment else ""
        return Breakdown(**base, rows=0, overall=MetricValue(None, n=0, reason=(
            f"not computable because the window {window} holds no rows{where}")), cells=(),
            reason=f"nothing to break down: the window {window} holds no rows{where}")
    whole = _Moments.of([total["n"] or 0], [total["total"] or 0], [total["variance"] or 0])
    overall = metric_value(int(whole.n[0]), float(whole.total[0]),
                           float(whole.variance[0]) if whole.n[0] > 1 else None, metric.proportion,
                           level, empty_reason=metric.reason or (
                               f"not computable because none of the {rows:,} rows has a "
                               f"{metric.description} value"))
    cells = _cells(codings, cell_records, whole, overall, rows, segment, metric, min_rows, level)
    reason = metric.reason if metric.expression is None else (
        overall.reason if overall.value is None else None)
    return Breakdown(**base, rows=rows, overall=overall, cells=cells, reason=reason,
                     notes=_notes(codings, cells, whole, overall, metric, min_rows))


def _bins_json(coding) -> dict[str, Any]:
    if coding.kind == "numerical":
        return {"kind": "numerical", "edges": [_plain(e) for e in coding.edges]}
    return {"kind": "categorical", "categories": [_plain(c) for c in coding.categories]}


def _cells(codings, records, whole: _Moments, overall: MetricValue, rows: int, segment: Segment,
           metric: RowMetric, min_rows: int, level: float) -> tuple[Cell, ...]:
    if not records:
        return ()
    k = len(codings)
    predicates = [{p.codes[0]: p for p in c.predicates(ranges=False)} for c in codings]
    part = _Moments.of([r["n"] or 0 for r in records], [r["total"] or 0 for r in records],
                       [r["variance"] or 0 for r in records])
    repeated = _Moments(np.repeat(whole.n, len(records)), np.repeat(whole.total, len(records)),
                        np.repeat(whole.m2, len(records)))
    rest = repeated.minus(part)
    statistic, p_value, distance = compare_to_rest(part, rest, metric.proportion, level)
    cells = []
    for i, record in enumerate(records):
        codes = tuple(int(record[f"__code{j}"]) for j in range(k))
        chosen = [predicates[j][code] for j, code in enumerate(codes)]
        n_cell, n_rest = int(part.n[i]), int(rest.n[i])
        value = metric_value(n_cell, float(part.total[i]),
                             float(part.variance[i]) if n_cell > 1 else None, metric.proportion,
                             level, empty_reason=metric.reason or
                             "not computable because no row of this cell has a value")
        rest_value = metric_value(n_rest, float(rest.total[i]),
                                  float(rest.variance[i]) if n_rest > 1 else None,
                                  metric.proportion, level,
                                  empty_reason="not computable because no other row has a value")
        tested = n_cell >= min_rows and n_rest >= min_rows and math.isfinite(p_value[i])
        note = None
        if value.value is not None and not tested:
            note = (f"not tested: fewer than {min_rows} rows with a value in the cell or outside it"
                    if n_cell < min_rows or n_rest < min_rows else
                    "not tested: too few values on one side")
        difference = (value.value - overall.value
                      if value.value is not None and overall.value is not None else None)
        versus = (value.value - rest_value.value
                  if value.value is not None and rest_value.value is not None else None)
        cells.append(Cell(
            label=" and ".join(p.text for p in chosen), values=tuple(p.text for p in chosen),
            short=tuple(_short_label(coding, code) for coding, code in zip(codings, codes)),
            codes=codes, conditions=segment + tuple(c for p in chosen for c in p.conditions),
            rows=int(record["rows"]), share=int(record["rows"]) / rows, metric=value,
            rest=rest_value, difference=difference, difference_vs_rest=versus,
            statistic=float(statistic[i]) if tested else None,
            p_value=float(p_value[i]) if tested else None,
            distance=float(distance[i]) if tested else None, note=note))
    cells.sort(key=_sort_key)
    return tuple(cells)


def _short_label(coding, code: int) -> str:
    """A bin or category in a few characters, for the axes of a heat map."""
    if code == 0:
        return "missing"
    if coding.kind == "categorical":
        if code <= len(coding.categories):
            return show_value(coding.categories[code - 1])
        return "other values" if coding.categories else "present"
    lower, upper = coding.bounds(code, code)
    if lower is None and upper is None:
        return "present"
    if lower is None:
        return f"< {show_value(upper)}"
    if upper is None:
        return f"≥ {show_value(lower)}"
    if coding.duck_type.upper() in ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT",
                                    "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT"):
        last = int(upper) - 1
        return str(int(lower)) if last == int(lower) else f"{int(lower)}–{last}"
    return f"{show_value(lower)} to < {show_value(upper)}"


def _sort_key(cell: Cell) -> tuple:
    if cell.distance is None:
        return (1, 0.0, 0.0, -cell.rows)
    strength = abs(cell.statistic) if cell.statistic is not None else 0.0
    return (0, -cell.distance, -strength, -cell.rows)


def _notes(codings, cells, whole: _Moments, overall: MetricValue, metric: RowMetric,
           min_rows: int) -> tuple[str, ...]:
    notes = []
    if metric.estimated:
        notes.append(f"the {METRIC_WORDS[metric.name]} is estimated from the score because the "
                     "window has too few labels (the score is taken as a calibrated probability)")
    occupied = {c.codes for c in cells}
    for i, coding in enumerate(codings):
        used = {codes[i] for codes in occupied if codes[i] != 0}
        if len(used) <= 1:
            why = ("it holds a single value" if coding.kind == "categorical" else
                   "the reference window's quantiles do not split this window's values")
            notes.append(f"every row with a value of {coding.name} falls in one cell ({why}), "
                         "so it cannot explain differences")
    if overall.value is not None and whole.n[0] > 1 and whole.m2[0] == 0:
        notes.append(f"every row has the same {metric.description} ({overall.value:g}), so no "
                     "cell can differ from the rest")
    untested = sum(1 for c in cells if c.metric.value is not None and c.p_value is None)
    if cells and untested == len(cells) and overall.value is not None:
        notes.append(f"no cell has at least {min_rows} rows with a value inside and outside it "
                     "(minimum support), so none is tested; widen the window or use fewer bins")
    return tuple(notes)


# ================================================================= over time

@dataclass(frozen=True)
class SegmentTrend:
    """Per time bucket: the segment's share of traffic and a metric in the segment and the rest."""

    bucket: str
    metric: str
    metric_description: str
    source: str
    window: Window
    segment: Segment
    buckets: list[dict[str, Any]]
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Plain form."""
        return {"bucket": self.bucket, "metric": self.metric,
                "metric_description": self.metric_description, "source": self.source,
                "window": self.window.to_json(), "segment": sql.segment_to_json(self.segment),
                "buckets": [{k: (v.isoformat() if hasattr(v, "isoformat") else v)
                             for k, v in b.items()} for b in self.buckets],
                "reason": self.reason}

    def frame(self):
        """One row per bucket (start, rows, segment_rows, share, share_ci_low/high, segment_*,
        rest_*)."""
        import pandas as pd

        columns = ["start", "rows", "segment_rows", "share", "share_ci_low", "share_ci_high",
                   "segment_value", "segment_ci_low", "segment_ci_high", "segment_n",
                   "rest_value", "rest_ci_low", "rest_ci_high", "rest_n"]
        frame = pd.DataFrame.from_records(self.buckets, columns=columns)
        for column in columns[3:]:
            if not column.endswith("_n"):
                frame[column] = frame[column].astype("float64")
        return frame


def segment_over_time(view, window: Window | None, segment: Segment = (), bucket: str = "day",
                      metric: str | None = None, within: Segment = (),
                      level: float = LEVEL) -> SegmentTrend:
    """Per ``bucket``: the segment's share of the rows (``within`` narrows them first; Wilson CI)
    and ``metric`` in the segment and in the rest, each with its CI. One GROUP BY (bucket, in
    segment)."""
    from mlmon_core.windows import check_bucket

    check_bucket(bucket)
    window = window or Window(None, None)
    segment, within = tuple(segment or ()), tuple(within or ())
    chosen = row_metric(view, metric, window, within + segment)
    records = _flagged(view, window, segment, within, chosen, bucket)
    by_start: dict[Any, list[dict[str, Any]]] = {}
    for record in records:
        if record["bucket"] is not None:
            by_start.setdefault(record["bucket"], []).append(record)
    buckets = []
    for start in sorted(by_start):
        parts = by_start[start]
        rows = sum(int(r["rows"]) for r in parts)
        inside = sum(int(r["rows"]) for r in parts if r["inside"])
        low, high = wilson_interval(inside, rows, level)
        values = _side_values(parts, chosen, level)
        entry = {"start": start, "rows": rows, "segment_rows": inside, "share": inside / rows,
                 "share_ci_low": low, "share_ci_high": high}
        for side in ("segment", "rest"):
            value = values[side]
            entry.update({f"{side}_value": value.value, f"{side}_ci_low": value.ci_low,
                          f"{side}_ci_high": value.ci_high, f"{side}_n": value.n})
        buckets.append(entry)
    reason = None
    if not buckets:
        reason = f"the window {window} holds no rows"
    elif chosen.expression is None:
        reason = chosen.reason
    elif all(b["segment_n"] == 0 for b in buckets):
        reason = (f"not computable because no row of the segment has a {chosen.description} "
                  "value in this window")
    return SegmentTrend(bucket=bucket, metric=chosen.name, metric_description=chosen.description,
                        source=chosen.source, window=window, segment=segment, buckets=buckets,
                        reason=reason)


# ================================================================= rows

_ROWS_TEMPLATE = "SELECT * FROM {log} WHERE {where} ORDER BY {order} LIMIT {limit}"


def segment_rows(view, window: Window | None, segment: Segment = (),
                 limit: int = DEFAULT_ROW_LIMIT):
    """The segment's first ``limit`` rows in the window by timestamp (a bounded sample, for
    reading and downloading; never the whole log)."""
    limit = int(limit)
    if not 1 <= limit <= MAX_ROW_LIMIT:
        raise MlmonError(f"row limit {limit}: choose 1 to {MAX_ROW_LIMIT:,}")
    order = [Ident(view.roles.timestamp)] + ([Ident(view.roles.id)] if view.roles.id else [])
    query = sql.render(_ROWS_TEMPLATE, log=view.relation, where=view.where(window, segment),
                       order=sql.join([sql.render("{c}", c=c) for c in order]), limit=limit)
    return view.fetch_df(query)


# ================================================================= helpers

def _finite(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _plain(value: Any) -> Any:
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if hasattr(value, "item"):
        return value.item()
    return value
