"""The segment explorer: segment vs rest vs overall, breakdowns by one and two features, the segment
over time and its rows, each number checked against pandas / scikit-learn / scipy on small data,
plus the bad-input cases that must explain themselves instead of raising."""

from __future__ import annotations

import json
from datetime import datetime

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import accuracy_score, roc_auc_score

from mlmon_core import segments, sql
from mlmon_core.cli import main
from mlmon_core.config import Window
from mlmon_core.errors import MlmonError
from mlmon_core.segments import _Moments, compare_to_rest

ALL = Window(datetime(2024, 1, 1), datetime(2024, 1, 11))
TOML = ('[model]\ntask = "binary"\npositive_label = 1\n'
        '[reference]\nstart = "2024-01-01"\nend = "2024-01-04"\n')
EPS = 1e-15


def loan_log(n: int = 900, seed: int = 0) -> pd.DataFrame:
    """A binary log over ten days: nullable integer age, categorical region with nulls, a boolean,
    a constant column, and scores that depend on age (so errors do too)."""
    rng = np.random.default_rng(seed)
    ts = pd.Timestamp("2024-01-01") + pd.to_timedelta(np.sort(rng.uniform(0, 10, n)), unit="D")
    age = pd.array(rng.integers(18, 90, n), dtype="Int64")
    age[rng.random(n) < 0.05] = pd.NA
    region = pd.Series(rng.choice(["north", "south", "east", "west"], n), dtype=object)
    region[rng.random(n) < 0.06] = None
    filled_age = age.to_numpy(dtype=float, na_value=50.0)
    score = 1 / (1 + np.exp(-(filled_age - 55) / 12 + rng.normal(0, 1, n)))
    return pd.DataFrame({
        "id": np.arange(n), "timestamp": ts, "age": age, "region": region,
        "income": rng.lognormal(10, 0.5, n), "flag": rng.random(n) < 0.4, "const": 5,
        "prediction": (score >= 0.5).astype(int), "score": score,
        "target": (rng.random(n) < np.where(region == "west", 0.5, score)).astype(int),
    })


def ids_of(view, conditions, window: Window = ALL) -> np.ndarray:
    """The ids the conditions select, through DuckDB (the segment filter path)."""
    query = sql.render("SELECT {id} FROM {log} WHERE {where}", id=sql.ident("id"),
                       log=view.relation, where=view.where(window, tuple(conditions)))
    return np.array(sorted(row[0] for row in view.fetchall(query)), dtype=np.int64)


def mask_of(view, frame: pd.DataFrame, conditions, window: Window = ALL) -> np.ndarray:
    mask = np.zeros(len(frame), dtype=bool)
    mask[ids_of(view, conditions, window)] = True
    return mask


def pandas_mask(frame: pd.DataFrame, conditions) -> np.ndarray:
    """An independent evaluation of conditions in pandas (SQL semantics: null fails a test)."""
    mask = np.ones(len(frame), dtype=bool)
    for c in conditions:
        column = frame[c.column]
        present = column.notna().to_numpy()
        values = column.to_numpy(dtype=object)
        if c.op == "is_null":
            part = ~present
        elif c.op == "not_null":
            part = present
        else:
            def test(v, c=c):
                if c.op == "==":
                    return v == c.value
                if c.op == "<":
                    return v < c.value
                if c.op == ">=":
                    return v >= c.value
                if c.op == "between":
                    return c.low <= v <= c.high
                if c.op == "in":
                    return v in c.values
                if c.op == "not_in":
                    return v not in c.values
                raise AssertionError(c.op)
            part = present & np.array([bool(test(v)) if p else False
                                       for v, p in zip(values, present)])
        mask &= part
    return mask


def wilson(k: int, n: int) -> tuple[float, float]:
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    return ci.low, ci.high


@pytest.fixture
def loans(make_log):
    frame = loan_log()
    return frame, make_log(frame, toml=TOML)


# ---------------------------------------------------------------- segment vs rest

