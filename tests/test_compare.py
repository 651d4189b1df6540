"""Shadow-vs-production and A/B comparisons: statistics against scipy/sklearn oracles, counts
against pandas on small logs written to real files, pairing strategies, edge cases and the CLI."""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from mlmon_core import cli, compare
from mlmon_core.config import Window
from mlmon_core.errors import ConfigError, FilterError, NotComputableError
from mlmon_core.sql import Condition

START = datetime(2024, 1, 1)
WINDOW = Window(START, START + timedelta(days=10))
TOML = """
[columns]
model = "model"
variant = "variant"
score = "score"
ignore = ["request_id"]
[model]
task = "binary"
positive_label = 1
"""


# ---------------------------------------------------------------- statistics on counts

@pytest.mark.parametrize("successes,trials", [(0, 1), (1, 1), (0, 10), (3, 10), (10, 10),
                                              (57, 400), (999, 1000)])
def test_wilson_interval_matches_scipy(successes, trials):
    expected = stats.binomtest(successes, trials).proportion_ci(0.95, method="wilson")
    low, high = compare.wilson_interval(successes, trials)
    assert low == pytest.approx(expected.low, abs=1e-12)
    assert high == pytest.approx(expected.high, abs=1e-12)


def test_wilson_interval_without_trials_is_none():
    assert compare.wilson_interval(0, 0) is None
    assert compare.proportion(0, 0, "no rows").reason == "not computable because no rows"


def test_mcnemar_exact_regime_matches_binomtest():
    for b in range(0, 25):
        for c in range(0, 25 - b):
            if b + c == 0:
                continue
            result = compare.mcnemar_test(b, c)
            assert result.method.startswith("exact")
            assert result.p_value == pytest.approx(stats.binomtest(b, b + c, 0.5).pvalue, rel=1e-9)


@pytest.mark.parametrize("b,c", [(25, 0), (13, 12), (40, 20), (121, 59), (811, 902), (5, 60)])
def test_mcnemar_chi_square_regime_matches_scipy_chi2(b, c):
    result = compare.mcnemar_test(b, c)
    statistic = (abs(b - c) - 1) ** 2 / (b + c)
    assert result.method == "chi-square with continuity correction"
    assert result.statistic == pytest.approx(statistic)
    assert result.p_value == pytest.approx(stats.chi2.sf(statistic, df=1), rel=1e-9)


def test_mcnemar_textbook_example_and_degenerate_cases():
    # Classic worked example: b = 121, c = 59 gives chi-square 20.67 with continuity correction.
    assert compare.mcnemar_test(121, 59).statistic == pytest.approx(3721 / 180)
    assert compare.mcnemar_test(0, 0).p_value == 1.0
    equal = compare.mcnemar_test(30, 30)     # |b − c| − 1 is clipped at 0: no evidence at all
    assert equal.statistic == 0 and equal.p_value == 1.0


def test_paired_difference_interval_is_agresti_min_and_covers():
    b, c, n = 30, 45, 500
    low, high = compare.paired_difference_interval(b, c, n)
    z = stats.norm.ppf(0.975)
    centre = (c - b) / (n + 2)
    half = z * math.sqrt((b + 0.5) + (c + 0.5) - (c - b) ** 2 / (n + 2)) / (n + 2)
    assert (low, high) == pytest.approx((centre - half, centre + half))
    rng = np.random.default_rng(3)
    cells = rng.multinomial(200, [0.70, 0.05, 0.10, 0.15], size=2000)   # both, b, c, neither
    truth = 0.10 - 0.05
    covered = [compare.paired_difference_interval(row[1], row[2], 200) for row in cells]
    coverage = np.mean([lo <= truth <= hi for lo, hi in covered])
    assert 0.93 <= coverage <= 0.97
    assert compare.paired_difference_interval(0, 0, 0) is None


@pytest.mark.parametrize("x1,n1,x2,n2", [(45, 100, 60, 100), (3, 40, 9, 35), (5120, 10000, 5230, 10100),
                                         (0, 50, 4, 50)])
def test_two_proportion_test_matches_scipy_contingency(x1, n1, x2, n2):
    result = compare.two_proportion_test(x1, n1, x2, n2)
    chi2, p_value, _, _ = stats.chi2_contingency([[x1, n1 - x1], [x2, n2 - x2]], correction=False)
    assert result.z ** 2 == pytest.approx(chi2, rel=1e-9)
    assert result.p_value == pytest.approx(p_value, rel=1e-9)
    p1, p2 = x1 / n1, x2 / n2
    half = stats.norm.ppf(0.975) * math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    assert (result.low, result.high) == pytest.approx((p2 - p1 - half, p2 - p1 + half))


