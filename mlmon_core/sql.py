"""The one place SQL text is assembled.

Two rules hold everywhere: identifiers are always quoted (``ident``), values are always bound as
parameters (``Fragment`` carries its parameters beside its text). Analysis modules write their
queries as constant templates and fill them with ``render``, which accepts only quoted identifiers,
fragments made here, and numbers, so no user value can reach SQL text.

Segment filters are data (``Condition``): parsed from the text form used on the command line and in
URLs (``AGEP >= 60 and SCHL in (21, 22) and MIL is null``), or from JSON, and compiled to
``(sql, params, human text)`` against the log's schema.
"""

from __future__ import annotations

import math
import re
import string
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Iterable, Mapping, Sequence

from mlmon_core.config import Window, parse_moment
from mlmon_core.errors import ConfigError, FilterError

OPS = ("==", "!=", "<", "<=", ">", ">=", "in", "not_in", "between", "is_null", "not_null")
_OP_SYMBOL = {"==": "=", "!=": "<>", "<": "<", "<=": "<=", ">": ">", ">=": ">="}
_OP_WORDS = {"==": "=", "!=": "≠", "<": "<", "<=": "≤", ">": ">", ">=": "≥"}


def ident(name: str) -> "Ident":
    """A quoted SQL identifier for a column, view or table name."""
    return Ident(name)


@dataclass(frozen=True)
class Ident:
    """An identifier that renders double-quoted, with embedded quotes doubled."""

    name: str

    @property
    def sql(self) -> str:
        if not isinstance(self.name, str) or "\x00" in self.name:
            raise FilterError(f"invalid identifier {self.name!r}")
        return '"' + self.name.replace('"', '""') + '"'


@dataclass(frozen=True)
class Fragment:
    """SQL text with its ``?`` parameters, in order."""

    text: str
    params: tuple[Any, ...] = ()

    def __and__(self, other: "Fragment") -> "Fragment":
        return conjunction([self, other])


TRUE = Fragment("TRUE")


def value_list(values: Sequence[Any]) -> Fragment:
    """``?, ?, ?`` bound to ``values`` (for IN lists and VALUES rows)."""
    if not values:
        raise FilterError("an 'in' list needs at least one value")
    return Fragment(", ".join("?" for _ in values), tuple(values))


def param(value: Any) -> Fragment:
    """One bound value."""
    return Fragment("?", (value,))


def string_literal(text: str) -> Fragment:
    """A quoted SQL string literal, for the few statements that cannot bind (ATTACH, COPY)."""
    if "\x00" in text:
        raise FilterError("a NUL character cannot appear in a path or name")
    return Fragment("'" + text.replace("'", "''") + "'")


def identifiers(names: Iterable[str]) -> Fragment:
    """A comma-separated list of quoted identifiers."""
    return Fragment(", ".join(Ident(n).sql for n in names))


def conjunction(parts: Iterable[Fragment]) -> Fragment:
    """``(a) AND (b) ...``; TRUE when empty."""
    parts = [p for p in parts if p is not None and p.text and p.text != "TRUE"]
    if not parts:
        return TRUE
    text = " AND ".join(f"({p.text})" for p in parts)
    return Fragment(text, tuple(v for p in parts for v in p.params))


def join(parts: Iterable[Fragment], separator: str = ", ") -> Fragment:
    """Join fragments with a constant separator."""
    parts = list(parts)
    return Fragment(separator.join(p.text for p in parts), tuple(v for p in parts for v in p.params))


