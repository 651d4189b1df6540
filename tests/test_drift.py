"""Drift: every test against scipy/numpy on the same full columns, the default test choice,
overrides, the dataset verdict and the edge cases that must not raise."""

from __future__ import annotations

import math
from datetime import datetime

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.spatial import distance

from mlmon_core import drift
from mlmon_core.config import Window
from mlmon_core.errors import ConfigError

REF = Window(datetime(2024, 1, 1), datetime(2024, 1, 11))
CUR = Window(datetime(2024, 1, 11), datetime(2024, 1, 21))
RTOL = 1e-9


def frame(reference: dict, current: dict) -> pd.DataFrame:
    """A log whose first rows fall in REF and the rest in CUR."""
    ref, cur = pd.DataFrame(reference), pd.DataFrame(current)
    ref["timestamp"] = pd.date_range("2024-01-01", "2024-01-10 23:00", periods=len(ref)) \
        if len(ref) > 1 else [pd.Timestamp("2024-01-05")] * len(ref)
    cur["timestamp"] = pd.date_range("2024-01-11", "2024-01-20 23:00", periods=len(cur)) \
        if len(cur) > 1 else [pd.Timestamp("2024-01-15")] * len(cur)
    out = pd.concat([ref, cur], ignore_index=True)
    out.insert(0, "id", np.arange(len(out)))
    return out


def run(make_log, reference: dict, current: dict, toml: str = "", **kwargs):
    view = make_log(frame(reference, current), toml=toml)
    return drift.compute_drift(view, CUR, REF, **kwargs)


def clean(values) -> np.ndarray:
    series = pd.Series(values).replace([np.inf, -np.inf], np.nan).dropna()
    return series.to_numpy()


# ---------------------------------------------------------------- independent oracles

def oracle_ks(ref, cur):
    result = stats.ks_2samp(clean(ref), clean(cur))
    return result.statistic, result.pvalue


def oracle_wasserstein(ref, cur):
    ref, cur = clean(ref), clean(cur)
    return stats.wasserstein_distance(ref, cur) / max(np.std(ref), 0.001)


def _shares(ref, cur, binned: bool):
    ref, cur = clean(ref), clean(cur)
    if binned:
        edges = np.histogram_bin_edges(np.concatenate([ref, cur]), bins="sturges")
        return np.histogram(ref, edges)[0] / len(ref), np.histogram(cur, edges)[0] / len(cur)
    keys = sorted(set(ref) | set(cur))
    ref_counts, cur_counts = pd.Series(ref).value_counts(), pd.Series(cur).value_counts()
    return (np.array([ref_counts.get(k, 0) for k in keys]) / len(ref),
            np.array([cur_counts.get(k, 0) for k in keys]) / len(cur))


def oracle_chisquare(ref, cur):
    ref, cur = clean(ref), clean(cur)
    keys = sorted(set(ref) | set(cur))
    ref_counts, cur_counts = pd.Series(ref).value_counts(), pd.Series(cur).value_counts()
    expected = [ref_counts.get(k, 0) * len(cur) / len(ref) for k in keys]
    observed = [cur_counts.get(k, 0) for k in keys]
    with np.errstate(divide="ignore"):
        result = stats.chisquare(observed, expected)
    return result.statistic, result.pvalue


def oracle_z(ref, cur):
    """Pooled two-proportion z-test written out with math.erfc."""
    ref, cur = list(clean(ref)), list(clean(cur))
    first = min(set(ref) | set(cur))
    p1 = sum(v != first for v in ref) / len(ref)
    p2 = sum(v != first for v in cur) / len(cur)
    pooled = (sum(v != first for v in ref) + sum(v != first for v in cur)) / (len(ref) + len(cur))
    z = (p1 - p2) / math.sqrt(pooled * (1 - pooled) * (1 / len(ref) + 1 / len(cur)))
    return z, math.erfc(abs(z) / math.sqrt(2))


def oracle_js(ref, cur, binned=False):
    reference, current = _shares(ref, cur, binned)
    return distance.jensenshannon(reference, current, 2)


