"""The Overview's traffic picture: volume, label coverage, class balance, predictions over time."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from mlmon_core import sql
from mlmon_core.config import Window
from mlmon_core.sql import Fragment, Ident, Segment
from mlmon_core.windows import check_bucket

TOP_CLASSES = 8


@dataclass(frozen=True)
class Traffic:
    """Per-bucket traffic and, for classifiers, the predicted/actual class shares."""

    buckets: pd.DataFrame  # start, rows, labeled_rows, label_coverage, actual_positive_rate, ...
    predictions: pd.DataFrame  # start, value, rows, share (classes) or start, p10..p90 (regression)
    rows: int
    labeled_rows: int

    def to_json(self) -> dict[str, Any]:
        """Plain form for the CLI."""
        return {"rows": self.rows, "labeled_rows": self.labeled_rows,
                "buckets": self.buckets.to_dict(orient="records"),
                "predictions": self.predictions.to_dict(orient="records")}


def _positive_share(view, column: str | None) -> Fragment:
    if column is None or view.task != "binary":
        return Fragment("NULL")
    return sql.render("avg(CASE WHEN {c} IS NULL THEN NULL WHEN {c} = {p} THEN 1.0 ELSE 0.0 END)",
                      c=Ident(column), p=sql.param(view.positive_label))


def traffic(view, window: Window | None, segment: Segment = (), bucket: str = "day") -> Traffic:
    """Rows, labeled rows and class balance per bucket, plus the prediction distribution."""
    check_bucket(bucket)
    roles = view.roles
    target = Ident(roles.target) if roles.target else None
    query = sql.render(
        "SELECT date_trunc({bucket}, {ts}) AS start, count(*) AS rows, {labeled} AS labeled_rows, "
        "{actual} AS actual_positive_rate, {predicted} AS predicted_positive_rate, {score} AS mean_score "
        "FROM {log} WHERE {where} GROUP BY 1 ORDER BY 1",
        bucket=sql.param(bucket), ts=Ident(roles.timestamp),
        labeled=sql.render("count({t})", t=target) if target else Fragment("0"),
        actual=_positive_share(view, roles.target),
        predicted=_positive_share(view, roles.prediction),
        score=sql.render("avg({s})", s=Ident(roles.score)) if roles.score else Fragment("NULL"),
        log=view.relation, where=view.where(window, segment),
    )
    buckets = view.fetch_df(query)
    buckets["label_coverage"] = buckets["labeled_rows"] / buckets["rows"].where(buckets["rows"] > 0)
    return Traffic(buckets=buckets, predictions=_prediction_distribution(view, window, segment, bucket),
                   rows=int(buckets["rows"].sum()), labeled_rows=int(buckets["labeled_rows"].sum()))


def _prediction_distribution(view, window, segment, bucket: str) -> pd.DataFrame:
    prediction = view.roles.prediction
    if prediction is None:
        return pd.DataFrame(columns=["start", "value", "rows", "share"])
    where = view.where(window, segment)
    # Predictions alone do not need the label join, unless the segment reads the target.
    reads_target = any(c.column == view.roles.target for c in segment or ())
    relation = view.relation if reads_target else view.predictions_relation
    if view.task == "regression":
        query = sql.render(
            "SELECT date_trunc({bucket}, {ts}) AS start, "
            "quantile_cont({p}, 0.1) AS p10, quantile_cont({p}, 0.5) AS p50, "
            "quantile_cont({p}, 0.9) AS p90, avg({p}) AS mean "
            "FROM {log} WHERE {where} AND isfinite(CAST({p} AS DOUBLE)) GROUP BY 1 ORDER BY 1",
            bucket=sql.param(bucket), ts=Ident(view.roles.timestamp), p=Ident(prediction),
            log=relation, where=where)
        return view.fetch_df(query)
    query = sql.render(
        "WITH counts AS (SELECT date_trunc({bucket}, {ts}) AS start, CAST({p} AS VARCHAR) AS value, "
        "count(*) AS rows FROM {log} WHERE {where} GROUP BY 1, 2), "
        "top AS (SELECT value FROM counts GROUP BY 1 ORDER BY sum(rows) DESC LIMIT {k}) "
        "SELECT start, CASE WHEN value IN (SELECT value FROM top) THEN coalesce(value, '(missing)') "
        "ELSE '(other)' END AS value, sum(rows) AS rows FROM counts GROUP BY 1, 2 ORDER BY 1, 2",
        bucket=sql.param(bucket), ts=Ident(view.roles.timestamp), p=Ident(prediction),
        log=relation, where=where, k=TOP_CLASSES)
    frame = view.fetch_df(query)
    frame["share"] = frame["rows"] / frame.groupby("start")["rows"].transform("sum")
    return frame
