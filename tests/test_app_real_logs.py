"""AppTest on logs shaped like real ones (not the clean synthetic loan log): a log younger than a
week, a reference window outside the data, multiclass string labels, a regression with labels in
their own file, booleans, epoch-millisecond timestamps and column names with spaces, dots,
unicode and SQL keywords. Each test names the element that used to be wrong."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlmon_core.health import compare_metric, label
from mlmon_core.metrics import MetricValue
from tests.conftest import write_project
from tests.test_app_pages import assert_clean, run_app


def _times(rng, rows: int, days: float, start: str = "2024-03-01") -> np.ndarray:
    first = np.datetime64(f"{start}T00:00:00")
    return np.sort(first + (rng.random(rows) * days * 86400).astype("timedelta64[s]"))


def _binary(rows: int, days: float, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    score = rng.random(rows)
    return pd.DataFrame({
        "id": np.arange(rows), "timestamp": _times(rng, rows, days),
        "f": rng.normal(0, 1, rows), "c": rng.choice(["a", "b"], rows),
        "prediction": (score > 0.5).astype(int), "score": score,
        "target": (rng.random(rows) < score).astype(int)})


def _open(tmp_path, monkeypatch, predictions, labels=None, toml="", fmt="parquet"):
    path = write_project(tmp_path / "project", predictions, labels, toml, fmt)
    monkeypatch.setenv("MLMON_CONFIG", str(path))
    return path


def _metric(app, name: str) -> str:
    return next(m.value for m in app.metric if m.label == name)


def test_log_younger_than_a_week_opens(tmp_path, monkeypatch):
    # The default 7-day window starts before the first day: the date picker used to raise
    # "The value ... is less than the min_value", and the volume alert counted the empty days.
    _open(tmp_path, monkeypatch, _binary(300, days=1))
    app = run_app()
    assert_clean(app)
    assert _metric(app, "Predictions") == "300"
    assert not any("volume" in w.value for w in app.warning)


@pytest.mark.parametrize("page", [None, "pages/compare.py", "pages/segments.py"])
def test_reference_window_outside_the_data(tmp_path, monkeypatch, page):
    _open(tmp_path, monkeypatch, _binary(600, days=20),
          toml='[reference]\nstart = "2020-01-01"\nend = "2020-01-15"\n')
    app = run_app(page)
    assert not app.exception, [e.value for e in app.exception]
    assert not app.error, [e.value for e in app.error]
    assert not any("Open a log" in i.value for i in app.info)   # the sidebar built a context
    assert any("reference 2020-01-01..2020-01-15" in c.value or "2020-01-01..2020-01-15" in c.value
               for c in app.caption), [c.value for c in app.caption]
    if page is None:
        picker = app.sidebar.date_input(key="reference_dates")
        assert [d.isoformat() for d in picker.value] == ["2020-01-01", "2020-01-14"]
        assert any("reference window (2020-01-01..2020-01-15) has no rows" in i.value
                   for i in app.info)


def _multiclass(rows: int = 1500, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    classes = np.array(["cat", "dog", "rare_bird"])
    truth = rng.choice(classes, rows, p=[0.6, 0.35, 0.05])
    prediction = np.where(rng.random(rows) < 0.2, rng.choice(classes, rows), truth)
    timestamp = _times(rng, rows, 30)
    labeled = timestamp < np.datetime64("2024-03-27")
    return pd.DataFrame({"id": [f"m{i}" for i in range(rows)], "timestamp": timestamp,
                         "weight": rng.normal(10, 3, rows), "color": rng.choice(["r", "g"], rows),
                         "prediction": prediction, "score": rng.uniform(0.34, 1, rows),
                         "target": np.where(labeled, truth, None)})


def test_multiclass_string_labels_overview(tmp_path, monkeypatch):
    # Whole-window multiclass metrics failed in DuckDB ("bucket" must appear in the GROUP BY).
    _open(tmp_path, monkeypatch, _multiclass(), toml='[model]\ntask = "multiclass"\n',
          fmt="ndjson")
    app = run_app(query={"window": "2024-03-01..2024-03-31"})
    assert_clean(app)
    assert float(_metric(app, "accuracy")) > 0.5
    subheaders = {s.value for s in app.subheader}
    assert "Predictions over time" in subheaders
    assert "Class balance" not in subheaders          # positive rates apply to binary logs only
    metrics = next(d.value for d in app.dataframe if "in words" in d.value)
    assert "recall[rare_bird]" in set(metrics["metric"])   # the class name is kept as logged
    assert not any("positive label" in c.value for c in app.caption)


def test_regression_with_separate_labels(tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    rows = 1200
    x = rng.normal(0, 1, rows)
    predictions = pd.DataFrame({
        "request_id": np.arange(rows), "event_time": _times(rng, rows, 30),
        "x": np.where(rng.random(rows) < 0.1, np.nan, x), "empty": np.full(rows, np.nan),
        "constant": 7.0, "y_pred": 3 * x + rng.normal(0, 1, rows)})
    labels = pd.DataFrame({"request_id": np.arange(0, rows, 2), "y": 3 * x[::2]})
    _open(tmp_path, monkeypatch, predictions, labels, fmt="csv", toml=(
        '[columns]\nid = "request_id"\ntimestamp = "event_time"\nprediction = "y_pred"\n'
        'target = "y"\n[model]\ntask = "regression"\n'))
    app = run_app(query={"window": "2024-03-01..2024-03-31"})
    assert_clean(app)
    assert _metric(app, "Labeled") == "600"
    daily = next(d.value for d in app.dataframe if "label_coverage" in d.value)
    assert "actual_positive_rate" not in daily and "mean_score" not in daily
    assert daily.notna().any().all()
    app = run_app("pages/compare.py", query={"window": "2024-03-01..2024-03-31"})
    assert_clean(app)
    drift = next(d.value for d in app.dataframe if "drifted" in d.value)
    assert {"x", "empty", "constant"} <= set(drift["column"])


def _odd_names(rows: int = 1500, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    timestamp = _times(rng, rows, 30)
    score = rng.random(rows)
    return pd.DataFrame({
        "id": np.arange(rows), "ts": timestamp.astype("datetime64[ms]").astype("int64"),
        "order": rng.integers(0, 50, rows), "group": rng.choice(["g1", "g 3"], rows),
        "user age": rng.integers(18, 80, rows), "price.usd": rng.lognormal(3, 1, rows),
        "température": rng.normal(20, 5, rows), "région": rng.choice(["Île", "Провинция"], rows),
        "is_member": rng.random(rows) < 0.3,
        "prediction": score > 0.5, "score": score, "target": rng.random(rows) < score})


ODD_WHERE = "\"user age\" >= 40 and `group` = 'g 3' and région = 'Провинция'"


@pytest.mark.parametrize("page", [None, "pages/compare.py", "pages/segments.py",
                                  "pages/labeling.py", "pages/report.py"])
def test_epoch_ms_booleans_and_odd_names(tmp_path, monkeypatch, page):
    _open(tmp_path, monkeypatch, _odd_names(), toml="[model]\npositive_label = true\n")
    app = run_app(page, query={"window": "2024-03-01..2024-03-31", "where": ODD_WHERE})
    assert_clean(app)
    assert any("région = Провинция" in c.value or "région = 'Провинция'" in c.value
               for c in app.caption), [c.value for c in app.caption]


def test_compare_every_column_of_odd_types(tmp_path, monkeypatch):
    _open(tmp_path, monkeypatch, _odd_names(), toml="[model]\npositive_label = true\n")
    app = run_app("pages/compare.py", query={"window": "2024-03-01..2024-03-31"})
    column = next(s for s in app.selectbox if s.label == "Column")
    for name in ("température", "price.usd", "is_member", "order", "région"):
        column.select(name).run()
        assert_clean(app)
        assert any(name in s.value for s in app.subheader)
        column = next(s for s in app.selectbox if s.label == "Column")


def test_share_at_zero_or_one_is_not_a_certain_change():
    # Precision 0/2 now vs 5/5 before had a Wald standard error of 0 on both sides: p = 0, and
    # the Overview warned "precision fell ... (n=2 vs 5, p<0.001)".
    change = compare_metric("precision", MetricValue(0.0, 0.0, 0.66, 2, se=0.0),
                            MetricValue(1.0, 0.57, 1.0, 5, se=0.0))
    assert change.p_value > 0.001
    assert "p<0.001" not in change.sentence
    assert label("precision[rare_bird]") == "precision[rare_bird]"
    assert label("log_loss") == "log loss"


def _census(rows: int = 2000, seed: int = 4) -> pd.DataFrame:
    """folktables-like: integer-coded categoricals, booleans, ISO text timestamps, late labels."""
    rng = np.random.default_rng(seed)
    timestamp = _times(rng, rows, 40)
    schooling = rng.integers(1, 25, rows)
    score = 1 / (1 + np.exp(-(schooling - 16) / 3 - rng.normal(0, 1, rows)))
    labeled = timestamp < np.datetime64("2024-04-01")
    return pd.DataFrame({
        "id": [f"p{i}" for i in range(rows)],
        "timestamp": pd.Series(timestamp).dt.strftime("%Y-%m-%dT%H:%M:%S"),
        "AGEP": rng.integers(17, 95, rows), "SCHL": schooling,
        "OCCP": rng.choice(np.arange(10, 9900, 24), rows), "SEX": rng.integers(1, 3, rows),
        "PINCP_pred": score >= 0.5, "score": score,
        "PINCP": pd.array(np.where(labeled, rng.random(rows) < score, None), dtype="boolean")})


CENSUS_TOML = ('[columns]\nprediction = "PINCP_pred"\ntarget = "PINCP"\n'
               'categorical = ["SCHL", "OCCP", "SEX"]\n[model]\npositive_label = true\n')


def test_segment_on_the_target_is_not_a_volume_drop(tmp_path, monkeypatch):
    # In the last week no row has a label yet, so "PINCP = false" holds no row: that is label
    # arrival, and the volume-drop alert used to fire (an error box) on it.
    _open(tmp_path, monkeypatch, _census(), toml=CENSUS_TOML, fmt="csv")
    app = run_app(query={"where": "PINCP = false"})
    assert not app.exception, [e.value for e in app.exception]
    assert not any("volume" in e.value for e in app.error), [e.value for e in app.error]
    assert any("volume drop: skipped" in m.value and "filters on the target" in m.value
               for m in app.markdown)


@pytest.mark.parametrize("page", [None, "pages/segments.py", "pages/labeling.py"])
def test_census_log_with_integer_codes_and_booleans(tmp_path, monkeypatch, page):
    _open(tmp_path, monkeypatch, _census(), toml=CENSUS_TOML)
    app = run_app(page, query={"window": "2024-03-01..2024-04-10", "where": "SEX = 2"})
    assert_clean(app)
    if page is None:
        assert float(_metric(app, "accuracy")) > 0.5
        assert any("positive label: **True**" in c.value for c in app.caption)


def test_log_without_labels_offers_no_actual_positive_rate(tmp_path, monkeypatch):
    frame = _binary(1500, days=30).drop(columns="target")
    _open(tmp_path, monkeypatch, frame)
    app = run_app("pages/segments.py", query={"where": "c = 'a'"})
    assert_clean(app)
    options = app.selectbox(key="segments-metric").options
    assert "actual positive rate" not in options
    assert {"error rate", "predicted positive rate"} <= set(options)
    assert not any("no target column" in i.value for i in app.info)


@pytest.mark.parametrize("page", [None, "pages/compare.py", "pages/labeling.py"])
def test_log_with_no_rows_yet(tmp_path, monkeypatch, page):
    # A fresh deployment's file holds only the header: to_dates(None) used to raise.
    _open(tmp_path, monkeypatch, _binary(10, days=3).iloc[:0])
    app = run_app(page)
    assert not app.exception, [e.value for e in app.exception]
    if page is None:  # a page switched to in AppTest runs without app.py's sidebar
        assert any("no timestamped rows yet" in c.value for c in app.sidebar.caption)
        assert _metric(app, "Predictions") == "0"
