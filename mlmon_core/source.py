"""Opens a prediction log as a DuckDB view, joins late labels, and infers column roles and kinds.

Nothing is copied into pandas: the log stays in its files and every analysis queries the view
``log``. Files are listed here (not globbed by DuckDB) so that a managed store's temporary files,
which start with a dot, are never read half-written.
"""

from __future__ import annotations

import glob
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import duckdb

from mlmon_core import sql
from mlmon_core.config import Config, Window
from mlmon_core.errors import ConfigError, SourceError
from mlmon_core.sql import Fragment, Ident, Segment

FORMATS = {
    ".parquet": "parquet", ".pq": "parquet",
    ".csv": "csv", ".tsv": "csv", ".txt": "csv",
    ".json": "json", ".ndjson": "json", ".jsonl": "json",
    ".duckdb": "duckdb", ".db": "duckdb",
}
KINDS = ("numerical", "categorical", "boolean", "datetime", "text", "other")

# Names tried, in order, for each role the config leaves unset.
ROLE_CANDIDATES: dict[str, tuple[str, ...]] = {
    "id": ("id", "row_id", "prediction_id", "request_id", "uuid", "event_id"),
    "timestamp": ("timestamp", "ts", "time", "datetime", "event_time", "prediction_time",
                  "created_at", "date"),
    "prediction": ("prediction", "pred", "y_pred", "predicted", "predicted_label", "predicted_class"),
    "score": ("score", "predicted_probability", "probability", "proba", "prob", "y_score",
              "y_prob", "prediction_score"),
    "target": ("target", "label", "y", "y_true", "ground_truth", "actual", "truth", "outcome"),
    "model": ("model", "model_version", "model_id", "version"),
    "variant": ("variant", "arm", "ab_group", "experiment_arm", "treatment"),
    "latency": ("latency_ms", "latency", "response_time_ms", "duration_ms"),
    "status": ("status", "status_code", "http_status"),
    "label_timestamp": ("labeled_at", "label_timestamp", "label_time", "labelled_at"),
}
SINGLE_ROLES = tuple(ROLE_CANDIDATES)
INTERNAL_COLUMNS = ("filename", "file_row_number")
TEXT_MIN_DISTINCT = 1000
SAMPLE_ROWS = 200_000


@dataclass(frozen=True)
class ColumnInfo:
    """One column of the log view: its DuckDB type, role and kind."""

    name: str
    duck_type: str
    role: str
    kind: str

    def to_json(self) -> dict[str, str]:
        """Plain form for ``mlmon schema``."""
        return {"name": self.name, "type": self.duck_type, "role": self.role, "kind": self.kind}


@dataclass(frozen=True)
class Roles:
    """Which column plays which part. ``None`` when the log has no such column."""

    id: str | None = None
    timestamp: str | None = None
    prediction: str | None = None
    score: str | None = None
    target: str | None = None
    model: str | None = None
    variant: str | None = None
    latency: str | None = None
    status: str | None = None
    label_timestamp: str | None = None
    features: tuple[str, ...] = ()
    attributions: dict[str, str] = field(default_factory=dict)

    def role_of(self, column: str) -> str:
        """The role name of a column ('feature', 'attribution', 'other' when none)."""
        for role in SINGLE_ROLES:
            if getattr(self, role) == column:
                return role
        if column in self.features:
            return "feature"
        if column in self.attributions.values():
            return "attribution"
        return "other"