def render(template: str, **parts: Any) -> Fragment:
    """Fill ``{name}`` fields of a constant template with identifiers, fragments or numbers.

    Strings are refused on purpose: a column name must come as ``ident(name)`` and a value as
    ``param(value)``. Parameters are collected in the order their fields appear in the template.
    """
    text: list[str] = []
    params: list[Any] = []
    for literal, field_name, spec, conversion in string.Formatter().parse(template):
        text.append(literal)
        if field_name is None:
            continue
        if spec or conversion:
            raise ValueError(f"format specs are not supported in SQL templates ({field_name})")
        if field_name not in parts:
            raise KeyError(f"SQL template needs {{{field_name}}}")
        part = parts[field_name]
        if isinstance(part, Ident):
            text.append(part.sql)
        elif isinstance(part, Fragment):
            text.append(part.text)
            params.extend(part.params)
        elif isinstance(part, bool) or not isinstance(part, (int, float)):
            raise TypeError(
                f"SQL template field {{{field_name}}} got {type(part).__name__}; "
                "use ident(...) for names and param(...) for values"
            )
        elif isinstance(part, float) and not math.isfinite(part):
            raise ValueError(f"SQL template field {{{field_name}}} is not finite")
        else:
            text.append(repr(part))
    return Fragment("".join(text), tuple(params))


# ---------------------------------------------------------------- windows

def parse_window(text: str | None, what: str = "window") -> Window:
    """Parse ``START..END`` (half-open; either side may be empty) into a ``Window``."""
    if text is None or not str(text).strip():
        return Window(None, None)
    raw = str(text).strip()
    if ".." not in raw:
        raise FilterError(
            f"{what} {raw!r}: expected START..END such as 2024-01-01..2024-02-01 (end excluded)"
        )
    start_text, end_text = raw.split("..", 1)
    try:
        start = parse_moment(start_text, what) if start_text.strip() else None
        end = parse_moment(end_text, what) if end_text.strip() else None
    except ConfigError as exc:
        raise FilterError(str(exc)) from None
    if start and end and start >= end:
        raise FilterError(f"{what} {raw!r}: the start must be before the end")
    return Window(start, end)


def window_condition(timestamp: str, window: Window | None) -> Fragment:
    """``timestamp >= ? AND timestamp < ?`` for the bounds that are set."""
    if window is None:
        return TRUE
    parts = []
    if window.start is not None:
        parts.append(Fragment(f"{Ident(timestamp).sql} >= ?", (window.start,)))
    if window.end is not None:
        parts.append(Fragment(f"{Ident(timestamp).sql} < ?", (window.end,)))
    return conjunction(parts)


# ---------------------------------------------------------------- conditions

@dataclass(frozen=True)
class Condition:
    """One filter condition on a column; a segment is a tuple of them, joined by AND."""

    column: str
    op: str
    value: Any = None
    values: tuple[Any, ...] | None = None
    low: Any = None
    high: Any = None

    def to_json(self) -> dict[str, Any]:
        """The JSON form shared by segment filters and reported slices."""
        out: dict[str, Any] = {"column": self.column, "op": self.op}
        if self.op in _OP_SYMBOL:
            out["value"] = _jsonable(self.value)
        elif self.op in ("in", "not_in"):
            out["values"] = [_jsonable(v) for v in self.values or ()]
        elif self.op == "between":
            out["low"], out["high"] = _jsonable(self.low), _jsonable(self.high)
        return out

    def describe(self) -> str:
        """Plain words: ``AGEP ≥ 60``, ``SCHL in (21, 22)``, ``MIL is missing``."""
        if self.op in _OP_WORDS:
            return f"{self.column} {_OP_WORDS[self.op]} {_show(self.value)}"
        if self.op in ("in", "not_in"):
            shown = ", ".join(_show(v) for v in self.values or ())
            word = "in" if self.op == "in" else "not in"
            if self.op == "in" and len(self.values or ()) == 1:
                return f"{self.column} = {shown}"
            return f"{self.column} {word} ({shown})"
        if self.op == "between":
            return f"{self.column} {_show(self.low)}–{_show(self.high)}"
        return f"{self.column} is missing" if self.op == "is_null" else f"{self.column} is present"

    def to_text(self) -> str:
        """The parseable text form (round-trips through ``parse_where``)."""
        col = self.column if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.column) else \
            '"' + self.column.replace('"', '""') + '"'
        if self.op in _OP_SYMBOL:
            return f"{col} {self.op} {_literal(self.value)}"
        if self.op in ("in", "not_in"):
            word = "in" if self.op == "in" else "not in"
            return f"{col} {word} ({', '.join(_literal(v) for v in self.values or ())})"
        if self.op == "between":
            return f"{col} between {_literal(self.low)} and {_literal(self.high)}"
        return f"{col} is null" if self.op == "is_null" else f"{col} is not null"


