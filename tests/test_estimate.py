"""Confidence-based performance estimation, checked against row-level numpy and scikit-learn oracles."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from sklearn.isotonic import IsotonicRegression
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

from mlmon_core import estimate
from mlmon_core.cli import main, to_jsonable
from mlmon_core.config import Window
from mlmon_core.errors import FilterError
from mlmon_core.estimate import METRICS, estimate_performance

START = datetime(2024, 1, 1)
REFERENCE = '[reference]\nstart = "2024-01-01"\nend = "2024-01-11"\n'
WHOLE = Window(START, START + timedelta(days=60))


def synthetic(n: int, days: int, seed: int, *, score=lambda p: p, labeled_days: int | None = None,
              decimals: int | None = None, probabilities=None) -> pd.DataFrame:
    """A log whose labels are drawn from a known probability p; the logged score is ``score(p)``.

    Labels of rows after ``labeled_days`` are missing; ``truth`` keeps them for the oracle.
    """
    rng = np.random.default_rng(seed)
    p = rng.beta(2, 3, n) if probabilities is None else probabilities
    if decimals is not None:
        p = np.round(p, decimals)
    truth = (rng.random(n) < p).astype(int)
    offsets = np.sort(rng.integers(0, days * 86400, n))
    timestamps = pd.Timestamp(START) + pd.to_timedelta(offsets, unit="s")
    logged = score(p)
    frame = pd.DataFrame({"id": np.arange(n), "timestamp": timestamps, "score": logged,
                          "prediction": (logged >= 0.5).astype(int), "truth": truth})
    target = truth.astype(float)
    if labeled_days is not None:
        target[timestamps >= pd.Timestamp(START + timedelta(days=labeled_days))] = np.nan
    frame["target"] = target
    return frame


def value(cells, metric):
    return cells[metric]["value"]


# ---------------------------------------------------------------- exactness

def row_level_oracle(p: np.ndarray, predicted: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """Expected confusion counts and the soft-label AUC, row by row (pairs i != j, ties one half)."""
    tp = p[predicted].sum()
    fp = (1 - p[predicted]).sum()
    fn = p[~predicted].sum()
    tn = (1 - p[~predicted]).sum()
    above = (scores[:, None] > scores[None, :]) + 0.5 * (scores[:, None] == scores[None, :])
    weight = p[:, None] * (1 - p[None, :])
    np.fill_diagonal(weight, 0.0)
    return {"accuracy": (tp + tn) / len(p), "precision": tp / (tp + fp), "recall": tp / (tp + fn),
            "f1": 2 * tp / (2 * tp + fp + fn), "roc_auc": (weight * above).sum() / weight.sum()}


def test_expected_counts_equal_row_level_computation_with_isotonic(make_log):
    frame = synthetic(1500, 20, seed=3, score=lambda p: p ** 2, labeled_days=10, decimals=3)
    view = make_log(frame.drop(columns=["truth"]), toml=REFERENCE)
    result = estimate_performance(view, WHOLE, bucket=None)
    assert result.calibration["method"] == "isotonic"
    assert result.binning["auc_exact"] and result.binning["exact_scores"]
    reference = frame[frame["timestamp"] < pd.Timestamp("2024-01-11")]
    calibrator = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(
        reference["score"], reference["target"])
    unlabeled = frame[frame["target"].isna()]
    oracle = row_level_oracle(np.clip(calibrator.predict(unlabeled["score"]), 0, 1),
                              unlabeled["prediction"].to_numpy(bool), unlabeled["score"].to_numpy())
    for metric in METRICS:
        assert value(result.window, metric) == pytest.approx(oracle[metric], abs=1e-9), metric
    everything = row_level_oracle(np.clip(calibrator.predict(frame["score"]), 0, 1),
                                  frame["prediction"].to_numpy(bool), frame["score"].to_numpy())
    for metric in METRICS:
        assert value(result.window_all, metric) == pytest.approx(everything[metric], abs=1e-9)


def test_realized_metrics_match_scikit_learn(make_log):
    frame = synthetic(1200, 20, seed=4, labeled_days=12, decimals=3)
    view = make_log(frame.drop(columns=["truth"]), toml=REFERENCE)
    result = estimate_performance(view, WHOLE, bucket="week")
    labeled = frame[frame["target"].notna()]
    y, predicted, scores = labeled["target"], labeled["prediction"], labeled["score"]
    expected = {"accuracy": accuracy_score(y, predicted), "precision": precision_score(y, predicted),
                "recall": recall_score(y, predicted), "f1": f1_score(y, predicted),
                "roc_auc": roc_auc_score(y, scores)}
    for metric in METRICS:
        assert value(result.window_realized, metric) == pytest.approx(expected[metric], abs=1e-12)
    first_week = labeled[labeled["timestamp"] < pd.Timestamp("2024-01-08")]
    bucket = result.buckets[0]
    assert bucket["start"] == START and bucket["labeled_rows"] == len(first_week)
    assert value(bucket["realized"], "roc_auc") == pytest.approx(
        roc_auc_score(first_week["target"], first_week["score"]), abs=1e-12)


def test_auc_on_binned_scores_is_close_to_exact(make_log, monkeypatch):
    frame = synthetic(30_000, 10, seed=5)  # 30,000 distinct scores, binned into 2,000 bins
    view = make_log(frame.drop(columns=["truth"]), toml=REFERENCE)
    result = estimate_performance(view, WHOLE, bucket=None)
    assert result.binning["exact_scores"] and not result.binning["auc_exact"]
    realized = value(result.window_realized, "roc_auc")
    assert realized == pytest.approx(roc_auc_score(frame["target"], frame["score"]), abs=5e-4)
    # Exact soft AUC by sorting (scores are distinct): Σ_i p_i Σ_{s_j < s_i} (1 - p_j) / pairs.
    p = frame["score"].to_numpy()[np.argsort(frame["score"].to_numpy())]
    below = np.cumsum(1 - p) - (1 - p)
    exact = (p * below).sum() / (p.sum() * (1 - p).sum() - (p * (1 - p)).sum())
    assert value(result.window_all, "roc_auc") == pytest.approx(exact, abs=5e-4)
    monkeypatch.setattr(estimate, "MAX_BINS", estimate.MIN_BINS)  # the fewest bins a bucket gets
    coarse = estimate_performance(view, WHOLE, bucket=None)
    assert coarse.binning["bins"] == estimate.MIN_BINS == 100
    assert value(coarse.window_realized, "roc_auc") == pytest.approx(realized, abs=2e-4)
    assert value(coarse.window_all, "roc_auc") == pytest.approx(exact, abs=2e-4)


def test_fine_grid_keys_approximate_exact_keys(make_log, monkeypatch):
    frame = synthetic(8000, 10, seed=6, score=lambda p: p ** 2, labeled_days=5)
    view = make_log(frame.drop(columns=["truth"]), toml=REFERENCE)
    exact = estimate_performance(view, WHOLE, bucket=None)
    monkeypatch.setattr(estimate, "EXACT_KEY_LIMIT", 100)
    gridded = estimate_performance(view, WHOLE, bucket=None)
    assert exact.binning["exact_scores"] and not gridded.binning["exact_scores"]
    assert gridded.calibration["method"] == exact.calibration["method"] == "isotonic"
    for metric in METRICS:
        assert value(gridded.window, metric) == pytest.approx(value(exact.window, metric), abs=3e-3)
        assert value(gridded.window_realized, metric) == pytest.approx(
            value(exact.window_realized, metric), abs=2e-3)


# ---------------------------------------------------------------- accuracy of the estimate

def test_estimates_track_hidden_labels_within_the_band(make_log):
    frame = synthetic(12_000, 20, seed=7, labeled_days=10)
    view = make_log(frame.drop(columns=["truth"]), toml=REFERENCE)
    result = estimate_performance(view, WHOLE, bucket="week")
    assert result.calibration["method"] == "none"
    hidden = frame[frame["target"].isna()]
    truth = {"accuracy": accuracy_score(hidden["truth"], hidden["prediction"]),
             "precision": precision_score(hidden["truth"], hidden["prediction"]),
             "recall": recall_score(hidden["truth"], hidden["prediction"]),
             "f1": f1_score(hidden["truth"], hidden["prediction"]),
             "roc_auc": roc_auc_score(hidden["truth"], hidden["score"])}
    for metric in METRICS:
        cell = result.window[metric]
        half_width = (cell["ci_high"] - cell["ci_low"]) / 2
        assert 0 < half_width < 0.05
        # 1.5 half-widths of a 95% band is about 3 standard errors.
        assert abs(cell["value"] - truth[metric]) <= 1.5 * half_width, metric
    for metric in METRICS:
        error = result.estimate_error[metric]
        assert error["buckets"] == 2 and error["mean_absolute_error"] < 0.03


def test_band_covers_realized_values_when_calibrated(make_log):
    frame = synthetic(24_000, 48, seed=8)  # 48 daily chunks of ~500 rows, calibrated, no drift
    view = make_log(frame.drop(columns=["truth"]), toml=REFERENCE)
    result = estimate_performance(view, WHOLE, bucket="day")
    for metric in METRICS:
        summary = result.estimate_error[metric]
        assert summary["buckets"] == 48
        assert summary["band_coverage"] >= 0.85, (metric, summary)
        assert summary["band_coverage"] <= 1.0


def test_isotonic_is_kept_for_a_miscalibrated_score(make_log):
    frame = synthetic(6000, 20, seed=9, score=lambda p: p ** 2, labeled_days=10)
    view = make_log(frame.drop(columns=["truth"]), toml=REFERENCE)
    result = estimate_performance(view, WHOLE, bucket=None)
    calibration = result.calibration
    assert calibration["method"] == "isotonic"
    assert calibration["isotonic_cross_fitted"]["brier"] < calibration["raw"]["brier"]
    assert calibration["isotonic_cross_fitted"]["ece"] < calibration["raw"]["ece"]
    assert result.estimate_error["accuracy"]["buckets"] == 1  # unbucketed: the window is checked
    hidden = frame[frame["target"].isna()]
    assert value(result.window, "accuracy") == pytest.approx(
        accuracy_score(hidden["truth"], hidden["prediction"]), abs=0.03)
    assert value(result.window, "recall") == pytest.approx(
        recall_score(hidden["truth"], hidden["prediction"]), abs=0.05)


def test_isotonic_is_dropped_for_a_calibrated_score(make_log):
    frame = synthetic(6000, 20, seed=10, labeled_days=10)
    view = make_log(frame.drop(columns=["truth"]), toml=REFERENCE)
    calibration = estimate_performance(view, WHOLE, bucket=None).calibration
    assert calibration["method"] == "none"
    assert "does not lower" in calibration["reason"]
    assert calibration["raw"]["brier"] <= calibration["isotonic_cross_fitted"]["brier"]


def test_scores_outside_unit_interval_are_always_calibrated(make_log):
    frame = synthetic(3000, 20, seed=11, labeled_days=10, score=lambda p: np.log(p / (1 - p)))
    frame["prediction"] = (frame["score"] >= 0).astype(int)
    view = make_log(frame.drop(columns=["truth"]), toml=REFERENCE)
    result = estimate_performance(view, WHOLE, bucket=None)
    assert result.calibration["method"] == "isotonic" and result.calibration["raw"] is None
    hidden = frame[frame["target"].isna()]
    assert value(result.window, "accuracy") == pytest.approx(
        accuracy_score(hidden["truth"], hidden["prediction"]), abs=0.04)


# ---------------------------------------------------------------- calibration helpers

def test_calibration_scores_match_row_level_brier_and_ece():
    from sklearn.metrics import brier_score_loss

    rng = np.random.default_rng(12)
    p = np.round(rng.random(400), 2)
    y = (rng.random(400) < p).astype(int)
    keys, inverse = np.unique(p, return_inverse=True)
    n = np.bincount(inverse)
    positives = np.bincount(inverse, weights=y)
    scores = estimate._calibration_scores(keys, n, positives)
    assert scores["brier"] == pytest.approx(brier_score_loss(y, p), abs=1e-12)
    which = np.minimum((p * 10).astype(int), 9)
    ece = sum(abs(p[which == b].sum() - y[which == b].sum()) for b in range(10)) / len(p)
    assert scores["ece"] == pytest.approx(ece, abs=1e-12)


def test_split_folds_behaves_like_a_random_split_of_rows():
    rng = np.random.default_rng(13)
    n = rng.integers(0, 20, 500)
    positives = rng.binomial(n, 0.3)
    labels = np.repeat(np.r_[np.zeros(len(n)), np.ones(len(n))], np.r_[n - positives, positives])
    split_rates, row_rates = [], []
    for draw in range(200):
        rows, pos = estimate.split_folds(n, positives, 5, np.random.default_rng(draw))
        assert (rows.sum(0) == n).all() and (pos.sum(0) == positives).all()
        assert (pos >= 0).all() and (pos <= rows).all()
        split_rates.append(pos.sum(1) / rows.sum(1))
        fold = np.random.default_rng(10_000 + draw).integers(0, 5, len(labels))
        row_rates.append([labels[fold == k].mean() for k in range(5)])
    assert np.mean(split_rates) == pytest.approx(np.mean(row_rates), abs=0.002)
    assert np.std(split_rates, axis=0).mean() == pytest.approx(
        np.std(row_rates, axis=0).mean(), rel=0.15)


# ---------------------------------------------------------------- bad input

def assert_not_computable(cells, words: str):
    for metric in METRICS:
        assert cells[metric]["value"] is None
        assert cells[metric]["reason"].startswith("not computable because")
        assert words in cells[metric]["reason"]


def test_no_score_column(make_log):
    frame = synthetic(300, 20, seed=14).drop(columns=["truth", "score"])
    result = estimate_performance(make_log(frame, toml=REFERENCE), WHOLE)
    assert_not_computable(result.window, "no score column")
    assert result.counts["rows"] == 300 and result.buckets[0]["estimated"]["f1"]["value"] is None
    json.dumps(to_jsonable(result.to_json()))


def test_no_labeled_reference_rows(make_log):
    frame = synthetic(600, 20, seed=15, labeled_days=0)
    view = make_log(frame.drop(columns=["truth"]), toml=REFERENCE)
    result = estimate_performance(view, WHOLE, bucket="week")
    assert_not_computable(result.window, "no labeled rows")
    assert result.calibration["reference_labeled_rows"] == 0
    trusted = estimate_performance(view, WHOLE, bucket="week", assume_calibrated=True)
    assert trusted.window["accuracy"]["value"] is not None
    assert "assumed calibrated" in trusted.calibration["reason"]


def test_no_target_column_at_all(make_log):
    frame = synthetic(300, 20, seed=16).drop(columns=["truth", "target"])
    result = estimate_performance(make_log(frame, toml=REFERENCE), WHOLE)
    assert_not_computable(result.window, "no labeled rows")


def test_one_class_reference(make_log):
    frame = synthetic(600, 20, seed=17, labeled_days=10)
    frame.loc[frame["target"].notna(), "target"] = 0.0
    result = estimate_performance(make_log(frame.drop(columns=["truth"]), toml=REFERENCE), WHOLE)
    assert_not_computable(result.window, "one class")


def test_empty_window(make_log):
    frame = synthetic(600, 20, seed=18, labeled_days=10)
    view = make_log(frame.drop(columns=["truth"]), toml=REFERENCE)
    result = estimate_performance(view, Window(datetime(2030, 1, 1), datetime(2030, 2, 1)))
    assert result.counts["rows"] == 0 and result.buckets == []
    assert_not_computable(result.window, "no unlabeled rows")
    assert_not_computable(result.window_realized, "no labeled rows")
    assert result.estimate_error["f1"]["mean_absolute_error"] is None


def test_all_scores_null(make_log):
    frame = synthetic(600, 20, seed=19, labeled_days=10)
    frame["score"] = np.nan
    result = estimate_performance(make_log(frame.drop(columns=["truth"]), toml=REFERENCE), WHOLE)
    assert_not_computable(result.window, "finite score")


def test_infinite_and_null_scores_are_left_out(make_log):
    frame = synthetic(1000, 20, seed=20, labeled_days=10, decimals=3)
    frame.loc[frame.index[-10:], "score"] = np.inf
    frame.loc[frame.index[-20:-10], "score"] = np.nan
    view = make_log(frame.drop(columns=["truth"]), toml=REFERENCE)
    result = estimate_performance(view, WHOLE, bucket=None)
    assert result.counts["rows"] == 1000 and result.counts["scored_rows"] == 980
    assert result.window["accuracy"]["value"] is not None


def test_single_unlabeled_row(make_log):
    frame = synthetic(400, 10, seed=21, decimals=3)
    late = pd.DataFrame({"id": [9999], "timestamp": [pd.Timestamp("2024-01-20 12:00")],
                         "score": [0.8], "prediction": [1], "truth": [1], "target": [np.nan]})
    view = make_log(pd.concat([frame, late]).drop(columns=["truth"]), toml=REFERENCE)
    result = estimate_performance(view, Window(datetime(2024, 1, 20), datetime(2024, 1, 21)))
    assert result.counts == {"rows": 1, "scored_rows": 1, "labeled_rows": 0, "unlabeled_rows": 1}
    assert result.window["precision"]["value"] == pytest.approx(result.window["accuracy"]["value"])
    assert result.window["recall"]["value"] == pytest.approx(1.0)
    assert result.window["roc_auc"]["value"] is None
    assert "two rows" in result.window["roc_auc"]["reason"]
    assert result.buckets[0]["realized"]["accuracy"]["value"] is None


def test_multiclass_and_text_scores_are_refused_with_a_reason(make_log):
    frame = synthetic(300, 10, seed=22).drop(columns=["truth"])
    frame["target"] = np.arange(300) % 3
    frame["prediction"] = np.arange(300) % 3
    result = estimate_performance(make_log(frame, toml=REFERENCE), WHOLE)
    assert_not_computable(result.window, "binary classifier")
    text = synthetic(300, 10, seed=22).drop(columns=["truth"]).assign(score="high")
    result = estimate_performance(make_log(text, toml=REFERENCE), WHOLE)
    assert_not_computable(result.window, "not numeric")


def test_bad_bucket_is_a_filter_error(make_log):
    view = make_log(synthetic(100, 5, seed=23).drop(columns=["truth"]), toml=REFERENCE)
    with pytest.raises(FilterError):
        estimate_performance(view, WHOLE, bucket="fortnight")


def test_segment_applies_to_window_and_reference(make_log):
    frame = synthetic(4000, 20, seed=24, labeled_days=10, decimals=3)
    frame["region"] = np.where(np.arange(4000) % 2 == 0, "east", "west")
    view = make_log(frame.drop(columns=["truth"]), toml=REFERENCE)
    from mlmon_core.sql import parse_where

    result = estimate_performance(view, WHOLE, parse_where("region == 'east'"), bucket=None)
    east = frame[frame["region"] == "east"]
    assert result.counts["rows"] == len(east)
    assert result.calibration["reference_labeled_rows"] == int(
        (east["target"].notna() & (east["timestamp"] < pd.Timestamp("2024-01-11"))).sum())


# ---------------------------------------------------------------- output

def test_json_shape_merges_into_metrics_payload(make_log):
    frame = synthetic(2000, 20, seed=25, labeled_days=12)
    view = make_log(frame.drop(columns=["truth"]), toml=REFERENCE)
    payload = json.loads(json.dumps(to_jsonable(estimate_performance(view, WHOLE).to_json())))
    for metric in METRICS:
        assert set(payload["estimated"][metric]) >= {"value", "ci_low", "ci_high"}
    bucket = payload["buckets"][-1]
    assert bucket["unlabeled_rows"] > 0 and "realized" in bucket
    assert set(bucket["estimated"]["accuracy"]) == {"value", "ci_low", "ci_high"}
    labeled_bucket = payload["buckets"][0]
    assert set(labeled_bucket["error"]) == set(METRICS)
    assert labeled_bucket["estimated"]["f1"]["value"] is None  # fully labeled: nothing to estimate


def test_chart_records_hold_estimated_and_realized(make_log):
    frame = synthetic(2000, 20, seed=26, labeled_days=12)
    view = make_log(frame.drop(columns=["truth"]), toml=REFERENCE)
    records = pd.DataFrame(estimate_performance(view, WHOLE).chart_records())
    assert set(records["series"]) == {"estimated (unlabeled rows)", "estimated (all rows)", "realized"}
    assert set(records["metric"]) == set(METRICS)


def test_cli_estimate_json(make_log, tmp_path, capsys):
    frame = synthetic(2000, 20, seed=27, labeled_days=12)
    make_log(frame.drop(columns=["truth"]), toml=REFERENCE)
    config = tmp_path / "project1" / "mlmon.toml"
    code = main(["estimate", "--config", str(config), "--window", "2024-01-01..2024-01-21",
                 "--by", "week", "--json"])
    assert code == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["window"] == {"start": "2024-01-01T00:00:00", "end": "2024-01-21T00:00:00"}
    assert payload["bucket"] == "week" and len(payload["buckets"]) == 3
    assert payload["estimated"]["accuracy"]["value"] is not None
    assert main(["estimate", "--config", str(config)]) == 0
    assert "accuracy" in capsys.readouterr().out
    assert main(["estimate", "--config", str(config), "--where", "nope > 1"]) == 2


# ---------------------------------------------------------------- simulation helpers

def test_column_percentiles_match_numpy_nanpercentile():
    rng = np.random.default_rng(28)
    values = rng.normal(size=(301, 40))
    values[rng.random(values.shape) < 0.3] = np.nan
    values[:, 5] = np.nan
    values[1:, 6] = np.nan  # one valid value
    with pytest.warns(RuntimeWarning):
        expected = np.nanpercentile(values, [2.5, 50, 97.5], axis=0, method="weibull")
    np.testing.assert_allclose(estimate.column_percentiles(values, [2.5, 50, 97.5]), expected)


def test_draw_positives_has_the_poisson_binomial_moments():
    rng = np.random.default_rng(29)
    small_p = rng.random(8) * 0.2       # one small cell: 8 rows, variance < 25 → binomial
    large_p = rng.beta(2, 3, 400)       # one large cell: variance ≈ 80 → normal with exact moments
    rows = np.array([8.0, 400.0])
    sum_p = np.array([small_p.sum(), large_p.sum()])
    sum_pq = np.array([(small_p * (1 - small_p)).sum(), (large_p * (1 - large_p)).sum()])
    draws = estimate.draw_positives(rows, sum_p, sum_pq, np.random.default_rng(0), 40_000)
    assert np.all(draws[:, 0] == np.round(draws[:, 0]))  # exact counts for the small cell
    assert draws.mean(0) == pytest.approx(sum_p, rel=0.01)
    assert draws[:, 1].var() == pytest.approx(sum_pq[1], rel=0.03)
    mean_p = sum_p[0] / 8
    assert draws[:, 0].var() == pytest.approx(8 * mean_p * (1 - mean_p), rel=0.05)
    assert (draws >= 0).all() and (draws <= rows).all()


def test_merges_into_the_metrics_payload_and_agrees_with_realized_metrics(make_log):
    from mlmon_core.metrics import compute_metrics, metrics_payload

    frame = synthetic(3000, 21, seed=30, labeled_days=14, decimals=3)
    view = make_log(frame.drop(columns=["truth"]), toml=REFERENCE)
    window = Window(START, START + timedelta(days=21))
    realized = compute_metrics(view, window, bucket="week")
    estimated = estimate_performance(view, window, bucket="week")
    for metric in METRICS:
        assert realized.metrics[metric].value == pytest.approx(
            value(estimated.window_realized, metric), abs=1e-9)
    payload = metrics_payload(realized, estimated=estimated.window,
                              bucket_estimates=estimated.bucket_estimates())
    assert payload["estimated"]["accuracy"]["value"] is not None
    with_estimates = [b for b in payload["buckets"] if "estimated" in b]
    assert len(with_estimates) == 1  # only the third week has no labels
    assert with_estimates[0]["start"] == "2024-01-15T00:00:00"