@dataclass
class LogView:
    """The opened log: a DuckDB connection holding the view ``log`` plus what is known of it."""

    con: duckdb.DuckDBPyConnection
    config: Config
    roles: Roles
    columns: dict[str, ColumnInfo]
    task: str
    positive_label: Any
    files: tuple[str, ...]
    label_files: tuple[str, ...]
    name: str = "log"
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    # Why prediction and target cannot be compared (see ``_comparison_problem``), else None.
    comparison_problem: str | None = None

    @property
    def relation(self) -> Ident:
        """The quoted name of the log view, for templates."""
        return Ident(self.name)

    @property
    def predictions_relation(self) -> Ident:
        """The log without the label join (no target column when labels come from a file):
        cheaper for queries that do not read the target, such as time ranges or drift of
        features."""
        return Ident("log_predictions")

    @property
    def column_types(self) -> dict[str, str]:
        """Column name → DuckDB type name."""
        return {name: info.duck_type for name, info in self.columns.items()}

    def kind(self, column: str) -> str:
        """The column's kind (numerical, categorical, boolean, datetime, text, other)."""
        return self.columns[column].kind

    def execute(self, query: Fragment) -> duckdb.DuckDBPyConnection:
        """Run a query on a cursor of its own (thread-safe); returns the cursor to fetch from."""
        cursor = self.con.cursor()
        try:
            return cursor.execute(query.text, list(query.params))
        except duckdb.Error as exc:
            if self.comparison_problem and isinstance(exc, duckdb.ConversionException):
                raise SourceError(self.comparison_problem) from None
            raise SourceError(f"query on {self.describe_source()} failed: {exc}") from None

    def fetchall(self, query: Fragment) -> list[tuple]:
        """All result rows of a query."""
        return self.execute(query).fetchall()

    def fetch_df(self, query: Fragment):
        """A query's result as a pandas DataFrame (for aggregates and small samples only)."""
        return self.execute(query).fetch_df()

    def where(self, window: Window | None = None, segment: Segment | None = None,
              extra: Iterable[Fragment] = ()) -> Fragment:
        """The WHERE fragment for a window and a segment (values bound)."""
        parts = [sql.window_condition(self.roles.timestamp, window)]
        parts.append(sql.compile_segment(segment, self.column_types).fragment)
        parts.extend(extra)
        return sql.conjunction(parts)

    def count(self, window: Window | None = None, segment: Segment | None = None) -> int:
        """Rows in a window and segment."""
        query = sql.render("SELECT count(*) FROM {log} WHERE {where}",
                           log=self.relation, where=self.where(window, segment))
        return int(self.fetchall(query)[0][0])

    def data_identity(self) -> tuple:
        """The log's files with sizes and modification times: changes when data or labels arrive
        (a key for caches of anything computed from the data)."""
        stamps = []
        for name in (*self.files, *self.label_files):
            try:
                stat = os.stat(name)
                stamps.append((name, stat.st_size, stat.st_mtime_ns))
            except OSError:
                stamps.append((name, None, None))
        return (str(self.config.path), self.config.source.predictions, tuple(stamps))

    def describe_source(self) -> str:
        """Where the log comes from, for messages."""
        return self.config.source.predictions

    def schema_json(self) -> dict[str, Any]:
        """Columns, roles, kinds and row counts: the ``mlmon schema --json`` object."""
        roles = self.roles
        target = Ident(roles.target) if roles.target else None
        ts = Ident(roles.timestamp)
        labeled = sql.render("count({t})", t=target) if target else Fragment("0")
        query = sql.render(
            "SELECT count(*), {labeled}, min({ts}), max({ts}) FROM {log}",
            labeled=labeled, ts=ts, log=self.relation,
        )
        rows, labeled_rows, first, last = self.fetchall(query)[0]
        payload: dict[str, Any] = {
            "source": {"predictions": self.config.source.predictions,
                       "labels": self.config.source.labels,
                       "files": len(self.files), "label_files": len(self.label_files)},
            "task": self.task,
            "positive_label": self.positive_label,
            "rows": int(rows),
            "labeled_rows": int(labeled_rows),
            "time_range": {"start": first.isoformat() if first else None,
                           "end": last.isoformat() if last else None},
            "roles": {role: getattr(roles, role) for role in SINGLE_ROLES},
            "features": list(roles.features),
            "columns": [info.to_json() for info in self.columns.values()],
        }
        if self.comparison_problem:
            payload["warnings"] = [self.comparison_problem]
        if roles.model:
            payload["models"] = self.model_counts()
        return payload

    def model_counts(self) -> dict[str, int]:
        """Rows per value of the model column, most frequent first (empty without one)."""
        if not self.roles.model:
            return {}
        query = sql.render("SELECT {m}, count(*) FROM {log} GROUP BY 1 ORDER BY 2 DESC, 1",
                           m=Ident(self.roles.model), log=self.predictions_relation)
        return {str(k): int(v) for k, v in self.fetchall(query) if k is not None}


# ---------------------------------------------------------------- files

def list_files(location: str, key: str, config_path: Any = None) -> tuple[list[str], str]:
    """The data files a location names (file, glob or directory) and their common format."""
    where = f"{config_path}: [source] {key}" if config_path else f"[source] {key}"
    path = Path(location)
    if path.is_dir():
        files = sorted(
            str(p) for p in path.rglob("*")
            if p.is_file() and not _hidden(p.relative_to(path)) and p.suffix.lower() in FORMATS
        )
        if not files:
            raise SourceError(f"{where}: directory {location} holds no Parquet, CSV or NDJSON files")
    elif any(ch in location for ch in "*?["):
        root = _glob_root(location)
        files = sorted(f for f in glob.glob(location, recursive=True)
                       if os.path.isfile(f) and not _hidden(Path(os.path.relpath(f, root))))
        if not files:
            raise SourceError(f"{where}: no file matches {location}")
    elif path.is_file():
        files = [str(path)]
    else:
        raise SourceError(f"{where}: {location} does not exist")
    formats = {FORMATS.get(Path(f).suffix.lower()) for f in files}
    if None in formats:
        odd = next(f for f in files if Path(f).suffix.lower() not in FORMATS)
        raise SourceError(f"{where}: {odd} is not Parquet, CSV, NDJSON or DuckDB (by its extension)")
    if len(formats) > 1:
        raise SourceError(f"{where}: {location} mixes formats ({', '.join(sorted(formats))}); "
                          "keep one format per source")
    return files, formats.pop()


