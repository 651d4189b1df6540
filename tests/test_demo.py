"""The sample-data generator: files, determinism, and every planted problem visible in the numbers."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pytest

from mlmon_core.demo import FEATURES, generate, plan_for, project_toml
from mlmon_core.errors import MlmonError

ROWS = 40_000
REPO = Path(__file__).resolve().parents[1]
PROD = "model_version = 'v1.4'"
SHADOW = "model_version = 'v2.0-shadow'"


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A demo project generated once for the module (smaller than the default, same schedule)."""
    toml = generate(tmp_path_factory.mktemp("demo"), rows=ROWS)
    return toml.parent


@pytest.fixture(scope="module")
def con(project: Path) -> duckdb.DuckDBPyConnection:
    """DuckDB views: p (predictions), l (labels), j (joined, with err = prediction is wrong)."""
    db = duckdb.connect()
    db.execute(f"""
        CREATE VIEW p AS SELECT * FROM read_parquet('{project}/data/predictions/*.parquet');
        CREATE VIEW l AS SELECT * FROM read_parquet('{project}/data/labels/*.parquet');
        CREATE VIEW j AS SELECT p.*, l.defaulted, l.labeled_at,
            (p.prediction <> l.defaulted)::INT AS err FROM p LEFT JOIN l USING (id);
    """)
    return db


def one(con: duckdb.DuckDBPyConnection, sql: str) -> float:
    """The single value a query returns."""
    return con.execute(sql).fetchone()[0]


def test_files_written_without_leftovers(project: Path) -> None:
    names = sorted(str(p.relative_to(project)) for p in project.rglob("*") if p.is_file())
    assert names == ["data/labels/part-00000.parquet", "data/model.skops",
                     "data/predictions/part-00000.parquet", "data/shadow_model.skops", "mlmon.toml"]


def test_toml_equals_committed_file(project: Path) -> None:
    committed = (REPO / "sample_data" / "mlmon.toml").read_text(encoding="utf-8")
    assert (project / "mlmon.toml").read_text(encoding="utf-8") == committed


def test_toml_reference_follows_arguments() -> None:
    text = project_toml(plan_for(days=60, start="2025-01-10"))
    assert 'start = "2025-01-10"\nend = "2025-01-30"\n' in text


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(MlmonError, match="days"):
        generate(tmp_path, days=10)
    with pytest.raises(MlmonError, match="start"):
        generate(tmp_path, start="June")
    assert not any(tmp_path.iterdir())


def test_deterministic_for_a_seed(project: Path, tmp_path: Path) -> None:
    again = generate(tmp_path, rows=ROWS).parent
    for part in ("data/predictions/part-00000.parquet", "data/labels/part-00000.parquet"):
        assert (again / part).read_bytes() == (project / part).read_bytes(), part


def test_schema(con: duckdb.DuckDBPyConnection) -> None:
    types = dict(con.execute("SELECT column_name, column_type FROM (DESCRIBE p)").fetchall())
    expected_first = ["id", "request_id", "timestamp", *FEATURES]
    assert list(types)[: len(expected_first)] == expected_first
    assert types["timestamp"] == "TIMESTAMP" and types["has_cosigner"] == "BOOLEAN"
    assert types["prediction"] == "BIGINT" and types["predicted_probability"] == "DOUBLE"
    for name in ("home_ownership", "purpose", "region", "channel", "model_version", "variant", "status"):
        assert types[name] == "VARCHAR", name
    assert "defaulted" not in types
    label_types = dict(con.execute("SELECT column_name, column_type FROM (DESCRIBE l)").fetchall())
    assert label_types == {"id": "VARCHAR", "defaulted": "BIGINT", "labeled_at": "TIMESTAMP"}


def test_rows_ids_and_timespan(con: duckdb.DuckDBPyConnection) -> None:
    count, ids, first, last = con.execute(
        "SELECT count(*), count(DISTINCT id), min(timestamp)::DATE::VARCHAR, "
        "max(timestamp)::DATE::VARCHAR FROM p").fetchone()
    assert abs(count - ROWS) <= 0.05 * ROWS
    assert ids == count
    assert (first, last) == ("2026-06-01", "2026-08-29")
    assert one(con, "SELECT count(*) FROM l WHERE id NOT IN (SELECT id FROM p)") == 0


