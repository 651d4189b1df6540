"""source.py: reading every format, joining late labels, inferring roles, kinds and timestamps."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from mlmon_core import sql
from mlmon_core.config import load_config
from mlmon_core.errors import ConfigError, SourceError
from mlmon_core.source import list_files, open_log

START = pd.Timestamp("2024-05-01")


def frame(n: int = 12, first_id: int = 0, seed: int = 0) -> pd.DataFrame:
    """A small log: id, timestamp, two features, prediction and score."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "id": np.arange(first_id, first_id + n, dtype="int64"),
        "timestamp": [START + pd.Timedelta(hours=6 * i) for i in range(first_id, first_id + n)],
        "age": rng.integers(18, 80, n).astype("int64"),
        "state": rng.choice(["CA", "NY", "TX"], n),
        "prediction": rng.integers(0, 2, n).astype("int64"),
        "score": rng.random(n),
    })


def project(folder: Path, source: str, extra: str = "") -> Path:
    """An mlmon.toml in ``folder`` whose [source] section is ``source``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "mlmon.toml"
    path.write_text("[source]\n" + source + "\n" + extra)
    return path


def all_rows(view) -> pd.DataFrame:
    return view.fetch_df(sql.render("SELECT * FROM {log} ORDER BY {id}", log=view.relation,
                                    id=sql.ident(view.roles.id)))


# ---------------------------------------------------------------- formats

@pytest.mark.parametrize("fmt", ["parquet", "csv", "ndjson"])
def test_each_file_format(make_log, fmt):
    original = frame()
    view = make_log(original, fmt=fmt)
    assert view.count() == 12
    rows = all_rows(view)
    assert rows["id"].tolist() == original["id"].tolist()
    assert rows["state"].tolist() == original["state"].tolist()
    assert np.allclose(rows["score"], original["score"])
    assert view.column_types["timestamp"] == "TIMESTAMP"
    assert list(rows["timestamp"]) == list(original["timestamp"])
    assert "filename" not in view.columns and "file_row_number" not in view.columns


def test_csv_missing_markers_read_as_missing(tmp_path):
    """A CSV written by R or Excel marks missing cells NA / #N/A: the column stays numerical."""
    folder = tmp_path / "na"
    folder.mkdir()
    (folder / "predictions.csv").write_text(
        "id,timestamp,income,region,prediction\n"
        "1,2024-01-01T00:00:00,1500.5,north,1\n"
        "2,2024-01-02T00:00:00,NA,NA,0\n"
        "3,2024-01-03T00:00:00,#N/A,south,1\n"
        "4,2024-01-04T00:00:00,2500,,0\n")
    (folder / "mlmon.toml").write_text('[source]\npredictions = "predictions.csv"\n')
    view = open_log(load_config(folder / "mlmon.toml"))
    assert view.kind("income") == "numerical"
    rows = all_rows(view)
    assert rows["income"].isna().tolist() == [False, True, True, False]
    assert rows["region"].isna().tolist() == [False, True, False, True]


def test_glob_and_nested_directory(tmp_path):
    data = tmp_path / "data"
    (data / "2024" / "05").mkdir(parents=True)
    frame(4, 0).to_parquet(data / "a.parquet")
    frame(4, 4).to_parquet(data / "2024" / "b.parquet")
    frame(4, 8).to_parquet(data / "2024" / "05" / "c.parquet")

    by_glob = open_log(load_config(project(tmp_path / "g", f'predictions = "{data}/*.parquet"')))
    assert by_glob.count() == 4 and len(by_glob.files) == 1
    recursive = open_log(load_config(project(tmp_path / "r", f'predictions = "{data}/**/*.parquet"')))
    assert recursive.count() == 12
    directory = open_log(load_config(project(tmp_path / "d", f'predictions = "{data}"')))
    assert directory.count() == 12 and len(directory.files) == 3
    assert all_rows(directory)["id"].tolist() == list(range(12))


