"""Data quality of a window against the reference window: is the data itself broken?

Checks, each a finding with a severity ("high", "medium", "low") and a sentence in plain words:

* volume — rows in the window against the expected count, the reference's rows per day times the
  window's days (an open window bound is taken at the log's first/last timestamp). High below
  50 % or above 200 % of the expectation, medium below 80 % or above 125 %.
* missing — a column's missing share against the reference's. High when every row is missing
  (and the reference was not) or the share rose by ≥ 20 points, medium by ≥ 5 points, low by ≥ 1
  point when it also at least doubled.
* unlabeled — the same rise for the target, always low: labels arriving late are the normal case
  (metrics use the labeled rows; the Overview and the report show label coverage).
* new_category — categorical/boolean columns: values never seen in the reference. Severity by the
  share of window rows holding them: high ≥ 5 %, medium ≥ 1 %, else low.
* out_of_range — numerical columns: share of finite values outside the reference's [min, max].
  High ≥ 5 %, medium ≥ 1 %, low ≥ 0.1 % (below that, continuous data routinely grazes the edges).
* type — text columns whose reference values parse as numbers (≥ 99 % of them): share of window
  values that do not. High ≥ 5 %, medium ≥ 1 %, else low.
* non_finite — floating columns: share of NaN/±infinity among present values, when above the
  reference's. High ≥ 5 %, medium ≥ 1 %, else low.
* constant / almost_constant — features, prediction, score and target holding a single value (or
  one value in ≥ 99 % of rows). High (constant) / medium (almost) when the reference varied, low
  when it was already so.
* duplicate_id — rows whose id appears more than once in the window. High when the extra rows are
  ≥ 1 % of the window, medium ≥ 0.1 %, else low.

Everything is aggregated in DuckDB over all rows (three or four queries whatever the column
count); an empty window yields a single high finding and per-column shares of None.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from mlmon_core import sql, windows
from mlmon_core.config import Window
from mlmon_core.sql import Fragment, Ident, Segment

SEVERITIES = ("high", "medium", "low")
VOLUME_HIGH, VOLUME_MEDIUM = (0.5, 2.0), (0.8, 1.25)
MISSING_HIGH, MISSING_MEDIUM, MISSING_LOW = 0.20, 0.05, 0.01
SHARE_HIGH, SHARE_MEDIUM = 0.05, 0.01
OUT_OF_RANGE_LOW = 0.001
NUMERIC_LOOKING = 0.99
ALMOST_CONSTANT = 0.99
DUPLICATE_HIGH, DUPLICATE_MEDIUM = 0.01, 0.001
SHOWN_CATEGORIES = 5
FLOAT_TYPES = ("FLOAT", "DOUBLE", "REAL")
CONSTANT_ROLES = ("feature", "prediction", "score", "target")


@dataclass
class Finding:
    """One problem found, in plain words."""

    check: str
    column: str | None
    severity: str
    message: str
    value: float | None = None

    def to_json(self) -> dict[str, Any]:
        """Plain form."""
        return {"check": self.check, "column": self.column, "severity": self.severity,
                "message": self.message, "value": self.value}


@dataclass
class ColumnQuality:
    """Per-column measurements in the window (and the reference where it matters)."""

    column: str
    role: str
    kind: str
    missing_share: float | None = None
    reference_missing_share: float | None = None
    new_categories: list | None = None
    new_category_share: float | None = None
    out_of_range_share: float | None = None
    reference_range: tuple[float, float] | None = None
    parse_failure_share: float | None = None
    non_finite_share: float | None = None
    top_share: float | None = None
    reference_top_share: float | None = None
    constant: bool | None = None

    def to_json(self) -> dict[str, Any]:
        """Plain form for ``mlmon quality --json``."""
        return {
            "column": self.column, "role": self.role, "kind": self.kind,
            "missing_share": self.missing_share,
            "reference_missing_share": self.reference_missing_share,
            "new_categories": self.new_categories, "new_category_share": self.new_category_share,
            "out_of_range_share": self.out_of_range_share,
            "reference_range": list(self.reference_range) if self.reference_range else None,
            "parse_failure_share": self.parse_failure_share,
            "non_finite_share": self.non_finite_share, "top_share": self.top_share,
            "constant": self.constant,
        }


@dataclass
class QualityResult:
    """All checks of one window against the reference."""

    window: Window
    reference: Window
    segment: Segment
    rows: int
    reference_rows: int
    expected_rows: float | None
    columns: list[ColumnQuality]
    findings: list[Finding] = field(default_factory=list)
    expected_rows_method: str = ""

    def finding(self, check: str, column: str | None = None) -> Finding | None:
        """The first finding of a check (on a column), or None."""
        return next((f for f in self.findings
                     if f.check == check and (column is None or f.column == column)), None)

    def to_json(self) -> dict[str, Any]:
        """The ``mlmon quality --json`` object."""
        return {
            "window": self.window.to_json(), "reference": self.reference.to_json(),
            "segment": sql.segment_to_json(self.segment),
            "segment_text": sql.describe_segment(self.segment),
            "rows": self.rows, "reference_rows": self.reference_rows,
            "expected_rows": self.expected_rows, "expected_rows_method": self.expected_rows_method,
            "columns": [c.to_json() for c in self.columns],
            "findings": [f.to_json() for f in self.findings],
            "summary": {s: sum(1 for f in self.findings if f.severity == s) for s in SEVERITIES},
        }


# ---------------------------------------------------------------- queries

_BASE = ("SELECT {in_reference} AS __ref, {in_current} AS __cur, {values} FROM {log} "
         "WHERE ({in_reference_again}) OR ({in_current_again})")

_PROFILE = "WITH base AS (" + _BASE + ") SELECT count(CASE WHEN __ref THEN 1 END), " \
           "count(CASE WHEN __cur THEN 1 END), {aggregates} FROM base"

_PRESENT = "count(CASE WHEN __ref THEN {x} END), count(CASE WHEN __cur THEN {x} END)"
_NUMBER = ("count(CASE WHEN __ref AND isfinite({x}) THEN 1 END), "
           "count(CASE WHEN __cur AND isfinite({x}) THEN 1 END), "
           "min(CASE WHEN __ref AND isfinite({x}) THEN {x} END), "
           "max(CASE WHEN __ref AND isfinite({x}) THEN {x} END), "
           "min(CASE WHEN __cur AND isfinite({x}) THEN {x} END), "
           "max(CASE WHEN __cur AND isfinite({x}) THEN {x} END), "
           "approx_count_distinct(CASE WHEN __ref THEN {x} END), "
           "approx_count_distinct(CASE WHEN __cur THEN {x} END)")
_CATEGORIES = ("histogram(CASE WHEN __ref THEN {x} END), histogram(CASE WHEN __cur THEN {x} END)")
_PARSES = ("count(CASE WHEN __ref THEN TRY_CAST({x} AS DOUBLE) END), "
           "count(CASE WHEN __cur THEN TRY_CAST({x} AS DOUBLE) END)")

_SECOND = "WITH base AS (" + _BASE + ") SELECT {aggregates} FROM base"
_OUTSIDE = ("count(CASE WHEN __cur AND isfinite({x}) AND ({x} < {low} OR {x} > {high}) THEN 1 END)")
_TOP = "histogram(CASE WHEN __ref THEN {x} END), histogram(CASE WHEN __cur THEN {x} END)"

_DUPLICATES = ("SELECT count(*), coalesce(sum(n), 0) FROM (SELECT {id}, count(*) AS n FROM {log} "
               "WHERE {where} AND {id} IS NOT NULL GROUP BY {id} HAVING count(*) > 1)")


def quality_columns(view) -> list[str]:
    """Every column of the log except logged attributions."""
    attributions = set(view.roles.attributions.values())
    return [name for name in view.columns if name not in attributions]


@dataclass
class _Plan:
    """Which measurements each column gets, by position in the query."""

    name: str
    numeric: bool
    floating: bool
    categorical: bool
    text: bool
    offset: int = 0


def _plan(view, names: list[str]) -> list[_Plan]:
    plans = []
    for name in names:
        info = view.columns[name]
        upper = info.duck_type.upper()
        numeric = sql.is_numeric_type(upper) and info.kind == "numerical"
        plans.append(_Plan(
            name=name, numeric=numeric,
            floating=any(word in upper for word in FLOAT_TYPES),
            categorical=info.kind in ("categorical", "boolean") and info.role != "id",
            text=upper in ("VARCHAR", "TEXT", "STRING")))
    return plans


def _value(view, position: int, name: str) -> Fragment:
    return sql.render("{c} AS {x}", c=Ident(name), x=Ident(f"__q{position}"))


def _window_parts(view, reference: Window, current: Window, segment: Segment) -> dict:
    ref, cur = view.where(reference, segment), view.where(current, segment)
    return {"in_reference": ref, "in_current": cur, "in_reference_again": ref,
            "in_current_again": cur, "log": view.relation}


def _profile_query(view, plans: list[_Plan], parts: dict) -> Fragment:
    aggregates, offset = [], 2
    for position, plan in enumerate(plans):
        x = Ident(f"__q{position}")
        pieces = [sql.render(_PRESENT, x=x)]
        if plan.numeric:
            pieces.append(sql.render(_NUMBER, x=x))
        if plan.categorical:
            pieces.append(sql.render(_CATEGORIES, x=x))
        if plan.text:
            pieces.append(sql.render(_PARSES, x=x))
        plan.offset = offset
        offset += 2 + 8 * plan.numeric + 2 * plan.categorical + 2 * plan.text
        aggregates.extend(pieces)
    values = sql.join(_value(view, i, p.name) for i, p in enumerate(plans))
    return sql.render(_PROFILE, **parts, values=values, aggregates=sql.join(aggregates))


# ---------------------------------------------------------------- entry point

def check_quality(view, window: Window | None = None, reference: Window | None = None,
                  segment: Segment = ()) -> QualityResult:
    """Run every data-quality check on ``window`` (default: the last 7 days) against ``reference``
    (default: ``windows.reference_window(view)``), both restricted to ``segment``."""
    window = window if window is not None else windows.default_window(view)
    reference = reference if reference is not None else windows.reference_window(view)
    segment = tuple(segment or ())
    names = quality_columns(view)
    plans = _plan(view, names)
    parts = _window_parts(view, reference, window, segment)
    row = view.fetchall(_profile_query(view, plans, parts))[0]
    reference_rows, rows = int(row[0]), int(row[1])
    columns = [_measure(view, plan, row, reference_rows, rows) for plan in plans]
    expected, method = _expected_rows(view, reference, window, reference_rows)
    result = QualityResult(window, reference, segment, rows, reference_rows, expected, columns,
                           expected_rows_method=method)
    if rows == 0:
        where = f" in segment {sql.describe_segment(segment)}" if segment else ""
        result.findings.append(Finding("volume", None, "high",
                                       f"no rows in the window {window}{where}", 0.0))
        return result
    _second_pass(view, plans, columns, row, parts, reference_rows, rows)
    result.findings.extend(_volume_findings(rows, expected, method))
    for plan, column in zip(plans, columns):
        result.findings.extend(_column_findings(view, plan, column, row, reference_rows))
    result.findings.extend(_duplicate_findings(view, window, segment, rows))
    order = {s: i for i, s in enumerate(SEVERITIES)}
    result.findings.sort(key=lambda f: order[f.severity])
    return result


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _measure(view, plan: _Plan, row: tuple, reference_rows: int, rows: int) -> ColumnQuality:
    info = view.columns[plan.name]
    column = ColumnQuality(plan.name, info.role, info.kind)
    at = plan.offset
    present_ref, present_cur = row[at], row[at + 1]
    column.missing_share = _share(rows - present_cur, rows)
    column.reference_missing_share = _share(reference_rows - present_ref, reference_rows)
    at += 2
    if plan.numeric:
        finite_ref, finite_cur, low, high, cur_low, cur_high = row[at:at + 6]
        column.reference_range = (low, high) if low is not None else None
        if plan.floating and present_cur:
            column.non_finite_share = (present_cur - finite_cur) / present_cur
        column.constant = (cur_low == cur_high) if cur_low is not None else None
        at += 8
    if plan.categorical:
        ref_map, cur_map = row[at] or {}, row[at + 1] or {}
        if cur_map and ref_map:
            new = {k: v for k, v in cur_map.items() if k not in ref_map}
            ordered = sorted(new, key=lambda k: (-new[k], str(k)))
            column.new_categories = [_plain(k) for k in ordered]
            column.new_category_share = sum(new.values()) / sum(cur_map.values())
        if cur_map:
            column.constant = len(cur_map) == 1
            column.top_share = max(cur_map.values()) / sum(cur_map.values())
        at += 2
    if plan.text and present_cur and present_ref:
        parsed_ref, parsed_cur = row[at:at + 2]
        if parsed_ref / present_ref >= NUMERIC_LOOKING:
            column.parse_failure_share = (present_cur - parsed_cur) / present_cur
    return column


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def _second_pass(view, plans, columns, row, parts, reference_rows, rows) -> None:
    """Out-of-range counts against the reference range, and exact top-value shares of numerical
    columns whose distinct count leaves room for one value in ≥ 99 % of rows."""
    aggregates, jobs = [], []
    for position, (plan, column) in enumerate(zip(plans, columns)):
        if not plan.numeric:
            continue
        x = Ident(f"__q{position}")
        finite_ref, finite_cur = row[plan.offset + 2], row[plan.offset + 3]
        if column.reference_range and finite_cur:
            low, high = column.reference_range
            aggregates.append(sql.render(_OUTSIDE, x=x, low=sql.param(low), high=sql.param(high)))
            jobs.append(("range", column, finite_cur))
        distinct_ref, distinct_cur = row[plan.offset + 8], row[plan.offset + 9]
        if finite_cur and _may_be_almost_constant(distinct_ref, finite_ref, distinct_cur,
                                                  finite_cur):
            aggregates.append(sql.render(_TOP, x=x))
            jobs.append(("mode", column, (finite_ref, finite_cur)))
    if not aggregates:
        return
    values = sql.join(_value(view, i, p.name) for i, p in enumerate(plans))
    result = view.fetchall(sql.render(_SECOND, **parts, values=values,
                                      aggregates=sql.join(aggregates)))[0]
    at = 0
    for kind, column, extra in jobs:
        if kind == "range":
            column.out_of_range_share = result[at] / extra
            at += 1
        else:
            column.reference_top_share = _top_share(result[at])
            column.top_share = _top_share(result[at + 1])
            at += 2


def _top_share(counts: dict | None) -> float | None:
    if not counts:
        return None
    return max(counts.values()) / sum(counts.values())


def _may_be_almost_constant(distinct_ref, finite_ref, distinct_cur, finite_cur) -> bool:
    """A value in ≥ 99 % of n rows leaves ≤ 1 % + 1 distinct values; the approximate count gets
    a wide margin so that no candidate is missed."""
    return (distinct_cur or 0) <= 0.02 * finite_cur + 20 or (
        finite_ref and (distinct_ref or 0) <= 0.02 * finite_ref + 20)


# ---------------------------------------------------------------- findings

def _percent(share: float) -> str:
    if share == 0:
        return "0%"
    if share < 0.001:
        return "<0.1%"
    return f"{share * 100:.1f}%" if share < 0.1 else f"{share * 100:.0f}%"


def _by_share(share: float) -> str:
    if share >= SHARE_HIGH:
        return "high"
    return "medium" if share >= SHARE_MEDIUM else "low"


def _expected_rows(view, reference: Window, window: Window, reference_rows: int
                   ) -> tuple[float | None, str]:
    first, last = windows.time_range(view)
    if first is None:
        return None, "no data"
    reference_days = _days(reference, first, last)
    window_days = _days(window, first, last)
    if not reference_days or window_days is None:
        return None, "the reference window spans no time"
    per_day = reference_rows / reference_days
    return per_day * window_days, (f"{per_day:,.1f} reference rows per day × {window_days:g} days "
                                   "in the window")


def _days(window: Window, first: datetime, last: datetime) -> float | None:
    # Days before the log's first day hold no rows because the log had not started, not because
    # volume dropped (a default 7-day window over a log younger than a week).
    first_day = datetime(first.year, first.month, first.day)
    start = max(window.start, first_day) if window.start else first
    end = window.end or last
    seconds = (end - start).total_seconds()
    return seconds / 86400 if seconds > 0 else None


def _volume_findings(rows: int, expected: float | None, method: str) -> list[Finding]:
    if not expected:
        return []
    ratio = rows / expected
    if ratio < VOLUME_HIGH[0] or ratio > VOLUME_HIGH[1]:
        severity = "high"
    elif ratio < VOLUME_MEDIUM[0] or ratio > VOLUME_MEDIUM[1]:
        severity = "medium"
    else:
        return []
    direction = "fewer" if ratio < 1 else "more"
    return [Finding("volume", None, severity,
                    f"{rows:,} rows in the window, {direction} than the {expected:,.0f} expected "
                    f"({method}; {ratio:.0%} of expected)", ratio)]


def _column_findings(view, plan: _Plan, column: ColumnQuality, row: tuple,
                     reference_rows: int) -> list[Finding]:
    found = []
    name = column.column
    missing, before = column.missing_share, column.reference_missing_share
    if missing is not None:
        rise = missing - (before or 0.0)
        severity = None
        if missing == 1.0 and (before is None or before < 1.0):
            severity = "high"
        elif rise >= MISSING_HIGH:
            severity = "high"
        elif rise >= MISSING_MEDIUM:
            severity = "medium"
        elif rise >= MISSING_LOW and missing >= 2 * (before or 0.0):
            severity = "low"
        reference_text = "no reference rows" if before is None else f"reference: {_percent(before)}"
        if severity and column.role == "target":
            found.append(Finding("unlabeled", name, "low",
                                 f"{_percent(missing)} of rows have no label ({name}) yet "
                                 f"({reference_text}): labels often arrive late; metrics use "
                                 "the labeled rows only", missing))
        elif severity:
            found.append(Finding("missing", name, severity,
                                 f"{name} is missing in {_percent(missing)} of rows "
                                 f"({reference_text})", missing))
    if column.new_categories:
        severity = _by_share(column.new_category_share)
        shown = ", ".join(repr(v) for v in column.new_categories[:SHOWN_CATEGORIES])
        more = len(column.new_categories) - SHOWN_CATEGORIES
        count = len(column.new_categories)
        found.append(Finding("new_category", name, severity,
                             f"{name} has {count} value{'s' if count > 1 else ''} never seen in the "
                             f"reference ({shown}{f' and {more} more' if more > 0 else ''}) in "
                             f"{_percent(column.new_category_share)} of rows",
                             column.new_category_share))
    if column.out_of_range_share and column.out_of_range_share >= OUT_OF_RANGE_LOW:
        low, high = column.reference_range
        found.append(Finding("out_of_range", name, _by_share(column.out_of_range_share),
                             f"{_percent(column.out_of_range_share)} of {name} values fall "
                             f"outside the reference range {low:g} to {high:g}",
                             column.out_of_range_share))
    if column.parse_failure_share:
        found.append(Finding("type", name, _by_share(column.parse_failure_share),
                             f"{_percent(column.parse_failure_share)} of {name} values are not "
                             "numbers, though the reference's were", column.parse_failure_share))
    found.extend(_non_finite_finding(plan, column, row))
    found.extend(_constant_finding(plan, column, row, reference_rows))
    return found


def _non_finite_finding(plan: _Plan, column: ColumnQuality, row: tuple) -> list[Finding]:
    share = column.non_finite_share
    if not share:
        return []
    present_ref, finite_ref = row[plan.offset], row[plan.offset + 2]
    before = (present_ref - finite_ref) / present_ref if present_ref else 0.0
    if share <= before:
        return []
    return [Finding("non_finite", column.column, _by_share(share),
                    f"{_percent(share)} of {column.column} values are NaN or infinite "
                    f"(reference: {_percent(before)})", share)]


def _constant_finding(plan: _Plan, column: ColumnQuality, row: tuple,
                      reference_rows: int) -> list[Finding]:
    if column.role not in CONSTANT_ROLES or column.top_share is None and not column.constant:
        return []
    name = column.column
    reference_constant, reference_top = _reference_concentration(plan, column, row)
    if column.constant:
        severity = "low" if reference_constant else "high"
        was = "as in the reference" if reference_constant else "the reference varied"
        return [Finding("constant", name, severity,
                        f"{name} holds a single value in every row of the window ({was})", 1.0)]
    if column.top_share is not None and column.top_share >= ALMOST_CONSTANT:
        already = reference_top is not None and reference_top >= ALMOST_CONSTANT
        return [Finding("almost_constant", name, "low" if already else "medium",
                        f"one value fills {_percent(column.top_share)} of {name} "
                        f"({'as in the reference' if already else 'the reference varied more'})",
                        column.top_share)]
    return []


def _reference_concentration(plan: _Plan, column: ColumnQuality, row: tuple
                             ) -> tuple[bool, float | None]:
    at = plan.offset + 2
    if plan.numeric:
        low, high = row[at + 2], row[at + 3]
        constant = low is not None and low == high
        return constant, column.reference_top_share
    if plan.categorical:
        ref_map = row[at + 8 * plan.numeric] or {}
        total = sum(ref_map.values())
        top = max(ref_map.values()) / total if total else None
        return len(ref_map) == 1, top
    return False, None


def _duplicate_findings(view, window: Window, segment: Segment, rows: int) -> list[Finding]:
    id_column = view.roles.id
    if not id_column:
        return []
    query = sql.render(_DUPLICATES, id=Ident(id_column), log=view.relation,
                       where=view.where(window, segment))
    duplicated_ids, duplicated_rows = view.fetchall(query)[0]
    if not duplicated_ids:
        return []
    extra = int(duplicated_rows) - int(duplicated_ids)
    share = extra / rows
    severity = ("high" if share >= DUPLICATE_HIGH else
                "medium" if share >= DUPLICATE_MEDIUM else "low")
    return [Finding("duplicate_id", id_column, severity,
                    f"{int(duplicated_ids):,} ids appear more than once in the window "
                    f"({extra:,} extra rows, {_percent(share)} of rows)", float(duplicated_ids))]

