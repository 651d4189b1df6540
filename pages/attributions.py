"""Attributions: which features drive the predictions (SHAP), how that changed since the reference
window, one prediction's waterfall (also opened by ``?row=<id>`` from any table of rows), dependence
plots, and what drives errors and drift (those two need no model and no logged attributions).

Only the open tab computes (tabs bound to the ``tab`` query parameter); SHAP work shows a progress
bar the first time and is instant afterwards (``run_with_progress``'s cache, then the core's store).
"""

import math
from pathlib import Path

import pandas as pd
import streamlit as st

from mlmon_core import charts
from pages.common import (download_button, guarded, require_context, run, run_with_progress,
                          with_explain_links)

CORE = "mlmon_core.attributions"
SHAP_SOURCES = ("logged", "model")
SOURCE_WORDS = {"logged": "Logged SHAP values", "model": "Computed from the model file"}
IMPORTANCE, DRIFT, EXPLAIN, DEPENDENCE = ("Importance", "Attribution drift",
                                          "Explain a prediction", "Dependence")
ERRORS, MOVED = "What drives errors", "What drives drift"
WEAK_AUC = 0.6
PICK_ROWS = 50
ROW_KEY = "attributions-row"
URL_ROW_KEY = "attributions-url-row"
PICK_KEY = "attributions-pick"
ERROR_SHARE_COLUMNS = ("error_share", "error_share_ci_low", "error_share_ci_high")


# ---------------------------------------------------------------- small pieces

def _n(rows: int | None) -> str:
    return "n=?" if rows is None else f"n={rows:,}"


def _number(value, digits: int = 3) -> str:
    return "–" if value is None or value != value else f"{value:.{digits}f}"


def _space(result) -> str:
    return f" ({result.output_space})" if result.output_space else ""


def _notes(result) -> None:
    if result.reason:
        st.info(f"Not computable because {result.reason}.")
    for note in result.notes:
        st.caption(f"ℹ️ {_sentence(note)}")


def _how_made(result, source: str) -> None:
    text = f"Method: {result.method}" if result.method else ""
    if source == "model":
        text += (f"; {result.computed_rows:,} rows were explained by this computation and "
                 f"{result.cached_rows:,} came from the attribution store")
    if text:
        st.caption(text + ".")


def _table(frame: pd.DataFrame, name: str, label: str = "Numbers (table)") -> None:
    shown = frame.dropna(axis=1, how="all")
    with st.expander(label):
        st.dataframe(shown, hide_index=True, width="stretch",
                     column_config={c: st.column_config.NumberColumn(format="%.4f")
                                    for c in shown.columns if c not in ("feature", "value")})
        download_button(shown, name)


def _sentence(text: str) -> str:
    return f"{text[0].upper()}{text[1:]}." if text else text


def _leaders(features: pd.DataFrame, count: int = 3, column: str = "mean_abs") -> str:
    names = [f"**{name}**" for name in features.dropna(subset=[column])["feature"].head(count)]
    if len(names) < 2:
        return "".join(names)
    return ", ".join(names[:-1]) + " and " + names[-1]


def _quality(quality, what: str) -> bool:
    """The fitted model's quality as a metric, with an explicit warning when it is weak.

    Returns False when there is no quality to show (nothing was fitted)."""
    if quality is None:
        return False
    if quality.value is None:
        st.info(f"{what}: {quality.describe()}.")
        return False
    name = "AUC" if quality.metric == "auc" else "R²"
    left, right = st.columns([1, 3])
    left.metric(f"{what} {name}", f"{quality.value:.3f}", help=quality.describe())
    right.caption(f"{quality.describe()}. An AUC of 0.5 means the features cannot tell the two "
                  "groups apart; 1.0 means they separate them perfectly.")
    weak = quality.value < WEAK_AUC if quality.metric == "auc" else \
        quality.strength in ("weak", "none")
    if weak:
        limit = f"{name} {quality.value:.3f} < {WEAK_AUC}" if quality.metric == "auc" else \
            f"{name} {quality.value:.3f}"
        st.warning(f"**Weak explanation** ({limit}): the features barely predict this, so the "
                   "ranking below is close to noise. Do not read much into it.")
    return True


# ---------------------------------------------------------------- controls

