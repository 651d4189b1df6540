"""Default windows and time buckets, derived from the data's own time range."""

from __future__ import annotations

from datetime import datetime, timedelta

from mlmon_core import sql
from mlmon_core.config import Window
from mlmon_core.sql import Ident

BUCKETS = ("hour", "day", "week", "month")
DEFAULT_DAYS = 7


def time_range(view) -> tuple[datetime | None, datetime | None]:
    """First and last timestamp of the log."""
    query = sql.render("SELECT min({ts}), max({ts}) FROM {log}",
                       ts=Ident(view.roles.timestamp), log=view.predictions_relation)
    first, last = view.fetchall(query)[0]
    return first, last


def default_window(view, days: int = DEFAULT_DAYS, bounds: tuple | None = None) -> Window:
    """The last ``days`` whole days of data, ending after the last row (midnight-aligned).

    ``bounds`` is the log's (first, last) timestamp when the caller already knows it.
    """
    _, last = bounds or time_range(view)
    if last is None:
        return Window(None, None)
    end = datetime(last.year, last.month, last.day) + timedelta(days=1)
    return Window(end - timedelta(days=days), end)


def reference_window(view, bounds: tuple | None = None) -> Window:
    """The config's reference window, or else the first third of the log's days."""
    if view.config.reference is not None:
        return view.config.reference
    first, last = bounds or time_range(view)
    if first is None:
        return Window(None, None)
    start = datetime(first.year, first.month, first.day)
    span_days = max(1, (last - start).days + 1)
    return Window(start, start + timedelta(days=max(1, span_days // 3)))


def check_bucket(bucket: str) -> str:
    """Validate a bucket name."""
    if bucket not in BUCKETS:
        from mlmon_core.errors import FilterError

        raise FilterError(f"bucket {bucket!r} is not one of {', '.join(BUCKETS)}")
    return bucket
