"""sql.py: the filter language, its compilation to bound SQL, identifiers, templates and windows."""

from __future__ import annotations

import json
import re
from datetime import datetime

import duckdb
import pytest

from mlmon_core import sql
from mlmon_core.config import Window
from mlmon_core.errors import FilterError
from mlmon_core.sql import Condition, Fragment, Ident

HOSTILE = "x'; DROP TABLE t; --"
TYPES = {"AGEP": "BIGINT", "SCHL": "INTEGER", "MIL": "DOUBLE", "x": "VARCHAR", "s": "VARCHAR",
         "age": "DOUBLE", "home state": "VARCHAR", "flag": "BOOLEAN", "when": "TIMESTAMP",
         "zip": "VARCHAR", "name": "VARCHAR"}


# ---------------------------------------------------------------- parsing

@pytest.mark.parametrize(("text", "expected"), [
    ("AGEP >= 60", Condition("AGEP", ">=", value=60)),
    ("AGEP > 60", Condition("AGEP", ">", value=60)),
    ("AGEP <= 60.5", Condition("AGEP", "<=", value=60.5)),
    ("AGEP < -1e3", Condition("AGEP", "<", value=-1000.0)),
    ("AGEP == 60", Condition("AGEP", "==", value=60)),
    ("AGEP = 60", Condition("AGEP", "==", value=60)),
    ("AGEP != 60", Condition("AGEP", "!=", value=60)),
    ("AGEP <> 60", Condition("AGEP", "!=", value=60)),
    ("AGEP>=60", Condition("AGEP", ">=", value=60)),
    ("SCHL in (21, 22)", Condition("SCHL", "in", values=(21, 22))),
    ("SCHL IN (21)", Condition("SCHL", "in", values=(21,))),
    ("MIL is null", Condition("MIL", "is_null")),
    ("MIL IS NULL", Condition("MIL", "is_null")),
    ("x is not null", Condition("x", "not_null")),
    ("s not in ('a','b')", Condition("s", "not_in", values=("a", "b"))),
    ("age between 30 and 40", Condition("age", "between", low=30, high=40)),
    ("age BETWEEN 30.5 AND 40", Condition("age", "between", low=30.5, high=40)),
    ('"home state" == \'NY\'', Condition("home state", "==", value="NY")),
    ("`home state` == 'NY'", Condition("home state", "==", value="NY")),
    ('"say ""hi""" == 1', Condition('say "hi"', "==", value=1)),
    ("name == 'O''Brien'", Condition("name", "==", value="O'Brien")),
    ("s == West", Condition("s", "==", value="West")),
    ("flag == true", Condition("flag", "==", value=True)),
    ("zip == 02134", Condition("zip", "==", value="02134")),
])
def test_parse_where_each_op(text, expected):
    assert sql.parse_where(text) == (expected,)


def test_conditions_join_with_and():
    segment = sql.parse_where("AGEP >= 60 and SCHL in (21, 22) AND MIL is null and x is not null")
    assert segment == (Condition("AGEP", ">=", value=60), Condition("SCHL", "in", values=(21, 22)),
                       Condition("MIL", "is_null"), Condition("x", "not_null"))
    assert sql.parse_wheres(["AGEP >= 60", "MIL is null"]) == segment[:1] + segment[2:3]
    assert sql.parse_where("") == () and sql.parse_where(None) == () and sql.parse_where("  ") == ()


@pytest.mark.parametrize(("text", "message"), [
    ("AGEP >=", "ends too early"),
    ("AGEP 60", "expected an operator"),
    ("AGEP == 1 or MIL == 2", "expected 'and' but found 'or'"),
    ("SCHL in 21", "'in' needs a list"),
    ("SCHL in ()", "expected a value"),
    ("SCHL in (1 2)", "expected ',' or ')'"),
    ("MIL == null", "use 'is null'"),
    ("x is nothing", "expected 'null'"),
    ("age between 1 or 2", "expected 'and'"),
    ("name == 'unterminated", "cannot read filter"),
    ("== 3", "expected a column name"),
])
def test_parse_errors_are_filter_errors(text, message):
    with pytest.raises(FilterError, match=re.escape(message)):
        sql.parse_where(text)


ROUND_TRIPS = [
    "AGEP >= 60 and SCHL in (21, 22) and MIL is null",
    "x is not null and s not in ('a', 'b')",
    "age between 30 and 40.5",
    "\"home state\" == 'NY' and \"say \"\"hi\"\"\" != 'it''s'",
    "AGEP != -3 and AGEP < 1e+20 and flag == false",
    "and == 1 and is is null and not in (2)",  # keywords as column names
    "\"2nd feature\" <= 0.25",
]


