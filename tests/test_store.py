"""The managed store: atomic appends, schema and id checks, refusals that leave it untouched."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from mlmon_core import sql, store
from mlmon_core.config import load_config
from mlmon_core.errors import IngestError
from mlmon_core.source import list_files, open_log
from mlmon_core.store import conversion, ingest

PART_NAME = re.compile(r"part-\d{8}T\d{12}Z-[0-9a-f]{8}\.parquet")
START = pd.Timestamp("2024-03-01")


def predictions(ids, seed: int = 0) -> pd.DataFrame:
    """A small prediction log with one row per id, one hour apart."""
    ids = list(ids)
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "id": np.array(ids, dtype="int64"),
        "timestamp": [START + pd.Timedelta(hours=i) for i in ids],
        "age": rng.integers(18, 90, len(ids)).astype("int64"),
        "income": rng.normal(50_000, 10_000, len(ids)),
        "region": rng.choice(["north", "south", "west"], len(ids)),
        "prediction": rng.integers(0, 2, len(ids)).astype("int64"),
        "score": rng.random(len(ids)),
    })


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project whose predictions and labels are managed stores (not created yet)."""
    config = tmp_path / "mlmon.toml"
    config.write_text('[source]\npredictions = "store/predictions"\nlabels = "store/labels"\n')
    return config


def write(frame: pd.DataFrame, path: Path) -> str:
    """Write a frame as Parquet, CSV or NDJSON (by the extension); return the path as text."""
    if path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    elif path.suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_json(path, orient="records", lines=True, date_format="iso")
    return str(path)


def snapshot(folder: Path) -> dict[str, str] | None:
    """Every file and folder under ``folder`` (hidden ones included) with a hash of its bytes."""
    if not folder.exists():
        return None
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            if p.is_file() else "folder" for p in sorted(folder.rglob("*"))}


def store_dir(project: Path) -> Path:
    return project.parent / "store" / "predictions"


def log_rows(project: Path) -> pd.DataFrame:
    """The whole (small) log, through the same reader the app uses."""
    view = open_log(load_config(project))
    return view.fetch_df(sql.render("SELECT * FROM {log} ORDER BY {id}", log=view.relation,
                                    id=sql.ident("id")))


# ---------------------------------------------------------------- appending

def test_first_ingest_creates_the_store(project, tmp_path):
    source = write(predictions(range(10)), tmp_path / "day1.parquet")
    assert not store_dir(project).exists()

    report = ingest(load_config(project), [source])

    assert report["store"] == str(store_dir(project))
    assert report["kind"] == "predictions"
    assert report["rows"] == 10
    assert report["files"] == [source]
    assert len(report["parts"]) == 1 and PART_NAME.fullmatch(report["parts"][0])
    assert sorted(os.listdir(store_dir(project))) == report["parts"]
    assert duckdb.sql(f"SELECT count(*) FROM '{store_dir(project) / report['parts'][0]}'").fetchall()[0][0] == 10


def test_second_ingest_appends_in_name_order(project, tmp_path):
    config = load_config(project)
    first = ingest(config, [write(predictions(range(0, 5)), tmp_path / "a.parquet")])
    second = ingest(config, [write(predictions(range(5, 12)), tmp_path / "b.parquet")])

    parts = sorted(os.listdir(store_dir(project)))
    assert parts == first["parts"] + second["parts"]  # sorted names = ingestion order
    files, fmt = list_files(str(store_dir(project)), "predictions")
    assert fmt == "parquet" and [Path(f).name for f in files] == parts


def test_opened_log_sees_every_ingested_row(project, tmp_path):
    config = load_config(project)
    original = pd.concat([predictions(range(0, 6), seed=1), predictions(range(6, 15), seed=2)])
    ingest(config, [write(original.iloc[:6], tmp_path / "a.parquet")])
    ingest(config, [write(original.iloc[6:], tmp_path / "b.parquet")])

    view = open_log(config)
    assert view.count() == 15
    rows = log_rows(project)
    assert rows["id"].tolist() == list(range(15))
    assert np.allclose(rows["income"], original["income"])
    assert rows["region"].tolist() == original["region"].tolist()
    assert list(rows["timestamp"]) == list(original["timestamp"])