Segment = tuple[Condition, ...]


def _jsonable(value: Any) -> Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if hasattr(value, "item"):
        return value.item()
    return value


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    return str(value)


def _literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (datetime, date)):
        return "'" + value.isoformat() + "'"
    return "'" + str(value).replace("'", "''") + "'"


def condition_from_json(data: Mapping[str, Any]) -> Condition:
    """Validate one condition in its JSON form."""
    if not isinstance(data, Mapping):
        raise FilterError(f"a condition must be an object with column and op, got {data!r}")
    unknown = set(data) - {"column", "op", "value", "values", "low", "high"}
    if unknown:
        raise FilterError(f"unknown key(s) {sorted(unknown)} in condition {dict(data)!r}")
    column, op = data.get("column"), data.get("op")
    if not isinstance(column, str) or not column:
        raise FilterError(f"condition {dict(data)!r} needs a column name")
    op = {"=": "==", "<>": "!="}.get(op, op)
    if op not in OPS:
        raise FilterError(f"condition on {column!r}: op {op!r} is not one of {', '.join(OPS)}")
    if op in _OP_SYMBOL:
        if "value" not in data or data["value"] is None:
            raise FilterError(f"condition {column} {op} needs a value (use is_null for missing)")
        return Condition(column, op, value=data["value"])
    if op in ("in", "not_in"):
        values = data.get("values")
        if not isinstance(values, (list, tuple)) or not values:
            raise FilterError(f"condition {column} {op} needs a non-empty list of values")
        return Condition(column, op, values=tuple(values))
    if op == "between":
        if data.get("low") is None or data.get("high") is None:
            raise FilterError(f"condition {column} between needs low and high")
        return Condition(column, op, low=data["low"], high=data["high"])
    return Condition(column, op)


def segment_from_json(items: Iterable[Mapping[str, Any]] | None) -> Segment:
    """A segment from its JSON list form."""
    return tuple(condition_from_json(item) for item in (items or ()))


def segment_to_json(segment: Segment) -> list[dict[str, Any]]:
    """The JSON list form of a segment."""
    return [c.to_json() for c in segment]


def describe_segment(segment: Segment) -> str:
    """``AGEP ≥ 60 and STATE = NY``; ``all rows`` when empty."""
    return " and ".join(c.describe() for c in segment) if segment else "all rows"


def segment_to_text(segment: Segment) -> str:
    """The parseable text form of a segment (used in URLs)."""
    return " and ".join(c.to_text() for c in segment)


