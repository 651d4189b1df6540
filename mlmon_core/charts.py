"""Altair chart builders. They take analysis results (small DataFrames) and never touch data."""

from __future__ import annotations

import altair as alt
import pandas as pd

HEIGHT = 220
_AXIS_ROOM = 100   # pixels of a bar chart's height taken by the x axis and the legend


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


def metric_trend_chart(realized: pd.DataFrame, estimated: pd.DataFrame | None = None,
                       reference_value: float | None = None, title: str = "") -> alt.Chart:
    """A metric per bucket with its 95% CI band; estimated values (dashed) where labels are missing.

    ``realized`` and ``estimated`` have columns start, value, ci_low, ci_high.
    """
    frames = []
    if realized is not None and not realized.empty:
        frames.append(realized.assign(series="realized"))
    if estimated is not None and not estimated.empty:
        frames.append(estimated.assign(series="estimated (no labels yet)"))
    if not frames:
        return _empty("no values to show in this window")
    data = pd.concat(frames, ignore_index=True).dropna(subset=["value"])
    color = alt.Color("series:N", title=None, scale=alt.Scale(
        domain=["realized", "estimated (no labels yet)"], range=["#4c78a8", "#f58518"]))
    base = alt.Chart(data).encode(x=alt.X("start:T", title=None))
    band = base.mark_area(opacity=0.2).encode(y=alt.Y("ci_low:Q", title=title or "value",
                                                      scale=alt.Scale(zero=False)),
                                              y2="ci_high:Q", color=color)
    line = base.mark_line(point=True).encode(
        y="value:Q", color=color,
        strokeDash=alt.condition("datum.series == 'realized'", alt.value([1, 0]), alt.value([5, 3])),
        tooltip=[alt.Tooltip("start:T", title="from"), "series:N",
                 alt.Tooltip("value:Q", format=".4f"), alt.Tooltip("ci_low:Q", format=".4f"),
                 alt.Tooltip("ci_high:Q", format=".4f")])
    layers = [band, line]
    if reference_value is not None:
        rule = alt.Chart(pd.DataFrame({"reference": [reference_value]})).mark_rule(
            color="gray", strokeDash=[2, 2]).encode(y="reference:Q",
                                                    tooltip=[alt.Tooltip("reference:Q", format=".4f")])
        layers.append(rule)
    return alt.layer(*layers).properties(height=HEIGHT)


def service_chart(buckets: pd.DataFrame, column: str, title: str, percent: bool = False) -> alt.Chart:
    """One service-health series per bucket (latency percentile, error rate, throughput)."""
    if buckets is None or buckets.empty or column not in buckets:
        return _empty("no service data")
    axis = alt.Axis(format="%") if percent else alt.Axis()
    return alt.Chart(buckets.dropna(subset=[column])).mark_line(point=True).encode(
        x=alt.X("start:T", title=None), y=alt.Y(f"{column}:Q", title=title, axis=axis),
        tooltip=[alt.Tooltip("start:T", title="from"),
                 alt.Tooltip(f"{column}:Q", format=".2%" if percent else ",.1f")],
    ).properties(height=HEIGHT)


def drift_bar_chart(columns: pd.DataFrame) -> alt.Chart:
    """Drift score per column, coloured by verdict (columns: column, score, drifted, test)."""
    if columns.empty:
        return _empty("no column could be tested")
    return alt.Chart(columns).mark_bar().encode(
        x=alt.X("score:Q", title="drift score (distance, or 1 − p-value for tests)"),
        y=alt.Y("column:N", sort="-x", title=None, axis=alt.Axis(labelLimit=240)),
        color=alt.Color("drifted:N", title="drifted", scale=alt.Scale(
            domain=[True, False], range=["#e45756", "#9ecae9"])),
        tooltip=["column:N", "test:N", alt.Tooltip("statistic:Q", format=".4f"),
                 alt.Tooltip("p_value:Q", format=".4g"), "drifted:N"],
    ).properties(height=_AXIS_ROOM + 22 * len(columns))


