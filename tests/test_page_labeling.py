"""AppTest of the Labeling page: the preview, the export button, the history."""

from __future__ import annotations

import pandas as pd

from mlmon_core import labeling
from mlmon_core.config import load_config
from mlmon_core.source import open_log
from tests.test_app_pages import assert_clean, run_app

PAGE = "pages/labeling.py"


def _preview(app) -> pd.DataFrame:
    frames = [d.value for d in app.dataframe if "reason" in d.value.columns and "id" in d.value.columns]
    assert frames, "no preview table"
    return frames[0]


def test_labeling_page_renders_a_preview_of_n_rows(project):
    app = run_app(PAGE)
    assert_clean(app)
    assert app.title[0].value == "Labeling"
    preview = _preview(app)
    assert len(preview) == 50
    assert preview["reason"].str.len().gt(0).all()
    assert set(preview["strategy"]) == {"uncertainty", "diverse", "random"}
    assert {"Rows to label", "Export and record", "Past exports", "Returning labels"} <= \
        {s.value for s in app.subheader}
    assert any("ingest-labels" in c.value for c in app.code)


def test_changing_n_and_the_mix_changes_the_preview(project):
    app = run_app(PAGE)
    app.number_input[0].set_value(12).run()
    app.multiselect[0].set_value(["random"]).run()
    assert_clean(app)
    preview = _preview(app)
    assert len(preview) == 12 and set(preview["strategy"]) == {"random"}


def test_export_records_and_the_next_preview_excludes_the_rows(project):
    app = run_app(PAGE)
    first = _preview(app)
    app.text_input[-1].set_value("exports/batch.csv")
    submit = next(b for b in app.button if b.label == "Export and record")
    submit.click().run()
    assert_clean(app)
    written = project.parent / "exports" / "batch.csv"
    assert written.is_file()
    assert pd.read_csv(written)["id"].tolist() == first["id"].tolist()
    assert any("Exported 50 rows" in s.value for s in app.success)
    second = _preview(app)
    assert not set(second["id"]) & set(first["id"])
    view = open_log(load_config(project))
    assert labeling.exported_rows(view) == (50, 1)
