"""AppTest: the Segments page renders on the synthetic project, and a found slice or a breakdown
cell opens as the current segment (the URL's ``where`` and the sidebar's Segment input).

Note on page switching: the app keeps its pages in a folder named ``pages/``, so AppTest (and a
freshly started server's first run) treats ``pages/segments.py`` as a v1 multipage script and runs
it without ``app.py`` (``st.Page`` url paths equal to the file names collide with the v1 page
hashes); the page then reads the context that the first (main) run left in session state. To see
the sidebar after opening a segment, the tests switch back to ``app.py`` itself.
"""

from __future__ import annotations

from tests.test_app_pages import assert_clean, run_app

from mlmon_core import sql
from pages.common import OPEN_SEGMENT_KEY, SEGMENT_KEY

PAGE = "pages/segments.py"
WIDE = "2025-01-01..2025-02-03"


def _param(app, name: str):
    value = app.query_params.get(name)
    return value[0] if isinstance(value, list) else value


def _back_to_main_page(app):
    app.switch_page("app.py")
    app.run()
    return app


def test_segments_page_renders_with_a_segment(project):
    app = run_app(PAGE, query={"where": "age >= 60", "window": WIDE})
    assert_clean(app)
    assert app.title[0].value == "Segments"
    headers = {h.value for h in app.header}
    assert {"Segment vs the rest", "Over time", "Breakdown by one feature",
            "Breakdown by two features", "Found slices", "Rows"} <= headers
    labels = [m.label for m in app.metric]
    assert "Share of traffic" in labels and len(labels) >= 3
    assert any("age ≥ 60" in c.value for c in app.caption)
    assert {"Share of traffic"} <= {s.value for s in app.subheader}
    assert len(app.get("vega_lite_chart")) >= 4


def test_segments_page_without_a_segment_says_how_to_start(project):
    app = run_app(PAGE)
    assert_clean(app)
    assert any("No segment yet" in i.value for i in app.info)
    assert "Over time" not in {h.value for h in app.header}       # nothing to compare over time
    app.selectbox(key="segments-feature").select("region").run()
    assert_clean(app)
    app.toggle(key="segments-rows").set_value(True).run()
    assert_clean(app)
    assert any("rows shown" in c.value for c in app.caption)


def test_opening_a_breakdown_cell_sets_the_segment(project):
    app = run_app(PAGE, query={"window": WIDE})
    app.selectbox(key="segments-feature").select("region").run()
    picker = app.selectbox(key="segments-cell-pick")
    first = picker.options[0]
    app.button(key="segments-cell-open").click().run()
    assert_clean(app)
    where = _param(app, "where")
    assert where and first.startswith(sql.describe_segment(sql.parse_where(where)) + " — ")
    assert app.session_state[OPEN_SEGMENT_KEY] == where
    _back_to_main_page(app)
    assert_clean(app)
    assert app.text_input(key=SEGMENT_KEY).value == where
    assert _param(app, "where") == where


def test_opening_a_found_slice_sets_the_where_query_param(project):
    app = run_app(PAGE, query={"window": WIDE})
    app.button(key="segments-find").click().run()
    assert_clean(app)
    tabs = [t.label for t in app.tabs]
    assert any(t.startswith("Weak slices") for t in tabs)
    picker = app.selectbox(key="segments-weak-pick")
    assert picker.options, "the synthetic project has an age-driven weak slice"
    app.button(key="segments-weak-open").click().run()
    assert_clean(app)
    where = _param(app, "where")
    assert where and "age" in where
    conditions = sql.parse_where(where)
    assert all(c.column != "model" for c in conditions)      # the sidebar applies the model itself
    _back_to_main_page(app)
    assert app.text_input(key=SEGMENT_KEY).value == where