def distribution_chart(frame: pd.DataFrame, numerical: bool, labels: tuple[str, str]) -> alt.Chart:
    """Reference vs current distribution of one column, overlaid (shares, so sizes compare)."""
    if frame is None or frame.empty:
        return _empty("no values in either window")
    reference_label, current_label = labels
    if numerical:
        long = pd.concat([
            frame.assign(window=reference_label, share=frame["reference_share"]),
            frame.assign(window=current_label, share=frame["current_share"])])
        return alt.Chart(long).mark_bar(opacity=0.55, binSpacing=0).encode(
            x=alt.X("left:Q", bin="binned", title=None), x2="right:Q",
            y=alt.Y("share:Q", stack=None, axis=alt.Axis(format="%"), title="share of rows"),
            color=alt.Color("window:N", title=None),
            tooltip=["window:N", alt.Tooltip("left:Q", format=",.4g"),
                     alt.Tooltip("right:Q", format=",.4g"), alt.Tooltip("share:Q", format=".2%")],
        ).properties(height=HEIGHT + 40)
    long = pd.concat([
        frame.assign(window=reference_label, share=frame["reference_share"]),
        frame.assign(window=current_label, share=frame["current_share"])])
    long["value"] = long["value"].astype(str)
    return alt.Chart(long).mark_bar().encode(
        x=alt.X("share:Q", axis=alt.Axis(format="%"), title="share of rows"),
        y=alt.Y("value:N", title=None, sort="-x"),
        yOffset="window:N",
        color=alt.Color("window:N", title=None),
        tooltip=["window:N", "value:N", alt.Tooltip("share:Q", format=".2%")],
    ).properties(height=max(HEIGHT, 34 * frame["value"].nunique()))


# ---------------------------------------------------------------- segments

_VERDICT_COLORS = {"worse than the rest": "#e45756", "better than the rest": "#4c78a8",
                   "above the rest": "#f58518", "below the rest": "#54a24b",
                   "no clear difference": "#bab0ac", "not tested": "#dddddd"}


def _verdicts(cells: pd.DataFrame, lower_is_better: bool | None, alpha: float = 0.05) -> pd.Series:
    """Per cell: worse/better (or above/below) than the rest when p < alpha."""
    def verdict(row) -> str:
        if pd.isna(row["p_value"]):
            return "not tested"
        if row["p_value"] >= alpha or pd.isna(row["difference_vs_rest"]):
            return "no clear difference"
        higher = row["difference_vs_rest"] > 0
        if lower_is_better is None:
            return "above the rest" if higher else "below the rest"
        return "worse than the rest" if higher == lower_is_better else "better than the rest"
    return cells.apply(verdict, axis=1) if not cells.empty else pd.Series(dtype=str)


def breakdown_bar_chart(cells: pd.DataFrame, overall: float | None, title: str,
                        lower_is_better: bool | None = True) -> alt.Chart:
    """A metric per cell (one feature): a dot (sized by rows) with its 95% CI, in the given
    (sorted) order, coloured by its verdict against the rest; a dashed rule at the overall value.
    ``cells`` is ``segments.Breakdown.frame()``."""
    data = cells.dropna(subset=["value"]) if not cells.empty else cells
    if data.empty:
        return _empty("no cell has a value to show")
    data = data.assign(verdict=_verdicts(data, lower_is_better))
    y = alt.Y("label:N", sort=list(data["label"]), title=None,
              axis=alt.Axis(labelLimit=320, labelOverlap=False))
    color = alt.Color("verdict:N", title=None, scale=alt.Scale(
        domain=list(_VERDICT_COLORS), range=list(_VERDICT_COLORS.values())))
    tooltip = ["label:N", alt.Tooltip("value:Q", format=".4f", title=title),
               alt.Tooltip("ci_low:Q", format=".4f"), alt.Tooltip("ci_high:Q", format=".4f"),
               alt.Tooltip("rows:Q", format=","), alt.Tooltip("share:Q", format=".1%"),
               alt.Tooltip("rest_value:Q", format=".4f", title="rest"),
               alt.Tooltip("p_value:Q", format=".3g"), "verdict:N"]
    base = alt.Chart(data).encode(y=y)
    whiskers = base.mark_rule(strokeWidth=2).encode(
        x=alt.X("ci_low:Q", title=f"{title} (95% CI)", scale=alt.Scale(zero=False)),
        x2="ci_high:Q", color=color)
    dots = base.mark_point(filled=True, opacity=1).encode(
        x="value:Q", color=color, tooltip=tooltip,
        size=alt.Size("rows:Q", title="rows", scale=alt.Scale(range=[40, 400]), legend=None))
    layers = [whiskers, dots]
    if overall is not None:
        layers.append(alt.Chart(pd.DataFrame({"overall": [overall]})).mark_rule(
            color="black", strokeDash=[4, 3]).encode(
            x="overall:Q", tooltip=[alt.Tooltip("overall:Q", format=".4f")]))
    return alt.layer(*layers).properties(height=max(120, 30 * len(data) + 40))


