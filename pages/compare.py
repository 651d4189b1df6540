"""Compare: reference vs current (two periods, or two model versions) — drift, distributions, metrics."""

import pandas as pd
import streamlit as st

from mlmon_core import charts, sql
from mlmon_core.health import label
from pages.common import download_button, guarded, model_counts, require_context, run

PERIODS, VERSIONS = "Two periods", "Two model versions"


def _sides(ctx):
    """(reference window, reference segment, current window, current segment, labels)."""
    models = list(model_counts(ctx.key, ctx.view)) if ctx.view.roles.model else []
    modes = [PERIODS] + ([VERSIONS] if len(models) >= 2 else [])
    mode = st.radio("Compare", modes, horizontal=True,
                    help="Periods: the sidebar's reference window vs its analysis window. "
                         "Versions: two models on the analysis window.")
    if mode == PERIODS:
        return ctx.reference, ctx.segment, ctx.window, ctx.segment, (
            f"reference {ctx.reference}", f"current {ctx.window}")
    left, right = st.columns(2)
    baseline = left.selectbox("Baseline model", models, index=0)
    candidate = right.selectbox("Compared model", models, index=1)
    column = ctx.view.roles.model
    base = tuple(c for c in ctx.conditions)
    return (ctx.window, base + (sql.Condition(column, "==", value=baseline),), ctx.window,
            base + (sql.Condition(column, "==", value=candidate),), (baseline, candidate))


def drift_section(ctx, reference, reference_segment, current, current_segment, labels) -> None:
    """The drift table (sortable), the bar chart and a verdict in words."""
    drift = run("mlmon_core.drift:compute_drift", ctx, current, reference, current_segment,
                reference_segment=reference_segment)
    st.header("Drift")
    if drift.reason:
        st.info(drift.reason)
        return None
    verdict = "**Dataset drift**" if drift.dataset_drift else "No dataset drift"
    st.markdown(f"{verdict}: {len(drift.drifted_columns)} of {len(drift.columns)} columns drifted "
                f"(threshold: {drift.dataset_share:.0%} of columns), "
                f"{len(drift.drifted_beyond_noise)} beyond sampling noise. "
                f"{drift.reference_rows:,} {labels[0]} rows vs {drift.current_rows:,} "
                f"{labels[1]} rows. *Noise level*: the distance 95% of same-distribution windows "
                "of these sizes stay under; a distance below it is likely chance, not drift.")
    table = pd.DataFrame([c.to_json() for c in drift.columns])
    table["score"] = [c.statistic if c.test not in ("ks", "chisquare", "z") or c.p_value is None
                      else 1 - c.p_value for c in drift.columns]
    order = table.sort_values(["drifted", "score"], ascending=False, na_position="last")
    shown = order[["column", "role", "kind", "test", "statistic", "noise_level", "beyond_noise",
                   "p_value", "threshold", "drifted"] + (["reason"] if "reason" in order else [])]
    st.dataframe(shown, hide_index=True, width="stretch")
    download_button(shown, "drift")
    st.altair_chart(charts.drift_bar_chart(order.dropna(subset=["score"])), width="stretch")
    return order


def distribution_section(ctx, order, reference, reference_segment, current, current_segment,
                         labels) -> None:
    """Overlaid distributions of the chosen column (worst first) and of prediction/score/target."""
    st.header("Distributions")
    names = list(order["column"]) if order is not None else list(ctx.view.roles.features)
    chosen = st.selectbox("Column", names, index=0)
    roles = ctx.view.roles
    extra = [c for c in (roles.prediction, roles.score, roles.target) if c and c != chosen]
    for column in [chosen] + extra:
        frame = run("mlmon_core.drift:distribution", ctx, column, reference, current,
                    current_segment, reference_segment=reference_segment)
        numerical = ctx.view.kind(column) == "numerical"
        st.subheader(f"{column} ({ctx.view.columns[column].role})")
        st.altair_chart(charts.distribution_chart(frame, numerical, labels), width="stretch")


def metrics_section(ctx, reference, reference_segment, current, current_segment, labels) -> None:
    """Every metric on both sides with its CI and a test of the change."""
    st.header("Metrics")
    changes = run("mlmon_core.health:metric_changes", ctx, current, reference, current_segment,
                  reference_segment)
    if not changes:
        st.info("No metric is computable on both sides (labels missing?).")
        return
    table = pd.DataFrame([{
        "metric": label(c.name), labels[0]: c.reference.value,
        f"{labels[0]} CI": _ci(c.reference), labels[1]: c.current.value,
        f"{labels[1]} CI": _ci(c.current), "difference": c.difference, "p_value": c.p_value,
        "in words": c.sentence} for c in changes])
    worse = [c.sentence for c in changes if c.worse]
    if worse:
        st.warning("Significantly worse: " + "; ".join(worse))
    st.dataframe(table, hide_index=True, width="stretch")
    download_button(table, "metric-changes")


def _ci(metric) -> str:
    if metric.ci_low is None or metric.ci_high is None:
        return "–"
    return f"{metric.ci_low:.3f}–{metric.ci_high:.3f}"


def drift_explanation_section(ctx, reference, current, versions: bool) -> None:
    """A classifier telling the two sides apart: its AUC and the features that moved jointly."""
    st.header("What moved jointly")
    if versions:
        st.caption("Available when comparing two periods.")
        return
    st.caption("A classifier is trained to tell reference rows from current rows; its AUC is a "
               "multivariate drift score (0.5 = indistinguishable) and its SHAP importances name "
               "the features that moved most jointly.")
    if not st.toggle("Explain the drift (trains a classifier on a sample)", key="explain-drift"):
        return
    with st.spinner("Training the domain classifier on a sample…"):
        result = run("mlmon_core.attributions:drift_explanation", ctx, current, reference,
                     ctx.segment)
    if result.reason:
        st.info(result.reason)
        return
    if result.model_quality is not None:
        st.markdown(result.model_quality.describe())
    st.caption(f"{result.sample_rows:,} current and {result.reference_rows or 0:,} reference rows "
               "sampled.")
    st.altair_chart(charts.importance_chart(result.features), width="stretch")


def main() -> None:
    """Render the page."""
    ctx = require_context()
    st.title("Compare")
    reference, reference_segment, current, current_segment, labels = _sides(ctx)
    st.caption(f"{labels[0]} ({sql.describe_segment(reference_segment)}) vs {labels[1]} "
               f"({sql.describe_segment(current_segment)})")
    found: dict = {}

    def drift_part() -> None:
        found["order"] = drift_section(ctx, reference, reference_segment, current,
                                       current_segment, labels)

    guarded(drift_part)
    guarded(lambda: distribution_section(ctx, found.get("order"), reference, reference_segment,
                                         current, current_segment, labels))
    guarded(lambda: metrics_section(ctx, reference, reference_segment, current, current_segment,
                                    labels))
    guarded(lambda: drift_explanation_section(ctx, reference, current,
                                              versions=reference_segment != current_segment))


guarded(main)
