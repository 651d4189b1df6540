"""AppTest: the Overview opens with "Alerts now" and the "Retrain?" answer, quiet on the steady
synthetic project and naming the planted problem when there is one."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import write_project
from tests.test_app_pages import assert_clean, run_app, synthetic_log


def test_overview_shows_the_alerts_section_first(project):
    app = run_app()
    assert_clean(app)
    headers = [h.value for h in app.header]
    assert headers[0] == "Alerts now" and "Model health" in headers
    assert "Retrain?" in {s.value for s in app.subheader}
    answer = [box.value for box in list(app.success) + list(app.warning) + list(app.error)]
    assert any(text.startswith(("No action needed", "Watch", "No retraining", "Retraining"))
               for text in answer), answer
    assert any("alert rules fire" in c.value for c in app.caption)


@pytest.fixture
def broken_project(tmp_path, monkeypatch):
    """The synthetic log with ``income`` missing in most rows of its last week."""
    predictions, labels = synthetic_log()
    last_week = predictions["timestamp"] >= np.datetime64("2025-02-03")
    predictions.loc[last_week, "income"] = np.nan
    path = write_project(tmp_path / "broken", predictions, labels,
                         '[reference]\nstart = "2025-01-01"\nend = "2025-01-15"\n')
    monkeypatch.setenv("MLMON_CONFIG", str(path))
    return path


def test_overview_names_the_alert_that_fires(broken_project):
    app = run_app()
    assert not app.exception, [e.value for e in app.exception]
    errors = [e.value for e in app.error]
    assert any("missing-value spike" in text and "income" in text for text in errors), errors
    assert any("No retraining needed, but fix" in w.value and "income" in w.value
               for w in app.warning), [w.value for w in app.warning]
