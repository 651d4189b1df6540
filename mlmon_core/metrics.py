"""Model performance for a window, a segment and time buckets, each metric with a 95 % CI and its n.

Everything heavy is one DuckDB statement per call: the window's rows are read once into a
materialized CTE, and every aggregate the task needs (confusion counts, per-score groups for the
ranking metrics, calibration bins, error moments, quantiles) is computed from it for every bucket
and for the whole window at once (GROUPING SETS, or a window function partitioned by bucket plus
one over the whole window), then returned as a few hundred rows (``UNION ALL BY NAME``). Python only
turns those aggregates into metrics and intervals. (The binary statement runs a second time only
for windows of over 67 million labeled positives, see ``PACK``.) Rows without a timestamp count in
the window's totals but in no bucket.

Which rows count
    ``rows`` counts every row in the window and segment; ``labeled_rows`` those with a target.
    Threshold metrics (accuracy, precision, ...) use labeled rows with a predicted label; ranking
    and probability metrics (ROC AUC, average precision, log loss, Brier, ECE) use labeled rows
    with a score; ``predicted_positive_rate`` uses every row with a predicted label (no label
    needed, so it is there before the ground truth arrives). Each metric reports its own ``n``.
    Binary: positive means ``target = view.positive_label``; the predicted label is
    ``prediction = positive_label`` or, when the log has no prediction column,
    ``score >= [model] threshold``.

Exactness (each value equals scikit-learn 1.9's on the same rows, to rounding)
    ROC AUC is the Mann-Whitney statistic with ties counted one half: group the labeled, scored
    rows by (bucket, score), take running sums of positives and negatives in descending score order
    (a window function), and ``U = Σ_neg-groups neg(s)·(pos_above(s) + ½·pos(s))``, AUC = U/(P·N).
    Average precision is sklearn's step integral: ``AP = (1/P)·Σ_s pos(s)·TP≥(s)/(TP≥(s)+FP≥(s))``
    over distinct scores. Windows whose labeled rows hold more than ``EXACT_SCORE_LIMIT``
    distinct scores (``approx_count_distinct``, measured in the same statement) rank score cells
    instead: a monotone grid, ``LOGIT_STEPS_PER_UNIT`` cells per unit of log-odds for
    probabilities (fine near 0 and 1), else ``LINEAR_GRID_STEPS`` cells over the score range.
    Only pairs sharing a cell can change, so ROC AUC moves by at most half the share of
    (positive, negative) pairs in one cell; AP's bound is the mean, over positives, of the spread
    of precisions inside their cell. Both are reported as ``rounding_bound`` (a few 1e-5 for the
    window and under 1e-4 per day on the 10M-row benchmark, well inside the CIs); the DeLong
    variance is that of the cells. The whole-window ranking always sums the per-bucket
    (score, positives, negatives) groups over buckets rather than re-reading rows. Log loss clips the probability to ``[eps, 1 - eps]`` with eps the machine
    epsilon of the score column's type (float32 columns use float32's), exactly like
    ``sklearn.metrics.log_loss`` does for that dtype; the arithmetic is double. Calibration bins
    are sklearn's ``calibration_curve(strategy="uniform", n_bins=10)`` bins: the same numpy edges,
    bound as parameters, and ``searchsorted``'s rule (a score equal to an edge falls in the lower
    bin). Balanced accuracy follows sklearn: the mean recall over the classes present in the
    target. F1, precision and recall that divide by zero are ``None`` with a reason (sklearn would
    warn and return 0). R² of a constant target is ``None`` (sklearn returns 1 or 0 by
    convention). Regression quantiles of |error| are ``quantile_cont`` (numpy's "linear").

Confidence intervals (level 95 % by default; ``ci_low``/``ci_high`` are None when undefined)
    - Proportions (accuracy, precision, recall, positive rates, per-class precision/recall):
      Wilson score interval; unlike the Wald interval it stays inside [0, 1] and keeps its
      coverage near 0 and 1, where monitoring metrics often sit.
    - Balanced accuracy (binary): MOVER (Zou & Donner 2008) combination of the Wilson intervals
      of the two class recalls, which are independent binomials given the class counts.
    - ROC AUC: DeLong's variance from the placement values, which the same per-score groups give
      in closed form (see ``_delong_variance``); the interval is built on the logit scale and
      mapped back (Pepe 2003), so it stays in (0, 1) and is asymmetric near 1, where AUCs live.
    - Average precision: the logit interval of Boyd, Eng & Page (2013), ``logit(AP) ± z/√(P·AP·(1-AP))``,
      which they found to have the best coverage among the cheap intervals.
    - F1, macro/weighted F1, multiclass balanced accuracy: percentile bootstrap over the
      aggregates, i.e. multinomial resampling of the confusion-matrix cells (identical to
      resampling rows, because these metrics depend on the rows only through the matrix).
    - ECE: percentile bootstrap over the calibration bins (bin counts multinomial, positives per
      bin binomial, bin mean scores held fixed: the within-bin spread of scores is at most 0.1).
    - Log loss, Brier score, MAE, mean error, MAPE: means of i.i.d. per-row terms, so a normal
      interval with the standard error from the sample variance (DuckDB's stable var_samp).
    - RMSE: the normal interval of the MSE (mean of squared errors), square-rooted (monotone).
    - R²: delta method on ``1 - mean(e²)/mean((y - ȳ)²)`` with the variances and covariance of
      the two per-row terms (ȳ treated as known, an O(1/n) simplification).
    - Quantiles of |error|: the distribution-free order-statistic interval ``[x(j), x(k)]`` with
      ranks ``n·q ∓ z·√(n·q·(1-q))`` (normal approximation to the binomial), None when a rank
      falls outside the sample (too few rows for that quantile).
    Bootstraps use a fixed seed, so the same data give the same interval.

Nothing here raises for data conditions: an empty window, no labels, a single class, an all-null
or non-finite score, a constant target all give ``value=None`` with a ``reason`` reading "not
computable because ...". Wrongly typed role columns (a text score) are configuration errors
(``SourceError`` naming the column).
"""

from __future__ import annotations

import dataclasses
import math
import re
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from statistics import NormalDist
from typing import Any, Iterable, Mapping

import numpy as np

from mlmon_core import sql
from mlmon_core.config import Window
from mlmon_core.errors import SourceError
from mlmon_core.sql import Fragment, Ident, Segment
from mlmon_core.windows import check_bucket

LEVEL = 0.95
ECE_BINS = 10
BOOTSTRAP_SAMPLES = 1000
BOOTSTRAP_CELL_BUDGET = 2_000_000  # resamples x matrix cells per group, for many-class problems
BOOTSTRAP_SEED = 20240611
QUANTILES = (0.5, 0.9, 0.99)
FLOAT64_EPS = float(np.finfo(np.float64).eps)
FLOAT32_EPS = float(np.finfo(np.float32).eps)
IMBALANCE = 0.10
# Above this many distinct labeled scores in the window, ROC AUC and AP rank score cells, not scores.
EXACT_SCORE_LIMIT = 200_000
LOGIT_STEPS_PER_UNIT = 1000  # cells per unit of log-odds for probability scores
PROBABILITY_CLAMP = 1e-12  # scores beyond [clamp, 1 - clamp] share the end cells
LINEAR_GRID_STEPS = 100_000  # cells over [min, max] for scores that are not probabilities

BINARY_METRICS = ("accuracy", "balanced_accuracy", "precision", "recall", "f1", "roc_auc",
                  "average_precision", "log_loss", "brier_score", "ece", "positive_rate",
                  "predicted_positive_rate")
REGRESSION_METRICS = ("mae", "rmse", "mape", "r2", "mean_error", "abs_error_p50",
                      "abs_error_p90", "abs_error_p99")

CI_METHODS = {
    "binary": {
        "accuracy": "Wilson", "precision": "Wilson", "recall": "Wilson", "positive_rate": "Wilson",
        "predicted_positive_rate": "Wilson", "balanced_accuracy": "MOVER of Wilson intervals",
        "f1": "bootstrap of confusion counts", "roc_auc": "DeLong, logit scale",
        "average_precision": "logit (Boyd et al. 2013)", "log_loss": "normal (CLT)",
        "brier_score": "normal (CLT)", "ece": "bootstrap of calibration bins",
    },
    "multiclass": {
        "accuracy": "Wilson", "precision[*]": "Wilson", "recall[*]": "Wilson",
        "macro_f1": "bootstrap of confusion matrix", "weighted_f1": "bootstrap of confusion matrix",
        "balanced_accuracy": "bootstrap of confusion matrix",
    },
    "regression": {
        "mae": "normal (CLT)", "mean_error": "normal (CLT)", "mape": "normal (CLT)",
        "rmse": "normal CI of MSE, square-rooted", "r2": "delta method",
        "abs_error_p*": "order statistics (distribution-free)",
    },
}

