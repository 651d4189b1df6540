"""Shared fixtures: write a small log to real files in tmp_path and open it through mlmon."""

from __future__ import annotations

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
