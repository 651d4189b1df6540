"""Slice finding: planted weak and degraded segments are found, null data yields nothing, and every
count, sum, p-value and q-value agrees with an independent oracle (pandas, scipy)."""

from __future__ import annotations

import itertools
import json
from datetime import datetime

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mlmon_core import slices
from mlmon_core.cli import main
from mlmon_core.config import Window
from mlmon_core.errors import MlmonError
from mlmon_core.slices import CodedRows, SearchSettings

ALL = Window(datetime(2024, 1, 1), datetime(2024, 2, 1))
LATE = Window(datetime(2024, 1, 22), datetime(2024, 2, 1))
EARLY = Window(datetime(2024, 1, 1), datetime(2024, 1, 22))
REFERENCE_TOML = '[reference]\nstart = "2024-01-01"\nend = "2024-01-08"\n'


def loan_frame(n: int, seed: int) -> pd.DataFrame:
    """Eleven features (numerical, integer, nullable, categorical with rare levels, boolean)."""
    rng = np.random.default_rng(seed)
    ts = pd.Timestamp("2024-01-01") + pd.to_timedelta(np.sort(rng.uniform(0, 31, n)), unit="D")
    frame = pd.DataFrame({"id": np.arange(n), "timestamp": ts})
    for i in range(4):
        frame[f"x{i}"] = rng.normal(size=n)
    frame["age"] = rng.integers(18, 90, n)
    frame["income"] = np.where(rng.random(n) < 0.05, np.nan, rng.lognormal(10, 0.5, n))
    frame["term"] = rng.choice([36, 60], n, p=[0.7, 0.3])
    frame["color"] = rng.choice(["red", "green", "blue", "rare1", "rare2"], n,
                                p=[0.4, 0.3, 0.28, 0.01, 0.01])
    frame["region"] = rng.choice(list("ABCDEF"), n)
    frame["channel"] = np.where(rng.random(n) < 0.03, None, rng.choice(["web", "app"], n))
    frame["flag"] = rng.random(n) < 0.3
    return frame


def with_predictions(frame: pd.DataFrame, seed: int, errors: np.ndarray) -> pd.DataFrame:
    """Labels and predictions that are wrong exactly where ``errors`` is true."""
    rng = np.random.default_rng(seed + 1000)
    y = (rng.random(len(frame)) < 0.3).astype(int)
    prediction = np.where(errors, 1 - y, y)
    out = frame.copy()
    out["prediction"] = prediction
    out["score"] = np.where(prediction == 1, 0.5 + 0.5 * rng.random(len(frame)),
                            0.5 * rng.random(len(frame)))
    out["target"] = y
    return out


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def rows_of(view, frame: pd.DataFrame, conditions) -> np.ndarray:
    """The ids a slice's conditions select, through DuckDB (the segment filter path)."""
    from mlmon_core import sql

    query = sql.render("SELECT {id} FROM {log} WHERE {where}", id=sql.ident("id"),
                       log=view.relation, where=view.where(ALL, tuple(conditions)))
    ids = np.array([row[0] for row in view.fetchall(query)], dtype=np.int64)
    mask = np.zeros(len(frame), dtype=bool)
    mask[ids] = True
    return mask


# ---------------------------------------------------------------- planted segments

def _open(tmp_path, frame: pd.DataFrame, toml: str = REFERENCE_TOML, labels: bool = True):
    from conftest import write_project
    from mlmon_core.config import load_config
    from mlmon_core.source import open_log

    folder = tmp_path / f"p{np.random.default_rng().integers(1 << 30)}"
    data = frame if labels else frame.drop(columns=["target"], errors="ignore")
    return open_log(load_config(write_project(folder, data, toml=toml)))


def test_planted_weak_segment_is_found_with_its_rows(tmp_path):
    frame = loan_frame(20_000, seed=1)
    rng = np.random.default_rng(2)
    segment = (frame.color == "green").to_numpy() & (frame.income < 15_000).to_numpy()
    errors = np.where(segment, rng.random(len(frame)) < 0.5, rng.random(len(frame)) < 0.15)
    frame = with_predictions(frame, 1, errors)
    view = _open(tmp_path, frame)
    report = slices.find_slices(view, ALL)
    assert report.reason is None and report.slices
    overlaps = [jaccard(rows_of(view, frame, s.conditions), segment) for s in report.slices[:3]]
    assert max(overlaps) >= 0.95, (overlaps, [s.description for s in report.slices])
    best = report.slices[int(np.argmax(overlaps))]
    assert best.q_value < 0.001 and best.value > 0.4
    for found in report.slices:
        assert view.count(ALL, found.conditions) == found.rows
        mask = rows_of(view, frame, found.conditions)
        assert found.value == pytest.approx(errors[mask].mean())
        assert found.complement_value == pytest.approx(errors[~mask].mean())
    assert "color = green" in best.description and "elsewhere" in best.description