def breakdown_heatmap(cells: pd.DataFrame, features: tuple[str, str], overall: float | None,
                      title: str, lower_is_better: bool | None = True) -> alt.Chart:
    """Two-feature heat map: colour is the cell's value (diverging around the overall value, red
    where worse), text its value; tooltip size, CI and p-value. ``cells`` is ``Breakdown.frame()``."""
    data = cells.dropna(subset=["value"]) if not cells.empty else cells
    if data.empty:
        return _empty("no cell has a value to show")
    rows_order = list(data.sort_values("order_0")["short_0"].drop_duplicates())
    columns_order = list(data.sort_values("order_1")["short_1"].drop_duplicates())
    # "redblue" runs red (low) to blue (high): reversed when high values are the bad ones.
    scheme = "blueorange" if lower_is_better is None else "redblue"
    scale = alt.Scale(scheme=scheme, reverse=lower_is_better is True,
                      domainMid=overall if overall is not None else None)
    base = alt.Chart(data).encode(
        x=alt.X("short_1:N", sort=columns_order, title=features[1],
                axis=alt.Axis(labelAngle=0, labelLimit=160, orient="top")),
        y=alt.Y("short_0:N", sort=rows_order, title=features[0],
                axis=alt.Axis(labelLimit=200, labelOverlap=False)))
    height = max(220, 40 * len(rows_order) + 60)
    rect = base.mark_rect().encode(
        color=alt.Color("value:Q", title=title, scale=scale,
                        legend=alt.Legend(gradientLength=max(60, height - 110))),
        tooltip=[alt.Tooltip("label:N", title="cell"), alt.Tooltip("value:Q", format=".4f"),
                 alt.Tooltip("ci_low:Q", format=".4f"), alt.Tooltip("ci_high:Q", format=".4f"),
                 alt.Tooltip("rows:Q", format=","), alt.Tooltip("share:Q", format=".1%"),
                 alt.Tooltip("rest_value:Q", format=".4f", title="rest"),
                 alt.Tooltip("p_value:Q", format=".3g")])
    text = base.mark_text(fontSize=11).encode(
        text=alt.Text("value:Q", format=".3f"),
        tooltip=[alt.Tooltip("label:N", title="cell"), alt.Tooltip("rows:Q", format=",")])
    return (rect + text).properties(height=height)


def segment_share_chart(trend: pd.DataFrame) -> alt.Chart:
    """The segment's share of traffic per bucket with its 95% CI band (``SegmentTrend.frame()``)."""
    if trend is None or trend.empty:
        return _empty("no rows in this window")
    base = alt.Chart(trend).encode(x=alt.X("start:T", title=None))
    band = base.mark_area(opacity=0.2, color="#4c78a8").encode(
        y=alt.Y("share_ci_low:Q", title="share of traffic", axis=alt.Axis(format="%")),
        y2="share_ci_high:Q")
    line = base.mark_line(point=True, color="#4c78a8").encode(
        y="share:Q",
        tooltip=[alt.Tooltip("start:T", title="from"), alt.Tooltip("share:Q", format=".2%"),
                 alt.Tooltip("segment_rows:Q", format=","), alt.Tooltip("rows:Q", format=",")])
    return (band + line).properties(height=HEIGHT)


