"""Sample data: a consumer-loan default model in production, with planted problems.

``generate`` writes a complete demo project (``mlmon.toml``, a prediction log, late labels and the
two scikit-learn models that made the log) so that every page of the app has something to find.
The truth is a logistic function of the applicant's features; the production model is trained on
the clean reference period and the shadow candidate on more recent data. Then problems are
planted: income drift, a pipeline bug that blanks a column, a segment the model cannot see into,
a fraud ring that breaks one channel, late labels, an A/B test and a latency incident.
``sample_data/README.md`` lists them with dates and measured sizes.

Everything is drawn with vectorised numpy from ``numpy.random.SeedSequence(seed)``, so the same
seed gives the same data, byte for byte. Each file is written atomically.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mlmon_core.errors import MlmonError

PRODUCTION_VERSION = "v1.4"
SHADOW_VERSION = "v2.0-shadow"

NUMERICAL = (
    "age", "annual_income", "loan_amount", "term_months", "interest_rate", "credit_score",
    "employment_years", "debt_to_income", "open_accounts", "delinquencies_2y",
)
# Every categorical level: (name, probability, effect on the log-odds of default).
CATEGORIES: dict[str, tuple[tuple[str, float, float], ...]] = {
    "home_ownership": (("RENT", 0.38, 0.35), ("OWN", 0.14, -0.15), ("MORTGAGE", 0.48, -0.20)),
    "purpose": (
        ("debt_consolidation", 0.44, 0.08), ("credit_card", 0.20, -0.15),
        ("home_improvement", 0.10, -0.30), ("small_business", 0.08, 0.50), ("car", 0.08, -0.35),
        ("medical", 0.05, 0.45), ("other", 0.05, 0.15),
    ),
    "region": (
        ("Northeast", 0.18, -0.08), ("Midwest", 0.20, 0.0), ("South", 0.32, 0.15),
        ("West", 0.18, -0.08), ("Pacific", 0.12, 0.0),
    ),
    "channel": (("web", 0.46, 0.0), ("mobile", 0.30, 0.15), ("branch", 0.14, -0.20),
                ("partner_api", 0.10, 0.15)),
}
CATEGORICAL = tuple(CATEGORIES)
FEATURES = NUMERICAL + CATEGORICAL + ("has_cosigner",)

INTERCEPT = -2.2             # sets the reference default rate near 19 %
DRIFT_SHARE, DRIFT_FACTOR = 0.8, 0.65      # share of applicants whose income is scaled, and by what
FRAUD_SHARE, FRAUD_DEFAULT = 0.35, 0.8     # fraud ring in partner_api from the concept change
NATURAL_NULL_SHARE = 0.02
SHARE_A = 0.51               # the A/B split's slight sample-ratio mismatch
THRESHOLD_A, THRESHOLD_B = 0.5, 0.4
ERROR_RATE, SPIKE_ERROR_RATE, SPIKE_LATENCY_FACTOR = 0.003, 0.05, 5.0
# Relative traffic by hour of day (local time) and by weekday (Monday first).
HOURLY = np.array([2, 1, 1, 1, 1, 2, 4, 7, 10, 12, 13, 13, 12, 11, 11, 10, 10, 10, 11, 12, 11,
                   8, 5, 3], dtype=float)
WEEKLY = np.array([1.0, 1.02, 1.0, 0.98, 0.95, 0.6, 0.5])

TOML_TEMPLATE = """\
# mlmon project file for the bundled sample data (made by `mlmon demo --out sample_data`).
[source]
predictions = "data/predictions"     # a directory of Parquet parts (the managed store)
labels = "data/labels"               # late ground truth, joined on columns.id

[columns]
id = "id"
timestamp = "timestamp"
prediction = "prediction"
score = "predicted_probability"
target = "defaulted"
model = "model_version"
variant = "variant"
latency = "latency_ms"
status = "status"
label_timestamp = "labeled_at"
categorical = ["home_ownership", "purpose", "region", "channel"]
ignore = ["request_id"]

