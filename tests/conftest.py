"""Shared fixtures: write a small log to real files in tmp_path and open it through mlmon."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from mlmon_core.config import load_config
from mlmon_core.source import LogView, open_log


def write_project(folder: Path, predictions: pd.DataFrame, labels: pd.DataFrame | None = None,
                  toml: str = "", fmt: str = "parquet") -> Path:
    """Write predictions (and labels) as files plus an mlmon.toml; return the toml path."""
    folder.mkdir(parents=True, exist_ok=True)
    pred_name = f"predictions.{fmt}"
    _write(predictions, folder / pred_name, fmt)
    lines = ["[source]", f'predictions = "{pred_name}"']
    if labels is not None:
        _write(labels, folder / f"labels.{fmt}", fmt)
        lines.append(f'labels = "labels.{fmt}"')
    text = "\n".join(lines) + "\n" + toml
    path = folder / "mlmon.toml"
    path.write_text(text)
    return path


def _write(frame: pd.DataFrame, path: Path, fmt: str) -> None:
    if fmt == "parquet":
        frame.to_parquet(path, index=False)
    elif fmt == "csv":
        frame.to_csv(path, index=False)
    elif fmt in ("ndjson", "jsonl", "json"):
        frame.to_json(path, orient="records", lines=True, date_format="iso")
    else:
        raise ValueError(fmt)


@pytest.fixture
def make_log(tmp_path):
    """``make_log(predictions_df, labels_df=None, toml="...")`` → an opened ``LogView``."""
    counter = {"n": 0}

    def factory(predictions: pd.DataFrame, labels: pd.DataFrame | None = None, toml: str = "",
                fmt: str = "parquet") -> LogView:
        counter["n"] += 1
        path = write_project(tmp_path / f"project{counter['n']}", predictions, labels, toml, fmt)
        return open_log(load_config(path))

    return factory


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]


def require_browser() -> None:
    """Skip without Debian's chromium (and make), unless CI demands the browser tests run."""
    if not os.path.exists(CHROMIUM) or shutil.which("make") is None:
        if os.environ.get("MLMON_REQUIRE_BROWSER"):
            pytest.fail(f"{CHROMIUM} or make is missing but MLMON_REQUIRE_BROWSER is set")
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)")


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium driven by Playwright (never a downloaded browser)."""
    require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                              args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """The synthetic app project on disk; the app opens it through MLMON_CONFIG like ``mlmon app``."""
    from tests.test_app_pages import synthetic_log

    predictions, labels = synthetic_log()
    path = write_project(tmp_path / "project", predictions, labels,
                         '[reference]\nstart = "2025-01-01"\nend = "2025-01-15"\n')
    monkeypatch.setenv("MLMON_CONFIG", str(path))
    return path
