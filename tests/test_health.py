"""Model health: the change test between windows, and the dashboard's assembled results."""

from __future__ import annotations

import math
from datetime import datetime

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import accuracy_score

from mlmon_core.config import Window
from mlmon_core.health import compare_metric, metric_changes, model_health, standard_error
from mlmon_core.metrics import MetricValue, compute_metrics

REFERENCE = Window(datetime(2025, 1, 1), datetime(2025, 1, 11))
CURRENT = Window(datetime(2025, 1, 11), datetime(2025, 1, 21))


def test_change_test_uses_both_standard_errors():
    now, before = MetricValue(0.80, 0.78, 0.82, 1000, se=0.012), MetricValue(0.85, 0.83, 0.87, 900, se=0.011)
    change = compare_metric("accuracy", now, before)
    z = (0.80 - 0.85) / math.hypot(0.012, 0.011)
    assert change.p_value == pytest.approx(2 * stats.norm.sf(abs(z)), rel=1e-12)
    assert change.difference == pytest.approx(-0.05)
    assert change.worse is True
    assert "fell from 0.850 to 0.800" in change.sentence


def test_change_test_falls_back_to_the_ci_half_width():
    metric = MetricValue(0.5, 0.4, 0.6, 100)
    assert standard_error(metric) == pytest.approx(0.1 / stats.norm.ppf(0.975), rel=1e-9)


def test_lower_is_better_and_neutral_metrics():
    rose = compare_metric("log_loss", MetricValue(0.6, se=0.01, n=10), MetricValue(0.4, se=0.01, n=10))
    assert rose.worse is True
    neutral = compare_metric("positive_rate", MetricValue(0.6, se=0.01, n=10),
                             MetricValue(0.4, se=0.01, n=10))
    assert neutral.worse is None and neutral.p_value < 0.001


def test_not_computable_side_gives_a_reason():
    change = compare_metric("roc_auc", MetricValue(None, reason="not computable because one class"),
                            MetricValue(0.8, se=0.01, n=10))
    assert change.p_value is None and change.worse is None
    assert "one class" in change.sentence


def _log(make_log, shift: float):
    rng = np.random.default_rng(4)
    n = 4000
    timestamp = pd.Timestamp("2025-01-01") + pd.to_timedelta(rng.integers(0, 20 * 86400, n), unit="s")
    score = rng.random(n)
    late = timestamp >= pd.Timestamp("2025-01-11")
    truth = np.where(late & (rng.random(n) < shift), 1 - (score >= 0.5), rng.random(n) < score)
    frame = pd.DataFrame({"id": np.arange(n), "timestamp": timestamp, "x": rng.normal(size=n),
                          "prediction": (score >= 0.5).astype(int), "score": score,
                          "target": truth.astype(int)})
    return make_log(frame), frame


def test_model_health_flags_a_planted_drop(make_log):
    view, frame = _log(make_log, shift=0.3)
    health = model_health(view, CURRENT, REFERENCE)
    by_name = {c.name: c for c in health.changes}
    late = frame[frame["timestamp"] >= pd.Timestamp("2025-01-11")]
    assert by_name["accuracy"].current.value == pytest.approx(
        accuracy_score(late["target"], late["prediction"]), abs=1e-12)
    assert by_name["accuracy"].worse is True
    assert health.headline and health.headline[0].name in by_name
    realized = health.trend[health.trend["series"] == "realized"]
    daily = compute_metrics(view, Window(REFERENCE.start, CURRENT.end), bucket="day")
    assert len(realized[realized["metric"] == "accuracy"]) == len(daily.buckets)


def test_metric_changes_between_two_segments(make_log):
    view, _ = _log(make_log, shift=0.0)
    from mlmon_core.sql import Condition

    changes = metric_changes(view, CURRENT, CURRENT, (Condition("x", ">=", value=0),),
                             (Condition("x", "<", value=0),))
    accuracy = next(c for c in changes if c.name == "accuracy")
    assert accuracy.p_value is not None and accuracy.p_value > 0.001