def oracle_psi(ref, cur, binned=False):
    reference, current = _shares(ref, cur, binned)

    def fill(shares):
        shares = shares.copy()
        smallest = shares[shares > 0].min()
        shares[shares == 0] = smallest / 1e6 if smallest <= 1e-4 else 1e-4
        return shares

    reference, current = fill(reference), fill(current)
    return float(np.sum((reference - current) * np.log(reference / current)))


def close(actual, expected):
    assert actual == pytest.approx(expected, rel=RTOL, abs=1e-300), (actual, expected)


# ---------------------------------------------------------------- statistics vs oracles

def random_columns(seed: int, n_ref: int, n_cur: int):
    rng = np.random.default_rng(seed)
    ref = {"cont": rng.normal(size=n_ref), "ties": rng.normal(size=n_ref).round(1),
           "skew": rng.lognormal(size=n_ref), "few": rng.integers(0, 4, n_ref).astype(float),
           "cat": rng.choice(list("abcde"), n_ref), "two": rng.choice(["x", "y"], n_ref)}
    cur = {"cont": rng.normal(0.2, 1.1, size=n_cur), "ties": rng.normal(0.1, size=n_cur).round(1),
           "skew": rng.lognormal(0.1, size=n_cur), "few": rng.integers(0, 5, n_cur).astype(float),
           "cat": rng.choice(list("abcdf"), n_cur, p=[0.3, 0.2, 0.2, 0.2, 0.1]),
           "two": rng.choice(["x", "y"], n_cur, p=[0.6, 0.4])}
    return ref, cur


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_small_reference_tests_match_scipy(make_log, seed):
    ref, cur = random_columns(seed, 400, 300)
    result = run(make_log, ref, cur)
    tests = {c.column: c.test for c in result.columns}
    assert tests == {"cont": "ks", "ties": "ks", "skew": "ks", "few": "chisquare",
                     "cat": "chisquare", "two": "z"}
    for name in ("cont", "ties", "skew"):
        column = result.column(name)
        statistic, p_value = oracle_ks(ref[name], cur[name])
        close(column.statistic, statistic)
        close(column.p_value, p_value)
        assert column.drifted == (p_value <= 0.05)
    for name in ("few", "cat"):
        statistic, p_value = oracle_chisquare(ref[name], cur[name])
        column = result.column(name)
        if math.isinf(statistic):
            assert column.statistic == math.inf and column.p_value == 0.0
        else:
            close(column.statistic, statistic)
            close(column.p_value, p_value)
    z, p_value = oracle_z(ref["two"], cur["two"])
    close(result.column("two").statistic, z)
    close(result.column("two").p_value, p_value)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_large_reference_tests_match_scipy(make_log, seed):
    ref, cur = random_columns(seed, 1500, 1200)
    result = run(make_log, ref, cur)
    for name in ("cont", "ties", "skew"):
        assert result.column(name).test == "wasserstein"
        close(result.column(name).statistic, oracle_wasserstein(ref[name], cur[name]))
    for name in ("few", "cat", "two"):
        assert result.column(name).test == "jensenshannon"
        close(result.column(name).statistic, oracle_js(ref[name], cur[name]))
        assert result.column(name).p_value is None


def test_frequency_pass_in_chunks_and_with_missing_values(make_log, monkeypatch):
    """Few-valued columns are counted by grouping sets, several queries of a few columns each:
    counts, missing and non-finite rows and every statistic as if computed one by one."""
    monkeypatch.setattr(drift, "FREQUENCY_SETS_PER_QUERY", 2)
    rng = np.random.default_rng(11)
    ref, cur = random_columns(11, 1500, 1200)
    ref["gaps"] = np.where(rng.random(1500) < 0.1, np.nan, rng.integers(0, 30, 1500))
    cur["gaps"] = np.where(rng.random(1200) < 0.3, np.nan, rng.integers(0, 30, 1200))
    cur["gaps"][:3] = np.inf
    ref["flag"] = rng.random(1500) < 0.3
    cur["flag"] = rng.random(1200) < 0.4
    ref["words"] = pd.Series(rng.choice(["x", "y", "z"], 1500)).where(rng.random(1500) > 0.05)
    cur["words"] = pd.Series(rng.choice(["x", "y", "w"], 1200)).where(rng.random(1200) > 0.2)
    result = run(make_log, ref, cur)
    assert (result.reference_rows, result.current_rows) == (1500, 1200)
    gaps = result.column("gaps")
    assert gaps.reference_values == int(np.isfinite(ref["gaps"]).sum())
    assert gaps.current_values == int(np.isfinite(cur["gaps"]).sum())
    assert "3 current infinite" in gaps.note
    close(gaps.statistic, oracle_wasserstein(ref["gaps"], cur["gaps"]))
    for name in ("few", "cat", "two", "flag", "words"):
        close(result.column(name).statistic, oracle_js(ref[name], cur[name]))
    for name in ("cont", "ties", "skew"):
        close(result.column(name).statistic, oracle_wasserstein(ref[name], cur[name]))
    words = result.column("words")
    assert words.reference_values == int(ref["words"].notna().sum())
    assert words.distinct_values == 4


