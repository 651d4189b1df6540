"""The managed store: a directory of Parquet parts that ``mlmon ingest`` appends to atomically.

Each ingested file becomes one part named ``part-<UTC timestamp>-<uuid8>.parquet``; sorting the
names gives the ingestion order, which the label join relies on (the later label wins). A batch is
all or nothing: every file is validated first, then written under a temporary name starting with
"." (which readers skip), flushed to disk, and only then renamed into place. On any failure the
temporary files are removed and the store is left exactly as it was.

The first ingest fixes the store's schema (column names and DuckDB types). Later files must have
the same columns, with the same types or types that convert without losing anything: a safe
widening (INTEGER→BIGINT, FLOAT→DOUBLE, DATE→TIMESTAMP...), a conversion that DuckDB checks
loses no value of this file (BIGINT values that a DOUBLE holds exactly, ISO text into a timestamp
column), or a column that is empty in every row. Anything else is refused, naming the column.
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

import duckdb

from mlmon_core import sql
from mlmon_core.config import Config
from mlmon_core.errors import IngestError
from mlmon_core.source import CSV_MISSING_MARKERS, FORMATS, INTERNAL_COLUMNS, ROLE_CANDIDATES
from mlmon_core.sql import Fragment, Ident

KINDS = ("predictions", "labels")
PART_PATTERN = re.compile(r"part-(\d{8}T\d{12}Z)-[0-9a-f]{8}\.parquet")
PART_TIME_FORMAT = "%Y%m%dT%H%M%S%fZ"
INPUT_FORMATS = {suffix: fmt for suffix, fmt in FORMATS.items() if fmt != "duckdb"}
PREDICTION_ROLES = ("id", "timestamp", "prediction", "score", "model", "variant", "latency", "status")
SHOWN_DUPLICATES = 5

_SIGNED_BITS = {"TINYINT": 8, "SMALLINT": 16, "INTEGER": 32, "BIGINT": 64, "HUGEINT": 128}
_UNSIGNED_BITS = {"UTINYINT": 8, "USMALLINT": 16, "UINTEGER": 32, "UBIGINT": 64, "UHUGEINT": 128}
# Integer widths a float holds exactly (24- and 53-bit mantissas).
_EXACT_INTEGER_BITS = {"FLOAT": 16, "DOUBLE": 32}
_NAIVE_TIMES = ("DATE", "TIMESTAMP_S", "TIMESTAMP_MS", "TIMESTAMP", "TIMESTAMP_NS")
_ZONED = "TIMESTAMP WITH TIME ZONE"
# Naive times are UTC throughout mlmon (and the ingest connection's zone is UTC), so a zoned time
# and a naive one convert into each other without loss.
_TIME_WIDENINGS = {("DATE", "TIMESTAMP"), ("TIMESTAMP_S", "TIMESTAMP"), ("TIMESTAMP_MS", "TIMESTAMP"),
                   ("TIMESTAMP_S", "TIMESTAMP_MS"), ("DATE", "TIMESTAMP_MS"), ("DATE", "TIMESTAMP_S"),
                   (_ZONED, "TIMESTAMP"), ("TIMESTAMP", _ZONED), ("DATE", _ZONED)}
# Text columns (NDJSON has no time type) may fill time columns when every value parses.
_TEXT_TIME_TARGETS = ("TIMESTAMP", _ZONED)
_DECIMAL = re.compile(r"DECIMAL\((\d+), ?(\d+)\)")


@dataclass
class _Input:
    """One file offered to the store, opened as a DuckDB view."""

    path: str
    view: Ident
    types: dict[str, str]
    rows: int = 0
    casts: set[str] = field(default_factory=set)


def ingest(config: Config, files: list[str], kind: str = "predictions") -> dict:
    """Append prediction (kind="predictions") or label (kind="labels") files to the managed store."""
    store = store_directory(config, kind)
    paths = _check_paths(files)
    con = duckdb.connect()
    try:
        _configure(con)
        with _store_lock(store):
            parts = existing_parts(store)
            inputs = [_open_input(con, path, index) for index, path in enumerate(paths)]
            if parts:
                schema, origin = _part_schema(con, parts[0]), f"the store {store}"
            else:
                schema, origin = inputs[0].types, inputs[0].path
                _check_new_schema(schema, origin)
            id_column = _check_roles(config, kind, schema, origin)
            for item in inputs:
                _compare_schema(item, schema)
            for item in inputs:
                _scan(con, item, schema, id_column)
            if kind == "predictions":
                _check_unique_ids(con, inputs, parts, id_column, store)
            names = _new_part_names(parts, len(inputs))
            _write_parts(con, store, inputs, schema, names)
    finally:
        con.close()
    return {"store": str(store), "kind": kind, "rows": sum(item.rows for item in inputs),
            "parts": names, "files": paths}


# ---------------------------------------------------------------- where the store is

def store_directory(config: Config, kind: str) -> Path:
    """The store directory for predictions or labels; ``IngestError`` when the config names none."""
    if kind not in KINDS:
        raise IngestError(f"unknown kind {kind!r}: ingest takes {' or '.join(KINDS)}")
    location = config.source.predictions if kind == "predictions" else config.source.labels
    where = f"{config.path or 'config'}: ingest needs [source] {kind} to name a directory"
    if location is None:
        raise IngestError(f"{where} (it is not set)")
    path = Path(location)
    if path.is_dir():
        return path
    if any(ch in location for ch in "*?["):
        raise IngestError(f"{where}; {location} is a glob")
    if path.exists():
        raise IngestError(f"{where}; {location} is a file")
    if path.suffix.lower() in FORMATS:
        raise IngestError(f"{where}; {location} looks like a file name (it ends in {path.suffix})")
    return path


def existing_parts(store: Path) -> list[Path]:
    """The store's visible data files, in ingestion (name) order; only Parquet is allowed."""
    if not store.is_dir():
        return []
    visible = sorted(p for p in store.rglob("*") if p.is_file() and not _hidden(p.relative_to(store)))
    others = [p for p in visible if p.suffix.lower() not in (".parquet", ".pq")]
    if others:
        raise IngestError(f"the store {store} holds {others[0].name}, which is not a Parquet part; "
                          "move it out of the store (files starting with '.' or '_' are ignored)")
    return visible