def test_hidden_and_temporary_files_are_skipped(tmp_path):
    data = tmp_path / "data"
    (data / ".staging").mkdir(parents=True)
    (data / "_tmp").mkdir()
    frame(4, 0).to_parquet(data / "part-1.parquet")
    frame(4, 4).to_parquet(data / ".part-2.parquet.tmp")
    frame(4, 8).to_parquet(data / ".hidden.parquet")
    frame(4, 12).to_parquet(data / "_SUCCESS.parquet")
    frame(4, 16).to_parquet(data / ".staging" / "x.parquet")
    frame(4, 20).to_parquet(data / "_tmp" / "y.parquet")

    files, fmt = list_files(str(data), "predictions")
    assert [Path(f).name for f in files] == ["part-1.parquet"] and fmt == "parquet"
    files, _ = list_files(str(data / "**" / "*.parquet"), "predictions")
    assert [Path(f).name for f in files] == ["part-1.parquet"]
    assert open_log(load_config(project(tmp_path, f'predictions = "{data}"'))).count() == 4


def test_glob_below_a_folder_that_starts_with_an_underscore(tmp_path):
    data = tmp_path / "_exports" / ".cache"
    data.mkdir(parents=True)
    frame(4).to_parquet(data / "a.parquet")
    files, _ = list_files(str(data / "*.parquet"), "predictions")
    assert files == [str(data / "a.parquet")]


def test_duckdb_file_with_a_named_table(tmp_path):
    database = tmp_path / "log.duckdb"
    with duckdb.connect(str(database)) as con:
        table = frame()
        con.register("table_frame", table)
        con.execute("CREATE TABLE predictions AS SELECT * FROM table_frame")
        con.execute("CREATE TABLE other AS SELECT 1 AS x")
    view = open_log(load_config(project(tmp_path / "a", f'predictions = "{database}"\n'
                                                        'table = "predictions"')))
    assert view.count() == 12 and view.roles.timestamp == "timestamp"
    assert all_rows(view)["age"].tolist() == table["age"].tolist()


def test_duckdb_file_with_one_table_needs_no_name(tmp_path):
    database = tmp_path / "log.duckdb"
    with duckdb.connect(str(database)) as con:
        con.register("table_frame", frame())
        con.execute("CREATE TABLE preds AS SELECT * FROM table_frame")
    labels_db = tmp_path / "labels.duckdb"
    with duckdb.connect(str(labels_db)) as con:
        con.execute("CREATE TABLE labels AS SELECT id, id % 2 AS target FROM range(0, 12, 3) AS r(id)")
    config = project(tmp_path / "a", f'predictions = "{database}"\nlabels = "{labels_db}"')
    view = open_log(load_config(config))
    assert view.count() == 12 and view.schema_json()["labeled_rows"] == 4


def test_duckdb_file_with_several_tables_needs_a_name(tmp_path):
    database = tmp_path / "log.duckdb"
    with duckdb.connect(str(database)) as con:
        con.execute("CREATE TABLE alpha AS SELECT 1 AS id")
        con.execute("CREATE TABLE beta AS SELECT 2 AS id")
    with pytest.raises(SourceError, match="holds 2 tables \\(alpha, beta\\); name one with table"):
        open_log(load_config(project(tmp_path / "a", f'predictions = "{database}"')))
    with pytest.raises(SourceError, match="table 'gamma' not found .* it has alpha, beta"):
        open_log(load_config(project(tmp_path / "b", f'predictions = "{database}"\ntable = "gamma"')))


@pytest.mark.parametrize(("setup", "message"), [
    (lambda d: None, "does not exist"),
    (lambda d: (d / "empty").mkdir(), "holds no Parquet, CSV or NDJSON files"),
    (lambda d: None, "no file matches"),
    (lambda d: (d / "mixed").mkdir() or frame().to_parquet(d / "mixed" / "a.parquet")
     or frame().to_csv(d / "mixed" / "b.csv"), "mixes formats"),
    (lambda d: (d / "log.xlsx").write_bytes(b"PK"), "is not Parquet, CSV, NDJSON or DuckDB"),
    (lambda d: (d / "broken.parquet").write_bytes(b"garbage"), "cannot read"),
])
def test_unreadable_sources(tmp_path, setup, message):
    setup(tmp_path)
    location = {"does not exist": "nothing.parquet", "holds no Parquet, CSV or NDJSON files": "empty",
                "no file matches": "nothing/*.parquet", "mixes formats": "mixed",
                "is not Parquet, CSV, NDJSON or DuckDB": "log.xlsx", "cannot read": "broken.parquet"}
    config = project(tmp_path, f'predictions = "{location[message]}"')
    with pytest.raises(SourceError, match=message) as caught:
        open_log(load_config(config))
    assert "[source] predictions" in str(caught.value) and str(config.resolve()) in str(caught.value)


# ---------------------------------------------------------------- labels