def _hidden(relative: Path) -> bool:
    return any(part.startswith((".", "_")) for part in relative.parts)


def awaiting_labels(location: str) -> bool:
    """Whether ``location`` names a managed labels store that has no labels yet.

    A directory with no data files, or a missing path that is neither a glob nor a file name (no
    data extension): ``mlmon ingest-labels`` creates it. The log then opens without labels.
    """
    path = Path(location)
    if any(ch in location for ch in "*?[") or path.is_file():
        return False
    if path.is_dir():
        return not any(p.is_file() and not _hidden(p.relative_to(path)) and p.suffix.lower() in FORMATS
                       for p in path.rglob("*"))
    return path.suffix.lower() not in FORMATS


def _glob_root(pattern: str) -> str:
    """The folder before a glob's first wildcard: only what the wildcards match can be hidden."""
    fixed: list[str] = []
    for part in Path(pattern).parts:
        if any(ch in part for ch in "*?["):
            break
        fixed.append(part)
    return str(Path(*fixed)) if fixed else "."


# CSV cells that mean "missing", as pandas.read_csv reads them by default (R writes NA, Excel
# #N/A): without them a numerical column holding one "NA" would be read as text.
CSV_MISSING_MARKERS = ("", "NA", "N/A", "n/a", "<NA>", "#N/A", "#N/A N/A", "#NA", "NULL", "null",
                       "NaN", "-NaN", "nan", "-nan", "None", "1.#IND", "-1.#IND", "1.#QNAN",
                       "-1.#QNAN")


def _relation(con: duckdb.DuckDBPyConnection, files: list[str], fmt: str, table: str | None,
              alias: str, key: str, config_path: Any) -> duckdb.DuckDBPyRelation:
    where = f"{config_path}: [source] {key}" if config_path else f"[source] {key}"
    try:
        if fmt == "parquet":
            return con.read_parquet(files, filename=True, file_row_number=True, union_by_name=True)
        if fmt == "csv":
            return con.read_csv(files, filename=True, union_by_name=True,
                                na_values=list(CSV_MISSING_MARKERS))
        if fmt == "json":
            return con.read_json(files, format="newline_delimited", filename=True)
        return _duckdb_table(con, files, table, alias, where)
    except duckdb.Error as exc:
        reserved = next((c for c in INTERNAL_COLUMNS if f'adds column "{c}"' in str(exc)), None)
        if reserved:
            raise SourceError(f"{where}: {files[0] if len(files) == 1 else _location_of(files)} "
                              f"has a column named {reserved!r}, a name mlmon reserves for the "
                              "file each row comes from; rename that column") from None
        raise SourceError(f"{where}: cannot read {files[0] if len(files) == 1 else len(files)} "
                          f"{'file' if len(files) == 1 else 'files'} as {fmt}: {exc}") from None


def _location_of(files: list[str]) -> str:
    """Several files named briefly: the first and how many more."""
    return f"{files[0]} (and {len(files) - 1} more files)"


def _duckdb_table(con, files, table, alias, where) -> duckdb.DuckDBPyRelation:
    if len(files) != 1:
        raise SourceError(f"{where}: give exactly one .duckdb file")
    con.execute(sql.render("ATTACH {path} AS {db} (READ_ONLY)",
                           path=sql.string_literal(files[0]), db=Ident(alias)).text)
    tables = [row[0] for row in con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = ? "
        "UNION ALL SELECT view_name FROM duckdb_views() WHERE database_name = ? AND NOT internal",
        [alias, alias]).fetchall()]
    if table is None:
        if len(tables) != 1:
            raise SourceError(f"{where}: {files[0]} holds {len(tables)} tables "
                              f"({', '.join(tables)}); name one with table = \"...\"")
        table = tables[0]
    elif table not in tables:
        raise SourceError(f"{where}: table {table!r} not found in {files[0]}; it has "
                          f"{', '.join(tables) or 'no tables'}")
    return con.table(f"{Ident(alias).sql}.{Ident(table).sql}")


def _describe(con: duckdb.DuckDBPyConnection, view: str) -> dict[str, str]:
    rows = con.execute(sql.render("DESCRIBE {v}", v=Ident(view)).text).fetchall()
    return {row[0]: str(row[1]) for row in rows}


# ---------------------------------------------------------------- roles