def test_planted_degradation_is_the_top_degraded_slice(tmp_path):
    frame = loan_frame(24_000, seed=3)
    rng = np.random.default_rng(4)
    late = (frame.timestamp >= pd.Timestamp("2024-01-22")).to_numpy()
    region = (frame.region == "C").to_numpy() & (frame.x1 > 0).to_numpy()
    # A weak segment present in both windows (must not be reported as degraded) ...
    weak = (frame.color == "blue").to_numpy() & (frame.term == 60).to_numpy()
    base = np.where(weak, 0.4, 0.15)
    # ... a global rise that touches everything, and a planted degradation on top.
    base = base + np.where(late, 0.03, 0.0) + np.where(late & region, 0.3, 0.0)
    errors = rng.random(len(frame)) < base
    frame = with_predictions(frame, 3, errors)
    view = _open(tmp_path, frame)
    report = slices.find_degraded_slices(view, LATE, EARLY)
    assert report.slices, report.reason
    top = report.slices[0]
    assert jaccard(rows_of(view, frame, top.conditions) & late, region & late) >= 0.8, top.description
    assert top.reference_value < top.value and top.excess_rise > 0.2
    assert "rose from" in top.description
    for found in report.slices:
        mask = rows_of(view, frame, found.conditions)
        assert found.rows == int((mask & late).sum())
        assert found.reference_rows == int((mask & ~late).sum())
        assert found.reference_value == pytest.approx(errors[mask & ~late].mean())


def test_regression_abs_error_finds_planted_segment(tmp_path):
    frame = loan_frame(12_000, seed=5)
    rng = np.random.default_rng(6)
    segment = (frame.region == "B").to_numpy() & (frame.age >= 60).to_numpy()
    target = rng.normal(100, 10, len(frame))
    noise = rng.normal(0, 1, len(frame)) * np.where(segment, 4.0, 1.0)
    frame["prediction"] = target + noise
    frame["target"] = target
    view = _open(tmp_path, frame, REFERENCE_TOML + '[model]\ntask = "regression"\n')
    report = slices.find_slices(view, ALL)
    assert report.metric == "abs_error"
    overlaps = [jaccard(rows_of(view, frame, s.conditions), segment) for s in report.slices[:3]]
    assert overlaps and max(overlaps) >= 0.85, [s.description for s in report.slices]
    squared = slices.find_slices(view, ALL, metric="squared_error", top=3)
    assert squared.slices and squared.metric == "squared_error"
    first = squared.slices[0]
    mask = rows_of(view, frame, first.conditions)
    assert first.value == pytest.approx(np.mean(noise[mask] ** 2), rel=1e-5)


# ---------------------------------------------------------------- null data

@pytest.mark.parametrize("seed", range(5))
def test_null_errors_give_no_slices(tmp_path, seed):
    frame = loan_frame(6_000, seed=100 + seed)
    rng = np.random.default_rng(seed)
    rate = np.where(frame.timestamp >= pd.Timestamp("2024-01-22"), 0.25, 0.15)  # global rise only
    frame = with_predictions(frame, seed, rng.random(len(frame)) < rate)
    view = _open(tmp_path, frame)
    weak = slices.find_slices(view, ALL)
    degraded = slices.find_degraded_slices(view, LATE, EARLY)
    assert weak.slices == () and "no slice" in weak.reason
    assert degraded.slices == () and "no slice" in degraded.reason
    assert weak.candidates_tested > 10_000 and degraded.candidates_tested > 1_000


def test_null_continuous_errors_give_no_slices(tmp_path):
    frame = loan_frame(6_000, seed=7)
    rng = np.random.default_rng(8)
    frame["target"] = rng.normal(size=len(frame))
    frame["prediction"] = frame["target"] + rng.standard_t(3, len(frame))
    view = _open(tmp_path, frame, REFERENCE_TOML + '[model]\ntask = "regression"\n')
    for metric in ("abs_error", "squared_error"):
        assert slices.find_slices(view, ALL, metric=metric).slices == ()
    assert slices.find_degraded_slices(view, LATE, EARLY).slices == ()


# ---------------------------------------------------------------- oracles