def test_labels_in_a_separate_file_are_joined_on_id(make_log):
    predictions = frame()
    labels = pd.DataFrame({"id": [0, 3, 5, 99], "target": [1, 0, 1, 1]})
    view = make_log(predictions, labels)
    rows = all_rows(view)
    assert view.roles.target == "target" and view.count() == 12  # id 99 has no prediction
    labeled = rows.dropna(subset=["target"])
    assert dict(zip(labeled["id"], labeled["target"])) == {0: 1, 3: 0, 5: 1}
    assert view.schema_json()["labeled_rows"] == 3


def test_label_file_wins_over_the_logged_target(make_log):
    predictions = frame(6).assign(target=[0, 0, 0, None, None, 1])
    labels = pd.DataFrame({"id": [0, 3], "target": [1, 1]})
    rows = all_rows(make_log(predictions, labels))
    assert rows["target"].tolist()[:4] == [1, 0, 0, 1]  # labels win where present
    assert pd.isna(rows["target"].iloc[4]) and rows["target"].iloc[5] == 1


def test_latest_label_wins_by_label_timestamp(make_log):
    labels = pd.DataFrame({
        "id": [1, 1, 1, 2, 2],
        "target": [0, 1, 0, 1, 0],
        "labeled_at": pd.to_datetime(["2024-06-01", "2024-06-03", "2024-06-02",
                                      "2024-06-05", "2024-06-04"]),
    })
    view = make_log(frame(4), labels)
    assert view.roles.label_timestamp == "labeled_at"
    rows = all_rows(view).set_index("id")
    assert rows.loc[1, "target"] == 1 and rows.loc[2, "target"] == 1


def test_latest_label_wins_by_file_order_without_a_timestamp(tmp_path):
    frame(6).to_parquet(tmp_path / "predictions.parquet")
    (tmp_path / "labels").mkdir()
    pd.DataFrame({"id": [1, 2, 3], "label": [0, 0, 0]}).to_parquet(tmp_path / "labels" / "part-1.parquet")
    pd.DataFrame({"id": [2, 3], "label": [1, 1]}).to_parquet(tmp_path / "labels" / "part-2.parquet")
    pd.DataFrame({"id": [3], "label": [0]}).to_parquet(tmp_path / "labels" / "part-3.parquet")
    view = open_log(load_config(project(tmp_path, 'predictions = "predictions.parquet"\n'
                                                  'labels = "labels"')))
    rows = all_rows(view).set_index("id")
    assert view.roles.target == "label"
    assert rows.loc[1, "label"] == 0 and rows.loc[2, "label"] == 1 and rows.loc[3, "label"] == 0


def test_labels_without_the_id_column_are_refused(make_log):
    with pytest.raises(ConfigError, match="have no column 'id' to join on"):
        make_log(frame(), pd.DataFrame({"key": [1], "target": [1]}))


def test_missing_managed_labels_store_opens_without_labels(tmp_path):
    frame().to_parquet(tmp_path / "p.parquet")
    config = project(tmp_path, 'predictions = "p.parquet"\nlabels = "labels"',
                     '[columns]\ntarget = "outcome"\n')
    view = open_log(load_config(config))
    assert view.roles.target is None and view.label_files == ()
    assert view.schema_json()["labeled_rows"] == 0
    (tmp_path / "labels").mkdir()  # an empty store folder: still no labels
    assert open_log(load_config(config)).roles.target is None
    missing_file = project(tmp_path / "b", f'predictions = "{tmp_path / "p.parquet"}"\n'
                                           'labels = "labels.csv"')
    with pytest.raises(SourceError, match="does not exist"):  # a file name is a typo, not a store
        open_log(load_config(missing_file))


# ---------------------------------------------------------------- roles

def test_roles_are_inferred_by_name(make_log):
    log = pd.DataFrame({
        "request_id": ["a", "b", "c"], "Created_At": pd.to_datetime(["2024-01-01"] * 3),
        "y_pred": [1, 0, 1], "proba": [0.9, 0.2, 0.7], "y_true": [1, 1, 0],
        "model_version": ["v1", "v1", "v2"], "arm": ["a", "b", "a"], "latency_ms": [5.0, 6.0, 7.0],
        "status_code": [200, 200, 500], "shap__f1": [0.1, 0.2, 0.3], "f1": [1.0, 2.0, 3.0],
        "f2": ["x", "y", "z"],
    })
    view = make_log(log)
    roles = view.roles
    assert (roles.id, roles.timestamp, roles.prediction, roles.score, roles.target) == \
        ("request_id", "Created_At", "y_pred", "proba", "y_true")
    assert (roles.model, roles.variant, roles.latency, roles.status) == \
        ("model_version", "arm", "latency_ms", "status_code")
    assert roles.features == ("f1", "f2")
    assert roles.attributions == {"f1": "shap__f1"}
    assert view.columns["f1"].role == "feature" and view.columns["shap__f1"].role == "attribution"
    assert view.columns["proba"].role == "score"