[model]
task = "binary"
positive_label = 1
threshold = 0.5
path = "data/model.skops"

[reference]
start = "{start}"
end = "{end}"
"""


@dataclass(frozen=True)
class DemoPlan:
    """When each planted problem happens, as day offsets from ``start`` (windows are half-open).

    With the default 90 days the offsets are the documented ones; other lengths scale them.
    """

    start: date
    days: int
    reference_end: int
    ab_start: int
    spike_start: int
    spike_end: int
    concept_start: int
    drift_start: int
    bug_start: int
    bug_end: int
    shadow_start: int
    labels_partial_start: int
    labels_end: int

    def date_of(self, day: int) -> date:
        """The calendar date of day offset ``day``."""
        return self.start + timedelta(days=day)


def plan_for(days: int = 90, start: str = "2026-06-01") -> DemoPlan:
    """The schedule of planted problems for a log of ``days`` days beginning on ``start``."""
    if days < 30:
        raise MlmonError(f"demo: days must be at least 30 to fit the planted problems, got {days}")
    try:
        first = date.fromisoformat(start)
    except ValueError:
        raise MlmonError(f"demo: start must be a date such as 2026-06-01, got {start!r}") from None

    def at(day: int) -> int:
        return int(round(day * days / 90))

    return DemoPlan(
        start=first, days=days, reference_end=at(30), ab_start=at(30),
        spike_start=at(40), spike_end=max(at(42), at(40) + 1), concept_start=at(45),
        drift_start=at(60), bug_start=at(70), bug_end=max(at(77), at(70) + 1),
        shadow_start=at(70), labels_partial_start=at(75), labels_end=at(81),
    )


def project_toml(plan: DemoPlan) -> str:
    """The text of the demo's ``mlmon.toml``; its reference window is the plan's first third."""
    return TOML_TEMPLATE.format(start=plan.date_of(0).isoformat(),
                                end=plan.date_of(plan.reference_end).isoformat())


def generate(out_dir: str | Path, seed: int = 7, days: int = 90, rows: int = 300_000,
             start: str = "2026-06-01") -> Path:
    """Write a complete demo project into out_dir and return the path of its mlmon.toml.

    ``rows`` counts every logged prediction, shadow twins included. Files: ``mlmon.toml``,
    ``data/predictions/part-00000.parquet``, ``data/labels/part-00000.parquet``,
    ``data/model.skops`` (production) and ``data/shadow_model.skops`` (shadow candidate).
    """
    if rows < 1_000:
        raise MlmonError(f"demo: rows must be at least 1000, got {rows}")
    plan = plan_for(days, start)
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)]
    train_rows = int(np.clip(rows // 6, 10_000, 50_000))
    production = _train(streams[0], plan, 0, plan.reference_end, train_rows, _production_learner(seed))
    shadow = _train(streams[1], plan, plan.reference_end, plan.shadow_start, train_rows,
                    _shadow_learner(seed))
    predictions, labels = _log(streams[2], plan, rows, production, shadow)
    return _write_project(Path(out_dir), plan, predictions, labels, production, shadow)


# --- applicants and the truth ---------------------------------------------------------------

@dataclass(frozen=True)
class _Applicants:
    """Drawn applicants: the features as the model would see them, plus what only the truth knows."""

    features: dict[str, np.ndarray]
    codes: dict[str, np.ndarray]
    employment_true: np.ndarray
    hidden: np.ndarray
    fraud: np.ndarray


def _code(column: str, level: str) -> int:
    return [name for name, _, _ in CATEGORIES[column]].index(level)


def _draw_categories(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    return {column: rng.choice(len(levels), size=n, p=[p for _, p, _ in levels])
            for column, levels in CATEGORIES.items()}


def _draw_money(rng: np.random.Generator, day: np.ndarray, age: np.ndarray,
                plan: DemoPlan) -> tuple[np.ndarray, np.ndarray]:
    """Annual income (drifting from ``plan.drift_start``) and the loan asked for."""
    n = len(day)
    base = np.exp(rng.normal(np.log(52_000), 0.45, n)) * (0.75 + 0.5 * np.clip((age - 21) / 30, 0, 1))
    drifted = (day >= plan.drift_start) & (rng.random(n) < DRIFT_SHARE)
    income = np.round(base * np.where(drifted, DRIFT_FACTOR, 1.0), -2)
    loan = np.clip(np.round(base * rng.uniform(0.06, 0.45, n) / 250) * 250, 1_000, 40_000)
    return income, loan


def _draw_applicants(rng: np.random.Generator, day: np.ndarray, plan: DemoPlan) -> _Applicants:
    """Applicants arriving on the given days (one per element of ``day``)."""
    n = len(day)
    codes = _draw_categories(rng, n)
    age = np.clip(np.rint(rng.normal(41, 12, n)), 21, 80).astype(np.int64)
    income, loan = _draw_money(rng, day, age, plan)
    long_term = np.where(codes["purpose"] == _code("purpose", "small_business"), 0.55, 0.22)
    term = np.where(rng.random(n) < long_term + 0.15 * (loan > 20_000), 60, 36).astype(np.int64)
    score = np.clip(np.rint(rng.normal(690, 55, n)), 300, 850).astype(np.int64)
    rate = 5 + 22 * ((850 - score) / 550) ** 1.3 + 1.2 * (term == 60) + rng.normal(0, 1.2, n)
    employment = np.minimum(np.rint(rng.exponential(5.5, n) * 2) / 2, age - 18.0)
    missing = rng.random(n) < NATURAL_NULL_SHARE
    features = {
        "age": age, "annual_income": income, "loan_amount": loan, "term_months": term,
        "interest_rate": np.round(np.clip(rate, 5, 35), 2), "credit_score": score,
        "employment_years": np.where(missing, np.nan, employment),
        "debt_to_income": np.round(rng.beta(2.2, 6.0, n) * 60, 1),
        "open_accounts": rng.poisson(8.5, n).astype(np.int64),
        "delinquencies_2y": rng.poisson(0.25 * np.exp(-(score - 690) / 70)).astype(np.int64),
    }
    for column, levels in CATEGORIES.items():
        features[column] = np.array([name for name, _, _ in levels], dtype=object)[codes[column]]
    features["has_cosigner"] = rng.random(n) < 0.08
    partner = (codes["channel"] == _code("channel", "partner_api")) & (day >= plan.concept_start)
    fraud = partner & (rng.random(n) < FRAUD_SHARE)
    thin_file = rng.poisson(5.5, n)      # the ring's synthetic identities have thinner files
    features["open_accounts"] = np.where(fraud, thin_file, features["open_accounts"])
    return _Applicants(features, codes, employment, rng.normal(size=n), fraud)


def _log_odds(a: _Applicants) -> np.ndarray:
    """The true log-odds of default, before the planted weak segment and fraud ring."""
    f = a.features
    score, dti, age = f["credit_score"], f["debt_to_income"], f["age"]
    z = (INTERCEPT - 0.022 * (score - 690) + 0.05 * (dti - 18)
         - 0.5 * np.log(f["annual_income"] / 60_000)
         + 0.8 * np.log(f["loan_amount"] / (0.25 * f["annual_income"]))
         + 0.5 * np.minimum(f["delinquencies_2y"], 4) + 0.35 * (f["term_months"] == 60)
         + 0.0012 * (age - 42) ** 2 - 0.015 * (age - 42)
         - 0.08 * np.minimum(a.employment_true, 10) + 0.3 * np.isnan(f["employment_years"])
         + 0.08 * np.maximum(f["open_accounts"] - 12, 0) - 0.8 * f["has_cosigner"]
         + 1.0 * ((dti > 35) & (score < 640)))
    for column, levels in CATEGORIES.items():
        z = z + np.array([effect for _, _, effect in levels])[a.codes[column]]
    return z


def _weak_segment(a: _Applicants) -> np.ndarray:
    """Small-business loans over 60 months: their risk hangs on something the log does not hold."""
    small_business = a.codes["purpose"] == _code("purpose", "small_business")
    return small_business & (a.features["term_months"] == 60)


def _default_probability(a: _Applicants) -> np.ndarray:
    """The probability that each applicant defaults, planted problems included."""
    z = _log_odds(a)
    z = np.where(_weak_segment(a), 0.15 * z + 2.2 * a.hidden + 0.1, z)
    return np.where(a.fraud, FRAUD_DEFAULT, 1 / (1 + np.exp(-z)))


def _blank_employment(a: _Applicants, day: np.ndarray, plan: DemoPlan) -> None:
    """The pipeline bug: ``employment_years`` arrives null for Pacific during the bug window."""
    pacific = a.codes["region"] == _code("region", "Pacific")
    broken = pacific & (day >= plan.bug_start) & (day < plan.bug_end)
    a.features["employment_years"] = np.where(broken, np.nan, a.features["employment_years"])


# --- the models ------------------------------------------------------------------------------

def _production_learner(seed: int) -> Any:
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(max_iter=100, learning_rate=0.1, max_leaf_nodes=20,
                                          early_stopping=False, random_state=seed)


def _shadow_learner(seed: int) -> Any:
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(max_iter=120, learning_rate=0.08, max_leaf_nodes=24,
                                          l2_regularization=1.0, early_stopping=False,
                                          random_state=seed)


def _pipeline(learner: Any) -> Any:
    """Impute numbers, one-hot the categories, then the learner."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    prepare = ColumnTransformer(
        [("numerical", SimpleImputer(strategy="median"), list(NUMERICAL)),
         ("categorical", OneHotEncoder(handle_unknown="ignore", sparse_output=False),
          list(CATEGORICAL) + ["has_cosigner"])],
        sparse_threshold=0.0,
    )
    return Pipeline([("prepare", prepare), ("model", learner)])


