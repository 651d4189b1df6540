"""AppTest: the Attributions page on a synthetic project with a scikit-learn model saved by skops
(every tab renders, a segment compares with the rest, ``?row=<id>`` opens a waterfall), on one
without any model (the page says how to add attributions; the error and drift tabs still work),
and on bad model files (an error naming the problem, never a traceback)."""

from __future__ import annotations

import pickle
import re

import numpy as np
import pytest
import skops.io
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder
from threadpoolctl import threadpool_limits

from tests.conftest import write_project
from tests.test_app_pages import assert_clean, run_app, synthetic_log

PAGE = "pages/attributions.py"
WIDE = "2025-01-20..2025-02-03"      # labeled days, after the reference window
SETTINGS = ('[reference]\nstart = "2025-01-01"\nend = "2025-01-15"\n'
            "[attributions]\nsample = 300\nfit_sample = 800\n")
SHAP_TABS = ["Importance", "Attribution drift", "Explain a prediction", "Dependence"]
EXPLANATION_TABS = ["What drives errors", "What drives drift"]


def _pipeline(frame):
    prepare = ColumnTransformer([("region", OneHotEncoder(handle_unknown="ignore",
                                                          sparse_output=False), ["region"])],
                                remainder="passthrough", sparse_threshold=0.0)
    model = Pipeline([("prepare", prepare),
                      ("model", HistGradientBoostingClassifier(max_iter=30, random_state=0))])
    with threadpool_limits(limits=1, user_api="openmp"):
        return model.fit(frame[["age", "income", "region"]], frame["prediction"])


def _project(tmp_path, monkeypatch, model_toml: str = "", name: str = "project",
             coin_predictions: bool = False):
    predictions, labels = synthetic_log(rows=2000)
    if coin_predictions:                 # errors then have nothing to do with the features
        predictions["prediction"] = np.random.default_rng(1).integers(0, 2, len(predictions))
    path = write_project(tmp_path / name, predictions, labels,
                         (f"[model]\n{model_toml}\n" if model_toml else "") + SETTINGS)
    monkeypatch.setenv("MLMON_CONFIG", str(path))
    return path, predictions


@pytest.fixture
def model_project(tmp_path, monkeypatch):
    """The synthetic log with the model that made it, saved by skops."""
    path, predictions = _project(tmp_path, monkeypatch, 'path = "model.skops"')
    skops.io.dump(_pipeline(predictions), str(path.parent / "model.skops"))
    return path


@pytest.fixture
def bare_project(tmp_path, monkeypatch):
    """The synthetic log with no model file and no logged attributions."""
    return _project(tmp_path, monkeypatch)[0]


def _charts(app) -> list:
    return app.get("vega_lite_chart")


def _text(app) -> str:
    parts = [m.value for m in app.markdown] + [c.value for c in app.caption] + \
        [i.value for i in app.info] + [w.value for w in app.warning]
    return "\n".join(parts)


def _check_tab(app, tab: str) -> None:
    assert_clean(app)
    assert app.title[0].value == "Attributions"
    assert [t.label for t in app.tabs] == SHAP_TABS + EXPLANATION_TABS
    text = _text(app)
    if tab == "Explain a prediction":       # no row yet: how to pick one, and rows to pick from
        assert "Type a row id" in text
        assert len(app.dataframe) >= 1
        return
    assert _charts(app), f"{tab} shows a chart"
    assert re.search(r"n=\d|\d window rows", text)  # every number says how many rows it rests on
    if tab == "Importance":
        assert "moves the model's output most" in text
    if tab == "Attribution drift":
        assert "since the reference window" in text or "beyond sampling noise" in text
    if tab in EXPLANATION_TABS:
        labels = [m.label for m in app.metric]
        assert labels and labels[0] in ("Error model AUC", "Domain classifier AUC")


def test_every_tab_renders_with_a_model(model_project):
    app = run_app(PAGE, query={"window": WIDE})
    _check_tab(app, "Importance")
    for tab in SHAP_TABS[1:] + EXPLANATION_TABS:     # the tabs are bound to ?tab=<label>
        app.query_params["tab"] = tab
        app.run()
        _check_tab(app, tab)


def test_row_query_parameter_opens_its_waterfall(model_project):
    app = run_app(PAGE, query={"row": "r7"})
    assert_clean(app)
    assert app.text_input(key="attributions-row").value == "r7"
    text = _text(app)
    assert "Row **r7**: base value" in text and "logged score" in text
    assert len(_charts(app)) == 1
    spec = _charts(app)[0].spec
    assert "base value" in spec and "output" in spec
    app.query_params["row"] = "no-such-row"          # a link to a row that is not in the log
    app.run()
    assert not app.exception
    assert any("no row with id = 'no-such-row'" in e.value for e in app.error)