@pytest.mark.parametrize("text", ROUND_TRIPS)
def test_text_round_trip(text):
    segment = sql.parse_where(text)
    rendered = sql.segment_to_text(segment)
    assert rendered == text
    assert sql.parse_where(rendered) == segment


@pytest.mark.parametrize("text", ROUND_TRIPS)
def test_json_round_trip(text):
    segment = sql.parse_where(text)
    payload = json.loads(json.dumps(sql.segment_to_json(segment)))
    assert sql.segment_from_json(payload) == segment
    assert sql.segment_to_json(sql.segment_from_json(payload)) == payload


def test_json_form_of_each_op():
    segment = sql.parse_where("AGEP >= 60 and SCHL in (21, 22) and age between 1 and 2 and MIL is null")
    assert sql.segment_to_json(segment) == [
        {"column": "AGEP", "op": ">=", "value": 60},
        {"column": "SCHL", "op": "in", "values": [21, 22]},
        {"column": "age", "op": "between", "low": 1, "high": 2},
        {"column": "MIL", "op": "is_null"},
    ]
    assert sql.condition_from_json({"column": "a", "op": "=", "value": 1}) == Condition("a", "==", value=1)
    assert sql.condition_from_json({"column": "a", "op": "<>", "value": 1}) == Condition("a", "!=", value=1)


@pytest.mark.parametrize(("data", "message"), [
    ({"column": "a", "op": "like", "value": 1}, "is not one of"),
    ({"column": "a", "op": "==", "value": 1, "extra": 2}, "unknown key"),
    ({"op": "=="}, "needs a column name"),
    ({"column": "a", "op": "=="}, "needs a value"),
    ({"column": "a", "op": "in", "values": []}, "non-empty list"),
    ({"column": "a", "op": "between", "low": 1}, "needs low and high"),
    ("a == 1", "must be an object"),
])
def test_bad_json_conditions(data, message):
    with pytest.raises(FilterError, match=re.escape(message)):
        sql.condition_from_json(data)


def test_describe_in_plain_words():
    segment = sql.parse_where("AGEP >= 60 and s in ('NY') and SCHL in (21, 22) and age between 30 and 40 "
                              "and MIL is null and x is not null and AGEP != 3")
    assert sql.describe_segment(segment) == (
        "AGEP ≥ 60 and s = NY and SCHL in (21, 22) and age 30–40 and MIL is missing "
        "and x is present and AGEP ≠ 3")
    assert sql.describe_segment(()) == "all rows"


# ---------------------------------------------------------------- compiling

def test_compile_segment_binds_every_value():
    compiled = sql.compile_segment(
        sql.parse_where("AGEP >= 60 and SCHL in (21, 22) and MIL is null and s not in ('a', 'b') "
                        "and age between 30 and 40 and \"home state\" != 'NY'"), TYPES)
    assert compiled.sql == ('("AGEP" >= ?) AND ("SCHL" IN (?, ?)) AND ("MIL" IS NULL) AND '
                            '("s" NOT IN (?, ?)) AND ("age" BETWEEN ? AND ?) AND ("home state" <> ?)')
    assert compiled.params == (60, 21, 22, "a", "b", 30, 40, "NY")
    assert compiled.text == ("AGEP ≥ 60 and SCHL in (21, 22) and MIL is missing and s not in (a, b) "
                             "and age 30–40 and home state ≠ NY")
    assert compiled.fragment == Fragment(compiled.sql, compiled.params)
    assert sql.compile_segment((), TYPES).sql == "TRUE"


@pytest.mark.parametrize(("text", "params"), [
    ("AGEP >= '60'", (60,)),
    ("AGEP >= '60.5'", (60.5,)),
    ("AGEP == '1e3'", (1000,)),
    ("AGEP == 02134", (2134,)),
    ("AGEP == true", (1,)),
    ("x == 21", ("21",)),
    ("zip in (02134, 10001)", ("02134", "10001")),
    ("flag == 'yes'", (True,)),
    ("flag != 0", (False,)),
    ("when >= '2024-01-31'", (datetime(2024, 1, 31),)),
    ("when < '2024-01-31T12:00:00+02:00'", (datetime(2024, 1, 31, 10),)),
])
def test_values_are_coerced_by_column_type(text, params):
    assert sql.compile_segment(sql.parse_where(text), TYPES).params == params