def _resolve_roles(config: Config, columns: dict[str, str], label_columns: dict[str, str],
                   labels_pending: bool = False) -> dict:
    declared = config.columns
    available = set(columns) | set(label_columns)
    roles: dict[str, str | None] = {}
    for role in SINGLE_ROLES:
        name = getattr(declared, role)
        if name is not None:
            pool = label_columns if role in ("target", "label_timestamp") else columns
            if name not in available and labels_pending and role in ("target", "label_timestamp"):
                roles[role] = None  # the labels have not arrived yet
                continue
            if name not in pool and name not in available:
                raise ConfigError(f"{config.path or 'config'}: [columns] {role} = {name!r}: no such "
                                  f"column in the log (it has {_preview(available)})")
            roles[role] = name
            continue
        roles[role] = _find_by_name(role, columns, label_columns)
    taken = {v for v in roles.values() if v}
    if roles["id"] is None and config.source.labels:
        raise ConfigError(f"{config.path or 'config'}: labels are joined on the id column, but the "
                          f"log has none of {', '.join(ROLE_CANDIDATES['id'])}; set [columns] id")
    if roles["timestamp"] is None:
        raise ConfigError(f"{config.path or 'config'}: no timestamp column found (tried "
                          f"{', '.join(ROLE_CANDIDATES['timestamp'])}); set [columns] timestamp")
    return roles | {"_taken": taken}


def _find_by_name(role: str, columns: dict[str, str], label_columns: dict[str, str]) -> str | None:
    """The first candidate name for a role, case-insensitively; labels hold label-side roles."""
    pools = [label_columns] if role == "label_timestamp" else [columns]
    if role == "target":
        pools.append(label_columns)
    for pool in pools:
        lowered = {c.lower(): c for c in pool}
        for candidate in ROLE_CANDIDATES[role]:
            if candidate in lowered:
                return lowered[candidate]
    return None


def _preview(names: Iterable[str], limit: int = 12) -> str:
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


# ---------------------------------------------------------------- opening

def open_log(config: Config, con: duckdb.DuckDBPyConnection | None = None) -> LogView:
    """Open the config's predictions (and labels) as the DuckDB view ``log``."""
    con = con or duckdb.connect()
    _use_utc(con)
    source = config.source
    files, fmt = list_files(source.predictions, "predictions", config.path)
    _relation(con, files, fmt, source.table, "predictions_db", "predictions",
              config.path).create_view("predictions_raw", replace=True)
    raw_types = _describe(con, "predictions_raw")
    label_files: list[str] = []
    label_types: dict[str, str] = {}
    labels_pending = bool(source.labels) and awaiting_labels(source.labels)
    if source.labels and not labels_pending:
        label_files, label_fmt = list_files(source.labels, "labels", config.path)
        _relation(con, label_files, label_fmt, source.labels_table, "labels_db", "labels",
                  config.path).create_view("labels_raw", replace=True)
        label_types = _describe(con, "labels_raw")
    data_types = {k: v for k, v in raw_types.items() if k not in INTERNAL_COLUMNS}
    roles = _resolve_roles(config, data_types, {k: v for k, v in label_types.items()
                                                if k not in INTERNAL_COLUMNS}, labels_pending)
    _create_log_view(con, roles, data_types, label_types, config)
    _check_timestamps(con, config, roles["timestamp"], data_types[roles["timestamp"]])
    types = {k: v for k, v in _describe(con, "log").items()}
    task, positive = _infer_task(con, config, roles)
    if task == "binary" and _holds_probabilities(con, roles, types):
        roles = roles | {"score": roles["prediction"], "prediction": None}
    comparison_problem = _comparison_problem(con, config, roles, types)
    _check_positive_label(con, config, roles, types, task)
    kinds = _infer_kinds(con, types, config, roles)
    for role in ("prediction", "target"):
        if roles[role] and task != "regression" and kinds[roles[role]] == "numerical":
            kinds[roles[role]] = "categorical"
    features = _features(config, types, kinds, roles,
                         _class_score_columns(con, roles, types, task))
    attributions = _attribution_columns(config, types, features)
    role_data = {k: v for k, v in roles.items() if k != "_taken"}
    final_roles = Roles(**role_data, features=tuple(features), attributions=attributions)
    columns = {name: ColumnInfo(name, types[name], final_roles.role_of(name), kinds[name])
               for name in types}
    return LogView(con=con, config=config, roles=final_roles, columns=columns, task=task,
                   positive_label=positive, files=tuple(files), label_files=tuple(label_files),
                   comparison_problem=comparison_problem)


def _use_utc(con: duckdb.DuckDBPyConnection) -> None:
    """Naive times are UTC: casts of text to TIMESTAMPTZ must not depend on the machine's zone."""
    try:
        con.execute("SET TimeZone = 'UTC'")
    except duckdb.Error:  # DuckDB built without ICU has no time zones but UTC
        pass


def _exclude(columns: list[Ident]) -> Fragment:
    """``EXCLUDE (a, b)``, or nothing when the list is empty (``EXCLUDE ()`` is a syntax error)."""
    if not columns:
        return Fragment("")
    return sql.render("EXCLUDE ({names})", names=sql.join(Fragment(c.sql) for c in columns))


_UNPARSED_TIMES = (
    "SELECT count({c}), count({c}) FILTER (WHERE TRY_CAST({c} AS TIMESTAMPTZ) IS NULL), "
    "any_value({c}) FILTER (WHERE TRY_CAST({c} AS TIMESTAMPTZ) IS NULL) "
    "FROM (SELECT {c} FROM predictions_raw WHERE {c} IS NOT NULL LIMIT {n})")