def test_segment_rest_and_overall_equal_sklearn(loans):
    frame, view = loans
    segment = sql.parse_where("age >= 50")
    result = segments.segment_vs_rest(view, ALL, segment)
    inside = frame["age"].ge(50).fillna(False).to_numpy(dtype=bool)   # a null age is in the rest
    sides = {"segment": inside, "rest": ~inside, "overall": np.ones(len(frame), dtype=bool)}
    y, p, s = frame["target"].to_numpy(), frame["prediction"].to_numpy(), frame["score"].to_numpy()
    for name, mask in sides.items():
        side = result.sides[name]
        assert side.rows == mask.sum() and side.labeled_rows == mask.sum()
        assert side.metrics["accuracy"].value == pytest.approx(accuracy_score(y[mask], p[mask]))
        assert side.metrics["roc_auc"].value == pytest.approx(roc_auc_score(y[mask], s[mask]))
        assert side.share == pytest.approx(mask.mean())
    low, high = wilson(int(inside.sum()), len(frame))
    assert result.sides["segment"].share_ci == (pytest.approx(low), pytest.approx(high))
    accuracy = next(c for c in result.comparisons if c.name == "accuracy")
    p1, p2 = (p[inside] == y[inside]).mean(), (p[~inside] == y[~inside]).mean()
    n1, n2 = inside.sum(), (~inside).sum()
    z = (p1 - p2) / np.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    assert accuracy.difference == pytest.approx(p1 - p2)
    assert accuracy.p_value == pytest.approx(2 * stats.norm.sf(abs(z)))
    assert "in the segment vs" in accuracy.sentence and "elsewhere" in accuracy.sentence
    assert not any(c.estimated for c in result.comparisons)
    payload = json.loads(json.dumps(result.to_json()))
    assert payload["where"] == "age >= 50" and payload["sides"]["rest"]["rows"] == n2


def test_within_narrows_every_side_first(loans):
    frame, view = loans
    segment, within = sql.parse_where("region = 'west'"), sql.parse_where("flag = true")
    result = segments.segment_vs_rest(view, ALL, segment, within=within)
    flag = frame["flag"].to_numpy()
    west = (frame["region"] == "west").to_numpy()
    correct = (frame["prediction"] == frame["target"]).to_numpy()
    for name, mask in (("segment", flag & west), ("rest", flag & ~west), ("overall", flag)):
        assert result.sides[name].rows == mask.sum()
        assert result.sides[name].metrics["accuracy"].value == pytest.approx(correct[mask].mean())
    assert result.sides["segment"].share == pytest.approx((flag & west).sum() / flag.sum())
    trend = segments.segment_over_time(view, ALL, segment, metric="accuracy", within=within)
    table = trend.frame()
    assert table["rows"].sum() == flag.sum() and table["segment_rows"].sum() == (flag & west).sum()


def test_empty_segment_and_segment_of_every_row_explain_themselves(loans):
    frame, view = loans
    empty = segments.segment_vs_rest(view, ALL, sql.parse_where("age > 1000"))
    assert empty.sides["segment"].rows == 0 and empty.sides["segment"].share == 0
    assert empty.sides["rest"].rows == len(frame)
    assert all(c.segment.value is None and c.p_value is None for c in empty.comparisons)
    assert any("holds no rows" in note for note in empty.notes)
    everything = segments.segment_vs_rest(view, ALL, sql.parse_where("id >= 0"))
    assert everything.sides["rest"].rows == 0 and everything.sides["segment"].share == 1
    assert all(c.rest.value is None for c in everything.comparisons)
    assert any("every row" in note for note in everything.notes)
    nothing = segments.segment_vs_rest(view, ALL, ())
    assert nothing.sides["segment"].rows == len(frame)
    assert all(c.rest.value is None and "rest is empty" in c.rest.reason
               for c in nothing.comparisons)


