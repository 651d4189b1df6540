"""Models: a shadow candidate against production on the same requests, and the arms of an A/B test.

This page compares models, so it ignores the sidebar's Model / version choice: every call uses
``ctx.conditions`` (the typed segment), never ``ctx.segment`` (which adds the model condition).
"""

import pandas as pd
import streamlit as st

from mlmon_core import charts, sql
from mlmon_core.compare import AB_METRICS
from mlmon_core.errors import MlmonError
from mlmon_core.metrics import p_value_text
from pages.common import (ALL_MODELS, download_button, guarded, model_counts, open_segment,
                          require_context, run)

MAX_SPLIT_ARMS = 8
CHART_GROUPS = 15
PAIRINGS = {"given": "the columns picked under Pairing key",
            "request_id": "the request_id column",
            "id": "the id column (the same ids occur under both models)",
            "timestamp+features": "the timestamp and every feature (no request key found)"}
METRIC_WORDS = {"accuracy": "accuracy", "precision": "precision", "recall": "recall",
                "positive_rate": "positive rate", "actual_positive_rate": "actual positive rate"}
AB_FORMATS = {"value": "%.4f", "ci_low": "%.4f", "ci_high": "%.4f", "successes": "localized",
              "trials": "localized", "rows": "localized", "labeled_rows": "localized",
              "share_of_traffic": "percent", "difference": "%+.4f", "low": "%+.4f", "high": "%+.4f",
              "z": "%.2f", "p_value": "%.3g", "power": "percent",
              "minimum_detectable_effect": "%.4f"}
GROUP_FORMATS = {"pairs": "localized", "disagreements": "localized",
                 "disagreement_rate": "percent", "rest_rate": "percent", "difference": "%+.4f",
                 "p_value": "%.3g", "q_value": "%.3g"}


# ---------------------------------------------------------------- formatting

