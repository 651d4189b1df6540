"""AppTest of the Models page: shadow vs production and A/B arms on a synthetic project."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pages.common import OPEN_SEGMENT_KEY, SEGMENT_KEY
from tests.conftest import write_project
from tests.test_app_pages import assert_clean, run_app, synthetic_log

PAGE = "pages/models.py"
WINDOW = {"window": "2025-01-01..2025-01-21"}
TOML = """
[columns]
model = "model"
variant = "variant"
ignore = ["request_id"]
[reference]
start = "2025-01-01"
end = "2025-01-08"
"""


def shadow_log(requests: int = 1500, b_share: float = 0.5, missing_twins: float = 0.03,
               seed: int = 1) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Production rows (arms A/B, B with a lower threshold) and a shadow twin of each with the same
    request_id, features and timestamp; the shadow disagrees most in region west."""
    rng = np.random.default_rng(seed)
    start = np.datetime64("2025-01-01T00:00:00")
    timestamp = start + (rng.random(requests) * 20 * 86400).astype("timedelta64[s]")
    age = rng.integers(18, 90, requests)
    region = rng.choice(["north", "south", "east", "west"], requests)
    logit = (age - 50) / 10 + rng.normal(0, 1, requests)
    truth = (rng.random(requests) < 1 / (1 + np.exp(-logit))).astype(int)
    production_score = 1 / (1 + np.exp(-logit))
    noise = np.where(region == "west", 2.5, 0.3)
    shadow_score = 1 / (1 + np.exp(-(logit + rng.normal(0, 1, requests) * noise)))
    variant = np.where(rng.random(requests) < b_share, "B", "A")
    threshold = np.where(variant == "B", 0.4, 0.5)
    common = {"request_id": [f"q{i}" for i in range(requests)], "timestamp": timestamp,
              "age": age, "region": region}
    production = pd.DataFrame({**common, "id": [f"p{i}" for i in range(requests)], "model": "prod",
                               "variant": variant, "score": production_score,
                               "prediction": (production_score >= threshold).astype(int)})
    shadow = pd.DataFrame({**common, "id": [f"s{i}" for i in range(requests)], "model": "shadow",
                           "variant": None, "score": shadow_score,
                           "prediction": (shadow_score >= 0.5).astype(int)})
    shadow = shadow[rng.random(requests) >= missing_twins]     # a few requests have no twin
    frame = pd.concat([production, shadow], ignore_index=True)
    truth_of = dict(zip(common["request_id"], truth))
    labeled = frame["timestamp"] < start + np.timedelta64(15, "D")
    labels = pd.DataFrame({"id": frame["id"][labeled],
                           "target": frame["request_id"][labeled].map(truth_of)})
    return frame, labels


def _project(tmp_path: Path, monkeypatch, frame: pd.DataFrame, labels: pd.DataFrame | None,
             toml: str = TOML) -> Path:
    path = write_project(tmp_path / "project", frame, labels, toml)
    monkeypatch.setenv("MLMON_CONFIG", str(path))
    return path


@pytest.fixture
def shadow_project(tmp_path, monkeypatch) -> Path:
    """A project with shadow twins and a balanced A/B split."""
    return _project(tmp_path, monkeypatch, *shadow_log())


def _texts(app) -> str:
    return "\n".join(e.value for e in [*app.markdown, *app.caption, *app.info, *app.success,
                                       *app.error, *app.warning])


def test_renders_agreement_and_ab_sections(shadow_project):
    app = run_app(PAGE, WINDOW)
    assert_clean(app)
    assert app.title[0].value == "Models"
    headers = [h.value for h in app.header]
    assert headers == ["Shadow vs production", "A/B test"]
    labels = {m.label for m in app.metric}
    assert {"Agreement", "prod accuracy", "shadow accuracy", "McNemar test",
            "AUC difference"} <= labels
    agreement = next(m for m in app.metric if m.label == "Agreement")
    assert 0 < float(agreement.value.rstrip("%")) < 100
    text = _texts(app)
    assert "shadow agrees with prod" in text
    assert "Paired on request_id" in text
    assert "prod rows without a shadow twin" in text
    assert "Pick the two models" not in text          # production is the model with most rows
    assert "ignores the sidebar's Model / version choice" in text
    assert "B's positive rate is" in text and "points higher than A's" in text
    assert "power" in text
    assert any("traffic split matches" in s.value for s in app.success)
    assert {"Agreement per day", "Accuracy per day on labeled pairs",
            "Where they disagree"} <= {s.value for s in app.subheader}
    assert app.selectbox(key="models-group").options[0] == "region = west"