def test_estimated_error_compared_when_labels_are_missing(make_log):
    frame = loan_log(600, seed=3).drop(columns=["target"])
    view = make_log(frame, toml=TOML)
    result = segments.segment_vs_rest(view, ALL, sql.parse_where("region = 'west'"))
    estimated = [c for c in result.comparisons if c.estimated]
    assert len(estimated) == 1 and "estimated" in estimated[0].sentence
    p = np.clip(frame["score"].to_numpy(), EPS, 1 - EPS)
    expected = np.where(frame["prediction"] == 1, 1 - p, p)
    inside = (frame["region"] == "west").to_numpy()
    assert estimated[0].segment.value == pytest.approx(expected[inside].mean(), rel=1e-6)
    assert estimated[0].rest.value == pytest.approx(expected[~inside].mean(), rel=1e-6)
    assert result.comparisons[0].segment.value is None          # accuracy needs labels


# ---------------------------------------------------------------- breakdowns

def test_categorical_breakdown_cells_equal_pandas_and_scipy(loans):
    frame, view = loans
    result = segments.breakdown(view, ALL, "region", "error_rate")
    errors = (frame["prediction"] != frame["target"]).to_numpy().astype(float)
    assert result.source == "labels" and result.metric_description == "error rate"
    assert result.overall.value == pytest.approx(errors.mean())
    groups = frame.assign(error=errors).groupby("region", dropna=False)["error"].agg(["size", "sum"])
    assert len(result.cells) == len(groups) == 5
    assert sum(c.rows for c in result.cells) == len(frame)
    for cell in result.cells:
        mask = mask_of(view, frame, cell.conditions)
        assert np.array_equal(mask, pandas_mask(frame, cell.conditions))
        key = cell.conditions[0].value if cell.conditions[0].op == "==" else np.nan
        size, wrong = groups.loc[key] if isinstance(key, str) else groups.loc[groups.index.isna()].iloc[0]
        assert cell.rows == mask.sum() == size and cell.metric.n == size
        assert cell.metric.value == pytest.approx(wrong / size)
        low, high = wilson(int(wrong), int(size))
        assert (cell.metric.ci_low, cell.metric.ci_high) == (pytest.approx(low), pytest.approx(high))
        table = [[wrong, size - wrong], [errors[~mask].sum(), (~mask).sum() - errors[~mask].sum()]]
        assert cell.p_value == pytest.approx(stats.chi2_contingency(table, correction=False)[1])
        assert cell.rest.value == pytest.approx(errors[~mask].mean())
        assert cell.difference == pytest.approx(wrong / size - errors.mean())
    missing = [c for c in result.cells if c.conditions[0].op == "is_null"]
    assert len(missing) == 1 and missing[0].label == "region is missing"
    assert missing[0].rows == frame["region"].isna().sum()
    west = next(c for c in result.cells if c.label == "region = west")
    assert result.cells[0] is west and west.p_value < 0.001      # the planted weak region leads
    distances = [c.distance for c in result.cells if c.distance is not None]
    assert distances == sorted(distances, reverse=True)


def test_numerical_breakdown_of_a_mean_metric_equals_scipy(loans):
    frame, view = loans
    result = segments.breakdown(view, ALL, "age", "log_loss", bins=4)
    y = frame["target"].to_numpy()
    p = np.clip(frame["score"].to_numpy(), EPS, 1 - EPS)
    loss = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    assert result.overall.value == pytest.approx(loss.mean())
    assert result.ci_method == "t interval" and "Welch" in result.test
    assert 1 <= len(result.bins["age"]["edges"]) <= 3
    covered = np.zeros(len(frame), dtype=int)
    for cell in result.cells:
        mask = mask_of(view, frame, cell.conditions)
        assert np.array_equal(mask, pandas_mask(frame, cell.conditions))
        covered += mask
        inside, outside = loss[mask], loss[~mask]
        assert cell.metric.value == pytest.approx(inside.mean())
        low, high = stats.t.interval(0.95, len(inside) - 1, loc=inside.mean(),
                                     scale=stats.sem(inside))
        assert (cell.metric.ci_low, cell.metric.ci_high) == (pytest.approx(low), pytest.approx(high))
        welch = stats.ttest_ind(inside, outside, equal_var=False)
        assert cell.statistic == pytest.approx(welch.statistic)
        assert cell.p_value == pytest.approx(welch.pvalue)
        assert cell.rest.ci_low is not None and cell.rest.value == pytest.approx(outside.mean())
    assert (covered == 1).all()                              # the cells partition the rows
    assert any(c.label == "age is missing" for c in result.cells)


