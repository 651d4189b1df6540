"""Sampling-noise levels beside drift distances: against a Monte-Carlo oracle on raw values with
scipy, on the many-category repro (drifted by the convention, not beyond noise), and edge cases."""

from datetime import datetime

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.spatial import distance

from mlmon_core import alerts, drift
from mlmon_core.config import Window

REFERENCE = Window(datetime(2024, 1, 1), datetime(2024, 1, 31))
CURRENT = Window(datetime(2024, 2, 20), datetime(2024, 2, 27))
ORACLE_DRAWS = 1000
TOLERANCE = 0.15


def _log(make_log, reference: dict, current: dict, categorical=("code",)):
    """A log with the given columns in January (reference) and in late February (current)."""
    rng = np.random.default_rng(7)
    frames = []
    for columns, start, days in ((reference, "2024-01-01", 30), (current, "2024-02-20", 7)):
        size = len(next(iter(columns.values())))
        stamps = pd.Timestamp(start) + pd.to_timedelta(rng.uniform(0, days * 86400, size), unit="s")
        score = rng.random(size)
        frames.append(pd.DataFrame({"timestamp": stamps, **columns, "score": score,
                                    "prediction": (score > 0.5).astype(int)}))
    frame = pd.concat(frames, ignore_index=True)
    frame.insert(0, "id", np.arange(len(frame)))
    names = ", ".join(f'"{c}"' for c in categorical)
    return make_log(frame, toml=f"[columns]\ncategorical = [{names}]\n"
                                f'[reference]\nstart = "2024-01-01"\nend = "2024-01-31"\n')


def _oracle(pooled: np.ndarray, n_reference: int, n_current: int, statistic) -> float:
    """95th percentile of ``statistic`` on windows resampled (with replacement) from the pooled raw
    values, ``ORACLE_DRAWS`` times."""
    rng = np.random.default_rng(123)
    found = [statistic(rng.choice(pooled, n_reference), rng.choice(pooled, n_current))
             for _ in range(ORACLE_DRAWS)]
    return float(np.percentile(found, 95))


def _js_of_raw(categories: int):
    def statistic(reference, current):
        return distance.jensenshannon(np.bincount(reference, minlength=categories),
                                      np.bincount(current, minlength=categories), 2)
    return statistic


def test_jensenshannon_noise_matches_monte_carlo_oracle(make_log):
    rng = np.random.default_rng(1)
    weights = rng.dirichlet(np.ones(60))
    reference, current = rng.choice(60, 1500, p=weights), rng.choice(60, 200, p=weights)
    view = _log(make_log, {"code": reference}, {"code": current})
    column = drift.compute_drift(view, CURRENT, REFERENCE, columns=["code"]).column("code")
    assert column.test == "jensenshannon"
    expected = _oracle(np.r_[reference, current], 1500, 200, _js_of_raw(60))
    assert column.noise_level == pytest.approx(expected, rel=TOLERANCE)
    assert column.to_json()["noise_level"] == pytest.approx(column.noise_level)


@pytest.mark.parametrize("reference_size, current_size", [(1500, 300), (24_000, 6_000)])
def test_wasserstein_noise_matches_monte_carlo_oracle(make_log, reference_size, current_size):
    """Few rows (exact multinomial over distinct values) and many distinct values (bucketed,
    coarsened, normal approximation for the well-filled groups)."""
    rng = np.random.default_rng(2)
    reference = rng.lognormal(size=reference_size)
    current = rng.lognormal(size=current_size)
    view = _log(make_log, {"x": reference}, {"x": current}, categorical=())
    column = drift.compute_drift(view, CURRENT, REFERENCE, columns=["x"]).column("x")
    assert column.test == "wasserstein"
    std = np.std(reference)

    def statistic(first, second):
        return stats.wasserstein_distance(first, second) / std

    draws = ORACLE_DRAWS if reference_size < 10_000 else 300
    pooled = np.r_[reference, current]
    rng_oracle = np.random.default_rng(5)
    found = [statistic(rng_oracle.choice(pooled, reference_size),
                       rng_oracle.choice(pooled, current_size)) for _ in range(draws)]
    assert column.noise_level == pytest.approx(float(np.percentile(found, 95)), rel=TOLERANCE)


def test_psi_and_histogram_noise_match_the_vectorised_statistics():
    """The row-wise statistics agree with the module's own one-pair functions."""
    rng = np.random.default_rng(3)
    reference = rng.integers(0, 30, (5, 12))
    current = rng.integers(0, 30, (5, 12))
    reference[0, 3] = 0
    for row in range(5):
        assert drift.psi_rows(reference, current)[row] == pytest.approx(
            drift.psi_from_counts(reference[row], current[row]))
        assert drift.jensenshannon_rows(reference, current)[row] == pytest.approx(
            drift.jensenshannon_from_counts(reference[row], current[row]))
    assert drift.noise_level("psi", np.r_[reference[0], current[0]], 500, 100) > 0