def _check_timestamps(con, config: Config, column: str, duck_type: str) -> None:
    """A text timestamp column that never parses would turn every window empty: say so."""
    upper = duck_type.upper()
    if sql.is_temporal_type(upper) or sql.is_numeric_type(upper):
        return
    if upper not in ("VARCHAR", "TEXT", "STRING"):
        raise ConfigError(f"{config.path or 'config'}: the timestamp column {column!r} has type "
                          f"{duck_type}; it needs date-times, text in ISO-8601 or epoch numbers")
    query = sql.render(_UNPARSED_TIMES, c=Ident(column), n=SAMPLE_ROWS)
    present, unparsed, example = con.execute(query.text).fetchone()
    if present and unparsed == present:
        raise ConfigError(f"{config.path or 'config'}: the timestamp column {column!r} holds text "
                          f"that is not a date-time (e.g. {example!r}); write ISO-8601 such as "
                          "2024-03-01T10:15:00Z, or epoch seconds/milliseconds")


_DISTINCT_SAMPLE = ("SELECT DISTINCT {c} FROM (SELECT {c} FROM {r} WHERE {c} IS NOT NULL "
                    "LIMIT {n}) LIMIT 5")


def _comparison_problem(con, config: Config, roles: dict, types: dict[str, str]) -> str | None:
    """Why prediction and target cannot be compared (text against numbers), or None.

    The log still opens (schema, drift and quality do not compare them); a query that does
    compare them fails with this message instead of DuckDB's conversion error.
    """
    prediction, target = roles["prediction"], roles["target"]
    if not prediction or not target or prediction not in types or target not in types:
        return None
    texts = [c for c in (prediction, target) if types[c].upper() == "VARCHAR"]
    if len(texts) != 1:
        return None
    text_column = texts[0]
    other = target if text_column == prediction else prediction
    relation, column = _cheapest_source(con, text_column)
    values = [row[0] for row in con.execute(sql.render(
        _DISTINCT_SAMPLE, c=Ident(column), r=relation, n=SAMPLE_ROWS).text).fetchall()]
    try:
        cast = sql.type_name(types[other])
    except ValueError:
        return None
    check = sql.render("SELECT count(*) FILTER (WHERE TRY_CAST(v AS {t}) IS NULL) "
                       "FROM (SELECT unnest({values}) AS v)", t=cast, values=sql.param(values))
    if values and con.execute(check.text, list(check.params)).fetchone()[0]:
        return (f"{config.path or 'config'}: the prediction column {prediction!r} and the target "
                f"column {target!r} cannot be compared: {text_column!r} holds text (e.g. "
                f"{', '.join(map(repr, sorted(map(str, values))[:3]))}) and {other!r} holds "
                f"{types[other]} values; log both with the same labels")
    return None


def _holds_probabilities(con, roles: dict, types: dict[str, str]) -> bool:
    """Whether a binary log without a score column logged its probability as the prediction
    (floats in [0, 1], not just 0 and 1): it is then the score, and the predicted label is
    ``score >= threshold`` rather than a comparison of 0.73 with the label 1, which never holds."""
    prediction = roles["prediction"]
    if roles["score"] or not prediction or prediction not in types:
        return False
    if types[prediction].upper() not in ("DOUBLE", "FLOAT", "REAL") and \
            not types[prediction].upper().startswith("DECIMAL"):
        return False
    relation, column = _cheapest_source(con, prediction)
    query = sql.render(
        "SELECT count(*) FILTER (WHERE v NOT IN (0, 1)), count(*) FILTER (WHERE v < 0 OR v > 1) "
        "FROM (SELECT CAST({c} AS DOUBLE) AS v FROM {r} WHERE {c} IS NOT NULL LIMIT {n})",
        c=Ident(column), r=relation, n=SAMPLE_ROWS)
    fractional, outside = con.execute(query.text).fetchone()
    return bool(fractional) and not outside


def _check_positive_label(con, config: Config, roles: dict, types: dict[str, str],
                          task: str) -> None:
    """A declared positive label that the target never takes, while it takes two other values,
    is a typo ("yes" for "Yes"): every binary metric would silently count zero positives."""
    positive = config.model.positive_label
    if task != "binary" or positive is None:
        return
    for role in ("target", "prediction"):
        name = roles[role]
        if not name or name not in types:
            continue
        try:
            cast = sql.type_name(types[name])
        except ValueError:
            continue
        relation, column = _cheapest_source(con, name)
        query = sql.render(
            "SELECT count(DISTINCT v), count(*) FILTER (WHERE v = TRY_CAST({p} AS {t})) FROM "
            "(SELECT {c} AS v FROM {r} WHERE {c} IS NOT NULL LIMIT {n})",
            p=sql.param(str(positive) if isinstance(positive, bool) else positive), t=cast,
            c=Ident(column), r=relation, n=SAMPLE_ROWS)
        distinct, matches = con.execute(query.text, list(query.params)).fetchone()
        if distinct >= 2 and not matches:
            values = [row[0] for row in con.execute(sql.render(
                _DISTINCT_SAMPLE, c=Ident(column), r=relation, n=SAMPLE_ROWS).text).fetchall()]
            raise ConfigError(
                f"{config.path or 'config'}: [model] positive_label = {positive!r} is not a value "
                f"of the {role} column {name!r} (it holds "
                f"{', '.join(map(repr, sorted(values, key=str)))}); match the spelling and type")
        return


