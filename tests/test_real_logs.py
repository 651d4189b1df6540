"""Logs as they come from real systems (odd time encodings, mismatched types, typos in the
config): each must open with the right meaning or fail with a message naming the column or key."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mlmon_core import cli
from mlmon_core.errors import ConfigError, SourceError
from mlmon_core.sql import Fragment
from mlmon_core.windows import time_range
from tests.conftest import write_project

START = pd.Timestamp("2024-03-01")


def small_log(rows: int = 200, seed: int = 0) -> pd.DataFrame:
    """A binary log over 20 days with scores, predictions and 0/1 labels."""
    rng = np.random.default_rng(seed)
    score = rng.random(rows)
    return pd.DataFrame({
        "id": np.arange(rows),
        "timestamp": START + pd.to_timedelta(np.linspace(0, 20 * 86400, rows), unit="s"),
        "f1": rng.normal(0, 1, rows),
        "score": score,
        "prediction": (score > 0.5).astype(int),
        "target": (rng.random(rows) < score).astype(int),
    })


@pytest.mark.parametrize("unit, divisor", [("s", 10**9), ("ms", 10**6), ("us", 10**3), ("ns", 1)])
def test_epoch_timestamps_in_every_unit_open_at_the_right_time(make_log, unit, divisor):
    log = small_log()
    log["timestamp"] = log["timestamp"].astype("int64") // divisor
    view = make_log(log)
    first, last = time_range(view)
    assert first == datetime_of("2024-03-01")
    assert abs((last - datetime_of("2024-03-21")).total_seconds()) < 1


def datetime_of(text: str):
    """A naive datetime from ISO text."""
    return pd.Timestamp(text).to_pydatetime()


def test_text_timestamps_that_never_parse_are_refused_naming_the_column(make_log):
    log = small_log()
    log["timestamp"] = log["timestamp"].dt.strftime("%d/%m/%Y %H:%M")
    log = log.rename(columns={"timestamp": "event time"})
    with pytest.raises(ConfigError, match=r"timestamp column 'event time'.*'01/03/2024 00:00'"):
        make_log(log, toml='[columns]\ntimestamp = "event time"\n')


def test_text_timestamps_with_offsets_and_some_gaps_still_open(make_log):
    log = small_log()
    text = log["timestamp"].dt.tz_localize("UTC").dt.tz_convert("Europe/Paris").astype(str)
    log["timestamp"] = text.where(log.index % 10 != 0, None)
    view = make_log(log, fmt="ndjson")
    first, _ = time_range(view)
    assert first == datetime_of("2024-03-01 00:00:00") + pd.Timedelta(seconds=20 * 86400 / 199)


def test_text_predictions_against_numeric_labels_are_refused_naming_both(make_log):
    from mlmon_core.metrics import compute_metrics

    log = small_log()
    log["prediction"] = np.where(log["prediction"] == 1, "yes", "no")
    view = make_log(log)  # opens: schema, drift and quality do not compare the two
    assert "cannot be compared" in view.schema_json()["warnings"][0]
    with pytest.raises(SourceError, match=r"'prediction' and the target column 'target' cannot be "
                                          r"compared.*'no', 'yes'.*BIGINT"):
        compute_metrics(view, window=None)


def test_boolean_predictions_against_integer_labels_still_compare(make_log):
    log = small_log()
    log["prediction"] = log["prediction"].astype(bool)
    view = make_log(log, toml='[model]\npositive_label = 1\n')
    from mlmon_core.metrics import compute_metrics

    result = compute_metrics(view, window=None)
    expected = float((log["prediction"].astype(int) == log["target"]).mean())
    assert result.metrics["accuracy"].value == pytest.approx(expected)


def test_positive_label_spelled_differently_from_the_labels_is_refused(make_log):
    log = small_log()
    for column in ("prediction", "target"):
        log[column] = np.where(log[column] == 1, "Yes", "No")
    with pytest.raises(ConfigError, match=r"positive_label = 'yes' is not a value of the target "
                                          r"column 'target' \(it holds 'No', 'Yes'\)"):
        make_log(log, toml='[model]\npositive_label = "yes"\n')


def test_positive_label_absent_from_a_one_class_window_is_accepted(make_log):
    log = small_log()
    log["target"] = 0
    view = make_log(log, toml='[model]\ntask = "binary"\npositive_label = 1\n')
    assert view.positive_label == 1


def test_boolean_positive_label_given_as_one_matches_boolean_labels(make_log):
    log = small_log()
    log["target"] = log["target"].astype(bool)
    log["prediction"] = log["prediction"].astype(bool)
    view = make_log(log, toml='[model]\npositive_label = 1\n')
    assert view.task == "binary"


def test_text_ids_join_numeric_label_ids(make_log):
    log = small_log()
    labels = log[["id", "target"]]
    predictions = log.drop(columns="target").assign(id=log["id"].astype(str))
    view = make_log(predictions, labels)
    assert view.count() == 200
    labeled = view.fetchall(Fragment("SELECT count(target) FROM log"))[0][0]
    assert labeled == 200


def test_ids_that_never_match_across_types_are_refused(make_log):
    log = small_log()
    labels = log[["id", "target"]]
    predictions = log.drop(columns="target").assign(id="u" + log["id"].astype(str))
    with pytest.raises(ConfigError, match=r"no label id matches a prediction id: 'id' is VARCHAR "
                                          r"in the predictions but BIGINT in the labels"):
        make_log(predictions, labels)


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_a_column_named_filename_is_reported_by_name(make_log, fmt):
    log = small_log().assign(filename="img.jpg")
    with pytest.raises(SourceError, match=r"has a column named 'filename'.*rename that column"):
        make_log(log, fmt=fmt)


def test_cli_exits_2_with_the_message_for_an_unparseable_timestamp(tmp_path, capsys):
    log = small_log()
    log["timestamp"] = log["timestamp"].dt.strftime("%b %d %Y")
    path = write_project(tmp_path / "p", log)
    code = cli.main(["schema", "--config", str(path), "--json"])
    assert code == 2
    assert "timestamp column 'timestamp' holds text" in capsys.readouterr().err


def test_cli_schema_of_nanosecond_epochs_is_valid_json(tmp_path, capsys):
    log = small_log()
    log["timestamp"] = log["timestamp"].astype("int64")
    path = write_project(tmp_path / "p", log)
    assert cli.main(["schema", "--config", str(path), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["time_range"]["start"] == "2024-03-01T00:00:00"


def test_per_class_score_columns_of_a_multiclass_log_are_not_features(make_log):
    rng = np.random.default_rng(3)
    classes = np.array(["cat", "dog", "bird"])
    rows = 300
    log = pd.DataFrame({
        "id": np.arange(rows),
        "timestamp": START + pd.to_timedelta(np.arange(rows) * 3600, unit="s"),
        "width": rng.integers(64, 2048, rows),
        "prediction": rng.choice(classes, rows),
        "label": rng.choice(classes, rows, p=[0.6, 0.35, 0.05]),
    })
    probabilities = rng.dirichlet(np.ones(3), rows)
    for index, name in enumerate(classes):
        log[f"score_{name}"] = probabilities[:, index]
    log["score_unrelated"] = rng.random(rows)  # not a class: stays a feature
    view = make_log(log)
    assert view.task == "multiclass"
    assert view.roles.features == ("width", "score_unrelated")
    assert view.columns["score_dog"].role == "other"


def test_error_explanation_survives_an_all_null_feature(make_log):
    from mlmon_core.attributions import importance

    rng = np.random.default_rng(5)
    rows = 120
    distance = rng.gamma(2, 3, rows)
    log = pd.DataFrame({
        "id": [f"ord-{i}" for i in range(rows)],
        "timestamp": START + pd.to_timedelta(np.arange(rows) * 600, unit="s"),
        "distance_km": distance,
        "courier_rating": np.full(rows, np.nan),
        "region": "EU",
        "prediction": 10 + 3 * distance,
        "target": 10 + 3 * distance + rng.normal(0, 1, rows) * distance,
    })
    view = make_log(log, toml='[model]\ntask = "regression"\n')
    result = importance(view, None, source="errors")
    table = result.features.set_index("feature")
    assert result.reason is None
    assert table.loc["courier_rating", "mean_abs"] == 0.0
    assert table.loc["distance_km", "mean_abs"] > 0.0


def test_drift_explanation_without_enough_rows_reports_no_importance(make_log):
    from mlmon_core.attributions import importance
    from mlmon_core.config import Window

    view = make_log(small_log(rows=30))
    result = importance(view, Window(datetime_of("2024-03-15"), None), source="drift",
                        compare_to=Window(datetime_of("2024-03-01"), datetime_of("2024-03-05")))
    assert "needs at least 50 on each side" in result.reason
    assert result.features["mean_abs"].isna().all()


def test_a_probability_logged_as_the_prediction_becomes_the_score(make_log):
    from mlmon_core.metrics import compute_metrics
    from sklearn.metrics import accuracy_score, roc_auc_score

    log = small_log(rows=300).drop(columns=["prediction"]).rename(columns={"score": "prediction"})
    view = make_log(log)
    assert (view.roles.score, view.roles.prediction) == ("prediction", None)
    result = compute_metrics(view, window=None)
    assert result.metrics["accuracy"].value == pytest.approx(
        accuracy_score(log["target"], log["prediction"] >= 0.5))
    assert result.metrics["roc_auc"].value == pytest.approx(roc_auc_score(log["target"], log["prediction"]))


def test_a_zero_one_float_prediction_stays_the_prediction(make_log):
    log = small_log().drop(columns=["score"]).assign(
        prediction=lambda frame: frame["prediction"].astype(float))
    view = make_log(log)
    assert (view.roles.score, view.roles.prediction) == (None, "prediction")


def test_integer_dates_written_as_yyyymmdd_are_dates(make_log):
    log = small_log()
    log["timestamp"] = log["timestamp"].dt.strftime("%Y%m%d").astype(int)
    view = make_log(log, fmt="csv")
    assert time_range(view) == (datetime_of("2024-03-01"), datetime_of("2024-03-21"))


def test_a_text_score_is_reported_with_an_offending_value(make_log):
    from mlmon_core.metrics import compute_metrics

    log = small_log()
    log["score"] = log["score"].map(lambda value: f"{value:.3f}".replace(".", ","))
    view = make_log(log)
    with pytest.raises(SourceError, match=r"score column 'score' has type VARCHAR \(e\.g\. "
                                          r"'\d,\d+', a decimal comma\?\)"):
        compute_metrics(view, window=None)


def test_report_on_a_where_that_picks_a_model_is_not_emptied_by_the_default_model(tmp_path):
    from mlmon_core import report

    rng = np.random.default_rng(7)
    log = small_log(rows=300).assign(model_version=rng.choice(["v1", "v1", "v2"], 300))
    path = write_project(tmp_path / "p", log, toml='[columns]\nmodel = "model_version"\n')
    args = cli.build_parser().parse_args(
        ["report", "--config", str(path), "--where", "model_version == 'v2'",
         "--out", str(tmp_path / "r.html")])
    view = cli.open_view(args)
    assert report.default_model(view, cli.window_of(view, None)) == "v1"
    assert cli._filters_model(args, view)
    assert not cli._filters_model(cli.build_parser().parse_args(
        ["report", "--config", str(path), "--where", "f1 > 0", "--out", "r.html"]), view)
    assert cli.main(["report", "--config", str(path), "--where", "model_version == 'v2'",
                     "--window", "2024-03-01..2024-03-22", "--out", str(tmp_path / "r.html"),
                     "--json"]) == 0
