"""Model health for the Overview: headline metrics now vs the reference, and their daily trend.

Built on ``metrics.compute_metrics`` (realized, with CIs) and ``estimate.estimate_performance``
(estimated where labels are missing). The change of a metric is tested with a z statistic from the
two windows' standard errors; where a method gives a CI but no standard error, the CI half-width
divided by 1.96 stands in for it (exact for normal-approximation CIs, close for Wilson ones away
from 0 and 1). The windows are disjoint sets of rows, so the two estimates are independent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from scipy import stats

from mlmon_core.config import Window
from mlmon_core.sql import Segment

Z95 = 1.959963984540054
LABELS = {
    "accuracy": "accuracy", "balanced_accuracy": "balanced accuracy", "precision": "precision",
    "recall": "recall", "f1": "F1", "roc_auc": "ROC AUC", "average_precision": "PR AUC",
    "log_loss": "log loss", "brier_score": "Brier score", "ece": "calibration error (ECE)",
    "positive_rate": "positive rate", "predicted_positive_rate": "predicted positive rate",
    "macro_f1": "macro F1", "weighted_f1": "weighted F1", "mae": "MAE", "rmse": "RMSE",
    "mape": "MAPE", "r2": "R²", "mean_error": "mean error (bias)",
}
LOWER_IS_BETTER = {"log_loss", "brier_score", "ece", "mae", "rmse", "mape"}
NEUTRAL = {"positive_rate", "predicted_positive_rate", "mean_error"}


def label(name: str) -> str:
    """The plain name of a metric; a class name in brackets (``recall[rare_bird]``) is kept as is."""
    if name in LABELS:
        return LABELS[name]
    metric, bracket, class_name = name.partition("[")
    return LABELS.get(metric, metric.replace("_", " ")) + bracket + class_name


@dataclass(frozen=True)
class MetricChange:
    """One metric in the current and the reference window, and whether it moved."""

    name: str
    current: Any  # metrics.MetricValue
    reference: Any
    difference: float | None
    p_value: float | None
    worse: bool | None
    sentence: str

    def to_json(self) -> dict[str, Any]:
        """Plain form."""
        return {"metric": self.name, "current": self.current.to_json(),
                "reference": self.reference.to_json(), "difference": self.difference,
                "p_value": self.p_value, "worse": self.worse, "sentence": self.sentence}


@dataclass
class Health:
    """What the Overview shows about the model: headline changes and the trend."""

    headline: list[MetricChange]
    changes: list[MetricChange]
    trend: pd.DataFrame  # start, metric, series (realized|estimated), value, ci_low, ci_high, n
    rows: int
    labeled_rows: int
    estimated: dict[str, Any] = field(default_factory=dict)
    estimate_reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Plain form."""
        return {"rows": self.rows, "labeled_rows": self.labeled_rows,
                "headline": [c.to_json() for c in self.headline],
                "changes": [c.to_json() for c in self.changes], "estimated": self.estimated,
                "estimate_reason": self.estimate_reason}


def standard_error(metric) -> float | None:
    """The metric's standard error, or the CI half-width / 1.96 when only a CI is known."""
    if getattr(metric, "se", None) is not None and math.isfinite(metric.se):
        return float(metric.se)
    if metric.ci_low is None or metric.ci_high is None:
        return None
    return (metric.ci_high - metric.ci_low) / (2 * Z95)


def _spread(current, reference) -> float | None:
    """The standard error of the difference of two independent metrics (None when unknown)."""
    se_current, se_reference = standard_error(current), standard_error(reference)
    if se_current is None or se_reference is None:
        return None
    shares = all(0.0 <= m.value <= 1.0 and m.n > 0 for m in (current, reference))
    if shares and min(se_current, se_reference) == 0.0:
        # A share of exactly 0 or 1 has a Wald standard error of 0, which makes any difference
        # look certain (p = 0 for precision 0/2 vs 5/5); the pooled two-proportion one does not.
        pooled = ((current.value * current.n + reference.value * reference.n)
                  / (current.n + reference.n))
        return math.sqrt(pooled * (1 - pooled) * (1 / current.n + 1 / reference.n))
    return math.hypot(se_current, se_reference)