def _hidden(relative: Path) -> bool:
    return any(part.startswith((".", "_")) for part in relative.parts)


@contextlib.contextmanager
def _store_lock(store: Path) -> Iterator[None]:
    """Serialise ingests into stores of one folder, so the duplicate-id check cannot race."""
    try:
        import fcntl
    except ImportError:  # not on POSIX: no lock
        yield
        return
    parent = store.parent
    if not parent.is_dir():
        yield
        return
    handle = os.open(parent, os.O_RDONLY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)


# ---------------------------------------------------------------- reading the inputs

def _configure(con: duckdb.DuckDBPyConnection) -> None:
    """Zoned and naive times convert through UTC, whatever the machine's zone; no progress bar."""
    con.execute("SET enable_progress_bar = false")
    try:
        con.execute("SET TimeZone = 'UTC'")
    except duckdb.Error:  # a DuckDB without ICU knows only UTC anyway
        pass


def _check_paths(files: list[str]) -> list[str]:
    if not files:
        raise IngestError("no files to ingest: name at least one Parquet, CSV or NDJSON file")
    for path in files:
        file = Path(path)
        if file.is_dir():
            raise IngestError(f"{path}: is a directory; name the files to ingest")
        if not file.is_file():
            raise IngestError(f"{path}: no such file")
        if file.suffix.lower() not in INPUT_FORMATS:
            raise IngestError(f"{path}: not a Parquet, CSV or NDJSON file (by its extension; "
                              f"use one of {', '.join(sorted(INPUT_FORMATS))})")
    return [str(p) for p in files]