def test_two_proportion_test_without_variation_gives_reason():
    assert isinstance(compare.two_proportion_test(0, 10, 0, 12), str)
    assert isinstance(compare.two_proportion_test(0, 0, 1, 12), str)


def _power_oracle(p1, n1, p2, n2, alpha=0.05):
    pooled = (p1 * n1 + p2 * n2) / (n1 + n2)
    se0 = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    se1 = math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    z = stats.norm.ppf(1 - alpha / 2)
    d = abs(p2 - p1)
    return stats.norm.cdf((d - z * se0) / se1) + stats.norm.cdf((-d - z * se0) / se1)


@pytest.mark.parametrize("p1,n1,p2,n2", [(0.20, 1500, 0.23, 1400), (0.5, 300, 0.58, 320),
                                         (0.05, 4000, 0.065, 4000)])
def test_power_matches_normal_oracle_and_simulation(p1, n1, p2, n2):
    power = compare.power_two_proportions(p1, n1, p2, n2)
    assert power == pytest.approx(_power_oracle(p1, n1, p2, n2), rel=1e-9)
    rng = np.random.default_rng(11)
    x1, x2 = rng.binomial(n1, p1, 40_000), rng.binomial(n2, p2, 40_000)
    pooled = (x1 + x2) / (n1 + n2)
    z = (x2 / n2 - x1 / n1) / np.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    simulated = np.mean(np.abs(z) > stats.norm.ppf(0.975))
    assert power == pytest.approx(simulated, abs=0.02)


@pytest.mark.parametrize("p,n1,n2", [(0.2, 2000, 2000), (0.5, 300, 500), (0.97, 1000, 900),
                                      (0.0, 500, 500)])
def test_minimum_detectable_effect_reaches_the_power(p, n1, n2):
    mde = compare.minimum_detectable_effect(p, n1, n2)
    directions = [p + s * mde for s in (1, -1) if 0 <= p + s * mde <= 1]
    powers = [_power_oracle(p, n1, p2, n2) for p2 in directions]
    assert max(powers) == pytest.approx(0.8, abs=1e-6)
    textbook = (stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) * math.sqrt(
        max(p * (1 - p), 0.01) * (1 / n1 + 1 / n2))
    if 0.05 < p < 0.95:
        assert mde == pytest.approx(textbook, rel=0.05)
    assert compare.minimum_detectable_effect(p, 0, n2) is None


def test_sample_ratio_mismatch_matches_chisquare():
    observed = {"A": 5100, "B": 4900}
    shares = {"A": 0.5, "B": 0.5}
    result = compare.sample_ratio_mismatch(observed, shares)
    expected = stats.chisquare([5100, 4900], [5000, 5000])
    assert result.statistic == pytest.approx(expected.statistic)
    assert result.p_value == pytest.approx(expected.pvalue)
    assert result.mismatch is False
    skewed = compare.sample_ratio_mismatch({"A": 5600, "B": 4400, "C": 4000},
                                           {"A": 0.4, "B": 0.3, "C": 0.3})
    expected = stats.chisquare([5600, 4400, 4000], [5600, 4200, 4200])
    assert skewed.p_value == pytest.approx(expected.pvalue)
    assert skewed.mismatch is bool(expected.pvalue < 0.001)
    assert "Sample ratio mismatch" in compare.sample_ratio_mismatch(
        {"A": 6000, "B": 4000}, shares).message
    assert compare.sample_ratio_mismatch({"A": 10}, {"A": 1.0}).p_value is None


def _delong_oracle(y, first, second):
    """DeLong et al. (1988) from the pairwise kernel matrices (O(m·n), independent of ranks)."""
    pos, neg = y == 1, y == 0

    def components(score):
        kernel = (score[pos][:, None] > score[neg][None, :]) + 0.5 * (
            score[pos][:, None] == score[neg][None, :])
        return kernel.mean(), kernel.mean(axis=1), kernel.mean(axis=0)

    auc1, v10_1, v01_1 = components(first)
    auc2, v10_2, v01_2 = components(second)
    s10 = np.cov(np.vstack([v10_1, v10_2]))
    s01 = np.cov(np.vstack([v01_1, v01_2]))
    covariance = s10 / pos.sum() + s01 / neg.sum()
    variance = covariance[0, 0] + covariance[1, 1] - 2 * covariance[0, 1]
    z = (auc2 - auc1) / math.sqrt(variance)
    return auc1, auc2, covariance, 2 * stats.norm.sf(abs(z))


