"""Altair chart builders. They take analysis results (small DataFrames) and never touch data."""

from __future__ import annotations

import altair as alt
import pandas as pd

HEIGHT = 220


def _empty(message: str) -> alt.Chart:
    return alt.Chart(pd.DataFrame({"text": [message]})).mark_text(size=14, color="gray").encode(
        text="text:N").properties(height=60)


def volume_chart(buckets: pd.DataFrame) -> alt.Chart:
    """Rows per bucket, with the labeled part stacked inside."""
    if buckets.empty:
        return _empty("no rows in this window")
    frame = buckets.assign(unlabeled=buckets["rows"] - buckets["labeled_rows"])
    long = frame.melt(id_vars=["start"], value_vars=["labeled_rows", "unlabeled"],
                      var_name="part", value_name="count")
    long["part"] = long["part"].map({"labeled_rows": "labeled", "unlabeled": "not yet labeled"})
    return alt.Chart(long).mark_bar().encode(
        x=alt.X("yearmonthdate(start):O", title=None, axis=alt.Axis(format="%b %d", labelAngle=-45)),
        y=alt.Y("count:Q", title="predictions", stack="zero"),
        color=alt.Color("part:N", title=None, scale=alt.Scale(
            domain=["labeled", "not yet labeled"], range=["#4c78a8", "#c6d4e6"])),
        tooltip=[alt.Tooltip("start:T", title="from"), "part:N", alt.Tooltip("count:Q", format=",")],
    ).properties(height=HEIGHT)


def coverage_chart(buckets: pd.DataFrame) -> alt.Chart:
    """Share of rows with ground truth per bucket."""
    if buckets.empty:
        return _empty("no rows in this window")
    return alt.Chart(buckets).mark_line(point=True).encode(
        x=alt.X("start:T", title=None),
        y=alt.Y("label_coverage:Q", title="label coverage", axis=alt.Axis(format="%"),
                scale=alt.Scale(domain=[0, 1])),
        tooltip=[alt.Tooltip("start:T", title="from"),
                 alt.Tooltip("label_coverage:Q", format=".1%"),
                 alt.Tooltip("labeled_rows:Q", format=","), alt.Tooltip("rows:Q", format=",")],
    ).properties(height=HEIGHT)


def class_balance_chart(buckets: pd.DataFrame) -> alt.Chart:
    """Actual vs predicted positive rate per bucket (binary classifiers)."""
    columns = [c for c in ("actual_positive_rate", "predicted_positive_rate", "mean_score")
               if c in buckets and buckets[c].notna().any()]
    if buckets.empty or not columns:
        return _empty("no class balance to show")
    names = {"actual_positive_rate": "actual positive rate",
             "predicted_positive_rate": "predicted positive rate", "mean_score": "mean score"}
    long = buckets.melt(id_vars=["start"], value_vars=columns, var_name="series", value_name="rate")
    long["series"] = long["series"].map(names)
    return alt.Chart(long.dropna()).mark_line(point=True).encode(
        x=alt.X("start:T", title=None),
        y=alt.Y("rate:Q", title="rate", axis=alt.Axis(format="%")),
        color=alt.Color("series:N", title=None),
        tooltip=[alt.Tooltip("start:T", title="from"), "series:N", alt.Tooltip("rate:Q", format=".2%")],
    ).properties(height=HEIGHT)


def prediction_distribution_chart(predictions: pd.DataFrame, task: str) -> alt.Chart:
    """Predicted class shares (stacked) or prediction quantiles (band) per bucket."""
    if predictions.empty:
        return _empty("no predictions in this window")
    if task == "regression":
        band = alt.Chart(predictions).mark_area(opacity=0.3).encode(
            x=alt.X("start:T", title=None), y=alt.Y("p10:Q", title="prediction"), y2="p90:Q")
        line = alt.Chart(predictions).mark_line().encode(
            x="start:T", y="p50:Q",
            tooltip=[alt.Tooltip("start:T", title="from"), "p10:Q", "p50:Q", "p90:Q"])
        return (band + line).properties(height=HEIGHT)
    return alt.Chart(predictions).mark_area().encode(
        x=alt.X("start:T", title=None),
        y=alt.Y("share:Q", title="share of predictions", stack="normalize", axis=alt.Axis(format="%")),
        color=alt.Color("value:N", title="predicted"),
        tooltip=[alt.Tooltip("start:T", title="from"), alt.Tooltip("value:N", title="predicted"),
                 alt.Tooltip("share:Q", format=".1%"), alt.Tooltip("rows:Q", format=",")],
    ).properties(height=HEIGHT)