# ---------------------------------------------------------------- results


@dataclass(frozen=True)
class MetricValue:
    """One metric: its value, CI, the rows it rests on and, when something is missing, why.

    ``se`` is the standard error where the method has one (kept for comparisons between windows;
    not part of the JSON contract). ``rounding_bound``, set only when ROC AUC or average precision
    ranked score cells instead of exact scores (windows with very many distinct scores), bounds
    how far the value can be from the exact one; it is in the JSON when set.
    """

    value: float | None
    ci_low: float | None = None
    ci_high: float | None = None
    n: int = 0
    reason: str | None = None
    se: float | None = None
    rounding_bound: float | None = None

    def to_json(self) -> dict[str, Any]:
        """``{value, ci_low, ci_high, n, reason?, rounding_bound?}``; non-finite numbers become None."""
        out: dict[str, Any] = {"value": _finite(self.value), "ci_low": _finite(self.ci_low),
                               "ci_high": _finite(self.ci_high), "n": int(self.n)}
        reason = self.reason
        if out["value"] is None and reason is None:
            reason = "not computable because the value is not a finite number"
        if reason is not None:
            out["reason"] = reason
        if self.rounding_bound is not None:
            out["rounding_bound"] = _finite(self.rounding_bound)
        return out


@dataclass(frozen=True)
class CalibrationBin:
    """One bin of the reliability curve: scores in (low, high], their mean and the observed rate."""

    low: float
    high: float
    mean_score: float
    observed_rate: float
    n: int

    def to_json(self) -> dict[str, Any]:
        """Plain form."""
        return {"low": self.low, "high": self.high, "mean_score": _finite(self.mean_score),
                "observed_rate": _finite(self.observed_rate), "n": self.n}


@dataclass(frozen=True)
class BucketMetrics:
    """The metrics of one time bucket (``start`` is the bucket's first instant)."""

    start: datetime
    rows: int
    labeled_rows: int
    metrics: dict[str, MetricValue]

    def to_json(self) -> dict[str, Any]:
        """``{start, rows, labeled_rows, metrics}``."""
        return {"start": self.start.isoformat(), "rows": self.rows,
                "labeled_rows": self.labeled_rows,
                "metrics": {name: m.to_json() for name, m in self.metrics.items()}}


@dataclass(frozen=True)
class MetricsResult:
    """Performance of a model over a window (and segment), overall and per bucket."""

    task: str
    window: Window
    segment: str
    bucket: str | None
    rows: int
    labeled_rows: int
    metrics: dict[str, MetricValue]
    buckets: list[BucketMetrics] = field(default_factory=list)
    positive_label: Any = None
    calibration: list[CalibrationBin] | None = None
    confusion: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """The ``mlmon metrics --json`` object (without estimates; see ``metrics_payload``)."""
        return metrics_payload(self)


# ---------------------------------------------------------------- public API


def compute_metrics(view, window: Window | None = None, segment: Segment = (),
                    bucket: str | None = None, level: float = LEVEL,
                    exclude: Segment = ()) -> MetricsResult:
    """Metrics of the view's task over ``window`` and ``segment``, overall and per ``bucket``.

    ``bucket`` is one of ``windows.BUCKETS`` (hour, day, week, month) or None for no buckets.
    ``exclude`` leaves out the rows of another segment (its complement: ``NOT coalesce(..., FALSE)``,
    so rows where it is unknown, e.g. on a null, stay in). One SQL statement does all the
    aggregation; see the module docstring for the methods.
    """
    if bucket is not None:
        check_bucket(bucket)
    window = window or Window(None, None)
    grouping = _Grouping.of(view, bucket)
    excluded = sql.compile_segment(exclude, view.column_types).fragment if exclude else None
    where = view.where(window, segment, extra=[sql.render(
        "NOT coalesce(({s}), FALSE)", s=excluded)] if excluded is not None else [])
    if view.task == "regression":
        groups, extra = _regression(view, where, grouping, level)
    elif view.task == "multiclass":
        groups, extra = _multiclass(view, where, grouping, level)
    else:
        groups, extra = _binary(view, where, grouping, level)
    total = groups.pop(TOTAL, None) or _Group(0, 0, _all_missing(view.task, _EMPTY))
    buckets = [BucketMetrics(start, g.rows, g.labeled_rows, g.metrics)
               for start, g in sorted(groups.items())] if bucket else []
    return MetricsResult(
        task=view.task, window=window, segment=sql.describe_segment(tuple(segment or ())),
        bucket=bucket, rows=total.rows, labeled_rows=total.labeled_rows, metrics=total.metrics,
        buckets=buckets, positive_label=view.positive_label if view.task == "binary" else None,
        calibration=extra.get("calibration"), confusion=extra.get("confusion"),
    )


def metrics_payload(result: MetricsResult, estimated: Mapping[str, Any] | None = None,
                    bucket_estimates: Mapping[datetime, Mapping[str, Any]] | None = None
                    ) -> dict[str, Any]:
    """The JSON object of ``mlmon metrics``; the one place it is built.

    ``estimated`` (for the whole window) and ``bucket_estimates`` (by bucket start) are where
    performance estimated without labels is merged in, as ``estimated`` keys beside ``metrics``.
    """
    payload: dict[str, Any] = {
        "task": result.task,
        "window": result.window.to_json(),
        "segment": result.segment,
        "by": result.bucket,
        "rows": result.rows,
        "labeled_rows": result.labeled_rows,
        "metrics": {name: m.to_json() for name, m in result.metrics.items()},
        "headline": headline_metrics(result),
        "ci_level": LEVEL,
        "ci_methods": CI_METHODS[result.task],
        "buckets": [b.to_json() for b in result.buckets],
    }
    if result.task == "binary":
        payload["positive_label"] = result.positive_label
        payload["calibration"] = [b.to_json() for b in result.calibration or []]
    if result.confusion is not None:
        payload["confusion"] = result.confusion
    if estimated is not None:
        payload["estimated"] = dict(estimated)
    if bucket_estimates:
        for entry, bucket in zip(payload["buckets"], result.buckets):
            if bucket.start in bucket_estimates:
                entry["estimated"] = dict(bucket_estimates[bucket.start])
    return payload


def headline_metrics(result: MetricsResult) -> list[str]:
    """The metric names the Overview leads with, most telling first.

    Binary: when the positive rate (observed, or predicted when there are no labels yet) is below
    10 % or above 90 %, accuracy mostly measures the majority class, so balanced accuracy and
    average precision (PR AUC) lead; otherwise accuracy, ROC AUC and F1. Multiclass: accuracy and
    macro F1, or macro F1 and balanced accuracy first when one class holds over 90 % of the
    labels. Regression: MAE, RMSE, R², bias.
    """
    if result.task == "regression":
        names = ["mae", "rmse", "r2", "mean_error", "mape"]
    elif result.task == "multiclass":
        names = ["macro_f1", "balanced_accuracy", "accuracy", "weighted_f1"] \
            if _majority_share(result) > 1 - IMBALANCE else \
            ["accuracy", "macro_f1", "weighted_f1", "balanced_accuracy"]
    else:
        rate = result.metrics.get("positive_rate", MetricValue(None)).value
        if rate is None:
            rate = result.metrics.get("predicted_positive_rate", MetricValue(None)).value
        if rate is not None and (rate < IMBALANCE or rate > 1 - IMBALANCE):
            names = ["balanced_accuracy", "average_precision", "recall", "precision", "roc_auc",
                     "f1", "accuracy"]
        else:
            names = ["accuracy", "roc_auc", "f1", "balanced_accuracy", "average_precision",
                     "precision", "recall"]
        names += ["log_loss", "brier_score", "ece", "positive_rate"]
    return [name for name in names if name in result.metrics]