def test_benjamini_hochberg_matches_scipy():
    rng = np.random.default_rng(0)
    p = np.concatenate([rng.random(500), rng.random(50) * 1e-4])
    rng.shuffle(p)
    assert np.allclose(slices.benjamini_hochberg(p), stats.false_discovery_control(p))
    small = np.sort(p)[:80]               # only the smallest kept, m still counts them all
    q = slices.benjamini_hochberg(small, total=len(p))
    full = np.sort(stats.false_discovery_control(p))[:80]
    assert np.allclose(q[q <= 0.05], full[q <= 0.05])
    assert slices.benjamini_hochberg(np.array([])).shape == (0,)


def test_g_test_and_welch_match_scipy():
    rng = np.random.default_rng(1)
    errors = (rng.random(3000) < 0.2).astype(float)
    inside = rng.random(3000) < 0.1
    errors[inside] = rng.random(inside.sum()) < 0.3
    a, n = errors[inside].sum(), inside.sum()
    table = [[a, n - a], [errors[~inside].sum(), (~inside).sum() - errors[~inside].sum()]]
    g, _, _, _ = stats.chi2_contingency(table, correction=False, lambda_="log-likelihood")
    p = slices.weak_p_values(np.array([n]), np.array([a]), np.array([a]),
                             (3000.0, errors.sum(), errors.sum()), True)[0]
    assert p == pytest.approx(stats.norm.sf(np.sqrt(g)), rel=1e-9)
    values = rng.gamma(2.0, 1.0, 3000) + inside * 0.2
    s_in, q_in = values[inside].sum(), (values[inside] ** 2).sum()
    p = slices.weak_p_values(np.array([float(n)]), np.array([s_in]), np.array([q_in]),
                             (3000.0, values.sum(), (values ** 2).sum()), False)[0]
    oracle = stats.ttest_ind(values[inside], values[~inside], equal_var=False, alternative="greater")
    assert p == pytest.approx(oracle.pvalue, rel=1e-6)


def test_rise_test_of_continuous_errors_matches_a_direct_computation():
    rng = np.random.default_rng(2)
    groups = [rng.gamma(2.0, 1.0, k) + shift for k, shift in ((300, 0.5), (2000, 0.1), (250, 0), (1800, 0))]
    stats_of = [(float(len(g)), g.sum(), (g ** 2).sum()) for g in groups]
    now = tuple(np.array([v]) for v in stats_of[0])
    before = tuple(np.array([v]) for v in stats_of[2])
    now_totals = tuple(a + b for a, b in zip(stats_of[0], stats_of[1]))
    before_totals = tuple(a + b for a, b in zip(stats_of[2], stats_of[3]))
    p = slices.rise_p_values(now, before, now_totals, before_totals, False)[0]
    means = [g.mean() for g in groups]
    pieces = [g.var(ddof=1) / len(g) for g in groups]
    se2 = sum(pieces)
    df = se2 ** 2 / sum(v ** 2 / (len(g) - 1) for v, g in zip(pieces, groups))
    t = ((means[0] - means[2]) - (means[1] - means[3])) / np.sqrt(se2)
    assert p == pytest.approx(stats.t.sf(t, df), rel=1e-6)


def _random_coded(n=3000, seed=0):
    rng = np.random.default_rng(seed)
    sizes = [4, 6, 3, 5]
    codes = np.stack([rng.integers(0, k, n) for k in sizes]).astype(np.uint8)
    errors = (rng.random(n) < 0.2 + 0.2 * (codes[0] == 1)).astype(float)
    return codes, errors, sizes