def _open_input(con: duckdb.DuckDBPyConnection, path: str, index: int) -> _Input:
    fmt = INPUT_FORMATS[Path(path).suffix.lower()]
    view = f"ingest_input_{index}"
    try:
        if fmt == "parquet":
            relation = con.read_parquet(path)
        elif fmt == "csv":
            relation = con.read_csv(path, na_values=list(CSV_MISSING_MARKERS))
        else:
            relation = con.read_json(path, format="auto")
        relation.create_view(view, replace=True)
        types = dict(zip(relation.columns, (str(t) for t in relation.types)))
    except (duckdb.Error, OSError) as exc:
        raise IngestError(f"{path}: cannot be read as {fmt}: {_first_line(exc)}") from None
    return _Input(path=path, view=Ident(view), types=types)


def _part_schema(con: duckdb.DuckDBPyConnection, part: Path) -> dict[str, str]:
    try:
        relation = con.read_parquet(str(part))
    except duckdb.Error as exc:
        raise IngestError(f"the store's part {part} cannot be read: {_first_line(exc)}") from None
    return dict(zip(relation.columns, (str(t) for t in relation.types)))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ---------------------------------------------------------------- schema and roles

def _check_new_schema(schema: dict[str, str], origin: str) -> None:
    """The first file fixes the schema: refuse what would make the store unreadable later."""
    reserved = [name for name in schema if name in INTERNAL_COLUMNS]
    if reserved:
        raise IngestError(f"{origin}: column {reserved[0]!r} is reserved (mlmon adds it when it "
                          "reads the store); rename it")
    untyped = [name for name, duck_type in schema.items() if duck_type.strip('"').upper() == "NULL"]
    if untyped:
        raise IngestError(f"{origin}: column {untyped[0]!r} is empty in every row, so its type is "
                          "unknown and the first ingest would fix it wrongly; ingest a file where "
                          "it has values first, or drop the column")


def _role_column(config: Config, role: str, schema: dict[str, str]) -> str | None:
    """The column playing ``role``: the declared one, else the first candidate name found."""
    declared = getattr(config.columns, role)
    if declared is not None:
        return declared
    lowered = {name.lower(): name for name in schema}
    return next((lowered[c] for c in ROLE_CANDIDATES[role] if c in lowered), None)


def _check_roles(config: Config, kind: str, schema: dict[str, str], origin: str) -> str:
    """Check the columns the log needs are there; return the id column."""
    required = ("id", "timestamp") if kind == "predictions" else ("id", "target")
    found: dict[str, str] = {}
    for role in required:
        column = _role_column(config, role, schema)
        if column is None:
            raise IngestError(f"{origin}: no {role} column (tried "
                              f"{', '.join(ROLE_CANDIDATES[role])}); name it with [columns] {role} "
                              f"in {config.path or 'the config'}")
        if column not in schema:
            raise IngestError(f"{origin}: no column {column!r}, which [columns] {role} names in "
                              f"{config.path or 'the config'}")
        found[role] = column
    if kind == "predictions":
        declared_columns = [(f"[columns] {role}", getattr(config.columns, role))
                            for role in PREDICTION_ROLES if getattr(config.columns, role)]
        declared_columns += [("[columns] features", name) for name in config.columns.features or ()]
        for key, column in declared_columns:
            if column not in schema:
                raise IngestError(f"{origin}: no column {column!r}, which {key} names in "
                                  f"{config.path or 'the config'}")
    return found["id"]


def _compare_schema(item: _Input, schema: dict[str, str]) -> None:
    """Missing or extra columns and incompatible types refuse the file; note the casts needed."""
    missing = [name for name in schema if name not in item.types]
    if missing:
        raise IngestError(f"{item.path}: column {missing[0]!r} is missing; the store's columns are "
                          f"{_preview(schema)}")
    extra = [name for name in item.types if name not in schema]
    if extra:
        raise IngestError(f"{item.path}: column {extra[0]!r} is not in the store (its columns are "
                          f"fixed by the first ingest: {_preview(schema)})")
    for name, store_type in schema.items():
        file_type = item.types[name]
        if file_type == store_type:
            continue
        if not _castable(store_type):
            raise _type_error(item.path, name, store_type, file_type)
        # Whether anything but a widening is acceptable depends on the values: see _scan.
        item.casts.add(name)