def how_to_add_attributions(ctx, sources: dict) -> None:
    """What to do when neither logged attributions nor a model file is available."""
    prefix = ctx.view.config.columns.attribution_prefix
    example = ctx.view.roles.features[0] if ctx.view.roles.features else "age"
    st.info(
        "**No attributions yet**: " + "; ".join(sources[s] for s in SHAP_SOURCES) + ". Add either "
        "to see importances, attribution drift, waterfalls and dependence plots:\n\n"
        f"- **Logged attributions**: log one SHAP value per feature beside each prediction, in "
        f"columns named `{prefix}<feature>` (such as `{prefix}{example}`), optionally with "
        f"`{prefix}base_value`.\n"
        "- **The model file**: declare it in mlmon.toml, and mlmon computes the SHAP values "
        "(stored under `.mlmon/attributions/`, so each row is explained once):")
    st.code('[model]\npath = "model.skops"   # scikit-learn saved with skops.io.dump; LightGBM .txt; '
            'XGBoost .json or .ubj\n# trust = true          # needed for a .pkl/.joblib file: '
            'loading a pickle runs the code it holds', language="toml")
    st.caption("The error and drift explanations below need neither.")


def controls(ctx, sources: dict, settings) -> tuple[str | None, int]:
    """The source picker (unavailable sources say why) and the sample size."""
    left, right = st.columns([3, 2])
    usable = [s for s in SHAP_SOURCES if sources[s] is None]
    captions = []
    for name in SHAP_SOURCES:
        if sources[name] is not None:
            captions.append(f"unavailable: {sources[name]}")
        elif name == "model":
            captions.append(f"`{Path(ctx.view.config.model.path).name}`")
        else:
            captions.append(f"{len(ctx.view.roles.attributions)} "
                            f"`{ctx.view.config.columns.attribution_prefix}` columns")
    source = left.radio("Attributions from", SHAP_SOURCES, index=SHAP_SOURCES.index(usable[0]),
                        format_func=SOURCE_WORDS.get, captions=captions, horizontal=True,
                        key="attributions-source")
    default = settings.sample
    sample = right.slider(
        "Rows explained per window", min_value=min(100, default), max_value=max(10_000, default),
        value=default, step=100, key="attributions-sample",
        help="Rows sampled from the window (and from the reference) by a hash of their id, so "
             "the same rows come back each time. Every number below says how many rows it rests "
             "on. Default: [attributions] sample in mlmon.toml.")
    if sources[source] is not None:
        st.warning(f"{SOURCE_WORDS[source]} are unavailable: {sources[source]}. Pick the other "
                   "source.")
        return None, sample
    return source, sample


def _fit_sample(settings, key: str, label: str, source: str) -> int:
    default = settings.fit_rows(source)
    return st.slider(label, min_value=min(200, default),
                     max_value=max(20_000, default), value=default, step=100, key=key,
                     help="A sample by a hash of the id. Default: [attributions] fit_sample in "
                          "mlmon.toml.")


def _label(source: str) -> str:
    return "Reading logged SHAP values" if source == "logged" else "Computing SHAP values"


def _attribution_drift(ctx, source: str, sample: int):
    return run_with_progress(f"{CORE}:importance", ctx, _label(source), ctx.window, ctx.segment,
                             source=source, compare_to=ctx.reference, sample=sample)


# ---------------------------------------------------------------- tabs

def importance_tab(ctx, source: str, sample: int, settings) -> None:
    """Mean |SHAP| in the window (and segment) beside the reference window or the segment's rest."""
    versus_rest = False
    if ctx.conditions:
        versus_rest = st.radio("Compare the segment with", ["the reference window",
                                                            "the rest of the window"],
                               horizontal=True, key="attributions-compare") != \
            "the reference window"
    if versus_rest:
        within = tuple(c for c in ctx.segment if c not in ctx.conditions)   # the model choice
        result = run_with_progress(f"{CORE}:segment_importance", ctx, _label(source), ctx.window,
                                   ctx.conditions, source=source, sample=sample, within=within)
        current = f"segment ({_n(result.sample_rows)})"
        only = f", {ctx.model} only" if within else ""
        reference = f"rest of the window ({_n(result.reference_rows)}{only})"
    else:
        result = _attribution_drift(ctx, source, sample)
        where = "segment" if ctx.conditions else "window"
        current = f"{where} {ctx.window} ({_n(result.sample_rows)})"
        reference = f"reference {ctx.reference} ({_n(result.reference_rows)})"
    _notes(result)
    features = result.features.dropna(subset=["mean_abs"])
    if features.empty:
        return
    ranked = features.sort_values("mean_abs", ascending=False)
    top, runners_up = ranked.iloc[0], _leaders(ranked.iloc[1:], 2)
    st.markdown(f"Over {result.sample_rows:,} sampled rows, **{top['feature']}** moves the model's "
                f"output most (mean |SHAP| {top['mean_abs']:.3f}, 95% CI {_number(top['ci_low'])}–"
                f"{_number(top['ci_high'])})" + (f", then {runners_up}." if runners_up else "."))
    chart = charts.shap_importance_chart(result.features, current, reference,
                                         title=f"mean |SHAP|{_space(result)}")
    st.altair_chart(chart, width="stretch")
    st.caption(f"Mean absolute SHAP value per feature with 95% bootstrap CIs ({current} vs "
               f"{reference}).")
    _how_made(result, source)
    _table(result.features, "attribution-importance")