def _share(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def _number(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _interval(low: float | None, high: float | None, percent: bool = False) -> str:
    if low is None or high is None:
        return "–"
    return f"{low:.1%}–{high:.1%}" if percent else f"{low:.3f}–{high:.3f}"


def _power(power: float | None) -> str:
    if power is None:
        return "unknown"
    return "over 99%" if power > 0.99 else f"{power:.0%}"


def _reason(text: str | None) -> str:
    return (text or "").removeprefix("not computable because ")


# ---------------------------------------------------------------- shadow vs production

def _comparison(ctx, production: str | None, candidate: str | None, pair_on: tuple):
    with st.spinner("Pairing the two models' answers to the same requests…"):
        return run("mlmon_core.compare:compare_models", ctx, ctx.window, ctx.conditions,
                   production=production, candidate=candidate, pair_on=pair_on or None)


def _pick_models(ctx, models: list[str], pair_on: tuple):
    """Production and candidate pickers (defaults from the core) and the comparison they pick."""
    try:
        default = _comparison(ctx, None, None, pair_on)
    except MlmonError as exc:   # ambiguous defaults (a tie, several candidates): the user names them
        default = None
        st.caption(f"Pick the two models to compare: {str(exc).split('; name')[0]}.")
    first = default.production if default else models[0]
    left, right = st.columns(2)
    production = left.selectbox("Production model", models, index=models.index(first),
                                help="The model whose answers are acted on; it selects the "
                                     "requests compared.")
    others = [m for m in models if m != production]
    wanted = default.candidate if default and default.candidate in others else others[0]
    candidate = right.selectbox("Candidate (shadow) model", others, index=others.index(wanted),
                                help="The model that answers the same requests in shadow mode.")
    if default is not None and (production, candidate) == (default.production, default.candidate):
        return default
    return _comparison(ctx, production, candidate, pair_on)


def _cards(result) -> None:
    """Agreement, both accuracies, McNemar's test and the AUC difference."""
    agreement, accuracy, auc = result.agreement, result.accuracy, result.auc
    cards = st.columns(5)
    if agreement.value is not None:
        cards[0].metric("Agreement", _share(agreement.value),
                        help=f"Share of {agreement.trials:,} paired requests on which both models "
                             f"predict the same; 95% CI {_interval(agreement.low, agreement.high, True)} "
                             "(Wilson).")
    elif result.mean_absolute_difference is not None:
        cards[0].metric("Mean |difference|", f"{result.mean_absolute_difference:.4g}",
                        help="Average absolute difference of the two predictions on the pairs.")
    else:
        cards[0].metric("Agreement", "–", help=_reason(agreement.reason))
    if accuracy is None:
        return
    labeled = f"{accuracy.labeled_pairs:,} labeled pairs"
    for card, name, side in ((cards[1], result.production, accuracy.production),
                             (cards[2], result.candidate, accuracy.candidate)):
        delta = None
        if side is accuracy.candidate and accuracy.difference is not None:
            delta = f"{accuracy.difference:+.3f} vs {result.production}"
        card.metric(f"{name} accuracy", _number(side.value), delta,
                    help=(f"On {labeled}; 95% CI {_interval(side.low, side.high)} (Wilson)."
                          if side.value is not None else _reason(side.reason)))
    if accuracy.mcnemar is not None:
        test = accuracy.mcnemar
        cards[3].metric("McNemar test", p_value_text(test.p_value),
                        help=f"Of the {labeled}, {test.production_only_right:,} only "
                             f"{result.production} got right and {test.candidate_only_right:,} only "
                             f"{result.candidate} got right ({test.method}). Difference in accuracy "
                             f"95% CI {_interval(accuracy.low, accuracy.high)} (Agresti–Min).")
    else:
        cards[3].metric("McNemar test", "–", help=_reason(accuracy.reason))
    if auc is not None and auc.delong is not None:
        d = auc.delong
        cards[4].metric("AUC difference", f"{d.difference:+.3f}", p_value_text(d.p_value),
                        delta_color="off", delta_arrow="off",
                        help=f"AUC of {result.candidate} minus {result.production} on "
                             f"{auc.sample_size:,} labeled pairs; DeLong 95% CI "
                             f"{d.low:+.3f} to {d.high:+.3f}.")
    elif auc is not None:
        cards[4].metric("AUC difference", "–", help=_reason(auc.reason))


def _auc_sentence(result) -> str | None:
    auc = result.auc
    if auc is None or auc.delong is None:
        return None
    d = auc.delong
    sample = (f"a hashed sample of {auc.sample_size:,} of the {auc.labeled_pairs:,} labeled pairs"
              if auc.sampled else f"{auc.sample_size:,} labeled pairs")
    text = (f"AUC {d.auc_candidate:.3f} ({_interval(*d.interval_candidate)}) for {result.candidate} "
            f"vs {d.auc_production:.3f} ({_interval(*d.interval_production)}) for "
            f"{result.production} on {sample}; DeLong {p_value_text(d.p_value)}")
    if auc.bootstrap is not None:
        b = auc.bootstrap
        text += (f"; paired bootstrap ({b.replicates} resamples of {b.pairs:,} pairs) 95% CI "
                 f"{b.low:+.3f} to {b.high:+.3f}, {p_value_text(b.p_value)}")
    return text + "."


def _over_time(result) -> None:
    if result.by_bucket.empty or result.accuracy is None:   # regression: no agreement, no accuracy
        return
    left, right = st.columns(2)
    with left:
        st.subheader("Agreement per day")
        st.altair_chart(charts.agreement_chart(result.by_bucket), width="stretch")
    with right:
        st.subheader("Accuracy per day on labeled pairs")
        st.altair_chart(charts.paired_accuracy_chart(result.by_bucket, result.production,
                                                     result.candidate), width="stretch")


def _disagreement(ctx, result) -> None:
    """Feature groups where the models disagree more than on the rest, each openable."""
    table = result.disagreement
    if table.empty:
        return
    st.subheader("Where they disagree")
    sample = (f" (a hashed sample of {result.disagreement_pairs:,} pairs)"
              if result.disagreement_pairs < result.agreement.trials else "")
    st.caption("The disagreement rate of every category or decile bin of every feature" + sample +
               ", each against the rest of the pairs (one-sided test, Benjamini–Hochberg q-values). "
               "Groups that disagree significantly more come first, the largest excess first; the "
               "black tick is the rate on the rest of the pairs.")
    st.altair_chart(charts.disagreement_chart(table, CHART_GROUPS), width="stretch")
    shown = table.drop(columns=["segment"])
    with st.expander(f"All {len(table):,} feature groups (table)"):
        config = {name: st.column_config.NumberColumn(format=fmt)
                  for name, fmt in GROUP_FORMATS.items()}
        st.dataframe(shown, hide_index=True, width="stretch", column_config=config)
        download = shown.assign(segment=[sql.segment_to_text(sql.segment_from_json(s))
                                         for s in table["segment"]])
        download_button(download, "shadow-disagreement")
    left, right = st.columns([4, 1], vertical_alignment="bottom")
    picked = left.selectbox("Open a group as the segment", range(len(table)),
                            format_func=lambda i: table["group"].iloc[i], key="models-group")
    if right.button("Open as segment", key="models-open-group", width="stretch"):
        group = sql.segment_from_json(table["segment"].iloc[picked])
        open_segment(ctx, tuple(ctx.conditions) + tuple(c for c in group
                                                        if c not in ctx.conditions))


def _bookkeeping(result) -> None:
    """Rows, pairs, what could not be paired, and the core's notes."""
    production, candidate = result.production, result.candidate
    parts = [f"Paired on {', '.join(result.pair_on)} ({PAIRINGS.get(result.pairing, result.pairing)})",
             f"{result.rows['production']:,} {production} rows and {result.rows['candidate']:,} "
             f"{candidate} rows, {result.pairs:,} paired requests"]
    for side, name in (("production", production), ("candidate", candidate)):
        if result.unpaired[side]:
            other = candidate if side == "production" else production
            parts.append(f"{result.unpaired[side]:,} {name} rows without a {other} twin")
        if result.unpairable[side]:
            parts.append(f"{result.unpairable[side]:,} {name} rows without a pairing key")
    if result.duplicated_keys:
        parts.append(f"{result.duplicated_keys:,} keys seen more than once for a model")
    st.caption(". ".join(parts) + ".")
    for note in result.notes:
        st.info(note[0].upper() + note[1:])


def shadow_section(ctx) -> None:
    """Shadow candidate vs production: agreement, paired tests, where they disagree."""
    st.header("Shadow vs production")
    view = ctx.view
    if not view.roles.model:
        st.info("This log has no model column, so there are no models to compare. Name the column "
                "that says which model made each row in mlmon.toml, e.g. `[columns]` "
                "`model = \"model_version\"`.")
        return
    models = list(model_counts(ctx.key, view))
    if len(models) < 2:
        st.info(f"The model column `{view.roles.model}` holds only one model "
                f"({', '.join(models) or 'none'}): a shadow comparison needs a production model and "
                "a candidate answering the same requests.")
        return
    with st.expander("Pairing key (automatic by default)"):
        pair_on = tuple(st.multiselect(
            "Pair the twins on", [c for c in view.columns if c != view.roles.model],
            key="models-pair-on",
            help="Empty: a request_id column, else the id column when both models log the same "
                 "ids, else the timestamp plus every feature."))
    result = _pick_models(ctx, models, pair_on)
    if result.pairs == 0:
        st.info(result.summary if result.summary.endswith(".") else result.summary + ".")
        _bookkeeping(result)
        return
    st.markdown(result.summary)
    _cards(result)
    sentence = _auc_sentence(result)
    if sentence:
        st.caption(sentence)
    _over_time(result)
    _disagreement(ctx, result)
    _bookkeeping(result)


# ---------------------------------------------------------------- A/B test

def _arm_columns(view) -> list[str]:
    """Columns that may name an arm: the variant and model columns first, then other categories."""
    roles = view.roles
    first = [c for c in (roles.variant, roles.model) if c]
    rest = [name for name, info in view.columns.items()
            if info.kind in ("categorical", "boolean") and name not in first
            and name not in (roles.prediction, roles.target, roles.status)]
    return first + rest


def _ab(ctx, column: str, model: str | None, control: str | None = None,
        expected_split: tuple | None = None):
    segment = tuple(ctx.conditions)
    if model is not None:
        segment += (sql.Condition(ctx.view.roles.model, "==", value=model),)
    return run("mlmon_core.compare:ab_test", ctx, ctx.window, segment, arm_column=column,
               metrics=AB_METRICS, control=control,
               expected_split=dict(expected_split) if expected_split else None)


def _ab_options(ctx) -> tuple[str | None, str | None]:
    """The arm column and the model whose rows are read (None: every model)."""
    view = ctx.view
    columns = _arm_columns(view)
    if not view.roles.variant:
        st.info("This log has no variant column (`[columns] variant` in mlmon.toml), so mlmon does "
                "not know which A/B arm served each row. Pick the column that names the arm to "
                "read a test from it.")
    left, right = st.columns(2)
    column = left.selectbox("Arm column", columns,
                            index=0 if view.roles.variant else None,
                            placeholder="the column naming each row's arm", key="models-arm-column")
    model = None
    if column and view.roles.model and column != view.roles.model:
        choice = right.selectbox("Rows of model", [ALL_MODELS] + list(model_counts(ctx.key, view)),
                                 key="models-ab-model",
                                 help="Read the test on one model's rows only (rows without an arm "
                                      "are left out either way).")
        model = None if choice == ALL_MODELS else choice
    return column, model


def _split_and_control(arms: list[str], column: str) -> tuple[str, tuple | None]:
    """Control arm and expected traffic split pickers; the split is None when it is equal."""
    with st.expander("Control arm and expected traffic split (default: equal)"):
        control = st.selectbox("Control arm", arms, index=0, key=f"models-control-{column}",
                               help="Every other arm is compared with this one.")
        if len(arms) > MAX_SPLIT_ARMS:
            st.caption(f"{column} has {len(arms)} values; the expected split is taken as equal.")
            return control, None
        equal = round(100 / len(arms), 2)
        cells = st.columns(len(arms))
        shares = tuple((arm, cell.number_input(f"{arm} (%)", min_value=0.01, max_value=100.0,
                                               value=equal, step=1.0,
                                               key=f"models-split-{column}-{arm}"))
                       for arm, cell in zip(arms, cells))
    if len({share for _, share in shares}) == 1:
        return control, None
    return control, shares


def _arm_table(result) -> pd.DataFrame:
    total = sum(arm.rows for arm in result.arms) or 1
    records = []
    for arm in result.arms:
        for metric, value in arm.metrics.items():
            records.append({"arm": arm.name, "metric": METRIC_WORDS.get(metric, metric),
                            "value": value.value, "ci_low": value.low, "ci_high": value.high,
                            "successes": value.successes, "trials": value.trials,
                            "rows": arm.rows, "share_of_traffic": arm.rows / total,
                            "labeled_rows": arm.labeled_rows, "note": _reason(value.reason)})
    return pd.DataFrame.from_records(records)


def _differences_table(result) -> pd.DataFrame:
    columns = ["metric", "arm", "control", "difference", "low", "high", "z", "p_value", "power",
               "minimum_detectable_effect", "note"]
    records = [{**d.to_json(), "metric": METRIC_WORDS.get(d.metric, d.metric),
                "note": _reason(d.reason)} for d in result.differences]
    return pd.DataFrame.from_records(records, columns=columns)


def _formatted(frame: pd.DataFrame) -> None:
    """A table with its numbers formatted by column name."""
    config = {name: st.column_config.NumberColumn(format=fmt)
              for name, fmt in AB_FORMATS.items() if name in frame}
    st.dataframe(frame, hide_index=True, width="stretch", column_config=config)


def _difference_sentence(result, difference) -> str:
    """``B's positive rate is 6.0 points higher than A's (p<0.001); this test had …``."""
    words = METRIC_WORDS.get(difference.metric, difference.metric)
    arm, control = difference.arm, difference.control
    treated = result.arm(arm).metrics[difference.metric].value
    base = result.arm(control).metrics[difference.metric].value
    if difference.difference is None:
        return f"{arm} vs {control}, {words}: cannot be compared ({_reason(difference.reason)})."
    points = abs(difference.difference) * 100
    level = f"{1 - result.alpha:.0%}"
    if round(points, 1) == 0:
        head = f"{arm}'s {words} equals {control}'s to within 0.1 points"
    else:
        direction = "higher" if difference.difference > 0 else "lower"
        head = f"{arm}'s {words} is {points:.1f} points {direction} than {control}'s"
    head += f" ({treated:.1%} vs {base:.1%}, {p_value_text(difference.p_value)}"
    if difference.p_value is None:
        return head + f"): {_reason(difference.reason)}."
    head += (f"; {level} CI {difference.low * 100:+.1f} to {difference.high * 100:+.1f} points)")
    mde = difference.minimum_detectable_effect
    plan = (f"; with these sizes it detects a difference of {mde * 100:.1f} points with 80% power"
            if mde is not None else "")
    if difference.p_value < result.alpha:
        return head + f"; this test had {_power(difference.power)} power to detect a difference " \
                      "this large."
    return (head + f": not a significant difference. This test had only "
            f"{_power(difference.power)} power to detect a difference this large{plan}.")


def _srm(result) -> None:
    srm = result.srm
    if srm.mismatch:
        st.error(srm.message)
    elif srm.mismatch is False:
        st.success(srm.message)
    elif srm.message:
        st.info(srm.message)


def ab_section(ctx) -> None:
    """A/B arms: each arm's metrics with CIs, differences with tests and power, SRM check."""
    st.header("A/B test")
    column, model = _ab_options(ctx)
    if column is None:
        return
    first = _ab(ctx, column, model)
    arms = sorted(arm.name for arm in first.arms)
    control, split = _split_and_control(arms, column) if len(arms) >= 2 else (None, None)
    result = first if control == first.control and split is None else \
        _ab(ctx, column, model, control, split)
    if result.rows_without_arm:
        st.caption(f"{result.rows_without_arm:,} rows in the window have no value in `{column}` "
                   "and are left out.")
    if result.reason:
        st.info(result.summary)
        return
    _srm(result)
    values = [m for arm in result.arms for m in arm.metrics.values()]
    if all(m.value is None for m in values):
        reasons = dict.fromkeys(_reason(m.reason) for m in values)
        st.info("The arms' metrics cannot be computed: " + "; ".join(reasons) + ".")
        return
    lines = [_difference_sentence(result, d) for d in result.differences]
    st.markdown("\n".join(f"- {line}" for line in lines))
    table = _arm_table(result)
    st.altair_chart(charts.arm_metrics_chart(table), width="stretch")
    with st.expander("Each arm's metrics (table)"):
        _formatted(table)
        download_button(table, "ab-arms")
    with st.expander("Differences against the control (table)"):
        differences = _differences_table(result)
        _formatted(differences)
        download_button(differences, "ab-differences")


def main() -> None:
    """Render the page."""
    ctx = require_context()
    st.title("Models")
    ignored = f" (now {ctx.model})" if ctx.model else ""
    st.caption(f"{ctx.window} · {sql.describe_segment(ctx.conditions)} · This page compares "
               f"models, so it ignores the sidebar's Model / version choice{ignored} and reads "
               "every model's rows.")
    guarded(lambda: shadow_section(ctx))
    guarded(lambda: ab_section(ctx))


guarded(main)