def segment_metric_chart(trend: pd.DataFrame, title: str) -> alt.Chart:
    """A per-row metric per bucket in the segment and in the rest, each with its 95% CI band."""
    if trend is None or trend.empty:
        return _empty("no rows in this window")
    parts = []
    for side, name in (("segment", "segment"), ("rest", "rest of the rows")):
        part = trend[["start", f"{side}_value", f"{side}_ci_low", f"{side}_ci_high", f"{side}_n"]]
        part.columns = ["start", "value", "ci_low", "ci_high", "n"]
        parts.append(part.assign(series=name))
    data = pd.concat(parts, ignore_index=True).dropna(subset=["value"])
    if data.empty:
        return _empty("no values to show in this window")
    color = alt.Color("series:N", title=None, scale=alt.Scale(
        domain=["segment", "rest of the rows"], range=["#e45756", "#9d9d9d"]))
    base = alt.Chart(data).encode(x=alt.X("start:T", title=None))
    band = base.mark_area(opacity=0.15).encode(
        y=alt.Y("ci_low:Q", title=title, scale=alt.Scale(zero=False)), y2="ci_high:Q", color=color)
    line = base.mark_line(point=True).encode(
        y="value:Q", color=color,
        tooltip=[alt.Tooltip("start:T", title="from"), "series:N",
                 alt.Tooltip("value:Q", format=".4f"), alt.Tooltip("ci_low:Q", format=".4f"),
                 alt.Tooltip("ci_high:Q", format=".4f"), alt.Tooltip("n:Q", format=",")])
    return (band + line).properties(height=HEIGHT)


# ---------------------------------------------------------------- models (shadow and A/B)

def agreement_chart(by_bucket: pd.DataFrame) -> alt.Chart:
    """Share of paired requests on which the two models agree, per bucket, with its 95% CI band
    (``ModelComparison.by_bucket``)."""
    data = by_bucket.dropna(subset=["agreement"]) if by_bucket is not None else None
    if data is None or data.empty:
        return _empty("no paired requests to show")
    base = alt.Chart(data).encode(x=alt.X("start:T", title=None))
    band = base.mark_area(opacity=0.2, color="#4c78a8").encode(
        y=alt.Y("low:Q", title="agreement", axis=alt.Axis(format="%"), scale=alt.Scale(zero=False)),
        y2="high:Q")
    line = base.mark_line(point=True, color="#4c78a8").encode(
        y="agreement:Q",
        tooltip=[alt.Tooltip("start:T", title="from"), alt.Tooltip("agreement:Q", format=".2%"),
                 alt.Tooltip("low:Q", format=".2%", title="95% CI low"),
                 alt.Tooltip("high:Q", format=".2%", title="95% CI high"),
                 alt.Tooltip("comparable:Q", format=",", title="pairs")])
    return (band + line).properties(height=HEIGHT)


def paired_accuracy_chart(by_bucket: pd.DataFrame, production: str, candidate: str) -> alt.Chart:
    """Each model's accuracy on the labeled pairs, per bucket (``ModelComparison.by_bucket``)."""
    if by_bucket is None or by_bucket.empty:
        return _empty("no labeled pairs to show")
    long = by_bucket.melt(id_vars=["start", "labeled_pairs"],
                          value_vars=["production_accuracy", "candidate_accuracy"],
                          var_name="model", value_name="accuracy").dropna(subset=["accuracy"])
    if long.empty:
        return _empty("no labeled pairs to show")
    names = {"production_accuracy": f"{production} (production)",
             "candidate_accuracy": f"{candidate} (candidate)"}
    long["model"] = long["model"].map(names)
    return alt.Chart(long).mark_line(point=True).encode(
        x=alt.X("start:T", title=None),
        y=alt.Y("accuracy:Q", title="accuracy", scale=alt.Scale(zero=False)),
        color=alt.Color("model:N", title=None, scale=alt.Scale(
            domain=list(names.values()), range=["#4c78a8", "#f58518"]),
            legend=alt.Legend(orient="bottom")),
        tooltip=[alt.Tooltip("start:T", title="from"), "model:N",
                 alt.Tooltip("accuracy:Q", format=".4f"),
                 alt.Tooltip("labeled_pairs:Q", format=",", title="labeled pairs")],
    ).properties(height=HEIGHT)