def _drift_sentence(result, changes: pd.DataFrame) -> str:
    table = result.features.dropna(subset=["difference"])
    beyond = table[(table["difference_ci_low"] > 0) | (table["difference_ci_high"] < 0)]
    leader = beyond.iloc[0] if len(beyond) else changes.iloc[0]
    sizes = f"n={result.sample_rows:,} rows of the window vs {result.reference_rows or 0:,} of the " \
            "reference"
    change = (f"mean |SHAP| {leader['reference_mean_abs']:.3f} → {leader['mean_abs']:.3f} "
              f"({leader['difference']:+.3f}, 95% CI {leader['difference_ci_low']:+.3f} to "
              f"{leader['difference_ci_high']:+.3f}; {sizes})")
    if not len(beyond):
        return (f"No feature's importance changed beyond sampling noise. The largest change is "
                f"**{leader['feature']}**: {change}, and its CI includes 0.")
    verb = "gained" if leader["difference"] > 0 else "lost"
    return (f"**{leader['feature']}** {verb} the most importance since the reference window: "
            f"{change}. {len(beyond)} of {len(table)} features changed beyond sampling noise.")


def drift_tab(ctx, source: str, sample: int, settings) -> None:
    """Ranked changes of importance (window − reference) with CIs, and the top one in words."""
    result = _attribution_drift(ctx, source, sample)
    _notes(result)
    changes = result.largest_changes(20)
    if changes.dropna(subset=["difference"]).empty:
        st.info("No change to show: the window or the reference has no explained rows.")
        return
    st.markdown(_drift_sentence(result, changes.dropna(subset=["difference"])))
    st.altair_chart(charts.attribution_drift_chart(
        changes, title=f"change in mean |SHAP|{_space(result)}, window − reference"),
        width="stretch")
    st.caption(f"Window {ctx.window} ({_n(result.sample_rows)}) against the reference "
               f"{ctx.reference} ({_n(result.reference_rows)}); whiskers are 95% bootstrap CIs of "
               "the difference. Grey bars are within sampling noise.")
    _how_made(result, source)
    _table(result.features, "attribution-drift")


def _row_from_url() -> None:
    """A ``?row=`` in the URL (a link from a table of rows) becomes the row input's value."""
    wanted = st.query_params.get("row", "")
    if st.session_state.get(URL_ROW_KEY) != wanted:
        st.session_state[URL_ROW_KEY] = wanted
        if wanted:
            st.session_state[ROW_KEY] = wanted
    st.session_state.setdefault(ROW_KEY, wanted)


def _row_to_url(row_id: str) -> None:
    st.session_state[URL_ROW_KEY] = row_id
    if row_id and st.query_params.get("row") != row_id:
        st.query_params["row"] = row_id
    elif not row_id and "row" in st.query_params:
        del st.query_params["row"]


def _picked() -> None:
    if st.session_state.get(PICK_KEY):
        st.session_state[ROW_KEY] = st.session_state[PICK_KEY]