def test_delong_matches_pairwise_definition_with_ties():
    rng = np.random.default_rng(5)
    y = (rng.random(300) < 0.35).astype(int)
    first = np.round(rng.random(300) + 0.4 * y, 1)           # rounding makes many ties
    second = np.round(0.7 * first + rng.random(300) * 0.6 + 0.2 * y, 2)
    result = compare.delong_test(y == 1, first, second)
    auc1, auc2, covariance, p_value = _delong_oracle(y, first, second)
    assert result.auc_production == pytest.approx(roc_auc_score(y, first))
    assert result.auc_candidate == pytest.approx(auc2)
    assert result.p_value == pytest.approx(p_value, rel=1e-9)
    half = stats.norm.ppf(0.975) * math.sqrt(covariance[0, 0])
    assert result.interval_production == pytest.approx((auc1 - half, auc1 + half))
    assert isinstance(compare.delong_test(np.array([True, False, False]), np.ones(3), np.ones(3)), str)


def test_weighted_auc_matches_sklearn_sample_weight():
    rng = np.random.default_rng(8)
    y = rng.random(500) < 0.3
    score = np.round(rng.random(500) + 0.3 * y, 2)
    weights = rng.poisson(1.0, size=(3, 500)).astype(float)
    got = compare._WeightedAuc(score, y)(weights)
    for row, value in zip(weights, got):
        assert value == pytest.approx(roc_auc_score(y, score, sample_weight=row))


def test_paired_bootstrap_agrees_with_delong():
    rng = np.random.default_rng(9)
    y = rng.random(3000) < 0.3
    first = rng.random(3000) + 0.5 * y
    second = first * 0.5 + rng.random(3000) * 0.5 + 0.45 * y
    delong = compare.delong_test(y, first, second)
    boot = compare.paired_bootstrap_auc(y, first, second, replicates=300, seed=1)
    assert boot.replicates == 300 and boot.pairs == 3000
    assert boot.low < delong.difference < boot.high
    assert boot.low == pytest.approx(delong.low, abs=0.01)
    assert boot.high == pytest.approx(delong.high, abs=0.01)


# ---------------------------------------------------------------- a small shadow log

def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def shadow_log(n=400, seed=0, labeled=0.6, key="request_id", shadowed=0.95):
    """Production rows and their shadow twins (same inputs) for a share ``shadowed`` of them,
    plus a labels frame.

    ``key``: "request_id" (twins share a request_id, ids unique), "id" (twins share the id, no
    request_id column) or "features" (unique ids, no request_id: only timestamp + features match).
    """
    rng = np.random.default_rng(seed)
    moment = START + pd.to_timedelta(np.sort(rng.integers(0, 5 * 86400, n)), unit="s")
    x = rng.normal(size=n)
    color = rng.choice(["red", "green", "blue"], n, p=[0.4, 0.4, 0.2])
    x_missing = np.where(rng.random(n) < 0.05, np.nan, x)
    truth = (rng.random(n) < _sigmoid(1.5 * x)).astype(int)
    production_score = _sigmoid(1.5 * x + rng.normal(0, 0.8, n))
    # The candidate is worse on blue requests: it disagrees there more often.
    candidate_score = _sigmoid(1.5 * x + rng.normal(0, 0.5, n) + (color == "blue") * rng.normal(0, 3, n))
    twin = rng.random(n) < shadowed
    frames = []
    for model, score, prefix in (("prod", production_score, "p"), ("cand", candidate_score, "c")):
        frame = pd.DataFrame({
            "id": [f"{prefix}{i}" for i in range(n)],
            "request_id": [f"r{i}" for i in range(n)],
            "timestamp": moment, "x": x_missing, "color": color, "model": model,
            "variant": np.where(rng.random(n) < 0.5, "A", "B") if model == "prod" else None,
            "score": score, "prediction": (score >= 0.5).astype(int),
        })
        frames.append(frame if model == "prod" else frame[twin])
    predictions = pd.concat(frames, ignore_index=True)
    labeled_rows = rng.random(n) < labeled
    labels = pd.DataFrame({"id": [f"{p}{i}" for p in "pc" for i in range(n) if labeled_rows[i]],
                           "target": [truth[i] for _ in "pc" for i in range(n) if labeled_rows[i]]})
    if key == "id":
        predictions["id"] = predictions["request_id"]
        predictions = predictions.drop(columns="request_id")
        labels = labels.assign(id=labels["id"].str.replace("^[pc]", "r", regex=True)).drop_duplicates("id")
    elif key == "features":
        predictions = predictions.drop(columns="request_id")
    return predictions, labels