def test_one_call_with_several_files_writes_one_part_each(project, tmp_path):
    files = [write(predictions(range(i * 4, i * 4 + 4), seed=i), tmp_path / f"f{i}.parquet")
             for i in range(3)]
    report = ingest(load_config(project), files)
    assert report["rows"] == 12 and len(report["parts"]) == 3
    assert report["parts"] == sorted(report["parts"])
    assert open_log(load_config(project)).count() == 12


def test_csv_and_ndjson_are_converted_to_the_store_types(project, tmp_path):
    config = load_config(project)
    ingest(config, [write(predictions(range(0, 5)), tmp_path / "a.parquet")])
    # The CSV's score column holds whole numbers only, so DuckDB reads it as BIGINT;
    # the NDJSON's timestamps are text (JSON has no time type).
    as_csv = predictions(range(5, 10)).assign(score=[0, 1, 1, 0, 1])
    report = ingest(config, [write(as_csv, tmp_path / "b.csv"),
                             write(predictions(range(10, 15)), tmp_path / "c.ndjson")])
    assert report["rows"] == 10

    part_types = {str(p): duckdb.sql(f"DESCRIBE SELECT * FROM '{p}'").fetchall()
                  for p in sorted(store_dir(project).iterdir())}
    assert len({repr(t) for t in part_types.values()}) == 1  # every part has the store's schema
    view = open_log(config)
    assert view.column_types["score"] == "DOUBLE"
    assert view.column_types["timestamp"] == "TIMESTAMP"
    rows = log_rows(project)
    assert list(rows["timestamp"]) == [START + pd.Timedelta(hours=i) for i in range(15)]
    assert rows["score"].iloc[5:10].tolist() == [0.0, 1.0, 1.0, 0.0, 1.0]


def test_safe_widening_is_cast_to_the_store_type(project, tmp_path):
    config = load_config(project)
    ingest(config, [write(predictions(range(0, 5)), tmp_path / "a.parquet")])
    narrow = predictions(range(5, 10)).astype({"age": "int32", "income": "float32"})
    ingest(config, [write(narrow, tmp_path / "b.parquet")])
    newest = sorted(store_dir(project).iterdir())[-1]
    types = dict(duckdb.sql(f"SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM '{newest}')")
                 .fetchall())
    assert types["age"] == "BIGINT" and types["income"] == "DOUBLE"


def test_zoned_and_text_times_become_utc(project, tmp_path):
    config = load_config(project)
    ingest(config, [write(predictions(range(0, 2)), tmp_path / "a.parquet")])
    offset_text = ["2024-03-01T02:00:00+02:00", "2024-03-01T03:00:00+02:00"]
    ingest(config, [write(predictions(range(2, 4)).assign(timestamp=offset_text), tmp_path / "b.csv")])
    zoned = pd.to_datetime(offset_text).tz_convert("America/New_York")
    ingest(config, [write(predictions(range(4, 6)).assign(timestamp=zoned), tmp_path / "c.parquet")])
    times = list(log_rows(project)["timestamp"])
    assert times[2:] == [START, START + pd.Timedelta(hours=1)] * 2


@pytest.mark.parametrize(("file_type", "store_type", "expected"), [
    ("BIGINT", "BIGINT", "same"),
    ("INTEGER", "BIGINT", "widening"),
    ("UINTEGER", "BIGINT", "widening"),
    ("FLOAT", "DOUBLE", "widening"),
    ("INTEGER", "DOUBLE", "widening"),
    ("DECIMAL(10,2)", "DECIMAL(12,3)", "widening"),
    ("DATE", "TIMESTAMP", "widening"),
    ("BIGINT", "DOUBLE", "checked"),
    ("DOUBLE", "BIGINT", "checked"),
    ("BIGINT", "INTEGER", "checked"),
    ("VARCHAR", "TIMESTAMP", "checked"),
    ("VARCHAR", "BIGINT", "if empty"),
    ("DOUBLE", "VARCHAR", "if empty"),
    ("BOOLEAN", "BIGINT", "if empty"),
])
def test_conversion_classes(file_type, store_type, expected):
    assert conversion(file_type, store_type) == expected


