"""config.py: mlmon.toml read into frozen dataclasses; every mistake named by file and key."""

from __future__ import annotations

import dataclasses
import re
from datetime import datetime
from pathlib import Path

import pytest

from mlmon_core.config import (ColumnsConfig, Config, DriftColumnConfig, ModelConfig, SourceConfig,
                               Window, config_for_file, config_from_dict, load_config, parse_moment)
from mlmon_core.errors import ConfigError

FULL = """\
[source]
predictions = "data/predictions"
labels = "data/labels.parquet"
table = "preds"
labels_table = "labels"

[columns]
id = "request_id"
timestamp = "ts"
prediction = "pred"
score = "proba"
target = "defaulted"
model = "model_version"
variant = "arm"
latency = "latency_ms"
status = "http_status"
label_timestamp = "labeled_at"
features = ["age", "income", "state"]
categorical = ["state"]
numerical = ["age"]
ignore = ["debug"]
attribution_prefix = "attr__"

[model]
task = "binary"
positive_label = 1
threshold = 0.35
path = "models/model.skops"
trust = true

[reference]
start = 2024-01-01
end = 2024-02-01T12:00:00

[drift]
dataset_share = 0.3

[drift.columns.age]
test = "psi"
threshold = 0.2

[drift.columns.state]
test = "chisquare"

[[alerts]]
metric = "accuracy"
below = 0.8

[[alerts]]
metric = "drift_share"
above = 0.5

[attributions]
background_rows = 100
"""