def bucket_series(result: MetricsResult, names: Iterable[str] | None = None):
    """Per-bucket metrics as a tidy DataFrame: start, metric, value, ci_low, ci_high, n (for charts)."""
    import pandas as pd

    wanted = set(names) if names is not None else None
    records = [
        {"start": b.start, "metric": name, "value": m.value, "ci_low": m.ci_low,
         "ci_high": m.ci_high, "n": m.n}
        for b in result.buckets for name, m in b.metrics.items()
        if wanted is None or name in wanted
    ]
    columns = ["start", "metric", "value", "ci_low", "ci_high", "n"]
    frame = pd.DataFrame.from_records(records, columns=columns)
    for column in ("value", "ci_low", "ci_high"):
        frame[column] = frame[column].astype("float64")
    frame["n"] = frame["n"].astype("int64")
    return frame


def describe_metrics(result: MetricsResult) -> str:
    """A few lines of plain text for the terminal."""
    lines = [f"{result.task} model, window {result.window or '(all data)'}, {result.segment}: "
             f"{result.rows:,} rows, {result.labeled_rows:,} labeled"]
    width = max((len(name) for name in result.metrics), default=10)
    for name, metric in result.metrics.items():
        if metric.value is None:
            lines.append(f"  {name:<{width}}  -  {metric.reason}")
            continue
        ci = (f"  [{metric.ci_low:.4f}, {metric.ci_high:.4f}]"
              if metric.ci_low is not None and metric.ci_high is not None else "")
        lines.append(f"  {name:<{width}}  {metric.value:.4f}{ci}  n={metric.n:,}")
    if result.buckets:
        lines.append(f"{len(result.buckets)} {result.bucket} buckets (use --json for all of them)")
    return "\n".join(lines)


def p_value_text(p_value: float | None) -> str:
    """A p-value for sentences: ``p<0.001``, ``p=0.023``, ``p=0.34`` or ``p not computable``."""
    if p_value is None or not math.isfinite(p_value):
        return "p not computable"
    if p_value < 0.001:
        return "p<0.001"
    return f"p={p_value:.3f}" if p_value < 0.1 else f"p={p_value:.2f}"