def _frame(features: dict[str, np.ndarray]) -> Any:
    """The model's input table (the logged feature columns, in a fixed order)."""
    import pandas as pd

    return pd.DataFrame({name: features[name] for name in FEATURES})


def _train(rng: np.random.Generator, plan: DemoPlan, first_day: int, end_day: int, n: int,
           learner: Any) -> Any:
    """Fit a pipeline on ``n`` fresh applicants from days ``[first_day, end_day)``."""
    from threadpoolctl import threadpool_limits

    day = rng.integers(first_day, end_day, n)
    applicants = _draw_applicants(rng, day, plan)
    outcome = (rng.random(n) < _default_probability(applicants)).astype(np.int64)
    model = _pipeline(learner)
    with threadpool_limits(limits=1, user_api="openmp"):   # same bits on any number of cores
        model.fit(_frame(applicants.features), outcome)
    return model


def _score(model: Any, features: dict[str, np.ndarray]) -> np.ndarray:
    return model.predict_proba(_frame(features))[:, 1]


# --- the log ---------------------------------------------------------------------------------

def _day_weights(plan: DemoPlan) -> np.ndarray:
    weekday = (plan.start.weekday() + np.arange(plan.days)) % 7
    return WEEKLY[weekday] * (1 + 0.1 * np.arange(plan.days) / plan.days)


