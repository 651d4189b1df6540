"""The stakeholder report: every section, the planted problems in plain words with numbers that
match an independent computation, a self-contained file, atomic writes, clean errors, the CLI."""

from __future__ import annotations

import copy
import json
import re
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score

from mlmon_core import cli, report, sql
from mlmon_core.config import Window, load_config
from mlmon_core.errors import FilterError, NotComputableError
from mlmon_core.source import open_log
from tests.conftest import write_project
from tests.test_app_pages import synthetic_log

WINDOW = Window(datetime(2026, 7, 16), datetime(2026, 8, 15))   # after the fraud ring, labeled
MODEL = "v1.4"
SMALL_WINDOW = Window(datetime(2025, 1, 20), datetime(2025, 2, 1))


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """The sample project at 40,000 rows (planted problems: sample_data/README.md)."""
    from mlmon_core.demo import generate

    return generate(tmp_path_factory.mktemp("demo"), rows=40_000)


@pytest.fixture(scope="module")
def small_project(tmp_path_factory) -> Path:
    """The app tests' synthetic project: 4,000 rows, two models, no labels in the last week."""
    predictions, labels = synthetic_log()
    return write_project(tmp_path_factory.mktemp("small") / "project", predictions, labels,
                         '[reference]\nstart = "2025-01-01"\nend = "2025-01-15"\n')


@pytest.fixture(scope="module")
def view(demo):
    return open_log(load_config(demo))


@pytest.fixture(scope="module")
def built(view):
    """The report of a labeled window for the production model, with its progress calls."""
    calls: list[tuple[float, str]] = []
    segment = (sql.Condition("model_version", "==", value=MODEL),)
    result = report.build_report(view, WINDOW, segment=segment,
                                 progress=lambda fraction, message: calls.append((fraction, message)))
    return result, calls


@pytest.fixture(scope="module")
def page(built) -> str:
    return report.render_html(built[0])


@pytest.fixture(scope="module")
def labeled_rows(demo) -> pd.DataFrame:
    """The window's labeled production rows, read with pandas (the oracle's own path)."""
    folder = demo.parent / "data"
    predictions = pd.read_parquet(folder / "predictions")
    labels = pd.read_parquet(folder / "labels")
    rows = predictions.merge(labels[["id", "defaulted"]], on="id", how="inner")
    inside = ((rows["timestamp"] >= WINDOW.start) & (rows["timestamp"] < WINDOW.end)
              & (rows["model_version"] == MODEL))
    return rows[inside]


# ---------------------------------------------------------------- content

def test_every_section_is_there_in_order(built, page):
    result, _ = built
    expected = ["summary", "health", "trend", "segments", "degraded", "data", "drift", "changes",
                "service", "alerts", "methods"]
    assert result.sections == expected
    positions = [page.index(f'<section id="{key}" data-section="{key}">') for key in expected]
    assert positions == sorted(positions)
    for key in expected:
        assert f"<h2>{report.SECTIONS[key]}</h2>" in page
    for chart in ("chart-trend", "chart-segments", "chart-drift", "chart-service"):
        assert f'data-chart="{chart}"' in page and f'id="{chart}"' in page
    assert 3 <= len(result.summary) <= 5
    assert result.summary[-1].startswith("What to do: ")


def test_the_planted_weak_segment_is_named_with_right_numbers(built, page, labeled_rows):
    result, _ = built
    weak = result.weak
    found = next(s for s in weak.slices
                 if {c.column for c in s.conditions} >= {"purpose", "term_months"})
    own = {(c.column, c.op, c.value) for c in found.conditions}
    assert ("purpose", "==", "small_business") in own
    assert ("term_months", ">=", 60) in own or ("term_months", "==", 60) in own
    inside = (labeled_rows["purpose"] == "small_business") & (labeled_rows["term_months"] >= 60)
    wrong = labeled_rows["prediction"] != labeled_rows["defaulted"]
    assert found.rows == inside.sum()
    assert weak.rows == len(labeled_rows)
    assert found.value == pytest.approx(wrong[inside].mean())
    assert found.complement_value == pytest.approx(wrong[~inside].mean())
    sentence = report.slice_sentence(found, weak)
    share = inside.mean()
    assert (f"is wrong {wrong[inside].mean():.0%} of the time for cases where "
            in sentence)
    assert f"({share:.1%} of predictions), against {wrong[~inside].mean():.0%} elsewhere" in sentence
    assert "term_months ≥ 60" in page and "purpose = small_business" in page
    assert any("small_business" in line for line in result.summary)