def conversion(file_type: str, store_type: str) -> str:
    """How a file's column of ``file_type`` can join a store column of ``store_type``.

    ``"same"``; ``"widening"`` (every value converts exactly); ``"checked"`` (converts exactly
    only for some values: DuckDB checks this file's); ``"if empty"`` (only an all-null column).
    """
    source, target = file_type.upper(), store_type.upper()
    if source == target:
        return "same"
    if _widens(source, target):
        return "widening"
    both_numeric = sql.is_numeric_type(source) and sql.is_numeric_type(target)
    both_naive_times = source in _NAIVE_TIMES and target in _NAIVE_TIMES
    text_to_time = source == "VARCHAR" and target in _TEXT_TIME_TARGETS
    if (both_numeric or both_naive_times) and _castable(source) or text_to_time:
        return "checked"
    return "if empty"


def _widens(source: str, target: str) -> bool:
    source_bits = _SIGNED_BITS.get(source) or _UNSIGNED_BITS.get(source)
    if source_bits:
        if target in _SIGNED_BITS:
            signed_source = source in _SIGNED_BITS
            return _SIGNED_BITS[target] >= source_bits if signed_source else \
                _SIGNED_BITS[target] > source_bits
        if target in _UNSIGNED_BITS:
            return source in _UNSIGNED_BITS and _UNSIGNED_BITS[target] >= source_bits
        if target in _EXACT_INTEGER_BITS:
            return source_bits <= _EXACT_INTEGER_BITS[target]
        decimal = _DECIMAL.fullmatch(target)
        if decimal:
            integer_digits = int(decimal.group(1)) - int(decimal.group(2))
            return integer_digits >= len(str(2 ** source_bits))
        return False
    if (source, target) == ("FLOAT", "DOUBLE"):
        return True
    source_decimal, target_decimal = _DECIMAL.fullmatch(source), _DECIMAL.fullmatch(target)
    if source_decimal and target_decimal:
        (p1, s1), (p2, s2) = map(int, source_decimal.groups()), map(int, target_decimal.groups())
        return s2 >= s1 and p2 - s2 >= p1 - s1
    return (source, target) in _TIME_WIDENINGS


def _castable(duck_type: str) -> bool:
    try:
        sql.type_name(duck_type)
    except ValueError:
        return False
    return True


def _type_error(path: str, column: str, store_type: str, file_type: str, detail: str = "") -> IngestError:
    return IngestError(f"{path}: column {column!r}: store has {store_type}, file has {file_type}"
                       f"{detail}")


def _preview(names, limit: int = 12) -> str:
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


# ---------------------------------------------------------------- checking the values

def _scan(con: duckdb.DuckDBPyConnection, item: _Input, schema: dict[str, str], id_column: str) -> None:
    """One pass over the file: row count, null ids, and whether each needed cast loses nothing."""
    checked = [name for name in sorted(item.casts)
               if conversion(item.types[name], schema[name]) != "widening"]
    columns = [Fragment("count(*)"),
               sql.render("count(*) FILTER (WHERE {id} IS NULL)", id=Ident(id_column))]
    columns += [_loss_count(name, item.types[name], schema[name]) for name in checked]
    query = sql.render("SELECT {columns} FROM {view}", columns=sql.join(columns), view=item.view)
    try:
        rows, null_ids, *problems = con.execute(query.text, list(query.params)).fetchone()
    except duckdb.Error as exc:
        raise IngestError(f"{item.path}: cannot be read: {_first_line(exc)}") from None
    if rows == 0:
        raise IngestError(f"{item.path}: has no rows; nothing to ingest")
    if null_ids:
        raise IngestError(f"{item.path}: column {id_column!r} (the id) is empty in {null_ids} of "
                          f"{rows} rows; every row needs an id")
    for name, problem in zip(checked, problems):
        if problem:
            file_type, store_type = item.types[name], schema[name]
            detail = (f", and {problem} value(s) would not convert exactly"
                      if conversion(file_type, store_type) == "checked" else "")
            raise _type_error(item.path, name, store_type, file_type, detail)
    item.rows = int(rows)