def write(folder: Path, text: str, name: str = "mlmon.toml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


def test_full_config_round_trip(tmp_path):
    path = write(tmp_path / "project", FULL)
    config = load_config(path)
    folder = (tmp_path / "project").resolve()

    assert config.path == path.resolve()
    assert config.folder == folder
    assert config.source == SourceConfig(
        predictions=str(folder / "data/predictions"), labels=str(folder / "data/labels.parquet"),
        table="preds", labels_table="labels")
    assert config.columns == ColumnsConfig(
        id="request_id", timestamp="ts", prediction="pred", score="proba", target="defaulted",
        model="model_version", variant="arm", latency="latency_ms", status="http_status",
        label_timestamp="labeled_at", features=("age", "income", "state"), categorical=("state",),
        numerical=("age",), ignore=("debug",), attribution_prefix="attr__")
    assert config.model == ModelConfig(task="binary", positive_label=1, threshold=0.35,
                                       path=str(folder / "models/model.skops"), trust=True)
    assert config.reference == Window(datetime(2024, 1, 1), datetime(2024, 2, 1, 12))
    assert config.drift.dataset_share == 0.3
    assert config.drift.columns == {"age": DriftColumnConfig(test="psi", threshold=0.2),
                                    "state": DriftColumnConfig(test="chisquare", threshold=None)}
    assert config.alerts == ({"metric": "accuracy", "below": 0.8},
                             {"metric": "drift_share", "above": 0.5})
    assert config.attributions == {"background_rows": 100}
    # The same text parsed twice gives an equal, immutable config.
    assert load_config(path) == config
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.model = ModelConfig()  # type: ignore[misc]


def test_defaults_of_a_minimal_config(tmp_path):
    config = load_config(write(tmp_path, '[source]\npredictions = "log.parquet"\n'))
    assert config.source == SourceConfig(predictions=str(tmp_path.resolve() / "log.parquet"))
    assert config.columns == ColumnsConfig()
    assert config.columns.features is None and config.columns.attribution_prefix == "shap__"
    assert config.model == ModelConfig(task=None, positive_label=None, threshold=0.5, path=None,
                                       trust=False)
    assert config.reference is None
    assert config.drift.columns == {} and config.drift.dataset_share == 0.5
    assert config.alerts == () and config.attributions == {}


def test_relative_paths_resolve_against_the_config_folder(tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    path = write(tmp_path / "proj", '[source]\npredictions = "../data/*.parquet"\nlabels = "labels"\n'
                                    '[model]\npath = "m.skops"\n')
    config = load_config(path)
    assert config.source.predictions == str((tmp_path / "proj").resolve() / "../data/*.parquet")
    assert config.source.labels == str((tmp_path / "proj").resolve() / "labels")
    assert config.model.path == str((tmp_path / "proj").resolve() / "m.skops")
    # Relative to the current folder, the config is found the same way.
    relative = load_config(Path("..") / "proj" / "mlmon.toml")
    assert relative.source == config.source


def test_absolute_paths_are_kept_and_a_folder_means_its_mlmon_toml(tmp_path):
    target = tmp_path / "abs" / "log.parquet"
    write(tmp_path / "proj", f'[source]\npredictions = "{target}"\n')
    config = load_config(tmp_path / "proj")
    assert config.source.predictions == str(target)
    assert config.path == (tmp_path / "proj" / "mlmon.toml").resolve()


def test_timezone_aware_reference_becomes_naive_utc(tmp_path):
    config = load_config(write(tmp_path, '[source]\npredictions = "p"\n[reference]\n'
                                         'start = 2024-01-01T02:00:00+02:00\nend = "2024-01-02T00:00Z"\n'))
    assert config.reference == Window(datetime(2024, 1, 1), datetime(2024, 1, 2))


def test_config_for_file_infers_everything(tmp_path):
    config = config_for_file(tmp_path / "p.parquet", tmp_path / "l.csv")
    assert config.path is None
    assert config.source == SourceConfig(predictions=str((tmp_path / "p.parquet").resolve()),
                                         labels=str((tmp_path / "l.csv").resolve()))
    assert config.columns == ColumnsConfig()


BAD = [
    ("unknown key", '[source]\npredictions = "p"\n[columns]\ntimestmap = "ts"\n',
     ["unknown key 'timestmap' in [columns]", "allowed keys are"]),
    ("unknown keys", '[source]\npredictions = "p"\nfoo = 1\nbar = 2\n',
     ["unknown keys 'bar', 'foo' in [source]"]),
    ("unknown section", '[source]\npredictions = "p"\n[modle]\ntask = "binary"\n',
     ["unknown section 'modle'", "allowed:"]),
    ("unknown drift column key", '[source]\npredictions = "p"\n[drift.columns.age]\ntest = "psi"\n'
                                 'treshold = 0.1\n', ["unknown key 'treshold' in [drift.columns.age]"]),
    ("missing source", '[model]\ntask = "binary"\n', ["missing [source] section"]),
    ("missing predictions", '[source]\nlabels = "l"\n', ["[source] predictions: is required"]),
    ("source not a table", 'source = "p.parquet"\n', ["source: expected a table"]),
    ("predictions not a string", '[source]\npredictions = 3\n',
     ["[source] predictions: expected a string, got int 3"]),
    ("empty string", '[source]\npredictions = "  "\n', ["[source] predictions: must not be empty"]),
    ("features not a list", '[source]\npredictions = "p"\n[columns]\nfeatures = "age"\n',
     ["[columns] features: expected a list of strings"]),
    ("features with a number", '[source]\npredictions = "p"\n[columns]\nfeatures = ["a", 1]\n',
     ["[columns] features: expected a list of strings"]),
    ("threshold a string", '[source]\npredictions = "p"\n[model]\nthreshold = "high"\n',
     ["[model] threshold: expected a number, got str 'high'"]),
    ("threshold a boolean", '[source]\npredictions = "p"\n[model]\nthreshold = true\n',
     ["[model] threshold: expected a number"]),
    ("threshold out of range", '[source]\npredictions = "p"\n[model]\nthreshold = 1.5\n',
     ["[model] threshold: must be between 0 and 1"]),
    ("trust not a boolean", '[source]\npredictions = "p"\n[model]\ntrust = "yes"\n',
     ["[model] trust: expected true or false"]),
    ("bad task", '[source]\npredictions = "p"\n[model]\ntask = "classification"\n',
     ["[model] task: 'classification' is not one of binary, multiclass, regression"]),
    ("bad positive label", '[source]\npredictions = "p"\n[model]\npositive_label = 0.5\n',
     ["[model] positive_label: expected a string, integer or boolean"]),
    ("bad date text", '[source]\npredictions = "p"\n[reference]\nstart = "2024-13-45"\n',
     ["[reference] start: '2024-13-45' is not a date"]),
    ("date not text", '[source]\npredictions = "p"\n[reference]\nend = 20240101\n',
     ["[reference] end: expected a date"]),
    ("time without a date", '[source]\npredictions = "p"\n[reference]\nend = 12:00:00\n',
     ["[reference] end: expected a date"]),
    ("reference end before start", '[source]\npredictions = "p"\n[reference]\nstart = 2024-02-01\n'
                                   'end = 2024-01-01\n', ["[reference] end: must be after start"]),
    ("reference end equals start", '[source]\npredictions = "p"\n[reference]\nstart = 2024-02-01\n'
                                   'end = 2024-02-01\n', ["[reference] end: must be after start"]),
    ("unknown reference key", '[source]\npredictions = "p"\n[reference]\nbegin = 2024-02-01\n',
     ["unknown key 'begin' in [reference]"]),
    ("categorical and numerical", '[source]\npredictions = "p"\n[columns]\ncategorical = ["a", "b"]\n'
                                  'numerical = ["b", "c"]\n',
     ["[columns] categorical: ['b'] are also listed in numerical"]),
    ("bad drift test", '[source]\npredictions = "p"\n[drift.columns.age]\ntest = "t-test"\n',
     ["[drift.columns.age] test: 't-test' is not one of"]),
    ("drift threshold a string", '[source]\npredictions = "p"\n[drift.columns.age]\nthreshold = "x"\n',
     ["[drift.columns.age] threshold: expected a number"]),
    ("drift column not a table", '[source]\npredictions = "p"\n[drift]\ncolumns = { age = "psi" }\n',
     ["[drift.columns.age]", "expected a table"]),
    ("dataset share out of range", '[source]\npredictions = "p"\n[drift]\ndataset_share = 0\n',
     ["[drift] dataset_share: must be in (0, 1]"]),
    ("alerts not tables", 'alerts = [1, 2]\n[source]\npredictions = "p"\n',
     ["alerts: expected [[alerts]]"]),
]


@pytest.mark.parametrize(("case", "text", "fragments"), BAD, ids=[case for case, _, _ in BAD])
def test_mistakes_name_the_file_and_the_key(tmp_path, case, text, fragments):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert str(path.resolve()) in message, message
    for fragment in fragments:
        assert fragment in message, message


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=re.escape(f"{tmp_path / 'nope.toml'}: config file not found")):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="mlmon.toml: config file not found"):
        load_config(tmp_path)  # a folder without an mlmon.toml