def test_weekly_and_daily_pattern(con: duckdb.DuckDBPyConnection) -> None:
    weekend, weekday = con.execute(f"""SELECT
        count(*) FILTER (WHERE isodow(timestamp) >= 6) / 2,
        count(*) FILTER (WHERE isodow(timestamp) < 6) / 5 FROM p WHERE {PROD}""").fetchone()
    assert weekend < 0.75 * weekday
    night, noon = con.execute(f"""SELECT count(*) FILTER (WHERE hour(timestamp) BETWEEN 2 AND 4),
        count(*) FILTER (WHERE hour(timestamp) BETWEEN 10 AND 12) FROM p WHERE {PROD}""").fetchone()
    assert night < 0.2 * noon


def test_default_rate_is_realistic(con: duckdb.DuckDBPyConnection) -> None:
    assert 0.15 <= one(con, f"SELECT avg(defaulted) FROM j WHERE {PROD}") <= 0.25


def test_reference_period_is_clean(con: duckdb.DuckDBPyConnection) -> None:
    row = con.execute(f"""SELECT count(*) FILTER (WHERE variant <> 'A' OR NOT {PROD}),
        avg((employment_years IS NULL)::INT), avg((status = 'error')::INT)
        FROM p WHERE timestamp < '2026-07-01'""").fetchone()
    assert row[0] == 0
    assert row[1] < 0.04 and row[2] < 0.01


def test_income_drift_from_day_60(con: duckdb.DuckDBPyConnection) -> None:
    from scipy.stats import wasserstein_distance

    def incomes(where: str) -> np.ndarray:
        return con.execute(f"SELECT annual_income FROM p WHERE {PROD} AND {where}").fetchnumpy()[
            "annual_income"]

    reference = incomes("timestamp < '2026-07-01'")
    before = incomes("timestamp >= '2026-07-01' AND timestamp < '2026-07-31'")
    after = incomes("timestamp >= '2026-07-31'")
    assert after.mean() < 0.8 * reference.mean()
    assert wasserstein_distance(reference, after) / reference.std() > 0.1
    assert wasserstein_distance(reference, before) / reference.std() < 0.05


def test_pipeline_bug_blanks_employment_for_pacific(con: duckdb.DuckDBPyConnection) -> None:
    shares = dict(con.execute("""SELECT region = 'Pacific' AND timestamp >= '2026-08-10'
            AND timestamp < '2026-08-17', avg((employment_years IS NULL)::INT)
        FROM p GROUP BY 1""").fetchall())
    assert shares[True] > 0.95
    assert shares[False] < 0.04


def test_weak_segment_errs_twice_as_often(con: duckdb.DuckDBPyConnection) -> None:
    overall, segment, share = con.execute(f"""SELECT avg(err),
        avg(err) FILTER (WHERE purpose = 'small_business' AND term_months = 60),
        avg((purpose = 'small_business' AND term_months = 60)::INT) FROM j WHERE {PROD}""").fetchone()
    assert segment >= 2 * overall
    assert 0.03 <= share <= 0.06


def test_partner_api_degrades_after_day_45(con: duckdb.DuckDBPyConnection) -> None:
    rows = con.execute(f"""SELECT channel = 'partner_api',
        avg(err) FILTER (WHERE timestamp < '2026-07-01'),
        avg(err) FILTER (WHERE timestamp >= '2026-07-16') FROM j WHERE {PROD} GROUP BY 1""").fetchall()
    errors = {partner: (before, after) for partner, before, after in rows}
    assert errors[True][1] > errors[True][0] + 0.1
    assert errors[False][1] < errors[False][0] + 0.05
    assert 0.08 <= one(con, f"SELECT avg((channel = 'partner_api')::INT) FROM p WHERE {PROD}") <= 0.12


def test_late_labels(con: duckdb.DuckDBPyConnection) -> None:
    shares = dict(con.execute("""SELECT CASE WHEN timestamp < '2026-08-15' THEN 'full'
            WHEN timestamp < '2026-08-21' THEN 'partial' ELSE 'none' END,
        avg((defaulted IS NOT NULL)::INT) FROM j GROUP BY 1""").fetchall())
    assert shares["full"] == 1.0
    assert 0.35 <= shares["partial"] <= 0.65
    assert shares["none"] == 0.0
    low, high, last = con.execute("""SELECT min(labeled_at - timestamp), max(labeled_at - timestamp),
        max(labeled_at) FROM j""").fetchone()
    assert low.days >= 5 and (high.days, high.seconds) < (20, 1)
    assert str(last) < "2026-08-30"