def test_frequency_chunks_bound_columns_and_values(monkeypatch):
    monkeypatch.setattr(drift, "FREQUENCY_SETS_PER_QUERY", 3)
    monkeypatch.setattr(drift, "FREQUENCY_VALUES_PER_QUERY", 100)
    approx = {"a": 10, "b": 10, "c": 10, "d": 10, "e": 90, "f": 500, "g": 5}
    assert drift.frequency_chunks(list(approx), approx) == [
        ["a", "b", "c"], ["d", "e"], ["f"], ["g"]]
    assert drift.frequency_chunks([], {}) == []
    assert drift.frequency_chunks(["t"], {}) == [["t"]]


def test_overlapping_windows_count_shared_rows_on_both_sides(make_log):
    """A reference that contains the current window: rows of both count in both."""
    ref, cur = random_columns(12, 1500, 1200)
    view = make_log(frame(ref, cur))
    whole = Window(REF.start, CUR.end)
    result = drift.compute_drift(view, CUR, whole)
    assert (result.reference_rows, result.current_rows) == (2700, 1200)
    for name in ("cont", "ties"):
        both = np.r_[ref[name], cur[name]]
        close(result.column(name).statistic, oracle_wasserstein(both, cur[name]))
    for name in ("few", "cat"):
        close(result.column(name).statistic, oracle_js(np.r_[ref[name], cur[name]], cur[name]))


@pytest.mark.parametrize("seed", [3, 4])
def test_bucketed_ecdf_path_is_exact(make_log, monkeypatch, seed):
    """Force the bucketed path on small data (tiny cardinality limit, few buckets): many buckets
    are mixed, many closed-form; the result must still equal scipy on the raw columns."""
    monkeypatch.setattr(drift, "LOW_CARDINALITY", 10)
    monkeypatch.setattr(drift, "BUCKETS", 32)
    rng = np.random.default_rng(seed)
    ref = {"a": rng.normal(size=3000), "b": rng.exponential(size=3000).round(2),
           "c": rng.normal(size=3000)}
    cur = {"a": rng.normal(0.05, size=2500), "b": rng.exponential(1.3, size=2500).round(2),
           "c": rng.normal(size=2500) * 1e6 + 5e9}
    toml = "[drift.columns.b]\ntest = \"ks\"\n"
    result = run(make_log, ref, cur, toml)
    close(result.column("a").statistic, oracle_wasserstein(ref["a"], cur["a"]))
    close(result.column("c").statistic, oracle_wasserstein(ref["c"], cur["c"]))
    statistic, p_value = oracle_ks(ref["b"], cur["b"])
    close(result.column("b").statistic, statistic)
    close(result.column("b").p_value, p_value)


@pytest.mark.parametrize("seed", [6, 7])
def test_merged_exact_ranges_stay_exact(make_log, monkeypatch, seed):
    """Many buckets, few exact ranges: the merged ranges also cover settled buckets, which must
    then be counted once (exactly), not twice."""
    monkeypatch.setattr(drift, "LOW_CARDINALITY", 10)
    monkeypatch.setattr(drift, "BUCKETS", 512)
    monkeypatch.setattr(drift, "EXACT_RANGES", 2)
    rng = np.random.default_rng(seed)
    ref = {"a": rng.normal(size=4000), "b": rng.normal(size=4000).round(3)}
    cur = {"a": rng.normal(0.02, size=3500), "b": rng.normal(size=3500).round(3)}
    result = run(make_log, ref, cur, "[drift.columns.b]\ntest = \"ks\"\n")
    close(result.column("a").statistic, oracle_wasserstein(ref["a"], cur["a"]))
    statistic, p_value = oracle_ks(ref["b"], cur["b"])
    close(result.column("b").statistic, statistic)
    close(result.column("b").p_value, p_value)