def compare_metric(name: str, current, reference) -> MetricChange:
    """Test whether a metric differs between two independent windows and say it in words."""
    if current.value is None or reference.value is None:
        why = current.reason if current.value is None else reference.reason
        return MetricChange(name, current, reference, None, None, None,
                            f"{label(name)}: {why or 'not computable'}")
    difference = float(current.value - reference.value)
    spread = _spread(current, reference)
    p_value = None
    if spread is not None:
        p_value = float(2 * stats.norm.sf(abs(difference) / spread)) if spread > 0 else (
            1.0 if difference == 0 else 0.0)
    worse = None
    if name not in NEUTRAL and p_value is not None and p_value < 0.05:
        worse = difference > 0 if name in LOWER_IS_BETTER else difference < 0
    return MetricChange(name, current, reference, difference, p_value, worse,
                        _sentence(name, current, reference, difference, p_value))


def _sentence(name, current, reference, difference, p_value) -> str:
    verb = "rose" if difference > 0 else "fell" if difference < 0 else "stayed"
    from mlmon_core.metrics import p_value_text

    evidence = "" if p_value is None else f", {p_value_text(p_value)}"
    if difference == 0:
        return f"{label(name)} stayed at {current.value:.3f} (n={current.n:,}{evidence})"
    return (f"{label(name)} {verb} from {reference.value:.3f} to {current.value:.3f} "
            f"(n={current.n:,} vs {reference.n:,}{evidence})")


def model_health(view, window: Window, reference: Window, segment: Segment = (),
                 bucket: str = "day") -> Health:
    """Headline metrics now vs the reference, every metric's change, and the trend over both."""
    from mlmon_core.metrics import bucket_series, compute_metrics, headline_metrics

    current = compute_metrics(view, window, segment)
    changes = _changes(current, compute_metrics(view, reference, segment))
    by_name = {c.name: c for c in changes}
    headline = [by_name[n] for n in headline_metrics(current) if n in by_name][:4]
    span = _span(window, reference)
    trend_result = compute_metrics(view, span, segment, bucket=bucket)
    trend = bucket_series(trend_result).assign(series="realized")
    estimated, reason = {}, None
    if view.task == "binary" and view.roles.score:
        estimated, estimated_trend, reason = _estimates(view, window, span, reference, segment,
                                                        bucket)
        trend = pd.concat([trend, estimated_trend], ignore_index=True)
    return Health(headline=headline, changes=changes, trend=trend, rows=current.rows,
                  labeled_rows=current.labeled_rows, estimated=estimated, estimate_reason=reason)


def _span(window: Window, reference: Window) -> Window:
    starts = [w.start for w in (window, reference) if w.start is not None]
    ends = [w.end for w in (window, reference) if w.end is not None]
    return Window(min(starts) if starts else None, max(ends) if ends else None)


def _estimates(view, window, span, reference, segment, bucket):
    from mlmon_core.estimate import estimate_performance

    overall = estimate_performance(view, window, segment, bucket=None, reference=reference)
    over_time = estimate_performance(view, span, segment, bucket=bucket, reference=reference)
    records = [r for r in over_time.chart_records() if r["series"] == "estimated (unlabeled rows)"]
    trend = pd.DataFrame.from_records(
        records, columns=["start", "metric", "series", "value", "ci_low", "ci_high"])
    trend["series"] = "estimated"
    return overall.window, trend, overall.reason or over_time.reason


def metric_changes(view, current: Window, reference: Window, current_segment: Segment = (),
                   reference_segment: Segment | None = None) -> list[MetricChange]:
    """Every metric on both sides (two periods, or two segments such as model versions) and its
    change, with a test. ``reference_segment`` defaults to ``current_segment``."""
    from mlmon_core.metrics import compute_metrics

    reference_segment = current_segment if reference_segment is None else reference_segment
    return _changes(compute_metrics(view, current, current_segment),
                    compute_metrics(view, reference, reference_segment))


def _changes(now, before) -> list[MetricChange]:
    return [compare_metric(name, now.metrics[name], before.metrics[name])
            for name in now.metrics if name in before.metrics]