def test_declared_roles_win_over_names(make_log):
    log = frame().assign(when=pd.Timestamp("2023-01-01"), guess=1, other_score=0.5)
    view = make_log(log, toml='[columns]\ntimestamp = "when"\nprediction = "guess"\n'
                              'score = "other_score"\nfeatures = ["age"]\nignore = ["state"]\n')
    assert (view.roles.timestamp, view.roles.prediction, view.roles.score) == \
        ("when", "guess", "other_score")
    assert view.roles.features == ("age",)


def test_ignored_columns_are_not_features(make_log):
    view = make_log(frame(), toml='[columns]\nignore = ["state"]\n')
    assert view.roles.features == ("age",)


@pytest.mark.parametrize(("toml", "named"), [
    ('[columns]\nscore = "proba"\n', "[columns] score = 'proba'"),
    ('[columns]\nid = "uuid"\n', "[columns] id = 'uuid'"),
    ('[columns]\nfeatures = ["age", "height"]\n', "[columns] features names 'height'"),
    ('[columns]\ncategorical = ["colour"]\n', "[columns] categorical names 'colour'"),
    ('[columns]\nnumerical = ["weight"]\n', "[columns] numerical names 'weight'"),
    ('[columns]\nfeatures = ["age", "score"]\n', "already have another role"),
])
def test_missing_declared_columns_are_config_errors(make_log, toml, named):
    with pytest.raises(ConfigError) as caught:
        make_log(frame(), toml=toml)
    assert named in str(caught.value) and "mlmon.toml" in str(caught.value)


def test_a_log_without_a_timestamp_is_refused(make_log):
    with pytest.raises(ConfigError, match="no timestamp column found"):
        make_log(frame().drop(columns="timestamp"))


# ---------------------------------------------------------------- kinds

def test_kind_inference(make_log):
    n = 1500
    rng = np.random.default_rng(3)
    log = pd.DataFrame({
        "id": np.arange(n), "timestamp": pd.date_range("2024-01-01", periods=n, freq="min"),
        "amount": rng.normal(size=n), "count": rng.integers(0, 5, n),
        "city": rng.choice(["Paris", "Lyon"], n), "comment": [f"free text number {i}" for i in range(n)],
        "flag": rng.random(n) > 0.5, "signup": pd.date_range("2020-01-01", periods=n, freq="D"),
        "zone": rng.integers(1, 4, n), "prediction": rng.integers(0, 2, n),
    })
    view = make_log(log, toml='[columns]\ncategorical = ["zone"]\n')
    kinds = {name: info.kind for name, info in view.columns.items()}
    assert kinds == {"id": "other", "timestamp": "datetime", "amount": "numerical",
                     "count": "numerical", "city": "categorical", "comment": "text",
                     "flag": "boolean", "signup": "datetime", "zone": "categorical",
                     "prediction": "categorical"}
    assert view.roles.features == ("amount", "count", "city", "flag", "zone")
    assert view.task == "binary" and view.positive_label == 1


def test_declared_numerical_wins_over_strings(make_log):
    view = make_log(frame().assign(code=["1", "2", "3"] * 4), toml='[columns]\nnumerical = ["code"]\n')
    assert view.kind("code") == "numerical"


def test_text_columns_from_the_labels_do_not_hide_text_features(make_log):
    n = 1200
    log = frame(n).assign(comment=[f"note {i}" for i in range(n)])
    labels = pd.DataFrame({"id": [0, 1], "target": ["fraud", "fine"]})  # text only in the labels
    view = make_log(log, labels)
    assert view.kind("comment") == "text"
    assert view.kind("target") == "categorical"