def test_exact_ranges_cover_every_needed_bucket():
    needed = np.array([0, 1, 1, 0, 0, 1, 0, 1, 1, 1, 0, 0, 0, 1], dtype=bool)
    sizes = np.array([5, 1, 1, 9, 9, 1, 2, 1, 1, 1, 30, 30, 30, 1])
    assert drift.exact_ranges(needed, sizes, limit=4) == [(1, 2), (5, 5), (7, 9), (13, 13)]
    # three runs allowed: the cheapest gap (2 rows between 5 and 7) is merged
    assert drift.exact_ranges(needed, sizes, limit=3) == [(1, 2), (5, 9), (13, 13)]
    assert drift.exact_ranges(needed, sizes, limit=1) == [(1, 13)]
    assert drift.exact_ranges(np.zeros(5, dtype=bool), np.ones(5), limit=3) == []


@pytest.mark.parametrize("seed", [0, 5])
def test_overridden_tests_match_independent_implementations(make_log, seed):
    ref, cur = random_columns(seed, 1500, 900)
    toml = "\n".join([
        "[drift.columns.cont]", 'test = "psi"', "threshold = 0.2",
        "[drift.columns.skew]", 'test = "jensenshannon"',
        "[drift.columns.cat]", 'test = "psi"',
        "[drift.columns.few]", 'test = "ks"',
        "[drift.columns.ties]", 'test = "chisquare"', "threshold = 0.01",
        "[drift.columns.two]", 'test = "z"', ""])
    result = run(make_log, ref, cur, toml)
    close(result.column("cont").statistic, oracle_psi(ref["cont"], cur["cont"], binned=True))
    assert result.column("cont").threshold == 0.2
    close(result.column("skew").statistic, oracle_js(ref["skew"], cur["skew"], binned=True))
    close(result.column("cat").statistic, oracle_psi(ref["cat"], cur["cat"]))
    statistic, p_value = oracle_ks(ref["few"], cur["few"])
    close(result.column("few").statistic, statistic)
    close(result.column("few").p_value, p_value)
    statistic, p_value = oracle_chisquare(ref["ties"], cur["ties"])
    if math.isinf(statistic):
        assert result.column("ties").p_value == 0.0
    else:
        close(result.column("ties").p_value, p_value)
    assert result.column("ties").drifted == (p_value < 0.01)
    close(result.column("two").p_value, oracle_z(ref["two"], cur["two"])[1])


def test_large_samples_use_the_asymptotic_ks_path(make_log):
    rng = np.random.default_rng(9)
    ref, cur = {"v": rng.normal(size=12_000)}, {"v": rng.normal(0.02, size=11_000)}
    result = run(make_log, ref, cur, '[drift.columns.v]\ntest = "ks"\n')
    statistic, p_value = oracle_ks(ref["v"], cur["v"])
    close(result.column("v").statistic, statistic)
    close(result.column("v").p_value, p_value)


def test_sturges_edges_match_numpy():
    rng = np.random.default_rng(1)
    for values in (rng.normal(size=777), rng.integers(0, 40, 5000), np.array([3.0, 3.0, 3.0])):
        expected = np.histogram_bin_edges(values, bins="sturges")
        actual = drift.sturges_edges(len(values), values.min(), values.max(),
                                     np.issubdtype(values.dtype, np.integer))
        np.testing.assert_array_equal(actual, expected)


# ---------------------------------------------------------------- choice of test and verdicts

def test_default_test_rules():
    assert drift.default_test(True, 1000, 6) == "ks"
    assert drift.default_test(True, 1000, 5) == "chisquare"
    assert drift.default_test(True, 1000, 2) == "z"
    assert drift.default_test(False, 1000, 50) == "chisquare"
    assert drift.default_test(False, 10, 2) == "z"
    assert drift.default_test(True, 1001, 6) == "wasserstein"
    assert drift.default_test(True, 1001, 5) == "jensenshannon"
    assert drift.default_test(False, 5000, 2) == "jensenshannon"


