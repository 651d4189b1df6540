"""mlmon's Streamlit entry point: navigation and the global sidebar (source, model, windows, segment).

The view lives in the URL (window, ref, where, model, page), so a pasted link opens the same view.
"""

from __future__ import annotations

import streamlit as st

from mlmon_core import sql
from mlmon_core.config import Window
from mlmon_core.errors import MlmonError
from mlmon_core.windows import default_window, reference_window
from pages.common import (ALL_MODELS, OPEN_SEGMENT_KEY, SEGMENT_KEY, Context, Source,
                          default_source, ensure_sample_data, data_time_range, from_dates,
                          model_counts, open_source, save_upload, to_dates)

st.set_page_config(page_title="mlmon", page_icon=":material/troubleshoot:", layout="wide")

PAGES = [
    st.Page("pages/overview.py", title="Overview", icon=":material/monitor_heart:",
            url_path="overview", default=True),
    st.Page("pages/compare.py", title="Compare", icon=":material/compare_arrows:",
            url_path="compare"),
    st.Page("pages/segments.py", title="Segments", icon=":material/pie_chart:",
            url_path="segments"),
    st.Page("pages/attributions.py", title="Attributions", icon=":material/psychology:",
            url_path="attributions"),
    st.Page("pages/models.py", title="Models", icon=":material/call_split:", url_path="models"),
    st.Page("pages/labeling.py", title="Labeling", icon=":material/label:", url_path="labeling"),
    st.Page("pages/report.py", title="Report", icon=":material/description:", url_path="report"),
]


def _choose_source() -> Source:
    with st.sidebar.expander("Data source", expanded=False):
        uploaded = st.file_uploader("Open a log file (Parquet, CSV, NDJSON)",
                                    type=["parquet", "csv", "json", "ndjson", "jsonl"])
        if uploaded is not None:
            st.session_state["mlmon_source"] = save_upload(uploaded)
        if st.session_state.get("mlmon_source") and st.button("Back to the project file"):
            st.session_state.pop("mlmon_source")
    source = st.session_state.get("mlmon_source") or default_source()
    st.sidebar.caption(f"Source: `{source.label}`")
    return source


def _window_from_url(name: str, fallback: Window) -> Window:
    text = st.query_params.get(name)
    if not text:
        return fallback
    try:
        window = sql.parse_window(text, name)
        return window if window.start and window.end else fallback
    except MlmonError as exc:
        st.sidebar.warning(f"Ignoring the link's {name}: {exc}")
        return fallback


def _window_picker(label: str, key: str, window: Window, bounds) -> Window:
    first, last = bounds
    if window.start is None or window.end is None:  # a log with no rows yet: nothing to pick
        st.sidebar.caption(f"{label}: all rows (the log has no timestamped rows yet)")
        return window
    shown = to_dates(window)
    # The data's days bound the picker, widened to the window itself: a reference from
    # mlmon.toml or the link may lie outside the data (Streamlit raises on a value out of range).
    picked = st.sidebar.date_input(label, value=shown, key=key,
                                   min_value=min(first.date(), shown[0]) if first else None,
                                   max_value=max(last.date(), shown[1]) if last else None,
                                   help="First and last day, both included.")
    if isinstance(picked, (list, tuple)) and len(picked) == 2:
        return from_dates(*picked)
    return window


def _model_picker(view, key) -> str | None:
    if not view.roles.model:
        return None
    counts = model_counts(key, view)
    options = [ALL_MODELS] + list(counts)
    wanted = st.query_params.get("model")
    index = options.index(wanted) if wanted in options else (1 if counts else 0)
    choice = st.sidebar.selectbox("Model / version", options, index=index,
                                  help="Rows made by this model (the config's model column).")
    return None if choice == ALL_MODELS else choice


def _segment_input(view) -> tuple[str, tuple]:
    # Keyed so that a page can replace the text (a found slice opened as the segment): it leaves
    # the new text under OPEN_SEGMENT_KEY and reruns; the widget's state is set before it exists.
    opened = st.session_state.pop(OPEN_SEGMENT_KEY, None)
    if opened is not None:
        st.session_state[SEGMENT_KEY] = opened
    elif SEGMENT_KEY not in st.session_state:
        st.session_state[SEGMENT_KEY] = st.query_params.get("where", "")
    text = st.sidebar.text_input(
        "Segment", key=SEGMENT_KEY, placeholder="age >= 60 and region = 'West'",
        help="Conditions joined by 'and': ==, !=, <, <=, >, >=, in (...), between a and b, is null.")
    try:
        conditions = sql.parse_where(text)
        sql.compile_segment(conditions, view.column_types)
        return text, conditions
    except MlmonError as exc:
        st.sidebar.error(str(exc))
        return "", ()


def _sync_url(ctx: Context) -> None:
    wanted = {"window": str(ctx.window), "ref": str(ctx.reference)}
    if ctx.where_text:
        wanted["where"] = ctx.where_text
    if ctx.model:
        wanted["model"] = ctx.model
    for name in ("where", "model"):
        if name not in wanted and name in st.query_params:
            del st.query_params[name]
    for name, value in wanted.items():
        if st.query_params.get(name) != value:
            st.query_params[name] = value


def build_context() -> Context | None:
    """Render the sidebar and return the context pages read (None if the source fails)."""
    st.sidebar.title("mlmon")
    source = _choose_source()
    if source.kind == "config" and source.path == str(default_source().path):
        ensure_sample_data()
    try:
        view, key = open_source(source)
        bounds = data_time_range(key, view)
        model = _model_picker(view, key)
        window = _window_picker("Analysis window", "window_dates",
                                _window_from_url("window", default_window(view, bounds=bounds)), bounds)
        reference = _window_picker("Reference window", "reference_dates",
                                   _window_from_url("ref", reference_window(view, bounds=bounds)), bounds)
        where_text, conditions = _segment_input(view)
    except MlmonError as exc:
        st.error(str(exc))
        return None
    ctx = Context(source=source, key=key, view=view, window=window, reference=reference,
                  where_text=where_text, model=model, conditions=conditions)
    _sync_url(ctx)
    return ctx


navigation = st.navigation(PAGES)
st.session_state["mlmon_context"] = build_context()
navigation.run()
