"""Segments: the sidebar's segment against the rest, breakdowns by one and two features, the
segment over time, and automatically found weak and degraded slices that open as the segment."""

import pandas as pd
import streamlit as st

from mlmon_core import charts, segments, sql
from mlmon_core.health import LOWER_IS_BETTER, label
from pages.common import (download_button, guarded, open_segment, require_context, run,
                          run_with_progress, with_explain_links)

ROW_LIMIT = 5000
CELL_COLUMNS = ["label", "rows", "share", "value", "ci_low", "ci_high", "n", "rest_value",
                "difference", "p_value", "distance", "where", "note"]
NUMBER_FORMATS = {"share": "percent", "value": "%.4f", "ci_low": "%.4f", "ci_high": "%.4f",
                  "rest_value": "%.4f", "difference": "%+.4f", "distance": "%.4f",
                  "p_value": "%.3g", "rows": "localized", "n": "localized"}


def _direction(metric: str) -> bool | None:
    """True when lower values are better, False when higher are, None when neither."""
    if metric in segments.LOWER_IS_BETTER:
        return True
    return False if metric == "accuracy" else None


def _table(frame: pd.DataFrame, columns: list[str]) -> None:
    config = {name: st.column_config.NumberColumn(format=fmt) for name, fmt in NUMBER_FORMATS.items()
              if name in columns}
    st.dataframe(frame[columns], hide_index=True, width="stretch", column_config=config)