def test_threshold_comparisons_follow_evidently():
    assert drift.is_drifted("ks", 0.05, 0.05)
    assert not drift.is_drifted("chisquare", 0.05, 0.05)
    assert drift.is_drifted("wasserstein", 0.1, 0.1)
    assert not drift.is_drifted("psi", 0.099, 0.1)


def test_dataset_drift_share_and_roles(make_log):
    rng = np.random.default_rng(2)
    ref = {"a": rng.normal(size=200), "b": rng.normal(size=200), "c": rng.normal(size=200),
           "prediction": rng.integers(0, 2, 200), "score": rng.random(200)}
    cur = {"a": rng.normal(3, size=200), "b": rng.normal(3, size=200), "c": rng.normal(size=200),
           "prediction": rng.integers(0, 2, 200), "score": rng.random(200)}
    result = run(make_log, ref, cur, "[drift]\ndataset_share = 0.4\n")
    assert [c.column for c in result.columns] == ["a", "b", "c", "prediction", "score"]
    assert result.column("prediction").role == "prediction"
    assert result.column("prediction").kind == "categorical"
    assert result.drifted_columns[:2] == ["a", "b"]
    drifted = sum(c.drifted for c in result.columns)
    assert result.drift_share == drifted / 5
    assert result.dataset_drift == (drifted / 5 >= 0.4)
    payload = result.to_json()
    assert payload["reference"]["rows"] == 200 and payload["current"]["rows"] == 200
    assert {"column", "role", "kind", "test", "statistic", "p_value", "threshold",
            "drifted"} <= set(payload["columns"][0])


def test_segment_restricts_both_windows(make_log):
    rng = np.random.default_rng(4)
    ref = {"v": rng.normal(size=600), "g": np.repeat(["p", "q"], 300)}
    cur = {"v": rng.normal(size=600), "g": np.repeat(["p", "q"], 300)}
    from mlmon_core.sql import Condition
    result = run(make_log, ref, cur, segment=(Condition("g", "==", value="p"),),
                 columns=["v"])
    assert result.reference_rows == 300
    statistic, p_value = oracle_ks(ref["v"][:300], cur["v"][:300])
    close(result.column("v").p_value, p_value)


def test_bad_overrides_raise_config_errors(make_log):
    ref, cur = {"cat": ["a", "b"] * 5}, {"cat": ["a", "b"] * 5}
    with pytest.raises(ConfigError, match="cat"):
        run(make_log, ref, cur, '[drift.columns.cat]\ntest = "ks"\n')
    with pytest.raises(ConfigError, match="nope"):
        run(make_log, ref, cur, '[drift.columns.nope]\ntest = "psi"\n')


# ---------------------------------------------------------------- edge cases

def test_empty_current_window(make_log):
    view = make_log(frame({"v": np.arange(50.0), "c": ["a"] * 50}, {"v": [1.0], "c": ["a"]}))
    result = drift.compute_drift(view, Window(datetime(2025, 1, 1), datetime(2025, 2, 1)), REF)
    assert result.drift_share is None and result.dataset_drift is None
    assert "current window" in result.reason
    for column in result.columns:
        assert column.statistic is None and column.drifted is None
        assert column.reason.startswith("not computable because")


def test_all_null_constant_single_row_and_infinities(make_log):
    rng = np.random.default_rng(5)
    ref = {"nulls": [np.nan] * 30, "const": [7.0] * 30, "inf": np.r_[rng.normal(size=28),
                                                                    [np.inf, -np.inf]],
           "label": ["x"] * 30}
    cur = {"nulls": [np.nan] * 20, "const": [7.0] * 20, "inf": np.r_[rng.normal(size=19), [np.inf]],
           "label": ["x"] * 20}
    result = run(make_log, ref, cur)
    nulls = result.column("nulls")
    assert nulls.statistic is None and "missing" in nulls.reason
    const = result.column("const")
    assert const.test == "z" and const.p_value == 1.0 and const.drifted is False
    assert "constant" in const.note
    inf = result.column("inf")
    assert "infinite" in inf.note and inf.reference_values == 28 and inf.current_values == 19
    statistic, p_value = oracle_ks(ref["inf"], cur["inf"])
    close(inf.p_value, p_value)
    single = run(make_log, {"v": [1.0]}, {"v": [2.0]})
    assert single.column("v").test == "z" and single.column("v").p_value is not None
    chi = run(make_log, {"v": [1.0] * 5}, {"v": [1.0] * 4}, '[drift.columns.v]\ntest = "chisquare"\n')
    assert chi.column("v").statistic is None and "single value" in chi.column("v").reason
    flat = run(make_log, {"v": [1.0] * 1200}, {"v": np.linspace(0, 2, 900)},
               '[drift.columns.v]\ntest = "wasserstein"\n')
    assert flat.column("v").drifted is True and "below" in flat.column("v").note