def test_counts_and_sums_match_pandas_groupby():
    codes, errors, sizes = _random_coded()
    frame = pd.DataFrame(codes.T, columns=["a", "b", "c", "d"]).assign(e=errors)
    # Ranges: predicate 0 = {0}, 1 = {1, 2}, 2 = {0, 1, 2} on every feature (plus singles).
    memberships = []
    for k in sizes:
        m = np.vstack([np.eye(k), [[1.0 if j in (1, 2) else 0.0 for j in range(k)]]])
        memberships.append(m)
    coded = CodedRows.from_arrays(codes, errors)
    settings = SearchSettings(max_level=3, min_rows=1, min_reference_rows=1, fdr=1.0, top=10)
    found = slices.search(coded, memberships, settings)
    grid = [m.shape[0] for m in memberships]
    checked = 0
    for i in range(len(found)):
        combo, preds = slices.predicate_indices(found, i, grid)
        mask = np.ones(len(frame), dtype=bool)
        for f, p in zip(combo, preds):
            mask &= np.isin(frame.iloc[:, f], np.flatnonzero(memberships[f][p]))
        assert found.rows[i] == mask.sum()
        assert found.sums[i] == pytest.approx(errors[mask].sum())
        checked += 1
    assert checked > 100
    # every level-2 cell of singles agrees with a groupby
    grouped = frame.groupby(["a", "c"]).e.agg(["size", "sum"])
    for (x, z), row in grouped.iterrows():
        hits = [i for i in range(len(found))
                if slices.predicate_indices(found, i, grid) == ((0, 2), (x, z))]
        if row["size"] < len(frame) and hits:
            assert found.rows[hits[0]] == row["size"] and found.sums[hits[0]] == row["sum"]
    # every candidate passing support was tested: m equals the brute-force count
    brute = 0
    for level in (1, 2, 3):
        for combo in itertools.combinations(range(4), level):
            for preds in itertools.product(*[range(grid[f]) for f in combo]):
                mask = np.ones(len(frame), dtype=bool)
                for f, p in zip(combo, preds):
                    mask &= np.isin(frame.iloc[:, f], np.flatnonzero(memberships[f][p]))
                brute += 1 <= mask.sum() <= len(frame) - 1
    assert found.tested == brute


def test_sliceline_mode_top_k_matches_brute_force():
    codes, errors, sizes = _random_coded(seed=3)
    memberships = [np.eye(k) for k in sizes]
    coded = CodedRows.from_arrays(codes, errors)
    settings = SearchSettings(max_level=3, min_rows=30, alpha=0.95, top=5, tested=False)
    found = slices.search(coded, memberships, settings)
    mean = errors.mean()
    scores = []
    for level in (1, 2, 3):
        for combo in itertools.combinations(range(4), level):
            for preds in itertools.product(*[range(sizes[f]) for f in combo]):
                mask = np.logical_and.reduce([codes[f] == p for f, p in zip(combo, preds)])
                n, s = mask.sum(), errors[mask].sum()
                if n >= 30 and s > 0:
                    score = 0.95 * (s / n / mean - 1) - 0.05 * (len(errors) / n - 1)
                    if score > 0:
                        scores.append(score)
    best = np.sort(scores)[::-1][:5]
    assert np.allclose(np.sort(found.score)[::-1][:5], best)


def test_upper_bound_never_below_the_score():
    rng = np.random.default_rng(5)
    n = rng.integers(10, 1000, 500).astype(float)
    s = rng.random(500) * n
    bound = slices.sliceline_upper_bound(n * 1.5, s * 1.2, np.ones(500), 10, 5000, 0.3, 0.9)
    assert np.all(bound >= slices.sliceline_score(n, s, 5000, 0.3, 0.9) - 1e-12)


# ---------------------------------------------------------------- conditions open as segments

def test_every_predicate_selects_exactly_its_rows(tmp_path):
    frame = with_predictions(loan_frame(3000, seed=9), 9, np.zeros(3000, dtype=bool))
    frame.loc[::50, "age"] = None
    view = _open(tmp_path, frame)
    codings = slices._codings(view, list(view.roles.features), _plan(view), ALL, (), 30, 10, None)
    coded = slices._coded_rows(view, codings, _plan(view), ALL, ())
    for f, coding in enumerate(codings):
        for predicate in coding.predicates():
            expected = np.isin(coded.codes[f], predicate.codes).sum()
            assert view.count(ALL, predicate.conditions) == expected, predicate.text
    kinds = {c.name: c.kind for c in codings}
    assert kinds["color"] == "categorical" and kinds["income"] == "numerical"
    texts = [p.text for p in codings[[c.name for c in codings].index("term")].predicates()]
    assert "term < 60" in texts and "term ≥ 60" in texts


def _plan(view):
    plan, _ = slices._error_plan(view, "error_rate", ALL, None, (), "auto")
    return plan


# ---------------------------------------------------------------- bad input and edge cases

def test_no_labels_and_no_score_explains(tmp_path):
    frame = with_predictions(loan_frame(2000, seed=10), 10, np.zeros(2000, dtype=bool))
    view = _open(tmp_path, frame.drop(columns=["score"]), labels=False)
    report = slices.find_slices(view, ALL)
    assert report.slices == () and "no score" in report.reason


