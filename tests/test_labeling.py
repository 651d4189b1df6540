"""Label queues: picks checked against numpy, the export ledger, returned labels, the CLI."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, roc_auc_score

from mlmon_core import cli, labeling, sql
from mlmon_core.config import Window, load_config
from mlmon_core.errors import MlmonError
from mlmon_core.metrics import compute_metrics
from mlmon_core.source import open_log
from mlmon_core.store import ingest

EVERYTHING = Window(datetime(2025, 1, 1), datetime(2025, 3, 1))
CURRENT = Window(datetime(2025, 2, 1), datetime(2025, 3, 1))
REFERENCE_TOML = '[reference]\nstart = "2025-01-01"\nend = "2025-02-01"\n'


def loan_log(rows: int = 1200, seed: int = 0, drift: bool = False
             ) -> tuple[pd.DataFrame, pd.DataFrame, pd.Series]:
    """Predictions over January and February, half labeled, and the truth of every row (by id).

    Scores are rounded to two decimals so that they tie.

    A weak slice is planted (region west and age ≥ 60: the prediction is wrong 70 % of the time)
    and, with ``drift``, February's incomes of the north region are five times larger.
    """
    rng = np.random.default_rng(seed)
    start = np.datetime64("2025-01-01T00:00:00")
    timestamp = start + (rng.random(rows) * 59 * 86400).astype("timedelta64[s]")
    age = rng.integers(18, 90, rows)
    region = rng.choice(["north", "south", "east", "west"], rows)
    income = rng.lognormal(10, 0.4, rows)
    february = timestamp >= np.datetime64("2025-02-01")
    if drift:
        income = np.where(february & (region == "north"), income * 5, income)
    score = np.round(rng.random(rows), 2)
    score[rng.random(rows) < 0.03] = np.nan
    prediction = (np.nan_to_num(score, nan=0.0) >= 0.5).astype(int)
    weak = (region == "west") & (age >= 60)
    wrong = rng.random(rows) < np.where(weak, 0.7, 0.1)
    truth = np.where(wrong, 1 - prediction, prediction)
    frame = pd.DataFrame({"id": [f"r{i}" for i in range(rows)], "timestamp": timestamp, "age": age,
                          "income": income, "region": region, "prediction": prediction,
                          "score": score})
    labeled = rng.random(rows) < 0.5
    labels = pd.DataFrame({"id": frame["id"][labeled], "target": truth[labeled]})
    return frame, labels, pd.Series(truth, index=frame["id"])


def write_store_project(folder: Path, predictions: pd.DataFrame, labels: pd.DataFrame,
                        toml: str = "") -> Path:
    """Predictions in one file, labels in a managed store (a directory) filled by ``ingest``."""
    folder.mkdir(parents=True, exist_ok=True)
    predictions.to_parquet(folder / "predictions.parquet", index=False)
    path = folder / "mlmon.toml"
    path.write_text('[source]\npredictions = "predictions.parquet"\nlabels = "labels"\n'
                    '[model]\ntask = "binary"\npositive_label = 1\n' + toml)
    first = folder / "first-labels.parquet"
    labels.to_parquet(first, index=False)
    ingest(load_config(path), [str(first)], kind="labels")
    return path


@pytest.fixture
def project(tmp_path):
    predictions, labels, truth = loan_log()
    path = write_store_project(tmp_path / "project", predictions, labels, REFERENCE_TOML)
    return path, predictions, labels, truth


def open_project(path: Path):
    return open_log(load_config(path))


def unlabeled(predictions: pd.DataFrame, labels: pd.DataFrame, exclude=()) -> pd.DataFrame:
    mask = ~predictions["id"].isin(labels["id"]) & ~predictions["id"].isin(list(exclude))
    return predictions[mask]


def nearest(pool: pd.DataFrame, n: int, threshold: float) -> list[str]:
    """The oracle: the n finite scores nearest the threshold, ties by id (numpy lexsort)."""
    finite = pool[np.isfinite(pool["score"].to_numpy(float))]
    distance = np.abs(finite["score"].to_numpy(float) - threshold)
    ids = finite["id"].to_numpy(str)
    order = np.lexsort((ids, distance))
    return list(ids[order][:n])


# ---------------------------------------------------------------- uncertainty


@pytest.mark.parametrize("threshold", [0.5, 0.3])
def test_uncertainty_picks_exactly_the_n_nearest_with_ties_broken_by_id(tmp_path, threshold):
    predictions, labels, _ = loan_log(seed=3)
    toml = f"threshold = {threshold}\n"
    path = write_store_project(tmp_path / "p", predictions, labels, toml)
    view = open_project(path)
    queue = labeling.label_queue(view, EVERYTHING, (), "uncertainty", n=40)
    expected = nearest(unlabeled(predictions, labels), 40, threshold)
    assert queue.rows["id"].tolist() == expected
    # the scores were rounded to 2 decimals, so the cut-off falls inside a tie
    pool = unlabeled(predictions, labels)
    distances = np.abs(pool["score"] - threshold)
    last = abs(float(queue.rows["score"].iloc[-1]) - threshold)
    assert (np.isclose(distances, last)).sum() > 1
    assert all(r.startswith("score ") and f"threshold {threshold:g}" in r for r in queue.rows["reason"])
    assert queue.strategies[0].chosen == 40 and queue.strategies[0].reason is None


def test_uncertainty_in_a_segment_and_window(project):
    path, predictions, labels, truth = project
    view = open_project(path)
    segment = sql.parse_where("region = 'south' and age < 50")
    queue = labeling.label_queue(view, CURRENT, segment, "uncertainty", n=15)
    pool = unlabeled(predictions, labels)
    pool = pool[(pool["region"] == "south") & (pool["age"] < 50)
                & (pool["timestamp"] >= CURRENT.start) & (pool["timestamp"] < CURRENT.end)]
    assert queue.rows["id"].tolist() == nearest(pool, 15, 0.5)
    assert queue.pool == len(pool)


# ---------------------------------------------------------------- the ledger


def test_exported_rows_are_never_proposed_again(project, tmp_path):
    path, predictions, labels, truth = project
    view = open_project(path)
    spec = "uncertainty:20,random:10,diverse:10"
    first = labeling.label_queue(view, EVERYTHING, (), spec)
    exported = labeling.export_queue(view, first, tmp_path / "out" / "batch1.csv")
    assert exported.recorded and Path(exported.out).is_file()
    written = pd.read_csv(exported.out)
    assert written["id"].tolist() == first.rows["id"].tolist()
    assert {"id", "strategy", "reason", "score", "prediction", "age", "income", "region"} <= set(written)

    second = labeling.label_queue(view, EVERYTHING, (), spec)
    assert not set(second.rows["id"]) & set(first.rows["id"])
    assert second.pool == first.pool - 40 and second.already_exported == 40
    # the next-nearest rows, once the exported ones are out of the pool
    expected = nearest(unlabeled(predictions, labels, exclude=first.rows["id"]), 20, 0.5)
    assert second.rows["id"].tolist()[:20] == expected

    again = labeling.export_queue(view, second, tmp_path / "out" / "batch2.parquet")
    assert pd.read_parquet(again.out)["id"].tolist() == second.rows["id"].tolist()
    third = labeling.label_queue(view, EVERYTHING, (), spec)
    assert not set(third.rows["id"]) & (set(first.rows["id"]) | set(second.rows["id"]))

    history = labeling.export_history(view)
    assert history["rows"].tolist() == [40, 40]
    assert history["file"].iloc[0].endswith("batch2.parquet")
    assert "uncertainty 20" in history["strategies"].iloc[0]
    assert labeling.exported_rows(view) == (80, 2)
    ledger = labeling.ledger_folder(view)
    assert ledger == path.parent / ".mlmon" / "label_exports"
    assert not [p for p in ledger.iterdir() if p.name.startswith(".")]


def test_ingested_labels_flow_into_the_metrics(project, tmp_path):
    path, predictions, labels, truth = project
    view = open_project(path)
    before = compute_metrics(view, EVERYTHING)
    queue = labeling.label_queue(view, EVERYTHING, (), "uncertainty:30,random:20")
    labeling.export_queue(view, queue, tmp_path / "to-label.csv")

    # the labeling team returns the truth for the exported ids
    returned = pd.DataFrame({"id": queue.rows["id"], "target": truth[queue.rows["id"]].to_numpy()})
    returned_file = tmp_path / "returned.csv"
    returned.to_csv(returned_file, index=False)
    ingest(load_config(path), [str(returned_file)], kind="labels")

    view = open_project(path)
    after = compute_metrics(view, EVERYTHING)
    assert after.labeled_rows == before.labeled_rows + 50
    every = pd.concat([labels, returned], ignore_index=True).merge(predictions, on="id")
    assert after.metrics["accuracy"].value == pytest.approx(
        accuracy_score(every["target"], every["prediction"]), abs=1e-12)
    assert after.metrics["accuracy"].value != pytest.approx(before.metrics["accuracy"].value, abs=1e-9)
    scored = every[np.isfinite(every["score"])]
    assert after.metrics["roc_auc"].value == pytest.approx(
        roc_auc_score(scored["target"], scored["score"]), abs=1e-9)
    # now labeled, and recorded: neither way can they come back
    assert not set(labeling.label_queue(view, EVERYTHING, (), "random:50").rows["id"]) \
        & set(queue.rows["id"])


# ---------------------------------------------------------------- mixing strategies


def test_mixed_strategies_respect_budgets_without_duplicates(project):
    path, predictions, labels, truth = project
    view = open_project(path)
    queue = labeling.label_queue(view, EVERYTHING, (), "uncertainty:7,random:5,diverse:6,"
                                                       "segment:4,drift:3", seed=1)
    counts = queue.rows["strategy"].value_counts().to_dict()
    assert counts == {"uncertainty": 7, "random": 5, "diverse": 6, "segment": 4, "drift": 3}
    assert queue.rows["id"].is_unique and queue.chosen == queue.requested == 25
    assert {s.name: s.chosen for s in queue.strategies} == counts
    assert queue.rows["id"].tolist()[:7] == nearest(unlabeled(predictions, labels), 7, 0.5)
    # a later strategy never takes what an earlier one took, even when it would have picked it
    alone = labeling.label_queue(view, EVERYTHING, (), "random:12", seed=1)
    mixed = labeling.label_queue(view, EVERYTHING, (), "uncertainty:7,random:5", seed=1)
    taken = set(mixed.rows["id"][:7])
    assert mixed.rows["id"].tolist()[7:] == [i for i in alone.rows["id"] if i not in taken][:5]


def test_counts_left_out_share_n_evenly():
    assert labeling.parse_strategies("uncertainty,segment,random", 10) == (
        ("uncertainty", 4), ("segment", 3), ("random", 3))
    assert labeling.parse_strategies("uncertainty:50,segment,random", 100) == (
        ("uncertainty", 50), ("segment", 25), ("random", 25))
    assert labeling.parse_strategies("uncertainty:50,segment:30,random:20") == (
        ("uncertainty", 50), ("segment", 30), ("random", 20))
    assert labeling.parse_strategies({"drift": None}, 3) == (("drift", 3),)


@pytest.mark.parametrize("spec, n, words", [
    ("uncertain:5", None, "unknown strategy 'uncertain'"),
    ("random:5,random:3", None, "given twice"),
    ("random:0", None, "whole number"),
    ("random:x", None, "whole number"),
    ("random", None, "has no count"),
    ("random:60,drift", 50, "more than --n 50"),
    ("random:10", 50, "add up to 10 but --n is 50"),
    ("", 5, "no strategy"),
    ("random", 0, "at least one row"),
    ("random", labeling.MAX_QUEUE_ROWS + 1, "at most"),
])
def test_bad_strategy_specs_are_refused(spec, n, words):
    with pytest.raises(MlmonError, match=words):
        labeling.parse_strategies(spec, n)


def test_random_is_deterministic_per_seed(project):
    path, *_ = project
    one = labeling.label_queue(open_project(path), EVERYTHING, (), "random:30", seed=4)
    two = labeling.label_queue(open_project(path), EVERYTHING, (), "random:30", seed=4)
    other = labeling.label_queue(open_project(path), EVERYTHING, (), "random:30", seed=5)
    assert one.rows["id"].tolist() == two.rows["id"].tolist()
    assert one.rows["id"].tolist() != other.rows["id"].tolist()
    assert set(one.rows["reason"]) == {"random baseline (seed 4)"}


# ---------------------------------------------------------------- the other strategies


def test_every_row_has_a_specific_reason(project):
    path, *_ = project
    view = open_project(path)
    queue = labeling.label_queue(view, EVERYTHING, (), "uncertainty:5,segment:5,drift:5,"
                                                       "diverse:5,random:5")
    prefixes = {"uncertainty": "score ", "segment": "in weak slice '", "random": "random baseline",
                "drift": "drift classifier: ", "diverse": "diverse: stratum "}
    for strategy, reason in zip(queue.rows["strategy"], queue.rows["reason"]):
        assert reason.startswith(prefixes[strategy]), (strategy, reason)
    payload = json.loads(json.dumps(cli.to_jsonable(queue.to_json())))
    assert [set(r) for r in payload["rows"]] == [{"id", "strategy", "reason", "score",
                                                  "prediction"}] * 25
    assert set(payload["strategies"]) == set(prefixes)


def test_segment_rows_lie_in_the_weak_slices_spread_evenly(project):
    path, predictions, *_ = project
    view = open_project(path)
    queue = labeling.label_queue(view, EVERYTHING, (), "segment:12")
    assert queue.chosen == 12
    reasons = queue.rows["reason"]
    assert any("region = west" in r and "age" in r for r in reasons), list(reasons)
    per_slice = reasons.value_counts()
    assert per_slice.max() - per_slice.min() <= 1
    from mlmon_core.slices import find_slices

    report = find_slices(view, EVERYTHING, (), top=labeling.SEGMENT_SLICES)
    for row_id, reason in zip(queue.rows["id"], reasons):
        found = next(s for s in report.slices if f"'{sql.describe_segment(s.conditions)}'" in reason)
        inside = view.count(EVERYTHING, found.conditions + (sql.Condition("id", "==", value=row_id),))
        assert inside == 1


def test_drift_picks_rows_unlike_the_reference(tmp_path):
    predictions, labels, _ = loan_log(rows=2000, seed=2, drift=True)
    path = write_store_project(tmp_path / "p", predictions, labels, REFERENCE_TOML)
    view = open_project(path)
    queue = labeling.label_queue(view, CURRENT, (), "drift:20")
    chosen = predictions.set_index("id").loc[queue.rows["id"]]
    assert (chosen["region"] == "north").mean() >= 0.9
    probabilities = [float(r.split(": ")[1].split(" ")[0]) for r in queue.rows["reason"]]
    assert probabilities == sorted(probabilities, reverse=True) and probabilities[0] > 0.8
    assert "ROC AUC" in queue.strategies[0].note


def test_diverse_takes_one_row_per_stratum_before_a_second(project):
    path, *_ = project
    view = open_project(path)
    queue = labeling.label_queue(view, EVERYTHING, (), "diverse:30")
    strata = queue.rows["reason"]
    assert strata.str.startswith("diverse: stratum ").all()
    first_round = strata.drop_duplicates()
    assert strata.iloc[:len(first_round)].is_unique
    assert " × " in strata.iloc[0]
    assert "η²" in queue.strategies[0].note


# ---------------------------------------------------------------- edge cases


def test_no_unlabeled_rows_is_a_reason_not_an_error(tmp_path):
    predictions, *_ = loan_log(rows=200)
    everything = pd.DataFrame({"id": predictions["id"], "target": 1})
    view = open_project(write_store_project(tmp_path / "p", predictions, everything))
    queue = labeling.label_queue(view, EVERYTHING, (), "uncertainty:5,random:5")
    assert queue.chosen == 0 and "already have labels" in queue.reason
    assert all(s.reason == queue.reason for s in queue.strategies)
    assert labeling.export_queue(view, queue, tmp_path / "empty.csv").out is None
    assert not (tmp_path / "empty.csv").exists()


def test_empty_window(project):
    path, *_ = project
    queue = labeling.label_queue(open_project(path), Window(datetime(2030, 1, 1), datetime(2030, 2, 1)),
                                 (), "random:5")
    assert queue.chosen == 0 and "has no rows" in queue.reason


def test_n_larger_than_the_pool(project):
    path, predictions, labels, truth = project
    view = open_project(path)
    segment = sql.parse_where("age = 30")
    pool = unlabeled(predictions, labels)
    available = int((pool["age"] == 30).sum())
    queue = labeling.label_queue(view, EVERYTHING, segment, "uncertainty:5,random:500")
    assert queue.chosen == available
    outcome = queue.strategies[1]
    assert outcome.chosen == available - 5 and "only" in outcome.reason


def test_uncertainty_not_available_for_multiclass_regression_or_no_score(make_log):
    rng = np.random.default_rng(0)
    n = 120
    base = pd.DataFrame({"id": np.arange(n), "timestamp": pd.date_range("2025-01-01", periods=n,
                                                                        freq="h"),
                         "x": rng.random(n)})
    multi = make_log(base.assign(prediction=rng.choice(["a", "b", "c"], n), score=rng.random(n)),
                     toml='[model]\ntask = "multiclass"\n')
    queue = labeling.label_queue(multi, EVERYTHING, (), "uncertainty:5,random:5")
    assert queue.strategies[0].chosen == 0 and "one score column per class" in queue.strategies[0].reason
    assert queue.strategies[1].chosen == 5
    regression = make_log(base.assign(prediction=rng.normal(size=n) * 100),
                          toml='[model]\ntask = "regression"\n')
    outcome = labeling.label_queue(regression, EVERYTHING, (), "uncertainty:5").strategies[0]
    assert outcome.chosen == 0 and "regression" in outcome.reason
    diverse = labeling.label_queue(regression, EVERYTHING, (), "diverse:5")
    assert diverse.chosen == 5
    unscored = make_log(base.assign(prediction=rng.integers(0, 2, n)))
    outcome = labeling.label_queue(unscored, EVERYTHING, (), "uncertainty:5").strategies[0]
    assert outcome.chosen == 0 and "no score column" in outcome.reason


def test_no_id_column(make_log):
    frame = pd.DataFrame({"timestamp": pd.date_range("2025-01-01", periods=50, freq="h"),
                          "x": np.arange(50.0), "prediction": 0, "score": 0.4})
    queue = labeling.label_queue(make_log(frame), EVERYTHING, (), "random:5")
    assert queue.chosen == 0 and "no id column" in queue.reason


def test_integer_ids_and_the_ledger(make_log, tmp_path):
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"id": np.arange(300) * 7, "timestamp": pd.date_range(
        "2025-01-01", periods=300, freq="h"), "x": rng.random(300),
        "prediction": rng.integers(0, 2, 300), "score": np.round(rng.random(300), 1)})
    view = make_log(frame)
    first = labeling.label_queue(view, EVERYTHING, (), "uncertainty:25")
    distance = np.abs(frame["score"] - 0.5).to_numpy()
    assert first.rows["id"].tolist() == list(frame["id"].to_numpy()[np.lexsort((frame["id"], distance))][:25])
    labeling.export_queue(view, first, tmp_path / "ints.parquet")
    second = labeling.label_queue(view, EVERYTHING, (), "uncertainty:25")
    assert not set(second.rows["id"]) & set(first.rows["id"])


def test_unwritable_or_bad_output_records_nothing(project, tmp_path):
    path, *_ = project
    view = open_project(path)
    queue = labeling.label_queue(view, EVERYTHING, (), "random:5")
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(MlmonError, match="cannot write"):
        labeling.export_queue(view, queue, blocker / "inside.csv")
    with pytest.raises(MlmonError, match=r"\.csv or \.parquet"):
        labeling.export_queue(view, queue, tmp_path / "queue.xlsx")
    with pytest.raises(MlmonError, match="directory"):
        labeling.export_queue(view, queue, tmp_path)
    assert labeling.exported_rows(view) == (0, 0)
    assert labeling.label_queue(view, EVERYTHING, (), "random:5").rows["id"].tolist() == \
        queue.rows["id"].tolist()


def test_a_log_column_named_reason_is_kept(make_log, tmp_path):
    frame = pd.DataFrame({"id": np.arange(40), "timestamp": pd.date_range("2025-01-01", periods=40,
                                                                          freq="h"),
                          "reason": ["a", "b"] * 20, "prediction": 0, "score": 0.3})
    view = make_log(frame)
    queue = labeling.label_queue(view, EVERYTHING, (), "random:4")
    assert queue.reason_column == "mlmon_reason" and "reason" in queue.rows
    out = labeling.export_queue(view, queue, tmp_path / "q.csv")
    assert {"reason", "mlmon_reason"} <= set(pd.read_csv(out.out))
    assert queue.to_json()["rows"][0]["reason"].startswith("random baseline")


# ---------------------------------------------------------------- CLI


def test_cli_writes_records_and_prints_json(project, tmp_path, capsys):
    path, *_ = project
    out = tmp_path / "cli.csv"
    code = cli.main(["label-queue", "--config", str(path), "--window", "2025-01-01..2025-03-01",
                     "--where", "region = 'east'", "--strategy", "uncertainty:6,random", "--n", "10",
                     "--out", str(out), "--json"])
    payload = json.loads(capsys.readouterr().out)
    assert code == 0
    assert payload["chosen"] == 10 and payload["recorded"] is True and payload["out"] == str(out)
    assert payload["strategies"]["random"] == {"requested": 4, "chosen": 4}
    assert payload["segment"] == [{"column": "region", "op": "==", "value": "east"}]
    assert len(pd.read_csv(out)) == 10
    code = cli.main(["label-queue", "--config", str(path), "--window", "2025-01-01..2025-03-01",
                     "--strategy", "random:3", "--out", str(tmp_path / "dry.csv"), "--dry-run"])
    text = capsys.readouterr().out
    assert code == 0 and "preview only" in text and not (tmp_path / "dry.csv").exists()


@pytest.mark.parametrize("argv, words", [
    (["--strategy", "bogus:5"], "unknown strategy 'bogus'"),
    (["--strategy", "random:5", "--out", "queue.txt"], ".csv or .parquet"),
    (["--strategy", "random:5", "--n", "7"], "add up to 5 but --n is 7"),
])
def test_cli_bad_input_exits_2(project, capsys, argv, words):
    path, *_ = project
    assert cli.main(["label-queue", "--config", str(path), *argv]) == 2
    assert words in capsys.readouterr().err


def test_cli_unknown_slice_mode_exits_2(project, capsys):
    path, *_ = project
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["label-queue", "--config", str(path), "--slices", "sideways"])
    assert exit_info.value.code == 2
