"""Overview: the health dashboard — model quality and its trend, data health, service, traffic."""

import pandas as pd
import streamlit as st

from mlmon_core import charts
from mlmon_core.alerts import evaluate_alerts
from mlmon_core.health import label
from pages.common import download_button, guarded, require_context, run


def _format(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def headline_section(ctx, health) -> None:
    """The few metrics that matter most, now vs the reference, in plain words."""
    if not health.headline:
        st.info("No labeled rows in this window yet, so quality can only be estimated (below).")
    columns = st.columns(max(1, len(health.headline)))
    for column, change in zip(columns, health.headline):
        current = change.current
        delta = None if change.difference is None else f"{change.difference:+.3f} vs reference"
        inverse = change.name in ("log_loss", "brier_score", "ece", "mae", "rmse", "mape")
        column.metric(label(change.name), _format(current.value), delta,
                      delta_color="inverse" if inverse else "normal",
                      help=f"95% CI {_format(current.ci_low)}–{_format(current.ci_high)}, "
                           f"n={current.n:,}. Reference: {_format(change.reference.value)}.")
    worse = [c for c in health.changes if c.worse]
    if worse:
        st.warning("Worse than the reference: " + "; ".join(c.sentence for c in worse[:4]))
    elif any(c.current.value is not None for c in health.headline):
        st.success("No measured metric is significantly worse than in the reference window.")
    if health.estimated and any(v.get("value") is not None for v in health.estimated.values()):
        parts = [f"{label(name)} ≈ {cell['value']:.3f} ({_format(cell.get('ci_low'))}–"
                 f"{_format(cell.get('ci_high'))})"
                 for name, cell in health.estimated.items() if cell.get("value") is not None]
        st.caption("Estimated for rows still without labels (from calibrated scores): "
                   + ", ".join(parts))
    elif health.estimate_reason:
        st.caption(f"Quality estimate: {health.estimate_reason}")


def trend_section(ctx, health) -> None:
    """One metric per day with its CI band, estimated values where labels are missing."""
    if health.trend.empty:
        return
    names = list(dict.fromkeys(health.trend["metric"]))
    default = health.headline[0].name if health.headline else names[0]
    chosen = st.selectbox("Metric over time", names, index=names.index(default) if default in names
                          else 0, format_func=label)
    rows = health.trend[health.trend["metric"] == chosen]
    reference = next((c.reference.value for c in health.changes if c.name == chosen), None)
    st.altair_chart(charts.metric_trend_chart(rows[rows["series"] == "realized"],
                                              rows[rows["series"] == "estimated"],
                                              reference, label(chosen)), width="stretch")
    with st.expander("All metrics: current vs reference"):
        table = pd.DataFrame([{
            "metric": label(c.name), "current": c.current.value, "ci_low": c.current.ci_low,
            "ci_high": c.current.ci_high, "n": c.current.n, "reference": c.reference.value,
            "difference": c.difference, "p_value": c.p_value, "in words": c.sentence}
            for c in health.changes])
        st.dataframe(table, hide_index=True, width="stretch")
        download_button(table, "metrics-vs-reference")


_ADVICE_BOX = {"retrain": st.error, "fix": st.warning, "watch": st.warning, "ok": st.success}
_SEVERITY_BOX = {"high": st.error, "medium": st.warning, "low": st.info}


def alerts_section(ctx) -> None:
    """Which alert rules fire now (as `mlmon check` would say) and "retrain?" in plain words."""
    st.header("Alerts now")
    # Each analysis goes through the page cache, shared with the sections below (drift, service).
    result = evaluate_alerts(ctx.view, ctx.window, ctx.reference, ctx.segment,
                             runner=lambda function, *args, **kwargs: run(function, ctx, *args,
                                                                          **kwargs))
    st.subheader("Retrain?")
    _ADVICE_BOX[result.advice.action](result.advice.text)
    for alert in result.fired:
        _SEVERITY_BOX[alert.severity](f"**{alert.name}** — {alert.message}")
    quiet = len(result.alerts) - len(result.fired)
    st.caption(f"{len(result.fired)} of {len(result.alerts)} alert rules fire; {quiet} stay quiet"
               + (f"; {len(result.skipped)} could not be evaluated" if result.skipped else "")
               + ". The same rules run in `mlmon check` (README, Alerts).")
    if result.skipped or quiet:
        with st.expander("Quiet and skipped rules"):
            for alert in result.alerts:
                if not alert.fired:
                    st.markdown(f"- {alert.name}: {alert.message}")
            for alert in result.skipped:
                st.markdown(f"- {alert.name}: skipped, {alert.reason}")


def model_section(ctx) -> None:
    """Model health: headline metrics and trend."""
    st.header("Model health")
    health = run("mlmon_core.health:model_health", ctx, ctx.window, ctx.reference, ctx.segment)
    headline_section(ctx, health)
    trend_section(ctx, health)


def data_section(ctx) -> None:
    """Drift summary, worst offenders first."""
    st.header("Data health")
    drift = run("mlmon_core.drift:compute_drift", ctx, ctx.window, ctx.reference, ctx.segment)
    if drift.reason:
        st.info(drift.reason)
        return
    drifted = drift.drifted_columns
    real = drift.drifted_beyond_noise
    noise = drift.drifted_within_noise
    share = f"{drift.drift_share:.0%}" if drift.drift_share is not None else "–"
    verdict = "Dataset drift" if drift.dataset_drift else "No dataset drift"
    within = (f" {len(noise)} more within sampling noise (likely not real drift): "
              f"{', '.join(noise[:8])}." if noise else "")
    st.markdown(f"**{verdict}**: {len(drifted)} of {len(drift.columns)} columns drifted ({share}); "
                f"beyond sampling noise: {', '.join(real[:8]) or 'none'}.{within} "
                "Details on the Compare page.")


def service_section(ctx) -> None:
    """Latency, error rate and throughput, when the log has them."""
    service = run("mlmon_core.service:service_health", ctx, ctx.window, ctx.segment)
    if service.reason:
        return
    st.header("Service health")
    frame = pd.DataFrame(service.buckets)
    left, middle, right = st.columns(3)
    with left:
        st.altair_chart(charts.service_chart(frame, "latency_p95", "latency p95 (ms)"), width="stretch")
    with middle:
        st.altair_chart(charts.service_chart(frame, "error_rate", "error rate", percent=True),
                        width="stretch")
    with right:
        st.altair_chart(charts.service_chart(frame, "rows", "predictions"), width="stretch")


def traffic_section(ctx) -> None:
    """Volume, label coverage, class balance and prediction distribution per day."""
    st.header("Traffic and labels")
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
        if ctx.view.task == "binary":  # positive rates: multiclass shares are the chart beside
            st.subheader("Class balance")
            st.altair_chart(charts.class_balance_chart(traffic.buckets), width="stretch")
    with right:
        st.subheader("Label coverage")
        st.altair_chart(charts.coverage_chart(traffic.buckets), width="stretch")
        st.subheader("Predictions over time")
        st.altair_chart(charts.prediction_distribution_chart(traffic.predictions, ctx.view.task),
                        width="stretch")
    with st.expander("Daily numbers"):
        # Columns that do not apply to the task (positive rates of a regression) are all empty.
        daily = traffic.buckets.dropna(axis="columns", how="all")
        st.dataframe(daily, hide_index=True, width="stretch")
        download_button(daily, "daily-traffic")


def schema_section(ctx) -> None:
    """Columns with their inferred roles and kinds."""
    with st.expander("Schema: columns, roles and kinds"):
        schema = pd.DataFrame([info.to_json() for info in ctx.view.columns.values()])
        positive = (f", positive label: **{ctx.view.positive_label}**"
                    if ctx.view.task == "binary" else "")
        st.caption(f"Task: **{ctx.view.task}**{positive}. "
                   "Roles and kinds are inferred unless mlmon.toml declares them.")
        st.dataframe(schema, hide_index=True, width="stretch")


def main() -> None:
    """Render the page."""
    ctx = require_context()
    st.title("Overview")
    st.caption(f"{ctx.window} · {ctx.segment_text} · reference {ctx.reference}")
    for section in (alerts_section, model_section, data_section, service_section,
                    traffic_section):
        guarded(lambda: section(ctx))
    schema_section(ctx)


guarded(main)