def disagreement_chart(groups: pd.DataFrame, limit: int = 15) -> alt.Chart:
    """The disagreement rate of the first ``limit`` feature groups (in the given order) with a tick
    at the rate on the rest of the pairs (``ModelComparison.disagreement``)."""
    data = groups.head(limit) if groups is not None else None
    if data is None or data.empty:
        return _empty("no feature groups to show")
    data = data.drop(columns=["segment"], errors="ignore")   # a list of conditions: not chartable
    data = data.assign(verdict=data["significant"].map(
        {True: "disagree more (q < 0.05)", False: "no clear difference"}).fillna("not tested"))
    order = list(data["group"])
    y = alt.Y("group:N", sort=order, title=None, axis=alt.Axis(labelLimit=320))
    tooltip = ["group:N", alt.Tooltip("disagreement_rate:Q", format=".2%", title="disagreement"),
               alt.Tooltip("rest_rate:Q", format=".2%", title="rest of the pairs"),
               alt.Tooltip("pairs:Q", format=","), alt.Tooltip("disagreements:Q", format=","),
               alt.Tooltip("q_value:Q", format=".3g")]
    bars = alt.Chart(data).mark_bar().encode(
        y=y, x=alt.X("disagreement_rate:Q", title="disagreement rate", axis=alt.Axis(format="%")),
        color=alt.Color("verdict:N", title=None, scale=alt.Scale(
            domain=["disagree more (q < 0.05)", "no clear difference", "not tested"],
            range=["#e45756", "#bab0ac", "#dddddd"]), legend=alt.Legend(orient="bottom")),
        tooltip=tooltip)
    ticks = alt.Chart(data).mark_tick(color="black", thickness=2, size=16).encode(
        y=y, x="rest_rate:Q", tooltip=tooltip)
    return (bars + ticks).properties(height=alt.Step(24))


def arm_metrics_chart(metrics: pd.DataFrame) -> alt.Chart:
    """Each arm's metrics as points with 95% CI error bars, one row per metric (columns arm,
    metric, value, ci_low, ci_high, trials)."""
    data = metrics.dropna(subset=["value"]) if metrics is not None and not metrics.empty else None
    if data is None or data.empty:
        return _empty("no arm has a metric to show")
    order = list(dict.fromkeys(data["metric"]))
    base = alt.Chart(data).encode(
        y=alt.Y("metric:N", sort=order, title=None, axis=alt.Axis(labelLimit=240)),
        yOffset=alt.YOffset("arm:N"),
        color=alt.Color("arm:N", title="arm", scale=alt.Scale(scheme="tableau10")))
    bars = base.mark_rule(strokeWidth=2).encode(
        x=alt.X("ci_low:Q", title="value (95% CI)", axis=alt.Axis(format="%"),
                scale=alt.Scale(domain=[0, 1])), x2="ci_high:Q")
    points = base.mark_point(filled=True, size=70).encode(
        x="value:Q",
        tooltip=["arm:N", "metric:N", alt.Tooltip("value:Q", format=".2%"),
                 alt.Tooltip("ci_low:Q", format=".2%", title="95% CI low"),
                 alt.Tooltip("ci_high:Q", format=".2%", title="95% CI high"),
                 alt.Tooltip("trials:Q", format=",", title="n")])
    return (bars + points).properties(height=alt.Step(18))   # per arm: yOffset takes the step


def importance_chart(features: pd.DataFrame, limit: int = 20) -> alt.Chart:
    """Mean |SHAP| per feature with its CI (columns feature, mean_abs, ci_low, ci_high)."""
    if features is None or features.empty:
        return _empty("no attributions to show")
    top = features.sort_values("mean_abs", ascending=False).head(limit)
    base = alt.Chart(top).encode(y=alt.Y("feature:N", sort="-x", title=None))
    bars = base.mark_bar(color="#4c78a8").encode(
        x=alt.X("mean_abs:Q", title="mean |SHAP|"),
        tooltip=["feature:N", alt.Tooltip("mean_abs:Q", format=".4f"),
                 alt.Tooltip("ci_low:Q", format=".4f"), alt.Tooltip("ci_high:Q", format=".4f")])
    layers = [bars]
    if {"ci_low", "ci_high"} <= set(top.columns) and top["ci_low"].notna().any():
        layers.append(base.mark_rule(color="black").encode(x="ci_low:Q", x2="ci_high:Q"))
    return alt.layer(*layers).properties(height=max(120, 20 * len(top)))


# ---------------------------------------------------------------- report