def _schedule(rng: np.random.Generator, plan: DemoPlan, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted request times (datetime64[s]) and their day offsets; production rows plus twins = rows."""
    weights = _day_weights(plan)
    twin_share = weights[plan.shadow_start:].sum() / weights.sum()
    per_day = rng.multinomial(int(round(rows / (1 + twin_share))), weights / weights.sum())
    day = np.repeat(np.arange(plan.days), per_day)
    seconds = rng.choice(24, size=len(day), p=HOURLY / HOURLY.sum()) * 3600
    seconds = seconds + rng.integers(0, 3600, len(day))
    moment = np.datetime64(plan.start, "s") + (day * 86_400 + seconds).astype("timedelta64[s]")
    order = np.argsort(moment, kind="stable")
    return moment[order], day[order]


def _latency(rng: np.random.Generator, n: int, median_ms: float) -> np.ndarray:
    return np.exp(rng.normal(np.log(median_ms), 0.35, n))


def _serve(rng: np.random.Generator, plan: DemoPlan, day: np.ndarray,
           score: np.ndarray) -> dict[str, np.ndarray]:
    """Variant, prediction, latency and status of the production rows."""
    n = len(day)
    variant = np.where((day >= plan.ab_start) & (rng.random(n) >= SHARE_A), "B", "A").astype(object)
    threshold = np.where(variant == "B", THRESHOLD_B, THRESHOLD_A)
    spike = (day >= plan.spike_start) & (day < plan.spike_end)
    latency = _latency(rng, n, 38.0) * np.where(spike, SPIKE_LATENCY_FACTOR, 1.0)
    error = rng.random(n) < np.where(spike, SPIKE_ERROR_RATE, ERROR_RATE)
    return {
        "model_version": np.full(n, PRODUCTION_VERSION, dtype=object), "variant": variant,
        "prediction": (score >= threshold).astype(np.int64), "predicted_probability": score,
        "latency_ms": np.round(latency, 3), "status": np.where(error, "error", "ok").astype(object),
    }


def _serve_shadow(rng: np.random.Generator, score: np.ndarray) -> dict[str, np.ndarray]:
    """Columns of the shadow twins: no variant, the shadow's own score, latency and status."""
    n = len(score)
    error = rng.random(n) < ERROR_RATE
    return {
        "model_version": np.full(n, SHADOW_VERSION, dtype=object),
        "variant": np.full(n, None, dtype=object),
        "prediction": (score >= THRESHOLD_A).astype(np.int64), "predicted_probability": score,
        "latency_ms": np.round(_latency(rng, n, 52.0), 3),
        "status": np.where(error, "error", "ok").astype(object),
    }


def _label_delays(rng: np.random.Generator, plan: DemoPlan, moment: np.ndarray,
                  day: np.ndarray) -> np.ndarray:
    """Seconds until each request's label arrives, or -1 where it has not arrived by the end.

    Labels take 5 to 20 days, never past the end of the log. Before ``labels_partial_start``
    every label is in; then a falling share (75 % to 25 %); from ``labels_end`` none.
    """
    n = len(day)
    span = max(plan.labels_end - 1 - plan.labels_partial_start, 1)
    arrived_share = np.clip(0.75 - 0.5 * (day - plan.labels_partial_start) / span, 0.25, 0.75)
    arrived_share = np.where(day < plan.labels_partial_start, 1.0, arrived_share)
    arrived = (rng.random(n) < arrived_share) & (day < plan.labels_end)
    end = np.datetime64(plan.date_of(plan.days), "s")
    room = np.minimum((end - moment).astype(np.int64) - 1, 20 * 86_400)
    delay = 5 * 86_400 + rng.random(n) * np.maximum(room - 5 * 86_400, 0)
    return np.where(arrived, delay.astype(np.int64), -1)


def _log(rng: np.random.Generator, plan: DemoPlan, rows: int, production: Any,
         shadow: Any) -> tuple[Any, Any]:
    """The prediction log and the labels file, as Arrow tables."""
    moment, day = _schedule(rng, plan, rows)
    applicants = _draw_applicants(rng, day, plan)
    outcome = (rng.random(len(day)) < _default_probability(applicants)).astype(np.int64)
    delay = _label_delays(rng, plan, moment, day)
    _blank_employment(applicants, day, plan)
    served = _serve(rng, plan, day, _score(production, applicants.features))
    twin = np.flatnonzero(day >= plan.shadow_start)
    twin_features = {name: values[twin] for name, values in applicants.features.items()}
    twin_served = _serve_shadow(rng, _score(shadow, twin_features))
    request = np.concatenate([np.arange(len(day)), twin])
    order = np.lexsort((np.arange(len(request)) >= len(day), request))
    columns = {name: np.concatenate([values, twin_features[name]])[order]
               for name, values in applicants.features.items()}
    columns.update({name: np.concatenate([values, twin_served[name]])[order]
                    for name, values in served.items()})
    request = request[order]
    return (_predictions_table(request, moment[request], columns),
            _labels_table(moment[request], outcome[request], delay[request]))


def _numbered(prefix: str, numbers: np.ndarray) -> Any:
    """Strings such as ``app-0000001`` for each number, built in Arrow (no Python loop)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    digits = pc.utf8_lpad(pc.cast(pa.array(numbers), pa.string()), width=7, padding="0")
    return pc.binary_join_element_wise(prefix, digits, "")


def _predictions_table(request: np.ndarray, moment: np.ndarray, columns: dict[str, np.ndarray]) -> Any:
    import pyarrow as pa

    data: dict[str, Any] = {
        "id": _numbered("app-", np.arange(1, len(request) + 1)),
        "request_id": _numbered("req-", request + 1),
        "timestamp": pa.array(moment.astype("datetime64[us]")),
    }
    for name in FEATURES:
        data[name] = pa.array(columns[name], from_pandas=True)
    data["model_version"] = pa.array(columns["model_version"], pa.string())
    data["variant"] = pa.array(columns["variant"], pa.string())
    data["prediction"] = pa.array(columns["prediction"])
    data["predicted_probability"] = pa.array(columns["predicted_probability"])
    data["latency_ms"] = pa.array(columns["latency_ms"])
    data["status"] = pa.array(columns["status"], pa.string())
    return pa.table(data)


def _labels_table(moment: np.ndarray, outcome: np.ndarray, delay: np.ndarray) -> Any:
    """One label per row whose label has arrived, ordered by arrival."""
    import pyarrow as pa

    ids = _numbered("app-", np.arange(1, len(moment) + 1))
    kept = np.flatnonzero(delay >= 0)
    arrival = (moment[kept] + delay[kept].astype("timedelta64[s]")).astype("datetime64[us]")
    order = np.argsort(arrival, kind="stable")
    return pa.table({
        "id": ids.take(pa.array(kept[order])),
        "defaulted": pa.array(outcome[kept][order]),
        "labeled_at": pa.array(arrival[order]),
    })


# --- files -----------------------------------------------------------------------------------

def _write_atomically(path: Path, write: Callable[[str], None]) -> None:
    """Write through ``write(temp_path)`` to a temporary sibling, then rename it onto ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(str(temp))
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def _write_project(out: Path, plan: DemoPlan, predictions: Any, labels: Any, production: Any,
                   shadow: Any) -> Path:
    import pyarrow.parquet as pq
    import skops.io

    data = out / "data"
    _write_atomically(data / "predictions" / "part-00000.parquet",
                      lambda temp: pq.write_table(predictions, temp, row_group_size=100_000))
    _write_atomically(data / "labels" / "part-00000.parquet",
                      lambda temp: pq.write_table(labels, temp))
    _write_atomically(data / "model.skops", lambda temp: skops.io.dump(production, temp))
    _write_atomically(data / "shadow_model.skops", lambda temp: skops.io.dump(shadow, temp))
    toml = out / "mlmon.toml"
    _write_atomically(toml, lambda temp: Path(temp).write_text(project_toml(plan), encoding="utf-8"))
    return toml