def test_picking_a_row_and_a_segment_versus_rest(model_project):
    app = run_app(PAGE, query={"window": WIDE, "tab": "Explain a prediction"})
    picker = app.selectbox(key="attributions-pick")
    picked = picker.options[3]
    picker.select(picked).run()
    assert_clean(app)
    assert app.text_input(key="attributions-row").value == picked
    assert f"Row **{picked}**" in _text(app)

    app = run_app(PAGE, query={"window": WIDE, "where": "age >= 60"})
    assert_clean(app)
    app.radio(key="attributions-compare").set_value("the rest of the window").run()
    assert_clean(app)
    assert "rest of the window (n=" in _text(app)


def test_dependence_colour_choices(model_project):
    app = run_app(PAGE, query={"window": WIDE, "tab": "Dependence"})
    app.selectbox(key="attributions-dependence-feature").select("region").run()
    assert_clean(app)
    app.selectbox(key="attributions-dependence-color").select("none").run()
    assert_clean(app)
    assert "colour: none" in _text(app)


def test_project_without_model_explains_how_and_error_tab_works(bare_project):
    app = run_app(PAGE, query={"window": WIDE, "row": "r7"})
    assert_clean(app)
    assert [t.label for t in app.tabs] == EXPLANATION_TABS
    text = _text(app)
    assert "No attributions yet" in text and "shap__<feature>" in text
    assert "cannot be explained" in text
    assert any('path = "model.skops"' in c.value and "trust = true" in c.value for c in app.code)
    labels = [m.label for m in app.metric]
    assert labels == ["Error model AUC"]
    assert _charts(app)


def test_weak_error_model_comes_with_a_warning(tmp_path, monkeypatch):
    _project(tmp_path, monkeypatch, coin_predictions=True)
    app = run_app(PAGE, query={"window": WIDE})
    assert_clean(app)
    auc = next(m for m in app.metric if m.label == "Error model AUC")
    assert float(auc.value) < 0.6
    assert any("Weak explanation" in w.value and "< 0.6" in w.value for w in app.warning)


@pytest.mark.parametrize("problem, expected", [
    ("mismatch", "tenure"), ("corrupt", "could not be loaded as a skops model"),
    ("unsupported", "unsupported model file type '.h5'"), ("pickle", "trust = true")])
def test_bad_model_files_are_errors_not_tracebacks(tmp_path, monkeypatch, problem, expected):
    name = {"unsupported": "model.h5", "pickle": "model.pkl"}.get(problem, "model.skops")
    path, predictions = _project(tmp_path, monkeypatch, f'path = "{name}"')
    target = path.parent / name
    if problem == "mismatch":
        frame = predictions.assign(tenure=1.0)
        skops.io.dump(LogisticRegression().fit(frame[["age", "tenure"]], frame["prediction"]),
                      str(target))
    elif problem == "pickle":
        target.write_bytes(pickle.dumps(LogisticRegression()))
    else:
        target.write_bytes(b"not a model")
    app = run_app(PAGE, query={"window": WIDE})
    assert not app.exception
    assert any(expected in e.value for e in app.error), [e.value for e in app.error]
    if problem == "mismatch":                      # the explanations need no model
        app.query_params["tab"] = "What drives errors"
        app.run()
        assert_clean(app)
        assert [m.label for m in app.metric] == ["Error model AUC"]


def test_logged_attributions_need_no_model(tmp_path, monkeypatch):
    predictions, labels = synthetic_log(rows=2000)
    rng = np.random.default_rng(2)
    for feature in ("age", "income", "region"):
        predictions[f"shap__{feature}"] = rng.normal(0, 0.3, len(predictions))
    predictions["shap__base_value"] = -0.2
    path = write_project(tmp_path / "logged", predictions, labels, SETTINGS)
    monkeypatch.setenv("MLMON_CONFIG", str(path))
    app = run_app(PAGE, query={"window": WIDE})
    assert_clean(app)
    assert app.radio(key="attributions-source").value == "logged"
    assert "moves the model's output most" in _text(app) and _charts(app)
    app.query_params["tab"] = "Explain a prediction"
    app.query_params["row"] = "r3"
    app.run()
    assert_clean(app)
    expected = -0.2 + predictions.loc[3, ["shap__age", "shap__income", "shap__region"]].sum()
    assert f"output {expected:.3f}" in _text(app)
