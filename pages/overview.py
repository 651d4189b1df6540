"""Overview: traffic, label coverage, class balance, predictions over time, and the schema."""

import pandas as pd
import streamlit as st

from mlmon_core import charts
from pages.common import download_button, guarded, require_context, run


def traffic_section(ctx) -> None:
    """Volume, label coverage, class balance and prediction distribution per day."""
    traffic = run("mlmon_core.overview:traffic", ctx, ctx.window, ctx.segment, bucket="day")
    first, second, third = st.columns(3)
    first.metric("Predictions", f"{traffic.rows:,}")
    second.metric("Labeled", f"{traffic.labeled_rows:,}")
    coverage = traffic.labeled_rows / traffic.rows if traffic.rows else None
    third.metric("Label coverage", f"{coverage:.1%}" if coverage is not None else "–")
    if traffic.rows == 0:
        st.warning(f"No predictions in {ctx.window} for {ctx.segment_text}.")
        return
    left, right = st.columns(2)
    with left:
        st.subheader("Volume per day")
        st.altair_chart(charts.volume_chart(traffic.buckets), width="stretch")
        st.subheader("Class balance")
        st.altair_chart(charts.class_balance_chart(traffic.buckets), width="stretch")
    with right:
        st.subheader("Label coverage")
        st.altair_chart(charts.coverage_chart(traffic.buckets), width="stretch")
        st.subheader("Predictions over time")
        st.altair_chart(charts.prediction_distribution_chart(traffic.predictions, ctx.view.task),
                        width="stretch")
    with st.expander("Daily numbers"):
        st.dataframe(traffic.buckets, hide_index=True, width="stretch")
        download_button(traffic.buckets, "daily-traffic")


def schema_section(ctx) -> None:
    """Columns with their inferred roles and kinds."""
    with st.expander("Schema: columns, roles and kinds"):
        schema = pd.DataFrame([info.to_json() for info in ctx.view.columns.values()])
        st.caption(f"Task: **{ctx.view.task}**, positive label: **{ctx.view.positive_label}**. "
                   "Roles and kinds are inferred unless mlmon.toml declares them.")
        st.dataframe(schema, hide_index=True, width="stretch")


def main() -> None:
    """Render the page."""
    ctx = require_context()
    st.title("Overview")
    st.caption(f"{ctx.window} · {ctx.segment_text} · reference {ctx.reference}")
    traffic_section(ctx)
    schema_section(ctx)


guarded(main)