def explain_tab(ctx, source: str, sample: int, settings) -> None:
    """One prediction's waterfall; the row comes from the input, the picker or ``?row=<id>``."""
    id_column = ctx.view.roles.id
    if not id_column:
        st.info("Explaining one prediction needs an id column: set `[columns] id` in mlmon.toml.")
        return
    _row_from_url()
    rows = run("mlmon_core.segments:segment_rows", ctx, ctx.window, ctx.segment, limit=PICK_ROWS)
    left, right = st.columns(2)
    row_id = left.text_input("Row id", key=ROW_KEY, placeholder=f"a value of {id_column}",
                             help="Any row of the log, in or out of the window. A link ending in "
                                  "?row=<id> on this page opens it here.").strip()
    right.selectbox(f"…or pick one of the window's first {len(rows):,} rows",
                    [str(v) for v in rows[id_column]], index=None, placeholder="pick a row",
                    key=PICK_KEY, on_change=_picked)
    _row_to_url(row_id)
    if not row_id:
        st.info("Type a row id, pick a row, or follow an “explain ↗” link from a table of rows.")
        linked, config = with_explain_links(rows.head(10), id_column)
        st.dataframe(linked, hide_index=True, width="stretch", column_config=config)
        return
    result = run_with_progress(f"{CORE}:explain_row", ctx, f"Explaining row {row_id}", row_id,
                               source=source)
    total = pd.to_numeric(result.features["shap"], errors="coerce").sum()
    if result.base_value is not None:
        text = (f"Row **{result.id}**: base value {result.base_value:.3f} + contributions "
                f"{total:+.3f} = output {_number(result.prediction)}{_space(result)}")
    else:
        text = (f"Row **{result.id}**: contributions add up to {total:+.3f}{_space(result)} "
                "(no base value was logged)")
    if result.output_space == "log-odds" and result.prediction is not None:
        text += f", a probability of {1 / (1 + math.exp(-result.prediction)):.3f}"
    if result.logged_score is not None:
        text += f"; logged score {result.logged_score:.3f}"
    st.markdown(text + ".")
    st.altair_chart(charts.waterfall_chart(result.features, result.base_value,
                                           result.output_space), width="stretch")
    st.caption("From the base value (the average output over the explainer's background), each "
               "feature's value pushes the output up (red) or down (blue). "
               + (f"Method: {result.method}." if result.method else ""))
    for note in result.notes:
        st.caption(f"ℹ️ {_sentence(note)}")
    # Feature values mix numbers, text and booleans: shown as text (one Arrow type per column).
    values = result.features.assign(value=["" if v is None else str(v)
                                           for v in result.features["value"]])
    _table(values, f"explanation-{row_id}", "Every feature (table)")


def dependence_tab(ctx, source: str, sample: int, settings) -> None:
    """SHAP value of one feature against its value, coloured by a second feature."""
    features = list(ctx.view.roles.features)
    if source == "logged":
        features = [f for f in features if f in ctx.view.roles.attributions]
    if not features:
        st.info("No feature has attributions to plot.")
        return
    left, right = st.columns(2)
    feature = left.selectbox("Feature", features, key="attributions-dependence-feature")
    options = ["auto", "none"] + [f for f in features if f != feature]
    color = right.selectbox("Colour by", options, key="attributions-dependence-color",
                            format_func=lambda c: {"auto": "auto (strongest interaction)",
                                                   "none": "nothing"}.get(c, c))
    result = run_with_progress(f"{CORE}:dependence", ctx, _label(source), ctx.window, feature,
                               color_by=None if color == "none" else color, segment=ctx.segment,
                               source=source, sample=sample)
    if result.reason:
        st.info(f"Not computable because {result.reason}.")
    color_kind = ctx.view.columns[result.color_by].kind if result.color_by else None
    st.altair_chart(charts.dependence_chart(result.points, feature, result.kind, result.color_by,
                                            color_kind, result.output_space), width="stretch")
    picked = " (picked as the feature that best explains the spread at equal values)" \
        if color == "auto" and result.color_by else ""
    st.caption(f"One dot per sampled row of the window ({_n(result.sample_rows)}); colour: "
               f"{result.color_by or 'none'}{picked}. A dot above the dashed line means this "
               f"feature's value raised that row's output.")