def test_draws_are_reproducible_and_normal_part_has_the_multinomial_moments():
    shares = np.array([0.5, 0.3, 0.19, 0.009, 0.001])
    drawn = drift.draw_counts(np.random.default_rng(0), 10_000, shares, 20_000)
    assert np.allclose(drawn.sum(axis=1), 10_000)
    assert np.allclose(drawn.mean(axis=0), 10_000 * shares, rtol=0.02)
    covariance = 10_000 * (np.diag(shares) - np.outer(shares, shares))
    assert np.allclose(np.cov(drawn.T), covariance, rtol=0.1, atol=5)
    first = drift.noise_level("jensenshannon", np.array([5, 9, 200]), 100, 40)
    assert first == drift.noise_level("jensenshannon", np.array([5, 9, 200]), 100, 40)


def _census_like(make_log, shift: bool):
    """The field repro: 400 uniform codes and a normal x, identical over time unless ``shift``."""
    rng = np.random.default_rng(0)
    n_ref, n_cur = 4000, 900
    codes = rng.choice(400, n_ref + n_cur)
    x = rng.normal(size=n_ref + n_cur)
    if shift:
        codes[n_ref:] = rng.choice(100, n_cur)
        x[n_ref:] += 0.5
    return _log(make_log, {"OCCP": codes[:n_ref], "x": x[:n_ref]},
                {"OCCP": codes[n_ref:], "x": x[n_ref:]}, categorical=("OCCP",))


def _feature_drift_alert(view):
    result = alerts.evaluate_alerts(view, CURRENT, REFERENCE, rules=(),
                                    defaults=["feature_drift"])
    return next(a for a in result.alerts if a.rule == "default:feature_drift")


def test_many_categories_without_drift_are_not_beyond_noise_and_do_not_alert(make_log):
    view = _census_like(make_log, shift=False)
    result = drift.compute_drift(view, CURRENT, REFERENCE)
    occp = result.column("OCCP")
    assert occp.test == "jensenshannon" and occp.drifted          # Evidently's verdict kept
    assert occp.statistic > 0.1 and occp.beyond_noise is False
    assert occp.noise_level > occp.statistic
    assert "sampling noise" in occp.note
    assert "OCCP" in result.drifted_columns and "OCCP" not in result.drifted_beyond_noise
    payload = result.to_json()
    assert payload["number_of_drifted_columns_beyond_noise"] == 0
    assert payload["columns"][0]["beyond_noise"] is False
    alert = _feature_drift_alert(view)
    assert not alert.fired and "beyond sampling noise" in alert.message


def test_real_shifts_are_beyond_noise_and_alert(make_log):
    view = _census_like(make_log, shift=True)
    result = drift.compute_drift(view, CURRENT, REFERENCE)
    for name in ("OCCP", "x"):
        column = result.column(name)
        assert column.drifted and column.beyond_noise, name
    alert = _feature_drift_alert(view)
    assert alert.fired and "2 of 2 features drifted beyond sampling noise" in alert.message


def test_edge_cases_give_none_or_zero_without_raising(make_log):
    rng = np.random.default_rng(4)
    reference = {"code": np.full(1500, 3), "x": rng.normal(size=1500),
                 "note": np.array(["a"] * 1500, dtype=object)}
    current = {"code": np.full(100, 3), "x": rng.normal(size=100),
               "note": np.array(["b"] * 100, dtype=object)}
    view = _log(make_log, reference, current)
    result = drift.compute_drift(view, CURRENT, REFERENCE, columns=["code", "x"])
    constant = result.column("code")
    assert constant.statistic == 0 and constant.noise_level == 0 and constant.beyond_noise is False
    empty = drift.compute_drift(view, Window(datetime(2025, 1, 1), datetime(2025, 1, 2)),
                                REFERENCE, columns=["code", "x"])
    for column in empty.columns:
        assert column.noise_level is None and column.beyond_noise is None
    assert empty.to_json()["number_of_drifted_columns_beyond_noise"] == 0
    assert drift.noise_level("jensenshannon", np.zeros(3), 10, 10) is None
    assert drift.noise_level("ks", np.ones(3), 10, 10) is None
    assert drift.noise_level("wasserstein", np.array([4.0]), 10, 0, positions=np.array([1.0])) is None
