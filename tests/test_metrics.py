"""Performance metrics against scikit-learn / numpy / scipy oracles, per window and per bucket."""

from __future__ import annotations

import json
import math
import warnings
from datetime import datetime

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn import metrics as skm

from mlmon_core import cli, metrics
from mlmon_core.config import Window
from mlmon_core.metrics import (bucket_series, compute_metrics, headline_metrics, metrics_payload,
                                wilson_interval)
from tests.conftest import write_project

TOL = 1e-9
START = np.datetime64("2024-03-01T00:00:00")
BINARY_TOML = '[model]\ntask = "binary"\npositive_label = 1\n'
WINDOW = Window(datetime(2024, 3, 1), datetime(2024, 4, 1))


# ---------------------------------------------------------------- data

def binary_log(seed: int, rows: int = 1500, days: int = 5, prevalence: float = 0.3,
               unlabeled: float = 0.15) -> pd.DataFrame:
    """Random binary predictions with tied scores (two decimals) and some missing labels."""
    rng = np.random.default_rng(seed)
    truth = (rng.random(rows) < prevalence).astype(int)
    score = np.clip(rng.normal(0.35 + 0.3 * truth, 0.2), 0, 1).round(2)
    target = pd.array(truth, dtype="Int64")
    target[rng.random(rows) < unlabeled] = pd.NA
    return pd.DataFrame({
        "id": np.arange(rows),
        "timestamp": START + (rng.random(rows) * days * 86400).astype("timedelta64[s]"),
        "prediction": np.where(rng.random(rows) < 0.9, (score >= 0.5).astype(int),
                               rng.integers(0, 2, rows)),
        "score": score,
        "target": target,
    })


def _labeled(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["target"].notna()]


def _day_groups(frame: pd.DataFrame):
    days = frame["timestamp"].dt.floor("D")
    return {day.to_pydatetime(): part for day, part in frame.groupby(days)}


