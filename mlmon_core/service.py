"""Service health from the prediction log: throughput, latency percentiles and error rate per bucket.

Everything is one DuckDB query: per bucket and for the whole window at once (GROUPING SETS), row
counts, exact latency percentiles (``quantile_cont``, linear interpolation between order statistics,
the same definition as ``numpy.quantile``'s default) and error counts. Throughput is reported as
rows per bucket and rows per hour, the hours being those the bucket shares with the window, so a
window that starts at noon does not halve its first day's rate.

What counts as an error is an explicit, configurable rule (``ErrorRule``):

* numeric status (HTTP-style codes): an error when ``status >= numeric_error_from``, by default
  500. Server errors (5xx) are failures of the service; client errors (4xx, e.g. a malformed
  request) are, as in common APM tools, not counted by default. Set ``numeric_error_from=400`` to
  count them too.
* boolean status: ``false`` is an error (a ``success`` flag).
* text status: text that reads as a number follows the numeric rule ("200", "503"); any other text
  is fine only when it is one of ``ok_values`` (case-insensitive, trimmed: ok, success, true, ...)
  and an error otherwise ("error", "timeout", "failed").
* a missing (null, empty, NaN) status is unknown: it is neither an error nor a success and is left
  out of the error rate's denominator (``status_rows``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from mlmon_core import sql
from mlmon_core.config import Window
from mlmon_core.sql import Fragment, Ident, Segment
from mlmon_core.windows import check_bucket

OK_VALUES = ("ok", "success", "succeeded", "successful", "true", "t", "yes", "y", "pass", "passed",
             "done", "completed")
LATENCY_QUANTILES = (0.5, 0.95, 0.99)

_HEALTH = (
    "WITH scoped AS (SELECT {start} AS start, {ts} AS ts, {latency} AS latency, {error} AS error "
    "FROM {log} WHERE {where}) "
    "SELECT start, grouping(start) AS overall, count(*) AS rows, min(ts) AS first, max(ts) AS last, "
    "count(latency) AS latency_rows, quantile_cont(latency, {quantiles}) AS latency_quantiles, "
    "avg(latency) AS latency_mean, max(latency) AS latency_max, "
    "count(error) AS status_rows, count(*) FILTER (WHERE error) AS errors "
    "FROM scoped GROUP BY GROUPING SETS ((start), ()) ORDER BY overall, start"
)


@dataclass(frozen=True)
class ErrorRule:
    """Which status values count as errors (see the module docstring for the whole rule)."""

    numeric_error_from: float = 500
    ok_values: tuple[str, ...] = OK_VALUES

    def expression(self, column: str, duck_type: str) -> Fragment:
        """SQL that is TRUE for an error, FALSE for a success and NULL when the status is missing."""
        status = Ident(column)
        upper = duck_type.upper()
        if upper == "BOOLEAN":
            return sql.render("NOT {s}", s=status)
        if sql.is_numeric_type(upper):
            # NaN compares above every number in DuckDB: treat it (and infinities) as missing.
            code = sql.render("CAST({s} AS DOUBLE)", s=status)
            return sql.render("CASE WHEN isfinite({c}) THEN {c} >= {limit} END", c=code,
                              limit=sql.param(float(self.numeric_error_from)))
        text = sql.render("nullif(trim(CAST({s} AS VARCHAR)), '')", s=status)
        number = sql.render("TRY_CAST({t} AS DOUBLE)", t=text)
        return sql.render(
            "CASE WHEN {text} IS NULL THEN NULL WHEN {number} IS NOT NULL THEN {number} >= {limit} "
            "ELSE lower({text}) NOT IN ({ok}) END",
            text=text, number=number, limit=sql.param(float(self.numeric_error_from)),
            ok=sql.value_list([v.strip().lower() for v in self.ok_values]))

    def to_json(self) -> dict[str, Any]:
        """The rule as data, so a reader of the JSON knows what the error rate counts."""
        return {"numeric_error_from": self.numeric_error_from, "ok_values": list(self.ok_values),
                "missing_status": "left out of the error rate"}


@dataclass
class ServiceResult:
    """Throughput, latency and error rate for the window (``window``) and each bucket (``buckets``).

    Values that cannot be computed are None, with the reason in the entry's ``reasons`` mapping
    (field name → "not computable because ..."); ``reason`` says when the log has neither a latency
    nor a status column.
    """

    window: dict[str, Any]
    buckets: list[dict[str, Any]]
    latency_column: str | None
    status_column: str | None
    error_rule: ErrorRule
    bucket: str | None
    reason: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """Plain form for ``mlmon service --json`` (the window's numbers under ``overall``)."""
        return {
            "latency_column": self.latency_column, "status_column": self.status_column,
            "error_rule": self.error_rule.to_json(), "reason": self.reason, "notes": self.notes,
            "overall": _plain(self.window), "bucket": self.bucket,
            "buckets": [_plain(entry) for entry in self.buckets],
        }


def _plain(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in entry.items()}


def service_health(view, window: Window | None, segment: Segment = (), bucket: str | None = "day",
                   error_rule: ErrorRule | None = None) -> ServiceResult:
    """Per-bucket and whole-window throughput, p50/p95/p99 latency and error rate."""
    if bucket is not None:
        check_bucket(bucket)
    rule = error_rule or ErrorRule()
    window = window or Window(None, None)
    latency, latency_problem = _latency_expression(view)
    error, status_problem = _error_expression(view, rule)
    timestamp = Ident(view.roles.timestamp)
    start = (sql.render("date_trunc({b}, {ts})", b=sql.param(bucket), ts=timestamp) if bucket
             else Fragment("CAST(NULL AS TIMESTAMP)"))
    query = sql.render(_HEALTH, start=start, ts=timestamp, latency=latency, error=error,
                       log=view.relation, where=view.where(window, segment),
                       quantiles=sql.param(list(LATENCY_QUANTILES)))
    rows = view.fetchall(query)
    overall = next(row for row in rows if row[1])
    per_bucket = [row for row in rows if not row[1]] if bucket else []
    buckets = [_entry(row, _bucket_span(row[0], bucket, window), latency_problem, status_problem,
                      "this bucket") for row in per_bucket]
    window_span = _window_span(window, buckets, overall)
    summary = _entry(overall, window_span, latency_problem, status_problem, "the window")
    reason = None
    if latency_problem and status_problem:
        reason = (f"not computable because the log has no usable latency or status column "
                  f"({latency_problem}; {status_problem}); only throughput is shown")
    notes = []
    if view.roles.status and not status_problem:
        notes.append(f"error = status {view.roles.status!r} >= {rule.numeric_error_from:g} when "
                     f"numeric, false when boolean, text other than {', '.join(rule.ok_values)}")
    return ServiceResult(window=summary, buckets=buckets, latency_column=view.roles.latency,
                         status_column=view.roles.status, error_rule=rule, bucket=bucket,
                         reason=reason, notes=notes)


def _latency_expression(view) -> tuple[Fragment, str | None]:
    column = view.roles.latency
    if column is None:
        return Fragment("CAST(NULL AS DOUBLE)"), ("the log has no latency column "
                                                  "(set [columns] latency)")
    duck_type = view.columns[column].duck_type
    if not sql.is_numeric_type(duck_type):
        return Fragment("CAST(NULL AS DOUBLE)"), (f"the latency column {column!r} is not numeric "
                                                  f"({duck_type})")
    value = sql.render("CAST({c} AS DOUBLE)", c=Ident(column))
    return sql.render("CASE WHEN isfinite({v}) THEN {v} END", v=value), None


def _error_expression(view, rule: ErrorRule) -> tuple[Fragment, str | None]:
    column = view.roles.status
    if column is None:
        return Fragment("CAST(NULL AS BOOLEAN)"), "the log has no status column (set [columns] status)"
    return rule.expression(column, view.columns[column].duck_type), None


def _bucket_end(start: datetime, bucket: str) -> datetime:
    if bucket == "hour":
        return start + timedelta(hours=1)
    if bucket == "day":
        return start + timedelta(days=1)
    if bucket == "week":
        return start + timedelta(days=7)
    return datetime(start.year + start.month // 12, start.month % 12 + 1, 1)


def _bucket_span(start: datetime, bucket: str, window: Window) -> tuple[datetime, datetime]:
    """The part of the bucket inside the window."""
    end = _bucket_end(start, bucket)
    return (max(start, window.start) if window.start else start,
            min(end, window.end) if window.end else end)


def _window_span(window: Window, buckets: list[dict], overall: tuple) -> tuple[datetime, datetime] | None:
    """The window's bounds; an open side ends where the data's buckets (or rows) end."""
    first, last = overall[3], overall[4]
    if buckets:
        low, high = buckets[0]["start"], buckets[-1]["end"]
    elif first is not None:
        low, high = first, last
    else:
        low = high = None
    start = window.start or low
    end = window.end or high
    if start is None or end is None:
        return None
    return start, end


def _entry(row: tuple, span, latency_problem: str | None, status_problem: str | None,
           where: str) -> dict[str, Any]:
    """One bucket's (or the window's) numbers with a reason for each value that is None."""
    start, _, rows, _, _, latency_rows, quantiles, mean, maximum, status_rows, errors = row
    entry: dict[str, Any] = {}
    if span is not None:
        hours = (span[1] - span[0]).total_seconds() / 3600.0
        entry.update(start=span[0], end=span[1], hours=hours)
    else:
        hours = 0.0
        entry.update(start=start, end=None, hours=None)
    reasons: dict[str, str] = {}
    entry["rows"] = int(rows)
    entry["rows_per_hour"] = rows / hours if hours > 0 else None
    if entry["rows_per_hour"] is None:
        reasons["rows_per_hour"] = f"not computable because {where} spans no time"
    entry["latency_rows"] = int(latency_rows)
    names = [f"latency_p{round(q * 100)}" for q in LATENCY_QUANTILES]
    if latency_rows:
        entry.update(zip(names, (float(v) for v in quantiles)))
        entry.update(latency_mean=float(mean), latency_max=float(maximum))
    else:
        why = (f"not computable because {latency_problem}" if latency_problem
               else f"not computable because no row of {where} has a finite latency")
        for name in names + ["latency_mean", "latency_max"]:
            entry[name] = None
            reasons[name] = why
    entry["status_rows"] = int(status_rows)
    entry["errors"] = int(errors) if status_rows else None
    entry["error_rate"] = errors / status_rows if status_rows else None
    if not status_rows:
        reasons["error_rate"] = (f"not computable because {status_problem}" if status_problem
                                 else f"not computable because no row of {where} has a status")
    if reasons:
        entry["reasons"] = reasons
    return entry
