"""Service health: throughput, latency percentiles and error rate, checked against numpy."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from mlmon_core.cli import main, to_jsonable
from mlmon_core.config import Window
from mlmon_core.errors import FilterError
from mlmon_core.service import ErrorRule, service_health
from mlmon_core.sql import parse_where

START = datetime(2024, 3, 1)


def service_log(n: int, days: int, seed: int, status=None) -> pd.DataFrame:
    """Rows spread over ``days`` with log-normal latency and HTTP status codes."""
    rng = np.random.default_rng(seed)
    offsets = np.sort(rng.integers(0, days * 86400, n))
    frame = pd.DataFrame({
        "id": np.arange(n),
        "timestamp": pd.Timestamp(START) + pd.to_timedelta(offsets, unit="s"),
        "latency_ms": rng.lognormal(3, 0.7, n),
        "status": status if status is not None else rng.choice([200, 200, 200, 404, 500, 503], n),
        "region": rng.choice(["east", "west"], n),
        "prediction": rng.integers(0, 2, n),
    })
    return frame


def test_buckets_match_numpy(make_log):
    frame = service_log(3000, 6, seed=1)
    view = make_log(frame)
    result = service_health(view, Window(START, START + timedelta(days=6)), bucket="day")
    assert len(result.buckets) == 6
    frame["day"] = frame["timestamp"].dt.floor("D")
    for entry, (day, rows) in zip(result.buckets, frame.groupby("day")):
        assert entry["start"] == day.to_pydatetime()
        assert entry["end"] == day.to_pydatetime() + timedelta(days=1)
        assert entry["rows"] == len(rows)
        assert entry["rows_per_hour"] == pytest.approx(len(rows) / 24)
        for q in (50, 95, 99):
            assert entry[f"latency_p{q}"] == pytest.approx(
                np.quantile(rows["latency_ms"], q / 100), rel=1e-12)
        assert entry["latency_mean"] == pytest.approx(rows["latency_ms"].mean())
        assert entry["latency_max"] == pytest.approx(rows["latency_ms"].max())
        assert entry["errors"] == int((rows["status"] >= 500).sum())
        assert entry["error_rate"] == pytest.approx((rows["status"] >= 500).mean())
        assert "reasons" not in entry
    overall = result.window
    assert overall["rows"] == 3000 and overall["hours"] == pytest.approx(144)
    assert overall["latency_p99"] == pytest.approx(np.quantile(frame["latency_ms"], 0.99), rel=1e-12)
    assert overall["error_rate"] == pytest.approx((frame["status"] >= 500).mean())


def test_client_errors_count_when_the_rule_says_so(make_log):
    frame = service_log(1000, 3, seed=2)
    view = make_log(frame)
    result = service_health(view, None, bucket=None, error_rule=ErrorRule(numeric_error_from=400))
    assert result.buckets == []
    assert result.window["error_rate"] == pytest.approx((frame["status"] >= 400).mean())


def test_text_and_boolean_statuses(make_log):
    statuses = ["OK", " success ", "200", "503", "error", "timeout", None, "", "True", "404"]
    frame = service_log(10, 1, seed=3, status=statuses)
    result = service_health(make_log(frame), None, bucket="day")
    # errors: "503", "error", "timeout"; missing: None and "" (left out); "404" is below 500.
    assert result.window["status_rows"] == 8
    assert result.window["errors"] == 3
    assert result.window["error_rate"] == pytest.approx(3 / 8)
    custom = service_health(make_log(frame), None, error_rule=ErrorRule(ok_values=("ok",)))
    assert custom.window["errors"] == 5  # "success" and "True" are errors under this rule
    flags = service_log(6, 1, seed=4, status=[True, True, False, None, True, False])
    result = service_health(make_log(flags), None)
    assert (result.window["status_rows"], result.window["errors"]) == (5, 2)


def test_nan_and_infinite_numeric_statuses_count_as_missing(tmp_path):
    import duckdb

    from mlmon_core.config import load_config
    from mlmon_core.source import open_log

    folder = tmp_path / "nan"
    folder.mkdir()
    # pandas would write NaN as null; DuckDB keeps a real NaN in the file.
    duckdb.sql(
        "SELECT * FROM (VALUES (1, TIMESTAMP '2024-03-01 01:00', 200.0), "
        "(2, TIMESTAMP '2024-03-01 02:00', 503.0), (3, TIMESTAMP '2024-03-01 03:00', 'nan'::DOUBLE), "
        "(4, TIMESTAMP '2024-03-01 04:00', 'inf'::DOUBLE), (5, TIMESTAMP '2024-03-01 05:00', 500.0)) "
        "AS t(id, timestamp, status)").write_parquet(str(folder / "log.parquet"))
    (folder / "mlmon.toml").write_text('[source]\npredictions = "log.parquet"\n')
    result = service_health(open_log(load_config(folder / "mlmon.toml")), None)
    assert (result.window["status_rows"], result.window["errors"]) == (3, 2)


def test_partial_buckets_use_the_hours_inside_the_window(make_log):
    frame = service_log(2000, 4, seed=5)
    view = make_log(frame)
    window = Window(START + timedelta(hours=12), START + timedelta(days=2))
    result = service_health(view, window, bucket="day")
    first, second = result.buckets
    assert first["start"] == window.start and first["hours"] == pytest.approx(12)
    inside = frame[(frame["timestamp"] >= window.start) & (frame["timestamp"] < window.end)]
    assert first["rows_per_hour"] == pytest.approx(
        (inside["timestamp"] < START + timedelta(days=1)).sum() / 12)
    assert second["hours"] == pytest.approx(24)
    assert result.window["hours"] == pytest.approx(36)


def test_month_buckets_have_calendar_lengths(make_log):
    frame = service_log(500, 70, seed=6)
    result = service_health(make_log(frame), None, bucket="month")
    assert [b["start"].month for b in result.buckets] == [3, 4, 5]
    assert [b["hours"] for b in result.buckets] == [31 * 24, 30 * 24, 31 * 24]


def test_segment_filters_rows(make_log):
    frame = service_log(1000, 3, seed=7)
    result = service_health(make_log(frame), None, parse_where("region == 'east'"))
    east = frame[frame["region"] == "east"]
    assert result.window["rows"] == len(east)
    assert result.window["latency_p50"] == pytest.approx(np.quantile(east["latency_ms"], 0.5))


def test_no_latency_or_status_columns(make_log):
    frame = service_log(200, 2, seed=8).drop(columns=["latency_ms", "status"])
    result = service_health(make_log(frame), None)
    assert result.reason.startswith("not computable because") and "latency" in result.reason
    assert result.window["rows"] == 200 and result.window["rows_per_hour"] is not None
    assert result.window["latency_p95"] is None and result.window["error_rate"] is None
    assert "no latency column" in result.window["reasons"]["latency_p95"]
    assert "no status column" in result.window["reasons"]["error_rate"]
    json.dumps(to_jsonable(result.to_json()))


def test_all_null_and_infinite_latency(make_log):
    frame = service_log(20, 1, seed=9)
    frame["latency_ms"] = [np.nan] * 10 + [np.inf] * 10
    result = service_health(make_log(frame), None)
    assert result.window["latency_rows"] == 0 and result.window["latency_p50"] is None
    assert "finite latency" in result.window["reasons"]["latency_p50"]
    assert result.reason is None


def test_non_numeric_latency_has_a_reason(make_log):
    frame = service_log(20, 1, seed=10).assign(latency_ms="fast")
    result = service_health(make_log(frame), None)
    assert "not numeric" in result.window["reasons"]["latency_p50"]


def test_empty_window_and_single_row(make_log):
    view = make_log(service_log(50, 2, seed=11))
    empty = service_health(view, Window(datetime(2030, 1, 1), datetime(2030, 1, 2)))
    assert empty.buckets == [] and empty.window["rows"] == 0
    assert empty.window["rows_per_hour"] == 0
    assert empty.window["latency_p50"] is None and empty.window["error_rate"] is None
    single = service_log(1, 1, seed=12)
    result = service_health(make_log(single), None)
    assert result.window["latency_p99"] == pytest.approx(single["latency_ms"].iloc[0])
    assert result.buckets[0]["rows"] == 1


def test_bad_bucket(make_log):
    with pytest.raises(FilterError):
        service_health(make_log(service_log(10, 1, seed=13)), None, bucket="year")


def test_cli_service_json(make_log, tmp_path, capsys):
    frame = service_log(500, 3, seed=14)
    make_log(frame)
    config = tmp_path / "project1" / "mlmon.toml"
    assert main(["service", "--config", str(config), "--window", "2024-03-01..2024-03-04",
                 "--by", "day", "--error-from", "400", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["window"]["start"] == "2024-03-01T00:00:00"
    assert len(payload["buckets"]) == 3 and payload["error_rule"]["numeric_error_from"] == 400
    assert payload["overall"]["error_rate"] == pytest.approx((frame["status"] >= 400).mean())
    assert main(["service", "--config", str(config)]) == 0
    assert "p50/p95/p99" in capsys.readouterr().out