def _quiet(function, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return function(*args, **kwargs)
        except ValueError:
            return np.nan


def binary_oracle(frame: pd.DataFrame) -> dict[str, float]:
    """sklearn's values on the labeled rows (NaN where sklearn cannot compute or divides by 0)."""
    labeled = _labeled(frame)
    y = labeled["target"].astype(int).to_numpy()
    pred = labeled["prediction"].to_numpy()
    score = labeled["score"].to_numpy()
    both = len(np.unique(y)) == 2
    return {
        "accuracy": skm.accuracy_score(y, pred),
        "balanced_accuracy": _quiet(skm.balanced_accuracy_score, y, pred),
        "precision": skm.precision_score(y, pred, zero_division=np.nan),
        "recall": skm.recall_score(y, pred, zero_division=np.nan),
        "f1": skm.f1_score(y, pred, zero_division=np.nan),
        "roc_auc": _quiet(skm.roc_auc_score, y, score) if both else np.nan,
        "average_precision": _quiet(skm.average_precision_score, y, score) if y.sum() else np.nan,
        "log_loss": skm.log_loss(y, score, labels=[0, 1]),
        "brier_score": skm.brier_score_loss(y, score, labels=[0, 1]),
        "ece": ece_oracle(y, score),
        "positive_rate": y.mean(),
        "predicted_positive_rate": frame["prediction"].mean(),
    }


def ece_oracle(y: np.ndarray, score: np.ndarray) -> float:
    """ECE from sklearn's calibration_curve and the same bins' counts."""
    from sklearn.calibration import calibration_curve

    prob_true, prob_pred = calibration_curve(y, score, n_bins=10, strategy="uniform")
    counts = np.bincount(np.searchsorted(np.linspace(0, 1, 11)[1:-1], score), minlength=10)
    counts = counts[counts > 0]
    return float(np.sum(counts / counts.sum() * np.abs(prob_true - prob_pred)))


def assert_matches(result_metrics, oracle: dict[str, float], where: str) -> None:
    for name, expected in oracle.items():
        got = result_metrics[name]
        if np.isnan(expected):
            assert got.value is None and got.reason, f"{where} {name}: expected not computable"
        else:
            assert got.value == pytest.approx(expected, abs=TOL, rel=TOL), f"{where} {name}"


# ---------------------------------------------------------------- binary

@pytest.mark.parametrize("seed,prevalence", [(0, 0.3), (1, 0.3), (2, 0.06), (3, 0.5)])
def test_binary_metrics_equal_sklearn_overall_and_per_day(make_log, seed, prevalence):
    frame = binary_log(seed, prevalence=prevalence)
    view = make_log(frame, toml=BINARY_TOML)
    result = compute_metrics(view, WINDOW, (), bucket="day")
    assert (result.rows, result.labeled_rows) == (len(frame), len(_labeled(frame)))
    assert_matches(result.metrics, binary_oracle(frame), "window")
    parts = _day_groups(frame)
    assert [b.start for b in result.buckets] == sorted(parts)
    for bucket in result.buckets:
        part = parts[bucket.start]
        assert (bucket.rows, bucket.labeled_rows) == (len(part), len(_labeled(part)))
        assert_matches(bucket.metrics, binary_oracle(part), f"bucket {bucket.start}")


def test_small_buckets_with_one_class_say_why(make_log):
    frame = binary_log(5, rows=120, days=20, prevalence=0.05)
    view = make_log(frame, toml=BINARY_TOML)
    result = compute_metrics(view, WINDOW, (), bucket="day")
    parts = _day_groups(frame)
    one_class = [b for b in result.buckets
                 if _labeled(parts[b.start])["target"].nunique() == 1]
    assert one_class, "the data should have single-class days"
    for bucket in result.buckets:
        assert_matches(bucket.metrics, binary_oracle(parts[bucket.start]), str(bucket.start))
    for bucket in one_class:
        assert bucket.metrics["roc_auc"].value is None
        assert "both classes" in bucket.metrics["roc_auc"].reason


def test_labels_from_a_separate_file_and_segment(make_log):
    frame = binary_log(7)
    labels = frame.loc[frame["target"].notna(), ["id", "target"]]
    view = make_log(frame.drop(columns="target"), labels, toml=BINARY_TOML)
    from mlmon_core.sql import parse_where

    segment = parse_where("score >= 0.3")
    result = compute_metrics(view, WINDOW, segment, bucket="week")
    assert result.segment == "score ≥ 0.3"
    assert_matches(result.metrics, binary_oracle(frame[frame["score"] >= 0.3]), "segment")


def test_unpacked_running_counts_fallback_gives_the_same_numbers(make_log, monkeypatch):
    frame = binary_log(11)
    view = make_log(frame, toml=BINARY_TOML)
    fast = compute_metrics(view, WINDOW, (), bucket="day")
    monkeypatch.setattr(metrics, "PACK", 4)  # every window now "overflows" the packed counts
    slow = compute_metrics(view, WINDOW, (), bucket="day")
    assert_matches(slow.metrics, binary_oracle(frame), "fallback")
    assert slow.metrics["roc_auc"] == fast.metrics["roc_auc"]
    assert [b.metrics["average_precision"] for b in slow.buckets] == \
        [b.metrics["average_precision"] for b in fast.buckets]


def continuous_binary_log(seed: int, rows: int = 3000, days: int = 4) -> pd.DataFrame:
    """Labeled binary predictions whose scores are all distinct, some within 1e-13 of 0 and 1."""
    rng = np.random.default_rng(seed)
    truth = (rng.random(rows) < 0.3).astype(int)
    score = 1 / (1 + np.exp(-rng.normal(-0.8 + 1.6 * truth, 3.0)))
    score[:6] = [1e-15, 2e-14, 3e-13, 1 - 1e-15, 1 - 2e-14, 0.5]
    return pd.DataFrame({
        "id": np.arange(rows),
        "timestamp": START + (rng.random(rows) * days * 86400).astype("timedelta64[s]"),
        "prediction": (score >= 0.5).astype(int),
        "score": score,
        "target": truth,
    })


def assert_within_rounding_bound(result_metrics, frame: pd.DataFrame, where: str) -> None:
    y, score = frame["target"].to_numpy(), frame["score"].to_numpy()
    for name, exact in (("roc_auc", skm.roc_auc_score(y, score)),
                        ("average_precision", skm.average_precision_score(y, score))):
        got = result_metrics[name]
        assert got.rounding_bound is not None and got.rounding_bound >= 0, f"{where} {name}"
        assert abs(got.value - exact) <= got.rounding_bound + TOL, f"{where} {name}"
        assert got.to_json()["rounding_bound"] == got.rounding_bound


@pytest.mark.parametrize("seed", [0, 1])
def test_many_distinct_scores_rank_cells_within_the_stated_bound(make_log, monkeypatch, seed):
    frame = continuous_binary_log(seed)
    view = make_log(frame, toml=BINARY_TOML)
    exact = compute_metrics(view, WINDOW, (), bucket="day")
    assert exact.metrics["roc_auc"].rounding_bound is None
    assert "rounding_bound" not in exact.metrics["roc_auc"].to_json()
    monkeypatch.setattr(metrics, "EXACT_SCORE_LIMIT", 100)
    monkeypatch.setattr(metrics, "LOGIT_STEPS_PER_UNIT", 10)  # coarse, so cells hold many rows
    rounded = compute_metrics(view, WINDOW, (), bucket="day")
    auc = rounded.metrics["roc_auc"]
    assert auc.value != exact.metrics["roc_auc"].value  # the cells really were ranked
    assert 0 < auc.rounding_bound < 0.01 and auc.ci_low < auc.value < auc.ci_high
    assert_within_rounding_bound(rounded.metrics, frame, "window")
    parts = _day_groups(frame)
    for bucket in rounded.buckets:
        assert_within_rounding_bound(bucket.metrics, parts[bucket.start], f"bucket {bucket.start}")
    # Everything but the ranking metrics stays exact.
    for name in ("accuracy", "log_loss", "brier_score", "ece", "f1"):
        assert rounded.metrics[name].value == pytest.approx(exact.metrics[name].value, rel=TOL)


def test_rounded_ranking_on_scores_that_are_not_probabilities(make_log, monkeypatch):
    frame = continuous_binary_log(2)
    frame["score"] = np.log(frame["score"] / (1 - frame["score"]))  # margins, about -30 to 30
    view = make_log(frame.drop(columns="prediction"), toml=BINARY_TOML)
    monkeypatch.setattr(metrics, "EXACT_SCORE_LIMIT", 100)
    monkeypatch.setattr(metrics, "LINEAR_GRID_STEPS", 300)
    result = compute_metrics(view, WINDOW, ())
    assert result.metrics["roc_auc"].rounding_bound > 0
    assert_within_rounding_bound(result.metrics, frame, "window")


def test_threshold_on_score_when_there_is_no_prediction_column(make_log):
    frame = binary_log(4).drop(columns="prediction")
    view = make_log(frame, toml=BINARY_TOML + "threshold = 0.4\n")
    result = compute_metrics(view, WINDOW)
    labeled = _labeled(frame)
    predicted = (labeled["score"] >= 0.4).astype(int)
    assert result.metrics["accuracy"].value == pytest.approx(
        skm.accuracy_score(labeled["target"].astype(int), predicted), abs=TOL)


def test_string_labels_and_float32_scores(make_log):
    frame = binary_log(9)
    frame["target"] = frame["target"].map({1: "fraud", 0: "ok"}).astype(object)
    frame["prediction"] = np.where(frame["prediction"] == 1, "fraud", "ok")
    frame["score"] = frame["score"].astype(np.float32)
    view = make_log(frame, toml='[model]\ntask = "binary"\npositive_label = "fraud"\n')
    result = compute_metrics(view, WINDOW)
    labeled = _labeled(frame)
    y = (labeled["target"] == "fraud").astype(int).to_numpy()
    score = labeled["score"].to_numpy()
    assert result.metrics["roc_auc"].value == pytest.approx(skm.roc_auc_score(y, score), abs=TOL)
    assert result.metrics["recall"].value == pytest.approx(
        skm.recall_score(y, (labeled["prediction"] == "fraud").astype(int)), abs=TOL)
    # float32 scores: sklearn clips at float32's eps and computes in float32.
    assert result.metrics["log_loss"].value == pytest.approx(
        skm.log_loss(y, score, labels=[0, 1]), rel=1e-6)


# ---------------------------------------------------------------- confidence intervals

def delong_oracle(positives: np.ndarray, negatives: np.ndarray) -> tuple[float, float]:
    """AUC and DeLong's variance from the full P x N matrix of placements."""
    psi = (positives[:, None] > negatives[None, :]) + 0.5 * (positives[:, None] == negatives[None, :])
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    variance = v10.var(ddof=1) / len(positives) + v01.var(ddof=1) / len(negatives)
    return psi.mean(), variance


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_delong_variance_equals_the_placement_value_computation(make_log, seed):
    frame = binary_log(seed, rows=150, days=2, unlabeled=0.0)
    view = make_log(frame, toml=BINARY_TOML)
    result = compute_metrics(view, WINDOW, (), bucket="day")
    for part, got in [(frame, result.metrics)] + [
            (_day_groups(frame)[b.start], b.metrics) for b in result.buckets]:
        y, score = part["target"].astype(int).to_numpy(), part["score"].to_numpy()
        auc, variance = delong_oracle(score[y == 1], score[y == 0])
        roc = got["roc_auc"]
        assert roc.value == pytest.approx(auc, abs=TOL)
        assert roc.se ** 2 == pytest.approx(variance, rel=1e-9, abs=1e-15)
        z = stats.norm.ppf(0.975)
        logit, spread = math.log(auc / (1 - auc)), z * roc.se / (auc * (1 - auc))
        assert roc.ci_low == pytest.approx(1 / (1 + math.exp(-(logit - spread))), abs=TOL)
        assert roc.ci_high == pytest.approx(1 / (1 + math.exp(-(logit + spread))), abs=TOL)


def test_p_value_text():
    from mlmon_core.metrics import p_value_text

    assert [p_value_text(p) for p in (0.0004, 0.0234, 0.34, None, float("nan"))] == \
        ["p<0.001", "p=0.023", "p=0.34", "p not computable", "p not computable"]


@pytest.mark.parametrize("successes,n", [(0, 1), (1, 1), (0, 10), (3, 10), (10, 10), (517, 1000),
                                         (1, 100000)])
def test_wilson_interval_equals_scipy(successes, n):
    expected = stats.binomtest(successes, n).proportion_ci(confidence_level=0.95, method="wilson")
    low, high = wilson_interval(successes, n)
    assert low == pytest.approx(expected.low, abs=1e-12)
    assert high == pytest.approx(expected.high, abs=1e-12)


def simulation_log(simulations: int, per_day: int, seed: int) -> tuple[pd.DataFrame, float]:
    """One simulated sample per day: binormal scores (true AUC Φ(1/√2)), predictions 80 % right."""
    rng = np.random.default_rng(seed)
    rows = simulations * per_day
    truth = np.tile(np.repeat([0, 1], per_day // 2), simulations)
    score = rng.normal(truth * 1.0, 1.0)
    correct = rng.random(rows) < 0.8
    frame = pd.DataFrame({
        "id": np.arange(rows),
        "timestamp": START + np.repeat(np.arange(simulations), per_day).astype("timedelta64[D]")
        + np.timedelta64(1, "h"),
        "prediction": np.where(correct, truth, 1 - truth), "score": score,
        "target": truth,
    })
    return frame, stats.norm.cdf(1 / math.sqrt(2))


def covered(result, name: str, truth: float) -> int:
    return sum(b.metrics[name].ci_low <= truth <= b.metrics[name].ci_high for b in result.buckets)


def test_confidence_intervals_cover_the_truth_in_simulations(make_log):
    frame, true_auc = simulation_log(simulations=100, per_day=120, seed=3)
    view = make_log(frame, toml=BINARY_TOML)
    result = compute_metrics(view, Window(None, None), (), bucket="day")
    assert len(result.buckets) == 100
    assert covered(result, "roc_auc", true_auc) >= 88
    assert covered(result, "accuracy", 0.8) >= 88
    assert covered(result, "balanced_accuracy", 0.8) >= 88
    assert covered(result, "positive_rate", 0.5) >= 88


def test_regression_intervals_cover_the_truth_in_simulations(make_log):
    rng = np.random.default_rng(8)
    days, per_day = 100, 300
    rows = days * per_day
    target = rng.normal(50, 5, rows)
    frame = pd.DataFrame({
        "id": np.arange(rows),
        "timestamp": START + np.repeat(np.arange(days), per_day).astype("timedelta64[D]"),
        "prediction": target + rng.normal(0.0, 1.0, rows), "target": target,
    })
    view = make_log(frame, toml='[model]\ntask = "regression"\n')
    result = compute_metrics(view, Window(None, None), (), bucket="day")
    assert covered(result, "mae", math.sqrt(2 / math.pi)) >= 88
    assert covered(result, "rmse", 1.0) >= 88
    assert covered(result, "mean_error", 0.0) >= 88
    assert covered(result, "abs_error_p50", stats.halfnorm.ppf(0.5)) >= 88
    assert covered(result, "abs_error_p90", stats.halfnorm.ppf(0.9)) >= 88
    assert covered(result, "r2", 1 - 1 / 25) >= 85


# ---------------------------------------------------------------- multiclass

def multiclass_log(seed: int, rows: int = 1200, days: int = 4) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    classes = np.array(["cat", "dog", "emu", "yak"])
    truth = rng.choice(classes, rows, p=[0.5, 0.3, 0.15, 0.05])
    prediction = np.where(rng.random(rows) < 0.7, truth, rng.choice(classes, rows))
    prediction[rng.random(rows) < 0.02] = "owl"  # a class that is never the truth
    target = pd.array(truth, dtype=object)
    target[rng.random(rows) < 0.1] = None
    return pd.DataFrame({
        "id": np.arange(rows),
        "timestamp": START + (rng.random(rows) * days * 86400).astype("timedelta64[s]"),
        "prediction": prediction, "target": target,
    })


def multiclass_oracle(frame: pd.DataFrame) -> tuple[dict[str, float], list, np.ndarray]:
    labeled = _labeled(frame)
    y, pred = labeled["target"].astype(str).to_numpy(), labeled["prediction"].to_numpy()
    labels = sorted(set(y) | set(pred))
    oracle = {
        "accuracy": skm.accuracy_score(y, pred),
        "balanced_accuracy": _quiet(skm.balanced_accuracy_score, y, pred),
        "macro_f1": skm.f1_score(y, pred, average="macro"),
        "weighted_f1": skm.f1_score(y, pred, average="weighted"),
    }
    precision = skm.precision_score(y, pred, labels=labels, average=None, zero_division=np.nan)
    recall = skm.recall_score(y, pred, labels=labels, average=None, zero_division=np.nan)
    for label, p, r in zip(labels, precision, recall):
        oracle[f"precision[{label}]"], oracle[f"recall[{label}]"] = p, r
    return oracle, labels, skm.confusion_matrix(y, pred, labels=labels)


@pytest.mark.parametrize("seed", [0, 1])
def test_multiclass_metrics_equal_sklearn(make_log, seed):
    frame = multiclass_log(seed)
    view = make_log(frame, toml='[model]\ntask = "multiclass"\n')
    result = compute_metrics(view, WINDOW, (), bucket="day")
    oracle, labels, matrix = multiclass_oracle(frame)
    assert set(result.metrics) == set(oracle)
    assert_matches(result.metrics, oracle, "window")
    assert result.confusion == {"labels": labels, "counts": matrix.tolist()}
    parts = _day_groups(frame)
    for bucket in result.buckets:
        bucket_oracle, _, _ = multiclass_oracle(parts[bucket.start])
        assert_matches(bucket.metrics, bucket_oracle, str(bucket.start))
    macro = result.metrics["macro_f1"]
    assert macro.ci_low < macro.value < macro.ci_high


# ---------------------------------------------------------------- regression

def regression_log(seed: int, rows: int = 1500, days: int = 4, offset: float = 1e6) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    truth = offset + rng.normal(0, 10, rows)
    prediction = truth + rng.normal(0.5, 3, rows)
    target = truth.copy()
    target[rng.random(rows) < 0.1] = np.nan
    return pd.DataFrame({
        "id": np.arange(rows),
        "timestamp": START + (rng.random(rows) * days * 86400).astype("timedelta64[s]"),
        "prediction": prediction, "target": target,
    })


def regression_oracle(frame: pd.DataFrame) -> dict[str, float]:
    labeled = _labeled(frame)
    y, pred = labeled["target"].to_numpy(), labeled["prediction"].to_numpy()
    error = np.abs(pred - y)
    return {
        "mae": skm.mean_absolute_error(y, pred),
        "rmse": skm.root_mean_squared_error(y, pred),
        "mape": skm.mean_absolute_percentage_error(y, pred),
        "r2": skm.r2_score(y, pred),
        "mean_error": np.mean(pred - y),
        "abs_error_p50": np.quantile(error, 0.5),
        "abs_error_p90": np.quantile(error, 0.9),
        "abs_error_p99": np.quantile(error, 0.99),
    }


@pytest.mark.parametrize("seed,offset", [(0, 1e6), (1, 0.0), (2, -30.0)])
def test_regression_metrics_equal_sklearn(make_log, seed, offset):
    frame = regression_log(seed, offset=offset)
    view = make_log(frame, toml='[model]\ntask = "regression"\n')
    result = compute_metrics(view, WINDOW, (), bucket="day")
    assert result.labeled_rows == len(_labeled(frame))
    assert_matches(result.metrics, regression_oracle(frame), "window")
    parts = _day_groups(frame)
    for bucket in result.buckets:
        assert_matches(bucket.metrics, regression_oracle(parts[bucket.start]), str(bucket.start))
    p99 = result.metrics["abs_error_p99"]
    assert p99.ci_low <= p99.value <= p99.ci_high
    small = [b for b in result.buckets if b.metrics["abs_error_p99"].n < 500]
    assert all(b.metrics["abs_error_p99"].ci_low is None and "needs about" in
               b.metrics["abs_error_p99"].reason for b in small)


def test_quantile_ranks_give_at_least_nominal_exact_coverage():
    # The rank rule's exact binomial coverage, for many n: P(j <= Bin(n, q) < k) >= 0.94.
    for q in metrics.QUANTILES:
        for n in range(metrics._rows_needed_for_quantile(q, 0.95), 3000, 97):
            low, high = metrics._quantile_ranks(n, q, 0.95)
            coverage = stats.binom.cdf(high - 1, n, q) - stats.binom.cdf(low - 1, n, q)
            assert coverage >= 0.94, (q, n, coverage)


# ---------------------------------------------------------------- bad input

def all_reasons(result) -> list[str]:
    return [m.reason for m in result.metrics.values() if m.value is None]


def test_empty_window(make_log):
    view = make_log(binary_log(0), toml=BINARY_TOML)
    result = compute_metrics(view, Window(datetime(2030, 1, 1), datetime(2030, 2, 1)), (), "day")
    assert (result.rows, result.labeled_rows, result.buckets) == (0, 0, [])
    assert all(m.value is None for m in result.metrics.values())
    assert all("window holds no rows" in reason for reason in all_reasons(result))
    json.dumps(metrics_payload(result), allow_nan=False)


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_window_without_labels(make_log, task):
    frame = binary_log(1) if task != "regression" else regression_log(1)
    dtype = "Float64" if task == "regression" else "Int64"
    frame["target"] = pd.array([pd.NA] * len(frame), dtype=dtype)
    view = make_log(frame, toml=f'[model]\ntask = "{task}"\n' + (
        "positive_label = 1\n" if task == "binary" else ""))
    result = compute_metrics(view, WINDOW, (), "day")
    assert result.rows == len(frame) and result.labeled_rows == 0
    label_metrics = [m for name, m in result.metrics.items() if name != "predicted_positive_rate"]
    assert all(m.value is None and "has a label yet" in m.reason for m in label_metrics)
    if task == "binary":
        assert result.metrics["predicted_positive_rate"].value == pytest.approx(
            frame["prediction"].mean(), abs=TOL)


def test_single_class_window(make_log):
    frame = binary_log(2)
    frame["target"] = pd.array(np.where(frame["target"].isna(), None, 0), dtype="Int64")
    view = make_log(frame, toml=BINARY_TOML)
    result = compute_metrics(view, WINDOW)
    m = result.metrics
    assert m["roc_auc"].value is None and "both classes" in m["roc_auc"].reason
    assert m["average_precision"].value is None and "no positive labels" in \
        m["average_precision"].reason
    assert m["recall"].value is None and m["f1"].value is not None
    assert_matches(m, binary_oracle(frame), "one class")


def test_all_null_score_and_non_finite_scores(make_log):
    frame = binary_log(3)
    frame["score"] = pd.array([pd.NA] * len(frame), dtype="Float64")
    view = make_log(frame, toml=BINARY_TOML)
    result = compute_metrics(view, WINDOW)
    assert result.metrics["roc_auc"].value is None
    assert "has a score" in result.metrics["roc_auc"].reason
    assert result.metrics["accuracy"].value is not None

    # CSV keeps infinities apart from missing; "nan" is a missing cell there, as pandas reads it.
    frame = binary_log(3).sort_values("timestamp", ignore_index=True)
    last = frame.index[-3:]  # at the end: DuckDB's CSV sniffer reads a leading "inf" as text
    frame.loc[last, "target"] = [1, 0, 1]
    frame["score"] = frame["score"].astype(str)
    frame.loc[last, "score"] = ["inf", "-inf", "nan"]
    view = make_log(frame, toml=BINARY_TOML, fmt="csv")
    assert view.columns["score"].duck_type == "DOUBLE"
    result = compute_metrics(view, WINDOW, (), "day")
    for name in ("roc_auc", "average_precision", "log_loss", "brier_score", "ece"):
        assert result.metrics[name].value is None
        assert "2 labeled rows have a non-finite score" in result.metrics[name].reason
    assert result.metrics["accuracy"].value is not None
    clean_days = [b for b in result.buckets if b.start != max(b.start for b in result.buckets)]
    assert any(b.metrics["roc_auc"].value is not None for b in clean_days)
    json.dumps(metrics_payload(result), allow_nan=False)


def test_scores_that_are_not_probabilities(make_log):
    frame = binary_log(6)
    frame["score"] = frame["score"] * 10 - 3  # a margin, not a probability
    view = make_log(frame, toml=BINARY_TOML)
    result = compute_metrics(view, WINDOW)
    labeled = _labeled(frame)
    assert result.metrics["roc_auc"].value == pytest.approx(
        skm.roc_auc_score(labeled["target"].astype(int), labeled["score"]), abs=TOL)
    assert result.metrics["log_loss"].value is None
    assert "not probabilities" in result.metrics["log_loss"].reason


def test_single_row(make_log):
    frame = binary_log(0).iloc[:1].copy()
    frame["target"] = pd.array([1], dtype="Int64")
    view = make_log(frame, toml=BINARY_TOML)
    result = compute_metrics(view, WINDOW, (), "day")
    assert result.rows == 1 and len(result.buckets) == 1
    assert result.metrics["accuracy"].n == 1
    assert result.metrics["log_loss"].value is not None and result.metrics["log_loss"].ci_low is None
    assert result.metrics["roc_auc"].value is None
    json.dumps(metrics_payload(result), allow_nan=False)

    regression = regression_log(0).iloc[:1]
    view = make_log(regression, toml='[model]\ntask = "regression"\n')
    result = compute_metrics(view, WINDOW)
    assert result.metrics["mae"].value == pytest.approx(
        abs(regression["prediction"].iloc[0] - regression["target"].iloc[0]), abs=1e-9)
    assert result.metrics["r2"].value is None and "constant" in result.metrics["r2"].reason
    json.dumps(metrics_payload(result), allow_nan=False)


def test_regression_infinities_and_constant_target(make_log):
    frame = regression_log(4, offset=0.0)
    frame.loc[frame.index[frame["target"].notna()][:2], "prediction"] = [np.inf, -np.inf]
    view = make_log(frame, toml='[model]\ntask = "regression"\n')
    result = compute_metrics(view, WINDOW)
    assert all(m.value is None and "2 labeled rows have a non-finite target or prediction" in m.reason
               for m in result.metrics.values())

    frame = regression_log(4, offset=0.0)
    frame["target"] = 5.0
    view = make_log(frame, toml='[model]\ntask = "regression"\n')
    result = compute_metrics(view, WINDOW)
    assert result.metrics["r2"].value is None
    assert result.metrics["mae"].value == pytest.approx(
        skm.mean_absolute_error(frame["target"], frame["prediction"]), abs=TOL)


def test_text_score_column_is_a_configuration_error(make_log):
    frame = binary_log(0)
    frame["score"] = frame["score"].astype(str)
    view = make_log(frame, toml=BINARY_TOML + '[columns]\nscore = "score"\n')
    from mlmon_core.errors import SourceError

    with pytest.raises(SourceError, match="score"):
        compute_metrics(view, WINDOW)


# ---------------------------------------------------------------- helpers for pages and CLI

def test_headline_leads_with_imbalance_safe_metrics(make_log):
    rare = compute_metrics(make_log(binary_log(2, prevalence=0.04), toml=BINARY_TOML), WINDOW)
    assert headline_metrics(rare)[:2] == ["balanced_accuracy", "average_precision"]
    even = compute_metrics(make_log(binary_log(2, prevalence=0.5), toml=BINARY_TOML), WINDOW)
    assert headline_metrics(even)[:3] == ["accuracy", "roc_auc", "f1"]


def test_bucket_series_is_tidy(make_log):
    result = compute_metrics(make_log(binary_log(1), toml=BINARY_TOML), WINDOW, (), "day")
    series = bucket_series(result, ["accuracy", "roc_auc"])
    assert list(series.columns) == ["start", "metric", "value", "ci_low", "ci_high", "n"]
    assert len(series) == 2 * len(result.buckets)
    first = result.buckets[0]
    row = series[(series["start"] == first.start) & (series["metric"] == "roc_auc")].iloc[0]
    assert row["value"] == first.metrics["roc_auc"].value and row["n"] == first.metrics["roc_auc"].n


def test_payload_merges_estimates(make_log):
    result = compute_metrics(make_log(binary_log(1), toml=BINARY_TOML), WINDOW, (), "day")
    first = result.buckets[0].start
    payload = metrics_payload(result, estimated={"accuracy": {"value": 0.7}},
                              bucket_estimates={first: {"accuracy": {"value": 0.6}}})
    assert payload["estimated"] == {"accuracy": {"value": 0.7}}
    assert payload["buckets"][0]["estimated"] == {"accuracy": {"value": 0.6}}
    assert "estimated" not in payload["buckets"][1]


def test_cli_metrics_json_contract(tmp_path, capsys):
    config = write_project(tmp_path / "p", binary_log(3), toml=BINARY_TOML)
    code = cli.main(["metrics", "--config", str(config), "--window", "2024-03-01..2024-03-04",
                     "--by", "day", "--where", "score >= 0.2", "--json"])
    assert code == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["task"] == "binary"
    assert payload["window"] == {"start": "2024-03-01T00:00:00", "end": "2024-03-04T00:00:00"}
    assert {"rows", "labeled_rows", "metrics", "buckets"} <= set(payload)
    assert set(payload["metrics"]["roc_auc"]) >= {"value", "ci_low", "ci_high", "n"}
    assert [b["start"][:10] for b in payload["buckets"]] == ["2024-03-01", "2024-03-02", "2024-03-03"]
    assert set(payload["buckets"][0]) == {"start", "rows", "labeled_rows", "metrics"}

    assert cli.main(["metrics", "--config", str(config)]) == 0
    assert "roc_auc" in capsys.readouterr().out
    assert cli.main(["metrics", "--config", str(config), "--where", "nope > 1"]) == 2
    assert "nope" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["metrics", "--config", str(config), "--by", "year"])
    assert exit_info.value.code == 2


def test_exclude_leaves_out_a_segment(make_log):
    frame = binary_log(12)
    view = make_log(frame, toml=BINARY_TOML)
    from mlmon_core.sql import parse_where

    rest = compute_metrics(view, WINDOW, (), exclude=parse_where("score >= 0.4"))
    assert rest.rows == int((frame["score"] < 0.4).sum())
    assert_matches(rest.metrics, binary_oracle(frame[frame["score"] < 0.4]), "rest")
    assert all(m.se is not None for name, m in rest.metrics.items()
               if m.value is not None and m.ci_low is not None)