def _timestamp_expression(col: Fragment, duck_type: str) -> Fragment:
    """The column as a naive UTC TIMESTAMP, whatever type it was logged with."""
    upper = duck_type.upper()
    if upper == "TIMESTAMP":
        return sql.render("{c}", c=col)
    if upper.startswith("TIMESTAMP WITH TIME ZONE") or upper == "TIMESTAMPTZ":
        return sql.render("timezone('UTC', {c})", c=col)
    if upper.startswith("TIMESTAMP") or upper == "DATE":
        return sql.render("CAST({c} AS TIMESTAMP)", c=col)
    if sql.is_numeric_type(upper):
        # Epoch numbers, unit told by magnitude (today is ~1.7e9 s, 1.7e12 ms, 1.7e15 µs, 1.7e18
        # ns). One scale factor in DOUBLE: a per-unit CASE of BIGINT products would overflow on
        # nanoseconds, and TRY_CAST turns an absurd value into a missing time, not an error.
        # Integers 19000101..21001231 are dates written as YYYYMMDD (as seconds they would all
        # fall in August 1970).
        return sql.render(
            "CASE WHEN {c} BETWEEN 19000101 AND 21001231 AND {c} = floor({c}) "
            "THEN try_strptime(CAST(CAST({c} AS BIGINT) AS VARCHAR), '%Y%m%d') "
            "ELSE make_timestamp(TRY_CAST(CAST({c} AS DOUBLE) * CASE "
            "WHEN abs({c}) >= 100000000000000000 THEN 0.001 "
            "WHEN abs({c}) >= 100000000000000 THEN 1 "
            "WHEN abs({c}) >= 100000000000 THEN 1000 ELSE 1000000 END AS BIGINT)) END", c=col)
    # Text: through TIMESTAMPTZ so that UTC offsets are honoured (naive text is read as UTC).
    return sql.render("timezone('UTC', TRY_CAST({c} AS TIMESTAMPTZ))", c=col)


def _create_log_view(con, roles: dict, data_types: dict[str, str], label_types: dict[str, str],
                     config: Config) -> None:
    ts = roles["timestamp"]
    replacements = [sql.render("{expr} AS {c}", c=Ident(ts), expr=_timestamp_expression(
        Fragment(Ident(ts).sql), data_types[ts]))]
    target = roles["target"]
    label_target = target if target and target in label_types else None
    excluded = [Ident(c) for c in INTERNAL_COLUMNS if c in _describe(con, "predictions_raw")]
    in_predictions = bool(target) and target in data_types
    without_labels = excluded + ([Ident(target)] if label_target and in_predictions else [])
    select = sql.render("SELECT * {exclude} REPLACE ({repl}) FROM predictions_raw",
                        exclude=_exclude(without_labels), repl=sql.join(replacements))
    con.execute(sql.render("CREATE OR REPLACE VIEW log_predictions AS {select}",
                           select=select).text)
    if label_target is None:
        con.execute("CREATE OR REPLACE VIEW log AS SELECT * FROM log_predictions")
        return
    id_col = Ident(roles["id"])
    if roles["id"] not in label_types:
        raise ConfigError(f"{config.path or 'config'}: the labels ({config.source.labels}) have no "
                          f"column {roles['id']!r} to join on; they have {_preview(label_types)}")
    order = [sql.render("{c} DESC NULLS LAST", c=Ident(roles["label_timestamp"]))] \
        if roles.get("label_timestamp") in label_types else []
    order += [Fragment(f"{Ident(c).sql} DESC") for c in INTERNAL_COLUMNS if c in label_types]
    order_by = sql.join(order) if order else Fragment("1")
    value = (sql.render("coalesce(lab.__label, p.{t})", t=Ident(target)) if in_predictions
             else Fragment("lab.__label"))
    exclude = excluded + ([Ident(target)] if in_predictions else [])
    latest = _latest_labels(con, id_col, Ident(target), order_by)
    ids_differ = _text_on_one_side(data_types[roles["id"]], label_types[roles["id"]])
    query = sql.render(
        "CREATE OR REPLACE VIEW log AS "
        "SELECT p.* {exclude} REPLACE ({repl}), {value} AS {t} "
        "FROM predictions_raw AS p LEFT JOIN labels_latest AS lab ON {on}",
        on=_id_join(id_col, ids_differ), t=Ident(target),
        exclude=_exclude(exclude),
        repl=sql.render("{expr} AS {c}", c=Ident(ts), expr=_timestamp_expression(
            Fragment("p." + Ident(ts).sql), data_types[ts])),
        value=value,
    )
    try:
        con.execute(latest.text)
        con.execute(query.text)
    except duckdb.Error as exc:
        raise SourceError(f"cannot join labels {config.source.labels} on {roles['id']!r}: {exc}") from None
    if ids_differ:
        _check_ids_match(con, config, roles["id"], data_types[roles["id"]], label_types[roles["id"]])