@pytest.mark.parametrize(("text", "message"), [
    ("AGEP >= 'sixty'", "column 'AGEP' is numeric; 'sixty' is not a number"),
    ("SCHL in (21, 'x')", "column 'SCHL' is numeric"),
    ("age between 1 and 'old'", "column 'age' is numeric"),
    ("flag == 'maybe'", "column 'flag' is true/false"),
    ("when >= 'yesterday'", "column 'when'"),
    ("nope == 1", "unknown column 'nope'"),
    ("agep == 1", "did you mean 'AGEP'"),
])
def test_bad_values_and_columns_name_the_column(text, message):
    with pytest.raises(FilterError, match=re.escape(message)):
        sql.compile_segment(sql.parse_where(text), TYPES)


@pytest.fixture
def con():
    """A real DuckDB table with awkward names and values."""
    connection = duckdb.connect()
    connection.execute('CREATE TABLE t (name VARCHAR, age INTEGER, "we""ird col" VARCHAR)')
    connection.execute("INSERT INTO t VALUES (?, 30, 'a'), ('bob', 40, 'b'), ('eve', NULL, 'c')",
                       [HOSTILE])
    return connection


def _count(con, segment) -> int:
    types = {row[0]: row[1] for row in con.execute("DESCRIBE t").fetchall()}
    query = sql.render("SELECT count(*) FROM {t} WHERE {where}", t=Ident("t"),
                       where=sql.compile_segment(segment, types).fragment)
    return con.execute(query.text, list(query.params)).fetchall()[0][0]


def test_hostile_value_is_bound_and_matches_literally(con):
    text = "name == " + "'" + HOSTILE.replace("'", "''") + "'"
    segment = sql.parse_where(text)
    assert segment == (Condition("name", "==", value=HOSTILE),)
    compiled = sql.compile_segment(segment, {"name": "VARCHAR"})
    assert HOSTILE not in compiled.sql and compiled.params == (HOSTILE,)
    assert _count(con, segment) == 1
    assert _count(con, (Condition("name", "in", values=(HOSTILE, "bob")),)) == 2
    assert _count(con, (Condition("name", "!=", value=HOSTILE),)) == 2
    assert con.execute("SELECT count(*) FROM t").fetchall() == [(3,)]  # the table is still there


def test_hostile_column_name_is_an_unknown_column(con):
    with pytest.raises(FilterError, match="unknown column"):
        _count(con, (Condition(HOSTILE, "==", value=1),))
    quoted = '"' + HOSTILE.replace('"', '""') + '" == 1'
    with pytest.raises(FilterError, match="unknown column"):
        _count(con, sql.parse_where(quoted))
    with pytest.raises(FilterError, match="cannot read filter"):
        sql.parse_where(HOSTILE + " == 1")
    assert con.execute("SELECT count(*) FROM t").fetchall() == [(3,)]


def test_identifiers_with_quotes_are_quoted(con):
    assert Ident('we"ird col').sql == '"we""ird col"'
    assert sql.ident("plain").sql == '"plain"'
    assert sql.identifiers(["a", 'b"c']).text == '"a", "b""c"'
    query = sql.render("SELECT {c} FROM {t} ORDER BY 1", c=Ident('we"ird col'), t=Ident("t"))
    assert con.execute(query.text).fetchall() == [("a",), ("b",), ("c",)]
    segment = sql.parse_where(Condition('we"ird col', "in", values=("b", "c")).to_text())
    assert _count(con, segment) == 2
    with pytest.raises(FilterError):
        Ident("nul\x00byte").sql


def test_comparisons_match_an_independent_count(con):
    rows = con.execute("SELECT name, age FROM t").fetchall()
    cases = {
        "age >= 35": lambda n, a: a is not None and a >= 35,
        "age < 35": lambda n, a: a is not None and a < 35,
        "age is null": lambda n, a: a is None,
        "age is not null and name != 'bob'": lambda n, a: a is not None and n != "bob",
        "age between 30 and 40": lambda n, a: a is not None and 30 <= a <= 40,
        "name not in ('bob')": lambda n, a: n != "bob",
    }
    for text, predicate in cases.items():
        assert _count(con, sql.parse_where(text)) == sum(predicate(n, a) for n, a in rows), text


# ---------------------------------------------------------------- templates