def test_whole_floats_into_integers_and_empty_columns_are_accepted(project, tmp_path):
    config = load_config(project)
    ingest(config, [write(predictions(range(0, 3)), tmp_path / "a.parquet")])
    whole = predictions(range(3, 6)).assign(age=[30.0, 40.0, 50.0], region=[None, None, None])
    ingest(config, [write(whole, tmp_path / "b.ndjson")])
    rows = log_rows(project)
    assert rows["age"].iloc[3:].tolist() == [30, 40, 50]
    assert rows["region"].iloc[3:].isna().all()


# ---------------------------------------------------------------- refusals leave the store untouched

def _missing_column(tmp_path):
    return [write(predictions(range(100, 103)).drop(columns="region"), tmp_path / "bad.parquet")]


def _extra_column(tmp_path):
    return [write(predictions(range(100, 103)).assign(extra=1), tmp_path / "bad.parquet")]


def _wrong_type(tmp_path):
    return [write(predictions(range(100, 103)).assign(age=["old", "young", "old"]),
                  tmp_path / "bad.parquet")]


def _lossy_type(tmp_path):
    return [write(predictions(range(100, 103)).assign(age=[30.5, 41.0, 52.0]), tmp_path / "bad.csv")]


def _duplicate_in_store(tmp_path):
    return [write(predictions([100, 3, 101, 7]), tmp_path / "bad.parquet")]


def _duplicate_in_file(tmp_path):
    return [write(predictions([100, 101, 100]), tmp_path / "bad.parquet")]


def _duplicate_across_files(tmp_path):
    return [write(predictions([100, 101]), tmp_path / "first.parquet"),
            write(predictions([102, 101]), tmp_path / "second.parquet")]


def _null_id(tmp_path):
    return [write(predictions(range(100, 103)).assign(id=[100, None, 102]), tmp_path / "bad.ndjson")]


def _unreadable(tmp_path):
    path = tmp_path / "bad.parquet"
    path.write_bytes(b"this is not parquet at all")
    return [str(path)]


def _not_there(tmp_path):
    return [str(tmp_path / "bad.parquet")]


def _unknown_format(tmp_path):
    path = tmp_path / "bad.xlsx"
    path.write_bytes(b"PK")
    return [str(path)]