def pandas_pairs(predictions, labels, keys=("request_id",)):
    """The oracle: earliest row per key and model, inner-joined, label from either twin."""
    keys = list(keys)
    frame = predictions.merge(labels, on="id", how="left") if labels is not None else predictions
    frame = frame.dropna(subset=keys, how="all").sort_values("timestamp", kind="stable")
    first = frame.groupby(keys + ["model"], dropna=False).head(1)
    production = first[first["model"] == "prod"]
    candidate = first[first["model"] == "cand"]
    pairs = production.merge(candidate, on=keys, suffixes=("_p", "_c"))
    pairs["target"] = pairs["target_p"].fillna(pairs["target_c"])
    return pairs


def test_counts_match_pandas_with_unpaired_duplicated_and_keyless_rows(make_log):
    predictions, labels = shadow_log(seed=1, shadowed=1.0)
    candidate_rows = predictions.index[predictions["model"] == "cand"]
    dropped = candidate_rows[:25]                              # production rows without a twin
    orphans = predictions.loc[candidate_rows[25:32]].assign(
        request_id=[f"orphan{i}" for i in range(7)], id=[f"o{i}" for i in range(7)])
    duplicate = predictions.loc[[candidate_rows[40]]].assign(
        id="dup", timestamp=predictions.loc[candidate_rows[40], "timestamp"] + timedelta(seconds=5),
        prediction=1 - predictions.loc[candidate_rows[40], "prediction"])
    keyless = predictions.loc[predictions.index[:3]].assign(request_id=None)
    predictions = pd.concat([predictions.drop(index=dropped), orphans, duplicate, keyless],
                            ignore_index=True)
    predictions = predictions.drop_duplicates(subset=["id", "request_id"], keep="last")
    view = make_log(predictions, labels, TOML)
    result = compare.compare_models(view, WINDOW)

    pairs = pandas_pairs(predictions, labels)
    assert (result.production, result.candidate) == ("prod", "cand")
    assert result.pairing == "request_id" and result.pair_on == ("request_id",)
    assert result.pairs == len(pairs)
    assert result.unpaired == {"production": 25, "candidate": 7}
    assert result.unpairable == {"production": 3, "candidate": 0}
    assert result.duplicated_keys == 1
    agree = int((pairs["prediction_p"] == pairs["prediction_c"]).sum())
    assert (result.agreement.successes, result.agreement.trials) == (agree, len(pairs))
    labeled = pairs.dropna(subset=["target"])
    right_p = labeled["prediction_p"] == labeled["target"]
    right_c = labeled["prediction_c"] == labeled["target"]
    accuracy = result.accuracy
    assert accuracy.labeled_pairs == len(labeled)
    assert accuracy.production.value == pytest.approx(right_p.mean())
    assert accuracy.candidate.value == pytest.approx(right_c.mean())
    b, c = int((right_p & ~right_c).sum()), int((~right_p & right_c).sum())
    assert accuracy.mcnemar.to_json()["b"] == b and accuracy.mcnemar.to_json()["c"] == c
    assert accuracy.mcnemar.p_value == pytest.approx(compare.mcnemar_test(b, c).p_value)
    assert accuracy.difference == pytest.approx((c - b) / len(labeled))
    assert result.rows["production"] == int((predictions["model"] == "prod").sum())
    assert result.rows["candidate"] == int((predictions["model"] == "cand").sum())
    for side in ("production", "candidate"):        # every row is accounted for
        assert result.rows[side] == (result.pairs + result.unpaired[side] + result.unpairable[side]
                                     + (side == "candidate") * result.duplicated_keys)

    by_day = pairs.assign(day=pairs["timestamp_p"].dt.floor("D")).groupby("day").apply(
        lambda g: pd.Series({"pairs": len(g),
                             "agree": int((g["prediction_p"] == g["prediction_c"]).sum())}),
        include_groups=False)
    got = result.by_bucket.set_index("start")
    assert list(got["pairs"]) == list(by_day["pairs"])
    assert list(got["agree"]) == list(by_day["agree"])

    auc = result.auc
    scored = labeled
    assert auc.labeled_pairs == len(scored) and not auc.sampled
    assert auc.delong.auc_production == pytest.approx(roc_auc_score(scored["target"], scored["score_p"]))
    assert auc.delong.auc_candidate == pytest.approx(roc_auc_score(scored["target"], scored["score_c"]))
    assert "cand agrees with prod on" in result.summary and "McNemar" in result.summary
    assert "28 prod requests had no cand twin" in result.summary      # 25 unpaired + 3 keyless
    json.dumps(cli.to_jsonable(result.to_json()))