def test_the_fraud_ring_channel_got_worse(built):
    result, _ = built
    assert result.degraded.slices, result.degraded.reason
    top = result.degraded.slices[0]
    assert [(c.column, c.value) for c in top.conditions[1:]] == [("channel", "partner_api")]
    sentence = report.degraded_sentence(top, result.degraded)
    assert "got worse for cases where channel = partner_api" in sentence
    assert "rose from" in sentence and "while elsewhere it went from" in sentence


def test_cards_agree_with_scikit_learn(built, labeled_rows):
    result, _ = built
    card = next(c for c in result.cards if c.metric == "accuracy")
    truth = accuracy_score(labeled_rows["defaulted"], labeled_rows["prediction"])
    assert card.value == pytest.approx(truth)
    assert card.n == len(labeled_rows) and not card.estimated
    assert card.ci_low < card.value < card.ci_high
    assert card.verdict == "worse" and result.status == "attention"
    assert result.summary[0].startswith("The model is doing worse than in the reference period")
    assert f"{truth * 100:.1f}%" in result.summary[0]


def test_progress_runs_from_zero_to_one(built):
    _, calls = built
    fractions = [fraction for fraction, _ in calls]
    assert fractions[0] == 0.0 and fractions[-1] == 1.0
    assert fractions == sorted(fractions)
    assert any("weak segments" in message for _, message in calls)


def test_json_form_is_plain(built):
    result, _ = built
    data = json.loads(json.dumps(result.to_json(), allow_nan=False))
    assert data["sections"] == result.sections
    assert data["weak_segments"]["slices"] and data["cards"][0]["metric"] == result.cards[0].metric
    assert set(data["timings"]) >= {"health", "segments", "degraded", "data", "drift"}


# ---------------------------------------------------------------- self-contained

def test_the_file_loads_nothing_from_outside(page):
    attributes = re.findall(r"""\b(?:src|href|action|data|poster)\s*=\s*["']?([^"'\s>]+)""", page)
    assert attributes, "the contents links should be found"
    assert not [a for a in attributes if re.match(r"(?i)(https?:)?//", a)]
    assert not re.search(r"(?i)<link\b|@import|url\(\s*['\"]?(https?:)?//", page)
    assert "window.vegaEmbed=" in page          # Vega, Vega-Lite and vega-embed are inline
    assert page.count("<script") == page.count("</script>")


def test_embedded_json_parses_and_carries_its_own_data(page):
    blocks = dict(re.findall(r'<script type="application/json" id="([^"]+)">(.*?)</script>',
                             page, re.S))
    assert "mlmon-report-data" in blocks and "chart-trend" in blocks
    for key, text in blocks.items():
        data = json.loads(text)
        if key.startswith("chart-"):
            assert "datasets" in data and '"url"' not in text, key


def test_text_is_escaped(built):
    result = copy.copy(built[0])
    result.title = "Q3 </script><script>alert(1)</script> & <b>"
    page = report.render_html(result)
    assert "<script>alert(1)" not in page and "<b>" not in page
    assert "Q3 &lt;/script&gt;&lt;script&gt;alert(1)&lt;/script&gt; &amp; &lt;b&gt;" in page
    data = re.search(r'id="mlmon-report-data">(.*?)</script>', page, re.S).group(1)
    assert json.loads(data)["title"].startswith("Q3 </script>")


# ---------------------------------------------------------------- writing, errors, CLI

def test_write_is_atomic_and_replaces(small_project, tmp_path):
    view = open_log(load_config(small_project))
    out = tmp_path / "report.html"
    out.write_text("old report")
    with pytest.raises(FilterError):
        report.write_report(view, SMALL_WINDOW, out, segment=(sql.Condition("nosuch", "==", value=1),))
    assert out.read_text() == "old report"
    written = report.write_report(view, SMALL_WINDOW, out)
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert written.bytes == out.stat().st_size and written.path == out.resolve()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]   # no temporary left


def test_empty_window_is_a_clean_error(view, tmp_path):
    with pytest.raises(NotComputableError, match="no predictions in the window 2030-01-01"):
        report.build_report(view, Window(datetime(2030, 1, 1), datetime(2030, 2, 1)))
    assert not (tmp_path / "never.html").exists()


@pytest.mark.parametrize("arguments, message", [
    (["--window", "2026-08-01..2026-07-01"], "the start must be before the end"),
    (["--window", "yesterday"], "expected START..END"),
    (["--window", "2031-01-01..2031-02-01"], "no predictions in the window"),
    (["--where", "nosuch > 1"], "unknown column 'nosuch'"),
    (["--reference", "2026-06-10"], "expected START..END"),
])
def test_cli_bad_input_exits_2_without_traceback(demo, tmp_path, capsys, arguments, message):
    out = tmp_path / "report.html"
    code = cli.main(["report", "--config", str(demo), "--out", str(out), *arguments])
    captured = capsys.readouterr()
    assert code == 2 and message in captured.err and "Traceback" not in captured.err
    assert not out.exists()


