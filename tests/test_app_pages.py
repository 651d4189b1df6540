"""AppTest: every page renders on a synthetic project without an exception."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from streamlit.testing.v1 import AppTest


ROOT = Path(__file__).resolve().parent.parent


def synthetic_log(rows: int = 4000, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A small binary-classification log over 40 days with two models and late labels."""
    rng = np.random.default_rng(seed)
    start = np.datetime64("2025-01-01T00:00:00")
    timestamp = start + (rng.random(rows) * 40 * 86400).astype("timedelta64[s]")
    age = rng.integers(18, 90, rows)
    region = rng.choice(["north", "south", "east", "west"], rows)
    score = 1 / (1 + np.exp(-(age - 50) / 10 + rng.normal(0, 1, rows)))
    frame = pd.DataFrame({
        "id": [f"r{i}" for i in range(rows)], "timestamp": timestamp, "age": age,
        "income": rng.lognormal(10, 0.5, rows), "region": region,
        "model": rng.choice(["v1", "v2"], rows, p=[0.8, 0.2]),
        "prediction": (score >= 0.5).astype(int), "score": score,
        "latency_ms": rng.gamma(2, 20, rows),
    })
    truth = (rng.random(rows) < score).astype(int)
    labeled = timestamp < start + np.timedelta64(33, "D")
    labels = pd.DataFrame({"id": frame["id"][labeled], "target": truth[labeled]})
    return frame, labels


def run_app(page: str | None = None, query: dict | None = None) -> AppTest:
    """Run app.py (optionally switching to a page) and return the finished AppTest."""
    app = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    for key, value in (query or {}).items():
        app.query_params[key] = value
    app.run()
    if page is not None:
        app.switch_page(page)
        app.run()
    return app


def assert_clean(app: AppTest) -> None:
    """No exception and no error box on the page."""
    assert not app.exception, [e.value for e in app.exception]
    assert not app.error, [e.value for e in app.error]


def test_overview_renders(project):
    app = run_app()
    assert_clean(app)
    assert app.title[0].value == "Overview"
    labels = [m.label for m in app.metric]
    assert {"Predictions", "Labeled", "Label coverage"} <= set(labels)
    subheaders = {s.value for s in app.subheader}
    assert {"Volume per day", "Label coverage", "Class balance", "Predictions over time"} <= subheaders
    assert app.query_params["window"] in ("2025-02-03..2025-02-10", ["2025-02-03..2025-02-10"])


def test_url_state_is_read(project):
    app = run_app(query={"window": "2025-01-05..2025-01-07", "where": "age >= 60", "model": "v2"})
    assert_clean(app)
    assert "age ≥ 60" in app.caption[0].value or any("age ≥ 60" in c.value for c in app.caption)
    predictions = next(m for m in app.metric if m.label == "Predictions")
    assert 0 < int(predictions.value.replace(",", "")) < 200


def test_bad_segment_is_an_error_not_a_traceback(project):
    app = run_app(query={"where": "nosuchcolumn > 3"})
    assert not app.exception
    assert any("nosuchcolumn" in e.value for e in app.sidebar.error)


def test_bad_config_shows_error(tmp_path, monkeypatch):
    bad = tmp_path / "mlmon.toml"
    bad.write_text('[source]\npredictions = "missing.parquet"\n')
    monkeypatch.setenv("MLMON_CONFIG", str(bad))
    app = run_app()
    assert not app.exception
    assert any("missing.parquet" in e.value for e in app.error)


def test_compare_page_renders(project):
    app = run_app("pages/compare.py", query={"window": "2025-01-25..2025-02-01"})
    assert_clean(app)
    headers = {h.value for h in app.header}
    assert {"Drift", "Distributions", "Metrics", "What moved jointly"} <= headers
    assert any("columns drifted" in m.value for m in app.markdown)


def test_compare_page_versions_mode(project):
    app = run_app("pages/compare.py", query={"window": "2025-01-25..2025-02-01"})
    app.radio[0].set_value("Two model versions").run()
    assert_clean(app)
    assert any("v1" in c.value and "v2" in c.value for c in app.caption)