def test_two_feature_cells_equal_pandas(loans):
    frame, view = loans
    result = segments.breakdown2(view, ALL, "region", "flag", "error_rate")
    errors = (frame["prediction"] != frame["target"]).astype(float)
    expected = frame.assign(error=errors).groupby(["region", "flag"], dropna=False)["error"].agg(
        ["size", "mean"])
    assert len(result.cells) == len(expected)
    assert sum(c.rows for c in result.cells) == len(frame)
    for cell in result.cells:
        mask = mask_of(view, frame, cell.conditions)
        assert np.array_equal(mask, pandas_mask(frame, cell.conditions))
        assert cell.rows == mask.sum()
        assert cell.metric.value == pytest.approx(errors[mask].mean())
        assert len(cell.values) == 2 and cell.label == " and ".join(cell.values)
    frame_view = result.frame()
    assert list(frame_view["label"]) == [c.label for c in result.cells]
    assert {"value_0", "value_1", "order_0", "order_1"} <= set(frame_view.columns)
    with pytest.raises(MlmonError, match="two different"):
        segments.breakdown2(view, ALL, "region", "region")


def test_breakdown_within_a_segment_keeps_the_segment_in_each_cell(loans):
    frame, view = loans
    segment = sql.parse_where("flag = true")
    result = segments.breakdown(view, ALL, "region", "accuracy", segment)
    inside = frame["flag"].to_numpy()
    correct = (frame["prediction"] == frame["target"]).to_numpy()
    assert result.rows == inside.sum()
    assert result.overall.value == pytest.approx(correct[inside].mean())
    for cell in result.cells:
        assert cell.conditions[:1] == segment
        mask = mask_of(view, frame, cell.conditions)
        assert cell.rows == mask.sum() and cell.share == pytest.approx(mask.sum() / inside.sum())
        assert cell.metric.value == pytest.approx(correct[mask].mean())
        assert cell.rest.value == pytest.approx(correct[inside & ~mask].mean())


def test_compare_to_rest_equals_scipy_on_random_aggregates():
    rng = np.random.default_rng(11)
    for _ in range(20):
        a = rng.normal(rng.uniform(-1, 1), rng.uniform(0.5, 3), rng.integers(3, 60))
        b = rng.normal(0, rng.uniform(0.5, 3), rng.integers(3, 60))
        cell = _Moments.of([len(a)], [a.sum()], [a.var(ddof=1)])
        rest = _Moments.of([len(b)], [b.sum()], [b.var(ddof=1)])
        statistic, p_value, distance = compare_to_rest(cell, rest, proportion=False)
        welch = stats.ttest_ind(a, b, equal_var=False)
        assert statistic[0] == pytest.approx(welch.statistic)
        assert p_value[0] == pytest.approx(welch.pvalue)
        low, high = welch.confidence_interval()
        near = 0.0 if low <= 0 <= high else min(abs(low), abs(high))
        assert distance[0] == pytest.approx(near, abs=1e-12)
        k1, k2 = rng.integers(0, 30), rng.integers(1, 30)
        n1, n2 = k1 + rng.integers(1, 40), k2 + rng.integers(1, 40)
        cell = _Moments.of([n1], [k1], [0]); rest = _Moments.of([n2], [k2], [0])
        _, p_value, _ = compare_to_rest(cell, rest, proportion=True)
        table = [[k1, n1 - k1], [k2, n2 - k2]]
        assert p_value[0] == pytest.approx(stats.chi2_contingency(table, correction=False)[1])
    # The whole minus a part: Chan's formula gives the rest's variance.
    whole = rng.normal(3, 2, 500)
    part = whole[:120]
    rest = _Moments.of([500], [whole.sum()], [whole.var(ddof=1)]).minus(
        _Moments.of([120], [part.sum()], [part.var(ddof=1)]))
    assert rest.variance[0] == pytest.approx(whole[120:].var(ddof=1))