def test_estimated_errors_without_labels(tmp_path):
    frame = loan_frame(8000, seed=11)
    rng = np.random.default_rng(11)
    uncertain = (frame.color == "blue").to_numpy() & (frame.x0 > 0.5).to_numpy()
    frame["score"] = np.where(uncertain, rng.uniform(0.4, 0.6, len(frame)), rng.uniform(0, 0.1, len(frame)))
    frame["prediction"] = (frame.score >= 0.5).astype(int)
    view = _open(tmp_path, frame, labels=False)
    report = slices.find_slices(view, ALL, top=3)
    assert "estimated" in report.metric_description
    assert report.slices and jaccard(rows_of(view, frame, report.slices[0].conditions), uncertain) > 0.8


def test_degenerate_windows_explain(tmp_path):
    frame = with_predictions(loan_frame(3000, seed=12), 12, np.random.default_rng(0).random(3000) < 0.2)
    view = _open(tmp_path, frame)
    empty = slices.find_slices(view, Window(datetime(2030, 1, 1), datetime(2030, 2, 1)))
    assert empty.rows == 0 and "no rows" in empty.reason
    tiny = slices.find_slices(view, ALL, min_support=2000)
    assert tiny.slices == () and "at least 4,000 rows are needed" in tiny.reason
    perfect = with_predictions(loan_frame(3000, seed=12), 12, np.zeros(3000, dtype=bool))
    clean = slices.find_slices(_open(tmp_path, perfect), ALL)
    assert clean.overall == 0 and "0 on all" in clean.reason
    constant = frame.copy()
    for column in ["x0", "x1", "x2", "x3", "age", "income", "term"]:
        constant[column] = 1.0
    for column in ["color", "region", "channel"]:
        constant[column] = "same"
    constant["flag"] = True
    one_bin = slices.find_slices(_open(tmp_path, constant), ALL)
    assert one_bin.slices == () and "single bin" in one_bin.reason
    no_reference = slices.find_degraded_slices(view, ALL, Window(datetime(2030, 1, 1), None))
    assert no_reference.slices == () and "comparison window" in no_reference.reason


def test_bad_options_raise_mlmon_errors(tmp_path):
    frame = with_predictions(loan_frame(1000, seed=13), 13, np.zeros(1000, dtype=bool))
    view = _open(tmp_path, frame)
    with pytest.raises(MlmonError, match="regression"):
        slices.find_slices(view, ALL, metric="abs_error")
    with pytest.raises(MlmonError, match="max level"):
        slices.find_slices(view, ALL, max_level=9)
    with pytest.raises(MlmonError, match="min support"):
        slices.find_slices(view, ALL, min_support=0)


def test_progress_is_reported(tmp_path):
    frame = with_predictions(loan_frame(3000, seed=14), 14, np.random.default_rng(1).random(3000) < 0.2)
    seen = []
    slices.find_slices(_open(tmp_path, frame), ALL, progress=lambda f, m: seen.append((f, m)))
    assert seen[0][0] == 0.0 and seen[-1][0] == 1.0
    assert all(a <= b for (a, _), (b, _) in zip(seen, seen[1:]))


def test_cli_json_and_exit_codes(tmp_path, capsys):
    frame = loan_frame(8000, seed=15)
    rng = np.random.default_rng(15)
    segment = (frame.region == "A").to_numpy() & (frame.term == 60).to_numpy()
    frame = with_predictions(frame, 15, np.where(segment, rng.random(8000) < 0.6, rng.random(8000) < 0.1))
    from conftest import write_project

    config = write_project(tmp_path / "cli", frame, toml=REFERENCE_TOML)
    code = main(["slices", "--config", str(config), "--window", "2024-01-01..2024-02-01",
                 "--top", "3", "--json"])
    payload = json.loads(capsys.readouterr().out)
    assert code == 0
    assert {"metric", "window", "rows", "overall", "slices"} <= set(payload)
    first = payload["slices"][0]
    assert {"conditions", "rows", "value", "reference_value", "score", "p_value", "q_value",
            "description"} <= set(first)
    assert {"column": "region", "op": "==", "value": "A"} in first["conditions"]
    code = main(["slices", "--config", str(config), "--window", "2024-01-22..2024-02-01",
                 "--compare-to", "--where", "region != 'F'", "--json"])
    payload = json.loads(capsys.readouterr().out)
    assert code == 0 and payload["mode"] == "degraded" and payload["compare_to"]["start"]
    assert payload["segment"] == [{"column": "region", "op": "!=", "value": "F"}]
    assert main(["slices", "--config", str(config), "--metric", "abs_error"]) == 2
    assert "regression" in capsys.readouterr().err