def test_disagreement_breakdown_finds_the_planted_group(make_log):
    predictions, labels = shadow_log(n=600, seed=2)
    view = make_log(predictions, labels, TOML)
    result = compare.compare_models(view, WINDOW)
    pairs = pandas_pairs(predictions, labels)
    table = result.disagreement
    colors = table[table["feature"] == "color"]
    top = colors.iloc[0]
    assert top["group"] == "color = blue" and top["significant"] and top["difference"] > 0
    assert not colors.iloc[1:]["significant"].any()
    assert (table.loc[table["significant"], "difference"] > 0).all()     # one-sided: "more"
    disagree = pairs["prediction_p"] != pairs["prediction_c"]
    by_color = disagree.groupby(pairs["color_p"]).agg(["size", "sum"])
    total, total_disagree = len(pairs), int(disagree.sum())
    for color, (size, count) in by_color.iterrows():
        row = colors[colors["group"] == f"color = {color}"].iloc[0]
        assert (row["pairs"], row["disagreements"]) == (size, count)
        rest, rest_count = total - size, total_disagree - count
        _, p_two, _, _ = stats.chi2_contingency([[count, size - count], [rest_count, rest - rest_count]],
                                                correction=False)
        one_sided = p_two / 2 if count / size > rest_count / rest else 1 - p_two / 2
        assert row["p_value"] == pytest.approx(one_sided, rel=1e-6)
    assert table["q_value"].to_numpy() == pytest.approx(
        stats.false_discovery_control(table["p_value"].to_numpy()))
    x_rows = table[table["feature"] == "x"]
    assert x_rows["pairs"].sum() == len(pairs)
    assert (x_rows["group"] == "x is missing").sum() == 1
    assert top["segment"] == [{"column": "color", "op": "==", "value": "blue"}]


def test_breakdown_on_a_hashed_sample_when_there_are_many_requests(make_log, monkeypatch):
    predictions, labels = shadow_log(n=600, seed=2)
    view = make_log(predictions, labels, TOML)
    full = compare.compare_models(view, WINDOW)
    monkeypatch.setattr(compare, "BREAKDOWN_PAIRS", 250)
    monkeypatch.setattr(compare, "DECILE_ROWS", 300)
    sampled = compare.compare_models(view, WINDOW)
    assert sampled.pairs == full.pairs and sampled.agreement == full.agreement
    assert 150 < sampled.disagreement_pairs < full.disagreement_pairs == full.agreement.trials
    assert any("hashed sample" in note for note in sampled.notes)
    table = sampled.disagreement
    for feature in ("x", "color"):
        assert table.loc[table["feature"] == feature, "pairs"].sum() == sampled.disagreement_pairs
    merged = table.merge(full.disagreement, on=["feature", "group"], suffixes=("", "_full"))
    colors = merged[merged["feature"] == "color"]
    assert len(colors) == 3 and (colors["pairs"] < colors["pairs_full"]).all()
    again = compare.compare_models(view, WINDOW)
    pd.testing.assert_frame_equal(again.disagreement, table)      # deterministic sample


@pytest.mark.parametrize("key,toml,expected", [
    ("id", TOML.replace('ignore = ["request_id"]', ""), "id"),
    ("features", TOML.replace('ignore = ["request_id"]', ""), "timestamp+features"),
])
def test_pairing_strategies_find_the_same_pairs(make_log, key, toml, expected):
    predictions, labels = shadow_log(n=300, seed=3, key=key)
    view = make_log(predictions, labels, toml)
    result = compare.compare_models(view, WINDOW)
    assert result.pairing == expected
    keys = ["id"] if key == "id" else ["timestamp", "x", "color"]
    pairs = pandas_pairs(predictions, labels, keys)
    # Null x matches null x (GROUP BY semantics), so every twin is found.
    assert result.pairs == len(pairs) == int((predictions["model"] == "cand").sum())
    assert result.unpaired == {"production": 300 - len(pairs), "candidate": 0}
    assert result.agreement.successes == int((pairs["prediction_p"] == pairs["prediction_c"]).sum())
    assert result.accuracy.labeled_pairs == int(pairs["target"].notna().sum())