def test_invalid_toml_names_the_file_and_the_line(tmp_path):
    path = write(tmp_path, '[source]\npredictions = "p"\nlabels = \n')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(path) in str(caught.value) and "not valid TOML" in str(caught.value)
    assert "line 3" in str(caught.value)


def test_unreadable_file(tmp_path):
    path = write(tmp_path, '[source]\npredictions = "p"\n')
    path.chmod(0)
    try:
        if _can_read(path):
            pytest.skip("running as a user who can read any file")
        with pytest.raises(ConfigError, match="cannot read"):
            load_config(path)
    finally:
        path.chmod(0o644)


def _can_read(path: Path) -> bool:
    try:
        path.read_bytes()
    except PermissionError:
        return False
    return True


def test_config_from_dict_without_a_file_names_a_placeholder():
    config = config_from_dict({"source": {"predictions": "/data/p.parquet"}})
    assert isinstance(config, Config) and config.path is None
    with pytest.raises(ConfigError, match=r"<config>: \[model\] task"):
        config_from_dict({"source": {"predictions": "p"}, "model": {"task": "ranking"}})


@pytest.mark.parametrize(("value", "expected"), [
    ("2024-01-31", datetime(2024, 1, 31)),
    ("2024-01-31T12:30", datetime(2024, 1, 31, 12, 30)),
    ("2024-01-31 12:30:15.25", datetime(2024, 1, 31, 12, 30, 15, 250000)),
    ("2024-01-31T12:00:00Z", datetime(2024, 1, 31, 12)),
    ("2024-01-31T12:00:00-05:00", datetime(2024, 1, 31, 17)),
    (datetime(2024, 1, 31, 1), datetime(2024, 1, 31, 1)),
])
def test_parse_moment(value, expected):
    assert parse_moment(value, "x") == expected


def test_parse_moment_refuses_non_dates():
    for value in ("soon", "31/01/2024", 5, None, ["2024-01-01"]):
        with pytest.raises(ConfigError, match="where"):
            parse_moment(value, "where")
