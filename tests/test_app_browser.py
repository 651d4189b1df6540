"""A real headless Chromium opens the app started the way the README starts it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import require_browser

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.browser


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_http(url: str, process: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the app exited early with code {process.returncode}")
        try:
            with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"the app did not answer at {url} within {timeout} s")


@pytest.fixture(scope="module")
def app_url():
    """``make run`` in the background (sample data generated if missing), as the README says."""
    require_browser()
    port = _free_port()
    process = subprocess.Popen(["make", "-s", "run", f"PORT={port}", "HEADLESS=1"], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for_http(url, process)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def _open(browser, url: str):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(url, wait_until="domcontentloaded")
    return page


def _assert_no_error(page) -> None:
    assert page.locator("[data-testid='stException']").count() == 0, page.inner_text("body")[:2000]
    assert "Traceback" not in page.inner_text("body")


def test_overview_renders_sample_data(app_url, browser):
    page = _open(browser, app_url)
    page.get_by_role("heading", name="Overview").wait_for(timeout=120_000)
    page.get_by_text("Volume per day").wait_for(timeout=60_000)
    page.locator("[data-testid='stMetricValue']").first.wait_for(timeout=60_000)
    page.wait_for_timeout(1500)
    _assert_no_error(page)
    assert "window=" in page.url, "the view should be mirrored in the URL"
    page.screenshot(path=str(ROOT / "bench" / "out" / "overview.png") if (ROOT / "bench" / "out").exists()
                    else "/tmp/mlmon-overview.png", full_page=True)