def test_task_inference(make_log):
    regression = frame(40).assign(prediction=np.linspace(0, 1, 40) ** 2)
    assert make_log(regression).task == "regression"
    multiclass = frame(12).assign(prediction=["cat", "dog", "bird"] * 4)
    view = make_log(multiclass)
    assert view.task == "multiclass" and view.kind("prediction") == "categorical"
    declared = make_log(frame(), toml='[model]\ntask = "binary"\npositive_label = 0\n')
    assert declared.task == "binary" and declared.positive_label == 0


# ---------------------------------------------------------------- timestamps

@pytest.mark.parametrize(("values", "expected"), [
    (["2024-05-01 06:00:00", "2024-05-02T07:30:00"], [datetime(2024, 5, 1, 6), datetime(2024, 5, 2, 7, 30)]),
    (["2024-05-01T08:00:00+02:00", "2024-05-02T00:00:00-05:00"],
     [datetime(2024, 5, 1, 6), datetime(2024, 5, 2, 5)]),
    (pd.to_datetime(["2024-05-01T08:00:00+02:00", "2024-05-02T00:00:00+02:00"]),
     [datetime(2024, 5, 1, 6), datetime(2024, 5, 1, 22)]),
    ([pd.Timestamp("2024-05-01").date(), pd.Timestamp("2024-05-03").date()],
     [datetime(2024, 5, 1), datetime(2024, 5, 3)]),
    ([1714543200, 1714629600], [datetime(2024, 5, 1, 6), datetime(2024, 5, 2, 6)]),
    ([1714543200000, 1714629600000], [datetime(2024, 5, 1, 6), datetime(2024, 5, 2, 6)]),
])
@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_timestamps_become_naive_utc(make_log, values, expected, fmt):
    log = pd.DataFrame({"id": [1, 2], "timestamp": values, "x": [1.0, 2.0]})
    view = make_log(log, fmt=fmt)
    assert view.column_types["timestamp"] == "TIMESTAMP"
    assert list(all_rows(view)["timestamp"]) == [pd.Timestamp(e) for e in expected]
    assert view.count(window=sql.parse_window(f"{expected[0].isoformat()}..")) == 2
    assert view.count(window=sql.parse_window(f"..{expected[1].isoformat()}")) == 1


def test_text_timestamps_do_not_depend_on_the_machine_zone(tmp_path):
    pd.DataFrame({"id": [1], "timestamp": ["2024-05-01 06:00:00"], "x": [1.0]}) \
        .to_csv(tmp_path / "p.csv", index=False)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'Asia/Tokyo'")
    view = open_log(load_config(project(tmp_path, 'predictions = "p.csv"')), con)
    assert view.fetchall(sql.render("SELECT {t} FROM {log}", t=sql.ident("timestamp"),
                                    log=view.relation)) == [(datetime(2024, 5, 1, 6),)]


# ---------------------------------------------------------------- schema

def test_schema_json_counts(make_log):
    labels = pd.DataFrame({"id": [0, 1, 2, 50], "target": [1, 0, 1, 0]})
    log = frame(10).assign(model=["v1"] * 7 + ["v2"] * 3)
    payload = make_log(log, labels).schema_json()
    assert payload["rows"] == 10 and payload["labeled_rows"] == 3
    assert payload["time_range"] == {"start": "2024-05-01T00:00:00", "end": "2024-05-03T06:00:00"}
    assert payload["roles"]["id"] == "id" and payload["roles"]["target"] == "target"
    assert payload["roles"]["model"] == "model"
    assert payload["models"] == {"v1": 7, "v2": 3}
    assert payload["features"] == ["age", "state"]
    assert payload["source"]["files"] == 1 and payload["source"]["label_files"] == 1
    assert {c["name"]: c["kind"] for c in payload["columns"]}["state"] == "categorical"
    assert payload["task"] == "binary"


def test_schema_json_of_an_empty_log(make_log):
    payload = make_log(frame().iloc[:0]).schema_json()
    assert payload["rows"] == 0 and payload["labeled_rows"] == 0
    assert payload["time_range"] == {"start": None, "end": None}


def test_where_combines_window_and_segment(make_log):
    view = make_log(frame(12))
    window = sql.parse_window("2024-05-01T12:00..2024-05-02T12:00")
    assert view.count(window) == 4
    segment = sql.parse_where("age >= 40")
    expected = int(((frame(12)["age"] >= 40)
                    & (frame(12)["timestamp"] >= "2024-05-01T12:00")
                    & (frame(12)["timestamp"] < "2024-05-02T12:00")).sum())
    assert view.count(window, segment) == expected