def test_target_without_labels_in_current_window(make_log):
    rng = np.random.default_rng(6)
    ref = {"f": rng.normal(size=100), "target": rng.integers(0, 2, 100).astype(float)}
    cur = {"f": rng.normal(size=100), "target": [np.nan] * 100}
    result = run(make_log, ref, cur)
    target = result.column("target")
    assert target.statistic is None and "no labels" in target.reason
    assert result.column("f").drifted is not None


def test_target_from_a_labels_file_and_a_segment_on_the_target(make_log):
    """The target comes through the label join (late labels, some rows unlabeled); the other
    columns are read without it, unless the segment reads the target."""
    rng = np.random.default_rng(9)
    ref = {"f": rng.normal(size=1500), "prediction": rng.integers(0, 2, 1500)}
    cur = {"f": rng.normal(0.3, size=1200), "prediction": rng.integers(0, 2, 1200)}
    predictions = frame(ref, cur)
    labeled = predictions.sample(frac=0.8, random_state=1)
    target = (rng.random(len(labeled)) < np.where(labeled["timestamp"] < CUR.start, 0.2, 0.35))
    labels = pd.DataFrame({"id": labeled["id"], "target": target.astype(int)})
    view = make_log(predictions, labels, toml='[columns]\ntarget = "target"\n')
    result = drift.compute_drift(view, CUR, REF)
    joined = predictions.merge(labels, on="id", how="left")
    in_ref = joined["timestamp"] < CUR.start
    close(result.column("target").statistic,
          oracle_js(joined.loc[in_ref, "target"].dropna(), joined.loc[~in_ref, "target"].dropna()))
    labeled_in_ref = int(joined.loc[in_ref, "target"].notna().sum())
    assert result.column("target").reference_values == labeled_in_ref
    close(result.column("f").statistic, oracle_wasserstein(ref["f"], cur["f"]))
    from mlmon_core.sql import Condition
    positives = drift.compute_drift(view, CUR, REF, segment=(Condition("target", "==", value=1),))
    chosen = joined["target"] == 1
    assert positives.reference_rows == int((chosen & in_ref).sum()) < 1000   # KS, then
    statistic, p_value = oracle_ks(joined.loc[chosen & in_ref, "f"],
                                   joined.loc[chosen & ~in_ref, "f"])
    close(positives.column("f").statistic, statistic)
    close(positives.column("f").p_value, p_value)


@pytest.mark.parametrize("low_cardinality", [10, drift.LOW_CARDINALITY])
def test_regression_target_from_a_labels_file(make_log, monkeypatch, low_cardinality):
    """A regression target read through the label join: sketched, then bucketed (or counted)."""
    monkeypatch.setattr(drift, "LOW_CARDINALITY", low_cardinality)
    rng = np.random.default_rng(13)
    ref = {"f": rng.integers(0, 9, 1500), "prediction": rng.normal(size=1500)}
    cur = {"f": rng.integers(0, 9, 1200), "prediction": rng.normal(size=1200)}
    predictions = frame(ref, cur)
    labeled = predictions.sample(frac=0.9, random_state=2)
    labels = pd.DataFrame({"id": labeled["id"], "y": rng.lognormal(size=len(labeled))
                           * np.where(labeled["timestamp"] < CUR.start, 1.0, 1.2)})
    view = make_log(predictions, labels,
                    toml='[columns]\ntarget = "y"\n[model]\ntask = "regression"\n')
    result = drift.compute_drift(view, CUR, REF)
    joined = predictions.merge(labels, on="id", how="left")
    in_ref = joined["timestamp"] < CUR.start
    close(result.column("y").statistic,
          oracle_wasserstein(joined.loc[in_ref, "y"].dropna(), joined.loc[~in_ref, "y"].dropna()))
    assert result.column("y").reference_values == int(joined.loc[in_ref, "y"].notna().sum())
    close(result.column("f").statistic, oracle_wasserstein(ref["f"], cur["f"]))