def errors_tab(ctx, source, sample, settings, sources: dict) -> None:
    """The features that drive errors: an error model's SHAP importances and its AUC."""
    if sources["errors"] is not None:
        st.info(f"The error explanation is unavailable: {sources['errors']}.")
        return
    fit = _fit_sample(settings, "attributions-errors-sample",
                      "Labeled rows the error model learns from", "errors")
    result = run_with_progress(f"{CORE}:error_explanation", ctx, "Fitting the error model",
                               ctx.window, ctx.segment, sample=fit)
    st.caption("A gradient-boosted *error model* learns each labeled row's error from its features "
               "(out-of-fold). Features are ranked by their share of the extra error of the rows "
               "it rates most error-prone, so a feature that matters for a small group shows.")
    if result.reason:
        st.info(f"Not computable because {result.reason}. Labels often arrive days after the "
                "predictions: widen the analysis window in the sidebar to include labeled days.")
        return
    _quality(result.model_quality, "Error model")
    if result.control is not None:
        st.caption(f"ℹ️ {_sentence(result.control.describe())}")
    features = result.features.dropna(subset=["error_share"])
    if features.empty:
        return
    st.markdown(f"Errors concentrate along {_leaders(features, column='error_share')} "
                f"({_n(result.sample_rows)} labeled rows).")
    if result.focus is not None:
        st.caption(_sentence(result.focus.describe()))
    st.altair_chart(charts.shap_importance_chart(
        result.features, f"error model ({_n(result.sample_rows)} labeled rows)",
        title="share of the extra error of the most error-prone rows",
        columns=ERROR_SHARE_COLUMNS), width="stretch")
    _how_made(result, "errors")
    if result.ranking:
        st.caption(result.ranking)
    for note in result.notes:
        st.caption(f"ℹ️ {_sentence(note)}")
    _table(result.features, "error-explanation")


def moved_tab(ctx, source, sample, settings, sources: dict) -> None:
    """The features that moved most: a domain classifier's AUC (drift score) and importances."""
    if sources["drift"] is not None:
        st.info(f"The drift explanation is unavailable: {sources['drift']}.")
        return
    fit = _fit_sample(settings, "attributions-drift-sample",
                      "Rows per window the domain classifier learns from", "drift")
    result = run_with_progress(f"{CORE}:drift_explanation", ctx, "Fitting the domain classifier",
                               ctx.window, ctx.reference, ctx.segment, sample=fit)
    st.caption(f"A *domain classifier* learns to tell the reference window {ctx.reference} from "
               f"the window {ctx.window}; its AUC is a drift score over all features jointly and "
               "its SHAP importances name the features that moved most.")
    if result.reason:
        st.info(f"Not computable because {result.reason}.")
        return
    _quality(result.model_quality, "Domain classifier")
    features = result.features.dropna(subset=["mean_abs"])
    if features.empty:
        return
    sizes = f"{result.sample_rows:,} window rows and {result.reference_rows or 0:,} reference rows"
    st.markdown(f"What changed most since the reference window: {_leaders(features)} ({sizes}).")
    st.altair_chart(charts.shap_importance_chart(
        result.features, f"domain classifier ({sizes})", title=f"mean |SHAP|{_space(result)}"),
        width="stretch")
    _how_made(result, "drift")
    _table(result.features, "drift-explanation")


# ---------------------------------------------------------------- the page

def main() -> None:
    """Render the page."""
    ctx = require_context()
    st.title("Attributions")
    st.caption(f"{ctx.window} · {ctx.segment_text} · reference {ctx.reference}")
    settings = run(f"{CORE}:settings_of", ctx)
    sources = run(f"{CORE}:available_sources", ctx)
    source, sample = None, settings.sample
    if any(sources[s] is None for s in SHAP_SOURCES):
        source, sample = controls(ctx, sources, settings)
        labels = [IMPORTANCE, DRIFT, EXPLAIN, DEPENDENCE, ERRORS, MOVED]
    else:
        how_to_add_attributions(ctx, sources)
        if st.query_params.get("row"):
            st.warning(f"Row {st.query_params['row']} cannot be explained without logged "
                       "attributions or a model file.")
        labels = [ERRORS, MOVED]
    default = EXPLAIN if EXPLAIN in labels and st.query_params.get("row") else None
    tabs = st.tabs(labels, key="tab", bind="query-params", default=default)
    renderers = {IMPORTANCE: importance_tab, DRIFT: drift_tab, EXPLAIN: explain_tab,
                 DEPENDENCE: dependence_tab,
                 ERRORS: lambda *a: errors_tab(*a, sources), MOVED: lambda *a: moved_tab(*a, sources)}
    for tab, label in zip(tabs, labels):
        if not tab.open:
            continue
        with tab:
            if source is None and label not in (ERRORS, MOVED):
                st.info("Pick an available source above.")
                continue
            guarded(lambda: renderers[label](ctx, source, sample, settings))


guarded(main)