def slice_comparison_chart(slices: pd.DataFrame, title: str, percent: bool = True) -> alt.Chart:
    """Each found segment's error beside the error of every other row (the report's weak segments).

    ``slices`` has columns label, value (inside the segment), rest_value (elsewhere), rows, share.
    """
    if slices is None or slices.empty:
        return _empty("no segment to show")
    order = list(slices["label"])
    long = pd.concat([
        slices.assign(where="in the segment", error=slices["value"]),
        slices.assign(where="elsewhere", error=slices["rest_value"])], ignore_index=True)
    number = ".1%" if percent else ",.4g"
    return alt.Chart(long).mark_bar().encode(
        x=alt.X("error:Q", title=title, axis=alt.Axis(format="%") if percent else alt.Axis()),
        y=alt.Y("label:N", sort=order, title=None, axis=alt.Axis(labelLimit=360)),
        yOffset=alt.YOffset("where:N", sort=["in the segment", "elsewhere"]),
        color=alt.Color("where:N", title=None, scale=alt.Scale(
            domain=["in the segment", "elsewhere"], range=["#e45756", "#bab0ac"])),
        tooltip=["label:N", "where:N", alt.Tooltip("error:Q", format=number, title=title),
                 alt.Tooltip("rows:Q", format=",", title="rows in the segment"),
                 alt.Tooltip("share:Q", format=".1%", title="share of rows")],
    ).properties(height=max(120, 70 * len(slices)))


# ---------------------------------------------------------------- attributions

_CHANGE_COLORS = {"rose": "#e45756", "fell": "#4c78a8", "within noise": "#bab0ac"}
_PUSH_COLORS = {"raises the output": "#e45756", "lowers the output": "#4c78a8"}


def shap_importance_chart(features: pd.DataFrame, current_label: str,
                          reference_label: str | None = None, title: str = "mean |SHAP|",
                          limit: int = 20,
                          columns: tuple[str, str, str] = ("mean_abs", "ci_low", "ci_high")
                          ) -> alt.Chart:
    """Horizontal bars of mean |SHAP| per feature with 95% CI whiskers; with ``reference_label``,
    the reference's bar (and CI) beside each. ``features`` is ``Importance.features``;
    ``columns`` names the value and its CI (e.g. the error explanation's ``error_share``)."""
    value = columns[0]
    data = features.dropna(subset=[value]) if not features.empty else features
    if data.empty:
        return _empty("no attributions to show")
    data = data.sort_values(value, ascending=False).head(limit)
    parts = [data[["feature", *columns]].set_axis(
        ["feature", "value", "ci_low", "ci_high"], axis=1).assign(series=current_label)]
    if reference_label is not None and data["reference_mean_abs"].notna().any():
        parts.append(data[["feature", "reference_mean_abs", "reference_ci_low",
                           "reference_ci_high"]].set_axis(
            ["feature", "value", "ci_low", "ci_high"], axis=1).assign(series=reference_label))
    long = pd.concat(parts, ignore_index=True)
    series = list(dict.fromkeys(long["series"]))
    color = alt.Color("series:N", title=None, scale=alt.Scale(
        domain=series, range=["#4c78a8", "#bab0ac"][:len(series)]), legend=alt.Legend(
        orient="bottom", labelLimit=400))
    base = alt.Chart(long).encode(
        y=alt.Y("feature:N", sort=list(data["feature"]), title=None, axis=alt.Axis(labelLimit=240)),
        yOffset=alt.YOffset("series:N", sort=series))
    bars = base.mark_bar().encode(
        x=alt.X("value:Q", title=title), color=color,
        tooltip=["feature:N", "series:N", alt.Tooltip("value:Q", format=".4f", title=title),
                 alt.Tooltip("ci_low:Q", format=".4f", title="95% CI low"),
                 alt.Tooltip("ci_high:Q", format=".4f", title="95% CI high")])
    whiskers = base.mark_rule(color="#333").encode(x="ci_low:Q", x2="ci_high:Q")
    per_feature = 14 * len(series) + 10
    # Streamlit fits the whole chart (axis and legend too) into the height: leave room for them.
    return (bars + whiskers).properties(height=_AXIS_ROOM + per_feature * len(data))