# ---------------------------------------------------------------- text parser

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<number>[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?)(?![A-Za-z_])
      | '(?P<squote>(?:[^']|'')*)'
      | "(?P<dquote>(?:[^"]|"")*)"
      | `(?P<bquote>(?:[^`]|``)*)`
      | (?P<op>==|!=|<>|<=|>=|=|<|>)
      | (?P<punct>[(),])
      | (?P<word>[^\s'"`(),=!<>]+)
    )""",
    re.VERBOSE,
)


@dataclass
class _Token:
    kind: str
    text: str
    value: Any = None


def _tokenize(text: str) -> list[_Token]:
    tokens, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match or match.end() == pos:
            raise FilterError(f"cannot read filter {text!r} at position {pos}: {text[pos:pos + 20]!r}")
        pos = match.end()
        kind = match.lastgroup
        raw = match.group(kind)
        if kind == "number" and re.fullmatch(r"[-+]?0\d+", raw):
            # A leading zero means a code (zip 02134), not a number: keep the text; a numeric
            # column still gets the number (see _coerce).
            tokens.append(_Token("value", raw, raw))
        elif kind == "number":
            number = float(raw)
            tokens.append(_Token("value", raw, int(raw) if re.fullmatch(r"[-+]?\d+", raw) else number))
        elif kind == "squote":
            tokens.append(_Token("value", raw, raw.replace("''", "'")))
        elif kind in ("dquote", "bquote"):
            quote = '"' if kind == "dquote" else "`"
            tokens.append(_Token("name", raw, raw.replace(quote * 2, quote)))
        elif kind == "op":
            tokens.append(_Token("op", {"=": "==", "<>": "!="}.get(raw, raw)))
        elif kind == "punct":
            tokens.append(_Token(raw, raw))
        else:
            tokens.append(_Token("word", raw, raw))
    return tokens


@dataclass
class _Parser:
    tokens: list[_Token]
    source: str
    pos: int = 0

    def peek(self) -> _Token | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> _Token:
        token = self.peek()
        if token is None:
            raise FilterError(f"filter {self.source!r} ends too early")
        self.pos += 1
        return token

    def keyword(self, *words: str) -> bool:
        token = self.peek()
        if token and token.kind == "word" and token.text.lower() in words:
            self.pos += 1
            return True
        return False

    def expect_word(self, word: str) -> None:
        if not self.keyword(word):
            token = self.peek()
            raise FilterError(
                f"filter {self.source!r}: expected '{word}' but found "
                f"{token.text if token else 'the end'!r}"
            )

    def value(self) -> Any:
        token = self.take()
        if token.kind == "value":
            return token.value
        if token.kind == "word":
            lowered = token.text.lower()
            if lowered in ("true", "false"):
                return lowered == "true"
            if lowered == "null":
                raise FilterError(f"filter {self.source!r}: use 'is null' to test for missing values")
            return token.text
        if token.kind == "name":
            return token.value
        raise FilterError(f"filter {self.source!r}: expected a value, found {token.text!r}")

    def value_tuple(self) -> tuple[Any, ...]:
        if self.take().kind != "(":
            raise FilterError(f"filter {self.source!r}: 'in' needs a list such as (1, 2)")
        values = [self.value()]
        while True:
            token = self.take()
            if token.kind == ")":
                return tuple(values)
            if token.kind != ",":
                raise FilterError(f"filter {self.source!r}: expected ',' or ')' in a list")
            values.append(self.value())

    def condition(self) -> Condition:
        token = self.take()
        if token.kind not in ("word", "name"):
            raise FilterError(f"filter {self.source!r}: expected a column name, found {token.text!r}")
        column = token.value if token.kind == "name" else token.text
        nxt = self.peek()
        if nxt is not None and nxt.kind == "op":
            self.pos += 1
            return Condition(column, nxt.text, value=self.value())
        if self.keyword("is"):
            negated = self.keyword("not")
            self.expect_word("null")
            return Condition(column, "not_null" if negated else "is_null")
        if self.keyword("not"):
            self.expect_word("in")
            return Condition(column, "not_in", values=self.value_tuple())
        if self.keyword("in"):
            return Condition(column, "in", values=self.value_tuple())
        if self.keyword("between"):
            low = self.value()
            self.expect_word("and")
            return Condition(column, "between", low=low, high=self.value())
        found = nxt.text if nxt else "the end"
        raise FilterError(
            f"filter {self.source!r}: after column {column!r} expected an operator "
            f"(==, !=, <, <=, >, >=, in, not in, between, is null), found {found!r}"
        )


def parse_where(text: str | None) -> Segment:
    """Parse ``AGEP >= 60 and SCHL in (21, 22) and MIL is null`` into conditions."""
    if text is None or not text.strip():
        return ()
    parser = _Parser(_tokenize(text), text)
    conditions = [parser.condition()]
    while parser.peek() is not None:
        parser.expect_word("and")
        conditions.append(parser.condition())
    return tuple(conditions)


def parse_wheres(texts: Iterable[str] | None) -> Segment:
    """Several ``--where`` texts joined by AND."""
    return tuple(c for text in (texts or ()) for c in parse_where(text))


# ---------------------------------------------------------------- compiling

_NUMERIC = re.compile(r"^(TINYINT|SMALLINT|INTEGER|BIGINT|HUGEINT|UTINYINT|USMALLINT|UINTEGER|"
                      r"UBIGINT|UHUGEINT|FLOAT|DOUBLE|REAL|DECIMAL.*|INT\d*|NUMERIC.*)$")


def is_numeric_type(duck_type: str) -> bool:
    """Whether a DuckDB type name is numeric."""
    return bool(_NUMERIC.match(duck_type.upper()))


def is_temporal_type(duck_type: str) -> bool:
    """Whether a DuckDB type name is a date or timestamp."""
    upper = duck_type.upper()
    return upper.startswith("TIMESTAMP") or upper == "DATE"


_PLAIN_TYPE = re.compile(r"[A-Z][A-Z0-9_]*(?:\(\d+(?:, ?\d+)?\))?(?: WITH TIME ZONE)?")


def type_name(duck_type: str) -> Fragment:
    """A plain scalar DuckDB type (``BIGINT``, ``DECIMAL(10,2)``...) as SQL text, for ``CAST``.

    Nested types (STRUCT, LIST, MAP) are refused: their text can carry field names.
    """
    text = str(duck_type).strip().upper()
    if not _PLAIN_TYPE.fullmatch(text):
        raise ValueError(f"{duck_type!r} is not a plain DuckDB type name")
    return Fragment(text)


def _coerce(column: str, duck_type: str, value: Any) -> Any:
    upper = duck_type.upper()
    if is_numeric_type(upper):
        if isinstance(value, bool):
            return int(value)
        if isinstance(value, (int, float)):
            return value
        try:
            number = float(str(value))
        except ValueError:
            raise FilterError(f"column {column!r} is numeric; {value!r} is not a number") from None
        return int(number) if number.is_integer() and "." not in str(value) else number
    if upper == "BOOLEAN":
        if isinstance(value, bool):
            return value
        lowered = str(value).strip().lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise FilterError(f"column {column!r} is true/false; {value!r} is neither")
    if is_temporal_type(upper):
        if isinstance(value, datetime):
            return value
        try:
            return parse_moment(str(value), f"column {column!r}")
        except ConfigError as exc:
            raise FilterError(str(exc)) from None
    return value if isinstance(value, str) else str(value)


def check_column(column: str, column_types: Mapping[str, str]) -> str:
    """The column's DuckDB type; ``FilterError`` naming the column when it does not exist."""
    if column not in column_types:
        close = [c for c in column_types if c.lower() == str(column).lower()]
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise FilterError(f"unknown column {column!r} in filter{hint}")
    return column_types[column]


