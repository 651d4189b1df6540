"""A real headless Chromium opens a written report from disk with the network cut off: every
section heading shows, every chart is drawn by the inline Vega libraries, nothing is fetched and
nothing is logged as an error. Debian's chromium, from the shared ``browser`` fixture."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from mlmon_core import report
from mlmon_core.config import Window, load_config
from mlmon_core.source import open_log
from tests.conftest import write_project
from tests.test_app_pages import synthetic_log

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
WINDOW = Window(datetime(2025, 1, 20), datetime(2025, 2, 10))   # labeled, then not yet labeled


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """A report of the synthetic project (two models, late labels) written to disk."""
    predictions, labels = synthetic_log()
    folder = tmp_path_factory.mktemp("report")
    config = write_project(folder / "project", predictions, labels,
                           '[reference]\nstart = "2025-01-01"\nend = "2025-01-15"\n')
    return report.write_report(open_log(load_config(config)), WINDOW, folder / "report.html")


def _screenshot_path(name: str) -> str:
    out = ROOT / "bench" / "out"
    return str(out / name) if out.exists() else f"/tmp/{name}"


def test_report_opens_offline_with_every_section_and_chart(written, browser):
    context = browser.new_context(offline=True, viewport={"width": 1100, "height": 900})
    page = context.new_page()
    problems: list[str] = []
    outside: list[str] = []
    page.on("console", lambda message: problems.append(message.text)
            if message.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))

    def only_files(route) -> None:
        if route.request.url.startswith("file:"):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", only_files)
    page.goto(written.path.as_uri(), wait_until="load")
    charts = page.locator("[data-chart]")
    expected_charts = charts.count()
    assert expected_charts >= 3
    page.wait_for_function(
        "n => document.querySelectorAll('[data-chart][data-rendered]').length === n",
        arg=expected_charts, timeout=30_000)

    for key in written.report.sections:
        heading = page.locator(f"section#{key} > h2")
        assert heading.is_visible(), key
        assert heading.inner_text() == report.SECTIONS[key]
    for index in range(expected_charts):
        chart = charts.nth(index)
        assert chart.locator("svg, canvas").count() >= 1, chart.get_attribute("data-chart")
        box = chart.bounding_box()
        assert box is not None and box["width"] > 300 and box["height"] > 50
    assert page.locator("section#summary li").count() == len(written.report.summary)
    assert page.locator(".status span").inner_text() == report.STATUS_WORDS[written.report.status]
    assert problems == [], problems
    assert outside == [], outside

    page.screenshot(path=_screenshot_path("report.png"), full_page=True)
    page.emulate_media(media="print")
    assert page.locator("section#summary > h2").is_visible()
    assert not page.locator("nav.contents").is_visible()      # print CSS hides the contents
    context.close()