def test_sidebar_model_choice_is_ignored(shadow_project):
    app = run_app(PAGE, {**WINDOW, "model": "shadow"})
    assert_clean(app)
    assert "shadow agrees with prod" in _texts(app)
    assert "(now shadow)" in app.caption[0].value


def test_picking_the_models_swaps_them(shadow_project):
    app = run_app(PAGE, WINDOW)
    production = next(s for s in app.selectbox if s.label == "Production model")
    production.set_value("shadow").run()
    assert_clean(app)
    assert "prod agrees with shadow" in _texts(app)


def test_open_a_disagreement_group_as_the_segment(shadow_project):
    app = run_app(PAGE, WINDOW)
    app.button(key="models-open-group").click().run()
    assert_clean(app)
    where = app.query_params["where"]
    assert (where[0] if isinstance(where, list) else where) == "region == 'west'"
    assert app.session_state[OPEN_SEGMENT_KEY] == "region == 'west'"
    # A page switched to in AppTest runs without app.py (see test_page_segments.py): switch back
    # to see the sidebar take the opened segment.
    app.switch_page("app.py")
    app.run()
    assert_clean(app)
    assert app.text_input(key=SEGMENT_KEY).value == "region == 'west'"


def test_sample_ratio_mismatch_is_an_error(tmp_path, monkeypatch):
    _project(tmp_path, monkeypatch, *shadow_log(b_share=0.3))
    app = run_app(PAGE, WINDOW)
    assert not app.exception
    assert any("Sample ratio mismatch" in e.value for e in app.error)


def test_log_without_model_or_variant_column_shows_info(tmp_path, monkeypatch):
    frame, labels = synthetic_log(rows=1500)
    _project(tmp_path, monkeypatch, frame.drop(columns=["model"]), labels,
             '[reference]\nstart = "2025-01-01"\nend = "2025-01-15"\n')
    app = run_app(PAGE)
    assert_clean(app)
    infos = " ".join(i.value for i in app.info)
    assert "no model column" in infos
    assert "no variant column" in infos
    assert not app.metric


def test_one_model_shows_info(tmp_path, monkeypatch):
    frame, labels = shadow_log(requests=400)
    production = frame[frame["model"] == "prod"]
    _project(tmp_path, monkeypatch, production, labels[labels["id"].isin(production["id"])])
    app = run_app(PAGE, WINDOW)
    assert_clean(app)
    assert any("holds only one model" in i.value for i in app.info)
    assert any("B's positive rate" in m.value for m in app.markdown)


def test_no_pairs_is_explained(tmp_path, monkeypatch):
    frame, labels = shadow_log(requests=400)
    frame["request_id"] = frame["id"]    # twins no longer share a key
    _project(tmp_path, monkeypatch, frame, labels)
    app = run_app(PAGE, WINDOW)
    assert_clean(app)
    assert any("cannot be compared" in i.value for i in app.info)


def test_regression_log_renders(tmp_path, monkeypatch):
    frame, labels = shadow_log(requests=400)
    frame["prediction"] = frame["score"] * 100
    labels["target"] = labels["target"] * 100.0
    _project(tmp_path, monkeypatch, frame.drop(columns=["score"]), labels,
             TOML + '[model]\ntask = "regression"\n')
    app = run_app(PAGE, WINDOW)
    assert_clean(app)
    assert any(m.label == "Mean |difference|" for m in app.metric)
    text = _texts(app)
    assert "differ by" in text
    assert "The arms' metrics cannot be computed: the model is a regression" in text