def _loss_count(name: str, file_type: str, store_type: str) -> Fragment:
    """How many values the conversion would change (for "if empty" pairs: how many are not null)."""
    col = Ident(name)
    if conversion(file_type, store_type) != "checked":
        return sql.render("count({c})", c=col)
    if file_type.upper() == "VARCHAR":
        return sql.render("count(*) FILTER (WHERE {c} IS NOT NULL AND TRY_CAST({c} AS TIMESTAMPTZ) "
                          "IS NULL)", c=col)
    changed = sql.render(
        "{c} IS NOT NULL AND TRY_CAST(TRY_CAST({c} AS {store}) AS {file}) IS DISTINCT FROM {c}",
        c=col, store=sql.type_name(store_type), file=sql.type_name(file_type))
    return sql.render("count(*) FILTER (WHERE {changed})", changed=changed)


_BATCH_IDS = "SELECT {id} AS __id, {index} AS __file FROM {view}"
# The batch's ids are read once (a CSV is parsed once) into a small table: id, first and last file.
_COLLECT_IDS = (
    "CREATE OR REPLACE TEMP TABLE {ids} AS SELECT __id, min(__file) AS __first, "
    "max(__file) AS __last, count(*) AS __n FROM ({batch}) GROUP BY __id"
)
_REPEATED_IN_BATCH = (
    "SELECT __id, __first, __last, count(*) OVER () FROM {ids} WHERE __n > 1 "
    "ORDER BY __first, __id LIMIT {limit}"
)
_ALREADY_STORED = (
    "SELECT b.__id, b.__first, count(*) OVER () FROM {ids} AS b "
    "SEMI JOIN (SELECT {id} AS __id FROM read_parquet({parts})) AS s ON b.__id = s.__id "
    "ORDER BY b.__first, b.__id LIMIT {limit}"
)


def _check_unique_ids(con: duckdb.DuckDBPyConnection, inputs: list[_Input], parts: list[Path],
                      id_column: str, store: Path) -> None:
    """Refuse ids repeated within the batch or already in the store (only the id column is read)."""
    ids = Ident("__batch_ids")
    batch = sql.join((sql.render(_BATCH_IDS, id=Ident(id_column), index=index, view=item.view)
                      for index, item in enumerate(inputs)), " UNION ALL ")
    try:
        con.execute(*_args(sql.render(_COLLECT_IDS, ids=ids, batch=batch)))
        repeated = con.execute(*_args(sql.render(_REPEATED_IN_BATCH, ids=ids,
                                                 limit=SHOWN_DUPLICATES))).fetchall()
        stored = con.execute(*_args(sql.render(
            _ALREADY_STORED, ids=ids, id=Ident(id_column),
            parts=sql.param([str(p) for p in parts]), limit=SHOWN_DUPLICATES))).fetchall() \
            if parts and not repeated else []
    except duckdb.Error as exc:
        raise IngestError(f"cannot compare the ids in column {id_column!r} with the store {store}: "
                          f"{_first_line(exc)}") from None
    if repeated:
        first, last = inputs[repeated[0][1]].path, inputs[repeated[0][2]].path
        where = first if first == last else f"{first} and {last}"
        raise IngestError(f"{where}: duplicate ids in column {id_column!r} ({repeated[0][3]} in "
                          f"all): {_ids(repeated)}; ids must be unique")
    if stored:
        raise IngestError(f"{inputs[stored[0][1]].path}: duplicate ids in column {id_column!r}, "
                          f"already in the store {store} ({stored[0][2]} in all): {_ids(stored)}")


def _args(query: Fragment) -> tuple[str, list]:
    return query.text, list(query.params)


def _ids(rows: list[tuple]) -> str:
    return ", ".join(repr(row[0]) if isinstance(row[0], str) else str(row[0]) for row in rows)


# ---------------------------------------------------------------- writing