def _format(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _ci(metric) -> str:
    if metric.ci_low is None or metric.ci_high is None:
        return "–"
    return f"{metric.ci_low:.3f}–{metric.ci_high:.3f}"


def _within(ctx) -> tuple:
    """What the sidebar narrows every side to besides the segment (the model choice)."""
    return tuple(c for c in ctx.segment if c not in ctx.conditions)


def _open_control(ctx, options: list[str], conditions: list[tuple], key: str, what: str) -> None:
    """A picker and a button that make the picked cell or slice the current segment."""
    if not options:
        return
    left, right = st.columns([4, 1], vertical_alignment="bottom")
    picked = left.selectbox(f"Open a {what} as the segment", range(len(options)),
                            format_func=lambda i: options[i], key=f"{key}-pick")
    if right.button("Open as segment", key=f"{key}-open", width="stretch"):
        open_segment(ctx, conditions[picked])


# ---------------------------------------------------------------- sections

def comparison_section(ctx) -> None:
    """Cards and a table: every metric in the segment, the rest and overall, with tests."""
    if not ctx.conditions:
        return
    st.header("Segment vs the rest")
    result = run("mlmon_core.segments:segment_vs_rest", ctx, ctx.window, ctx.conditions,
                 within=_within(ctx))
    st.markdown(result.summary)
    for note in result.notes:
        st.info(note)
    by_name = {c.name: c for c in result.comparisons}
    shown = [by_name[n] for n in result.headline if by_name[n].segment.value is not None]
    shown += [c for c in result.comparisons if c.estimated]
    segment_side = result.sides["segment"]
    cards = st.columns(1 + min(len(shown), 4))
    share = segment_side.share
    cards[0].metric("Share of traffic", "–" if share is None else f"{share:.1%}",
                    help=f"{segment_side.rows:,} rows; 95% CI {_format(segment_side.share_ci[0])}–"
                         f"{_format(segment_side.share_ci[1])}")
    for card, comparison in zip(cards[1:], shown[:4]):
        delta = None if comparison.difference is None else f"{comparison.difference:+.3f} vs rest"
        name = comparison.name.removeprefix("estimated_")
        inverse = name in LOWER_IS_BETTER or name in segments.LOWER_IS_BETTER
        card.metric(("estimated " if comparison.estimated else "") + label(name),
                    _format(comparison.segment.value), delta,
                    delta_color="inverse" if inverse else "normal", help=comparison.sentence)
    worse = [c.sentence for c in result.comparisons if c.worse]
    if worse:
        st.warning("Worse than the rest: " + "; ".join(worse[:4]))
    table = pd.DataFrame([{
        "metric": ("estimated " if c.estimated else "") + label(c.name.removeprefix("estimated_")),
        "segment": c.segment.value, "segment CI": _ci(c.segment), "rest": c.rest.value,
        "rest CI": _ci(c.rest), "overall": c.overall.value, "difference": c.difference,
        "p_value": c.p_value, "in words": c.sentence} for c in result.comparisons])
    with st.expander("All metrics: segment, rest and overall"):
        st.dataframe(table, hide_index=True, width="stretch")
        download_button(table, "segment-vs-rest")


def over_time_section(ctx, metric: str) -> None:
    """The segment's share of traffic and its metric vs the rest's, per day."""
    if not ctx.conditions:
        return
    st.header("Over time")
    trend = run("mlmon_core.segments:segment_over_time", ctx, ctx.window, ctx.conditions,
                bucket="day", metric=metric, within=_within(ctx))
    if trend.reason:
        st.info(trend.reason)
    frame = trend.frame()
    left, right = st.columns(2)
    with left:
        st.subheader("Share of traffic")
        st.altair_chart(charts.segment_share_chart(frame), width="stretch")
    with right:
        st.subheader(trend.metric_description.capitalize())
        st.altair_chart(charts.segment_metric_chart(frame, label_of(trend.metric)),
                        width="stretch")


def label_of(metric: str) -> str:
    """A per-row metric's plain name."""
    return segments.METRIC_WORDS.get(metric, metric)


def _cell_option(cell) -> str:
    """"age < 26 — 0.331 vs 0.172 elsewhere (n=1,204)" for the cell picker."""
    if cell.metric.value is None:
        return f"{cell.label} ({cell.rows:,} rows)"
    rest = "" if cell.rest.value is None else f" vs {cell.rest.value:.3f} elsewhere"
    return f"{cell.label} — {cell.metric.value:.3f}{rest} (n={cell.metric.n:,})"


def _breakdown_header(result) -> None:
    overall = result.overall
    where = "" if not result.segment else f" within {sql.describe_segment(result.segment)}"
    st.caption(f"{result.metric_description.capitalize()}{where}: overall "
               f"{_format(overall.value, 4)} (95% CI {_ci(overall)}, n={overall.n:,}) over "
               f"{result.rows:,} rows. CIs: {result.ci_method}; each cell is tested against the "
               f"rest of the rows ({result.test}). Sorted by {result.sort_by}.")
    if result.reason:
        st.info(result.reason)
    for note in result.notes:
        st.caption(f"Note: {note}.")


def breakdown_section(ctx, metric: str) -> None:
    """The metric per bin or category of one feature, sorted by distance from the rest."""
    st.header("Breakdown by one feature")
    features = list(ctx.view.roles.features)
    if not features:
        st.info("The log has no feature columns to break down by.")
        return
    feature = st.selectbox("Feature", features, key="segments-feature",
                           help="Numerical features are cut at deciles of the reference window; "
                                "missing values are a cell of their own.")
    result = run("mlmon_core.segments:breakdown", ctx, ctx.window, feature, metric, ctx.segment,
                 ctx.reference)
    _breakdown_header(result)
    frame = result.frame()
    if frame.empty:
        return
    st.altair_chart(charts.breakdown_bar_chart(frame, result.overall.value,
                                               label_of(result.metric), _direction(result.metric)),
                    width="stretch")
    with st.expander("Cells (table)"):
        _table(frame, CELL_COLUMNS)
        download_button(frame, f"breakdown-{feature}")
    _open_control(ctx, [_cell_option(c) for c in result.cells],
                  [c.conditions for c in result.cells], "segments-cell", "cell")


def heatmap_section(ctx, metric: str) -> None:
    """The metric per pair of cells of two features."""
    features = list(ctx.view.roles.features)
    if len(features) < 2:
        return
    st.header("Breakdown by two features")
    left, right = st.columns(2)
    first = left.selectbox("Rows", features, index=0, key="segments-heat-a")
    others = [f for f in features if f != first]
    second = right.selectbox("Columns", others, index=0, key="segments-heat-b")
    result = run("mlmon_core.segments:breakdown2", ctx, ctx.window, first, second, metric,
                 ctx.segment, ctx.reference)
    _breakdown_header(result)
    frame = result.frame()
    if frame.empty:
        return
    st.altair_chart(charts.breakdown_heatmap(frame, (first, second), result.overall.value,
                                             label_of(result.metric), _direction(result.metric)),
                    width="stretch")
    with st.expander("Cells (table)"):
        _table(frame, CELL_COLUMNS)
        download_button(frame, f"breakdown-{first}-{second}")
    _open_control(ctx, [_cell_option(c) for c in result.cells],
                  [c.conditions for c in result.cells], "segments-heat-cell", "cell")


def _slice_table(report) -> pd.DataFrame:
    rows = []
    for found in report.slices:
        own = found.conditions[len(report.segment):]     # without the searched segment
        row = {"slice": sql.describe_segment(own), "rows": found.rows, "value": found.value,
               "rest": found.complement_value, "q_value": found.q_value, "level": found.level}
        if report.mode == "degraded":
            row.update({"before": found.reference_value,
                        "rest before": found.complement_reference_value,
                        "excess rise": found.excess_rise})
        rows.append(row)
    return pd.DataFrame(rows)


def _slice_report(ctx, report, key: str) -> None:
    what = "weak" if report.mode == "weak" else "degraded"
    overall = "–" if report.overall is None else f"{report.overall:.3f}"
    head = (f"{report.metric_description.capitalize()}: {report.rows:,} rows, overall {overall}; "
            f"{report.candidates_tested:,} candidate slices tested")
    if report.compare_to is not None:
        head += f", compared with {report.compare_to}"
    st.caption(head + ".")
    if report.reason:
        st.info(report.reason)
    if not report.slices:
        return
    table = _slice_table(report)
    st.dataframe(table, hide_index=True, width="stretch", column_config={
        "value": st.column_config.NumberColumn(format="%.4f"),
        "rest": st.column_config.NumberColumn(format="%.4f"),
        "q_value": st.column_config.NumberColumn(format="%.3g")})
    download_button(table, f"{what}-slices")
    _open_control(ctx, [s.description for s in report.slices],
                  [s.conditions for s in report.slices], key, f"{what} slice")


def slices_section(ctx) -> None:
    """Weak and degraded slices found automatically, each one click from being the segment."""
    st.header("Found slices")
    st.caption("Weak slices have a higher error than the rest of the window's rows; degraded "
               "slices got worse since the reference window by more than the rest did. Every "
               "candidate is tested and q-values control the false discovery rate.")
    if not st.session_state.get("segments-find-slices"):
        if not st.button("Find weak and degraded slices", key="segments-find", type="primary"):
            return
        st.session_state["segments-find-slices"] = True
    weak = run_with_progress("mlmon_core.slices:find_slices", ctx, "Finding weak slices",
                             ctx.window, ctx.segment)
    degraded = run_with_progress("mlmon_core.slices:find_degraded_slices", ctx,
                                 "Finding degraded slices", ctx.window, ctx.reference, ctx.segment)
    weak_tab, degraded_tab = st.tabs([f"Weak slices ({len(weak.slices)})",
                                      f"Degraded slices ({len(degraded.slices)})"])
    with weak_tab:
        _slice_report(ctx, weak, "segments-weak")
    with degraded_tab:
        _slice_report(ctx, degraded, "segments-degraded")


def rows_section(ctx) -> None:
    """The segment's first rows by time, downloadable."""
    st.header("Rows")
    if not st.toggle(f"Show the segment's rows (the first {ROW_LIMIT:,} by time)",
                     key="segments-rows"):
        return
    frame = run("mlmon_core.segments:segment_rows", ctx, ctx.window, ctx.segment, limit=ROW_LIMIT)
    st.caption(f"{len(frame):,} rows shown.")
    linked, config = with_explain_links(frame, ctx.view.roles.id)
    st.dataframe(linked, hide_index=True, width="stretch", column_config=config)
    download_button(frame, "segment-rows")


def main() -> None:
    """Render the page."""
    ctx = require_context()
    st.title("Segments")
    st.caption(f"{ctx.window} · {ctx.segment_text} · numerical bins from the reference window "
               f"{ctx.reference}")
    if not ctx.conditions:
        st.info("No segment yet: type one in the sidebar (such as `age >= 60 and region = 'West'`), "
                "or open a breakdown cell or a found slice below.")
    names = list(segments.row_metrics(ctx.view))
    default = segments.default_row_metric(ctx.view)
    metric = st.selectbox("Metric for breakdowns and trends", names,
                          index=names.index(default) if default in names else 0,
                          format_func=label_of, key="segments-metric")
    guarded(lambda: comparison_section(ctx))
    for section in (over_time_section, breakdown_section, heatmap_section):
        guarded(lambda: section(ctx, metric))
    guarded(lambda: slices_section(ctx))
    guarded(lambda: rows_section(ctx))


guarded(main)