def test_new_category_gives_infinite_chisquare(make_log):
    result = run(make_log, {"c": ["a", "b", "c"] * 20}, {"c": ["a", "b", "d"] * 20})
    column = result.column("c")
    assert column.test == "chisquare" and column.p_value == 0.0 and column.drifted
    assert column.to_json()["statistic"] is None and "never had" in column.note


def test_distribution_frames(make_log):
    rng = np.random.default_rng(8)
    ref = {"v": rng.normal(size=500), "c": rng.choice(list("abcdefghijklmn"), 500)}
    cur = {"v": rng.normal(1, size=400), "c": rng.choice(list("abcdefghijklmn"), 400)}
    view = make_log(frame(ref, cur))
    numeric = drift.distribution(view, "v", REF, CUR, bins=20)
    assert len(numeric) == 20
    assert numeric["reference_count"].sum() == 500 and numeric["current_count"].sum() == 400
    assert numeric["reference_share"].sum() == pytest.approx(1.0)
    edges = np.linspace(min(ref["v"].min(), cur["v"].min()), max(ref["v"].max(), cur["v"].max()), 21)
    np.testing.assert_allclose(numeric["left"], edges[:-1])
    categorical = drift.distribution(view, "c", REF, CUR, top=5)
    assert list(categorical["value"])[-1] == "other" and len(categorical) == 6
    assert categorical["current_count"].sum() == 400


def test_cli_drift_json(tmp_path, capsys):
    import json

    from conftest import write_project
    from mlmon_core.cli import main

    rng = np.random.default_rng(11)
    data = frame({"v": rng.normal(size=300)}, {"v": rng.normal(2, size=300)})
    config = write_project(tmp_path / "p", data)
    code = main(["drift", "--config", str(config), "--current", "2024-01-11..2024-01-21",
                 "--reference", "2024-01-01..2024-01-11", "--json"])
    payload = json.loads(capsys.readouterr().out)
    assert code == 0 and payload["reference"]["rows"] == 300 and payload["dataset_drift"] is True
    column = payload["columns"][0]
    assert column["column"] == "v" and column["test"] == "ks" and column["drifted"] is True
    assert main(["drift", "--config", str(config), "--where", "nope == 1"]) == 2


def test_reference_segment_compares_two_model_versions(make_log):
    """Two versions over one window: the reference side filters by its own segment."""
    import numpy as np
    import pandas as pd
    from scipy import stats

    from mlmon_core.config import Window
    from mlmon_core.drift import compute_drift, distribution
    from mlmon_core.sql import Condition

    rng = np.random.default_rng(3)
    n = 3000
    model = np.where(np.arange(n) % 2 == 0, "a", "b")
    x = np.where(model == "a", rng.normal(0, 1, n), rng.normal(0.5, 1, n))
    frame = pd.DataFrame({"id": np.arange(n), "timestamp": pd.Timestamp("2025-01-01")
                          + pd.to_timedelta(np.arange(n) % 10, unit="D"), "x": x, "model": model,
                          "prediction": 0})
    view = make_log(frame, toml='[columns]\nmodel = "model"\n')
    window = Window(pd.Timestamp("2025-01-01").to_pydatetime(), pd.Timestamp("2025-01-11").to_pydatetime())
    result = compute_drift(view, window, window, (Condition("model", "==", value="b"),),
                           columns=["x"], reference_segment=(Condition("model", "==", value="a"),))
    column = result.column("x")
    expected = stats.wasserstein_distance(x[model == "b"], x[model == "a"]) / np.std(x[model == "a"])
    assert result.reference_rows == result.current_rows == n // 2
    assert column.statistic == pytest.approx(expected, rel=1e-9)
    shares = distribution(view, "x", window, window, (Condition("model", "==", value="b"),),
                          reference_segment=(Condition("model", "==", value="a"),))
    assert shares["reference_count"].sum() == shares["current_count"].sum() == n // 2
