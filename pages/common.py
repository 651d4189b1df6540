"""What the pages share: the opened log, the global context from the sidebar, cached core calls.

This is the only UI module that knows about caching and session state; pages stay thin.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import streamlit as st

from mlmon_core import sql
from mlmon_core.config import Window, config_for_file, load_config
from mlmon_core.errors import MlmonError
from mlmon_core.source import LogView, list_files, open_log

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_CONFIG = ROOT / "sample_data" / "mlmon.toml"
UPLOAD_DIR = Path(tempfile.gettempdir()) / "mlmon-uploads"
ALL_MODELS = "(all models)"


@dataclass(frozen=True)
class Source:
    """Where the log comes from: a project file, or an uploaded file opened with inferred roles."""

    kind: str  # "config" | "upload"
    path: str

    @property
    def label(self) -> str:
        """How the sidebar names this source."""
        return Path(self.path).name if self.kind == "upload" else self.path


@dataclass
class Context:
    """The global state the sidebar owns and every page reads."""

    source: Source
    key: tuple
    view: LogView
    window: Window
    reference: Window
    where_text: str = ""
    model: str | None = None
    conditions: tuple = field(default_factory=tuple)

    @property
    def segment(self) -> tuple:
        """User conditions plus the model choice, as one segment."""
        extra = ()
        if self.model is not None and self.view.roles.model:
            extra = (sql.Condition(self.view.roles.model, "==", value=self.model),)
        return tuple(self.conditions) + extra

    @property
    def segment_text(self) -> str:
        """The segment in plain words."""
        return sql.describe_segment(self.segment)


def default_source() -> Source:
    """The source from MLMON_CONFIG (set by ``mlmon app``) or the bundled sample data."""
    return Source("config", os.environ.get("MLMON_CONFIG") or str(SAMPLE_CONFIG))


def ensure_sample_data() -> None:
    """Generate the bundled sample data on first use, with progress shown."""
    if (SAMPLE_CONFIG.parent / "data" / "predictions").exists():
        return
    from mlmon_core.demo import generate

    with st.status("Generating the sample data (first run, about 30 s)…", expanded=False) as status:
        generate(SAMPLE_CONFIG.parent)
        status.update(label="Sample data ready", state="complete")


def source_signature(source: Source) -> tuple:
    """Names, sizes and modification times of every file behind a source (cheap change detector)."""
    parts: list[Any] = [source.kind, source.path]
    try:
        if source.kind == "config":
            config = load_config(source.path)
            parts.append(Path(config.path).stat().st_mtime_ns)
            locations = [("predictions", config.source.predictions), ("labels", config.source.labels)]
        else:
            locations = [("predictions", source.path)]
        for key, location in locations:
            if location is None:
                continue
            files, _ = list_files(location, key)
            parts.extend((f, os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files)
    except (MlmonError, OSError):
        parts.append("unreadable")
    return tuple(parts)


@st.cache_resource(show_spinner="Opening the log…", max_entries=8)
def _open(source: Source, signature: tuple) -> LogView:
    config = load_config(source.path) if source.kind == "config" else config_for_file(source.path)
    return open_log(config)


def open_source(source: Source) -> tuple[LogView, tuple]:
    """The opened log and its cache key; raises MlmonError on bad input."""
    signature = source_signature(source)
    key = (source, hashlib.sha1(repr(signature).encode()).hexdigest())
    return _open(source, signature), key


def save_upload(uploaded) -> Source:
    """Keep an uploaded file on disk (content-addressed) and return it as a source."""
    data = uploaded.getvalue()
    digest = hashlib.sha1(data).hexdigest()[:16]
    folder = UPLOAD_DIR / digest
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / Path(uploaded.name).name
    if not target.exists():
        temporary = folder / f".{target.name}.tmp"
        temporary.write_bytes(data)
        temporary.replace(target)
    return Source("upload", str(target))


@st.cache_data(show_spinner=False, max_entries=512)
def _cached(function: str, key: tuple, _view: LogView, args: tuple, kwargs: tuple) -> Any:
    module, name = function.split(":")
    return getattr(importlib.import_module(module), name)(_view, *args, **dict(kwargs))


@st.cache_data(show_spinner=False, max_entries=64)
def model_counts(key: tuple, _view: LogView) -> dict[str, int]:
    """Rows per model, cached per source state."""
    return _view.model_counts()


@st.cache_data(show_spinner=False, max_entries=64)
def data_time_range(key: tuple, _view: LogView) -> tuple:
    """First and last timestamp, cached per source state."""
    from mlmon_core.windows import time_range

    return time_range(_view)


def run(function: str, ctx: Context, *args: Any, **kwargs: Any) -> Any:
    """Call ``module:function(view, *args, **kwargs)`` once per distinct input; later calls are instant."""
    return _cached(function, ctx.key, ctx.view, args, tuple(sorted(kwargs.items())))


def guarded(render: Callable[[], None]) -> None:
    """Run a page body; bad input becomes an st.error naming what is wrong, never a traceback."""
    try:
        render()
    except MlmonError as exc:
        st.error(str(exc))


def context() -> Context | None:
    """The context the sidebar built in this run (None when the source failed to open)."""
    return st.session_state.get("mlmon_context")


def _entrypoint_skipped() -> bool:
    """Whether Streamlit ran this page without app.py, and a rerun through app.py was asked for.

    With a ``pages/`` folder beside the entrypoint, a fresh server answers the first request for
    a page URL (``/compare?...``, a link pasted into a chat) in the legacy multipage mode, which
    runs the page script alone. Switching the mode off and rerunning goes through ``app.py``'s
    ``st.navigation`` to the same page, with the sidebar and the URL's view.
    """
    if "mlmon_context" in st.session_state or st.session_state.get("mlmon_rerouted"):
        return False
    from streamlit.runtime.pages_manager import PagesManager

    PagesManager.uses_pages_directory = False
    st.session_state["mlmon_rerouted"] = True
    st.rerun()
    return True


def require_context() -> Context:
    """The context, or stop the page with a message when no log is open."""
    ctx = context()
    if ctx is None:
        _entrypoint_skipped()
        st.info("Open a log in the sidebar to start.")
        st.stop()
    return ctx


# ---------------------------------------------------------------- windows in widgets

def to_dates(window: Window) -> tuple[date, date]:
    """A half-open window as the inclusive (first day, last day) a date picker shows."""
    return window.start.date(), (window.end - timedelta(days=1)).date()


def from_dates(first: date, last: date) -> Window:
    """Inclusive picker dates as a half-open window."""
    return Window(datetime(first.year, first.month, first.day),
                  datetime(last.year, last.month, last.day) + timedelta(days=1))


def download_button(frame: pd.DataFrame, name: str, label: str = "Download CSV") -> None:
    """Every table of rows can be downloaded."""
    st.download_button(label, frame.to_csv(index=False).encode(), file_name=f"{name}.csv",
                       mime="text/csv", key=f"download-{name}")


# ---------------------------------------------------------------- long work, opening a segment

SEGMENT_KEY = "mlmon_segment_text"      # the sidebar's Segment input
OPEN_SEGMENT_KEY = "mlmon_open_segment"  # a segment a page asked to open on the next run


PROGRESS_CACHE_ENTRIES = 32


@st.cache_resource
def _progress_cache() -> tuple[OrderedDict, threading.Lock]:
    """Results of long calls, shared like ``st.cache_data``'s but filled while a progress bar moves
    (``st.cache_data`` would replay the bar's updates, which belong to a block made outside it)."""
    return OrderedDict(), threading.Lock()


def run_with_progress(function: str, ctx: Context, label: str, *args: Any, **kwargs: Any) -> Any:
    """Like ``run`` for a function that reports ``progress(fraction, message)``: a status box with
    a progress bar while it computes; cached per distinct input (a second look is instant)."""
    cache, lock = _progress_cache()
    key = (function, ctx.key, repr(args), repr(sorted(kwargs.items())))
    with lock:
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
    with st.status(label, expanded=False) as status:
        bar = st.progress(0.0)

        def progress(fraction: float, message: str) -> None:
            bar.progress(min(max(float(fraction), 0.0), 1.0), text=message)

        module, name = function.split(":")
        result = getattr(importlib.import_module(module), name)(ctx.view, *args, progress=progress,
                                                                **kwargs)
        bar.progress(1.0, text="done")
        status.update(label=f"{label} — done", state="complete")
    with lock:
        cache[key] = result
        while len(cache) > PROGRESS_CACHE_ENTRIES:
            cache.popitem(last=False)
    return result


def open_segment(ctx: Context, conditions: tuple) -> None:
    """Make ``conditions`` the current segment (sidebar input and URL) and rerun the app.

    The model choice, which the sidebar applies on its own, is left out of the text.
    """
    model = ()
    if ctx.model is not None and ctx.view.roles.model:
        model = (sql.Condition(ctx.view.roles.model, "==", value=ctx.model),)
    text = sql.segment_to_text(tuple(c for c in conditions if c not in model))
    st.session_state[OPEN_SEGMENT_KEY] = text
    if text:
        st.query_params["where"] = text
    elif "where" in st.query_params:
        del st.query_params["where"]
    st.rerun()


# ---------------------------------------------------------------- one row's explanation, one click away

EXPLAIN_PAGE = "attributions"                 # the Attributions page's url_path
VIEW_PARAMS = ("window", "ref", "where", "model")


def explain_url(row_id: Any) -> str:
    """A link (relative to the app) to the Attributions page explaining one row, in this view."""
    from urllib.parse import urlencode

    params = {name: st.query_params[name] for name in VIEW_PARAMS if st.query_params.get(name)}
    params["row"] = str(row_id)
    return f"{EXPLAIN_PAGE}?{urlencode(params)}"


def with_explain_links(frame: pd.DataFrame, id_column: str | None,
                       column: str = "explain") -> tuple[pd.DataFrame, dict]:
    """``frame`` with a first column linking each row to its explanation, and the
    ``column_config`` that shows it; pass both to ``st.dataframe`` in any table of rows."""
    if not id_column or id_column not in frame or frame.empty:
        return frame, {}
    linked = frame.copy()
    linked.insert(0, column, [explain_url(value) for value in frame[id_column]])
    config = {column: st.column_config.LinkColumn(
        column, display_text="explain ↗", help="This prediction's SHAP waterfall (new tab)")}
    return linked, config