def test_render_fills_identifiers_fragments_and_numbers():
    query = sql.render("SELECT {c} FROM {t} WHERE {w} LIMIT {n} OFFSET {f}", c=Ident("a b"),
                       t=Ident("log"), w=sql.param("x") & sql.render("{c} IN ({v})", c=Ident("k"),
                                                                       v=sql.value_list([1, 2])),
                       n=10, f=2.5)
    assert query.text == 'SELECT "a b" FROM "log" WHERE (?) AND ("k" IN (?, ?)) LIMIT 10 OFFSET 2.5'
    assert query.params == ("x", 1, 2)


@pytest.mark.parametrize("bad", ["age", "1; DROP TABLE t", True, None, b"x", ["a"]])
def test_render_refuses_anything_but_idents_fragments_and_numbers(bad):
    with pytest.raises(TypeError, match="use ident"):
        sql.render("SELECT {x}", x=bad)


def test_render_refuses_non_finite_numbers_format_specs_and_missing_fields():
    with pytest.raises(ValueError):
        sql.render("SELECT {x}", x=float("inf"))
    with pytest.raises(ValueError):
        sql.render("SELECT {x:>10}", x=1)
    with pytest.raises(KeyError):
        sql.render("SELECT {x}")


def test_helpers_build_bound_fragments():
    assert sql.conjunction([]) == sql.TRUE
    assert sql.conjunction([sql.TRUE, Fragment("a = ?", (1,))]) == Fragment("(a = ?)", (1,))
    assert sql.join([Fragment("?", (1,)), Fragment("?", (2,))], " + ") == Fragment("? + ?", (1, 2))
    assert sql.string_literal("it's") == Fragment("'it''s'")
    with pytest.raises(FilterError):
        sql.value_list([])
    assert sql.type_name("decimal(10, 2)") == Fragment("DECIMAL(10, 2)")
    assert sql.type_name("TIMESTAMP WITH TIME ZONE").text == "TIMESTAMP WITH TIME ZONE"
    for nested in ('STRUCT("a" INTEGER)', "INTEGER[]", "BIGINT); DROP TABLE t; --"):
        with pytest.raises(ValueError):
            sql.type_name(nested)


def test_window_condition_is_half_open():
    window = Window(datetime(2024, 1, 1), datetime(2024, 2, 1))
    assert sql.window_condition("ts", window) == Fragment(
        '("ts" >= ?) AND ("ts" < ?)', (datetime(2024, 1, 1), datetime(2024, 2, 1)))
    assert sql.window_condition("ts", Window(None, datetime(2024, 2, 1))).params == (datetime(2024, 2, 1),)
    assert sql.window_condition("ts", None) == sql.TRUE
    assert sql.window_condition("ts", Window(None, None)) == sql.TRUE


# ---------------------------------------------------------------- windows

@pytest.mark.parametrize(("text", "start", "end"), [
    ("2024-01-01..2024-02-01", datetime(2024, 1, 1), datetime(2024, 2, 1)),
    ("..2024-02-01", None, datetime(2024, 2, 1)),
    ("2024-01-01..", datetime(2024, 1, 1), None),
    (" 2024-01-01 .. 2024-01-02 ", datetime(2024, 1, 1), datetime(2024, 1, 2)),
    ("2024-01-01T06:30..2024-01-01T18:00:00", datetime(2024, 1, 1, 6, 30), datetime(2024, 1, 1, 18)),
    ("2024-01-01T00:00:00.5..2024-01-02", datetime(2024, 1, 1, 0, 0, 0, 500000), datetime(2024, 1, 2)),
    ("2024-01-01T02:00+02:00..2024-01-02T00:00Z", datetime(2024, 1, 1), datetime(2024, 1, 2)),
    ("", None, None),
    (None, None, None),
])
def test_parse_window_forms(text, start, end):
    assert sql.parse_window(text) == Window(start, end)


@pytest.mark.parametrize(("text", "message"), [
    ("2024-01-01", "expected START..END"),
    ("last week", "expected START..END"),
    ("yesterday..today", "is not a date"),
    ("2024-13-01..2024-14-01", "is not a date"),
    ("2024-02-01..2024-01-01", "the start must be before the end"),
    ("2024-01-01..2024-01-01", "the start must be before the end"),
])
def test_bad_windows_are_filter_errors(text, message):
    with pytest.raises(FilterError, match=re.escape(message)):
        sql.parse_window(text, "--window")


def test_window_text_round_trip():
    for text in ("2024-01-01..2024-02-01", "..2024-02-01", "2024-01-01T06:30:00..", ".."):
        assert str(sql.parse_window(text)) == text
    assert sql.parse_window(str(Window(datetime(2024, 1, 1, 6, 30), None))) == \
        Window(datetime(2024, 1, 1, 6, 30), None)