# ---------------------------------------------------------------- over time, rows

def test_segment_over_time_equals_pandas(loans):
    frame, view = loans
    segment = sql.parse_where("region = 'west'")
    trend = segments.segment_over_time(view, ALL, segment, bucket="day", metric="error_rate")
    table = trend.frame()
    inside = (frame["region"] == "west").to_numpy()
    errors = (frame["prediction"] != frame["target"]).to_numpy().astype(float)
    day = frame["timestamp"].dt.floor("D")
    assert len(table) == day.nunique() == 10
    for row in table.itertuples():
        today = (day == row.start).to_numpy()
        assert row.rows == today.sum() and row.segment_rows == (today & inside).sum()
        assert row.share == pytest.approx((today & inside).mean() / today.mean())
        low, high = wilson(int((today & inside).sum()), int(today.sum()))
        assert row.share_ci_low == pytest.approx(low) and row.share_ci_high == pytest.approx(high)
        assert row.segment_value == pytest.approx(errors[today & inside].mean())
        assert row.rest_value == pytest.approx(errors[today & ~inside].mean())
    assert trend.reason is None
    with pytest.raises(MlmonError):
        segments.segment_over_time(view, ALL, segment, bucket="fortnight")


def test_segment_rows_are_bounded_ordered_and_filtered(loans):
    frame, view = loans
    rows = segments.segment_rows(view, ALL, sql.parse_where("region = 'east'"), limit=25)
    assert len(rows) == 25 and (rows["region"] == "east").all()
    assert rows["timestamp"].is_monotonic_increasing
    east = frame[frame["region"] == "east"].sort_values("timestamp")
    assert list(rows["id"]) == list(east["id"][:25])
    with pytest.raises(MlmonError):
        segments.segment_rows(view, ALL, (), limit=0)


# ---------------------------------------------------------------- bad input

def test_no_labels_and_no_score_gives_sizes_and_a_reason(make_log):
    frame = loan_log(400, seed=5).drop(columns=["target", "score"])
    view = make_log(frame, toml=TOML)
    result = segments.breakdown(view, ALL, "region", "error_rate")
    assert result.reason and "not computable" in result.reason
    assert sum(c.rows for c in result.cells) == len(frame)
    assert all(c.metric.value is None and c.p_value is None for c in result.cells)
    comparison = segments.segment_vs_rest(view, ALL, sql.parse_where("region = 'west'"))
    assert any("no row of the segment has a label" in note for note in comparison.notes)
    predicted = segments.breakdown(view, ALL, "region", "predicted_positive_rate")
    assert predicted.reason is None and predicted.overall.value == pytest.approx(
        frame["prediction"].mean())
    trend = segments.segment_over_time(view, ALL, sql.parse_where("region = 'west'"))
    assert trend.reason and "not computable" in trend.reason


def test_one_bin_no_errors_too_few_rows_and_empty_window(make_log):
    frame = loan_log(500, seed=6)
    frame["prediction"] = frame["target"]                     # a window without any error
    view = make_log(frame, toml=TOML)
    constant = segments.breakdown(view, ALL, "const", "error_rate")
    assert len(constant.cells) == 1 and constant.cells[0].rows == len(frame)
    assert any("falls in one cell" in note for note in constant.notes)
    perfect = segments.breakdown(view, ALL, "region", "error_rate")
    assert perfect.overall.value == 0
    assert any("same error rate" in note for note in perfect.notes)
    assert all(c.p_value in (None, 1.0) for c in perfect.cells)
    few = segments.breakdown(view, Window(datetime(2024, 1, 1), datetime(2024, 1, 1, 6)),
                             "region", "error_rate")
    assert 0 < few.rows < 40 and all(c.p_value is None for c in few.cells)
    assert any("minimum support" in note for note in few.notes)
    empty = segments.breakdown(view, Window(datetime(2030, 1, 1), datetime(2030, 2, 1)), "age")
    assert empty.rows == 0 and empty.cells == () and "holds no rows" in empty.reason
    over = segments.segment_over_time(view, Window(datetime(2030, 1, 1), datetime(2030, 2, 1)),
                                      sql.parse_where("age > 3"))
    assert over.buckets == [] and "no rows" in over.reason