def test_explicit_pair_on_and_segment_on_a_production_only_column(make_log):
    predictions, labels = shadow_log(n=300, seed=4, shadowed=1.0)
    view = make_log(predictions, labels, TOML)
    given = compare.compare_models(view, WINDOW, production="prod", pair_on=["request_id"],
                                   breakdown=False)
    assert given.pairing == "given" and given.pairs == int((predictions["model"] == "cand").sum())
    arm_a = compare.compare_models(view, WINDOW, segment=(Condition("variant", "==", value="A"),),
                                   production="prod", breakdown=False)
    expected = int(((predictions["model"] == "prod") & (predictions["variant"] == "A")).sum())
    assert arm_a.pairs == expected and arm_a.unpaired == {"production": 0, "candidate": 0}
    assert arm_a.rows == {"production": expected, "candidate": expected}
    blue = compare.compare_models(view, WINDOW, segment=(Condition("color", "==", value="blue"),),
                                  production="prod", breakdown=False)
    assert blue.pairs == int(((predictions["model"] == "prod") & (predictions["color"] == "blue")).sum())
    with pytest.raises(FilterError, match="model column"):
        compare.compare_models(view, WINDOW, production="prod", pair_on=["model"])
    with pytest.raises(FilterError, match="unknown column"):
        compare.compare_models(view, WINDOW, production="prod", pair_on=["nope"])


def test_auc_sample_is_bounded_and_reported(make_log):
    predictions, labels = shadow_log(n=400, seed=5, labeled=1.0)
    view = make_log(predictions, labels, TOML)
    result = compare.compare_models(view, WINDOW, auc_sample=150, breakdown=False,
                                    bootstrap_replicates=50)
    assert result.auc.labeled_pairs == int((predictions["model"] == "cand").sum()) > 150
    assert result.auc.sample_size == 150 and result.auc.sampled
    assert result.auc.bootstrap.replicates == 50
    assert "on a sample of 150 pairs" in result.summary


def test_no_labeled_pairs_and_empty_window(make_log):
    predictions, labels = shadow_log(n=200, seed=6)
    view = make_log(predictions, None, TOML)
    result = compare.compare_models(view, WINDOW)
    assert result.pairs == int((predictions["model"] == "cand").sum())
    assert result.accuracy.labeled_pairs == 0 and result.accuracy.mcnemar is None
    assert "no target column" in result.accuracy.reason
    assert result.auc.delong is None and result.auc.reason
    assert "no pair is labeled yet" in result.summary

    view = make_log(predictions, labels, TOML)
    empty = compare.compare_models(view, Window(datetime(2030, 1, 1), datetime(2030, 1, 2)))
    assert empty.pairs == 0 and empty.agreement.value is None
    assert "neither prod nor cand has rows" in empty.reason
    assert empty.by_bucket.empty and empty.disagreement.empty
    assert empty.accuracy.production.value is None
    assert "because not computable" not in json.dumps(cli.to_jsonable(empty.to_json()))


def test_model_without_rows_in_window_and_model_resolution_errors(make_log):
    predictions, labels = shadow_log(n=200, seed=7)
    late = predictions["timestamp"] >= START + timedelta(days=3)
    predictions = predictions[~((predictions["model"] == "cand") & ~late)]
    view = make_log(predictions, labels, TOML)
    early = Window(START, START + timedelta(days=3))
    result = compare.compare_models(view, early)
    assert result.candidate == "cand" and result.pairs == 0
    assert result.reason == f"not computable because cand has no rows in window {early}"
    assert result.unpaired["production"] == result.rows["production"] > 0

    with pytest.raises(FilterError, match="'v9' is not in column 'model'"):
        compare.compare_models(view, WINDOW, candidate="v9")
    with pytest.raises(FilterError, match="both 'prod'"):
        compare.compare_models(view, WINDOW, production="prod", candidate="prod")
    three = pd.concat([predictions, predictions.head(5).assign(model="other", id=list("vwxyz"))])
    view = make_log(three, labels, TOML)
    with pytest.raises(FilterError, match="several models besides prod"):
        compare.compare_models(view, WINDOW)
    assert compare.compare_models(view, WINDOW, candidate="cand", breakdown=False).pairs > 0
    tied, _ = shadow_log(n=50, seed=7, shadowed=1.0)
    with pytest.raises(FilterError, match="same number of rows.*--production"):
        compare.compare_models(make_log(tied, None, TOML), WINDOW)
    single = make_log(predictions[predictions["model"] == "prod"], labels, TOML)
    with pytest.raises(NotComputableError, match="only one model"):
        compare.compare_models(single, WINDOW)
    no_model = make_log(predictions.drop(columns="model"), labels,
                        TOML.replace('model = "model"\n', ""))
    with pytest.raises(ConfigError, match="model column"):
        compare.compare_models(no_model, WINDOW)