def compile_condition(condition: Condition, column_types: Mapping[str, str]) -> Fragment:
    """One condition as SQL with bound, type-coerced values."""
    duck_type = check_column(condition.column, column_types)
    col = Ident(condition.column).sql
    op = condition.op
    if op in _OP_SYMBOL:
        return Fragment(f"{col} {_OP_SYMBOL[op]} ?", (_coerce(condition.column, duck_type, condition.value),))
    if op in ("in", "not_in"):
        values = tuple(_coerce(condition.column, duck_type, v) for v in condition.values or ())
        word = "IN" if op == "in" else "NOT IN"
        return Fragment(f"{col} {word} ({value_list(values).text})", values)
    if op == "between":
        low = _coerce(condition.column, duck_type, condition.low)
        high = _coerce(condition.column, duck_type, condition.high)
        return Fragment(f"{col} BETWEEN ? AND ?", (low, high))
    if op == "is_null":
        return Fragment(f"{col} IS NULL")
    if op == "not_null":
        return Fragment(f"{col} IS NOT NULL")
    raise FilterError(f"unknown op {op!r} on column {condition.column!r}")


@dataclass(frozen=True)
class CompiledFilter:
    """A segment as SQL, its parameters and the sentence people read."""

    sql: str
    params: tuple[Any, ...]
    text: str
    fragment: Fragment = field(repr=False, default=TRUE)


def compile_segment(segment: Segment | None, column_types: Mapping[str, str]) -> CompiledFilter:
    """Compile a segment against the schema: ``(sql, params, human text)``."""
    fragment = conjunction(compile_condition(c, column_types) for c in (segment or ()))
    return CompiledFilter(fragment.text, fragment.params, describe_segment(tuple(segment or ())), fragment)