def _no_rows(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text(",".join(predictions([1]).columns) + "\n")
    return [str(path)]


def _second_file_bad(tmp_path):
    return [write(predictions(range(100, 103)), tmp_path / "good.parquet"),
            write(predictions(range(103, 106)).drop(columns="score"), tmp_path / "bad.parquet")]


REFUSALS = {
    "missing column": (_missing_column, ["bad.parquet", "column 'region' is missing"]),
    "extra column": (_extra_column, ["bad.parquet", "column 'extra' is not in the store"]),
    "wrong type": (_wrong_type, ["bad.parquet", "column 'age': store has BIGINT, file has VARCHAR"]),
    "lossy type": (_lossy_type, ["bad.csv", "column 'age': store has BIGINT, file has DOUBLE"]),
    "duplicate ids in store": (_duplicate_in_store, ["bad.parquet", "duplicate ids", "3, 7",
                                                     "already in the store"]),
    "duplicate ids in file": (_duplicate_in_file, ["bad.parquet", "duplicate ids", "100"]),
    "duplicate ids across files": (_duplicate_across_files, ["first.parquet", "second.parquet",
                                                             "101"]),
    "null id": (_null_id, ["bad.ndjson", "column 'id'", "empty in 1 of 3 rows"]),
    "unreadable file": (_unreadable, ["bad.parquet", "cannot be read"]),
    "missing file": (_not_there, ["bad.parquet", "no such file"]),
    "unknown format": (_unknown_format, ["bad.xlsx", "not a Parquet, CSV or NDJSON file"]),
    "no rows": (_no_rows, ["bad.csv", "no rows"]),
    "second of two files bad": (_second_file_bad, ["bad.parquet", "column 'score' is missing"]),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refused_files_leave_the_store_byte_identical(project, tmp_path, case):
    config = load_config(project)
    ingest(config, [write(predictions(range(0, 10)), tmp_path / "a.parquet")])
    before = snapshot(store_dir(project))
    make_files, fragments = REFUSALS[case]

    with pytest.raises(IngestError) as caught:
        ingest(config, make_files(tmp_path))

    for fragment in fragments:
        assert fragment in str(caught.value)
    assert snapshot(store_dir(project)) == before
    assert open_log(config).count() == 10


def test_empty_file_list_is_refused(project, tmp_path):
    config = load_config(project)
    with pytest.raises(IngestError, match="no files to ingest"):
        ingest(config, [])
    assert snapshot(store_dir(project)) is None


def test_refused_first_ingest_creates_nothing(project, tmp_path):
    no_id = write(predictions(range(3)).rename(columns={"id": "key"}), tmp_path / "noid.parquet")
    with pytest.raises(IngestError, match=r"noid\.parquet: no id column"):
        ingest(load_config(project), [no_id])
    assert not (project.parent / "store").exists()


def test_first_ingest_checks_declared_roles(tmp_path):
    config = tmp_path / "mlmon.toml"
    config.write_text('[source]\npredictions = "store"\n[columns]\ntimestamp = "logged_at"\n'
                      'features = ["age", "height"]\n')
    with pytest.raises(IngestError, match="no column 'logged_at', which \\[columns\\] timestamp"):
        ingest(load_config(config), [write(predictions(range(3)), tmp_path / "a.parquet")])
    renamed = predictions(range(3)).rename(columns={"timestamp": "logged_at"})
    with pytest.raises(IngestError, match="no column 'height', which \\[columns\\] features"):
        ingest(load_config(config), [write(renamed, tmp_path / "b.parquet")])
    assert not (tmp_path / "store").exists()


def test_reserved_and_untyped_columns_cannot_found_a_store(project, tmp_path):
    reserved = write(predictions(range(3)).assign(filename="x"), tmp_path / "reserved.parquet")
    with pytest.raises(IngestError, match="column 'filename' is reserved"):
        ingest(load_config(project), [reserved])
    untyped = write(predictions(range(3)).assign(notes=[None] * 3), tmp_path / "untyped.ndjson")
    with pytest.raises(IngestError, match="column 'notes' is empty in every row"):
        ingest(load_config(project), [untyped])
    assert not (project.parent / "store").exists()


@pytest.mark.parametrize("location", ["data/predictions.parquet", "data/*.parquet", "missing.csv"])
def test_source_must_name_a_directory(tmp_path, location):
    (tmp_path / "data").mkdir()
    write(predictions(range(3)), tmp_path / "data" / "predictions.parquet")
    config = tmp_path / "mlmon.toml"
    config.write_text(f'[source]\npredictions = "{location}"\n')
    with pytest.raises(IngestError, match=r"ingest needs \[source\] predictions to name a directory"):
        ingest(load_config(config), [write(predictions(range(3, 6)), tmp_path / "new.parquet")])


def test_labels_need_a_labels_source(tmp_path):
    config = tmp_path / "mlmon.toml"
    config.write_text('[source]\npredictions = "store"\n')
    labels = write(pd.DataFrame({"id": [1], "target": [1]}), tmp_path / "labels.csv")
    with pytest.raises(IngestError, match=r"ingest needs \[source\] labels to name a directory"):
        ingest(load_config(config), [labels], kind="labels")


def test_store_holding_foreign_files_is_refused(project, tmp_path):
    config = load_config(project)
    ingest(config, [write(predictions(range(3)), tmp_path / "a.parquet")])
    (store_dir(project) / "notes.csv").write_text("a\n1\n")
    before = snapshot(store_dir(project))
    with pytest.raises(IngestError, match="notes.csv, which is not a Parquet part"):
        ingest(config, [write(predictions(range(3, 6)), tmp_path / "b.parquet")])
    assert snapshot(store_dir(project)) == before


# ---------------------------------------------------------------- failures while writing

def test_writer_failure_removes_temporary_files(project, tmp_path, monkeypatch):
    config = load_config(project)
    ingest(config, [write(predictions(range(0, 5)), tmp_path / "a.parquet")])
    before = snapshot(store_dir(project))
    real_write = store._write_part
    written: list[Path] = []

    def write_then_fail(con, query, destination):
        real_write(con, query, destination)  # the temporary file really exists...
        written.append(destination)
        if len(written) == 2:
            raise OSError(28, "No space left on device")  # ...then the disk fills up

    monkeypatch.setattr(store, "_write_part", write_then_fail)
    files = [write(predictions(range(i * 3 + 10, i * 3 + 13)), tmp_path / f"n{i}.parquet")
             for i in range(3)]
    with pytest.raises(IngestError, match="No space left on device"):
        ingest(config, files)

    assert len(written) == 2 and all(p.name.startswith(".") for p in written)
    assert snapshot(store_dir(project)) == before
    assert not any(p.name.startswith(".") for p in store_dir(project).iterdir())


def test_rename_failure_rolls_back_renamed_parts(project, tmp_path, monkeypatch):
    config = load_config(project)
    ingest(config, [write(predictions(range(0, 5)), tmp_path / "a.parquet")])
    before = snapshot(store_dir(project))
    real_replace = os.replace
    calls = {"n": 0}

    def replace_once_then_fail(src, dst):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(5, "Input/output error")
        real_replace(src, dst)

    monkeypatch.setattr(store.os, "replace", replace_once_then_fail)
    files = [write(predictions(range(i * 3 + 10, i * 3 + 13)), tmp_path / f"n{i}.parquet")
             for i in range(2)]
    with pytest.raises(IngestError, match="Input/output error"):
        ingest(config, files)
    assert snapshot(store_dir(project)) == before


def test_failed_first_ingest_removes_the_new_store(project, tmp_path, monkeypatch):
    def fail(con, query, destination):
        destination.write_bytes(b"half a part")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store, "_write_part", fail)
    with pytest.raises(IngestError):
        ingest(load_config(project), [write(predictions(range(3)), tmp_path / "a.parquet")])
    assert not (project.parent / "store").exists()


def test_temporary_files_are_invisible_to_readers(project, tmp_path):
    config = load_config(project)
    ingest(config, [write(predictions(range(0, 5)), tmp_path / "a.parquet")])
    # A half-written batch from a crashed ingest: readers must not see it.
    write(predictions(range(5, 9)), store_dir(project) / ".part-20990101T000000000000Z-deadbeef.parquet.tmp")
    write(predictions(range(5, 9)), store_dir(project) / "_scratch.parquet")
    assert open_log(config).count() == 5
    ingest(config, [write(predictions(range(5, 9)), tmp_path / "b.parquet")])  # no false duplicates
    assert open_log(config).count() == 9


def test_part_names_sort_after_existing_ones_even_if_the_clock_went_back(project, tmp_path):
    folder = store_dir(project)
    folder.mkdir(parents=True)
    future = folder / "part-20991231T235959999999Z-0123abcd.parquet"
    write(predictions(range(0, 3)), future)
    report = ingest(load_config(project), [write(predictions(range(3, 6)), tmp_path / "b.parquet"),
                                           write(predictions(range(6, 9)), tmp_path / "c.parquet")])
    assert sorted(os.listdir(folder)) == [future.name] + report["parts"]


# ---------------------------------------------------------------- labels

def test_ingested_labels_reach_the_metrics(project, tmp_path):
    config = load_config(project)
    ingest(config, [write(predictions(range(0, 20)), tmp_path / "p.parquet")])
    view = open_log(config)
    assert view.roles.target is None  # no labels yet: the log still opens
    labeled = (sql.Condition("target", "not_null"),)

    first = pd.DataFrame({"id": [1, 2, 3, 4], "target": [1, 0, 1, 1]})
    report = ingest(config, [write(first, tmp_path / "l1.csv")], kind="labels")
    assert report["kind"] == "labels" and report["rows"] == 4
    view = open_log(config)
    assert view.count(segment=labeled) == 4

    # Later labels: new ids, a corrected label (id 4) and an id labeled twice in one batch.
    second = pd.DataFrame({"id": [4, 5, 6, 6], "target": [0, 1, 0, 1]})
    ingest(config, [write(second, tmp_path / "l2.parquet")], kind="labels")
    view = open_log(config)
    assert view.count(segment=labeled) == 6
    assert view.count(segment=(sql.Condition("id", "==", value=4),
                               sql.Condition("target", "==", value=0))) == 1
    assert view.count(segment=(sql.Condition("id", "==", value=6),
                               sql.Condition("target", "==", value=1))) == 1


def test_labels_need_an_id_and_a_target(project, tmp_path):
    config = load_config(project)
    ingest(config, [write(predictions(range(0, 5)), tmp_path / "p.parquet")])
    with pytest.raises(IngestError, match="no target column"):
        ingest(config, [write(pd.DataFrame({"id": [1], "verdict": [1]}), tmp_path / "l.csv")],
               kind="labels")
    with pytest.raises(IngestError, match="no id column"):
        ingest(config, [write(pd.DataFrame({"key": [1], "label": [1]}), tmp_path / "l.csv")],
               kind="labels")
    with pytest.raises(IngestError, match="column 'id' \\(the id\\) is empty"):
        ingest(config, [write(pd.DataFrame({"id": [1, None], "label": [1, 0]}),
                              tmp_path / "l.ndjson")], kind="labels")
    assert snapshot(project.parent / "store" / "labels") is None


def test_declared_target_names_the_labels_column(tmp_path):
    config_path = tmp_path / "mlmon.toml"
    config_path.write_text('[source]\npredictions = "p"\nlabels = "l"\n[columns]\ntarget = "outcome"\n')
    config = load_config(config_path)
    ingest(config, [write(predictions(range(0, 5)), tmp_path / "p.parquet")])
    assert open_log(config).roles.target is None
    with pytest.raises(IngestError, match="no column 'outcome', which \\[columns\\] target"):
        ingest(config, [write(pd.DataFrame({"id": [1], "label": [1]}), tmp_path / "l.csv")],
               kind="labels")
    ingest(config, [write(pd.DataFrame({"id": [1, 2], "outcome": [1, 0]}), tmp_path / "l.csv")],
           kind="labels")
    view = open_log(config)
    assert view.roles.target == "outcome"
    assert view.count(segment=(sql.Condition("outcome", "not_null"),)) == 2


# ---------------------------------------------------------------- the command

def test_cli_ingest_and_ingest_labels(project, tmp_path, capsys):
    from mlmon_core.cli import main

    source = write(predictions(range(0, 8)), tmp_path / "p.parquet")
    assert main(["ingest", source, "--config", str(project), "--json"]) == 0
    assert '"rows": 8' in capsys.readouterr().out
    labels = write(pd.DataFrame({"id": [1, 2], "label": [1, 0]}), tmp_path / "l.csv")
    assert main(["ingest-labels", labels, "--config", str(project)]) == 0
    assert "added 2 rows in 1 part(s)" in capsys.readouterr().out

    before = snapshot(store_dir(project))
    assert main(["ingest", source, "--config", str(project)]) == 2
    captured = capsys.readouterr()
    assert "duplicate ids" in captured.err and "Traceback" not in captured.err
    assert snapshot(store_dir(project)) == before