def test_bad_arguments_are_mlmon_errors(loans):
    _, view = loans
    with pytest.raises(MlmonError, match="nosuch"):
        segments.breakdown(view, ALL, "nosuch")
    with pytest.raises(MlmonError, match="datetime"):
        segments.breakdown(view, ALL, "timestamp")
    with pytest.raises(MlmonError, match="abs_error"):
        segments.breakdown(view, ALL, "age", "abs_error")


def test_regression_breakdown_of_absolute_error(make_log):
    rng = np.random.default_rng(8)
    n = 500
    frame = pd.DataFrame({
        "id": np.arange(n),
        "timestamp": pd.Timestamp("2024-01-02") + pd.to_timedelta(rng.uniform(0, 5, n), unit="D"),
        "group": rng.choice(["a", "b", "c"], n), "target": rng.normal(10, 2, n)})
    frame["prediction"] = frame["target"] + rng.normal(0, np.where(frame["group"] == "c", 3, 1))
    view = make_log(frame, toml='[model]\ntask = "regression"\n')
    assert segments.row_metrics(view)[0] == "abs_error"
    result = segments.breakdown(view, ALL, "group")
    error = (frame["prediction"] - frame["target"]).abs()
    assert result.metric == "abs_error" and result.overall.value == pytest.approx(error.mean())
    for cell in result.cells:
        group = cell.conditions[0].value
        assert cell.metric.value == pytest.approx(error[frame["group"] == group].mean())
    assert result.cells[0].label == "group = c"
    bias = segments.breakdown(view, ALL, "group", "mean_error")
    assert bias.overall.value == pytest.approx((frame["prediction"] - frame["target"]).mean())


# ---------------------------------------------------------------- compute_metrics(exclude=...)

def test_compute_metrics_exclude_is_the_complement(loans):
    from mlmon_core.metrics import compute_metrics

    frame, view = loans
    rest = compute_metrics(view, ALL, (), exclude=sql.parse_where("region = 'west'"))
    kept = (frame["region"] != "west").to_numpy() | frame["region"].isna().to_numpy()
    assert rest.rows == kept.sum()
    assert rest.metrics["accuracy"].value == pytest.approx(
        accuracy_score(frame["target"][kept], frame["prediction"][kept]))


# ---------------------------------------------------------------- CLI

def test_cli_segment_json_text_and_bad_input(loans, capsys):
    frame, view = loans
    config = str(view.config.path)
    code = main(["segment", "--config", config, "--window", "2024-01-01..2024-01-11",
                 "--where", "age >= 50", "--by", "region", "--json"])
    payload = json.loads(capsys.readouterr().out)
    assert code == 0 and payload["sides"]["segment"]["rows"] == int(frame["age"].ge(50).sum())
    assert payload["breakdown"]["features"] == ["region"] and payload["breakdown"]["cells"]
    assert main(["segment", "--config", config, "--window", "2024-01-01..2024-01-11",
                 "--where", "age >= 50"]) == 0
    text = capsys.readouterr().out
    assert "of traffic" in text and "accuracy is" in text and "elsewhere" in text
    assert main(["segment", "--config", config, "--where", "age >= 50", "--by", "nosuch"]) == 2
    assert "nosuch" in capsys.readouterr().err
    assert main(["segment", "--config", config, "--metric", "log_loss"]) == 2