def test_regression_reports_mean_absolute_difference(make_log):
    predictions, labels = shadow_log(n=150, seed=8)
    predictions["prediction"] = predictions["score"] * 100
    labels["target"] = labels["target"] * 100.0 + 0.5
    toml = TOML.replace('task = "binary"\npositive_label = 1', 'task = "regression"')
    view = make_log(predictions, labels, toml)
    result = compare.compare_models(view, WINDOW)
    pairs = pandas_pairs(predictions, labels)
    assert result.pairs == int((predictions["model"] == "cand").sum())
    assert result.agreement.value is None and result.accuracy is None
    assert result.mean_absolute_difference == pytest.approx(
        (pairs["prediction_p"] - pairs["prediction_c"]).abs().mean())
    assert "differ by" in result.summary


# ---------------------------------------------------------------- A/B

def ab_log(seed=0, n=3000, share_a=0.5, only_a=False):
    rng = np.random.default_rng(seed)
    arm = np.where(rng.random(n) < share_a, "A", "B")
    if only_a:
        arm[:] = "A"
    score = rng.random(n)
    threshold = np.where(arm == "B", 0.4, 0.5)
    truth = (rng.random(n) < score).astype(int)
    predictions = pd.DataFrame({
        "id": [f"q{i}" for i in range(n)],
        "timestamp": START + pd.to_timedelta(rng.integers(0, 5 * 86400, n), unit="s"),
        "x": rng.normal(size=n), "model": "prod", "variant": arm, "score": score,
        "prediction": (score >= threshold).astype(int),
    })
    predictions.loc[:19, "variant"] = None
    labeled = rng.random(n) < 0.7
    labels = pd.DataFrame({"id": predictions["id"][labeled], "target": truth[labeled]})
    return predictions, labels


def test_ab_counts_tests_and_srm_match_oracles(make_log):
    predictions, labels = ab_log(seed=1, share_a=0.55)
    view = make_log(predictions, labels, TOML)
    result = compare.ab_test(view, WINDOW, metrics=compare.AB_METRICS)
    frame = predictions.merge(labels, on="id", how="left")
    frame = frame[frame["variant"].notna()]
    assert result.rows_without_arm == 20 and result.control == "A"
    assert [a.name for a in result.arms] == ["A", "B"]
    oracle = {}
    for arm, group in frame.groupby("variant"):
        lab = group.dropna(subset=["target"])
        oracle[arm] = {
            "accuracy": ((lab["prediction"] == lab["target"]).sum(), len(lab)),
            "precision": (((lab["prediction"] == 1) & (lab["target"] == 1)).sum(),
                          (lab["prediction"] == 1).sum()),
            "recall": (((lab["prediction"] == 1) & (lab["target"] == 1)).sum(), (lab["target"] == 1).sum()),
            "positive_rate": ((group["prediction"] == 1).sum(), len(group)),
            "actual_positive_rate": ((lab["target"] == 1).sum(), len(lab)),
        }
        got = result.arm(arm)
        assert got.rows == len(group) and got.labeled_rows == len(lab)
        for metric, (successes, trials) in oracle[arm].items():
            assert (got.metrics[metric].successes, got.metrics[metric].trials) == (successes, trials)
    for difference in result.differences:
        (x1, n1), (x2, n2) = oracle["A"][difference.metric], oracle["B"][difference.metric]
        _, p_value, _, _ = stats.chi2_contingency([[x1, n1 - x1], [x2, n2 - x2]], correction=False)
        assert difference.p_value == pytest.approx(p_value, rel=1e-9)
        assert difference.difference == pytest.approx(x2 / n2 - x1 / n1)
        assert difference.power == pytest.approx(_power_oracle(x1 / n1, n1, x2 / n2, n2), rel=1e-9)
        mde = difference.minimum_detectable_effect
        assert max(_power_oracle(x1 / n1, n1, x1 / n1 + s * mde, n2) for s in (1, -1)
                   if 0 <= x1 / n1 + s * mde <= 1) == pytest.approx(0.8, abs=1e-6)
    counts = frame["variant"].value_counts()
    expected = stats.chisquare([counts["A"], counts["B"]])
    assert result.srm.p_value == pytest.approx(expected.pvalue)
    assert result.srm.mismatch is True and "Sample ratio mismatch" in result.summary
    custom = compare.ab_test(view, WINDOW, expected_split={"A": 55, "B": 45})
    assert custom.srm.expected_share == {"A": 0.55, "B": 0.45}
    assert custom.srm.p_value == pytest.approx(stats.chisquare(
        [counts["A"], counts["B"]], [0.55 * counts.sum(), 0.45 * counts.sum()]).pvalue)
    assert "positive rate" in result.summary