def _text_on_one_side(prediction_type: str, label_type: str) -> bool:
    """Whether the id is text in one file and not in the other ("123" against 123)."""
    text_types = ("VARCHAR", "TEXT", "STRING")
    return (prediction_type.upper() in text_types) != (label_type.upper() in text_types)


def _id_join(id_col: Ident, as_text: bool) -> Fragment:
    """The join condition of predictions and labels on the id; ids typed differently on the two
    sides are compared as text: DuckDB's implicit cast would fail on the first id that is not a
    number."""
    if as_text:
        return sql.render("CAST(p.{id} AS VARCHAR) = CAST(lab.__id AS VARCHAR)", id=id_col)
    return sql.render("p.{id} = lab.__id", id=id_col)


_IDS_MATCHED = (
    "WITH sample AS MATERIALIZED (SELECT DISTINCT CAST(__id AS VARCHAR) AS k FROM labels_latest "
    "LIMIT 1000) "
    "SELECT (SELECT count(*) FROM sample), count(*) FROM (SELECT DISTINCT CAST({id} AS VARCHAR) "
    "AS k FROM predictions_raw) AS p SEMI JOIN sample ON p.k = sample.k")


def _check_ids_match(con, config: Config, id_name: str, prediction_type: str,
                     label_type: str) -> None:
    """Ids typed differently in predictions and labels that never match are a key mismatch
    (``u17`` against ``17``), which would otherwise show as "no labels yet" everywhere."""
    sampled, matched = con.execute(sql.render(_IDS_MATCHED, id=Ident(id_name)).text).fetchone()
    if sampled and not matched:
        example = con.execute("SELECT any_value(CAST(__id AS VARCHAR)) FROM labels_latest").fetchone()[0]
        raise ConfigError(f"{config.path or 'config'}: no label id matches a prediction id: "
                          f"{id_name!r} is {prediction_type} in the predictions but {label_type} "
                          f"in the labels ({config.source.labels}, e.g. {example!r}); log the "
                          "same ids on both sides")


def _latest_labels(con, id_col: Ident, target: Ident, order_by: Fragment) -> Fragment:
    """The statement defining ``labels_latest`` (one label per id, the latest winning).

    Checking uniqueness costs one hash aggregate; only when an id was labeled twice is the
    de-duplication (a window function, several times slower) materialised, once per open, so
    that queries never pay it.
    """
    unique = sql.render("SELECT count(*) = count(DISTINCT {id}) FROM labels_raw WHERE {t} IS NOT NULL",
                        id=id_col, t=target)
    if con.execute(unique.text).fetchone()[0]:
        return sql.render("CREATE OR REPLACE VIEW labels_latest AS SELECT {id} AS __id, "
                          "{t} AS __label FROM labels_raw WHERE {t} IS NOT NULL", id=id_col, t=target)
    return sql.render(
        "CREATE OR REPLACE TABLE labels_latest AS "
        "SELECT {id} AS __id, {t} AS __label FROM labels_raw WHERE {t} IS NOT NULL "
        "QUALIFY row_number() OVER (PARTITION BY {id} ORDER BY {order}) = 1",
        id=id_col, t=target, order=order_by)


def _infer_task(con, config: Config, roles: dict) -> tuple[str, Any]:
    task = config.model.task
    positive = config.model.positive_label
    column = roles["target"] or roles["prediction"]
    if column is None:
        return task or "binary", positive
    relation, column = _cheapest_source(con, column)
    query = sql.render(
        "SELECT count(DISTINCT {c}), any_value(typeof({c})) FROM (SELECT {c} FROM {r} "
        "WHERE {c} IS NOT NULL LIMIT {n})", c=Ident(column), r=relation, n=SAMPLE_ROWS)
    distinct, type_name = con.execute(query.text).fetchone()
    if task is None:
        floating = type_name in ("DOUBLE", "FLOAT") or str(type_name).startswith("DECIMAL")
        if distinct <= 2:
            task = "binary"
        elif floating and distinct > 20:
            task = "regression"
        else:
            task = "multiclass"
    if task == "binary" and positive is None:
        values = [row[0] for row in con.execute(sql.render(
            "SELECT DISTINCT {c} FROM (SELECT {c} FROM {r} WHERE {c} IS NOT NULL LIMIT {n}) "
            "ORDER BY 1", c=Ident(column), r=relation, n=SAMPLE_ROWS).text).fetchall()]
        positive = values[-1] if values else 1
    return task, _plain(positive)