def wilson_interval(successes: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """The Wilson score interval for a binomial proportion (no continuity correction)."""
    if n <= 0:
        raise ValueError("the Wilson interval needs n > 0")
    z = _z(level)
    p = successes / n
    z2n = z * z / n
    center = (p + z2n / 2) / (1 + z2n)
    half = z / (1 + z2n) * math.sqrt(p * (1 - p) / n + z2n / (4 * n))
    return max(0.0, center - half), min(1.0, center + half)


# ---------------------------------------------------------------- shared plumbing

_EMPTY = "not computable because the window holds no rows"

_BUCKET_TEMPLATES = {
    "hour": "date_trunc('hour', {ts})",
    "day": "date_trunc('day', {ts})",
    "week": "date_trunc('week', {ts})",
    "month": "date_trunc('month', {ts})",
}


@dataclass(frozen=True)
class _Grouping:
    """SQL pieces that group by bucket and over the whole window, or over the window only."""

    by_bucket: bool
    bucket: Fragment  # the bucket expression (NULL when there are no buckets)
    sets: Fragment  # GROUPING SETS list for per-group aggregates
    is_total: Fragment  # TRUE on the whole-window row

    @classmethod
    def of(cls, view, bucket: str | None) -> "_Grouping":
        if bucket is None:
            # One group: the constant NULL bucket, which is the whole window.
            return cls(False, Fragment("CAST(NULL AS TIMESTAMP)"), Fragment("((bucket))"),
                       Fragment("TRUE"))
        expression = sql.render(_BUCKET_TEMPLATES[bucket], ts=Ident(view.roles.timestamp))
        return cls(True, expression, Fragment("((bucket), ())"), Fragment("grouping(bucket) = 1"))

    def sets_with(self, column: str) -> Fragment:
        """GROUPING SETS that also split by ``column`` (a constant name used in templates)."""
        if not self.by_bucket:
            return sql.render("((bucket, {c}))", c=Ident(column))
        return sql.render("((bucket, {c}), ({c}))", c=Ident(column))


@dataclass
class _Group:
    rows: int
    labeled_rows: int
    metrics: dict[str, MetricValue]


def _fetch_records(view, query: Fragment) -> list[dict[str, Any]]:
    """Rows of a query as dicts by column name."""
    cursor = view.execute(query)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


TOTAL = "total"  # the key of the whole-window group beside bucket starts


def _by_group(records: list[dict[str, Any]], kind: str) -> dict[Any, list[dict[str, Any]]]:
    """Records of one kind keyed by bucket start (``TOTAL`` for the whole window).

    Rows without a timestamp have no bucket: they count in the whole window only.
    """
    out: dict[Any, list[dict[str, Any]]] = {}
    for record in records:
        if record["kind"] != kind:
            continue
        key = TOTAL if record["is_total"] else record["bucket"]
        if key is not None:
            out.setdefault(key, []).append(record)
    return out


_NOT_A_NUMBER = ("SELECT any_value({c}) FROM {log} WHERE {c} IS NOT NULL "
                 "AND TRY_CAST({c} AS DOUBLE) IS NULL")


def _numeric_column(view, column: str, role: str) -> None:
    if not sql.is_numeric_type(view.columns[column].duck_type):
        example = view.fetchall(sql.render(_NOT_A_NUMBER, c=Ident(column),
                                           log=view.relation))[0][0]
        shown = f" (e.g. {example!r}" + (", a decimal comma?" if isinstance(example, str) and
                                        re.fullmatch(r"-?\d+,\d+", example) else "") + ")" \
            if example is not None else ""
        raise SourceError(f"the {role} column {column!r} has type {view.columns[column].duck_type}"
                          f"{shown}; {role} values must be numbers")


def _all_missing(task: str, reason: str, names: Iterable[str] | None = None) -> dict[str, MetricValue]:
    if names is None:
        names = {"binary": BINARY_METRICS, "regression": REGRESSION_METRICS,
                 "multiclass": ("accuracy", "balanced_accuracy", "macro_f1", "weighted_f1")}[task]
    return {name: MetricValue(None, n=0, reason=reason) for name in names}


def _label_reason(rows: int, labeled: int, has_target: bool) -> str | None:
    """Why label-based metrics cannot be computed, or None when there are labels."""
    if not has_target:
        return "not computable because the log has no target column (set [columns] target)"
    if rows == 0:
        return _EMPTY
    if labeled == 0:
        return f"not computable because none of the {rows:,} rows has a label yet"
    return None


# ---------------------------------------------------------------- binary

_BINARY_BASE = """WITH base AS MATERIALIZED (
    SELECT {bucket} AS bucket, {actual} AS y, {predicted} AS yhat,
           CASE WHEN isfinite({score}) THEN {score} END AS s,
           coalesce(NOT isfinite({score}), FALSE) AS bad_score
    FROM {log} WHERE {where}
), counts AS (
    SELECT 'counts' AS kind, {is_total} AS is_total, bucket,
        count(*) AS rows, count(y) AS labeled_rows, count(yhat) AS predicted_rows,
        count(*) FILTER (WHERE yhat) AS predicted_positive,
        count(*) FILTER (WHERE y AND yhat) AS tp, count(*) FILTER (WHERE NOT y AND yhat) AS fp,
        count(*) FILTER (WHERE y AND NOT yhat) AS fn, count(*) FILTER (WHERE NOT y AND NOT yhat) AS tn,
        count(*) FILTER (WHERE y) AS positives,
        count(s) FILTER (WHERE y IS NOT NULL) AS scored,
        count(*) FILTER (WHERE y IS NOT NULL AND bad_score) AS bad_scores,
        min(s) FILTER (WHERE y IS NOT NULL) AS min_score,
        max(s) FILTER (WHERE y IS NOT NULL) AS max_score,
        avg(loss) AS log_loss, var_samp(loss) AS log_loss_var,
        avg(squared) AS brier, var_samp(squared) AS brier_var
    FROM (
        SELECT *,
            CASE WHEN y THEN -ln(greatest(least(s, {high}), {eps}))
                 WHEN NOT y THEN -ln(greatest(least(1 - s, {high}), {eps})) END AS loss,
            (CAST(y AS DOUBLE) - s) * (CAST(y AS DOUBLE) - s) AS squared
        FROM base
    )
    GROUP BY GROUPING SETS {sets}
), calibration AS (
    SELECT 'calibration' AS kind, {is_total} AS is_total, bucket, bin,
        count(*) AS bin_rows, sum(s) AS bin_score_sum, count(*) FILTER (WHERE y) AS bin_positives
    FROM (SELECT bucket, y, s, {bin} AS bin FROM base WHERE y IS NOT NULL AND s IS NOT NULL)
    GROUP BY GROUPING SETS {bin_sets}
), score_stats AS (
    SELECT approx_count_distinct(s) > {exact_limit} AS rounded, min(s) AS low, max(s) AS high
    FROM base WHERE y IS NOT NULL
), score_groups AS (
    SELECT bucket, {key} AS s,
        CAST(count(*) FILTER (WHERE y) AS DOUBLE) AS pos,
        CAST(count(*) FILTER (WHERE NOT y) AS DOUBLE) AS neg
    FROM base CROSS JOIN score_stats WHERE y IS NOT NULL AND s IS NOT NULL
    GROUP BY ALL
), ranking_total AS (
    SELECT 'ranking' AS kind, TRUE AS is_total, CAST(NULL AS TIMESTAMP) AS bucket,
        (SELECT rounded FROM score_stats) AS rounded, {ranking_sums}
    FROM (
        SELECT *, {cpos} AS cpos, {cneg} AS cneg FROM (
            SELECT *, {running}
            FROM (SELECT s, sum(pos) AS pos, sum(neg) AS neg FROM score_groups GROUP BY s)
            WINDOW w AS (ORDER BY s DESC ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
        )
    )
)"""

_BINARY_RANKING_BUCKETS = """, ranking_buckets AS (
    SELECT 'ranking' AS kind, FALSE AS is_total, bucket,
        (SELECT rounded FROM score_stats) AS rounded, {ranking_sums}
    FROM (
        SELECT *, {cpos} AS cpos, {cneg} AS cneg FROM (
            SELECT *, {running}
            FROM score_groups
            WINDOW w AS (PARTITION BY bucket ORDER BY s DESC ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
        )
    )
    GROUP BY bucket
)
SELECT * FROM counts UNION ALL BY NAME SELECT * FROM calibration
UNION ALL BY NAME SELECT * FROM ranking_total UNION ALL BY NAME SELECT * FROM ranking_buckets"""

_BINARY_TOTAL_ONLY = """
SELECT * FROM counts UNION ALL BY NAME SELECT * FROM calibration
UNION ALL BY NAME SELECT * FROM ranking_total"""

# Running counts of positives and negatives scored at or above s. DuckDB's running window sums
# cost far more than the sort, so the fast form carries both counts in one double,
# pos + PACK * neg, which is exact while the positives stay below PACK and the negatives below
# 2**53 / PACK; larger windows are computed again with two plain sums (see _binary).
PACK = 2 ** 26
_RUNNING = {
    True: ("sum(pos + {pack} * neg) OVER w AS packed",
           "packed - {pack} * floor(packed / {pack})", "floor(packed / {pack})"),
    False: ("sum(pos) OVER w AS run_pos, sum(neg) OVER w AS run_neg", "run_pos", "run_neg"),
}

# cpos/cneg: positives/negatives scored at or above s. For a positive group, negatives ranked
# above it (ties half) = cneg - neg/2; for a negative group, positives above it = cpos - pos/2.
_RANKING_SUMS = """sum(pos) AS rank_positives, sum(neg) AS rank_negatives,
        sum(pos * (cneg - 0.5 * neg)) AS pos_neg_above,
        sum(pos * (cneg - 0.5 * neg) * (cneg - 0.5 * neg)) AS pos_neg_above_sq,
        sum(neg * (cpos - 0.5 * pos)) AS neg_pos_above,
        sum(neg * (cpos - 0.5 * pos) * (cpos - 0.5 * pos)) AS neg_pos_above_sq,
        sum(CASE WHEN pos > 0 THEN pos * cpos / (cpos + cneg) END) AS ap_sum,
        sum(pos * neg) AS tied_pairs,
        sum(CASE WHEN pos > 0 THEN pos * (cpos / (cpos + cneg - neg)
                                          - (cpos - pos + 1) / (cpos - pos + 1 + cneg)) END)
            AS ap_spread"""

# The ranking key: the exact score, or, when the window's labeled rows hold more than
# EXACT_SCORE_LIMIT distinct scores (HyperLogLog estimate), the score's cell on a fine monotone
# grid: log-odds for probabilities (fine near 0 and 1, where scores crowd), else linear on the range.
_RANKING_KEY = """CASE WHEN NOT rounded THEN s
        WHEN low >= 0 AND high <= 1
            THEN round(ln(greatest(least(s, {high_clamp}), {low_clamp})
                          / (1 - greatest(least(s, {high_clamp}), {low_clamp}))) * {logit_steps})
        ELSE round((s - low) * {linear_steps} / greatest(high - low, 1e-300)) END"""


def calibration_edges() -> np.ndarray:
    """The 11 bin edges of sklearn's uniform calibration curve (``np.linspace(0, 1, 11)``)."""
    return np.linspace(0.0, 1.0, ECE_BINS + 1)


def _bin_expression(score: str) -> Fragment:
    # searchsorted(edges[1:-1], s) (side="left") = how many inner edges lie strictly below s.
    inner = calibration_edges()[1:-1]
    terms = [sql.render("CAST({s} > {edge} AS INTEGER)", s=Ident(score), edge=sql.param(float(e)))
             for e in inner]
    return sql.join(terms, " + ")


def _binary_sql(view, where: Fragment, grouping: _Grouping, packed: bool = True) -> Fragment:
    roles = view.roles
    positive = view.positive_label
    score = Fragment("CAST(NULL AS DOUBLE)")
    eps = FLOAT64_EPS
    if roles.score:
        _numeric_column(view, roles.score, "score")
        score = sql.render("CAST({s} AS DOUBLE)", s=Ident(roles.score))
        if view.columns[roles.score].duck_type.upper() in ("FLOAT", "REAL", "FLOAT4"):
            eps = FLOAT32_EPS
    actual = (sql.render("{t} = {p}", t=Ident(roles.target), p=sql.param(positive))
              if roles.target else Fragment("CAST(NULL AS BOOLEAN)"))
    if roles.prediction:
        predicted = sql.render("{c} = {p}", c=Ident(roles.prediction), p=sql.param(positive))
    elif roles.score:
        predicted = sql.render("{s} >= {t}", s=score, t=float(view.config.model.threshold))
    else:
        predicted = Fragment("CAST(NULL AS BOOLEAN)")
    template = _BINARY_BASE + (_BINARY_RANKING_BUCKETS if grouping.by_bucket else _BINARY_TOTAL_ONLY)
    return sql.render(
        template, bucket=grouping.bucket, actual=actual, predicted=predicted, score=score,
        log=view.relation, where=where, is_total=grouping.is_total, sets=grouping.sets,
        high=1.0 - eps, eps=eps, bin=_bin_expression("s"), bin_sets=grouping.sets_with("bin"),
        ranking_sums=Fragment(_RANKING_SUMS), exact_limit=int(EXACT_SCORE_LIMIT),
        key=sql.render(_RANKING_KEY, low_clamp=PROBABILITY_CLAMP, high_clamp=1.0 - PROBABILITY_CLAMP,
                       logit_steps=float(LOGIT_STEPS_PER_UNIT), linear_steps=float(LINEAR_GRID_STEPS)),
        **{name: sql.render(part, pack=float(PACK))
           for name, part in zip(("running", "cpos", "cneg"), _RUNNING[packed])},
    )


def _binary(view, where: Fragment, grouping: _Grouping, level: float):
    records = _fetch_records(view, _binary_sql(view, where, grouping))
    if not _packing_was_exact(records):
        records = _fetch_records(view, _binary_sql(view, where, grouping, packed=False))
    counts = {key: rows[0] for key, rows in _by_group(records, "counts").items()}
    ranking = {key: rows[0] for key, rows in _by_group(records, "ranking").items()}
    calibration = _by_group(records, "calibration")
    groups: dict[Any, _Group] = {}
    for key, c in counts.items():
        if key is not TOTAL and not grouping.by_bucket:
            continue
        metrics = _binary_metrics(view, c, ranking.get(key), calibration.get(key, []), level)
        groups[key] = _Group(int(c["rows"]), int(c["labeled_rows"]), metrics)
    _bootstrap_binary_intervals(groups, counts, calibration, level)
    extra: dict[str, Any] = {}
    total = counts.get(TOTAL)
    if total is not None:
        extra["calibration"] = _reliability_curve(calibration.get(TOTAL, []))
        extra["confusion"] = {k: int(total[k]) for k in ("tp", "fp", "fn", "tn")}
    return groups, extra


def _packing_was_exact(records: list[dict[str, Any]]) -> bool:
    """Whether the packed running counts stayed exact (the whole window bounds every bucket)."""
    for record in records:
        if record["kind"] == "ranking" and record["is_total"]:
            positives = record["rank_positives"] or 0
            negatives = record["rank_negatives"] or 0
            return positives < PACK and negatives < 2 ** 53 // PACK
    return True


def _binary_metrics(view, c: Mapping[str, Any], r: Mapping[str, Any] | None,
                    bins: list[Mapping[str, Any]], level: float) -> dict[str, MetricValue]:
    rows, labeled = int(c["rows"]), int(c["labeled_rows"])
    metrics = _threshold_metrics(view, c, level)
    metrics.update(_score_metrics(view, c, r, bins, level))
    metrics["positive_rate"] = _label_reason_metric(rows, labeled, view) or \
        _proportion(int(c["positives"]), labeled, level, "")
    predicted_rows = int(c["predicted_rows"])
    metrics["predicted_positive_rate"] = (
        _proportion(int(c["predicted_positive"]), predicted_rows, level, "")
        if predicted_rows else MetricValue(None, reason=_EMPTY if rows == 0 else
                                           "not computable because no row has a predicted label"))
    return {name: metrics[name] for name in BINARY_METRICS}


def _label_reason_metric(rows: int, labeled: int, view) -> MetricValue | None:
    reason = _label_reason(rows, labeled, view.roles.target is not None)
    return MetricValue(None, reason=reason) if reason else None


def _threshold_metrics(view, c, level: float) -> dict[str, MetricValue]:
    names = ("accuracy", "balanced_accuracy", "precision", "recall", "f1")
    rows, labeled = int(c["rows"]), int(c["labeled_rows"])
    missing = _label_reason_metric(rows, labeled, view)
    if missing is None and view.roles.prediction is None and view.roles.score is None:
        missing = MetricValue(None, reason="not computable because the log has neither a "
                                           "prediction nor a score column")
    tp, fp, fn, tn = (int(c[k]) for k in ("tp", "fp", "fn", "tn"))
    n = tp + fp + fn + tn
    if missing is None and n == 0:
        missing = MetricValue(None, reason=f"not computable because none of the {labeled:,} "
                                           "labeled rows has a predicted label")
    if missing is not None:
        return {name: missing for name in names}
    return {
        "accuracy": _proportion(tp + tn, n, level, ""),
        "balanced_accuracy": _balanced_accuracy(tp, fp, fn, tn, level),
        "precision": _proportion(tp, tp + fp, level,
                                 "not computable because the model predicted no positives"),
        "recall": _proportion(tp, tp + fn, level,
                              "not computable because there are no positive labels"),
        "f1": _binary_f1(tp, fp, fn, tn),
    }


def _score_metrics(view, c, r, bins, level: float) -> dict[str, MetricValue]:
    names = ("roc_auc", "average_precision", "log_loss", "brier_score", "ece")
    rows, labeled = int(c["rows"]), int(c["labeled_rows"])
    missing = None if view.roles.score else MetricValue(
        None, reason="not computable because the log has no score column (set [columns] score)")
    missing = missing or _label_reason_metric(rows, labeled, view)
    bad, scored = int(c["bad_scores"]), int(c["scored"])
    if missing is None and bad:
        missing = MetricValue(None, n=scored, reason=f"not computable because {bad:,} labeled "
                                                      "rows have a non-finite score (NaN or ±inf)")
    if missing is None and scored == 0:
        missing = MetricValue(None, reason=f"not computable because none of the {labeled:,} "
                                           "labeled rows has a score")
    if missing is not None:
        return {name: missing for name in names}
    out = {"roc_auc": _with_rounding_bound(_roc_auc(r, level), r, _auc_rounding_bound),
           "average_precision": _with_rounding_bound(_average_precision(r, level), r,
                                                     _ap_rounding_bound)}
    low, high = float(c["min_score"]), float(c["max_score"])
    if low < 0 or high > 1:
        reason = (f"not computable because the scores are not probabilities: they range from "
                  f"{low:g} to {high:g}")
        out.update({name: MetricValue(None, n=scored, reason=reason)
                    for name in ("log_loss", "brier_score", "ece")})
        return out
    out["log_loss"] = _mean_metric(c["log_loss"], c["log_loss_var"], scored, level, low=0.0)
    out["brier_score"] = _mean_metric(c["brier"], c["brier_var"], scored, level, low=0.0)
    out["ece"] = _ece(bins)
    return out


def _roc_auc(r: Mapping[str, Any] | None, level: float) -> MetricValue:
    positives, negatives = int(r["rank_positives"]), int(r["rank_negatives"])
    n = positives + negatives
    if positives == 0 or negatives == 0:
        which = "positive" if negatives == 0 else "negative"
        return MetricValue(None, n=n, reason=f"not computable because all {n:,} scored labeled rows "
                                             f"are {which}; ROC AUC needs both classes")
    auc = float(r["neg_pos_above"]) / (positives * negatives)
    variance = _delong_variance(r, auc)
    if variance is None:
        return MetricValue(auc, n=n, reason="no confidence interval because DeLong's variance "
                                            "needs at least two rows of each class")
    se = math.sqrt(variance)
    if not 0.0 < auc < 1.0 or se == 0.0:
        return MetricValue(auc, n=n, se=se, reason="no confidence interval because the classes "
                                                   "are perfectly separated (or reversed)")
    low, high = _logit_interval(auc, se / (auc * (1 - auc)), level)
    return MetricValue(auc, low, high, n, se=se)


def _with_rounding_bound(metric: MetricValue, r: Mapping[str, Any], bound) -> MetricValue:
    """The metric with ``bound(r)`` as its rounding bound when it was computed over score cells."""
    if metric.value is None or not r.get("rounded"):
        return metric
    return dataclasses.replace(metric, rounding_bound=bound(r))


def _auc_rounding_bound(r: Mapping[str, Any]) -> float:
    """How far a ROC AUC over score cells can be from the exact one (None on the exact path).

    Rounding is monotone, so only the (positive, negative) pairs that share a cell can change:
    each counts ½ instead of its exact 0, ½ or 1. The bound is half their share of all pairs.
    """
    return 0.5 * float(r["tied_pairs"]) / (float(r["rank_positives"]) * float(r["rank_negatives"]))


def _ap_rounding_bound(r: Mapping[str, Any]) -> float:
    """How far an average precision over score cells can be from the exact one (None if exact).

    A positive in a cell with A positives and B negatives above it, p positives and n negatives in
    it, gets the precision at the cell's end, (A+p)/(A+B+p+n); exactly it would get a precision at
    a point inside the cell, between (A+1)/(A+B+1+n) and (A+p)/(A+B+p), as does the cell's end.
    The bound is the mean width of those ranges over the positives (``ap_spread`` / P).
    """
    return float(r["ap_spread"]) / float(r["rank_positives"])


def _delong_variance(r: Mapping[str, Any], auc: float) -> float | None:
    """DeLong's variance of the AUC from the per-score-group sums.

    The placement value of a positive at score s is V10 = (negatives below s + ½ tied)/N =
    1 - a(s)/N with a(s) the negatives above it (ties half); of a negative, V01 = b(s)/P with b(s)
    the positives above it (ties half). S10 = Σ_pos (V10 - AUC)²/(P-1), S01 likewise, and
    var = S10/P + S01/N. The squares expand into the sums Σ pos·a, Σ pos·a², Σ neg·b, Σ neg·b².
    """
    p, n = float(r["rank_positives"]), float(r["rank_negatives"])
    if p < 2 or n < 2:
        return None
    d = 1.0 - auc
    s10 = (p * d * d - 2 * d * float(r["pos_neg_above"]) / n
           + float(r["pos_neg_above_sq"]) / (n * n)) / (p - 1)
    s01 = (float(r["neg_pos_above_sq"]) / (p * p) - 2 * auc * float(r["neg_pos_above"]) / p
           + n * auc * auc) / (n - 1)
    return max(0.0, s10 / p + s01 / n)


def _average_precision(r: Mapping[str, Any], level: float) -> MetricValue:
    positives, negatives = int(r["rank_positives"]), int(r["rank_negatives"])
    n = positives + negatives
    if positives == 0:
        return MetricValue(None, n=n, reason="not computable because there are no positive labels")
    ap = float(r["ap_sum"]) / positives
    if not 0.0 < ap < 1.0:
        return MetricValue(ap, n=n, reason="no confidence interval because the average precision "
                                           "is exactly 0 or 1")
    low, high = _logit_interval(ap, 1.0 / math.sqrt(positives * ap * (1 - ap)), level)
    return MetricValue(ap, low, high, n, se=math.sqrt(ap * (1 - ap) / positives))


def _ece(bins: list[Mapping[str, Any]]) -> MetricValue:
    """Expected calibration error: Σ (n_bin/n)·|observed rate - mean score|; CI filled later."""
    counts, positives, score_sums = _bin_arrays(bins)
    n = int(counts.sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        gaps = np.where(counts > 0, np.abs(positives / counts - score_sums / counts), 0.0)
    return MetricValue(float(np.sum(counts / n * gaps)), n=n)


def _bin_arrays(bins: list[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows, positives and score sums of the ECE_BINS bins (zeros for empty bins)."""
    counts, positives, score_sums = np.zeros(ECE_BINS), np.zeros(ECE_BINS), np.zeros(ECE_BINS)
    for b in bins:
        k = int(b["bin"])
        counts[k], positives[k] = int(b["bin_rows"]), int(b["bin_positives"])
        score_sums[k] = float(b["bin_score_sum"])
    return counts, positives, score_sums


def _bootstrap_binary_intervals(groups: dict[Any, "_Group"], counts: Mapping[Any, Mapping],
                                calibration: Mapping[Any, list], level: float) -> None:
    """Fill the bootstrap CIs of F1 and ECE, for all groups at once (one batch of draws)."""
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    with_f1 = [key for key, g in groups.items() if g.metrics["f1"].value is not None]
    if with_f1:
        cells = np.array([[int(counts[k][c]) for c in ("tp", "fp", "fn", "tn")] for k in with_f1])
        draws = _multinomial_draws(rng, cells)
        denominator = 2 * draws[..., 0] + draws[..., 1] + draws[..., 2]
        with np.errstate(invalid="ignore", divide="ignore"):
            samples = np.where(denominator > 0, 2 * draws[..., 0] / denominator, np.nan)
        _set_intervals(groups, with_f1, "f1", samples, level)
    with_ece = [key for key, g in groups.items() if g.metrics["ece"].value is not None]
    if with_ece:
        arrays = [_bin_arrays(calibration.get(k, [])) for k in with_ece]
        bin_counts = np.array([a[0] for a in arrays])
        with np.errstate(invalid="ignore", divide="ignore"):
            rates = np.nan_to_num(np.array([a[1] for a in arrays]) / bin_counts)
            means = np.nan_to_num(np.array([a[2] for a in arrays]) / bin_counts)
        draws = _multinomial_draws(rng, bin_counts)
        positives = rng.binomial(draws, rates[:, np.newaxis, :])
        with np.errstate(invalid="ignore", divide="ignore"):
            gaps = np.where(draws > 0, np.abs(positives / np.maximum(draws, 1)
                                              - means[:, np.newaxis, :]), 0.0)
        n = bin_counts.sum(axis=1)[:, np.newaxis]
        samples = np.sum(draws * gaps, axis=2) / n
        _set_intervals(groups, with_ece, "ece", samples, level)


def _multinomial_draws(rng, cells: np.ndarray) -> np.ndarray:
    """BOOTSTRAP_SAMPLES multinomial resamples of each row of ``cells``: shape (G, B, cells)."""
    cells = np.asarray(cells, dtype=np.int64)
    n = cells.sum(axis=1)
    probabilities = cells / n[:, np.newaxis]
    return rng.multinomial(n[:, np.newaxis], probabilities[:, np.newaxis, :],
                           size=(len(cells), BOOTSTRAP_SAMPLES))


def _set_intervals(groups, keys, name: str, samples: np.ndarray, level: float) -> None:
    alpha = (1 - level) / 2
    samples = np.where(np.isfinite(samples), samples, np.nan)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows give NaN limits
        limits = np.nanquantile(samples, [alpha, 1 - alpha], axis=1)
        spread = np.nanstd(samples, axis=1, ddof=1)
    for key, low, high, se in zip(keys, limits[0], limits[1], spread):
        old = groups[key].metrics[name]
        groups[key].metrics[name] = MetricValue(old.value, _finite(low), _finite(high), old.n,
                                                old.reason, se=_finite(se))


def _reliability_curve(bins: list[Mapping[str, Any]]) -> list[CalibrationBin]:
    edges = calibration_edges()
    curve = []
    for b in sorted(bins, key=lambda b: b["bin"]):
        k, count = int(b["bin"]), int(b["bin_rows"])
        curve.append(CalibrationBin(float(edges[k]), float(edges[k + 1]),
                                    float(b["bin_score_sum"]) / count,
                                    int(b["bin_positives"]) / count, count))
    return curve


def _balanced_accuracy(tp: int, fp: int, fn: int, tn: int, level: float) -> MetricValue:
    recalls = [(tp, tp + fn), (tn, tn + fp)]
    present = [(k, m) for k, m in recalls if m > 0]
    values = [k / m for k, m in present]
    intervals = [wilson_interval(k, m, level) for k, m in present]
    value = sum(values) / len(values)
    # MOVER: the sum's limits from each term's distance to its own Wilson limits.
    low = sum(values) - math.sqrt(sum((v - lo) ** 2 for v, (lo, _) in zip(values, intervals)))
    high = sum(values) + math.sqrt(sum((hi - v) ** 2 for v, (_, hi) in zip(values, intervals)))
    k = len(values)
    se = math.sqrt(sum(v * (1 - v) / m for v, (_, m) in zip(values, present))) / k
    return MetricValue(value, max(0.0, low / k), min(1.0, high / k), tp + fp + fn + tn, se=se)


def _binary_f1(tp: int, fp: int, fn: int, tn: int) -> MetricValue:
    """F1 = 2TP/(2TP + FP + FN); its bootstrap CI is filled later."""
    n = tp + fp + fn + tn
    if 2 * tp + fp + fn == 0:
        return MetricValue(None, n=n, reason="not computable because there are no positive labels "
                                             "and no predicted positives")
    return MetricValue(2 * tp / (2 * tp + fp + fn), n=n)


# ---------------------------------------------------------------- multiclass

_MULTICLASS = """WITH base AS MATERIALIZED (
    SELECT {bucket} AS bucket, {target} AS t, {prediction} AS p FROM {log} WHERE {where}
), counts AS (
    SELECT 'counts' AS kind, {is_total} AS is_total, bucket,
        count(*) AS rows, count(t) AS labeled_rows, count(p) AS predicted_rows
    FROM base GROUP BY GROUPING SETS {sets}
), cells AS (
    SELECT 'cell' AS kind, {is_total} AS is_total, bucket, t AS actual, p AS predicted,
        count(*) AS cell_rows
    FROM base WHERE t IS NOT NULL AND p IS NOT NULL
    GROUP BY GROUPING SETS {cell_sets}
)
SELECT * FROM counts UNION ALL BY NAME SELECT * FROM cells"""


def _class_expressions(view) -> tuple[Fragment, Fragment]:
    roles = view.roles
    if roles.target is None or roles.prediction is None:
        target = Ident(roles.target) if roles.target else None
        prediction = Ident(roles.prediction) if roles.prediction else None
        cast = "CAST({c} AS VARCHAR)"
        return (sql.render(cast, c=target) if target else Fragment("CAST(NULL AS VARCHAR)"),
                sql.render(cast, c=prediction) if prediction else Fragment("CAST(NULL AS VARCHAR)"))
    t_type = view.columns[roles.target].duck_type
    p_type = view.columns[roles.prediction].duck_type
    template = "{c}" if t_type == p_type else "CAST({c} AS VARCHAR)"
    # Different types (INTEGER target, VARCHAR prediction) are compared as text.
    return (sql.render(template, c=Ident(roles.target)),
            sql.render(template, c=Ident(roles.prediction)))


def _multiclass(view, where: Fragment, grouping: _Grouping, level: float):
    target, prediction = _class_expressions(view)
    cell_sets = (sql.render("((bucket, actual, predicted), (actual, predicted))")
                 if grouping.by_bucket else Fragment("((bucket, actual, predicted))"))
    query = sql.render(_MULTICLASS, bucket=grouping.bucket, target=target, prediction=prediction,
                       log=view.relation, where=where, is_total=grouping.is_total,
                       sets=grouping.sets, cell_sets=cell_sets)
    records = _fetch_records(view, query)
    counts = {key: rows[0] for key, rows in _by_group(records, "counts").items()}
    cells = _by_group(records, "cell")
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    groups: dict[Any, _Group] = {}
    for key, c in counts.items():
        if key is not TOTAL and not grouping.by_bucket:
            continue
        matrix = {(cell["actual"], cell["predicted"]): int(cell["cell_rows"])
                  for cell in cells.get(key, [])}
        metrics = _multiclass_metrics(view, c, matrix, level, rng)
        groups[key] = _Group(int(c["rows"]), int(c["labeled_rows"]), metrics)
    extra: dict[str, Any] = {}
    if TOTAL in counts:
        matrix = {(cell["actual"], cell["predicted"]): int(cell["cell_rows"])
                  for cell in cells.get(TOTAL, [])}
        labels = _class_labels(matrix)
        extra["confusion"] = {"labels": labels,
                              "counts": [[matrix.get((a, p), 0) for p in labels] for a in labels]}
    return groups, extra


def _class_labels(matrix: Mapping[tuple[Any, Any], int]) -> list[Any]:
    """Classes seen as target or prediction, sorted like ``np.unique`` (numbers, then text)."""
    seen = {a for a, _ in matrix} | {p for _, p in matrix}
    return sorted(seen, key=lambda v: (0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v)))


def _multiclass_metrics(view, c, matrix: dict[tuple[Any, Any], int], level: float,
                        rng) -> dict[str, MetricValue]:
    rows, labeled = int(c["rows"]), int(c["labeled_rows"])
    reason = _label_reason(rows, labeled, view.roles.target is not None)
    if reason is None and view.roles.prediction is None:
        reason = "not computable because the log has no prediction column (set [columns] prediction)"
    n = sum(matrix.values())
    if reason is None and n == 0:
        reason = f"not computable because none of the {labeled:,} labeled rows has a prediction"
    if reason is not None:
        return _all_missing("multiclass", reason)
    labels = _class_labels(matrix)
    counts = np.array([[matrix.get((a, p), 0) for p in labels] for a in labels], dtype=np.int64)
    correct = int(np.trace(counts))
    point = _class_scores(counts[np.newaxis])
    low_high = _bootstrap_class_scores(counts, level, rng)
    metrics = {"accuracy": _proportion(correct, n, level, "")}
    for name in ("balanced_accuracy", "macro_f1", "weighted_f1"):
        low, high, se = low_high[name]
        metrics[name] = MetricValue(float(point[name][0]), low, high, n, se=se)
    support, predicted = counts.sum(axis=1), counts.sum(axis=0)
    for i, label in enumerate(labels):
        metrics[f"precision[{label}]"] = _proportion(
            int(counts[i, i]), int(predicted[i]), level,
            f"not computable because the model never predicted class {label}")
    for i, label in enumerate(labels):
        metrics[f"recall[{label}]"] = _proportion(
            int(counts[i, i]), int(support[i]), level,
            f"not computable because no labeled row is of class {label}")
    return metrics


def _class_scores(counts: np.ndarray) -> dict[str, np.ndarray]:
    """Balanced accuracy, macro and weighted F1 of a stack of confusion matrices (B, K, K).

    A class counts only when it occurs as target or prediction in that matrix, as in sklearn,
    whose labels are the union of both.
    """
    tp = np.diagonal(counts, axis1=1, axis2=2).astype(float)
    support = counts.sum(axis=2).astype(float)
    predicted = counts.sum(axis=1).astype(float)
    present = (support + predicted) > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(present, 2 * tp / (support + predicted), np.nan)
        recall = np.where(support > 0, tp / support, np.nan)
        macro = np.nanmean(f1, axis=1)
        weighted = np.nansum(np.nan_to_num(f1) * support, axis=1) / support.sum(axis=1)
        balanced = np.nanmean(recall, axis=1)
    return {"balanced_accuracy": balanced, "macro_f1": macro, "weighted_f1": weighted}


def _bootstrap_class_scores(counts: np.ndarray, level: float, rng) -> dict[str, tuple]:
    n = int(counts.sum())
    cells = counts.size
    samples = max(200, min(BOOTSTRAP_SAMPLES, BOOTSTRAP_CELL_BUDGET // max(cells, 1)))
    draws = rng.multinomial(n, counts.ravel() / n, size=samples).reshape((samples,) + counts.shape)
    scores = _class_scores(draws)
    return {name: _percentiles(values, level) + (_spread(values),)
            for name, values in scores.items()}


# ---------------------------------------------------------------- regression

_REGRESSION = """WITH base AS MATERIALIZED (
    SELECT {bucket} AS bucket,
           CAST({target} AS DOUBLE) AS y_raw, CAST({prediction} AS DOUBLE) AS p_raw
    FROM {log} WHERE {where}
), finite AS (
    SELECT bucket, y_raw AS y, p_raw - y_raw AS e,
           abs(p_raw - y_raw) / greatest(abs(y_raw), {eps}) AS ape
    FROM base
    WHERE isfinite(y_raw) AND isfinite(p_raw)
), counts AS (
    SELECT 'counts' AS kind, {is_total} AS is_total, bucket,
        count(*) AS rows, count(y_raw) AS labeled_rows,
        count(*) FILTER (WHERE y_raw IS NOT NULL AND p_raw IS NOT NULL) AS paired,
        count(*) FILTER (WHERE y_raw IS NOT NULL AND p_raw IS NOT NULL
                           AND NOT (isfinite(y_raw) AND isfinite(p_raw))) AS non_finite
    FROM base GROUP BY GROUPING SETS {sets}
), means AS (
    SELECT {is_total} AS is_total, bucket, avg(y) AS mean_y FROM finite GROUP BY GROUPING SETS {sets}
), centered AS (
    SELECT f.bucket, f.y, f.e, f.ape, f.y - b.mean_y AS dy, f.y - t.mean_y AS dy_total
    FROM finite AS f
    LEFT JOIN (SELECT bucket, mean_y FROM means WHERE NOT is_total) AS b ON f.bucket = b.bucket
    CROSS JOIN (SELECT mean_y FROM means WHERE is_total) AS t
), moments AS (
    SELECT 'moments' AS kind, {is_total} AS is_total, bucket, count(*) AS n,
        avg(abs(e)) AS mae, var_samp(abs(e)) AS mae_var, avg(e) AS me, var_samp(e) AS me_var,
        avg(e * e) AS mse, var_samp(e * e) AS mse_var, avg(ape) AS mape, var_samp(ape) AS mape_var,
        sum(e * e) AS sse,
        sum(dy * dy) AS sst_bucket, var_samp(dy * dy) AS sst_var_bucket,
        covar_samp(e * e, dy * dy) AS cov_bucket,
        sum(dy_total * dy_total) AS sst_total, var_samp(dy_total * dy_total) AS sst_var_total,
        covar_samp(e * e, dy_total * dy_total) AS cov_total,
        quantile_cont(abs(e), {quantiles}) AS abs_error_quantiles
    FROM centered GROUP BY GROUPING SETS {sets}
), ranked_total AS (
    SELECT TRUE AS is_total, CAST(NULL AS TIMESTAMP) AS bucket, abs(e) AS ae,
        row_number() OVER (ORDER BY abs(e)) AS r, count(*) OVER () AS n
    FROM finite
){ranked_buckets}, quantile_bounds AS (
    SELECT 'quantile_ci' AS kind, is_total, bucket, {rank_bounds}
    FROM ranked GROUP BY is_total, bucket
)
SELECT * FROM counts UNION ALL BY NAME SELECT * FROM moments
UNION ALL BY NAME SELECT * FROM quantile_bounds"""

_RANKED_BUCKETS = """, ranked AS (
    SELECT * FROM ranked_total
    UNION ALL
    SELECT FALSE AS is_total, bucket, abs(e) AS ae,
        row_number() OVER (PARTITION BY bucket ORDER BY abs(e)) AS r,
        count(*) OVER (PARTITION BY bucket) AS n
    FROM finite
)"""

_RANKED_TOTAL_ONLY = """, ranked AS (SELECT * FROM ranked_total)"""

# 1-based ranks of the order statistics bounding quantile q (normal approximation to the binomial).
_RANK_LOW = "max(ae) FILTER (WHERE r = floor(n * {q} - {z} * sqrt(n * {q} * (1 - {q})))) AS {name}"
_RANK_HIGH = "max(ae) FILTER (WHERE r = ceil(n * {q} + {z} * sqrt(n * {q} * (1 - {q}))) + 1) AS {name}"


def _quantile_rank_bounds(level: float) -> Fragment:
    z = _z(level)
    parts = []
    for q in QUANTILES:
        label = _quantile_name(q)
        parts.append(sql.render(_RANK_LOW, q=q, z=z, name=Ident(label + "_low")))
        parts.append(sql.render(_RANK_HIGH, q=q, z=z, name=Ident(label + "_high")))
    return sql.join(parts, ",\n        ")


def _quantile_ranks(n: int, q: float, level: float) -> tuple[int, int]:
    """The ranks ``_RANK_LOW``/``_RANK_HIGH`` select, computed the same way."""
    z = _z(level)
    spread = z * math.sqrt(n * q * (1 - q))
    return math.floor(n * q - spread), math.ceil(n * q + spread) + 1


def _quantile_name(q: float) -> str:
    return f"abs_error_p{round(q * 100):d}"


def _regression(view, where: Fragment, grouping: _Grouping, level: float):
    roles = view.roles
    for column, role in ((roles.target, "target"), (roles.prediction, "prediction")):
        if column is not None:
            _numeric_column(view, column, role)
    target = Ident(roles.target) if roles.target else Fragment("NULL")
    prediction = Ident(roles.prediction) if roles.prediction else Fragment("NULL")
    quantiles = sql.render("[{a}, {b}, {c}]", a=QUANTILES[0], b=QUANTILES[1], c=QUANTILES[2])
    query = sql.render(
        _REGRESSION, bucket=grouping.bucket, target=target, prediction=prediction,
        log=view.relation, where=where, eps=FLOAT64_EPS, is_total=grouping.is_total,
        sets=grouping.sets, quantiles=quantiles, rank_bounds=_quantile_rank_bounds(level),
        ranked_buckets=Fragment(_RANKED_BUCKETS if grouping.by_bucket else _RANKED_TOTAL_ONLY),
    )
    records = _fetch_records(view, query)
    counts = {key: rows[0] for key, rows in _by_group(records, "counts").items()}
    moments = {key: rows[0] for key, rows in _by_group(records, "moments").items()}
    bounds = {key: rows[0] for key, rows in _by_group(records, "quantile_ci").items()}
    groups: dict[Any, _Group] = {}
    for key, c in counts.items():
        if key is not TOTAL and not grouping.by_bucket:
            continue
        metrics = _regression_metrics(view, c, moments.get(key), bounds.get(key), key is TOTAL,
                                      level)
        groups[key] = _Group(int(c["rows"]), int(c["labeled_rows"]), metrics)
    return groups, {}


def _regression_metrics(view, c, m, bounds, is_total: bool, level: float) -> dict[str, MetricValue]:
    rows, labeled = int(c["rows"]), int(c["labeled_rows"])
    reason = _label_reason(rows, labeled, view.roles.target is not None)
    if reason is None and view.roles.prediction is None:
        reason = "not computable because the log has no prediction column (set [columns] prediction)"
    paired, bad = int(c["paired"]), int(c["non_finite"])
    if reason is None and paired == 0:
        reason = f"not computable because none of the {labeled:,} labeled rows has a prediction"
    if reason is None and bad:
        reason = (f"not computable because {bad:,} labeled rows have a non-finite target or "
                  "prediction (NaN or ±inf)")
    if reason is not None:
        return _all_missing("regression", reason)
    n = int(m["n"])
    metrics = {
        "mae": _mean_metric(m["mae"], m["mae_var"], n, level, low=0.0),
        "rmse": _rmse(m["mse"], m["mse_var"], n, level),
        "mape": _mean_metric(m["mape"], m["mape_var"], n, level, low=0.0),
        "r2": _r2(m, n, "total" if is_total else "bucket", level),
        "mean_error": _mean_metric(m["me"], m["me_var"], n, level),
    }
    for q, value in zip(QUANTILES, m["abs_error_quantiles"]):
        metrics[_quantile_name(q)] = _quantile_metric(q, float(value), bounds, n, level)
    return {name: metrics[name] for name in REGRESSION_METRICS}


def _rmse(mse, mse_var, n: int, level: float) -> MetricValue:
    mse = float(mse)
    if mse_var is None:
        return MetricValue(math.sqrt(mse), n=n, reason="no confidence interval from a single row")
    se = math.sqrt(float(mse_var) / n)
    z = _z(level)
    low, high = max(0.0, mse - z * se), mse + z * se
    return MetricValue(math.sqrt(mse), math.sqrt(low), math.sqrt(high), n,
                       se=se / (2 * math.sqrt(mse)) if mse > 0 else None)


def _r2(m, n: int, scope: str, level: float) -> MetricValue:
    sse, sst = float(m["sse"]), float(m[f"sst_{scope}"])
    if sst == 0.0:
        return MetricValue(None, n=n, reason="not computable because the target is constant "
                                             "in these rows (R² divides by its variance)")
    value = 1.0 - sse / sst
    var_a, var_b, cov = m["mse_var"], m[f"sst_var_{scope}"], m[f"cov_{scope}"]
    if var_a is None or var_b is None or cov is None:
        return MetricValue(value, n=n, reason="no confidence interval from a single row")
    a, b = sse / n, sst / n
    # Delta method for 1 - A/B with A, B means of e² and (y - ȳ)².
    variance = (float(var_a) / b ** 2 - 2 * a * float(cov) / b ** 3
                + a * a * float(var_b) / b ** 4) / n
    se = math.sqrt(max(variance, 0.0))
    z = _z(level)
    return MetricValue(value, value - z * se, min(1.0, value + z * se), n, se=se)


def _quantile_metric(q: float, value: float, bounds, n: int, level: float) -> MetricValue:
    low_rank, high_rank = _quantile_ranks(n, q, level)
    label = _quantile_name(q)
    if low_rank < 1 or high_rank > n or bounds is None:
        needed = _rows_needed_for_quantile(q, level)
        return MetricValue(value, n=n, reason=f"no confidence interval for the {label[10:]} "
                                              f"with {n:,} rows (needs about {needed:,})")
    return MetricValue(value, float(bounds[label + "_low"]), float(bounds[label + "_high"]), n)


def _rows_needed_for_quantile(q: float, level: float) -> int:
    n = 2
    while True:
        low, high = _quantile_ranks(n, q, level)
        if low >= 1 and high <= n:
            return n
        n = n + max(1, n // 10)


# ---------------------------------------------------------------- statistics helpers


def _z(level: float) -> float:
    return NormalDist().inv_cdf(0.5 + level / 2)


def _proportion(successes: int, n: int, level: float, reason_if_empty: str) -> MetricValue:
    if n <= 0:
        return MetricValue(None, n=0, reason=reason_if_empty or "not computable because n = 0")
    low, high = wilson_interval(successes, n, level)
    p = successes / n
    return MetricValue(p, low, high, n, se=math.sqrt(p * (1 - p) / n))


def _mean_metric(mean, variance, n: int, level: float, low: float | None = None) -> MetricValue:
    """A mean of i.i.d. per-row terms with its normal (CLT) interval."""
    mean = float(mean)
    if variance is None or n < 2:
        return MetricValue(mean, n=n, reason="no confidence interval from a single row")
    se = math.sqrt(max(float(variance), 0.0) / n)
    z = _z(level)
    lower = mean - z * se
    if low is not None:
        lower = max(low, lower)
    return MetricValue(mean, lower, mean + z * se, n, se=se)


def _logit_interval(value: float, se_logit: float, level: float) -> tuple[float, float]:
    center = math.log(value / (1 - value))
    z = _z(level)
    return _expit(center - z * se_logit), _expit(center + z * se_logit)


def _expit(x: float) -> float:
    return 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))


def _percentiles(samples: np.ndarray, level: float) -> tuple[float | None, float | None]:
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return None, None
    alpha = (1 - level) / 2
    low, high = np.quantile(finite, [alpha, 1 - alpha])
    return float(low), float(high)


def _spread(samples: np.ndarray) -> float | None:
    """The bootstrap standard error: the standard deviation of the finite resampled values."""
    finite = samples[np.isfinite(samples)]
    return float(np.std(finite, ddof=1)) if finite.size > 1 else None


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _majority_share(result: MetricsResult) -> float:
    if not result.confusion:
        return 0.0
    support = [sum(row) for row in result.confusion["counts"]]
    total = sum(support)
    return max(support) / total if total else 0.0