def test_cli_refuses_an_output_in_a_missing_folder(demo, tmp_path, capsys):
    code = cli.main(["report", "--config", str(demo), "--out", str(tmp_path / "no" / "r.html")])
    assert code == 2 and "does not exist" in capsys.readouterr().err


def test_cli_writes_the_default_window_for_the_main_model(small_project, tmp_path, capsys):
    out = tmp_path / "report.html"
    code = cli.main(["report", "--config", str(small_project), "--out", str(out), "--json"])
    payload = json.loads(capsys.readouterr().out)
    assert code == 0
    assert payload["out"] == str(out.resolve()) and payload["bytes"] == out.stat().st_size
    assert payload["sections"][0] == "summary" and payload["sections"][-1] == "methods"
    assert payload["window"] == {"start": "2025-02-03T00:00:00", "end": "2025-02-10T00:00:00"}
    assert payload["segment"] == [{"column": "model", "op": "==", "value": "v1"}]  # the busiest
    page = out.read_text(encoding="utf-8")
    assert "Model report: model v1, 3 Feb 2025 – 9 Feb 2025" in page
    assert '<span class="tag">estimated</span>' in page     # the last week has no labels yet
    code = cli.main(["report", "--config", str(small_project), "--out", str(out),
                     "--model", "v2", "--window", "2025-01-20..2025-02-01", "--title", "Weekly"])
    text = capsys.readouterr().out
    assert code == 0 and text.startswith(f"report written: {out.resolve()}")
    assert "<h1>Weekly</h1>" in out.read_text(encoding="utf-8")


# ---------------------------------------------------------------- other logs

def _small_log(task: str, rows: int = 600, seed: int = 3) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    timestamp = pd.Timestamp("2025-03-01") + pd.to_timedelta(rng.random(rows) * 20, unit="D")
    group = rng.choice(["a", "b", "c"], rows)
    frame = pd.DataFrame({"id": np.arange(rows), "timestamp": timestamp, "group": group,
                          "x": rng.normal(size=rows)})
    if task == "regression":
        target = frame["x"] * 2 + rng.normal(size=rows)
        frame["prediction"] = frame["x"] * 2 + np.where(group == "c", 3.0, 0.0)
    else:
        target = (rng.random(rows) < 0.3).astype(int)
        frame["prediction"] = np.where(group == "c", 1 - target, target)
    return frame, pd.DataFrame({"id": frame["id"], "target": target})


def test_regression_log_reads_in_its_own_words(make_log):
    predictions, labels = _small_log("regression")
    view = make_log(predictions, labels, '[model]\ntask = "regression"\n'
                                         '[reference]\nstart = "2025-03-01"\nend = "2025-03-08"\n')
    result = report.build_report(view, Window(datetime(2025, 3, 8), datetime(2025, 3, 22)))
    page = report.render_html(result)
    assert result.sections[-1] == "methods" and "service" not in result.sections
    top = result.weak.slices[0]
    assert [(c.column, c.value) for c in top.conditions] == [("group", "c")]
    assert "predictions are off by" in report.slice_sentence(top, result.weak)
    assert "MAE" in page


def test_log_without_labels_or_score_still_reports(make_log):
    predictions, _ = _small_log("binary", rows=300)
    view = make_log(predictions)
    result = report.build_report(view, Window(datetime(2025, 3, 10), datetime(2025, 3, 22)))
    page = report.render_html(result)
    assert result.status == "unknown" and not any(card.value is not None for card in result.cards)
    assert result.summary[0].startswith("The model's quality cannot be judged for this window yet")
    for key in result.sections:
        assert f'data-section="{key}"' in page


def test_window_words():
    assert report.window_words(Window(datetime(2026, 7, 16), datetime(2026, 8, 15))) == \
        "16 Jul 2026 – 14 Aug 2026"
    assert report.window_words(Window(datetime(2026, 7, 16), datetime(2026, 7, 17))) == \
        "16 Jul 2026"
    assert report.window_words(Window(None, None)) == "the whole log"
    assert report.window_words(Window(datetime(2026, 7, 16, 6), datetime(2026, 7, 16, 18))) == \
        "2026-07-16 06:00:00 – 2026-07-16 18:00:00 (end excluded)"


def test_default_model_is_the_busiest_one_in_the_window(view):
    assert report.default_model(view, WINDOW) == MODEL