def _cheapest_source(con, column: str) -> tuple[Ident, str]:
    """Where a column can be read without the label join: the predictions, or the labels."""
    if column in _describe(con, "log_predictions"):
        return Ident("log_predictions"), column
    return Ident("labels_latest"), "__label"


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def _infer_kinds(con, types: dict[str, str], config: Config, roles: dict) -> dict[str, str]:
    declared = {c: "categorical" for c in config.columns.categorical}
    declared |= {c: "numerical" for c in config.columns.numerical}
    for name in declared:
        if name not in types:
            key = "categorical" if declared[name] == "categorical" else "numerical"
            raise ConfigError(f"{config.path or 'config'}: [columns] {key} names {name!r}, which is "
                              f"not a column of the log (it has {_preview(types)})")
    kinds: dict[str, str] = {}
    strings = []
    for name, duck_type in types.items():
        upper = duck_type.upper()
        if name in declared:
            kinds[name] = declared[name]
        elif upper == "BOOLEAN":
            kinds[name] = "boolean"
        elif sql.is_temporal_type(upper):
            kinds[name] = "datetime"
        elif sql.is_numeric_type(upper):
            kinds[name] = "numerical"
        elif upper in ("VARCHAR", "TEXT", "STRING") or upper.startswith("ENUM"):
            kinds[name] = "categorical"
            strings.append(name)
        else:
            kinds[name] = "other"
    # Only predictions' own columns are sampled; a text column that came with the labels stays
    # categorical (naming it in the query would fail and skip the inference for every column).
    raw_columns = _describe(con, "predictions_raw")
    strings = [s for s in strings if s != roles["id"] and s in raw_columns]
    if strings:
        counts = sql.join(sql.render("approx_count_distinct({c})", c=Ident(c)) for c in strings)
        query = sql.render("SELECT count(*), {counts} FROM (SELECT * FROM predictions_raw LIMIT {n})",
                           counts=counts, n=SAMPLE_ROWS)
        try:
            row = con.execute(query.text).fetchone()
        except duckdb.Error:
            row = None
        if row:
            total = max(int(row[0]), 1)
            for name, distinct in zip(strings, row[1:]):
                if distinct >= TEXT_MIN_DISTINCT and distinct > 0.5 * total:
                    kinds[name] = "text"
    if roles["id"]:
        kinds[roles["id"]] = "other"
    return kinds


_CLASS_SCORE_NAME = re.compile(r"(?i)(?:score|scores|proba|prob|probability|p)[_.](.+)")


def _class_score_columns(con, roles: dict, types: dict[str, str], task: str) -> frozenset[str]:
    """A multiclass model's per-class scores (``score_cat``, ``proba_dog``...): outputs of the
    model, not inputs, so never features (a slice on them would only restate the prediction)."""
    if task != "multiclass" or not roles["prediction"]:
        return frozenset()
    candidates = {name: match.group(1) for name in types
                  if (match := _CLASS_SCORE_NAME.fullmatch(name)) and sql.is_numeric_type(types[name])}
    if not candidates:
        return frozenset()
    relation, column = _cheapest_source(con, roles["prediction"])
    classes = {str(row[0]) for row in con.execute(sql.render(
        "SELECT DISTINCT {c} FROM (SELECT {c} FROM {r} WHERE {c} IS NOT NULL LIMIT {n}) LIMIT 1000",
        c=Ident(column), r=relation, n=SAMPLE_ROWS).text).fetchall()}
    return frozenset(name for name, label in candidates.items() if label in classes)


def _features(config: Config, types: dict[str, str], kinds: dict[str, str], roles: dict,
              class_scores: frozenset[str] = frozenset()) -> list[str]:
    taken = roles["_taken"]
    prefix = config.columns.attribution_prefix
    if config.columns.features is not None:
        missing = [f for f in config.columns.features if f not in types]
        if missing:
            raise ConfigError(f"{config.path or 'config'}: [columns] features names "
                              f"{', '.join(map(repr, missing))}, not in the log (it has "
                              f"{_preview(types)})")
        clash = [f for f in config.columns.features if f in taken]
        if clash:
            raise ConfigError(f"{config.path or 'config'}: [columns] features lists {clash}, which "
                              "already have another role")
        return list(config.columns.features)
    ignored = set(config.columns.ignore) | class_scores
    return [name for name in types
            if name not in taken and name not in ignored and not name.startswith(prefix)
            and kinds[name] in ("numerical", "categorical", "boolean")]


def _attribution_columns(config: Config, types: dict[str, str], features: list[str]) -> dict[str, str]:
    prefix = config.columns.attribution_prefix
    found = {name[len(prefix):]: name for name in types if name.startswith(prefix)}
    return {feature: column for feature, column in found.items() if feature in features}


def open_config(path: str | Path) -> LogView:
    """Load a project file and open its log (the usual entry point)."""
    from mlmon_core.config import load_config

    return open_log(load_config(path))