def attribution_drift_chart(changes: pd.DataFrame, title: str = "change in mean |SHAP|"
                            ) -> alt.Chart:
    """Each feature's change in importance (window − reference) with its 95% CI, largest first;
    red where it rose beyond noise, blue where it fell, grey where the CI includes 0."""
    data = changes.dropna(subset=["difference"]) if not changes.empty else changes
    if data.empty:
        return _empty("no change to show")
    low, high = data["difference_ci_low"], data["difference_ci_high"]
    data = data.assign(change=["rose" if lo > 0 else "fell" if hi < 0 else "within noise"
                               for lo, hi in zip(low, high)])
    base = alt.Chart(data).encode(
        y=alt.Y("feature:N", sort=list(data["feature"]), title=None, axis=alt.Axis(labelLimit=240)))
    bars = base.mark_bar().encode(
        x=alt.X("difference:Q", title=title),
        color=alt.Color("change:N", title=None, scale=alt.Scale(
            domain=list(_CHANGE_COLORS), range=list(_CHANGE_COLORS.values())),
            legend=alt.Legend(orient="bottom")),
        tooltip=["feature:N", alt.Tooltip("difference:Q", format="+.4f"),
                 alt.Tooltip("difference_ci_low:Q", format="+.4f", title="95% CI low"),
                 alt.Tooltip("difference_ci_high:Q", format="+.4f", title="95% CI high"),
                 alt.Tooltip("mean_abs:Q", format=".4f", title="window"),
                 alt.Tooltip("reference_mean_abs:Q", format=".4f", title="reference"), "change:N"])
    whiskers = base.mark_rule(color="#333").encode(x="difference_ci_low:Q", x2="difference_ci_high:Q")
    zero = alt.Chart(pd.DataFrame({"zero": [0.0]})).mark_rule(color="black").encode(x="zero:Q")
    return alt.layer(bars, whiskers, zero).properties(height=_AXIS_ROOM + 26 * len(data))


def _value_text(value) -> str:
    """A feature value as a short label: 71,400 rather than 7.14e+04."""
    if value is None or (isinstance(value, float) and value != value):
        return "missing"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if abs(value) >= 1000:
        return f"{value:,.0f}" if float(value).is_integer() or abs(value) >= 1e5 else f"{value:,.1f}"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def waterfall_steps(features: pd.DataFrame, base_value: float | None, limit: int = 12
                    ) -> pd.DataFrame:
    """The waterfall's bars: base value, the ``limit`` largest contributions (the rest summed
    into one bar), then the output. Columns: step, order, start, end, shap, kind."""
    table = features.assign(shap=pd.to_numeric(features["shap"], errors="coerce").fillna(0.0))
    shown, rest = table.head(limit), table.iloc[limit:]
    labels = [f"{f} = {_value_text(v)}" for f, v in zip(shown["feature"], shown["value"])]
    contributions = list(shown["shap"])
    if len(rest):
        labels.append(f"{len(rest)} other features")
        contributions.append(float(rest["shap"].sum()))
    start = 0.0 if base_value is None else float(base_value)
    rows = [{"step": "base value" if base_value is not None else "start (no base value logged)",
             "start": start, "end": start, "shap": None, "kind": "total"}]
    for label, contribution in zip(labels, contributions):
        rows.append({"step": label, "start": start, "end": start + contribution, "shap": contribution,
                     "kind": "raises the output" if contribution >= 0 else "lowers the output"})
        start += contribution
    rows.append({"step": "output", "start": start, "end": start, "shap": None, "kind": "total"})
    frame = pd.DataFrame(rows)
    frame["order"] = range(len(frame))
    frame["label"] = [f"{s:+.3f}" if s is not None and s == s else f"{e:.3f}"
                      for s, e in zip(frame["shap"], frame["end"])]
    return frame