def _new_part_names(parts: list[Path], count: int) -> list[str]:
    """Names that sort after every existing part, even if the clock went backwards."""
    moment = datetime.now(timezone.utc).replace(tzinfo=None)
    stamps = [PART_PATTERN.fullmatch(p.name) for p in parts]
    latest = max((datetime.strptime(m.group(1), PART_TIME_FORMAT) for m in stamps if m), default=None)
    if latest is not None and moment <= latest:
        moment = latest + timedelta(microseconds=1)
    names = []
    for offset in range(count):
        stamp = (moment + timedelta(microseconds=offset)).strftime(PART_TIME_FORMAT)
        names.append(f"part-{stamp}-{uuid.uuid4().hex[:8]}.parquet")
    return names


_PART_SELECT = "SELECT {columns} FROM {view}"
_CAST_COLUMN = "CAST({c} AS {type}) AS {c}"
_ZONED_TO_NAIVE = "timezone('UTC', {c}) AS {c}"
_TEXT_TO_NAIVE = "timezone('UTC', CAST({c} AS TIMESTAMPTZ)) AS {c}"
_NAIVE_TO_ZONED = "timezone('UTC', CAST({c} AS TIMESTAMP)) AS {c}"
_COPY = "COPY ({query}) TO {path} (FORMAT parquet, COMPRESSION snappy)"


def _part_query(item: _Input, schema: dict[str, str]) -> Fragment:
    """The file's rows with the store's column order and types."""
    columns = [_cast(name, item.types[name], duck_type) if name in item.casts
               else sql.render("{c}", c=Ident(name)) for name, duck_type in schema.items()]
    return sql.render(_PART_SELECT, columns=sql.join(columns), view=item.view)


def _cast(name: str, file_type: str, store_type: str) -> Fragment:
    """The column converted to the store's type; times go through UTC explicitly.

    ``timezone('UTC', ...)`` rather than a CAST between zoned and naive times: DuckDB 2.0 pushes
    such a CAST into the CSV reader, which then drops the UTC offset.
    """
    source, target = file_type.upper(), store_type.upper()
    if target == "TIMESTAMP" and source in (_ZONED, "VARCHAR"):
        template = _ZONED_TO_NAIVE if source == _ZONED else _TEXT_TO_NAIVE
    elif target == _ZONED and source in _NAIVE_TIMES:
        template = _NAIVE_TO_ZONED
    else:
        return sql.render(_CAST_COLUMN, c=Ident(name), type=sql.type_name(store_type))
    return sql.render(template, c=Ident(name))


def _write_part(con: duckdb.DuckDBPyConnection, query: Fragment, destination: Path) -> None:
    """Write one Parquet file and flush it to disk."""
    copy = sql.render(_COPY, query=query, path=sql.string_literal(str(destination)))
    con.execute(copy.text, list(copy.params))
    with open(destination, "rb") as handle:
        os.fsync(handle.fileno())


def _write_parts(con: duckdb.DuckDBPyConnection, store: Path, inputs: list[_Input],
                 schema: dict[str, str], names: list[str]) -> None:
    """Write every part under a temporary name, then rename them all; undo everything on failure."""
    created = _missing_folders(store)
    temporary: list[Path] = []
    renamed: list[Path] = []
    try:
        store.mkdir(parents=True, exist_ok=True)
        for item, name in zip(inputs, names):
            temporary.append(store / f".{name}.tmp")
            try:
                _write_part(con, _part_query(item, schema), temporary[-1])
            except duckdb.Error as exc:
                raise IngestError(f"{item.path}: cannot be converted to the store's schema: "
                                  f"{_first_line(exc)}") from None
        for temp, name in zip(temporary, names):
            os.replace(temp, store / name)
            renamed.append(store / name)
        _fsync_folder(store)
    except BaseException as exc:
        for path in temporary + renamed:
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
        for folder in created:
            with contextlib.suppress(OSError):
                folder.rmdir()
        if isinstance(exc, OSError):
            raise IngestError(f"cannot write to the store {store}: {exc.strerror or exc}") from None
        raise


def _missing_folders(store: Path) -> list[Path]:
    """The folders ``mkdir(parents=True)`` would create, deepest first."""
    missing = []
    folder = store
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    return missing


def _fsync_folder(folder: Path) -> None:
    """Make the renames durable (directory entries are data too)."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)
