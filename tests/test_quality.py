"""Data quality: every check fires on planted problems and stays silent on clean data."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd
import pytest

from mlmon_core.config import Window
from mlmon_core.quality import check_quality

REF = Window(datetime(2024, 1, 1), datetime(2024, 1, 11))
CUR = Window(datetime(2024, 1, 11), datetime(2024, 1, 21))
N = 2000


def clean_frame(seed: int, n: int, start: str, ids_from: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "id": np.arange(ids_from, ids_from + n),
        "timestamp": pd.date_range(start, periods=n, freq=pd.Timedelta(days=10) / n),
        "income": rng.uniform(1000, 5000, n),
        "age": rng.integers(18, 90, n),
        "ratio": rng.random(n),
        "region": rng.choice(["north", "south", "east", "west"], n),
        "code": rng.integers(100, 120, n).astype(str),
        "flag": rng.choice([True, False], n),
        "prediction": rng.integers(0, 2, n),
        "score": rng.random(n),
    })


def run(make_log, current: pd.DataFrame, reference: pd.DataFrame | None = None):
    reference = clean_frame(1, N, "2024-01-01") if reference is None else reference
    view = make_log(pd.concat([reference, current], ignore_index=True))
    return check_quality(view, CUR, REF)


def current_frame(n: int = N) -> pd.DataFrame:
    frame = clean_frame(2, n, "2024-01-11", ids_from=10 * N)
    # keep every current value inside the reference's observed range
    frame["income"] = frame["income"].clip(1100, 4900)
    frame["ratio"] = frame["ratio"].clip(0.01, 0.99)
    frame["score"] = frame["score"].clip(0.01, 0.99)
    frame["age"] = frame["age"].clip(19, 88)
    return frame


def test_clean_data_has_no_findings(make_log):
    result = run(make_log, current_frame())
    assert result.findings == []
    assert result.rows == N and result.reference_rows == N
    assert result.expected_rows == pytest.approx(N)
    income = next(c for c in result.columns if c.column == "income")
    assert income.missing_share == 0 and income.out_of_range_share == 0
    payload = result.to_json()
    assert {"rows", "columns", "findings"} <= set(payload)
    assert {"column", "missing_share", "reference_missing_share", "new_categories",
            "out_of_range_share"} <= set(payload["columns"][0])


def test_missing_values(make_log):
    current = current_frame()
    current.loc[current.index[:620], "income"] = np.nan
    current["ratio"] = np.nan
    result = run(make_log, current)
    finding = result.finding("missing", "income")
    assert finding.severity == "high" and "31% of rows (reference: 0%)" in finding.message
    assert result.finding("missing", "ratio").severity == "high"
    assert result.finding("missing", "age") is None


def test_late_labels_are_a_low_unlabeled_finding(make_log):
    """The target missing in the current window is late labels, not a broken column."""
    reference = clean_frame(1, N, "2024-01-01")
    reference["target"] = np.random.default_rng(3).integers(0, 2, N)
    current = current_frame()
    current["target"] = np.nan
    current.loc[current.index[:100], "target"] = 1
    result = run(make_log, current, reference)
    assert result.finding("missing", "target") is None
    finding = result.finding("unlabeled", "target")
    assert finding.severity == "low" and finding.value == pytest.approx(0.95)
    assert "95% of rows have no label (target) yet (reference: 0%)" in finding.message


def test_new_categories(make_log):
    current = current_frame()
    current.loc[current.index[:300], "region"] = "mars"
    current.loc[current.index[300:305], "region"] = "moon"
    result = run(make_log, current)
    finding = result.finding("new_category", "region")
    assert finding.severity == "high" and "'mars'" in finding.message and "'moon'" in finding.message
    column = next(c for c in result.columns if c.column == "region")
    assert column.new_categories == ["mars", "moon"]
    assert column.new_category_share == pytest.approx(305 / N)


def test_out_of_range(make_log):
    current = current_frame()
    current.loc[current.index[:40], "income"] = 1e7
    result = run(make_log, current)
    finding = result.finding("out_of_range", "income")
    assert finding.severity == "medium" and finding.value == pytest.approx(40 / N)


def test_type_problems(make_log):
    current = current_frame()
    current.loc[current.index[:200], "code"] = "n/a"
    result = run(make_log, current)
    finding = result.finding("type", "code")
    assert finding.severity == "high" and finding.value == pytest.approx(0.1)


def test_non_finite_values(make_log):
    reference = clean_frame(1, N, "2024-01-01")
    current = current_frame()
    current.loc[current.index[:30], "score"] = np.inf
    result = run(make_log, current, reference)
    finding = result.finding("non_finite", "score")
    assert finding is not None and finding.severity == "medium"


def test_constant_and_almost_constant(make_log):
    current = current_frame()
    current["age"] = 40
    current["region"] = "north"
    current.loc[current.index[5:], "ratio"] = 0.5
    result = run(make_log, current)
    assert result.finding("constant", "age").severity == "high"
    assert result.finding("constant", "region").severity == "high"
    assert result.finding("almost_constant", "ratio").severity == "medium"


def test_duplicate_ids(make_log):
    current = current_frame()
    current.loc[current.index[:50], "id"] = current["id"].iloc[0]
    result = run(make_log, current)
    finding = result.finding("duplicate_id")
    assert finding.severity == "high" and "49 extra rows" in finding.message


def test_volume_drop_and_empty_window(make_log):
    result = run(make_log, current_frame(600))
    finding = result.finding("volume")
    assert finding.severity == "high" and finding.value == pytest.approx(0.3)
    view = make_log(clean_frame(1, N, "2024-01-01"))
    empty = check_quality(view, Window(datetime(2025, 1, 1), datetime(2025, 1, 8)), REF)
    assert empty.rows == 0 and empty.findings[0].check == "volume"
    assert all(c.missing_share is None for c in empty.columns)


def test_cli_quality_json(tmp_path, capsys):
    import json

    from conftest import write_project
    from mlmon_core.cli import main

    current = current_frame()
    current["ratio"] = np.nan
    config = write_project(tmp_path / "p", pd.concat([clean_frame(1, N, "2024-01-01"), current]))
    code = main(["quality", "--config", str(config), "--window", "2024-01-11..2024-01-21",
                 "--reference", "2024-01-01..2024-01-11", "--json"])
    payload = json.loads(capsys.readouterr().out)
    assert code == 0 and payload["rows"] == N
    assert {"check": "missing", "column": "ratio", "severity": "high"}.items() <= \
        payload["findings"][0].items()