def waterfall_chart(features: pd.DataFrame, base_value: float | None, output_space: str | None,
                    limit: int = 12) -> alt.Chart:
    """One prediction's SHAP waterfall: from the base value, each feature's contribution (feature
    values in the labels; red raises the output, blue lowers it), to the output.
    ``features`` is ``RowExplanation.features`` (feature, value, shap; largest |shap| first)."""
    if features is None or features.empty:
        return _empty("no attributions for this row")
    steps = waterfall_steps(features, base_value, limit)
    order = list(steps["step"])
    title = f"model output ({output_space})" if output_space else "model output"
    y = alt.Y("step:N", sort=order, title=None, axis=alt.Axis(labelLimit=320))
    moves = steps[steps["kind"] != "total"]
    totals = steps[steps["kind"] == "total"]
    bars = alt.Chart(moves).mark_bar().encode(
        y=y, x=alt.X("start:Q", title=title, scale=alt.Scale(zero=False)), x2="end:Q",
        color=alt.Color("kind:N", title=None, scale=alt.Scale(
            domain=list(_PUSH_COLORS), range=list(_PUSH_COLORS.values())),
            legend=alt.Legend(orient="bottom")),
        tooltip=["step:N", alt.Tooltip("shap:Q", format="+.4f", title="contribution"),
                 alt.Tooltip("start:Q", format=".4f", title="from"),
                 alt.Tooltip("end:Q", format=".4f", title="to")])
    texts = alt.Chart(moves.assign(right=moves[["start", "end"]].max(axis=1))).mark_text(
        align="left", dx=4, fontSize=11).encode(y=y, x="right:Q", text="label:N")
    points = alt.Chart(totals).mark_point(filled=True, size=90, color="black", shape="diamond") \
        .encode(y=y, x="end:Q", tooltip=["step:N", alt.Tooltip("end:Q", format=".4f", title="value")])
    total_texts = alt.Chart(totals).mark_text(align="left", dx=8, fontSize=11, fontWeight="bold") \
        .encode(y=y, x="end:Q", text="label:N")
    guides = alt.Chart(totals).mark_rule(color="gray", strokeDash=[3, 3]).encode(x="end:Q")
    return alt.layer(guides, bars, texts, points, total_texts).properties(
        height=_AXIS_ROOM + 26 * len(steps))


def dependence_chart(points: pd.DataFrame, feature: str, kind: str, color_by: str | None = None,
                     color_kind: str | None = None, output_space: str | None = None) -> alt.Chart:
    """SHAP value of ``feature`` against its value, one dot per sampled row, coloured by a second
    feature (``Dependence.points``: id, value, shap, color_value). Categories are jittered."""
    data = points.dropna(subset=["shap"]) if not points.empty else points
    if data.empty:
        return _empty("no attributions to show")
    data = data.assign(value=data["value"].astype(object).where(data["value"].notna(), None))
    space = f" ({output_space})" if output_space else ""
    y = alt.Y("shap:Q", title=f"SHAP value of {feature}{space}")
    tooltip = [alt.Tooltip("id:N", title="row id"), alt.Tooltip("value:N", title=feature),
               alt.Tooltip("shap:Q", format="+.4f", title="SHAP")]
    encoding = {"y": y}
    if kind == "numerical":
        data = data.assign(value=pd.to_numeric(data["value"], errors="coerce"))
        encoding["x"] = alt.X("value:Q", title=feature, scale=alt.Scale(zero=False))
        tooltip[1] = alt.Tooltip("value:Q", title=feature, format=".4g")
    else:
        data = data.assign(value=data["value"].map(_value_text))
        encoding["x"] = alt.X("value:N", title=feature, axis=alt.Axis(labelAngle=-30))
        encoding["xOffset"] = alt.XOffset("jitter:Q", scale=alt.Scale(domain=[-1, 1]))
    if color_by:
        if color_kind == "numerical":
            data = data.assign(color_value=pd.to_numeric(data["color_value"], errors="coerce"))
            encoding["color"] = alt.Color("color_value:Q", title=color_by,
                                          scale=alt.Scale(scheme="redblue", reverse=True))
            tooltip.append(alt.Tooltip("color_value:Q", title=color_by, format=".4g"))
        else:
            data = data.assign(color_value=data["color_value"].map(_value_text))
            encoding["color"] = alt.Color("color_value:N", title=color_by)
            tooltip.append(alt.Tooltip("color_value:N", title=color_by))
    chart = alt.Chart(data).mark_circle(size=22, opacity=0.6).encode(tooltip=tooltip, **encoding)
    if kind != "numerical":
        chart = chart.transform_calculate(jitter="(random() - 0.5) * 1.6")
    zero = alt.Chart(pd.DataFrame({"zero": [0.0]})).mark_rule(color="gray", strokeDash=[3, 3]) \
        .encode(y="zero:Q")
    return alt.layer(zero, chart).properties(height=380)