def test_shadow_twins(con: duckdb.DuckDBPyConnection) -> None:
    assert one(con, f"SELECT min(timestamp)::DATE::VARCHAR FROM p WHERE {SHADOW}") == "2026-08-10"
    assert one(con, f"SELECT count(*) FROM p WHERE {SHADOW} AND variant IS NOT NULL") == 0
    same = " AND ".join(f's."{name}" IS NOT DISTINCT FROM t."{name}"'
                        for name in ("timestamp", *FEATURES))
    twins, alike, same_label, shadows = con.execute(f"""SELECT count(*), count(*) FILTER (WHERE {same}),
        count(*) FILTER (WHERE s.defaulted IS NOT DISTINCT FROM t.defaulted
                          AND s.labeled_at IS NOT DISTINCT FROM t.labeled_at),
        (SELECT count(*) FROM p WHERE {SHADOW})
        FROM (SELECT * FROM j WHERE {SHADOW}) s JOIN (SELECT * FROM j WHERE {PROD}) t
        USING (request_id) WHERE s.id <> t.id""").fetchone()
    assert twins == alike == same_label == shadows
    assert twins == one(con, f"SELECT count(*) FROM p WHERE {PROD} AND timestamp >= '2026-08-10'")


def test_shadow_is_better_on_partner_api(con: duckdb.DuckDBPyConnection) -> None:
    brier = dict(con.execute("""SELECT model_version, avg((predicted_probability - defaulted) ^ 2)
        FROM j WHERE channel = 'partner_api' AND timestamp >= '2026-08-10' AND defaulted IS NOT NULL
        GROUP BY 1""").fetchall())
    assert brier["v2.0-shadow"] < 0.9 * brier["v1.4"]


def test_ab_split(con: duckdb.DuckDBPyConnection) -> None:
    share_b = one(con, f"SELECT avg((variant = 'B')::INT) FROM p WHERE {PROD} AND timestamp >= '2026-07-01'")
    assert 0.45 <= share_b <= 0.52
    wrong = one(con, f"""SELECT count(*) FROM p WHERE {PROD} AND prediction <>
        (predicted_probability >= CASE variant WHEN 'B' THEN 0.4 ELSE 0.5 END)::INT""")
    assert wrong == 0


def test_latency_spike(con: duckdb.DuckDBPyConnection) -> None:
    spike = "timestamp >= '2026-07-11' AND timestamp < '2026-07-13'"
    p95_in, p95_out, errors_in, errors_out = con.execute(f"""SELECT
        quantile_cont(latency_ms, 0.95) FILTER (WHERE {spike}),
        quantile_cont(latency_ms, 0.95) FILTER (WHERE NOT ({spike})),
        avg((status = 'error')::INT) FILTER (WHERE {spike}),
        avg((status = 'error')::INT) FILTER (WHERE NOT ({spike})) FROM p WHERE {PROD}""").fetchone()
    assert 4 <= p95_in / p95_out <= 6
    assert errors_in >= 0.02 and errors_out < 0.006


@pytest.mark.parametrize(("model_file", "version"), [("model.skops", "v1.4"),
                                                     ("shadow_model.skops", "v2.0-shadow")])
def test_saved_models_reproduce_logged_scores(project: Path, model_file: str, version: str) -> None:
    import pandas as pd
    import skops.io

    path = project / "data" / model_file
    untrusted = skops.io.get_untrusted_types(file=path)
    assert all(name.startswith(("sklearn.", "numpy.")) for name in untrusted), untrusted
    model = skops.io.load(path, trusted=untrusted)
    log = pd.read_parquet(project / "data" / "predictions", filters=[("model_version", "==", version)])
    scores = model.predict_proba(log[list(FEATURES)])[:, 1]
    np.testing.assert_allclose(scores, log["predicted_probability"].to_numpy(), rtol=0, atol=1e-9)
