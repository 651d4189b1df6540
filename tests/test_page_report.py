"""AppTest: the Report page builds the stakeholder report of the sidebar's view, offers it as a
download and shows a preview (see tests/test_page_segments.py on switching to a page)."""

from __future__ import annotations

from tests.test_app_pages import assert_clean, run_app

PAGE = "pages/report.py"
WIDE = "2025-01-15..2025-02-03"


def test_report_page_builds_offers_the_file_and_previews_it(project):
    app = run_app(PAGE, query={"window": WIDE})
    assert_clean(app)
    assert app.title[0].value == "Report"
    verdicts = {s.value for s in app.subheader}
    assert verdicts & {"Needs attention", "Looks healthy", "Not enough data to judge"}
    summary = " ".join(m.value for m in app.markdown)
    assert "reference period" in summary
    assert any("opens in any browser without a network" in c.value for c in app.caption)
    assert "Preview" in {h.value for h in app.header}
    downloads = app.get("download_button")
    assert len(downloads) == 1
    assert "Download the report" in downloads[0].proto.label
    preview = app.get("iframe")
    assert len(preview) == 1
    srcdoc = preview[0].proto.srcdoc
    assert srcdoc.startswith("<!DOCTYPE html>")
    assert 'data-section="summary"' in srcdoc and 'data-section="methods"' in srcdoc
    assert "Model report: model v1," in srcdoc          # the sidebar's model choice is reported


def test_report_page_of_an_empty_window_says_so(project):
    app = run_app(PAGE, query={"window": "2025-01-01..2025-01-02", "where": "age > 200"})
    assert not app.exception
    assert any("no predictions in the window" in e.value for e in app.error)