def test_ab_edge_cases(make_log):
    predictions, labels = ab_log(seed=2, only_a=True)
    view = make_log(predictions, labels, TOML)
    one = compare.ab_test(view, WINDOW)
    assert [a.name for a in one.arms] == ["A"] and one.differences == []
    assert one.srm.p_value is None and "only arm A" in one.reason
    empty = compare.ab_test(view, Window(datetime(2030, 1, 1), datetime(2030, 1, 2)))
    assert empty.arms == [] and "no row in window" in empty.reason
    no_labels = compare.ab_test(make_log(*ab_log(seed=3)[:1], toml=TOML), WINDOW)
    assert no_labels.arm("B").metrics["accuracy"].value is None
    assert no_labels.arm("B").metrics["positive_rate"].value is not None
    readable = [d for d in no_labels.differences if d.p_value is not None]
    assert [d.metric for d in readable] == ["positive_rate"]
    with pytest.raises(ConfigError, match="expected_split has no share for arm"):
        compare.ab_test(make_log(*ab_log(seed=3)[:1], toml=TOML), WINDOW, expected_split={"A": 1})
    with pytest.raises(ConfigError, match="unknown A/B metric"):
        compare.ab_test(view, WINDOW, metrics=("f1",))
    with pytest.raises(FilterError, match="control arm 'Z'"):
        compare.ab_test(view, WINDOW, control="Z")
    no_variant = make_log(predictions.drop(columns="variant"), labels,
                          TOML.replace('variant = "variant"\n', ""))
    with pytest.raises(ConfigError, match="needs an arm column"):
        compare.ab_test(no_variant, WINDOW)


# ---------------------------------------------------------------- CLI

def _project(make_log, predictions, labels, toml):
    view = make_log(predictions, labels, toml)
    return str(view.config.path)


def test_cli_compare_models_and_ab(make_log, capsys):
    predictions, labels = shadow_log(n=200, seed=9)
    config = _project(make_log, predictions, labels, TOML)
    window = "--window=2024-01-01..2024-01-11"
    assert cli.main(["compare-models", "--config", config, window, "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["pairs"] == int((predictions["model"] == "cand").sum()) and payload["candidate"] == "cand"
    assert payload["accuracy"]["mcnemar"]["method"]
    assert cli.main(["compare-models", "--config", config, window, "--where", "color == 'blue'",
                     "--no-breakdown"]) == 0
    assert "agrees with prod" in capsys.readouterr().out
    assert cli.main(["ab", "--config", config, window, "--json", "--expected-split", "A=1,B=1"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert [arm["arm"] for arm in payload["arms"]] == ["A", "B"] and payload["srm"]["p_value"] > 0
    assert cli.main(["compare-models", "--config", config, "--window=2030-01-01..2030-01-02"]) == 2
    assert "cannot be compared" in capsys.readouterr().err
    assert cli.main(["compare-models", "--config", config, window, "--model", "prod"]) == 2
    assert "--production" in capsys.readouterr().err


def test_cli_errors_exit_2(make_log, capsys):
    predictions, labels = shadow_log(n=50, seed=10)
    no_model = _project(make_log, predictions.drop(columns=["model", "variant"]), labels,
                        TOML.replace('model = "model"\nvariant = "variant"\n', ""))
    assert cli.main(["compare-models", "--config", no_model]) == 2
    assert "model column" in capsys.readouterr().err
    assert cli.main(["ab", "--config", no_model]) == 2
    assert "arm column" in capsys.readouterr().err
    single = _project(make_log, predictions[predictions["model"] == "prod"], labels, TOML)
    assert cli.main(["compare-models", "--config", single]) == 2
    assert "only one model" in capsys.readouterr().err
    assert cli.main(["ab", "--config", single, "--expected-split", "A=half"]) == 2
    assert "ARM=SHARE" in capsys.readouterr().err
